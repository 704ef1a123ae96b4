//! `icbt-gateway dev token --as NAME`: a token for anyone in the people file, signed by
//! the dev provider of their kind, and for HelseID (therapists, auditors, system clients)
//! bound to a fresh DPoP key that is written beside it, as the `icbt` command line reads
//! it. Also what dev mode uses to publish the clinic's journal key as the platform.

use std::path::{Path, PathBuf};

use anyhow::Context;
use icbt_auth::dpop::DpopKey;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::idp::{DevIdp, Provider};
use super::{Files, ensure_pem_key, write_private};

/// The `client_id` of tokens made on the command line.
pub const CLI_CLIENT_ID: &str = "icbt-gateway-dev-cli";

/// A token and, when bound, its DPoP key.
#[derive(Debug)]
pub struct Issued {
    pub token: zeroize::Zeroizing<String>,
    /// PKCS#8 DER of the DPoP key the token is bound to (HelseID tokens).
    pub dpop_der: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub provider: Provider,
}

impl Issued {
    /// The DPoP key, when the token is bound.
    pub fn dpop_key(&self) -> anyhow::Result<Option<DpopKey>> {
        self.dpop_der
            .as_ref()
            .map(|der| DpopKey::from_pkcs8(der).context("the DPoP key"))
            .transpose()
    }
}

/// The providers of the set-up in `data_dir`, as `serve --dev` at `origin` runs them.
pub fn open_idp(data_dir: &Path, origin: &str) -> anyhow::Result<DevIdp> {
    let files = Files::under(data_dir);
    anyhow::ensure!(
        files.idp_key.exists() && files.people.exists(),
        "there is no dev set-up in {}; fix: start `icbt-gateway serve --dev` once first",
        data_dir.display()
    );
    let idp_key = ensure_pem_key(&files.idp_key)?;
    let login_key = ensure_pem_key(&files.login_key)?;
    let login_public = icbt_auth::client::ClientKey::from_pkcs8(
        &login_key,
        icbt_auth::client::ClientKeyAlgorithm::ES256,
        None,
    )?
    .public_jwk();
    Ok(DevIdp::new(
        origin,
        &files.people,
        &idp_key,
        icbt_auth::jose::Jwk::from_json(&login_public)?,
    )?)
}

/// A token for the person or client called `name`.
pub fn issue(idp: &DevIdp, name: &str) -> anyhow::Result<Issued> {
    let people = idp.people()?;
    let now = icbt_auth::now_secs();
    if let Some(person) = people.person(name) {
        let provider = Provider::of(person.role);
        let dpop_der = (provider == Provider::Helseid)
            .then(new_dpop_key)
            .transpose()?;
        let jkt = thumbprint(dpop_der.as_ref().map(|d| d.as_slice()))?;
        let token = idp.person_token(person, &people, CLI_CLIENT_ID, jkt.as_deref(), now);
        return Ok(Issued {
            token: token.into(),
            dpop_der,
            provider,
        });
    }
    if let Some(client) = people.client_named(name) {
        let dpop_der = new_dpop_key()?;
        let jkt = thumbprint(Some(dpop_der.as_slice()))?;
        let token = idp.system_token(client, jkt.as_deref(), now);
        return Ok(Issued {
            token: token.into(),
            dpop_der: Some(dpop_der),
            provider: Provider::Helseid,
        });
    }
    let mut names: Vec<&str> = people.persons.iter().map(|p| p.name.as_str()).collect();
    names.extend(people.clients.iter().map(|c| c.name.as_str()));
    anyhow::bail!(
        "nobody is called `{name}` in the people file; fix: use one of {} or add them to it",
        names.join(", ")
    )
}

fn new_dpop_key() -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("cannot generate a DPoP key"))?;
    Ok(pkcs8.as_ref().to_vec().into())
}

fn thumbprint(der: Option<&[u8]>) -> anyhow::Result<Option<String>> {
    der.map(|der| {
        DpopKey::from_pkcs8(der)
            .map(|k| k.thumbprint().to_owned())
            .context("the DPoP key")
    })
    .transpose()
}

/// Writes the token (and its DPoP key) under `dir` as `NAME.token` and `NAME.dpop.der`,
/// owner-only; returns their paths.
pub fn write(
    issued: &Issued,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let token_file = dir.join(format!("{name}.token"));
    write_private(&token_file, issued.token.as_bytes())
        .with_context(|| token_file.display().to_string())?;
    let dpop_file = match &issued.dpop_der {
        Some(der) => {
            let path = dir.join(format!("{name}.dpop.der"));
            write_private(&path, der).with_context(|| path.display().to_string())?;
            Some(path)
        }
        None => None,
    };
    Ok((token_file, dpop_file))
}
