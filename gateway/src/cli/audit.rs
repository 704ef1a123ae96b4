//! `icbt-gateway audit`: verify the access log, run the review reports, print the keys
//! that check its checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use icbt_config::Config;

use super::mode;
use icbt_merkle::{Checkpoint, SignedCheckpoint};

use crate::audit::review::{self, Kind};
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
        /// A checkpoint note of the access log kept outside the database (as
        /// `/logs/access/checkpoint` served it, saved by the security team or a witness).
        /// The log must still give its root at its size: a log cut back or rewritten
        /// fails. Repeatable.
        #[arg(long = "trusted-checkpoint", value_name = "FILE")]
        trusted_checkpoints: Vec<PathBuf>,
    },
    /// Run a review report over a time range and print it, as the console's reports page
    /// shows it: `off-team`, `after-hours`, `many-patients`, `refusal-bursts` or
    /// `dead-letters`. Reads the database directly, like `verify`.
    Report {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        dev: bool,
        #[arg(long)]
        kind: String,
        /// Start, inclusive: a date (`2026-11-01`, midnight in `audit.review.time_zone`),
        /// an RFC 3339 time, or Unix milliseconds.
        #[arg(long)]
        from: String,
        /// End, exclusive, in the same forms.
        #[arg(long)]
        to: String,
        /// `csv` or `json`.
        #[arg(long, default_value = "csv")]
        format: String,
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
        AuditCommand::Verify { config, dev, .. }
        | AuditCommand::Report { config, dev, .. }
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
        AuditCommand::Report {
            kind,
            from,
            to,
            format,
            ..
        } => {
            let kind = Kind::parse(kind).with_context(|| {
                format!("--kind `{kind}`: one of off-team, after-hours, many-patients, refusal-bursts, dead-letters")
            })?;
            if !["csv", "json"].contains(&format.as_str()) {
                anyhow::bail!("--format `{format}`: csv or json");
            }
            let settings = &log.review;
            let from = instant(from, settings).context("--from")?;
            let to = instant(to, settings).context("--to")?;
            let (from, to) = review::check_range(Some(from), Some(to), settings.max_range_ms)
                .map_err(|e| {
                    let flag = if e.field == "from_ms" {
                        "--from"
                    } else {
                        "--to"
                    };
                    anyhow::anyhow!("{flag}: {}", e.detail)
                })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = runtime.block_on(async {
                let store = Store::open(&config.storage).await?;
                let report = review::run(
                    &store,
                    settings,
                    kind,
                    (from, to),
                    &review::Scope::Everything,
                )
                .await;
                store.close().await;
                anyhow::Ok(report?)
            })?;
            if format == "json" {
                print_line(&serde_json::to_string_pretty(&report)?);
            } else {
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", review::csv(&report.rows));
                }
            }
            #[allow(clippy::print_stderr)]
            if !report.complete {
                eprintln!(
                    "the report reached audit.review.time_limit_ms; it covers up to {} ms only",
                    report.scanned_to_ms
                );
            }
            Ok(())
        }
        AuditCommand::Verify {
            trusted_checkpoints,
            ..
        } => {
            let outside = trusted_checkpoints
                .iter()
                .map(|path| kept_checkpoint(path, &log))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(verify_audit(&config, &log, outside))
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_line(line: &str) {
    println!("{line}");
}

/// A checkpoint note of the access log from `path`, signed by a key the log trusts.
fn kept_checkpoint(path: &std::path::Path, log: &AuditLog) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--trusted-checkpoint {}", path.display()))?;
    let signed = SignedCheckpoint::from_note(&text).with_context(|| {
        format!(
            "--trusted-checkpoint {}: not a checkpoint note",
            path.display()
        )
    })?;
    if signed.checkpoint.origin != crate::audit::ORIGIN {
        anyhow::bail!(
            "--trusted-checkpoint {}: a checkpoint of `{}`, not of the access log",
            path.display(),
            signed.checkpoint.origin
        );
    }
    let trusted: Vec<&[u8]> = log.trusted.iter().map(Vec::as_slice).collect();
    signed
        .verify(&trusted)
        .with_context(|| format!("--trusted-checkpoint {}", path.display()))?;
    Ok(signed.checkpoint)
}

/// A date (midnight in the review time zone), an RFC 3339 time, or Unix milliseconds.
fn instant(text: &str, settings: &review::Settings) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let date: jiff::civil::Date = text.parse().with_context(|| {
        format!("`{text}` is not a date (2026-11-01), an RFC 3339 time or Unix milliseconds")
    })?;
    let midnight = settings
        .time_zone
        .to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .with_context(|| format!("`{text}` has no midnight in the review time zone"))?;
    Ok(midnight.as_millisecond())
}

/// `audit verify`: one pass over the log in tree order.
pub(crate) async fn verify_audit(
    config: &Config,
    log: &AuditLog,
    outside: Vec<Checkpoint>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let store = Store::open(&config.storage).await?;
    let walked = crate::audit::verify::walk(&store, log, outside, crate::storage::now_ms()).await;
    store.close().await;
    let (report, pending) = walked?;
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
