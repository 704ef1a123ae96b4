//! Checkpoints: a log's size and root at a moment, signed with Ed25519 so that anyone who
//! holds the public key can check a tree head the log serves (RFC 9162 §4.10's signed tree
//! head, in the text form of C2SP's tlog-checkpoint).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::Hash;

/// Why a checkpoint or its key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the signing key is not an Ed25519 PKCS#8 document")]
    BadKey,
    #[error("the checkpoint text is malformed")]
    Malformed,
    #[error("the checkpoint is signed by key {0}, which is not trusted")]
    UnknownKey(String),
    #[error("the checkpoint's signature does not verify")]
    BadSignature,
}

/// A tree head: the log called `origin` had `size` leaves with this `root` at `timestamp_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub timestamp_ms: i64,
}

impl Checkpoint {
    /// The signed text: one line each for origin, size, base64 root and time.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.timestamp_ms
        )
    }

    /// Parses [`Checkpoint::body`].
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let mut lines = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed)?
            .split('\n');
        let mut next = || lines.next().ok_or(CheckpointError::Malformed);
        let origin = next()?.to_owned();
        let size = next()?.parse().map_err(|_| CheckpointError::Malformed)?;
        let root_bytes = STANDARD
            .decode(next()?)
            .map_err(|_| CheckpointError::Malformed)?;
        let timestamp_ms = next()?.parse().map_err(|_| CheckpointError::Malformed)?;
        if lines.next().is_some() || origin.is_empty() || origin.contains('\n') {
            return Err(CheckpointError::Malformed);
        }
        let root = root_bytes
            .try_into()
            .map_err(|_| CheckpointError::Malformed)?;
        Ok(Self {
            origin,
            size,
            root,
            timestamp_ms,
        })
    }
}

/// A checkpoint with the id of the key that signed it and the signature over its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl SignedCheckpoint {
    /// Checks the signature with one of `trusted` Ed25519 public keys (raw 32 bytes).
    pub fn verify(&self, trusted: &[&[u8]]) -> Result<(), CheckpointError> {
        let key = trusted
            .iter()
            .find(|k| key_id(k) == self.key_id)
            .ok_or_else(|| CheckpointError::UnknownKey(self.key_id.clone()))?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(self.checkpoint.body().as_bytes(), &self.signature)
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// A short, stable name for a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    crate::to_hex(&crate::digest(&[public_key]))[..16].to_owned()
}

/// Signs checkpoints. The key stays inside ring, which keeps no copy outside its own
/// memory management.
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl Signer {
    /// From a PKCS#8 document (v1 as OpenSSL writes it, or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CheckpointError> {
        let key =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| CheckpointError::BadKey)?;
        let key_id = key_id(key.public_key().as_ref());
        Ok(Self { key, key_id })
    }

    /// A new key as a PKCS#8 v2 document, for an operator to store.
    pub fn generate_pkcs8() -> Result<Vec<u8>, CheckpointError> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| CheckpointError::BadKey)
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let signature = self
            .key
            .sign(checkpoint.body().as_bytes())
            .as_ref()
            .to_vec();
        SignedCheckpoint {
            checkpoint,
            key_id: self.key_id.clone(),
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "icbt-gateway/audit".into(),
            size: 42,
            root: crate::leaf_hash(b"x"),
            timestamp_ms: 1_790_000_000_000,
        }
    }

    #[test]
    fn body_round_trips() {
        let c = checkpoint();
        assert_eq!(Checkpoint::parse(&c.body()).unwrap(), c);
        assert!(Checkpoint::parse("a\n1\n").is_err());
        assert!(Checkpoint::parse(&format!("{}extra\n", c.body())).is_err());
        assert!(Checkpoint::parse(&c.body().replace("42", "-1")).is_err());
    }

    #[test]
    fn signature_verifies_with_the_key_and_nothing_else() {
        let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        let other = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        let good = signer.sign(checkpoint());
        good.verify(&[signer.public_key()]).unwrap();
        assert_eq!(
            good.verify(&[other.public_key()]),
            Err(CheckpointError::UnknownKey(signer.key_id().to_owned()))
        );
        let mut bigger = good.clone();
        bigger.checkpoint.size += 1;
        assert_eq!(
            bigger.verify(&[signer.public_key()]),
            Err(CheckpointError::BadSignature)
        );
        let mut resigned = good;
        resigned.key_id = other.key_id().to_owned();
        assert_eq!(
            resigned.verify(&[other.public_key()]),
            Err(CheckpointError::BadSignature)
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert_eq!(
            Signer::from_pkcs8(b"not a key").unwrap_err(),
            CheckpointError::BadKey
        );
    }
}
