//! Admission control: how many requests the gateway works on at once.
//!
//! The limit is small, about the size of the database pool (`server.concurrency_limit`,
//! 16 by default): more requests in progress than the database serves only wait for it,
//! and every admitted request waits longer. A request over the limit waits for a place
//! in a queue (`server.admission_queue`, 64 by default, at most [`MAX_WAIT`]), so that
//! a burst, or a pause of the database, is ridden out rather than refused. A queue that
//! does not drain is another matter: once a request has waited longer than
//! `server.admission_standing_ms` (500 by default) the gateway is getting more than it
//! serves, and until a request finds a place free again, one that finds none is refused
//! at once (the signal of `CoDel`, RFC 8289). A refused request gets 503 `overloaded`
//! with `Retry-After`, before any work is done.
//! docs/load.md has the measurements behind the defaults.
//!
//! Attachment uploads count apart (`server.upload_concurrency_limit`): an upload is held
//! for as long as its client takes to send the body, and slow uploads must not take the
//! places of the short requests. Event streams hold a place only until their headers are
//! sent, and a long poll gives its place back while it waits ([`Place::give_back`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::errors::{Problem, ProblemKind};
use crate::http::middleware::is_upload_path;
use crate::telemetry::Metrics;

/// The longest a request waits in the queue for a place.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// One kind of request's places, and its queue.
#[derive(Debug)]
struct Places {
    free: Arc<Semaphore>,
    queued: AtomicUsize,
    /// The most requests `queued` may hold.
    queue: usize,
    /// Set when a request waited longer than `standing_after`, cleared when one finds a
    /// place free: meanwhile a request that finds no place is refused at once.
    standing: AtomicBool,
    standing_after: Duration,
}

/// A request's turn in a queue; leaves it when dropped (also when the client goes away
/// while it waits).
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Places {
    fn new(count: usize, queue: usize, standing_after: Duration) -> Self {
        Self {
            free: Arc::new(Semaphore::new(count)),
            queued: AtomicUsize::new(0),
            queue,
            standing: AtomicBool::new(false),
            standing_after,
        }
    }

    /// A free place now, or after waiting in the queue for at most [`MAX_WAIT`]; `None`
    /// when the queue stands, is full, or the wait runs out.
    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(place) = self.free.clone().try_acquire_owned() {
            self.standing.store(false, Ordering::Relaxed);
            return Some(place);
        }
        if self.standing.load(Ordering::Relaxed) {
            return None;
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _turn = InQueue(&self.queued);
        let since = Instant::now();
        let place = tokio::time::timeout(MAX_WAIT, self.free.clone().acquire_owned()).await;
        if since.elapsed() > self.standing_after {
            self.standing.store(true, Ordering::Relaxed);
        }
        place.ok()?.ok()
    }
}

/// The places for requests in progress, their queues, and the count of refusals.
#[derive(Debug)]
pub struct Admission {
    api: Places,
    uploads: Places,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Refusals not yet logged, and the second (since `started`) of the last log line:
    /// under overload one line a second, not one per refusal.
    unlogged: AtomicU64,
    logged_at: AtomicU64,
}

impl Admission {
    /// `api` and `uploads` places, and a queue of `queue` requests for each that stands
    /// once a request waited longer than `standing`.
    pub fn new(
        (api, uploads): (usize, usize),
        queue: usize,
        standing: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api: Places::new(api, queue, standing),
            uploads: Places::new(uploads, queue, standing),
            metrics,
            started: Instant::now(),
            unlogged: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        }
    }

    fn refused(&self, class: &'static str) {
        self.metrics.shed(class);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        if now > last
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let shed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(shed, "concurrency limit reached; requests refused with 503");
        }
    }
}

