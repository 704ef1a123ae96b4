//! The listener: TCP accept, TLS handshake (bounded in time), HTTP/1.1 or HTTP/2 by ALPN
//! on hyper, and graceful shutdown that stops accepting and drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::stack::HttpService;

/// Facts about the connection a request arrived on, as a request extension.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The verified client certificate (leaf), when the client presented one.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// Timing of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerTimeouts {
    /// A TLS handshake, and HTTP/1 request headers, must arrive within this.
    pub handshake: Duration,
    /// In-flight requests get this long after shutdown begins.
    pub grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: HttpService,
    timeouts: ListenerTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.handshake)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let watcher = graceful.watcher();
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let app = app.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(stream)) = tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await else {
                            tracing::debug!("TLS handshake failed or timed out");
                            return;
                        };
                        let info = ConnectionInfo {
                            peer,
                            client_certificate: stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|c| c.clone().into_owned()),
                        };
                        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let mut req = req.map(Body::new);
                            req.extensions_mut().insert(info.clone());
                            app.clone().oneshot(req)
                        });
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(connection).await {
                            tracing::debug!(error = %e, "connection ended with an error");
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

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}
