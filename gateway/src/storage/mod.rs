//! Storage: every SQL statement of the gateway lives behind this module.
//!
//! One [`Store`] over sqlx's `Any` driver serves both backends: SQLite (embedded default,
//! one file in the data directory, WAL, foreign keys on) and PostgreSQL (production, shared
//! by several instances). Migrations are embedded in the binary and applied at start.
//! Where the backends need different SQL, [`Backend`] says which one is in use.

mod attachments;
mod audit;
mod batch;
mod devices;
mod messaging;
mod migrations;
mod outbox;
mod receipts;
mod replay;
mod review;
mod rows;
mod send_context;
mod sessions;
pub mod stream;

// The records storage keeps, under the names callers have always used.
pub use crate::domain::episode::CareTeamEntry;
pub(crate) use crate::domain::now_ms;
pub use crate::domain::participants::Owner;

pub use attachments::NewAttachment;
pub use audit::{AUDIT_HEAD_LOCK, AuditFilter, AuditSnapshot, CursorCheck};
pub use devices::{DeviceRecord, KEY_LOG_ORIGIN, Published};
pub use messaging::{
    Appended, Audience, EpisodeFilter, EpisodeRefusal, MessagePosition, NewMessage, StoredMessage,
};
pub use outbox::{Claim, Finish, OutboxCounts, OutboxKind, OutboxRow};
pub use receipts::ReceiptMarks;
pub use review::{TeamPeriod, WindowRecords};
pub use send_context::EpisodeForSend;
pub use sessions::{LoginAttempt, SessionRecord};

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use icbt_config::StorageConfig;
use sqlx::FromRow as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};

use crate::domain::episode::{
    Clinic, ClinicId, Episode, EpisodeId, EpisodeState, NationalId, OrgNumber,
};

/// Which database engine a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// What can go wrong in storage. Messages carry no row content.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to {backend} at {target}: {source}")]
    Connect {
        backend: &'static str,
        target: String,
        source: sqlx::Error,
    },
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored row is inconsistent: {0}")]
    Corrupt(&'static str),
    #[error(
        "the checkpoint at size {size} in {table}: {field} is not in the form the gateway writes"
    )]
    CorruptCheckpoint {
        table: &'static str,
        size: i64,
        field: &'static str,
    },
    #[error(
        "the access log's cached head (audit_head, size {head_size}) disagrees with its newest signed checkpoint (size {checkpoint_size}); records wait until an operator repairs it"
    )]
    HeadMismatch {
        head_size: u64,
        checkpoint_size: u64,
    },
    #[error("the query did not finish within {limit_ms} ms")]
    TooBroad { limit_ms: u64 },
    #[error("cannot sign a checkpoint: {0}")]
    Sign(#[from] icbt_merkle::CheckpointError),
}

/// What `/readyz` reports about the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub reachable: bool,
    pub migrations_applied: bool,
}

/// The gateway's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// DPoP proof ids. On PostgreSQL a small pool whose commits do not wait for the WAL
    /// flush: a crash may forget the last fraction of a second of proof ids, which lets
    /// such a proof be replayed only within its few seconds of validity, by the holder
    /// of its token; every request no longer pays a second durable commit. On SQLite the
    /// main pool.
    replay: AnyPool,
    /// PostgreSQL: the connections of the writers that commit queued sends together
    /// (see [`batch`]), one each. On SQLite the main pool.
    writers: AnyPool,
    backend: Backend,
    /// PostgreSQL URL (with password) for LISTEN; never logged.
    listen_url: Option<String>,
    announcer: stream::Announcer,
    /// PostgreSQL: the writers that commit queued sends together.
    appender: batch::Appender,
    /// PostgreSQL: the writers that record queued DPoP proof ids together.
    replay_queue: replay::ReplayQueue,
    /// What sends were decided on, kept between sends (see [`send_context`]).
    send_contexts: send_context::SendContexts,
}

