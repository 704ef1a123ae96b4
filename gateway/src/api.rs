//! Routes of the HTTP API and their handlers. Handlers hold domain logic only; limits,
//! tracing and error shaping are in [`crate::stack`] and [`crate::problem`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use icbt_auth::principal::Principal;

use crate::authn::{Caller, SharedAuth};
use crate::messaging;
use crate::problem::{Problem, ProblemKind};
use crate::storage::Store;
use crate::telemetry::Metrics;

/// What handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub auth: SharedAuth,
    /// Wake-ups for stream readers.
    pub push: crate::push::Push,
    /// Hosted logins, by issuer name.
    pub login: Arc<crate::login::LoginContext>,
    /// The gateway's own HelseID client for outbound calls, when configured.
    pub outbound: Option<Arc<icbt_auth::client::OutboundTokens>>,
}

/// The router, without the cross-cutting stack.
pub fn router(state: AppState, metrics_enabled: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/me", get(me))
        .route("/v1/stream", get(crate::push::stream))
        .route("/v1/inbox", get(crate::push::inbox))
        .route("/v1/episodes", get(messaging::list_episodes))
        .route(
            "/v1/episodes/{id}",
            get(messaging::get_episode).put(messaging::put_episode),
        )
        .route(
            "/v1/episodes/{id}/care-team",
            axum::routing::put(messaging::put_care_team),
        )
        .route(
            "/v1/episodes/{id}/state",
            axum::routing::put(messaging::put_state),
        )
        .route("/v1/episodes/{id}/messages", get(messaging::list_messages))
        .route(
            "/v1/episodes/{id}/receipts",
            get(messaging::get_receipts).put(messaging::put_receipts),
        )
        .route(
            "/v1/episodes/{id}/messages/{message_id}",
            axum::routing::put(messaging::put_message),
        )
        .route("/auth/login/{issuer}", get(crate::login::start))
        .route("/auth/callback", get(crate::login::callback))
        .route("/auth/logout", axum::routing::post(crate::login::logout));
    if metrics_enabled {
        router = router.route("/metrics", get(metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Alive: the process answers. Says nothing about the database.
async fn healthz() -> Json<Health> {
    Json(Health { status: "alive" })
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    backend: &'static str,
    database: &'static str,
    migrations: &'static str,
}

/// Ready: the database answers and the schema is current.
async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.store.readiness().await;
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
#[derive(Serialize)]
struct Me {
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
async fn me(State(state): State<AppState>, Caller(auth): Caller) -> Json<Me> {
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
        auditor: state.auth.auditors.holds(&auth),
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

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound)
}

async fn method_not_allowed() -> Problem {
    Problem::new(ProblemKind::MethodNotAllowed)
}
