//! The per-principal message stream: every message of every episode a principal may see,
//! in commit order, resumable from a position.
//!
//! SQLite commits one writer at a time, so `rowid` order is commit order. PostgreSQL
//! commits concurrently, so a position is `(tx, pos)`: a transaction id and an identity;
//! readers only read rows below the oldest running transaction (`pg_snapshot_xmin`), so
//! no later commit can land behind a position already passed.
//!
//! Within an episode, positions follow the sequence: `tx` is the writing transaction's
//! id, or the episode's last message's `tx` when that is greater ([`EPISODE_LAST_TX`]).
//! Transaction ids are handed out before row locks are won, so without that a transaction
//! that got its id first could write the episode's next message behind one written with a
//! later id. A borrowed `tx` is only read once every transaction below it has ended, the
//! same horizon as any other.
//! New messages are announced on the `icbt_messages` channel by [`Announcer`], after the
//! commit, not inside it: PostgreSQL serialises the commits of transactions that NOTIFY on
//! one database-wide lock, which would undo group commit for every send (measured with
//! pgbench at 64 clients: 3,096 against 2,187 commits/s).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::FromRow;

use super::{Backend, StorageError, Store, StoredMessage};
use crate::domain::episode::{EpisodeId, NationalId, OrgNumber};
use icbt_auth::identity::HprNumber;

/// The `SET` clause, on an `UPDATE episodes` that takes the episode's next sequence
/// number under its row lock, that makes the episode's `last_tx` the `tx` its new messages
/// carry: never below the last one's, so positions follow the sequence (PostgreSQL).
pub(super) const EPISODE_LAST_TX: &str =
    "last_tx = GREATEST(last_tx, pg_current_xact_id()::text::bigint)";

/// The horizon (PostgreSQL): the id of the oldest running transaction, below which no
/// commit can still land, as a scalar subquery so that a statement computes it once, not
/// once per row. A macro, so that statements can `concat!` it.
macro_rules! horizon {
    () => {
        "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"
    };
}
pub(super) use horizon;

/// The NOTIFY channel for new messages; the payload is the highest transaction id of a
/// message committed before it was sent (readers wait for it to come below the horizon).
pub const CHANNEL: &str = "icbt_messages";

/// Wakes every instance's stream readers after commits: one NOTIFY at a time, on the
/// pool whose commits do not wait for the WAL flush. A commit that signals while a
/// NOTIFY is on its way gets the next one, so every commit is followed by a NOTIFY that
/// starts after it; many commits share one. A NOTIFY lost to a crash between commit and
/// announcement costs the other instances latency (their next wake-up, or their periodic
/// re-read), never a message: the database is what readers read. Nothing on SQLite,
/// which is one instance.
#[derive(Clone, Debug, Default)]
pub(super) struct Announcer(Option<Arc<Announced>>);

#[derive(Debug, Default)]
pub(super) struct Announced {
    signal: tokio::sync::Notify,
    /// The highest transaction id of a committed message.
    latest_tx: AtomicI64,
}

impl Announcer {
    pub(super) fn start(pool: sqlx::AnyPool) -> Self {
        let announced = Arc::new(Announced::default());
        tokio::spawn(announce(pool, announced.clone()));
        Self(Some(announced))
    }

    /// After the commit of a message written by transaction `tx`.
    pub(super) fn announce(&self, tx: i64) {
        if let Some(announced) = &self.0 {
            announced.latest_tx.fetch_max(tx, Ordering::Relaxed);
            announced.signal.notify_one();
        }
    }
}

/// The least time between two announcements: a lone commit is announced at once, a busy
/// stretch of commits shares one NOTIFY per gap (each costs a round trip here and a
/// wake-up of every listening instance). Other instances hear of a commit at most this
/// much later; this instance's streams are woken in-process.
const ANNOUNCE_GAP: std::time::Duration = std::time::Duration::from_millis(2);

async fn announce(pool: sqlx::AnyPool, announced: Arc<Announced>) {
    let mut last = tokio::time::Instant::now();
    while !pool.is_closed() {
        announced.signal.notified().await;
        tokio::time::sleep_until(last + ANNOUNCE_GAP).await;
        last = tokio::time::Instant::now();
        let latest = announced.latest_tx.load(Ordering::Relaxed).to_string();
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(latest)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "announcing new messages failed; trying again");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            announced.signal.notify_one();
        }
    }
}

