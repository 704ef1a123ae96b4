//! Issuer metadata and signing keys, found through OpenID discovery and cached.
//!
//! Keys are fetched once, kept for `max_age`, and refetched early when a token names an
//! unknown `kid`, at most once per `min_refetch_interval` (so a flood of forged kids
//! cannot turn into a flood of fetches). When the issuer is down, validation keeps working
//! on the cached keys. Only one fetch per issuer runs at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::error::AuthError;
use crate::jose::{Algorithm, Jwk};

/// Why a fetch failed. Carries no response body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// A boxed future, for the object-safe [`Fetch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How metadata and key sets are fetched: HTTPS in production ([`HttpFetch`]).
pub trait Fetch: Send + Sync + std::fmt::Debug {
    fn get_json<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Value, FetchError>>;
}

/// Fetches JSON over HTTPS with a bounded time.
#[derive(Clone, Debug)]
pub struct HttpFetch {
    client: reqwest::Client,
}

impl HttpFetch {
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

impl Fetch for HttpFetch {
    fn get_json<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Value, FetchError>> {
        Box::pin(async move {
            let response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| FetchError(format!("GET {url}: {e}")))?;
            if !response.status().is_success() {
                return Err(FetchError(format!(
                    "GET {url}: status {}",
                    response.status()
                )));
            }
            response
                .json()
                .await
                .map_err(|e| FetchError(format!("GET {url}: not JSON: {e}")))
        })
    }
}

/// The parts of an OpenID provider's metadata the gateway uses.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Vec<String>,
}

/// A parsed JWKS: the keys this verifier can use (others are skipped).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    pub fn from_json(value: &Value) -> Self {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().filter_map(|k| Jwk::from_json(k).ok()).collect())
            .unwrap_or_default();
        Self { keys }
    }

    /// The key for `kid` usable with `alg`. Without a `kid`, the only key usable with
    /// `alg`, if there is exactly one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Jwk> {
        if let Some(kid) = kid {
            return self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.allows(alg));
        }
        let mut usable = self.keys.iter().filter(|k| k.allows(alg));
        let first = usable.next()?;
        usable.next().is_none().then_some(first)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Timing of key caching.
#[derive(Clone, Copy, Debug)]
pub struct KeyCachePolicy {
    pub max_age: Duration,
    pub min_refetch_interval: Duration,
}

