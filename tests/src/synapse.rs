//! Synapse, the Matrix homeserver, as the peer the messaging bench measures the gateway
//! beside: installed from PyPI into a virtual environment of its own by
//! `scripts/bench/messaging` (`ICBT_SYNAPSE_PYTHON` names its interpreter), run here as
//! one process (no workers) on a database of its own on the bench's PostgreSQL, with
//! every rate limit raised. Plain HTTP on loopback: Synapse is deployed behind a
//! TLS-terminating proxy, which the bench leaves out, so the peer is spared the TLS the
//! gateway does itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::TestDatabase;

/// Server name of the bench homeserver: user ids are `@name:bench.local`.
const SERVER_NAME: &str = "bench.local";
const PASSWORD: &str = "bench-password";

/// A running Synapse; stopped and its database dropped when dropped.
#[derive(Debug)]
pub struct Synapse {
    child: Child,
    python: PathBuf,
    dir: tempfile::TempDir,
    _database: TestDatabase,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The release the server says it is (`/_synapse/admin/v1/server_version`), once an
    /// admin has logged in.
    pub version: String,
    http: reqwest::Client,
}

/// A logged-in device of a Matrix user.
#[derive(Clone, Debug)]
pub struct Device {
    pub user: String,
    pub token: String,
}

impl Synapse {
    /// The interpreter of Synapse's virtual environment, if the bench was given one.
    #[must_use]
    pub fn python() -> Option<PathBuf> {
        std::env::var_os("ICBT_SYNAPSE_PYTHON").map(PathBuf::from)
    }

    /// Starts Synapse with `python` on a new database and waits until it answers.
    ///
    /// # Panics
    /// If it does not start within a minute (its log is printed).
    pub async fn start(python: &Path) -> Self {
        let database = TestDatabase::create_c_collated().await;
        let dir = tempfile::tempdir().expect("a directory for Synapse");
        let port = crate::free_port();
        write_config(dir.path(), port, &database.url);
        let config = dir.path().join("homeserver.yaml");
        let keys = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config)
            .output()
            .expect("run Synapse's key generation");
        assert!(
            keys.status.success(),
            "Synapse's key generation: {}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .spawn()
            .expect("start Synapse");
        let url = format!("http://127.0.0.1:{port}");
        let mut synapse = Self {
            child,
            python: python.to_owned(),
            dir,
            _database: database,
            url,
            version: String::new(),
            http: reqwest::Client::new(),
        };
        synapse.wait_ready().await;
        synapse
    }