/// Tells every instance's open streams of an authorization change committed by `conn`'s
/// transaction: a NOTIFY on [`crate::domain::authz::CHANNEL`], delivered at its commit and
/// not at all if it rolls back (PostgreSQL; SQLite is one instance, told in-process).
/// Changes are rare (logouts, revocations, care-team changes), so the commit lock a
/// NOTIFY takes costs nothing measurable here, unlike for sends.
pub(super) async fn announce_change(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    change: &crate::domain::authz::Change,
) -> Result<(), StorageError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::domain::authz::CHANNEL)
            .bind(change.encode())
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A position in a principal's stream, shown to clients as `tx.pos`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPosition {
    pub tx: i64,
    pub pos: i64,
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.pos)
    }
}

/// Why a position string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stream position is two non-negative numbers joined by a dot")]
pub struct PositionError;

impl FromStr for StreamPosition {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, pos) = s.split_once('.').ok_or(PositionError)?;
        let tx: i64 = tx.parse().map_err(|_| PositionError)?;
        let pos: i64 = pos.parse().map_err(|_| PositionError)?;
        if tx < 0 || pos < 0 {
            return Err(PositionError);
        }
        Ok(Self { tx, pos })
    }
}

/// Whose episodes a stream covers.
#[derive(Debug, Clone)]
pub enum StreamFilter {
    Patient(NationalId),
    /// A therapist: care teams, cover only until it ends.
    CareTeam(HprNumber),
    /// A system client: the clinics of its organisations.
    Clinics(Vec<OrgNumber>),
    /// Every message: the instance's one shared reader, which dispatches in memory.
    Everything,
}

impl StreamFilter {
    /// Whether an entry belongs to this stream, given the episode's care team at `now_ms`;
    /// the same rule as the SQL of [`Store::stream_after`].
    pub fn matches(&self, entry: &StreamEntry, team: &[super::CareTeamEntry], now_ms: i64) -> bool {
        match self {
            Self::Patient(pid) => entry.patient == pid.expose() && entry.message.audience == "all",
            Self::CareTeam(hpr) => team
                .iter()
                .any(|m| &m.hpr_number == hpr && m.until_ms.is_none_or(|until| until > now_ms)),
            Self::Clinics(orgs) => orgs.iter().any(|o| o.as_str() == entry.organisation),
            Self::Everything => true,
        }
    }
}

/// One stream entry.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub position: StreamPosition,
    pub episode: EpisodeId,
    pub message: StoredMessage,
    /// The episode's patient (national id) and clinic (organisation number), for routing
    /// in memory; never shown to clients.
    pub patient: String,
    pub organisation: String,
}

