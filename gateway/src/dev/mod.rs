//! Dev mode's sandbox: the dev identity providers ([`idp`]) and their people
//! ([`people`]), the clinic's journal key, the journal sink, the demo story ([`demo`]) and
//! `dev token` ([`token`]).
//!
//! Owns: the files under `<data_dir>/dev/` and what dev mode adds to the configuration
//! ([`prepare`]): two trusted issuers, hosted logins at both, the auditor scope, the
//! journal key and the in-process exporter. Everything it adds goes through the same
//! validation and request path as production configuration; nothing checks a dev flag
//! per request. Production never calls into this module, and the configuration refuses a
//! dev issuer outside dev mode.

pub mod demo;
pub mod idp;
pub mod pages;
pub mod people;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use icbt_config::{Config, IssuerConfig, IssuerKind, LoginConfig};

use idp::{DevIdp, Provider};

pub(crate) use crate::server::tls::write_private;

/// The folder of dev-mode files in the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dev")
}

/// Where the in-process exporter writes bundles when no EPJ is configured.
pub fn sink_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal-sink")
}

/// The files of one dev set-up.
#[derive(Debug, Clone)]
pub struct Files {
    pub people: PathBuf,
    pub idp_key: PathBuf,
    pub login_key: PathBuf,
    pub journal_key: PathBuf,
    pub trust: PathBuf,
    pub tokens: PathBuf,
}

impl Files {
    pub fn under(data_dir: &Path) -> Self {
        let dir = dir(data_dir);
        Self {
            people: dir.join(people::FILE_NAME),
            idp_key: dir.join("idp-signing-key.pem"),
            login_key: dir.join("login-client-key.pem"),
            journal_key: dir.join("journal-key.json"),
            trust: dir.join("trust.pem"),
            tokens: dir.join("tokens"),
        }
    }
}

/// The origin the dev providers and their tokens name: `server.public_url`, else
/// `https://localhost:<port>`.
pub fn origin(config: &Config, port: u16) -> String {
    config.server.public_url.as_ref().map_or_else(
        || format!("https://localhost:{port}"),
        |u| u.trim_end_matches('/').to_owned(),
    )
}

/// What a dev start produced.
#[derive(Debug)]
pub struct DevMode {
    pub idp: Arc<DevIdp>,
    pub files: Files,
    /// Where bundles go, when no EPJ is configured.
    pub sink: Option<PathBuf>,
}

/// Writes what a first start needs (people, keys), adds the dev issuers, logins, auditor
/// scope, journal key and in-process exporter to `config`, and makes the providers.
/// `served_cert` is the certificate the listener presents: the gateway trusts it to fetch
/// the dev providers' keys from itself.
pub fn prepare(config: &mut Config, origin: &str, served_cert: &Path) -> anyhow::Result<DevMode> {
    let files = Files::under(&config.storage.data_dir);
    let (_, _) = people::People::load_or_create(&dir(&config.storage.data_dir))?;
    let idp_key = ensure_pem_key(&files.idp_key)?;
    let login_key = ensure_pem_key(&files.login_key)?;
    ensure_journal_key(&files.journal_key)?;

    for provider in Provider::ALL {
        let name = provider.issuer_name();
        anyhow::ensure!(
            config.auth.issuers.iter().all(|i| i.name != name),
            "configuration key `auth.issuers.name`: `{name}` is dev mode's own; fix: rename that issuer"
        );
        config.auth.issuers.push(IssuerConfig {
            name: name.to_owned(),
            kind: match provider {
                Provider::Idporten => IssuerKind::Idporten,
                Provider::Helseid => IssuerKind::Helseid,
            },
            issuer: provider.issuer(origin),
            discovery_url: None,
            audience: idp::AUDIENCE.to_owned(),
            algorithms: vec!["ES256".to_owned()],
            clock_skew_seconds: 30,
            required_scopes: vec![provider.api_scope().to_owned()],
            min_acr: "idporten-loa-high".to_owned(),
            min_security_level: 4,
            claims: icbt_config::ClaimNames::default(),
        });
        config.login.push(LoginConfig {
            issuer: name.to_owned(),
            client_id: idp::LOGIN_CLIENT_ID.to_owned(),
            key_file: files.login_key.clone(),
            key_algorithm: "ES256".to_owned(),
            key_id: None,
            assertion_audience: None,
            redirect_uri: format!("{origin}/auth/callback"),
            scope: format!("openid {}", provider.api_scope()),
            resource: None,
            acr_values: (provider == Provider::Idporten).then(|| "idporten-loa-high".to_owned()),
            post_logout_redirect_uri: format!("{origin}/"),
            session_idle_timeout_seconds: 1_800,
            session_absolute_timeout_seconds: 43_200,
        });
    }
    if config.auth.auditors.scope.is_none() {
        config.auth.auditors.scope = Some(idp::AUDIT_SCOPE.to_owned());
    }
    // The gateway fetches the dev providers' metadata from itself, over TLS: it trusts
    // the certificate it serves, beside whatever roots were configured.
    let mut roots = match &config.auth.trust_roots_file {
        Some(path) => std::fs::read(path).with_context(|| {
            format!(
                "configuration key `auth.trust_roots_file`: {}",
                path.display()
            )
        })?,
        None => Vec::new(),
    };
    roots.extend(std::fs::read(served_cert).with_context(|| served_cert.display().to_string())?);
    write_private(&files.trust, &roots).with_context(|| files.trust.display().to_string())?;
    config.auth.trust_roots_file = Some(files.trust.clone());

    config.export.in_process = true;
    config
        .export
        .journal_key_files
        .push(files.journal_key.clone());
    let sink = config
        .export
        .epj_base_url
        .is_none()
        .then(|| sink_dir(&config.storage.data_dir));

    let login_public = icbt_auth::client::ClientKey::from_pkcs8(
        &login_key,
        icbt_auth::client::ClientKeyAlgorithm::ES256,
        None,
    )?
    .public_jwk();
    let idp = DevIdp::new(
        origin,
        &files.people,
        &idp_key,
        icbt_auth::jose::Jwk::from_json(&login_public)?,
    )?;
    Ok(DevMode {
        idp: Arc::new(idp),
        files,
        sink,
    })
}

