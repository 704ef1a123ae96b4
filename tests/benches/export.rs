//! Export figures, all from one run (`scripts/bench/export`):
//! - mapping throughput on one core: records mapped to transaction bundles and serialised
//!   to JSON, in resources per second;
//! - the FHIR engine's ingest rate from a direct client (the same bundles, the same
//!   HelseID DPoP token handling, 64 episodes in flight, order kept per episode) beside the
//!   end-to-end export rate of `icbt-gateway export` (claim, open the envelope with the
//!   journal key, verify the sender, map, send, record) into a fresh engine of the same
//!   kind, for the same records. Both are timed by the engine, from its first request to
//!   its last successful answer, so neither the client's token set-up nor the exporter's
//!   process start counts; the exporter's wall time with start-up is printed too.
//!
//! Needs `E2E_POSTGRES_URL`; `E2E_GATEWAY_BIN` should point at a release build. Client,
//! gateway, exporter, PostgreSQL and the engine share this machine's cores.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use icbt_auth::client::OutboundTokens;
use icbt_auth::keys::KeyCachePolicy;
use icbt_config::OutboundClientConfig;
use icbt_e2e::epj::{Epj, ExporterProcess, export_config};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, connect_database};
use icbt_fhir_mapping::episode::{EpisodeRecord, State};
use icbt_fhir_mapping::export::{episode_bundle, message_bundle, questionnaire_bundle};
use icbt_fhir_mapping::message::{MessageRecord, Party};
use icbt_fhir_mapping::questionnaire::{Answers, Instrument};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

const HPR: &str = "565501872";
const EPISODES: usize = 64;
const MESSAGES_PER_EPISODE: usize = 16;
/// Episodes in flight at once: the exporter's default (2 workers of 32).
const IN_FLIGHT: usize = 64;

fn episode_record(id: Uuid) -> EpisodeRecord {
    EpisodeRecord {
        id: id.to_string(),
        identifier_system: "urn:icbt-gateway:bench:episode".into(),
        state: State::Active,
        started_at_ms: 1_795_000_000_000,
        ended_at_ms: None,
        patient: SYNTHETIC_FNR.into(),
        organisation: CLINIC_ORG.into(),
        therapists: vec![HPR.into()],
    }
}

fn message_record(episode: Uuid, id: Uuid, text: String) -> MessageRecord {
    MessageRecord {
        id: id.to_string(),
        identifier_system: "urn:icbt-gateway:bench:message".into(),
        episode_id: episode.to_string(),
        episode_system: "urn:icbt-gateway:bench:episode".into(),
        kind: "message".into(),
        patient: SYNTHETIC_FNR.into(),
        sender: Party::Patient(SYNTHETIC_FNR.into()),
        recipients: vec![Party::Therapist(HPR.into())],
        sent_at_ms: 1_795_000_000_000,
        text,
        in_response_to: None,
    }
}

/// Resources per second on this thread: map and serialise for about two seconds.
fn mapping_rate() -> (f64, f64) {
    let episode = Uuid::new_v4();
    let text = "x".repeat(600);
    let run = Duration::from_secs(2);
    let started = Instant::now();
    let mut resources = 0_u64;
    while started.elapsed() < run {
        let bundle =
            message_bundle(&message_record(episode, Uuid::new_v4(), text.clone())).unwrap();
        std::hint::black_box(serde_json::to_vec(&bundle).unwrap());
        resources += 2;
    }
    let messages = resources as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut resources = 0_u64;
    while started.elapsed() < run {
        let answers = Answers {
            instrument: Instrument::Phq9,
            id: Uuid::new_v4().to_string(),
            identifier_system: "urn:icbt-gateway:bench:message".into(),
            patient: SYNTHETIC_FNR.into(),
            authored_at_ms: 1_795_000_000_000,
            items: vec![1, 2, 1, 2, 1, 0, 1, 2, 1],
        };
        let bundle = questionnaire_bundle(&answers, Some(HPR)).unwrap();
        std::hint::black_box(serde_json::to_vec(&bundle).unwrap());
        resources += 3;
    }
    (messages, resources as f64 / started.elapsed().as_secs_f64())
}

