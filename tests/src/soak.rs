//! The soak run behind `scripts/load soak`: a steady mixed load at a share of the
//! gateway's measured capacity, for a long time, to find what grows. Each minute it
//! records the requests answered and their p50/p99, the gateway's resident memory, its
//! open file descriptors and its PostgreSQL connections; at the end, the growth of the
//! resident memory after the warm-up, and that every acknowledged send is stored.
//!
//! The mix, per ten requests: six sends (sealed by a thread of their own, ahead of
//! time), two pages of an episode's messages, one episode, one `/v1/me`; and the
//! therapist follows the event stream throughout. The test provider's tokens live ten
//! minutes, so the run logs everyone in again every four.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::Gateway;
use crate::figures::memory;
use crate::idp::Actor;
use crate::load::Cast;
use crate::overload::{Send, capacity, gateway, missing, quantile, send};

/// How a soak run goes.
#[derive(Clone, Debug)]
pub struct SoakPlan {
    pub episodes: usize,
    pub duration: Duration,
    /// The offered rate, in percent of the measured send capacity.
    pub percent: u32,
    /// Gateway and database on CPU 0, the client on the others.
    pub pin: bool,
    /// Settings for the gateway (`ICBT_…` variables; the harness passes on no others).
    pub gateway_env: Vec<(String, String)>,
}

/// What one minute saw.
#[derive(Clone, Debug, Default)]
struct Minute {
    took: Vec<Duration>,
    sends: Vec<Duration>,
    /// Answers other than 2xx, by status (0: no answer).
    failed: std::collections::BTreeMap<u16, u32>,
}

/// The gateway's state at the end of a minute.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    connections: i64,
}

impl Sample {
    /// The gateway's state now.
    async fn of(gw: &Gateway) -> Self {
        let pid = gw.pid();
        Self {
            rss_kib: memory(pid).0,
            fds: open_fds(pid),
            connections: connections(gw).await,
        }
    }
}

/// Tokens that are replaced while the run goes on.
struct Logins {
    patients: RwLock<Vec<String>>,
    therapist: RwLock<Arc<Actor>>,
}

/// One read in the mix, as a patient.
async fn read(http: &reqwest::Client, base: &str, path: &str, token: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = http
        .get(format!("{base}/{path}"))
        .header("authorization", format!("Bearer {token}"))
        .timeout(Duration::from_mins(1))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, started.elapsed())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The gateway's connections to its database, as PostgreSQL counts them.
async fn connections(gw: &Gateway) -> i64 {
    let Some(database) = gw.database() else {
        return 0;
    };
    let Ok(mut db) = <sqlx::PgConnection as sqlx::Connection>::connect(&database.url).await else {
        return -1;
    };
    // Less this connection of the run's own.
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_one(&mut db)
    .await
    .unwrap_or(-1)
}

