//! Hosted-login records: attempts in flight and sessions.

use super::{StorageError, Store};

/// A login started at `/auth/login/…`, waiting for the callback.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LoginAttempt {
    pub state: String,
    pub issuer: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for LoginAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A session as stored; the cookie value itself is never stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    pub issuer: String,
    /// The verified principal, as JSON.
    pub principal: String,
    /// Kept for the logout's `id_token_hint`.
    pub id_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub idle_timeout: i64,
    pub absolute_expiry: i64,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("issuer", &self.issuer)
            .field("created_at", &self.created_at)
            .field("absolute_expiry", &self.absolute_expiry)
            .finish_non_exhaustive()
    }
}

impl SessionRecord {
    /// Whether the session is still valid at `now`.
    pub fn live_at(&self, now: i64) -> bool {
        now < self.absolute_expiry && now < self.last_seen_at + self.idle_timeout
    }
}

/// Last-seen times are written at most this often, not on every request.
const TOUCH_EVERY_SECONDS: i64 = 60;

impl Store {
    pub async fn insert_login_attempt(&self, attempt: &LoginAttempt) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO login_attempts (state, issuer, nonce, pkce_verifier, return_to, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&attempt.state)
        .bind(&attempt.issuer)
        .bind(&attempt.nonce)
        .bind(&attempt.pkce_verifier)
        .bind(&attempt.return_to)
        .bind(attempt.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes and returns the attempt for `state`, if it exists and has not expired.
    /// Single use: a second callback with the same state finds nothing.
    pub async fn take_login_attempt(
        &self,
        state: &str,
        now: i64,
    ) -> Result<Option<LoginAttempt>, StorageError> {
        let attempt: Option<LoginAttempt> = sqlx::query_as(
            "DELETE FROM login_attempts WHERE state = $1 \
             RETURNING state, issuer, nonce, pkce_verifier, return_to, expires_at",
        )
        .bind(state)
        .fetch_optional(&self.pool)
        .await?;
        sqlx::query("DELETE FROM login_attempts WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(attempt.filter(|a| a.expires_at > now))
    }

    pub async fn insert_session(
        &self,
        id_hash: &str,
        session: &SessionRecord,
        audit: &crate::domain::audit::Record,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, issuer, principal, id_token, created_at, last_seen_at, idle_timeout, absolute_expiry) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id_hash)
        .bind(&session.issuer)
        .bind(&session.principal)
        .bind(&session.id_token)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.idle_timeout)
        .bind(session.absolute_expiry)
        .execute(&mut *tx)
        .await?;
        super::audit::insert(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session stored under `id_hash`, live or not.
    async fn stored_session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT issuer, principal, id_token, created_at, last_seen_at, idle_timeout, absolute_expiry \
             FROM sessions WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The live session for `id_hash` at `now`, its last-seen time moved forward. An
    /// expired session is deleted and not returned.
    pub async fn session(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StorageError> {
        let Some(mut session) = self.stored_session(id_hash).await? else {
            return Ok(None);
        };
        if !session.live_at(now) {
            self.delete_session(id_hash).await?;
            return Ok(None);
        }
        if now - session.last_seen_at >= TOUCH_EVERY_SECONDS {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                .bind(now)
                .bind(id_hash)
                .execute(&self.pool)
                .await?;
            session.last_seen_at = now;
        }
        Ok(Some(session))
    }

    /// Logs out: ends the session and commits the access record `record_for` makes of it
    /// in the same transaction, so a logout is never without its record, nor a record
    /// without its logout. Returns the session if it existed.
    pub async fn end_session(
        &self,
        id_hash: &str,
        record_for: impl FnOnce(&SessionRecord) -> Option<crate::domain::audit::Record>,
    ) -> Result<Option<SessionRecord>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let ended: Option<SessionRecord> = sqlx::query_as(
            "DELETE FROM sessions WHERE id_hash = $1 \
             RETURNING issuer, principal, id_token, created_at, last_seen_at, idle_timeout, absolute_expiry",
        )
        .bind(id_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(record) = ended.as_ref().and_then(record_for) {
            super::audit::insert(&mut tx, &record).await?;
        }
        if ended.is_some() {
            let change = crate::domain::authz::Change::SessionEnded(id_hash.to_owned());
            super::stream::announce_change(&mut tx, self.backend, &change).await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    /// Until when (Unix ms) the session lives unless it is used again, without counting
    /// this as a use; `None` if it is gone. Open streams ask this, and must not keep their
    /// session alive by asking.
    pub async fn session_live_until(&self, id_hash: &str) -> Result<Option<i64>, StorageError> {
        Ok(self.stored_session(id_hash).await?.map(|s| {
            s.absolute_expiry
                .min(s.last_seen_at.saturating_add(s.idle_timeout))
                .saturating_mul(1000)
        }))
    }

    /// Ends a session; returns it if it existed.
    pub async fn delete_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<SessionRecord>, StorageError> {
        Ok(sqlx::query_as(
            "DELETE FROM sessions WHERE id_hash = $1 \
             RETURNING issuer, principal, id_token, created_at, last_seen_at, idle_timeout, absolute_expiry",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }
}
