//! Group commit for sends on PostgreSQL. Sends that arrive while an append is running
//! wait in a queue; the next free writer takes all of them (up to [`MAX_BATCH`]) and
//! appends them in one statement and one commit. Under load this turns a commit, a
//! round trip and a statement's planning per message into one per batch (pgbench, this
//! schema, 2 cores: eight messages per statement commit 7,200 messages/s against 1,360
//! one at a time). A send that arrives while no other is in progress runs the
//! one-message statement in its own task, with no hop through a writer.
//!
//! The batch statement is all or nothing, like the one-message statement. It appends
//! only messages whose id is new, whose episode is open and whose send context version
//! (if they carry one, see [`super::send_context`]) is current; anything else it leaves
//! for the sender, who then runs the one-message statement, which knows how to answer a
//! retry, a conflict, a closed episode or a moved version. If the batch statement fails
//! (a message id used twice in one batch or by a concurrent send, the database gone),
//! every sender in it tries alone: nothing is acknowledged that was not committed.
//!
//! Sequence numbers stay gap-free and in arrival order per episode: a batch locks its
//! episodes in id order (so two writers, or two gateway instances, cannot deadlock),
//! adds each episode's count of new messages to `next_seq`, and numbers that episode's
//! messages in the order they were queued. Rows are inserted in (episode, seq) order, so
//! stream positions and outbox ids follow the sequence as they do one at a time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use sqlx::FromRow as _;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::messaging::{Appended, Audience, EpisodeRefusal, MessagePosition, NewMessage};
use super::send_context::CURRENT_VERSION;
use super::{Store, audit};
use crate::domain::audit::Record;
use crate::domain::episode::EpisodeId;

/// Messages per batch statement: 33 parameters each, 2,112 in all.
pub(super) const MAX_BATCH: usize = 64;

/// Writers taking batches from one queue at once: while one waits for its commit to
/// reach the disk, the other can run its statement.
pub(super) const WRITERS: usize = 2;

/// Parameters per message in the batch statement: 15 of the message, 17 of its record,
/// and the send context version it was decided at.
const PARAMS: usize = 33;

/// The queue of sends waiting for a writer; `None` on SQLite (one writer at a time
/// anyway) and inside the writers themselves.
#[derive(Clone, Debug, Default)]
pub(super) struct Appender {
    queue: Option<mpsc::Sender<Pending>>,
    /// Messages committed by batch statements so far.
    batched: Arc<AtomicU64>,
    in_flight: InFlight,
}

/// Starts [`WRITERS`] tasks that each take whatever is queued, at most `max` at a time,
/// and hand it to `work`; returns the queue, which holds at most `capacity`.
pub(super) fn spawn_writers<T, F, Fut>(capacity: usize, max: usize, work: F) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (queue, receiver) = mpsc::channel(capacity);
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..WRITERS {
        let (receiver, work) = (receiver.clone(), work.clone());
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(max);
                if receiver.lock().await.recv_many(&mut batch, max).await == 0 {
                    return;
                }
                work(batch).await;
            }
        });
    }
    queue
}

/// Counts the appends (or other queued writes) in progress, so that one arriving while
/// nothing else is runs at once in its own task, without a hop through a writer: a
/// lone request pays no queueing, and only requests that overlap others are batched.
#[derive(Clone, Debug, Default)]
pub(super) struct InFlight(Arc<AtomicUsize>);

/// One write in progress, until dropped.
#[derive(Debug)]
pub(super) struct Entered {
    count: Arc<AtomicUsize>,
    alone: bool,
}

impl InFlight {
    pub(super) fn enter(&self) -> Entered {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        Entered {
            count: self.0.clone(),
            alone: before == 0,
        }
    }
}