    async fn wait_ready(&mut self) {
        let versions = format!("{}/_matrix/client/versions", self.url);
        for _ in 0..600 {
            if let Ok(r) = self.http.get(&versions).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Synapse exited with {status}: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Synapse did not answer within a minute: {}", self.log());
    }

    /// Synapse's own log and its standard error, for a failure message.
    #[must_use]
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}\n{}", read("homeserver.log"), read("stderr.log"))
    }

    /// Registers `name` (an admin if `admin`) with Synapse's own tool and the shared
    /// secret, lifts its rate limits and logs in its first device.
    ///
    /// # Panics
    /// If Synapse refuses.
    pub async fn user(&mut self, name: &str, admin: bool) -> Device {
        let tool = self.python.with_file_name("register_new_matrix_user");
        let done = Command::new(tool)
            .args([
                "-u",
                name,
                "-p",
                PASSWORD,
                if admin { "-a" } else { "--no-admin" },
            ])
            .arg("-c")
            .arg(self.dir.path().join("homeserver.yaml"))
            .arg(&self.url)
            .output()
            .expect("run register_new_matrix_user");
        assert!(
            done.status.success(),
            "registering {name}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        let device = self.login(name).await;
        if admin {
            let version = self
                .call(
                    &device,
                    reqwest::Method::GET,
                    "/_synapse/admin/v1/server_version",
                    None,
                )
                .await;
            // Only the release: Synapse appends `git describe` of the folder it runs
            // from, which inside this repository names the gateway's commit.
            version["server_version"]
                .as_str()
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .clone_into(&mut self.version);
        }
        device
    }

    /// Lifts `user`'s message rate limit, with `admin`'s device.
    pub async fn unlimit(&self, admin: &Device, user: &str) {
        let path = format!("/_synapse/admin/v1/users/{user}/override_ratelimit");
        self.call(
            admin,
            reqwest::Method::POST,
            &path,
            Some(&json!({ "messages_per_second": 0, "burst_count": 0 })),
        )
        .await;
    }

    /// A new device of `name`, by password login.
    ///
    /// # Panics
    /// If the login is refused.
    pub async fn login(&self, name: &str) -> Device {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": name },
            "password": PASSWORD,
        });
        let answer: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/login", self.url))
            .json(&body)
            .send()
            .await
            .expect("Synapse login")
            .json()
            .await
            .expect("a login answer");
        Device {
            user: format!("@{name}:{SERVER_NAME}"),
            token: answer["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("no token: {answer}"))
                .to_owned(),
        }
    }

    /// A private room made by `owner` that `members` have joined; its id.
    pub async fn room(&self, owner: &Device, members: &[&Device]) -> String {
        let invite: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        let made = self
            .call(
                owner,
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&json!({ "preset": "private_chat", "invite": invite })),
            )
            .await;
        let room = made["room_id"].as_str().expect("a room id").to_owned();
        for member in members {
            self.call(
                member,
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&json!({})),
            )
            .await;
        }
        room
    }

    /// A client API call that must succeed; its JSON answer.
    ///
    /// # Panics
    /// On any answer but 2xx.
    pub async fn call(
        &self,
        device: &Device,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&device.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("a Synapse call");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// The process id, for its memory.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Sync filter of the push listeners: room timelines only, as a messaging client asks.
const SYNC_FILTER: &str = r#"{"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]},"room":{"timeline":{"limit":50},"state":{"lazy_load_members":true},"ephemeral":{"not_types":["*"]},"account_data":{"not_types":["*"]}}}"#;

impl Synapse {
    /// Sends a second by `clients` concurrent clients of `sender` for `run`, client `c`
    /// into `rooms[c % rooms.len()]`, each message an `m.text` whose body is `text`; and
    /// every send's latency, sorted.
    ///
    /// # Panics
    /// On a refused send.
    pub async fn send_rate(
        &self,
        sender: &Device,
        rooms: &[String],
        clients: usize,
        text: &str,
        run: Duration,
    ) -> (f64, Vec<Duration>) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .expect("an HTTP client");
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, stop, sender) = (http.clone(), stop.clone(), sender.clone());
            let base = format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message",
                self.url,
                rooms[c % rooms.len()]
            );
            let body = json!({ "msgtype": "m.text", "body": text });
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    let target = format!("{base}/{}", uuid::Uuid::new_v4().simple());
                    send(&http, &target, &sender, &body).await;
                    latencies.push(started.elapsed());
                }
                latencies
            }));
        }
        tokio::time::sleep(run).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("a send task"));
        }
        all.sort();
        #[allow(clippy::cast_precision_loss)]
        let rate = all.len() as f64 / run.as_secs_f64();
        (rate, all)
    }

    /// Send-to-delivery latency through `/sync` long-polls: each of `listeners` (devices
    /// of room members) keeps one `/sync` waiting; `sender` sends `messages` messages
    /// (after one to warm up) 200 ms apart into `room`. Every delivery's latency from the
    /// send's start, sorted.
    ///
    /// # Panics
    /// On a refused call.
    pub async fn push(
        &self,
        sender: &Device,
        listeners: &[Device],
        room: &str,
        messages: usize,
        text: &str,
    ) -> Vec<Duration> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};
        use std::time::Instant;
        let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let filter =
            url::form_urlencoded::byte_serialize(SYNC_FILTER.as_bytes()).collect::<String>();
        let mut readers = Vec::new();
        for device in listeners {
            let first = self
                .call(
                    device,
                    reqwest::Method::GET,
                    &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                    None,
                )
                .await;
            let mut since = first["next_batch"]
                .as_str()
                .expect("a sync token")
                .to_owned();
            let (sent_at, latencies, device) = (sent_at.clone(), latencies.clone(), device.clone());
            let (url, http) = (self.url.clone(), self.http.clone());
            let filter = filter.clone();
            readers.push(tokio::spawn(async move {
                let mut seen = 0;
                while seen < messages + 1 {
                    let answer = http
                        .get(format!("{url}/_matrix/client/v3/sync?timeout=20000&since={since}&filter={filter}"))
                        .bearer_auth(&device.token)
                        .send()
                        .await;
                    let Ok(answer) = answer else { break };
                    let Ok(body) = answer.json::<Value>().await else { break };
                    let now = Instant::now();
                    since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
                    let Some(rooms) = body["rooms"]["join"].as_object() else {
                        continue;
                    };
                    for joined in rooms.values() {
                        for event in joined["timeline"]["events"].as_array().into_iter().flatten() {
                            let Some(id) = event["content"]["bench_id"].as_str() else {
                                continue;
                            };
                            seen += 1;
                            if let Some(start) = sent_at.lock().expect("lock").get(id) {
                                latencies.lock().expect("lock").push(now - *start);
                            }
                        }
                    }
                }
            }));
        }
        let send_http = reqwest::Client::new();
        for n in 0..=messages {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let body = json!({ "msgtype": "m.text", "body": text, "bench_id": id });
            let start = Instant::now();
            if n > 0 {
                sent_at.lock().expect("lock").insert(id.clone(), start);
            }
            let target = format!(
                "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/{id}",
                self.url
            );
            send(&send_http, &target, sender, &body).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
        }
        let mut all = latencies.lock().expect("lock").clone();
        all.sort();
        all
    }
}

