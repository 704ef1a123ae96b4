//! The security team's console (`/console/`) in Debian's Chromium, driven by
//! puppeteer-core (`tests/peers/console.mjs`), on both backends: people who are not
//! auditors are refused and recorded, the auditor logs in through the dev HelseID,
//! searches, opens and exports a patient's timeline with every record proven in the
//! browser, follows a review report to its records, and the integrity panel turns red
//! naming the record once a row is changed in the database. axe-core finds no serious or
//! critical violations. Screenshots and the printed PDF are kept in
//! `target/console-screenshots/<backend>/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use std::path::{Path, PathBuf};

use icbt_e2e::scenario::Scenario;
use icbt_e2e::{Gateway, backends, chromium, connect_database, web_dist};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Changes the access record at `index` in the database, as someone who can write it.
async fn tamper(gw: &Gateway, index: i64) {
    let mut db = connect_database(gw.data_dir.path(), gw.database()).await;
    let changed = sqlx::query(
        "UPDATE audit_records SET resource_type = resource_type || '-x' \
         WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = $1)",
    )
    .bind(index)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
}

#[tokio::test]
async fn an_auditor_reviews_proves_and_exports_in_a_real_browser_and_sees_a_changed_row() {
    let chromium = chromium();
    let dist = web_dist();
    for backend in backends() {
        let (gw, _) = Gateway::start_sandbox(
            backend,
            vec![(
                "ICBT_CONSOLE__ASSETS_DIR".into(),
                dist.join("console").to_str().unwrap().into(),
            )],
        )
        .await;
        gw.dev_episode();
        let patient = gw.sandbox_person("kari", "pid");
        let shots = repository().join(format!("target/console-screenshots/{backend:?}"));
        std::fs::create_dir_all(&shots).unwrap();
        let peers = repository().join("tests/peers");
        let mut scenario = Scenario::start(
            &peers,
            "console.mjs",
            &[
                ("origin", &gw.origin()),
                ("chromium", chromium.to_str().unwrap()),
                ("shots", shots.to_str().unwrap()),
                ("patient", &patient),
            ],
            std::time::Duration::from_mins(3),
        );
        while let Some(line) = scenario.next_line().await {
            if let Some(index) = line.strip_prefix("TAMPER ") {
                tamper(&gw, index.parse().unwrap()).await;
                scenario.answer("TAMPERED");
            }
        }
        let summary = scenario.summary();
        for (page, found) in summary["violations"].as_object().unwrap() {
            assert_eq!(found, &serde_json::json!([]), "{backend:?}: axe on {page}");
        }
        for shot in [
            "login.png",
            "refused.png",
            "search.png",
            "timeline.png",
            "timeline.pdf",
            "reports.png",
            "tampered.png",
        ] {
            assert!(shots.join(shot).exists(), "{shot}");
        }
        assert!(
            !gw.logs().iter().any(|l| l.contains(&patient)),
            "no national identity number in the gateway's logs"
        );
    }
}
