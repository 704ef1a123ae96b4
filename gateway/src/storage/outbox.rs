//! The journal outbox: rows are written inside the transactions that create what the EPJ
//! must receive, claimed by exporters, and finished as done, retried later, or dead.
//!
//! Claiming takes the oldest pending row of each episode only (no earlier pending row of
//! the same episode may exist), so an episode's rows reach the EPJ in order, and a row
//! in back-off holds back the rows behind it. On PostgreSQL the claim is a transaction
//! that locks those rows `FOR UPDATE SKIP LOCKED` and stays open while the exporter
//! works: exporters on several instances share the outbox, never work on one episode at
//! once, and an exporter that dies releases its rows with its connection. SQLite has one
//! writer and one exporter; its claim holds no transaction (a read transaction kept open
//! across HTTP calls could not write afterwards).

use sqlx::{Any, AnyConnection, Transaction};

use super::{Backend, StorageError, Store, now_ms};
use crate::domain::audit::Record;
use crate::domain::episode::EpisodeId;

/// What a row asks the exporter to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxKind {
    /// The EpisodeOfCare as the episode is now.
    Episode,
    /// One message (`seq`).
    Message(i64),
    /// The treatment summary to the summary record.
    Summary,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Episode => "episode",
            Self::Message(_) => "message",
            Self::Summary => "summary",
        }
    }

    fn seq(self) -> Option<i64> {
        match self {
            Self::Message(seq) => Some(seq),
            _ => None,
        }
    }
}

/// One claimed or listed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub episode: EpisodeId,
    pub kind: OutboxKind,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub outcome: Option<String>,
    pub created_at_ms: i64,
}

/// Counts by state, for metrics and `export status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub done: i64,
    pub dead: i64,
    /// Age of the oldest pending row, ms.
    pub oldest_pending_ms: Option<i64>,
}

impl OutboxCounts {
    fn add(&mut self, state: &str, n: i64, oldest: Option<i64>) -> Result<(), StorageError> {
        match state {
            "pending" => {
                self.pending = n;
                self.oldest_pending_ms = oldest.map(|t| now_ms().saturating_sub(t));
            }
            "done" => self.done = n,
            "dead" => self.dead = n,
            _ => return Err(StorageError::Corrupt("outbox.state")),
        }
        Ok(())
    }
}

/// `$first, $first+1, …` for `n` parameters.
fn numbered(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Delivered; `audit` records the export (the exporter read the message).
    Done { audit: Option<Box<Record>> },
    /// Try again at `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Give up until an operator replays it; `outcome` is the EPJ's answer, if any.
    Dead {
        error: String,
        outcome: Option<String>,
    },
}

/// Rows claimed by one exporter; finish each, then [`Claim::commit`].
#[derive(Debug)]
pub struct Claim {
    tx: Option<Transaction<'static, Any>>,
    pub rows: Vec<OutboxRow>,
}

/// `attempts` is INTEGER, which PostgreSQL returns as 32 bits and SQLite as 64: read as
/// BIGINT on both.
const COLUMNS: &str = "id, episode_id, kind, message_seq, state, \
    CAST(attempts AS BIGINT) AS attempts, next_attempt_at_ms, last_error, outcome, created_at_ms";
const COLUMNS_O: &str = "o.id, o.episode_id, o.kind, o.message_seq, o.state, \
    CAST(o.attempts AS BIGINT) AS attempts, o.next_attempt_at_ms, o.last_error, o.outcome, \
    o.created_at_ms";

