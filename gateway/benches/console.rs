//! Console figures, from one run (`scripts/bench/console`), on PostgreSQL with a generated
//! access log (1 000 000 records over 60 days unless `BENCH_RECORDS` says otherwise):
//!
//! - time to the first page (100 records) of a filtered search, p50 and p99, per filter;
//! - time for each review report over the last 30 days;
//! - the Rust verifier's time for one checkpoint note plus 100 inclusion proofs, and a
//!   fixture of the same work (`BENCH_FIXTURE`) for the browser to do beside it.
//!
//! Uses the PostgreSQL at `E2E_POSTGRES_URL` (a fresh database is created and dropped).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::too_many_lines
)]

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_gateway::audit::review::{self, Kind};
use icbt_gateway::audit::sequencer::AuditLog;
use icbt_gateway::audit::{Action, Outcome, Record};
use icbt_gateway::storage::{AuditFilter, Store};
use uuid::Uuid;

const DAY: i64 = 86_400_000;
const CLINICIANS: u64 = 300;
const PATIENTS: u64 = 20_000;
const EPISODES: u64 = 20_000;

/// A small deterministic generator, so two runs write the same log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hpr(n: u64) -> String {
    format!("{}", 9_000_000 + n)
}

/// A synthetic (month + 80) national id number with valid check digits.
fn patient(n: u64) -> String {
    let base = format!(
        "{:02}{:02}{:02}{:03}",
        1 + n % 28,
        81 + (n / 28) % 12,
        50 + (n / 336) % 40,
        100 + n % 800
    );
    icbt_auth::identity::NationalId::with_check_digits(&base)
        .or_else(|| {
            icbt_auth::identity::NationalId::with_check_digits(&format!(
                "{}{}",
                &base[..8],
                (base.as_bytes()[8] - b'0' + 1) % 10
            ))
        })
        .map(|p| p.expose().to_owned())
        .unwrap_or(base + "00")
}

fn episode(n: u64) -> Uuid {
    Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + u128::from(n))
}

/// The access record of access `i` of `total`, spread evenly over the 60 days before `now`.
fn record(rng: &mut Rng, i: u64, total: u64, now: i64) -> Record {
    let at = now - 60 * DAY + (i as i64) * (60 * DAY / total as i64);
    let e = rng.below(EPISODES);
    let therapist = e % CLINICIANS;
    // Mostly the episode's own therapist; now and then a colleague, and a few refusals.
    let clinician = if rng.below(100) == 0 {
        rng.below(CLINICIANS)
    } else {
        therapist
    };
    let refused = rng.below(50) == 0;
    let patient_kind = rng.below(3) == 0;
    Record {
        id: Uuid::from_u128(u128::from(rng.next()) << 64 | u128::from(i)),
        recorded_at_ms: at,
        action: [Action::Read, Action::Read, Action::Create, Action::Search][rng.below(4) as usize],
        outcome: if refused {
            Outcome::Refused
        } else {
            Outcome::Success
        },
        reason: refused.then(|| "not_on_care_team".into()),
        principal_kind: if patient_kind {
            "patient".into()
        } else {
            "clinician".into()
        },
        principal_id: Some(if patient_kind {
            patient(e % PATIENTS)
        } else {
            hpr(clinician)
        }),
        principal_organisation: Some("998877660".into()),
        issuer: Some("helseid".into()),
        client_id: Some("icbt-platform".into()),
        token_jti: Some(format!("jti-{i}")),
        resource_type: "messages".into(),
        resource_id: None,
        episode_id: Some(episode(e)),
        patient: Some(patient(e % PATIENTS)),
        request_id: Some(format!("req-{i}")),
        source: Some("10.0.0.7".into()),
    }
}

/// Makes a filter from random values and the present time.
type MakeFilter = fn(&mut Rng, i64) -> AuditFilter;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

mod common;

