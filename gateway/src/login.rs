//! Hosted login (backend-for-frontend) for platforms that want the gateway to run it:
//! authorization code with PAR (RFC 9126) and PKCE S256, `state` and `nonce` checked, the
//! ID token verified, and the result kept in a database-backed session behind an
//! HttpOnly, Secure, SameSite=Strict cookie. Logout ends the session and sends the browser
//! to the issuer's end-session endpoint.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use icbt_auth::client::{ClientKey, ClientKeyAlgorithm, OidcClient, Pkce, random_value};
use icbt_auth::jose::encode_b64url;
use icbt_auth::token::Validator;
use icbt_auth::{AuthError, now_secs};
use icbt_config::LoginConfig;
use serde::Deserialize;

use crate::api::AppState;
use crate::audit::{Access, Action};
use crate::problem::{Problem, ProblemKind};
use crate::storage::{LoginAttempt, SessionRecord};

/// The session cookie. `__Host-` makes browsers insist on Secure, `Path=/` and no Domain.
pub const SESSION_COOKIE: &str = "__Host-icbt-session";

/// A login attempt must come back within this time.
const ATTEMPT_LIFETIME_SECONDS: i64 = 600;

/// One issuer's hosted login.
#[derive(Debug)]
pub struct LoginProvider {
    config: LoginConfig,
    client: OidcClient,
}

/// Every configured hosted login, by issuer name.
#[derive(Debug, Default)]
pub struct LoginContext {
    providers: HashMap<String, LoginProvider>,
}

/// Why the hosted login could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `login.{key}`: {problem}")]
pub struct LoginSetupError {
    key: &'static str,
    problem: String,
}

impl LoginContext {
    /// Builds the clients; they share the issuers' metadata and keys with `validator`.
    pub fn from_config(
        logins: &[LoginConfig],
        validator: &Validator,
        http: &reqwest::Client,
    ) -> Result<Self, LoginSetupError> {
        let mut providers = HashMap::new();
        for config in logins {
            let profile = validator
                .issuers()
                .iter()
                .find(|p| *p.name == *config.issuer)
                .ok_or_else(|| LoginSetupError {
                    key: "issuer",
                    problem: format!("no issuer named `{}`", config.issuer),
                })?;
            let alg = ClientKeyAlgorithm::parse(&config.key_algorithm).ok_or_else(|| {
                LoginSetupError {
                    key: "key_algorithm",
                    problem: "unsupported".into(),
                }
            })?;
            let key = ClientKey::from_pem_file(&config.key_file, alg, config.key_id.clone())
                .map_err(|e| LoginSetupError {
                    key: "key_file",
                    problem: e.to_string(),
                })?;
            let client = OidcClient::new(
                config.client_id.clone(),
                key,
                config.assertion_audience.clone(),
                profile.keys.clone(),
                http.clone(),
                None,
            );
            providers.insert(
                config.issuer.clone(),
                LoginProvider {
                    config: config.clone(),
                    client,
                },
            );
        }
        Ok(Self { providers })
    }
}

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

