//! Graceful shutdown of the real listener: a request in flight when shutdown begins is
//! answered; new connections are refused afterwards.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use icbt_config::TlsConfig;
use icbt_gateway::http::middleware::{self, Limits};
use icbt_gateway::server::tls;
use icbt_gateway::server::{self, ListenerLimits};
use icbt_gateway::telemetry::Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_during_shutdown() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certificate(dir.path()).unwrap();
    let tls_config = Arc::new(tls::server_config(&TlsConfig::default(), &files).unwrap());
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let router = Router::new().route(
        "/slow",
        get(move || {
            let entered = entered_tx.lock().unwrap().take();
            async move {
                if let Some(tx) = entered {
                    let _ = tx.send(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                "finished"
            }
        }),
    );
    let limits = Limits {
        body_limit_bytes: 1024,
        attachment_limit_bytes: 1024,
        request_timeout: Duration::from_secs(10),
        concurrency_limit: 8,
        upload_concurrency_limit: 4,
        admission_queue: 8,
        admission_standing: Duration::from_millis(50),
        hsts_max_age_seconds: 60,
    };
    let app = middleware::build(router, &limits, Metrics::shared());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let timeouts = ListenerLimits {
        handshake: Duration::from_secs(5),
        write: Duration::from_secs(5),
        grace: Duration::from_secs(10),
        handshakes_per_address: 0,
        unauthenticated_per_address: 0,
    };
    let closing = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
    let server = tokio::spawn(server::serve(
        listener,
        tls_config,
        app,
        (timeouts, closing),
        async {
            let _ = stop_rx.await;
        },
    ));

    let cert = std::fs::read(&files.cert_file).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/slow", addr.port());
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { client.get(url).send().await?.text().await }
    });
    entered_rx.await.unwrap();
    stop_tx.send(()).unwrap();

    assert_eq!(in_flight.await.unwrap().unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .build()
        .unwrap();
    assert!(
        fresh.get(url).send().await.is_err(),
        "the listener is closed after shutdown"
    );
}
