//! The raw baselines the benches measure the gateway beside: plain sqlx programs on the
//! same PostgreSQL, with none of the gateway's work but the database's.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::missing_panics_doc
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use icbt_gateway::domain::now_ms;

use crate::SYNTHETIC_FNR;
use crate::idp::CLINIC_ORG;

/// The therapist's HPR number in the baseline's rows.
const HPR: &str = "565501872";

/// The honest baseline: a plain sqlx program that commits, in one transaction per send,
/// exactly the rows a send commits (its DPoP proof id, the episode's sequence bump, the
/// message, its outbox entry and its access record), on a database with the gateway's
/// own schema, at the same concurrency, each client on its own episode as in the gateway's bench.
/// No TLS, no token, no policy, no batching: what the database costs alone.
pub async fn raw_sends(
    url: &str,
    clients: usize,
    episodes: &[String],
    envelope: &Arc<Vec<u8>>,
    run: Duration,
) -> f64 {
    // No ping before each query (sqlx's default): the gateway's pools do not ping a
    // connection in steady use either.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(u32::try_from(clients).unwrap())
        .connect(url)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (pool, stop, count, envelope) =
            (pool.clone(), stop.clone(), count.clone(), envelope.clone());
        let episode = episodes[c % episodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                raw_send(&pool, &episode, &envelope, Uuid::new_v4(), None).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Closed, not left idle: the next level's connections and the peer's must fit
    // beside the gateway's under PostgreSQL's connection limit.
    pool.close().await;
    count.load(Ordering::Relaxed) as f64 / run.as_secs_f64()
}

/// One send's rows (message `id`), in one transaction; with `notify` (channel,
/// payload), a `NOTIFY` too, delivered at the commit.
pub async fn raw_send(
    pool: &sqlx::PgPool,
    episode: &str,
    envelope: &[u8],
    id: Uuid,
    notify: Option<(&str, &str)>,
) {
    let now = now_ms();
    let id = id.to_string();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO dpop_replay (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(Uuid::new_v4().simple().to_string())
        .bind(now / 1000 + 300)
        .execute(&mut *tx)
        .await
        .unwrap();
    let (seq, last_tx): (i64, i64) = sqlx::query_as(
        "UPDATE episodes SET next_seq = next_seq + 1, \
         last_tx = GREATEST(last_tx, pg_current_xact_id()::text::bigint) \
         WHERE id = $1 AND state IN ('planned', 'active') RETURNING next_seq - 1, last_tx",
    )
    .bind(episode)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (episode_id, seq, id, kind, sender_kind, sender_ref, sender_device, \
         recipients, content_type, body, request_hash, created_at_ms, attachments, audience, tx) \
         VALUES ($1, $2, $3, 'feedback', 'clinician', $4, 'bench-device', \
         '[\"k1\",\"k2\",\"journal\"]', 'application/jose+json', $5, $6, $7, '[]', 'all', $8)",
    )
    .bind(episode)
    .bind(seq)
    .bind(&id)
    .bind(HPR)
    .bind(envelope)
    .bind(Uuid::new_v4().simple().to_string())
    .bind(now)
    .bind(last_tx)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (episode_id, kind, message_seq, next_attempt_at_ms, created_at_ms, screened) \
         VALUES ($1, 'message', $2, $3, $3, 1)",
    )
    .bind(episode)
    .bind(seq)
    .bind(now)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_records (id, recorded_at_ms, action, outcome, principal_kind, principal_id, \
         principal_organisation, issuer, client_id, token_jti, resource_type, resource_id, episode_id, \
         patient, request_id, source) VALUES ($1, $2, 'create', 'success', 'clinician', $3, $4, \
         'https://helseid.example', 'icbt-platform', $5, 'Communication', $6, $7, $8, $9, '127.0.0.1')",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(now)
    .bind(HPR)
    .bind(CLINIC_ORG)
    .bind(Uuid::new_v4().to_string())
    .bind(&id)
    .bind(episode)
    .bind(SYNTHETIC_FNR)
    .bind(Uuid::new_v4().simple().to_string())
    .execute(&mut *tx)
    .await
    .unwrap();
    if let Some((channel, payload)) = notify {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// The raw program's database: the gateway's schema (applied by opening a store on it)
/// with one clinic and `n` active episodes; their ids.
pub async fn raw_database(url: &str, n: usize) -> Vec<String> {
    let config = icbt_config::StorageConfig {
        url: Some(url.to_owned()),
        ..Default::default()
    };
    icbt_gateway::storage::Store::open(&config)
        .await
        .unwrap()
        .close()
        .await;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let clinic = Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO clinics (id, name, org_number, created_at_ms) VALUES ($1, 'Bench', $2, 0)",
    )
    .bind(&clinic)
    .bind(CLINIC_ORG)
    .execute(&pool)
    .await
    .unwrap();
    let mut episodes = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO episodes (id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'bench', 'active', 0, 0)",
        )
        .bind(&id)
        .bind(&clinic)
        .bind(SYNTHETIC_FNR)
        .execute(&pool)
        .await
        .unwrap();
        episodes.push(id);
    }
    pool.close().await;
    episodes
}

