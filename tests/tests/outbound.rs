//! The gateway's own HelseID client against the real HelseID-like provider:
//! `private_key_jwt` with EC and RSA keys, configurable assertion audience, DPoP with the
//! provider's nonce, and a token cache that refreshes once for concurrent callers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use std::sync::Arc;
use std::time::Duration;

use icbt_auth::client::{ClientError, OutboundTokens};
use icbt_auth::keys::KeyCachePolicy;
use icbt_config::OutboundClientConfig;
use icbt_e2e::idp::{IdentityProviders, RSA_CLIENT, rsa_client_key_file};
use icbt_e2e::{Backend, Gateway, GatewayOptions};
use serde_json::Value;

fn policy() -> KeyCachePolicy {
    KeyCachePolicy {
        max_age: Duration::from_hours(1),
        min_refetch_interval: Duration::from_secs(1),
    }
}

fn config(
    idps: &IdentityProviders,
    client_id: &str,
    key_file: std::path::PathBuf,
    alg: &str,
    dpop: bool,
) -> OutboundClientConfig {
    OutboundClientConfig {
        issuer: idps.helseid.issuer.clone(),
        client_id: client_id.into(),
        key_file,
        key_algorithm: alg.into(),
        key_id: None,
        assertion_audience: None,
        scope: "nhn:icbt-gateway/api".into(),
        resource: Some("nhn:icbt-gateway".into()),
        dpop,
    }
}

#[tokio::test]
async fn cached_dpop_token_shared_by_concurrent_callers_reaches_a_dpop_api() {
    let idps = IdentityProviders::shared();
    let key_file = idps.client_key("icbt-gateway").pem_file.clone();
    let outbound = Arc::new(
        OutboundTokens::from_config(
            &config(idps, "icbt-gateway", key_file, "ES256", true),
            idps.http(),
            policy(),
        )
        .unwrap(),
    );

    let callers: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn({
                let outbound = outbound.clone();
                async move { outbound.token().await.unwrap() }
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap());
    }
    assert!(
        tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])),
        "one fetch served every concurrent caller"
    );
    assert_eq!(tokens[0].token_type, "DPoP");
    assert!(
        Arc::ptr_eq(&outbound.token().await.unwrap(), &tokens[0]),
        "cached until shortly before expiry"
    );

    // The token and a proof from `authorize` open a real DPoP API: the gateway's own.
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            ..Default::default()
        },
    )
    .await;
    let url = format!("{}/v1/me", gw.url);
    let (authorization, proof) = outbound.authorize("GET", &url).await.unwrap();
    assert!(authorization.starts_with("DPoP "));
    let response = gw
        .client()
        .get(&url)
        .header("authorization", authorization)
        .header("dpop", proof.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["client_id"], "icbt-gateway");
    assert_eq!(me["dpop_bound"], true);
}

#[tokio::test]
async fn rsa_keys_sign_rs256_and_ps256_assertions() {
    let idps = IdentityProviders::shared();
    for alg in ["RS256", "PS256"] {
        let outbound = OutboundTokens::from_config(
            &config(idps, RSA_CLIENT, rsa_client_key_file(), alg, false),
            idps.http(),
            policy(),
        )
        .unwrap();
        let token = outbound
            .token()
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}\n{}", idps.logs().join("\n")));
        assert_eq!(token.token_type, "Bearer", "{alg}");
    }
}

#[tokio::test]
async fn assertion_audience_is_configurable() {
    let idps = IdentityProviders::shared();
    let key_file = idps.client_key("icbt-gateway").pem_file.clone();
    let mut with_endpoint = config(idps, "icbt-gateway", key_file.clone(), "ES256", false);
    with_endpoint.assertion_audience = Some(format!("{}/token", idps.helseid.issuer));
    OutboundTokens::from_config(&with_endpoint, idps.http(), policy())
        .unwrap()
        .token()
        .await
        .unwrap();

    let mut wrong = config(idps, "icbt-gateway", key_file, "ES256", false);
    wrong.assertion_audience = Some("https://somewhere-else.example".into());
    let err = OutboundTokens::from_config(&wrong, idps.http(), policy())
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { error, .. } if error == "invalid_client"),
        "{err}"
    );
}
