//! The end-to-end test harness: one small module that starts the real `icbt-gateway`
//! binary and the real peers it talks to, so the tests themselves stay short.
//!
//! Owns: finding (or building) the binary, throwaway PostgreSQL databases, a TLS client
//! that trusts exactly the gateway's certificate, and capture of the gateway's logs.
//!
//! PostgreSQL comes from `E2E_POSTGRES_URL` (an admin URL; `scripts/test` sets it).
//! Without it the PostgreSQL half of each test is skipped with a notice, unless
//! `E2E_REQUIRE_POSTGRES=1` or `CI` is set, where a missing server fails the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
// A harness exists to stop the test at the first surprise, loudly.

pub mod baseline;
pub mod clinic;
pub mod cluster;
pub mod epj;
pub mod figures;
pub mod idp;
pub mod jose;
pub mod load;
pub mod otlp;
pub mod overload;
pub mod register;
pub mod relay;
pub mod scenario;
pub mod sealed;
pub mod soak;
pub mod sse;
pub mod synapse;
pub mod tamper;
pub mod witness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// A synthetic fødselsnummer (valid check digits, not a real person), for tests that
/// must prove the number never reaches a log.
pub const SYNTHETIC_FNR: &str = "01018512366";

/// The `icbt-gateway` binary, built once per test process if the caller did not name one.
pub fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("E2E_GATEWAY_BIN").map_or_else(
            || built_binary("icbt-gateway", "icbt-gateway"),
            PathBuf::from,
        )
    })
    .clone()
}

/// The `icbt` client command line, built once per test process.
pub fn client_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("icbt-client", "icbt"))
        .clone()
}

/// Builds `bin` of `package` (debug profile) and returns its path.
fn built_binary(package: &str, bin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("debug").join(bin)
}

/// Runs `build` while holding `lock` (a file made with create-new), so test processes
/// that build the same directory take turns; a panic in `build` still frees the lock.
fn under_lock(lock: &Path, build: impl FnOnce() + std::panic::UnwindSafe) {
    let started = Instant::now();
    while std::fs::File::create_new(lock).is_err() {
        assert!(
            started.elapsed() < Duration::from_mins(10),
            "{} stayed locked for 10 minutes",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = std::panic::catch_unwind(build);
    std::fs::remove_file(lock).ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `web/` built (`npm ci`, `npm run build`; the pages bundle the SDK, which
/// [`client_js`] builds first): its `dist/`, with the reference client in `app/` and the
/// console in `console/`. Built once per test process; processes take turns through a
/// lock file.
pub fn web_dist() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        client_js();
        let web = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("web");
        under_lock(&web.join(".build.lock"), || {
            npm(&web, &["ci", "--no-audit", "--no-fund", "--silent"]);
            npm(&web, &["run", "--silent", "build"]);
        });
        web.join("dist")
    })
    .clone()
}

/// The JavaScript SDK's directory (`client-js/`), built (`npm ci`, `npm run build`) once
/// when its `dist/` is missing or older than a source file. Test processes that need it
/// at the same time take turns through a lock file.
pub fn client_js() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("client-js");
        let built = |dir: &Path| -> bool {
            let Ok(out) = std::fs::metadata(dir.join("dist/browser/icbt-client.min.js"))
                .and_then(|m| m.modified())
            else {
                return false;
            };
            std::fs::read_dir(dir.join("src")).unwrap().all(|f| {
                f.unwrap()
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t <= out)
            })
        };
        under_lock(&dir.join(".build.lock"), || {
            if !dir.join("node_modules").exists() {
                npm(&dir, &["ci", "--no-audit", "--no-fund", "--silent"]);
            }
            if !built(&dir) {
                npm(&dir, &["run", "--silent", "build"]);
            }
        });
        dir
    })
    .clone()
}

/// Debian's Chromium for the browser tests, installed with apt-get when it is missing and
/// this runs as root (as on CI); its own download would need the internet.
pub fn chromium() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| debian_tool("/usr/bin/chromium", "chromium"))
        .clone()
}

/// Debian's `testssl.sh`, installed with apt-get when missing (as root): the TLS scanner.
pub fn testssl() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| debian_tool("/usr/bin/testssl", "testssl.sh"))
        .clone()
}

