//! The overload run behind `scripts/load overload`: how the gateway answers a spike of
//! several times the send rate it can serve. Measured, in one run on PostgreSQL:
//!
//! 1. the unloaded latency of a send (one at a time);
//! 2. the capacity: sends per second with 64 senders in a closed loop;
//! 3. a spike of `factor` × capacity in an open loop (a send started on schedule whether
//!    or not the earlier ones were answered) for `spike`: the admitted sends' latency
//!    beside the unloaded one, how fast and how the rest were refused, and the gateway's
//!    peak resident memory;
//! 4. the latency each second afterwards, until it is back at the unloaded figure;
//! 5. that every acknowledged send is stored.
//!
//! Messages are sealed ahead, so the client spends its share of the cores on sending.
//!
//! A limit of the method on a small machine: the client costs about what the gateway
//! does per send (TLS, HTTP/2, JSON), so on cores they share it cannot offer the gateway
//! three times what the gateway serves. The excess then waits in the client (for HTTP/2
//! streams and connections), not in the gateway, and the spike's latencies are the
//! client's queue. The first run (2026-12-04, 2 cores) showed exactly that: the gateway's
//! memory stayed flat and it refused nothing. To measure the gateway's own shedding,
//! give the client cores of its own (`taskset`), or run it from another machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::{Cast, restartable};
use crate::{Backend, Gateway};

/// How an overload run goes.
#[derive(Clone, Copy, Debug)]
pub struct OverloadPlan {
    pub episodes: usize,
    pub spike: Duration,
    pub factor: u32,
}

/// One send's outcome: its status (0: no answer), how long it took, and whether a
/// refusal said when to come back.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    status: u16,
    took: Duration,
    retry_after: bool,
}

type Send = (String, Value, String);

async fn send(http: &reqwest::Client, base: &str, (path, body, token): &Send) -> Outcome {
    let started = Instant::now();
    let answer = http
        .put(format!("{base}/{path}"))
        .header("authorization", format!("Bearer {token}"))
        .json(body)
        .timeout(Duration::from_mins(1))
        .send()
        .await;
    let took = started.elapsed();
    match answer {
        Ok(r) => Outcome {
            status: r.status().as_u16(),
            took,
            retry_after: r.headers().contains_key("retry-after"),
        },
        Err(_) => Outcome {
            status: 0,
            took,
            retry_after: false,
        },
    }
}

/// The `q`-th quantile (`num/den`) of `values`, in milliseconds.
fn quantile(values: &[Duration], num: usize, den: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(sorted.len().saturating_sub(1) * num / den)
        .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
}

