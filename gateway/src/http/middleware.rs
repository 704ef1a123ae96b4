//! The tower stack every request passes through, in one visible place.
//!
//! Outside in: request id (accepted if well-formed, else generated; echoed) → tracing
//! span → metrics → security headers → declared body size (413 before routing) →
//! admission at the concurrency limit (a short queue, then 503;
//! [`crate::http::admission`]) → panic guard → router. Inside the router, per route:
//! route tag (for span and metrics) → request deadline (503) → handler, with the
//! body-size limit enforced again on streamed bodies by the extractors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{Next, from_fn, from_fn_with_state, map_response_with_state};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::http::admission::{Admission, admit};
use crate::http::errors::{Problem, ProblemKind};
use crate::telemetry::Metrics;

/// The request-id header: accepted from the client when well-formed, else generated.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The finished HTTP service.
pub type HttpService = BoxCloneSyncService<Request, Response, Infallible>;

/// Limits the stack enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub body_limit_bytes: u64,
    /// The declared-length limit of attachment uploads (they stream; see `attachments`).
    pub attachment_limit_bytes: u64,
    pub request_timeout: Duration,
    /// Requests worked on at once, attachment uploads apart (see [`admission`]).
    pub concurrency_limit: usize,
    /// Attachment uploads worked on at once.
    pub upload_concurrency_limit: usize,
    /// Requests that may wait for a place, for each of the two limits.
    pub admission_queue: usize,
    /// A wait for a place longer than this makes the queue stand (see [`admission`]).
    pub admission_standing: Duration,
    pub hsts_max_age_seconds: u64,
}

/// The largest request head accepted: the request line and headers of HTTP/1.1 as sent,
/// or on HTTP/2 the header list as RFC 9113 counts it (each field's name and value plus
/// 32). The listener's buffers hold a little more, so that a head above this gets the
/// problem document of [`head_size`] rather than the transport's bare refusal.
pub const MAX_HEAD: usize = 64 * 1024;

/// The route template a response was produced by, for metrics.
#[derive(Clone, Debug)]
struct RouteTag(Arc<str>);

/// Wraps `router` in the full stack.
pub fn build(router: Router, limits: &Limits, metrics: Arc<Metrics>) -> HttpService {
    let router = router
        .layer(from_fn_with_state(limits.request_timeout, deadline))
        .layer(from_fn(tag_route))
        .layer(DefaultBodyLimit::max(
            usize::try_from(limits.body_limit_bytes).unwrap_or(usize::MAX),
        ));
    let security = Arc::new(SecurityHeaders::new(limits.hsts_max_age_seconds));
    let admission = Arc::new(Admission::new(
        (limits.concurrency_limit, limits.upload_concurrency_limit),
        limits.admission_queue,
        limits.admission_standing,
        metrics.clone(),
    ));
    let service = ServiceBuilder::new()
        .layer(from_fn(sanitize_request_id))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(on_response)
                .on_failure(()),
        )
        .layer(from_fn_with_state(metrics, observe))
        .layer(map_response_with_state(security, security_headers))
        .layer(from_fn(head_size))
        .layer(from_fn(one_identity))
        .layer(from_fn_with_state(
            (limits.body_limit_bytes, limits.attachment_limit_bytes),
            declared_length,
        ))
        .layer(from_fn_with_state(admission, admit))
        .layer(CatchPanicLayer::custom(panicked))
        .service(router);
    BoxCloneSyncService::new(service)
}

/// A request id is echoed into logs and responses, so only short, plain tokens are kept;
/// anything else (including a run of 11 digits, the shape of a national id number) is
/// replaced by a generated id.
fn acceptable_request_id(value: &[u8]) -> bool {
    let plain = (1..=64).contains(&value.len())
        && value
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c));
    let longest_digit_run = value
        .split(|c| !c.is_ascii_digit())
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    plain && longest_digit_run < 11
}

async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get(&X_REQUEST_ID)
        .is_some_and(|v| !acceptable_request_id(v.as_bytes()))
    {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    next.run(req).await
}

fn make_span(req: &Request) -> Span {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // Never the URI: paths may carry identifiers of people.
    tracing::info_span!(
        "request",
        method = %req.method(),
        route = Empty,
        request_id = %request_id,
        status = Empty,
        principal = Empty,
        issuer = Empty
    )
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    tracing::info!(
        status = response.status().as_u16(),
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        "request answered"
    );
}

async fn tag_route(req: Request, next: Next) -> Response {
    let route: Arc<str> = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)".into(), |p| p.as_str().into());
    Span::current().record("route", &*route);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(RouteTag(route));
    response
}

async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let route = response
        .extensions()
        .get::<RouteTag>()
        .map_or("(refused)", |t| &t.0);
    metrics.observe(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if let Ok(response) = tokio::time::timeout(limit, next.run(req)).await {
        response
    } else {
        tracing::warn!(
            limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            "request deadline passed"
        );
        Problem::new(ProblemKind::RequestTimeout).into_response()
    }
}

