//! Episodes and messages through the real gateway with real tokens, on every backend:
//! the platform runs episodes and care teams, patient and therapists exchange sealed
//! messages with idempotent sends and gap-free ordering, and each principal reaches only
//! what the policy allows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; scenarios read top to bottom

use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, backends, expect_problem};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const THERAPIST_HPR: &str = "565501872";
const OTHER_HPR: &str = "100000001";
const OTHER_PATIENT: &str = "01018512447";
const THERAPIST_PID: &str = "01018512528";

struct World {
    gw: Gateway,
    http: reqwest::Client,
    platform: Actor,
    patient: Actor,
    therapist: Actor,
    sealer: Sealer,
}

async fn world(backend: Backend) -> World {
    let idps = IdentityProviders::shared();
    world_with(
        backend,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            ..Default::default()
        },
    )
    .await
}

async fn world_with(backend: Backend, options: GatewayOptions) -> World {
    let gw = Gateway::start_with(backend, options).await;
    let http = gw.client();
    let platform = Actor::system("icbt-platform").await;
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
    let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
    // Readers publish their devices first, so that what is sent can be opened.
    sealer.device(&patient).await;
    sealer.device(&therapist).await;
    World {
        gw,
        http,
        platform,
        patient,
        therapist,
        sealer,
    }
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.url)
    }

    async fn call(
        &self,
        who: &Actor,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let sealed = match body {
            Some(plain) if plain.get("plain").is_some() => Some(self.seal(who, path, plain).await),
            _ => None,
        };
        who.call(
            &self.http,
            method,
            &self.url(path),
            sealed.as_ref().or(body),
        )
        .await
    }

    /// A [`message`] placeholder sealed by `who`'s device for the message at `path`;
    /// other members (attachments) are kept.
    async fn seal(&self, who: &Actor, path: &str, plain: &Value) -> Value {
        let mut body = self
            .sealer
            .body(
                who,
                path,
                plain["kind"].as_str().unwrap(),
                plain["plain"].as_str().unwrap(),
            )
            .await;
        for (key, value) in plain.as_object().unwrap() {
            if key != "plain" && key != "kind" {
                body[key] = value.clone();
            }
        }
        body
    }

    /// The episode's history as `who` reads it (`query` after the path, e.g.
    /// `?limit=200`); the read must succeed.
    async fn history(&self, who: &Actor, episode: Uuid, query: &str) -> Value {
        let response = self
            .call(
                who,
                Method::GET,
                &format!("/v1/episodes/{episode}/messages{query}"),
                None,
            )
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// A new feedback message with `text`, sealed and sent by the therapist into
    /// `episode`.
    async fn feedback(&self, episode: Uuid, text: &str) -> reqwest::Response {
        let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
        self.call(
            &self.therapist,
            Method::PUT,
            &path,
            Some(&message("feedback", text)),
        )
        .await
    }

    /// An active episode of the patient with the therapist on its care team.
    async fn episode(&self) -> Uuid {
        let id = Uuid::new_v4();
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "panic-disorder-14w" });
        let created = self
            .call(
                &self.platform,
                Method::PUT,
                &format!("/v1/episodes/{id}"),
                Some(&body),
            )
            .await;
        assert_eq!(created.status(), 201, "{:?}", created.text().await);
        let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
        let set = self
            .call(
                &self.platform,
                Method::PUT,
                &format!("/v1/episodes/{id}/care-team"),
                Some(&team),
            )
            .await;
        assert_eq!(set.status(), 200);
        let active = self
            .call(
                &self.platform,
                Method::PUT,
                &format!("/v1/episodes/{id}/state"),
                Some(&json!({ "state": "active" })),
            )
            .await;
        assert_eq!(active.status(), 200);
        id
    }
}

/// A message to send: `World::call` seals it with the sender's device, as its client
/// would.
fn message(kind: &str, text: &str) -> Value {
    json!({ "kind": kind, "plain": text })
}

