//! The instance's one stream reader: it reads each new batch of messages once, records
//! the deliveries of all its streams, and hands each stream its entries in memory.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icbt_auth::principal::Authenticated;
use tokio::sync::{broadcast, mpsc};

use super::routes::{self, Route};
use super::{QUEUE, woken};
use futures_util::StreamExt as _;

use crate::domain::audit::{Access, Action};
use crate::domain::episode::EpisodeId;
use crate::storage::stream::{StreamEntry, StreamFilter, StreamPosition};
use crate::storage::{CareTeamEntry, StorageError, Store, now_ms};
use crate::views::entry_view;

/// Looking again for a message that is committed but held back: after 2 ms, doubling to
/// 100 ms, for at most [`HELD_BACK_LIMIT`] per transaction id (a message removed before it
/// was read must not keep the hub polling).
#[derive(Debug, Default)]
pub(super) struct HeldBack {
    /// The transaction waited for, since when, and the last pause.
    waiting: Option<(i64, std::time::Instant, Duration)>,
    /// Transactions up to this one are no longer waited for.
    gave_up: i64,
}

const HELD_BACK_LIMIT: Duration = Duration::from_secs(30);

impl HeldBack {
    /// The pause before looking again for transaction `tx`, or `None` to stop looking.
    pub(super) fn next(&mut self, tx: i64, now: std::time::Instant) -> Option<Duration> {
        if tx <= self.gave_up {
            return None;
        }
        let (since, pause) = match self.waiting {
            Some((t, since, _)) if t == tx && now - since >= HELD_BACK_LIMIT => {
                self.gave_up = tx;
                self.waiting = None;
                return None;
            }
            Some((t, since, pause)) if t == tx => {
                (since, (pause * 2).min(Duration::from_millis(100)))
            }
            _ => (now, Duration::from_millis(2)),
        };
        self.waiting = Some((tx, since, pause));
        Some(pause)
    }

    /// Something was read: the next wait starts short again.
    pub(super) fn clear(&mut self) {
        self.waiting = None;
    }
}

/// The open streams, each filed under the routes of its filter.
#[derive(Debug, Default)]
struct Subscribers {
    streams: HashMap<u64, Subscriber>,
    routes: HashMap<Route, HashSet<u64>>,
}

impl Subscribers {
    fn insert(&mut self, id: u64, subscriber: Subscriber) {
        for route in routes::of_filter(&subscriber.filter) {
            self.routes.entry(route).or_default().insert(id);
        }
        self.streams.insert(id, subscriber);
    }

    fn remove(&mut self, id: u64) {
        let Some(subscriber) = self.streams.remove(&id) else {
            return;
        };
        for route in routes::of_filter(&subscriber.filter) {
            if let Entry::Occupied(mut filed) = self.routes.entry(route) {
                filed.get_mut().remove(&id);
                if filed.get().is_empty() {
                    filed.remove();
                }
            }
        }
    }

    /// The streams that may see entries of `entries`, each with the indexes of those
    /// entries in order: only streams filed under one of an entry's routes.
    fn offered(&self, entries: &[StreamEntry], episodes: &Episodes) -> HashMap<u64, Vec<usize>> {
        let mut offered: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let Some(Some((_, team))) = episodes.get(&entry.episode) else {
                continue;
            };
            for route in routes::of_entry(entry, team) {
                for id in self.routes.get(&route).into_iter().flatten() {
                    let indexes = offered.entry(*id).or_default();
                    if indexes.last() != Some(&i) {
                        indexes.push(i);
                    }
                }
            }
        }
        offered
    }
}

/// The episodes of a batch, with their care teams (`None`: no such episode, and its
/// messages go to nobody).
type Episodes = HashMap<EpisodeId, Option<(crate::domain::episode::Episode, Vec<CareTeamEntry>)>>;

fn team_of<'a>(episodes: &'a Episodes, entry: &StreamEntry) -> &'a [CareTeamEntry] {
    match episodes.get(&entry.episode) {
        Some(Some((_, team))) => team,
        _ => &[],
    }
}

/// One open stream, as the hub sees it.
#[derive(Debug)]
struct Subscriber {
    filter: StreamFilter,
    /// Where the stream started: the hub hands over (and records) only what is after.
    start: StreamPosition,
    /// Shared with the stream's reader: an idle stream holds one copy of each.
    access: Arc<Access>,
    caller: Arc<Authenticated>,
    queue: mpsc::Sender<Arc<Delivery>>,
    behind: Arc<AtomicBool>,
}

