//! The reference web client (`web/app/`) in Debian's Chromium, driven by puppeteer-core
//! (`tests/peers/web-app.mjs`): a patient and a therapist log in through the dev identity
//! providers into an episode `icbt-gateway dev episode` made, write to each other live, the patient answers PHQ-9 and the care team sees
//! the risk alert, both compare one safety number, the gateway is killed and restarted
//! under the open pages (nothing missed, nothing twice), and an envelope changed in the
//! database is shown as refused, a device revoked elsewhere is said and replaced, and a
//! key log rewritten and re-signed raises the alarm in the browser that saw the old head.
//! axe-core finds no serious or critical violations.
//! Screenshots are kept in `target/web-app-screenshots/<backend>/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; the scenario reads top to bottom

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::scenario::Scenario;
use icbt_e2e::tamper::rewrite_key_log;
use icbt_e2e::{Gateway, backends, chromium, connect_database, web_dist};
use serde_json::Value;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Changes one byte of the message's ciphertext, as someone who can write the database.
async fn tamper(gw: &Gateway, message: &str) {
    let mut db = connect_database(gw.data_dir.path(), gw.database()).await;
    let body: Vec<u8> = sqlx::Row::get(
        &sqlx::query("SELECT body FROM messages WHERE id = $1")
            .bind(message)
            .fetch_one(&mut db)
            .await
            .unwrap(),
        "body",
    );
    let mut envelope: Value = serde_json::from_slice(&body).unwrap();
    let mut ciphertext = URL_SAFE_NO_PAD
        .decode(envelope["ciphertext"].as_str().unwrap())
        .unwrap();
    ciphertext[3] ^= 0x20;
    envelope["ciphertext"] = URL_SAFE_NO_PAD.encode(ciphertext).into();
    let changed = sqlx::query("UPDATE messages SET body = $1 WHERE id = $2")
        .bind(serde_json::to_vec(&envelope).unwrap())
        .bind(message)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
}

#[tokio::test]
async fn patient_and_therapist_in_a_real_browser_through_a_restart_and_a_tampered_envelope() {
    let chromium = chromium();
    let dist = web_dist();
    for backend in backends() {
        let (mut gw, port) = Gateway::start_sandbox(
            backend,
            vec![("ICBT_DEV__WEB_DIR".into(), dist.to_str().unwrap().into())],
        )
        .await;
        let episode = gw.dev_episode();
        let shots = repository().join(format!("target/web-app-screenshots/{backend:?}"));
        let peers = repository().join("tests/peers");
        let mut scenario = Scenario::start(
            &peers,
            "web-app.mjs",
            &[
                ("origin", &gw.origin()),
                ("chromium", chromium.to_str().unwrap()),
                ("shots", shots.to_str().unwrap()),
                ("episode", &episode),
            ],
            std::time::Duration::from_mins(4),
        );
        while let Some(line) = scenario.next_line().await {
            if line == "RESTART" {
                gw = gw.restart_after("KILL").await;
                assert!(
                    gw.url.ends_with(&format!(":{port}")),
                    "same address after the restart"
                );
                scenario.answer("RESTARTED");
            } else if let Some(message) = line.strip_prefix("TAMPER ") {
                tamper(&gw, message).await;
                scenario.answer("TAMPERED");
            } else if let Some(device) = line.strip_prefix("REVOKE ") {
                let token = gw.dev_command(&["token", "--as", "kari", "--raw"]);
                let token = String::from_utf8(token.stdout).unwrap();
                let revoked = gw
                    .client()
                    .delete(format!("{}/v1/devices/{device}", gw.url))
                    .bearer_auth(token.trim())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(revoked.status(), 200, "{backend:?}");
                scenario.answer("REVOKED");
            } else if let Some(device) = line.strip_prefix("FORK ") {
                let attacker = icbt_envelope::DeviceKeys::generate().unwrap();
                rewrite_key_log(&gw, device, attacker.encryption.public()).await;
                scenario.answer("FORKED");
            }
        }
        scenario.summary();
        for shot in [
            "therapist-forked.png",
            "patient.png",
            "therapist.png",
            "therapist-caseload.png",
            "patient-tampered.png",
        ] {
            assert!(shots.join(shot).exists(), "{shot}");
        }
        assert!(
            !gw.logs()
                .iter()
                .any(|l| l.contains(&gw.sandbox_person("kari", "pid"))),
            "no national identity number in the gateway's logs"
        );
    }
}