impl Entered {
    /// Nothing else was in progress when this one began.
    pub(super) fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A queued send, owned: the sender's borrowed request may not outlive its task.
#[derive(Debug)]
pub(super) struct Pending {
    message: OwnedMessage,
    audit: Record,
    reply: oneshot::Sender<Batched>,
}

#[derive(Debug)]
struct OwnedMessage {
    episode: EpisodeId,
    id: uuid::Uuid,
    kind: String,
    sender_kind: String,
    sender_ref: String,
    sender_device: String,
    recipients: String,
    content_type: String,
    body: Vec<u8>,
    attachments: String,
    request_hash: String,
    audience: Audience,
    context_version: Option<i64>,
    created_at_ms: i64,
}

/// A writer's answer to one queued send.
#[derive(Debug)]
enum Batched {
    /// What the append did, final.
    Done(Result<Appended, EpisodeRefusal>),
    /// Not appended with the batch: run the one-message statement.
    Alone,
}

impl Appender {
    /// Starts the writers for `store` (PostgreSQL).
    pub(super) fn start(store: &Store) -> Self {
        let batched = Arc::new(AtomicU64::new(0));
        let (store, counter) = (store.clone(), batched.clone());
        let queue = spawn_writers(MAX_BATCH * 16, MAX_BATCH, move |batch| {
            write(store.clone(), batch, counter.clone())
        });
        Self {
            queue: Some(queue),
            batched,
            in_flight: InFlight::default(),
        }
    }

    /// Marks an append in progress (see [`InFlight`]).
    pub(super) fn enter(&self) -> Entered {
        self.in_flight.enter()
    }

    /// Messages committed by batch statements so far.
    pub(super) fn batched(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// Appends through a writer. `None` when the sender should run the one-message
    /// statement itself: no writers, or the batch left this message out.
    pub(super) async fn append(
        &self,
        message: &NewMessage<'_>,
        audit: &Record,
    ) -> Option<Result<Appended, EpisodeRefusal>> {
        let queue = self.queue.as_ref()?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            message: OwnedMessage {
                episode: message.episode,
                id: message.id,
                kind: message.kind.to_owned(),
                sender_kind: message.sender_kind.to_owned(),
                sender_ref: message.sender_ref.to_owned(),
                sender_device: message.sender_device.to_owned(),
                recipients: message.recipients.to_owned(),
                content_type: message.content_type.to_owned(),
                body: message.body.to_vec(),
                attachments: message.attachments.to_owned(),
                request_hash: message.request_hash.to_owned(),
                audience: message.audience,
                context_version: message.context_version,
                created_at_ms: super::now_ms(),
            },
            audit: audit.clone(),
            reply,
        };
        queue.send(pending).await.ok()?;
        match answer.await {
            Ok(Batched::Done(result)) => Some(result),
            // A writer that ended without answering committed nothing for this send
            // that the one-message statement would not recognise as a retry.
            Ok(Batched::Alone) | Err(_) => None,
        }
    }
}

/// Appends what a writer took from the queue and answers each sender.
async fn write(store: Store, mut batch: Vec<Pending>, batched: Arc<AtomicU64>) {
    if let [one] = batch.as_slice() {
        let result = store
            .append_message_in_one_statement(&store.writers, &one.message.borrowed(), &one.audit)
            .await;
        if let Some(one) = batch.pop() {
            let _ = one.reply.send(Batched::Done(result));
        }
        return;
    }
    let appended = store.append_batch(&batch).await;
    let committed = appended.iter().flatten().count();
    batched.fetch_add(u64::try_from(committed).unwrap_or(0), Ordering::Relaxed);
    for (i, pending) in batch.into_iter().enumerate() {
        let answer = match appended.get(i).copied().flatten() {
            Some(position) => Batched::Done(Ok(Appended::Created(position))),
            None => Batched::Alone,
        };
        let _ = pending.reply.send(answer);
    }
}

impl OwnedMessage {
    fn borrowed(&self) -> NewMessage<'_> {
        NewMessage {
            episode: self.episode,
            id: self.id,
            kind: &self.kind,
            sender_kind: &self.sender_kind,
            sender_ref: &self.sender_ref,
            sender_device: &self.sender_device,
            recipients: &self.recipients,
            content_type: &self.content_type,
            body: &self.body,
            attachments: &self.attachments,
            request_hash: &self.request_hash,
            audience: self.audience,
            context_version: self.context_version,
        }
    }
}

