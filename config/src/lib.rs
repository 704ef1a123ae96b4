//! Configuration of the icbt-gateway: one typed struct, loaded once.
//!
//! Owns: the shape of every configuration key, safe defaults, loading from a TOML file
//! and `ICBT_`-prefixed environment variables (`ICBT_SERVER__BIND` sets `server.bind`),
//! validation whose messages name the key and the fix, and secrets ([`Secret`]) that
//! never print.
//!
//! Must not know about: sockets, databases or TLS libraries. It checks that files exist;
//! parsing them is the job of the code that uses them.
//!
//! Start from [`Config::load`].
//!
//! Over 600 lines on purpose: every section's struct, its defaults and the checks that
//! relate keys across sections sit together, so one file shows the whole schema that
//! `config/example.toml` documents (the auth section is already its own module).

mod auth;
mod register;
mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use auth::{
    AuditorConfig, AuthConfig, ClaimNames, DpopConfig, IssuerConfig, IssuerKind, JwksConfig,
    LoginConfig, OutboundClientConfig, SIGNING_ALGORITHMS,
};
pub use register::{ClinicConfig, PlatformConfig, is_org_number};
pub use secret::{Secret, SecretOrigin};

/// Environment variables with this prefix override file values; `__` separates levels.
/// Only names with a `__` are read: every key lives in a section, so `ICBT_<SECTION>__<KEY>`
/// is the only shape a setting can take. Names without one (`ICBT_GATEWAY`,
/// `ICBT_TOKEN_FILE`, …) belong to the `icbt` command line and are left alone, so both
/// programs run from one shell.
pub const ENV_PREFIX: &str = "ICBT_";

/// What separates the levels of an environment variable's name.
pub const ENV_SEPARATOR: &str = "__";

/// How the process is run. Dev mode fills in conveniences and refuses anything that
/// would expose them beyond this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Production: every required key must be set.
    Production,
    /// `serve --dev`: generated certificate, loopback only.
    Dev,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub devices: DevicesConfig,
    /// The gateway's own HelseID client for outbound calls; unset means none are made.
    pub outbound: Option<OutboundClientConfig>,
    /// Hosted logins, one per issuer (`[[login]]`); empty means none.
    pub login: Vec<LoginConfig>,
    /// The journal exporter (`icbt-gateway export`).
    pub export: ExportConfig,
    /// The clinic register (`[[clinics]]`): each clinic's hospital and journal route.
    /// Empty: one clinic or one EPJ, routed by `export.epj_base_url`.
    pub clinics: Vec<ClinicConfig>,
    /// Platforms bound to the register's clinics (`[[platforms]]`).
    pub platforms: Vec<PlatformConfig>,
    /// The security team's console at `/console/`.
    pub console: ConsoleConfig,
    /// Dev mode's sandbox; ignored in production.
    pub dev: DevConfig,
}

/// The security team's console (`/console/`): access-log search, patient timelines,
/// review reports and the integrity panel, for auditors only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// `issuer` of the `[[login]]` auditors log in with; default the first HelseID one.
    pub login_issuer: Option<String>,
    /// Serve the console's files from this directory (`web/dist/console`) instead of the
    /// copy built into the binary: for working on the console.
    pub assets_dir: Option<std::path::PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_issuer: None,
            assets_dir: None,
        }
    }
}

/// Dev mode's sandbox (`serve --dev` only).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// The dev identity providers, their people file, the clinic's journal key and the
    /// in-process exporter with its journal sink. `false` leaves dev mode with only the
    /// generated certificate and SQLite (for set-ups that bring their own providers).
    pub sandbox: bool,
    /// The built web clients (`npm --prefix web run build`), served under `/app/` by the
    /// sandbox. Relative to the working directory.
    pub web_dir: std::path::PathBuf,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            sandbox: true,
            web_dir: "web/dist".into(),
        }
    }
}

/// The HTTP listener and the limits of its request pipeline.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: u64,
    /// The URL clients use to reach the gateway (scheme, host, port), when it differs from
    /// the `Host` they send, e.g. behind a proxy. DPoP proofs are checked against it.
    pub public_url: Option<String>,
    /// Time a request may take before it is answered with 503.
    pub request_timeout_ms: u64,
    /// Requests worked on at once (attachment uploads apart). About
    /// `storage.max_connections`: more in progress than the database can serve only
    /// wait for it. Further requests wait in `admission_queue`.
    pub concurrency_limit: usize,
    /// Attachment uploads worked on at once. Counted apart because an upload is held
    /// for as long as its client takes to send it.
    pub upload_concurrency_limit: usize,
    /// Requests that may wait (at most a second) for a place when the limit is reached,
    /// for each of the two limits; when it is full, or stands, a request is refused with
    /// 503 at once.
    pub admission_queue: usize,
    /// A wait for a place longer than this makes the queue stand: until a request finds
    /// a place free again, one that finds none is refused at once. Higher rides out
    /// longer pauses; lower keeps admitted requests faster under overload.
    pub admission_standing_ms: u64,
    /// Time a TLS handshake may take.
    pub handshake_timeout_ms: u64,
    /// Time a write to a connection may make no progress before the connection is
    /// dropped (a client that stopped reading).
    pub write_timeout_ms: u64,
    /// TLS handshakes one client address (an IPv6 /64) may have under way at once; more
    /// connections are closed at once (0 is no cap).
    pub handshakes_per_address: usize,
    /// Connections of one client address that have not yet carried an authenticated
    /// request; more are closed at once (0 is no cap). Mind clinics behind one NAT.
    pub unauthenticated_per_address: usize,
    /// Requests per minute each principal may make (0 turns the limit off).
    pub rate_limit_per_minute: u32,
    /// Requests a principal may make at once before the per-minute rate applies.
    pub rate_limit_burst: u32,
    /// Event streams and long polls one principal may hold open at once (0 is no cap).
    pub streams_per_principal: usize,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_seconds: u64,
    /// `max-age` of the Strict-Transport-Security header.
    pub hsts_max_age_seconds: u64,
}

