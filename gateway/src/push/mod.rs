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

pub mod authz;
mod hub;
mod reader;
mod routes;

pub use crate::slots::{PrincipalKey, Slot, StreamSlots};
pub use hub::{Delivery, Hub};
pub use reader::Reader;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use icbt_auth::principal::Authenticated;
use tokio::sync::broadcast;

use crate::domain::audit::Access;
use crate::storage::stream::{StreamEntry, StreamFilter, StreamPosition};
use crate::storage::{StorageError, Store, now_ms};

/// Wake-ups for stream readers; bounded, so a slow reader lags (and re-reads) rather than
/// holding memory.
#[derive(Debug, Clone)]
pub struct Push {
    tx: broadcast::Sender<()>,
    /// Authorization changes committed on this instance or announced by others: each
    /// open stream checks whether one ends it.
    changes: broadcast::Sender<authz::Change>,
    pub hub: Arc<Hub>,
    /// Turns true when the gateway begins to shut down: every open stream ends then, on
    /// HTTP/2 as on HTTP/1.1, and its client resumes elsewhere with `Last-Event-ID`.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Push {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(256).0,
            changes: broadcast::channel(CHANGES).0,
            hub: Arc::new(Hub::default()),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

/// Authorization changes a stream may have pending before it lags, and ends to be
/// authorized afresh.
const CHANGES: usize = 1024;

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

/// How long a stream waits for the hub before reading the database anyway: a safety net
/// only, since wake-ups are reliable (and a reconnected listener wakes everyone).
const RECHECK: Duration = Duration::from_mins(1);

impl Push {
    /// Announces that something new was committed.
    pub fn wake(&self) {
        // No receiver is fine: nobody is listening.
        let _ = self.tx.send(());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.tx.subscribe()
    }

    /// Tells this instance's open streams of committed authorization changes (other
    /// instances hear of them through the database).
    pub fn changed(&self, changes: impl IntoIterator<Item = authz::Change>) {
        for change in changes {
            // No receiver is fine: no stream is open.
            let _ = self.changes.send(change);
        }
    }

    /// Authorization changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<authz::Change> {
        self.changes.subscribe()
    }

    /// Forwards PostgreSQL notifications from every instance, reconnecting after errors.
    /// Returns at once on SQLite.
    pub async fn forward_notifications(self, store: Store) {
        let mut backoff = Duration::from_millis(200);
        // Whether changes may have been announced while this instance was not listening.
        let mut missed = false;
        loop {
            match store.message_listener().await {
                Ok(None) => return,
                Ok(Some(mut listener)) => {
                    backoff = Duration::from_millis(200);
                    // Whatever was announced while we were away: everyone re-reads, and
                    // every stream is authorized afresh.
                    self.wake();
                    if std::mem::take(&mut missed) {
                        self.changed([authz::Change::Unknown]);
                    }
                    // `try_recv`, not `recv`: `recv` reconnects by itself and hides that
                    // notifications were lost meanwhile.
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => {
                                if notification.channel() == authz::CHANNEL {
                                    self.changed([authz::Change::decode(notification.payload())]);
                                    continue;
                                }
                                if let Ok(tx) = notification.payload().parse::<i64>() {
                                    self.hub.committed(tx);
                                }
                                self.wake();
                            }
                            Ok(None) => {
                                // The connection was lost; the next call reconnects.
                                tracing::warn!(
                                    "notification listener lost its connection; reconnecting"
                                );
                                self.wake();
                                self.changed([authz::Change::Unknown]);
                            }
                            Err(_) => break,
                        }
                    }
                    tracing::warn!("message notification listener disconnected");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "message notification listener cannot connect");
                }
            }
            missed = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// A stream of `filter`'s entries after `position`, for `caller`. Registered with the
    /// hub before it catches up, so nothing committed meanwhile is missed.
    pub fn open(
        &self,
        store: Store,
        filter: StreamFilter,
        position: StreamPosition,
        access: Access,
        caller: Authenticated,
    ) -> Reader {
        let (access, caller) = (Arc::new(access), Arc::new(caller));
        let (registration, live, behind) =
            self.hub
                .register(filter.clone(), position, access.clone(), caller.clone());
        Reader::new(
            store,
            (access, caller),
            filter,
            position,
            (registration, live, behind),
        )
    }

    /// Up to `limit` of `filter`'s entries after `after`, waiting up to `wait` for one
    /// when there are none (a long poll); the entries handed out are recorded as read by
    /// `caller` first.
    ///
    /// A wait ends early, with the reason, when `watch` (the caller's authorization)
    /// ends.
    pub async fn poll(
        &self,
        store: &Store,
        (filter, after, limit): (&StreamFilter, StreamPosition, i64),
        wait: Duration,
        (access, caller): (&Access, &Authenticated),
        mut watch: Option<&mut authz::Authorization>,
    ) -> Result<(Vec<StreamEntry>, Option<authz::EndReason>), StorageError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut wake = self.subscribe();
        let mut held_back = hub::HeldBack::default();
        let mut released = self.hub.releases();
        loop {
            let entries = store.stream_after(filter, after, now_ms(), limit).await?;
            if !entries.is_empty() || tokio::time::Instant::now() >= deadline {
                reader::record_delivery(store, access, caller, &entries).await?;
                return Ok((entries, None));
            }
            let ended = async {
                match watch.as_deref_mut() {
                    Some(watch) => watch.ended().await,
                    None => std::future::pending().await,
                }
            };
            // A message announced as committed but held back below the horizon (an older
            // transaction still runs) is readable soon, with no announcement when it is:
            // look again shortly while the horizon has not passed it.
            let announced = self.hub.committed_tx.load(Ordering::Relaxed);
            if announced > after.tx
                && store.stream_head().await?.tx <= announced
                && let Some(pause) = held_back.next(announced, std::time::Instant::now())
            {
                tokio::select! {
                    reason = ended => return Ok((Vec::new(), Some(reason))),
                    () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)) => {}
                    _ = released.changed() => {}
                }
                continue;
            }
            held_back.clear();
            tokio::select! {
                reason = ended => return Ok((Vec::new(), Some(reason))),
                _ = wake.recv() => {}
                () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RECHECK)) => {}
            }
        }
    }
}