/// Only a path on this site: no scheme, no `//host`, no backslashes (open redirects).
fn safe_return_path(requested: Option<&str>) -> String {
    match requested {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.contains('\n') =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn upstream(error: &icbt_auth::client::ClientError) -> Problem {
    tracing::warn!(error = %error, "identity provider call failed during login");
    Problem::new(ProblemKind::UpstreamUnavailable)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LoginQuery {
    return_to: Option<String>,
    login_hint: Option<String>,
}

/// `GET /auth/login/{issuer}`: starts a login and sends the browser to the issuer.
#[utoipa::path(get, path = "/auth/login/{issuer}", tag = "login", params(("issuer" = String, Path, description = "name of a configured issuer"), LoginQuery), responses((status = 303, description = "to the issuer"), (status = 404, body = crate::problem::ProblemDocument)))]
pub async fn start(
    State(state): State<AppState>,
    Path(issuer): Path<String>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, Problem> {
    let provider = state
        .login
        .providers
        .get(&issuer)
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let pkce = Pkce::generate();
    let attempt = LoginAttempt {
        state: random_value(),
        issuer: issuer.clone(),
        nonce: random_value(),
        pkce_verifier: pkce.verifier.clone(),
        return_to: safe_return_path(query.return_to.as_deref()),
        expires_at: now_secs() + ATTEMPT_LIFETIME_SECONDS,
    };
    state.store.insert_login_attempt(&attempt).await?;
    let config = &provider.config;
    let mut params = vec![
        ("response_type", "code"),
        ("redirect_uri", config.redirect_uri.as_str()),
        ("scope", config.scope.as_str()),
        ("state", attempt.state.as_str()),
        ("nonce", attempt.nonce.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    params.extend(config.resource.as_deref().map(|r| ("resource", r)));
    params.extend(config.acr_values.as_deref().map(|a| ("acr_values", a)));
    params.extend(query.login_hint.as_deref().map(|h| ("login_hint", h)));
    let request_uri = provider
        .client
        .push_authorization_request(&params)
        .await
        .map_err(|e| upstream(&e))?;
    let location = provider
        .client
        .authorization_url(&request_uri)
        .await
        .map_err(|e| upstream(&e))?;
    Ok(redirect(&location))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

fn login_failed(reason: &str) -> Problem {
    tracing::info!(reason, "login refused");
    Problem::new(ProblemKind::LoginFailed)
}

/// `GET /auth/callback`: finishes a login and opens the session.
#[utoipa::path(get, path = "/auth/callback", tag = "login", params(CallbackQuery), responses((status = 303, description = "session cookie set; to return_to"), (status = 400, body = crate::problem::ProblemDocument), (status = 401, body = crate::problem::ProblemDocument)))]
pub async fn callback(
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, Problem> {
    match finish_login(&state, &access, &query).await {
        Ok(response) => Ok(response),
        Err(problem) => {
            // A failed login is an access attempt too; who it was is not known.
            let record = access
                .anonymous(Action::Login, "session")
                .refused(problem.kind().slug());
            state.store.record_access(&[record]).await?;
            Err(problem)
        }
    }
}

async fn finish_login(
    state: &AppState,
    access: &Access,
    query: &CallbackQuery,
) -> Result<Response, Problem> {
    let now = now_secs();
    let invalid_state = || Problem::new(ProblemKind::LoginStateInvalid);
    let attempt = match &query.state {
        Some(s) => state
            .store
            .take_login_attempt(s, now)
            .await?
            .ok_or_else(invalid_state)?,
        None => return Err(invalid_state()),
    };
    if let Some(error) = &query.error {
        // The issuer's own error code (e.g. access_denied): safe to pass on.
        return Err(login_failed("issuer_error")
            .detail(format!("the identity provider answered `{error}`")));
    }
    let code = query.code.as_deref().ok_or_else(invalid_state)?;
    let provider = state
        .login
        .providers
        .get(&attempt.issuer)
        .ok_or_else(invalid_state)?;
    let tokens = provider
        .client
        .exchange_code(code, &provider.config.redirect_uri, &attempt.pkce_verifier)
        .await
        .map_err(|e| match e {
            icbt_auth::client::ClientError::Refused { .. } => login_failed("code_exchange_refused"),
            other => upstream(&other),
        })?;
    let profile = state
        .auth
        .validator
        .issuers()
        .iter()
        .find(|p| *p.name == *attempt.issuer)
        .ok_or_else(invalid_state)?;
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or_else(|| login_failed("no_id_token"))?;
    icbt_auth::login::verify_id_token(
        profile,
        &provider.config.client_id,
        &attempt.nonce,
        id_token,
        now,
    )
    .await
    .map_err(|e| login_failed(e.reason_code()))?;
    let authenticated = state
        .auth
        .validator
        .validate_token_at(&tokens.access_token, now)
        .await
        .map_err(|e| {
            tracing::info!(reason = e.reason_code(), "login refused: access token");
            state.auth.refusal(&e)
        })?;
    let principal =
        serde_json::to_string(&authenticated).map_err(|_| Problem::new(ProblemKind::Internal))?;
    let cookie_value = random_value();
    let record = access.record(&authenticated, Action::Login, "session");
    let absolute =
        i64::try_from(provider.config.session_absolute_timeout_seconds).unwrap_or(43_200);
    let session = SessionRecord {
        issuer: attempt.issuer.clone(),
        principal,
        id_token: id_token.to_owned(),
        created_at: now,
        last_seen_at: now,
        idle_timeout: i64::try_from(provider.config.session_idle_timeout_seconds).unwrap_or(1_800),
        absolute_expiry: now + absolute,
    };
    state
        .store
        .insert_session(&session_id_hash(&cookie_value), &session, &record)
        .await?;
    tracing::info!(principal = authenticated.principal.kind(), issuer = %attempt.issuer, "login completed");
    let mut response = redirect(&attempt.return_to);
    let cookie = format!(
        "{SESSION_COOKIE}={cookie_value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={absolute}"
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /auth/logout`: ends the session and sends the browser to the issuer's
/// end-session endpoint (or answers 204 when there was no session).
#[utoipa::path(post, path = "/auth/logout", tag = "login", responses((status = 303, description = "to the issuer's end-session endpoint"), (status = 204, description = "there was no session")))]
pub async fn logout(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let ended = match session_cookie(&headers) {
        Some(value) => state.store.delete_session(&session_id_hash(value)).await?,
        None => None,
    };
    if let Some(session) = &ended
        && let Ok(who) =
            serde_json::from_str::<icbt_auth::principal::Authenticated>(&session.principal)
    {
        state
            .store
            .record_access(&[access.record(&who, Action::Logout, "session")])
            .await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(session) = ended
        && let Some(provider) = state.login.providers.get(&session.issuer)
        && let Ok(metadata) = provider.client.provider().metadata().await
        && let Some(endpoint) = &metadata.end_session_endpoint
        && let Ok(mut url) = url::Url::parse(endpoint)
    {
        url.query_pairs_mut()
            .append_pair("id_token_hint", &session.id_token)
            .append_pair(
                "post_logout_redirect_uri",
                &provider.config.post_logout_redirect_uri,
            )
            .append_pair("client_id", &provider.config.client_id);
        response = redirect(url.as_str());
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
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

    #[test]
    fn return_paths_stay_on_this_site() {
        assert_eq!(safe_return_path(Some("/app/inbox?x=1")), "/app/inbox?x=1");
        for evil in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_return_path(Some(evil)), "/", "{evil}");
        }
        assert_eq!(safe_return_path(None), "/");
    }

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
