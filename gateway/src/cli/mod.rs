//! The command line: `serve`, `export`, `audit` and `config check`.

mod audit;
mod dev;
mod export;

pub(crate) use audit::verify_audit;
pub use export::exporter;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use icbt_config::{Config, Mode};

use icbt_auth::client::OutboundTokens;
use icbt_auth::identity::{HprNumber, OrgNumber};
use icbt_auth::keys::{Fetch, HttpFetch, KeyCachePolicy};
use icbt_auth::policy::{AuditorRule, Rules, Tenancy};
use icbt_auth::token::Validator;

use crate::audit::sequencer::AuditLog;
use crate::http::auth::AuthContext;
use crate::http::auth::LoginContext;
use crate::http::middleware::{self, Limits};
use crate::http::{self, AppState};
use crate::server::tls::{self, CertificateFiles};
use crate::server::{self, ListenerLimits};
use crate::storage::Store;
use crate::telemetry::{Metrics, Telemetry};

/// Messaging gateway between iCBT platforms, patients, therapists and hospital systems.
#[derive(Debug, Parser)]
#[command(name = "icbt-gateway", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTPS API.
    Serve {
        /// TOML configuration file; `ICBT_*` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Dev mode: no file needed, SQLite in ./data, a generated certificate, loopback only.
        #[arg(long)]
        dev: bool,
    },
    /// The dev-mode sandbox: tokens for its people, and the demo story.
    Dev {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The dev gateway's URL; default `https://localhost:<server.bind port>`.
        #[arg(long, global = true)]
        gateway: Option<url::Url>,
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check the access log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// The journal exporter: run it, or look after its dead letters.
    Export {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Use dev mode's defaults (SQLite in ./data).
        #[arg(long, global = true)]
        dev: bool,
        #[command(subcommand)]
        command: Option<ExportCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Writes a token for NAME of the people file (and, for HelseID, the DPoP key it is
    /// bound to) under data/dev/tokens/, and prints the settings the `icbt` command line
    /// reads: `eval "$(icbt-gateway dev token --as kari)"`.
    Token {
        /// A person's or system client's name in data/dev/people.toml.
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        /// Print the token alone (for curl).
        #[arg(long)]
        raw: bool,
    },
    /// Plays a short programme against the running dev gateway and prints what each party
    /// sees; exits non-zero if any step did not do what it should.
    Demo,
    /// Creates an active episode for a patient and a therapist of the people file, as the
    /// platform would (for trying the web client at /app/); prints what the platform did
    /// and, on the last line, the episode's id.
    Episode {
        #[arg(long, default_value = "kari")]
        patient: String,
        #[arg(long, default_value = "terje")]
        therapist: String,
    },
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// Export until stopped (SIGTERM/SIGINT); the default.
    Run,
    /// Counts of pending, done and dead rows, and the age of the oldest pending one.
    Status,
    /// Rows that will not be retried until an operator replays them.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// One line per dead row: id, episode, kind, attempts, last error.
    List {
        /// Start after this row id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Only this clinic's rows (its organisation number): one route's dead letters.
        #[arg(long)]
        clinic: Option<String>,
    },
    /// One row in full, with the EPJ's OperationOutcome if it refused it.
    Show { id: i64 },
    /// Put rows back in line, due now (after the cause is fixed).
    Replay { ids: Vec<i64> },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE (with `ICBT_*` overrides) and print the effective configuration,
    /// secrets redacted.
    Check {
        file: PathBuf,
        /// Validate as dev mode would.
        #[arg(long)]
        dev: bool,
    },
}

pub(crate) fn mode(dev: bool) -> Mode {
    if dev { Mode::Dev } else { Mode::Production }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    tls::install_default_provider();
    match cli.command {
        Command::Serve { config, dev } => {
            let mode = mode(dev);
            let config = Config::load(config.as_deref(), mode)?;
            let telemetry =
                Telemetry::init(&config.telemetry, config.auth.trust_roots_file.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let result = runtime.block_on(serve(config, mode));
            // Stop the runtime before the exporter: it flushes spans from its own thread.
            runtime.shutdown_timeout(Duration::from_secs(5));
            telemetry.shutdown();
            result
        }
        Command::Audit { command } => audit::run(&command),
        Command::Export {
            config,
            dev,
            command,
        } => {
            let config = Config::load(config.as_deref(), mode(dev))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            match command.unwrap_or(ExportCommand::Run) {
                ExportCommand::Run => {
                    let telemetry = Telemetry::init(
                        &config.telemetry,
                        config.auth.trust_roots_file.as_deref(),
                    )?;
                    let result = runtime.block_on(export::run_exporter(config));
                    runtime.shutdown_timeout(Duration::from_secs(5));
                    telemetry.shutdown();
                    result
                }
                ExportCommand::Status => runtime.block_on(export::export_status(&config)),
                ExportCommand::DeadLetters { command } => {
                    runtime.block_on(export::dead_letters(&config, command))
                }
            }
        }
        Command::Dev {
            config,
            gateway,
            command,
        } => match command {
            DevCommand::Token { name, raw } => {
                dev::token(config.as_deref(), &name, gateway.as_ref(), raw)
            }
            DevCommand::Demo => dev::demo(config.as_deref(), gateway.as_ref()),
            DevCommand::Episode { patient, therapist } => {
                dev::episode(config.as_deref(), gateway.as_ref(), &patient, &therapist)
            }
        },
        Command::Config {
            command: ConfigCommand::Check { file, dev },
        } => {
            let config = Config::load(Some(&file), mode(dev))?;
            #[allow(clippy::print_stdout)]
            {
                print!("{}", config.to_redacted_toml()?);
                println!("# configuration OK: {}", file.display());
            }
            Ok(())
        }
    }
}

async fn serve(config: Config, mode: Mode) -> anyhow::Result<()> {
    let files = certificate_files(&config, mode)?;
    let tls_config = Arc::new(tls::server_config(&config.tls, &files)?);
    let fingerprint = tls::fingerprint(&files.cert_file)?;
    let store = Store::open(&config.storage).await?;

    let bind = config.server.bind;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("cannot listen on {bind}"))?;

    let mut config = config;
    let dev = match mode {
        Mode::Dev if config.dev.sandbox => {
            Some(start_dev(&mut config, local.port(), &files.cert_file)?)
        }
        Mode::Dev | Mode::Production => None,
    };
    let auth = Arc::new(auth_context(&config)?);
    let login = login_context(&config, &auth)?;
    let audit_log = Arc::new(AuditLog::from_config(
        &config.audit,
        &config.storage.data_dir,
    )?);
    upgrade_checkpoints(&store, &audit_log).await?;
    store.register_clinics(&register_names(&config)).await?;
    let metrics = Metrics::shared();
    let push = crate::push::Push::default();
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        auth,
        push: push.clone(),
        stream_slots: crate::push::StreamSlots::new(config.server.streams_per_principal),
        uploads: crate::http::state::Uploads::from_config(&config.storage),
        login,
        outbound: outbound_client(&config)?,
        audit: audit_log.clone(),
        devices: config.devices.clone(),
        envelope_limits: icbt_envelope::Limits {
            max_bytes: usize::try_from(config.server.body_limit_bytes).unwrap_or(usize::MAX),
            max_recipients: 64,
        },
        dev_idp: dev.as_ref().map(|(d, _)| d.idp.clone()),
        web_app: dev.as_ref().map(|_| config.dev.web_dir.clone()),
        console: config
            .console
            .enabled
            .then(|| Arc::new(http::console::Console::from_config(&config))),
    };
    let purge = tokio::spawn(housekeeping(store.clone(), state.auth.clone()));
    let hub = tokio::spawn(push.hub.clone().run(push.subscribe(), store.clone()));
    let exporter = export::in_process_exporter(
        &config,
        &store,
        &push,
        dev.as_ref().and_then(|(d, _)| d.sink.clone()),
    )?;
    let sequencer = tokio::spawn(audit_log.clone().run(
        store.clone(),
        push.hub.clone(),
        metrics.clone(),
    ));
    let publisher = checkpoint_publisher(&config, &store, &metrics)?;
    let closing = push.closing.clone();
    let notifications = tokio::spawn(push.forward_notifications(store.clone()));
    let (limits, timeouts) = limits(&config);
    let app = middleware::build(
        http::router(state, config.telemetry.metrics_enabled),
        &limits,
        metrics,
    );

    // Before anyone is told the address: a TERM from then on drains.
    let shutdown = server::shutdown_signal();
    tracing::info!(address = %local, backend = store.backend().as_str(), dev = (mode == Mode::Dev), "listening");
    announce(&format!("icbt-gateway listening on https://{local}"));
    announce(&format!(
        "TLS certificate SHA-256 fingerprint: {fingerprint}"
    ));
    if let Some((dev, origin)) = &dev {
        announce_dev(dev, origin, &audit_log);
    }
    server::serve(listener, tls_config, app, (timeouts, closing), shutdown).await;
    let tasks = [purge, notifications, hub, sequencer];
    stop(
        tasks.into_iter().chain(exporter).chain(publisher),
        &audit_log,
        store,
    )
    .await;
    Ok(())
}

/// After the server has drained: ends the background tasks, adds the last requests'
/// records to the tree, and closes the pool.
async fn stop(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>,
    audit_log: &AuditLog,
    store: Store,
) {
    for task in tasks {
        task.abort();
    }
    if let Err(e) = audit_log.sequence_all(&store).await {
        tracing::warn!(error = %e, "adding the last audit records to the tree failed; the next start adds them");
    }
    store.close().await;
    tracing::info!("stopped");
}

/// A line of `serve`'s start-up output. A closed stdout (a reader that stopped after the
/// address, `| head -1`) must not stop the server, so a failed write is ignored where
/// `println!` would panic.
fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The request pipeline's limits and the listener's timeouts.
fn limits(config: &Config) -> (Limits, ListenerLimits) {
    let limits = Limits {
        body_limit_bytes: config.server.body_limit_bytes,
        attachment_limit_bytes: config.storage.attachment_limit_bytes,
        request_timeout: Duration::from_millis(config.server.request_timeout_ms),
        concurrency_limit: config.server.concurrency_limit,
        upload_concurrency_limit: config.server.upload_concurrency_limit,
        admission_queue: config.server.admission_queue,
        admission_standing: Duration::from_millis(config.server.admission_standing_ms),
        hsts_max_age_seconds: config.server.hsts_max_age_seconds,
    };
    let timeouts = ListenerLimits {
        handshake: Duration::from_millis(config.server.handshake_timeout_ms),
        write: Duration::from_millis(config.server.write_timeout_ms),
        grace: Duration::from_secs(config.server.shutdown_grace_seconds),
        handshakes_per_address: config.server.handshakes_per_address,
        unauthenticated_per_address: config.server.unauthenticated_per_address,
    };
    (limits, timeouts)
}

/// Dev mode's additions to `config`, for the listener on `port` presenting `cert`.
fn start_dev(
    config: &mut Config,
    port: u16,
    cert: &std::path::Path,
) -> anyhow::Result<(crate::dev::DevMode, String)> {
    let origin = crate::dev::origin(config, port);
    Ok((crate::dev::prepare(config, &origin, cert)?, origin))
}

/// Says where the sandbox's parts are, and publishes the clinic's journal key once the
/// listener answers.
fn announce_dev(dev: &crate::dev::DevMode, origin: &str, audit_log: &AuditLog) {
    announce(&format!(
        "dev identity providers: {origin}/dev/idp/idporten and {origin}/dev/idp/helseid"
    ));
    announce(&format!("dev people: {}", dev.files.people.display()));
    if let Some(sink) = &dev.sink {
        announce(&format!("dev journal sink: {}", sink.display()));
    }
    tokio::spawn(crate::dev::publish_journal_key(
        origin.to_owned(),
        dev.files.clone(),
        dev.idp.clone(),
        audit_log.signer.public_key().to_vec(),
    ));
}

/// The configured certificate, or dev mode's generated one.
fn certificate_files(config: &Config, mode: Mode) -> anyhow::Result<CertificateFiles> {
    Ok(match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert_file), Some(key_file)) => CertificateFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        },
        _ if mode == Mode::Dev => tls::ensure_dev_certificate(&config.storage.data_dir)?,
        _ => anyhow::bail!(
            "configuration key `tls.cert_file`: is not set; fix: set tls.cert_file and tls.key_file"
        ),
    })
}

