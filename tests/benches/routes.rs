//! Export routes side by side (`scripts/bench/routes`): two hospitals, each clinic's
//! records going to its own hospital's EPJ with that hospital's HelseID client. The same
//! amount of work is exported twice in one run, into fresh engines each time:
//!
//! 1. both EPJs up;
//! 2. hospital B's EPJ down (every connection reset) while A's is up; then B's returns.
//!
//! Reported: hospital A's rate in each phase as A's engine saw it (bundles per second
//! from its first request to its last successful answer) and the ratio of the two; the
//! goal is that A keeps at least 80 % of its all-up rate while B is down. Also B's rate
//! when both are up, and how long B takes to catch up once it returns.
//!
//! Needs `E2E_POSTGRES_URL`; `E2E_GATEWAY_BIN` should point at a release build. Client,
//! gateway, exporter, PostgreSQL and both engines share this machine's cores.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use icbt_e2e::clinic::start_episode;
use icbt_e2e::epj::{Epj, ExporterProcess};
use icbt_e2e::idp::Actor;
use icbt_e2e::register::{A1, B1, Clinic, HOSPITAL_A, HOSPITAL_B, KeyFile, deployment_config};
use icbt_e2e::sealed::{Sealer, device_body};
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, connect_database};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(epj_a: &Epj, epj_b: &Epj, key_a: &KeyFile, key_b: &KeyFile) -> String {
    deployment_config(
        &[
            Clinic {
                org: A1,
                name: "Poliklinikk A1",
                hospital: HOSPITAL_A,
                epj: epj_a,
                client: "hospital-a",
                keys: vec![key_a],
            },
            Clinic {
                org: B1,
                name: "Poliklinikk B1",
                hospital: HOSPITAL_B,
                epj: epj_b,
                client: "hospital-b",
                keys: vec![key_b],
            },
        ],
        &[("platform-a", &[A1]), ("platform-b", &[B1])],
        "scope = \"nhn:icbt-gateway/audit\"\n",
    )
}

struct Bench {
    gw: Gateway,
    platforms: [Actor; 2],
    patient: Arc<Actor>,
    sealer: Arc<Sealer>,
}

impl Bench {
    /// `episodes` active episodes at each clinic with `messages` patient messages each,
    /// stored through the gateway; episodes concurrently, each one's messages in order.
    async fn store(&self, episodes: usize, messages: usize) {
        let http = self.gw.client();
        let mut all = Vec::new();
        for (platform, clinic) in self.platforms.iter().zip([A1, B1]) {
            for _ in 0..episodes {
                let episode =
                    start_episode(&http, &self.gw.url, platform, (SYNTHETIC_FNR, clinic)).await;
                let (sealer, patient, http, url) = (
                    self.sealer.clone(),
                    self.patient.clone(),
                    http.clone(),
                    self.gw.url.clone(),
                );
                all.push(tokio::spawn(async move {
                    for i in 0..messages {
                        let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
                        let text = json!({ "text": format!("Uke {i}: {}", "tekst ".repeat(100)) });
                        let body = sealer
                            .body(&patient, &path, "message", &text.to_string())
                            .await;
                        let response = patient
                            .call(&http, Method::PUT, &format!("{url}{path}"), Some(&body))
                            .await;
                        assert_eq!(response.status(), 201);
                    }
                }));
            }
        }
        for task in all {
            task.await.unwrap();
        }
    }
}

/// Rows of `clinic` not yet delivered.
async fn waiting(db: &mut sqlx::AnyConnection, clinic: &str) -> i64 {
    sqlx::query(
        "SELECT COUNT(*) AS n FROM outbox o JOIN episodes e ON e.id = o.episode_id \
         JOIN clinics c ON c.id = e.clinic_id WHERE c.org_number = $1 AND o.state <> 'done'",
    )
    .bind(clinic)
    .fetch_one(db)
    .await
    .unwrap()
    .try_get("n")
    .unwrap()
}

