//! Push: Server-Sent Events at `/v1/stream` and a long-poll inbox at `/v1/inbox`, both
//! reading the principal's stream (`storage::stream`) from a resumable position.
//!
//! Notifications are only wake-ups; the database is the source of truth, so a missed or
//! lagged notification costs latency, never a message. Within an instance, sends publish
//! on a bounded broadcast channel; across instances, PostgreSQL's NOTIFY (sent inside each
//! send's transaction) reaches every instance's listener.
//!
//! One reader per instance ([`Hub`]) reads each new batch once, records the deliveries of
//! all its streams in one transaction, and hands each stream its entries in memory. A
//! stream reads the database itself only to catch up: when it starts from a position, and
//! when it fell behind (its bounded queue overflowed, or the hub could not record).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _};
use icbt_auth::principal::{Authenticated, Principal};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::api::AppState;
use crate::audit::{Access, Action};
use crate::authn::Caller;
use crate::episode::EpisodeId;
use crate::messaging::{MAX_PAGE, MessageView, message_view};
use crate::problem::{Problem, ProblemKind};
use crate::storage::stream::{StreamEntry, StreamFilter, StreamPosition};
use crate::storage::{CareTeamEntry, Store, now_ms};

/// Wake-ups for stream readers; bounded, so a slow reader lags (and re-reads) rather than
/// holding memory.
#[derive(Debug, Clone)]
pub struct Push {
    tx: broadcast::Sender<()>,
    pub hub: Arc<Hub>,
}

impl Default for Push {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(256).0,
            hub: Arc::new(Hub::default()),
        }
    }
}

/// Entries a stream may have queued before it counts as behind and catches up from the
/// database.
const QUEUE: usize = 256;

/// Waits for a wake-up, or [`RECHECK`] at most; `false` once the channel is closed.
async fn woken(wake: &mut broadcast::Receiver<()>) -> bool {
    tokio::select! {
        signal = wake.recv() => !matches!(signal, Err(broadcast::error::RecvError::Closed)),
        () = tokio::time::sleep(RECHECK) => true,
    }
}

/// Looking again for a message that is committed but held back: after 2 ms, doubling to
/// 100 ms, for at most [`HELD_BACK_LIMIT`] per transaction id (a message removed before it
/// was read must not keep the hub polling).
#[derive(Debug, Default)]
struct HeldBack {
    /// The transaction waited for, since when, and the last pause.
    waiting: Option<(i64, std::time::Instant, Duration)>,
    /// Transactions up to this one are no longer waited for.
    gave_up: i64,
}

const HELD_BACK_LIMIT: Duration = Duration::from_secs(30);

impl HeldBack {
    /// The pause before looking again for transaction `tx`, or `None` to stop looking.
    fn next(&mut self, tx: i64, now: std::time::Instant) -> Option<Duration> {
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
    fn clear(&mut self) {
        self.waiting = None;
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
struct Delivery {
    position: StreamPosition,
    data: String,
}

impl Delivery {
    fn of(entry: StreamEntry) -> Self {
        Self {
            position: entry.position,
            data: serde_json::to_string(&entry_view(entry)).unwrap_or_default(),
        }
    }
}

/// The instance's one stream reader and the streams it serves.
#[derive(Debug, Default)]
pub struct Hub {
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    next_id: AtomicU64,
    /// The highest transaction id of a message announced as committed (PostgreSQL).
    committed_tx: AtomicI64,
    /// Set while a batch is being handed out; see [`Hub::idle`].
    dispatching: AtomicBool,
    dispatched: tokio::sync::Notify,
    /// Bumped when a transaction of this instance that may have held messages back has
    /// ended; see [`Hub::released`].
    released: tokio::sync::watch::Sender<()>,
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
struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut subscribers) = self.hub.subscribers.lock() {
            subscribers.remove(&self.id);
        }
    }
}

impl Hub {
    fn register(
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
    fn releases(&self) -> tokio::sync::watch::Receiver<()> {
        self.released.subscribe()
    }

    /// A message written by transaction `tx` has committed (from an announcement).
    pub fn committed(&self, tx: i64) {
        self.committed_tx.fetch_max(tx, Ordering::Relaxed);
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.subscribers.lock().map_or(0, |s| s.len())
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
                if !woken(&mut wake).await {
                    return;
                }
                continue;
            }
            match store
                .stream_after(&StreamFilter::Everything, head, now_ms(), HUB_BATCH)
                .await
            {
                Ok(entries) if !entries.is_empty() => {
                    if let Some(last) = entries.last() {
                        head = last.position;
                    }
                    held_back.clear();
                    self.dispatch(&store, entries).await;
                    continue;
                }
                Ok(_) => {
                    // A message announced as committed is not readable yet: a transaction
                    // older than it is still running (PostgreSQL readers stop below the
                    // oldest one). Nothing announces that transaction's end, so look again
                    // shortly instead of waiting for the next message.
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
                        }
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream hub read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if !woken(&mut wake).await {
                return;
            }
        }
    }