impl ServerConfig {
    /// Each limit that must be above 0, by key.
    fn validate_positive(&self) -> Result<(), ConfigError> {
        let s = self;
        let positive = [
            (
                "server.body_limit_bytes",
                s.body_limit_bytes,
                "set a size in bytes, e.g. 1048576",
            ),
            (
                "server.request_timeout_ms",
                s.request_timeout_ms,
                "set milliseconds, e.g. 30000",
            ),
            (
                "server.handshake_timeout_ms",
                s.handshake_timeout_ms,
                "set milliseconds, e.g. 10000",
            ),
            (
                "server.write_timeout_ms",
                s.write_timeout_ms,
                "set milliseconds, e.g. 30000",
            ),
            (
                "server.concurrency_limit",
                u64::try_from(s.concurrency_limit).unwrap_or(u64::MAX),
                "set a count, e.g. 16",
            ),
            (
                "server.upload_concurrency_limit",
                u64::try_from(s.upload_concurrency_limit).unwrap_or(u64::MAX),
                "set a count, e.g. 8",
            ),
        ];
        if let Some((key, _, fix)) = positive.iter().find(|(_, value, _)| *value == 0) {
            return Err(invalid(key, "must be above 0".into(), fix));
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_url: None,
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            concurrency_limit: 16,
            upload_concurrency_limit: 8,
            admission_queue: 64,
            admission_standing_ms: 500,
            handshake_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            handshakes_per_address: 32,
            unauthenticated_per_address: 128,
            rate_limit_per_minute: 600,
            rate_limit_burst: 60,
            streams_per_principal: 10,
            shutdown_grace_seconds: 30,
            hsts_max_age_seconds: 63_072_000,
        }
    }
}

/// Whether and how clients present certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates are requested.
    #[default]
    Off,
    /// A certificate is verified when offered (system clients); others may connect.
    Optional,
    /// Every client must present a certificate chaining to `client_ca_file`.
    Required,
}

/// TLS server settings. TLS is always on.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Generated in dev mode when unset.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Generated in dev mode when unset.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of CAs that issue client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Client-certificate verification: off, optional or required.
    pub client_auth: ClientAuth,
}

/// The tamper-evident access log.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// PEM PKCS#8 Ed25519 key that signs the log's checkpoints. Required in production;
    /// dev mode generates one in `storage.data_dir` when unset.
    pub signing_key_file: Option<PathBuf>,
    /// Base64 Ed25519 public keys of earlier signing keys, whose checkpoints still verify.
    pub trusted_public_keys: Vec<String>,
    /// How often new records are added to the tree and a checkpoint is signed.
    pub checkpoint_interval_ms: u64,
    /// Days each class of record is kept; unset keeps it for ever.
    pub retention_days: RetentionConfig,
    /// What the review reports count as unusual.
    pub review: ReviewConfig,
    /// Where new checkpoints are pushed, outside the database.
    pub publish: PublishConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            trusted_public_keys: Vec::new(),
            checkpoint_interval_ms: 1_000,
            retention_days: RetentionConfig::default(),
            review: ReviewConfig::default(),
            publish: PublishConfig::default(),
        }
    }
}

/// Checkpoints of the access log pushed outside the database, so a log cut back or
/// rewritten there still meets the checkpoints it published.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// A directory (for example a share the security team owns) that receives each new
    /// checkpoint note: `checkpoint` (the newest) and `checkpoints/<size>`.
    pub directory: Option<PathBuf>,
    /// C2SP witnesses (`tlog-witness`): each new checkpoint is sent to
    /// `<url>/add-checkpoint` with a consistency proof, and the cosignature kept.
    pub witnesses: Vec<WitnessConfig>,
    /// How often the newest checkpoint is pushed.
    pub interval_ms: u64,
    /// Time one witness gets to answer.
    pub timeout_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            directory: None,
            witnesses: Vec::new(),
            interval_ms: 10_000,
            timeout_ms: 5_000,
        }
    }
}

/// One witness.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's submission prefix, `https://…`.
    pub url: String,
    /// Its cosigner verifier key, `<name>+<key id>+<base64(0x04 || Ed25519 key)>`.
    pub key: String,
}

/// The security team's review reports (`audit report`, the console's reports page).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// IANA time zone the working hours and days are in.
    pub time_zone: String,
    /// Working hours on weekdays, `HH:MM-HH:MM` local time; Saturdays and Sundays are
    /// outside them.
    pub working_hours: String,
    /// More distinct patients than this for one person in one day is reported.
    pub distinct_patients_per_day: u32,
    /// This many refusals of one principal within `burst_window_minutes` is a burst.
    pub refusals_per_burst: u32,
    pub burst_window_minutes: u32,
    /// The longest time range one report may cover.
    pub max_range_days: u32,
    /// How long one report may read before it answers with what it has.
    pub time_limit_ms: u64,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            time_zone: "Europe/Oslo".into(),
            working_hours: "07:00-17:00".into(),
            distinct_patients_per_day: 30,
            refusals_per_burst: 5,
            burst_window_minutes: 10,
            max_range_days: 92,
            time_limit_ms: 10_000,
        }
    }
}

/// `HH:MM-HH:MM` as minutes after midnight, start before end.
pub fn working_hours(text: &str) -> Result<(u16, u16), String> {
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.len() == 5).then_some(h * 60 + m)
    };
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((minute(a)?, minute(b)?)));
    match parsed {
        Some((start, end)) if start < end => Ok((start, end)),
        _ => Err(format!("`{text}` is not HH:MM-HH:MM with the start first")),
    }
}

