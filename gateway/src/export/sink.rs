//! Where the exporter delivers: the EPJ over FHIR ([`Epj`]), or, in dev mode without an
//! EPJ, a folder ([`Folder`]) with one JSON file per bundle, so an integrator reads what
//! would have arrived.
//!
//! The folder keeps the EPJ's exactly-once promise in its own terms: a file is named by
//! the SHA-256 of its bundle, and bundles are deterministic (their `urn:uuid:` names and
//! conditional identifiers derive from the record), so a retry finds its file already
//! there and writes no second one.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use super::epj::{CallError, Epj};

/// The bundles' destination.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A FHIR server (the EPJ and the summary record).
    Fhir(Epj),
    /// A folder in the data directory (dev mode).
    Folder(Folder),
}

impl Destination {
    /// Delivers a transaction `bundle` to `base`.
    pub async fn transaction(&self, base: &str, bundle: &Value) -> Result<(), CallError> {
        match self {
            Self::Fhir(epj) => epj.transaction(base, bundle).await,
            Self::Folder(folder) => folder.write(base, bundle).await.map(|_| ()),
        }
    }

    /// Whether a search on `base` finds anything. The folder answers no: its files are
    /// content-addressed, so sending the same bundle again adds nothing anyway.
    pub async fn exists(
        &self,
        base: &str,
        resource_type: &str,
        query: &str,
    ) -> Result<bool, CallError> {
        match self {
            Self::Fhir(epj) => epj.exists(base, resource_type, query).await,
            Self::Folder(_) => Ok(false),
        }
    }
}

/// A folder of bundles: `<dir>/<base>/<resource type>-<sha256 prefix>.json` (the
/// DocumentReference of an ITI-65 bundle, else the first entry's type), where
/// `base` is `epj` or `summary-record`.
#[derive(Clone, Debug)]
pub struct Folder {
    pub dir: PathBuf,
}

/// The `base` names the exporter uses with a [`Folder`].
pub const EPJ_FOLDER: &str = "epj";
pub const SUMMARY_FOLDER: &str = "summary-record";

impl Folder {
    /// Writes `bundle` unless a file with its content is there; returns the file's path
    /// and whether it was new.
    pub async fn write(&self, base: &str, bundle: &Value) -> Result<(PathBuf, bool), CallError> {
        let bytes = serde_json::to_vec_pretty(bundle)
            .map_err(|e| CallError::Transient(format!("serialising the bundle: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut hash = String::with_capacity(16);
        for b in &digest.as_ref()[..8] {
            let _ = write!(hash, "{b:02x}");
        }
        // Named by what it carries: the document of an ITI-65 bundle, else the first entry.
        let types: Vec<&str> = bundle["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["resource"]["resourceType"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let first = types
            .iter()
            .find(|t| **t == "DocumentReference")
            .or(types.first())
            .copied()
            .filter(|t| t.bytes().all(|b| b.is_ascii_alphabetic()))
            .unwrap_or("Bundle");
        let dir = self.dir.join(base);
        let path = dir.join(format!("{first}-{hash}.json"));
        let io = |e: std::io::Error| CallError::Transient(format!("journal sink: {e}"));
        tokio::task::spawn_blocking(move || {
            if path.exists() {
                return Ok((path, false));
            }
            std::fs::create_dir_all(&dir)?;
            // Written beside, then renamed without replacing: a reader never sees half a
            // file, and two writers of the same bundle leave one.
            let mut temporary = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::Write::write_all(&mut temporary, &bytes)?;
            temporary.as_file().sync_all()?;
            match temporary.persist_noclobber(&path) {
                Ok(_) => Ok((path, true)),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok((path, false)),
                Err(e) => Err(e.error),
            }
        })
        .await
        .map_err(|e| CallError::Transient(format!("journal sink: {e}")))?
        .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn the_same_bundle_twice_is_one_file_and_another_is_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder {
            dir: dir.path().to_owned(),
        };
        let bundle = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": {"resourceType": "EpisodeOfCare", "id": "a"}}]});
        let (first, new) = folder.write(EPJ_FOLDER, &bundle).await.unwrap();
        assert!(new);
        assert!(
            first
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("EpisodeOfCare-")
        );
        let (again, new) = folder.write(EPJ_FOLDER, &bundle).await.unwrap();
        assert!(!new, "a retry writes no second file");
        assert_eq!(first, again);
        let other =
            json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "../x"}}]});
        let (path, new) = folder.write(EPJ_FOLDER, &other).await.unwrap();
        assert!(new);
        assert!(
            path.starts_with(dir.path().join(EPJ_FOLDER)),
            "{}",
            path.display()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join(EPJ_FOLDER))
                .unwrap()
                .count(),
            2
        );
        let stored: Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
        assert_eq!(stored, bundle);
    }
}
