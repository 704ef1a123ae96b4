//! The log's signing key and the background task that adds waiting records to the tree,
//! signs checkpoints, and prunes records past their retention.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_config::{AuditConfig, RetentionConfig};
use icbt_merkle::Signer;

use super::Action;
use crate::push::Hub;
use crate::storage::{StorageError, Store, now_ms};
use crate::telemetry::Metrics;

/// Records added to the tree per checkpoint at most, so that a record altered and
/// re-hashed in the database is named to within this many. One batch is one INSERT of
/// leaves; its transaction holds back stream deliveries while it runs (see
/// [`Hub::released`]), so it is kept short.
pub const BATCH: i64 = 100;

/// How long [`AuditLog::sequence_all`] waits at most for records held back by an older
/// transaction that still runs.
const HELD_BACK_WAIT: Duration = Duration::from_secs(5);

/// How long the sequencer waits for the stream hub at most before a batch: a delivery
/// takes tens of milliseconds; the tree must not fall behind under constant load.
const YIELD_LIMIT: Duration = Duration::from_millis(100);

/// What can stop the log from starting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the audit signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the audit signing key {path} is not a PEM PKCS#8 Ed25519 key")]
    Parse { path: String },
    #[error("cannot write a new audit signing key to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration key `audit.review`: {0}")]
    Review(String),
    #[error("configuration key `audit.publish.witnesses`: `{key}`: {reason}")]
    Witness { key: String, reason: String },
}

/// The access log's keys and settings, shared by handlers and the background task.
#[derive(Debug)]
pub struct AuditLog {
    pub signer: Signer,
    /// The signer's public key and earlier ones: what checkpoints are verified with.
    pub trusted: Vec<Vec<u8>>,
    pub interval: Duration,
    pub retention: RetentionConfig,
    /// What the review reports count as unusual.
    pub review: super::review::Settings,
    /// The configured witnesses' keys: what their stored cosignatures are verified with.
    pub witnesses: Vec<icbt_merkle::CosignerKey>,
    /// Why records cannot join the tree, while they cannot (the head disagrees with the
    /// signed checkpoints); for `/readyz`.
    pub stuck: std::sync::Mutex<Option<String>>,
}

