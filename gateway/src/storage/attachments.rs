//! Encrypted attachments of an episode, addressed by SHA-256.

use super::{StorageError, Store, now_ms};
use crate::domain::episode::EpisodeId;

/// An attachment to store: the bytes are already checked against `sha256`.
#[derive(Clone)]
pub struct NewAttachment<'a> {
    pub episode: EpisodeId,
    pub sha256: &'a str,
    pub content_type: &'a str,
    pub created_by_kind: &'a str,
    pub created_by_ref: &'a str,
    pub body: &'a [u8],
}

impl std::fmt::Debug for NewAttachment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAttachment")
            .field("episode", &self.episode)
            .field("size", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores the attachment; `true` if new, `false` if the episode already had it.
    pub async fn insert_attachment(
        &self,
        a: &NewAttachment<'_>,
        audit: &crate::domain::audit::Record,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO attachments (episode_id, sha256, size, content_type, created_by_kind, created_by_ref, created_at_ms, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (episode_id, sha256) DO NOTHING",
        )
        .bind(a.episode.to_string())
        .bind(a.sha256)
        .bind(i64::try_from(a.body.len()).unwrap_or(i64::MAX))
        .bind(a.content_type)
        .bind(a.created_by_kind)
        .bind(a.created_by_ref)
        .bind(now_ms())
        .bind(a.body)
        .execute(&mut *tx)
        .await?;
        super::audit::insert(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// The attachment's content type and bytes.
    pub async fn attachment(
        &self,
        episode: EpisodeId,
        sha256: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT content_type, body FROM attachments WHERE episode_id = $1 AND sha256 = $2",
        )
        .bind(episode.to_string())
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Which of `hashes` the episode does not have.
    pub async fn missing_attachments(
        &self,
        episode: EpisodeId,
        hashes: &[String],
    ) -> Result<Vec<String>, StorageError> {
        let mut missing = Vec::new();
        for hash in hashes {
            let found =
                sqlx::query("SELECT 1 FROM attachments WHERE episode_id = $1 AND sha256 = $2")
                    .bind(episode.to_string())
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?;
            if found.is_none() {
                missing.push(hash.clone());
            }
        }
        Ok(missing)
    }
}
