//! Messaging figures on PostgreSQL, all from one run (`scripts/bench/messaging`):
//! durable sends per second through the whole stack (TLS, token + DPoP, policy, commit) at
//! 1, 8 and 64 concurrent clients beside plain INSERT+COMMIT of the same row from sqlx at
//! the same concurrency; p50/p99 send latency; push delivery p99 to 1 000 SSE subscribers;
//! RSS of the gateway holding 10 000 idle SSE connections.
//!
//! Needs `E2E_POSTGRES_URL` and, for meaningful numbers, `E2E_GATEWAY_BIN` pointing at a
//! release build. Client and server share this machine's cores. `ICBT_BENCH_PARTS` (a
//! comma-separated subset of `sends,push,idle`) runs only those parts, for profiling one.

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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, TestDatabase};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

const HPR: &str = "565501872";
const RUN: Duration = Duration::from_secs(6);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn client_for(gw: &Gateway, http1_only: bool) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&gw.certificate_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .pool_max_idle_per_host(512);
    if http1_only {
        builder.http1_only()
    } else {
        builder
    }
    .build()
    .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sealed sends queued per client: sealing (ECDH per recipient, ES256) happens before
/// the timed run, so the run measures the gateway, not the client's crypto on the same
/// cores.
type Queue = Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>;

async fn presealed(sealer: &Sealer, therapist: &Actor, episode: Uuid, n: usize) -> Queue {
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
        let text = format!("{i:>2048}");
        bodies.push((
            path.clone(),
            sealer.body(therapist, &path, "feedback", &text).await,
        ));
    }
    Arc::new(std::sync::Mutex::new(bodies))
}

async fn sends(
    gw: &Gateway,
    therapist: &Arc<Actor>,
    queues: Vec<Queue>,
) -> (f64, Duration, Duration) {
    let clients = queues.len();
    let http = client_for(gw, clients > 1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for queue in queues {
        let (http, therapist, stop, url) = (
            http.clone(),
            therapist.clone(),
            stop.clone(),
            gw.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some((path, body)) = queue.lock().unwrap().pop() else {
                    println!("a client ran out of sealed messages before the run ended");
                    break;
                };
                let target = format!("{url}{path}");
                let started = Instant::now();
                let response = therapist
                    .call(&http, Method::PUT, &target, Some(&body))
                    .await;
                assert_eq!(response.status(), 201);
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (
        all.len() as f64 / RUN.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

async fn raw_inserts(url: &str, clients: usize, body_bytes: usize) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap())
        .connect(url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_messages (episode_id TEXT, seq BIGINT, id TEXT PRIMARY KEY, kind TEXT, \
        sender_kind TEXT, sender_ref TEXT, sender_device TEXT, recipients TEXT, content_type TEXT, body BYTEA, \
        request_hash TEXT, created_at_ms BIGINT)")
        .execute(&pool)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, stop, count) = (pool.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("INSERT INTO raw_messages VALUES ($1, 1, $2, 'feedback', 'clinician', '565501872', 'bench', \
                    '[\"k1\",\"k2\",\"journal\"]', 'application/jose+json', $3, 'hash', 0)")
                    .bind(Uuid::new_v4().to_string())
                    .bind(Uuid::new_v4().to_string())
                    .bind(vec![7u8; body_bytes])
                    .execute(&pool)
                    .await
                    .unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / RUN.as_secs_f64()
}

async fn open_streams(gw: &Gateway, who: &Actor, n: usize) -> Vec<reqwest::Response> {
    let url = format!("{}/v1/stream", gw.url);
    let mut streams = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|_| {
            let http = client_for(gw, true);
            let url = url.clone();
            async move { who.call(&http, Method::GET, &url, None).await }
        }))
        .await;
        for response in opened {
            assert_eq!(response.status(), 200);
            streams.push(response);
        }
    }
    streams
}

fn part(name: &str) -> bool {
    std::env::var("ICBT_BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|p| p == name))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let idps = IdentityProviders::shared();
    let options = GatewayOptions {
        config_toml: Some(idps.gateway_config()),
        env: vec![
            ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            ("ICBT_TELEMETRY__LOG_FILTER".into(), "warn".into()),
            ("ICBT_STORAGE__MAX_CONNECTIONS".into(), "24".into()),
            ("ICBT_SERVER__CONCURRENCY_LIMIT".into(), "20000".into()),
        ],
        ..Default::default()
    };
    let gw = Gateway::start_with(Backend::Postgres, options).await;
    let platform = Actor::system("icbt-platform").await;
    let therapist = Arc::new(Actor::therapist("01018512528", HPR).await);
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let http = gw.client();
    let mut episodes = Vec::new();
    for _ in 0..64 {
        let id = Uuid::new_v4();
        let body =
            json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "bench" });
        platform
            .call(
                &http,
                Method::PUT,
                &format!("{}/v1/episodes/{id}", gw.url),
                Some(&body),
            )
            .await;
        let team = json!({ "members": [{ "hpr_number": HPR, "role": "therapist" }] });
        platform
            .call(
                &http,
                Method::PUT,
                &format!("{}/v1/episodes/{id}/care-team", gw.url),
                Some(&team),
            )
            .await;
        episodes.push(id);
    }
    let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
    sealer.device(&therapist).await;
    sealer.device(&patient).await;
    let sample = presealed(&sealer, &therapist, episodes[0], 1).await;
    let envelope_bytes = URL_SAFE_NO_PAD
        .decode(sample.lock().unwrap()[0].1["envelope"].as_str().unwrap())
        .unwrap()
        .len();
    let raw_db = TestDatabase::create().await;
    println!("gateway idle RSS: {} KiB", rss_kib(gw.pid()));
    println!(
        "a 2 KiB message sealed to 3 keys (patient, therapist, journal) is a {envelope_bytes}-byte envelope"
    );
    if part("sends") {
        println!("clients  sends/s  p50 ms  p99 ms  raw INSERT+COMMIT/s  ratio");
    }
    for clients in [1, 8, 64].into_iter().filter(|_| part("sends")) {
        let per_client = 14_000 / clients + 200;
        let mut queues = Vec::new();
        for c in 0..clients {
            queues.push(
                presealed(
                    &sealer,
                    &therapist,
                    episodes[c % episodes.len()],
                    per_client,
                )
                .await,
            );
        }
        let (rate, p50, p99) = sends(&gw, &therapist, queues).await;
        let raw = raw_inserts(&raw_db.url, clients, envelope_bytes).await;
        println!(
            "{clients:>7}  {rate:>7.0}  {:>6.2}  {:>6.2}  {raw:>19.0}  {:>4.0} %",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            100.0 * rate / raw
        );
    }

    if part("push") {
        push(&gw, &sealer, &therapist, &patient, episodes[0]).await;
    }
    if part("idle") {
        idle(&gw, &therapist).await;
    }
    drop(raw_db);
}