/// The device key directory.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// The longest a published device key may live; clients republish before expiry.
    pub max_lifetime_days: u32,
    /// Active devices one person (or one clinic's journal) may have at once.
    pub max_per_owner: u32,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            max_lifetime_days: 400,
            max_per_owner: 10,
        }
    }
}

/// The journal exporter: where the EPJ and the summary record are, the clinic journal
/// keys it opens envelopes with, and how it retries.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// The EPJ's FHIR R4 base URL (`https://…/fhir/R4`); unset: nothing is exported.
    pub epj_base_url: Option<String>,
    /// The summary record's FHIR base for ITI-65; unset means the EPJ's.
    pub summary_base_url: Option<String>,
    /// PEM bundle of CAs trusted for the EPJ and summary record; unset means `auth.trust_roots_file`
    /// (or the system's roots).
    pub trust_roots_file: Option<PathBuf>,
    /// Private journal keys (device JSON from `icbt keygen`, mode 0600), one per clinic.
    pub journal_key_files: Vec<PathBuf>,
    /// HelseID client credentials (with DPoP) for the EPJ: scope and resource of the EPJ.
    pub client: Option<OutboundClientConfig>,
    /// Named HelseID clients the register's clinics route with (`client = "<name>"`).
    pub clients: std::collections::BTreeMap<String, OutboundClientConfig>,
    /// Run the exporter inside `serve` (dev set-ups); production runs `icbt-gateway export`.
    pub in_process: bool,
    /// Our identifier systems are `{identifier_base}:episode`, `:message`, `:document`.
    pub identifier_base: String,
    /// Episodes claimed at once, per worker.
    pub batch_size: u32,
    /// Consecutive rows of one episode claimed together and sent in order, so a busy
    /// episode is not one claim, one commit and one wait per row.
    pub rows_per_episode: u32,
    /// Claim loops on PostgreSQL (SQLite runs one), so the EPJ works while one commits.
    pub workers: u32,
    /// Wait between polls when there is nothing due.
    pub poll_interval_ms: u64,
    /// Failed attempts before a row is dead-lettered (refusals with an OperationOutcome are
    /// dead-lettered at once).
    pub max_attempts: u32,
    /// Back-off after the first failure; doubles each time, up to `backoff_max_ms`, with
    /// full jitter on the upper half.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Time for one request to the EPJ.
    pub request_timeout_ms: u64,
    /// Summary document codes (volven 9602) and confidentiality (`N`, `R`, `V`).
    pub document_code_system: String,
    pub document_type_code: String,
    pub document_type_display: String,
    pub document_category_code: String,
    pub document_category_display: String,
    pub document_confidentiality: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            epj_base_url: None,
            summary_base_url: None,
            trust_roots_file: None,
            journal_key_files: Vec::new(),
            client: None,
            clients: std::collections::BTreeMap::new(),
            in_process: false,
            identifier_base: "urn:icbt-gateway".into(),
            batch_size: 8,
            rows_per_episode: 16,
            workers: 8,
            poll_interval_ms: 500,
            max_attempts: 12,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            request_timeout_ms: 30_000,
            document_code_system: "urn:oid:2.16.578.1.12.4.1.1.9602".into(),
            document_type_code: "J01-2".into(),
            document_type_display: "Sammenfatning av journal".into(),
            document_category_code: "J01".into(),
            document_category_display: "Epikriser og sammenfatninger".into(),
            document_confidentiality: "R".into(),
        }
    }
}

/// Retention per record class, in days.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Reads, searches and exports of patient data.
    pub access: Option<u32>,
    /// Creations and changes.
    pub change: Option<u32>,
    /// Logins and logouts.
    pub authentication: Option<u32>,
    /// Device key publications and revocations.
    pub keys: Option<u32>,
    /// Reads of the access log itself.
    pub audit: Option<u32>,
}

impl RetentionConfig {
    /// Days for `class` (`access`, `change`, `authentication`, `keys`, `audit`).
    pub fn days(&self, class: &str) -> Option<u32> {
        match class {
            "access" => self.access,
            "change" => self.change,
            "authentication" => self.authentication,
            "keys" => self.keys,
            "audit" => self.audit,
            _ => None,
        }
    }
}

/// Where records are stored.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the embedded SQLite database and dev-mode files.
    pub data_dir: PathBuf,
    /// `postgres://user@host:port/db` for PostgreSQL; unset means SQLite in `data_dir`.
    pub url: Option<String>,
    /// PostgreSQL password, kept out of the URL.
    pub password: Option<Secret>,
    /// Connections in the main pool. On PostgreSQL an instance opens, besides these, a
    /// quarter as many (at least two) for DPoP proof ids and announcements, two for the
    /// writers that commit sends together, and one to listen: 16 means up to 23.
    pub max_connections: u32,
    /// Time to wait for a connection before a request fails.
    pub acquire_timeout_ms: u64,
    /// Largest attachment accepted, in bytes.
    pub attachment_limit_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            url: None,
            password: None,
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            attachment_limit_bytes: 25 * 1024 * 1024,
        }
    }
}

impl StorageConfig {
    /// The SQLite file used when no URL is set.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("icbt-gateway.sqlite3")
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line, for collectors.
    #[default]
    Json,
    /// Readable lines, for a terminal.
    Human,
}

/// Logs, traces and metrics.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `info,icbt_gateway=debug`.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318`; unset means no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported traces.
    pub service_name: String,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics_enabled: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "icbt-gateway".to_owned(),
            metrics_enabled: true,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or did not fit the schema.
    #[error("configuration: {0}")]
    Load(String),
    /// A value is present but not acceptable.
    #[error("configuration key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: &'static str,
    },
}

