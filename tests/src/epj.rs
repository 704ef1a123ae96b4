//! The hospital side of the export tests: the EPJ (`tests/peers/epj.mjs`, a real FHIR
//! engine behind DPoP), the exporter as its own `icbt-gateway export` process, and the
//! independent validator (`fhir.resources` from PyPI, R4B models) every stored resource must
//! pass.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::idp::{IdentityProviders, NodePeer, ensure_node_packages, peers_dir, start_peer};
use crate::{Gateway, gateway_command};

/// Resource types the exporter writes.
pub const EXPORTED_TYPES: [&str; 10] = [
    "EpisodeOfCare",
    "Encounter",
    "Communication",
    "QuestionnaireResponse",
    "Observation",
    "Task",
    "Patient",
    "Binary",
    "DocumentReference",
    "List",
];

/// A running EPJ.
#[derive(Debug)]
pub struct Epj {
    child: Child,
    /// FHIR base, `https://127.0.0.1:PORT/fhir/R4`.
    pub base: String,
    admin: String,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Epj {
    /// Starts an EPJ that accepts tokens of the shared HelseID-like provider for `nhn:epj`.
    pub fn start() -> Self {
        Self::start_for(None)
    }

    /// An EPJ that takes tokens of the HelseID client `client_id` only (a hospital's).
    pub fn for_client(client_id: &str) -> Self {
        Self::start_for(Some(client_id))
    }

    fn start_for(client_id: Option<&str>) -> Self {
        ensure_node_packages();
        let idps = IdentityProviders::shared();
        let mut command = Command::new("node");
        command
            .arg(peers_dir().join("epj.mjs"))
            .env("TLS_CERT", &idps.ca.cert_file)
            .env("TLS_KEY", &idps.ca.key_file)
            .env("NODE_EXTRA_CA_CERTS", &idps.ca.ca_file)
            .env("ISSUER", &idps.helseid.issuer)
            .env("AUDIENCE", "nhn:epj")
            .env("SCOPE", "nhn:epj/write")
            .env("CLIENT_ID", client_id.unwrap_or_default())
            .stdin(Stdio::null());
        let NodePeer { child, info, logs } = start_peer(command, "the EPJ", Duration::from_mins(1));
        Self {
            child,
            base: info["base"].as_str().unwrap().to_owned(),
            admin: info["admin"].as_str().unwrap().to_owned(),
            // A fresh connection per admin call: node closes idle ones after 5 s.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            logs,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sets the fault switches: `down` resets every connection; every `fail_every`-th
    /// FHIR request answers 500, alternately before and after processing it.
    pub async fn faults(&self, down: bool, fail_every: u32) {
        self.set_faults(&json!({ "down": down, "fail_every": fail_every }))
            .await;
    }

    /// The next `n` transactions are refused with 422 and an OperationOutcome.
    pub async fn refuse_next(&self, n: u32) {
        self.set_faults(&json!({ "refuse_next": n })).await;
    }

    async fn set_faults(&self, faults: &Value) {
        let response = self
            .http
            .post(format!("{}/faults", self.admin))
            .json(faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// Every stored resource of `resource_type`.
    pub async fn resources(&self, resource_type: &str) -> Vec<Value> {
        serde_json::from_value(self.admin(&format!("resources?type={resource_type}")).await)
            .unwrap()
    }

    /// The admin API's answer at `path`.
    async fn admin(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/{path}", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every stored resource the exporter could have written.
    pub async fn all_resources(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for t in EXPORTED_TYPES {
            all.extend(self.resources(t).await);
        }
        all
    }

    /// Identifier values of each `resource_type` the engine created, in creation order.
    pub async fn arrivals(&self, resource_type: &str) -> Vec<String> {
        let all: Vec<(String, Vec<String>)> =
            serde_json::from_value(self.admin("arrivals").await).unwrap();
        all.into_iter()
            .filter(|(t, _)| t == resource_type)
            .flat_map(|(_, ids)| ids)
            .collect()
    }

    pub async fn stats(&self) -> Value {
        self.admin("stats").await
    }
}

impl Drop for Epj {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The identifier values of `resources` in `system`, sorted (duplicates kept).
pub fn identifiers(resources: &[Value], system: &str) -> Vec<String> {
    let mut values: Vec<String> = resources
        .iter()
        .flat_map(|r| match &r["identifier"] {
            Value::Array(list) => list.clone(),
            Value::Object(_) => vec![r["identifier"].clone()],
            _ => Vec::new(),
        })
        .filter(|i| i["system"] == system)
        .map(|i| i["value"].as_str().unwrap().to_owned())
        .collect();
    values.sort();
    values
}

/// `[export]` configuration for an exporter of `gw` to `epj`, opening envelopes with the
/// journal key in `journal_key_file`.
pub fn export_config(gw: &Gateway, epj: &Epj, journal_key_file: &std::path::Path) -> String {
    let idps = IdentityProviders::shared();
    format!(
        r#"
[export]
epj_base_url = "{base}"
trust_roots_file = "{ca}"
journal_key_files = ["{journal}"]
identifier_base = "urn:icbt-gateway:test"
poll_interval_ms = 50
backoff_base_ms = 100
backoff_max_ms = 1000
max_attempts = 1000
request_timeout_ms = 5000

[export.client]
issuer = "{issuer}"
client_id = "icbt-gateway"
key_file = "{key}"
key_algorithm = "ES256"
key_id = "icbt-gateway-key"
scope = "nhn:epj/write"
resource = "nhn:epj"
"#,
        base = epj.base,
        ca = idps.ca.ca_file.display(),
        journal = journal_key_file.display(),
        issuer = idps.helseid.issuer,
        key = idps.client_key("icbt-gateway").pem_file.display(),
    ) + &idps.gateway_config()
        + &format!(
            "\n[storage]\ndata_dir = \"{}\"\n",
            gw.data_dir.path().display()
        )
}

/// An `icbt-gateway export` process on the gateway's database.
#[derive(Debug)]
pub struct ExporterProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ExporterProcess {
    /// Starts an exporter with `config` (TOML text) on `gw`'s database.
    pub fn start(gw: &Gateway, config: &str, extra: &[&str]) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), config).unwrap();
        let (file, path) = file.keep().unwrap();
        drop(file);
        let mut cmd = gateway_command();
        cmd.args(["export"])
            .args(extra)
            .arg("--config")
            .arg(&path)
            .arg("--dev")
            .env("ICBT_TELEMETRY__LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(db) = gw.database() {
            cmd.env("ICBT_STORAGE__URL", &db.url);
        }
        let mut child = cmd.spawn().expect("start icbt-gateway export");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Self { child, logs }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a one-shot command (`status`, `dead-letters …`) and returns its output.
    pub fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status.success(), self.logs().join("\n"));
            }
            assert!(Instant::now() < deadline, "the command did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where `fhir.resources` is installed for the validator (once per machine).
fn python_packages() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = peers_dir().join("python");
        if !dir.join("fhir").join("resources").is_dir() {
            let status = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--target"])
                .arg(&dir)
                .args(["-r"])
                .arg(peers_dir().join("requirements.txt"))
                .status()
                .expect("run python3 -m pip (is Python 3.11 with pip installed?)");
            assert!(status.success(), "pip install of the FHIR validator failed");
        }
        dir
    })
    .clone()
}

/// Validates `resources` with `fhir.resources` (R4B models); returns one message per
/// invalid resource (empty: all valid).
pub fn validate_independently(resources: &[Value]) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg(peers_dir().join("validate_fhir.py"))
        .env("PYTHONPATH", python_packages())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the FHIR validator");
    {
        let mut stdin = child.stdin.take().unwrap();
        for r in resources {
            writeln!(stdin, "{r}").unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the validator failed to run");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["checked"].as_u64().unwrap(),
        resources.len() as u64,
        "the validator saw every resource"
    );
    report["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}
