//! Several hospitals in one deployment, end to end through the real binary: a clinic
//! register of two hospitals and three clinics, platforms bound to their own clinics,
//! auditors scoped to their own hospital, each clinic's journal key, and an exporter
//! that routes each clinic's records to its hospital's EPJ (two real FHIR engines, each
//! taking tokens of its own hospital's HelseID client only), one of them down for the
//! first half of the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use icbt_e2e::epj::{Epj, ExporterProcess, identifiers};
use icbt_e2e::idp::{Actor, IdentityProviders, Idp};
use icbt_e2e::register::{A1, A2, B1, Clinic, HOSPITAL_A, HOSPITAL_B, KeyFile, deployment_config};
use icbt_e2e::sealed::{Sealer, device_body};
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, backends};
use icbt_envelope::DeviceKeys;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Registered nowhere: the test platform's own organisation.
const UNREGISTERED: &str = "974760673";
const THERAPIST_HPR: &str = "565501872";
const THERAPIST_PID: &str = "01018512528";
/// A clinician auditor whose token names no hospital of the register.
const AUDITOR_HPR: &str = "7007";
/// The deployment's auditor.
const DEPLOYMENT_AUDITOR_HPR: &str = "8008";
const MESSAGES: &str = "urn:icbt-gateway:test:message";
const EPISODES: &str = "urn:icbt-gateway:test:episode";

/// Two hospitals, three clinics: A1 and A2 at hospital A's EPJ, B1 at B's; each
/// platform bound to its own hospital's clinics.
fn two_hospital_config(epj_a: &Epj, epj_b: &Epj, keys: &BTreeMap<&str, Vec<&KeyFile>>) -> String {
    let clinic = |org, name, hospital, epj, client| Clinic {
        org,
        name,
        hospital,
        epj,
        client,
        keys: keys[org].clone(),
    };
    deployment_config(
        &[
            clinic(A1, "Poliklinikk A1", HOSPITAL_A, epj_a, "hospital-a"),
            clinic(A2, "Poliklinikk A2", HOSPITAL_A, epj_a, "hospital-a"),
            clinic(B1, "Poliklinikk B1", HOSPITAL_B, epj_b, "hospital-b"),
        ],
        &[("platform-a", &[A1, A2]), ("platform-b", &[B1])],
        &format!(
            "scope = \"nhn:icbt-gateway/audit\"\nhpr_numbers = [\"{AUDITOR_HPR}\"]\n\
             deployment_hpr_numbers = [\"{DEPLOYMENT_AUDITOR_HPR}\"]\n"
        ),
    )
}

/// A system client's token with the auditor scope (a hospital's log-review system).
async fn audit_system(client_id: &str) -> Actor {
    let idps = IdentityProviders::shared();
    let client = idps.oauth_client(Idp::Helseid, client_id, true);
    let token = client
        .client_credentials(
            &format!("{} nhn:icbt-gateway/audit", Idp::Helseid.api_scope()),
            Some(Idp::Helseid.api_resource()),
        )
        .await
        .unwrap();
    Actor {
        token,
        client,
        dpop_pkcs8: None,
    }
}

struct Deployment {
    gw: Gateway,
    platform_a: Actor,
    platform_b: Actor,
    patient: Actor,
    therapist: Actor,
    sealer: Sealer,
}