impl Config {
    /// Loads defaults, then `file` (if any), then `ICBT_*` environment variables, and
    /// validates the result for `mode`.
    pub fn load(file: Option<&Path>, mode: Mode) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|name| name.as_str().contains(ENV_SEPARATOR))
                .split(ENV_SEPARATOR),
        );
        let config: Config = figment.extract().map_err(|e| {
            // One line per problem; the first is what an operator fixes first.
            let first = e
                .into_iter()
                .next()
                .map(|e| e.to_string())
                .unwrap_or_default();
            ConfigError::Load(first)
        })?;
        config.validate(mode)?;
        Ok(config)
    }

    /// Checks values that the schema alone cannot.
    pub fn validate(&self, mode: Mode) -> Result<(), ConfigError> {
        let s = &self.server;
        if mode == Mode::Dev && !s.bind.ip().is_loopback() {
            return Err(invalid(
                "server.bind",
                format!("dev mode refuses the non-loopback address {}", s.bind.ip()),
                "bind dev mode to 127.0.0.1 or ::1, or run without --dev",
            ));
        }
        self.server.validate_positive()?;
        self.validate_tls(mode)?;
        if mode == Mode::Production {
            self.validate_production()?;
        }
        self.validate_storage()?;
        self.auth.validate()?;
        for login in &self.login {
            login.validate(&self.auth)?;
        }
        if let Some(roots) = &self.auth.trust_roots_file {
            readable_file(
                "auth.trust_roots_file",
                roots,
                "point it at a PEM bundle of CA certificates",
            )?;
        }
        if let Some(url) = &self.server.public_url
            && (!url.starts_with("https://") || url.trim_end_matches('/').matches('/').count() > 2)
        {
            return Err(invalid(
                "server.public_url",
                format!("`{url}` is not an https origin"),
                "use scheme, host and port only, e.g. https://gateway.example.no",
            ));
        }
        if let Some(outbound) = &self.outbound {
            readable_file(
                "outbound.key_file",
                &outbound.key_file,
                "point it at the client's PEM private key",
            )?;
            if !["RS256", "PS256", "ES256"].contains(&outbound.key_algorithm.as_str()) {
                return Err(invalid(
                    "outbound.key_algorithm",
                    format!("`{}` is not supported", outbound.key_algorithm),
                    "use RS256, PS256 or ES256",
                ));
            }
        }
        self.validate_register()?;
        self.validate_export()?;
        self.validate_audit(mode)?;
        if self.devices.max_lifetime_days == 0 || self.devices.max_per_owner == 0 {
            return Err(invalid(
                "devices",
                "max_lifetime_days and max_per_owner must be above 0".into(),
                "set e.g. max_lifetime_days = 400 and max_per_owner = 10",
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http(s) URL"),
                "use the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
            ));
        }
        Ok(())
    }

    /// The dev identity providers exist only in dev mode; a production configuration
    /// that names one would trust tokens anybody with the data directory can mint.
    fn refuse_dev_issuers(&self) -> Result<(), ConfigError> {
        let issuers = self.auth.issuers.iter().flat_map(|i| {
            [Some(i.issuer.as_str()), i.discovery_url.as_deref()]
                .into_iter()
                .flatten()
        });
        let clients = [self.outbound.as_ref(), self.export.client.as_ref()]
            .into_iter()
            .flatten()
            .chain(self.export.clients.values())
            .map(|c| c.issuer.as_str());
        if let Some(url) = issuers.chain(clients).find(|u| is_dev_issuer(u)) {
            return Err(invalid(
                "auth.issuers.issuer",
                format!("`{url}` is the dev identity provider, which exists only in dev mode"),
                "name the real ID-porten or HelseID issuer, or run `serve --dev`",
            ));
        }
        Ok(())
    }

    /// What only production requires: no dev identity provider, and its own origin.
    fn validate_production(&self) -> Result<(), ConfigError> {
        self.refuse_dev_issuers()?;
        if self.server.public_url.is_none() {
            return Err(invalid(
                "server.public_url",
                "is not set; production checks DPoP proofs against the gateway's own origin, never a client's Host header".into(),
                "set it to the origin clients use, e.g. https://gateway.example.no",
            ));
        }
        self.validate_private_files()
    }

    /// Production: every file that holds a private key or a secret is its owner's alone,
    /// and the access log's signing key lies outside the data directory whose database
    /// it protects (whoever can rewrite the one should not also hold the other).
    fn validate_private_files(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(&'static str, &Path)> = Vec::new();
        if let Some(path) = &self.audit.signing_key_file {
            files.push(("audit.signing_key_file", path));
        }
        if let Some(path) = &self.tls.key_file {
            files.push(("tls.key_file", path));
        }
        if let Some(outbound) = &self.outbound {
            files.push(("outbound.key_file", &outbound.key_file));
        }
        if let Some(client) = &self.export.client {
            files.push(("export.client.key_file", &client.key_file));
        }
        for login in &self.login {
            files.push(("login.key_file", &login.key_file));
        }
        for file in &self.export.journal_key_files {
            files.push(("export.journal_key_files", file));
        }
        for client in self.export.clients.values() {
            files.push(("export.clients.key_file", &client.key_file));
        }
        for file in self.clinics.iter().flat_map(|c| &c.journal_key_files) {
            files.push(("clinics.journal_key_files", file));
        }
        if let Some(SecretOrigin::File(path)) = self.storage.password.as_ref().map(Secret::origin) {
            files.push(("storage.password", path));
        }
        if let Some(SecretOrigin::File(path)) =
            self.auth.dpop.nonce_secret.as_ref().map(Secret::origin)
        {
            files.push(("auth.dpop.nonce_secret", path));
        }
        for (key, path) in files {
            owner_only(key, path)?;
        }
        if let Some(key) = &self.audit.signing_key_file
            && inside(key, &self.storage.data_dir)
        {
            return Err(invalid(
                "audit.signing_key_file",
                format!(
                    "{} is inside storage.data_dir, next to the database whose log it signs",
                    key.display()
                ),
                "keep it where the database's operator cannot reach, e.g. /run/secrets/audit-signing-key.pem",
            ));
        }
        Ok(())
    }

    fn validate_export(&self) -> Result<(), ConfigError> {
        let export = &self.export;
        let Some(base) = &export.epj_base_url else {
            return if self.clinics.is_empty() {
                Ok(())
            } else {
                self.validate_export_limits()
            };
        };
        for (key, url) in [
            ("export.epj_base_url", Some(base)),
            ("export.summary_base_url", export.summary_base_url.as_ref()),
        ] {
            if let Some(url) = url
                && !url.starts_with("https://")
            {
                return Err(invalid(
                    key,
                    format!("`{url}` is not an https URL"),
                    "use the FHIR base, e.g. https://epj.example.no/fhir/R4",
                ));
            }
        }
        if export.journal_key_files.is_empty() {
            return Err(invalid(
                "export.journal_key_files",
                "no journal key is configured".into(),
                "list the clinic's private journal key file(s) from `icbt keygen`",
            ));
        }
        for file in &export.journal_key_files {
            readable_file(
                "export.journal_key_files",
                file,
                "point it at the clinic's private journal key (JSON)",
            )?;
        }
        let Some(client) = &export.client else {
            return Err(invalid(
                "export.client",
                "the EPJ needs a HelseID client".into(),
                "set [export.client] with issuer, client_id, key_file, scope and resource",
            ));
        };
        readable_file(
            "export.client.key_file",
            &client.key_file,
            "point it at the client's PEM private key",
        )?;
        self.validate_export_limits()
    }

    /// The exporter's loop settings, whichever way it routes.
    fn validate_export_limits(&self) -> Result<(), ConfigError> {
        let export = &self.export;
        if export.batch_size == 0
            || export.rows_per_episode == 0
            || export.workers == 0
            || export.max_attempts == 0
            || export.backoff_base_ms == 0
        {
            return Err(invalid(
                "export",
                "batch_size, rows_per_episode, workers, max_attempts and backoff_base_ms must be above 0"
                    .into(),
                "e.g. batch_size = 8, rows_per_episode = 16, workers = 8, max_attempts = 12, backoff_base_ms = 1000",
            ));
        }
        if export.workers >= self.storage.max_connections {
            return Err(invalid(
                "export.workers",
                format!(
                    "{} workers need more than storage.max_connections = {} connections (each \
                     holds one for its claim and reads with others)",
                    export.workers, self.storage.max_connections
                ),
                "use fewer workers, each with a larger batch_size, or raise storage.max_connections",
            ));
        }
        if export.backoff_max_ms < export.backoff_base_ms {
            return Err(invalid(
                "export.backoff_max_ms",
                "is below backoff_base_ms".into(),
                "e.g. backoff_max_ms = 300000",
            ));
        }
        Ok(())
    }

    fn validate_audit(&self, mode: Mode) -> Result<(), ConfigError> {
        let audit = &self.audit;
        match &audit.signing_key_file {
            Some(path) => readable_file(
                "audit.signing_key_file",
                path,
                "point it at a PEM Ed25519 key, e.g. from `openssl genpkey -algorithm ed25519`",
            )?,
            None if mode == Mode::Production => {
                return Err(invalid(
                    "audit.signing_key_file",
                    "is not set; production keeps the key that signs the access log apart from the database it protects (and instances sharing PostgreSQL sign with one key)".into(),
                    "set it to a PEM Ed25519 key outside storage.data_dir, e.g. from `openssl genpkey -algorithm ed25519`",
                ));
            }
            None => {}
        }
        let publish = &audit.publish;
        if publish.interval_ms == 0 || publish.timeout_ms == 0 {
            return Err(invalid(
                "audit.publish.interval_ms",
                "interval_ms and timeout_ms must be above zero".into(),
                "e.g. interval_ms = 10000, timeout_ms = 5000",
            ));
        }
        if let Some(w) = publish
            .witnesses
            .iter()
            .find(|w| !w.url.starts_with("https://"))
        {
            return Err(invalid(
                "audit.publish.witnesses",
                format!("`{}` is not an https:// URL", w.url),
                "set the witness's submission prefix, e.g. https://witness.example.no/",
            ));
        }
        let review = &audit.review;
        if jiff::tz::TimeZone::get(&review.time_zone).is_err() {
            return Err(invalid(
                "audit.review.time_zone",
                format!("`{}` is not a known time zone", review.time_zone),
                "set an IANA name, e.g. Europe/Oslo",
            ));
        }
        if let Err(e) = working_hours(&review.working_hours) {
            return Err(invalid(
                "audit.review.working_hours",
                e,
                "set e.g. 07:00-17:00",
            ));
        }
        if review.max_range_days == 0 || review.time_limit_ms == 0 || review.refusals_per_burst == 0
        {
            return Err(invalid(
                "audit.review",
                "max_range_days, time_limit_ms and refusals_per_burst must be above 0".into(),
                "leave them unset for the defaults",
            ));
        }
        if audit.checkpoint_interval_ms == 0 {
            return Err(invalid(
                "audit.checkpoint_interval_ms",
                "must be above 0".into(),
                "set milliseconds, e.g. 1000",
            ));
        }
        for key in &audit.trusted_public_keys {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD.decode(key.trim());
            if decoded.map(|k| k.len()) != Ok(32) {
                return Err(invalid(
                    "audit.trusted_public_keys",
                    format!("`{key}` is not a base64 Ed25519 public key"),
                    "list the 32-byte public keys in base64, as `audit public-key` prints them",
                ));
            }
        }
        self.validate_console()
    }

    fn validate_console(&self) -> Result<(), ConfigError> {
        if let Some(issuer) = &self.console.login_issuer
            && !self.login.iter().any(|l| &l.issuer == issuer)
        {
            return Err(invalid(
                "console.login_issuer",
                format!("no [[login]] has issuer `{issuer}`"),
                "name the issuer of a configured hosted login, or leave it unset",
            ));
        }
        Ok(())
    }

    fn validate_tls(&self, mode: Mode) -> Result<(), ConfigError> {
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                readable_file("tls.cert_file", cert, "point it at a PEM certificate chain")?;
                readable_file(
                    "tls.key_file",
                    key,
                    "point it at the PEM private key of the certificate",
                )?;
            }
            (None, None) if mode == Mode::Dev => {}
            (None, _) => {
                return Err(invalid(
                    "tls.cert_file",
                    "is not set".into(),
                    "set tls.cert_file and tls.key_file, or run `serve --dev` for a generated certificate",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key_file",
                    "is not set".into(),
                    "set it to the certificate's PEM private key",
                ));
            }
        }
        match (&tls.client_ca_file, tls.client_auth) {
            (Some(ca), _) => readable_file(
                "tls.client_ca_file",
                ca,
                "point it at a PEM bundle of client CAs",
            )?,
            (None, ClientAuth::Off) => {}
            (None, _) => {
                return Err(invalid(
                    "tls.client_ca_file",
                    "is required when tls.client_auth is optional or required".into(),
                    "set it to the PEM bundle of CAs that issue client certificates",
                ));
            }
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let st = &self.storage;
        if st.max_connections == 0 {
            return Err(invalid(
                "storage.max_connections",
                "must be above 0".into(),
                "set a count, e.g. 16",
            ));
        }
        if st.acquire_timeout_ms == 0 {
            return Err(invalid(
                "storage.acquire_timeout_ms",
                "must be above 0".into(),
                "set milliseconds, e.g. 5000",
            ));
        }
        let Some(url) = &st.url else {
            if st.password.is_some() {
                return Err(invalid(
                    "storage.password",
                    "is set but storage.url is not".into(),
                    "set storage.url to the PostgreSQL URL",
                ));
            }
            return Ok(());
        };
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            return Err(invalid(
                "storage.url",
                "must be a postgres:// URL".into(),
                "set postgres://user@host:5432/db, or remove the key to use SQLite in storage.data_dir",
            ));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(invalid(
                "storage.url",
                "contains a password".into(),
                "remove it from the URL and set storage.password = { file = \"...\" }",
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, secrets redacted, for `config check`.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Load(e.to_string()))
    }
}