/// Column types of a queued message's parameters, in bind order; the first row of the
/// VALUES list carries them, so PostgreSQL types every column alike.
const TYPES: [&str; PARAMS] = [
    "bigint", "text", "text", "text", "text", "text", "text", "text", "text", "bytea", "text",
    "bigint", "text", "text", "integer", // the message
    "text", "bigint", "text", "text", "text", "text", "text", "text", "text", "text", "text",
    "text", "text", "text", "text", "text", "text",   // its access record
    "bigint", // the send context version, or NULL
];

/// The batch statement for `n` messages (2 ≤ n ≤ [`MAX_BATCH`]).
fn batch_sql(n: usize) -> &'static str {
    static SQL: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..=MAX_BATCH).map(build_batch_sql).collect());
    SQL.get(n).map_or("", String::as_str)
}

/// The statement looks up each message id and locks each episode by its key, through
/// `LATERAL` subqueries the planner cannot turn into joins: as a `NOT EXISTS` and an
/// `IN`, a plan made while the tables were small (a new deployment, before autovacuum's
/// first `ANALYZE`) hashed the whole `messages` and `episodes` tables for every batch,
/// a cost that grew with the tables (seen with `auto_explain`: 1.7 ms a batch of three
/// against 3 261 messages).
fn build_batch_sql(n: usize) -> String {
    let records: Vec<String> = (1..=17).map(|k| format!("r{k}")).collect();
    let rows: Vec<String> = (0..n)
        .map(|row| {
            let slots: Vec<String> = TYPES
                .iter()
                .enumerate()
                .map(|(k, ty)| {
                    let slot = row * PARAMS + k + 1;
                    if row == 0 {
                        format!("${slot}::{ty}")
                    } else {
                        format!("${slot}")
                    }
                })
                .collect();
            format!("({})", slots.join(", "))
        })
        .collect();
    let record_list = records.join(", ");
    let record_fields = records
        .iter()
        .map(|r| format!("f.{r}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH i (ord, ep, id, kind, sender_kind, sender_ref, sender_device, recipients, \
           content_type, body, request_hash, created_at_ms, attachments, audience, screened, \
           {record_list}, context_version) AS (VALUES {values}), \
         f AS (SELECT i.*, row_number() OVER (PARTITION BY i.ep ORDER BY i.ord) AS r \
           FROM i LEFT JOIN LATERAL (SELECT 1 AS taken FROM messages x \
             WHERE x.episode_id = i.ep AND x.id = i.id LIMIT 1) x ON true \
           WHERE x.taken IS NULL \
             AND (i.context_version IS NULL OR i.context_version = {CURRENT_VERSION})), \
         c AS (SELECT ep, count(*) AS n FROM f GROUP BY ep), \
         l AS (SELECT e.id FROM (SELECT ep FROM c ORDER BY ep) c, \
           LATERAL (SELECT id FROM episodes WHERE id = c.ep \
             AND state IN ('planned', 'active') FOR UPDATE) e), \
         s AS (UPDATE episodes e SET next_seq = e.next_seq + c.n, {last_tx} FROM c, l \
           WHERE e.id = c.ep AND l.id = e.id AND e.state IN ('planned', 'active') \
           RETURNING e.id AS ep, e.next_seq - c.n AS first, e.last_tx AS tx), \
         m AS (INSERT INTO messages (episode_id, seq, id, kind, sender_kind, sender_ref, \
           sender_device, recipients, content_type, body, request_hash, created_at_ms, \
           attachments, audience, tx) \
           SELECT f.ep, s.first + f.r - 1, f.id, f.kind, f.sender_kind, f.sender_ref, \
           f.sender_device, f.recipients, f.content_type, f.body, f.request_hash, \
           f.created_at_ms, f.attachments, f.audience, s.tx FROM f JOIN s ON s.ep = f.ep \
           ORDER BY f.ep, f.r \
           RETURNING episode_id, id, seq, created_at_ms, tx), \
         o AS (INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, \
           created_at_ms, screened) \
           SELECT m.episode_id, 'message', m.seq, m.created_at_ms, m.created_at_ms, f.screened \
           FROM m JOIN f ON f.ep = m.episode_id AND f.id = m.id WHERE f.audience = 'all' \
           ORDER BY m.episode_id, m.seq), \
         a AS (INSERT INTO audit_records ({columns}) SELECT {record_fields} \
           FROM m JOIN f ON f.ep = m.episode_id AND f.id = m.id) \
         SELECT f.ord, m.seq, m.created_at_ms, m.tx FROM m JOIN f ON f.ep = m.episode_id AND f.id = m.id",
        values = rows.join(", "),
        last_tx = super::stream::EPISODE_LAST_TX,
        columns = audit::COLUMNS,
    )
}

impl Store {
    /// Messages committed by batch statements since the store opened (PostgreSQL; 0 on
    /// SQLite): how often sends shared a commit.
    pub fn messages_appended_in_batches(&self) -> u64 {
        self.appender.batched()
    }

    /// Appends `batch` in one statement. For each message, its position if it was
    /// appended; `None` for those left to their senders (all of them if the statement
    /// failed).
    async fn append_batch(&self, batch: &[Pending]) -> Vec<Option<MessagePosition>> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(batch_sql(batch.len())));
        for (ord, pending) in batch.iter().enumerate() {
            let m = &pending.message;
            let screen = m.kind == "questionnaire-response";
            query = query
                .bind(i64::try_from(ord).unwrap_or(i64::MAX))
                .bind(m.episode.to_string())
                .bind(m.id.to_string())
                .bind(m.kind.as_str())
                .bind(m.sender_kind.as_str())
                .bind(m.sender_ref.as_str())
                .bind(m.sender_device.as_str())
                .bind(m.recipients.as_str())
                .bind(m.content_type.as_str())
                .bind(m.body.as_slice())
                .bind(m.request_hash.as_str())
                .bind(m.created_at_ms)
                .bind(m.attachments.as_str())
                .bind(m.audience.as_str())
                .bind(i32::from(!screen));
            query = audit::bind_record(query, &pending.audit).bind(m.context_version);
        }
        let mut positions = vec![None; batch.len()];
        let rows = match query.fetch_all(&self.writers).await {
            Ok(rows) => rows,
            Err(e) => {
                // Expected now and then (a retry racing its original); each sender
                // then learns its own outcome alone.
                tracing::debug!(error = %e, messages = batch.len(), "batch append failed; appending one by one");
                return positions;
            }
        };
        let mut latest_tx = None;
        for row in &rows {
            let parsed = super::rows::BatchedRow::from_row(row).map(|r| {
                let position = MessagePosition {
                    seq: r.appended.seq,
                    created_at_ms: r.appended.created_at_ms,
                };
                (
                    usize::try_from(r.ord).unwrap_or(usize::MAX),
                    position,
                    r.appended.tx,
                )
            });
            match parsed {
                Ok((ord, position, tx)) => {
                    if let Some(slot) = positions.get_mut(ord) {
                        *slot = Some(position);
                    }
                    latest_tx = latest_tx.max(Some(tx));
                }
                Err(e) => {
                    // Committed, but unreadable: the sender's retry finds it as its own.
                    tracing::error!(error = %e, "cannot read a batch append's result");
                }
            }
        }
        if let Some(tx) = latest_tx {
            self.announcer.announce(tx);
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_statement_numbers_every_parameter_once() {
        for n in [2, 7, MAX_BATCH] {
            let sql = batch_sql(n);
            let highest = n * PARAMS;
            assert!(sql.contains(&format!("${highest}")), "n = {n}");
            assert!(!sql.contains(&format!("${}", highest + 1)), "n = {n}");
            assert!(sql.contains("$1::bigint") && sql.contains("$10::bytea"));
        }
        assert_eq!(TYPES.len(), 15 + 17 + 1);
    }
}
