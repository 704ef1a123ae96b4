//! Messaging figures on PostgreSQL, all from one run (`scripts/bench/messaging`):
//! durable sends per second through the whole stack (TLS, token + DPoP, policy, commit) at
//! 1, 8 and 64 concurrent clients beside plain INSERT+COMMIT of the same row from sqlx at
//! the same concurrency; p50/p99 send latency; push delivery p99 to 1 000 SSE subscribers;
//! RSS of the gateway holding 10 000 idle SSE connections; RSS and open file descriptors
//! with 1 000 principals each at the stream cap and refused one more.
//!
//! Needs `E2E_POSTGRES_URL` and, for meaningful numbers, `E2E_GATEWAY_BIN` pointing at a
//! release build. Client and server share this machine's cores. `ICBT_BENCH_PARTS` (a
//! comma-separated subset of `sends,push,idle,cap`) runs only those parts, for profiling one;
//! `ICBT_BENCH_CLIENTS` (e.g. `64`) runs the sends at those concurrencies only;
//! `ICBT_BENCH_DETAIL=1` prints each pushed message's answer time and first, median and
//! last delivery.

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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::baseline::{raw_database, raw_sends};
use icbt_e2e::figures::{Figures, distribution, memory, ms, national_ids, percentile};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::sse::{message_ids, subscribe};
use icbt_e2e::synapse::{Device, Synapse};
use icbt_e2e::{
    Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, TestDatabase, bench_limits_lifted,
};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

const HPR: &str = "565501872";
const RUN: Duration = Duration::from_secs(6);

