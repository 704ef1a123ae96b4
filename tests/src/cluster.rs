//! A PostgreSQL cluster of the test's own (Debian's `initdb` and `pg_ctl`), for tests
//! that stop the database under a running gateway: the shared server at 127.0.0.1:5432
//! serves every other test and must not go away.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster; stopped and removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    pg_ctl: PathBuf,
    /// `runuser -u postgres --` when running as root (initdb refuses root).
    run_as: Vec<String>,
    port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub admin_url: String,
}

/// The newest installed PostgreSQL's `name` program.
fn program(name: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|version| version.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Cluster {
    /// Initialises and starts a cluster on a free port; `None` when PostgreSQL's server
    /// programs are not installed.
    pub fn start() -> Option<Self> {
        let (initdb, pg_ctl) = (program("initdb")?, program("pg_ctl")?);
        let dir = tempfile::tempdir().unwrap();
        let run_as: Vec<String> = if is_root() {
            let owner = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owner.success(), "chown postgres {}", dir.path().display());
            ["runuser", "-u", "postgres", "--"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        };
        let port = crate::free_port();
        let cluster = Self {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            pg_ctl,
            run_as,
            port,
        };
        let data = cluster.data();
        let status = cluster
            .command(&initdb)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        cluster.start_again();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.current_dir(self.dir.path());
        command
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .command(&self.pg_ctl)
            .args(["-D", self.data().to_str().unwrap(), "-w", "-o", &options])
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }

    /// The postmaster and every process it has started so far (backends it starts later
    /// inherit the postmaster's CPU affinity).
    pub fn pids(&self) -> Vec<u32> {
        let Some(postmaster) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid …; comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(postmaster)
                && let Ok(pid) = entry.file_name().to_string_lossy().parse()
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// `pg_ctl stop -m immediate`: every backend killed at once, no checkpoint; the next
    /// start recovers from the WAL, as after a crash.
    pub fn stop_immediate(&self) {
        assert!(self.stop(), "pg_ctl stop failed");
    }

    fn stop(&self) -> bool {
        self.command(&self.pg_ctl)
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
