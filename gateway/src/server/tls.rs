//! TLS for the listener: rustls with the ring provider, TLS 1.3 and 1.2, ALPN h2 and
//! http/1.1, optional client-certificate verification, and dev-mode certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use icbt_config::{ClientAuth, TlsConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA bundle refused: {0}")]
    ClientVerifier(String),
    #[error("cannot create the dev certificate in {path}: {reason}")]
    DevCertificate { path: PathBuf, reason: String },
}

/// The certificate and key files in use, and the leaf's SHA-256 fingerprint.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The process-wide crypto provider: ring, as the architecture asks for.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default, for clients (OTLP export, identity providers)
/// that do not take a provider explicitly. Call once, first thing.
pub fn install_default_provider() {
    // Fails only when a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Builds the server configuration from `files` and the client-certificate policy.
pub fn server_config(
    config: &TlsConfig,
    files: &CertificateFiles,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = read_certs("certificate file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "key file",
            path: files.key_file.clone(),
            expected: "PRIVATE KEY",
        },
        source => TlsError::Read {
            what: "key file",
            path: files.key_file.clone(),
            source,
        },
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (config.client_auth, &config.client_ca_file) {
        (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client CA file", ca_file)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::ClientVerifier(e.to_string()))?,
            )
        }
    };
    let mut server = builder.with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The provider's order (AEAD suites with forward secrecy, strongest first) decides,
    // not the client's: a client cannot steer a TLS 1.2 handshake to its weakest
    // common suite, and scanners rate a server without an order of its own as weak.
    server.ignore_client_order = true;
    Ok(server)
}

/// The SHA-256 fingerprint of the first certificate in `cert_file`, as colon-separated hex.
pub fn fingerprint(cert_file: &Path) -> Result<String, TlsError> {
    let chain = read_certs("certificate file", cert_file)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, chain[0].as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The dev certificate in `data_dir/dev-tls`, generated on first use: self-signed, P-256,
/// for `localhost`, `127.0.0.1` and `::1`.
pub fn ensure_dev_certificate(data_dir: &Path) -> Result<CertificateFiles, TlsError> {
    let dir = data_dir.join("dev-tls");
    let files = CertificateFiles {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    if files.cert_file.is_file() && files.key_file.is_file() {
        return Ok(files);
    }
    let fail = |reason: String| TlsError::DevCertificate {
        path: dir.clone(),
        reason,
    };
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    write_private(
        &files.key_file,
        generated.signing_key.serialize_pem().as_bytes(),
    )
    .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&files.cert_file, generated.cert.pem()).map_err(|e| fail(e.to_string()))?;
    Ok(files)
}

/// Writes (or replaces) a file readable by its owner only. Dev mode's files use it too.
pub(crate) fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dev_certificate_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certificate(dir.path()).unwrap();
        let first = fingerprint(&files.cert_file).unwrap();
        assert_eq!(first.len(), 32 * 3 - 1);
        let again = ensure_dev_certificate(dir.path()).unwrap();
        assert_eq!(
            fingerprint(&again.cert_file).unwrap(),
            first,
            "reused, not regenerated"
        );
        let config = server_config(&TlsConfig::default(), &files).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let mode = std::fs::metadata(&files.key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private to its owner");
    }

    #[test]
    fn certificate_file_without_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_dev_certificate(dir.path()).unwrap();
        std::fs::write(&files.cert_file, "not pem").unwrap();
        let err = server_config(&TlsConfig::default(), &files).unwrap_err();
        assert!(err.to_string().contains("cert.pem"), "{err}");
    }
}