impl Deployment {
    async fn call(
        &self,
        who: &Actor,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let response = who
            .call(
                &self.gw.client(),
                method,
                &format!("{}{path}", self.gw.url),
                body,
            )
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An active episode of the synthetic patient at `clinic`, made by `platform`.
    async fn episode(&self, platform: &Actor, clinic: &str) -> Uuid {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{id}");
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": clinic, "programme": "depresjon-14u" });
        let (status, answer) = self.call(platform, Method::PUT, &path, Some(&body)).await;
        assert_eq!(status, 201, "{answer}");
        let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
        let (status, _) = self
            .call(
                platform,
                Method::PUT,
                &format!("{path}/care-team"),
                Some(&team),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = self
            .call(
                platform,
                Method::PUT,
                &format!("{path}/state"),
                Some(&json!({ "state": "active" })),
            )
            .await;
        assert_eq!(status, 200);
        id
    }

    async fn send(&self, who: &Actor, episode: Uuid, text: &str) -> Uuid {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{episode}/messages/{id}");
        let kind = if who.token.access_token == self.patient.token.access_token {
            "message"
        } else {
            "feedback"
        };
        let body = self
            .sealer
            .body(who, &path, kind, &json!({ "text": text }).to_string())
            .await;
        let (status, answer) = self.call(who, Method::PUT, &path, Some(&body)).await;
        assert_eq!(status, 201, "{answer}");
        id
    }

    async fn publish_journal_key(&self, platform: &Actor, clinic: &str, keys: &DeviceKeys) -> u16 {
        let path = format!("/v1/clinics/{clinic}/journal-keys/{}", keys.device_id());
        self.call(platform, Method::PUT, &path, Some(&device_body(keys)))
            .await
            .0
    }

    /// The journal device ids among the episode's keys.
    async fn journal_devices(&self, episode: Uuid) -> Vec<String> {
        let (status, directory) = self
            .call(
                &self.patient,
                Method::GET,
                &format!("/v1/episodes/{episode}/devices"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let mut ids: Vec<String> = directory["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["active"] == true && d["owner"].as_str().unwrap().starts_with("journal:"))
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Every record an auditor's search returns (`query` without `limit`).
    async fn audit_records(&self, auditor: &Actor, query: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                auditor,
                Method::GET,
                &format!("/v1/audit/records?limit=500&{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["records"].as_array().unwrap().clone()
    }

    /// `export status` of `config`.
    fn status(&self, config: &str) -> String {
        let (ok, out) = ExporterProcess::start(&self.gw, config, &["status"]).finish();
        assert!(ok, "{out}");
        out
    }
}

/// The first line of `export status`: (pending, done, dead).
fn totals(status: &str) -> (u64, u64, u64) {
    let line = status.lines().find(|l| l.starts_with("pending ")).unwrap();
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (n[0], n[2], n[3])
}

#[tokio::test]
async fn two_hospitals_share_a_gateway_and_see_send_and_receive_only_their_own() {
    for backend in backends() {
        two_hospitals(backend).await;
    }
}

async fn two_hospitals(backend: Backend) {
    let epj_a = Epj::for_client("icbt-gateway");
    let epj_b = Epj::for_client("gateway-b");
    let a1_old = KeyFile::generate();
    let a1_new = KeyFile::generate();
    let a2 = KeyFile::generate();
    let b1 = KeyFile::generate();
    let keys: BTreeMap<&str, Vec<&KeyFile>> = BTreeMap::from([
        (A1, vec![&a1_old, &a1_new]),
        (A2, vec![&a2]),
        (B1, vec![&b1]),
    ]);
    let config = two_hospital_config(&epj_a, &epj_b, &keys);
    let gw = Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(config.clone()),
            ..Default::default()
        },
    )
    .await;
    let config = config
        + &format!(
            "\n[storage]\ndata_dir = \"{}\"\n",
            gw.data_dir.path().display()
        );
    let platform_a = Actor::system("platform-a").await;
    let platform_b = Actor::system("platform-b").await;
    let sealer = Sealer::new(&gw.url, &gw.client(), &platform_a, A1).await;
    let d = Deployment {
        gw,
        platform_a,
        platform_b,
        patient: Actor::patient(SYNTHETIC_FNR).await,
        therapist: Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await,
        sealer,
    };
    // The sealer published a key of its own for A1; A1's configured keys come next.
    assert_eq!(
        d.publish_journal_key(&d.platform_a, A1, &a1_old.keys).await,
        201
    );
    assert_eq!(
        d.publish_journal_key(&d.platform_a, A2, &a2.keys).await,
        201
    );
    assert_eq!(
        d.publish_journal_key(&d.platform_b, B1, &b1.keys).await,
        201
    );
    // A platform publishes keys for its own clinics only.
    assert_eq!(
        d.publish_journal_key(&d.platform_b, A2, &b1.keys).await,
        403
    );
    d.sealer.device(&d.patient).await;
    d.sealer.device(&d.therapist).await;

    // Platforms are scoped; the register is the list of clinics.
    let refused_id = Uuid::new_v4();
    let body = |org: &str| json!({ "patient": SYNTHETIC_FNR, "organisation": org, "programme": "depresjon-14u" });
    let (status, problem) = d
        .call(
            &d.platform_a,
            Method::PUT,
            &format!("/v1/episodes/{refused_id}"),
            Some(&body(B1)),
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    let (status, problem) = d
        .call(
            &d.platform_a,
            Method::PUT,
            &format!("/v1/episodes/{}", Uuid::new_v4()),
            Some(&body(UNREGISTERED)),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:icbt-gateway:problem:clinic-not-registered"
    );
    assert_eq!(problem["clinic"], UNREGISTERED);

    let first_at_a = d.episode(&d.platform_a, A1).await;
    let second_at_a = d.episode(&d.platform_a, A2).await;
    let only_at_b = d.episode(&d.platform_b, B1).await;
    // Changing another hospital's episode is refused, and so is seeing it.
    let (status, _) = d
        .call(
            &d.platform_a,
            Method::PUT,
            &format!("/v1/episodes/{only_at_b}/state"),
            Some(&json!({ "state": "finished" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = d
        .call(
            &d.platform_b,
            Method::GET,
            &format!("/v1/episodes/{first_at_a}"),
            None,
        )
        .await;
    assert_eq!(status, 403);
    for (platform, expected) in [
        (&d.platform_a, vec![first_at_a, second_at_a]),
        (&d.platform_b, vec![only_at_b]),
    ] {
        let (status, list) = d.call(platform, Method::GET, "/v1/episodes", None).await;
        assert_eq!(status, 200);
        let mut listed: Vec<Uuid> = list["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().parse().unwrap())
            .collect();
        let mut expected = expected;
        listed.sort();
        expected.sort();
        assert_eq!(
            listed, expected,
            "a platform lists its own clinics' episodes"
        );
    }
    // Each clinic's journal is a recipient of its own episodes only.
    let mut a1_journals = vec![d.sealer.journal.device_id(), a1_old.keys.device_id()];
    a1_journals.sort();
    assert_eq!(d.journal_devices(first_at_a).await, a1_journals);
    assert_eq!(d.journal_devices(second_at_a).await, [a2.keys.device_id()]);
    assert_eq!(d.journal_devices(only_at_b).await, [b1.keys.device_id()]);

    // Hospital B's EPJ is down for the first half.
    epj_b.faults(true, 0).await;
    let mut sent: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for round in 0..3 {
        for episode in [first_at_a, second_at_a, only_at_b] {
            for who in [&d.patient, &d.therapist] {
                let id = d.send(who, episode, &format!("runde {round}")).await;
                sent.entry(episode).or_default().push(id.to_string());
            }
        }
    }
    // Streams and inboxes follow the same scope as lists.
    for (platform, expected) in [
        (&d.platform_a, vec![first_at_a, second_at_a]),
        (&d.platform_b, vec![only_at_b]),
    ] {
        let (status, page) = d
            .call(platform, Method::GET, "/v1/inbox?limit=200", None)
            .await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(!entries.is_empty());
        for entry in entries {
            let episode: Uuid = entry["episode"].as_str().unwrap().parse().unwrap();
            assert!(expected.contains(&episode), "{entry}");
        }
    }
    // A clinic taken out of the register is named by `export status`, its rows waiting.
    let without_b = deployment_config(
        &[Clinic {
            org: A1,
            name: "Poliklinikk A1",
            hospital: HOSPITAL_A,
            epj: &epj_a,
            client: "hospital-a",
            keys: vec![&a1_old],
        }],
        &[("platform-a", &[A1])],
        "",
    ) + &format!(
        "\n[storage]\ndata_dir = \"{}\"\n",
        d.gw.data_dir.path().display()
    );
    let status = d.status(&without_b);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&format!("unregistered clinic {B1}: 1 episodes"))),
        "{status}"
    );

    let exporter = ExporterProcess::start(&d.gw, &config, &["run"]);
    let a_messages = sent[&first_at_a].len() + sent[&second_at_a].len();
    let deadline = Instant::now() + Duration::from_mins(2);
    while epj_a.resources("Communication").await.len() < a_messages {
        assert!(
            Instant::now() < deadline,
            "hospital A's EPJ waits for B's:\n{}",
            exporter.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(epj_b.all_resources().await.is_empty());
    let status = d.status(&config);
    assert_eq!(
        totals(&status).2,
        0,
        "nothing dead while B's EPJ is away:\n{status}"
    );
    let pending_of = |clinic: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("clinic {clinic} ")))
            .unwrap();
        let after = line.split("pending ").nth(1).unwrap();
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(pending_of(B1) >= 6, "B1's rows wait, per clinic:\n{status}");
    assert_eq!(pending_of(A1) + pending_of(A2), 0, "A's went:\n{status}");

    // A1 rotates its journal key: the new one published, the old one revoked. B1's key
    // is untouched; the exporter opens old and new A1 messages with the right key.
    assert_eq!(
        d.publish_journal_key(&d.platform_a, A1, &a1_new.keys).await,
        201
    );
    for old in [d.sealer.journal.device_id(), a1_old.keys.device_id()] {
        let (status, _) = d
            .call(
                &d.platform_a,
                Method::DELETE,
                &format!("/v1/devices/{old}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        d.journal_devices(first_at_a).await,
        [a1_new.keys.device_id()]
    );
    assert_eq!(d.journal_devices(only_at_b).await, [b1.keys.device_id()]);
    d.sealer.forget_recipients();
    let after_rotation = d.send(&d.patient, first_at_a, "etter nøkkelbytte").await;
    sent.get_mut(&first_at_a)
        .unwrap()
        .push(after_rotation.to_string());

    // B's EPJ returns: everything arrives, each at its own hospital, once.
    epj_b.faults(false, 0).await;
    let deadline = Instant::now() + Duration::from_mins(3);
    loop {
        let (pending, _, dead) = totals(&d.status(&config));
        assert_eq!(dead, 0, "{}", exporter.logs().join("\n"));
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} pending:\n{}",
            exporter.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let own = |episodes: &[Uuid]| {
        let mut ids: Vec<String> = episodes.iter().flat_map(|e| sent[e].clone()).collect();
        ids.sort();
        ids
    };
    let ids = |v: &[Uuid]| {
        let mut ids: Vec<String> = v.iter().map(ToString::to_string).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        identifiers(&epj_a.resources("Communication").await, MESSAGES),
        own(&[first_at_a, second_at_a])
    );
    assert_eq!(
        identifiers(&epj_b.resources("Communication").await, MESSAGES),
        own(&[only_at_b])
    );
    assert_eq!(
        identifiers(&epj_a.resources("EpisodeOfCare").await, EPISODES),
        ids(&[first_at_a, second_at_a])
    );
    assert_eq!(
        identifiers(&epj_b.resources("EpisodeOfCare").await, EPISODES),
        ids(&[only_at_b])
    );
    // Each episode's messages arrived in the order they were sent.
    let arrivals_a = epj_a.arrivals("Communication").await;
    for episode in [first_at_a, second_at_a] {
        let order: Vec<&String> = arrivals_a
            .iter()
            .filter(|id| sent[&episode].contains(id))
            .collect();
        assert_eq!(order, sent[&episode].iter().collect::<Vec<_>>());
    }
    drop(exporter);

    // Auditors: hospital A's system sees A's clinics only; a search for B's episode
    // returns nothing and is itself logged; an auditor of no registered hospital sees
    // nothing; the deployment's auditor sees everything.
    let audit_a = audit_system("audit-a").await;
    let deployment = Actor::auditor("01018512366", DEPLOYMENT_AUDITOR_HPR).await;
    let stranger = Actor::auditor("01018512366", AUDITOR_HPR).await;
    let seen_by_a = d.audit_records(&audit_a, "").await;
    assert!(!seen_by_a.is_empty());
    let b1_text = only_at_b.to_string();
    assert!(
        seen_by_a.iter().all(|r| r["episode_id"] != b1_text.as_str()
            && !(r["episode_id"].is_null() && r["principal_organisation"] == HOSPITAL_B)),
        "hospital A's auditor sees nothing of B's"
    );
    // But what B's platform tried on A's episode is A's to see.
    assert!(
        seen_by_a
            .iter()
            .any(|r| r["episode_id"] == first_at_a.to_string().as_str()
                && r["principal_organisation"] == HOSPITAL_B
                && r["outcome"] == "refused")
    );
    assert!(
        seen_by_a
            .iter()
            .any(|r| r["episode_id"] == second_at_a.to_string().as_str())
    );
    assert!(
        d.audit_records(&audit_a, &format!("episode={only_at_b}"))
            .await
            .is_empty()
    );
    assert!(d.audit_records(&stranger, "").await.is_empty());
    let everything = d
        .audit_records(&deployment, &format!("episode={only_at_b}"))
        .await;
    assert!(
        everything.len() > 10,
        "the deployment's auditor sees B1: {}",
        everything.len()
    );
    let logged = d
        .audit_records(&deployment, "action=audit-read&outcome=refused")
        .await;
    assert!(
        logged
            .iter()
            .any(|r| r["reason"] == "outside_scope" && r["episode_id"] == b1_text.as_str()),
        "the search outside the scope is logged: {logged:?}"
    );
    let refused_creates = d
        .audit_records(&deployment, &format!("episode={refused_id}"))
        .await;
    assert!(
        refused_creates
            .iter()
            .any(|r| r["outcome"] == "refused" && r["reason"] == "other_organisation"),
        "platform A's attempt at B's clinic is logged: {refused_creates:?}"
    );
    // The patient's own log is everything about them, both hospitals.
    let (status, log) = d
        .call(&d.patient, Method::GET, "/v1/me/access-log?limit=500", None)
        .await;
    assert_eq!(status, 200);
    let whos: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["who"].as_str().unwrap())
        .collect();
    for hospital in [HOSPITAL_A, HOSPITAL_B] {
        assert!(
            whos.iter().any(|w| w.contains(hospital)),
            "{hospital} in the patient's log: {whos:?}"
        );
    }
    // Reports are scoped too.
    let now = icbt_auth::now_secs() * 1_000;
    let (status, report) = d
        .call(
            &audit_a,
            Method::GET,
            &format!(
                "/v1/audit/reports/after-hours?from_ms={}&to_ms={}",
                now - 3_600_000,
                now + 60_000
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["episode"] != b1_text.as_str())
    );
}

#[tokio::test]
async fn config_check_names_what_the_register_lacks() {
    let epj = Epj::for_client("icbt-gateway");
    let key = KeyFile::generate();
    let keys: BTreeMap<&str, Vec<&KeyFile>> =
        BTreeMap::from([(A1, vec![&key]), (A2, vec![&key]), (B1, vec![&key])]);
    let config = two_hospital_config(&epj, &epj, &keys);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &config).unwrap();
    let out = icbt_e2e::run_cli(
        &["config", "check", "--dev", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("clinics.journal_key_files")
            && stderr.contains("is the journal key of both"),
        "{stderr}"
    );
    // Bound to a clinic the register does not have.
    let (a2, b1) = (KeyFile::generate(), KeyFile::generate());
    let distinct: BTreeMap<&str, Vec<&KeyFile>> =
        BTreeMap::from([(A1, vec![&key]), (A2, vec![&a2]), (B1, vec![&b1])]);
    let unknown = two_hospital_config(&epj, &epj, &distinct).replace(
        &format!("clinics = [\"{B1}\"]"),
        &format!("clinics = [\"{UNREGISTERED}\"]"),
    );
    std::fs::write(&file, &unknown).unwrap();
    let out = icbt_e2e::run_cli(
        &["config", "check", "--dev", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("platforms.clinics")
            && stderr.contains(UNREGISTERED),
        "{stderr}"
    );
}
