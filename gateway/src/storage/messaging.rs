//! Episodes as the messaging API uses them: idempotent creation, care teams, state
//! transitions, and messages with a gap-free sequence per episode.
//!
//! A send is one transaction: it first bumps the episode's `next_seq` (which locks the
//! episode row, so sends to one episode are ordered and sends to different episodes run
//! side by side), then checks the client's message id, then inserts. A rollback undoes the
//! bump, so sequence numbers never have gaps. Taking the write lock first also spares
//! SQLite the read-then-write upgrade that fails instead of waiting. On PostgreSQL the
//! same steps, with the audit record, the outbox row and the notification, are one
//! statement: one round trip and one commit per send, and sends that arrive together
//! share one statement and one commit (`batch`).

use std::sync::LazyLock;

use sqlx::FromRow as _;

use super::outbox::OutboxKind;
use super::send_context::CURRENT_VERSION;
use super::{StorageError, Store, now_ms};
use crate::domain::audit::Record;
use crate::domain::episode::{
    CareTeamEntry, Clinic, ClinicId, Episode, EpisodeId, EpisodeState, NationalId, OrgNumber,
};
use icbt_auth::identity::HprNumber;

/// A message to append.
#[derive(Clone)]
pub struct NewMessage<'a> {
    pub episode: EpisodeId,
    pub id: uuid::Uuid,
    pub kind: &'a str,
    pub sender_kind: &'a str,
    pub sender_ref: &'a str,
    pub sender_device: &'a str,
    /// JSON array of recipient key ids.
    pub recipients: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// JSON array of attachment SHA-256s.
    pub attachments: &'a str,
    /// SHA-256 over everything above: a retry must match it exactly.
    pub request_hash: &'a str,
    /// Who may list it: everyone in the episode, or the care team only.
    pub audience: Audience,
    /// Set when the send was decided on a kept send context: its version. The append
    /// then commits only if the version is still current, and answers
    /// [`Appended::Stale`] otherwise (see [`super::send_context`]).
    pub context_version: Option<i64>,
}

/// Who may list a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The patient and the care team (every message a client sends).
    All,
    /// The care team only (risk alerts).
    CareTeam,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::CareTeam => "care-team",
        }
    }
}

impl std::fmt::Debug for NewMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMessage")
            .field("episode", &self.episode)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Where a stored message sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessagePosition {
    pub seq: i64,
    pub created_at_ms: i64,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// A new message.
    Created(MessagePosition),
    /// The same request again: the original result.
    Replayed(MessagePosition),
    /// The id is taken by a different request.
    Conflict,
    /// Nothing was committed: the send was decided on a kept send context whose version
    /// has moved since. Decide again on a fresh one.
    Stale,
}

/// A stored message, as history returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub kind: String,
    pub sender_kind: String,
    pub sender_ref: String,
    pub sender_device: String,
    pub recipients: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// JSON array of attachment SHA-256s.
    pub attachments: String,
    pub created_at_ms: i64,
    /// `all` or `care-team`.
    pub audience: String,
}

