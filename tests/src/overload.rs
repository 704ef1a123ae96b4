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
//! The client costs about what the gateway does per send (TLS, HTTP/2, JSON), so on
//! cores they share it cannot offer the gateway three times what the gateway serves: the
//! excess then waits in the client, not in the gateway, and the spike's latencies are the
//! client's queue (the first run, on 2 shared cores, showed exactly that). So with `pin`
//! the run gives the client cores of its own: the gateway and a PostgreSQL cluster of the
//! run's own (Debian's `initdb`) get the first CPU, the client the rest (`taskset`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::figures::memory;
use crate::load::{Cast, restartable};
use crate::{Backend, Gateway};

/// Connections the spike is sent over.
const CONNECTIONS: usize = 64;

/// How an overload run goes.
#[derive(Clone, Debug)]
pub struct OverloadPlan {
    pub episodes: usize,
    pub spike: Duration,
    pub factor: u32,
    /// Gateway and database on CPU 0, the client on the others.
    pub pin: bool,
    /// Settings for the gateway (`ICBT_…` variables; the harness passes on no others).
    pub gateway_env: Vec<(String, String)>,
}

/// Sets the CPU affinity of every thread of each of `pids` to `cpus` (a `taskset` list).
fn pin(pids: &[u32], cpus: &str) {
    for pid in pids {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "taskset -a -p -c {cpus} {pid}"
        );
    }
}

