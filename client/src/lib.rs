//! The client side of icbt-gateway, for iCBT platforms, apps and testers: a device's keys,
//! the key directory checked against the gateway's signed key log, and messages sealed
//! before they leave the device and opened after they arrive.
//!
//! Owns: talking to the gateway's device, episode and message API ([`Client`]), the
//! checks that make the directory trustworthy ([`directory::verify`]: signed checkpoint,
//! inclusion of every key, consistency with the last checkpoint seen), and the `icbt`
//! command line.
//!
//! Must not know about: the gateway's storage or policy internals; the envelope format
//! itself lives in `icbt-envelope`.
//!
//! A reader starts at [`Client`].

pub mod directory;
pub mod pending;

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::dpop::DpopKey;
use icbt_envelope::{Binding, DeviceKeys, Envelope, EnvelopeError, Limits, Opened};
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

pub use directory::{Directory, KnownDevice, TreeHead};
pub use pending::{PendingSends, SealedSend};

/// What went wrong talking to the gateway or checking what it said.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the gateway answered {status} {problem_type}: {detail}")]
    Problem {
        status: u16,
        problem_type: String,
        detail: String,
        body: Value,
    },
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The key directory did not check out: the gateway may be lying about keys.
    #[error("key directory: {0}")]
    Directory(String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Whether the gateway may not have answered the request: the connection failed, or
    /// the answer says to try again later. A retry of such a send must resend the same
    /// bytes ([`PendingSends`]).
    pub fn may_retry(&self) -> bool {
        match self {
            Self::Http(_) => true,
            Self::Problem { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            _ => false,
        }
    }
}

/// How requests are authorised: an access token, DPoP-bound when a key is given.
pub struct Credentials {
    pub access_token: Zeroizing<String>,
    pub dpop: Option<DpopKey>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dpop", &self.dpop.as_ref().map(DpopKey::thumbprint))
            .finish_non_exhaustive()
    }
}

/// A message from the history, opened (or why not).
#[derive(Debug)]
pub struct Received {
    pub seq: i64,
    pub id: Uuid,
    pub kind: String,
    /// The sending device, from the envelope's protected header.
    pub sender_device: String,
    /// Its owner per the verified directory, when the device is known.
    pub sender_owner: Option<String>,
    pub opened: Result<Opened, EnvelopeError>,
}