#[tokio::test]
async fn platform_runs_the_episode_life_cycle() {
    for backend in backends() {
        let w = world(backend).await;
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{id}");
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "panic-disorder-14w" });
        assert_eq!(
            w.call(&w.platform, Method::PUT, &path, Some(&body))
                .await
                .status(),
            201,
            "{backend:?}"
        );
        let again = w.call(&w.platform, Method::PUT, &path, Some(&body)).await;
        assert_eq!(again.status(), 200, "a retried create returns the episode");
        let episode: Value = again.json().await.unwrap();
        assert_eq!(episode["state"], "planned");
        assert_eq!(episode["organisation"], CLINIC_ORG);

        let other = json!({ "patient": OTHER_PATIENT, "organisation": CLINIC_ORG, "programme": "panic-disorder-14w" });
        expect_problem(
            w.call(&w.platform, Method::PUT, &path, Some(&other)).await,
            409,
            "episode-id-conflict",
        )
        .await;

        let state = |s: &str| json!({ "state": s });
        let state_path = format!("{path}/state");
        expect_problem(
            w.call(
                &w.platform,
                Method::PUT,
                &state_path,
                Some(&state("finished")),
            )
            .await,
            409,
            "invalid-transition",
        )
        .await;
        assert_eq!(
            w.call(
                &w.platform,
                Method::PUT,
                &state_path,
                Some(&state("active"))
            )
            .await
            .status(),
            200
        );
        assert_eq!(
            w.call(
                &w.platform,
                Method::PUT,
                &state_path,
                Some(&state("finished"))
            )
            .await
            .status(),
            200
        );
        expect_problem(
            w.call(
                &w.platform,
                Method::PUT,
                &state_path,
                Some(&state("active")),
            )
            .await,
            409,
            "invalid-transition",
        )
        .await;

        // A finished episode takes no new messages.
        let send = w
            .call(
                &w.patient,
                Method::PUT,
                &format!("{path}/messages/{}", Uuid::new_v4()),
                Some(&message("message", "hei")),
            )
            .await;
        expect_problem(send, 409, "episode-closed").await;
    }
}

#[tokio::test]
async fn sends_are_idempotent_ordered_and_readable_by_the_care_team() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{episode}/messages/{id}");
        let first = w
            .call(
                &w.patient,
                Method::PUT,
                &path,
                Some(&message("message", "first")),
            )
            .await;
        assert_eq!(first.status(), 201, "{backend:?}");
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["seq"], 1);

        let retry = w
            .call(
                &w.patient,
                Method::PUT,
                &path,
                Some(&message("message", "first")),
            )
            .await;
        assert_eq!(retry.status(), 200, "the same request again");
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry, first, "answers the original result");

        let different = w
            .call(
                &w.patient,
                Method::PUT,
                &path,
                Some(&message("message", "changed")),
            )
            .await;
        expect_problem(different, 409, "message-id-conflict").await;

        let feedback = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
        let sent = w
            .call(
                &w.therapist,
                Method::PUT,
                &feedback,
                Some(&message("feedback", "week 1 feedback")),
            )
            .await;
        assert_eq!(sent.status(), 201);

        let history = w.history(&w.therapist, episode, "").await;
        let seqs: Vec<i64> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2], "no second message from the retry");
        let reader = w.sealer.device(&w.therapist).await;
        assert_eq!(w.sealer.open(&reader, &history["messages"][0]), "first");
        let patient_device = w.sealer.device(&w.patient).await;
        assert_eq!(
            w.sealer.open(&patient_device, &history["messages"][1]),
            "week 1 feedback"
        );
        assert_eq!(history["messages"][1]["sender"]["reference"], THERAPIST_HPR);
        assert!(
            history["messages"][0]["sender"].get("reference").is_none(),
            "the patient's number is not repeated"
        );

        let page = w
            .call(
                &w.patient,
                Method::GET,
                &format!("/v1/episodes/{episode}/messages?after=1&limit=1"),
                None,
            )
            .await;
        let page: Value = page.json().await.unwrap();
        assert_eq!(page["messages"].as_array().unwrap().len(), 1);
        assert_eq!(page["next_after"], 2);
        let empty: Value = w
            .call(
                &w.patient,
                Method::GET,
                &format!("/v1/episodes/{episode}/messages?after=2"),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(empty["messages"], json!([]));
        assert_eq!(empty["next_after"], 2);
        expect_problem(
            w.call(
                &w.patient,
                Method::GET,
                &format!("/v1/episodes/{episode}/messages?limit=1000"),
                None,
            )
            .await,
            422,
            "invalid-field",
        )
        .await;
    }
}

#[tokio::test]
async fn concurrent_sends_get_gap_free_sequence_numbers() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        let sends = (0..24).map(|i| {
            let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
            let w = &w;
            async move {
                let who = if i % 2 == 0 { &w.patient } else { &w.therapist };
                w.call(
                    who,
                    Method::PUT,
                    &path,
                    Some(&message("message", &format!("m{i}"))),
                )
                .await
                .status()
                .as_u16()
            }
        });
        let statuses = futures_util::future::join_all(sends).await;
        assert!(
            statuses.iter().all(|s| *s == 201),
            "{backend:?}: {statuses:?}"
        );
        let history = w.history(&w.patient, episode, "?limit=200").await;
        let seqs: Vec<i64> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=24).collect::<Vec<_>>(), "{backend:?}");
    }
}

