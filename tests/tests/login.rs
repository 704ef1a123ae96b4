//! The hosted login (backend-for-frontend) against the real ID-porten-like provider:
//! PAR + PKCE + state + nonce, a database-backed HttpOnly session cookie, logout through
//! the issuer's end-session endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::idp::{IdentityProviders, Idp, patient_account};
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, backends, expect_problem};
use serde_json::Value;

async fn gateway(backend: Backend) -> Gateway {
    let idps = IdentityProviders::shared();
    let config = format!(
        "{}{}",
        idps.gateway_config(),
        idps.login_config(Idp::Idporten)
    );
    Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(config),
            ..Default::default()
        },
    )
    .await
}

/// Runs the browser part of a login for `acr`; returns the gateway callback URL.
async fn through_the_provider(gw: &Gateway, acr: &str, return_to: &str) -> String {
    let idps = IdentityProviders::shared();
    let hint = URL_SAFE_NO_PAD.encode(patient_account(SYNTHETIC_FNR, acr).to_string());
    let start = gw
        .client()
        .get(format!("{}/auth/login/idporten", gw.url))
        .query(&[("return_to", return_to), ("login_hint", hint.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 303);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&idps.idporten.issuer), "{location}");
    assert!(
        location.contains("request_uri="),
        "pushed, not front-channel: {location}"
    );
    let back = idps
        .follow_to_redirect_uri(&location, "https://gateway.test/auth/callback")
        .await;
    let query = back.split_once('?').unwrap().1;
    format!("{}/auth/callback?{query}", gw.url)
}

fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_session_and_logout() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let callback = through_the_provider(&gw, "idporten-loa-high", "/inbox").await;
        let done = gw.client().get(&callback).send().await.unwrap();
        assert_eq!(done.status(), 303, "{backend:?}: {:?}", gw.logs());
        assert_eq!(done.headers()["location"], "/inbox");
        let cookie = session_cookie(&done);
        assert!(cookie.starts_with("__Host-icbt-session="));

        let me = gw
            .client()
            .get(format!("{}/v1/me", gw.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["kind"], "patient");
        assert_eq!(me["acr"], "idporten-loa-high");

        // The callback is single use.
        let replay = gw.client().get(&callback).send().await.unwrap();
        expect_problem(replay, 400, "login-state-invalid").await;

        let logout = gw
            .client()
            .post(format!("{}/auth/logout", gw.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(logout.status(), 303);
        let to = logout.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            logout.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let idps = IdentityProviders::shared();
        assert!(to.starts_with(&idps.idporten.issuer), "{to}");
        assert!(
            to.contains("id_token_hint=")
                && to.contains("post_logout_redirect_uri=https%3A%2F%2Fplatform.test%2F"),
            "{to}"
        );

        let after = gw
            .client()
            .get(format!("{}/v1/me", gw.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        expect_problem(after, 401, "unauthenticated").await;
        assert!(
            gw.logged(|l| l.contains("\"reason\":\"session_invalid\""))
                .await
        );
    }
}

/// The status of `GET /v1/me` with `cookie`.
async fn me_status(gw: &Gateway, cookie: &str) -> u16 {
    gw.client()
        .get(format!("{}/v1/me", gw.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_logout_and_its_access_record_commit_together() {
    use sqlx::Connection as _;
    for backend in backends() {
        let gw = gateway(backend).await;
        let callback = through_the_provider(&gw, "idporten-loa-high", "/inbox").await;
        let done = gw.client().get(&callback).send().await.unwrap();
        let cookie = session_cookie(&done);
        assert_eq!(me_status(&gw, &cookie).await, 200);
        // The access record of a logout cannot be written (the database refuses it)...
        let mut db = icbt_e2e::connect_database(gw.data_dir.path(), gw.database()).await;
        let refuse: &[&str] = match backend {
            Backend::Sqlite => &[
                "CREATE TRIGGER refuse_logout BEFORE INSERT ON audit_records \
                 WHEN NEW.action = 'logout' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            ],
            Backend::Postgres => &[
                "CREATE FUNCTION refuse_logout() RETURNS trigger AS $$ BEGIN \
                 IF NEW.action = 'logout' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_logout BEFORE INSERT ON audit_records \
                 FOR EACH ROW EXECUTE FUNCTION refuse_logout()",
            ],
        };
        for sql in refuse {
            sqlx::query(sqlx::AssertSqlSafe(*sql))
                .execute(&mut db)
                .await
                .unwrap();
        }
        let logout = || async {
            gw.client()
                .post(format!("{}/auth/logout", gw.url))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
        };
        let failed = logout().await;
        assert!(
            failed.status().is_server_error(),
            "{backend:?}: {}",
            failed.status()
        );
        // ...so the session is not ended either: no logout goes unrecorded.
        assert_eq!(me_status(&gw, &cookie).await, 200, "{backend:?}");
        let lift = match backend {
            Backend::Sqlite => "DROP TRIGGER refuse_logout",
            Backend::Postgres => "DROP TRIGGER refuse_logout ON audit_records",
        };
        sqlx::query(lift).execute(&mut db).await.unwrap();
        assert_eq!(logout().await.status(), 303);
        assert_eq!(me_status(&gw, &cookie).await, 401);
        let (logouts,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM audit_records WHERE action = 'logout'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(logouts, 1, "{backend:?}");
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn unknown_state_is_refused() {
    let gw = gateway(Backend::Sqlite).await;
    let response = gw
        .client()
        .get(format!("{}/auth/callback?code=x&state=forged", gw.url))
        .send()
        .await
        .unwrap();
    expect_problem(response, 400, "login-state-invalid").await;
    let response = gw
        .client()
        .get(format!("{}/auth/callback?code=x", gw.url))
        .send()
        .await
        .unwrap();
    expect_problem(response, 400, "login-state-invalid").await;
}

#[tokio::test]
async fn login_with_substantial_assurance_gets_no_session() {
    let gw = gateway(Backend::Sqlite).await;
    let callback = through_the_provider(&gw, "idporten-loa-substantial", "/").await;
    let response = gw.client().get(&callback).send().await.unwrap();
    assert!(response.headers().get("set-cookie").is_none());
    expect_problem(response, 403, "acr-too-low").await;
}

#[tokio::test]
async fn return_to_cannot_leave_the_site() {
    let gw = gateway(Backend::Sqlite).await;
    let callback = through_the_provider(&gw, "idporten-loa-high", "https://evil.example/").await;
    let response = gw.client().get(&callback).send().await.unwrap();
    assert_eq!(response.headers()["location"], "/");
}

#[tokio::test]
async fn unknown_issuer_has_no_login() {
    let gw = gateway(Backend::Sqlite).await;
    let response = gw
        .client()
        .get(format!("{}/auth/login/nowhere", gw.url))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404, "not-found").await;
}

/// A stream opened with `cookie` over the protocol `alpn` names.
async fn session_stream(gw: &Gateway, alpn: &[u8], cookie: &str) -> icbt_e2e::EventStream {
    let mut tls = gw.tls_config();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let response = http
        .get(format!("{}/v1/stream", gw.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    icbt_e2e::EventStream::new(response)
}

#[tokio::test]
async fn logging_out_ends_the_sessions_streams_and_long_polls_on_every_instance() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let callback = through_the_provider(&gw, "idporten-loa-high", "/").await;
        let done = gw.client().get(&callback).send().await.unwrap();
        let cookie = session_cookie(&done);
        let other = (backend == Backend::Postgres).then(|| gw.another_instance());

        let mut streams = vec![
            ("http/1.1", session_stream(&gw, b"http/1.1", &cookie).await),
            ("h2", session_stream(&gw, b"h2", &cookie).await),
        ];
        if let Some(other) = &other {
            streams.push((
                "another instance",
                session_stream(other, b"h2", &cookie).await,
            ));
        }
        let poll = gw
            .client()
            .get(format!("{}/v1/inbox?wait=25", gw.url))
            .header("cookie", &cookie)
            .send();
        let logout = async {
            // The long poll and streams are waiting by now.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let logout = gw
                .client()
                .post(format!("{}/auth/logout", gw.url))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(logout.status(), 303);
        };
        let (polled, ()) = tokio::join!(poll, logout);
        let page: Value = polled.unwrap().json().await.unwrap();
        assert_eq!(page["end"], "logged-out", "{backend:?}: {page}");
        for (what, mut stream) in streams {
            assert_eq!(
                stream
                    .end_reason(std::time::Duration::from_secs(10))
                    .await
                    .as_deref(),
                Some("logged-out"),
                "{backend:?} {what}"
            );
        }
    }
}