/// One caller and one target per request. With two `Authorization` headers the gateway
/// and a proxy or WAF in front of it could each pick a different one and disagree on who
/// is calling; with two hosts, on which origin DPoP proofs and redirects are for. Both are
/// refused before anything reads them. Applies to HTTP/1.1, HTTP/2 and the lean stream
/// path alike: all three come through this stack.
async fn one_identity(req: Request, next: Next) -> Response {
    let headers = req.headers();
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Problem::new(ProblemKind::AmbiguousCredentials)
            .detail("send one Authorization header; none of these was used")
            .into_response();
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    let authority_differs = match (host, req.uri().authority()) {
        (Some(host), Some(authority)) => !host
            .to_str()
            .is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str())),
        _ => false,
    };
    if hosts.next().is_some() || authority_differs {
        return Problem::new(ProblemKind::AmbiguousHost)
            .detail("send one Host header (on HTTP/2, none, or the same as :authority)")
            .into_response();
    }
    next.run(req).await
}

/// A request head over [`MAX_HEAD`] is 431 with a problem document, whichever protocol
/// brought it. hyper refuses larger ones itself, and on HTTP/1.1 only while the head is
/// still arriving: a later request on a kept-alive connection may come whole into a
/// larger buffer, and HTTP/2's header lists are counted by another rule.
async fn head_size(req: Request, next: Next) -> Response {
    // The URI as sent (`scheme://authority` only on HTTP/2), measured without writing it.
    let uri = req.uri();
    let size = req.method().as_str().len()
        + uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum::<usize>();
    if size > MAX_HEAD {
        tracing::info!(reason = "request_head_too_large", "request refused");
        // And the connection closes (HTTP/1.1): a client that sends such heads is not
        // worth keeping a buffer of that size for.
        return Problem::new(ProblemKind::RequestHeadTooLarge)
            .detail(format!(
                "the request line and headers may be at most {MAX_HEAD} bytes"
            ))
            .header(header::CONNECTION, HeaderValue::from_static("close"))
            .into_response();
    }
    next.run(req).await
}

async fn declared_length(
    State((body_limit, upload_limit)): State<(u64, u64)>,
    req: Request,
    next: Next,
) -> Response {
    let limit = if is_upload_path(req.uri().path()) {
        upload_limit
    } else {
        body_limit
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Problem::new(ProblemKind::PayloadTooLarge)
            .detail(format!("the body may be at most {limit} bytes"))
            .with("limit", limit)
            .into_response();
    }
    next.run(req).await
}

fn panicked(_payload: Box<dyn std::any::Any + Send>) -> Response {
    // The payload may quote data; the log gets the fact only.
    tracing::error!("handler panicked");
    Problem::new(ProblemKind::Internal).into_response()
}

#[derive(Debug)]
struct SecurityHeaders {
    hsts: HeaderValue,
}

impl SecurityHeaders {
    fn new(max_age: u64) -> Self {
        let hsts = HeaderValue::from_str(&format!("max-age={max_age}; includeSubDomains"))
            .unwrap_or_else(|_| HeaderValue::from_static("max-age=63072000; includeSubDomains"));
        Self { hsts }
    }
}

async fn security_headers(
    State(h): State<Arc<SecurityHeaders>>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::STRICT_TRANSPORT_SECURITY, h.hsts.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A page may set its own, stricter-than-nothing policy (the dev login pages do).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    response
}

