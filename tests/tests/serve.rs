//! The dev gateway over real TLS: health, readiness on both backends, protocol versions,
//! problem responses, client certificates and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::{
    Backend, ClientTls, Gateway, GatewayOptions, backends, client_trusting, expect_problem,
};

#[tokio::test]
async fn healthz_and_readyz_on_every_backend() {
    for backend in backends() {
        let gw = Gateway::start(backend).await;
        let client = gw.client();
        let health = client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.headers()["content-type"], "application/json");
        assert_eq!(
            health.json::<serde_json::Value>().await.unwrap()["status"],
            "alive"
        );

        let ready: serde_json::Value = client
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["status"], "ready", "{backend:?}");
        assert_eq!(ready["migrations"], "applied");
        let expected = if backend == Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        };
        assert_eq!(ready["backend"], expected);
    }
}

#[tokio::test]
async fn serves_http2_and_http11_by_alpn_over_tls13_and_tls12() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let pem = gw.certificate_pem();
    let cases = [
        (
            &rustls::version::TLS13,
            b"h2".to_vec(),
            reqwest::Version::HTTP_2,
        ),
        (
            &rustls::version::TLS13,
            b"http/1.1".to_vec(),
            reqwest::Version::HTTP_11,
        ),
        (
            &rustls::version::TLS12,
            b"h2".to_vec(),
            reqwest::Version::HTTP_2,
        ),
        (
            &rustls::version::TLS12,
            b"http/1.1".to_vec(),
            reqwest::Version::HTTP_11,
        ),
    ];
    for (version, alpn, expected) in cases {
        let client = client_trusting(
            &pem,
            ClientTls {
                only_version: Some(version),
                alpn: vec![alpn],
                identity: None,
            },
        );
        let response = client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), expected, "{version:?}");
    }
}

#[tokio::test]
async fn api_responses_carry_security_headers_and_request_id() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let response = gw
        .client()
        .get(format!("{}/healthz", gw.url))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    let h = response.headers();
    assert_eq!(h["x-request-id"], "trace-me-42");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    let generated = gw
        .client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        generated.headers()["x-request-id"].len(),
        36,
        "a UUID is generated when none is sent"
    );
}

#[tokio::test]
async fn errors_are_problem_json_never_html() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let client = gw.client();
    expect_problem(
        client
            .get(format!("{}/no/such/route", gw.url))
            .send()
            .await
            .unwrap(),
        404,
        "not-found",
    )
    .await;

    let response = client
        .delete(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    expect_problem(response, 405, "method-not-allowed").await;

    let big = vec![b'x'; 2 * 1024 * 1024];
    let response = client
        .post(format!("{}/healthz", gw.url))
        .body(big)
        .send()
        .await
        .unwrap();
    let body = expect_problem(response, 413, "payload-too-large").await;
    assert_eq!(body["limit"], 1024 * 1024);
}

#[tokio::test]
async fn sigterm_drains_idle_connections_and_exits_zero() {
    let mut gw = Gateway::start(Backend::Sqlite).await;
    assert_eq!(
        gw.client()
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let status = gw.stop_with("TERM").await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let logs = gw.logs().join("\n");
    assert!(logs.contains("all connections drained"), "{logs}");
    assert!(!logs.contains("grace period over"), "{logs}");
    assert!(logs.contains("\"stopped\""), "{logs}");
}

#[tokio::test]
async fn dev_certificate_fingerprint_matches_the_served_certificate() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let pem = gw.certificate_pem();
    let der = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
        .next()
        .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
        .unwrap();
    let digest =
        icbt_gateway::server::tls::fingerprint(&gw.data_dir.path().join("dev-tls/cert.pem"))
            .unwrap();
    assert_eq!(gw.fingerprint, digest);
    assert!(!der.is_empty());
}

/// A CA, and a client certificate it issued, written as PEM files in `dir`.
fn client_ca(dir: &std::path::Path) -> (std::path::PathBuf, (String, String)) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test system-client CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "icbt-platform");
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let ca_file = dir.join("client-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    (ca_file, (client_cert.pem(), client_key.serialize_pem()))
}

