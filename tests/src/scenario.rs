//! A browser scenario (`tests/peers/*.mjs`, puppeteer-core in Debian's Chromium) run as a
//! child process that talks to the Rust test one line at a time: the script asks for
//! something done to the gateway or its database ("TAMPER …"), the test does it and
//! answers, and the script's last line is its JSON summary.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

/// A running scenario.
#[derive(Debug)]
pub struct Scenario {
    child: Child,
    to_script: ChildStdin,
    lines: UnboundedReceiver<String>,
    quiet_limit: Duration,
    last: Option<String>,
}

impl Scenario {
    /// Starts `node <peers>/<script> <args…>` in `peers`; a script silent for longer than
    /// `quiet_limit` fails the test.
    pub fn start(peers: &Path, script: &str, args: &[(&str, &str)], quiet_limit: Duration) -> Self {
        let mut command = Command::new("node");
        command.arg(peers.join(script));
        for (flag, value) in args {
            command.arg(format!("--{flag}")).arg(value);
        }
        let mut child = command
            .current_dir(peers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("node {script}: {e}"));
        let to_script = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            to_script,
            lines,
            quiet_limit,
            last: None,
        }
    }

    /// The script's next line; `None` once it has ended.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(self.quiet_limit, self.lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("the browser scenario went quiet for {:?}", self.quiet_limit)
            });
        if line.is_some() {
            self.last.clone_from(&line);
        }
        line
    }

    /// Answers the script's last request.
    pub fn answer(&mut self, line: &str) {
        writeln!(self.to_script, "{line}").expect("the scenario reads its answers");
    }

    /// Waits for the script to end; its summary (the last line), which must say no step
    /// failed, and that it exited 0.
    pub fn summary(mut self) -> serde_json::Value {
        let status = self.child.wait().expect("the scenario ends");
        let last = self.last.take().expect("a summary line");
        let summary: serde_json::Value = serde_json::from_str(&last)
            .unwrap_or_else(|_| panic!("the last line is no JSON summary: {last}"));
        assert!(status.success(), "{summary}");
        assert_eq!(summary["failures"], serde_json::json!([]), "{summary}");
        summary
    }
}
