//! Secrets in configuration: never written inline, never printed.
//!
//! A secret is named in the file by where it lives, `{ file = "/run/secrets/x" }` or
//! `{ env = "VAR" }`, and read when the configuration is loaded, so a missing secret is a
//! configuration error that names its key. The value is zeroized on drop and both `Debug`
//! and `Serialize` print `[redacted]`.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret value read from a file or an environment variable.
#[derive(Clone)]
pub struct Secret {
    value: Zeroizing<String>,
    origin: SecretOrigin,
}

/// Where a secret was read from; safe to print.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretOrigin {
    /// A file whose content (without a trailing newline) is the secret.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl Secret {
    /// The secret itself. Call sites are few and easy to audit.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the secret came from, for messages that must not contain it.
    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }

    /// Reads the secret from its origin.
    pub fn load(origin: SecretOrigin) -> Result<Self, String> {
        let raw = match &origin {
            SecretOrigin::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
            SecretOrigin::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set or not UTF-8"))?,
        };
        let value = Zeroizing::new(raw.trim_end_matches(['\r', '\n']).to_owned());
        drop(Zeroizing::new(raw));
        if value.is_empty() {
            return Err(match &origin {
                SecretOrigin::File(path) => format!("secret file {} is empty", path.display()),
                SecretOrigin::Env(name) => format!("environment variable {name} is empty"),
            });
        }
        Ok(Self { value, origin })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shown = match &self.origin {
            SecretOrigin::File(path) => format!("[redacted] (from file {})", path.display()),
            SecretOrigin::Env(name) => format!("[redacted] (from env {name})"),
        };
        serializer.serialize_str(&shown)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Origin(SecretOrigin),
            Inline(serde::de::IgnoredAny),
        }
        match Form::deserialize(deserializer)? {
            Form::Origin(origin) => Secret::load(origin).map_err(de::Error::custom),
            Form::Inline(_) => Err(de::Error::custom(
                "secrets are not written inline; use { file = \"/path\" } or { env = \"VAR\" }",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let secret = Secret::load(SecretOrigin::File(path)).unwrap();
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        let shown = toml::to_string(&std::collections::BTreeMap::from([("s", &secret)])).unwrap();
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn rejects_empty_and_missing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(
            Secret::load(SecretOrigin::File(empty))
                .unwrap_err()
                .contains("empty")
        );
        let missing = dir.path().join("missing");
        assert!(
            Secret::load(SecretOrigin::File(missing))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn rejects_inline_secret() {
        #[derive(Deserialize, Debug)]
        struct Holder {
            #[allow(dead_code)]
            s: Secret,
        }
        let err = toml::from_str::<Holder>("s = \"plain\"").unwrap_err();
        assert!(err.to_string().contains("not written inline"), "{err}");
    }
}
