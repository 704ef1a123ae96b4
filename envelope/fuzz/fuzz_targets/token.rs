//! Tokens and DPoP proofs. Any text as an access token or a DPoP proof: parsing and
//! checking never panic, and nothing that is not signed by the bound key is accepted. And
//! proofs that are signed, over any claims the fuzzer makes: the claim checks (`htm`,
//! `htu`, `iat`, `ath`, `jti`, the key binding) never panic either.

#![no_main]

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use icbt_auth::dpop::{DpopVerifier, MemoryReplayStore, ProofContext};
use icbt_auth::jose::{Algorithm, Jwk, Jws, sign_es256};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const ALL: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

struct Proofs {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    jwk: Value,
    thumbprint: String,
    verifier: DpopVerifier,
    replay: MemoryReplayStore,
}

fn proofs() -> &'static Proofs {
    static PROOFS: OnceLock<Proofs> = OnceLock::new();
    PROOFS.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap_or_else(|_| std::process::abort());
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap_or_else(|_| std::process::abort());
        let point = pair.public_key().as_ref();
        let b64 = icbt_auth::jose::encode_b64url;
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let thumbprint = Jwk::from_json(&jwk)
            .unwrap_or_else(|_| std::process::abort())
            .thumbprint();
        Proofs {
            pair,
            rng,
            jwk,
            thumbprint,
            verifier: DpopVerifier::new(vec![Algorithm::ES256], 60, 5, None),
            replay: MemoryReplayStore::default(),
        }
    })
}

/// The verdict on `proof` for a fixed request; the replay store answers at once, so one
/// poll decides.
fn verdict(proof: &str) -> Option<bool> {
    let p = proofs();
    let ctx = ProofContext {
        method: "PUT",
        uri: "https://gateway.test/v1/episodes/e/messages/m",
        access_token: "access-token",
        jkt: &p.thumbprint,
        now: 1_800_000_000,
    };
    let mut check = std::pin::pin!(p.verifier.verify(proof, ctx, &p.replay));
    match check.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result.is_ok()),
        Poll::Pending => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Any text: as a token, as a proof carrying its own key, as a proof to check.
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(jws) = Jws::parse(text, &ALL)
            && let Some(key) = jws.header.get("jwk").and_then(|k| Jwk::from_json(k).ok())
        {
            let _ = key.thumbprint();
            let _ = jws.verify_with(&key);
            let _ = serde_json::to_string(&key);
        }
        // Only the holder of the bound private key makes a proof that passes.
        assert_ne!(verdict(text), Some(true), "an unsigned proof was accepted");
    } else {
        // Any claims and extra header members, signed with the bound key.
        let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        let p = proofs();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": p.jwk});
        let proof = sign_es256(&p.pair, &p.rng, &header, &Value::Object(claims));
        let _ = verdict(&proof);
    }
});
