//! The load generator behind `scripts/load` and the crash tests: patients and their
//! therapist with real tokens from the test OpenID providers, devices published and
//! messages sealed with the Rust SDK (`icbt-client`), sent concurrently, every request,
//! acknowledgement and id recorded in a [`Ledger`]; a [`Supervisor`] that kills the
//! gateway with SIGKILL and starts it again on the same port and database, and kills and
//! restarts the exporter on its own schedule; and the checks after a run ([`audit_run`]):
//! every acknowledged message present exactly once with the sequence number it was
//! acknowledged with, no gaps, nothing present that was never sent, the access log
//! verifying, and the EPJ holding one resource per message.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icbt_auth::dpop::DpopKey;
use icbt_auth::identity::NationalId;
use icbt_client::{Client, ClientError, Credentials};
use icbt_envelope::DeviceKeys;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::clinic::{THERAPIST_HPR as HPR, THERAPIST_PID, start_episode};
use crate::epj::{Epj, ExporterProcess, export_config, identifiers};
use crate::idp::{Actor, CLINIC_ORG};
use crate::sealed::{Sealer, in_a_year_ms};
use crate::{Backend, Gateway, GatewayOptions, audit_public_key, free_port, run_cli};

/// The exporter's identifier system for messages (`export_config`'s base).
pub const MESSAGE_SYSTEM: &str = "urn:icbt-gateway:test:message";

/// What happened to every message the generator meant to send.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Message id → its episode, for every message sealed and sent at least once.
    pub sent: Mutex<HashMap<Uuid, Uuid>>,
    /// Message id → the sequence number its acknowledgement gave.
    pub acked: Mutex<HashMap<Uuid, i64>>,
    /// Requests that reached for the gateway (every attempt, retries included).
    pub requests: AtomicU64,
    /// Attempts that failed in a way a client retries (connection lost, 503, 429).
    pub retried: AtomicU64,
    /// Messages given up on: no acknowledgement within the time a client waits.
    pub abandoned: AtomicU64,
}

/// One party's SDK client and device.
#[derive(Debug)]
struct Party {
    client: Client,
    keys: DeviceKeys,
    /// The access token (patients' are bearer tokens), for raw requests.
    token: String,
}

/// The people of a run: patients with one episode each, and their shared therapist.
#[derive(Debug)]
pub struct Cast {
    patients: Vec<(Party, Uuid)>,
    therapist: Party,
    /// The therapist's token, for reading the event stream.
    pub therapist_actor: Actor,
    /// The clinic's journal key (private JSON), for the exporter.
    pub journal_key: tempfile::NamedTempFile,
}

/// `n` distinct valid synthetic national identity numbers.
fn patients(n: usize) -> Vec<String> {
    (100..1000)
        .filter_map(|individual| NationalId::with_check_digits(&format!("010185{individual}")))
        .map(|id| id.expose().to_owned())
        .take(n)
        .collect()
}

fn sdk(gw: &Gateway, who: &Actor, dpop: Option<DpopKey>) -> Client {
    Client::new(
        gw.client(),
        url::Url::parse(&gw.url).unwrap(),
        Credentials {
            access_token: Zeroizing::new(who.token.access_token.clone()),
            dpop,
        },
        vec![audit_public_key()],
    )
}

impl Cast {
    /// Logs in `episodes` patients and the therapist, publishes their devices and the
    /// clinic's journal key, and starts one active episode per patient.
    pub async fn new(gw: &Gateway, episodes: usize) -> Self {
        let platform = Actor::system("icbt-platform").await;
        let http = gw.client();
        let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
        let journal_key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(journal_key.path(), sealer.journal.to_private_json()).unwrap();
        let therapist_actor = Actor::therapist(THERAPIST_PID, HPR).await;
        let dpop = therapist_actor
            .dpop_pkcs8
            .as_ref()
            .map(|der| DpopKey::from_pkcs8(der).unwrap());
        let therapist = Party {
            client: sdk(gw, &therapist_actor, dpop),
            keys: DeviceKeys::generate().unwrap(),
            token: therapist_actor.token.access_token.clone(),
        };
        therapist
            .client
            .publish_device(&therapist.keys, in_a_year_ms())
            .await
            .unwrap();
        let mut all = Vec::new();
        for pid in patients(episodes) {
            let actor = Actor::patient(&pid).await;
            let party = Party {
                client: sdk(gw, &actor, None),
                keys: DeviceKeys::generate().unwrap(),
                token: actor.token.access_token.clone(),
            };
            party
                .client
                .publish_device(&party.keys, in_a_year_ms())
                .await
                .unwrap();
            let episode = start_episode(&http, &gw.url, &platform, (&pid, CLINIC_ORG)).await;
            all.push((party, episode));
        }
        Self {
            patients: all,
            therapist,
            therapist_actor,
            journal_key,
        }
    }

