//! TLS as a scanner sees it: Debian's `testssl.sh` against the running gateway, with a
//! certificate shaped as a public CA issues one (90 days, server use, a revocation list),
//! reports nothing rated high or critical for protocols, cipher suites and their order,
//! forward secrecy, the certificate chain, HSTS and renegotiation.
//!
//! The scan is bounded to those checks (about half a minute); `testssl` with no options
//! against a deployment is the long form.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use std::process::Command;

use icbt_e2e::idp::TestCa;
use icbt_e2e::{Backend, Gateway, GatewayOptions, testssl};
use serde_json::Value;

#[tokio::test]
async fn testssl_finds_nothing_high_or_critical() {
    let ca = TestCa::new();
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(format!(
                "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                ca.cert_file.display(),
                ca.key_file.display()
            )),
            ..Default::default()
        },
    )
    .await;
    let target = gw.url.trim_start_matches("https://").to_owned();
    let report = gw.data_dir.path().join("testssl.json");
    let out = tokio::task::spawn_blocking({
        let ca_file = ca.ca_file.clone();
        let report = report.clone();
        move || {
            Command::new(testssl())
                .args([
                    "--quiet",
                    "--color",
                    "0",
                    "--warnings",
                    "off",
                    "--add-ca",
                    ca_file.to_str().unwrap(),
                    "--jsonfile",
                    report.to_str().unwrap(),
                    // Protocols, server preference, forward secrecy, server defaults
                    // (certificate chain, validity, revocation), headers, renegotiation.
                    "-p",
                    "-P",
                    "-f",
                    "-S",
                    "-h",
                    "-R",
                    &target,
                ])
                .output()
                .expect("run testssl")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<Value> = serde_json::from_slice(&std::fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "testssl wrote no JSON report ({e}):\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // Keep what the scanner said with the other test artefacts.
    let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testssl");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("testssl.txt"), text.as_bytes()).unwrap();
    std::fs::copy(&report, kept.join("testssl.json")).unwrap();

    let severity = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["severity"].as_str())
            .unwrap_or("missing")
            .to_owned()
    };
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(
        bad.is_empty(),
        "testssl rated these high or critical:\n{}\n\n{text}",
        bad.join("\n")
    );
    // The checks ran and passed, not only stayed silent.
    for (id, expected) in [
        ("SSLv3", "OK"),
        ("TLS1", "INFO"),
        ("TLS1_1", "INFO"),
        ("TLS1_3", "OK"),
        ("cipher_order", "OK"),
        ("PFS", "OK"),
        ("cert_trust", "OK"),
        ("cert_chain_of_trust", "OK"),
        ("HSTS_time", "OK"),
        ("X-Content-Type-Options", "OK"),
        ("secure_renego", "OK"),
    ] {
        assert_eq!(severity(id), expected, "{id}:\n{text}");
    }
}
