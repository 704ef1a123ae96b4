#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise
//! Dev mode's sandbox, from outside: the demo story on each backend, the dev identity
//! providers' answers to bad input, and their absence outside the sandbox and in
//! production.

use std::path::Path;

use icbt_e2e::{
    Backend, Gateway, GatewayOptions, assert_one_line_failure, backends, expect_problem, run_cli,
};

async fn sandbox(backend: Backend) -> Gateway {
    Gateway::start_with(
        backend,
        GatewayOptions {
            sandbox: true,
            ..Default::default()
        },
    )
    .await
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

#[tokio::test]
async fn the_demo_plays_the_whole_story_on_each_backend_and_can_be_played_again() {
    for backend in backends() {
        let gateway = sandbox(backend).await;
        let out = gateway.dev_command(&["demo"]);
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend:?}: {transcript}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gateway.logs().join("\n")
        );
        for expected in [
            "created episode",
            "the numbers match",
            "opened it: \"Hei!",
            "got an alert from the clinic's journal",
            "does not see the alert",
            "has read up to #2",
            "summary-record/DocumentReference-",
            "(QuestionnaireResponse, Observation, Task)",
            "audit log verified",
            "Health professional (HPR 9144900)",
            "every step did what it should",
        ] {
            assert!(
                transcript.contains(expected),
                "{backend:?}: `{expected}` missing:\n{transcript}"
            );
        }
        let sink = gateway.data_dir.path().join("journal-sink");
        let written = files_in(&sink.join("epj")) + files_in(&sink.join("summary-record"));
        assert!(written >= 6, "{backend:?}: {written} bundles in the sink");

        // A second run is a new episode with the same people and devices.
        let again = gateway.dev_command(&["demo"]);
        assert!(
            again.status.success(),
            "{backend:?}: {}",
            String::from_utf8_lossy(&again.stdout)
        );
        let after = files_in(&sink.join("epj")) + files_in(&sink.join("summary-record"));
        assert!(
            after > written,
            "{backend:?}: the second episode wrote nothing"
        );

        // The people's national id numbers never reach the gateway's log.
        let people =
            std::fs::read_to_string(gateway.data_dir.path().join("dev/people.toml")).unwrap();
        let logs = gateway.logs().join("\n");
        for line in people.lines().filter(|l| l.starts_with("pid = ")) {
            let pid = line.trim_start_matches("pid = ").trim_matches('"');
            assert!(
                !logs.contains(pid),
                "{backend:?}: a national id number is in the log"
            );
            assert!(
                !transcript.contains(pid),
                "{backend:?}: the transcript shows a national id number"
            );
        }
    }
}

