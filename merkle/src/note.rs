//! Signed notes (C2SP `signed-note`): a text of one or more lines, a blank line, and one
//! line per signature, `— <key name> <base64(key id || signature)>`. Only Ed25519 keys
//! (signature type 0x01) are made or checked here; a line of another type or of an
//! unknown key is skipped, as the spec asks, and a line of a known key that does not
//! verify rejects the whole note.
//!
//! The key id is the first four bytes of `SHA-256(name || 0x0A || 0x01 || public key)`,
//! and a verifier key is written `<name>+<hex key id>+<base64(0x01 || public key)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, UnparsedPublicKey};

/// The Ed25519 signature type byte.
const ED25519_TYPE: u8 = 0x01;
/// Notes longer than this are refused unread (the spec lets a verifier cap them).
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// More signature lines than this are refused (the Go implementation's limit).
const MAX_SIGNATURES: usize = 100;
/// What starts a signature line: an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note or a verifier key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the note is malformed: {0}")]
    Malformed(&'static str),
    #[error("the verifier key is malformed: {0}")]
    BadVerifierKey(&'static str),
    #[error("the note has no signature by a trusted key")]
    Unverified,
    #[error("the note's signature by {0} does not verify")]
    BadSignature(String),
}

/// Whether `name` may name a key: not empty, no Unicode white space, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The four-byte id of Ed25519 `public_key` under `name`.
pub fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    typed_key_id(ED25519_TYPE, name, public_key)
}

/// The four-byte id of `public_key` of signature type `kind` under `name`:
/// `SHA-256(name || 0x0A || kind || public key)[..4]`.
fn typed_key_id(kind: u8, name: &str, public_key: &[u8]) -> [u8; 4] {
    let hash = crate::digest(&[name.as_bytes(), b"\n", &[kind], public_key]);
    [hash[0], hash[1], hash[2], hash[3]]
}

/// A named Ed25519 key of one signature type: name, id and raw key. Log verifier keys
/// (type 0x01) and witness cosigner keys (0x04, [`crate::CosignerKey`]) are both written
/// `<name>+<hex key id>+<base64(type || key)>`.
pub(crate) type NamedKey = (String, [u8; 4], [u8; 32]);

/// The named key of raw Ed25519 `public_key` under `name`, for signature type `kind`.
pub(crate) fn named_key(kind: u8, name: &str, public_key: &[u8]) -> Result<NamedKey, NoteError> {
    if !valid_key_name(name) {
        return Err(NoteError::BadVerifierKey(
            "the name is empty or has a space or '+'",
        ));
    }
    let public_key: [u8; 32] = public_key
        .try_into()
        .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
    Ok((
        name.to_owned(),
        typed_key_id(kind, name, &public_key),
        public_key,
    ))
}

/// Parses a key of type `kind` written as above, checking that the id fits; a key of
/// another type is refused with `wrong_type`.
pub(crate) fn parse_named_key(
    kind: u8,
    wrong_type: &'static str,
    text: &str,
) -> Result<NamedKey, NoteError> {
    // The key's base64 may hold '+' itself; the name and the id cannot.
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NoteError::BadVerifierKey("expected name+id+key"));
    };
    let key = STANDARD
        .decode(key)
        .map_err(|_| NoteError::BadVerifierKey("the key is not base64"))?;
    let Some((_, raw)) = key.split_first().filter(|(k, _)| **k == kind) else {
        return Err(NoteError::BadVerifierKey(wrong_type));
    };
    let parsed = named_key(kind, name, raw)?;
    if id.len() != 8 || crate::hex(&parsed.1) != id {
        return Err(NoteError::BadVerifierKey(
            "the key id does not match the key",
        ));
    }
    Ok(parsed)
}

/// Writes a key of type `kind` as above.
pub(crate) fn write_named_key(
    f: &mut std::fmt::Formatter<'_>,
    kind: u8,
    name: &str,
    id: [u8; 4],
    public_key: &[u8; 32],
) -> std::fmt::Result {
    let mut key = Vec::with_capacity(33);
    key.push(kind);
    key.extend_from_slice(public_key);
    write!(f, "{name}+{}+{}", crate::hex(&id), STANDARD.encode(key))
}

/// A key that checks signatures of one name: what a verifier pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
}

impl VerifierKey {
    /// The verifier key of `public_key` (raw Ed25519) under `name`.
    pub fn new(name: &str, public_key: &[u8]) -> Result<Self, NoteError> {
        let (name, id, public_key) = named_key(ED25519_TYPE, name, public_key)?;
        Ok(Self {
            name,
            id,
            public_key,
        })
    }