/// Resident memory of `pid` now and at its peak, in KiB (Linux).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples the resident memory of `pid` every 200 ms; the sampler and the peak (KiB).
fn sample_peak(
    pid: u32,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(memory(pid).0, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    (sampler, peak)
}

/// One at a time, `n` sends: their latencies.
async fn one_at_a_time(http: &reqwest::Client, base: &str, sends: &[Send]) -> Vec<Duration> {
    let mut took = Vec::with_capacity(sends.len());
    for s in sends {
        let outcome = send(http, base, s).await;
        assert_eq!(outcome.status, 201, "an unloaded send failed");
        took.push(outcome.took);
    }
    took
}

/// Sends per second with 64 senders, each sending as soon as its last send was
/// answered, over 10 s.
async fn capacity(http: &reqwest::Client, base: &str, sends: Vec<Send>) -> f64 {
    let queue = Arc::new(Mutex::new(sends));
    let started = Instant::now();
    let window = Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (queue, http, base) = (queue.clone(), http.clone(), base.to_owned());
        workers.push(tokio::spawn(async move {
            let mut acked = 0_u32;
            while started.elapsed() < window {
                let Some(s) = queue.lock().unwrap().pop() else {
                    break;
                };
                if send(&http, &base, &s).await.status == 201 {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut acked = 0_u32;
    for w in workers {
        acked += w.await.unwrap();
    }
    f64::from(acked) / started.elapsed().as_secs_f64()
}

/// One send at a time for 15 s after the spike: the p99 of each second, and the first
/// second at or below 1.5 × `unloaded_p99`.
async fn afterwards(
    http: &reqwest::Client,
    base: &str,
    sends: &mut impl Iterator<Item = Send>,
    unloaded_p99: f64,
) -> (Vec<String>, Option<u32>) {
    let mut after = Vec::new();
    let mut back_after = None;
    for second in 0..15 {
        let began = Instant::now();
        let mut took = Vec::new();
        while began.elapsed() < Duration::from_secs(1) {
            let Some(s) = sends.next() else { break };
            took.push(send(http, base, &s).await.took);
        }
        let p99 = quantile(&took, 99, 100);
        if back_after.is_none() && p99 <= unloaded_p99 * 1.5 {
            back_after = Some(second);
        }
        after.push(format!("{p99:.0}"));
    }
    (after, back_after)
}

/// How many of `acked` (message ids) are not stored in `episodes`.
async fn missing<'a>(
    gw: &Gateway,
    episodes: &[uuid::Uuid],
    acked: impl Iterator<Item = &'a String>,
) -> usize {
    let stored: std::collections::HashSet<String> = crate::load::stored_message_ids(gw, episodes)
        .await
        .into_iter()
        .collect();
    acked.filter(|id| !stored.contains(*id)).count()
}

/// Runs the overload measurement; returns the report.
pub async fn overload_run(plan: OverloadPlan) -> String {
    let idps = crate::idp::IdentityProviders::shared();
    let gw = Gateway::start_with(Backend::Postgres, restartable(idps.gateway_config())).await;
    let cast = Arc::new(Cast::new(&gw, plan.episodes).await);
    let http = gw.client();
    let base = gw.url.clone();
    // Sealed ahead: first for the probes and the capacity, then for the spike and after.
    let mut sends = cast
        .presealed(9_000_usize.div_ceil(plan.episodes))
        .await
        .into_iter();
    let warm: Vec<Send> = sends.by_ref().take(200).collect();
    one_at_a_time(&http, &base, &warm).await;
    let probe: Vec<Send> = sends.by_ref().take(500).collect();
    let unloaded = one_at_a_time(&http, &base, &probe).await;
    let unloaded_p99 = quantile(&unloaded, 99, 100);
    let capacity = capacity(&http, &base, sends.by_ref().take(8_000).collect()).await;
    let spike_sends = capacity * f64::from(plan.factor) * plan.spike.as_secs_f64() + 15.0 * 1_000.0;
    let needed = format!("{:.0}", spike_sends / 0.9)
        .parse::<usize>()
        .unwrap_or(100_000);
    let mut sends = cast
        .presealed(needed.div_ceil(plan.episodes))
        .await
        .into_iter();

    // The spike: open loop at factor × capacity.
    let rate = capacity * f64::from(plan.factor);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let pid = gw.pid();
    let (sampling, peak) = sample_peak(pid);
    let (rss_before, _) = memory(pid);
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut offered = 0_u32;
    while started.elapsed() < plan.spike {
        tick.tick().await;
        let Some(s) = sends.next() else { break };
        offered += 1;
        let (http, base, outcomes) = (http.clone(), base.clone(), outcomes.clone());
        tasks.spawn(async move {
            let outcome = send(&http, &base, &s).await;
            let id = s.0.rsplit('/').next().unwrap_or_default().to_owned();
            outcomes.lock().unwrap().push((outcome, id));
        });
    }
    let offered_for = started.elapsed();
    while tasks.join_next().await.is_some() {}
    sampling.abort();

    let (after, back_after) = afterwards(&http, &base, &mut sends, unloaded_p99).await;

    let outcomes = outcomes.lock().unwrap().clone();
    let lost = missing(
        &gw,
        &cast.episodes(),
        outcomes
            .iter()
            .filter(|(o, _)| o.status == 201)
            .map(|(_, id)| id),
    )
    .await;
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(o, _)| o).collect();
    let admitted: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .map(|o| o.took)
        .collect();
    let refused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.status, 429 | 503))
        .collect();
    let refused_took: Vec<Duration> = refused.iter().map(|o| o.took).collect();
    let without_retry_after = refused.iter().filter(|o| !o.retry_after).count();
    let other = outcomes.len() - admitted.len() - refused.len();
    let (_, hwm) = memory(pid);
    format!(
        "unloaded send, one at a time: p50 {:.1} ms, p99 {unloaded_p99:.1} ms; capacity with 64 senders in a closed loop: {capacity:.0} sends/s\n\
         spike: {offered} sends offered in {:.0} s ({:.0}/s, {}x capacity): {} admitted, p50 {:.0} ms, p99 {:.0} ms ({:.1}x the unloaded p99); {} refused with 429/503 ({} without Retry-After), p50 {:.1} ms, p99 {:.1} ms; {other} other (no answer or another status)\n\
         gateway memory: {} MiB before, {} MiB at the spike's peak (sampled), {} MiB high-water mark\n\
         p99 (ms) each second after the spike, one send at a time: {}; at or below 1.5x the unloaded p99 after {}\n\
         acknowledged in the spike but not stored: {lost}\n\
         (2 cores shared by the client, the gateway and PostgreSQL)",
        quantile(&unloaded, 1, 2),
        offered_for.as_secs_f64(),
        f64::from(offered) / offered_for.as_secs_f64(),
        plan.factor,
        admitted.len(),
        quantile(&admitted, 1, 2),
        quantile(&admitted, 99, 100),
        quantile(&admitted, 99, 100) / unloaded_p99,
        refused.len(),
        without_retry_after,
        quantile(&refused_took, 1, 2),
        quantile(&refused_took, 99, 100),
        rss_before / 1024,
        peak.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        hwm / 1024,
        after.join(", "),
        back_after.map_or_else(|| "more than 15 s".to_owned(), |s| format!("{s} s")),
    )
}
