//! Authentication against real OpenID providers (npm oidc-provider shaped like ID-porten
//! and HelseID): real tokens are accepted; each way a token or proof can be wrong is
//! refused with the right status, problem type and challenge, and the log names the
//! reason without the token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::client::{OidcClient, TokenResponse};
use icbt_auth::dpop::DpopKey;
use icbt_auth::now_secs;
use icbt_e2e::idp::{CLINIC_ORG, IdentityProviders, Idp, clinician_account, patient_account};
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, backends, expect_problem};
use serde_json::{Value, json};

const HPR: &str = "565501872";

async fn gateway(backend: Backend) -> Gateway {
    let idps = IdentityProviders::shared();
    Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            ..Default::default()
        },
    )
    .await
}

fn me_url(gw: &Gateway) -> String {
    format!("{}/v1/me", gw.url)
}

/// GET /v1/me with an `Authorization` value and DPoP proofs.
async fn me_with(gw: &Gateway, authorization: &str, proofs: &[String]) -> reqwest::Response {
    let mut request = gw
        .client()
        .get(me_url(gw))
        .header("authorization", authorization);
    for proof in proofs {
        request = request.header("dpop", proof);
    }
    request.send().await.unwrap()
}

/// GET /v1/me as the client would: DPoP with a fresh proof when it holds a key.
async fn me(gw: &Gateway, token: &TokenResponse, client: &OidcClient) -> reqwest::Response {
    match client.dpop_key() {
        Some(key) => {
            let proof = key.proof(
                "GET",
                &me_url(gw),
                Some(&token.access_token),
                None,
                now_secs(),
            );
            me_with(gw, &format!("DPoP {}", token.access_token), &[proof]).await
        }
        None => me_with(gw, &format!("Bearer {}", token.access_token), &[]).await,
    }
}

/// Asserts a refusal: status, problem type, the challenge's error, and a log line with
/// the reason code that does not contain the token.
async fn refused(
    gw: &Gateway,
    response: reqwest::Response,
    status: u16,
    slug: &str,
    challenge_error: &str,
    reason: &str,
    token: &str,
) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    expect_problem(response, status, slug).await;
    assert!(
        challenge.contains(&format!("error=\"{challenge_error}\"")),
        "challenge: {challenge}"
    );
    let refused = gw
        .logged(|l| {
            l.contains("authentication refused") && l.contains(&format!("\"reason\":\"{reason}\""))
        })
        .await;
    let logs = gw.logs();
    assert!(refused, "no log line with reason {reason}: {logs:#?}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        signature.len() < 8 || logs.iter().all(|l| !l.contains(signature)),
        "a log line holds the token"
    );
}