#[tokio::test]
async fn each_principal_reaches_only_what_the_policy_allows() {
    let w = world(Backend::Sqlite).await;
    let episode = w.episode().await;
    let messages = format!("/v1/episodes/{episode}/messages");

    let stranger = Actor::patient(OTHER_PATIENT).await;
    expect_problem(
        w.call(&stranger, Method::GET, &messages, None).await,
        403,
        "forbidden",
    )
    .await;
    let other_therapist = Actor::therapist(THERAPIST_PID, OTHER_HPR).await;
    expect_problem(
        w.call(&other_therapist, Method::GET, &messages, None).await,
        403,
        "forbidden",
    )
    .await;
    let other_org = Actor::system("other-org-platform").await;
    expect_problem(
        w.call(
            &other_org,
            Method::GET,
            &format!("/v1/episodes/{episode}"),
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "x" });
    expect_problem(
        w.call(
            &other_org,
            Method::PUT,
            &format!("/v1/episodes/{}", Uuid::new_v4()),
            Some(&body),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    expect_problem(
        w.call(
            &w.patient,
            Method::PUT,
            &format!("/v1/episodes/{}", Uuid::new_v4()),
            Some(&body),
        )
        .await,
        403,
        "forbidden",
    )
    .await;

    let send = |kind: &str| (format!("{messages}/{}", Uuid::new_v4()), message(kind, "x"));
    let (path, body) = send("feedback");
    expect_problem(
        w.call(&w.patient, Method::PUT, &path, Some(&body)).await,
        403,
        "kind-not-allowed",
    )
    .await;
    let (path, body) = send("questionnaire-response");
    expect_problem(
        w.call(&w.therapist, Method::PUT, &path, Some(&body)).await,
        403,
        "kind-not-allowed",
    )
    .await;
    let (path, body) = send("notice");
    assert_eq!(
        w.call(&w.platform, Method::PUT, &path, Some(&body))
            .await
            .status(),
        201
    );

    // Cover with an end in the past reaches nothing; a current cover does.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let team = json!({ "members": [
        { "hpr_number": THERAPIST_HPR, "role": "therapist" },
        { "hpr_number": OTHER_HPR, "role": "cover", "until_ms": now_ms - 1000 },
    ] });
    w.call(
        &w.platform,
        Method::PUT,
        &format!("/v1/episodes/{episode}/care-team"),
        Some(&team),
    )
    .await;
    expect_problem(
        w.call(&other_therapist, Method::GET, &messages, None).await,
        403,
        "forbidden",
    )
    .await;
    let team = json!({ "members": [{ "hpr_number": OTHER_HPR, "role": "cover", "until_ms": now_ms + 3_600_000 }] });
    w.call(
        &w.platform,
        Method::PUT,
        &format!("/v1/episodes/{episode}/care-team"),
        Some(&team),
    )
    .await;
    assert_eq!(
        w.call(&other_therapist, Method::GET, &messages, None)
            .await
            .status(),
        200
    );

    let mine: Value = w
        .call(&w.patient, Method::GET, "/v1/episodes", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        mine["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == episode.to_string())
    );
    let theirs: Value = w
        .call(&stranger, Method::GET, "/v1/episodes", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        theirs["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != episode.to_string())
    );
}

#[tokio::test]
async fn bad_fields_name_their_path() {
    let w = world(Backend::Sqlite).await;
    let body = json!({ "patient": "01018512345", "organisation": CLINIC_ORG, "programme": "x" });
    let problem = expect_problem(
        w.call(
            &w.platform,
            Method::PUT,
            &format!("/v1/episodes/{}", Uuid::new_v4()),
            Some(&body),
        )
        .await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(problem["path"], "patient");
    let episode = w.episode().await;
    let bad = json!({ "kind": "message", "envelope": "not base64 !!" });
    let problem = expect_problem(
        w.call(
            &w.patient,
            Method::PUT,
            &format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4()),
            Some(&bad),
        )
        .await,
        422,
        "invalid-field",
    )
    .await;
    assert_eq!(problem["path"], "envelope");
    let unknown = json!({ "kind": "gossip" });
    let problem = expect_problem(
        w.call(
            &w.patient,
            Method::PUT,
            &format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4()),
            Some(&unknown),
        )
        .await,
        400,
        "malformed-json",
    )
    .await;
    assert_eq!(problem["path"], "kind");
}