impl AuditLog {
    /// From the configuration; without a key file, the key in `data_dir` (made on first
    /// start).
    pub fn from_config(config: &AuditConfig, data_dir: &Path) -> Result<Self, KeyError> {
        let signer = match &config.signing_key_file {
            Some(path) => read_key(path)?,
            None => dev_key(&data_dir.join("audit-signing-key.pem"))?,
        };
        let mut trusted = vec![signer.public_key().to_vec()];
        trusted.extend(
            config
                .trusted_public_keys
                .iter()
                .filter_map(|k| STANDARD.decode(k.trim()).ok()),
        );
        Ok(Self {
            signer,
            trusted,
            interval: Duration::from_millis(config.checkpoint_interval_ms),
            retention: config.retention_days.clone(),
            review: super::review::Settings::from_config(&config.review)
                .map_err(KeyError::Review)?,
            witnesses: config
                .publish
                .witnesses
                .iter()
                .map(|w| {
                    icbt_merkle::CosignerKey::parse(&w.key).map_err(|e| KeyError::Witness {
                        key: w.key.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?,
            stuck: std::sync::Mutex::new(None),
        })
    }

    /// Adds every record committed before the call to the tree now (and any committed
    /// meanwhile that comes before them). On PostgreSQL a record is added only once every
    /// older transaction has ended (see [`Store::sequence_audit`]): this waits for that
    /// for up to [`HELD_BACK_WAIT`], then leaves the rest to the next run.
    pub async fn sequence_all(&self, store: &Store) -> Result<u64, StorageError> {
        let target = store.audit_newest_position().await?;
        let deadline = tokio::time::Instant::now() + HELD_BACK_WAIT;
        let mut pause = Duration::from_millis(2);
        let mut total = 0;
        loop {
            total += self.sequence_yielding(store, None).await?;
            let Some(target) = target else {
                return Ok(total);
            };
            if store.audit_cursor().await? >= target {
                return Ok(total);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "access records are held back by an older transaction that still runs; the next sequencer run adds them"
                );
                return Ok(total);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Adds every waiting record to the tree, a batch at a time; with `hub`, waiting
    /// before each batch (at most [`YIELD_LIMIT`]) while the hub hands out messages. One
    /// run of the background task (and the bench's raw program's, without a hub).
    pub async fn sequence_yielding(
        &self,
        store: &Store,
        hub: Option<&Hub>,
    ) -> Result<u64, StorageError> {
        let mut total = 0;
        loop {
            if let Some(hub) = hub {
                hub.idle(YIELD_LIMIT).await;
            }
            let added = store.sequence_audit(&self.signer, BATCH).await?;
            if let Some(hub) = hub {
                hub.released();
            }
            total += added;
            if added < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Raises the alarm (log, metric, `/readyz`) when sequencing stops on a head that
    /// disagrees with the checkpoints, and lowers it once it works again.
    fn note_stuck(&self, result: &Result<u64, StorageError>, metrics: &Metrics) {
        let Ok(mut stuck) = self.stuck.lock() else {
            return;
        };
        match result {
            Err(e @ StorageError::HeadMismatch { .. }) => {
                if stuck.is_none() {
                    tracing::error!(alarm = "audit_head_mismatch", error = %e, "the access log cannot grow: its cached head disagrees with its signed checkpoints; run `icbt-gateway audit verify`");
                }
                *stuck = Some(e.to_string());
                metrics.audit_stuck(true);
            }
            Ok(_) if stuck.is_some() => {
                tracing::info!("the access log grows again");
                *stuck = None;
                metrics.audit_stuck(false);
            }
            _ => {}
        }
    }

    /// Prunes records whose class has a retention that has passed.
    pub async fn prune(&self, store: &Store, now: i64) -> Result<u64, StorageError> {
        let mut total = 0;
        for class in ["access", "change", "authentication", "keys", "audit"] {
            let Some(days) = self.retention.days(class) else {
                continue;
            };
            let actions: Vec<Action> = Action::ALL
                .into_iter()
                .filter(|a| a.class() == class)
                .collect();
            total += store
                .prune_audit(&actions, now - i64::from(days) * 86_400_000)
                .await?;
        }
        Ok(total)
    }

    /// Sequences every `interval`, yielding to deliveries of `hub`, and prunes once an
    /// hour; until the task is aborted.
    pub async fn run(self: Arc<Self>, store: Store, hub: Arc<Hub>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = None::<tokio::time::Instant>;
        loop {
            tick.tick().await;
            let result = self.sequence_yielding(&store, Some(&hub)).await;
            self.note_stuck(&result, &metrics);
            if let Err(e) = result
                && !matches!(e, StorageError::HeadMismatch { .. })
            {
                tracing::warn!(error = %e, "adding audit records to the tree failed; retrying");
            }
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_hours(1)) {
                // A failed prune is tried again at the next tick, not in an hour.
                match self.prune(&store, now_ms()).await {
                    Ok(n) => {
                        last_prune = Some(tokio::time::Instant::now());
                        if n > 0 {
                            tracing::info!(records = n, "audit records past retention pruned");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning audit records failed; retrying"),
                }
            }
        }
    }
}

fn read_key(path: &Path) -> Result<Signer, KeyError> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|_| {
        KeyError::Parse {
            path: shown.clone(),
        }
    })?;
    Signer::from_pkcs8(key.secret_pkcs8_der()).map_err(|_| KeyError::Parse { path: shown })
}

/// The key in `path`, generated there (readable by the owner only) when absent.
fn dev_key(path: &Path) -> Result<Signer, KeyError> {
    if path.exists() {
        return read_key(path);
    }
    let shown = path.display().to_string();
    let der = Signer::generate_pkcs8().map_err(|_| KeyError::Parse {
        path: shown.clone(),
    })?;
    let body = STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    write_private(path, pem.as_bytes()).map_err(|source| KeyError::Write {
        path: shown.clone(),
        source,
    })?;
    tracing::warn!(
        "generated an audit signing key in the data directory; configure audit.signing_key_file in production"
    );
    read_key(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::default();
        let first = AuditLog::from_config(&config, dir.path()).unwrap();
        let second = AuditLog::from_config(&config, dir.path()).unwrap();
        assert_eq!(first.signer.public_key(), second.signer.public_key());
        assert_eq!(first.trusted, vec![first.signer.public_key().to_vec()]);
    }

    #[test]
    fn a_configured_key_that_is_not_ed25519_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let config = AuditConfig {
            signing_key_file: Some(path),
            ..AuditConfig::default()
        };
        assert!(matches!(
            AuditLog::from_config(&config, dir.path()),
            Err(KeyError::Parse { .. })
        ));
    }
}