/// `path`, from Debian's `package`, installed first when missing.
fn debian_tool(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if !path.exists() {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run apt-get (Debian's {package} package is needed): {e}"));
        assert!(status.success(), "apt-get install {package} failed");
    }
    path
}

/// The settings a load bench runs the gateway with: no per-minute rate limit, no cap
/// on streams per principal, and no per-address caps on handshakes or unauthenticated
/// connections (every bench client connects from 127.0.0.1, thousands at once); logs
/// at `warn`; and the audit sequencer at its production interval (1 s), not the
/// harness's 200 ms for tests.
#[must_use]
pub fn bench_limits_lifted() -> Vec<(String, String)> {
    [
        ("ICBT_AUDIT__CHECKPOINT_INTERVAL_MS", "1000"),
        ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE", "0"),
        ("ICBT_SERVER__STREAMS_PER_PRINCIPAL", "0"),
        ("ICBT_SERVER__HANDSHAKES_PER_ADDRESS", "0"),
        ("ICBT_SERVER__UNAUTHENTICATED_PER_ADDRESS", "0"),
        ("ICBT_TELEMETRY__LOG_FILTER", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A loopback port nobody listens on now, for a gateway that must keep its address
/// across a restart (a browser's origin).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run npm (Node.js 20 or later is needed)");
    assert!(status.success(), "npm {args:?} in {} failed", dir.display());
}

/// The binary as a command, without any `ICBT_*` variable of the caller's environment:
/// each test sets exactly the configuration it means.
pub(crate) fn gateway_command() -> Command {
    let mut cmd = Command::new(gateway_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ICBT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Which database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends this run covers: SQLite always, PostgreSQL when one is configured.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if postgres_admin_url().is_some() {
        all.push(Backend::Postgres);
    }
    all
}

fn postgres_admin_url() -> Option<String> {
    match std::env::var("E2E_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required = std::env::var("E2E_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
                || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !required,
                "PostgreSQL is required here but E2E_POSTGRES_URL is not set; run scripts/test"
            );
            eprintln!(
                "note: E2E_POSTGRES_URL is not set; skipping the PostgreSQL half of this test"
            );
            None
        }
    }
}

/// A PostgreSQL database created for one test and dropped when it is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// URL of the new database, without a password.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        Self::create_from(None).await
    }

    /// A new database holding a copy of this one (nobody may be connected to it).
    pub async fn copy(&self) -> Self {
        Self::create_from(Some(&self.name)).await
    }

    /// A new database on the server of `admin_url` (a test's own cluster).
    pub async fn create_on(admin_url: &str) -> Self {
        Self::create_at(admin_url.to_owned(), None).await
    }

    /// A new, empty database in byte order (`C` collation), as Synapse requires of its
    /// database.
    pub async fn create_c_collated() -> Self {
        let admin_url = postgres_admin_url().expect("PostgreSQL configured");
        Self::create_at(admin_url, Some("template0 LC_COLLATE 'C' LC_CTYPE 'C'")).await
    }

    async fn create_from(template: Option<&str>) -> Self {
        let admin_url = postgres_admin_url().expect("PostgreSQL configured");
        Self::create_at(admin_url, template).await
    }

    /// `template` may carry further clauses of `CREATE DATABASE` after the template's
    /// name.
    async fn create_at(admin_url: String, template: Option<&str>) -> Self {
        let name = format!("icbt_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        let template = template
            .map(|t| format!(" TEMPLATE {t}"))
            .unwrap_or_default();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name}{template}"
        )))
        .execute(&mut admin)
        .await
        .expect("create test database");
        admin.close().await.ok();
        let mut url = url_with_database(&admin_url, &name);
        if url.starts_with("postgresql://") {
            url = url.replacen("postgresql://", "postgres://", 1);
        }
        Self {
            admin_url,
            name,
            url,
        }
    }
}

fn url_with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; a thread with its own runtime avoids nesting.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Storage configuration for `backend`, with its database (kept alive by the caller).
pub async fn storage_for(
    backend: Backend,
    data_dir: &Path,
) -> (icbt_config::StorageConfig, Option<TestDatabase>) {
    let mut config = icbt_config::StorageConfig {
        data_dir: data_dir.to_owned(),
        ..Default::default()
    };
    match backend {
        Backend::Sqlite => (config, None),
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            config.url = Some(db.url.clone());
            (config, Some(db))
        }
    }
}