#[tokio::test]
async fn every_acknowledged_send_survives_sigkill() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        let acks = AtomicUsize::new(0);
        // Sealed before the run, so that the kill interrupts only sends.
        let mut bodies = Vec::new();
        for i in 0..80 {
            let id = Uuid::new_v4();
            let path = format!("/v1/episodes/{episode}/messages/{id}");
            let body = w
                .seal(&w.patient, &path, &message("message", &format!("m{i}")))
                .await;
            bodies.push((id, path, body));
        }
        let send = |(id, path, body): (Uuid, String, Value)| {
            let (w, acks) = (&w, &acks);
            async move {
                let response = w
                    .patient
                    .try_call(&w.http, Method::PUT, &w.url(&path), Some(&body))
                    .await;
                let ok = response.is_ok_and(|r| r.status().is_success());
                if ok {
                    acks.fetch_add(1, Ordering::SeqCst);
                }
                (id, ok)
            }
        };
        // Sends in flight when the process dies: each was either acknowledged (and must be
        // found after the restart) or failed at the client. The kill comes once a dozen
        // have been acknowledged.
        let pid = w.gw.pid().to_string();
        let kill = async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while acks.load(Ordering::SeqCst) < 12 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap();
        };
        let (results, ()) = tokio::join!(
            futures_util::future::join_all(bodies.into_iter().map(send)),
            kill
        );
        let acknowledged: Vec<Uuid> = results
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(id, _)| *id)
            .collect();
        assert!(acknowledged.len() >= 12, "{backend:?}");
        eprintln!(
            "{backend:?}: {} of {} sends acknowledged before SIGKILL",
            acknowledged.len(),
            results.len()
        );

        let World {
            gw,
            http: _,
            platform,
            patient,
            therapist,
            sealer,
        } = w;
        let gw = gw.restart_after("KILL").await;
        let w = World {
            http: gw.client(),
            gw,
            platform,
            patient,
            therapist,
            sealer,
        };
        let history = w.history(&w.patient, episode, "?limit=200").await;
        let stored: Vec<Uuid> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().parse().unwrap())
            .collect();
        for id in &acknowledged {
            assert!(
                stored.contains(id),
                "{backend:?}: acknowledged message {id} lost"
            );
        }
        let seqs: Vec<i64> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=i64::try_from(seqs.len()).unwrap()).collect::<Vec<_>>(),
            "still gap-free"
        );
    }
}