/// The statement that reads `filter`'s entries after a position, and the values of its
/// filter (bound from `$4` on, after the position's `$1, $2` and the time `$3`, and
/// before the limit); `None` for a filter that can match nothing. Public so that its
/// plan can be checked against a database (`tests/tests/storage.rs`).
///
/// On PostgreSQL, each of the caller's episodes is read from its position on through
/// `messages_by_episode_position` (migration 20), and the horizon is computed once per
/// statement, not per row. Read through the prepared statement's generic plan, the
/// statement used to walk every message its episodes ever had: a therapist reconnecting
/// 10 000 streams at once with 34 000 messages in their episodes held every pooled
/// connection for seconds, and requests waiting for one were refused with 503.
pub fn catch_up_statement(
    backend: Backend,
    filter: &StreamFilter,
) -> Option<(String, Vec<String>)> {
    let (position, order, visible) = match backend {
        Backend::Sqlite => ("0 AS tx, m.rowid AS pos", "m.rowid", "m.rowid > $2"),
        Backend::Postgres => (
            "m.tx, m.pos",
            "m.tx, m.pos",
            concat!("(m.tx, m.pos) > ($1, $2) AND m.tx < ", horizon!()),
        ),
    };
    let (condition, values): (String, Vec<String>) = match filter {
        StreamFilter::Patient(pid) => ("e.patient_nin = $4 AND m.audience = 'all'".into(), vec![pid.expose().to_owned()]),
        StreamFilter::CareTeam(hpr) => (
            "e.id IN (SELECT episode_id FROM care_team WHERE hpr_number = $4 AND (until_ms IS NULL OR until_ms > $3))".into(),
            vec![hpr.as_str().to_owned()],
        ),
        StreamFilter::Clinics(orgs) => {
            let slots: Vec<String> = (0..orgs.len()).map(|i| format!("${}", i + 4)).collect();
            (
                format!("e.clinic_id IN (SELECT id FROM clinics WHERE org_number IN ({}))", slots.join(", ")),
                orgs.iter().map(|o| o.as_str().to_owned()).collect(),
            )
        }
        StreamFilter::Everything => ("1 = 1".into(), Vec::new()),
    };
    if values.is_empty() && !matches!(filter, StreamFilter::Everything) {
        return None;
    }
    let limit_slot = values.len() + 4;
    // $1 and $3 appear in some variants only; SQLite and PostgreSQL both accept
    // unused numbered parameters only if every one is bound, so all are bound.
    let sql = format!(
        "SELECT {position}, m.episode_id, m.id, m.seq, m.kind, m.sender_kind, m.sender_ref, m.sender_device, \
         m.recipients, m.content_type, m.body, m.attachments, m.created_at_ms, m.audience, \
         e.patient_nin AS route_patient, c.org_number AS route_organisation \
         FROM messages m JOIN episodes e ON e.id = m.episode_id JOIN clinics c ON c.id = e.clinic_id \
         WHERE {visible} AND {condition} AND $3 = $3 AND $1 = $1 ORDER BY {order} LIMIT ${limit_slot}"
    );
    Some((sql, values))
}

impl Store {
    /// Entries after `after` for `filter`, in commit order, at most `limit`.
    pub async fn stream_after(
        &self,
        filter: &StreamFilter,
        after: StreamPosition,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<StreamEntry>, StorageError> {
        let Some((sql, values)) = catch_up_statement(self.backend, filter) else {
            return Ok(Vec::new());
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.tx)
            .bind(after.pos)
            .bind(now_ms);
        for value in &values {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let row = super::rows::StreamRow::from_row(r)?;
                Ok(StreamEntry {
                    position: StreamPosition {
                        tx: row.tx,
                        pos: row.pos,
                    },
                    episode: EpisodeId(
                        uuid::Uuid::parse_str(&row.episode_id)
                            .map_err(|_| StorageError::Corrupt("messages.episode_id"))?,
                    ),
                    message: row.message.try_into()?,
                    patient: row.route_patient,
                    organisation: row.route_organisation,
                })
            })
            .collect()
    }

    /// The present end of the stream: a reader starting here sees only what commits next.
    pub async fn stream_head(&self) -> Result<StreamPosition, StorageError> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT 0 AS tx, COALESCE(MAX(rowid), 0) AS pos FROM messages",
            Backend::Postgres => {
                concat!("SELECT ", horizon!(), " AS tx, 0::bigint AS pos")
            }
        };
        let row: super::rows::PositionRow = sqlx::query_as(sql).fetch_one(&self.pool).await?;
        Ok(StreamPosition {
            tx: row.tx,
            pos: row.pos,
        })
    }

    /// A listener for new-message and authorization-change notifications from every instance (PostgreSQL only;
    /// SQLite is one instance, announced in-process).
    pub async fn message_listener(
        &self,
    ) -> Result<Option<sqlx::postgres::PgListener>, StorageError> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener
            .listen_all([CHANNEL, crate::domain::authz::CHANNEL])
            .await?;
        Ok(Some(listener))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order() {
        let p: StreamPosition = "12.7".parse().unwrap();
        assert_eq!(p, StreamPosition { tx: 12, pos: 7 });
        assert_eq!(p.to_string(), "12.7");
        assert!(StreamPosition { tx: 12, pos: 9 } > p);
        assert!(StreamPosition { tx: 13, pos: 1 } > p);
        for bad in ["", "1", "a.b", "-1.2", "1.-2", "1.2.3"] {
            assert!(bad.parse::<StreamPosition>().is_err(), "{bad}");
        }
    }
}