#[derive(Debug, Default)]
struct Cached {
    metadata: Option<Arc<ProviderMetadata>>,
    keys: Arc<KeySet>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Metadata and keys of one issuer.
#[derive(Debug)]
pub struct IssuerKeys {
    issuer: String,
    discovery_url: String,
    fetch: Arc<dyn Fetch>,
    policy: KeyCachePolicy,
    cached: RwLock<Cached>,
    refreshing: tokio::sync::Mutex<()>,
}

impl IssuerKeys {
    pub fn new(
        issuer: String,
        discovery_url: String,
        fetch: Arc<dyn Fetch>,
        policy: KeyCachePolicy,
    ) -> Self {
        Self {
            issuer,
            discovery_url,
            fetch,
            policy,
            cached: RwLock::default(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> (Arc<KeySet>, Option<Instant>, Option<Instant>) {
        let cached = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (cached.keys.clone(), cached.fetched_at, cached.last_attempt)
    }

    /// The key to verify a token with `kid` and `alg`.
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, AuthError> {
        let (keys, fetched_at, _) = self.snapshot();
        let stale = fetched_at.is_none_or(|at| at.elapsed() >= self.policy.max_age);
        if !stale && let Some(key) = keys.find(kid, alg) {
            return Ok(key.clone());
        }
        // Stale, never fetched, or an unknown kid: refetch, bounded in rate.
        self.refresh(stale).await;
        let (keys, fetched_at, _) = self.snapshot();
        if fetched_at.is_none() {
            return Err(AuthError::IssuerUnavailable);
        }
        keys.find(kid, alg).cloned().ok_or(AuthError::UnknownKeyId)
    }

    /// The provider metadata, fetched if not yet known.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, AuthError> {
        if let Some(m) = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .metadata
            .clone()
        {
            return Ok(m);
        }
        self.refresh(true).await;
        self.cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .metadata
            .clone()
            .ok_or(AuthError::IssuerUnavailable)
    }

    /// Fetches metadata and keys unless another task just did, or (when not `stale`) the
    /// last attempt is more recent than the refetch interval.
    async fn refresh(&self, stale: bool) {
        let attempt_before = self.snapshot().2;
        let _guard = self.refreshing.lock().await;
        let (_, fetched_at, last_attempt) = self.snapshot();
        if last_attempt != attempt_before {
            return; // Someone else fetched while we waited.
        }
        if let Some(at) = last_attempt
            && at.elapsed() < self.policy.min_refetch_interval
            && (!stale || fetched_at.is_some())
        {
            return;
        }
        let result = self.fetch_all().await;
        let mut cached = self
            .cached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cached.last_attempt = Some(Instant::now());
        match result {
            Ok((metadata, keys)) => {
                cached.metadata = Some(Arc::new(metadata));
                cached.keys = Arc::new(keys);
                cached.fetched_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, cached_keys = cached.keys.len(), "issuer keys not refreshed");
            }
        }
    }

    async fn fetch_all(&self) -> Result<(ProviderMetadata, KeySet), FetchError> {
        let raw = self.fetch.get_json(&self.discovery_url).await?;
        let metadata: ProviderMetadata = serde_json::from_value(raw)
            .map_err(|e| FetchError(format!("discovery document: {e}")))?;
        if metadata.issuer != self.issuer {
            return Err(FetchError(format!(
                "discovery document names issuer {} instead of {}",
                metadata.issuer, self.issuer
            )));
        }
        let jwks = self.fetch.get_json(&metadata.jwks_uri).await?;
        let keys = KeySet::from_json(&jwks);
        if keys.is_empty() {
            return Err(FetchError("the key set holds no usable key".into()));
        }
        Ok((metadata, keys))
    }
}

/// Documents held in memory, counting fetches; `down` makes every fetch fail. For tests,
/// benchmarks and offline tools: production fetches over HTTPS.
#[derive(Debug, Default)]
pub struct StaticFetch {
    pub docs: std::sync::Mutex<std::collections::HashMap<String, Value>>,
    pub fetches: std::sync::atomic::AtomicUsize,
    pub down: std::sync::atomic::AtomicBool,
}

impl StaticFetch {
    /// Serves `value` at `url`.
    pub fn serve(&self, url: &str, value: Value) {
        self.docs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(url.to_owned(), value);
    }
}

impl Fetch for StaticFetch {
    fn get_json<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Value, FetchError>> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(FetchError("connection refused".into()));
            }
            self.docs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(url)
                .cloned()
                .ok_or_else(|| FetchError("404".into()))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    pub(crate) fn ec_jwk(kid: &str, public_point: &[u8]) -> Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": crate::jose::encode_b64url(&public_point[1..33]),
            "y": crate::jose::encode_b64url(&public_point[33..]),
        })
    }

    fn point() -> Vec<u8> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    }

    fn issuer(fetch: Arc<StaticFetch>, min_refetch: Duration) -> IssuerKeys {
        fetch.docs.lock().unwrap().insert(
            "https://op/.well-known/openid-configuration".into(),
            serde_json::json!({ "issuer": "https://op", "jwks_uri": "https://op/jwks" }),
        );
        fetch.docs.lock().unwrap().insert(
            "https://op/jwks".into(),
            serde_json::json!({ "keys": [ec_jwk("k1", &point())] }),
        );
        IssuerKeys::new(
            "https://op".into(),
            "https://op/.well-known/openid-configuration".into(),
            fetch,
            KeyCachePolicy {
                max_age: Duration::from_hours(1),
                min_refetch_interval: min_refetch,
            },
        )
    }

    #[tokio::test]
    async fn keys_are_cached_and_unknown_kids_refetch_at_a_bounded_rate() {
        let fetch = Arc::new(StaticFetch::default());
        let keys = issuer(fetch.clone(), Duration::from_mins(1));
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
        assert_eq!(
            fetch.fetches.load(Ordering::SeqCst),
            2,
            "discovery + JWKS once"
        );
        for _ in 0..50 {
            assert_eq!(
                keys.key_for(Some("forged"), Algorithm::ES256)
                    .await
                    .unwrap_err(),
                AuthError::UnknownKeyId
            );
        }
        assert_eq!(
            fetch.fetches.load(Ordering::SeqCst),
            2,
            "no refetch inside the interval"
        );
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_by_refetching() {
        let fetch = Arc::new(StaticFetch::default());
        let keys = issuer(fetch.clone(), Duration::ZERO);
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
        fetch.docs.lock().unwrap().insert(
            "https://op/jwks".into(),
            serde_json::json!({ "keys": [ec_jwk("k2", &point())] }),
        );
        keys.key_for(Some("k2"), Algorithm::ES256).await.unwrap();
    }

    #[tokio::test]
    async fn cached_keys_keep_working_while_the_issuer_is_down() {
        let fetch = Arc::new(StaticFetch::default());
        let keys = issuer(fetch.clone(), Duration::ZERO);
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
        fetch.down.store(true, Ordering::SeqCst);
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
        assert_eq!(
            keys.key_for(Some("k9"), Algorithm::ES256)
                .await
                .unwrap_err(),
            AuthError::UnknownKeyId
        );
        keys.key_for(Some("k1"), Algorithm::ES256).await.unwrap();
    }

    #[tokio::test]
    async fn issuer_down_from_the_start_is_unavailable_not_unknown() {
        let fetch = Arc::new(StaticFetch::default());
        let keys = issuer(fetch.clone(), Duration::ZERO);
        fetch.down.store(true, Ordering::SeqCst);
        assert_eq!(
            keys.key_for(Some("k1"), Algorithm::ES256)
                .await
                .unwrap_err(),
            AuthError::IssuerUnavailable
        );
    }

    #[tokio::test]
    async fn discovery_naming_another_issuer_is_refused() {
        let fetch = Arc::new(StaticFetch::default());
        let keys = issuer(fetch.clone(), Duration::ZERO);
        fetch.docs.lock().unwrap().insert(
            "https://op/.well-known/openid-configuration".into(),
            serde_json::json!({ "issuer": "https://evil", "jwks_uri": "https://op/jwks" }),
        );
        assert_eq!(
            keys.key_for(Some("k1"), Algorithm::ES256)
                .await
                .unwrap_err(),
            AuthError::IssuerUnavailable
        );
    }
}