#[tokio::main]
async fn main() {
    let total: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = common::BenchDatabase::create(8).await;
    let dir = &db.dir;
    let store = Store::open(&db.config).await.unwrap();
    let log = AuditLog::from_config(&icbt_config::AuditConfig::default(), dir.path()).unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();

    // The log: records, then the tree (as the sequencer builds it in production).
    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..total {
        batch.push(record(&mut rng, i, total, now));
        if batch.len() == 1_000 {
            store.record_access(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.record_access(&batch).await.unwrap();
    let written = started.elapsed();
    let started = Instant::now();
    log.sequence_all(&store).await.unwrap();
    let sequenced = started.elapsed();
    // Care teams: each episode's own therapist, for the whole period.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Identifiers in the one form the database accepts (a UUID for the clinic).
    let clinic = Uuid::from_u128(0xc).to_string();
    sqlx::query(
        "INSERT INTO clinics (id, name, org_number, created_at_ms) VALUES ($1, 'Bench', '998877660', 0)",
    )
    .bind(&clinic)
    .execute(&pool)
    .await
    .unwrap();
    for chunk in (0..EPISODES).collect::<Vec<_>>().chunks(1_000) {
        let mut episodes = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO episodes (id, clinic_id, patient_nin, programme, state, created_at_ms, updated_at_ms) ",
        );
        episodes.push_values(chunk, |mut b, e| {
            b.push_bind(episode(*e).to_string())
                .push_bind(&clinic)
                .push_bind(patient(e % PATIENTS))
                .push_bind("bench")
                .push_bind("active")
                .push_bind(0i64)
                .push_bind(0i64);
        });
        episodes.build().execute(&pool).await.unwrap();
        let mut periods = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO care_team_periods (episode_id, hpr_number, role, from_ms) ",
        );
        periods.push_values(chunk, |mut b, e| {
            b.push_bind(episode(*e).to_string())
                .push_bind(hpr(e % CLINICIANS))
                .push_bind("therapist")
                .push_bind(0i64);
        });
        periods.build().execute(&pool).await.unwrap();
    }
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    println!(
        "PostgreSQL, {total} access records over 60 days; 2 cores shared by this process and the database"
    );
    println!(
        "  written in {:.1} s, sequenced into the tree in {:.1} s ({:.0} records/s)",
        written.as_secs_f64(),
        sequenced.as_secs_f64(),
        total as f64 / sequenced.as_secs_f64()
    );

    // Searches: the first page of 100, each filter 50 times with random values.
    println!("\nfirst page (100 records) of a filtered search, 50 runs each:");
    println!("  {:<34} {:>9} {:>9}", "filter", "p50 ms", "p99 ms");
    let filters: [(&str, MakeFilter); 6] = [
        ("patient", |r, _| AuditFilter {
            patient: Some(patient(r.below(PATIENTS))),
            ..Default::default()
        }),
        ("principal (HPR)", |r, _| AuditFilter {
            principal: Some(hpr(r.below(CLINICIANS))),
            ..Default::default()
        }),
        ("episode", |r, _| AuditFilter {
            episode: Some(episode(r.below(EPISODES))),
            ..Default::default()
        }),
        ("principal + one day", |r, now| {
            let day = now - (1 + r.below(59) as i64) * DAY;
            AuditFilter {
                principal: Some(hpr(r.below(CLINICIANS))),
                from_ms: Some(day),
                to_ms: Some(day + DAY),
                ..Default::default()
            }
        }),
        ("outcome refused + one day", |r, now| {
            let day = now - (1 + r.below(59) as i64) * DAY;
            AuditFilter {
                outcome: Some(Outcome::Refused),
                from_ms: Some(day),
                to_ms: Some(day + DAY),
                ..Default::default()
            }
        }),
        ("outcome refused, whole log", |_, _| AuditFilter {
            outcome: Some(Outcome::Refused),
            ..Default::default()
        }),
    ];
    for (label, filter) in filters {
        let mut samples = Vec::new();
        let mut rng = Rng(42);
        for _ in 0..50 {
            let f = filter(&mut rng, now);
            let started = Instant::now();
            let page = store.audit_page(&f, None, 100).await;
            samples.push(started.elapsed());
            if let Err(e) = page {
                println!("  {label}: {e}");
                break;
            }
        }
        println!(
            "  {label:<34} {:>9.1} {:>9.1}",
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99)
        );
    }

    // Review reports over the last 30 days.
    let mut review_config = icbt_config::ReviewConfig {
        time_limit_ms: 600_000,
        ..Default::default()
    };
    review_config.distinct_patients_per_day = 30;
    let settings = review::Settings::from_config(&review_config).unwrap();
    println!("\nreview reports over the last 30 days:");
    println!(
        "  {:<16} {:>9} {:>10} {:>6}",
        "report", "seconds", "records", "rows"
    );
    for kind in Kind::ALL {
        let started = Instant::now();
        let report = review::run(
            &store,
            &settings,
            kind,
            (now - 30 * DAY, now),
            &review::Scope::Everything,
        )
        .await
        .unwrap();
        println!(
            "  {:<16} {:>9.2} {:>10} {:>6}",
            kind.as_str(),
            started.elapsed().as_secs_f64(),
            report.records_scanned,
            report.rows.len()
        );
    }

    // One checkpoint note and 100 inclusion proofs, in Rust; the same as a fixture.
    let head = store.audit_checkpoint(None).await.unwrap().unwrap();
    let size = head.checkpoint.size;
    let leaves = store.audit_leaf_hashes(size).await.unwrap();
    let mut rng = Rng(7);
    let mut picked = Vec::new();
    for _ in 0..100 {
        let index = rng.below(size);
        let page = store.audit_scan(index, 1).await.unwrap();
        let stored = page.into_iter().next().unwrap().unwrap();
        let proof = icbt_merkle::inclusion_proof(&leaves, index).unwrap();
        picked.push((stored, proof));
    }
    let note = head.note().unwrap();
    let public = log.signer.public_key().to_vec();
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        let signed = icbt_merkle::SignedCheckpoint::from_note(&note).unwrap();
        signed.verify(&[&public]).unwrap();
        for (stored, proof) in &picked {
            let index = stored.leaf_index.unwrap();
            let leaf = stored.record.leaf_hash(index);
            icbt_merkle::verify_inclusion(&leaf, index, size, proof, &signed.checkpoint.root)
                .unwrap();
        }
    }
    let rust_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!(
        "\nverify one checkpoint note + 100 inclusion proofs (leaves rebuilt from the records):"
    );
    println!("  Rust (icbt-merkle, ring): {rust_ms:.2} ms a round, mean of {rounds}");
    if let Ok(path) = std::env::var("BENCH_FIXTURE") {
        let records: Vec<serde_json::Value> = picked
            .iter()
            .map(|(stored, proof)| {
                let mut value = serde_json::to_value(&stored.record).unwrap();
                value["index"] = stored.leaf_index.unwrap().into();
                value["leaf_format"] = 2.into();
                value["proof"] = proof
                    .iter()
                    .map(|h| STANDARD.encode(h))
                    .collect::<Vec<_>>()
                    .into();
                value
            })
            .collect();
        let fixture = serde_json::json!({
            "note": note,
            "public_key": STANDARD.encode(&public),
            "size": size,
            "records": records,
            "rust_ms": rust_ms,
        });
        std::fs::write(&path, fixture.to_string()).unwrap();
    }

    store.close().await;
    pool.close().await;
    db.drop().await;
}
