//! DPoP (RFC 9449): verifying proofs at the API, issuing server nonces, and making proofs
//! for the gateway's own outbound calls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::error::AuthError;
use crate::jose::{Algorithm, Curve, Jwk, Jws, PublicKey, encode_b64url};

/// Why the replay store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("replay store: {0}")]
pub struct ReplayStoreError(pub String);

/// Remembers proof ids until they expire, so each is accepted once. The gateway's store
/// lives in the database, so every instance shares it.
pub trait ReplayStore: Send + Sync {
    /// Records `key` until `expires_at` (Unix seconds); `true` if it was not yet recorded.
    fn first_use(
        &self,
        key: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool, ReplayStoreError>> + Send;
}

/// A replay store for one process (tests, benchmarks, single-instance tools).
#[derive(Debug, Default)]
pub struct MemoryReplayStore {
    seen: Mutex<HashMap<String, i64>>,
}

impl MemoryReplayStore {
    const PURGE_ABOVE: usize = 100_000;
}

impl ReplayStore for MemoryReplayStore {
    fn first_use(
        &self,
        key: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool, ReplayStoreError>> + Send {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() > Self::PURGE_ABOVE {
            let now = crate::now_secs();
            seen.retain(|_, exp| *exp > now);
        }
        let fresh = !seen.contains_key(key);
        if fresh {
            seen.insert(key.to_owned(), expires_at);
        }
        std::future::ready(Ok(fresh))
    }
}

/// Key of the stateless server nonces: `base64url(issued_at || HMAC-SHA256(key, issued_at))`.
/// Every instance with the same secret accepts every other's nonces.
#[derive(Debug)]
pub struct NonceKey {
    key: ring::hmac::Key,
    lifetime: i64,
}

impl NonceKey {
    pub fn new(secret: &[u8], lifetime_seconds: i64) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            lifetime: lifetime_seconds,
        }
    }

    /// A nonce issued at `now`.
    pub fn issue(&self, now: i64) -> String {
        let stamp = now.to_be_bytes();
        let tag = ring::hmac::sign(&self.key, &stamp);
        let mut raw = stamp.to_vec();
        raw.extend_from_slice(tag.as_ref());
        encode_b64url(&raw)
    }

    /// Whether `nonce` was issued by this key within its lifetime.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        use base64::Engine;
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 8 + 32 {
            return false;
        }
        let (stamp, tag) = raw.split_at(8);
        if ring::hmac::verify(&self.key, stamp, tag).is_err() {
            return false;
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(stamp);
        let issued = i64::from_be_bytes(bytes);
        issued <= now + 5 && now - issued <= self.lifetime
    }
}

/// The request a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    pub method: &'a str,
    /// The request URI as the client addressed it (query and fragment are ignored).
    pub uri: &'a str,
    pub access_token: &'a str,
    /// `cnf.jkt` of the access token.
    pub jkt: &'a str,
    pub now: i64,
}

/// Checks DPoP proofs at the resource server (RFC 9449 §4.3, §7).
#[derive(Debug)]
pub struct DpopVerifier {
    algorithms: Vec<Algorithm>,
    max_age: i64,
    skew: i64,
    nonces: Option<NonceKey>,
}

/// `htu` comparison form (RFC 9449 §4.3 step 9): scheme and host lower-cased, default port
/// dropped, empty path as `/`, no query, no fragment.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let mut url = url::Url::parse(uri).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(url.to_string())
}