fn patient_claims(idps: &IdentityProviders) -> Value {
    let now = now_secs();
    json!({
        "iss": idps.idporten.issuer, "aud": Idp::Idporten.api_resource(), "scope": "openid icbt:messages",
        "exp": now + 120, "iat": now, "jti": "forged-1", "client_id": "icbt-platform",
        "pid": SYNTHETIC_FNR, "acr": "idporten-loa-high",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

async fn forged_is_refused(claims: Value, header: Value, reason: &str) {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let token = idps.forge(Idp::Idporten, &header, &claims);
    let response = me_with(&gw, &format!("Bearer {token}"), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        reason,
        &token,
    )
    .await;
}

#[tokio::test]
async fn real_tokens_yield_patient_clinician_and_system_principals() {
    let idps = IdentityProviders::shared();
    for backend in backends() {
        let gw = gateway(backend).await;
        let (token, client) = idps.system_token("icbt-platform", true).await;
        assert_eq!(token.token_type, "DPoP");
        let response = me(&gw, &token, &client).await;
        assert_eq!(response.status(), 200, "{backend:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["kind"], "system");
        assert_eq!(body["client_id"], "icbt-platform");
        assert_eq!(body["organisations"], json!([CLINIC_ORG]));
        assert_eq!(body["dpop_bound"], true);

        let (token, client) = idps
            .login(
                Idp::Idporten,
                &patient_account(SYNTHETIC_FNR, "idporten-loa-high"),
                "openid icbt:messages",
                false,
            )
            .await;
        let response = me(&gw, &token, &client).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["kind"], "patient");
        assert_eq!(body["acr"], "idporten-loa-high");
        assert!(
            !body.to_string().contains(SYNTHETIC_FNR),
            "the national id number is not echoed: {body}"
        );

        let (token, client) = idps
            .login(
                Idp::Helseid,
                &clinician_account(SYNTHETIC_FNR, Some(HPR), 4),
                "openid nhn:icbt-gateway/api",
                true,
            )
            .await;
        let response = me(&gw, &token, &client).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["kind"], "clinician");
        assert_eq!(body["hpr_number"], HPR);
        assert_eq!(body["security_level"], 4);
        assert!(
            gw.logs()
                .iter()
                .all(|l| !l.contains(&token.access_token[token.access_token.len() - 20..]))
        );
    }
}

#[tokio::test]
async fn no_token_gets_both_challenges() {
    let gw = gateway(Backend::Sqlite).await;
    let response = gw.client().get(me_url(&gw)).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    expect_problem(response, 401, "unauthenticated").await;
    assert!(
        challenge.starts_with("Bearer realm=\"icbt-gateway\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("DPoP realm=\"icbt-gateway\", algs=\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn expired() {
    let idps = IdentityProviders::shared();
    let now = now_secs();
    let claims = with(
        with(patient_claims(idps), "exp", json!(now - 120)),
        "iat",
        json!(now - 720),
    );
    forged_is_refused(claims, json!({}), "expired").await;
}

#[tokio::test]
async fn not_yet_valid() {
    let idps = IdentityProviders::shared();
    forged_is_refused(
        with(patient_claims(idps), "nbf", json!(now_secs() + 600)),
        json!({}),
        "not_yet_valid",
    )
    .await;
}

#[tokio::test]
async fn wrong_issuer() {
    let idps = IdentityProviders::shared();
    forged_is_refused(
        with(patient_claims(idps), "iss", json!("https://127.0.0.1:1")),
        json!({}),
        "unknown_issuer",
    )
    .await;
}

#[tokio::test]
async fn no_audience() {
    let idps = IdentityProviders::shared();
    forged_is_refused(
        with(patient_claims(idps), "aud", Value::Null),
        json!({}),
        "audience_missing",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid() {
    let idps = IdentityProviders::shared();
    forged_is_refused(
        patient_claims(idps),
        json!({ "kid": "not-a-key-of-the-issuer" }),
        "unknown_kid",
    )
    .await;
}

#[tokio::test]
async fn wrong_audience() {
    // A real token, from the real provider, for another API (the EPJ).
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let client = idps.oauth_client(Idp::Helseid, "icbt-gateway", false);
    let token = client
        .client_credentials("nhn:epj/write", Some("nhn:epj"))
        .await
        .unwrap();
    let response = me_with(&gw, &format!("Bearer {}", token.access_token), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        "audience_mismatch",
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn alg_none() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let token = format!(
        "{header}.{}.",
        URL_SAFE_NO_PAD.encode(patient_claims(idps).to_string())
    );
    let response = me_with(&gw, &format!("Bearer {token}"), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        "algorithm_not_allowed",
        &token,
    )
    .await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let jwk = &idps.idporten.signing_jwk;
    let public =
        json!({ "kty": jwk["kty"], "n": jwk["n"], "e": jwk["e"], "kid": jwk["kid"] }).to_string();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD
            .encode(json!({ "alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"] }).to_string()),
        URL_SAFE_NO_PAD.encode(patient_claims(idps).to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public.as_bytes());
    let token = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes()))
    );
    let response = me_with(&gw, &format!("Bearer {token}"), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        "algorithm_not_allowed",
        &token,
    )
    .await;
}

#[tokio::test]
async fn tampered_signature() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let (token, _) = idps
        .login(
            Idp::Idporten,
            &patient_account(SYNTHETIC_FNR, "idporten-loa-high"),
            "openid icbt:messages",
            false,
        )
        .await;
    let (input, signature) = token.access_token.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
    raw[10] ^= 0x01;
    let tampered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw));
    let response = me_with(&gw, &format!("Bearer {tampered}"), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        "bad_signature",
        &tampered,
    )
    .await;
}

