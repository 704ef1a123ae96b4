//! Nothing lost under crashes, the short version that runs in CI (`scripts/load kill`
//! runs the long one): concurrent sends through the Rust SDK while the gateway is killed
//! with SIGKILL and restarted again and again, and the exporter killed on its own
//! schedule. Every acknowledged message must be stored exactly once under the sequence
//! number it was acknowledged with, with no gaps, the access log must verify, and the
//! EPJ must hold each stored message exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // test code stops at the first surprise

use std::time::Duration;

use icbt_e2e::load::{KillPlan, RestartPlan, kill_run, restart_run};
use icbt_e2e::{Backend, backends};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_sends_loses_and_duplicates_nothing() {
    for backend in backends() {
        let kills = match backend {
            Backend::Postgres => 10,
            Backend::Sqlite => 5,
        };
        let plan = KillPlan {
            episodes: 16,
            per_episode: 1_000,
            kills,
            until_sent: false,
            gap: Duration::from_millis(800),
            exporter_every: Duration::from_secs(2),
        };
        let report = kill_run(backend, plan).await;
        println!("{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rides_out_a_postgresql_restart_without_losing_anything() {
    let plan = RestartPlan {
        episodes: 8,
        per_episode: 1_000,
        restarts: 1,
        away: Duration::from_secs(3),
    };
    if let Some(report) = restart_run(plan).await {
        println!("{report}");
    } else {
        let required = std::env::var("E2E_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PostgreSQL's server programs (initdb, pg_ctl) are needed here"
        );
        eprintln!("note: no initdb/pg_ctl; skipping the database restart run");
    }
}