/// How long a pooled connection may sit idle before it is checked with a ping when taken
/// again.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// Settings every pool shares. sqlx pings every connection it takes from the pool
/// by default: a round trip to the database before every query, which under load was a
/// third of a send's round trips. A connection in steady use is not pinged; one idle for
/// [`IDLE_BEFORE_PING`] is, so one broken while idle (a database restart) is still
/// replaced before it fails a request. One broken within that time fails its query,
/// and sqlx drops it.
fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// PostgreSQL: a small pool whose commits do not wait for the WAL flush (DPoP proof ids,
/// announcements).
async fn unflushed_pool(
    options: AnyConnectOptions,
    max_connections: u32,
    acquire: Duration,
) -> Result<AnyPool, sqlx::Error> {
    pool_options()
        .max_connections((max_connections / 4).max(2))
        .acquire_timeout(acquire)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET synchronous_commit = off").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

/// PostgreSQL: one connection per group-commit writer. A batch statement has one text
/// per batch size; PostgreSQL plans a prepared statement afresh for its first five
/// runs on a connection before it considers a generic plan. Spread over the main pool,
/// few (size, connection) pairs reached a sixth run, and planning cost almost half as
/// much as executing (`pg_stat_statements`, 64 clients: 598 plans for 598 batches,
/// 1.1 s planning beside 2.6 s executing); on two connections of their own, 349 plans
/// for 581 batches and 0.6 s planning.
async fn writers_pool(
    options: AnyConnectOptions,
    acquire: Duration,
) -> Result<AnyPool, sqlx::Error> {
    pool_options()
        .max_connections(u32::try_from(batch::WRITERS).unwrap_or(2))
        .acquire_timeout(acquire)
        .connect_with(options)
        .await
}

/// Columns of an episode with its clinic and a care-team member, from
/// [`EPISODE_WITH_TEAM_JOINS`]: one row per member (one with a null member for an empty
/// team).
const EPISODE_WITH_TEAM_COLUMNS: &str = "e.id, e.clinic_id, e.patient_nin, e.programme, \
    e.state, e.created_at_ms, e.updated_at_ms, c.id AS c_id, c.name AS c_name, \
    c.org_number AS c_org_number, c.created_at_ms AS c_created_at_ms, \
    t.hpr_number AS t_hpr_number, t.role AS t_role, t.until_ms AS t_until_ms";
const EPISODE_WITH_TEAM_JOINS: &str = "episodes e JOIN clinics c ON c.id = e.clinic_id \
    LEFT JOIN care_team t ON t.episode_id = e.id";

impl Store {
    /// Connects as configured, checks the database answers, and applies migrations.
    pub async fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        Self::open_at_schema(config, i64::MAX).await
    }

    /// [`Store::open`], applying migrations up to `version` only: a database as an
    /// earlier release left it, for upgrade tests. Not for serving.
    #[doc(hidden)]
    pub async fn open_at_schema(
        config: &StorageConfig,
        version: i64,
    ) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let (backend, url, target) = match &config.url {
            None => {
                let dir = &config.data_dir;
                std::fs::create_dir_all(dir).map_err(|source| StorageError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let path = config.sqlite_path();
                (
                    Backend::Sqlite,
                    sqlite_url(&path)?,
                    path.display().to_string(),
                )
            }
            Some(raw) => {
                let mut url = url::Url::parse(raw).map_err(|e| StorageError::Url(e.to_string()))?;
                let target = format!(
                    "{}:{}{}",
                    url.host_str().unwrap_or("localhost"),
                    url.port().unwrap_or(5432),
                    url.path()
                );
                if let Some(password) = &config.password {
                    url.set_password(Some(password.expose())).map_err(|()| {
                        StorageError::Url("the URL cannot carry a password".into())
                    })?;
                }
                (Backend::Postgres, url.to_string(), target)
            }
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StorageError::Url(e.to_string()))?
            .disable_statement_logging();
        let connect_error = |source| StorageError::Connect {
            backend: backend.as_str(),
            target: target.clone(),
            source,
        };

        // One direct connection first: it fails fast with the real reason (refused,
        // unknown host, authentication) instead of a pool time-out.
        let acquire = Duration::from_millis(config.acquire_timeout_ms);
        let probe = tokio::time::timeout(acquire, options.connect())
            .await
            .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
            .map_err(connect_error)?;
        probe.close().await.map_err(connect_error)?;

        let pool = pool_options()
            .max_connections(config.max_connections)
            .acquire_timeout(acquire)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes every
                        // acknowledged commit survive power loss, not only a crash.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        let replay = match backend {
            Backend::Sqlite => pool.clone(),
            Backend::Postgres => unflushed_pool(options.clone(), config.max_connections, acquire)
                .await
                .map_err(connect_error)?,
        };
        let writers = match backend {
            Backend::Sqlite => pool.clone(),
            Backend::Postgres => writers_pool(options, acquire)
                .await
                .map_err(connect_error)?,
        };
        let listen_url = (backend == Backend::Postgres).then_some(url);
        let announcer = match backend {
            Backend::Postgres => stream::Announcer::start(replay.clone()),
            Backend::Sqlite => stream::Announcer::default(),
        };
        let mut store = Self {
            pool,
            replay,
            writers,
            backend,
            listen_url,
            announcer,
            appender: batch::Appender::default(),
            replay_queue: replay::ReplayQueue::default(),
            send_contexts: send_context::SendContexts::default(),
        };
        migrations::migrator(backend, version)
            .run(&store.pool)
            .await?;
        if backend == Backend::Postgres {
            store.appender = batch::Appender::start(&store);
            store.replay_queue = replay::ReplayQueue::start(&store.replay);
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers and every embedded migration is applied.
    pub async fn readiness(&self) -> Readiness {
        let reachable = sqlx::query("SELECT 1").execute(&self.pool).await.is_ok();
        let migrations_applied =
            reachable && migrations::all_applied(&self.pool).await.unwrap_or(false);
        Readiness {
            reachable,
            migrations_applied,
        }
    }

    /// Waits for in-flight queries and closes every connection.
    pub async fn close(&self) {
        self.replay.close().await;
        self.writers.close().await;
        self.pool.close().await;
    }

    pub async fn insert_clinic(
        &self,
        name: &str,
        org_number: &OrgNumber,
    ) -> Result<Clinic, StorageError> {
        let clinic = Clinic {
            id: ClinicId::new_random(),
            name: name.to_owned(),
            org_number: org_number.clone(),
            created_at_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO clinics (id, name, org_number, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(clinic.id.to_string())
        .bind(&clinic.name)
        .bind(clinic.org_number.as_str())
        .bind(clinic.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(clinic)
    }

    pub async fn clinic(&self, id: ClinicId) -> Result<Option<Clinic>, StorageError> {
        let row =
            sqlx::query("SELECT id, name, org_number, created_at_ms FROM clinics WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(rows::read::<Clinic>).transpose()
    }

    /// An episode with its clinic and care team, in one round trip: what every access to
    /// an episode is decided on (a send's first read).
    pub async fn episode_with_team(
        &self,
        id: EpisodeId,
    ) -> Result<Option<(Episode, Clinic, Vec<CareTeamEntry>)>, StorageError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {EPISODE_WITH_TEAM_COLUMNS} FROM {EPISODE_WITH_TEAM_JOINS} \
                 WHERE e.id = $1 ORDER BY t.hpr_number"
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        let mut found: Option<(Episode, Clinic, Vec<CareTeamEntry>)> = None;
        for r in &rows {
            let mut row = rows::EpisodeWithTeamRow::from_row(r)?;
            let member = row.member()?;
            if found.is_none() {
                let (episode, clinic) = row.episode()?;
                found = Some((episode, clinic, Vec::with_capacity(rows.len())));
            }
            if let Some((_, _, team)) = found.as_mut() {
                team.extend(member);
            }
        }
        Ok(found)
    }

    pub async fn insert_episode(
        &self,
        clinic_id: ClinicId,
        patient: &NationalId,
        programme: &str,
    ) -> Result<Episode, StorageError> {
        let now = now_ms();
        let episode = Episode {
            id: EpisodeId::new_random(),
            clinic_id,
            patient: patient.clone(),
            programme: programme.to_owned(),
            state: EpisodeState::Planned,
            created_at_ms: now,
            updated_at_ms: now,
        };
        sqlx::query(
            "INSERT INTO episodes (id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(episode.id.to_string())
        .bind(clinic_id.to_string())
        .bind(patient.expose())
        .bind(&episode.programme)
        .bind(episode.state.as_str())
        .bind(episode.created_at_ms)
        .bind(episode.updated_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(episode)
    }

    pub async fn episode(&self, id: EpisodeId) -> Result<Option<Episode>, StorageError> {
        let row = sqlx::query(
            "SELECT id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms \
             FROM episodes WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::read::<Episode>).transpose()
    }

    /// The episodes of one patient, oldest first.
    pub async fn episodes_of_patient(
        &self,
        patient: &NationalId,
    ) -> Result<Vec<Episode>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms \
             FROM episodes WHERE patient_nin = $1 ORDER BY created_at_ms, id",
        )
        .bind(patient.expose())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::read::<Episode>).collect()
    }
}

impl icbt_auth::dpop::ReplayStore for Store {
    async fn first_use(
        &self,
        key: &str,
        expires_at: i64,
    ) -> Result<bool, icbt_auth::dpop::ReplayStoreError> {
        let entered = self.replay_queue.enter();
        if !entered.alone()
            && let Some(answer) = self.replay_queue.first_use(key, expires_at).await
        {
            return answer.map_err(icbt_auth::dpop::ReplayStoreError);
        }
        let new = replay::record(&self.replay, &[(key, expires_at)])
            .await
            .map_err(icbt_auth::dpop::ReplayStoreError)?;
        Ok(new.contains(key))
    }
}

impl Store {
    /// Deletes DPoP proof ids whose window has passed; returns how many.
    pub async fn purge_expired_replay_entries(&self, now_secs: i64) -> Result<u64, StorageError> {
        let result = sqlx::query("DELETE FROM dpop_replay WHERE expires_at < $1")
            .bind(now_secs)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

fn sqlite_url(path: &Path) -> Result<String, StorageError> {
    let path = path
        .to_str()
        .ok_or_else(|| StorageError::Url(format!("SQLite path {} is not UTF-8", path.display())))?;
    Ok(format!("sqlite://{path}?mode=rwc"))
}
