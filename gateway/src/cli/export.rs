//! `icbt-gateway export`: the journal exporter as its own process, in the gateway's
//! process (dev mode), and its operator commands (status, dead letters).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use icbt_auth::client::OutboundTokens;
use icbt_auth::keys::KeyCachePolicy;
use icbt_config::Config;

use super::DeadLetterCommand;
use crate::export::epj::Epj;
use crate::export::records::{ClinicKeys, JournalKeys};
use crate::export::sink::{self, Destination, Folder};
use crate::export::{Exporter, Route, Settings as ExportSettings};
use crate::server;
use crate::storage::Store;

/// The exporter as configured, or `None` when there is nowhere to export to: no
/// `[[clinics]]` register, no `export.epj_base_url`, and no `folder` (dev mode's journal
/// sink).
pub fn exporter(
    config: &Config,
    store: Store,
    folder: Option<PathBuf>,
) -> anyhow::Result<Option<Exporter>> {
    let export = &config.export;
    let settings = ExportSettings::from_config(export);
    if !config.clinics.is_empty() {
        let (routes, keys) = register_routes(config)?;
        return Ok(Some(Exporter::new(store, routes, keys, settings)));
    }
    let route = match (&export.epj_base_url, folder) {
        (Some(base), _) => {
            let Some(client) = &export.client else {
                anyhow::bail!(
                    "configuration key `export.client`: is not set; fix: set [export.client]"
                );
            };
            let summary = export
                .summary_base_url
                .clone()
                .unwrap_or_else(|| base.clone());
            let roots = export.trust_roots_file.as_deref();
            Route::new(
                "epj".into(),
                None,
                Destination::Fhir(epj(
                    config,
                    client_tokens(config, client, "export.client")?,
                    roots,
                )?),
                (base.clone(), summary),
                client.client_id.clone(),
            )
        }
        (None, Some(dir)) => Route::new(
            "journal-sink".into(),
            None,
            Destination::Folder(Folder { dir }),
            (sink::EPJ_FOLDER.into(), sink::SUMMARY_FOLDER.into()),
            "icbt-gateway-dev-journal-sink".into(),
        ),
        (None, None) => return Ok(None),
    };
    let keys = journal_keys("export.journal_key_files", &export.journal_key_files)?;
    Ok(Some(Exporter::new(
        store,
        vec![route],
        ClinicKeys::shared(keys),
        settings,
    )))
}

/// One route per distinct way out (EPJ, summary record, client, CAs) of the register's
/// clinics, named by the hospitals it serves; each clinic's own journal keys.
fn register_routes(config: &Config) -> anyhow::Result<(Vec<Route>, ClinicKeys)> {
    type Way<'a> = (&'a str, &'a str, &'a str, Option<&'a std::path::Path>);
    let mut ways: BTreeMap<Way<'_>, Vec<&icbt_config::ClinicConfig>> = BTreeMap::new();
    let mut keys = HashMap::new();
    for clinic in &config.clinics {
        let way = (
            clinic.epj_base_url.as_str(),
            clinic
                .summary_base_url
                .as_deref()
                .unwrap_or(&clinic.epj_base_url),
            clinic.client.as_str(),
            clinic.trust_roots_file.as_deref(),
        );
        ways.entry(way).or_default().push(clinic);
        keys.insert(
            clinic.org_number.clone(),
            journal_keys("clinics.journal_key_files", &clinic.journal_key_files)?,
        );
    }
    // One token cache per client, however many routes share it.
    let mut tokens: HashMap<&str, Arc<OutboundTokens>> = HashMap::new();
    let mut routes = Vec::new();
    for ((epj_base, summary_base, client_name, roots), clinics) in ways {
        let client = config.export.clients.get(client_name).with_context(|| {
            format!(
                "configuration key `clinics.client`: `{client_name}` is not in [export.clients]"
            )
        })?;
        let shared = if let Some(t) = tokens.get(client_name) {
            t.clone()
        } else {
            let t = client_tokens(config, client, "export.clients.key_file")?;
            tokens.insert(client_name, t.clone());
            t
        };
        let mut hospitals: Vec<&str> = clinics.iter().map(|c| c.hospital.as_str()).collect();
        hospitals.dedup();
        let roots = roots.or(config.export.trust_roots_file.as_deref());
        routes.push(Route::new(
            format!("hospital {}", hospitals.join("+")),
            Some(clinics.iter().map(|c| c.org_number.clone()).collect()),
            Destination::Fhir(epj(config, shared, roots)?),
            (epj_base.to_owned(), summary_base.to_owned()),
            client.client_id.clone(),
        ));
    }
    Ok((routes, ClinicKeys::per_clinic(keys)))
}

/// Reads journal key files (device JSON with private keys).
fn journal_keys(key: &str, files: &[PathBuf]) -> anyhow::Result<JournalKeys> {
    let mut keys = Vec::new();
    for file in files {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
            format!("configuration key `{key}`: cannot read {}", file.display())
        })?);
        let device = icbt_envelope::DeviceKeys::from_private_json(&text).with_context(|| {
            format!(
                "configuration key `{key}`: {} is not a device key file",
                file.display()
            )
        })?;
        keys.push(device);
    }
    Ok(JournalKeys::new(keys))
}

