//! The HTTPS client for identity providers and outbound calls: rustls with ring, either
//! the system's trust store or exactly the configured CA bundle, and bounded time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("cannot read the trust roots {path}: {reason}")]
    TrustRoots { path: String, reason: String },
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

/// rustls with ring that accepts only certificates chaining to the PEM bundle at
/// `trust_roots`: what every outbound client of the gateway uses when one is configured.
pub fn tls_config(trust_roots: &Path) -> Result<rustls::ClientConfig, HttpClientError> {
    use rustls_pki_types::pem::PemObject;
    let fail = |reason: String| HttpClientError::TrustRoots {
        path: trust_roots.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(trust_roots)
        .map_err(|e| fail(e.to_string()))?
    {
        roots
            .add(cert.map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpClientError::Build(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// An HTTPS client. With `trust_roots`, only certificates chaining to that PEM bundle are
/// accepted; without, the platform's trust store is used.
pub fn https_client(
    trust_roots: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, HttpClientError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true);
    let builder = match trust_roots {
        None => builder,
        Some(path) => builder.tls_backend_preconfigured(tls_config(path)?),
    };
    builder
        .build()
        .map_err(|e| HttpClientError::Build(e.to_string()))
}