/// Seals sends on a thread of its own, round robin over the episodes, so that sealing
/// never holds up the client's requests.
fn sealer(
    cast: Arc<Cast>,
    recipients: Vec<Vec<icbt_envelope::PublicKey>>,
    stop: Arc<AtomicBool>,
) -> tokio::sync::mpsc::Receiver<(usize, Send)> {
    let (tx, rx) = tokio::sync::mpsc::channel(4_096);
    std::thread::spawn(move || {
        for n in 0.. {
            for (index, keys) in recipients.iter().enumerate() {
                if stop.load(Ordering::Relaxed)
                    || tx
                        .blocking_send((index, cast.seal(index, keys, n)))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// Follows the therapist's event stream until `stop`; counts the messages delivered.
async fn follow(
    base: String,
    http: reqwest::Client,
    logins: Arc<Logins>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut after: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let target = after.as_ref().map_or_else(
            || format!("{base}/v1/stream"),
            |a| format!("{base}/v1/stream?after={a}"),
        );
        let therapist = logins.therapist.read().unwrap().clone();
        let response = therapist
            .try_call(&http, reqwest::Method::GET, &target, None)
            .await;
        let Some(response) = response.ok().filter(|r| r.status() == 200) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = crate::EventStream::new(response);
        while let Some(event) = stream.next_event(Duration::from_secs(2)).await {
            if event.kind == "end" || stop.load(Ordering::Relaxed) {
                break;
            }
            if event.kind == "message" {
                delivered.fetch_add(1, Ordering::Relaxed);
                after = Some(event.id.clone());
            }
        }
    }
}

/// What every request of the mix needs.
struct Mix {
    http: reqwest::Client,
    base: String,
    episodes: Vec<Uuid>,
    logins: Arc<Logins>,
    /// Message ids of the acknowledged sends.
    acked: Mutex<Vec<String>>,
    /// Sends sealed ahead, with the index of their episode.
    sealed: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(usize, Send)>>,
}

impl Mix {
    /// The `n`-th request of the mix (six in ten a send, as the sealer hands them out):
    /// its status (0: no answer), how long it took, and whether it was a send.
    async fn one(&self, n: u64) -> (u16, Duration, bool) {
        let (index, next_send) = if n % 10 < 6 {
            let (index, s) = self
                .sealed
                .lock()
                .await
                .recv()
                .await
                .expect("the sealer runs");
            (index, Some(s))
        } else {
            (usize::try_from(n).unwrap_or(0) % self.episodes.len(), None)
        };
        let token = self.logins.patients.read().unwrap()[index].clone();
        if let Some(mut s) = next_send {
            s.2 = token;
            let outcome = send(&self.http, &self.base, &s).await;
            if outcome.status == 201 {
                let id = s.0.rsplit('/').next().unwrap_or_default().to_owned();
                self.acked.lock().unwrap().push(id);
            }
            return (outcome.status, outcome.took, true);
        }
        let episode = self.episodes[index];
        let path = match n % 4 {
            0 | 1 => format!("v1/episodes/{episode}/messages?limit=5"),
            2 => format!("v1/episodes/{episode}"),
            _ => "v1/me".to_owned(),
        };
        let (status, took) = read(&self.http, &self.base, &path, &token).await;
        (status, took, false)
    }

    /// Requests of the mix per second answered 2xx with 64 clients in a closed loop
    /// over 10 s (a refused one waits 10 ms and the client goes on).
    async fn capacity(self: &Arc<Self>) -> f64 {
        let started = Instant::now();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (mix, counter) = (self.clone(), counter.clone());
            workers.spawn(async move {
                let mut answered = 0_u32;
                while started.elapsed() < Duration::from_secs(10) {
                    let (status, _, _) = mix.one(counter.fetch_add(1, Ordering::Relaxed)).await;
                    if (200..300).contains(&status) {
                        answered += 1;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                answered
            });
        }
        let answered: u32 = workers.join_all().await.into_iter().sum();
        f64::from(answered) / started.elapsed().as_secs_f64()
    }
}

/// The `n`-th request, its outcome counted in `minutes[minute]`.
async fn one(mix: Arc<Mix>, n: u64, minute: usize, minutes: Arc<Mutex<Vec<Minute>>>) {
    let (status, took, is_send) = mix.one(n).await;
    let mut minutes = minutes.lock().unwrap();
    let m = &mut minutes[minute];
    m.took.push(took);
    if is_send {
        m.sends.push(took);
    }
    if !(200..300).contains(&status) {
        *m.failed.entry(status).or_default() += 1;
    }
}

/// Runs the soak; returns the report and whether the memory goal held.
pub async fn soak_run(plan: SoakPlan) -> (String, bool) {
    // Only warnings from the gateway: the run keeps its log lines in memory.
    let mut env = vec![("ICBT_TELEMETRY__LOG_FILTER".to_owned(), "warn".to_owned())];
    env.extend(plan.gateway_env.iter().cloned());
    let (gw, _cluster, cores) = gateway(plan.pin, &env).await;
    let cast = Arc::new(Cast::new(&gw, plan.episodes).await);
    let episodes = cast.episodes();
    let (http, base) = (gw.client(), gw.url.clone());
    let (capacity, _) = capacity(&http, &base, cast.presealed(8_000 / plan.episodes).await).await;
    let (patients, therapist) = cast.fresh_logins().await;
    let logins = Arc::new(Logins {
        patients: RwLock::new(patients),
        therapist: RwLock::new(Arc::new(therapist)),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sealed = sealer(cast.clone(), cast.recipients().await, stop.clone());
    let mix = Arc::new(Mix {
        http: http.clone(),
        base: base.clone(),
        episodes: episodes.clone(),
        logins: logins.clone(),
        acked: Mutex::default(),
        sealed: tokio::sync::Mutex::new(sealed),
    });
    let mix_capacity = mix.capacity().await;
    mix.acked.lock().unwrap().clear();
    let rate = mix_capacity * f64::from(plan.percent) / 100.0;
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let follower = tokio::spawn(follow(
        base.clone(),
        http.clone(),
        logins.clone(),
        delivered.clone(),
        stop.clone(),
    ));

    let whole_minutes = usize::try_from(plan.duration.as_secs().div_ceil(60)).unwrap_or(1);
    let minutes = Arc::new(Mutex::new(vec![Minute::default(); whole_minutes]));
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut last_login = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0_u64;
    while started.elapsed() < plan.duration {
        tick.tick().await;
        let minute = usize::try_from(started.elapsed().as_secs() / 60).unwrap_or(0);
        if minute >= whole_minutes {
            break;
        }
        if samples.len() < minute {
            samples.push(Sample::of(&gw).await);
        }
        if last_login.elapsed() > Duration::from_mins(4) {
            let (patients, therapist) = cast.fresh_logins().await;
            *logins.patients.write().unwrap() = patients;
            *logins.therapist.write().unwrap() = Arc::new(therapist);
            last_login = Instant::now();
        }
        n += 1;
        tasks.spawn(one(mix.clone(), n, minute, minutes.clone()));
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    samples.push(Sample::of(&gw).await);
    stop.store(true, Ordering::Relaxed);
    mix.sealed.lock().await.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), follower).await;

    let acked = mix.acked.lock().unwrap().clone();
    let lost = missing(&gw, &episodes, acked.iter()).await;
    let minutes = minutes.lock().unwrap().clone();
    report(
        &plan,
        (capacity, mix_capacity, rate),
        &minutes,
        &samples,
        (acked.len(), lost, delivered.load(Ordering::Relaxed)),
        &cores,
    )
}

/// The report: one line per minute, then the memory growth after the warm-up (the first
/// fifth of the run, at least one minute) and the totals.
fn report(
    plan: &SoakPlan,
    (capacity, mix_capacity, rate): (f64, f64, f64),
    minutes: &[Minute],
    samples: &[Sample],
    (acked, lost, delivered): (usize, usize, u64),
    cores: &str,
) -> (String, bool) {
    let mut out = format!(
        "capacity, 64 clients in a closed loop: {capacity:.0} sends/s, {mix_capacity:.0} requests/s of the mix; offered {rate:.0} requests/s of the mix ({}%)\n\
         minute | requests | p50 ms | p99 ms | send p99 ms | RSS MiB | fds | db connections | not 2xx (count x status)\n",
        plan.percent
    );
    for (i, (m, s)) in minutes.iter().zip(samples).enumerate() {
        let failed = m
            .failed
            .iter()
            .map(|(status, n)| format!("{n}x{status}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:>6} | {:>8} | {:>6.1} | {:>6.1} | {:>11.1} | {:>7.1} | {:>3} | {:>14} | {}",
            i + 1,
            m.took.len(),
            quantile(&m.took, 1, 2),
            quantile(&m.took, 99, 100),
            quantile(&m.sends, 99, 100),
            f64::from(u32::try_from(s.rss_kib).unwrap_or(u32::MAX)) / 1024.0,
            s.fds,
            s.connections,
            if failed.is_empty() { "-" } else { &failed },
        );
    }
    let warm = (samples.len() / 5)
        .max(1)
        .min(samples.len().saturating_sub(1));
    let rss = |s: &Sample| f64::from(u32::try_from(s.rss_kib).unwrap_or(u32::MAX));
    let (after_warm_up, at_end) = (
        samples.get(warm.saturating_sub(1)).map_or(0.0, rss),
        samples.last().map_or(0.0, rss),
    );
    let growth = if after_warm_up > 0.0 {
        (at_end - after_warm_up) / after_warm_up * 100.0
    } else {
        0.0
    };
    let held = growth < 10.0 && lost == 0;
    let _ = write!(
        out,
        "RSS after the warm-up (end of minute {warm}) {:.1} MiB, at the end {:.1} MiB: {growth:+.1} % (goal: under 10 %)\n\
         sends acknowledged {acked}, not stored {lost}; message events delivered to the therapist's stream {delivered}\n\
         ({cores})",
        after_warm_up / 1024.0,
        at_end / 1024.0,
    );
    (out, held)
}
