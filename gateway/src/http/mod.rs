//! The HTTP API: the route table and its OpenAPI document ([`router`]), the tower stack
//! around it ([`middleware`]), what handlers learn from a request ([`extractors`]), the
//! shared episode access checks ([`access`]), every mapping to RFC 9457 problems
//! ([`errors`]), and one module per endpoint family. Handlers check, decide with the
//! domain and hand storage one transaction; they never import one another.
//!
//! A request's path: [`crate::server`] accepts it → [`middleware::build`] (limits, ids,
//! tracing, metrics) → [`router`] → an extractor ([`extractors::Caller`]) → the handler
//! → [`crate::storage`] commits → the handler's view → the response.

pub mod access;
pub mod access_log;
pub mod admission;
pub mod attachments;
pub mod audit;
pub mod auth;
pub mod checkpoints;
pub mod console;
pub mod dev_idp;
pub mod devices;
pub mod episodes;
pub mod errors;
pub mod extractors;
pub mod login;
pub mod messages;
pub mod middleware;
pub mod operations;
pub mod receipts;
pub mod review;
pub mod state;
pub mod stream;
pub mod web_app;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

pub use state::AppState;

/// The OpenAPI document's fixed parts; the paths come from the routes themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "icbt-gateway",
        description = "Messaging gateway between iCBT platforms, patients, therapists and hospital systems. Errors are RFC 9457 problem details (docs/problems.md)."
    ),
    components(schemas(errors::ProblemDocument)),
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
                extractors::SESSION_COOKIE,
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
    let (router, document) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(operations::healthz))
        .routes(routes!(operations::readyz))
        .routes(routes!(operations::me))
        .routes(routes!(stream::stream))
        .routes(routes!(stream::inbox))
        .routes(routes!(episodes::list_episodes))
        .routes(routes!(episodes::get_episode, episodes::put_episode))
        .routes(routes!(episodes::put_care_team))
        .routes(routes!(episodes::put_state))
        .routes(routes!(messages::list_messages))
        .routes(routes!(receipts::get_receipts, receipts::put_receipts))
        .routes(routes!(messages::put_message))
        .routes(routes!(
            attachments::get_attachment,
            attachments::put_attachment
        ))
        .routes(routes!(devices::put_device, devices::delete_device))
        .routes(routes!(devices::list_devices))
        .routes(routes!(devices::put_journal_key))
        .routes(routes!(devices::episode_devices))
        .routes(routes!(devices::key_checkpoint))
        .routes(routes!(devices::key_consistency))
        .routes(routes!(audit::records))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::inclusion))
        .routes(routes!(audit::consistency))
        .routes(routes!(access_log::access_log))
        .routes(routes!(access_log::patient_timeline))
        .routes(routes!(review::report))
        .routes(routes!(checkpoints::access_log))
        .routes(routes!(checkpoints::key_log))
        .routes(routes!(login::start))
        .routes(routes!(login::callback))
        .routes(routes!(login::logout))
        .split_for_parts();
    let mut document = document;
    shared_responses(&mut document);
    (router, document)
}

/// What any operation may answer, whatever it does (docs/problems.md has each type):
/// status, shared response name, description.
const ANYWHERE: [(&str, &str, &str); 6] = [
    (
        "400",
        "BadRequest",
        "a request hyper or the gateway cannot read: malformed, a query string that does not parse, a body that is not the JSON expected",
    ),
    (
        "422",
        "Unprocessable",
        "a value the gateway cannot accept (`invalid-field`, with `path`)",
    ),
    (
        "429",
        "TooManyRequests",
        "over the principal's rate limit or stream cap, with `Retry-After`",
    ),
    ("431", "HeadTooLarge", "a request head over 64 KiB"),
    (
        "500",
        "Internal",
        "a fault of the gateway's; nothing was committed",
    ),
    (
        "503",
        "Unavailable",
        "overloaded, over the request time limit or the database is away, with `Retry-After` where known",
    ),
];
/// What an operation with a request body may answer besides.
const WITH_BODY: [(&str, &str, &str); 2] = [
    ("413", "PayloadTooLarge", "a body over the limit"),
    (
        "415",
        "UnsupportedMediaType",
        "a body that is not `application/json` (or `application/octet-stream` for attachments)",
    ),
];
/// What an operation with path parameters may answer besides.
const WITH_PATH: [(&str, &str, &str); 1] = [(
    "404",
    "NotFound",
    "no such resource, or one the caller may not know of",
)];

/// The problem answers every operation may give are defined once, as
/// `components.responses`, and referenced from each operation they apply to: 401 and 403
/// where a caller is needed, the transport's and the stack's everywhere. An operation
/// that documents one of these codes itself (say a 403 "not an auditor") keeps its own.
fn shared_responses(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                errors::CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ProblemDocument")))
                    .build(),
            )
            .build()
    };
    let components = document.components.get_or_insert_with(Default::default);
    components.responses.insert(
        "Unauthenticated".into(),
        RefOr::T(problem(
            "not authenticated: no, an invalid or an expired token, or a DPoP proof that does not fit (with the RFC 6750 / RFC 9449 challenge)",
        )),
    );
    components.responses.insert(
        "Forbidden".into(),
        RefOr::T(problem("not allowed for this caller")),
    );
    for (_, name, description) in ANYWHERE.iter().chain(&WITH_BODY).chain(&WITH_PATH) {
        components
            .responses
            .insert((*name).into(), RefOr::T(problem(description)));
    }
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            problem_content_type(operation);
            let has_body = operation.request_body.is_some();
            let has_path_parameters = operation.parameters.iter().flatten().any(|p| {
                matches!(p, RefOr::T(p) if matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path))
            });
            let shared = ANYWHERE
                .iter()
                .chain(WITH_BODY.iter().filter(|_| has_body))
                .chain(WITH_PATH.iter().filter(|_| has_path_parameters));
            let needs_caller = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut operation.responses.responses;
            for (status, name, _) in shared {
                responses
                    .entry((*status).into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
            }
            if needs_caller {
                responses.insert(
                    "401".into(),
                    RefOr::Ref(Ref::from_response_name("Unauthenticated")),
                );
                responses
                    .entry("403".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Forbidden")));
            }
        }
    }
}

/// Problem documents an operation lists itself (`body = ProblemDocument`) are served as
/// `application/problem+json`, not the `application/json` utoipa assumes.
fn problem_content_type(operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::RefOr;
    for response in operation.responses.responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let is_problem = response.content.get("application/json").is_some_and(|c| {
            matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/ProblemDocument")))
        });
        if is_problem && let Some(content) = response.content.shift_remove("application/json") {
            response
                .content
                .insert(errors::CONTENT_TYPE.into(), content);
        }
    }
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
        router = router.route("/metrics", get(operations::metrics));
    }
    if state.dev_idp.is_some() {
        router = router.merge(dev_idp::routes());
    }
    if let Some(dir) = &state.web_app {
        router = router.merge(web_app::routes(dir));
    }
    if state.console.is_some() {
        router = router.merge(console::routes());
    }
    router
        .fallback(operations::not_found)
        .method_not_allowed_fallback(operations::method_not_allowed)
        .with_state(state)
}