/// Whether a request path is an attachment upload (for the declared-length check, which
/// runs before routing and allows these the attachment limit).
pub fn is_upload_path(path: &str) -> bool {
    path.starts_with("/v1/episodes/") && path.contains("/attachments/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_paths_are_told_from_other_paths() {
        assert!(is_upload_path("/v1/episodes/x/attachments/y"));
        assert!(!is_upload_path("/v1/episodes/x/messages/y"));
    }
    use axum::body::Body;
    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    use crate::http::extractors::ApiJson;

    #[derive(Deserialize)]
    struct Score {
        #[allow(dead_code)]
        score: u8,
    }

    async fn panicking_handler() -> &'static str {
        let items: Vec<&str> = Vec::new();
        items[0]
    }

    fn limits() -> Limits {
        Limits {
            body_limit_bytes: 64,
            attachment_limit_bytes: 128,
            request_timeout: Duration::from_millis(200),
            concurrency_limit: 8,
            upload_concurrency_limit: 4,
            admission_queue: 8,
            admission_standing: Duration::from_millis(50),
            hsts_max_age_seconds: 600,
        }
    }

    fn service(metrics: Arc<Metrics>) -> HttpService {
        let router = Router::new()
            .route("/echo", post(|ApiJson(_): ApiJson<Score>| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/panic", get(panicking_handler))
            .fallback(|| async { Problem::new(ProblemKind::NotFound) });
        build(router, &limits(), metrics)
    }

    async fn call(req: Request) -> (Response, serde_json::Value) {
        let response = service(Metrics::shared()).oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, Body::empty()), json)
    }

    fn post_json(body: &'static str) -> Request {
        Request::post("/echo")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    fn assert_problem(response: &Response, json: &serde_json::Value, slug: &str) {
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(json["type"], format!("urn:icbt-gateway:problem:{slug}"));
        assert_eq!(json["status"], response.status().as_u16());
    }

    #[tokio::test]
    async fn declared_oversized_body_is_refused_before_routing() {
        // The route does not exist: a 413 rather than 404 shows the check ran first.
        let req = Request::post("/nowhere")
            .header("content-length", "65")
            .body(Body::from(vec![b'x'; 65]))
            .unwrap();
        let (response, json) = call(req).await;
        assert_eq!(response.status(), 413);
        assert_problem(&response, &json, "payload-too-large");
        assert_eq!(json["limit"], 64);
    }

    #[tokio::test]
    async fn streamed_oversized_body_is_refused() {
        let chunks = futures_stream(vec![vec![b' '; 40], vec![b' '; 40]]);
        let req = Request::post("/echo")
            .header("content-type", "application/json")
            .body(chunks)
            .unwrap();
        let (response, json) = call(req).await;
        assert_eq!(response.status(), 413);
        assert_problem(&response, &json, "payload-too-large");
    }

    fn futures_stream(chunks: Vec<Vec<u8>>) -> Body {
        let stream = tokio_stream_from(chunks);
        Body::from_stream(stream)
    }

    fn tokio_stream_from(
        chunks: Vec<Vec<u8>>,
    ) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
        struct S(std::collections::VecDeque<Vec<u8>>);
        impl futures_core::Stream for S {
            type Item = Result<Vec<u8>, std::io::Error>;
            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                std::task::Poll::Ready(self.0.pop_front().map(Ok))
            }
        }
        S(chunks.into())
    }

    #[tokio::test]
    async fn malformed_json_is_400_naming_the_path() {
        let (response, json) = call(post_json(r#"{"score":"high"}"#)).await;
        assert_eq!(response.status(), 400);
        assert_problem(&response, &json, "malformed-json");
        assert_eq!(json["path"], "score");
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let req = Request::post("/echo")
            .header("content-type", "text/plain")
            .body(Body::from("{}"))
            .unwrap();
        let (response, json) = call(req).await;
        assert_eq!(response.status(), 415);
        assert_problem(&response, &json, "unsupported-media-type");
    }

    #[tokio::test]
    async fn slow_request_is_503_problem() {
        let (response, json) = call(Request::get("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), 503);
        assert_problem(&response, &json, "request-timeout");
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn panic_becomes_500_problem_with_headers() {
        let (response, json) = call(Request::get("/panic").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), 500);
        assert_problem(&response, &json, "internal");
        assert!(response.headers().contains_key(&X_REQUEST_ID));
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn request_id_is_echoed_or_generated() {
        let req = Request::post("/echo")
            .header("x-request-id", "abc-123")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"score":1}"#))
            .unwrap();
        let (response, _) = call(req).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[&X_REQUEST_ID], "abc-123");
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
        assert_eq!(
            response.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=600; includeSubDomains"
        );

        let req = Request::get("/x")
            .header("x-request-id", "01018512345")
            .body(Body::empty())
            .unwrap();
        let (response, _) = call(req).await;
        let echoed = response.headers()[&X_REQUEST_ID].to_str().unwrap();
        assert_ne!(
            echoed, "01018512345",
            "a national-id-shaped request id is replaced"
        );
        assert_eq!(echoed.len(), 36, "replaced by a UUID: {echoed}");
    }

    #[tokio::test]
    async fn metrics_are_labelled_by_route_template() {
        let metrics = Metrics::shared();
        let svc = service(metrics.clone());
        svc.clone()
            .oneshot(post_json(r#"{"score":1}"#))
            .await
            .unwrap();
        svc.oneshot(
            Request::get("/patients/01018512345")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        let text = metrics.render();
        assert!(
            text.contains(r#"method="POST",route="/echo",status="200""#),
            "{text}"
        );
        assert!(
            text.contains(r#"route="(unmatched)",status="404""#),
            "{text}"
        );
        assert!(!text.contains("01018512345"), "{text}");
    }

    #[test]
    fn request_id_rules() {
        assert!(acceptable_request_id(b"3f2a-77"));
        assert!(!acceptable_request_id(b""));
        assert!(!acceptable_request_id(&[b'a'; 65]));
        assert!(!acceptable_request_id(b"a b"));
        assert!(!acceptable_request_id(b"id-12345678901"));
        assert!(acceptable_request_id(b"id-1234567890"));
    }
}
