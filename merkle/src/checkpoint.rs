//! Checkpoints: a log's size and root at a moment, signed with Ed25519 so that anyone who
//! holds the public key can check a tree head the log serves (RFC 9162 §4.10's signed tree
//! head). The text is C2SP's `tlog-checkpoint` (origin, size, base64 root) and the
//! signature makes it a C2SP signed note, so third-party verifiers and witnesses read it.
//!
//! Checkpoints written before the note format signed a four-line text (the same three
//! lines and the time in milliseconds) under a 16-digit key id. They stay verifiable as
//! [`Format::Legacy`]; nothing new is written that way.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::Hash;
use crate::note::{Note, NoteError, NoteSignature, VerifierKey};

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

/// A tree head: the log called `origin` had `size` leaves with this `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The signed text: one line each for origin, size and base64 root.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses [`Checkpoint::body`]. Extension lines are refused: these logs write none.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let mut lines = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed)?
            .split('\n');
        let mut next = || lines.next().ok_or(CheckpointError::Malformed);
        let origin = next()?.to_owned();
        let size = decimal(next()?)?;
        let root = STANDARD
            .decode(next()?)
            .map_err(|_| CheckpointError::Malformed)?
            .try_into()
            .map_err(|_| CheckpointError::Malformed)?;
        if lines.next().is_some() || origin.is_empty() {
            return Err(CheckpointError::Malformed);
        }
        Ok(Self { origin, size, root })
    }
}

/// A tree size as the format writes it: ASCII digits, no sign, no leading zero.
fn decimal(text: &str) -> Result<u64, CheckpointError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(CheckpointError::Malformed)
}

/// How a checkpoint was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A C2SP signed note under the key name `origin`.
    Note,
    /// The format before it: the body plus the time, under [`legacy_key_id`].
    Legacy,
}