/// What a raw round trip does, from before its transaction to its end.
#[derive(Clone, Debug)]
pub enum RoundTrip {
    /// A bare `NOTIFY`, received by a listener on another connection.
    Notify,
    /// A send's rows and a `NOTIFY` committed together ([`raw_send`]), received.
    SendAndNotify,
    /// As [`Self::SendAndNotify`], and then, as the gateway must before it delivers,
    /// the receiving side reads the message and commits one access record for each of
    /// this many readers: the least work a durable, logged push does, without TLS,
    /// tokens or fan-out.
    SendNotifyAndLogReads(u32),
    /// As [`Self::SendNotifyAndLogReads`], while the access records (the sends' and the
    /// readers') are added to the log's tree at the gateway's default interval, as its
    /// sequencer does: a durable, logged push whose log is tamper-evident. The tree is
    /// built by the gateway's own sequencer ([`AuditLog::sequence_yielding`]), since the
    /// tree's work is part of what the baseline measures, not of what it leaves out.
    ///
    /// [`AuditLog::sequence_yielding`]: icbt_gateway::audit::sequencer::AuditLog::sequence_yielding
    SendNotifyLogReadsAndSequence(u32),
}

/// Round trips of `what` at a steady `rate` a second for `run`, on the database of
/// `url`, whose `episodes` (from [`raw_database`]) receive the sends, each carrying
/// `envelope`. Sorted.
pub async fn round_trips(
    url: &str,
    what: RoundTrip,
    (rate, run): (u32, Duration),
    episodes: &[String],
    envelope: &Arc<Vec<u8>>,
) -> Vec<Duration> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let sequencing = matches!(what, RoundTrip::SendNotifyLogReadsAndSequence(_));
    let sequencer = Sequencer::start(sequencing.then_some(url)).await;
    let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
    listener.listen("bench_round_trip").await.unwrap();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let expected = u64::from(rate) * run.as_secs();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(16)
        .connect(url)
        .await
        .unwrap();
    // Connections made before the timed run, as the gateway's are: a few at once, since
    // round trips overlap.
    let warm: Vec<_> = (0..4).map(|_| pool.acquire()).collect();
    drop(futures_util::future::try_join_all(warm).await.unwrap());
    let reader = {
        let (started, pool, what) = (started.clone(), pool.clone(), what.clone());
        tokio::spawn(async move {
            let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
            let mut readers = Vec::new();
            for _ in 0..expected {
                let Ok(Ok(note)) =
                    tokio::time::timeout(Duration::from_secs(10), listener.recv()).await
                else {
                    break;
                };
                let (started, latencies, pool, what) = (
                    started.clone(),
                    latencies.clone(),
                    pool.clone(),
                    what.clone(),
                );
                readers.push(tokio::spawn(async move {
                    let payload = note.payload().to_owned();
                    if let RoundTrip::SendNotifyAndLogReads(readers)
                    | RoundTrip::SendNotifyLogReadsAndSequence(readers) = what
                    {
                        log_reads(&pool, &payload, readers).await;
                    }
                    let now = Instant::now();
                    if let Some(at) = started.lock().unwrap().remove(&payload) {
                        latencies.lock().unwrap().push(now - at);
                    }
                }));
            }
            for r in readers {
                r.await.unwrap();
            }
            let mut all = latencies.lock().unwrap().clone();
            all.sort();
            all
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    for n in 0..expected {
        tick.tick().await;
        let (pool, started, what, envelope) = (
            pool.clone(),
            started.clone(),
            what.clone(),
            envelope.clone(),
        );
        let episode = episodes[usize::try_from(n).unwrap() % episodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            // The payload names the message, as the gateway's announcement names a
            // position to read from.
            let payload = format!("{episode} {id}");
            started
                .lock()
                .unwrap()
                .insert(payload.clone(), Instant::now());
            if matches!(what, RoundTrip::Notify) {
                sqlx::query("SELECT pg_notify('bench_round_trip', $1)")
                    .bind(&payload)
                    .execute(&pool)
                    .await
                    .unwrap();
            } else {
                raw_send(
                    &pool,
                    &episode,
                    &envelope,
                    id,
                    Some(("bench_round_trip", &payload)),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = reader.await.unwrap();
    sequencer.stop().await;
    pool.close().await;
    all
}

/// A raw program's sequencer, when it has one: its tree grown every second until stopped.
struct Sequencer(Option<(Arc<AtomicBool>, tokio::task::JoinHandle<u64>)>);

impl Sequencer {
    /// With `url`, the tree of that database caught up, then grown every second.
    async fn start(url: Option<&str>) -> Self {
        let Some(url) = url else {
            return Self(None);
        };
        let tree = Tree::caught_up(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        Self(Some((
            stop,
            tokio::spawn(async move { tree.sequence_until(&stopped).await }),
        )))
    }

    /// Stops it, once it has added the records of the run.
    async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            stop.store(true, Ordering::Relaxed);
            let added = task.await.unwrap();
            assert!(
                added > 0,
                "the raw program's access records were not sequenced"
            );
        }
    }
}

/// The access log's tree of a raw program's database, grown by the gateway's own
/// sequencer.
struct Tree {
    store: icbt_gateway::storage::Store,
    log: icbt_gateway::audit::sequencer::AuditLog,
    /// Holds the log's signing key, made on first use, for as long as the tree lives.
    _key_dir: tempfile::TempDir,
}

impl Tree {
    /// The tree of the database at `url`, with every record waiting now (earlier runs'
    /// records on the same database) added, so that the timed run adds only its own.
    async fn caught_up(url: &str) -> Self {
        let config = icbt_config::StorageConfig {
            url: Some(url.to_owned()),
            ..Default::default()
        };
        let key_dir = tempfile::tempdir().unwrap();
        let tree = Self {
            store: icbt_gateway::storage::Store::open(&config).await.unwrap(),
            log: icbt_gateway::audit::sequencer::AuditLog::from_config(
                &icbt_config::AuditConfig::default(),
                key_dir.path(),
            )
            .unwrap(),
            _key_dir: key_dir,
        };
        tree.add_waiting().await;
        tree
    }

    /// Adds every waiting record, as one run of the gateway's sequencer does; how many.
    async fn add_waiting(&self) -> u64 {
        self.log.sequence_yielding(&self.store, None).await.unwrap()
    }

    /// Adds the waiting records at the log's interval (the gateway's default) until
    /// `stop`; how many.
    async fn sequence_until(self, stop: &AtomicBool) -> u64 {
        let mut tick = tokio::time::interval(self.log.interval);
        let mut added = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            added += self.add_waiting().await;
        }
        self.store.close().await;
        added
    }
}

/// Reads the message `payload` names and commits `readers` access records of it.
async fn log_reads(pool: &sqlx::PgPool, payload: &str, readers: u32) {
    let (episode, id) = payload.split_once(' ').unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (_body,): (Vec<u8>,) =
        sqlx::query_as("SELECT body FROM messages WHERE episode_id = $1 AND id = $2")
            .bind(episode)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO audit_records (id, recorded_at_ms, action, outcome, principal_kind, principal_id, \
         principal_organisation, issuer, client_id, token_jti, resource_type, resource_id, episode_id, \
         patient, request_id, source) SELECT gen_random_uuid()::text, $1, 'read', 'success', 'clinician', $2, \
         $3, 'https://helseid.example', 'icbt-platform', gen_random_uuid()::text, 'Communication', $4, $5, $6, \
         NULL, NULL FROM generate_series(1, $7)",
    )
    .bind(now_ms())
    .bind(HPR)
    .bind(CLINIC_ORG)
    .bind(id)
    .bind(episode)
    .bind(SYNTHETIC_FNR)
    .bind(i32::try_from(readers).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}
