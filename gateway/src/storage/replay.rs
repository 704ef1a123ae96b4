//! DPoP proof ids on PostgreSQL, recorded together: every authenticated request records
//! its proof id, so under load the ids of requests that arrive while another is being
//! recorded go into one INSERT by one of two writers, instead of one statement and one
//! wake-up of a database backend each. A lone request records its id itself, with the
//! same statement. The commit does not wait for the WAL flush (see [`super::Store`]).
//!
//! A batch is deduplicated before it is written: of two requests with one proof id, the
//! first queued gets the database's answer and the second is a replay. Batch sizes are
//! rounded up to a power of two by repeating the last id (the database skips the
//! copies), so each connection prepares eight statements, not one per size.

use std::collections::HashSet;
use std::sync::LazyLock;

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Entered, InFlight, spawn_writers};

/// Proof ids per INSERT.
const MAX_BATCH: usize = 128;

/// The queue of proof ids waiting for a writer; `None` on SQLite.
#[derive(Clone, Debug, Default)]
pub(super) struct ReplayQueue {
    queue: Option<mpsc::Sender<Seen>>,
    in_flight: InFlight,
}

#[derive(Debug)]
struct Seen {
    key: String,
    expires_at: i64,
    /// `true` if first seen; the error's text if the database did not answer.
    reply: oneshot::Sender<Result<bool, String>>,
}

impl ReplayQueue {
    /// Starts the writers on `pool`.
    pub(super) fn start(pool: &AnyPool) -> Self {
        let pool = pool.clone();
        let queue = spawn_writers(MAX_BATCH * 8, MAX_BATCH, move |batch| {
            answer(pool.clone(), batch)
        });
        Self {
            queue: Some(queue),
            in_flight: InFlight::default(),
        }
    }

    /// Marks a check in progress (see [`InFlight`]).
    pub(super) fn enter(&self) -> Entered {
        self.in_flight.enter()
    }

    /// Records `key` through a writer; `None` when there are no writers (SQLite) or
    /// they are gone, and the caller records it alone.
    pub(super) async fn first_use(
        &self,
        key: &str,
        expires_at: i64,
    ) -> Option<Result<bool, String>> {
        let queue = self.queue.as_ref()?;
        let (reply, answer) = oneshot::channel();
        let seen = Seen {
            key: key.to_owned(),
            expires_at,
            reply,
        };
        queue.send(seen).await.ok()?;
        answer.await.ok()
    }
}

/// Records what a writer took from the queue and answers each request.
async fn answer(pool: AnyPool, batch: Vec<Seen>) {
    let ids: Vec<(&str, i64)> = batch
        .iter()
        .map(|seen| (seen.key.as_str(), seen.expires_at))
        .collect();
    let recorded = record(&pool, &ids).await;
    drop(ids);
    let mut answered = HashSet::with_capacity(batch.len());
    for seen in batch {
        let answer = match &recorded {
            // Only the first request with an id can have recorded it.
            Ok(new) => Ok(answered.insert(seen.key.clone()) && new.contains(&seen.key)),
            Err(e) => Err(e.clone()),
        };
        let _ = seen.reply.send(answer);
    }
}

/// Inserts proof ids (key, expiry), at most [`MAX_BATCH`]; returns those that were not
/// recorded before.
pub(super) async fn record(pool: &AnyPool, ids: &[(&str, i64)]) -> Result<HashSet<String>, String> {
    let size = ids.len().next_power_of_two().min(MAX_BATCH);
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(insert_sql(size)));
    let padded = ids.iter().chain(std::iter::repeat(ids.last()).flatten());
    for (key, expires_at) in padded.take(size) {
        query = query.bind(*key).bind(*expires_at);
    }
    let keys: Vec<String> = query.fetch_all(pool).await.map_err(|e| e.to_string())?;
    Ok(keys.into_iter().collect())
}

/// `INSERT … ON CONFLICT DO NOTHING RETURNING key` for `n` ids, `n` a power of two.
fn insert_sql(n: usize) -> &'static str {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..=MAX_BATCH.trailing_zeros())
            .map(|power| {
                let rows: Vec<String> = (0..1_usize << power)
                    .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                    .collect();
                format!(
                    "INSERT INTO dpop_replay (key, expires_at) VALUES {} \
                     ON CONFLICT (key) DO NOTHING RETURNING key",
                    rows.join(", ")
                )
            })
            .collect()
    });
    SQL.get(n.trailing_zeros() as usize)
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_per_power_of_two() {
        for n in [1, 2, 64, MAX_BATCH] {
            let sql = insert_sql(n);
            assert!(sql.contains(&format!("${}", 2 * n)), "n = {n}");
            assert!(!sql.contains(&format!("${},", 2 * n + 1)), "n = {n}");
        }
    }
}