/// How to start a gateway.
/// A direct connection to a gateway's database (its SQLite file in `data_dir`, or
/// `database`), for tests that look at or tamper with rows.
pub async fn connect_database(
    data_dir: &Path,
    database: Option<&TestDatabase>,
) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let url = match database {
        Some(db) => db.url.clone(),
        None => format!(
            "sqlite://{}",
            data_dir.join("icbt-gateway.sqlite3").display()
        ),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap()
}

/// The test-only Ed25519 key that signs the access log's checkpoints: a copy of the
/// fixture readable by its owner only (git keeps the fixture world-readable, and
/// production refuses a key file others may read).
pub fn audit_signing_key() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt as _;
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-only-audit-signing-key.pem");
        let dir = std::env::temp_dir().join(format!("icbt-e2e-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("test-only-audit-signing-key.pem");
        std::fs::copy(&fixture, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        copy
    })
    .clone()
}

/// The raw Ed25519 public key of [`audit_signing_key`]: what clients pin to check the
/// gateway's signed checkpoints.
pub fn audit_public_key() -> Vec<u8> {
    icbt_merkle::Signer::from_pkcs8(&audit_signing_key_der())
        .unwrap()
        .public_key()
        .to_vec()
}

/// [`audit_signing_key`] as PKCS#8 DER.
pub fn audit_signing_key_der() -> Vec<u8> {
    use base64::Engine;
    let pem = std::fs::read_to_string(audit_signing_key()).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[derive(Debug, Default, Clone)]
pub struct GatewayOptions {
    /// Extra environment variables (`ICBT_…`).
    pub env: Vec<(String, String)>,
    /// A TOML configuration file to pass with `--config`.
    pub config_file: Option<PathBuf>,
    /// TOML configuration text, written to a file in the data directory and passed
    /// with `--config`.
    pub config_toml: Option<String>,
    /// Run with `--dev` (default for the harness's own starts).
    pub production: bool,
    /// Dev mode's sandbox (dev identity providers, journal key, in-process exporter);
    /// off unless a test asks for it, so it does not change what other tests observe.
    pub sandbox: bool,
}

/// A running gateway process.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub fingerprint: String,
    /// Data directory (SQLite file, dev certificate).
    pub data_dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    database: Option<TestDatabase>,
    options: GatewayOptions,
}