#[tokio::test]
async fn client_certificates_optional_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, identity) = client_ca(dir.path());
    for mode in ["optional", "required"] {
        let gw = Gateway::start_with(
            Backend::Sqlite,
            GatewayOptions {
                env: vec![
                    ("ICBT_TLS__CLIENT_AUTH".into(), mode.into()),
                    (
                        "ICBT_TLS__CLIENT_CA_FILE".into(),
                        ca_file.display().to_string(),
                    ),
                ],
                ..Default::default()
            },
        )
        .await;
        let pem = gw.certificate_pem();
        let with_cert = client_trusting(
            &pem,
            ClientTls {
                identity: Some(identity.clone()),
                ..Default::default()
            },
        );
        let status = with_cert
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            status, 200,
            "{mode}: a certificate from the configured CA is accepted"
        );

        let without = client_trusting(&pem, ClientTls::default())
            .get(format!("{}/healthz", gw.url))
            .send()
            .await;
        match mode {
            "optional" => assert_eq!(
                without.unwrap().status(),
                200,
                "optional: no certificate is fine"
            ),
            _ => assert!(
                without.is_err(),
                "required: a client without a certificate is refused"
            ),
        }

        let (_, stranger) = client_ca(tempfile::tempdir().unwrap().path());
        let foreign = client_trusting(
            &pem,
            ClientTls {
                identity: Some(stranger),
                ..Default::default()
            },
        );
        assert!(
            foreign
                .get(format!("{}/healthz", gw.url))
                .send()
                .await
                .is_err(),
            "{mode}: a certificate from another CA is refused"
        );
    }
}

/// Reads `tls` to its end; what a client that sent `Connection: close` gets.
async fn read_all(mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut bytes),
    )
    .await
    .expect("the gateway closes the connection");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn http11_heads_reach_the_right_path_whole_pipelined_or_in_pieces() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(Backend::Sqlite).await;

    // Two pipelined requests in one write: the head read first is handed on with the
    // rest, and both are answered in order on one connection.
    let mut tls = gw.raw_tls().await;
    tls.write_all(
        b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\nGET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_all(tls).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(
        text.find("\"alive\"").unwrap() < text.find("\"ready\"").unwrap(),
        "{text}"
    );

    // The stream path, in three pieces, without credentials: the problem comes from the
    // full stack (security headers, request id), and the connection closes after it.
    let mut tls = gw.raw_tls().await;
    for piece in [
        "GET /v1/str",
        "eam HTTP/1.1\r\nhost: local",
        "host\r\nx-request-id: stream-1\r\n\r\n",
    ] {
        tls.write_all(piece.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = read_all(tls).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401 unauthorized\r\n"), "{text}");
    for line in [
        "content-type: application/problem+json",
        "x-request-id: stream-1",
        "x-content-type-options: nosniff",
        "connection: close",
        &format!("content-length: {}", body.len()),
    ] {
        assert!(head.contains(line), "{line} missing in {text}");
    }
    let problem: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with(":unauthenticated"),
        "{problem}"
    );

    // A head that is no request at all still gets hyper's answer.
    let mut tls = gw.raw_tls().await;
    tls.write_all(b"GET /v1/stream HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(tls).await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
}

/// One caller and one host per request, on HTTP/2, HTTP/1.1 and the lean stream path: two
/// `Authorization` headers are refused (a proxy reading the last and the gateway the first
/// would disagree on who calls), as are two `Host` headers or an HTTP/2 `host` that is not
/// the `:authority`. Each refusal is a problem document.
#[tokio::test]
async fn two_authorization_or_host_headers_are_refused_on_every_path() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(Backend::Sqlite).await;
    let h2 = client_trusting(
        &gw.certificate_pem(),
        ClientTls {
            only_version: None,
            alpn: vec![b"h2".to_vec()],
            identity: None,
        },
    );
    for path in ["/v1/me", "/v1/stream"] {
        let response = h2
            .get(format!("{}{path}", gw.url))
            .header("authorization", "Bearer first")
            .header("authorization", "Bearer second")
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        expect_problem(response, 401, "ambiguous-credentials").await;
        let response = h2
            .get(format!("{}{path}", gw.url))
            .header("host", "elsewhere.example")
            .send()
            .await
            .unwrap();
        expect_problem(response, 400, "ambiguous-host").await;
    }
    let single = h2.get(format!("{}/v1/me", gw.url)).send().await.unwrap();
    expect_problem(single, 401, "unauthenticated").await;

    // HTTP/1.1 through hyper (/v1/me), and the lean stream path (/v1/stream), which reads
    // the request head itself.
    for path in ["/v1/me", "/v1/stream"] {
        for (head, status, slug) in [
            (
                format!(
                    "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer a\r\nauthorization: Bearer b\r\nconnection: close\r\n\r\n"
                ),
                "401",
                "ambiguous-credentials",
            ),
            (
                format!(
                    "GET {path} HTTP/1.1\r\nhost: localhost\r\nhost: elsewhere.example\r\nconnection: close\r\n\r\n"
                ),
                "400",
                "ambiguous-host",
            ),
        ] {
            let mut tls = gw.raw_tls().await;
            tls.write_all(head.as_bytes()).await.unwrap();
            let text = read_all(tls).await;
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "{path}: {text}"
            );
            assert!(
                text.to_ascii_lowercase()
                    .contains("content-type: application/problem+json"),
                "{text}"
            );
            assert!(text.contains(&format!("problem:{slug}")), "{path}: {text}");
        }
    }
}