/// Waits until `clinic`'s rows are delivered; the wait.
async fn drained(
    db: &mut sqlx::AnyConnection,
    clinic: &str,
    exporter: &ExporterProcess,
) -> Duration {
    let started = Instant::now();
    while waiting(db, clinic).await > 0 {
        assert!(
            started.elapsed() < Duration::from_mins(10),
            "{}",
            exporter.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Bundles per second the engine accepted, from its first request to its last success.
async fn engine_rate(epj: &Epj) -> (f64, f64) {
    let stats = epj.stats().await;
    let ok = stats["ok"].as_f64().unwrap();
    let span_ms =
        stats["last_ok_ms"].as_f64().unwrap() - stats["first_request_ms"].as_f64().unwrap();
    (ok / (span_ms / 1_000.0), ok)
}

#[tokio::main]
async fn main() {
    if std::env::var("E2E_POSTGRES_URL").is_err() {
        println!("set E2E_POSTGRES_URL (scripts/bench/routes does)");
        return;
    }
    let episodes = env_or("ICBT_BENCH_EPISODES", 32);
    let messages = env_or("ICBT_BENCH_MESSAGES", 12);
    let key_b = KeyFile::generate();
    // The register names each EPJ; the gateway itself only needs the clinics and
    // platforms, so engines started later are named in each phase's exporter config.
    let (placeholder_a, placeholder_b) = (
        Epj::for_client("icbt-gateway"),
        Epj::for_client("gateway-b"),
    );
    let key_a_file = KeyFile::generate();
    let gw = Gateway::start_with(
        Backend::Postgres,
        GatewayOptions {
            config_toml: Some(config(&placeholder_a, &placeholder_b, &key_a_file, &key_b)),
            env: vec![("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into())],
            ..Default::default()
        },
    )
    .await;
    drop((placeholder_a, placeholder_b));
    let platforms = [
        Actor::system("platform-a").await,
        Actor::system("platform-b").await,
    ];
    let sealer = Arc::new(Sealer::new(&gw.url, &gw.client(), &platforms[0], A1).await);
    let key_a = KeyFile::generate();
    std::fs::write(key_a.path(), sealer.journal.to_private_json()).unwrap();
    let url = format!(
        "{}/v1/clinics/{B1}/journal-keys/{}",
        gw.url,
        key_b.keys.device_id()
    );
    let response = platforms[1]
        .call(
            &gw.client(),
            Method::PUT,
            &url,
            Some(&device_body(&key_b.keys)),
        )
        .await;
    assert_eq!(response.status(), 201);
    let patient = Arc::new(Actor::patient(SYNTHETIC_FNR).await);
    sealer.device(&patient).await;
    let bench = Bench {
        gw,
        platforms,
        patient,
        sealer,
    };
    let mut db = connect_database(bench.gw.data_dir.path(), bench.gw.database()).await;
    let with_storage = |text: String| {
        text + &format!(
            "\n[storage]\ndata_dir = \"{}\"\n",
            bench.gw.data_dir.path().display()
        )
    };

    // 1. Both up.
    bench.store(episodes, messages).await;
    let rows_a = waiting(&mut db, A1).await;
    let (epj_a, epj_b) = (
        Epj::for_client("icbt-gateway"),
        Epj::for_client("gateway-b"),
    );
    let exporter = ExporterProcess::start(
        &bench.gw,
        &with_storage(config(&epj_a, &epj_b, &key_a, &key_b)),
        &["run"],
    );
    let wall_a_up = drained(&mut db, A1, &exporter).await;
    drained(&mut db, B1, &exporter).await;
    drop(exporter);
    let (a_up, bundles_a_up) = engine_rate(&epj_a).await;
    let (b_up, _) = engine_rate(&epj_b).await;
    drop((epj_a, epj_b));

    // 2. B down, then back.
    bench.store(episodes, messages).await;
    let (epj_a, epj_b) = (
        Epj::for_client("icbt-gateway"),
        Epj::for_client("gateway-b"),
    );
    epj_b.faults(true, 0).await;
    let exporter = ExporterProcess::start(
        &bench.gw,
        &with_storage(config(&epj_a, &epj_b, &key_a, &key_b)),
        &["run"],
    );
    let wall_a_down = drained(&mut db, A1, &exporter).await;
    let (a_down, bundles_a_down) = engine_rate(&epj_a).await;
    let b_waiting = waiting(&mut db, B1).await;
    epj_b.faults(false, 0).await;
    let catch_up = drained(&mut db, B1, &exporter).await;
    drop(exporter);

    println!(
        "work per phase: {episodes} episodes x {messages} messages at each of 2 clinics ({rows_a} outbox rows for hospital A); 2 cores shared by client, gateway, exporter, PostgreSQL and both engines"
    );
    println!(
        "both up: hospital A {a_up:.0} bundles/s as A's engine saw it ({bundles_a_up:.0} bundles, {:.2} s wall from exporter start), hospital B {b_up:.0} bundles/s",
        wall_a_up.as_secs_f64()
    );
    println!(
        "B down: hospital A {a_down:.0} bundles/s ({bundles_a_down:.0} bundles, {:.2} s wall); {b_waiting} of B's rows waited, uncharged, and arrived {:.2} s after B returned",
        wall_a_down.as_secs_f64(),
        catch_up.as_secs_f64()
    );
    println!(
        "hospital A with B down / with both up: {:.0} % (goal: at least 80 %)",
        a_down / a_up * 100.0
    );
}
