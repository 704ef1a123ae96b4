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
    /// Where attachment uploads are checked, and their size limit.
    pub uploads: crate::attachments::SharedUploads,
    /// Wake-ups for stream readers.
    pub push: crate::push::Push,
    /// Hosted logins, by issuer name.
    pub login: Arc<crate::login::LoginContext>,
    /// The gateway's own HelseID client for outbound calls, when configured.
    pub outbound: Option<Arc<icbt_auth::client::OutboundTokens>>,
    /// The access log's signing key and settings.
    pub audit: Arc<crate::audit::sequencer::AuditLog>,
    /// The device directory's limits.
    pub devices: icbt_config::DevicesConfig,
    /// Bounds on a sealed envelope.
    pub envelope_limits: icbt_envelope::Limits,
}

/// The OpenAPI document's fixed parts; the paths come from the routes themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "icbt-gateway",
        description = "Messaging gateway between iCBT platforms, patients, therapists and hospital systems. Errors are RFC 9457 problem details (docs/problems.md)."
    ),
    components(schemas(crate::problem::ProblemDocument)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "dpop",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "DPoP",
                "RFC 9449: `Authorization: DPoP <token>` with a proof in the `DPoP` header",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::login::SESSION_COOKIE,
                "hosted-login session (see /auth/login)",
            ))),
        );
    }
}

/// The routes with their OpenAPI document, built from the same handler list so the two
/// cannot disagree.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(me))
        .routes(routes!(crate::push::stream))
        .routes(routes!(crate::push::inbox))
        .routes(routes!(messaging::list_episodes))
        .routes(routes!(messaging::get_episode, messaging::put_episode))
        .routes(routes!(messaging::put_care_team))
        .routes(routes!(messaging::put_state))
        .routes(routes!(messaging::list_messages))
        .routes(routes!(messaging::get_receipts, messaging::put_receipts))
        .routes(routes!(messaging::put_message))
        .routes(routes!(
            crate::attachments::get_attachment,
            crate::attachments::put_attachment
        ))
        .routes(routes!(
            crate::devices::put_device,
            crate::devices::delete_device
        ))
        .routes(routes!(crate::devices::list_devices))
        .routes(routes!(crate::devices::put_journal_key))
        .routes(routes!(crate::devices::episode_devices))
        .routes(routes!(crate::devices::key_checkpoint))
        .routes(routes!(crate::devices::key_consistency))
        .routes(routes!(crate::audit::api::records))
        .routes(routes!(crate::audit::api::checkpoint))
        .routes(routes!(crate::audit::api::inclusion))
        .routes(routes!(crate::audit::api::consistency))
        .routes(routes!(crate::audit::api::access_log))
        .routes(routes!(crate::login::start))
        .routes(routes!(crate::login::callback))
        .routes(routes!(crate::login::logout))
        .split_for_parts()
}

/// The OpenAPI 3.1 document as JSON.
pub fn openapi_json() -> String {
    documented().1.to_pretty_json().unwrap_or_default()
}

/// The router, without the cross-cutting stack.
pub fn router(state: AppState, metrics_enabled: bool) -> Router {
    let (mut router, document) = documented();
    let document = Arc::new(document.to_pretty_json().unwrap_or_default());
    router = router.route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.as_str().to_owned(),
                )
            }
        }),
    );
    if metrics_enabled {
        router = router.route("/metrics", get(metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// Alive: the process answers. Says nothing about the database.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "alive" })
}

#[derive(Serialize, utoipa::ToSchema)]
struct Ready {
    status: &'static str,
    backend: &'static str,
    database: &'static str,
    migrations: &'static str,
}

/// Ready: the database answers and the schema is current.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Ready), (status = 503, body = crate::problem::ProblemDocument)))]
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
#[derive(Serialize, utoipa::ToSchema)]
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
#[utoipa::path(get, path = "/v1/me", tag = "principals", responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = Me)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
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
