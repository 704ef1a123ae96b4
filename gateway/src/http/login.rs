//! Hosted login (backend-for-frontend) for platforms that want the gateway to run it:
//! authorization code with PAR (RFC 9126) and PKCE S256, `state` and `nonce` checked, the
//! ID token verified, and the result kept in a database-backed session behind an
//! HttpOnly, Secure, SameSite=Strict cookie. Logout ends the session and sends the browser
//! to the issuer's end-session endpoint.

use crate::http::extractors::ApiPath;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use icbt_auth::client::{Pkce, random_value};
use icbt_auth::now_secs;
use serde::Deserialize;

use crate::audit::{Access, Action};
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::{SESSION_COOKIE, session_cookie, session_id_hash};
use crate::http::state::AppState;
use crate::storage::{LoginAttempt, SessionRecord};

/// A login attempt must come back within this time.
const ATTEMPT_LIFETIME_SECONDS: i64 = 600;

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
#[utoipa::path(get, path = "/auth/login/{issuer}", tag = "login", params(("issuer" = String, Path, description = "name of a configured issuer"), LoginQuery), responses((status = 303, description = "to the issuer"), (status = 404, body = crate::http::errors::ProblemDocument)))]
pub async fn start(
    State(state): State<AppState>,
    ApiPath(issuer): ApiPath<String>,
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
#[utoipa::path(get, path = "/auth/callback", tag = "login", params(CallbackQuery), responses((status = 303, description = "session cookie set; to return_to"), (status = 400, body = crate::http::errors::ProblemDocument), (status = 401, body = crate::http::errors::ProblemDocument)))]
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
        Some(value) => {
            let id_hash = session_id_hash(value);
            let ended = state
                .store
                .end_session(&id_hash, |session| {
                    serde_json::from_str::<icbt_auth::principal::Authenticated>(&session.principal)
                        .ok()
                        .map(|who| access.record(&who, Action::Logout, "session"))
                })
                .await?;
            if ended.is_some() {
                state
                    .push
                    .changed([crate::push::authz::Change::SessionEnded(id_hash)]);
            }
            ended
        }
        None => None,
    };
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
}
