//! `icbt-gateway audit`: verify the access log, print the keys that check its checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use icbt_config::Config;

use super::mode;
use crate::audit::sequencer::AuditLog;
use crate::storage::Store;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole tree from the stored records, check every checkpoint, and name
    /// the first record that does not fit. Exits non-zero if anything is wrong.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Use dev mode's defaults (SQLite in ./data).
        #[arg(long)]
        dev: bool,
    },
    /// Print the base64 public key that verifies the logs' checkpoints.
    PublicKey {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        dev: bool,
    },
    /// Print the C2SP verifier keys (`name+id+key`) of the access log and the key log, one
    /// per line: what a witness or another verifier of the checkpoint notes pins.
    VerifierKeys {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        dev: bool,
    },
}

pub fn run(command: &AuditCommand) -> anyhow::Result<()> {
    let (config, dev) = match command {
        AuditCommand::Verify { config, dev }
        | AuditCommand::PublicKey { config, dev }
        | AuditCommand::VerifierKeys { config, dev } => (config.clone(), *dev),
    };
    let config = Config::load(config.as_deref(), mode(dev))?;
    let log = AuditLog::from_config(&config.audit, &config.storage.data_dir)?;
    match command {
        AuditCommand::PublicKey { .. } => {
            use base64::Engine as _;
            print_line(&base64::engine::general_purpose::STANDARD.encode(log.signer.public_key()));
            Ok(())
        }
        AuditCommand::VerifierKeys { .. } => {
            for origin in [crate::audit::ORIGIN, crate::storage::KEY_LOG_ORIGIN] {
                print_line(&log.signer.verifier_key(origin)?.to_string());
            }
            Ok(())
        }
        AuditCommand::Verify { .. } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(verify_audit(&config, &log))
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_line(line: &str) {
    println!("{line}");
}

/// `audit verify`: one pass over the log in tree order.
pub(crate) async fn verify_audit(config: &Config, log: &AuditLog) -> anyhow::Result<()> {
    const PAGE: i64 = 10_000;
    let started = std::time::Instant::now();
    let store = Store::open(&config.storage).await?;
    // One snapshot: a batch the running gateway sequences meanwhile is not half seen.
    let mut log_now = store.audit_snapshot().await?;
    let checkpoints = log_now.checkpoints().await?;
    let pending = log_now.pending().await?;
    let mut verifier = crate::audit::verify::Verifier::new(
        checkpoints,
        log.trusted.clone(),
        &log.retention,
        crate::storage::now_ms(),
    );
    let mut from = 0;
    loop {
        let page = log_now.scan(from, PAGE).await?;
        let Some(last) = page.last().and_then(|s| s.leaf_index) else {
            break;
        };
        for stored in &page {
            verifier.feed(stored);
        }
        if verifier.failed() || i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
            break;
        }
        from = last + 1;
    }
    log_now.close().await?;
    let report = verifier.finish();
    store.close().await;
    let seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::print_stdout, clippy::cast_precision_loss)]
    match report.problem {
        None => {
            println!(
                "audit log verified: {} records, {} checkpoints, {pending} waiting to join the tree ({:.0} records/s)",
                report.records,
                report.checkpoints,
                report.records as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
        Some(problem) => {
            println!("audit log NOT verified: {problem}");
            anyhow::bail!("audit log verification failed: {problem}")
        }
    }
}
