//! Access-token validation: signature against the issuer's keys, the RFC 9068 / RFC 8725
//! checks, the principal of the issuer's kind, assurance, scopes, and DPoP binding.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use icbt_config::{AuthConfig, IssuerConfig, IssuerKind};
use serde_json::{Map, Value};

use crate::dpop::{DpopVerifier, NonceKey, ProofContext, ReplayStore};
use crate::error::AuthError;
use crate::identity::{HprNumber, NationalId, OrgNumber};
use crate::jose::{Algorithm, Jws};
use crate::keys::{Fetch, IssuerKeys, KeyCachePolicy};
use crate::principal::{Acr, Authenticated, Clinician, Patient, Principal, SystemClient};

/// Claim names of one issuer, defaults of its kind filled in.
#[derive(Debug, Clone)]
struct Claims {
    pid: String,
    acr: String,
    hpr_number: String,
    security_level: String,
    orgnr_parent: String,
    orgnr_child: String,
}

impl Claims {
    fn resolve(config: &IssuerConfig) -> Self {
        let c = &config.claims;
        let pick = |set: &Option<String>, idporten: &str, helseid: &str| {
            set.clone().unwrap_or_else(|| match config.kind {
                IssuerKind::Idporten => idporten.to_owned(),
                IssuerKind::Helseid => helseid.to_owned(),
            })
        };
        Self {
            pid: pick(&c.pid, "pid", "helseid://claims/identity/pid"),
            acr: pick(&c.acr, "acr", "acr"),
            hpr_number: pick(
                &c.hpr_number,
                "hpr_number",
                "helseid://claims/hpr/hpr_number",
            ),
            security_level: pick(
                &c.security_level,
                "security_level",
                "helseid://claims/identity/security_level",
            ),
            orgnr_parent: pick(
                &c.orgnr_parent,
                "orgnr_parent",
                "helseid://claims/client/claims/orgnr_parent",
            ),
            orgnr_child: pick(
                &c.orgnr_child,
                "orgnr_child",
                "helseid://claims/client/claims/orgnr_child",
            ),
        }
    }
}

/// One trusted issuer, ready to validate.
#[derive(Debug)]
pub struct IssuerProfile {
    pub name: Arc<str>,
    pub kind: IssuerKind,
    pub issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    skew: i64,
    required_scopes: Vec<String>,
    min_acr: Acr,
    min_security_level: u8,
    claims: Claims,
    pub keys: Arc<IssuerKeys>,
}

impl IssuerProfile {
    /// Signature algorithms accepted from this issuer.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Clock skew tolerated, in seconds.
    pub fn skew(&self) -> i64 {
        self.skew
    }
}

/// Why the authentication configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {problem}")]
pub struct AuthSetupError {
    pub key: &'static str,
    pub problem: String,
}

fn algorithms(names: &[String], key: &'static str) -> Result<Vec<Algorithm>, AuthSetupError> {
    names
        .iter()
        .map(|n| {
            Algorithm::from_name(n).ok_or_else(|| AuthSetupError {
                key,
                problem: format!("`{n}` is not accepted"),
            })
        })
        .collect()
}

impl IssuerProfile {
    pub fn from_config(
        config: &IssuerConfig,
        jwks: &icbt_config::JwksConfig,
        fetch: Arc<dyn Fetch>,
    ) -> Result<Self, AuthSetupError> {
        let discovery = config.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                config.issuer.trim_end_matches('/')
            )
        });
        Ok(Self {
            name: config.name.as_str().into(),
            kind: config.kind,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            algorithms: algorithms(&config.algorithms, "auth.issuers.algorithms")?,
            skew: i64::try_from(config.clock_skew_seconds).unwrap_or(300),
            required_scopes: config.required_scopes.clone(),
            min_acr: Acr::parse(&config.min_acr).ok_or_else(|| AuthSetupError {
                key: "auth.issuers.min_acr",
                problem: "unknown level".into(),
            })?,
            min_security_level: config.min_security_level,
            claims: Claims::resolve(config),
            keys: Arc::new(IssuerKeys::new(
                config.issuer.clone(),
                discovery,
                fetch,
                KeyCachePolicy {
                    max_age: Duration::from_secs(jwks.max_age_seconds),
                    min_refetch_interval: Duration::from_secs(jwks.min_refetch_interval_seconds),
                },
            )),
        })
    }
}

