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

use crate::problem::{Problem, ProblemKind};
use crate::storage::Store;
use crate::telemetry::Metrics;

/// What handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

/// The router, without the cross-cutting stack.
pub fn router(state: AppState, metrics_enabled: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
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
