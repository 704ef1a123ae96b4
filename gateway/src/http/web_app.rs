//! The reference web client for patients and therapists (`web/app/`), served as static
//! files under `/app/` by the dev sandbox only. It talks to the API with the login
//! session's cookie and seals and opens every message in the browser; the gateway only
//! hands out its files.
//!
//! Its own Content-Security-Policy lets the page load its script and style from this
//! origin and call this origin's API, and nothing else.

use std::path::Path;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Redirect;
use axum::routing::get;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::http::errors::{Problem, ProblemKind};
use crate::http::state::AppState;

/// The pages' policy: their script and style from this origin, this origin's API, and
/// nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// `/app/…` from `dir/app/` (`dir` is the build output, `web/dist`).
pub fn routes(dir: &Path) -> Router<AppState> {
    let missing = dir.display().to_string();
    let files = ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .fallback(get(move || {
            let missing = missing.clone();
            async move {
                Problem::new(ProblemKind::NotFound).detail(format!(
                    "no such file of the web client in {missing}; if the directory is empty, \
                     build it: npm --prefix web ci && npm --prefix web run build"
                ))
            }
        }));
    page_headers(
        Router::new()
            .route("/app", get(|| async { Redirect::permanent("/app/") }))
            .route_service("/app/", files.clone())
            .route_service("/app/{*file}", files),
    )
}

/// The headers of the gateway's own pages (this client, the console): their policy,
/// and revalidation on every load so a new build is seen at once.
pub(crate) fn page_headers(routes: Router<AppState>) -> Router<AppState> {
    routes
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
}
