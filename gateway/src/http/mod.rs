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

/// Every operation that needs a caller can answer 401 and 403; they are defined once, as
/// `components.responses`, and referenced from each such operation. An operation that
/// documents a 403 of its own (say "not an auditor") keeps it.
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
            if operation.security.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let responses = &mut operation.responses.responses;
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
