//! Realistic push on PostgreSQL (`scripts/bench/push`): 5 000 episodes, each with its own
//! patient and one of 100 therapists (50 episodes each). Every patient holds one event
//! stream and every therapist 50, so 10 000 streams are open. Sends arrive at a steady
//! 100 a second, spread over the episodes, each from the episode's therapist; each is
//! delivered to the patient's stream and to the therapist's 50. Reported: the p50 and p99
//! from the send's start (before its commit) to each delivery, beside four raw round
//! trips at the same rate on the same PostgreSQL in the same run: a bare `NOTIFY`; a
//! `NOTIFY` in a transaction that commits a send's rows; that, followed by what the
//! receiving side must commit before it may deliver (the message read, 51 access
//! records); and that again while the access records are added to the log's tree every
//! second, as the gateway's sequencer does. To tell apart where a delivery's time goes,
//! it also reports, per send, the first and the last of its 51 deliveries (the spread is
//! the fan-out), and the time from the send's answer (its commit acknowledged) to each
//! delivery. The sender's connection
//! and the raw programs' connections are made before their timed runs.
//!
//! Needs `E2E_POSTGRES_URL` and, for meaningful numbers, `E2E_GATEWAY_BIN` pointing at a
//! release build. Client, gateway and PostgreSQL share this machine's cores.
//! `ICBT_BENCH_SECONDS` sets the length of the timed run (30 by default);
//! `ICBT_BENCH_GATEWAY_ENV` adds gateway settings, space-separated `ICBT_…=value` pairs
//! (the harness passes no other `ICBT_` variable through), for experiments such as
//! `ICBT_AUDIT__CHECKPOINT_INTERVAL_MS=600000` (the sequencer idle during the run).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::too_many_lines
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::baseline::{RoundTrip, raw_database, round_trips};
use icbt_e2e::figures::{Figures, distribution, memory, ms, national_ids, percentile, quantiles};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::sse::{message_ids, subscribe};
use icbt_e2e::{Backend, Gateway, GatewayOptions, TestDatabase, bench_limits_lifted};
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

const EPISODES: usize = 5_000;
const THERAPISTS: usize = 100;
const PER_THERAPIST: usize = EPISODES / THERAPISTS;
const RATE: u32 = 100;

/// Runs `jobs` with at most `width` at a time.
async fn in_parallel<F: std::future::Future<Output = ()>>(width: usize, jobs: Vec<F>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(jobs)
        .buffer_unordered(width)
        .collect::<Vec<()>>()
        .await;
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Deliveries = Arc<Mutex<Vec<(String, Instant)>>>;

/// Reads `stream` until `until`, recording when each message arrived.
fn reader(
    mut stream: Stream,
    deliveries: Deliveries,
    until: Instant,
) -> tokio::task::JoinHandle<Stream> {
    tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Ok(n @ 1..)) = tokio::time::timeout(left, stream.read(&mut chunk)).await else {
                break;
            };
            let now = Instant::now();
            buffer.extend_from_slice(&chunk[..n]);
            let ids = message_ids(&mut buffer);
            if !ids.is_empty() {
                let mut deliveries = deliveries.lock().unwrap();
                deliveries.extend(ids.into_iter().map(|id| (id, now)));
            }
        }
        stream
    })
}

/// The run's latencies, each sorted.
struct Timed {
    /// From a send's start to each of its deliveries.
    from_start: Vec<Duration>,
    /// From a send's start to its answer.
    answered: Vec<Duration>,
    /// From a send's start to its first delivery, and to its last.
    first: Vec<Duration>,
    last: Vec<Duration>,
    /// From a send's answer to each of its deliveries that came after it.
    after_answer: Vec<Duration>,
    /// Deliveries that came before their send's answer.
    before_answer: usize,
}

impl Timed {
    fn of(sends: &[(String, Instant, Instant)], deliveries: &[(String, Instant)]) -> Self {
        let sends: HashMap<&str, (Instant, Instant)> = sends
            .iter()
            .map(|(id, start, answer)| (id.as_str(), (*start, *answer)))
            .collect();
        let mut timed = Self {
            from_start: Vec::new(),
            answered: sends.values().map(|(s, a)| *a - *s).collect(),
            first: Vec::new(),
            last: Vec::new(),
            after_answer: Vec::new(),
            before_answer: 0,
        };
        let mut span: HashMap<&str, (Instant, Instant)> = HashMap::new();
        for (id, at) in deliveries {
            let Some((start, answer)) = sends.get(id.as_str()) else {
                continue;
            };
            timed.from_start.push(*at - *start);
            match at.checked_duration_since(*answer) {
                Some(after) => timed.after_answer.push(after),
                None => timed.before_answer += 1,
            }
            let seen = span.entry(id.as_str()).or_insert((*at, *at));
            seen.0 = seen.0.min(*at);
            seen.1 = seen.1.max(*at);
        }
        for (id, (first, last)) in span {
            let start = sends[id].0;
            timed.first.push(first - start);
            timed.last.push(last - start);
        }
        for v in [
            &mut timed.from_start,
            &mut timed.answered,
            &mut timed.first,
            &mut timed.last,
            &mut timed.after_answer,
        ] {
            v.sort();
        }
        timed
    }
}

