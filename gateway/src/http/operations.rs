//! What operators and platforms ask of the gateway itself: liveness, readiness, metrics,
//! who the caller is, and the answers for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use icbt_auth::principal::Principal;
use serde::Serialize;

use super::errors::{Problem, ProblemKind};
use super::extractors::Caller;
use super::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Alive: the process answers. Says nothing about the database.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "alive" })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    status: &'static str,
    backend: &'static str,
    database: &'static str,
    migrations: &'static str,
}

/// Ready: the database answers and the schema is current.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Ready), (status = 503, body = crate::http::errors::ProblemDocument)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.store.readiness().await;
    let stuck = state.audit.stuck.lock().ok().and_then(|s| s.clone());
    if let Some(why) = stuck.filter(|_| r.reachable && r.migrations_applied) {
        return Problem::new(ProblemKind::NotReady)
            .detail(why)
            .with("audit_log", "stuck")
            .into_response();
    }
    if r.reachable && r.migrations_applied {
        return Json(Ready {
            status: "ready",
            backend: state.store.backend().as_str(),
            database: "reachable",
            migrations: "applied",
        })
        .into_response();
    }
    let detail = if r.reachable {
        "database migrations are not applied"
    } else {
        "the database does not answer"
    };
    Problem::new(ProblemKind::NotReady)
        .detail(detail)
        .with(
            "database",
            if r.reachable {
                "reachable"
            } else {
                "unreachable"
            },
        )
        .with(
            "migrations",
            if r.migrations_applied {
                "applied"
            } else {
                "unknown or pending"
            },
        )
        .into_response()
}

/// What the gateway knows of the caller: enough for a platform to check its set-up,
/// without the national id number.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    kind: &'static str,
    issuer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hpr_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_level: Option<u8>,
    organisations: Vec<String>,
    dpop_bound: bool,
    auditor: bool,
}

#[allow(clippy::unused_async)] // axum handlers are async
#[utoipa::path(get, path = "/v1/me", tag = "principals", responses((status = 200, body = Me)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn me(State(state): State<AppState>, Caller(auth): Caller) -> Json<Me> {
    let mut me = Me {
        kind: auth.principal.kind(),
        issuer: auth.issuer.to_string(),
        client_id: auth.client_id.clone(),
        scopes: auth.scopes.clone(),
        acr: None,
        hpr_number: None,
        security_level: None,
        organisations: Vec::new(),
        dpop_bound: auth.dpop_jkt.is_some(),
        auditor: state.auth.rules.auditors.holds(&auth),
    };
    match &auth.principal {
        Principal::Patient(p) => me.acr = Some(p.acr.as_str()),
        Principal::Clinician(c) => {
            me.hpr_number = Some(c.hpr_number.to_string());
            me.security_level = Some(c.security_level);
            me.organisations
                .extend(c.organisation.iter().map(|o| o.as_str().to_owned()));
        }
        Principal::System(s) => {
            me.organisations.extend(
                s.orgnr_parent
                    .iter()
                    .chain(&s.orgnr_child)
                    .map(|o| o.as_str().to_owned()),
            );
        }
    }
    Json(me)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

pub async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound)
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(ProblemKind::MethodNotAllowed)
}
