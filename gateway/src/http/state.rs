//! What every handler shares, in its own module so that handlers name the state and
//! never the router.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::sequencer::AuditLog;
use crate::http::auth::{LoginContext, SharedAuth};
use crate::push::Push;
use crate::storage::Store;
use crate::telemetry::Metrics;

/// What handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub auth: SharedAuth,
    /// Where attachment uploads are checked, and their size limit.
    pub uploads: SharedUploads,
    /// Wake-ups for stream readers.
    pub push: Push,
    /// Open event streams and long polls per principal, capped.
    pub stream_slots: Arc<crate::push::StreamSlots>,
    /// Hosted logins, by issuer name.
    pub login: Arc<LoginContext>,
    /// The gateway's own HelseID client for outbound calls, when configured.
    pub outbound: Option<Arc<icbt_auth::client::OutboundTokens>>,
    /// The access log's signing key and settings.
    pub audit: Arc<AuditLog>,
    /// The device directory's limits.
    pub devices: icbt_config::DevicesConfig,
    /// Bounds on a sealed envelope.
    pub envelope_limits: icbt_envelope::Limits,
    /// Dev mode's identity providers; `None` in production, where their routes do not
    /// exist.
    pub dev_idp: Option<Arc<crate::dev::idp::DevIdp>>,
    /// The built web clients (`web/dist`); the reference client is served under `/app/`
    /// (dev sandbox only).
    pub web_app: Option<std::path::PathBuf>,
    /// The security team's console at `/console/`; `None` when `console.enabled` is off.
    pub console: Option<Arc<crate::http::console::Console>>,
}

/// Where uploads wait while they are checked, and how large they may be.
#[derive(Debug)]
pub struct Uploads {
    pub dir: PathBuf,
    pub limit_bytes: u64,
}

impl Uploads {
    /// Uploads wait in `<data_dir>/uploads`.
    pub fn from_config(storage: &icbt_config::StorageConfig) -> SharedUploads {
        Arc::new(Self {
            dir: storage.data_dir.join("uploads"),
            limit_bytes: storage.attachment_limit_bytes,
        })
    }
}

/// Shared upload settings.
pub type SharedUploads = Arc<Uploads>;