/// 1 000 subscribers, 30 messages; latency from the send's start to each receipt.
async fn push(gw: &Gateway, sealer: &Sealer, therapist: &Actor, patient: &Actor, episode: Uuid) {
    let subscribers = open_streams(gw, therapist, 1000).await;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Instant,
    >::new()));
    let mut readers = Vec::new();
    for mut response in subscribers {
        let (latencies, sent_at) = (latencies.clone(), sent_at.clone());
        readers.push(tokio::spawn(async move {
            let mut buffer = String::new();
            let mut seen = 0;
            while seen < 30 {
                let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(Duration::from_secs(20), response.chunk()).await
                else {
                    break;
                };
                let now = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if let Some(text) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                        let id = value["message"]["id"].as_str().unwrap().to_owned();
                        if let Some(start) = sent_at.lock().unwrap().get(&id) {
                            latencies.lock().unwrap().push(now - *start);
                        }
                        seen += 1;
                    }
                }
            }
        }));
    }
    let sender_http = client_for(gw, false);
    let mut pushes = Vec::new();
    for _ in 0..30 {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{episode}/messages/{id}");
        pushes.push((
            id,
            sealer
                .body(patient, &path, "message", &"p".repeat(512))
                .await,
        ));
    }
    for (id, body) in pushes {
        sent_at
            .lock()
            .unwrap()
            .insert(id.to_string(), Instant::now());
        patient
            .call(
                &sender_http,
                Method::PUT,
                &format!("{}/v1/episodes/{episode}/messages/{id}", gw.url),
                Some(&body),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in readers {
        let _ = r.await;
    }
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    println!(
        "push to 1000 subscribers: {} deliveries, p50 {:.1} ms, p99 {:.1} ms",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1000.0,
        percentile(&all, 0.99).as_secs_f64() * 1000.0
    );
}

async fn idle(gw: &Gateway, therapist: &Actor) {
    let before = rss_kib(gw.pid());
    let idle = open_streams(gw, therapist, 10_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(gw.pid());
    println!(
        "10000 idle SSE connections: gateway RSS {after} KiB ({} KiB before, {:.1} KiB each)",
        before,
        (after.saturating_sub(before)) as f64 / 10_000.0
    );
    drop(idle);
}
