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