/// The PKCS#8 DER of the P-256 key in `path`, generated (PEM, owner-only) when missing.
pub fn ensure_pem_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    if !path.exists() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate a P-256 key")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_private(path, key.serialize_pem().as_bytes())
            .with_context(|| path.display().to_string())?;
    }
    let der = PrivatePkcs8KeyDer::from_pem_file(path)
        .with_context(|| format!("{} is not a PKCS#8 PEM key", path.display()))?;
    Ok(der.secret_pkcs8_der().to_vec())
}

/// The clinic's private journal key (device JSON, as `icbt keygen` writes it).
pub fn ensure_journal_key(path: &Path) -> anyhow::Result<icbt_envelope::DeviceKeys> {
    if !path.exists() {
        let keys = icbt_envelope::DeviceKeys::generate()?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_private(path, keys.to_private_json().as_bytes())
            .with_context(|| path.display().to_string())?;
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    icbt_envelope::DeviceKeys::from_private_json(&text)
        .with_context(|| format!("{} is not a device key file", path.display()))
}

/// Publishes the clinic's journal key through the API, as the clinic's platform client,
/// once the listener answers. Every start does it: a key already published is answered
/// 200, so this is how a first start makes the sandbox's journal recipient exist.
pub async fn publish_journal_key(origin: String, files: Files, idp: Arc<DevIdp>, log_key: Vec<u8>) {
    const ATTEMPTS: u32 = 50;
    for attempt in 1..=ATTEMPTS {
        match try_publish(&origin, &files, &idp, &log_key).await {
            Ok(device) => {
                tracing::info!(device = %device, "dev mode: the clinic's journal key is published");
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(error = %format!("{e:#}"), "dev mode: publishing the clinic's journal key failed; messages cannot be sealed until it is");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

async fn try_publish(
    origin: &str,
    files: &Files,
    idp: &DevIdp,
    log_key: &[u8],
) -> anyhow::Result<String> {
    let people = idp.people()?;
    let org = people.clinic.org_number.clone();
    let platform = people.clinic_client()?;
    let issued = token::issue(idp, &platform.name)?;
    let http =
        icbt_auth::http::https_client(Some(&files.trust), std::time::Duration::from_secs(10))?;
    let client = icbt_client::Client::new(
        http,
        url::Url::parse(origin)?,
        icbt_client::Credentials {
            access_token: issued.token.clone(),
            dpop: issued.dpop_key()?,
        },
        vec![log_key.to_vec()],
    );
    let keys = ensure_journal_key(&files.journal_key)?;
    let expires = crate::domain::now_ms() + 365 * 24 * 3_600 * 1_000;
    match client
        .publish_journal_key(org.as_str(), &keys, expires)
        .await
    {
        Ok(_) => Ok(keys.device_id()),
        // Published by an earlier start, with that start's expiry.
        Err(icbt_client::ClientError::Problem {
            status: 409,
            problem_type,
            ..
        }) if problem_type.ends_with(":device-conflict") => Ok(keys.device_id()),
        Err(e) => Err(e.into()),
    }
}