    /// Parses `<name>+<hex key id>+<base64(0x01 || key)>`, checking that the id fits.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, public_key) = parse_named_key(ED25519_TYPE, "not an Ed25519 key", text)?;
        Ok(Self {
            name,
            id,
            public_key,
        })
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_named_key(f, ED25519_TYPE, &self.name, self.id, &self.public_key)
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub id: [u8; 4],
    /// The signature proper: 64 bytes for Ed25519.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// `— <name> <base64(id || signature)>\n`.
    pub fn line(&self) -> String {
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&self.signature);
        format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

/// A note split into its text and signature lines; nothing is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Splits `note` at its last blank line and parses every signature line.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("longer than a note may be"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("a control character"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = &note[..=split];
        let lines = note[split + 2..]
            .strip_suffix('\n')
            .ok_or(NoteError::Malformed("the last line has no newline"))?;
        let signatures = lines
            .split('\n')
            .map(parse_signature_line)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line and the signature lines.
    pub fn to_text(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }

    /// The keys of `trusted` that signed the note. A line of a trusted name and id whose
    /// signature fails rejects the note; lines of other keys are ignored; none at all is
    /// [`NoteError::Unverified`].
    pub fn verify<'k>(
        &self,
        trusted: &'k [VerifierKey],
    ) -> Result<Vec<&'k VerifierKey>, NoteError> {
        let mut verified: Vec<&VerifierKey> = Vec::new();
        for signature in &self.signatures {
            let Some(key) = trusted
                .iter()
                .find(|k| k.name == signature.name && k.id == signature.id)
            else {
                continue;
            };
            if verified.iter().any(|v| std::ptr::eq(*v, key)) {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &key.public_key)
                .verify(self.text.as_bytes(), &signature.signature)
                .map_err(|_| NoteError::BadSignature(key.name.clone()))?;
            verified.push(key);
        }
        if verified.is_empty() {
            return Err(NoteError::Unverified);
        }
        Ok(verified)
    }
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(NoteError::Malformed(
            "a signature line does not start with '— '",
        ))?;
    let (name, blob) = rest
        .split_once(' ')
        .ok_or(NoteError::Malformed("a signature line has no signature"))?;
    if !valid_key_name(name) {
        return Err(NoteError::Malformed("a signature line's key name"));
    }
    let blob = STANDARD
        .decode(blob)
        .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
    if blob.len() < 5 {
        return Err(NoteError::Malformed("a signature is too short"));
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        id: [blob[0], blob[1], blob[2], blob[3]],
        signature: blob[4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the C2SP signed-note specification.
    const SPEC_KEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn the_specification_example_verifies() {
        let key = VerifierKey::parse(SPEC_KEY).unwrap();
        assert_eq!(key.to_string(), SPEC_KEY);
        let note = Note::parse(SPEC_NOTE).unwrap();
        assert_eq!(note.text, "This is an example message.\n");
        assert_eq!(note.to_text(), SPEC_NOTE);
        assert_eq!(note.verify(std::slice::from_ref(&key)).unwrap(), vec![&key]);
    }

    #[test]
    fn a_changed_note_or_key_is_refused() {
        let key = VerifierKey::parse(SPEC_KEY).unwrap();
        let trusted = std::slice::from_ref(&key);
        let changed =
            Note::parse(&SPEC_NOTE.replace("example message", "example massage")).unwrap();
        assert_eq!(
            changed.verify(trusted),
            Err(NoteError::BadSignature("example.com/foo".into()))
        );
        // Another name: the line is not of a trusted key, so nothing verifies it.
        let other = VerifierKey::new("example.com/bar", &key.public_key).unwrap();
        assert_eq!(
            Note::parse(SPEC_NOTE).unwrap().verify(&[other]),
            Err(NoteError::Unverified)
        );
        assert!(VerifierKey::parse(&SPEC_KEY.replace("530d903a", "530d903b")).is_err());
        // A key whose base64 holds '+' still reads: only the first two split.
        let plus = (0u8..=255)
            .map(|b| VerifierKey::new("log.example/a", &[b; 32]).unwrap())
            .find(|k| k.to_string().matches('+').count() > 2)
            .unwrap();
        assert_eq!(VerifierKey::parse(&plus.to_string()).unwrap(), plus);
        assert!(
            VerifierKey::parse("a b+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
                .is_err()
        );
    }

    #[test]
    fn malformed_notes_are_refused() {
        for bad in [
            "no blank line\n\u{2014} example.com/foo AAAAAAA=\n",
            "text\n\n- example.com/foo AAAAAAAA\n",
            "text\n\n\u{2014} example.com/foo !!!\n",
            "text\n\n\u{2014} example.com/foo AAAA\n",
            "text\n\n\u{2014} example.com/foo AAAAAAAA",
            "te\rxt\n\n\u{2014} example.com/foo AAAAAAAA\n",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
    }
}
