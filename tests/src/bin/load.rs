//! `scripts/load`: the load and crash runs of the gateway (docs in tests/src/load.rs).
//!
//! ```text
//! load kill [--backend postgres|sqlite] [--episodes 50] [--per-episode 200]
//!           [--kills 100] [--gap-ms 500] [--exporter-every-ms 3000]
//! load restart [--episodes 16] [--per-episode 2000] [--restarts 3] [--away-ms 5000]
//! load overload [--episodes 32] [--seconds 60] [--factor 3] [--pin]
//! load soak [--episodes 32] [--minutes 30] [--percent 50] [--pin]
//! ```
//!
//! `overload` measures the unloaded send latency and the capacity, then offers `factor`
//! times the capacity in an open loop for `seconds` (tests/src/overload.rs). With `--pin`
//! the gateway and a PostgreSQL cluster of the run's own share CPU 0 and the client has
//! the others, so that the client can offer more than the gateway serves.
//!
//! `overload` and `soak` take `--gateway-env ICBT_KEY=VALUE` (repeatable) to set the
//! gateway's configuration, e.g. `ICBT_SERVER__CONCURRENCY_LIMIT=64`.
//!
//! `soak` measures the capacity, then offers a mixed load (sends, reads, an event
//! stream) at `percent` of it for `minutes`, and reports each minute's p99, the
//! gateway's memory, file descriptors and database connections (tests/src/soak.rs); it
//! fails when the memory grew by 10 % or more after the warm-up, or a send was lost.
//!
//! `restart` stops the gateway's PostgreSQL (a cluster of its own, from Debian's
//! `initdb`) with `pg_ctl stop -m immediate` and starts it again, `restarts` times,
//! under the running gateway and exporter, while the SDK sends; the same checks, and the
//! therapist's event stream must deliver every acknowledged message.
//!
//! `kill` sends `episodes × per-episode` messages through the Rust SDK while the gateway
//! is killed with SIGKILL every `gap-ms` (jittered) until the sends are done, and the
//! exporter on its own schedule; it fails unless every acknowledged message is stored
//! once, without gaps, the access log verifies and the EPJ holds each message once, and
//! unless at least `kills` kills happened.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // a command-line tool for test runs

use std::time::Duration;

use icbt_e2e::Backend;
use icbt_e2e::load::{KillPlan, RestartPlan, kill_run, restart_run};
use icbt_e2e::overload::{OverloadPlan, overload_run};
use icbt_e2e::soak::{SoakPlan, soak_run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    let backend = match args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
    {
        None => Backend::Postgres,
        Some(b) if b == "postgres" => Backend::Postgres,
        Some(b) if b == "sqlite" => Backend::Sqlite,
        Some(other) => panic!("--backend postgres or sqlite, not {other}"),
    };
    let count = |name, default| usize::try_from(value(name, default)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gateway_env: Vec<(String, String)> = args
        .windows(2)
        .filter(|w| w[0] == "--gateway-env")
        .map(|w| {
            let (k, v) = w[1].split_once('=').expect("--gateway-env ICBT_KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    if args.first().map(String::as_str) == Some("overload") {
        let plan = OverloadPlan {
            episodes: count("--episodes", 32),
            spike: Duration::from_secs(value("--seconds", 60)),
            factor: u32::try_from(value("--factor", 3)).unwrap(),
            pin: args.iter().any(|a| a == "--pin"),
            gateway_env,
        };
        println!("{}", runtime.block_on(overload_run(plan)));
        return;
    }
    if args.first().map(String::as_str) == Some("soak") {
        let plan = SoakPlan {
            episodes: count("--episodes", 32),
            duration: Duration::from_mins(value("--minutes", 30)),
            percent: u32::try_from(value("--percent", 50)).unwrap(),
            pin: args.iter().any(|a| a == "--pin"),
            gateway_env,
        };
        let (report, held) = runtime.block_on(soak_run(plan));
        println!("{report}");
        std::process::exit(i32::from(!held));
    }
    if args.first().map(String::as_str) == Some("restart") {
        let plan = RestartPlan {
            episodes: count("--episodes", 16),
            per_episode: count("--per-episode", 2_000),
            restarts: count("--restarts", 3),
            away: Duration::from_millis(value("--away-ms", 5_000)),
        };
        let report = runtime.block_on(restart_run(plan));
        println!(
            "{}",
            report.expect("PostgreSQL's server programs (initdb, pg_ctl) are needed")
        );
        return;
    }
    if args.first().map(String::as_str) != Some("kill") {
        eprintln!(
            "usage: load kill [--backend postgres|sqlite] [--episodes N] [--per-episode N] [--kills N] [--gap-ms MS] [--exporter-every-ms MS]\n       load restart [--episodes N] [--per-episode N] [--restarts N] [--away-ms MS]\n       load overload [--episodes N] [--seconds S] [--factor F] [--pin] [--gateway-env K=V]\n       load soak [--episodes N] [--minutes M] [--percent P] [--pin] [--gateway-env K=V]"
        );
        std::process::exit(2);
    }
    let plan = KillPlan {
        episodes: count("--episodes", 50),
        per_episode: count("--per-episode", 200),
        kills: count("--kills", 100),
        until_sent: true,
        gap: Duration::from_millis(value("--gap-ms", 500)),
        exporter_every: Duration::from_millis(value("--exporter-every-ms", 3_000)),
    };
    println!("{}", runtime.block_on(kill_run(backend, plan)));
}