/// A connection to one gateway as one principal.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    credentials: Credentials,
    /// Ed25519 public keys that may sign the key log's checkpoints.
    trusted: Vec<Vec<u8>>,
    /// The newest key log head seen and checked; a later one must extend it.
    seen: Mutex<Option<TreeHead>>,
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        base: url::Url,
        credentials: Credentials,
        trusted: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            http,
            base,
            credentials,
            trusted,
            seen: Mutex::new(None),
        }
    }

    /// Starts from a head seen earlier (kept by the caller between runs).
    #[must_use]
    pub fn with_seen(self, head: Option<TreeHead>) -> Self {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = head;
        }
        self
    }

    /// The newest key log head checked so far.
    pub fn seen(&self) -> Option<TreeHead> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }

    fn url(&self, path: &str) -> Result<url::Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// Sends `method` to `path` with the credentials; a problem answer is an error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let url = self.url(path)?;
        let mut request = self.http.request(method.clone(), url.clone());
        request = match &self.credentials.dpop {
            Some(key) => {
                let proof = key.proof(
                    method.as_str(),
                    url.as_str(),
                    Some(&self.credentials.access_token),
                    None,
                    icbt_auth::now_secs(),
                );
                request
                    .header(
                        "authorization",
                        format!("DPoP {}", self.credentials.access_token.as_str()),
                    )
                    .header("dpop", proof)
            }
            None => request.header(
                "authorization",
                format!("Bearer {}", self.credentials.access_token.as_str()),
            ),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        // An answer whose body did not arrive whole (the connection broke after the status
        // line, say the gateway was killed) is a failed request that may be retried, not
        // a success with nothing in it: a send retried with the same bytes gets its
        // original answer.
        let body = response.bytes().await?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(ClientError::Problem {
                status,
                problem_type: value["type"].as_str().unwrap_or_default().to_owned(),
                detail: value["detail"]
                    .as_str()
                    .or(value["title"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                body: value,
            });
        }
        Ok((status, value))
    }

    /// A publish body, with the proof that this device holds its signing key.
    fn device_body(keys: &DeviceKeys, expires_at_ms: i64) -> Result<Value, ClientError> {
        Ok(json!({
            "signing_jwk": keys.signing.public().to_jwk(),
            "encryption_jwk": keys.encryption.public().to_jwk(),
            "expires_at_ms": expires_at_ms,
            "proof": keys.possession_proof(expires_at_ms, icbt_auth::now_secs())?,
        }))
    }

    /// PUTs `keys` at `path` and checks the answer's proof.
    async fn put_device(
        &self,
        path: &str,
        keys: &DeviceKeys,
        expires_at_ms: i64,
    ) -> Result<Directory, ClientError> {
        let (_, view) = self
            .call(
                reqwest::Method::PUT,
                path,
                Some(&Self::device_body(keys, expires_at_ms)?),
            )
            .await?;
        self.checked(&view).await
    }

    /// Publishes this device's public keys as the caller's; checks the answer's proof.
    pub async fn publish_device(
        &self,
        keys: &DeviceKeys,
        expires_at_ms: i64,
    ) -> Result<Directory, ClientError> {
        self.put_device(
            &format!("v1/devices/{}", keys.device_id()),
            keys,
            expires_at_ms,
        )
        .await
    }

    /// Publishes a clinic's journal key (a system client of that clinic).
    pub async fn publish_journal_key(
        &self,
        organisation: &str,
        keys: &DeviceKeys,
        expires_at_ms: i64,
    ) -> Result<Directory, ClientError> {
        let path = format!(
            "v1/clinics/{organisation}/journal-keys/{}",
            keys.device_id()
        );
        self.put_device(&path, keys, expires_at_ms).await
    }

    pub async fn revoke_device(&self, device_id: &str) -> Result<Directory, ClientError> {
        let (_, view) = self
            .call(
                reqwest::Method::DELETE,
                &format!("v1/devices/{device_id}"),
                None,
            )
            .await?;
        self.checked(&view).await
    }

    /// The episode's keys, every one proven to be in the signed key log, and the log
    /// proven to extend what this client saw before.
    pub async fn episode_keys(
        &self,
        episode: Uuid,
        include_inactive: bool,
    ) -> Result<Directory, ClientError> {
        let (_, view) = self
            .call(
                reqwest::Method::GET,
                &format!("v1/episodes/{episode}/devices?include_inactive={include_inactive}"),
                None,
            )
            .await?;
        self.checked(&view).await
    }

    /// Verifies a directory answer and moves the seen head forward.
    async fn checked(&self, view: &Value) -> Result<Directory, ClientError> {
        let directory = directory::verify(view, &self.trusted)?;
        let previous = self.seen();
        if let Some(previous) = &previous {
            let proof = if previous.size < directory.head.size {
                let (_, answer) = self
                    .call(
                        reqwest::Method::GET,
                        &format!(
                            "v1/keys/proof/consistency?from={}&to={}",
                            previous.size, directory.head.size
                        ),
                        None,
                    )
                    .await?;
                directory::hashes(&answer["proof"])?
            } else {
                Vec::new()
            };
            directory::check_consistency(previous, &directory.head, &proof)?;
        }
        if previous
            .as_ref()
            .is_none_or(|p| p.size <= directory.head.size)
            && let Ok(mut seen) = self.seen.lock()
        {
            *seen = Some(directory.head.clone());
        }
        Ok(directory)
    }

    /// Seals `payload` from this device to every active key of the episode (its
    /// participants and the clinic's journal) and sends it under `message_id`. A caller
    /// that may retry after a lost answer seals once with [`Self::seal`], keeps the result
    /// ([`PendingSends`]) and [`Self::deliver`]s the same bytes again.
    pub async fn send(
        &self,
        keys: &DeviceKeys,
        episode: Uuid,
        message_id: Uuid,
        kind: &str,
        payload: &[u8],
    ) -> Result<Value, ClientError> {
        let sealed = self.seal(keys, episode, message_id, kind, payload).await?;
        self.deliver(&sealed).await
    }

    /// Seals `payload` from this device to every active key of the episode, checked
    /// against the key log, without sending it.
    pub async fn seal(
        &self,
        keys: &DeviceKeys,
        episode: Uuid,
        message_id: Uuid,
        kind: &str,
        payload: &[u8],
    ) -> Result<SealedSend, ClientError> {
        let directory = self.episode_keys(episode, false).await?;
        let binding = Binding {
            episode: episode.to_string(),
            message: message_id.to_string(),
            kind: kind.to_owned(),
            sender: keys.device_id(),
        };
        let sealed =
            icbt_envelope::seal(payload, &binding, &keys.signing, &directory.recipients())?;
        Ok(SealedSend {
            episode,
            message_id,
            kind: kind.to_owned(),
            envelope: URL_SAFE_NO_PAD.encode(sealed),
            fingerprint: pending::fingerprint(&keys.device_id(), kind, payload),
        })
    }

    /// Sends a sealed message. Sending the same one again answers the original receipt
    /// (200 instead of 201), however often, so a send whose answer was lost is retried
    /// with this.
    pub async fn deliver(&self, sealed: &SealedSend) -> Result<Value, ClientError> {
        let (_, receipt) = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "v1/episodes/{}/messages/{}",
                    sealed.episode, sealed.message_id
                ),
                Some(&json!({ "kind": sealed.kind, "envelope": sealed.envelope })),
            )
            .await?;
        Ok(receipt)
    }

    /// Messages after `after`, each opened with this device's key and its sender's
    /// signature checked against the verified directory.
    pub async fn receive(
        &self,
        keys: &DeviceKeys,
        episode: Uuid,
        after: i64,
    ) -> Result<Vec<Received>, ClientError> {
        let directory = self.episode_keys(episode, true).await?;
        let (_, page) = self
            .call(
                reqwest::Method::GET,
                &format!("v1/episodes/{episode}/messages?after={after}&limit=200"),
                None,
            )
            .await?;
        let messages = page["messages"]
            .as_array()
            .ok_or_else(|| ClientError::Unexpected("no messages array".into()))?;
        let mut received = Vec::with_capacity(messages.len());
        for m in messages {
            let bytes = URL_SAFE_NO_PAD
                .decode(m["envelope"].as_str().unwrap_or_default())
                .map_err(|_| ClientError::Unexpected("envelope is not base64url".into()))?;
            let envelope = Envelope::parse(&bytes, &Limits::default());
            let (sender_device, opened) = match envelope {
                Ok(envelope) => {
                    let sender = envelope.binding().sender.clone();
                    let opened = match directory.device(&sender) {
                        Some(device) => envelope.open(&keys.encryption, &device.signing),
                        None => Err(EnvelopeError::UnknownSigner(sender.clone())),
                    };
                    (sender, opened)
                }
                Err(e) => (String::new(), Err(e)),
            };
            received.push(Received {
                seq: m["seq"].as_i64().unwrap_or_default(),
                id: m["id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .unwrap_or_default(),
                kind: m["kind"].as_str().unwrap_or_default().to_owned(),
                sender_owner: directory.device(&sender_device).map(|d| d.owner.clone()),
                sender_device,
                opened,
            });
        }
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A gateway that answers 201 and breaks the connection halfway through the body, as
    /// one killed while answering does.
    async fn cut_off_after_the_status_line() -> url::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"seq\":")
                .await;
        });
        url::Url::parse(&format!("http://{address}/")).unwrap()
    }

    #[tokio::test]
    async fn an_answer_cut_off_in_its_body_is_a_failure_to_retry_not_a_success() {
        // Plain HTTP here, but reqwest asks for a TLS provider all the same.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(
            reqwest::Client::new(),
            cut_off_after_the_status_line().await,
            Credentials {
                access_token: Zeroizing::new("token".to_owned()),
                dpop: None,
            },
            Vec::new(),
        );
        let answer = client
            .call(
                reqwest::Method::PUT,
                "v1/episodes/e/messages/m",
                Some(&json!({})),
            )
            .await;
        let error = answer.expect_err("a body that never arrived whole is no receipt");
        assert!(error.may_retry(), "{error}");
    }
}