/// From `(rank, row)` in row order, the rows to work on: per episode, the rows ranked
/// 1, 2, 3, … without a gap (a row skipped as locked or not due ends the run), for the
/// first `episodes` episodes. Episodes stay together, in order of their first row.
fn runs(rows: Vec<(i64, OutboxRow)>, episodes: usize) -> Vec<OutboxRow> {
    let mut order: Vec<EpisodeId> = Vec::new();
    let mut by_episode: std::collections::HashMap<EpisodeId, Vec<OutboxRow>> =
        std::collections::HashMap::new();
    for (rank, row) in rows {
        match by_episode.get_mut(&row.episode) {
            Some(run) if i64::try_from(run.len()).is_ok_and(|n| n + 1 == rank) => run.push(row),
            None if rank == 1 && order.len() < episodes => {
                order.push(row.episode);
                by_episode.insert(row.episode, vec![row]);
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .flat_map(|e| by_episode.remove(&e).unwrap_or_default())
        .collect()
}

/// Adds a row inside the caller's transaction.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    episode: &str,
    kind: OutboxKind,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms) \
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(episode)
    .bind(kind.as_str())
    .bind(kind.seq())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds a message row; `screen`: a questionnaire response the exporter must screen for
/// risk at once.
pub(super) async fn enqueue_message(
    conn: &mut AnyConnection,
    episode: &str,
    seq: i64,
    screen: bool,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms, screened) \
         VALUES ($1, 'message', $2, $3, $3, $4)",
    )
    .bind(episode)
    .bind(seq)
    .bind(now)
    .bind(i32::from(!screen))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Questionnaire responses not yet screened for risk, oldest first:
    /// `(row id, episode, seq)`.
    pub async fn unscreened(&self, limit: i64) -> Result<Vec<(i64, EpisodeId, i64)>, StorageError> {
        let rows: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, episode_id, message_seq FROM outbox WHERE screened = 0 ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, episode, seq)| {
                Ok((
                    id,
                    EpisodeId(
                        uuid::Uuid::parse_str(&episode)
                            .map_err(|_| StorageError::Corrupt("outbox.episode_id"))?,
                    ),
                    seq.ok_or(StorageError::Corrupt("outbox.message_seq"))?,
                ))
            })
            .collect()
    }

    pub async fn mark_screened(&self, id: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE outbox SET screened = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims due rows of up to `episodes` episodes: of each, a run of at most
    /// `per_episode` consecutive pending rows that starts at its oldest pending row, in
    /// order. Episodes come oldest row first.
    /// `clinics` limits the claim to those clinics' episodes (one route's).
    pub async fn claim_outbox(
        &self,
        episodes: i64,
        per_episode: i64,
        clinics: Option<&[String]>,
    ) -> Result<Claim, StorageError> {
        if clinics.is_some_and(<[String]>::is_empty) {
            return Ok(Claim {
                tx: None,
                rows: Vec::new(),
            });
        }
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE OF o SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // The rank is taken from this statement's snapshot; `o.state = 'pending'` is
        // checked again on the locked row (PostgreSQL re-evaluates the locked table's
        // conditions on a row changed meanwhile), so a row another exporter finished after
        // the snapshot is not claimed again, and [`runs`] drops an episode whose first
        // row is missing.
        let route = clinics.map_or_else(String::new, |clinics| {
            format!(
                " AND episode_id IN (SELECT e.id FROM episodes e JOIN clinics c ON c.id = e.clinic_id \
                 WHERE c.org_number IN ({}))",
                numbered(4, clinics.len())
            )
        });
        let sql = format!(
            "WITH ranked AS (SELECT id, ROW_NUMBER() OVER (PARTITION BY episode_id ORDER BY id) AS rank \
             FROM outbox WHERE state = 'pending'{route}) \
             SELECT {COLUMNS_O}, r.rank AS rank FROM outbox o JOIN ranked r ON r.id = o.id \
             WHERE r.rank <= $2 AND o.state = 'pending' AND o.next_attempt_at_ms <= $1 \
             ORDER BY o.id LIMIT $3{lock}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(per_episode)
            .bind(episodes.saturating_mul(per_episode));
        for clinic in clinics.unwrap_or_default() {
            query = query.bind(clinic.clone());
        }
        let ranked = |rows: Vec<sqlx::any::AnyRow>| -> Result<Vec<(i64, OutboxRow)>, StorageError> {
            rows.iter().map(super::rows::ranked_outbox).collect()
        };
        let limit = usize::try_from(episodes).unwrap_or(usize::MAX);
        match self.backend {
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                let rows = ranked(query.fetch_all(&mut *tx).await?)?;
                Ok(Claim {
                    tx: Some(tx),
                    rows: runs(rows, limit),
                })
            }
            Backend::Sqlite => {
                let rows = ranked(query.fetch_all(&self.pool).await?)?;
                Ok(Claim {
                    tx: None,
                    rows: runs(rows, limit),
                })
            }
        }
    }

    /// Records how the attempt at `row` ended (inside the claim on PostgreSQL).
    pub async fn finish_outbox(
        &self,
        claim: &mut Claim,
        row: &OutboxRow,
        finish: &Finish,
    ) -> Result<(), StorageError> {
        if let Some(tx) = claim.tx.as_mut() {
            return Self::write_finish(tx, row, finish).await;
        }
        let mut own = self.pool.begin().await?;
        Self::write_finish(&mut own, row, finish).await?;
        own.commit().await?;
        Ok(())
    }

    async fn write_finish(
        conn: &mut AnyConnection,
        row: &OutboxRow,
        finish: &Finish,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        match finish {
            Finish::Done { audit } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'done', attempts = attempts + 1, done_at_ms = $1, \
                     last_error = NULL WHERE id = $2",
                )
                .bind(now)
                .bind(row.id)
                .execute(&mut *conn)
                .await?;
                if let Some(record) = audit {
                    super::audit::insert(conn, record).await?;
                }
            }
            Finish::Retry { at_ms, error } => {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = $1, \
                     last_error = $2 WHERE id = $3",
                )
                .bind(*at_ms)
                .bind(error)
                .bind(row.id)
                .execute(&mut *conn)
                .await?;
            }
            Finish::Dead { error, outcome } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = $1, \
                     outcome = $2, done_at_ms = $3 WHERE id = $4",
                )
                .bind(error)
                .bind(outcome.clone())
                .bind(now_ms())
                .bind(row.id)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Marks delivered rows done and writes their export records, in two statements
    /// (inside the claim on PostgreSQL).
    pub async fn finish_done(
        &self,
        claim: &mut Claim,
        done: &[(i64, Option<Box<Record>>)],
    ) -> Result<(), StorageError> {
        if done.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = done
            .iter()
            .filter_map(|(_, r)| r.as_deref().cloned())
            .collect();
        let slots: Vec<String> = (0..done.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE outbox SET state = 'done', attempts = attempts + 1, done_at_ms = $1, last_error = NULL \
             WHERE id IN ({})",
            slots.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms());
        for (id, _) in done {
            query = query.bind(*id);
        }
        if let Some(tx) = claim.tx.as_mut() {
            query.execute(&mut **tx).await?;
            super::audit::insert_many(tx, &records).await?;
            return Ok(());
        }
        let mut own = self.pool.begin().await?;
        query.execute(&mut *own).await?;
        super::audit::insert_many(&mut own, &records).await?;
        own.commit().await?;
        Ok(())
    }

    /// Gives the claimed rows back untouched (their route is unreachable: nothing about
    /// them is to be recorded).
    pub async fn release_claim(&self, claim: Claim) -> Result<(), StorageError> {
        if let Some(tx) = claim.tx {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// Ends the claim: on PostgreSQL commits what was finished and releases the rows.
    pub async fn commit_claim(&self, claim: Claim) -> Result<(), StorageError> {
        if let Some(tx) = claim.tx {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Rows in `state`, oldest first, after `after_id`; of one clinic's episodes only
    /// when `clinic` (an organisation number) is given.
    pub async fn outbox_rows(
        &self,
        state: &str,
        after_id: i64,
        limit: i64,
        clinic: Option<&str>,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        let (of_clinic, limit_slot) = if clinic.is_some() {
            (
                " AND episode_id IN (SELECT e.id FROM episodes e JOIN clinics c ON c.id = e.clinic_id \
                 WHERE c.org_number = $3)",
                "$4",
            )
        } else {
            ("", "$3")
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM outbox WHERE state = $1 AND id > $2{of_clinic} ORDER BY id LIMIT {limit_slot}"
        )))
        .bind(state)
        .bind(after_id);
        if let Some(clinic) = clinic {
            query = query.bind(clinic);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(super::rows::read::<OutboxRow>).collect()
    }

    /// Rows that went dead in `[from_ms, to_ms)` (rows that died before the time was kept
    /// count from when they were written), oldest first, at most `limit`.
    pub async fn dead_letters_between(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM outbox WHERE state = 'dead' \
             AND COALESCE(done_at_ms, created_at_ms) >= $1 AND COALESCE(done_at_ms, created_at_ms) < $2 \
             ORDER BY id LIMIT $3"
        )))
        .bind(from_ms)
        .bind(to_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::rows::read::<OutboxRow>).collect()
    }

    pub async fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>, StorageError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM outbox WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(super::rows::read::<OutboxRow>).transpose()
    }

    /// Puts a dead row back in line, due now, with its attempts reset. `false` when it is
    /// not dead (unknown, pending or done).
    pub async fn replay_outbox(&self, id: i64) -> Result<bool, StorageError> {
        let changed = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = $1 \
             WHERE id = $2 AND state = 'dead'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Counts per clinic (organisation number), for `export status` with a register.
    pub async fn outbox_counts_by_clinic(
        &self,
    ) -> Result<std::collections::BTreeMap<String, OutboxCounts>, StorageError> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT c.org_number, o.state, COUNT(*) AS n, MIN(o.created_at_ms) AS oldest \
             FROM outbox o JOIN episodes e ON e.id = o.episode_id JOIN clinics c ON c.id = e.clinic_id \
             GROUP BY c.org_number, o.state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_clinic = std::collections::BTreeMap::<String, OutboxCounts>::new();
        for (clinic, state, n, oldest) in rows {
            let counts = by_clinic.entry(clinic).or_default();
            counts.add(&state, n, oldest)?;
        }
        Ok(by_clinic)
    }

    /// Episodes per clinic (organisation number), for `export status` to name the
    /// clinics outside the register.
    pub async fn episodes_by_clinic(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, StorageError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.org_number, COUNT(e.id) AS n FROM clinics c \
             JOIN episodes e ON e.clinic_id = c.id GROUP BY c.org_number",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StorageError> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT state, COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = OutboxCounts::default();
        for (state, n, oldest) in rows {
            counts.add(&state, n, oldest)?;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, episode: u128) -> OutboxRow {
        OutboxRow {
            id,
            episode: EpisodeId(uuid::Uuid::from_u128(episode)),
            kind: OutboxKind::Message(id),
            state: "pending".into(),
            attempts: 0,
            next_attempt_at_ms: 0,
            last_error: None,
            outcome: None,
            created_at_ms: 0,
        }
    }

    fn ids(rows: &[OutboxRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn runs_keep_each_episode_in_order_and_together() {
        let rows = vec![
            (1, row(10, 1)),
            (1, row(11, 2)),
            (2, row(12, 1)),
            (2, row(13, 2)),
            (3, row(14, 1)),
        ];
        assert_eq!(ids(&runs(rows, 8)), [10, 12, 14, 11, 13]);
    }

    #[test]
    fn runs_drop_an_episode_whose_first_row_was_not_claimed() {
        // Rank 1 of episode 1 is locked by another exporter (or finished meanwhile):
        // sending its second row first would break the order.
        let rows = vec![(2, row(12, 1)), (3, row(14, 1)), (1, row(13, 2))];
        assert_eq!(ids(&runs(rows, 8)), [13]);
    }

    #[test]
    fn runs_end_at_the_first_gap() {
        let rows = vec![
            (1, row(10, 1)),
            (2, row(11, 1)),
            (4, row(13, 1)),
            (5, row(14, 1)),
        ];
        assert_eq!(ids(&runs(rows, 8)), [10, 11]);
    }

    #[test]
    fn runs_take_at_most_the_episode_limit() {
        let rows = vec![
            (1, row(10, 1)),
            (1, row(11, 2)),
            (1, row(12, 3)),
            (2, row(13, 1)),
            (2, row(14, 3)),
        ];
        assert_eq!(ids(&runs(rows, 2)), [10, 13, 11]);
    }
}