/// The run's gateway on PostgreSQL: on the shared server, or with `pin` on a cluster of
/// its own on CPU 0 with the client on the other CPUs (the cluster is kept alive by the
/// returned guard).
pub(crate) async fn gateway(
    pin_cores: bool,
    env: &[(String, String)],
) -> (Gateway, Option<crate::cluster::Cluster>, String) {
    let idps = crate::idp::IdentityProviders::shared();
    let mut options = restartable(idps.gateway_config());
    options.env.extend(env.iter().cloned());
    if !pin_cores {
        let gw = Gateway::start_with(Backend::Postgres, options).await;
        return (
            gw,
            None,
            "2 cores shared by the client, the gateway and PostgreSQL".into(),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(cores >= 2, "--pin needs at least 2 CPUs");
    let cluster = crate::cluster::Cluster::start().expect("PostgreSQL's initdb and pg_ctl");
    let database = crate::TestDatabase::create_on(&cluster.admin_url).await;
    let gw = Gateway::start_on(database, options);
    pin(&cluster.pids(), "0");
    pin(&[gw.pid()], "0");
    pin(&[std::process::id()], &format!("1-{}", cores - 1));
    let setting = format!(
        "{cores} cores: the gateway and PostgreSQL pinned to one, the client to {}",
        if cores == 2 {
            "the other".to_owned()
        } else {
            format!("the other {}", cores - 1)
        }
    );
    (gw, Some(cluster), setting)
}

/// One send's outcome: its status (0: no answer), how long it took, and whether a
/// refusal said when to come back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) took: Duration,
    pub(crate) retry_after: bool,
}

pub(crate) type Send = (String, Value, String);

pub(crate) async fn send(
    http: &reqwest::Client,
    base: &str,
    (path, body, token): &Send,
) -> Outcome {
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
pub(crate) fn quantile(values: &[Duration], num: usize, den: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(sorted.len().saturating_sub(1) * num / den)
        .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
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

/// The gateway's own latency histogram for answers of `status`, from `/metrics`: each
/// bucket's upper bound (seconds) and cumulative count, over every route.
async fn histogram(http: &reqwest::Client, base: &str, status: u16) -> Vec<(f64, u64)> {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut buckets = std::collections::BTreeMap::<String, (f64, u64)>::new();
    let wanted = format!("status=\"{status}\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("icbt_gateway_http_request_duration_seconds_bucket{")
        else {
            continue;
        };
        let Some((labels, count)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.contains(&wanted) {
            continue;
        }
        let le = labels
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or("+Inf");
        let bound = le.parse::<f64>().unwrap_or(f64::INFINITY);
        let count = count.trim().parse::<u64>().unwrap_or(0);
        buckets.entry(le.to_owned()).or_insert((bound, 0)).1 += count;
    }
    let mut all: Vec<(f64, u64)> = buckets.into_values().collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all
}

/// The upper bound (ms) of the bucket holding the 99th percentile of what was answered
/// between two readings of [`histogram`].
fn p99_bound(before: &[(f64, u64)], after: &[(f64, u64)]) -> String {
    let counted = |h: &[(f64, u64)], bound: f64| {
        h.iter()
            .find(|(b, _)| b.total_cmp(&bound).is_eq())
            .map_or(0, |(_, c)| *c)
    };
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(b, c)| (*b, c - counted(before, *b).min(*c)))
        .collect();
    let total = diff.last().map_or(0, |(_, c)| *c);
    diff.iter()
        .find(|(_, c)| *c * 100 >= total * 99)
        .map_or_else(|| "-".to_owned(), |(b, _)| format!("{:.1}", b * 1_000.0))
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

/// The gateway at full load: sends per second with 64 senders, each sending as soon as
/// its last send was answered, over 10 s, and the p99 of the acknowledged ones. A sender
/// refused (429/503) waits 10 ms and tries the same send again, so that a low
/// concurrency limit is not measured as a capacity lost to refusals.
pub(crate) async fn capacity(http: &reqwest::Client, base: &str, sends: Vec<Send>) -> (f64, f64) {
    let queue = Arc::new(Mutex::new(sends));
    let started = Instant::now();
    let window = Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (queue, http, base) = (queue.clone(), http.clone(), base.to_owned());
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while started.elapsed() < window {
                let Some(s) = queue.lock().unwrap().pop() else {
                    break;
                };
                while started.elapsed() < window {
                    let outcome = send(&http, &base, &s).await;
                    if matches!(outcome.status, 429 | 503) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    if outcome.status == 201 {
                        acked.push(outcome.took);
                    }
                    break;
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    let rate =
        f64::from(u32::try_from(acked.len()).unwrap_or(u32::MAX)) / started.elapsed().as_secs_f64();
    (rate, quantile(&acked, 99, 100))
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
pub(crate) async fn missing<'a>(
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

/// Offers `sends` over `clients` in an open loop, one every `interval` for `length`,
/// whether or not the earlier ones were answered; each outcome goes into `outcomes` with
/// its message id. Returns the count offered and how long offering took.
async fn spike(
    clients: &[reqwest::Client],
    base: &str,
    sends: &mut impl Iterator<Item = Send>,
    interval: Duration,
    length: Duration,
    outcomes: &Arc<Mutex<Vec<(Outcome, String)>>>,
) -> (u32, Duration) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut offered = 0_u32;
    while started.elapsed() < length {
        tick.tick().await;
        let Some(s) = sends.next() else { break };
        offered += 1;
        let http = clients[usize::try_from(offered).unwrap_or(0) % clients.len()].clone();
        let (base, outcomes) = (base.to_owned(), outcomes.clone());
        tasks.spawn(async move {
            let outcome = send(&http, &base, &s).await;
            let id = s.0.rsplit('/').next().unwrap_or_default().to_owned();
            outcomes.lock().unwrap().push((outcome, id));
        });
        while tasks.try_join_next().is_some() {}
    }
    let offered_for = started.elapsed();
    while tasks.join_next().await.is_some() {}
    (offered, offered_for)
}

/// A count estimated in floating point, rounded up (0 when negative or not a number).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(estimate: f64) -> usize {
    estimate.ceil().clamp(0.0, 1e9) as usize
}

/// Runs the overload measurement; returns the report.
pub async fn overload_run(plan: OverloadPlan) -> String {
    let (gw, _cluster, cores) = gateway(plan.pin, &plan.gateway_env).await;
    let cast = Arc::new(Cast::new(&gw, plan.episodes).await);
    let http = gw.client();
    let base = gw.url.clone();
    // Sealed ahead: first for the probes and the capacity, then for the spike and after.
    let mut sends = cast
        .presealed(9_000_usize.div_ceil(plan.episodes))
        .await
        .into_iter();
    // The spike comes from many clients, as it would: one HTTP/2 connection each, since
    // one connection carries at most 128 requests at a time and the excess would queue
    // in the client. Each is connected ahead, one at a time, within the per-address caps.
    let clients: Vec<reqwest::Client> = (0..CONNECTIONS).map(|_| gw.client()).collect();
    let warm: Vec<Send> = sends.by_ref().take(200).collect();
    for (i, s) in warm.iter().enumerate() {
        assert_eq!(send(&clients[i % CONNECTIONS], &base, s).await.status, 201);
    }
    let probe: Vec<Send> = sends.by_ref().take(500).collect();
    let unloaded = one_at_a_time(&http, &base, &probe).await;
    let unloaded_p99 = quantile(&unloaded, 99, 100);
    let (capacity, loaded_p99) = capacity(&http, &base, sends.by_ref().take(8_000).collect()).await;
    let spike_sends = capacity * f64::from(plan.factor) * plan.spike.as_secs_f64() + 15.0 * 1_000.0;
    let needed = whole(spike_sends / 0.9);
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
    let (admitted_before, refused_before) = (
        histogram(&http, &base, 201).await,
        histogram(&http, &base, 503).await,
    );
    let (offered, offered_for) =
        spike(&clients, &base, &mut sends, interval, plan.spike, &outcomes).await;
    sampling.abort();
    let inside = format!(
        "as the gateway measured them (from the tower stack's entry to the answer): p99 of the admitted at most {} ms, of the refused at most {} ms",
        p99_bound(&admitted_before, &histogram(&http, &base, 201).await),
        p99_bound(&refused_before, &histogram(&http, &base, 503).await),
    );

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
        "unloaded send, one at a time: p50 {:.1} ms, p99 {unloaded_p99:.1} ms; capacity with 64 senders in a closed loop: {capacity:.0} sends/s, p99 {loaded_p99:.1} ms\n\
         spike: {offered} sends offered in {:.0} s ({:.0}/s, {}x capacity): {} admitted, p50 {:.0} ms, p99 {:.0} ms ({:.1}x the unloaded p99, {:.1}x the p99 at capacity); {} refused with 429/503 ({} without Retry-After), p50 {:.1} ms, p99 {:.1} ms; {other} other (no answer or another status)\n\
         {inside}\n\
         gateway memory: {} MiB before, {} MiB at the spike's peak (sampled), {} MiB high-water mark\n\
         p99 (ms) each second after the spike, one send at a time: {}; at or below 1.5x the unloaded p99 after {}\n\
         acknowledged in the spike but not stored: {lost}\n\
         ({cores})",
        quantile(&unloaded, 1, 2),
        offered_for.as_secs_f64(),
        f64::from(offered) / offered_for.as_secs_f64(),
        plan.factor,
        admitted.len(),
        quantile(&admitted, 1, 2),
        quantile(&admitted, 99, 100),
        quantile(&admitted, 99, 100) / unloaded_p99,
        quantile(&admitted, 99, 100) / loaded_p99,
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