impl DpopVerifier {
    /// `nonces`: when set, every proof must carry a nonce this key accepts.
    pub fn new(
        algorithms: Vec<Algorithm>,
        max_age_seconds: i64,
        skew_seconds: i64,
        nonces: Option<NonceKey>,
    ) -> Self {
        Self {
            algorithms,
            max_age: max_age_seconds,
            skew: skew_seconds,
            nonces,
        }
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// A fresh nonce for the `DPoP-Nonce` header, when nonces are required.
    pub fn fresh_nonce(&self, now: i64) -> Option<String> {
        self.nonces.as_ref().map(|k| k.issue(now))
    }

    /// Verifies `proof` for `ctx`; the proof id is recorded in `replay` only when all else
    /// holds, so an invalid proof cannot use up an id.
    pub async fn verify(
        &self,
        proof: &str,
        ctx: ProofContext<'_>,
        replay: &impl ReplayStore,
    ) -> Result<(), AuthError> {
        let checked = self.check_signed(proof, ctx.method, ctx.uri, ctx.now)?;
        let ath = encode_b64url(
            ring::digest::digest(&ring::digest::SHA256, ctx.access_token.as_bytes()).as_ref(),
        );
        if checked.claims.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
            return Err(AuthError::DpopProofInvalid("ath"));
        }
        if checked.thumbprint != ctx.jkt {
            return Err(AuthError::DpopProofInvalid(
                "key does not match the token's cnf.jkt",
            ));
        }
        if let Some(nonces) = &self.nonces {
            let nonce = checked.claims.get("nonce").and_then(Value::as_str);
            if !nonce.is_some_and(|n| nonces.accepts(n, ctx.now)) {
                return Err(AuthError::DpopNonceRequired);
            }
        }
        self.first_use(&checked, replay).await
    }

    /// Verifies a proof sent to a token endpoint (RFC 9449 §5): no access token yet, so no
    /// `ath` and no `cnf.jkt` to match. Returns the thumbprint the new token is bound to.
    pub async fn verify_for_token_request(
        &self,
        proof: &str,
        method: &str,
        uri: &str,
        now: i64,
        replay: &impl ReplayStore,
    ) -> Result<String, AuthError> {
        let checked = self.check_signed(proof, method, uri, now)?;
        self.first_use(&checked, replay).await?;
        Ok(checked.thumbprint)
    }

    /// The checks every proof passes: form, key, signature, method, URI, age.
    fn check_signed(
        &self,
        proof: &str,
        method: &str,
        uri: &str,
        now: i64,
    ) -> Result<CheckedProof, AuthError> {
        let jws = Jws::parse(proof, &self.algorithms)
            .map_err(|_| AuthError::DpopProofInvalid("not a JWS with an accepted alg"))?;
        if jws.header_str("typ") != Some("dpop+jwt") {
            return Err(AuthError::DpopProofInvalid("typ is not dpop+jwt"));
        }
        let jwk = jws
            .header
            .get("jwk")
            .ok_or(AuthError::DpopProofInvalid("no jwk in header"))?;
        let jwk = Jwk::from_json(jwk)
            .map_err(|_| AuthError::DpopProofInvalid("jwk is not a public key"))?;
        jws.verify_with(&jwk)
            .map_err(|_| AuthError::DpopProofInvalid("signature"))?;
        let claim = |name| jws.claims.get(name);
        let jti = claim("jti")
            .and_then(Value::as_str)
            .filter(|j| (1..=256).contains(&j.len()))
            .ok_or(AuthError::DpopProofInvalid("jti"))?
            .to_owned();
        if claim("htm").and_then(Value::as_str) != Some(method) {
            return Err(AuthError::DpopProofInvalid("htm"));
        }
        let htu = claim("htu").and_then(Value::as_str).and_then(normalize_htu);
        if htu.is_none() || htu != normalize_htu(uri) {
            return Err(AuthError::DpopProofInvalid("htu"));
        }
        let iat = claim("iat")
            .and_then(Value::as_i64)
            .ok_or(AuthError::DpopProofInvalid("iat"))?;
        if iat > now + self.skew || iat < now - self.max_age - self.skew {
            return Err(AuthError::DpopProofInvalid(
                "iat outside the accepted window",
            ));
        }
        Ok(CheckedProof {
            thumbprint: jwk.thumbprint(),
            jti,
            iat,
            claims: jws.claims,
        })
    }