    /// Hands each stream its entries of `entries`, once their deliveries are recorded.
    async fn dispatch(&self, store: &Store, entries: Vec<StreamEntry>) {
        let _dispatching = Dispatching::begin(self);
        let now = now_ms();
        let mut episodes: HashMap<
            EpisodeId,
            (Option<crate::episode::Episode>, Vec<CareTeamEntry>),
        > = HashMap::new();
        for entry in &entries {
            if episodes.contains_key(&entry.episode) {
                continue;
            }
            let (episode, team) = match store.episode_with_team(entry.episode).await {
                Ok(Some((episode, _, team))) => (Some(episode), team),
                _ => (None, Vec::new()),
            };
            episodes.insert(entry.episode, (episode, team));
        }
        let mut deliveries = Vec::new();
        {
            let Ok(subscribers) = self.subscribers.lock() else {
                return;
            };
            for subscriber in subscribers.values() {
                if subscriber.behind.load(Ordering::Relaxed) {
                    continue;
                }
                let mine: Vec<usize> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        if e.position <= subscriber.start {
                            return false;
                        }
                        let team = episodes.get(&e.episode).map_or(&[][..], |(_, t)| t);
                        subscriber.filter.matches(e, team, now)
                    })
                    .map(|(i, _)| i)
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
                    if let Some((Some(episode), _)) = episodes.get(&entry.episode) {
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
            return;
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
    records: Vec<crate::audit::Record>,
}

/// Streams whose deliveries are recorded in one transaction.
const DISPATCH_GROUP: usize = 100;
/// Groups recorded at once (each holds a database connection meanwhile).
const DISPATCH_CONCURRENCY: usize = 4;

impl Push {
    /// Announces that something new was committed.
    pub fn wake(&self) {
        // No receiver is fine: nobody is listening.
        let _ = self.tx.send(());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.tx.subscribe()
    }

    /// Forwards PostgreSQL notifications from every instance, reconnecting after errors.
    /// Returns at once on SQLite.
    pub async fn forward_notifications(self, store: Store) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match store.message_listener().await {
                Ok(None) => return,
                Ok(Some(mut listener)) => {
                    backoff = Duration::from_millis(200);
                    // Whatever was announced while we were away: everyone re-reads.
                    self.wake();
                    while let Ok(notification) = listener.recv().await {
                        if let Ok(tx) = notification.payload().parse::<i64>() {
                            self.hub.committed(tx);
                        }
                        self.wake();
                    }
                    tracing::warn!("message notification listener disconnected");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "message notification listener cannot connect");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// The stream filter for `caller`, or 403 for auditors (who reach the audit API only).
fn filter_for(state: &AppState, caller: &Authenticated) -> Result<StreamFilter, Problem> {
    if state.auth.auditors.holds(caller) {
        tracing::info!(reason = "auditor_only", "authorisation refused");
        return Err(Problem::new(ProblemKind::Forbidden));
    }
    Ok(match &caller.principal {
        Principal::Patient(p) => StreamFilter::Patient(p.pid.clone()),
        Principal::Clinician(c) => StreamFilter::CareTeam(c.hpr_number.clone()),
        Principal::System(s) => StreamFilter::Clinics(
            s.orgnr_parent
                .iter()
                .chain(&s.orgnr_child)
                .cloned()
                .collect(),
        ),
    })
}

fn parse_position(value: &str) -> Result<StreamPosition, Problem> {
    value
        .parse()
        .map_err(|e: crate::storage::stream::PositionError| {
            Problem::new(ProblemKind::InvalidField)
                .detail(e.to_string())
                .with("path", "after")
        })
}

/// One entry as clients see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    position: String,
    episode: uuid::Uuid,
    message: MessageView,
}

fn entry_view(entry: StreamEntry) -> EntryView {
    EntryView {
        position: entry.position.to_string(),
        episode: entry.episode.0,
        message: message_view(entry.message),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    after: Option<String>,
}

/// Records that `caller` was given the messages of `entries`: one read per episode.
async fn record_delivery(
    store: &Store,
    access: &Access,
    caller: &Authenticated,
    entries: &[StreamEntry],
) -> Result<(), crate::storage::StorageError> {
    let mut episodes: Vec<EpisodeId> = entries.iter().map(|e| e.episode).collect();
    episodes.sort_unstable_by_key(|e| e.0);
    episodes.dedup();
    let mut records = Vec::with_capacity(episodes.len());
    for id in episodes {
        if let Some(episode) = store.episode(id).await? {
            records.push(
                access
                    .record(caller, Action::Read, "messages")
                    .episode(&episode),
            );
        }
    }
    store.record_access(&records).await
}

struct Reader {
    store: Store,
    access: Arc<Access>,
    caller: Arc<Authenticated>,
    filter: StreamFilter,
    position: StreamPosition,
    buffer: VecDeque<Arc<Delivery>>,
    /// Entries the hub hands over, and whether it had to give up on this stream.
    live: mpsc::Receiver<Arc<Delivery>>,
    behind: Arc<AtomicBool>,
    /// Reading the database until it has nothing newer, then taking the hub's entries.
    catching_up: bool,
    _registration: Registration,
}

/// How long a stream waits for the hub before reading the database anyway: a safety net
/// only, since wake-ups are reliable (and a reconnected listener wakes everyone).
const RECHECK: Duration = Duration::from_mins(1);
/// Entries a catching-up stream reads per query.
const BATCH: i64 = 100;
/// Entries the hub reads per query.
const HUB_BATCH: i64 = 500;
/// How often the hub, serving no stream, reads the head to keep up: not on every send.
const HEAD_REFRESH: Duration = Duration::from_secs(1);

impl Reader {
    /// The next entry, waiting for one as long as it takes.
    async fn next(&mut self) -> Option<Arc<Delivery>> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                return Some(entry);
            }
            if self.behind.swap(false, Ordering::Relaxed) {
                // The hub gave up on this stream: drop what it queued and catch up.
                tracing::info!("stream fell behind; catching up from the database");
                while self.live.try_recv().is_ok() {}
                self.catching_up = true;
            }
            if self.catching_up {
                // The database futures are boxed: a stream future is as large as its
                // largest state, and an idle stream (most of them) waits in the small one.
                let read =
                    Box::pin(
                        self.store
                            .stream_after(&self.filter, self.position, now_ms(), BATCH),
                    )
                    .await;
                match read {
                    Ok(entries) if !entries.is_empty() => {
                        // Delivered only once the access is recorded.
                        let recorded = Box::pin(record_delivery(
                            &self.store,
                            &self.access,
                            &self.caller,
                            &entries,
                        ))
                        .await;
                        if let Err(e) = recorded {
                            tracing::warn!(error = %e, "recording a stream delivery failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        if let Some(last) = entries.last() {
                            self.position = last.position;
                        }
                        self.buffer
                            .extend(entries.into_iter().map(|e| Arc::new(Delivery::of(e))));
                    }
                    Ok(_) => self.catching_up = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream read failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            tokio::select! {
                entry = self.live.recv() => match entry {
                    // Skip what catching up already delivered.
                    Some(entry) if entry.position > self.position => {
                        self.position = entry.position;
                        return Some(entry);
                    }
                    Some(_) => {}
                    None => return None,
                },
                () = tokio::time::sleep(RECHECK) => self.catching_up = true,
            }
        }
    }
}

/// `GET /v1/stream`: Server-Sent Events of every new message the caller may see. Each
/// event's `id` is a position; reconnecting with `Last-Event-ID` (or `?after=`) replays
/// exactly what came after it. Without either, the stream starts at the present.
///
/// Order: each episode's messages arrive in sequence order (`seq`), on every instance,
/// and positions only grow; messages of different episodes arrive in commit order.
#[utoipa::path(get, path = "/v1/stream", tag = "messages", params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "resume after this position")), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, content_type = "text/event-stream", description = "events `message`, each with a position as `id`")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let filter = filter_for(&state, &caller)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after);
    let position = match resume {
        Some(value) => parse_position(&value)?,
        None => state.store.stream_head().await?,
    };
    // Registered before catching up, so nothing committed meanwhile is missed.
    let (access, caller) = (Arc::new(access), Arc::new(caller));
    let (registration, live, behind) =
        state
            .push
            .hub
            .register(filter.clone(), position, access.clone(), caller.clone());
    let reader = Reader {
        store: state.store.clone(),
        access,
        caller,
        filter,
        position,
        buffer: VecDeque::new(),
        live,
        behind,
        catching_up: true,
        _registration: registration,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let entry = reader.next().await?;
        let event = Event::default()
            .id(entry.position.to_string())
            .event("message")
            .data(&entry.data);
        Some((Ok(event), reader))
    });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InboxQuery {
    after: Option<String>,
    limit: Option<i64>,
    /// Seconds to wait for something new when nothing is (0–25).
    wait: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    entries: Vec<EntryView>,
    /// Pass as `after` next time.
    next_after: String,
}

/// `GET /v1/inbox?after=POS&limit=N&wait=S`: the caller's messages across episodes, in
/// order; with `wait`, a long poll that answers as soon as something arrives.
///
/// Order: as on the event stream, each episode's messages come in sequence order
/// (`seq`), pages follow one another without gaps or repeats, and `next_after` only
/// grows; messages of different episodes come in commit order.
#[utoipa::path(get, path = "/v1/inbox", tag = "messages", params(InboxQuery), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = InboxPage)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn inbox(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<InboxQuery>,
) -> Result<Json<InboxPage>, Problem> {
    let filter = filter_for(&state, &caller)?;
    let after = query
        .after
        .as_deref()
        .map(parse_position)
        .transpose()?
        .unwrap_or_default();
    let limit = match query.limit {
        None => 50,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(Problem::new(ProblemKind::InvalidField)
                .with("path", "limit")
                .detail(format!("1 to {MAX_PAGE}")));
        }
    };
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(25));
    let deadline = tokio::time::Instant::now() + wait;
    let mut wake = state.push.subscribe();
    let mut held_back = HeldBack::default();
    let mut released = state.push.hub.releases();
    loop {
        let entries = state
            .store
            .stream_after(&filter, after, now_ms(), limit)
            .await?;
        if !entries.is_empty() || tokio::time::Instant::now() >= deadline {
            record_delivery(&state.store, &access, &caller, &entries).await?;
            let next_after = entries.last().map_or(after, |e| e.position).to_string();
            return Ok(Json(InboxPage {
                entries: entries.into_iter().map(entry_view).collect(),
                next_after,
            }));
        }
        // A message announced as committed but held back below the horizon (an older
        // transaction still runs) is readable soon, with no announcement when it is: look
        // again shortly while the horizon has not passed it.
        let announced = state.push.hub.committed_tx.load(Ordering::Relaxed);
        if announced > after.tx
            && state.store.stream_head().await?.tx <= announced
            && let Some(pause) = held_back.next(announced, std::time::Instant::now())
        {
            tokio::select! {
                () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)) => {}
                _ = released.changed() => {}
            }
            continue;
        }
        held_back.clear();
        tokio::select! {
            _ = wake.recv() => {}
            () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RECHECK)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