/// What hyper answers on its own (a head it cannot parse, one too large, on the first or a
/// later request of a connection) and a head that never arrives are problem documents
/// too.
#[tokio::test]
async fn malformed_oversized_and_slow_requests_get_problem_documents() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            env: vec![("ICBT_SERVER__HANDSHAKE_TIMEOUT_MS".into(), "1500".into())],
            ..Default::default()
        },
    )
    .await;
    let big = format!("x-big: {}\r\n", "a".repeat(70_000));
    // Over what hyper's buffers hold, so hyper itself refuses it.
    let bigger = format!("x-big: {}\r\n", "a".repeat(200_000));
    // Between the limit and hyper's buffer on a later request, which hyper alone let
    // through (hyper's buffer limit is checked only while a head is incomplete).
    let later = format!("x-big: {}\r\n", "a".repeat(100_000));
    let cases: [(String, &str, &str); 6] = [
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\n{bigger}\r\n"),
            "431",
            "request-head-too-large",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nhost: localhost\r\n{later}\r\n"),
            "431",
            "request-head-too-large",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\n{big}\r\n"),
            "431",
            "request-head-too-large",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nhost: localhost\r\n{bigger}\r\n"),
            "431",
            "request-head-too-large",
        ),
        ("GARBAGE\r\n\r\n".to_owned(), "400", "malformed-request"),
        (
            "GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nhost localhost\r\n\r\n".to_owned(),
            "400",
            "malformed-request",
        ),
    ];
    for (request, status, slug) in cases {
        let mut tls = gw.raw_tls().await;
        // The server may stop reading once it has answered; a failed write is fine.
        let _ = tls.write_all(request.as_bytes()).await;
        let text = read_all(tls).await;
        let answer = text.rsplit("HTTP/1.1 ").next().unwrap();
        assert!(
            answer.starts_with(&format!("{status} ")),
            "{slug}: {text:.300}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            problem["type"],
            format!("urn:icbt-gateway:problem:{slug}"),
            "{body}"
        );
    }

    // On HTTP/2 too: a header list over the limit is a problem document, and one over
    // HTTP/2's usual 16 KiB but within the limit is served.
    let mut tls = gw.tls_config();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let h2 = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    for (size, status) in [(20_000, 200), (70_000, 431)] {
        let response = h2
            .get(format!("{}/healthz", gw.url))
            .header("x-big", "a".repeat(size))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), status, "{size}");
        if status == 431 {
            icbt_e2e::expect_problem(response, 431, "request-head-too-large").await;
        }
    }

    // A connection that never finishes its first head: 408, then closed.
    let mut tls = gw.raw_tls().await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    let text = read_all(tls).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("problem:request-head-timeout"), "{text}");
}