/// A request's place, in its extensions: a handler that is about to wait for a long time
/// (a long poll) gives it back, so that waiting requests do not hold the gateway's
/// places.
#[derive(Clone, Debug)]
pub struct Place(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Place {
    pub fn give_back(&self) {
        if let Ok(mut place) = self.0.lock() {
            place.take();
        }
    }
}

/// The middleware: a place for the request while it is worked on, or 503.
pub async fn admit(
    State(admission): State<Arc<Admission>>,
    mut req: Request,
    next: Next,
) -> Response {
    let (places, class) = if req.method() == Method::PUT && is_upload_path(req.uri().path()) {
        (&admission.uploads, "upload")
    } else {
        (&admission.api, "api")
    };
    let Some(permit) = places.take().await else {
        admission.refused(class);
        return Problem::new(ProblemKind::Overloaded).into_response();
    };
    let place = Place(Arc::new(Mutex::new(Some(permit))));
    req.extensions_mut().insert(place.clone());
    let response = next.run(req).await;
    place.give_back();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, put};
    use tower::ServiceExt;

    /// The standing threshold of these tests.
    const STANDING: Duration = Duration::from_millis(50);

    /// A router whose handlers count themselves in and wait until `release`.
    fn held(
        admission: Arc<Admission>,
        entered: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Semaphore>,
    ) -> Router {
        let wait = move || {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                release.acquire().await.unwrap().forget();
                "done"
            }
        };
        Router::new()
            .route("/v1/me", get(wait.clone()))
            .route("/v1/episodes/{e}/attachments/{h}", put(wait))
            .layer(axum::middleware::from_fn_with_state(admission, admit))
    }

    fn request(method: Method, path: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn over_the_limit_a_request_queues_and_over_the_queue_it_is_refused_at_once() {
        let metrics = Metrics::shared();
        let admission = Arc::new(Admission::new((2, 1), 1, STANDING, metrics.clone()));
        let (entered, release) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let app = held(admission.clone(), entered.clone(), release.clone());
        let me = || request(Method::GET, "/v1/me");

        let in_progress = [
            tokio::spawn(app.clone().oneshot(me())),
            tokio::spawn(app.clone().oneshot(me())),
        ];
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let queued = tokio::spawn(app.clone().oneshot(me()));
        while admission.api.queued.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }

        // The queue is full: refused without waiting for a place.
        let refused = tokio::time::timeout(MAX_WAIT / 2, app.clone().oneshot(me()))
            .await
            .expect("refused at once, not after a wait")
            .unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        // Uploads have places of their own.
        let upload = tokio::spawn(
            app.clone()
                .oneshot(request(Method::PUT, "/v1/episodes/e/attachments/h")),
        );
        while entered.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        assert!(
            metrics
                .render()
                .contains(r#"icbt_gateway_http_requests_shed_total{class="api"} 1"#)
        );

        release.add_permits(4);
        for answer in in_progress.into_iter().chain([queued, upload]) {
            assert_eq!(answer.await.unwrap().unwrap().status(), 200);
        }
        assert_eq!(
            entered.load(Ordering::SeqCst),
            4,
            "the refused one never ran"
        );
        assert_eq!(admission.api.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn after_a_long_wait_the_queue_stands_until_a_place_is_free_again() {
        let admission = Arc::new(Admission::new((1, 1), 8, STANDING, Metrics::shared()));
        let (entered, release) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let app = held(admission.clone(), entered.clone(), release.clone());
        let me = || request(Method::GET, "/v1/me");
        let holder = tokio::spawn(app.clone().oneshot(me()));
        while entered.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        let waiter = tokio::spawn(app.clone().oneshot(me()));
        tokio::time::sleep(STANDING * 2).await;
        release.add_permits(1);
        assert_eq!(holder.await.unwrap().unwrap().status(), 200);
        // The waiter waited past STANDING and now holds the place: the queue stands, so
        // the next request is refused without waiting, though the queue has room.
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(STANDING, app.clone().oneshot(me()))
            .await
            .expect("refused at once")
            .unwrap();
        assert_eq!(refused.status(), 503);
        release.add_permits(1);
        assert_eq!(waiter.await.unwrap().unwrap().status(), 200);
        // A place is free again: the next request is served.
        release.add_permits(1);
        let served = app.oneshot(me()).await.unwrap();
        assert_eq!(served.status(), 200);
    }

    #[tokio::test]
    async fn a_queued_request_is_refused_when_its_wait_runs_out() {
        let admission = Arc::new(Admission::new((1, 1), 8, STANDING, Metrics::shared()));
        let (entered, release) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let app = held(admission.clone(), entered.clone(), release.clone());
        let holder = tokio::spawn(app.clone().oneshot(request(Method::GET, "/v1/me")));
        while entered.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        let waited = app.oneshot(request(Method::GET, "/v1/me")).await.unwrap();
        assert_eq!(waited.status(), 503);
        assert_eq!(
            admission.api.queued.load(Ordering::SeqCst),
            0,
            "left the queue"
        );
        release.add_permits(1);
        assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    }
}
