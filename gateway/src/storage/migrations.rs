//! Schema migrations, embedded in the binary and applied at start (sqlx's migrator,
//! which records a checksum of each and refuses a changed one).

use std::collections::HashSet;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

/// `(version, description, SQL)`, in order. Append; never edit an applied migration.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "clinics and episodes",
        include_str!("../../migrations/0001_clinics_episodes.sql"),
    ),
    (
        2,
        "dpop replay",
        include_str!("../../migrations/0002_dpop_replay.sql"),
    ),
    (
        3,
        "login sessions",
        include_str!("../../migrations/0003_login_sessions.sql"),
    ),
];

pub(super) fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
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
    let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_all(pool)
        .await?;
    let applied: HashSet<i64> = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>(0).ok())
        .collect();
    Ok(MIGRATIONS
        .iter()
        .all(|(version, ..)| applied.contains(version)))
}
