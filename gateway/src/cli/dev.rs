//! `icbt-gateway dev token`, `dev demo` and `dev episode`: the sandbox from a terminal.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use icbt_config::{Config, Mode};

use crate::audit::sequencer::AuditLog;
use crate::dev::{self, token};

/// The gateway URL the dev commands talk to: `--gateway`, else the dev origin of the
/// configuration (`server.public_url`, else `https://localhost:<server.bind port>`).
fn origin(config: &Config, gateway: Option<&url::Url>) -> String {
    gateway.map_or_else(
        || dev::origin(config, config.server.bind.port()),
        |u| u.as_str().trim_end_matches('/').to_owned(),
    )
}

/// The certificate clients trust: the configured one, else dev mode's.
fn served_cert(config: &Config) -> PathBuf {
    config
        .tls
        .cert_file
        .clone()
        .unwrap_or_else(|| config.storage.data_dir.join("dev-tls").join("cert.pem"))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// `dev token --as NAME`: writes the token (and DPoP key) and prints the `icbt` settings,
/// or with `raw` the token alone.
pub(super) fn token(
    config_file: Option<&Path>,
    name: &str,
    gateway: Option<&url::Url>,
    raw: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_file, Mode::Dev)?;
    let data_dir = &config.storage.data_dir;
    let origin = origin(&config, gateway);
    let idp = token::open_idp(data_dir, &origin)?;
    let issued = token::issue(&idp, name)?;
    let (token_file, dpop_file) = token::write(&issued, &dev::Files::under(data_dir).tokens, name)?;
    #[allow(clippy::print_stdout)]
    if raw {
        println!("{}", issued.token.as_str());
    } else {
        let log = AuditLog::from_config(&config.audit, data_dir)?;
        let log_key = base64::engine::general_purpose::STANDARD.encode(log.signer.public_key());
        println!("export ICBT_GATEWAY={origin}");
        println!(
            "export ICBT_CA_FILE={}",
            absolute(&served_cert(&config)).display()
        );
        println!("export ICBT_LOG_KEYS={log_key}");
        println!("export ICBT_TOKEN_FILE={}", absolute(&token_file).display());
        match dpop_file {
            Some(path) => println!("export ICBT_DPOP_KEY_FILE={}", absolute(&path).display()),
            None => println!("unset ICBT_DPOP_KEY_FILE"),
        }
        println!(
            "# {name}: {} token, valid one hour{}",
            issued.provider.title(),
            if issued.dpop_der.is_some() {
                ", DPoP-bound"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `dev demo`: the story against the running dev gateway.
pub(super) fn demo(config_file: Option<&Path>, gateway: Option<&url::Url>) -> anyhow::Result<()> {
    let config = Config::load(config_file, Mode::Dev)?;
    let origin = origin(&config, gateway);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dev::demo::run(&config, &origin, &served_cert(&config)))
}

/// `dev episode`: an active episode for `patient` with `therapist` on its care team.
pub(super) fn episode(
    config_file: Option<&Path>,
    gateway: Option<&url::Url>,
    patient: &str,
    therapist: &str,
) -> anyhow::Result<()> {
    let config = Config::load(config_file, Mode::Dev)?;
    let origin = origin(&config, gateway);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let id = runtime.block_on(dev::demo::episode(
        &config,
        &origin,
        &served_cert(&config),
        (patient, therapist),
    ))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{id}");
    }
    Ok(())
}