/// The hosted logins, sharing the issuers' metadata and keys with the token validator.
fn login_context(config: &Config, auth: &AuthContext) -> anyhow::Result<Arc<LoginContext>> {
    let http = icbt_auth::http::https_client(
        config.auth.trust_roots_file.as_deref(),
        Duration::from_millis(config.auth.jwks.fetch_timeout_ms),
    )?;
    Ok(Arc::new(LoginContext::from_config(
        &config.login,
        &auth.validator,
        &http,
    )?))
}

/// The task that pushes the access log's checkpoints to `[audit.publish]`, if any.
fn checkpoint_publisher(
    config: &Config,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let publisher = crate::audit::publish::Publisher::from_config(
        &config.audit.publish,
        config.auth.trust_roots_file.as_deref(),
    )?;
    Ok(publisher.map(|p| tokio::spawn(Arc::new(p).run(store.clone(), metrics.clone()))))
}

/// Re-signs the newest checkpoint of each log as a C2SP note if it was written before
/// the note format, and seals the access records hashed in leaf format 1 (each once, at
/// the first start after the upgrade).
async fn upgrade_checkpoints(store: &Store, audit_log: &AuditLog) -> anyhow::Result<()> {
    if store.upgrade_audit_checkpoint(&audit_log.signer).await? {
        tracing::info!(log = "access", "newest checkpoint re-signed as a C2SP note");
    }
    if store.upgrade_key_log_head(&audit_log.signer).await? {
        tracing::info!(log = "keys", "newest checkpoint re-signed as a C2SP note");
    }
    if let Some(records) = store.seal_legacy_leaves(&audit_log.signer).await? {
        tracing::info!(records, "access records of leaf format 1 sealed");
    }
    Ok(())
}