/// An entry ready for the wire: its position and its JSON, made once for every stream.
#[derive(Debug)]
pub struct Delivery {
    pub position: StreamPosition,
    pub data: String,
}

impl Delivery {
    pub(super) fn of(entry: StreamEntry) -> Self {
        Self {
            position: entry.position,
            data: serde_json::to_string(&entry_view(entry)).unwrap_or_default(),
        }
    }
}

/// The instance's one stream reader and the streams it serves.
#[derive(Debug, Default)]
pub struct Hub {
    subscribers: Mutex<Subscribers>,
    next_id: AtomicU64,
    /// The highest transaction id of a message announced as committed (PostgreSQL).
    pub(super) committed_tx: AtomicI64,
    /// Set while a batch is being handed out; see [`Hub::idle`].
    dispatching: AtomicBool,
    dispatched: tokio::sync::Notify,
    /// Bumped when a transaction of this instance that may have held messages back has
    /// ended; see [`Hub::released`].
    released: tokio::sync::watch::Sender<()>,
    /// Wakes a hub that has no streams when one registers: a message announced while
    /// nobody listened may still be held back, and the new stream's catch-up then finds
    /// nothing, so the hub must read (and keep looking) from now on.
    registered: tokio::sync::Notify,
}

/// Sets [`Hub::dispatching`] for as long as it lives: a dispatch however it ends.
struct Dispatching<'a>(&'a Hub);

impl<'a> Dispatching<'a> {
    fn begin(hub: &'a Hub) -> Self {
        hub.dispatching.store(true, Ordering::SeqCst);
        Self(hub)
    }
}

impl Drop for Dispatching<'_> {
    fn drop(&mut self) {
        self.0.dispatching.store(false, Ordering::SeqCst);
        self.0.dispatched.notify_waiters();
    }
}

/// A stream's place in the hub; dropping it (the client went away) leaves.
#[derive(Debug)]
pub(super) struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut subscribers) = self.hub.subscribers.lock() {
            subscribers.remove(self.id);
        }
    }
}

