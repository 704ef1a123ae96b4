//! Audit figures, from one run (`scripts/bench/audit`): the cost of the access record on
//! the send path (a message insert committed alone, and with its audit record in the same
//! transaction, at 1 and 8 concurrent writers), the WAL that sequencing writes per record
//! and how much the log's tables grow by,
//! and `audit verify` speed in records/s.
//!
//! Uses the PostgreSQL at `E2E_POSTGRES_URL` (a fresh database is created and dropped).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use icbt_gateway::audit::sequencer::AuditLog;
use icbt_gateway::audit::verify::Verifier;
use icbt_gateway::audit::{Access, Action};
use icbt_gateway::storage::Store;

const RUN: Duration = Duration::from_secs(5);

mod common;

#[tokio::main]
async fn main() {
    let db = common::BenchDatabase::create(16).await;
    let dir = &db.dir;
    let store = Store::open(&db.config).await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE bench_messages (id TEXT PRIMARY KEY, episode_id TEXT, body BYTEA, created_at_ms BIGINT)")
        .execute(&pool)
        .await
        .unwrap();

    let mut figures = serde_json::Map::new();
    println!("writers  message alone/s  message+audit/s  ratio");
    for writers in [1, 8] {
        let alone = rate(&pool, writers, false).await;
        let audited = rate(&pool, writers, true).await;
        println!(
            "{writers:>7}  {alone:>15.0}  {audited:>15.0}  {:>4.0} %",
            100.0 * audited / alone
        );
        figures.insert(
            format!("commits_{writers}_writers"),
            serde_json::json!({ "message_alone": alone, "message_and_audit": audited }),
        );
    }

    // Verify speed over everything written above, sequenced first.
    let log = AuditLog::from_config(&icbt_config::AuditConfig::default(), dir.path()).unwrap();
    let (sequenced, sequencing) = sequence(&store, &pool, &log, &mut figures).await;
    let started = Instant::now();
    let mut verifier = Verifier::new(
        store.audit_checkpoints().await.unwrap(),
        log.trusted.clone(),
        &log.retention,
        0,
    );
    let mut from = 0;
    loop {
        let page = store.audit_scan(from, 10_000).await.unwrap();
        let Some(last) = page
            .last()
            .and_then(|row| row.as_ref().ok())
            .and_then(|s| s.leaf_index)
        else {
            break;
        };
        for row in &page {
            verifier.feed_row(row);
        }
        from = last + 1;
    }
    let report = verifier.finish();
    let verifying = started.elapsed();
    assert_eq!(report.problem, None);
    println!(
        "sequenced {sequenced} records in {:.2} s ({:.0} records/s); verified {} records and {} checkpoints in {:.2} s ({:.0} records/s)",
        sequencing.as_secs_f64(),
        sequenced as f64 / sequencing.as_secs_f64(),
        report.records,
        report.checkpoints,
        verifying.as_secs_f64(),
        report.records as f64 / verifying.as_secs_f64()
    );

    figures.insert(
        "sequenced_per_second".into(),
        (sequenced as f64 / sequencing.as_secs_f64()).into(),
    );
    figures.insert(
        "verified_per_second".into(),
        (report.records as f64 / verifying.as_secs_f64()).into(),
    );
    common::write_figures("audit", &figures);
    store.close().await;
    pool.close().await;
    db.drop().await;
}

/// Transactions per second: a 2 KiB message row, with or without its audit record.
async fn rate(pool: &sqlx::PgPool, writers: usize, audited: bool) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (pool, done) = (pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let body = vec![7u8; 2048];
            let episode = uuid::Uuid::new_v4().to_string();
            while Instant::now() < deadline {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO bench_messages (id, episode_id, body, created_at_ms) VALUES ($1, $2, $3, $4)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&episode)
                    .bind(&body)
                    .bind(0i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if audited {
                    let r = Access {
                        request_id: Some(uuid::Uuid::new_v4().to_string()),
                        source: Some("127.0.0.1".into()),
                    }
                    .anonymous(Action::Create, "messages");
                    sqlx::query(
                        "INSERT INTO audit_records (id, recorded_at_ms, action, outcome, principal_kind, principal_id, \
                         issuer, client_id, token_jti, resource_type, resource_id, episode_id, patient, request_id, source) \
                         VALUES ($1, $2, $3, $4, 'patient', '01018512345', 'idporten', 'icbt-platform', $5, $6, $7, $8, '01018512345', $9, $10)",
                    )
                    .bind(r.id.to_string())
                    .bind(r.recorded_at_ms)
                    .bind(r.action.as_str())
                    .bind(r.outcome.as_str())
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&r.resource_type)
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&episode)
                    .bind(&r.request_id)
                    .bind(&r.source)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / RUN.as_secs_f64()
}

/// Sequences everything waiting, and records the WAL written and how much the log's
/// tables grew, per record. Returns the records sequenced and the time it took.
async fn sequence(
    store: &Store,
    pool: &sqlx::PgPool,
    log: &AuditLog,
    figures: &mut serde_json::Map<String, serde_json::Value>,
) -> (u64, Duration) {
    let lsn = |pool: sqlx::PgPool| async move {
        let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        lsn
    };
    // The access log's tables and their indexes, whatever the schema calls them.
    let stored = |pool: sqlx::PgPool| async move {
        let (bytes,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             WHERE c.relkind = 'r' AND c.relname LIKE 'audit\\_%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        bytes
    };
    let stored_before = stored(pool.clone()).await;
    let before = lsn(pool.clone()).await;
    let started = Instant::now();
    let sequenced = log.sequence_all(store).await.unwrap();
    let sequencing = started.elapsed();
    let after = lsn(pool.clone()).await;
    let grown = (stored(pool.clone()).await - stored_before) as f64 / sequenced as f64;
    println!(
        "the access log's tables grew by {grown:.0} bytes a record while sequencing (before any vacuum)"
    );
    figures.insert("sequencing_growth_bytes_per_record".into(), grown.into());
    let (wal,): (f64,) = sqlx::query_as("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
        .bind(&after)
        .bind(&before)
        .fetch_one(pool)
        .await
        .unwrap();
    println!(
        "WAL written while sequencing: {:.0} bytes a record ({sequenced} records; the whole database's WAL in that time)",
        wal / sequenced as f64
    );
    figures.insert(
        "sequencing_wal_bytes_per_record".into(),
        (wal / sequenced as f64).into(),
    );
    (sequenced, sequencing)
}
