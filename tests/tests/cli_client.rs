//! The `icbt` command line as a patient and as a therapist against a running gateway,
//! with tokens from the real OpenID provider: keys made and published, feedback and a
//! reply sealed, sent, received, opened and verified, the same safety number on both
//! sides, a clear one-line refusal when the key log does not check out, and a retry that
//! gets the original receipt after the answer to a committed send was lost.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; the scenario reads top to bottom

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_e2e::clinic::{THERAPIST_HPR, clinic};
use icbt_e2e::idp::{Actor, CLINIC_ORG};
use icbt_e2e::relay::LosingRelay;
use icbt_e2e::{Gateway, SYNTHETIC_FNR, backends, client_binary};
use serde_json::Value;
use uuid::Uuid;

/// One person's `icbt` set-up: token, DPoP key, device keys and state in a directory.
struct Person {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Person {
    fn new(gw: &Gateway, actor: &Actor, log_key: &str) -> Self {
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
        Self { dir, env }
    }

    fn keys(&self) -> String {
        path(&self.dir.path().join("device.json"))
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(client_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ICBT_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().unwrap()
    }

    /// Runs `args`, expects success, returns the JSON lines printed.
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "icbt {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn patient_and_therapist_exchange_sealed_messages_with_the_cli() {
    for backend in backends() {
        let (gw, episode, log_key) = clinic(backend).await;
        let patient = Person::new(&gw, &Actor::patient(SYNTHETIC_FNR).await, &log_key);
        let therapist = Person::new(
            &gw,
            &Actor::therapist("01018512528", THERAPIST_HPR).await,
            &log_key,
        );

        for person in [&patient, &therapist] {
            let made = person.ok(&["keygen", "--keys", &person.keys()]);
            let published = person.ok(&["publish", "--keys", &person.keys()]);
            assert_eq!(
                published[0]["device_id"], made[0]["device_id"],
                "{backend:?}"
            );
        }
        let mode = std::fs::metadata(patient.keys()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600,
            "device keys readable by their owner only"
        );

        let devices = therapist.ok(&["devices", "--episode", &episode]);
        let mut owners: Vec<&str> = devices
            .iter()
            .map(|d| d["owner"].as_str().unwrap())
            .collect();
        owners.sort_unstable();
        assert_eq!(
            owners,
            [
                format!("clinician:{THERAPIST_HPR}").as_str(),
                format!("journal:{CLINIC_ORG}").as_str(),
                format!("patient:{SYNTHETIC_FNR}").as_str(),
            ]
        );

        let sent = therapist.ok(&[
            "send",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--kind",
            "feedback",
            "--text",
            "Uke 2: Fint at du prøvde pusteøvelsen hver kveld.",
        ]);
        assert_eq!(sent[0]["seq"], 1);
        patient.ok(&[
            "send",
            "--keys",
            &patient.keys(),
            "--episode",
            &episode,
            "--text",
            "Takk, det hjalp litt.",
        ]);

        let inbox = patient.ok(&["receive", "--keys", &patient.keys(), "--episode", &episode]);
        assert_eq!(inbox.len(), 2, "{backend:?}");
        assert_eq!(inbox[0]["verified"], true);
        assert_eq!(inbox[0]["kind"], "feedback");
        assert_eq!(
            inbox[0]["text"],
            "Uke 2: Fint at du prøvde pusteøvelsen hver kveld."
        );
        assert_eq!(
            inbox[0]["sender_owner"],
            format!("clinician:{THERAPIST_HPR}")
        );
        let replies = therapist.ok(&[
            "receive",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--after",
            "1",
        ]);
        assert_eq!(replies[0]["text"], "Takk, det hjalp litt.");
        assert_eq!(replies[0]["verified"], true);

        let theirs = patient.ok(&[
            "safety-number",
            "--keys",
            &patient.keys(),
            "--episode",
            &episode,
            "--with",
            &format!("clinician:{THERAPIST_HPR}"),
        ]);
        let mine = therapist.ok(&[
            "safety-number",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--with",
            &format!("patient:{SYNTHETIC_FNR}"),
        ]);
        assert_eq!(theirs[0]["safety_number"], mine[0]["safety_number"]);
        assert_eq!(
            theirs[0]["safety_number"]
                .as_str()
                .unwrap()
                .split(' ')
                .count(),
            12
        );
        let state: Value =
            serde_json::from_slice(&std::fs::read(PathBuf::from(&patient.env[4].1)).unwrap())
                .unwrap();
        assert!(state["seen"]["size"].as_u64().unwrap() >= 3, "{state}");

        // A key log signed by a key the client does not trust: refused, one clear line.
        let mut stranger = Person::new(&gw, &Actor::patient(SYNTHETIC_FNR).await, &log_key);
        stranger.env[3].1 = STANDARD.encode([7u8; 32]);
        let refused = stranger.run(&["devices", "--episode", &episode]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8(refused.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("checkpoint"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_send_whose_answer_was_lost_is_retried_with_the_cli_and_gets_the_original_receipt() {
    for backend in backends() {
        let (gw, episode, log_key) = clinic(backend).await;
        let therapist = Person::new(
            &gw,
            &Actor::therapist("01018512528", THERAPIST_HPR).await,
            &log_key,
        );
        therapist.ok(&["keygen", "--keys", &therapist.keys()]);
        therapist.ok(&["publish", "--keys", &therapist.keys()]);

        // Larger than any other request the CLI makes, so the relay knows the send.
        let text = format!("Uke 5: {}", "Godt jobbet med eksponeringen. ".repeat(700));
        let id = Uuid::new_v4().to_string();
        let args = [
            "send",
            "--keys",
            &therapist.keys(),
            "--episode",
            &episode,
            "--kind",
            "feedback",
            "--id",
            &id,
            "--text",
            &text,
        ]
        .map(str::to_owned);
        let relay = LosingRelay::start(&gw.url, 16 * 1024).await;
        let mut through_relay = Person {
            dir: tempfile::tempdir().unwrap(),
            env: therapist.env.clone(),
        };
        through_relay.env[0].1.clone_from(&relay.url);
        let first = tokio::task::spawn_blocking({
            let args = args.clone();
            move || through_relay.run(&args.each_ref().map(String::as_str))
        });

        // The gateway commits the send; only then is its answer lost.
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
            tokio::time::timeout(std::time::Duration::from_secs(20), committed)
                .await
                .expect("the send through the relay was committed");
        assert!(relay.holding(), "{backend:?}: the answer was held back");
        relay.lose_answer();
        let lost = first.await.unwrap();
        assert!(
            !lost.status.success(),
            "{backend:?}: the CLI heard no answer"
        );
        let stderr = String::from_utf8(lost.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("retry with --id {id}")),
            "{stderr}"
        );
        let pending = format!("{}.pending", therapist.keys());
        assert!(PathBuf::from(&pending).exists(), "the sealed send is kept");

        // The retry, as the CLI told: the original receipt, no second message.
        let retried = therapist.ok(&args.each_ref().map(String::as_str));
        assert_eq!(retried[0]["seq"], seq, "{backend:?}");
        assert_eq!(retried[0]["created_at_ms"], created_at_ms, "{backend:?}");
        assert_eq!(retried[0]["id"], id.as_str());
        assert!(!PathBuf::from(&pending).exists(), "forgotten once answered");
        let count: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM messages WHERE episode_id = $1")
                .bind(&episode)
                .fetch_one(&mut db)
                .await
                .unwrap(),
            "n",
        );
        assert_eq!(count, 1, "{backend:?}: one message, not two");

        // The same id with other content is another message: refused, not replayed.
        let mut other = args.clone();
        other[10] = "Noe annet.".to_owned();
        let refused = therapist.run(&other.each_ref().map(String::as_str));
        assert!(!refused.status.success());
        let stderr = String::from_utf8(refused.stderr).unwrap();
        assert!(stderr.contains("message-id-conflict"), "{stderr}");
        assert!(!PathBuf::from(&pending).exists(), "a refusal is an answer");
    }
}
