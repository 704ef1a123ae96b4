//! Sealed messages for scenario tests, made the way a client makes them: each actor gets
//! a device published under its own token, the clinic a journal key, and a message body
//! is sealed with `icbt-envelope` to the keys the gateway lists for the episode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_envelope::{Binding, DeviceKeys, Envelope, Jwk, Limits, PublicKey, seal};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::idp::Actor;

/// A year ahead, in Unix milliseconds.
pub fn in_a_year_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    i64::try_from(now).unwrap() + 365 * 86_400_000
}

/// The body that publishes `keys` for a year.
pub fn device_body(keys: &DeviceKeys) -> Value {
    device_body_expiring(keys, in_a_year_ms())
}

/// The body that publishes `keys` until `expires_at_ms`, with a fresh proof that the
/// publisher holds them.
pub fn device_body_expiring(keys: &DeviceKeys, expires_at_ms: i64) -> Value {
    json!({
        "signing_jwk": keys.signing.public().to_jwk(),
        "encryption_jwk": keys.encryption.public().to_jwk(),
        "expires_at_ms": expires_at_ms,
        "proof": keys.possession_proof(expires_at_ms, icbt_auth::now_secs()).unwrap(),
    })
}

/// Devices and sealed bodies for one gateway.
#[derive(Debug)]
pub struct Sealer {
    base: String,
    http: reqwest::Client,
    pub journal: Arc<DeviceKeys>,
    /// By the actor's access token.
    devices: Mutex<HashMap<String, Arc<DeviceKeys>>>,
    /// By device id, for checking signatures when opening.
    by_id: Mutex<HashMap<String, Arc<DeviceKeys>>>,
    /// By (path, kind, text): a retrying client resends the same bytes.
    bodies: Mutex<HashMap<(String, String, String), Value>>,
    /// By (access token, episode): a client keeps the directory it fetched.
    directories: Mutex<HashMap<(String, Uuid), Vec<PublicKey>>>,
}

impl Sealer {
    /// Publishes a journal key for `organisation` as `platform` (a system client of it).
    pub async fn new(
        base: &str,
        http: &reqwest::Client,
        platform: &Actor,
        organisation: &str,
    ) -> Self {
        let journal = Arc::new(DeviceKeys::generate().unwrap());
        let response = platform
            .call(
                http,
                Method::PUT,
                &format!(
                    "{base}/v1/clinics/{organisation}/journal-keys/{}",
                    journal.device_id()
                ),
                Some(&device_body(&journal)),
            )
            .await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let sealer = Self {
            base: base.to_owned(),
            http: http.clone(),
            journal: journal.clone(),
            devices: Mutex::default(),
            by_id: Mutex::default(),
            bodies: Mutex::default(),
            directories: Mutex::default(),
        };
        sealer
            .by_id
            .lock()
            .unwrap()
            .insert(journal.device_id(), journal);
        sealer
    }

    /// Follows the gateway to `base` after a restart (same database, new port).
    pub fn moved_to(&mut self, base: &str) {
        base.clone_into(&mut self.base);
    }

    /// The actor's device, published on first use.
    pub async fn device(&self, who: &Actor) -> Arc<DeviceKeys> {
        let token = who.token.access_token.clone();
        if let Some(keys) = self.devices.lock().unwrap().get(&token) {
            return keys.clone();
        }
        let keys = Arc::new(DeviceKeys::generate().unwrap());
        let response = who
            .call(
                &self.http,
                Method::PUT,
                &format!("{}/v1/devices/{}", self.base, keys.device_id()),
                Some(&device_body(&keys)),
            )
            .await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        self.devices.lock().unwrap().insert(token, keys.clone());
        self.by_id
            .lock()
            .unwrap()
            .insert(keys.device_id(), keys.clone());
        keys
    }

    /// The encryption keys of the episode's active devices, as the gateway lists them to
    /// `who`.
    pub async fn recipients(&self, who: &Actor, episode: Uuid) -> Vec<PublicKey> {
        let key = (who.token.access_token.clone(), episode);
        if let Some(keys) = self.directories.lock().unwrap().get(&key) {
            return keys.clone();
        }
        let keys = self.fetch_recipients(who, episode).await;
        self.directories.lock().unwrap().insert(key, keys.clone());
        keys
    }

    /// Forgets the recipients fetched so far, after a care team changed: the next seal
    /// fetches them afresh.
    pub fn forget_recipients(&self) {
        self.directories.lock().unwrap().clear();
    }

    /// [`Self::recipients`] fetched afresh, after devices have changed.
    pub async fn fetch_recipients(&self, who: &Actor, episode: Uuid) -> Vec<PublicKey> {
        let response = who
            .call(
                &self.http,
                Method::GET,
                &format!("{}/v1/episodes/{episode}/devices", self.base),
                None,
            )
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let directory: Value = response.json().await.unwrap();
        directory["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let jwk: Jwk = serde_json::from_value(d["encryption_jwk"].clone()).unwrap();
                PublicKey::from_jwk(&jwk).unwrap()
            })
            .collect()
    }

    /// A `PUT …/messages/{id}` body with `text` sealed by `who`'s device to the episode's
    /// keys; `path` is the message's path. The same path, kind and text give the same
    /// bytes, as a client retrying a send would resend them.
    pub async fn body(&self, who: &Actor, path: &str, kind: &str, text: &str) -> Value {
        let key = (path.to_owned(), kind.to_owned(), text.to_owned());
        if let Some(body) = self.bodies.lock().unwrap().get(&key) {
            return body.clone();
        }
        let (episode, message) = ids(path);
        let device = self.device(who).await;
        let recipients = self.recipients(who, episode).await;
        let binding = Binding {
            episode: episode.to_string(),
            message: message.to_string(),
            kind: kind.to_owned(),
            sender: device.device_id(),
        };
        let sealed = seal(text.as_bytes(), &binding, &device.signing, &recipients).unwrap();
        let body = json!({ "kind": kind, "envelope": URL_SAFE_NO_PAD.encode(sealed) });
        self.bodies.lock().unwrap().insert(key, body.clone());
        body
    }

    /// Opens a message as listed by the gateway (history, stream, inbox) with `reader`'s
    /// device, checking the sender's signature; returns the text.
    pub fn open(&self, reader: &DeviceKeys, message: &Value) -> String {
        let bytes = URL_SAFE_NO_PAD
            .decode(message["envelope"].as_str().unwrap())
            .unwrap();
        let envelope = Envelope::parse(&bytes, &Limits::default()).unwrap();
        let sender = self
            .by_id
            .lock()
            .unwrap()
            .get(&envelope.binding().sender)
            .cloned()
            .expect("a sender this test published");
        let opened = envelope
            .open(&reader.encryption, sender.signing.public())
            .unwrap();
        String::from_utf8(opened.payload).unwrap()
    }
}

/// Episode and message ids from `…/episodes/{episode}/messages/{message}`.
fn ids(path: &str) -> (Uuid, Uuid) {
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts
        .iter()
        .position(|p| *p == "episodes")
        .expect("a message path");
    (
        Uuid::parse_str(parts[at + 1]).unwrap(),
        Uuid::parse_str(parts[at + 3]).unwrap(),
    )
}