/// The bundles a direct client sends for one episode, in the exporter's order: the
/// episode as created, with its care team, activated; then each message.
fn direct_bundles(episode: Uuid, messages: &[(Uuid, String)]) -> Vec<Value> {
    let record = episode_record(episode);
    let mut bundles = vec![serde_json::to_value(episode_bundle(&record).unwrap()).unwrap(); 3];
    for (id, text) in messages {
        bundles.push(
            serde_json::to_value(
                message_bundle(&message_record(episode, *id, text.clone())).unwrap(),
            )
            .unwrap(),
        );
    }
    bundles
}

async fn direct_ingest(epj: &Epj, work: Vec<Vec<Value>>) -> (f64, usize, u64) {
    let idps = IdentityProviders::shared();
    let tokens = Arc::new(
        OutboundTokens::from_config(
            &OutboundClientConfig {
                issuer: idps.helseid.issuer.clone(),
                client_id: "icbt-gateway".into(),
                key_file: idps.client_key("icbt-gateway").pem_file.clone(),
                key_algorithm: "ES256".into(),
                key_id: Some("icbt-gateway-key".into()),
                assertion_audience: None,
                scope: "nhn:epj/write".into(),
                resource: Some("nhn:epj".into()),
                dpop: true,
            },
            idps.http(),
            KeyCachePolicy {
                max_age: Duration::from_hours(1),
                min_refetch_interval: Duration::from_secs(1),
            },
        )
        .unwrap(),
    );
    tokens.token().await.unwrap();
    let http =
        icbt_auth::http::https_client(Some(&idps.ca.ca_file), Duration::from_secs(30)).unwrap();
    let total: usize = work.iter().map(Vec::len).sum();
    let queue = Arc::new(std::sync::Mutex::new(work));
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (queue, tokens, http, base, retries) = (
            queue.clone(),
            tokens.clone(),
            http.clone(),
            epj.base.clone(),
            retries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(bundles) = queue.lock().unwrap().pop() else {
                    break;
                };
                for bundle in bundles {
                    // A real client retries a dropped connection too (the bundle is
                    // conditional, so that is safe); count how often.
                    let mut attempts = 0;
                    loop {
                        let (authorization, dpop) = tokens.authorize("POST", &base).await.unwrap();
                        let sent = http
                            .post(&base)
                            .header("authorization", authorization)
                            .header("dpop", dpop.unwrap())
                            .header("content-type", "application/fhir+json")
                            .body(serde_json::to_vec(&bundle).unwrap())
                            .send()
                            .await;
                        match sent {
                            Ok(response) => {
                                assert!(response.status().is_success(), "{}", response.status());
                                break;
                            }
                            Err(e) => {
                                attempts += 1;
                                assert!(attempts < 5, "{e:?} after {:?}", started.elapsed());
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        assert!(
            t.await.is_ok(),
            "the direct client failed; the engine said:\n{}",
            epj.logs().join("\n")
        );
    }
    (
        total as f64 / started.elapsed().as_secs_f64(),
        total,
        retries.load(std::sync::atomic::Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    if std::env::var("E2E_POSTGRES_URL").is_err() {
        println!("set E2E_POSTGRES_URL (scripts/bench/export does)");
        return;
    }
    let (message_rate, questionnaire_rate) = mapping_rate();

    let idps = IdentityProviders::shared();
    let gw = Gateway::start_with(
        Backend::Postgres,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into())],
            ..Default::default()
        },
    )
    .await;
    let platform = Actor::system("icbt-platform").await;
    let patient = Arc::new(Actor::patient(SYNTHETIC_FNR).await);
    let therapist = Actor::therapist("01018512528", HPR).await;
    let sealer = Arc::new(Sealer::new(&gw.url, &gw.client(), &platform, CLINIC_ORG).await);
    sealer.device(&patient).await;
    sealer.device(&therapist).await;
    let journal_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        journal_key.path(),
        sealer.journal.to_private_json().as_bytes(),
    )
    .unwrap();

    // The records: episodes with their messages, stored through the gateway.
    let http = gw.client();
    let mut work = Vec::new();
    for _ in 0..EPISODES {
        let episode = Uuid::new_v4();
        let base = format!("{}/v1/episodes/{episode}", gw.url);
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "depresjon-14u" });
        assert_eq!(
            platform
                .call(&http, Method::PUT, &base, Some(&body))
                .await
                .status(),
            201
        );
        let team = json!({ "members": [{ "hpr_number": HPR, "role": "therapist" }] });
        let url = format!("{base}/care-team");
        assert_eq!(
            platform
                .call(&http, Method::PUT, &url, Some(&team))
                .await
                .status(),
            200
        );
        let url = format!("{base}/state");
        let state = json!({ "state": "active" });
        assert_eq!(
            platform
                .call(&http, Method::PUT, &url, Some(&state))
                .await
                .status(),
            200
        );
        let messages: Vec<(Uuid, String)> = (0..MESSAGES_PER_EPISODE)
            .map(|i| (Uuid::new_v4(), format!("Uke {i}: {}", "tekst ".repeat(100))))
            .collect();
        let sends = messages.iter().map(|(id, text)| {
            let (sealer, patient, http, gw_url) = (
                sealer.clone(),
                patient.clone(),
                http.clone(),
                gw.url.clone(),
            );
            let content = json!({ "text": text }).to_string();
            let id = *id;
            async move {
                let path = format!("/v1/episodes/{episode}/messages/{id}");
                let body = sealer.body(&patient, &path, "message", &content).await;
                let url = format!("{gw_url}{path}");
                assert_eq!(
                    patient
                        .call(&http, Method::PUT, &url, Some(&body))
                        .await
                        .status(),
                    201
                );
            }
        });
        // One episode's messages in order: the exporter keeps that order, so must we.
        for send in sends {
            send.await;
        }
        work.push(direct_bundles(episode, &messages));
    }

    let direct_epj = Epj::start();
    let (direct_rate, bundles, retries) = direct_ingest(&direct_epj, work).await;
    let direct_resources = direct_epj.all_resources().await.len();
    let direct_engine = engine_rate(&direct_epj).await;
    drop(direct_epj);

    let epj = Epj::start();
    let mut db = connect_database(gw.data_dir.path(), gw.database()).await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    let started = Instant::now();
    let exporter =
        ExporterProcess::start(&gw, &export_config(&gw, &epj, journal_key.path()), &["run"]);
    loop {
        let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE state <> 'done'")
            .fetch_one(&mut db)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_mins(10),
            "{}",
            exporter.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let exported_resources = epj.all_resources().await.len();
    let export_engine = engine_rate(&epj).await;
    drop(exporter);

    println!(
        "mapping, one core: message bundles {message_rate:.0} resources/s, PHQ-9 bundles with risk Task {questionnaire_rate:.0} resources/s"
    );
    println!(
        "direct client into the engine: {bundles} bundles ({direct_resources} resources) at {direct_rate:.0} bundles/s as the client timed it, {direct_engine:.0}/s as the engine saw it ({retries} resets retried)"
    );
    println!(
        "icbt-gateway export: {rows} rows ({exported_resources} resources) in {:.2} s wall with process start-up ({:.0} rows/s), {export_engine:.0} bundles/s as the engine saw it",
        wall.as_secs_f64(),
        rows as f64 / wall.as_secs_f64()
    );
    println!(
        "export / direct ingest, both timed by the engine from its first request to its last successful answer: {:.0} %",
        export_engine / direct_engine * 100.0
    );
}

/// Bundles per second the engine accepted, from its first request to its last success.
async fn engine_rate(epj: &Epj) -> f64 {
    let stats = epj.stats().await;
    let ok = stats["ok"].as_f64().unwrap();
    let span_ms =
        stats["last_ok_ms"].as_f64().unwrap() - stats["first_request_ms"].as_f64().unwrap();
    ok / (span_ms / 1_000.0)
}
