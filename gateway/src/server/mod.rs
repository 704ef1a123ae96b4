//! The listener: TCP accept, TLS handshake (bounded in time), HTTP/1.1 or HTTP/2 by ALPN
//! on hyper, and graceful shutdown that stops accepting and drains in-flight requests.
//! An HTTP/1.1 connection that opens with `GET /v1/stream` is served by the lean path of
//! [`event_stream`] instead of hyper; on shutdown its stream ends at once.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub mod bare_answers;
pub mod event_stream;
pub mod linger;
pub mod tls;
pub mod write_deadline;

use bare_answers::{ProblemAnswers, problem_answer};
use event_stream::{First, Prefixed};
use linger::Linger;
use write_deadline::WriteDeadline;

use crate::http::errors::ProblemKind;
use crate::http::extractors::ConnectionInfo;
use crate::http::middleware::{HttpService, MAX_HEAD};
use crate::slots::{AddressSlots, Slot};

/// The most a request head may take in hyper's buffers: twice what is accepted, so that a
/// head between the two gets the stack's problem document (`head_size`), and only a
/// larger one hyper's own refusal (on HTTP/1.1 turned into a problem document by
/// [`bare_answers`]; on HTTP/2 a bodiless 431).
const HEAD_BUFFER: usize = 2 * MAX_HEAD;

/// Timing and per-address limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// A TLS handshake, and HTTP/1 request headers, must arrive within this.
    pub handshake: Duration,
    /// A write, flush or shutdown of a connection that makes no progress for this long
    /// fails, and the connection is dropped.
    pub write: Duration,
    /// In-flight requests get this long after shutdown begins.
    pub grace: Duration,
    /// TLS handshakes one client address may have under way at once (0: no cap).
    pub handshakes_per_address: usize,
    /// Connections of one client address that have not yet carried an authenticated
    /// request (0: no cap).
    pub unauthenticated_per_address: usize,
}

/// The places one client address holds on the listener.
struct PerAddress {
    handshakes: Arc<AddressSlots>,
    unauthenticated: Arc<AddressSlots>,
}

impl PerAddress {
    /// A handshake's and an unauthenticated connection's places for `peer`, or `None`
    /// when it holds its share of either. An IPv6 client counts by its /64, which one
    /// subscriber usually holds whole.
    fn admit(&self, peer: std::net::IpAddr) -> Option<(Slot<IpAddr>, Slot<IpAddr>)> {
        let key = match peer {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            },
            v4 @ IpAddr::V4(_) => v4,
        };
        Some((self.handshakes.take(key)?, self.unauthenticated.take(key)?))
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
/// `closing` turns true when shutdown begins; open event streams end on it.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: HttpService,
    (timeouts, closing_tx): (ListenerLimits, Arc<tokio::sync::watch::Sender<bool>>),
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let builder = Arc::new(hyper_builder(&timeouts));
    let per_address = PerAddress {
        handshakes: AddressSlots::new(timeouts.handshakes_per_address),
        unauthenticated: AddressSlots::new(timeouts.unauthenticated_per_address),
    };
    let graceful = GracefulShutdown::new();
    // Lean event streams end when this turns true; they hold a watcher, so the drain
    // below waits for them too. Streams served by hyper watch it from their handler.
    let closing = closing_tx.subscribe();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Some((handshaking, unauthenticated)) = per_address.admit(peer.ip()) else {
                        // Closed before TLS: nothing costs less to refuse.
                        tracing::info!(reason = "too_many_connections_from_address", "connection refused");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    keep_alive(&tcp);
                    let watcher = graceful.watcher();
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let app = app.clone();
                    let closing = closing.clone();
                    tokio::spawn(async move {
                        // The handshake and the stream boxed, so a task holding an idle
                        // event stream holds pointers, not their space.
                        let handshake = Box::pin(acceptor.accept(tcp));
                        let Ok(Ok(stream)) = tokio::time::timeout(timeouts.handshake, handshake).await else {
                            tracing::debug!("TLS handshake failed or timed out");
                            return;
                        };
                        drop(handshaking);
                        let info = ConnectionInfo {
                            peer,
                            client_certificate: stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|c| c.clone().into_owned()),
                            unauthenticated: Arc::new(std::sync::Mutex::new(Some(unauthenticated))),
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        // Writes are bounded in time; a close reads on so that an
                        // answer given before the body was read is not lost.
                        let stream = Linger::new(WriteDeadline::new(stream, timeouts.write));
                        if h2 {
                            return Box::pin(serve_hyper(&builder, stream, info, app, watcher)).await;
                        }
                        let mut stream = Box::new(stream);
                        let first = event_stream::read_first(&mut stream, MAX_HEAD);
                        match tokio::time::timeout(timeouts.handshake, first).await {
                            Ok(First::Stream(mut req)) => {
                                req.extensions_mut().insert(info);
                                let Ok(response) = app.oneshot(*req).await;
                                // Holds `watcher` until the stream ends: the drain waits.
                                event_stream::answer(stream, response, closing).await;
                                drop(watcher);
                            }
                            Ok(First::Other(read)) => {
                                // hyper's own bare 4xx answers become problem documents.
                                let io = ProblemAnswers::new(Prefixed::new(read, stream));
                                // Boxed: hyper's connection state is large, and a task
                                // is as large as its largest state; a lean stream (the
                                // many idle ones) must not carry hyper's size.
                                Box::pin(serve_hyper(&builder, io, info, app, watcher)).await;
                            }
                            Ok(First::Gone) => {}
                            Err(_) => {
                                tracing::debug!("no request head arrived in time");
                                let answer = problem_answer(ProblemKind::RequestHeadTimeout);
                                let _ = tokio::time::timeout(timeouts.handshake, async {
                                    stream.write_all(&answer).await?;
                                    stream.shutdown().await
                                })
                                .await;
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    closing_tx.send_replace(true);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(timeouts.grace, graceful.shutdown())
        .await
        .is_ok()
    {
        tracing::info!("all connections drained");
    } else {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// hyper's connection settings, for both protocols.
fn hyper_builder(timeouts: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.handshake)
        .max_buf_size(HEAD_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(u32::try_from(HEAD_BUFFER).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// TCP keepalive, so a peer that vanished without a FIN (a phone off the network, a
/// dropped NAT mapping) is found within about two minutes, even on an idle event stream.
fn keep_alive(tcp: &tokio::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_mins(1))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "TCP keepalive could not be set");
    }
}

/// Serves one connection with hyper: HTTP/1.1 or HTTP/2.
async fn serve_hyper<IO>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    info: ConnectionInfo,
    app: HttpService,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(info.clone());
        app.clone().oneshot(req)
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives in between (say, a TERM sent as
/// soon as the process says it is listening) starts a drain instead of killing the
/// process with the signal's default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn received(handler: Option<Signal>) {
        match handler {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let terminate = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = received(terminate) => {},
            () = received(interrupt) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A TERM that arrives after `shutdown_signal()` is called but before its future is
    /// polled is the future's to handle: without the handler installed at the call, the
    /// signal's default action would end this test process.
    #[tokio::test]
    async fn a_term_before_the_first_poll_is_caught_not_fatal() {
        let shutdown = super::shutdown_signal();
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(std::process::id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("the TERM sent before the first poll completes the future");
    }
}