/// `PUT`s one message event to `target` as `sender`; it must be accepted.
async fn send(http: &reqwest::Client, target: &str, sender: &Device, body: &Value) {
    let response = http
        .put(target)
        .bearer_auth(&sender.token)
        .json(body)
        .send()
        .await
        .expect("a Synapse send");
    assert!(
        response.status().is_success(),
        "a Synapse send: {}",
        response.status()
    );
    let _ = response.bytes().await;
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16, database_url: &str) {
    let db = url::Url::parse(database_url).expect("the database URL");
    let d = dir.display();
    let config = format!(
        r"server_name: {SERVER_NAME}
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: psycopg2
  args:
    user: {user}
    host: {host}
    port: {db_port}
    dbname: {name}
    cp_min: 5
    cp_max: 10
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
registration_shared_secret: bench-shared-secret
macaroon_secret_key: bench-macaroon-secret
form_secret: bench-form-secret
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
bcrypt_rounds: 4
presence:
  enabled: false
rc_message: {{per_second: 1000000, burst_count: 1000000}}
rc_login:
  address: {{per_second: 1000000, burst_count: 1000000}}
  account: {{per_second: 1000000, burst_count: 1000000}}
  failed_attempts: {{per_second: 1000000, burst_count: 1000000}}
rc_joins:
  local: {{per_second: 1000000, burst_count: 1000000}}
rc_registration: {{per_second: 1000000, burst_count: 1000000}}
rc_room_creation: {{per_second: 1000000, burst_count: 1000000}}
rc_invites:
  per_room: {{per_second: 1000000, burst_count: 1000000}}
  per_user: {{per_second: 1000000, burst_count: 1000000}}
",
        user = db.username(),
        host = db.host_str().unwrap_or("127.0.0.1"),
        db_port = db.port().unwrap_or(5432),
        name = db.path().trim_start_matches('/'),
    );
    std::fs::write(dir.join("homeserver.yaml"), config).expect("write Synapse's config");
    let log = format!(
        r"version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    filename: {d}/homeserver.log
    formatter: precise
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"
    );
    std::fs::write(dir.join("log.yaml"), log).expect("write Synapse's log config");
}