fn auth_context(config: &Config) -> anyhow::Result<AuthContext> {
    let timeout = Duration::from_millis(config.auth.jwks.fetch_timeout_ms);
    let client = icbt_auth::http::https_client(config.auth.trust_roots_file.as_deref(), timeout)?;
    let fetch: Arc<dyn Fetch> = Arc::new(HttpFetch::new(client));
    let validator = Validator::from_config(&config.auth, &fetch)?;
    let rules = Rules {
        auditors: AuditorRule {
            hpr_numbers: hpr_numbers(
                "auth.auditors.hpr_numbers",
                &config.auth.auditors.hpr_numbers,
            )?,
            scope: config.auth.auditors.scope.clone(),
            deployment_hpr_numbers: hpr_numbers(
                "auth.auditors.deployment_hpr_numbers",
                &config.auth.auditors.deployment_hpr_numbers,
            )?,
            deployment_scope: config.auth.auditors.deployment_scope.clone(),
        },
        tenancy: tenancy(config)?,
    };
    let limit = std::num::NonZeroU32::new(config.server.rate_limit_per_minute).map(|per_minute| {
        let burst = std::num::NonZeroU32::new(config.server.rate_limit_burst).unwrap_or(per_minute);
        (per_minute, burst)
    });
    Ok(AuthContext::with_limit(
        validator,
        config.server.public_url.clone(),
        rules,
        limit,
    ))
}

