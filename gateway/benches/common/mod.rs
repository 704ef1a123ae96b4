//! What the gateway's benches share: a PostgreSQL database of their own for one run,
//! created on the server at `E2E_POSTGRES_URL` and dropped at the end.

use sqlx::Connection;

pub struct BenchDatabase {
    admin: sqlx::PgConnection,
    name: String,
    /// The database's URL.
    pub url: String,
    /// The gateway's storage configuration for it, with `data_dir` in a temporary folder.
    pub config: icbt_config::StorageConfig,
    pub dir: tempfile::TempDir,
}

impl BenchDatabase {
    /// A fresh database, for a store of `max_connections`.
    pub async fn create(max_connections: u32) -> Self {
        let admin_url = std::env::var("E2E_POSTGRES_URL").expect("E2E_POSTGRES_URL");
        let name = format!("icbt_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        let url = format!("{base}/{name}");
        let dir = tempfile::tempdir().unwrap();
        let config = icbt_config::StorageConfig {
            data_dir: dir.path().to_owned(),
            url: Some(url.clone()),
            max_connections,
            ..Default::default()
        };
        Self {
            admin,
            name,
            url,
            config,
            dir,
        }
    }

    /// Drops the database (its pools closed first by the caller).
    pub async fn drop(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .unwrap();
    }
}

/// Writes `figures` to `<ICBT_BENCH_OUT>/<bench>.json` for `scripts/bench/report`, when
/// the variable is set.
#[allow(dead_code)] // Not every bench reports figures.
pub fn write_figures(bench: &str, figures: &serde_json::Map<String, serde_json::Value>) {
    let Some(dir) = std::env::var_os("ICBT_BENCH_OUT").map(std::path::PathBuf::from) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::to_string_pretty(figures).unwrap_or_default();
    let _ = std::fs::write(dir.join(format!("{bench}.json")), text);
}
