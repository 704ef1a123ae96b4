//! `icbt`: the command line a platform developer or tester uses against a gateway: make
//! device keys, publish them, list an episode's verified keys, seal and send, receive and
//! open, and show the safety number to compare at the intake.
//!
//! Secrets never go on the command line: the access token and the DPoP key are read from
//! files, device keys live in a file readable only by its owner. Output is JSON, one
//! object per line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};
use icbt_auth::dpop::DpopKey;
use icbt_client::{Client, Credentials, PendingSends, TreeHead, pending};
use icbt_envelope::{DeviceKeys, safety_number};
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(
    name = "icbt",
    version,
    about = "Client for icbt-gateway: keys, sealed messages, the verified key directory"
)]
struct Cli {
    /// The gateway's base URL.
    #[arg(long, env = "ICBT_GATEWAY", global = true)]
    gateway: Option<url::Url>,
    /// PEM file of CA certificates to trust (default: the system's roots).
    #[arg(long, env = "ICBT_CA_FILE", global = true)]
    ca: Option<PathBuf>,
    /// File holding the access token.
    #[arg(long, env = "ICBT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PKCS#8 DER file of the DPoP key the token is bound to (HelseID tokens).
    #[arg(long, env = "ICBT_DPOP_KEY_FILE", global = true)]
    dpop_key: Option<PathBuf>,
    /// Base64 Ed25519 public key that signs the key log (`icbt-gateway audit public-key`);
    /// repeat for earlier keys.
    #[arg(
        long = "log-key",
        env = "ICBT_LOG_KEYS",
        value_delimiter = ',',
        global = true
    )]
    log_keys: Vec<String>,
    /// File where the newest verified key log head is kept between runs, so a rewritten
    /// log is caught.
    #[arg(long, env = "ICBT_STATE_FILE", global = true)]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes a new device's keys and writes them to a file only its owner can read.
    Keygen {
        #[arg(long)]
        keys: PathBuf,
    },
    /// Publishes the device's public keys (or a clinic's journal key).
    Publish {
        #[arg(long)]
        keys: PathBuf,
        /// Publish as this clinic's journal key (organisation number; system clients).
        #[arg(long)]
        journal_for: Option<String>,
        /// Days until the keys expire.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revokes a device.
    Revoke {
        #[arg(long)]
        device: String,
    },
    /// Lists an episode's keys, each proven to be in the signed key log.
    Devices {
        #[arg(long)]
        episode: Uuid,
        /// Include revoked and expired devices.
        #[arg(long)]
        all: bool,
    },
    /// Seals a message to the episode's keys and sends it.
    Send {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        episode: Uuid,
        /// message, feedback, questionnaire-response or notice.
        #[arg(long, default_value = "message")]
        kind: String,
        /// The message id; default a new one. A send the gateway did not acknowledge is
        /// kept beside the keys, sealed, until it is: run the same command with this id
        /// (printed on failure) to retry it, and the very same bytes go again.
        #[arg(long)]
        id: Option<Uuid>,
        /// The text to send.
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        /// A file whose bytes to send.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Fetches, opens and verifies an episode's messages.
    Receive {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        episode: Uuid,
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// The safety number of this device's owner and another participant.
    SafetyNumber {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        episode: Uuid,
        /// The other party: `patient:<national id>` or `clinician:<HPR number>`.
        #[arg(long)]
        with: String,
    },
}

fn out(value: &Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")?;
    Ok(())
}

fn read_keys(path: &Path) -> anyhow::Result<DeviceKeys> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read device keys {}", path.display()))?,
    );
    DeviceKeys::from_private_json(&text)
        .with_context(|| format!("{} is not a device key file", path.display()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    let base = cli
        .gateway
        .clone()
        .context("--gateway (or ICBT_GATEWAY) is required")?;
    let token_file = cli
        .token_file
        .as_ref()
        .context("--token-file (or ICBT_TOKEN_FILE) is required")?;
    let access_token = Zeroizing::new(
        std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read {}", token_file.display()))?
            .trim()
            .to_owned(),
    );
    let dpop = match &cli.dpop_key {
        Some(path) => {
            let der = Zeroizing::new(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            );
            Some(
                DpopKey::from_pkcs8(&der)
                    .map_err(|_| anyhow::anyhow!("{} is not a PKCS#8 P-256 key", path.display()))?,
            )
        }
        None => None,
    };
    if cli.log_keys.is_empty() {
        bail!("--log-key (or ICBT_LOG_KEYS) is required: the key log's public key");
    }
    let trusted = cli
        .log_keys
        .iter()
        .map(|k| STANDARD.decode(k.trim()).context("--log-key is not base64"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let http = icbt_auth::http::https_client(cli.ca.as_deref(), Duration::from_secs(30))?;
    let seen = match &cli.state {
        Some(path) if path.exists() => {
            let state: Value = serde_json::from_slice(&std::fs::read(path)?)
                .with_context(|| format!("{} is not a state file", path.display()))?;
            serde_json::from_value::<Option<TreeHead>>(state["seen"].clone())
                .ok()
                .flatten()
        }
        _ => None,
    };
    Ok(Client::new(http, base, Credentials { access_token, dpop }, trusted).with_seen(seen))
}

fn save_state(cli: &Cli, client: &Client) -> anyhow::Result<()> {
    if let Some(path) = &cli.state {
        // Other members (the JavaScript SDK's unacknowledged sends) stay as they were.
        let mut state = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        state["seen"] = json!(client.seen());
        std::fs::write(path, state.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Keygen { keys } = &cli.command {
        let device = DeviceKeys::generate()?;
        write_private(keys, &device.to_private_json())?;
        return out(&json!({
            "device_id": device.device_id(),
            "encryption_kid": device.encryption.kid(),
        }));
    }
    let client = client(cli)?;
    let result = command(cli, &client).await;
    save_state(cli, &client)?;
    result
}

async fn command(cli: &Cli, client: &Client) -> anyhow::Result<()> {
    match &cli.command {
        Command::Keygen { .. } => Ok(()),
        Command::Publish {
            keys,
            journal_for,
            days,
        } => {
            let device = read_keys(keys)?;
            let expires = now_ms() + i64::from(*days) * 86_400_000;
            let directory = match journal_for {
                Some(org) => client.publish_journal_key(org, &device, expires).await?,
                None => client.publish_device(&device, expires).await?,
            };
            out(&json!({
                "device_id": device.device_id(),
                "encryption_kid": device.encryption.kid(),
                "owner": directory.devices.first().map(|d| d.owner.clone()),
                "log_size": directory.head.size,
            }))
        }
        Command::Revoke { device } => {
            let directory = client.revoke_device(device).await?;
            out(
                &json!({ "device_id": device, "revoked": directory.devices.first().is_some_and(|d| d.revoked) }),
            )
        }
        Command::Devices { episode, all } => {
            let directory = client.episode_keys(*episode, *all).await?;
            let now = now_ms();
            for d in &directory.devices {
                out(&json!({
                    "device_id": d.device_id,
                    "owner": d.owner,
                    "encryption_kid": d.encryption.thumbprint(),
                    "active": d.active_at(now),
                    "revoked": d.revoked,
                    "verified": true,
                }))?;
            }
            Ok(())
        }
        Command::Send {
            keys,
            episode,
            kind,
            id,
            text,
            file,
        } => {
            let device = read_keys(keys)?;
            let payload = match (text, file) {
                (Some(text), _) => text.as_bytes().to_vec(),
                (None, Some(file)) => std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                (None, None) => bail!("give --text or --file"),
            };
            let id = id.unwrap_or_else(Uuid::new_v4);
            send(client, keys, &device, (*episode, id), kind, &payload).await
        }
        Command::Receive {
            keys,
            episode,
            after,
        } => receive(client, keys, *episode, *after).await,
        Command::SafetyNumber {
            keys,
            episode,
            with,
        } => safety(client, keys, *episode, with).await,
    }
}

/// Seals and sends, or resends the kept envelope of an unacknowledged send of the same
/// message, so a retry after a lost answer gets the original receipt.
async fn send(
    client: &Client,
    keys: &Path,
    device: &DeviceKeys,
    (episode, id): (Uuid, Uuid),
    kind: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let pending = PendingSends::beside(keys);
    let fingerprint = pending::fingerprint(&device.device_id(), kind, payload);
    let sealed = match pending.get(episode, id)? {
        // The fingerprint covers the device, the kind and the payload.
        Some(kept) if kept.fingerprint == fingerprint => kept,
        // Nothing kept, or the id reused for other content: the gateway decides (201 if
        // the first never arrived, 409 if it did).
        _ => {
            let sealed = client.seal(device, episode, id, kind, payload).await?;
            pending.keep(&sealed)?;
            sealed
        }
    };
    match client.deliver(&sealed).await {
        Ok(receipt) => {
            pending.remove(episode, id)?;
            out(&receipt)
        }
        Err(e) if e.may_retry() => Err(anyhow::Error::new(e).context(format!(
            "message {id} was not acknowledged and may or may not have arrived; \
             retry with --id {id} (the sealed message is kept in {})",
            pending.path().display()
        ))),
        Err(e) => {
            pending.remove(episode, id)?;
            Err(e.into())
        }
    }
}

async fn receive(client: &Client, keys: &Path, episode: Uuid, after: i64) -> anyhow::Result<()> {
    let device = read_keys(keys)?;
    for m in client.receive(&device, episode, after).await? {
        let mut line = json!({
            "seq": m.seq,
            "id": m.id,
            "kind": m.kind,
            "sender_device": m.sender_device,
            "sender_owner": m.sender_owner,
        });
        match m.opened {
            Ok(opened) => {
                line["verified"] = json!(true);
                line["text"] = json!(String::from_utf8_lossy(&opened.payload));
            }
            Err(e) => {
                line["verified"] = json!(false);
                line["error"] = json!(e.to_string());
            }
        }
        out(&line)?;
    }
    Ok(())
}

async fn safety(client: &Client, keys: &Path, episode: Uuid, with: &str) -> anyhow::Result<()> {
    let device = read_keys(keys)?;
    let directory = client.episode_keys(episode, false).await?;
    let me = directory
        .device(&device.device_id())
        .context("this device is not among the episode's active keys")?
        .owner
        .clone();
    let mine = directory.signing_keys_of(&me);
    let theirs = directory.signing_keys_of(with);
    if theirs.is_empty() {
        bail!("{with} has no active device in this episode");
    }
    out(&json!({
        "me": me,
        "with": with,
        "safety_number": safety_number(&mine, &theirs),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "icbt: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