/// The register's clinics as `(org number, name)`.
pub(crate) fn register_names(config: &Config) -> Vec<(&str, &str)> {
    config
        .clinics
        .iter()
        .map(|c| (c.org_number.as_str(), c.name.as_str()))
        .collect()
}

fn hpr_numbers(key: &str, numbers: &[String]) -> anyhow::Result<Vec<HprNumber>> {
    numbers
        .iter()
        .map(|h| HprNumber::parse(h).with_context(|| format!("configuration key `{key}`: `{h}`")))
        .collect()
}

/// The clinic register as the policy reads it (validated already; parsed again into the
/// auth crate's types).
pub(crate) fn tenancy(config: &Config) -> anyhow::Result<Tenancy> {
    let org = |key: &str, text: &str| {
        OrgNumber::parse(text).with_context(|| format!("configuration key `{key}`: `{text}`"))
    };
    let clinics = config
        .clinics
        .iter()
        .map(|c| {
            Ok((
                org("clinics.org_number", &c.org_number)?,
                org("clinics.hospital", &c.hospital)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let platforms = config
        .platforms
        .iter()
        .map(|p| {
            let clinics = p
                .clinics
                .iter()
                .map(|c| org("platforms.clinics", c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((p.client_id.clone(), clinics))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tenancy::new(clinics, platforms))
}

/// The outbound HelseID client; its key is read now, so a bad key stops the start.
fn outbound_client(config: &Config) -> anyhow::Result<Option<Arc<OutboundTokens>>> {
    let Some(outbound) = &config.outbound else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(config.auth.jwks.fetch_timeout_ms);
    let http = icbt_auth::http::https_client(config.auth.trust_roots_file.as_deref(), timeout)?;
    let policy = KeyCachePolicy {
        max_age: Duration::from_secs(config.auth.jwks.max_age_seconds),
        min_refetch_interval: Duration::from_secs(config.auth.jwks.min_refetch_interval_seconds),
    };
    let tokens = OutboundTokens::from_config(outbound, http, policy)
        .context("configuration key `outbound.key_file`")?;
    Ok(Some(Arc::new(tokens)))
}

/// Once a minute: deletes expired DPoP proof ids and forgets the rate state of
/// principals not seen lately.
async fn housekeeping(store: Store, auth: Arc<AuthContext>) {
    let mut tick = tokio::time::interval(Duration::from_mins(1));
    loop {
        tick.tick().await;
        if let Err(e) = store
            .purge_expired_replay_entries(icbt_auth::now_secs())
            .await
        {
            tracing::warn!(error = %e, "purging DPoP replay entries failed");
        }
        auth.forget_idle_principals();
    }
}
