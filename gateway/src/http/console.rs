//! The security team's console at `/console/`: a page built from `web/console/` and kept
//! in the binary (or read from `console.assets_dir`). It logs in through the hosted
//! HelseID login and reads only through the auditor API, so every read is recorded like
//! any other. The page itself is given to auditors and to browsers that have not logged
//! in yet (it then offers the login); anyone else with a session is refused, and the
//! refusal is recorded.

use std::path::PathBuf;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::audit::Access;
use crate::http::audit::auditor;
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::Caller;
use crate::http::state::AppState;

/// The console's files as built into the binary (see `build.rs`).
const INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/index.html"));
const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/console.js"));
const STYLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/console/console.css"));

/// Where the console's files come from and how auditors log in.
#[derive(Clone, Debug)]
pub struct Console {
    /// The `[[login]]` issuer auditors log in with; none when no HelseID login is set up.
    pub login_issuer: Option<String>,
    /// Files read from here instead of the built-in copy.
    pub assets_dir: Option<PathBuf>,
}

impl Console {
    /// From the configuration: the named login issuer, else the first hosted login at a
    /// HelseID issuer.
    pub fn from_config(config: &icbt_config::Config) -> Self {
        let helseid = |name: &str| {
            config
                .auth
                .issuers
                .iter()
                .any(|i| i.name == name && i.kind == icbt_config::IssuerKind::Helseid)
        };
        let login_issuer = config.console.login_issuer.clone().or_else(|| {
            config
                .login
                .iter()
                .find(|l| helseid(&l.issuer))
                .map(|l| l.issuer.clone())
        });
        Self {
            login_issuer,
            assets_dir: config.console.assets_dir.clone(),
        }
    }
}

pub fn routes() -> Router<AppState> {
    super::web_app::page_headers(
        Router::new()
            .route(
                "/console",
                get(|| async { Redirect::permanent("/console/") }),
            )
            .route("/console/", get(index))
            .route("/console/console.js", get(script))
            .route("/console/console.css", get(style))
            .route("/console/login", get(login)),
    )
}

/// One of the console's files, from `assets_dir` when set.
async fn file(
    state: &AppState,
    name: &str,
    built_in: &'static [u8],
    content_type: &'static str,
) -> Response {
    let body = match state.console.as_ref().and_then(|c| c.assets_dir.as_ref()) {
        Some(dir) => match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return Problem::new(ProblemKind::NotFound)
                    .detail(format!(
                        "{name} is not in console.assets_dir; build it: npm --prefix web run build"
                    ))
                    .into_response();
            }
        },
        None => built_in.to_vec(),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /console/`: the page, for auditors and for browsers yet to log in.
async fn index(State(state): State<AppState>, access: Access, mut parts: Parts) -> Response {
    if let Ok(Caller(caller)) = Caller::from_request_parts(&mut parts, &state).await
        && let Err(refused) = auditor(&state, &access, &caller).await
    {
        if refused.kind() != ProblemKind::Forbidden {
            return refused.into_response();
        }
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            REFUSED,
        )
            .into_response();
    }
    file(&state, "index.html", INDEX, "text/html; charset=utf-8").await
}

/// What someone who is logged in but no auditor sees.
const REFUSED: &str = "<!doctype html>\n<html lang=\"nb\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Ingen tilgang – sikkerhetskonsoll</title><link rel=\"stylesheet\" href=\"/console/console.css\"></head>\
<body><main id=\"refused\"><h1>Ingen tilgang</h1>\
<p>Sikkerhetskonsollet er bare for dem som gjennomgår tilgangsloggen (revisorer). \
Forsøket ditt er ført i tilgangsloggen.</p>\
<form method=\"post\" action=\"/auth/logout\"><button type=\"submit\">Logg ut</button></form>\
</main></body></html>\n";

async fn script(State(state): State<AppState>) -> Response {
    file(
        &state,
        "console.js",
        SCRIPT,
        "text/javascript; charset=utf-8",
    )
    .await
}

async fn style(State(state): State<AppState>) -> Response {
    file(&state, "console.css", STYLE, "text/css; charset=utf-8").await
}

/// `GET /console/login`: to the hosted HelseID login, back to the console after.
async fn login(State(state): State<AppState>) -> Response {
    match state
        .console
        .as_ref()
        .and_then(|c| c.login_issuer.as_deref())
    {
        Some(issuer) => {
            Redirect::to(&format!("/auth/login/{issuer}?return_to=/console/")).into_response()
        }
        None => Problem::new(ProblemKind::NotFound)
            .detail("no hosted HelseID login is configured ([[login]] with a HelseID issuer)")
            .into_response(),
    }
}