/// How the request presented its token.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The `DPoP` header values (more than one is refused).
    pub dpop: &'a [&'a str],
    pub method: &'a str,
    /// The absolute URI the client addressed (for `htu`).
    pub uri: &'a str,
}

/// Verified tokens by SHA-256, until they expire: one signature check per token, not per
/// request. DPoP proofs are never cached.
#[derive(Debug, Default)]
struct TokenCache {
    entries: RwLock<HashMap<[u8; 32], Authenticated>>,
}

impl TokenCache {
    const CAPACITY: usize = 50_000;

    fn get(&self, key: &[u8; 32], now: i64) -> Option<Authenticated> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).filter(|a| a.expires_at > now).cloned()
    }

    fn put(&self, key: [u8; 32], value: Authenticated, now: i64) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, a| a.expires_at > now);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, value);
    }
}

/// Validates every API request's token and DPoP proof.
#[derive(Debug)]
pub struct Validator {
    issuers: Vec<IssuerProfile>,
    all_algorithms: Vec<Algorithm>,
    dpop: DpopVerifier,
    cache: TokenCache,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn audience_contains(aud: Option<&Value>, expected: &str) -> Result<(), AuthError> {
    match aud {
        None | Some(Value::Null) => Err(AuthError::AudienceMissing),
        Some(Value::String(a)) if a == expected => Ok(()),
        Some(Value::Array(list)) if list.is_empty() => Err(AuthError::AudienceMissing),
        Some(Value::Array(list)) if list.iter().any(|a| a.as_str() == Some(expected)) => Ok(()),
        Some(_) => Err(AuthError::AudienceMismatch),
    }
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let from = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    claims
        .get("scope")
        .or_else(|| claims.get("scp"))
        .map(from)
        .unwrap_or_default()
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

fn org(claims: &Map<String, Value>, name: &str) -> Option<OrgNumber> {
    text(claims, name).and_then(|o| OrgNumber::parse(o).ok())
}

impl Validator {
    pub fn new(issuers: Vec<IssuerProfile>, dpop: DpopVerifier) -> Self {
        let mut all_algorithms: Vec<Algorithm> = issuers
            .iter()
            .flat_map(|i| i.algorithms.iter().copied())
            .collect();
        all_algorithms.sort_by_key(|a| a.name());
        all_algorithms.dedup();
        Self {
            issuers,
            all_algorithms,
            dpop,
            cache: TokenCache::default(),
        }
    }

    /// The validator the configuration describes.
    pub fn from_config(
        config: &AuthConfig,
        fetch: &Arc<dyn Fetch>,
    ) -> Result<Self, AuthSetupError> {
        let issuers = config
            .issuers
            .iter()
            .map(|i| IssuerProfile::from_config(i, &config.jwks, fetch.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let nonces = config
            .dpop
            .nonce_secret
            .as_ref()
            .filter(|_| config.dpop.require_nonce)
            .map(|s| {
                NonceKey::new(
                    s.expose().as_bytes(),
                    i64::try_from(config.dpop.nonce_lifetime_seconds).unwrap_or(300),
                )
            });
        let skew = config
            .issuers
            .iter()
            .map(|i| i.clock_skew_seconds)
            .max()
            .unwrap_or(30);
        let dpop = DpopVerifier::new(
            algorithms(&config.dpop.algorithms, "auth.dpop.algorithms")?,
            i64::try_from(config.dpop.proof_max_age_seconds).unwrap_or(60),
            i64::try_from(skew).unwrap_or(30),
            nonces,
        );
        Ok(Self::new(issuers, dpop))
    }

    pub fn issuers(&self) -> &[IssuerProfile] {
        &self.issuers
    }

    pub fn dpop(&self) -> &DpopVerifier {
        &self.dpop
    }

    /// Authenticates a request at the current time.
    pub async fn authenticate(
        &self,
        facts: RequestFacts<'_>,
        replay: &impl ReplayStore,
    ) -> Result<Authenticated, AuthError> {
        self.authenticate_at(facts, replay, now_secs()).await
    }

    /// Authenticates a request as of `now` (Unix seconds).
    pub async fn authenticate_at(
        &self,
        facts: RequestFacts<'_>,
        replay: &impl ReplayStore,
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let authorization = facts.authorization.ok_or(AuthError::MissingToken)?;
        let (scheme, token) = authorization
            .split_once(' ')
            .ok_or(AuthError::MalformedAuthorization)?;
        let token = token.trim();
        let dpop_scheme = if scheme.eq_ignore_ascii_case("DPoP") {
            true
        } else if scheme.eq_ignore_ascii_case("Bearer") {
            false
        } else {
            return Err(AuthError::MalformedAuthorization);
        };
        if token.is_empty() || token.contains(' ') {
            return Err(AuthError::MalformedAuthorization);
        }
        let authenticated = self.validate_token_at(token, now).await?;
        match (&authenticated.dpop_jkt, dpop_scheme) {
            (Some(_), false) => return Err(AuthError::DpopBoundTokenAsBearer),
            (None, true) => return Err(AuthError::DpopSchemeWithUnboundToken),
            (None, false) => {}
            (Some(jkt), true) => {
                let proof = match facts.dpop {
                    [] => return Err(AuthError::DpopProofMissing),
                    [one] => *one,
                    _ => return Err(AuthError::DpopProofInvalid("more than one DPoP header")),
                };
                let ctx = ProofContext {
                    method: facts.method,
                    uri: facts.uri,
                    access_token: token,
                    jkt,
                    now,
                };
                self.dpop.verify(proof, ctx, replay).await?;
            }
        }
        Ok(authenticated)
    }

    /// Validates an access token alone (no DPoP), using the cache of verified tokens.
    pub async fn validate_token_at(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        if let Some(hit) = self.cache.get(&key, now) {
            return Ok(hit);
        }
        let authenticated = self.verify_token(token, now).await?;
        self.cache.put(key, authenticated.clone(), now);
        Ok(authenticated)
    }

    /// Validates an access token without the cache: every call checks the signature.
    /// For benchmarks and diagnostics; requests go through [`Self::authenticate`].
    pub async fn validate_token_uncached_at(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        self.verify_token(token, now).await
    }

    async fn verify_token(&self, token: &str, now: i64) -> Result<Authenticated, AuthError> {
        let jws = Jws::parse(token, &self.all_algorithms)?;
        // The unverified `iss` only picks which keys to try; it is trusted after the
        // signature checks with that issuer's key.
        let issuer_claim = text(&jws.claims, "iss").ok_or(AuthError::UnknownIssuer)?;
        let profile = self
            .issuers
            .iter()
            .find(|p| p.issuer == issuer_claim)
            .ok_or(AuthError::UnknownIssuer)?;
        if !profile.algorithms.contains(&jws.alg) {
            return Err(AuthError::Jose(
                crate::jose::JoseError::AlgorithmNotAllowed(jws.alg.name().into()),
            ));
        }
        let typ = jws.header_str("typ").unwrap_or("");
        if !(typ.eq_ignore_ascii_case("at+jwt")
            || typ.eq_ignore_ascii_case("application/at+jwt")
            || typ.eq_ignore_ascii_case("JWT"))
        {
            return Err(AuthError::WrongTokenType);
        }
        let key = profile.keys.key_for(jws.header_str("kid"), jws.alg).await?;
        jws.verify_with(&key)?;

        let claims = &jws.claims;
        audience_contains(claims.get("aud"), &profile.audience)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(AuthError::MissingClaim("exp"))?;
        if now >= exp + profile.skew {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_i64().ok_or(AuthError::MissingClaim("nbf"))?;
            if now + profile.skew < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_i64().ok_or(AuthError::MissingClaim("iat"))?;
            if iat > now + profile.skew {
                return Err(AuthError::IssuedInFuture);
            }
        }
        let scopes = scopes_of(claims);
        if let Some(missing) = profile.required_scopes.iter().find(|s| !scopes.contains(s)) {
            return Err(AuthError::InsufficientScope(missing.clone()));
        }
        let principal = self.principal(profile, claims)?;
        let dpop_jkt = claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Authenticated {
            principal,
            issuer: profile.name.clone(),
            client_id: text(claims, "client_id").map(str::to_owned),
            scopes,
            token_id: text(claims, "jti").map(str::to_owned),
            expires_at: exp + profile.skew,
            dpop_jkt,
        })
    }

    #[allow(clippy::unused_self)]
    fn principal(
        &self,
        profile: &IssuerProfile,
        claims: &Map<String, Value>,
    ) -> Result<Principal, AuthError> {
        let names = &profile.claims;
        let pid = || {
            text(claims, &names.pid)
                .and_then(|p| NationalId::parse(p).ok())
                .ok_or(AuthError::MissingClaim("pid"))
        };
        match profile.kind {
            IssuerKind::Idporten => {
                let pid = pid()?;
                let acr = text(claims, &names.acr)
                    .and_then(Acr::parse)
                    .ok_or(AuthError::MissingClaim("acr"))?;
                if acr < profile.min_acr {
                    return Err(AuthError::AcrTooLow {
                        required: profile.min_acr.as_str(),
                    });
                }
                Ok(Principal::Patient(Patient { pid, acr }))
            }
            IssuerKind::Helseid if claims.contains_key(&names.pid) => {
                let pid = pid()?;
                let level = match claims.get(&names.security_level) {
                    Some(Value::String(s)) => s.parse::<u8>().ok(),
                    Some(Value::Number(n)) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                    _ => None,
                }
                .ok_or(AuthError::MissingClaim("security_level"))?;
                if level < profile.min_security_level {
                    return Err(AuthError::SecurityLevelTooLow {
                        required: profile.min_security_level,
                    });
                }
                let hpr_number = text(claims, &names.hpr_number)
                    .and_then(|h| HprNumber::parse(h).ok())
                    .ok_or(AuthError::HprNumberMissing)?;
                let organisation =
                    org(claims, &names.orgnr_child).or_else(|| org(claims, &names.orgnr_parent));
                Ok(Principal::Clinician(Clinician {
                    pid,
                    hpr_number,
                    security_level: level,
                    organisation,
                    orgnr_parent: org(claims, &names.orgnr_parent),
                }))
            }
            IssuerKind::Helseid => {
                let client_id =
                    text(claims, "client_id").ok_or(AuthError::MissingClaim("client_id"))?;
                Ok(Principal::System(SystemClient {
                    client_id: client_id.to_owned(),
                    orgnr_parent: org(claims, &names.orgnr_parent),
                    orgnr_child: org(claims, &names.orgnr_child),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::{DpopKey, MemoryReplayStore};
    use crate::jose::{encode_b64url, sign_es256};
    use crate::keys::StaticFetch;
    use crate::keys::tests::ec_jwk;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const NOW: i64 = 1_900_000_000;
    const URI: &str = "https://gw.test/v1/me";

    struct Op {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
        validator: Validator,
    }

    fn fnr() -> String {
        (0..10)
            .find_map(|d| NationalId::with_check_digits(&format!("01018512{d}")))
            .unwrap()
            .expose()
            .to_owned()
    }

    fn issuer_config(name: &str, kind: IssuerKind, issuer: &str) -> IssuerConfig {
        IssuerConfig {
            name: name.into(),
            kind,
            issuer: issuer.into(),
            discovery_url: None,
            audience: "api://gw".into(),
            algorithms: vec!["ES256".into()],
            clock_skew_seconds: 30,
            required_scopes: vec!["gw/api".into()],
            min_acr: "idporten-loa-high".into(),
            min_security_level: 4,
            claims: icbt_config::ClaimNames::default(),
        }
    }

    fn op() -> Op {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let fetch = Arc::new(StaticFetch::default());
        for issuer in ["https://idp", "https://hid"] {
            fetch.docs.lock().unwrap().insert(
                format!("{issuer}/.well-known/openid-configuration"),
                json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") }),
            );
            fetch.docs.lock().unwrap().insert(
                format!("{issuer}/jwks"),
                json!({ "keys": [ec_jwk("k1", pair.public_key().as_ref())] }),
            );
        }
        let config = AuthConfig {
            issuers: vec![
                issuer_config("idporten", IssuerKind::Idporten, "https://idp"),
                issuer_config("helseid", IssuerKind::Helseid, "https://hid"),
            ],
            ..Default::default()
        };
        let fetch: Arc<dyn Fetch> = fetch;
        Op {
            pair,
            rng,
            validator: Validator::from_config(&config, &fetch).unwrap(),
        }
    }

    #[allow(clippy::needless_pass_by_value)] // json! literals read best passed by value
    impl Op {
        fn sign(&self, header: Value, claims: Value) -> String {
            sign_es256(&self.pair, &self.rng, &header, &claims)
        }

        fn token(&self, claims: Value) -> String {
            self.sign(
                json!({ "alg": "ES256", "typ": "at+jwt", "kid": "k1" }),
                claims,
            )
        }

        async fn bearer(&self, token: &str) -> Result<Authenticated, AuthError> {
            let auth = format!("Bearer {token}");
            let facts = RequestFacts {
                authorization: Some(&auth),
                dpop: &[],
                method: "GET",
                uri: URI,
            };
            self.validator
                .authenticate_at(facts, &MemoryReplayStore::default(), NOW)
                .await
        }
    }

    fn patient_claims() -> Value {
        json!({ "iss": "https://idp", "aud": "api://gw", "exp": NOW + 120, "iat": NOW, "scope": "openid gw/api",
                "pid": fnr(), "acr": "idporten-loa-high", "client_id": "app", "jti": "t1" })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value;
        }
        claims
    }

    #[tokio::test]
    async fn patient_token_yields_a_patient() {
        let op = op();
        let auth = op.bearer(&op.token(patient_claims())).await.unwrap();
        match auth.principal {
            Principal::Patient(p) => {
                assert_eq!(p.pid.expose(), fnr());
                assert_eq!(p.acr, Acr::High);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(auth.token_id.as_deref(), Some("t1"));
        assert_eq!(&*auth.issuer, "idporten");
    }

    #[tokio::test]
    async fn each_claim_rule_has_its_refusal() {
        let op = op();
        let base = patient_claims();
        let cases = [
            (
                "expired",
                with(base.clone(), "exp", json!(NOW - 31)),
                AuthError::Expired,
            ),
            (
                "not yet valid",
                with(base.clone(), "nbf", json!(NOW + 31)),
                AuthError::NotYetValid,
            ),
            (
                "issued in the future",
                with(base.clone(), "iat", json!(NOW + 31)),
                AuthError::IssuedInFuture,
            ),
            (
                "wrong issuer",
                with(base.clone(), "iss", json!("https://other")),
                AuthError::UnknownIssuer,
            ),
            (
                "wrong audience",
                with(base.clone(), "aud", json!("api://other")),
                AuthError::AudienceMismatch,
            ),
            (
                "no audience",
                with(base.clone(), "aud", Value::Null),
                AuthError::AudienceMissing,
            ),
            (
                "empty audience list",
                with(base.clone(), "aud", json!([])),
                AuthError::AudienceMissing,
            ),
            (
                "no exp",
                with(base.clone(), "exp", Value::Null),
                AuthError::MissingClaim("exp"),
            ),
            (
                "scope missing",
                with(base.clone(), "scope", json!("openid")),
                AuthError::InsufficientScope("gw/api".into()),
            ),
            (
                "LoA substantial",
                with(base.clone(), "acr", json!("idporten-loa-substantial")),
                AuthError::AcrTooLow {
                    required: "idporten-loa-high",
                },
            ),
            (
                "no pid",
                with(base.clone(), "pid", Value::Null),
                AuthError::MissingClaim("pid"),
            ),
            (
                "pid with bad checksum",
                with(base.clone(), "pid", json!("01018512345")),
                AuthError::MissingClaim("pid"),
            ),
        ];
        for (name, claims, expected) in cases {
            assert_eq!(
                op.bearer(&op.token(claims)).await.unwrap_err(),
                expected,
                "{name}"
            );
        }
        // Inside the skew is fine.
        op.bearer(&op.token(with(base.clone(), "exp", json!(NOW - 29))))
            .await
            .unwrap();
        op.bearer(&op.token(with(base, "aud", json!(["x", "api://gw"]))))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn header_rules() {
        let op = op();
        let claims = patient_claims();
        let unknown_kid = op.sign(
            json!({ "alg": "ES256", "typ": "at+jwt", "kid": "nope" }),
            claims.clone(),
        );
        assert_eq!(
            op.bearer(&unknown_kid).await.unwrap_err(),
            AuthError::UnknownKeyId
        );
        let id_token_typ = op.sign(
            json!({ "alg": "ES256", "typ": "id+jwt", "kid": "k1" }),
            claims.clone(),
        );
        assert_eq!(
            op.bearer(&id_token_typ).await.unwrap_err(),
            AuthError::WrongTokenType
        );
        let plain_jwt = op.sign(
            json!({ "alg": "ES256", "typ": "JWT", "kid": "k1" }),
            claims.clone(),
        );
        op.bearer(&plain_jwt).await.unwrap();

        let body = encode_b64url(claims.to_string().as_bytes());
        let none = format!(
            "{}.{body}.",
            encode_b64url(br#"{"alg":"none","typ":"at+jwt"}"#)
        );
        assert_eq!(
            op.bearer(&none).await.unwrap_err().reason_code(),
            "algorithm_not_allowed"
        );
        // HS256 "signed" with the issuer's public key as the HMAC secret.
        let input = format!(
            "{}.{body}",
            encode_b64url(br#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#)
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, op.pair.public_key().as_ref());
        let hs = format!(
            "{input}.{}",
            encode_b64url(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        );
        assert_eq!(
            op.bearer(&hs).await.unwrap_err().reason_code(),
            "algorithm_not_allowed"
        );

        let good = op.token(claims);
        let (head, sig) = good.rsplit_once('.').unwrap();
        let tampered_payload = format!(
            "{}.{}.{sig}",
            head.split('.').next().unwrap(),
            encode_b64url(br#"{"iss":"https://idp","aud":"api://gw","exp":9999999999,"pid":"x"}"#)
        );
        assert_eq!(
            op.bearer(&tampered_payload)
                .await
                .unwrap_err()
                .reason_code(),
            "bad_signature"
        );
    }

    #[tokio::test]
    async fn helseid_personnel_and_system_tokens() {
        let op = op();
        let personnel = json!({ "iss": "https://hid", "aud": "api://gw", "exp": NOW + 60, "scope": ["gw/api"],
            "helseid://claims/identity/pid": fnr(), "helseid://claims/identity/security_level": "4",
            "helseid://claims/hpr/hpr_number": "565501872", "helseid://claims/client/claims/orgnr_parent": "974760673" });
        let auth = op.bearer(&op.token(personnel.clone())).await.unwrap();
        match &auth.principal {
            Principal::Clinician(c) => {
                assert_eq!(c.hpr_number.as_str(), "565501872");
                assert_eq!(c.security_level, 4);
                assert_eq!(
                    c.organisation.as_ref().map(OrgNumber::as_str),
                    Some("974760673")
                );
            }
            other => panic!("{other:?}"),
        }
        let level3 = with(
            personnel.clone(),
            "helseid://claims/identity/security_level",
            json!("3"),
        );
        assert_eq!(
            op.bearer(&op.token(level3)).await.unwrap_err(),
            AuthError::SecurityLevelTooLow { required: 4 }
        );
        let no_hpr = with(personnel, "helseid://claims/hpr/hpr_number", Value::Null);
        assert_eq!(
            op.bearer(&op.token(no_hpr)).await.unwrap_err(),
            AuthError::HprNumberMissing
        );

        let system = json!({ "iss": "https://hid", "aud": "api://gw", "exp": NOW + 60, "scope": "gw/api", "client_id": "platform",
            "helseid://claims/client/claims/orgnr_parent": "974760673" });
        match op.bearer(&op.token(system)).await.unwrap().principal {
            Principal::System(s) => {
                assert_eq!(s.client_id, "platform");
                assert!(s.acts_for(&OrgNumber::parse("974760673").unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn dpop_binding_rules() {
        let op = op();
        let key = DpopKey::generate().unwrap();
        let bound = op.token(with(
            patient_claims(),
            "cnf",
            json!({ "jkt": key.thumbprint() }),
        ));
        assert_eq!(
            op.bearer(&bound).await.unwrap_err(),
            AuthError::DpopBoundTokenAsBearer
        );

        let store = MemoryReplayStore::default();
        let auth = format!("DPoP {bound}");
        let run = |proofs: Vec<String>| {
            let auth = auth.clone();
            let store = &store;
            let validator = &op.validator;
            async move {
                let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
                let facts = RequestFacts {
                    authorization: Some(&auth),
                    dpop: &refs,
                    method: "GET",
                    uri: URI,
                };
                validator.authenticate_at(facts, store, NOW).await
            }
        };
        assert_eq!(run(vec![]).await.unwrap_err(), AuthError::DpopProofMissing);
        let proof = key.proof("GET", URI, Some(&bound), None, NOW);
        assert!(matches!(
            run(vec![proof.clone(), proof.clone()]).await,
            Err(AuthError::DpopProofInvalid(_))
        ));
        let ok = run(vec![proof.clone()]).await.unwrap();
        assert_eq!(ok.dpop_jkt.as_deref(), Some(key.thumbprint()));
        assert_eq!(run(vec![proof]).await.unwrap_err(), AuthError::DpopReplay);

        let unbound = op.token(patient_claims());
        let facts = RequestFacts {
            authorization: Some(&format!("DPoP {unbound}")),
            dpop: &[],
            method: "GET",
            uri: URI,
        };
        assert_eq!(
            op.validator
                .authenticate_at(facts, &store, NOW)
                .await
                .unwrap_err(),
            AuthError::DpopSchemeWithUnboundToken
        );
    }

    #[tokio::test]
    async fn authorization_header_shapes() {
        let op = op();
        let store = MemoryReplayStore::default();
        for header in [
            None,
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer a b"),
            Some("Bearer "),
        ] {
            let facts = RequestFacts {
                authorization: header,
                dpop: &[],
                method: "GET",
                uri: URI,
            };
            let err = op
                .validator
                .authenticate_at(facts, &store, NOW)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::MissingToken | AuthError::MalformedAuthorization
                ),
                "{header:?}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_until_expiry() {
        let op = op();
        let token = op.token(with(patient_claims(), "exp", json!(NOW + 10)));
        op.validator.validate_token_at(&token, NOW).await.unwrap();
        assert!(op.validator.cache.get(&sha(&token), NOW).is_some());
        assert!(
            op.validator
                .cache
                .get(&sha(&token), NOW + 10 + 30)
                .is_none(),
            "expired entries are not served"
        );
        assert_eq!(
            op.validator
                .validate_token_at(&token, NOW + 41)
                .await
                .unwrap_err(),
            AuthError::Expired
        );
    }

    fn sha(token: &str) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        key
    }
}