/// A checkpoint with the id of the key that signed it and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub format: Format,
    /// When the log signed it. Covered by the signature in the legacy format only; a
    /// note's time is what a witness's cosignature attests.
    pub signed_at_ms: i64,
    /// Lower-case hex: the note key id (8 digits) or the legacy one (16).
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl SignedCheckpoint {
    /// The exact bytes the signature covers.
    pub fn signed_text(&self) -> String {
        match self.format {
            Format::Note => self.checkpoint.body(),
            Format::Legacy => format!("{}{}\n", self.checkpoint.body(), self.signed_at_ms),
        }
    }

    /// The signed note, as published at the log's checkpoint path; none for a legacy one.
    pub fn note(&self) -> Option<String> {
        let id = crate::from_hex_array::<4>(&self.key_id)?;
        (self.format == Format::Note).then(|| {
            Note {
                text: self.checkpoint.body(),
                signatures: vec![NoteSignature {
                    name: self.checkpoint.origin.clone(),
                    id,
                    signature: self.signature.clone(),
                }],
            }
            .to_text()
        })
    }

    /// Reads a checkpoint note: its text, and the signature line named after its origin
    /// (a witness's cosignatures beside it are left alone). Nothing is verified yet.
    pub fn from_note(note: &str) -> Result<Self, CheckpointError> {
        let note = Note::parse(note).map_err(|_| CheckpointError::Malformed)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        let line = note
            .signatures
            .into_iter()
            .find(|s| s.name == checkpoint.origin)
            .ok_or(CheckpointError::Malformed)?;
        Ok(Self {
            checkpoint,
            format: Format::Note,
            signed_at_ms: 0,
            key_id: crate::hex(&line.id),
            signature: line.signature,
        })
    }

    /// Checks the signature with one of `trusted` Ed25519 public keys (raw 32 bytes).
    pub fn verify(&self, trusted: &[&[u8]]) -> Result<(), CheckpointError> {
        let origin = &self.checkpoint.origin;
        let key = trusted
            .iter()
            .find(|k| match self.format {
                Format::Note => note_key_id(origin, k).as_deref() == Some(self.key_id.as_str()),
                Format::Legacy => legacy_key_id(k) == self.key_id,
            })
            .ok_or_else(|| CheckpointError::UnknownKey(self.key_id.clone()))?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(self.signed_text().as_bytes(), &self.signature)
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// The note key id of `public_key` for the log named `origin`, in hex; none for a name a
/// note cannot carry.
fn note_key_id(origin: &str, public_key: &[u8]) -> Option<String> {
    VerifierKey::new(origin, public_key)
        .ok()
        .map(|k| crate::hex(&k.id))
}

/// The key id of the legacy format: hex of the first 8 bytes of the key's SHA-256.
pub fn legacy_key_id(public_key: &[u8]) -> String {
    crate::to_hex(&crate::digest(&[public_key]))[..16].to_owned()
}

/// Signs checkpoints. The key stays inside ring, which keeps no copy outside its own
/// memory management.
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    /// From a PKCS#8 document (v1 as OpenSSL writes it, or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CheckpointError> {
        let key =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| CheckpointError::BadKey)?;
        Ok(Self { key })
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

    /// What a verifier pins to check the checkpoints of the log named `origin`.
    pub fn verifier_key(&self, origin: &str) -> Result<VerifierKey, NoteError> {
        VerifierKey::new(origin, self.public_key())
    }

    /// A signed note of `checkpoint`, made at `signed_at_ms`. Ed25519 is deterministic:
    /// the same checkpoint gives the same note.
    pub fn sign(
        &self,
        checkpoint: Checkpoint,
        signed_at_ms: i64,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let key_id =
            note_key_id(&checkpoint.origin, self.public_key()).ok_or(CheckpointError::Malformed)?;
        let mut signed = SignedCheckpoint {
            checkpoint,
            format: Format::Note,
            signed_at_ms,
            key_id,
            signature: Vec::new(),
        };
        signed.signature = self.raw_sign(&signed);
        Ok(signed)
    }

    /// A checkpoint in the legacy format, as logs were signed before the note format:
    /// for tests of the migration only.
    #[doc(hidden)]
    pub fn sign_legacy(&self, checkpoint: Checkpoint, signed_at_ms: i64) -> SignedCheckpoint {
        let mut signed = SignedCheckpoint {
            checkpoint,
            format: Format::Legacy,
            signed_at_ms,
            key_id: legacy_key_id(self.public_key()),
            signature: Vec::new(),
        };
        signed.signature = self.raw_sign(&signed);
        signed
    }

    fn raw_sign(&self, signed: &SignedCheckpoint) -> Vec<u8> {
        self.key
            .sign(signed.signed_text().as_bytes())
            .as_ref()
            .to_vec()
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
        }
    }

    fn new_signer() -> Signer {
        Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn body_round_trips_and_refuses_what_the_format_does_not_allow() {
        let c = checkpoint();
        assert_eq!(
            c.body(),
            "icbt-gateway/audit\n42\nPH6byTDck/AfppmF7yQtn56GHzxTVaokzl70tLinDMs=\n"
        );
        assert_eq!(Checkpoint::parse(&c.body()).unwrap(), c);
        for bad in [
            "a\n1\n".to_owned(),
            format!("{}extension\n", c.body()),
            c.body().replace("42", "-1"),
            c.body().replace("42", "042"),
            c.body().replace("42", "+42"),
            c.body().replace("\n42", "\n"),
            c.body().trim_end().to_owned(),
        ] {
            assert_eq!(
                Checkpoint::parse(&bad),
                Err(CheckpointError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_note_round_trips_and_verifies_with_the_key_and_nothing_else() {
        let signer = new_signer();
        let other = new_signer();
        let good = signer.sign(checkpoint(), 7).unwrap();
        let note = good.note().unwrap();
        assert!(note.starts_with(&format!(
            "{}\n\u{2014} icbt-gateway/audit ",
            checkpoint().body()
        )));
        let read = SignedCheckpoint::from_note(&note).unwrap();
        assert_eq!(read.checkpoint, good.checkpoint);
        assert_eq!(
            (read.key_id.as_str(), &read.signature),
            (good.key_id.as_str(), &good.signature)
        );
        read.verify(&[other.public_key(), signer.public_key()])
            .unwrap();
        assert_eq!(
            read.verify(&[other.public_key()]),
            Err(CheckpointError::UnknownKey(good.key_id.clone()))
        );
        let mut bigger = read.clone();
        bigger.checkpoint.size += 1;
        assert_eq!(
            bigger.verify(&[signer.public_key()]),
            Err(CheckpointError::BadSignature)
        );
        // Deterministic: the same head gives the same note.
        assert_eq!(signer.sign(checkpoint(), 8).unwrap().note().unwrap(), note);
        // A note of another log, or without a line of its origin, is refused.
        let renamed = note.replace("\u{2014} icbt-gateway/audit ", "\u{2014} someone/else ");
        assert_eq!(
            SignedCheckpoint::from_note(&renamed),
            Err(CheckpointError::Malformed)
        );
    }

    #[test]
    fn legacy_checkpoints_still_verify_and_bind_their_time() {
        let signer = new_signer();
        let legacy = signer.sign_legacy(checkpoint(), 1_790_000_000_000);
        assert_eq!(legacy.note(), None);
        assert_eq!(legacy.key_id.len(), 16);
        legacy.verify(&[signer.public_key()]).unwrap();
        let mut moved = legacy.clone();
        moved.signed_at_ms += 1;
        assert_eq!(
            moved.verify(&[signer.public_key()]),
            Err(CheckpointError::BadSignature)
        );
        // A legacy signature is no note signature, and the other way round.
        let mut as_note = legacy;
        as_note.format = Format::Note;
        assert!(as_note.verify(&[signer.public_key()]).is_err());
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert_eq!(
            Signer::from_pkcs8(b"not a key").unwrap_err(),
            CheckpointError::BadKey
        );
    }
}
