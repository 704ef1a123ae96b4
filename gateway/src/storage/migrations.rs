//! Schema migrations, embedded in the binary and applied at start (sqlx's migrator,
//! which records a checksum of each and refuses a changed one).

use std::collections::HashSet;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, SqlSafeStr};

use super::Backend;

/// `(version, description, SQLite SQL, PostgreSQL SQL)`, in order; the same text where
/// the dialects agree. Append; never edit an applied migration.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (1, "clinics and episodes", CLINICS, CLINICS),
    (2, "dpop replay", DPOP, DPOP),
    (3, "login sessions", LOGIN, LOGIN),
    (
        4,
        "messaging",
        include_str!("../../migrations/sqlite/0004_messaging.sql"),
        include_str!("../../migrations/postgres/0004_messaging.sql"),
    ),
    (
        5,
        "stream positions",
        include_str!("../../migrations/sqlite/0005_stream.sql"),
        include_str!("../../migrations/postgres/0005_stream.sql"),
    ),
    (6, "receipts", RECEIPTS, RECEIPTS),
    (
        7,
        "attachments",
        include_str!("../../migrations/sqlite/0007_attachments.sql"),
        include_str!("../../migrations/postgres/0007_attachments.sql"),
    ),
    (8, "audit log", AUDIT, AUDIT),
    (9, "device keys", DEVICES, DEVICES),
    (
        10,
        "journal outbox",
        include_str!("../../migrations/sqlite/0010_outbox.sql"),
        include_str!("../../migrations/postgres/0010_outbox.sql"),
    ),
    (11, "risk alerts", RISK_ALERTS, RISK_ALERTS),
    (
        12,
        "ciphertext storage",
        include_str!("../../migrations/sqlite/0012_ciphertext_storage.sql"),
        include_str!("../../migrations/postgres/0012_ciphertext_storage.sql"),
    ),
    (
        13,
        "audit partial indexes",
        include_str!("../../migrations/sqlite/0013_audit_partial_indexes.sql"),
        include_str!("../../migrations/postgres/0013_audit_partial_indexes.sql"),
    ),
    (
        14,
        "episode order",
        include_str!("../../migrations/sqlite/0014_episode_order.sql"),
        include_str!("../../migrations/postgres/0014_episode_order.sql"),
    ),
    (15, "checkpoint notes", CHECKPOINT_NOTES, CHECKPOINT_NOTES),
    (16, "review", REVIEW, REVIEW),
    (
        17,
        "leaf format 2, canonical identifiers",
        include_str!("../../migrations/sqlite/0017_leaf_format.sql"),
        include_str!("../../migrations/postgres/0017_leaf_format.sql"),
    ),
    (
        18,
        "audit leaves, records by position",
        include_str!("../../migrations/sqlite/0018_audit_leaves.sql"),
        include_str!("../../migrations/postgres/0018_audit_leaves.sql"),
    ),
    (
        19,
        "send context version",
        include_str!("../../migrations/sqlite/0019_send_context_version.sql"),
        include_str!("../../migrations/postgres/0019_send_context_version.sql"),
    ),
    (
        20,
        "catch-up indexes",
        include_str!("../../migrations/sqlite/0020_catch_up_indexes.sql"),
        include_str!("../../migrations/postgres/0020_catch_up_indexes.sql"),
    ),
];

const REVIEW: &str = include_str!("../../migrations/0016_review.sql");

const CHECKPOINT_NOTES: &str = include_str!("../../migrations/0015_checkpoint_notes.sql");

const CLINICS: &str = include_str!("../../migrations/0001_clinics_episodes.sql");
const DEVICES: &str = include_str!("../../migrations/0009_devices.sql");
const DPOP: &str = include_str!("../../migrations/0002_dpop_replay.sql");
const LOGIN: &str = include_str!("../../migrations/0003_login_sessions.sql");
const AUDIT: &str = include_str!("../../migrations/0008_audit.sql");
const RISK_ALERTS: &str = include_str!("../../migrations/0011_risk_alerts.sql");
const RECEIPTS: &str = include_str!("../../migrations/0006_receipts.sql");

/// The migrations up to `version`.
pub(super) fn migrator(backend: Backend, version: i64) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .filter(|(v, ..)| *v <= version)
            .map(|&(version, description, sqlite, postgres)| {
                let sql = match backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Whether every embedded migration is recorded as successfully applied.
pub(super) async fn all_applied(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    let applied: HashSet<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(MIGRATIONS
        .iter()
        .all(|(version, ..)| applied.contains(version)))
}