    /// Records the proof's id; a second use is a replay.
    async fn first_use(
        &self,
        checked: &CheckedProof,
        replay: &impl ReplayStore,
    ) -> Result<(), AuthError> {
        let key = encode_b64url(
            ring::digest::digest(
                &ring::digest::SHA256,
                format!("{}\u{0}{}", checked.thumbprint, checked.jti).as_bytes(),
            )
            .as_ref(),
        );
        match replay
            .first_use(&key, checked.iat + self.max_age + 2 * self.skew)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::DpopReplay),
            Err(e) => {
                tracing::error!(error = %e, "DPoP replay store unavailable");
                Err(AuthError::StoreUnavailable)
            }
        }
    }
}

/// A proof whose signature, method, URI and age hold.
struct CheckedProof {
    thumbprint: String,
    jti: String,
    iat: i64,
    claims: serde_json::Map<String, Value>,
}

/// An ES256 key that makes DPoP proofs (RFC 9449 §4.2).
#[derive(Debug)]
pub struct DpopKey {
    pair: EcdsaKeyPair,
    jwk: Value,
    thumbprint: String,
    rng: SystemRandom,
}

/// Why a DPoP key could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot create a DPoP key")]
pub struct DpopKeyError;

impl DpopKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopKeyError)?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| DpopKeyError)?;
        let public = Jwk::new(PublicKey::Ec {
            curve: Curve::P256,
            point: pair.public_key().as_ref().to_vec(),
        });
        let (jwk, thumbprint) = (public.to_json(), public.thumbprint());
        Ok(Self {
            pair,
            jwk,
            thumbprint,
            rng,
        })
    }

    /// The RFC 7638 thumbprint (`jkt`).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// A proof for `method` on `uri`, bound to `access_token` (`ath`) and carrying `nonce`
    /// when given. `iat` is `now`.
    pub fn proof(
        &self,
        method: &str,
        uri: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: i64,
    ) -> String {
        let mut jti = [0u8; 16];
        // SystemRandom fails only when the OS has no entropy source; the jti then stays
        // zero and the server refuses a replay, which is the safe direction.
        let _ = self.rng.fill(&mut jti);
        let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk });
        let mut claims =
            json!({ "jti": encode_b64url(&jti), "htm": method, "htu": uri, "iat": now });
        if let Some(token) = access_token {
            claims["ath"] = json!(encode_b64url(
                ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()
            ));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        crate::jose::sign_es256(&self.pair, &self.rng, &header, &claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "header.payload.signature";
    const URI: &str = "https://gw.example:443/v1/episodes?after=3";
    const NOW: i64 = 1_900_000_000;

    fn verifier(nonces: Option<NonceKey>) -> DpopVerifier {
        DpopVerifier::new(vec![Algorithm::ES256], 60, 5, nonces)
    }

    fn ctx(jkt: &str) -> ProofContext<'_> {
        ProofContext {
            method: "GET",
            uri: URI,
            access_token: TOKEN,
            jkt,
            now: NOW,
        }
    }

    #[tokio::test]
    async fn a_valid_proof_is_accepted_once() {
        let key = DpopKey::generate().unwrap();
        let store = MemoryReplayStore::default();
        let proof = key.proof(
            "GET",
            "https://GW.example/v1/episodes",
            Some(TOKEN),
            None,
            NOW,
        );
        verifier(None)
            .verify(&proof, ctx(key.thumbprint()), &store)
            .await
            .unwrap();
        assert_eq!(
            verifier(None)
                .verify(&proof, ctx(key.thumbprint()), &store)
                .await,
            Err(AuthError::DpopReplay)
        );
    }

    #[tokio::test]
    async fn each_mismatch_is_refused() {
        let key = DpopKey::generate().unwrap();
        let other = DpopKey::generate().unwrap();
        let store = MemoryReplayStore::default();
        let v = verifier(None);
        let cases = [
            (
                "htm",
                key.proof("POST", URI, Some(TOKEN), None, NOW),
                key.thumbprint(),
            ),
            (
                "htu",
                key.proof("GET", "https://gw.example/v1/other", Some(TOKEN), None, NOW),
                key.thumbprint(),
            ),
            (
                "stale iat",
                key.proof("GET", URI, Some(TOKEN), None, NOW - 120),
                key.thumbprint(),
            ),
            (
                "future iat",
                key.proof("GET", URI, Some(TOKEN), None, NOW + 60),
                key.thumbprint(),
            ),
            (
                "ath",
                key.proof("GET", URI, Some("another.token.value"), None, NOW),
                key.thumbprint(),
            ),
            (
                "no ath",
                key.proof("GET", URI, None, None, NOW),
                key.thumbprint(),
            ),
            (
                "jkt",
                other.proof("GET", URI, Some(TOKEN), None, NOW),
                key.thumbprint(),
            ),
        ];
        for (what, proof, jkt) in cases {
            let err = v.verify(&proof, ctx(jkt), &store).await.unwrap_err();
            assert!(
                matches!(err, AuthError::DpopProofInvalid(_)),
                "{what}: {err:?}"
            );
        }
        // None of the refused proofs used up its id: a valid one still passes.
        v.verify(
            &key.proof("GET", URI, Some(TOKEN), None, NOW),
            ctx(key.thumbprint()),
            &store,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn wrong_typ_and_embedded_private_key_are_refused() {
        let key = DpopKey::generate().unwrap();
        let claims = json!({ "jti": "x", "htm": "GET", "htu": URI, "iat": NOW });
        let wrong_typ = crate::jose::sign_es256(
            &key.pair,
            &key.rng,
            &json!({"typ":"JWT","alg":"ES256","jwk":key.jwk}),
            &claims,
        );
        let store = MemoryReplayStore::default();
        assert!(matches!(
            verifier(None)
                .verify(&wrong_typ, ctx(key.thumbprint()), &store)
                .await,
            Err(AuthError::DpopProofInvalid(_))
        ));
        let mut private = key.jwk.clone();
        private["d"] = json!("AAAA");
        let with_d = crate::jose::sign_es256(
            &key.pair,
            &key.rng,
            &json!({"typ":"dpop+jwt","alg":"ES256","jwk":private}),
            &claims,
        );
        assert!(matches!(
            verifier(None)
                .verify(&with_d, ctx(key.thumbprint()), &store)
                .await,
            Err(AuthError::DpopProofInvalid(_))
        ));
    }

    #[tokio::test]
    async fn nonces_are_demanded_and_checked() {
        let secret = [7u8; 32];
        let v = verifier(Some(NonceKey::new(&secret, 300)));
        let key = DpopKey::generate().unwrap();
        let store = MemoryReplayStore::default();
        let without = key.proof("GET", URI, Some(TOKEN), None, NOW);
        assert_eq!(
            v.verify(&without, ctx(key.thumbprint()), &store).await,
            Err(AuthError::DpopNonceRequired)
        );
        let forged = NonceKey::new(&[8u8; 32], 300).issue(NOW);
        let bad = key.proof("GET", URI, Some(TOKEN), Some(&forged), NOW);
        assert_eq!(
            v.verify(&bad, ctx(key.thumbprint()), &store).await,
            Err(AuthError::DpopNonceRequired)
        );
        let old = v.fresh_nonce(NOW - 301).unwrap();
        let expired = key.proof("GET", URI, Some(TOKEN), Some(&old), NOW);
        assert_eq!(
            v.verify(&expired, ctx(key.thumbprint()), &store).await,
            Err(AuthError::DpopNonceRequired)
        );
        let nonce = v.fresh_nonce(NOW).unwrap();
        let good = key.proof("GET", URI, Some(TOKEN), Some(&nonce), NOW);
        v.verify(&good, ctx(key.thumbprint()), &store)
            .await
            .unwrap();
    }

    #[test]
    fn htu_normalisation() {
        assert_eq!(
            normalize_htu("HTTPS://Example.COM:443/a?b=1#c").as_deref(),
            Some("https://example.com/a")
        );
        assert_eq!(
            normalize_htu("https://example.com").as_deref(),
            Some("https://example.com/")
        );
        assert_ne!(
            normalize_htu("https://example.com:8443/a"),
            normalize_htu("https://example.com/a")
        );
        assert_eq!(normalize_htu("ftp://example.com/a"), None);
    }
}