impl std::fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessage")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why an episode change or send was refused.
#[derive(Debug, thiserror::Error)]
pub enum EpisodeRefusal {
    #[error("no such episode")]
    NotFound,
    #[error("the episode id is taken by an episode with other details")]
    IdConflict,
    #[error("an episode cannot go from {from} to {to}")]
    InvalidTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("the episode is {0}; it takes no new messages")]
    Closed(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for EpisodeRefusal {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(StorageError::Database(e))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

const EPISODE_COLUMNS: &str =
    "id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms";

impl Store {
    /// The clinic with `org_number`, created with `name` when new.
    pub async fn upsert_clinic(
        &self,
        org_number: &OrgNumber,
        name: &str,
    ) -> Result<Clinic, StorageError> {
        sqlx::query("INSERT INTO clinics (id, name, org_number, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (org_number) DO NOTHING")
            .bind(ClinicId::new_random().to_string())
            .bind(name)
            .bind(org_number.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(
            "SELECT id, name, org_number, created_at_ms FROM clinics WHERE org_number = $1",
        )
        .bind(org_number.as_str())
        .fetch_one(&self.pool)
        .await?;
        super::rows::read::<Clinic>(&row)
    }

    /// Writes the clinic register's clinics under its names (at start), so episodes and
    /// the patient's access log name them as configured.
    pub async fn register_clinics(&self, clinics: &[(&str, &str)]) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        for (org_number, name) in clinics {
            sqlx::query(
                "INSERT INTO clinics (id, name, org_number, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (org_number) DO UPDATE SET name = excluded.name",
            )
            .bind(ClinicId::new_random().to_string())
            .bind(*name)
            .bind(*org_number)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates the episode `id`, or returns it when it already exists with the same
    /// details (a retried PUT). `true` when created now.
    pub async fn put_episode(
        &self,
        id: EpisodeId,
        clinic: ClinicId,
        patient: &NationalId,
        programme: &str,
        audit: &Record,
    ) -> Result<(Episode, bool), EpisodeRefusal> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO episodes (id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, 'planned', $5, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(clinic.to_string())
        .bind(patient.expose())
        .bind(programme)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            super::audit::insert(&mut tx, audit).await?;
            super::outbox::enqueue(&mut tx, &id.to_string(), OutboxKind::Episode).await?;
        }
        tx.commit().await?;
        let episode = self.episode(id).await?.ok_or(EpisodeRefusal::NotFound)?;
        if episode.clinic_id != clinic
            || &episode.patient != patient
            || episode.programme != programme
        {
            return Err(EpisodeRefusal::IdConflict);
        }
        Ok((episode, inserted))
    }

    /// Replaces the episode's care team; returns what that changes for open streams,
    /// which the other instances hear of at the commit.
    pub async fn set_care_team(
        &self,
        episode: EpisodeId,
        team: &[CareTeamEntry],
        audit: &Record,
    ) -> Result<Vec<crate::domain::authz::Change>, StorageError> {
        let mut tx = self.pool.begin().await?;
        super::audit::insert(&mut tx, audit).await?;
        let now = now_ms();
        // The episode's row lock, taken first, orders concurrent replacements: each diffs
        // against the team it replaces.
        sqlx::query("UPDATE episodes SET updated_at_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(episode.to_string())
            .execute(&mut *tx)
            .await?;
        let old: Vec<CareTeamEntry> =
            sqlx::query("SELECT hpr_number, role, until_ms FROM care_team WHERE episode_id = $1")
                .bind(episode.to_string())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(super::rows::read::<CareTeamEntry>)
                .collect::<Result<_, _>>()?;
        let changes = crate::domain::authz::team_changes(&old, team, now);
        for change in &changes {
            super::stream::announce_change(&mut tx, self.backend, change).await?;
        }
        sqlx::query("DELETE FROM care_team WHERE episode_id = $1")
            .bind(episode.to_string())
            .execute(&mut *tx)
            .await?;
        // The history the review reports read: the old team's stretch ends now, the new
        // one's starts now.
        sqlx::query(
            "UPDATE care_team_periods SET to_ms = $1 WHERE episode_id = $2 AND to_ms IS NULL",
        )
        .bind(now)
        .bind(episode.to_string())
        .execute(&mut *tx)
        .await?;
        for member in team {
            let role = if member.cover { "cover" } else { "therapist" };
            sqlx::query("INSERT INTO care_team (episode_id, hpr_number, role, until_ms) VALUES ($1, $2, $3, $4)")
                .bind(episode.to_string())
                .bind(member.hpr_number.as_str())
                .bind(role)
                .bind(member.until_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO care_team_periods (episode_id, hpr_number, role, until_ms, from_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(episode.to_string())
            .bind(member.hpr_number.as_str())
            .bind(role)
            .bind(member.until_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        super::outbox::enqueue(&mut tx, &episode.to_string(), OutboxKind::Episode).await?;
        tx.commit().await?;
        Ok(changes)
    }

    /// When the clinician's next cover period ends after `now_ms`, if one does.
    pub async fn next_cover_end(
        &self,
        hpr: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(until_ms) FROM care_team WHERE hpr_number = $1 AND until_ms > $2",
        )
        .bind(hpr)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn care_team(&self, episode: EpisodeId) -> Result<Vec<CareTeamEntry>, StorageError> {
        let rows = sqlx::query("SELECT hpr_number, role, until_ms FROM care_team WHERE episode_id = $1 ORDER BY hpr_number")
            .bind(episode.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(super::rows::read::<CareTeamEntry>)
            .collect()
    }

    /// Moves the episode to `to`, if the life cycle allows it from where it is.
    pub async fn transition(
        &self,
        id: EpisodeId,
        to: EpisodeState,
        audit: &Record,
    ) -> Result<Episode, EpisodeRefusal> {
        let current = self.episode(id).await?.ok_or(EpisodeRefusal::NotFound)?;
        if !current.state.may_move_to(to) {
            return Err(EpisodeRefusal::InvalidTransition {
                from: current.state.as_str(),
                to: to.as_str(),
            });
        }
        if current.state == to {
            return Ok(current);
        }
        // Compare-and-set: a concurrent transition makes this one re-check.
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE episodes SET state = $1, updated_at_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now_ms())
        .bind(id.to_string())
        .bind(current.state.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            super::audit::insert(&mut tx, audit).await?;
            super::outbox::enqueue(&mut tx, &id.to_string(), OutboxKind::Episode).await?;
            if to == EpisodeState::Finished {
                super::outbox::enqueue(&mut tx, &id.to_string(), OutboxKind::Summary).await?;
            }
        }
        tx.commit().await?;
        if changed == 0 {
            let now = self.episode(id).await?.ok_or(EpisodeRefusal::NotFound)?;
            return if now.state == to {
                Ok(now)
            } else {
                Err(EpisodeRefusal::InvalidTransition {
                    from: now.state.as_str(),
                    to: to.as_str(),
                })
            };
        }
        self.episode(id).await?.ok_or(EpisodeRefusal::NotFound)
    }

    async fn existing_message(
        &self,
        episode: EpisodeId,
        id: uuid::Uuid,
        request_hash: &str,
    ) -> Result<Option<Appended>, sqlx::Error> {
        let row: Option<(i64, i64, String)> = sqlx::query_as("SELECT seq, created_at_ms, request_hash FROM messages WHERE episode_id = $1 AND id = $2")
            .bind(episode.to_string())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some((seq, created_at_ms, stored_hash)) = row else {
            return Ok(None);
        };
        let position = MessagePosition { seq, created_at_ms };
        let same = stored_hash == request_hash;
        Ok(Some(if same {
            Appended::Replayed(position)
        } else {
            Appended::Conflict
        }))
    }

    /// Appends a message in one transaction, or recognises a retry.
    pub async fn append_message(
        &self,
        message: &NewMessage<'_>,
        audit: &Record,
    ) -> Result<Appended, EpisodeRefusal> {
        // SQLite's sequence bump. It takes the write lock, so no change to the send
        // context can commit between its version check and this transaction's commit.
        static BUMP: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE episodes SET next_seq = next_seq + 1 \
                 WHERE id = $1 AND state IN ('planned', 'active') \
                 AND ($2 IS NULL OR $2 = {CURRENT_VERSION}) RETURNING next_seq - 1 AS seq"
            )
        });
        if self.backend == super::Backend::Postgres {
            let entered = self.appender.enter();
            if !entered.alone()
                && let Some(appended) = self.appender.append(message, audit).await
            {
                return appended;
            }
            return self
                .append_message_in_one_statement(&self.pool, message, audit)
                .await;
        }
        let episode = message.episode.to_string();
        let mut tx = self.pool.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(BUMP.as_str()))
            .bind(&episode)
            .bind(message.context_version)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(seq) = seq else {
            drop(tx);
            return self.retry_or_closed(message).await;
        };
        let existing = sqlx::query("SELECT 1 FROM messages WHERE episode_id = $1 AND id = $2")
            .bind(&episode)
            .bind(message.id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            drop(tx);
            return self
                .existing_message(message.episode, message.id, message.request_hash)
                .await?
                .ok_or(EpisodeRefusal::Storage(StorageError::Corrupt("messages")));
        }
        let created_at_ms = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO messages (episode_id, seq, id, kind, sender_kind, sender_ref, sender_device, recipients, \
             content_type, body, request_hash, created_at_ms, attachments, audience) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&episode)
        .bind(seq)
        .bind(message.id.to_string())
        .bind(message.kind)
        .bind(message.sender_kind)
        .bind(message.sender_ref)
        .bind(message.sender_device)
        .bind(message.recipients)
        .bind(message.content_type)
        .bind(message.body)
        .bind(message.request_hash)
        .bind(created_at_ms)
        .bind(message.attachments)
        .bind(message.audience.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                super::audit::insert(&mut tx, audit).await?;
                if message.audience == Audience::All {
                    let screen = message.kind == "questionnaire-response";
                    super::outbox::enqueue_message(&mut tx, &episode, seq, screen).await?;
                }
                // SQLite only (PostgreSQL appends in one statement): one instance, woken
                // in-process, nothing to announce to others.
                tx.commit().await?;
                Ok(Appended::Created(MessagePosition { seq, created_at_ms }))
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                self.existing_message(message.episode, message.id, message.request_hash)
                    .await?
                    .ok_or(EpisodeRefusal::Storage(StorageError::Database(e)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// PostgreSQL: the whole append as one statement, so one round trip and one commit.
    /// Data-modifying CTEs run to completion together or not at all; a closed or missing
    /// episode bumps nothing and inserts nothing, and a message id already used fails
    /// the statement on `UNIQUE (episode_id, id)`, undoing the bump. Both fall back to
    /// [`Self::existing_message`] to tell a retry from a conflict. Runs on `pool`: the
    /// main one, or the writers' own.
    pub(super) async fn append_message_in_one_statement(
        &self,
        pool: &sqlx::AnyPool,
        message: &NewMessage<'_>,
        audit: &Record,
    ) -> Result<Appended, EpisodeRefusal> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH s AS (UPDATE episodes SET next_seq = next_seq + 1, {last_tx} \
               WHERE id = $1 AND state IN ('planned', 'active') \
               AND ($32::bigint IS NULL OR $32::bigint = {CURRENT_VERSION}) \
               RETURNING next_seq - 1 AS seq, last_tx AS tx), \
             m AS (INSERT INTO messages (episode_id, seq, id, kind, sender_kind, sender_ref, \
               sender_device, recipients, content_type, body, request_hash, created_at_ms, \
               attachments, audience, tx) \
               SELECT $1, s.seq, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, s.tx FROM s \
               RETURNING seq, created_at_ms, tx), \
             o AS (INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, \
               created_at_ms, screened) \
               SELECT $1, 'message', m.seq, $11, $11, $14 FROM m WHERE $13 = 'all'), \
             a AS (INSERT INTO audit_records ({columns}) SELECT {audit} FROM m) \
             SELECT m.seq, m.created_at_ms, m.tx FROM m",
                last_tx = super::stream::EPISODE_LAST_TX,
                columns = super::audit::COLUMNS,
                audit = (15..=31)
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        });
        let screen = message.kind == "questionnaire-response";
        let query = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(message.episode.to_string())
            .bind(message.id.to_string())
            .bind(message.kind)
            .bind(message.sender_kind)
            .bind(message.sender_ref)
            .bind(message.sender_device)
            .bind(message.recipients)
            .bind(message.content_type)
            .bind(message.body)
            .bind(message.request_hash)
            .bind(now_ms())
            .bind(message.attachments)
            .bind(message.audience.as_str())
            .bind(i32::from(!screen));
        let appended = super::audit::bind_record(query, audit)
            .bind(message.context_version)
            .fetch_optional(pool)
            .await;
        match appended {
            Ok(Some(row)) => {
                let appended = super::rows::AppendedRow::from_row(&row)?;
                self.announcer.announce(appended.tx);
                Ok(Appended::Created(MessagePosition {
                    seq: appended.seq,
                    created_at_ms: appended.created_at_ms,
                }))
            }
            Ok(None) => self.retry_or_closed(message).await,
            Err(e) if is_unique_violation(&e) => self
                .existing_message(message.episode, message.id, message.request_hash)
                .await?
                .ok_or(EpisodeRefusal::Storage(StorageError::Database(e))),
            Err(e) => Err(e.into()),
        }
    }

    /// Why nothing was appended: the message is already there (a retry, or its id was
    /// used for another), else the episode is closed or gone, else (it is open) the send
    /// context version it carried has moved.
    async fn retry_or_closed(&self, message: &NewMessage<'_>) -> Result<Appended, EpisodeRefusal> {
        if let Some(done) = self
            .existing_message(message.episode, message.id, message.request_hash)
            .await?
        {
            return Ok(done);
        }
        let state = self
            .episode(message.episode)
            .await?
            .ok_or(EpisodeRefusal::NotFound)?
            .state;
        if let (EpisodeState::Planned | EpisodeState::Active, Some(version)) =
            (state, message.context_version)
        {
            self.send_contexts.moved_past(version);
            return Ok(Appended::Stale);
        }
        Err(EpisodeRefusal::Closed(state.as_str()))
    }

    /// Messages of `episode` with `seq > after`, in order, at most `limit`.
    /// With `patient_view`, only what the patient may list (`audience` `all`).
    pub async fn messages_after(
        &self,
        episode: EpisodeId,
        after: i64,
        limit: i64,
        patient_view: bool,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, seq, kind, sender_kind, sender_ref, sender_device, recipients, content_type, body, attachments, \
             created_at_ms, audience \
             FROM messages WHERE episode_id = $1 AND seq > $2 AND (audience = 'all' OR $4 = 0) \
             ORDER BY seq LIMIT $3",
        )
        .bind(episode.to_string())
        .bind(after)
        .bind(limit)
        .bind(i32::from(patient_view))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(super::rows::read::<StoredMessage>)
            .collect()
    }

    /// Episodes of a clinic (for system clients), a patient, or a therapist's care teams,
    /// oldest first, after the episode `after` in that order, at most `limit`.
    pub async fn episodes_for(
        &self,
        filter: &EpisodeFilter<'_>,
        limit: i64,
    ) -> Result<Vec<Episode>, StorageError> {
        let (condition, value) = match filter {
            EpisodeFilter::Patient(p) => ("patient_nin = $1", p.expose().to_owned()),
            EpisodeFilter::Clinic(org) => (
                "clinic_id IN (SELECT id FROM clinics WHERE org_number = $1)",
                org.as_str().to_owned(),
            ),
            EpisodeFilter::CareTeam(hpr) => (
                "id IN (SELECT episode_id FROM care_team WHERE hpr_number = $1)",
                hpr.as_str().to_owned(),
            ),
        };
        let sql = format!(
            "SELECT {EPISODE_COLUMNS} FROM episodes WHERE {condition} ORDER BY created_at_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(super::rows::read::<Episode>).collect()
    }
}

/// Whose episodes to list.
#[derive(Debug, Clone, Copy)]
pub enum EpisodeFilter<'a> {
    Patient(&'a NationalId),
    Clinic(&'a OrgNumber),
    CareTeam(&'a HprNumber),
}