    /// New logins for every patient (their access tokens, in the order of the episodes)
    /// and the therapist: the test provider's tokens live 10 minutes, a soak far longer.
    pub async fn fresh_logins(&self) -> (Vec<String>, Actor) {
        let mut tokens = Vec::with_capacity(self.patients.len());
        for pid in patients(self.patients.len()) {
            tokens.push(Actor::patient(&pid).await.token.access_token);
        }
        (tokens, Actor::therapist(THERAPIST_PID, HPR).await)
    }

    /// Each episode's recipients as its patient's SDK reads them from the directory, in
    /// the order of the episodes.
    pub async fn recipients(&self) -> Vec<Vec<icbt_envelope::PublicKey>> {
        let mut all = Vec::with_capacity(self.patients.len());
        for (party, episode) in &self.patients {
            all.push(
                party
                    .client
                    .episode_keys(*episode, false)
                    .await
                    .unwrap()
                    .recipients(),
            );
        }
        all
    }

    /// One message from the patient of episode `index`, sealed to `recipients`: the path
    /// and body of its `PUT`, and the patient's bearer token.
    pub fn seal(
        &self,
        index: usize,
        recipients: &[icbt_envelope::PublicKey],
        n: usize,
    ) -> (String, serde_json::Value, String) {
        let (party, episode) = &self.patients[index];
        let id = Uuid::new_v4();
        let binding = icbt_envelope::Binding {
            episode: episode.to_string(),
            message: id.to_string(),
            kind: "message".into(),
            sender: party.keys.device_id(),
        };
        let text = json!({ "text": format!("melding {n}: {}", "tekst ".repeat(40)) }).to_string();
        let envelope =
            icbt_envelope::seal(text.as_bytes(), &binding, &party.keys.signing, recipients)
                .unwrap();
        let body = json!({
            "kind": "message",
            "envelope": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, envelope),
        });
        (
            format!("v1/episodes/{episode}/messages/{id}"),
            body,
            party.token.clone(),
        )
    }

    /// `per_episode` patient messages per episode sealed ahead (one directory fetch per
    /// episode), in round-robin order over the episodes, each as the path and body of its
    /// `PUT` and the patient's bearer token: a client that is not itself the bottleneck.
    pub async fn presealed(&self, per_episode: usize) -> Vec<(String, serde_json::Value, String)> {
        let recipients = self.recipients().await;
        let mut by_episode = Vec::new();
        for (index, recipients) in recipients.iter().enumerate() {
            let sealed: Vec<_> = (0..per_episode)
                .map(|n| self.seal(index, recipients, n))
                .collect();
            by_episode.push(sealed.into_iter());
        }
        let mut all = Vec::with_capacity(per_episode * by_episode.len());
        for _ in 0..per_episode {
            for episode in &mut by_episode {
                all.extend(episode.next());
            }
        }
        all
    }

    pub fn episodes(&self) -> Vec<Uuid> {
        self.patients.iter().map(|(_, e)| *e).collect()
    }

    /// Sends up to `per_episode` messages in every episode (fewer if `stop` is set
    /// first), the episodes at once, each one's messages one after another (patient and
    /// therapist by turns), every send retried with the same sealed bytes until
    /// acknowledged or `patience` has passed.
    pub async fn send(
        self: &Arc<Self>,
        ledger: &Arc<Ledger>,
        per_episode: usize,
        patience: Duration,
        stop: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        let tasks: Vec<_> = (0..self.patients.len())
            .map(|i| {
                let (cast, ledger, stop) = (self.clone(), ledger.clone(), stop.clone());
                tokio::spawn(async move {
                    let (patient, episode) = &cast.patients[i];
                    for n in 0..per_episode {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (party, kind) = if n % 2 == 0 {
                            (patient, "message")
                        } else {
                            (&cast.therapist, "feedback")
                        };
                        let text =
                            json!({ "text": format!("melding {n}: {}", "tekst ".repeat(40)) });
                        send_one(party, *episode, kind, &text.to_string(), &ledger, patience).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
}

/// One message: sealed once, delivered until acknowledged (the same bytes each time).
async fn send_one(
    party: &Party,
    episode: Uuid,
    kind: &str,
    text: &str,
    ledger: &Ledger,
    patience: Duration,
) {
    let id = Uuid::new_v4();
    let until = Instant::now() + patience;
    let retry = |e: &ClientError| e.may_retry() && Instant::now() < until;
    let sealed = loop {
        ledger.requests.fetch_add(1, Ordering::Relaxed);
        match party
            .client
            .seal(&party.keys, episode, id, kind, text.as_bytes())
            .await
        {
            Ok(sealed) => break sealed,
            Err(e) if retry(&e) => {
                ledger.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("sealing failed for good: {e}"),
        }
    };
    ledger.sent.lock().unwrap().insert(id, episode);
    loop {
        ledger.requests.fetch_add(1, Ordering::Relaxed);
        match party.client.deliver(&sealed).await {
            Ok(receipt) => {
                let seq = receipt["seq"].as_i64().expect("a receipt with seq");
                ledger.acked.lock().unwrap().insert(id, seq);
                return;
            }
            Err(e) if retry(&e) => {
                ledger.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.may_retry() => {
                ledger.abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => panic!("a send was refused: {e}"),
        }
    }
}

/// Options for a gateway that can be killed and started again on the same port.
pub fn restartable(config_toml: String) -> GatewayOptions {
    GatewayOptions {
        config_toml: Some(config_toml),
        env: vec![
            (
                "ICBT_SERVER__BIND".into(),
                format!("127.0.0.1:{}", free_port()),
            ),
            ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into()),
        ],
        ..Default::default()
    }
}

/// The gateway and the exporter, killed and restarted on their own schedules.
#[derive(Debug)]
pub struct Supervisor {
    gw: tokio::sync::Mutex<Option<Gateway>>,
    /// Time from each SIGKILL until the new process listened.
    pub recoveries: Mutex<Vec<Duration>>,
    pub exporter_kills: AtomicU64,
}

impl Supervisor {
    pub fn new(gw: Gateway) -> Self {
        Self {
            gw: tokio::sync::Mutex::new(Some(gw)),
            recoveries: Mutex::default(),
            exporter_kills: AtomicU64::new(0),
        }
    }

    /// SIGKILL, then a start on the same port, data directory and database.
    pub async fn kill_and_restart(&self) {
        let mut slot = self.gw.lock().await;
        let gw = slot.take().expect("a gateway");
        let started = Instant::now();
        let gw = gw.restart_after("KILL").await;
        self.recoveries.lock().unwrap().push(started.elapsed());
        *slot = Some(gw);
    }

    /// `kills` kills at random moments `gap` apart on average, while `running` holds.
    pub async fn keep_killing(&self, kills: usize, gap: Duration) -> usize {
        let mut done = 0;
        while done < kills {
            let jitter =
                u64::from(random_u16()) % u64::try_from(gap.as_millis()).unwrap_or(1).max(1);
            tokio::time::sleep(gap / 2 + Duration::from_millis(jitter)).await;
            self.kill_and_restart().await;
            done += 1;
        }
        done
    }

    /// Kills the exporter every `every` (jittered) until `stop`, starting a new one each
    /// time; the last one keeps running and is returned.
    pub async fn keep_killing_exporter(
        &self,
        config: &str,
        every: Duration,
        stop: &tokio::sync::Notify,
    ) -> ExporterProcess {
        loop {
            let exporter = {
                let gw = self.gw.lock().await;
                ExporterProcess::start(gw.as_ref().unwrap(), config, &["run"])
            };
            let jitter = Duration::from_millis(u64::from(random_u16()) % 500);
            tokio::select! {
                () = stop.notified() => return exporter,
                () = tokio::time::sleep(every + jitter) => {}
            }
            let mut exporter = exporter;
            exporter.kill();
            self.exporter_kills.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The gateway, once the run is over.
    pub fn into_gateway(self) -> Gateway {
        self.gw.into_inner().unwrap()
    }
}

fn random_u16() -> u16 {
    let mut b = [0_u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// What the checks after a run found.
#[derive(Debug, Default)]
pub struct Findings {
    pub sent: usize,
    pub acked: usize,
    pub present: usize,
    /// Present though never acknowledged (committed, the answer lost to a kill).
    pub unacked_present: usize,
    pub problems: Vec<String>,
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} acknowledged, {} present ({} of them unacknowledged), {} problems",
            self.sent,
            self.acked,
            self.present,
            self.unacked_present,
            self.problems.len()
        )?;
        for p in self.problems.iter().take(20) {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The set check over the database: each acknowledged message present once under the
/// sequence number it was acknowledged with; each episode's sequence 1..n without gaps;
/// nothing present that was never sent.
pub async fn audit_run(gw: &Gateway, episodes: &[Uuid], ledger: &Ledger) -> Findings {
    let mut db = crate::connect_database(gw.data_dir.path(), gw.database()).await;
    let sent = ledger.sent.lock().unwrap().clone();
    let acked = ledger.acked.lock().unwrap().clone();
    let mut findings = Findings {
        sent: sent.len(),
        acked: acked.len(),
        ..Findings::default()
    };
    for episode in episodes {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, seq FROM messages WHERE episode_id = $1 ORDER BY seq")
                .bind(episode.to_string())
                .fetch_all(&mut db)
                .await
                .unwrap();
        let mut seen: BTreeMap<Uuid, usize> = BTreeMap::new();
        for (i, (id, seq)) in rows.iter().enumerate() {
            let id = Uuid::parse_str(id).unwrap();
            *seen.entry(id).or_default() += 1;
            if *seq != i64::try_from(i).unwrap() + 1 {
                findings.problems.push(format!(
                    "episode {episode}: seq {seq} at position {}",
                    i + 1
                ));
            }
            match (sent.get(&id), acked.get(&id)) {
                (None, _) => findings
                    .problems
                    .push(format!("message {id} was never sent")),
                (Some(e), _) if e != episode => findings
                    .problems
                    .push(format!("message {id} in the wrong episode")),
                (Some(_), Some(ack)) if ack != seq => {
                    findings.problems.push(format!(
                        "message {id} acknowledged as {ack}, stored as {seq}"
                    ));
                }
                (Some(_), None) => findings.unacked_present += 1,
                (Some(_), Some(_)) => {}
            }
        }
        findings.present += rows.len();
        for (id, n) in &seen {
            if *n > 1 {
                findings
                    .problems
                    .push(format!("message {id} stored {n} times"));
            }
        }
        for (id, _) in acked.iter().filter(|(id, _)| sent.get(id) == Some(episode)) {
            if !seen.contains_key(id) {
                findings
                    .problems
                    .push(format!("acknowledged message {id} is missing"));
            }
        }
    }
    findings
}

/// `audit verify` over the run's database; the problem it reports, if any.
pub fn verify_access_log(gw: &Gateway) -> Option<String> {
    let key = crate::audit_signing_key();
    let mut env: Vec<(&str, &str)> = vec![
        (
            "ICBT_STORAGE__DATA_DIR",
            gw.data_dir.path().to_str().unwrap(),
        ),
        ("ICBT_AUDIT__SIGNING_KEY_FILE", key.to_str().unwrap()),
        ("ICBT_TELEMETRY__LOG_FILTER", "warn"),
    ];
    if let Some(db) = gw.database() {
        env.push(("ICBT_STORAGE__URL", &db.url));
    }
    let out = run_cli(&["audit", "verify", "--dev"], &env, gw.data_dir.path());
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The ids of every message stored in `episodes`.
pub async fn stored_message_ids(gw: &Gateway, episodes: &[Uuid]) -> Vec<String> {
    let mut db = crate::connect_database(gw.data_dir.path(), gw.database()).await;
    let mut stored = Vec::new();
    for episode in episodes {
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM messages WHERE episode_id = $1")
            .bind(episode.to_string())
            .fetch_all(&mut db)
            .await
            .unwrap();
        stored.extend(ids.into_iter().map(|(id,)| id));
    }
    stored
}

/// Problems with what the EPJ holds: each present message exactly once.
pub async fn check_epj(gw: &Gateway, epj: &Epj, episodes: &[Uuid]) -> Vec<String> {
    let mut present = stored_message_ids(gw, episodes).await;
    present.sort();
    let held = identifiers(&epj.resources("Communication").await, MESSAGE_SYSTEM);
    if held == present {
        Vec::new()
    } else {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for id in &held {
            *counts.entry(id).or_default() += 1;
        }
        for id in &present {
            *counts.entry(id).or_default() -= 1;
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .take(20)
            .map(|(id, n)| {
                format!(
                    "the EPJ holds message {id} {} times too {}",
                    n.abs(),
                    if n > 0 { "many" } else { "few" }
                )
            })
            .collect()
    }
}

/// Waits until the outbox has nothing pending.
pub async fn drain_outbox(gw: &Gateway, limit: Duration) -> bool {
    let mut db = crate::connect_database(gw.data_dir.path(), gw.database()).await;
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let (pending,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state <> 'done'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        if pending == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The checks after a run: the set check, `audit verify`, and (once the outbox has
/// drained) the EPJ's resources.
async fn after_run(
    gw: &Gateway,
    epj: &Epj,
    episodes: &[Uuid],
    ledger: &Ledger,
    exporter: &ExporterProcess,
) -> Findings {
    let mut findings = audit_run(gw, episodes, ledger).await;
    if let Some(problem) = verify_access_log(gw) {
        findings.problems.push(format!("audit verify: {problem}"));
    }
    if drain_outbox(gw, Duration::from_mins(3)).await {
        findings.problems.extend(check_epj(gw, epj, episodes).await);
    } else {
        findings.problems.push(format!(
            "the outbox did not drain:\n{}",
            exporter.logs().join("\n")
        ));
    }
    findings
}

/// How a kill run is bounded.
#[derive(Clone, Copy, Debug)]
pub struct KillPlan {
    pub episodes: usize,
    /// Sends per episode at most.
    pub per_episode: usize,
    /// SIGKILLs of the gateway: the sends stop after this many, unless `until_sent`.
    pub kills: usize,
    /// Keep killing until every send is done, however many kills that makes (at least
    /// `kills` are expected).
    pub until_sent: bool,
    /// Mean time between kills.
    pub gap: Duration,
    /// Mean time between exporter kills.
    pub exporter_every: Duration,
}

/// One kill run, as `scripts/load kill` and the short CI test make it: the episodes at
/// once, the gateway killed (and the exporter) as `plan` says, then the checks. Panics on
/// any loss or duplicate; returns the figures.
pub async fn kill_run(backend: Backend, plan: KillPlan) -> String {
    let KillPlan {
        episodes,
        per_episode,
        kills,
        until_sent,
        gap,
        exporter_every,
    } = plan;
    let idps = crate::idp::IdentityProviders::shared();
    let gw = Gateway::start_with(backend, restartable(idps.gateway_config())).await;
    let cast = Arc::new(Cast::new(&gw, episodes).await);
    let epj = Epj::start();
    let config = export_config(&gw, &epj, cast.journal_key.path());
    let supervisor = Arc::new(Supervisor::new(gw));
    let ledger = Arc::new(Ledger::default());
    let started = Instant::now();
    let stop = Arc::new(tokio::sync::Notify::new());
    let exporter = {
        let (supervisor, stop, config) = (supervisor.clone(), stop.clone(), config.clone());
        tokio::spawn(async move {
            supervisor
                .keep_killing_exporter(&config, exporter_every, &stop)
                .await
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = {
        let (cast, ledger, done) = (cast.clone(), ledger.clone(), done.clone());
        tokio::spawn(async move {
            cast.send(&ledger, per_episode, Duration::from_mins(2), &done)
                .await;
        })
    };
    let mut killed = 0;
    while !sending.is_finished() && (until_sent || killed < kills) {
        killed += supervisor.keep_killing(1, gap).await;
    }
    done.store(true, Ordering::Relaxed);
    sending.await.unwrap();
    let sent_in = started.elapsed();
    stop.notify_one();
    let exporter = exporter.await.unwrap();
    let supervisor = Arc::into_inner(supervisor).expect("the run holds the supervisor alone");
    let exporter_kills = supervisor.exporter_kills.load(Ordering::Relaxed);
    let recoveries = supervisor.recoveries.lock().unwrap().clone();
    let gw = supervisor.into_gateway();
    let findings = after_run(&gw, &epj, &cast.episodes(), &ledger, &exporter).await;
    drop(exporter);
    let mut sorted = recoveries.clone();
    sorted.sort();
    let pick = |num: usize, den: usize| {
        sorted
            .get(sorted.len().saturating_sub(1) * num / den)
            .map_or(0, Duration::as_millis)
    };
    let report = format!(
        "{backend:?}: {killed} gateway kills and {exporter_kills} exporter kills during {} s of sends; {findings}; {} requests, {} retried, {} abandoned; restart to listening after a kill: median {} ms, max {} ms (2 cores shared by client, gateway, exporter, database and EPJ)",
        sent_in.as_secs(),
        ledger.requests.load(Ordering::Relaxed),
        ledger.retried.load(Ordering::Relaxed),
        ledger.abandoned.load(Ordering::Relaxed),
        pick(1, 2),
        pick(1, 1),
    );
    assert!(findings.problems.is_empty(), "{report}");
    assert!(findings.acked > 0 && killed >= kills, "{report}");
    report
}

/// How a database-restart run goes.
#[derive(Clone, Copy, Debug)]
pub struct RestartPlan {
    pub episodes: usize,
    /// Sends per episode at most; the sends stop once the restarts are done.
    pub per_episode: usize,
    pub restarts: usize,
    /// How long the database stays away each time.
    pub away: Duration,
}

/// Follows the therapist's event stream, reconnecting with `after` whenever it ends or
/// breaks, and collects the ids of the messages it delivers.
async fn follow(
    url: String,
    http: reqwest::Client,
    cast: Arc<Cast>,
    seen: Arc<Mutex<Vec<Uuid>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut after: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let target = after.as_ref().map_or_else(
            || format!("{url}/v1/stream"),
            |a| format!("{url}/v1/stream?after={a}"),
        );
        let response = cast
            .therapist_actor
            .try_call(&http, Method::GET, &target, None)
            .await;
        let Ok(response) = response
            .map_err(drop)
            .and_then(|r| if r.status() == 200 { Ok(r) } else { Err(()) })
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = crate::EventStream::new(response);
        while let Some(event) = stream.next_event(Duration::from_secs(2)).await {
            if event.kind == "end" {
                break;
            }
            if event.kind == "message"
                && let Some(id) = event.data["message"]["id"]
                    .as_str()
                    .and_then(|i| Uuid::parse_str(i).ok())
            {
                seen.lock().unwrap().push(id);
            }
        }
        // Resume after the last event read: a message's, or the stream's opening
        // position when none came, so a stream that reconnects before its first message
        // misses nothing sent meanwhile.
        if let Some(id) = stream.last_id() {
            after = Some(id.to_owned());
        }
    }
}

/// `/readyz`'s status, 0 when it does not answer.
async fn readiness(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(format!("{url}/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/readyz` until it says `status`; the wait, or `None` after `limit`.
async fn until_ready_is(
    http: &reqwest::Client,
    url: &str,
    status: u16,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while readiness(http, url).await != status {
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(started.elapsed())
}

/// What one restart of the database showed: `/readyz` said 503 after, a request was
/// answered after, `/readyz` said 200 this long after the database started again.
#[derive(Clone, Copy, Debug, Default)]
struct Restart {
    noticed: Duration,
    answered: Duration,
    back: Duration,
}

/// Stops the database under the gateway, checks how the gateway answers meanwhile,
/// starts it again after `away` and waits for the gateway to be ready; what it saw and
/// what went wrong.
async fn restart_once(
    cluster: &crate::cluster::Cluster,
    gw: &Gateway,
    cast: &Cast,
    away: Duration,
    request_timeout: Duration,
) -> (Restart, Vec<String>) {
    let http = gw.client();
    let mut problems = Vec::new();
    cluster.stop_immediate();
    let stopped = Instant::now();
    let noticed = until_ready_is(&http, &gw.url, 503, Duration::from_secs(10)).await;
    if noticed.is_none() {
        problems.push("/readyz did not turn 503 within 10 s of the database going away".into());
    }
    let asked = Instant::now();
    let probe = format!("{}/v1/episodes/{}", gw.url, cast.episodes()[0]);
    let answer = cast
        .therapist_actor
        .try_call(&http, Method::GET, &probe, None)
        .await;
    let answered = asked.elapsed();
    match answer {
        Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {}
        Ok(r) => problems.push(format!(
            "with the database away a request got {} (Retry-After: {:?})",
            r.status(),
            r.headers().get("retry-after")
        )),
        Err(e) => problems.push(format!("with the database away a request failed: {e}")),
    }
    if answered > request_timeout + Duration::from_secs(1) {
        problems.push(format!(
            "a request hung {} ms with the database away",
            answered.as_millis()
        ));
    }
    tokio::time::sleep(away.saturating_sub(stopped.elapsed())).await;
    cluster.start_again();
    let back = until_ready_is(&http, &gw.url, 200, Duration::from_mins(1)).await;
    if back.is_none() {
        problems.push("/readyz did not return to 200 within 60 s of the database".into());
    }
    let restart = Restart {
        noticed: noticed.unwrap_or_default(),
        answered,
        back: back.unwrap_or_default(),
    };
    (restart, problems)
}

/// Whether the stream delivered every acknowledged message within 20 s; how many it
/// missed.
async fn missed_by_stream(ledger: &Ledger, seen: &Mutex<Vec<Uuid>>) -> usize {
    let acked: Vec<Uuid> = ledger.acked.lock().unwrap().keys().copied().collect();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got: std::collections::HashSet<Uuid> = seen.lock().unwrap().iter().copied().collect();
        let missed = acked.iter().filter(|id| !got.contains(id)).count();
        if missed == 0 || Instant::now() > until {
            return missed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A database-restart run (`scripts/load restart` and the short CI test): sends through
/// the SDK while the gateway's PostgreSQL (a cluster of the run's own) is stopped with
/// `pg_ctl stop -m immediate` and started again `restarts` times under the running
/// gateway. While it is away `/readyz` must say 503 and a request must get a 503 problem
/// with `Retry-After` within the request time limit; after, the gateway must recover by
/// itself, the set checks of [`kill_run`] must hold, and the therapist's event stream
/// must have delivered every acknowledged message. `None` when PostgreSQL's server
/// programs are not installed.
pub async fn restart_run(plan: RestartPlan) -> Option<String> {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    let cluster = crate::cluster::Cluster::start()?;
    let database = crate::TestDatabase::create_on(&cluster.admin_url).await;
    let idps = crate::idp::IdentityProviders::shared();
    let mut options = restartable(idps.gateway_config());
    options.env.extend([
        (
            "ICBT_SERVER__REQUEST_TIMEOUT_MS".into(),
            REQUEST_TIMEOUT.as_millis().to_string(),
        ),
        ("ICBT_STORAGE__ACQUIRE_TIMEOUT_MS".into(), "1000".into()),
    ]);
    let gw = Gateway::start_on(database, options);
    let cast = Arc::new(Cast::new(&gw, plan.episodes).await);
    let epj = Epj::start();
    let config = export_config(&gw, &epj, cast.journal_key.path());
    let exporter = ExporterProcess::start(&gw, &config, &["run"]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        gw.url.clone(),
        gw.client(),
        cast.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = Arc::new(Ledger::default());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = {
        let (cast, ledger, done) = (cast.clone(), ledger.clone(), done.clone());
        tokio::spawn(async move {
            cast.send(&ledger, plan.per_episode, Duration::from_mins(2), &done)
                .await;
        })
    };
    let mut restarts = Vec::new();
    let mut problems = Vec::new();
    for _ in 0..plan.restarts {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (restart, found) = restart_once(&cluster, &gw, &cast, plan.away, REQUEST_TIMEOUT).await;
        restarts.push(restart);
        problems.extend(found);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    sending.await.unwrap();
    let mut findings = after_run(&gw, &epj, &cast.episodes(), &ledger, &exporter).await;
    findings.problems.extend(problems);
    let missed = missed_by_stream(&ledger, &seen).await;
    if missed > 0 {
        findings.problems.push(format!(
            "the therapist's stream missed {missed} acknowledged messages"
        ));
    }
    stop.store(true, Ordering::Relaxed);
    follower.abort();
    drop(exporter);
    let each: Vec<String> = restarts
        .iter()
        .map(|r| {
            format!(
                "readyz 503 after {} ms, a request answered 503 in {} ms, ready {} ms after the database",
                r.noticed.as_millis(),
                r.answered.as_millis(),
                r.back.as_millis()
            )
        })
        .collect();
    let report = format!(
        "{} database restarts under a running gateway; {findings}; {} requests, {} retried, {} abandoned; {} (2 cores shared by client, gateway, exporter, both PostgreSQL servers and the EPJ)",
        restarts.len(),
        ledger.requests.load(Ordering::Relaxed),
        ledger.retried.load(Ordering::Relaxed),
        ledger.abandoned.load(Ordering::Relaxed),
        each.join("; "),
    );
    assert!(
        findings.problems.is_empty() && findings.acked > 0,
        "{report}"
    );
    Some(report)
}