#[tokio::test]
async fn loa_substantial() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let account = patient_account(SYNTHETIC_FNR, "idporten-loa-substantial");
    let (token, client) = idps
        .login(Idp::Idporten, &account, "openid icbt:messages", false)
        .await;
    let response = me(&gw, &token, &client).await;
    refused(
        &gw,
        response,
        403,
        "acr-too-low",
        "insufficient_user_authentication",
        "acr_too_low",
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn security_level_3() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let account = clinician_account(SYNTHETIC_FNR, Some(HPR), 3);
    let (token, client) = idps
        .login(Idp::Helseid, &account, "openid nhn:icbt-gateway/api", true)
        .await;
    let response = me(&gw, &token, &client).await;
    let reason = "security_level_too_low";
    refused(
        &gw,
        response,
        403,
        "security-level-too-low",
        "insufficient_user_authentication",
        reason,
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn no_hpr_number() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let account = clinician_account(SYNTHETIC_FNR, None, 4);
    let (token, client) = idps
        .login(Idp::Helseid, &account, "openid nhn:icbt-gateway/api", true)
        .await;
    let response = me(&gw, &token, &client).await;
    let reason = "hpr_number_missing";
    refused(
        &gw,
        response,
        403,
        "hpr-number-missing",
        "insufficient_user_authentication",
        reason,
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn missing_api_scope() {
    let idps = IdentityProviders::shared();
    let gw = gateway(Backend::Sqlite).await;
    let (token, client) = idps
        .login(
            Idp::Idporten,
            &patient_account(SYNTHETIC_FNR, "idporten-loa-high"),
            "openid",
            false,
        )
        .await;
    let response = me(&gw, &token, &client).await;
    refused(
        &gw,
        response,
        403,
        "insufficient-scope",
        "insufficient_scope",
        "insufficient_scope",
        &token.access_token,
    )
    .await;
}

/// A DPoP-bound system token and its client.
async fn bound() -> (TokenResponse, OidcClient) {
    IdentityProviders::shared()
        .system_token("icbt-platform", true)
        .await
}

async fn proof_is_refused(
    proof: impl FnOnce(&Gateway, &TokenResponse, &DpopKey) -> Vec<String>,
    reason: &str,
) {
    let gw = gateway(Backend::Sqlite).await;
    let (token, client) = bound().await;
    let proofs = proof(&gw, &token, client.dpop_key().unwrap());
    let response = me_with(&gw, &format!("DPoP {}", token.access_token), &proofs).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_dpop_proof",
        reason,
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn dpop_proof_missing() {
    proof_is_refused(|_, _, _| vec![], "dpop_proof_missing").await;
}

#[tokio::test]
async fn dpop_wrong_htm() {
    proof_is_refused(
        |gw, t, key| vec![key.proof("POST", &me_url(gw), Some(&t.access_token), None, now_secs())],
        "dpop_proof_invalid",
    )
    .await;
}

#[tokio::test]
async fn dpop_wrong_htu() {
    proof_is_refused(
        |gw, t, key| {
            vec![key.proof(
                "GET",
                &format!("{}/v1/other", gw.url),
                Some(&t.access_token),
                None,
                now_secs(),
            )]
        },
        "dpop_proof_invalid",
    )
    .await;
}

#[tokio::test]
async fn dpop_stale_iat() {
    proof_is_refused(
        |gw, t, key| {
            vec![key.proof(
                "GET",
                &me_url(gw),
                Some(&t.access_token),
                None,
                now_secs() - 600,
            )]
        },
        "dpop_proof_invalid",
    )
    .await;
}

#[tokio::test]
async fn dpop_wrong_ath() {
    proof_is_refused(
        |gw, _, key| {
            vec![key.proof(
                "GET",
                &me_url(gw),
                Some("another.access.token"),
                None,
                now_secs(),
            )]
        },
        "dpop_proof_invalid",
    )
    .await;
}

#[tokio::test]
async fn dpop_key_not_matching_cnf_jkt() {
    let other = DpopKey::generate().unwrap();
    proof_is_refused(
        |gw, t, _| vec![other.proof("GET", &me_url(gw), Some(&t.access_token), None, now_secs())],
        "dpop_proof_invalid",
    )
    .await;
}

#[tokio::test]
async fn dpop_replayed_jti() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let (token, client) = bound().await;
        let proof = client.dpop_key().unwrap().proof(
            "GET",
            &me_url(&gw),
            Some(&token.access_token),
            None,
            now_secs(),
        );
        let auth = format!("DPoP {}", token.access_token);
        assert_eq!(
            me_with(&gw, &auth, std::slice::from_ref(&proof))
                .await
                .status(),
            200,
            "{backend:?}"
        );
        let response = me_with(&gw, &auth, &[proof]).await;
        refused(
            &gw,
            response,
            401,
            "unauthenticated",
            "invalid_dpop_proof",
            "dpop_replay",
            &token.access_token,
        )
        .await;
    }
}

#[tokio::test]
async fn dpop_bound_token_sent_as_bearer() {
    let gw = gateway(Backend::Sqlite).await;
    let (token, _) = bound().await;
    let response = me_with(&gw, &format!("Bearer {}", token.access_token), &[]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_token",
        "dpop_bound_token_as_bearer",
        &token.access_token,
    )
    .await;
}

#[tokio::test]
async fn server_nonce_is_demanded_then_accepted() {
    let idps = IdentityProviders::shared();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("nonce-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-test-only").unwrap();
    let config = format!(
        "{}\n[auth.dpop]\nrequire_nonce = true\nnonce_secret = {{ file = \"{}\" }}\n",
        idps.gateway_config(),
        secret.display()
    );
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(config),
            ..Default::default()
        },
    )
    .await;
    let (token, client) = bound().await;
    let key = client.dpop_key().unwrap();
    let auth = format!("DPoP {}", token.access_token);
    let first = me_with(
        &gw,
        &auth,
        &[key.proof(
            "GET",
            &me_url(&gw),
            Some(&token.access_token),
            None,
            now_secs(),
        )],
    )
    .await;
    let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let challenge = first.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    expect_problem(first, 401, "use-dpop-nonce").await;
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("error=\"use_dpop_nonce\""),
        "{challenge}"
    );
    let second = me_with(
        &gw,
        &auth,
        &[key.proof(
            "GET",
            &me_url(&gw),
            Some(&token.access_token),
            Some(&nonce),
            now_secs(),
        )],
    )
    .await;
    assert_eq!(second.status(), 200);
}

/// With `server.public_url` (required in production) a DPoP proof must name that origin:
/// one naming the address the client connected to, which its own `Host` header agrees
/// with, is refused, so a client cannot steer the check with the `Host` it sends.
#[tokio::test]
async fn dpop_htu_is_checked_against_the_public_origin_only() {
    let idps = IdentityProviders::shared();
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![(
                "ICBT_SERVER__PUBLIC_URL".into(),
                "https://gateway.example.no".into(),
            )],
            ..Default::default()
        },
    )
    .await;
    let (token, client) = bound().await;
    let key = client.dpop_key().unwrap();
    let authorization = format!("DPoP {}", token.access_token);
    let by_host = key.proof(
        "GET",
        &me_url(&gw),
        Some(&token.access_token),
        None,
        now_secs(),
    );
    let response = me_with(&gw, &authorization, &[by_host]).await;
    refused(
        &gw,
        response,
        401,
        "unauthenticated",
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        &token.access_token,
    )
    .await;
    let by_origin = key.proof(
        "GET",
        "https://gateway.example.no/v1/me",
        Some(&token.access_token),
        None,
        now_secs(),
    );
    let response = me_with(&gw, &authorization, &[by_origin]).await;
    assert_eq!(response.status(), 200);
}