#[tokio::test]
async fn dev_token_prints_what_the_icbt_command_line_reads_and_refuses_unknown_names() {
    let gateway = sandbox(Backend::Sqlite).await;
    let out = gateway.dev_command(&["token", "--as", "terje"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        settings
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} missing: {settings}"))
            .to_owned()
    };
    let dpop = value("ICBT_DPOP_KEY_FILE");
    assert!(
        Path::new(&dpop).is_file(),
        "the DPoP key is written: {dpop}"
    );
    assert!(Path::new(&value("ICBT_TOKEN_FILE")).is_file());

    // The icbt command line takes those settings as they are.
    let client = icbt_e2e::client_binary();
    let keys = gateway.data_dir.path().join("terje.json");
    let mut env: Vec<(String, String)> = [
        "ICBT_GATEWAY",
        "ICBT_CA_FILE",
        "ICBT_LOG_KEYS",
        "ICBT_TOKEN_FILE",
        "ICBT_DPOP_KEY_FILE",
    ]
    .iter()
    .map(|n| ((*n).to_owned(), value(n)))
    .collect();
    env.push(("NO_PROXY".into(), "*".into()));
    for args in [
        vec!["keygen", "--keys", keys.to_str().unwrap()],
        vec!["publish", "--keys", keys.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&client)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "icbt {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A patient's token is a bearer token for curl.
    let raw = gateway.dev_command(&["token", "--as", "kari", "--raw"]);
    let token = String::from_utf8_lossy(&raw.stdout).trim().to_owned();
    let me: serde_json::Value = gateway
        .client()
        .get(format!("{}/v1/me", gateway.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["kind"], "patient", "{me}");
    assert_eq!(me["issuer"], "dev-idporten");

    let unknown = gateway.dev_command(&["token", "--as", "nobody"]);
    assert_one_line_failure(&unknown, &["nobody", "kari"]);
}

#[tokio::test]
async fn dev_providers_answer_bad_input_with_problems_never_a_500() {
    let gateway = sandbox(Backend::Sqlite).await;
    let http = gateway.client();
    let base = format!("{}/dev/idp", gateway.url);
    let form = "application/x-www-form-urlencoded";
    let post = |path: &str, body: &str, content_type: &str| {
        http.post(format!("{base}/{path}"))
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    let secret = std::fs::read_to_string(gateway.data_dir.path().join("dev/people.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("client_secret = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let cases = [
        (
            post("helseid/token", "grant_type=client_credentials&client_id=icbt-platform-dev&client_secret=wrong-secret-wrong", form),
            401,
            "oauth-invalid-client",
        ),
        (post("helseid/token", "grant_type=client_credentials", form), 401, "oauth-invalid-client"),
        (
            post("helseid/token", &format!("grant_type=client_credentials&client_id=icbt-platform-dev&client_secret={secret}"), form),
            400,
            "oauth-invalid-dpop-proof",
        ),
        (
            post("helseid/token", &format!("grant_type=password&client_id=icbt-platform-dev&client_secret={secret}"), form),
            400,
            "oauth-unsupported-grant-type",
        ),
        (
            post("helseid/token", &format!("grant_type=client_credentials&client_id=icbt-platform-dev&client_secret={secret}"), form)
                .header("dpop", "not.a.proof"),
            400,
            "oauth-invalid-dpop-proof",
        ),
        (
            post("idporten/token", &format!("grant_type=authorization_code&code=made-up&redirect_uri=x&code_verifier=y&client_id=icbt-platform-dev&client_secret={secret}"), form),
            400,
            "oauth-invalid-grant",
        ),
        (post("helseid/token", "a=1&a=2", form), 400, "oauth-invalid-request"),
        (post("helseid/token", "{}", "application/json"), 400, "oauth-invalid-request"),
        (post("helseid/token", "%ff%fe=%00", form), 401, "oauth-invalid-client"),
        (post("helseid/par", "response_type=code", form), 401, "oauth-invalid-client"),
        (post("helseid/authorize", "request_uri=urn:x&person=nobody", form), 400, "oauth-invalid-request"),
        (post("helseid/authorize", "request_uri=urn:x&person=kari", form), 400, "oauth-invalid-request"),
        (http.get(format!("{base}/helseid/authorize?client_id=someone&request_uri=x")), 400, "oauth-invalid-request"),
        (http.get(format!("{base}/elsewhere/jwks")), 404, "not-found"),
    ];
    for (request, status, slug) in cases {
        let response = request.send().await.unwrap();
        let body = expect_problem(response, status, slug).await;
        if slug.starts_with("oauth-") {
            assert!(
                body["error"].is_string() && body["error_description"].is_string(),
                "{body}"
            );
        }
    }
    // The people file's numbers are synthetic; a real one is refused with a problem.
    let people = gateway.data_dir.path().join("dev/people.toml");
    let text = std::fs::read_to_string(&people).unwrap();
    std::fs::write(
        &people,
        text.replace("role = \"patient\"", "role = \"nurse\""),
    )
    .unwrap();
    let response = http
        .post(format!("{base}/helseid/authorize"))
        .header("content-type", form)
        .body("request_uri=urn:x&person=terje")
        .send()
        .await
        .unwrap();
    expect_problem(response, 503, "dev-people-file-invalid").await;
}

#[tokio::test]
async fn without_the_sandbox_and_in_production_there_are_no_dev_endpoints() {
    let plain = Gateway::start(Backend::Sqlite).await;
    let response = plain
        .client()
        .get(format!(
            "{}/dev/idp/helseid/.well-known/openid-configuration",
            plain.url
        ))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404, "not-found").await;

    // Production, with the certificate a dev start generated.
    let tls = plain.data_dir.path().join("dev-tls");
    let options = GatewayOptions {
        production: true,
        config_toml: Some(format!(
            "[server]\npublic_url = \"https://localhost\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.join("cert.pem").display(),
            tls.join("key.pem").display()
        )),
        ..Default::default()
    };
    let production = Gateway::start_with(Backend::Sqlite, options).await;
    let client =
        icbt_e2e::client_trusting(&plain.certificate_pem(), icbt_e2e::ClientTls::default());
    for path in [
        "/dev/idp/helseid/jwks",
        "/dev/idp/idporten/token",
        "/dev/idp/helseid/authorize",
    ] {
        let response = client
            .get(format!("{}{path}", production.url))
            .send()
            .await
            .unwrap();
        expect_problem(response, 404, "not-found").await;
    }
    assert!(
        !production.data_dir.path().join("dev").exists(),
        "production writes no dev files"
    );

    // A production configuration that names a dev issuer does not start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[auth.issuers]]\nname = \"h\"\nkind = \"helseid\"\nissuer = \"https://localhost:8443/dev/idp/helseid\"\naudience = \"icbt-gateway-dev\"\n",
            tls.join("cert.pem").display(),
            tls.join("key.pem").display()
        ),
    )
    .unwrap();
    let out = run_cli(
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_one_line_failure(
        &out,
        &["auth.issuers.issuer", "dev identity provider", "fix:"],
    );
}

#[tokio::test]
async fn a_browser_logs_in_through_the_dev_provider_and_gets_a_session() {
    let gateway = sandbox(Backend::Sqlite).await;
    let http = gateway.client();
    let origin = gateway.origin();
    // The page lists the patients, and choosing one (here by login_hint) ends at the
    // callback with a session cookie.
    let mut url = format!(
        "{}/auth/login/dev-idporten?return_to=/v1/me&login_hint=kari",
        gateway.url
    );
    let mut cookie = None;
    for _ in 0..4 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 303, "{url}");
        if let Some(c) = response.headers().get("set-cookie") {
            cookie = Some(c.to_str().unwrap().split(';').next().unwrap().to_owned());
            break;
        }
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        url = location.replace(&origin, &gateway.url);
    }
    let cookie = cookie.expect("a session cookie");
    let me: serde_json::Value = http
        .get(format!("{}/v1/me", gateway.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["kind"], "patient", "{me}");
    assert_eq!(me["issuer"], "dev-idporten");
}
