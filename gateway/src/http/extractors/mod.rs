//! What a handler learns from a request before it runs: who the caller is ([`Caller`],
//! from a token and DPoP proof or a login session), where the request came from for the
//! access log ([`Access`]), a JSON body and a query string that fail as problem documents
//! ([`ApiJson`], [`ApiQuery`]), path parameters likewise ([`ApiPath`]),
//! and the page asked for.

mod caller;
mod json;
mod path;
mod query;
mod session;

pub use caller::Caller;
pub use json::{ApiJson, parse};
pub use path::ApiPath;
pub use query::ApiQuery;
pub use session::{SESSION_COOKIE, SessionId, session_cookie, session_id_hash};

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::errors::{Problem, invalid};
use super::middleware::X_REQUEST_ID;
use crate::audit::Access;
use crate::slots::Slot;

/// Facts about the connection a request arrived on, as a request extension (set by the
/// listener).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The verified client certificate (leaf), when the client presented one.
    pub client_certificate: Option<CertificateDer<'static>>,
    /// The connection's place among its address's unauthenticated connections
    /// (`server.unauthenticated_per_address`), until a request on it authenticates.
    pub unauthenticated: Arc<Mutex<Option<Slot<IpAddr>>>>,
}

impl ConnectionInfo {
    /// A request on this connection authenticated: it no longer counts against its
    /// address.
    pub fn authenticated(&self) {
        self.unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// The request's id and source address, for the access record of what it does.
impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            request_id: parts
                .headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            source: parts
                .extensions
                .get::<ConnectionInfo>()
                .map(|c| c.peer.ip().to_string()),
        })
    }
}

/// Largest page of any list.
pub const MAX_PAGE: i64 = 200;
const DEFAULT_PAGE: i64 = 50;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    #[serde(default)]
    pub after: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
}

/// The page size asked for, or the default; 422 outside 1 to [`MAX_PAGE`].
pub fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", format!("1 to {MAX_PAGE}"))),
    }
}