#[tokio::test]
async fn receipts_show_the_sender_who_received_and_read_and_count_unread() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        for text in ["a", "b", "c"] {
            let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
            assert_eq!(
                w.call(
                    &w.patient,
                    Method::PUT,
                    &path,
                    Some(&message("message", text))
                )
                .await
                .status(),
                201
            );
        }
        let receipts = format!("/v1/episodes/{episode}/receipts");
        let before: Value = w
            .call(&w.therapist, Method::GET, &receipts, None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(before["unread"], 3, "{backend:?}");
        let patient_view: Value = w
            .call(&w.patient, Method::GET, &receipts, None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            patient_view["unread"], 0,
            "one's own messages are not unread"
        );

        let marked = w
            .call(
                &w.therapist,
                Method::PUT,
                &receipts,
                Some(&json!({ "delivered_up_to": 3, "read_up_to": 2 })),
            )
            .await;
        assert_eq!(marked.status(), 200);
        let marked: Value = marked.json().await.unwrap();
        assert_eq!(marked["unread"], 1);
        // Marks never move back.
        w.call(
            &w.therapist,
            Method::PUT,
            &receipts,
            Some(&json!({ "read_up_to": 1 })),
        )
        .await;

        // The sender sees, per reader, what was delivered and read.
        let seen: Value = w
            .call(&w.patient, Method::GET, &receipts, None)
            .await
            .json()
            .await
            .unwrap();
        let therapist = seen["readers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "clinician")
            .unwrap()
            .clone();
        assert_eq!(therapist["reference"], THERAPIST_HPR);
        assert_eq!(therapist["delivered_up_to"], 3);
        assert_eq!(therapist["read_up_to"], 2, "{backend:?}");

        expect_problem(
            w.call(
                &w.therapist,
                Method::PUT,
                &receipts,
                Some(&json!({ "read_up_to": 4 })),
            )
            .await,
            422,
            "invalid-field",
        )
        .await;
        expect_problem(
            w.call(
                &w.platform,
                Method::PUT,
                &receipts,
                Some(&json!({ "read_up_to": 1 })),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        let stranger = Actor::patient(OTHER_PATIENT).await;
        expect_problem(
            w.call(&stranger, Method::GET, &receipts, None).await,
            403,
            "forbidden",
        )
        .await;
    }
}

#[tokio::test]
async fn each_principal_is_rate_limited_on_its_own() {
    let idps = IdentityProviders::shared();
    let options = GatewayOptions {
        config_toml: Some(idps.gateway_config()),
        env: vec![
            ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "6".into()),
            ("ICBT_SERVER__RATE_LIMIT_BURST".into(), "3".into()),
        ],
        ..Default::default()
    };
    let gw = Gateway::start_with(Backend::Sqlite, options).await;
    let http = gw.client();
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let url = format!("{}/v1/episodes", gw.url);
    for _ in 0..3 {
        assert_eq!(
            patient.call(&http, Method::GET, &url, None).await.status(),
            200
        );
    }
    let limited = patient.call(&http, Method::GET, &url, None).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    expect_problem(limited, 429, "rate-limited").await;
    let other = Actor::patient(OTHER_PATIENT).await;
    assert_eq!(
        other.call(&http, Method::GET, &url, None).await.status(),
        200,
        "another principal has its own budget"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut out, b| {
            write!(out, "{b:02x}").unwrap();
            out
        })
}

#[tokio::test]
async fn attachments_upload_checked_download_by_the_episode_only() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        let blob: Vec<u8> = (0..200_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let sha = sha256_hex(&blob);
        let url = w.url(&format!("/v1/episodes/{episode}/attachments/{sha}"));
        let upload = |bytes: Vec<u8>, url: String| {
            let w = &w;
            async move {
                let key = w.patient.client.dpop_key();
                assert!(
                    key.is_none(),
                    "the ID-porten patient token is a bearer token"
                );
                w.http
                    .put(url)
                    .header(
                        "authorization",
                        format!("Bearer {}", w.patient.token.access_token),
                    )
                    .header("content-type", "application/octet-stream")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let created = upload(blob.clone(), url.clone()).await;
        assert_eq!(created.status(), 201, "{backend:?}");
        let receipt: Value = created.json().await.unwrap();
        assert_eq!(receipt["size"], 200_000);
        assert_eq!(
            upload(blob.clone(), url.clone()).await.status(),
            200,
            "stored once"
        );

        // Bytes that are not what the path names are refused, and nothing is kept.
        let other = sha256_hex(b"something else");
        let wrong = upload(
            blob.clone(),
            w.url(&format!("/v1/episodes/{episode}/attachments/{other}")),
        )
        .await;
        expect_problem(wrong, 422, "invalid-field").await;
        let missing = w
            .call(
                &w.therapist,
                Method::GET,
                &format!("/v1/episodes/{episode}/attachments/{other}"),
                None,
            )
            .await;
        expect_problem(missing, 404, "not-found").await;

        // A message refers to it; the care team downloads it; others cannot.
        let mut with_attachment = message("message", "see attached");
        with_attachment["attachments"] = json!([sha]);
        let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
        assert_eq!(
            w.call(&w.patient, Method::PUT, &path, Some(&with_attachment))
                .await
                .status(),
            201
        );
        with_attachment["attachments"] = json!([other]);
        let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
        let problem = expect_problem(
            w.call(&w.patient, Method::PUT, &path, Some(&with_attachment))
                .await,
            422,
            "invalid-field",
        )
        .await;
        assert_eq!(problem["path"], "attachments[0]");

        let history = w.history(&w.therapist, episode, "").await;
        assert_eq!(history["messages"][0]["attachments"], json!([sha]));
        let download = w
            .call(
                &w.therapist,
                Method::GET,
                &format!("/v1/episodes/{episode}/attachments/{sha}"),
                None,
            )
            .await;
        assert_eq!(download.status(), 200);
        assert_eq!(
            download.bytes().await.unwrap().as_ref(),
            blob.as_slice(),
            "{backend:?}"
        );
        let stranger = Actor::patient(OTHER_PATIENT).await;
        expect_problem(
            w.call(
                &stranger,
                Method::GET,
                &format!("/v1/episodes/{episode}/attachments/{sha}"),
                None,
            )
            .await,
            403,
            "forbidden",
        )
        .await;
    }
}

#[tokio::test]
async fn oversized_and_interrupted_uploads_leave_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let idps = IdentityProviders::shared();
    let options = GatewayOptions {
        config_toml: Some(idps.gateway_config()),
        env: vec![("ICBT_STORAGE__ATTACHMENT_LIMIT_BYTES".into(), "5000".into())],
        ..Default::default()
    };
    let w = world_with(Backend::Sqlite, options).await;
    let episode = w.episode().await;
    let big = vec![7u8; 6000];
    let sha = sha256_hex(&big);
    let path = format!("/v1/episodes/{episode}/attachments/{sha}");
    let response = w
        .http
        .put(w.url(&path))
        .header(
            "authorization",
            format!("Bearer {}", w.patient.token.access_token),
        )
        .body(big)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 413, "payload-too-large").await;
    assert_eq!(problem["limit"], 5000);

    // An upload whose client goes away half-way.
    let mut tls = w.gw.raw_tls().await;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 4000\r\n\r\n",
        w.patient.token.access_token
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[7u8; 1500]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(tls);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let uploads = w.gw.data_dir.path().join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spooled files left behind: {left:?}");
    let short_sha = sha256_hex(&[7u8; 4000]);
    let get = w
        .call(
            &w.therapist,
            Method::GET,
            &format!("/v1/episodes/{episode}/attachments/{short_sha}"),
            None,
        )
        .await;
    expect_problem(get, 404, "not-found").await;
}

