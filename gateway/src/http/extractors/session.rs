//! The hosted-login session: the cookie a browser holds after `/auth/callback`, and the
//! principal it stands for.

use axum::http::{HeaderMap, header};
use icbt_auth::jose::encode_b64url;
use icbt_auth::{AuthError, now_secs};

use crate::http::state::AppState;

/// The session cookie. `__Host-` makes browsers insist on Secure, `Path=/` and no Domain.
pub const SESSION_COOKIE: &str = "__Host-icbt-session";

/// Set on a request authenticated by its login session: the session's id hash, for what
/// must end with the session (its event streams).
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

/// The SHA-256 of a session cookie value, as stored.
pub fn session_id_hash(cookie_value: &str) -> String {
    encode_b64url(ring::digest::digest(&ring::digest::SHA256, cookie_value.as_bytes()).as_ref())
}

/// The session cookie's value from the request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The principal of the request's session, for the `Caller` extractor. Requests that
/// change state must come from this site (Origin / Sec-Fetch-Site), on top of the
/// SameSite=Strict cookie.
pub async fn session_principal(
    state: &AppState,
    parts: &axum::http::request::Parts,
    cookie_value: &str,
) -> Result<icbt_auth::principal::Authenticated, AuthError> {
    let safe_method = matches!(parts.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if !safe_method {
        let fetch_site = parts
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
            return Err(AuthError::CrossSiteRequest);
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                parts
                    .uri
                    .authority()
                    .map(axum::http::uri::Authority::as_str)
            });
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let expected = state
            .auth
            .public_url
            .clone()
            .or_else(|| host.map(|h| format!("https://{h}")));
        if origin.is_some_and(|o| {
            Some(o.trim_end_matches('/')) != expected.as_deref().map(|e| e.trim_end_matches('/'))
        }) {
            return Err(AuthError::CrossSiteRequest);
        }
    }
    let session = state
        .store
        .session(&session_id_hash(cookie_value), now_secs())
        .await
        .map_err(|_| AuthError::StoreUnavailable)?
        .ok_or(AuthError::SessionInvalid)?;
    serde_json::from_str(&session.principal).map_err(|_| AuthError::SessionInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-icbt-session=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        let mut empty = HeaderMap::new();
        empty.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-icbt-session="),
        );
        assert_eq!(session_cookie(&empty), None);
    }
}
