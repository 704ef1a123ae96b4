//! The JavaScript SDK (`client-js/`) against the real gateway and beside the Rust SDK: a
//! patient on `icbt-js` and a therapist on the Rust `icbt` exchange sealed messages each
//! way, both see the same safety number, a device key file made by one works in the other,
//! and a key swapped in the database, or a key log rewritten and re-signed, is caught by
//! both with the same kind of error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; the scenario reads top to bottom

use std::path::Path;
use std::process::{Command, Output};

use icbt_e2e::clinic::{THERAPIST_HPR, THERAPIST_PID, clinic};
use icbt_e2e::idp::Actor;
use icbt_e2e::relay::LosingRelay;
use icbt_e2e::tamper::{rewrite_key_log, swap_directory_key};
use icbt_e2e::{Gateway, SYNTHETIC_FNR, backends, client_binary, client_js};
use icbt_envelope::DeviceKeys;
use serde_json::{Value, json};
use uuid::Uuid;

/// Which SDK's command line a person uses.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Rust,
    Js,
}

/// One person's set-up: token, DPoP key, device keys and state in a directory.
struct Person {
    sdk: Sdk,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

impl Person {
    fn new(sdk: Sdk, gw: &Gateway, actor: &Actor, log_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("gateway-ca.pem");
        std::fs::write(&ca, gw.certificate_pem()).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, &actor.token.access_token).unwrap();
        let mut env = vec![
            ("ICBT_GATEWAY".to_owned(), gw.url.clone()),
            ("ICBT_CA_FILE".to_owned(), path(&ca)),
            ("ICBT_TOKEN_FILE".to_owned(), path(&token)),
            ("ICBT_LOG_KEYS".to_owned(), log_key.to_owned()),
            (
                "ICBT_STATE_FILE".to_owned(),
                path(&dir.path().join("state.json")),
            ),
        ];
        if let Some(der) = &actor.dpop_pkcs8 {
            let key = dir.path().join("dpop.der");
            std::fs::write(&key, der).unwrap();
            env.push(("ICBT_DPOP_KEY_FILE".to_owned(), path(&key)));
        }
        Self { sdk, dir, env }
    }

    fn keys(&self) -> String {
        path(&self.dir.path().join("device.json"))
    }

    fn run_with(&self, sdk: Sdk, args: &[&str]) -> Output {
        let mut command = match sdk {
            Sdk::Rust => Command::new(client_binary()),
            Sdk::Js => {
                let mut c = Command::new("node");
                c.arg(client_js().join("dist/cli.js"));
                c
            }
        };
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("ICBT_") || key == "NODE_EXTRA_CA_CERTS" {
                command.env_remove(&*key);
            }
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().unwrap()
    }

