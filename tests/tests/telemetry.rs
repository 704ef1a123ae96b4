//! Logs, traces and metrics of the running gateway: no national id number anywhere,
//! spans exported over OTLP/HTTP, Prometheus metrics by route and status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, otlp};

/// A request with a national id number in its path, query, body and headers.
async fn send_personal_data(gw: &Gateway) {
    let client = gw.client();
    let body = format!(r#"{{"patient":{{"fnr":"{SYNTHETIC_FNR}"}},"note":"{SYNTHETIC_FNR}"}}"#);
    for path in [
        format!("/v1/patients/{SYNTHETIC_FNR}/messages?pid={SYNTHETIC_FNR}"),
        "/healthz".to_owned(),
    ] {
        let response = client
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .header("x-request-id", SYNTHETIC_FNR)
            .header("x-patient", SYNTHETIC_FNR)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
}

#[tokio::test]
async fn national_id_number_never_reaches_a_log_line() {
    for format in ["json", "human"] {
        let mut gw = Gateway::start_with(
            Backend::Sqlite,
            GatewayOptions {
                env: vec![
                    // Debug for every crate: the most a production operator would turn on.
                    ("ICBT_TELEMETRY__LOG_FILTER".into(), "debug".into()),
                    ("ICBT_TELEMETRY__LOG_FORMAT".into(), format.into()),
                ],
                ..Default::default()
            },
        )
        .await;
        send_personal_data(&gw).await;
        gw.stop_with("TERM").await;
        let logs = gw.logs();
        assert!(
            logs.iter().any(|l| l.contains("request answered")),
            "requests were logged: {logs:#?}"
        );
        for line in &logs {
            assert!(
                !line.contains(SYNTHETIC_FNR),
                "a log line holds the national id number: {line}"
            );
        }
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() {
    let receiver = otlp::Receiver::start().await;
    let mut gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            env: vec![
                (
                    "ICBT_TELEMETRY__OTLP_ENDPOINT".into(),
                    receiver.endpoint.clone(),
                ),
                (
                    "ICBT_TELEMETRY__SERVICE_NAME".into(),
                    "icbt-gateway-under-test".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await;
    let client = gw.client();
    assert_eq!(
        client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    send_personal_data(&gw).await;
    // Shutdown flushes the batch exporter.
    assert!(gw.stop_with("TERM").await.success());

    let spans = receiver.spans();
    let health = spans
        .iter()
        .find(|s| {
            s.name == "request" && s.attributes.contains(&("route".into(), "/healthz".into()))
        })
        .unwrap_or_else(|| panic!("no /healthz request span among {spans:#?}"));
    assert!(
        health.attributes.contains(&("method".into(), "GET".into())),
        "{health:?}"
    );
    assert!(
        health.attributes.contains(&("status".into(), "200".into())),
        "{health:?}"
    );
    assert_eq!(
        health.service_name.as_deref(),
        Some("icbt-gateway-under-test")
    );
    for body in receiver.raw_bodies() {
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(SYNTHETIC_FNR),
            "an exported span holds the national id number"
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_and_latency_by_route_and_status() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let client = gw.client();
    for _ in 0..3 {
        client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap();
    }
    client
        .get(format!("{}/v1/patients/{SYNTHETIC_FNR}", gw.url))
        .send()
        .await
        .unwrap();
    let text = client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"icbt_gateway_http_requests_total{method="GET",route="/healthz",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"icbt_gateway_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"} 3"#), "{text}");
    assert!(
        text.contains(r#"route="(unmatched)",status="404""#),
        "{text}"
    );
    assert!(!text.contains(SYNTHETIC_FNR));
}

/// A collector reached over HTTPS, with a certificate of a private CA named in
/// `auth.trust_roots_file`: the spans arrive over TLS.
#[tokio::test]
async fn spans_are_exported_over_otlp_https_to_a_privately_certified_collector() {
    let ca = icbt_e2e::idp::TestCa::new();
    let receiver = otlp::Receiver::start_tls(&ca).await;
    assert!(receiver.endpoint.starts_with("https://"));
    let mut gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            env: vec![
                (
                    "ICBT_TELEMETRY__OTLP_ENDPOINT".into(),
                    receiver.endpoint.clone(),
                ),
                (
                    "ICBT_AUTH__TRUST_ROOTS_FILE".into(),
                    ca.ca_file.display().to_string(),
                ),
            ],
            ..Default::default()
        },
    )
    .await;
    let health = gw
        .client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(gw.stop_with("TERM").await.success());
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.attributes.contains(&("route".into(), "/healthz".into()))),
        "no span arrived over TLS: {spans:#?}\n{}",
        gw.logs().join("\n")
    );
}
