//! One open stream: it catches up from the database when it starts or falls behind, and
//! otherwise takes what the hub hands it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use icbt_auth::principal::Authenticated;
use tokio::sync::mpsc;

use super::RECHECK;
use super::hub::{Delivery, Registration};
use crate::domain::audit::{Access, Action};
use crate::domain::episode::EpisodeId;
use crate::storage::stream::{StreamEntry, StreamFilter, StreamPosition};
use crate::storage::{Store, now_ms};

/// Records that `caller` was given the messages of `entries`: one read per episode.
pub(super) async fn record_delivery(
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

#[derive(Debug)]
pub struct Reader {
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

/// Entries a catching-up stream reads per query.
const BATCH: i64 = 100;

impl Reader {
    pub(super) fn new(
        store: Store,
        (access, caller): (Arc<Access>, Arc<Authenticated>),
        filter: StreamFilter,
        position: StreamPosition,
        (registration, live, behind): (
            Registration,
            mpsc::Receiver<Arc<Delivery>>,
            Arc<AtomicBool>,
        ),
    ) -> Self {
        Self {
            store,
            access,
            caller,
            filter,
            position,
            buffer: VecDeque::new(),
            live,
            behind,
            catching_up: true,
            _registration: registration,
        }
    }

    /// The next entry, waiting for one as long as it takes.
    pub async fn next(&mut self) -> Option<Arc<Delivery>> {
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
