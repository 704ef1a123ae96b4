//! The dev identity providers' endpoints, mounted in dev mode only (production answers
//! 404 for every path under `/dev/`): discovery, JWKS, pushed authorization requests, the
//! page that lets a browser choose a person, the token endpoint and end-session. They
//! are not in the OpenAPI document; `docs/dev.md` describes them.
//!
//! Refusals are problem documents that also carry the OAuth `error` and
//! `error_description` members (RFC 6749 §5.2), so OAuth clients and problem-aware
//! clients both read them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use icbt_auth::now_secs;

use crate::dev::idp::{DevIdp, IdpError, Provider};
use crate::http::errors::{Problem, ProblemKind};
use crate::http::state::AppState;

/// The routes, all under `/dev/idp/{provider}/`.
pub fn routes() -> Router<AppState> {
    use axum::routing::post;
    Router::new()
        .route(
            "/dev/idp/{provider}/.well-known/openid-configuration",
            get(metadata),
        )
        .route("/dev/idp/{provider}/jwks", get(jwks))
        .route("/dev/idp/{provider}/par", post(par))
        .route("/dev/idp/{provider}/authorize", get(authorize).post(choose))
        .route("/dev/idp/{provider}/token", post(token))
        .route("/dev/idp/{provider}/logout", get(logout))
}

impl From<IdpError> for Problem {
    fn from(e: IdpError) -> Self {
        let kind = match &e {
            IdpError::InvalidRequest(_) => ProblemKind::OauthInvalidRequest,
            IdpError::InvalidClient(_) => ProblemKind::OauthInvalidClient,
            IdpError::InvalidGrant(_) => ProblemKind::OauthInvalidGrant,
            IdpError::UnsupportedGrantType(_) => ProblemKind::OauthUnsupportedGrantType,
            IdpError::InvalidDpopProof(_) => ProblemKind::OauthInvalidDpopProof,
            IdpError::People(_) => ProblemKind::DevPeopleFileInvalid,
        };
        let description = e.to_string();
        let mut problem = Problem::new(kind)
            .detail(description.clone())
            .with("error", e.code())
            .with("error_description", description);
        if kind == ProblemKind::OauthInvalidClient {
            problem = problem.header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dev-idp\""),
            );
        }
        problem
    }
}

/// The providers and the one a path names.
fn provider(state: &AppState, segment: &str) -> Result<(Arc<DevIdp>, Provider), Problem> {
    match (&state.dev_idp, Provider::parse(segment)) {
        (Some(idp), Some(provider)) => Ok((idp.clone(), provider)),
        _ => Err(Problem::new(ProblemKind::NotFound)),
    }
}

/// A form body, after its content type is checked.
fn form(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, Problem> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(IdpError::InvalidRequest(
            "send the parameters as application/x-www-form-urlencoded".into(),
        )
        .into());
    }
    Ok(crate::dev::idp::parse_form(body)?)
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1), when sent.
fn basic(headers: &HeaderMap) -> Result<Option<(String, String)>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        Problem::from(IdpError::InvalidClient(
            "malformed Basic credentials".into(),
        ))
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

async fn metadata(
    State(state): State<AppState>,
    Path(segment): Path<String>,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    Ok(Json(idp.metadata(provider)).into_response())
}

async fn jwks(
    State(state): State<AppState>,
    Path(segment): Path<String>,
) -> Result<Response, Problem> {
    let (idp, _) = provider(&state, &segment)?;
    Ok(Json(idp.jwks().clone()).into_response())
}

/// `POST …/par` (RFC 9126).
async fn par(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    let form = form(&headers, &body)?;
    let now = now_secs();
    let client = idp
        .authenticate_client(provider, &form, basic(&headers)?, now)
        .await?;
    let (request_uri, expires_in) = idp.push(provider, &client, &form, now)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "request_uri": request_uri, "expires_in": expires_in })),
    )
        .into_response())
}

/// `POST …/token`.
async fn token(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    let form = form(&headers, &body)?;
    let now = now_secs();
    let client = idp
        .authenticate_client(provider, &form, basic(&headers)?, now)
        .await?;
    let proofs: Vec<&str> = headers
        .get_all("dpop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let jkt = idp.dpop_binding(provider, &proofs, now).await?;
    let answer = idp.exchange(provider, &client, &form, jkt.as_deref(), now)?;
    tracing::info!(
        provider = provider.segment(),
        "dev identity provider issued a token"
    );
    Ok(Json(answer).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct AuthorizeQuery {
    client_id: Option<String>,
    request_uri: Option<String>,
}

/// `GET …/authorize`: the page to choose who logs in (or, with a `login_hint` that names
/// a person, straight back to the client).
async fn authorize(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    Query(query): Query<AuthorizeQuery>,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    let now = now_secs();
    let pushed = idp.pending(
        provider,
        query.client_id.as_deref(),
        query.request_uri.as_deref(),
        now,
    )?;
    let request_uri = query.request_uri.unwrap_or_default();
    if let Some(hint) = &pushed.login_hint {
        let location = idp.choose(provider, &request_uri, hint, now)?;
        return Ok(see_other(&location));
    }
    let persons = idp.persons_for(provider)?;
    Ok(page(
        StatusCode::OK,
        &crate::dev::pages::chooser(provider, &segment, &request_uri, &persons),
    ))
}

/// `POST …/authorize`: the person chose.
async fn choose(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    let form = form(&headers, &body)?;
    let request_uri = form.get("request_uri").map_or("", String::as_str);
    let person = form.get("person").map_or("", String::as_str);
    let location = idp.choose(provider, request_uri, person, now_secs())?;
    Ok(see_other(&location))
}

/// `GET …/logout`: end-session; there is no provider session to end, so it says so.
async fn logout(
    State(state): State<AppState>,
    Path(segment): Path<String>,
) -> Result<Response, Problem> {
    let (idp, provider) = provider(&state, &segment)?;
    Ok(page(
        StatusCode::OK,
        &crate::dev::pages::logged_out(provider, idp.origin()),
    ))
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// An HTML page with a policy that allows its own inline style and forms to this origin.
fn page(status: StatusCode, html: &str) -> Response {
    let mut response = (status, html.to_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}