fn client_for(gw: &Gateway, http1_only: bool) -> reqwest::Client {
    let mut config = gw.tls_config();
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
            if response.status() != 200 {
                let status = response.status();
                let problem = response.text().await.unwrap_or_default();
                let logs = gw.logs();
                let tail = &logs[logs.len().saturating_sub(20)..];
                panic!(
                    "a stream was refused with {status}: {problem}\ngateway log:\n{}",
                    tail.join("\n")
                );
            }
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
        // One therapist holds the 1 000 and 10 000 streams of the push figures.
        env: [
            bench_limits_lifted(),
            vec![("ICBT_SERVER__CONCURRENCY_LIMIT".into(), "20000".into())],
        ]
        .concat(),
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
    // The raw program stores these very bytes: ciphertext does not compress, so a
    // filler of one repeated byte would let PostgreSQL keep the raw row small and inline.
    let envelope = Arc::new(
        URL_SAFE_NO_PAD
            .decode(sample.lock().unwrap()[0].1["envelope"].as_str().unwrap())
            .unwrap(),
    );
    let envelope_bytes = envelope.len();
    let raw_db = TestDatabase::create().await;
    let raw_episodes = raw_database(&raw_db.url, episodes.len()).await;
    let mut figures = Figures::new("messaging");
    figures.put("envelope_bytes", envelope_bytes);
    println!("gateway idle RSS: {} KiB", memory(gw.pid()).0);
    println!(
        "a 2 KiB message sealed to 3 keys (patient, therapist, journal) is a {envelope_bytes}-byte envelope"
    );
    if part("sends") {
        println!(
            "clients  sends/s  p50 ms  p99 ms  raw send tx/s  ratio   (raw: the same rows, one sqlx transaction each)"
        );
    }
    let levels: Vec<usize> = std::env::var("ICBT_BENCH_CLIENTS").map_or(vec![1, 8, 64], |v| {
        v.split(',').map(|n| n.trim().parse().unwrap()).collect()
    });
    let mut rows = Vec::new();
    for clients in levels.into_iter().filter(|_| part("sends")) {
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
        let raw = raw_sends(&raw_db.url, clients, &raw_episodes, &envelope, RUN).await;
        println!(
            "{clients:>7}  {rate:>7.0}  {:>6.2}  {:>6.2}  {raw:>13.0}  {:>4.0} %",
            ms(p50),
            ms(p99),
            100.0 * rate / raw
        );
        rows.push(json!({ "clients": clients, "rate": rate, "p50_ms": ms(p50), "p99_ms": ms(p99), "raw_rate": raw }));
        figures.put("sends", rows.clone());
    }

    // The peer starts once the raw program is done: the raw program's 64 connections,
    // the gateway's and Synapse's together would pass PostgreSQL's default of 100. Its
    // messages carry the envelope's own text, so both servers move the same bytes.
    let envelope_text = URL_SAFE_NO_PAD.encode(envelope.as_slice());
    let peer = match Synapse::python() {
        Some(python) if part("synapse") => Some(Peer::start(&python, episodes.len()).await),
        _ => {
            println!(
                "Synapse: not run (scripts/bench/messaging installs it and sets ICBT_SYNAPSE_PYTHON)"
            );
            None
        }
    };
    if let Some(peer) = &peer {
        println!(
            "Synapse {} (one process, no workers, plain HTTP; the same 2 cores shared by client, servers and PostgreSQL)",
            peer.synapse.version
        );
        figures.put("synapse_version", peer.synapse.version.as_str());
        println!("clients  Synapse sends/s  p50 ms  p99 ms  gateway/Synapse");
        for i in 0..rows.len() {
            let row = &mut rows[i];
            let clients = usize::try_from(row["clients"].as_u64().unwrap()).unwrap();
            let (synapse, latencies) = peer
                .synapse
                .send_rate(&peer.sender, &peer.rooms, clients, &envelope_text, RUN)
                .await;
            println!(
                "{clients:>7}  {synapse:>15.0}  {:>6.2}  {:>6.2}  {:>14.1}x",
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                row["rate"].as_f64().unwrap() / synapse
            );
            row["synapse_rate"] = json!(synapse);
            row["synapse_p99_ms"] = json!(ms(percentile(&latencies, 0.99)));
            figures.put("sends", rows.clone());
        }
    }
    if let Some(peer) = &peer
        && part("push")
    {
        const LISTENERS: usize = 100;
        let ours = push(&gw, &sealer, (&therapist, &patient), episodes[0], LISTENERS).await;
        let listeners = peer.listeners(LISTENERS).await;
        let theirs = peer
            .synapse
            .push(
                &peer.patient,
                &listeners,
                &peer.rooms[0],
                MESSAGES,
                &envelope_text[..envelope_text.len().min(2048)],
            )
            .await;
        println!(
            "push to {LISTENERS} listeners, send to delivery: the gateway's event stream p50 {:.1} ms, p99 {:.1} ms; \
             Synapse's /sync long-poll p50 {:.1} ms, p99 {:.1} ms ({} deliveries): a {:.2} ratio of p99s",
            ms(percentile(&ours, 0.5)),
            ms(percentile(&ours, 0.99)),
            ms(percentile(&theirs, 0.5)),
            ms(percentile(&theirs, 0.99)),
            theirs.len(),
            ms(percentile(&ours, 0.99)) / ms(percentile(&theirs, 0.99)),
        );
        let mut synapse = distribution(&theirs);
        synapse["deliveries"] = json!(theirs.len());
        figures.put(
            "push_beside_synapse",
            json!({ "listeners": LISTENERS, "gateway": distribution(&ours), "synapse": synapse }),
        );
    }
    drop(peer);

    if part("push") {
        let deliveries = push(&gw, &sealer, (&therapist, &patient), episodes[0], 1000).await;
        figures.put("push_1000_subscribers", distribution(&deliveries));
    }
    if part("idle") {
        idle(&gw, &therapist).await;
    }
    drop(raw_db);
    if part("cap") {
        drop(gw);
        stream_cap().await;
    }
}

/// Synapse set up as the gateway is: a therapist who sends into one room per episode,
/// each shared with the patient.
struct Peer {
    synapse: Synapse,
    sender: Device,
    patient: Device,
    rooms: Vec<String>,
}

