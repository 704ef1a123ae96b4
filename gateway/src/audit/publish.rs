//! Pushes the access log's checkpoints outside the database, so that a log cut back or
//! rewritten there meets the checkpoints it already published: to a directory the
//! security team keeps (`checkpoint`, the newest note, and `checkpoints/<size>`), and to
//! C2SP witnesses (`tlog-witness`: `add-checkpoint` with a consistency proof from the
//! size the witness last cosigned). A witness's cosignature is checked with its pinned
//! key and kept beside the checkpoint, which `/logs/access/checkpoint` then serves with
//! it. A witness that has seen a larger tree than the log now has is an alarm: the log
//! was cut back, or shows the witness another history.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_config::PublishConfig;
use icbt_merkle::{CosignerKey, Note, SignedCheckpoint};

use crate::storage::{StorageError, Store};
use crate::telemetry::Metrics;

/// Why a checkpoint did not reach one place.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("audit.publish.witnesses: `{url}`: {reason}")]
    Config { url: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("witness {witness} cannot be reached: {reason}")]
    Unreachable { witness: String, reason: String },
    #[error("witness {witness} refused the checkpoint of size {size}: HTTP {status}")]
    Refused {
        witness: String,
        size: u64,
        status: u16,
    },
    #[error("witness {witness} answered without a valid cosignature by its key")]
    NoCosignature { witness: String },
    #[error(
        "witness {witness} has cosigned a tree of size {seen}, larger than the log's {ours}: the log was cut back, or shows the witness another history"
    )]
    WitnessAhead {
        witness: String,
        seen: u64,
        ours: u64,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot make the consistency proof: {0}")]
    Proof(#[from] icbt_merkle::ProofError),
}

/// One witness and what it last cosigned.
#[derive(Debug)]
struct Witness {
    url: String,
    key: CosignerKey,
    /// The size it last cosigned, once known (its 409 answers tell).
    cosigned: Mutex<Option<u64>>,
}

/// The configured outside places; see the module documentation.
#[derive(Debug)]
pub struct Publisher {
    directory: Option<PathBuf>,
    witnesses: Vec<Witness>,
    http: reqwest::Client,
    interval: Duration,
    written: Mutex<Option<u64>>,
}

impl Publisher {
    /// The publisher `config` asks for, or `None` when it names no place.
    pub fn from_config(
        config: &PublishConfig,
        trust_roots: Option<&Path>,
    ) -> Result<Option<Self>, PublishError> {
        if config.directory.is_none() && config.witnesses.is_empty() {
            return Ok(None);
        }
        let witnesses = config
            .witnesses
            .iter()
            .map(|w| {
                let key = CosignerKey::parse(&w.key).map_err(|e| PublishError::Config {
                    url: w.url.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Witness {
                    url: w.url.trim_end_matches('/').to_owned(),
                    key,
                    cosigned: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, PublishError>>()?;
        let http =
            icbt_auth::http::https_client(trust_roots, Duration::from_millis(config.timeout_ms))
                .map_err(|e| PublishError::Config {
                    url: "(the HTTP client)".into(),
                    reason: e.to_string(),
                })?;
        Ok(Some(Self {
            directory: config.directory.clone(),
            witnesses,
            http,
            interval: Duration::from_millis(config.interval_ms),
            written: Mutex::new(None),
        }))
    }

    /// Pushes the newest checkpoint every interval, until the task is aborted. Failures
    /// are logged and retried next time; an alarm is logged when a witness is ahead.
    pub async fn run(self: Arc<Self>, store: Store, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for error in self.publish(&store, &metrics).await {
                if matches!(error, PublishError::WitnessAhead { .. }) {
                    tracing::error!(alarm = "audit_witness_ahead", error = %error, "a witness has seen more of the access log than it now holds; run `icbt-gateway audit verify`");
                } else {
                    tracing::warn!(error = %error, "publishing the access log's checkpoint failed; retrying");
                }
            }
        }
    }

    /// Pushes the newest checkpoint to every place once: witnesses first, so the
    /// directory receives the note with their cosignatures. Returns what failed.
    pub async fn publish(&self, store: &Store, metrics: &Metrics) -> Vec<PublishError> {
        let mut failed = Vec::new();
        let newest = match store.audit_checkpoint(None).await {
            Ok(Some(newest)) => newest,
            Ok(None) => return failed,
            Err(e) => return vec![e.into()],
        };
        let Some(note) = newest.note() else {
            return failed; // a legacy checkpoint of an earlier key: the next one is a note
        };
        let size = newest.checkpoint.size;
        for witness in &self.witnesses {
            match self.witness(witness, store, &newest, &note).await {
                Ok(()) => metrics.audit_published(&witness.key.name, size),
                Err(e) => failed.push(e),
            }
        }
        if let Some(dir) = &self.directory {
            let already = self.written.lock().is_ok_and(|w| *w == Some(size));
            if !already {
                match self.write(dir, store, size, &note).await {
                    Ok(()) => {
                        if let Ok(mut w) = self.written.lock() {
                            *w = Some(size);
                        }
                        metrics.audit_published("directory", size);
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        failed
    }

    /// `checkpoints/<size>` and then `checkpoint`, each written whole (a temporary file
    /// renamed into place), with the cosignatures kept so far.
    async fn write(
        &self,
        dir: &Path,
        store: &Store,
        size: u64,
        note: &str,
    ) -> Result<(), PublishError> {
        let mut text = note.to_owned();
        for (_, line) in store.audit_cosignatures(size).await? {
            text.push_str(&line);
        }
        let archive = dir.join("checkpoints");
        let fail = |path: &Path| {
            let path = path.display().to_string();
            move |source| PublishError::Write { path, source }
        };
        tokio::fs::create_dir_all(&archive)
            .await
            .map_err(fail(&archive))?;
        for path in [archive.join(size.to_string()), dir.join("checkpoint")] {
            let temporary = path.with_extension("tmp");
            tokio::fs::write(&temporary, &text)
                .await
                .map_err(fail(&temporary))?;
            tokio::fs::rename(&temporary, &path)
                .await
                .map_err(fail(&path))?;
        }
        Ok(())
    }

    /// `add-checkpoint` at one witness: from the size it last cosigned (learnt from its
    /// 409 answer when not known), with the consistency proof from there.
    async fn witness(
        &self,
        witness: &Witness,
        store: &Store,
        newest: &SignedCheckpoint,
        note: &str,
    ) -> Result<(), PublishError> {
        let size = newest.checkpoint.size;
        let name = || witness.key.name.clone();
        for _ in 0..2 {
            let old = witness.cosigned.lock().ok().and_then(|c| *c).unwrap_or(0);
            if old > size {
                return Err(PublishError::WitnessAhead {
                    witness: name(),
                    seen: old,
                    ours: size,
                });
            }
            if old == size && size > 0 && !store.audit_cosignatures(size).await?.is_empty() {
                return Ok(());
            }
            let mut body = format!("old {old}\n");
            if old > 0 {
                let leaves = store.audit_leaf_hashes(size).await?;
                for hash in icbt_merkle::consistency_proof(&leaves, old)? {
                    body.push_str(&STANDARD.encode(hash));
                    body.push('\n');
                }
            }
            body.push('\n');
            body.push_str(note);
            let unreachable = |e: reqwest::Error| PublishError::Unreachable {
                witness: name(),
                reason: e.to_string(),
            };
            let response = self
                .http
                .post(format!("{}/add-checkpoint", witness.url))
                .body(body)
                .send()
                .await
                .map_err(unreachable)?;
            let status = response.status().as_u16();
            let answer = response.text().await.map_err(unreachable)?;
            match status {
                200 => {
                    let line = cosignature(&witness.key, &newest.checkpoint.body(), &answer)
                        .ok_or_else(|| PublishError::NoCosignature { witness: name() })?;
                    store
                        .add_audit_cosignature(size, &witness.key.name, &line)
                        .await?;
                    if let Ok(mut c) = witness.cosigned.lock() {
                        *c = Some(size);
                    }
                    return Ok(());
                }
                // It last cosigned another size: it says which, and we go from there.
                409 => {
                    let seen = answer
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| PublishError::Refused {
                            witness: name(),
                            size,
                            status,
                        })?;
                    if seen == old {
                        // Same size, another root: it holds another history.
                        return Err(PublishError::WitnessAhead {
                            witness: name(),
                            seen,
                            ours: size,
                        });
                    }
                    if let Ok(mut c) = witness.cosigned.lock() {
                        *c = Some(seen);
                    }
                }
                _ => {
                    return Err(PublishError::Refused {
                        witness: name(),
                        size,
                        status,
                    });
                }
            }
        }
        Err(PublishError::Refused {
            witness: name(),
            size,
            status: 409,
        })
    }
}

/// The first line of `answer` that is `key`'s valid cosignature of the checkpoint whose
/// note text is `text`, as a note signature line; lines of other keys are ignored, as the
/// protocol asks.
fn cosignature(key: &CosignerKey, text: &str, answer: &str) -> Option<String> {
    let signed = Note::parse(&format!("{text}\n{answer}")).ok()?;
    signed
        .signatures
        .iter()
        .find(|s| matches!(key.verify(text, s), Ok(Some(_))))
        .map(icbt_merkle::NoteSignature::line)
}
