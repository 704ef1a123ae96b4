//! Validation throughput on one core: a cached-JWKS ES256 access token alone and with a
//! DPoP proof, beside ring's raw P-256 verify rate measured in the same run.
//!
//! `cargo bench -p icbt-auth --bench validate [-- N]` (N iterations per figure, default
//! 20000). The goal: token + proof at least 50 % of the raw rate of its two signature
//! checks, i.e. of half the raw verify rate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::too_many_lines, // a benchmark reads best as one straight script
)]

use std::sync::Arc;
use std::time::Instant;

use icbt_auth::dpop::{DpopKey, MemoryReplayStore};
use icbt_auth::jose::{encode_b64url, sign_es256};
use icbt_auth::keys::{Fetch, StaticFetch};
use icbt_auth::token::{RequestFacts, Validator};
use icbt_config::{AuthConfig, ClaimNames, IssuerConfig, IssuerKind};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::json;

const ISSUER: &str = "https://helseid.bench";
const URI: &str = "https://gateway.bench/v1/episodes/5f0c/messages";

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args()
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let issuer_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = issuer_key.public_key().as_ref().to_vec();

    let fetch = StaticFetch::default();
    fetch.serve(
        &format!("{ISSUER}/.well-known/openid-configuration"),
        json!({ "issuer": ISSUER, "jwks_uri": format!("{ISSUER}/jwks") }),
    );
    fetch.serve(
        &format!("{ISSUER}/jwks"),
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k1", "x": encode_b64url(&point[1..33]), "y": encode_b64url(&point[33..]) }] }),
    );
    let fetch: Arc<dyn Fetch> = Arc::new(fetch);
    let config = AuthConfig {
        issuers: vec![IssuerConfig {
            name: "helseid".into(),
            kind: IssuerKind::Helseid,
            issuer: ISSUER.into(),
            discovery_url: None,
            audience: "nhn:icbt-gateway".into(),
            algorithms: vec!["ES256".into()],
            clock_skew_seconds: 30,
            required_scopes: vec!["nhn:icbt-gateway/api".into()],
            min_acr: "idporten-loa-high".into(),
            min_security_level: 4,
            claims: ClaimNames::default(),
        }],
        ..Default::default()
    };
    let validator = Validator::from_config(&config, &fetch).unwrap();
    let dpop = DpopKey::generate().unwrap();
    let now = icbt_auth::now_secs();
    let token_for = |jti: usize| {
        sign_es256(
            &issuer_key,
            &rng,
            &json!({ "alg": "ES256", "typ": "at+jwt", "kid": "k1" }),
            &json!({
                "iss": ISSUER, "aud": "nhn:icbt-gateway", "exp": now + 3600, "iat": now, "jti": format!("t{jti}"),
                "scope": "nhn:icbt-gateway/api", "client_id": "platform", "cnf": { "jkt": dpop.thumbprint() },
                "helseid://claims/identity/pid": "01018512366", "helseid://claims/identity/security_level": "4",
                "helseid://claims/hpr/hpr_number": "565501872", "helseid://claims/client/claims/orgnr_parent": "974760673",
            }),
        )
    };
    let token = token_for(0);
    println!(
        "token {} bytes; {n} iterations per figure, one thread",
        token.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Warm the key cache (one discovery + JWKS fetch).
        validator.validate_token_uncached_at(&token, now).await.unwrap();

        // Raw ring P-256 verify of the token's own signature.
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        let started = Instant::now();
        for _ in 0..n {
            key.verify(input.as_bytes(), &sig).unwrap();
        }
        let raw = rate(n, started);

        let started = Instant::now();
        for _ in 0..n {
            validator.validate_token_uncached_at(&token, now).await.unwrap();
        }
        let token_uncached = rate(n, started);

        let started = Instant::now();
        for _ in 0..n {
            validator.validate_token_at(&token, now).await.unwrap();
        }
        let token_cached = rate(n, started);

        // Token + proof, the request path: the token is cached after its first use, the
        // proof (unique jti) is verified every time.
        let proofs: Vec<String> = (0..n).map(|_| dpop.proof("GET", URI, Some(&token), None, now)).collect();
        let replay = MemoryReplayStore::default();
        let authorization = format!("DPoP {token}");
        let started = Instant::now();
        for proof in &proofs {
            let facts = RequestFacts { authorization: Some(&authorization), dpop: &[proof.as_str()], method: "GET", uri: URI };
            validator.authenticate_at(facts, &replay, now).await.unwrap();
        }
        let with_proof_cached = rate(n, started);

        // Token + proof with every token new (no cache hit): two signature checks each.
        let pairs: Vec<(String, String)> = (1..=n)
            .map(|i| {
                let t = token_for(i);
                let p = dpop.proof("GET", URI, Some(&t), None, now);
                (format!("DPoP {t}"), p)
            })
            .collect();
        let started = Instant::now();
        for (authorization, proof) in &pairs {
            let facts = RequestFacts { authorization: Some(authorization), dpop: &[proof.as_str()], method: "GET", uri: URI };
            validator.authenticate_at(facts, &replay, now).await.unwrap();
        }
        let with_proof_uncached = rate(n, started);

        let two_checks = raw / 2.0;
        println!("ring P-256 verify (raw)            {raw:>10.0} /s");
        println!("raw rate of two signature checks   {two_checks:>10.0} /s");
        println!("token alone, signature each time   {token_uncached:>10.0} /s  ({:.0} % of raw)", 100.0 * token_uncached / raw);
        println!("token alone, verified-token cache  {token_cached:>10.0} /s");
        println!(
            "token + DPoP proof, new token each {with_proof_uncached:>10.0} /s  ({:.0} % of two raw checks)",
            100.0 * with_proof_uncached / two_checks
        );
        println!(
            "token + DPoP proof, cached token   {with_proof_cached:>10.0} /s  ({:.0} % of two raw checks)",
            100.0 * with_proof_cached / two_checks
        );
    });
}