impl Peer {
    async fn start(python: &std::path::Path, episodes: usize) -> Self {
        let mut synapse = Synapse::start(python).await;
        let sender = synapse.user("therapist", true).await;
        let patient = synapse.user("patient", false).await;
        synapse.unlimit(&sender, &sender.user).await;
        synapse.unlimit(&sender, &patient.user).await;
        let mut rooms = Vec::with_capacity(episodes);
        for _ in 0..episodes {
            rooms.push(synapse.room(&sender, &[&patient]).await);
        }
        Self {
            synapse,
            sender,
            patient,
            rooms,
        }
    }

    /// `n` devices of the therapist: the listeners beside the gateway's `n` streams.
    async fn listeners(&self, n: usize) -> Vec<Device> {
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            devices.push(self.synapse.login("therapist").await);
        }
        devices
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// 1 000 patients each hold `server.streams_per_principal` (10, the default) open streams,
/// then each asks for one more and is refused with 429: the gateway's RSS and open file
/// descriptors before, at the cap, and after the refusals.
async fn stream_cap() {
    const PRINCIPALS: usize = 1_000;
    const CAP: usize = 10;
    let idps = IdentityProviders::shared();
    let options = GatewayOptions {
        config_toml: Some(idps.gateway_config()),
        env: vec![
            ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            ("ICBT_SERVER__HANDSHAKES_PER_ADDRESS".into(), "0".into()),
            (
                "ICBT_SERVER__UNAUTHENTICATED_PER_ADDRESS".into(),
                "0".into(),
            ),
            ("ICBT_TELEMETRY__LOG_FILTER".into(), "warn".into()),
            ("ICBT_SERVER__CONCURRENCY_LIMIT".into(), "20000".into()),
        ],
        ..Default::default()
    };
    let gw = Gateway::start_with(Backend::Postgres, options).await;
    let pids = national_ids(0, PRINCIPALS);
    let tokens: Vec<String> = pids.iter().map(|p| idps.patient_token(p, 3600)).collect();
    let url = format!("{}/v1/stream", gw.url);
    let open = |token: String| {
        let http = client_for(&gw, true);
        let url = url.clone();
        async move { http.get(&url).bearer_auth(token).send().await.unwrap() }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, fds_before) = (memory(gw.pid()).0, open_fds(gw.pid()));
    let mut held = Vec::with_capacity(PRINCIPALS * CAP);
    for chunk in tokens.chunks(20) {
        let opened = futures_util::future::join_all(
            chunk
                .iter()
                .flat_map(|t| std::iter::repeat_n(t.clone(), CAP))
                .map(open),
        )
        .await;
        for response in opened {
            assert_eq!(response.status(), 200, "a stream within the cap");
            held.push(response);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_cap, fds_cap) = (memory(gw.pid()).0, open_fds(gw.pid()));
    let mut refused = 0;
    for chunk in tokens.chunks(100) {
        let answers = futures_util::future::join_all(chunk.iter().cloned().map(open)).await;
        refused += answers.iter().filter(|r| r.status() == 429).count();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, fds_after) = (memory(gw.pid()).0, open_fds(gw.pid()));
    println!(
        "stream cap: {PRINCIPALS} principals x {CAP} streams = {} open; {refused} of {PRINCIPALS} one-more refused with 429",
        held.len()
    );
    println!(
        "  gateway RSS {rss_before} KiB before, {rss_cap} KiB at the cap ({:.1} KiB a stream), {rss_after} KiB after the refusals",
        (rss_cap.saturating_sub(rss_before)) as f64 / held.len() as f64
    );
    println!(
        "  gateway open file descriptors {fds_before} before, {fds_cap} at the cap, {fds_after} after the refusals"
    );
    drop(held);
}

/// Messages pushed to the subscribers (after one to warm up).
const MESSAGES: usize = 30;

/// `listeners` subscribers, 30 messages; latency from the send's start to each receipt, and
/// the send's own answer time.
async fn push(
    gw: &Gateway,
    sealer: &Sealer,
    (therapist, patient): (&Actor, &Actor),
    episode: Uuid,
    listeners: usize,
) -> Vec<Duration> {
    use tokio::io::AsyncReadExt;
    let mut subscribers = Vec::new();
    for _ in 0..listeners {
        subscribers.push(
            subscribe(
                gw,
                &therapist.credentials("GET", &format!("{}/v1/stream", gw.url)),
            )
            .await,
        );
    }
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Instant,
    >::new()));
    let mut readers = Vec::new();
    for mut tls in subscribers {
        let (latencies, sent_at) = (latencies.clone(), sent_at.clone());
        readers.push(tokio::spawn(async move {
            let mut buffer = Vec::with_capacity(16 * 1024);
            let mut seen = 0;
            while seen < MESSAGES + 1 {
                let mut chunk = [0u8; 16 * 1024];
                let Ok(Ok(n @ 1..)) =
                    tokio::time::timeout(Duration::from_secs(20), tls.read(&mut chunk)).await
                else {
                    break;
                };
                let now = Instant::now();
                buffer.extend_from_slice(&chunk[..n]);
                for id in message_ids(&mut buffer) {
                    if let Some(start) = sent_at.lock().unwrap().get(&id) {
                        latencies.lock().unwrap().push((id.clone(), now - *start));
                    }
                    seen += 1;
                }
            }
            // Kept open until every reader is done: closing a thousand streams would
            // load the gateway while the last message is still being delivered.
            tls
        }));
    }
    let sender_http = client_for(gw, false);
    let mut pushes = Vec::new();
    // The first message warms up (statements prepared on the hub's connections); it is
    // delivered and not counted.
    for _ in 0..=MESSAGES {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{episode}/messages/{id}");
        pushes.push((
            id,
            sealer
                .body(patient, &path, "message", &"p".repeat(512))
                .await,
        ));
    }
    let mut answered = Vec::new();
    for (n, (id, body)) in pushes.into_iter().enumerate() {
        let start = Instant::now();
        if n > 0 {
            sent_at.lock().unwrap().insert(id.to_string(), start);
        }
        let response = patient
            .call(
                &sender_http,
                Method::PUT,
                &format!("{}/v1/episodes/{episode}/messages/{id}", gw.url),
                Some(&body),
            )
            .await;
        assert_eq!(response.status(), 201);
        if n > 0 {
            answered.push(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut open = Vec::new();
    for r in readers {
        open.push(r.await.unwrap());
    }
    drop(open);
    let mut per_message: std::collections::BTreeMap<Instant, Vec<Duration>> =
        std::collections::BTreeMap::new();
    for (id, d) in latencies.lock().unwrap().iter() {
        per_message
            .entry(sent_at.lock().unwrap()[id])
            .or_default()
            .push(*d);
    }
    if std::env::var_os("ICBT_BENCH_DETAIL").is_some() {
        for (i, mut ds) in per_message.into_values().enumerate() {
            ds.sort();
            println!(
                "message {i:>2}: answered {:.1} ms, first {:.1} ms, p50 {:.1} ms, last {:.1} ms",
                answered[i].as_secs_f64() * 1000.0,
                percentile(&ds, 0.0).as_secs_f64() * 1000.0,
                percentile(&ds, 0.5).as_secs_f64() * 1000.0,
                percentile(&ds, 1.0).as_secs_f64() * 1000.0
            );
        }
    }
    answered.sort();
    let mut all: Vec<Duration> = latencies.lock().unwrap().iter().map(|(_, d)| *d).collect();
    all.sort();
    println!(
        "push to {listeners} subscribers: {} deliveries, first {:.1} ms, p50 {:.1} ms, p99 {:.1} ms (the send answered in p50 {:.1} ms)",
        all.len(),
        ms(percentile(&all, 0.0)),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&answered, 0.5)),
    );
    all
}

async fn idle(gw: &Gateway, therapist: &Actor) {
    let before = memory(gw.pid()).0;
    let idle = open_streams(gw, therapist, 10_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory(gw.pid()).0;
    println!(
        "10000 idle SSE connections: gateway RSS {after} KiB ({} KiB before, {:.1} KiB each)",
        before,
        (after.saturating_sub(before)) as f64 / 10_000.0
    );
    drop(idle);
}