/// The gateway's database connections are cut while idle (as by a database restart):
/// the next send finds them broken before using them and commits on fresh ones.
#[tokio::test]
async fn sends_go_through_after_the_database_drops_idle_connections() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let w = world(Backend::Postgres).await;
    let episode = w.episode().await;
    let send = |text: &'static str| w.feedback(episode, text);
    assert_eq!(send("before").await.status(), 201);
    let mut db = icbt_e2e::connect_database(w.gw.data_dir.path(), w.gw.database()).await;
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the gateway had connections to cut");
    // Longer than a pooled connection may idle before it is checked when taken.
    tokio::time::sleep(std::time::Duration::from_millis(5_500)).await;
    assert_eq!(send("after").await.status(), 201);
    let history = w.history(&w.therapist, episode, "").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
}

/// A send is decided on what the caller's previous send in the episode was decided on,
/// kept in memory, but commits only while none of it has changed: a therapist taken off
/// the care team, or whose device is revoked, is refused at the very next send, and the
/// refusal is recorded once.
#[tokio::test]
async fn a_changed_care_team_or_device_applies_to_the_very_next_send() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.episode().await;
        let send = || w.feedback(episode, "week 3");
        let team = |hpr: &str| json!({ "members": [{ "hpr_number": hpr, "role": "therapist" }] });
        let set_team = |hpr: &'static str| {
            let w = &w;
            let body = team(hpr);
            async move {
                let set = w
                    .call(
                        &w.platform,
                        Method::PUT,
                        &format!("/v1/episodes/{episode}/care-team"),
                        Some(&body),
                    )
                    .await;
                assert_eq!(set.status(), 200);
            }
        };
        for _ in 0..3 {
            assert_eq!(send().await.status(), 201, "{backend:?}");
        }

        set_team(OTHER_HPR).await;
        expect_problem(send().await, 403, "forbidden").await;
        let mut db = icbt_e2e::connect_database(w.gw.data_dir.path(), w.gw.database()).await;
        let refusals: Vec<(String,)> = sqlx::query_as(
            "SELECT reason FROM audit_records WHERE episode_id = $1 AND outcome = 'refused' \
             AND resource_type = 'messages'",
        )
        .bind(episode.to_string())
        .fetch_all(&mut db)
        .await
        .unwrap();
        assert_eq!(refusals.len(), 1, "{backend:?}: one refusal, one record");

        set_team(THERAPIST_HPR).await;
        for _ in 0..2 {
            assert_eq!(send().await.status(), 201, "{backend:?}: back on the team");
        }
        let device = w.sealer.device(&w.therapist).await.device_id();
        let revoked = w
            .call(
                &w.therapist,
                Method::DELETE,
                &format!("/v1/devices/{device}"),
                None,
            )
            .await;
        assert_eq!(revoked.status(), 200, "{backend:?}");
        expect_problem(send().await, 422, "envelope-sender-not-a-device").await;
        let history = w.history(&w.patient, episode, "").await;
        assert_eq!(
            history["messages"].as_array().unwrap().len(),
            5,
            "{backend:?}: only the sends decided on current facts"
        );
    }
}
