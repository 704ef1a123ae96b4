//! Sends not yet acknowledged, kept so that a retry resends the very bytes the gateway
//! may already have committed.
//!
//! The gateway recognises a retry only when it is the same request byte for byte; sealing
//! the same text again makes a different envelope (fresh ephemeral keys, nonce and
//! signature), which the gateway rightly answers with 409 when the first one did arrive.
//! So a sender seals once, keeps the sealed send here until the gateway has answered, and
//! a retry of the same message (same episode, id, kind and payload) takes it from here.
//!
//! The file sits beside the device's keys and, like them, is readable by its owner only.
//! It holds ciphertext and a SHA-256 of what was sealed, never the payload itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message sealed for sending: what goes in the `PUT …/messages/{id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSend {
    pub episode: Uuid,
    pub message_id: Uuid,
    pub kind: String,
    /// The sealed envelope, base64url without padding, as the API carries it.
    pub envelope: String,
    /// [`fingerprint`] of what was sealed, to tell a retry from a new message that reuses
    /// the id.
    pub fingerprint: String,
}

/// SHA-256 over the sending device, the kind and the payload, each length-prefixed.
pub fn fingerprint(device_id: &str, kind: &str, payload: &[u8]) -> String {
    use base64::Engine;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [device_id.as_bytes(), kind.as_bytes(), payload] {
        context.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        context.update(part);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context.finish())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    sends: Vec<SealedSend>,
}

/// The unacknowledged sends of one device, in a file.
#[derive(Debug, Clone)]
pub struct PendingSends {
    path: PathBuf,
}

/// Why the file of unacknowledged sends could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("unacknowledged sends in {path}: {problem}")]
pub struct PendingError {
    path: String,
    problem: String,
}

impl PendingSends {
    /// The file beside a device key file: `device.json` keeps `device.json.pending`.
    pub fn beside(keys: &Path) -> Self {
        let mut name = keys.as_os_str().to_owned();
        name.push(".pending");
        Self {
            path: PathBuf::from(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, problem: impl std::fmt::Display) -> PendingError {
        PendingError {
            path: self.path.display().to_string(),
            problem: problem.to_string(),
        }
    }

    fn read(&self) -> Result<File, PendingError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.error(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Replaces the file in one step (write aside, flush to disk, rename), so a crash
    /// leaves the old list or the new one.
    fn write(&self, file: &File) -> Result<(), PendingError> {
        use std::os::unix::fs::OpenOptionsExt;
        if file.sends.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.error(e)),
                _ => Ok(()),
            };
        }
        let mut aside = self.path.as_os_str().to_owned();
        aside.push(".new");
        let aside = PathBuf::from(aside);
        let text = serde_json::to_vec(file).map_err(|e| self.error(e))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&aside)
            .map_err(|e| self.error(e))?;
        out.write_all(&text)
            .and_then(|()| out.sync_all())
            .map_err(|e| self.error(e))?;
        std::fs::rename(&aside, &self.path).map_err(|e| self.error(e))
    }

    /// The kept send of `message_id` in `episode`, if any.
    pub fn get(&self, episode: Uuid, message_id: Uuid) -> Result<Option<SealedSend>, PendingError> {
        Ok(self
            .read()?
            .sends
            .into_iter()
            .find(|s| s.episode == episode && s.message_id == message_id))
    }

    /// Keeps `send` (replacing any kept under its id) until [`Self::remove`].
    pub fn keep(&self, send: &SealedSend) -> Result<(), PendingError> {
        let mut file = self.read()?;
        file.sends
            .retain(|s| !(s.episode == send.episode && s.message_id == send.message_id));
        file.sends.push(send.clone());
        self.write(&file)
    }

    /// Forgets the send of `message_id`: the gateway has answered it.
    pub fn remove(&self, episode: Uuid, message_id: Uuid) -> Result<(), PendingError> {
        let mut file = self.read()?;
        let before = file.sends.len();
        file.sends
            .retain(|s| !(s.episode == episode && s.message_id == message_id));
        if file.sends.len() == before {
            return Ok(());
        }
        self.write(&file)
    }

    /// Every kept send.
    pub fn list(&self) -> Result<Vec<SealedSend>, PendingError> {
        Ok(self.read()?.sends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(episode: Uuid, id: Uuid, envelope: &str) -> SealedSend {
        SealedSend {
            episode,
            message_id: id,
            kind: "message".into(),
            envelope: envelope.into(),
            fingerprint: fingerprint("device", "message", b"hei"),
        }
    }

    #[test]
    fn keeps_replaces_and_forgets_sends_in_an_owner_only_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingSends::beside(&dir.path().join("device.json"));
        let (episode, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(pending.get(episode, a).unwrap(), None);
        pending.keep(&send(episode, a, "first")).unwrap();
        pending.keep(&send(episode, b, "other")).unwrap();
        pending.keep(&send(episode, a, "second")).unwrap();
        assert_eq!(pending.get(episode, a).unwrap().unwrap().envelope, "second");
        assert_eq!(pending.list().unwrap().len(), 2);
        let mode = std::fs::metadata(pending.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        pending.remove(episode, a).unwrap();
        assert_eq!(pending.get(episode, a).unwrap(), None);
        pending.remove(episode, b).unwrap();
        assert!(!pending.path().exists(), "an empty list leaves no file");
    }

    #[test]
    fn the_fingerprint_separates_its_fields() {
        assert_ne!(fingerprint("ab", "c", b"d"), fingerprint("a", "bc", b"d"));
        assert_eq!(fingerprint("a", "b", b"c"), fingerprint("a", "b", b"c"));
    }
}
