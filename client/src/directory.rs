//! Checking what the gateway says about keys: a key counts only when its publish leaf is
//! proven (RFC 9162 inclusion proof) to be in a key log checkpoint signed by a trusted
//! key, and a newer checkpoint only when it is proven to extend the one seen before. So a
//! key swapped, added or removed by the server is caught, by this client or by anyone
//! comparing checkpoints.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_envelope::{Jwk, PublicKey};
use icbt_merkle::{Checkpoint, Hash, SignedCheckpoint, verify_consistency, verify_inclusion};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ClientError;

/// The key log's name in its checkpoints; an access-log checkpoint (signed by the same
/// key) is refused here.
pub const KEY_LOG_ORIGIN: &str = "icbt-gateway/keys";

/// A verified key log head: what the client remembers between calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub size: u64,
    /// Base64 root hash.
    pub root: String,
}

/// A device whose keys are proven to be in the log.
#[derive(Clone, Debug)]
pub struct KnownDevice {
    pub device_id: String,
    /// `patient:…`, `clinician:…`, `system:…` or `journal:…`.
    pub owner: String,
    pub signing: PublicKey,
    pub encryption: PublicKey,
    pub expires_at_ms: i64,
    /// A revoke leaf for it is proven too.
    pub revoked: bool,
}

impl KnownDevice {
    pub fn active_at(&self, now_ms: i64) -> bool {
        !self.revoked && now_ms < self.expires_at_ms
    }
}

/// Verified devices against one head.
#[derive(Clone, Debug)]
pub struct Directory {
    pub head: TreeHead,
    pub devices: Vec<KnownDevice>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Directory {
    /// The encryption keys of every active device: whom a message is sealed to.
    pub fn recipients(&self) -> Vec<PublicKey> {
        let now = now_ms();
        self.devices
            .iter()
            .filter(|d| d.active_at(now))
            .map(|d| d.encryption.clone())
            .collect()
    }

    pub fn device(&self, device_id: &str) -> Option<&KnownDevice> {
        self.devices.iter().find(|d| d.device_id == device_id)
    }

    /// The active signing keys of `owner`, for a safety number.
    pub fn signing_keys_of(&self, owner: &str) -> Vec<PublicKey> {
        let now = now_ms();
        self.devices
            .iter()
            .filter(|d| d.owner == owner && d.active_at(now))
            .map(|d| d.signing.clone())
            .collect()
    }
}

fn bad(what: impl Into<String>) -> ClientError {
    ClientError::Directory(what.into())
}

/// Base64 hashes of a proof.
pub fn hashes(value: &Value) -> Result<Vec<Hash>, ClientError> {
    value
        .as_array()
        .ok_or_else(|| bad("proof is not a list"))?
        .iter()
        .map(|h| {
            STANDARD
                .decode(h.as_str().unwrap_or_default())
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| bad("proof hash is not base64 SHA-256"))
        })
        .collect()
}

fn str_of<'a>(value: &'a Value, key: &str) -> Result<&'a str, ClientError> {
    value[key]
        .as_str()
        .ok_or_else(|| bad(format!("`{key}` missing")))
}

fn key_of(value: &Value) -> Result<PublicKey, ClientError> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| bad("not a JWK"))?;
    PublicKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))
}

/// Checks the signed checkpoint of a directory answer: its C2SP note (`note`), signed by
/// a trusted key under the key log's name.
fn checkpoint(view: &Value, trusted: &[Vec<u8>]) -> Result<Checkpoint, ClientError> {
    let signed =
        SignedCheckpoint::from_note(str_of(view, "note")?).map_err(|_| bad("checkpoint note"))?;
    if signed.checkpoint.origin != KEY_LOG_ORIGIN {
        return Err(bad(format!(
            "checkpoint is of `{}`, not the key log",
            signed.checkpoint.origin
        )));
    }
    let trusted: Vec<&[u8]> = trusted.iter().map(Vec::as_slice).collect();
    signed
        .verify(&trusted)
        .map_err(|e| bad(format!("checkpoint: {e}")))?;
    Ok(signed.checkpoint)
}

