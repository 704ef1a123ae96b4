//! Witness cosignatures (C2SP `tlog-cosignature`, version 1 over Ed25519): a witness that
//! checked a checkpoint's consistency with what it saw before signs
//! `cosignature/v1\ntime <seconds>\n<checkpoint text>` and returns a note signature line
//! whose blob is `key id || u64 big-endian time || signature`.
//!
//! The key id is the first four bytes of `SHA-256(name || 0x0A || 0x04 || public key)`;
//! a cosigner's verifier key is `<name>+<hex key id>+<base64(0x04 || public key)>`, the
//! signed-note form with another type byte (see [`crate::note`]).

use ring::signature::{ED25519, UnparsedPublicKey};

use crate::note::{NoteError, NoteSignature, named_key, parse_named_key, write_named_key};

/// The signature type byte of an Ed25519 cosignature/v1 key.
const COSIGNATURE_V1_TYPE: u8 = 0x04;

/// A witness's key, as the log pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    pub name: String,
    pub id: [u8; 4],
    pub public_key: [u8; 32],
}

impl CosignerKey {
    /// The key of raw Ed25519 `public_key` under `name`.
    pub fn new(name: &str, public_key: &[u8]) -> Result<Self, NoteError> {
        let (name, id, public_key) = named_key(COSIGNATURE_V1_TYPE, name, public_key)?;
        Ok(Self {
            name,
            id,
            public_key,
        })
    }

    /// Parses `<name>+<hex key id>+<base64(0x04 || key)>`, checking that the id fits.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, public_key) = parse_named_key(
            COSIGNATURE_V1_TYPE,
            "not an Ed25519 cosignature/v1 key (type 0x04)",
            text,
        )?;
        Ok(Self {
            name,
            id,
            public_key,
        })
    }

    /// Checks `signature` as this key's cosignature of `checkpoint_text` (the note's
    /// text, ending in a newline). `Ok(None)`: another key's line, to be ignored;
    /// `Ok(Some(time))`: valid, made at `time` (seconds); an error: this key's line that
    /// does not verify.
    pub fn verify(
        &self,
        checkpoint_text: &str,
        signature: &NoteSignature,
    ) -> Result<Option<u64>, NoteError> {
        if signature.name != self.name || signature.id != self.id {
            return Ok(None);
        }
        let bad = || NoteError::BadSignature(self.name.clone());
        let (time, sig) = signature
            .signature
            .split_at_checked(8)
            .filter(|(_, sig)| sig.len() == 64)
            .ok_or_else(bad)?;
        let time = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
        if time > i64::MAX as u64 {
            return Err(bad());
        }
        UnparsedPublicKey::new(&ED25519, self.public_key)
            .verify(message(checkpoint_text, time).as_bytes(), sig)
            .map_err(|_| bad())?;
        Ok(Some(time))
    }
}

impl std::fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_named_key(
            f,
            COSIGNATURE_V1_TYPE,
            &self.name,
            self.id,
            &self.public_key,
        )
    }
}

/// What a cosigner signs for `checkpoint_text` at `time`.
pub fn message(checkpoint_text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{checkpoint_text}")
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;
    use crate::note::Note;

    fn cosign(pair: &Ed25519KeyPair, key: &CosignerKey, text: &str, time: u64) -> NoteSignature {
        let mut blob = time.to_be_bytes().to_vec();
        blob.extend_from_slice(pair.sign(message(text, time).as_bytes()).as_ref());
        NoteSignature {
            name: key.name.clone(),
            id: key.id,
            signature: blob,
        }
    }

    #[test]
    fn a_cosignature_verifies_once_and_binds_text_and_time() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = CosignerKey::new("witness.example/w1", pair.public_key().as_ref()).unwrap();
        assert_eq!(CosignerKey::parse(&key.to_string()).unwrap(), key);
        let text = "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let line = cosign(&pair, &key, text, 1_700_000_000);
        assert_eq!(key.verify(text, &line), Ok(Some(1_700_000_000)));
        // A line survives the note format unchanged.
        let note = Note::parse(&format!("{text}\n{}", line.line())).unwrap();
        assert_eq!(
            key.verify(text, &note.signatures[0]),
            Ok(Some(1_700_000_000))
        );
        // Another checkpoint, another time, another key: no.
        assert!(key.verify(&text.replace('5', "6"), &line).is_err());
        let mut later = line.clone();
        later.signature[7] ^= 1;
        assert!(key.verify(text, &later).is_err());
        let other = CosignerKey::new("witness.example/w2", pair.public_key().as_ref()).unwrap();
        assert_eq!(other.verify(text, &line), Ok(None));
        // A log key (type 0x01) is not a cosigner key.
        let log_key = crate::VerifierKey::new("witness.example/w1", pair.public_key().as_ref())
            .unwrap()
            .to_string();
        assert!(CosignerKey::parse(&log_key).is_err());
    }
}