/// A HelseID client's token source; its key is read now, so a bad key stops the start.
fn client_tokens(
    config: &Config,
    client: &icbt_config::OutboundClientConfig,
    key: &str,
) -> anyhow::Result<Arc<OutboundTokens>> {
    let idp_http = icbt_auth::http::https_client(
        config.auth.trust_roots_file.as_deref(),
        Duration::from_millis(config.auth.jwks.fetch_timeout_ms),
    )?;
    let policy = KeyCachePolicy {
        max_age: Duration::from_secs(config.auth.jwks.max_age_seconds),
        min_refetch_interval: Duration::from_secs(config.auth.jwks.min_refetch_interval_seconds),
    };
    let tokens = OutboundTokens::from_config(client, idp_http, policy)
        .with_context(|| format!("configuration key `{key}`"))?;
    Ok(Arc::new(tokens))
}

/// A FHIR client for one EPJ, trusting `roots` (else `auth.trust_roots_file`).
fn epj(
    config: &Config,
    tokens: Arc<OutboundTokens>,
    roots: Option<&std::path::Path>,
) -> anyhow::Result<Epj> {
    let epj_http = icbt_auth::http::https_client(
        roots.or(config.auth.trust_roots_file.as_deref()),
        Duration::from_millis(config.export.request_timeout_ms),
    )?;
    Ok(Epj::new(epj_http, tokens))
}

pub(super) async fn run_exporter(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.storage).await?;
    let Some(exporter) = exporter(&config, store.clone(), None)? else {
        anyhow::bail!(
            "configuration key `export.epj_base_url`: is not set; fix: set the EPJ's FHIR base URL, or list the clinics in [[clinics]]"
        );
    };
    // Before it says it runs: a TERM from then on stops it cleanly.
    let shutdown = server::shutdown_signal();
    #[allow(clippy::print_stdout)]
    {
        println!("icbt-gateway exporter running");
    }
    Arc::new(exporter).run(shutdown).await;
    store.close().await;
    Ok(())
}

/// `export status`: the outbox in all, then, with a register, per clinic and route, and
/// the clinics with episodes that the register does not have (their rows wait for a
/// route that does not exist).
pub(super) async fn export_status(config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.storage).await?;
    let read = async {
        let counts = store.outbox_counts().await?;
        let detail = if config.clinics.is_empty() {
            None
        } else {
            Some((
                store.outbox_counts_by_clinic().await?,
                store.episodes_by_clinic().await?,
            ))
        };
        anyhow::Ok((counts, detail))
    }
    .await;
    store.close().await;
    let (counts, detail) = read?;
    let line = |c: &crate::storage::OutboxCounts| {
        format!(
            "pending {} (oldest {} s), done {}, dead {}",
            c.pending,
            c.oldest_pending_ms.unwrap_or(0) / 1_000,
            c.done,
            c.dead
        )
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{}", line(&counts));
        let Some((by_clinic, episodes)) = detail else {
            return Ok(());
        };
        for clinic in &config.clinics {
            let c = by_clinic
                .get(&clinic.org_number)
                .copied()
                .unwrap_or_default();
            println!(
                "clinic {} (hospital {}, client {}): {}",
                clinic.org_number,
                clinic.hospital,
                clinic.client,
                line(&c)
            );
        }
        for (org, n) in &episodes {
            if !config.clinics.iter().any(|c| &c.org_number == org) {
                let c = by_clinic.get(org).copied().unwrap_or_default();
                println!(
                    "unregistered clinic {org}: {n} episodes, {}; add it to [[clinics]] to route them",
                    line(&c)
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
pub(super) async fn dead_letters(
    config: &Config,
    command: DeadLetterCommand,
) -> anyhow::Result<()> {
    let store = Store::open(&config.storage).await?;
    let result = async {
        match command {
            DeadLetterCommand::List {
                after,
                limit,
                clinic,
            } => {
                for row in store
                    .outbox_rows("dead", after, limit.clamp(1, 10_000), clinic.as_deref())
                    .await?
                {
                    println!(
                        "{}\t{}\t{}\t{} attempts\t{}",
                        row.id,
                        row.episode,
                        row.kind.as_str(),
                        row.attempts,
                        row.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            DeadLetterCommand::Show { id } => {
                let row = store
                    .outbox_row(id)
                    .await?
                    .with_context(|| format!("there is no outbox row {id}"))?;
                let seq = match row.kind {
                    crate::storage::OutboxKind::Message(seq) => Some(seq),
                    _ => None,
                };
                let outcome = row
                    .outcome
                    .as_deref()
                    .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok());
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "id": row.id,
                        "episode": row.episode.to_string(),
                        "kind": row.kind.as_str(),
                        "message_seq": seq,
                        "state": row.state,
                        "attempts": row.attempts,
                        "created_at_ms": row.created_at_ms,
                        "last_error": row.last_error,
                        "outcome": outcome,
                    }))?
                );
            }
            DeadLetterCommand::Replay { ids } => {
                anyhow::ensure!(!ids.is_empty(), "name the rows to replay");
                for id in ids {
                    if store.replay_outbox(id).await? {
                        println!("{id}\treplaying");
                    } else {
                        anyhow::bail!("row {id} is not a dead letter");
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// Dev set-ups may run the exporter inside `serve` (`export.in_process`).
/// Dev mode always runs it here, writing to `folder` when no EPJ is configured.
pub(super) fn in_process_exporter(
    config: &Config,
    store: &Store,
    push: &crate::push::Push,
    folder: Option<PathBuf>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !config.export.in_process && folder.is_none() {
        return Ok(None);
    }
    Ok(exporter(config, store.clone(), folder)?.map(|e| {
        let push = push.clone();
        let e = e.waking(move || push.wake());
        tokio::spawn(Arc::new(e).run(std::future::pending::<()>()))
    }))
}