/// Accepted sockets use TCP keepalive, so a client that vanished without closing (a phone
/// off the network) is found even on an idle event stream: the kernel's own view of the
/// gateway's side of the connection shows the keepalive timer.
#[tokio::test]
async fn accepted_connections_use_tcp_keepalive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(Backend::Sqlite).await;
    let port = gw.url.rsplit(':').next().unwrap().to_owned();
    let mut tls = gw.raw_tls().await;
    // One request answered, and the connection left open and idle.
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // `ss` shows the timer that runs: retransmission while data is unacknowledged,
    // keepalive once the connection is idle.
    let sport = format!(":{port}");
    let mut text = String::new();
    for _ in 0..30 {
        let output = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", "sport", "=", &sport])
            .output()
            .expect("ss (iproute2) lists the gateway's sockets");
        text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.contains("timer:(keepalive") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("timer:(keepalive"), "{text}");
}

/// One client address gets a bounded number of TLS handshakes under way and of
/// connections that have not yet authenticated; further connections are closed before
/// TLS, and a connection that authenticates no longer counts.
#[tokio::test]
async fn handshakes_and_unauthenticated_connections_are_capped_per_address() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idps = icbt_e2e::idp::IdentityProviders::shared();
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![
                ("ICBT_SERVER__HANDSHAKES_PER_ADDRESS".into(), "3".into()),
                (
                    "ICBT_SERVER__UNAUTHENTICATED_PER_ADDRESS".into(),
                    "5".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await;
    let address = gw.url.trim_start_matches("https://").to_owned();
    // Whether a new connection is closed by the gateway before anything is sent.
    let closed_at_once = || async {
        let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let tls = || async {
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(gw.tls_config()))
            .connect(name, tcp)
            .await
    };

    // Three connections that never start TLS hold the address's handshakes.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_at_once().await, "a fourth handshake is refused");
    drop(silent);

    // Five idle TLS connections are the address's unauthenticated share.
    let mut idle = Vec::new();
    // Attempts refused while the silent ones are still being let go; each is a
    // refusal of its own in the log.
    let mut early_refusals = 0;
    for _ in 0..50 {
        if let Ok(connection) = tls().await {
            idle.push(connection);
            if idle.len() == 5 {
                break;
            }
        } else {
            early_refusals += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(idle.len(), 5);
    assert!(
        tls().await.is_err(),
        "a sixth unauthenticated connection is refused"
    );

    // One of them authenticates: its place is free again.
    let patient = icbt_e2e::idp::Actor::patient(icbt_e2e::SYNTHETIC_FNR).await;
    let request = format!(
        "GET /v1/me HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\r\n",
        patient.token.access_token
    );
    let connection = &mut idle[0];
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = connection.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(
        tls().await.is_ok(),
        "the authenticated connection no longer counts"
    );
    let logs = gw.logs();
    let refusals: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("too_many_connections_from_address"))
        .collect();
    assert_eq!(
        refusals.len(),
        2 + early_refusals,
        "every refusal is logged, once"
    );
    assert!(
        refusals.iter().all(|l| !l.contains("127.0.0.1")),
        "without the client's address: {refusals:?}"
    );
}

/// A request refused before its body is read (here: no credentials) still gets its
/// answer while the client is sending the body: the gateway reads on and discards the
/// rest before it closes, rather than closing with unread data, which makes the kernel
/// reset the connection and lose the answer on its way.
#[tokio::test]
async fn an_answer_given_before_the_body_is_read_is_not_lost_to_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(Backend::Sqlite).await;
    for _ in 0..3 {
        let mut tls = gw.raw_tls().await;
        let head = format!(
            "PUT /v1/episodes/{}/messages/{} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 400000\r\n\r\n",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&vec![b' '; 200_000]).await.unwrap();
        // The gateway answers 401 and is done with the connection; the client is still
        // sending its body.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = tls.write_all(&vec![b' '; 100_000]).await;
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut answer))
            .await
            .expect("an answer in time")
            .expect("the answer, not a reset");
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
    }
}