/// Checks that `leaf_view` (`index`, `leaf`, `proof`) is in the tree of `head`; returns
/// the leaf's JSON.
fn included(leaf_view: &Value, head: &Checkpoint) -> Result<(u64, Value), ClientError> {
    let index = leaf_view["index"]
        .as_u64()
        .ok_or_else(|| bad("leaf index"))?;
    let text = str_of(leaf_view, "leaf")?;
    let proof = hashes(&leaf_view["proof"])?;
    verify_inclusion(
        &icbt_merkle::leaf_hash(text.as_bytes()),
        index,
        head.size,
        &proof,
        &head.root,
    )
    .map_err(|e| bad(format!("leaf {index} is not in the signed log: {e}")))?;
    let leaf: Value = serde_json::from_str(text).map_err(|_| bad("leaf is not JSON"))?;
    if leaf["v"] != 1 || leaf["index"].as_u64() != Some(index) {
        return Err(bad(format!("leaf {index} has another version or index")));
    }
    Ok((index, leaf))
}

/// Verifies a directory answer (`checkpoint` + `devices`) against `trusted` checkpoint
/// keys: every device's keys must be exactly those of its proven publish leaf.
pub fn verify(view: &Value, trusted: &[Vec<u8>]) -> Result<Directory, ClientError> {
    let head = checkpoint(&view["checkpoint"], trusted)?;
    let mut devices = Vec::new();
    for d in view["devices"]
        .as_array()
        .ok_or_else(|| bad("devices is not a list"))?
    {
        let device_id = str_of(d, "device_id")?;
        let owner = str_of(d, "owner")?;
        let signing = key_of(&d["signing_jwk"])?;
        let encryption = key_of(&d["encryption_jwk"])?;
        if signing.thumbprint() != device_id
            || encryption.thumbprint() != str_of(d, "encryption_kid")?
        {
            return Err(bad(format!("device {device_id}: ids are not its keys")));
        }
        let expires_at_ms = d["expires_at_ms"]
            .as_i64()
            .ok_or_else(|| bad("expires_at_ms"))?;
        let (_, leaf) = included(&d["publish"], &head)?;
        let same = leaf["op"] == "publish"
            && leaf["device"] == device_id
            && leaf["owner"] == owner
            && leaf["expires_at_ms"].as_i64() == Some(expires_at_ms)
            && key_of(&leaf["signing_jwk"]).ok().as_ref() == Some(&signing)
            && key_of(&leaf["encryption_jwk"]).ok().as_ref() == Some(&encryption);
        if !same {
            return Err(bad(format!(
                "device {device_id}: keys or owner differ from the log"
            )));
        }
        let revoked = match d.get("revoke") {
            Some(revoke) if !revoke.is_null() => {
                let (_, leaf) = included(revoke, &head)?;
                if leaf["op"] != "revoke" || leaf["device"] != device_id {
                    return Err(bad(format!("device {device_id}: revoke leaf mismatch")));
                }
                true
            }
            _ => {
                if d.get("revoked_at_ms").is_some_and(|v| !v.is_null()) {
                    return Err(bad(format!(
                        "device {device_id}: revoked without a proven revoke leaf"
                    )));
                }
                false
            }
        };
        devices.push(KnownDevice {
            device_id: device_id.to_owned(),
            owner: owner.to_owned(),
            signing,
            encryption,
            expires_at_ms,
            revoked,
        });
    }
    Ok(Directory {
        head: TreeHead {
            size: head.size,
            root: STANDARD.encode(head.root),
        },
        devices,
    })
}

/// Checks that `new` extends `old` with `proof` (RFC 9162 §2.1.4.2); a log that shrank or
/// forked is an error.
pub fn check_consistency(
    old: &TreeHead,
    new: &TreeHead,
    proof: &[Hash],
) -> Result<(), ClientError> {
    if new.size < old.size {
        return Err(bad(format!(
            "the key log shrank from {} to {} leaves",
            old.size, new.size
        )));
    }
    let root = |h: &TreeHead| {
        STANDARD
            .decode(&h.root)
            .ok()
            .and_then(|b| Hash::try_from(b.as_slice()).ok())
            .ok_or_else(|| bad("root is not base64 SHA-256"))
    };
    verify_consistency(old.size, new.size, &root(old)?, &root(new)?, proof).map_err(|e| {
        bad(format!(
            "the key log does not extend the one seen before: {e}"
        ))
    })
}
