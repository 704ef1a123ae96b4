//! npm `jose` as an independent JOSE implementation: `tests/peers/jose-envelope.mjs`
//! seals and opens envelopes the way a browser client would.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::idp::{ensure_node_packages, peers_dir};

/// Runs `jose-envelope.mjs <command>` with `request` on stdin; `Err` holds its stderr.
pub fn run(command: &str, request: &Value) -> Result<Value, String> {
    ensure_node_packages();
    let mut child = Command::new("node")
        .arg(peers_dir().join("jose-envelope.mjs"))
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node for jose-envelope.mjs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("jose-envelope.mjs answers JSON"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
