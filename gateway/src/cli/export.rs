//! `icbt-gateway export`: the journal exporter as its own process, in the gateway's
//! process (dev mode), and its operator commands (status, dead letters).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use icbt_auth::client::OutboundTokens;
use icbt_auth::keys::KeyCachePolicy;
use icbt_config::Config;

use super::DeadLetterCommand;
use crate::export::epj::Epj;
use crate::export::records::JournalKeys;
use crate::export::sink::{Destination, Folder};
use crate::export::{Exporter, Settings as ExportSettings};
use crate::server;
use crate::storage::Store;

/// The exporter as configured, or `None` when `export.epj_base_url` is unset and there is
/// no `folder` (dev mode's journal sink) to write to instead.
pub fn exporter(
    config: &Config,
    store: Store,
    folder: Option<PathBuf>,
) -> anyhow::Result<Option<Exporter>> {
    let export = &config.export;
    let (destination, settings) = match (&export.epj_base_url, folder) {
        (Some(_), _) => {
            let Some(client) = &export.client else {
                anyhow::bail!(
                    "configuration key `export.client`: is not set; fix: set [export.client]"
                );
            };
            let Some(settings) = ExportSettings::from_config(export, &client.client_id) else {
                return Ok(None);
            };
            (Destination::Fhir(epj(config, client)?), settings)
        }
        (None, Some(dir)) => (
            Destination::Folder(Folder { dir }),
            ExportSettings::for_folder(export, "icbt-gateway-dev-journal-sink"),
        ),
        (None, None) => return Ok(None),
    };
    let mut keys = Vec::new();
    for file in &export.journal_key_files {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
            format!(
                "configuration key `export.journal_key_files`: cannot read {}",
                file.display()
            )
        })?);
        let device = icbt_envelope::DeviceKeys::from_private_json(&text).with_context(|| {
            format!(
                "configuration key `export.journal_key_files`: {} is not a device key file",
                file.display()
            )
        })?;
        keys.push(device);
    }
    Ok(Some(Exporter::new(
        store,
        destination,
        JournalKeys::new(keys),
        settings,
    )))
}

/// The EPJ's FHIR client with its HelseID client.
fn epj(config: &Config, client: &icbt_config::OutboundClientConfig) -> anyhow::Result<Epj> {
    let export = &config.export;
    let idp_http = icbt_auth::http::https_client(
        config.auth.trust_roots_file.as_deref(),
        Duration::from_millis(config.auth.jwks.fetch_timeout_ms),
    )?;
    let policy = KeyCachePolicy {
        max_age: Duration::from_secs(config.auth.jwks.max_age_seconds),
        min_refetch_interval: Duration::from_secs(config.auth.jwks.min_refetch_interval_seconds),
    };
    let tokens = OutboundTokens::from_config(client, idp_http, policy)
        .context("configuration key `export.client.key_file`")?;
    let epj_http = icbt_auth::http::https_client(
        export
            .trust_roots_file
            .as_deref()
            .or(config.auth.trust_roots_file.as_deref()),
        Duration::from_millis(export.request_timeout_ms),
    )?;
    Ok(Epj::new(epj_http, Arc::new(tokens)))
}

pub(super) async fn run_exporter(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.storage).await?;
    let Some(exporter) = exporter(&config, store.clone(), None)? else {
        anyhow::bail!(
            "configuration key `export.epj_base_url`: is not set; fix: set the EPJ's FHIR base URL"
        );
    };
    #[allow(clippy::print_stdout)]
    {
        println!("icbt-gateway exporter running");
    }
    Arc::new(exporter).run(server::shutdown_signal()).await;
    store.close().await;
    Ok(())
}

pub(super) async fn export_status(config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.storage).await?;
    let counts = store.outbox_counts().await?;
    store.close().await;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "pending {} (oldest {} s), done {}, dead {}",
            counts.pending,
            counts.oldest_pending_ms.unwrap_or(0) / 1_000,
            counts.done,
            counts.dead
        );
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
            DeadLetterCommand::List { after, limit } => {
                for row in store
                    .outbox_rows("dead", after, limit.clamp(1, 10_000))
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