    /// Runs `args` with this person's SDK, expects success, returns the JSON lines.
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        self.ok_with(self.sdk, args)
    }

    fn ok_with(&self, sdk: Sdk, args: &[&str]) -> Vec<Value> {
        let output = self.run_with(sdk, args);
        assert!(
            output.status.success(),
            "{sdk:?} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Runs `args` with `sdk`, expects a one-line failure; returns it.
    fn refused(&self, sdk: Sdk, args: &[&str]) -> String {
        let output = self.run_with(sdk, args);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{sdk:?} {args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{sdk:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

#[tokio::test]
async fn sealed_in_javascript_opened_in_rust_and_back_with_one_safety_number_and_one_alarm() {
    client_js();
    for backend in backends() {
        let (gw, episode, log_key) = clinic(backend).await;
        let patient = Person::new(Sdk::Js, &gw, &Actor::patient(SYNTHETIC_FNR).await, &log_key);
        let therapist = Person::new(
            Sdk::Rust,
            &gw,
            &Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await,
            &log_key,
        );
        for person in [&patient, &therapist] {
            let made = person.ok(&["keygen", "--keys", &person.keys()]);
            let published = person.ok(&["publish", "--keys", &person.keys()]);
            assert_eq!(published[0]["device_id"], made[0]["device_id"]);
        }
        let mode = std::fs::metadata(patient.keys()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600,
            "the JS key file is readable by its owner only"
        );

        // The same verified directory from both SDKs.
        let listed = |sdk| {
            let mut d: Vec<(String, String)> = patient
                .ok_with(sdk, &["devices", "--episode", &episode])
                .iter()
                .map(|d| (d["owner"].to_string(), d["encryption_kid"].to_string()))
                .collect();
            d.sort();
            d
        };
        assert_eq!(listed(Sdk::Js), listed(Sdk::Rust), "{backend:?}");
        assert_eq!(listed(Sdk::Js).len(), 3);

        // Rust seals, JavaScript opens; JavaScript seals, Rust opens.
        let feedback = "Uke 3: Fint at du førte søvndagbok hver dag. Neste uke: søvnrestriksjon.";
        therapist.ok(&[
            "send",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--kind",
            "feedback",
            "--text",
            feedback,
        ]);
        let inbox = patient.ok(&["receive", "--keys", &patient.keys(), "--episode", &episode]);
        assert_eq!(inbox.len(), 1, "{backend:?}: {inbox:?}");
        assert_eq!(inbox[0]["verified"], true, "{:?}", inbox[0]);
        assert_eq!(inbox[0]["text"], feedback);
        assert_eq!(
            inbox[0]["sender_owner"],
            format!("clinician:{THERAPIST_HPR}")
        );

        let reply = r#"{"text":"Takk! Det var tungt de første dagene.","in_response_to":"x"}"#;
        let sent = patient.ok(&[
            "send",
            "--keys",
            &patient.keys(),
            "--episode",
            &episode,
            "--text",
            reply,
        ]);
        assert_eq!(sent[0]["seq"], 2, "{sent:?}");
        let replies = therapist.ok(&[
            "receive",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--after",
            "1",
        ]);
        assert_eq!(replies[0]["verified"], true, "{:?}", replies[0]);
        assert_eq!(replies[0]["text"], reply);
        assert_eq!(
            replies[0]["sender_owner"],
            format!("patient:{SYNTHETIC_FNR}")
        );

        // A used id with a new seal is another message to the gateway: refused, not
        // stored twice (a retry resends the kept bytes; see the lost-answer test below).
        let id = sent[0]["id"].as_str().unwrap().to_owned();
        let conflict = patient.refused(
            Sdk::Js,
            &[
                "send",
                "--keys",
                &patient.keys(),
                "--episode",
                &episode,
                "--id",
                &id,
                "--text",
                reply,
            ],
        );
        assert!(conflict.contains("message-id-conflict"), "{conflict}");

        // The JS key file works in the Rust CLI: one device, two SDKs.
        let by_rust = patient.ok_with(
            Sdk::Rust,
            &["receive", "--keys", &patient.keys(), "--episode", &episode],
        );
        assert_eq!(by_rust[0]["text"], feedback);

        // One safety number, computed by each SDK on its own side.
        let js = patient.ok(&[
            "safety-number",
            "--keys",
            &patient.keys(),
            "--episode",
            &episode,
            "--with",
            &format!("clinician:{THERAPIST_HPR}"),
        ]);
        let rust = therapist.ok(&[
            "safety-number",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--with",
            &format!("patient:{SYNTHETIC_FNR}"),
        ]);
        assert_eq!(
            js[0]["safety_number"], rust[0]["safety_number"],
            "{backend:?}"
        );

        // A key swapped in the directory alone: both SDKs refuse the directory.
        let therapist_device = therapist
            .ok(&["devices", "--episode", &episode])
            .into_iter()
            .find(|d| d["owner"] == format!("clinician:{THERAPIST_HPR}"))
            .unwrap()["device_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let attacker = DeviceKeys::generate().unwrap();
        swap_directory_key(&gw, &therapist_device, attacker.encryption.public()).await;
        let js = patient.refused(Sdk::Js, &["devices", "--episode", &episode]);
        assert!(
            js.contains("differ from the log") && js.contains("[differs-from-log]"),
            "{js}"
        );
        let rust = patient.refused(Sdk::Rust, &["devices", "--episode", &episode]);
        assert!(rust.contains("differ from the log"), "{rust}");
        let refused = patient.refused(
            Sdk::Js,
            &[
                "send",
                "--keys",
                &patient.keys(),
                "--episode",
                &episode,
                "--text",
                "{\"text\":\"hei\"}",
            ],
        );
        assert!(
            refused.contains("[differs-from-log]"),
            "nothing is sealed to a swapped key: {refused}"
        );

        // The log rewritten and re-signed to match: both SDKs, remembering the head they
        // saw (their state files), catch the fork.
        rewrite_key_log(&gw, &therapist_device, attacker.encryption.public()).await;
        let js = patient.refused(Sdk::Js, &["devices", "--episode", &episode]);
        assert!(js.contains("[log-forked]"), "{js}");
        let rust = therapist.refused(Sdk::Rust, &["devices", "--episode", &episode]);
        assert!(rust.contains("does not extend"), "{rust}");
    }
}

#[tokio::test]
async fn a_javascript_send_whose_answer_was_lost_is_resent_byte_for_byte() {
    client_js();
    for backend in backends() {
        let (gw, episode, log_key) = clinic(backend).await;
        let patient = Person::new(Sdk::Js, &gw, &Actor::patient(SYNTHETIC_FNR).await, &log_key);
        patient.ok(&["keygen", "--keys", &patient.keys()]);
        patient.ok(&["publish", "--keys", &patient.keys()]);

        // Larger than any other request the client makes, so the relay knows the send.
        let text = json!({ "text": "Dagbok: ".repeat(3000) }).to_string();
        let id = Uuid::new_v4().to_string();
        let args = [
            "send",
            "--keys",
            &patient.keys(),
            "--episode",
            &episode,
            "--id",
            &id,
            "--text",
            &text,
        ]
        .map(str::to_owned);
        let relay = LosingRelay::start(&gw.url, 16 * 1024).await;
        let mut through_relay = Person {
            sdk: Sdk::Js,
            dir: tempfile::tempdir().unwrap(),
            env: patient.env.clone(),
        };
        through_relay.env[0].1.clone_from(&relay.url);
        let first = tokio::task::spawn_blocking({
            let args = args.clone();
            move || through_relay.run_with(Sdk::Js, &args.each_ref().map(String::as_str))
        });
        let mut db = icbt_e2e::connect_database(gw.data_dir.path(), gw.database()).await;
        let committed = async {
            loop {
                let row = sqlx::query("SELECT seq, created_at_ms FROM messages WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&mut db)
                    .await
                    .unwrap();
                if let Some(row) = row {
                    return (
                        sqlx::Row::get::<i64, _>(&row, "seq"),
                        sqlx::Row::get::<i64, _>(&row, "created_at_ms"),
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let (seq, created_at_ms) =
            tokio::time::timeout(std::time::Duration::from_secs(30), committed)
                .await
                .expect("the send through the relay was committed");
        relay.lose_answer();
        let lost = first.await.unwrap();
        let stderr = String::from_utf8(lost.stderr).unwrap();
        assert!(!lost.status.success(), "{backend:?}: no answer was heard");
        assert!(
            stderr.contains(&format!("retry with --id {id}")),
            "{stderr}"
        );
        let state: Value =
            serde_json::from_slice(&std::fs::read(&patient.env[4].1).unwrap()).unwrap();
        assert!(
            state.get(format!("pending:{episode}:{id}")).is_some(),
            "the sealed send is kept: {state}"
        );

        // The retry resends the kept bytes: the original receipt, one message.
        let retried = patient.ok(&args.each_ref().map(String::as_str));
        assert_eq!(retried[0]["seq"], seq, "{backend:?}");
        assert_eq!(retried[0]["created_at_ms"], created_at_ms, "{backend:?}");
        let state: Value =
            serde_json::from_slice(&std::fs::read(&patient.env[4].1).unwrap()).unwrap();
        assert!(
            state.get(format!("pending:{episode}:{id}")).is_none(),
            "forgotten once answered"
        );
        let count: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM messages WHERE episode_id = $1")
                .bind(&episode)
                .fetch_one(&mut db)
                .await
                .unwrap(),
            "n",
        );
        assert_eq!(count, 1, "{backend:?}: one message, not two");
    }
}

#[tokio::test]
async fn the_javascript_sdk_polls_reads_attaches_revokes_and_types_its_refusals() {
    let sdk = client_js();
    for backend in backends() {
        let (gw, episode, log_key) = clinic(backend).await;
        let patient = Actor::patient(SYNTHETIC_FNR).await;
        let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            path(&p)
        };
        let output = Command::new("node")
            .arg(sdk.parent().unwrap().join("tests/peers/sdk-scenario.mjs"))
            .env("ICBT_GATEWAY", &gw.url)
            .env("ICBT_LOG_KEYS", &log_key)
            .env("ICBT_EPISODE", &episode)
            .env(
                "PATIENT_TOKEN",
                file("patient.token", patient.token.access_token.as_bytes()),
            )
            .env(
                "THERAPIST_TOKEN",
                file("therapist.token", therapist.token.access_token.as_bytes()),
            )
            .env(
                "THERAPIST_DPOP",
                file("therapist.der", therapist.dpop_pkcs8.as_ref().unwrap()),
            )
            .env("NODE_EXTRA_CA_CERTS", file("ca.pem", &gw.certificate_pem()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{backend:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["checked"].as_array().unwrap().len(), 6, "{summary}");
    }
}