impl Gateway {
    /// Starts a dev-mode gateway on a free loopback port with `backend` storage.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, GatewayOptions::default()).await
    }

    /// Starts a dev-mode gateway that trusts the test OpenID providers.
    pub async fn start_trusting_test_providers(backend: Backend) -> Self {
        let options = GatewayOptions {
            config_toml: Some(idp::IdentityProviders::shared().gateway_config()),
            ..Default::default()
        };
        Self::start_with(backend, options).await
    }

    pub async fn start_with(backend: Backend, options: GatewayOptions) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create().await),
        };
        Self::spawn(data_dir, database, options)
    }

    /// Starts a gateway on `database` (one made on a test's own cluster, say).
    pub fn start_on(database: TestDatabase, options: GatewayOptions) -> Self {
        Self::spawn(tempfile::tempdir().unwrap(), Some(database), options)
    }

    /// The origin the dev providers and the sandbox name: `https://localhost:<port>`.
    pub fn origin(&self) -> String {
        let port = self.url.rsplit(':').next().unwrap();
        format!("https://localhost:{port}")
    }

    /// Runs an `icbt-gateway dev …` command against this gateway, as its operator would.
    pub fn dev_command(&self, args: &[&str]) -> std::process::Output {
        let dir = self.data_dir.path();
        let origin = self.origin();
        let mut full = vec!["dev", "--gateway", origin.as_str()];
        full.extend_from_slice(args);
        let key = audit_signing_key();
        let mut env = vec![
            ("ICBT_STORAGE__DATA_DIR", dir.to_str().unwrap().to_owned()),
            (
                "ICBT_AUDIT__SIGNING_KEY_FILE",
                key.to_str().unwrap().to_owned(),
            ),
        ];
        if let Some(db) = self.database() {
            env.push(("ICBT_STORAGE__URL", db.url.clone()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(&full, &env, dir)
    }

    /// A dev gateway with its sandbox on a port of its own (so a restart keeps the
    /// address a browser has open), with `env` added.
    pub async fn start_sandbox(backend: Backend, env: Vec<(String, String)>) -> (Self, u16) {
        let port = free_port();
        let mut all = vec![("ICBT_SERVER__BIND".to_owned(), format!("127.0.0.1:{port}"))];
        all.extend(env);
        let gw = Self::start_with(
            backend,
            GatewayOptions {
                sandbox: true,
                env: all,
                ..Default::default()
            },
        )
        .await;
        (gw, port)
    }

    /// `dev episode` for kari and terje, as the platform would make it; its id.
    pub fn dev_episode(&self) -> String {
        let made = self.dev_command(&["episode", "--patient", "kari", "--therapist", "terje"]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        // What the platform did, then the id on the last line.
        let printed = String::from_utf8(made.stdout).unwrap();
        printed.lines().last().unwrap().to_owned()
    }

    /// `field` of the sandbox people file's entry named `name`.
    pub fn sandbox_person(&self, name: &str, field: &str) -> String {
        let text = std::fs::read_to_string(self.data_dir.path().join("dev/people.toml")).unwrap();
        let people: toml::Value = text.parse().unwrap();
        people["person"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap()[field]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Another gateway process on the same PostgreSQL database as `self` (for tests of
    /// several instances), with its own data directory.
    #[must_use]
    pub fn another_instance(&self) -> Self {
        let url = self
            .database
            .as_ref()
            .expect("a PostgreSQL gateway")
            .url
            .clone();
        let mut options = self.options.clone();
        options.env.push(("ICBT_STORAGE__URL".into(), url));
        Self::spawn(tempfile::tempdir().unwrap(), None, options)
    }

    /// Adds an `ICBT_…` setting for the next [`Self::restart_after`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.options.env.push((key.into(), value.into()));
    }

    /// Stops the process with `signal` (e.g. "KILL") and starts it again on the same data
    /// directory and database, as an operator's restart would.
    pub async fn restart_after(mut self, signal: &str) -> Self {
        self.stop_with(signal).await;
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        let database = self.database.take();
        let options = std::mem::take(&mut self.options);
        drop(self);
        Self::spawn(data_dir, database, options)
    }

    fn spawn(
        data_dir: tempfile::TempDir,
        database: Option<TestDatabase>,
        options: GatewayOptions,
    ) -> Self {
        let mut cmd = gateway_command();
        cmd.arg("serve");
        if !options.production {
            cmd.arg("--dev");
        }
        if let Some(file) = &options.config_file {
            cmd.arg("--config").arg(file);
        }
        if let Some(toml) = &options.config_toml {
            let file = data_dir.path().join("gateway.toml");
            std::fs::write(&file, toml).unwrap();
            cmd.arg("--config").arg(file);
        }
        cmd.current_dir(data_dir.path())
            .env("ICBT_SERVER__BIND", "127.0.0.1:0")
            .env("ICBT_STORAGE__DATA_DIR", data_dir.path())
            .env("ICBT_SERVER__SHUTDOWN_GRACE_SECONDS", "10")
            // One signing key for every instance, as production configures it.
            .env("ICBT_AUDIT__SIGNING_KEY_FILE", audit_signing_key())
            .env("ICBT_AUDIT__CHECKPOINT_INTERVAL_MS", "200")
            .env(
                "ICBT_DEV__SANDBOX",
                if options.sandbox { "true" } else { "false" },
            );
        if let Some(db) = &database {
            cmd.env("ICBT_STORAGE__URL", &db.url);
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start icbt-gateway");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_mins(1);
        let (mut url, mut fingerprint) = (None, None);
        while url.is_none() || fingerprint.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "gateway did not report its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            };
            if let Some(u) = line.strip_prefix("icbt-gateway listening on ") {
                url = Some(u.to_owned());
            } else if let Some(f) = line.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
                fingerprint = Some(f.to_owned());
            }
        }
        Self {
            child,
            url: url.unwrap(),
            fingerprint: fingerprint.unwrap(),
            data_dir,
            logs,
            database,
            options,
        }
    }

    /// The certificate the gateway serves (dev mode generates it in the data directory).
    pub fn certificate_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.path().join("dev-tls").join("cert.pem")).unwrap()
    }

    /// A client that trusts only this gateway's certificate, offering h2 and http/1.1.
    pub fn client(&self) -> reqwest::Client {
        client_trusting(&self.certificate_pem(), ClientTls::default())
    }

    /// A TLS client configuration trusting only this gateway's certificate, offering no
    /// ALPN (set `alpn_protocols` for h2).
    pub fn tls_config(&self) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots_of(&self.certificate_pem()))
        .with_no_client_auth()
    }

    /// A TLS connection offering no ALPN, so HTTP/1.1, for requests written by hand.
    pub async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let config = self.tls_config();
        let address = self.url.trim_start_matches("https://").to_owned();
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// The PostgreSQL database, when the gateway runs on one.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line the gateway has written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Whether a log line that `matches` appears within five seconds: the gateway's output
    /// reaches the harness through a pipe, a moment after its answer reaches the client.
    pub async fn logged(&self, matches: impl Fn(&str) -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if self.logs().iter().any(|l| matches(l)) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM") and waits for the process to exit. Async, so that
    /// the test's own clients keep answering the server (HTTP/2 GOAWAY and PING) meanwhile.
    pub async fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        if let Some(status) = self.child.try_wait().unwrap() {
            return status; // Already gone (a test killed it).
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log reader drain the pipe.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIG{signal}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS choices of a test client.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// Only this protocol version, when set.
    pub only_version: Option<&'static rustls::SupportedProtocolVersion>,
    /// ALPN offered; empty means h2 and http/1.1.
    pub alpn: Vec<Vec<u8>>,
    /// Client certificate chain and key (PEM).
    pub identity: Option<(String, String)>,
}

/// The certificates of `cert_pem` as the only roots of trust.
fn roots_of(cert_pem: &[u8]) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A reqwest client on rustls (ring) that trusts only `cert_pem`.
pub fn client_trusting(cert_pem: &[u8], tls: ClientTls) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    let roots = roots_of(cert_pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls.only_version.map_or_else(
        || vec![&rustls::version::TLS13, &rustls::version::TLS12],
        |v| vec![v],
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match tls.identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = if tls.alpn.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        tls.alpn
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs the binary with `args` and `env` to completion.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> std::process::Output {
    let mut cmd = gateway_command();
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Asserts a failed run printed exactly one clear error line and no panic or backtrace.
pub fn assert_one_line_failure(output: &std::process::Output, must_contain: &[&str]) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, got {:?}",
        output.status
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("icbt-gateway: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    for needle in must_contain {
        assert!(
            errors[0].contains(needle),
            "`{needle}` missing from: {}",
            errors[0]
        );
    }
    errors[0].to_owned()
}

/// Parses a body as JSON, asserting the problem+json media type and `type` slug.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("urn:icbt-gateway:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], status);
    body
}

/// A Server-Sent Events reader over a response body.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// The `id` of the last event read, with data or without (as `EventSource` keeps it).
    last_id: Option<String>,
}

/// One event: its `id` (empty when it has none), its type and `data` (parsed as JSON).
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: String,
    /// `message`, or `end` for the last event of a stream the gateway ends.
    pub kind: String,
    pub data: serde_json::Value,
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "stream refused");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
            last_id: None,
        }
    }

    /// Where to resume: the `id` of the last event read, the opening one included.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The next message, skipping heartbeats and an `end` event; `None` after `wait`
    /// without one, or when the stream ends.
    pub async fn next(&mut self, wait: Duration) -> Option<StreamEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = self
                .next_event(deadline - tokio::time::Instant::now())
                .await?;
            if event.kind == "message" {
                return Some(event);
            }
        }
    }

    /// The next event with data, of any type; `None` after `wait` without one, or when
    /// the stream ends.
    pub async fn next_event(&mut self, wait: Duration) -> Option<StreamEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = String::new();
                let mut kind = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        v.trim().clone_into(&mut id);
                        self.last_id = Some(id.clone());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        v.trim().clone_into(&mut kind);
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some(StreamEvent {
                        id,
                        kind,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The reason of the stream's `end` event, skipping messages and heartbeats, once the
    /// stream has ended after it; `None` if neither happens within `wait`.
    pub async fn end_reason(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = self
                .next_event(deadline - tokio::time::Instant::now())
                .await?;
            if event.kind == "end" {
                let reason = event.data["reason"].as_str()?.to_owned();
                // Nothing after it: the body ends.
                // Nothing after it (HTTP/2 may send an empty last frame): the body ends.
                loop {
                    match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                        Ok(Ok(Some(rest))) if rest.is_empty() => {}
                        Ok(Ok(None)) => return Some(reason),
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Whether the server ends the stream within `wait` with a whole body (the last
    /// chunk of HTTP/1.1, the end of an HTTP/2 stream), rather than breaking it off.
    pub async fn ends_cleanly(mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return true,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }
}