/// The path under which dev mode serves its identity providers.
pub const DEV_ISSUER_PATH: &str = "/dev/idp/";

/// Whether `url` points at a dev identity provider (any host: the path decides).
pub fn is_dev_issuer(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map(|slash| &after_scheme[slash..])
        .is_some_and(|path| {
            path.to_ascii_lowercase()
                .replace("//", "/")
                .starts_with(DEV_ISSUER_PATH)
        })
}

pub(crate) fn invalid(key: &'static str, problem: String, fix: &'static str) -> ConfigError {
    ConfigError::Invalid { key, problem, fix }
}

/// A file only its owner may read (no group or other permission bits).
fn owner_only(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(invalid(
                    key,
                    format!(
                        "{} may be read by others (mode {mode:04o}); it holds a private key or secret",
                        path.display()
                    ),
                    "chmod 600 it (or 400), owned by the user the gateway runs as",
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (key, path);
    Ok(())
}

/// Whether `file` lies inside `dir` (both resolved, symbolic links followed where they
/// exist).
fn inside(file: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    resolve(file).starts_with(resolve(dir))
}

pub(crate) fn readable_file(
    key: &'static str,
    path: &Path,
    fix: &'static str,
) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("{} is not a file", path.display()),
            fix,
        )),
        Err(e) => Err(invalid(
            key,
            format!("cannot read {}: {e}", path.display()),
            fix,
        )),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its own large error
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(jail: &Jail, toml: &str, mode: Mode) -> Result<Config, ConfigError> {
        let path = jail.directory().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), mode)
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::default();
        assert!(c.server.bind.ip().is_loopback());
        assert!(c.storage.url.is_none(), "SQLite is the embedded default");
        assert_eq!(c.tls.client_auth, ClientAuth::Off);
    }

    #[test]
    fn production_requires_a_certificate() {
        Jail::expect_with(|jail| {
            let err = load_in_jail(jail, "", Mode::Production).unwrap_err();
            assert!(err.to_string().contains("`tls.cert_file`"), "{err}");
            assert!(err.to_string().contains("fix:"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            let err =
                load_in_jail(jail, "[server]\nbnd = \"127.0.0.1:1\"\n", Mode::Dev).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("bnd"), "{msg}");
            assert!(msg.contains("server"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file() {
        Jail::expect_with(|jail| {
            jail.set_env("ICBT_SERVER__BIND", "127.0.0.1:9999");
            jail.set_env("ICBT_TELEMETRY__LOG_FORMAT", "human");
            let c = load_in_jail(jail, "[server]\nbind = \"127.0.0.1:1234\"\n", Mode::Dev).unwrap();
            assert_eq!(c.server.bind.port(), 9999);
            assert_eq!(c.telemetry.log_format, LogFormat::Human);
            Ok(())
        });
    }

    #[test]
    fn the_command_lines_variables_are_not_settings() {
        Jail::expect_with(|jail| {
            // What the README tells `icbt` users to export, in the same shell.
            for (name, value) in [
                ("ICBT_GATEWAY", "https://gateway.example"),
                ("ICBT_TOKEN_FILE", "token"),
                ("ICBT_LOG_KEYS", "a2V5"),
                ("ICBT_CA_FILE", "ca.pem"),
                ("ICBT_DPOP_KEY_FILE", "dpop.der"),
                ("ICBT_STATE_FILE", "state.json"),
            ] {
                jail.set_env(name, value);
            }
            jail.set_env("ICBT_SERVER__BIND", "127.0.0.1:9999");
            let c = load_in_jail(jail, "", Mode::Dev).unwrap();
            assert_eq!(c.server.bind.port(), 9999);
            // A misspelt setting is still refused by name.
            jail.set_env("ICBT_SERVR__BIND", "127.0.0.1:1");
            let err = load_in_jail(jail, "", Mode::Dev).unwrap_err();
            assert!(err.to_string().contains("servr"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn export_workers_must_leave_connections_for_their_reads() {
        Jail::expect_with(|jail| {
            jail.create_file("journal.json", "{}")?;
            jail.create_file("client.pem", "")?;
            let toml = "[storage]\nmax_connections = 8\n\
                [export]\nepj_base_url = \"https://epj.example/fhir\"\n\
                journal_key_files = [\"journal.json\"]\nworkers = 8\n\
                [export.client]\nissuer = \"https://helseid-sts.test.nhn.no\"\n\
                client_id = \"c\"\nkey_file = \"client.pem\"\nkey_algorithm = \"ES256\"\n\
                scope = \"nhn:epj/write\"\n";
            let err = load_in_jail(jail, toml, Mode::Dev).unwrap_err();
            assert!(err.to_string().contains("`export.workers`"), "{err}");
            let fewer = toml.replace("workers = 8", "workers = 7");
            load_in_jail(jail, &fewer, Mode::Dev).unwrap();
            Ok(())
        });
    }

    /// A register of two clinics of two hospitals, sharing nothing.
    const REGISTER: &str = "[[clinics]]\norg_number = \"974589095\"\nname = \"A1\"\n\
        hospital = \"983974899\"\nepj_base_url = \"https://epj.a.example/fhir\"\n\
        journal_key_files = [\"a1.json\"]\nclient = \"hospital-a\"\n\
        [[clinics]]\norg_number = \"974749025\"\nname = \"B1\"\nhospital = \"983975240\"\n\
        epj_base_url = \"https://epj.b.example/fhir\"\njournal_key_files = [\"b1.json\"]\n\
        client = \"hospital-a\"\n\
        [[platforms]]\nclient_id = \"platform\"\nclinics = [\"974589095\"]\n\
        [export.clients.hospital-a]\nissuer = \"https://helseid-sts.test.nhn.no\"\n\
        client_id = \"c\"\nkey_file = \"client.pem\"\nkey_algorithm = \"ES256\"\n\
        scope = \"nhn:epj/write\"\n";

    #[test]
    fn the_register_is_checked_and_its_faults_named() {
        Jail::expect_with(|jail| {
            for file in ["a1.json", "b1.json", "client.pem", "journal.json"] {
                jail.create_file(file, "{}")?;
            }
            let c = load_in_jail(jail, REGISTER, Mode::Dev).unwrap();
            assert_eq!(c.hospitals().len(), 2);
            let faults = [
                (
                    REGISTER.replace("974749025", "974749026"),
                    "clinics.org_number",
                ),
                (
                    REGISTER.replace("983975240", "12345678"),
                    "clinics.hospital",
                ),
                (
                    REGISTER.replace("b1.json", "a1.json"),
                    "is the journal key of both",
                ),
                (
                    REGISTER.replace("b1.json", "missing.json"),
                    "clinics.journal_key_files",
                ),
                (
                    REGISTER.replacen("client = \"hospital-a\"", "client = \"nobody\"", 1),
                    "`nobody`",
                ),
                (
                    REGISTER.replace("https://epj.b", "http://epj.b"),
                    "clinics.epj_base_url",
                ),
                (REGISTER.replace("974749025", "974589095"), "twice"),
                (
                    REGISTER.replace("clinics = [\"974589095\"]", "clinics = [\"974633574\"]"),
                    "not in [[clinics]]",
                ),
                (
                    format!("{REGISTER}[export]\nepj_base_url = \"https://epj.example/fhir\"\n"),
                    "export.epj_base_url",
                ),
                (
                    format!("{REGISTER}[export]\njournal_key_files = [\"journal.json\"]\n"),
                    "export.journal_key_files",
                ),
                (
                    "[[platforms]]\nclient_id = \"p\"\nclinics = [\"974589095\"]\n".to_owned(),
                    "no [[clinics]] register",
                ),
            ];
            for (toml, named) in faults {
                let err = load_in_jail(jail, &toml, Mode::Dev)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(named), "{named}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn production_refuses_a_dev_issuer_in_one_line() {
        Jail::expect_with(|jail| {
            signing_key(jail);
            jail.create_file("cert.pem", "x")?;
            jail.create_file("key.pem", "x")?;
            owner_only_file(jail, "key.pem");
            let base = "[server]\npublic_url = \"https://gateway.example.no\"\n\
                        [tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
            let issuer = |url: &str| {
                format!(
                    "{base}[[auth.issuers]]\nname = \"x\"\nkind = \"helseid\"\n\
                     issuer = \"{url}\"\naudience = \"a\"\n"
                )
            };
            for url in [
                "https://localhost:8443/dev/idp/helseid",
                "https://gateway.example.no/dev/idp/idporten",
                "https://gateway.example.no//DEV/idp/helseid",
            ] {
                let err = load_in_jail(jail, &issuer(url), Mode::Production).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains("dev identity provider") && msg.contains("fix:"),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
            }
            load_in_jail(
                jail,
                &issuer("https://helseid-sts.nhn.no"),
                Mode::Production,
            )
            .unwrap();
            assert!(!is_dev_issuer("https://helseid-sts.nhn.no/dev"));
            Ok(())
        });
    }

    #[test]
    fn production_needs_its_own_public_origin_for_dpop() {
        Jail::expect_with(|jail| {
            signing_key(jail);
            jail.create_file("cert.pem", "x")?;
            jail.create_file("key.pem", "x")?;
            owner_only_file(jail, "key.pem");
            let tls = "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
            let err = load_in_jail(jail, tls, Mode::Production).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("`server.public_url`") && msg.contains("fix:"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
            load_in_jail(jail, tls, Mode::Dev).unwrap();
            let with = format!("[server]\npublic_url = \"https://gateway.example.no\"\n{tls}");
            load_in_jail(jail, &with, Mode::Production).unwrap();
            Ok(())
        });
    }

    /// An owner-only access-log signing key for a production configuration, named by
    /// the environment.
    fn signing_key(jail: &mut Jail) {
        jail.create_file("audit-signing-key.pem", "x").unwrap();
        owner_only_file(jail, "audit-signing-key.pem");
        jail.set_env("ICBT_AUDIT__SIGNING_KEY_FILE", "audit-signing-key.pem");
    }

    /// Makes `name` in the jail readable by its owner only, as production wants keys.
    fn owner_only_file(jail: &Jail, name: &str) {
        set_mode(jail, name, 0o600);
    }

    fn set_mode(jail: &Jail, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = jail.directory().join(name);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn production_refuses_keys_others_may_read_and_a_signing_key_beside_the_database() {
        Jail::expect_with(|jail| {
            jail.create_file("cert.pem", "x")?;
            jail.create_file("key.pem", "x")?;
            jail.create_file("audit.pem", "x")?;
            owner_only_file(jail, "audit.pem");
            let base = "[server]\npublic_url = \"https://gateway.example.no\"\n\
                        [tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n\
                        [audit]\nsigning_key_file = \"audit.pem\"\n";
            set_mode(jail, "key.pem", 0o644);
            let err = load_in_jail(jail, base, Mode::Production).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("`tls.key_file`")
                    && msg.contains("mode 0644")
                    && msg.contains("chmod 600"),
                "{msg}"
            );
            // Dev mode generates and reads its own files; it is not held to this.
            load_in_jail(jail, base, Mode::Dev).unwrap();
            owner_only_file(jail, "key.pem");
            load_in_jail(jail, base, Mode::Production).unwrap();
            // Production signs the access log with a configured key, never one generated
            // beside the database.
            let unset = base.replace("[audit]\nsigning_key_file = \"audit.pem\"\n", "");
            let err = load_in_jail(jail, &unset, Mode::Production).unwrap_err();
            assert!(
                err.to_string()
                    .contains("`audit.signing_key_file`: is not set"),
                "{err}"
            );
            // The key inside the data directory of the database it signs.
            jail.create_dir("data")?;
            jail.create_file("data/audit.pem", "x")?;
            owner_only_file(jail, "data/audit.pem");
            let beside = format!(
                "{}[storage]\ndata_dir = \"data\"\n",
                base.replace("\"audit.pem\"", "\"data/audit.pem\"")
            );
            let err = load_in_jail(jail, &beside, Mode::Production).unwrap_err();
            assert!(
                err.to_string().contains("`audit.signing_key_file`")
                    && err.to_string().contains("inside storage.data_dir"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn dev_mode_refuses_non_loopback_bind() {
        Jail::expect_with(|jail| {
            let err =
                load_in_jail(jail, "[server]\nbind = \"0.0.0.0:8443\"\n", Mode::Dev).unwrap_err();
            assert!(err.to_string().contains("`server.bind`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_certificate_file_is_named() {
        Jail::expect_with(|jail| {
            let err = load_in_jail(
                jail,
                "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
                Mode::Production,
            )
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("`tls.cert_file`") && msg.contains("/nonexistent/cert.pem"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn password_in_database_url_is_refused() {
        Jail::expect_with(|jail| {
            let err = load_in_jail(
                jail,
                "[storage]\nurl = \"postgres://u:pw@db/icbt\"\n",
                Mode::Dev,
            )
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("`storage.url`") && msg.contains("password"),
                "{msg}"
            );
            assert!(
                !msg.contains("pw@"),
                "the message must not echo the password: {msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn password_secret_is_read_from_file_and_redacted() {
        Jail::expect_with(|jail| {
            jail.create_file("pg-password", "s3cret\n")?;
            let dir = jail.directory().display().to_string();
            let c = load_in_jail(
                jail,
                &format!("[storage]\nurl = \"postgres://icbt@db/icbt\"\npassword = {{ file = \"{dir}/pg-password\" }}\n"),
                Mode::Dev,
            )
            .unwrap();
            assert_eq!(c.storage.password.as_ref().unwrap().expose(), "s3cret");
            let shown = c.to_redacted_toml().unwrap();
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
            assert!(!format!("{c:?}").contains("s3cret"));
            Ok(())
        });
    }

    #[test]
    fn client_auth_needs_a_ca() {
        Jail::expect_with(|jail| {
            let err =
                load_in_jail(jail, "[tls]\nclient_auth = \"required\"\n", Mode::Dev).unwrap_err();
            assert!(err.to_string().contains("`tls.client_ca_file`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn example_file_documents_every_key_and_loads() {
        Jail::expect_with(|jail| {
            let example = include_str!("../example.toml");
            jail.create_file("cert.pem", "x")?;
            jail.create_file("key.pem", "x")?;
            owner_only_file(jail, "key.pem");
            let dir = jail.directory().display().to_string();
            jail.create_file("audit.pem", "x")?;
            owner_only_file(jail, "audit.pem");
            let example = example.replace(
                "/run/secrets/icbt-audit-signing-key.pem",
                &format!("{dir}/audit.pem"),
            );
            let example = example.replace("/etc/icbt-gateway/tls", &dir);
            let c = load_in_jail(jail, &example, Mode::Production).unwrap();
            // Every key the effective configuration has appears in the example.
            let shown = c.to_redacted_toml().unwrap();
            for line in shown.lines() {
                if let Some((key, _)) = line.split_once(" = ") {
                    assert!(
                        (example.contains(&format!("{key} ="))
                            || example.contains(&format!("[[{key}]]"))),
                        "example.toml lacks `{key}`"
                    );
                }
            }
            Ok(())
        });
    }
}
