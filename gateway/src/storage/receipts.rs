//! Delivery and read receipts, kept as per-reader watermarks.

use super::{Backend, StorageError, Store, now_ms};
use crate::domain::episode::EpisodeId;

/// One reader's marks in one episode.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ReceiptMarks {
    pub reader_kind: String,
    pub reader_ref: String,
    pub delivered_up_to: i64,
    pub read_up_to: i64,
    pub updated_at_ms: i64,
}

impl Store {
    /// The highest sequence number of the episode (0 when it has no messages).
    pub async fn last_seq(&self, episode: EpisodeId) -> Result<i64, StorageError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT next_seq - 1 AS last FROM episodes WHERE id = $1")
                .bind(episode.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(last.unwrap_or(0))
    }

    /// Moves a reader's marks forward (never back). Reading implies delivery.
    pub async fn mark(
        &self,
        episode: EpisodeId,
        reader_kind: &str,
        reader_ref: &str,
        delivered_up_to: i64,
        read_up_to: i64,
        audit: &crate::domain::audit::Record,
    ) -> Result<ReceiptMarks, StorageError> {
        let max = match self.backend {
            Backend::Sqlite => "MAX",
            Backend::Postgres => "GREATEST",
        };
        let delivered = delivered_up_to.max(read_up_to);
        let sql = format!(
            "INSERT INTO receipts (episode_id, reader_kind, reader_ref, delivered_up_to, read_up_to, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (episode_id, reader_kind, reader_ref) DO UPDATE SET \
             delivered_up_to = {max}(receipts.delivered_up_to, excluded.delivered_up_to), \
             read_up_to = {max}(receipts.read_up_to, excluded.read_up_to), updated_at_ms = excluded.updated_at_ms"
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(episode.to_string())
            .bind(reader_kind)
            .bind(reader_ref)
            .bind(delivered)
            .bind(read_up_to)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        super::audit::insert(&mut tx, audit).await?;
        tx.commit().await?;
        let marks = self.receipts(episode).await?;
        marks
            .into_iter()
            .find(|m| m.reader_kind == reader_kind && m.reader_ref == reader_ref)
            .ok_or(StorageError::Corrupt("receipts"))
    }

    /// Every reader's marks in the episode.
    pub async fn receipts(&self, episode: EpisodeId) -> Result<Vec<ReceiptMarks>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT reader_kind, reader_ref, delivered_up_to, read_up_to, updated_at_ms FROM receipts \
             WHERE episode_id = $1 ORDER BY reader_kind, reader_ref",
        )
        .bind(episode.to_string())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Messages after `read_up_to` that someone other than the reader sent.
    pub async fn unread_count(
        &self,
        episode: EpisodeId,
        reader_kind: &str,
        reader_ref: &str,
        read_up_to: i64,
    ) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) AS n FROM messages WHERE episode_id = $1 AND seq > $2 \
             AND NOT (sender_kind = $3 AND sender_ref = $4) AND (audience = 'all' OR $3 <> 'patient')",
        )
        .bind(episode.to_string())
        .bind(read_up_to)
        .bind(reader_kind)
        .bind(reader_ref)
        .fetch_one(&self.pool)
        .await?)
    }
}