/// The pairs of `ICBT_BENCH_GATEWAY_ENV`.
fn extra_gateway_env() -> Vec<(String, String)> {
    let pairs = std::env::var("ICBT_BENCH_GATEWAY_ENV").unwrap_or_default();
    pairs
        .split_whitespace()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ICBT_BENCH_GATEWAY_ENV: {pair} is not KEY=value"));
            println!("gateway setting: {key}={value}");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: u64 = std::env::var("ICBT_BENCH_SECONDS").map_or(30, |s| s.parse().unwrap());
    let idps = IdentityProviders::shared();
    let options = GatewayOptions {
        config_toml: Some(idps.gateway_config()),
        // Each therapist holds 50 streams; thousands connect from 127.0.0.1.
        env: [bench_limits_lifted(), extra_gateway_env()].concat(),
        ..Default::default()
    };
    let gw = Gateway::start_with(Backend::Postgres, options).await;
    let http = gw.client();
    let platform = Actor::system("icbt-platform").await;
    let therapist_ids = national_ids(20_000, THERAPISTS);
    let mut therapists = Vec::with_capacity(THERAPISTS);
    for (t, pid) in therapist_ids.iter().enumerate() {
        therapists.push(Arc::new(
            Actor::therapist(pid, &(100_000_000 + t).to_string()).await,
        ));
    }
    let patients = national_ids(0, EPISODES);
    let episodes: Vec<Uuid> = (0..EPISODES).map(|_| Uuid::new_v4()).collect();
    let setup = Instant::now();
    let jobs = episodes.iter().enumerate().map(|(e, id)| {
        let (http, platform, url) = (&http, &platform, &gw.url);
        let body =
            json!({ "patient": patients[e], "organisation": CLINIC_ORG, "programme": "bench" });
        let hpr = (100_000_000 + e / PER_THERAPIST).to_string();
        let team = json!({ "members": [{ "hpr_number": hpr, "role": "therapist" }] });
        async move {
            let episode = format!("{url}/v1/episodes/{id}");
            let made = platform
                .call(http, Method::PUT, &episode, Some(&body))
                .await;
            assert!(made.status().is_success(), "episode: {}", made.status());
            let care = format!("{episode}/care-team");
            let set = platform.call(http, Method::PUT, &care, Some(&team)).await;
            assert!(set.status().is_success(), "care team: {}", set.status());
        }
    });
    in_parallel(32, jobs.collect()).await;
    println!(
        "{EPISODES} episodes and their care teams set up in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // The sends, sealed before the run (the client's crypto would otherwise share the
    // cores with what is measured): send k goes to an episode far from send k-1's.
    let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
    for t in &therapists {
        sealer.device(t).await;
    }
    let total = usize::try_from(u64::from(RATE) * seconds).unwrap();
    let mut sends = Vec::with_capacity(total);
    for k in 0..total {
        let e = (k * 2_459) % EPISODES;
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{}/messages/{id}", episodes[e]);
        let therapist = therapists[e / PER_THERAPIST].clone();
        let body = sealer
            .body(&therapist, &path, "feedback", &"f".repeat(512))
            .await;
        sends.push((id.to_string(), path, therapist, body));
    }
    let envelope = Arc::new(
        URL_SAFE_NO_PAD
            .decode(sends[0].3["envelope"].as_str().unwrap())
            .unwrap(),
    );

    let opened = Instant::now();
    let mut streams = Vec::with_capacity(2 * EPISODES);
    for pid in &patients {
        let token = idps.patient_token(pid, 3600);
        streams.push(subscribe(&gw, &[("authorization", format!("Bearer {token}"))]).await);
    }
    let stream_url = format!("{}/v1/stream", gw.url);
    for t in &therapists {
        for _ in 0..PER_THERAPIST {
            streams.push(subscribe(&gw, &t.credentials("GET", &stream_url)).await);
        }
    }
    println!(
        "{} streams open in {:.1} s; gateway RSS {} KiB",
        streams.len(),
        opened.elapsed().as_secs_f64(),
        memory(gw.pid()).0
    );

    // When each send started and was answered, and when each delivery arrived: matched
    // up after the run, so the readers do no more than read.
    let deliveries: Deliveries = Arc::default();
    let sends_timed: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let until = Instant::now() + Duration::from_secs(seconds + 15);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| reader(s, deliveries.clone(), until))
        .collect();
    let sender = gw.client();
    // Its connection is made before the timed run, so that no send pays for a handshake.
    let warm = sender
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert!(warm.status().is_success(), "health: {}", warm.status());
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    let mut tasks = Vec::with_capacity(total);
    for (id, path, therapist, body) in sends {
        tick.tick().await;
        let (sender, sends_timed, url) = (sender.clone(), sends_timed.clone(), gw.url.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let response = therapist
                .call(&sender, Method::PUT, &format!("{url}{path}"), Some(&body))
                .await;
            assert_eq!(response.status(), 201, "a send");
            sends_timed
                .lock()
                .unwrap()
                .push((id, start, Instant::now()));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every delivery is in once each stream has read for a while after the last send.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expected = total * (1 + PER_THERAPIST);
    let rss = memory(gw.pid()).0;
    drop(readers);
    let timed = Timed::of(&sends_timed.lock().unwrap(), &deliveries.lock().unwrap());
    let (ours, answered) = (&timed.from_start, &timed.answered);
    let delivered = ours.len();
    drop(gw);

    // The baselines, at the same rate on the same PostgreSQL, after the gateway has
    // stopped.
    let raw_db = TestDatabase::create().await;
    let raw_episodes = raw_database(&raw_db.url, 64).await;
    let pace = (RATE, Duration::from_secs(seconds));
    let readers = u32::try_from(1 + PER_THERAPIST).unwrap();
    let mut baselines = Vec::new();
    for what in [
        RoundTrip::Notify,
        RoundTrip::SendAndNotify,
        RoundTrip::SendNotifyAndLogReads(readers),
        RoundTrip::SendNotifyLogReadsAndSequence(readers),
    ] {
        baselines.push(round_trips(&raw_db.url, what, pace, &raw_episodes, &envelope).await);
    }
    let [bare, with_rows, logged, sequenced] = &baselines[..] else {
        unreachable!()
    };

    println!(
        "{total} sends at {RATE}/s over {EPISODES} episodes, 10000 streams (2 cores shared by client, gateway and PostgreSQL):"
    );
    println!(
        "  delivered {delivered} of {expected}; send to delivery p50 {:.1} ms, p99 {:.1} ms (the send answered p50 {:.1} ms, p99 {:.1} ms); gateway RSS {rss} KiB",
        ms(percentile(ours, 0.5)),
        ms(percentile(ours, 0.99)),
        ms(percentile(answered, 0.5)),
        ms(percentile(answered, 0.99)),
    );
    println!(
        "  per send, its first delivery p50 {:.1} ms, p99 {:.1} ms; its last p50 {:.1} ms, p99 {:.1} ms; from the answer to a delivery p50 {:.1} ms, p99 {:.1} ms ({} deliveries came before the answer)",
        ms(percentile(&timed.first, 0.5)),
        ms(percentile(&timed.first, 0.99)),
        ms(percentile(&timed.last, 0.5)),
        ms(percentile(&timed.last, 0.99)),
        ms(percentile(&timed.after_answer, 0.5)),
        ms(percentile(&timed.after_answer, 0.99)),
        timed.before_answer,
    );
    for (name, raw) in [
        ("raw NOTIFY round trip", bare),
        ("raw send's rows + NOTIFY", with_rows),
        (
            "raw send's rows + NOTIFY, then the message read and 51 access records committed",
            logged,
        ),
        (
            "the same, while every access record is added to the log's tree each second",
            sequenced,
        ),
    ] {
        println!(
            "  {name}: p50 {:.2} ms, p99 {:.2} ms; the gateway's p99 is {:.1}x",
            ms(percentile(raw, 0.5)),
            ms(percentile(raw, 0.99)),
            ms(percentile(ours, 0.99)) / ms(percentile(raw, 0.99)),
        );
    }
    let mut figures = Figures::new("push");
    let mut after_answer = quantiles(&timed.after_answer);
    after_answer["before_answer"] = json!(timed.before_answer);
    let mut logged_reads = distribution(logged);
    logged_reads["readers"] = json!(readers);
    let mut logged_and_sequenced = distribution(sequenced);
    logged_and_sequenced["readers"] = json!(readers);
    figures.put(
        "realistic",
        json!({
            "episodes": EPISODES, "streams": 2 * EPISODES, "rate": RATE, "sends": total,
            "delivered": delivered, "expected": expected, "gateway_rss_kib": rss,
            "gateway": distribution(ours),
            "answered": quantiles(answered),
            "first_delivery": quantiles(&timed.first),
            "last_delivery": quantiles(&timed.last),
            "after_answer": after_answer,
            "notify": distribution(bare),
            "rows_and_notify": distribution(with_rows),
            "logged_reads": logged_reads,
            "logged_and_sequenced": logged_and_sequenced,
        }),
    );
}