impl Hub {
    pub(super) fn register(
        self: &Arc<Self>,
        filter: StreamFilter,
        start: StreamPosition,
        access: Arc<Access>,
        caller: Arc<Authenticated>,
    ) -> (Registration, mpsc::Receiver<Arc<Delivery>>, Arc<AtomicBool>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let behind = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.insert(
                id,
                Subscriber {
                    filter,
                    start,
                    access,
                    caller,
                    queue,
                    behind: behind.clone(),
                },
            );
        }
        self.registered.notify_one();
        (
            Registration {
                hub: self.clone(),
                id,
            },
            receiver,
            behind,
        )
    }

    /// Waits until the hub is not handing out a batch, or `limit` has passed. Bulk
    /// background work (the audit sequencer) waits here between its steps, so that
    /// deliveries, which people wait for, don't share the database with it.
    pub async fn idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.dispatched.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.dispatching.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }

    /// A long transaction of this instance (an audit sequencer batch) has ended. While it
    /// ran, messages committed after it began were held back (see [`Hub::run`]); the hub
    /// and waiting long polls look again now rather than after their next pause, which
    /// may be twice as long as the transaction was.
    pub fn released(&self) {
        self.released.send_replace(());
    }

    /// Ends held-back waits at [`Hub::released`]. Taken before the read that may find a
    /// message held back: a release after that read ends the wait that follows at once.
    pub(super) fn releases(&self) -> tokio::sync::watch::Receiver<()> {
        self.released.subscribe()
    }

    /// A message written by transaction `tx` has committed (from an announcement).
    pub fn committed(&self, tx: i64) {
        self.committed_tx.fetch_max(tx, Ordering::Relaxed);
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.subscribers.lock().map_or(0, |s| s.streams.len())
    }

    /// Reads every new message once and dispatches it, woken by `push`; runs until the
    /// wake-up channel closes.
    pub async fn run(self: Arc<Self>, mut wake: broadcast::Receiver<()>, store: Store) {
        let mut head = loop {
            match store.stream_head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(error = %e, "stream hub cannot read the head; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut refreshed = tokio::time::Instant::now();
        let mut held_back = HeldBack::default();
        let mut released = self.releases();
        loop {
            if self.streams() == 0 {
                // Nobody to serve: keep up with the head instead of reading messages, at
                // most once per HEAD_REFRESH (an older head is always safe, it only means
                // re-reading what nobody needed). The head is read before the second look,
                // so a stream that registers after it is served from a head older than its
                // registration.
                if refreshed.elapsed() >= HEAD_REFRESH {
                    match store.stream_head().await {
                        Ok(now) if self.streams() == 0 => {
                            head = head.max(now);
                            refreshed = tokio::time::Instant::now();
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "stream hub cannot read the head; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                tokio::select! {
                    open = woken(&mut wake) => if !open { return },
                    () = self.registered.notified() => {}
                }
                continue;
            }
            // Wake-ups up to now are answered by the read below: one read per burst of
            // them, not one per send and another per announcement of it.
            loop {
                match wake.try_recv() {
                    Ok(()) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            let read = store
                .stream_after(&StreamFilter::Everything, head, now_ms(), HUB_BATCH)
                .await;
            match read {
                Ok(entries) if !entries.is_empty() => {
                    let full = i64::try_from(entries.len()).is_ok_and(|n| n >= HUB_BATCH);
                    let last = entries.last().map(|e| e.position);
                    held_back.clear();
                    if let Err(e) = self.dispatch(&store, entries).await {
                        // Nothing was handed out: the same batch is read again.
                        tracing::warn!(error = %e, "stream hub cannot read a batch's episodes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    head = last.unwrap_or(head);
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stream hub read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            // A message announced as committed is not readable yet: a transaction older
            // than it is still running (PostgreSQL readers stop below the oldest one).
            // Nothing announces that transaction's end unless it was a send too, so look
            // again shortly, or at the next send, instead of waiting for the next message.
            let announced = self.committed_tx.load(Ordering::Relaxed);
            if announced > head.tx
                && let Some(pause) = held_back.next(announced, std::time::Instant::now())
            {
                tracing::debug!(
                    ?pause,
                    "a committed message is held back by an older transaction"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = released.changed() => {}
                    _ = wake.recv() => {}
                }
                continue;
            }
            if !woken(&mut wake).await {
                return;
            }
        }
    }

    /// Hands each stream its entries of `entries`, once their deliveries are recorded.
    ///
    /// Fails, having handed out nothing, when the batch's episodes cannot be read: a
    /// stream must not be handed a message whose reading cannot be recorded, nor a
    /// therapist's stream pass one over because its care team was not known.
    async fn dispatch(&self, store: &Store, entries: Vec<StreamEntry>) -> Result<(), StorageError> {
        let _dispatching = Dispatching::begin(self);
        let now = now_ms();
        let mut episodes = Episodes::new();
        for entry in &entries {
            if episodes.contains_key(&entry.episode) {
                continue;
            }
            let found = store.episode_with_team(entry.episode).await?;
            episodes.insert(
                entry.episode,
                found.map(|(episode, _, team)| (episode, team)),
            );
        }
        let mut deliveries = Vec::new();
        {
            let Ok(subscribers) = self.subscribers.lock() else {
                return Ok(());
            };
            for (id, offered) in subscribers.offered(&entries, &episodes) {
                let Some(subscriber) = subscribers.streams.get(&id) else {
                    continue;
                };
                if subscriber.behind.load(Ordering::Relaxed) {
                    continue;
                }
                let mine: Vec<usize> = offered
                    .into_iter()
                    .filter(|i| {
                        let e = &entries[*i];
                        e.position > subscriber.start
                            && subscriber.filter.matches(e, team_of(&episodes, e), now)
                    })
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let mut records = Vec::new();
                let mut seen: Vec<EpisodeId> = Vec::new();
                for entry in mine.iter().map(|i| &entries[*i]) {
                    if seen.contains(&entry.episode) {
                        continue;
                    }
                    seen.push(entry.episode);
                    if let Some(Some((episode, _))) = episodes.get(&entry.episode) {
                        records.push(
                            subscriber
                                .access
                                .record(&subscriber.caller, Action::Read, "messages")
                                .episode(episode),
                        );
                    }
                }
                deliveries.push(Pending {
                    queue: subscriber.queue.clone(),
                    behind: subscriber.behind.clone(),
                    mine,
                    records,
                });
            }
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        // Each entry serialised once, shared by every stream it goes to.
        let ready: Vec<Arc<Delivery>> = entries
            .into_iter()
            .map(|e| Arc::new(Delivery::of(e)))
            .collect();
        // Delivered only once the accesses are recorded, a group of streams at a time and
        // a few groups at once: the first streams write while later groups' records
        // commit. A stream is in one group, and the next batch waits for every group, so
        // each stream still gets its entries in order. If a group's records cannot be
        // written, those streams catch up by themselves (and record their own reads).
        let groups: Vec<_> = deliveries
            .chunks_mut(DISPATCH_GROUP)
            .map(|group| deliver_group(store, group, &ready))
            .collect();
        futures_util::stream::iter(groups)
            .buffer_unordered(DISPATCH_CONCURRENCY)
            .for_each(|()| async {})
            .await;
        Ok(())
    }
}

/// Records the accesses of `group`, then hands each of its streams its entries.
async fn deliver_group(store: &Store, group: &mut [Pending], ready: &[Arc<Delivery>]) {
    let records: Vec<_> = group
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.records))
        .collect();
    if let Err(e) = store.record_access(&records).await {
        tracing::warn!(error = %e, "recording stream deliveries failed; streams catch up");
        for pending in &*group {
            pending.behind.store(true, Ordering::Relaxed);
        }
        return;
    }
    for pending in &*group {
        for i in &pending.mine {
            if pending.queue.try_send(ready[*i].clone()).is_err() {
                pending.behind.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// What the hub hands one stream from a batch, and the accesses to record first.
struct Pending {
    queue: mpsc::Sender<Arc<Delivery>>,
    behind: Arc<AtomicBool>,
    /// Indexes of the batch's entries this stream may see.
    mine: Vec<usize>,
    records: Vec<crate::domain::audit::Record>,
}

/// Streams whose deliveries are recorded in one transaction.
const DISPATCH_GROUP: usize = 100;
/// Groups recorded at once (each holds a database connection meanwhile).
const DISPATCH_CONCURRENCY: usize = 4;
/// Entries the hub reads per query.
const HUB_BATCH: i64 = 500;
/// How often the hub, serving no stream, reads the head to keep up: not on every send.
const HEAD_REFRESH: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::super::routes::tests::{PATIENTS, entry};
    use super::*;
    use crate::domain::episode::NationalId;
    use icbt_auth::principal::{Acr, Patient, Principal};

    /// A hub with one patient's stream, and a store on SQLite in `dir`.
    async fn one_patient_stream(
        dir: &std::path::Path,
    ) -> (
        Arc<Hub>,
        Registration,
        mpsc::Receiver<Arc<Delivery>>,
        Arc<AtomicBool>,
        Store,
    ) {
        let config = icbt_config::StorageConfig {
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        let store = Store::open(&config).await.unwrap();
        let pid = NationalId::parse(PATIENTS[0]).unwrap();
        let caller = Authenticated {
            principal: Principal::Patient(Patient {
                pid: pid.clone(),
                acr: Acr::High,
            }),
            issuer: Arc::from("test"),
            client_id: None,
            scopes: Vec::new(),
            token_id: None,
            expires_at: i64::MAX,
            dpop_jkt: None,
        };
        let hub = Arc::new(Hub::default());
        let (registration, live, behind) = hub.register(
            StreamFilter::Patient(pid),
            StreamPosition { tx: 0, pos: 0 },
            Arc::new(Access::default()),
            Arc::new(caller),
        );
        (hub, registration, live, behind, store)
    }

    #[tokio::test]
    async fn a_batch_whose_episodes_cannot_be_read_is_handed_to_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, _registration, mut live, behind, store) = one_patient_stream(dir.path()).await;
        store.close().await;
        let batch = vec![entry(PATIENTS[0], "974589095", "all")];
        assert!(hub.dispatch(&store, batch).await.is_err());
        assert!(
            live.try_recv().is_err(),
            "handed out though its reading was not recorded"
        );
        assert!(!behind.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_message_of_no_known_episode_is_handed_to_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, _registration, mut live, _behind, store) = one_patient_stream(dir.path()).await;
        let batch = vec![entry(PATIENTS[0], "974589095", "all")];
        assert!(hub.dispatch(&store, batch).await.is_ok());
        assert!(live.try_recv().is_err(), "handed out with no access record");
    }

    #[test]
    fn a_held_back_message_is_looked_for_again_soon_then_less_often() {
        let start = std::time::Instant::now();
        let mut held = HeldBack::default();
        let pauses: Vec<u128> = (0..8)
            .map(|_| held.next(7, start).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 64, 100, 100]);
        held.clear();
        assert_eq!(held.next(7, start), Some(Duration::from_millis(2)));
    }

    #[test]
    fn a_held_back_message_is_given_up_on_after_the_limit_but_a_later_one_is_not() {
        let start = std::time::Instant::now();
        let mut held = HeldBack::default();
        assert!(held.next(7, start).is_some());
        assert_eq!(held.next(7, start + HELD_BACK_LIMIT), None);
        assert_eq!(held.next(7, start + HELD_BACK_LIMIT * 2), None);
        assert_eq!(held.next(6, start), None, "older ones too");
        assert_eq!(held.next(8, start), Some(Duration::from_millis(2)));
    }
}
