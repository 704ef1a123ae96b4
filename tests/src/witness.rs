//! A transparency-log witness (`tests/peers/witness.mjs`), written from the C2SP
//! specifications in Node's own crypto: the gateway pushes its access log's checkpoints
//! to it and keeps the cosignatures it returns.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::idp::{IdentityProviders, NodePeer, ensure_node_packages, peers_dir, start_peer};

/// A running witness.
#[derive(Debug)]
pub struct Witness {
    child: Child,
    /// Its submission prefix, `https://127.0.0.1:PORT`.
    pub url: String,
    /// Its cosigner verifier key, `<name>+<id>+<base64(0x04 || key)>`.
    pub vkey: String,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Witness {
    /// Starts a witness that trusts the log of verifier key `log_vkey`.
    pub fn start(log_vkey: &str) -> Self {
        ensure_node_packages();
        let idps = IdentityProviders::shared();
        let mut command = Command::new("node");
        command
            .arg(peers_dir().join("witness.mjs"))
            .env("TLS_CERT", &idps.ca.cert_file)
            .env("TLS_KEY", &idps.ca.key_file)
            .env("LOG_VKEY", log_vkey)
            .stdin(Stdio::null());
        let NodePeer { child, info, logs } =
            start_peer(command, "the witness", Duration::from_secs(30));
        Self {
            child,
            url: info["url"].as_str().unwrap().to_owned(),
            vkey: info["vkey"].as_str().unwrap().to_owned(),
            http: reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&std::fs::read(&idps.ca.ca_file).unwrap())
                        .unwrap(),
                )
                .build()
                .unwrap(),
            logs,
        }
    }

    /// What it has cosigned: `{ size, root, cosigned, refused }`.
    pub async fn state(&self) -> Value {
        self.http
            .get(format!("{}/admin/state", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Makes it believe it cosigned a tree of `size` with `root` (base64).
    pub async fn pretend(&self, size: u64, root: &str) {
        let response = self
            .http
            .post(format!("{}/admin/state", self.url))
            .json(&json!({ "size": size, "root": root }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
