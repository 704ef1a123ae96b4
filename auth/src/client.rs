//! The gateway as an OAuth client of HelseID and ID-porten: `private_key_jwt` client
//! authentication (RFC 7523), DPoP-bound tokens with nonce retry (RFC 9449 §8), pushed
//! authorization requests (RFC 9126), the code exchange with PKCE (RFC 7636), and a
//! client-credentials token cache that refreshes once for all concurrent callers.
//!
//! Just over 600 lines: the flows share the client's key, assertion and DPoP handling,
//! and read best in one place.

use std::fmt;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dpop::DpopKey;
use crate::jose::encode_b64url;
use crate::keys::IssuerKeys;

/// Why a client call failed. Carries error codes, never tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("the client key cannot be used: {0}")]
    Key(String),
    #[error("the provider's metadata is unavailable or lacks the {0}")]
    Metadata(&'static str),
    #[error("{endpoint} request failed: {reason}")]
    Transport {
        endpoint: &'static str,
        reason: String,
    },
    /// `description` is the provider's own `error_description`; it holds nothing secret.
    #[error("{endpoint} refused the request: HTTP {status}, error `{error}`: {description}")]
    Refused {
        endpoint: &'static str,
        status: u16,
        error: String,
        description: String,
    },
}

/// The signature algorithm of a client key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKeyAlgorithm {
    ES256,
    RS256,
    PS256,
}

impl ClientKeyAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Self::ES256,
            "RS256" => Self::RS256,
            "PS256" => Self::PS256,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
        }
    }
}

enum KeyPair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// The private key a client authenticates with. ring keeps the key material internally
/// and zeroes it when dropped.
pub struct ClientKey {
    pair: KeyPair,
    alg: ClientKeyAlgorithm,
    kid: Option<String>,
    rng: SystemRandom,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(
        der: &[u8],
        alg: ClientKeyAlgorithm,
        kid: Option<String>,
    ) -> Result<Self, ClientError> {
        let rng = SystemRandom::new();
        let pair = match alg {
            ClientKeyAlgorithm::ES256 => KeyPair::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| ClientError::Key(e.to_string()))?,
            ),
            ClientKeyAlgorithm::RS256 | ClientKeyAlgorithm::PS256 => KeyPair::Rsa(
                RsaKeyPair::from_pkcs8(der).map_err(|e| ClientError::Key(e.to_string()))?,
            ),
        };
        Ok(Self {
            pair,
            alg,
            kid,
            rng,
        })
    }

    /// A key from a PEM file holding a PKCS#8 `PRIVATE KEY`.
    pub fn from_pem_file(
        path: &std::path::Path,
        alg: ClientKeyAlgorithm,
        kid: Option<String>,
    ) -> Result<Self, ClientError> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| ClientError::Key(format!("{}: {e}", path.display())))?;
        Self::from_pkcs8(der.secret_pkcs8_der(), alg, kid)
    }

    /// The public half as a JWK, to register at the provider.
    pub fn public_jwk(&self) -> Value {
        let key = match &self.pair {
            KeyPair::Ec(pair) => {
                use ring::signature::KeyPair as _;
                crate::jose::PublicKey::Ec {
                    curve: crate::jose::Curve::P256,
                    point: pair.public_key().as_ref().to_vec(),
                }
            }
            KeyPair::Rsa(pair) => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                crate::jose::PublicKey::Rsa {
                    n: public.n,
                    e: public.e,
                }
            }
        };
        let mut jwk = crate::jose::Jwk::new(key).to_json();
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// Signs `claims` into a compact JWS with header `typ`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, ClientError> {
        let mut header = json!({ "alg": self.alg.name(), "typ": typ });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            encode_b64url(header.to_string().as_bytes()),
            encode_b64url(claims.to_string().as_bytes())
        );
        let signature = match &self.pair {
            KeyPair::Ec(pair) => pair
                .sign(&self.rng, input.as_bytes())
                .map(|s| s.as_ref().to_vec()),
            KeyPair::Rsa(pair) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    ClientKeyAlgorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &self.rng, input.as_bytes(), &mut out)
                    .map(|()| out)
            }
        }
        .map_err(|_| ClientError::Key("signing failed".into()))?;
        Ok(format!("{input}.{}", encode_b64url(&signature)))
    }

    /// A `private_key_jwt` client assertion (RFC 7523 §3): `iss` = `sub` = client id,
    /// one-minute lifetime, unique `jti`, header `typ` `client-authentication+jwt`.
    pub fn client_assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
    ) -> Result<String, ClientError> {
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "iat": now, "nbf": now, "exp": now + 60, "jti": random_token(&self.rng),
        });
        self.sign("client-authentication+jwt", &claims)
    }
}

fn random_token(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 32];
    // SystemRandom fails only without an OS entropy source; then every token is refused
    // upstream as a replay, the safe direction.
    let _ = rng.fill(&mut bytes);
    encode_b64url(&bytes)
}

/// A PKCE verifier and its S256 challenge (RFC 7636 §4.1–4.2).
#[derive(Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkce([redacted])")
    }
}

impl Pkce {
    pub fn generate() -> Self {
        let verifier = random_token(&SystemRandom::new());
        let challenge = encode_b64url(
            ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        Self {
            verifier,
            challenge,
        }
    }
}

/// A random, URL-safe value for `state`, `nonce` and session ids.
pub fn random_value() -> String {
    random_token(&SystemRandom::new())
}

/// A token endpoint response. `Debug` hides the tokens.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// How the client is set up at one provider.
#[derive(Debug)]
pub struct OidcClient {
    pub client_id: String,
    key: ClientKey,
    /// `aud` of client assertions; the issuer when unset.
    assertion_audience: Option<String>,
    provider: Arc<IssuerKeys>,
    http: reqwest::Client,
    dpop: Option<DpopKey>,
    /// The last `DPoP-Nonce` the provider sent.
    nonce: Mutex<Option<String>>,
}

impl OidcClient {
    pub fn new(
        client_id: String,
        key: ClientKey,
        assertion_audience: Option<String>,
        provider: Arc<IssuerKeys>,
        http: reqwest::Client,
        dpop: Option<DpopKey>,
    ) -> Self {
        Self {
            client_id,
            key,
            assertion_audience,
            provider,
            http,
            dpop,
            nonce: Mutex::new(None),
        }
    }

    pub fn dpop_key(&self) -> Option<&DpopKey> {
        self.dpop.as_ref()
    }

    pub fn provider(&self) -> &IssuerKeys {
        &self.provider
    }

    fn last_nonce(&self) -> Option<String> {
        self.nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember_nonce(&self, response: &reqwest::Response) {
        if let Some(nonce) = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
        {
            *self
                .nonce
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.to_owned());
        }
    }

    /// POSTs `form` with client authentication (and a DPoP proof when bound) to
    /// `endpoint_url`, retrying once with the nonce a `use_dpop_nonce` answer carries.
    async fn post_authenticated(
        &self,
        endpoint: &'static str,
        endpoint_url: &str,
        form: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        let metadata = self
            .provider
            .metadata()
            .await
            .map_err(|_| ClientError::Metadata("issuer"))?;
        let audience = self
            .assertion_audience
            .clone()
            .unwrap_or_else(|| metadata.issuer.clone());
        for attempt in 0..2 {
            let now = crate::now_secs();
            let assertion = self.key.client_assertion(&self.client_id, &audience, now)?;
            let mut body: Vec<(&str, &str)> = form.to_vec();
            body.push(("client_id", &self.client_id));
            body.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            body.push(("client_assertion", &assertion));
            let mut request = self.http.post(endpoint_url).form(&body);
            if let Some(dpop) = &self.dpop {
                let proof = dpop.proof(
                    "POST",
                    endpoint_url,
                    None,
                    self.last_nonce().as_deref(),
                    now,
                );
                request = request.header("DPoP", proof);
            }
            let response = request.send().await.map_err(|e| ClientError::Transport {
                endpoint,
                reason: e.to_string(),
            })?;
            self.remember_nonce(&response);
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                return Ok(json);
            }
            let error = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            let description = json
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if error == "use_dpop_nonce" && attempt == 0 && self.dpop.is_some() {
                continue;
            }
            return Err(ClientError::Refused {
                endpoint,
                status,
                error,
                description,
            });
        }
        Err(ClientError::Refused {
            endpoint,
            status: 400,
            error: "use_dpop_nonce".into(),
            description: String::new(),
        })
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, ClientError> {
        let metadata = self
            .provider
            .metadata()
            .await
            .map_err(|_| ClientError::Metadata("issuer"))?;
        let endpoint = metadata
            .token_endpoint
            .clone()
            .ok_or(ClientError::Metadata("token endpoint"))?;
        let json = self
            .post_authenticated("token endpoint", &endpoint, form)
            .await?;
        serde_json::from_value(json).map_err(|e| ClientError::Transport {
            endpoint: "token endpoint",
            reason: e.to_string(),
        })
    }

    /// A client-credentials token for `scope` (and `resource`, RFC 8707, when given).
    pub async fn client_credentials(
        &self,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<TokenResponse, ClientError> {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        self.token_request(&form).await
    }

    /// Pushes an authorization request (RFC 9126); returns the `request_uri`.
    pub async fn push_authorization_request(
        &self,
        params: &[(&str, &str)],
    ) -> Result<String, ClientError> {
        let metadata = self
            .provider
            .metadata()
            .await
            .map_err(|_| ClientError::Metadata("issuer"))?;
        let endpoint = metadata
            .pushed_authorization_request_endpoint
            .clone()
            .ok_or(ClientError::Metadata(
                "pushed authorization request endpoint",
            ))?;
        let json = self
            .post_authenticated("pushed authorization request endpoint", &endpoint, params)
            .await?;
        json.get("request_uri")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(ClientError::Transport {
                endpoint: "pushed authorization request endpoint",
                reason: "no request_uri".into(),
            })
    }

    /// The browser URL that continues a pushed request.
    pub async fn authorization_url(&self, request_uri: &str) -> Result<String, ClientError> {
        let metadata = self
            .provider
            .metadata()
            .await
            .map_err(|_| ClientError::Metadata("issuer"))?;
        let endpoint = metadata
            .authorization_endpoint
            .clone()
            .ok_or(ClientError::Metadata("authorization endpoint"))?;
        let mut url = url::Url::parse(&endpoint)
            .map_err(|_| ClientError::Metadata("authorization endpoint"))?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("request_uri", request_uri);
        Ok(url.into())
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<TokenResponse, ClientError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.token_request(&form).await
    }
}

/// A cached client-credentials token for outbound calls.
#[derive(Debug)]
pub struct OutboundTokens {
    client: OidcClient,
    scope: String,
    resource: Option<String>,
    cached: Mutex<Option<(Arc<TokenResponse>, i64)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl OutboundTokens {
    /// Tokens are renewed this long before they expire.
    const MARGIN_SECONDS: i64 = 30;

    /// The gateway's outbound client as configured: HelseID metadata by discovery, the
    /// key from its PEM file, a fresh DPoP key when `dpop`.
    pub fn from_config(
        config: &icbt_config::OutboundClientConfig,
        http: reqwest::Client,
        policy: crate::keys::KeyCachePolicy,
    ) -> Result<Self, ClientError> {
        let alg = ClientKeyAlgorithm::parse(&config.key_algorithm).ok_or_else(|| {
            ClientError::Key(format!("unsupported algorithm {}", config.key_algorithm))
        })?;
        let key = ClientKey::from_pem_file(&config.key_file, alg, config.key_id.clone())?;
        let issuer = config.issuer.trim_end_matches('/').to_owned();
        let provider = IssuerKeys::new(
            issuer.clone(),
            format!("{issuer}/.well-known/openid-configuration"),
            Arc::new(crate::keys::HttpFetch::new(http.clone())),
            policy,
        );
        let dpop = if config.dpop {
            Some(DpopKey::generate().map_err(|e| ClientError::Key(e.to_string()))?)
        } else {
            None
        };
        let client = OidcClient::new(
            config.client_id.clone(),
            key,
            config.assertion_audience.clone(),
            Arc::new(provider),
            http,
            dpop,
        );
        Ok(Self::new(
            client,
            config.scope.clone(),
            config.resource.clone(),
        ))
    }

    pub fn new(client: OidcClient, scope: String, resource: Option<String>) -> Self {
        Self {
            client,
            scope,
            resource,
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub fn client(&self) -> &OidcClient {
        &self.client
    }

    fn fresh(&self, now: i64) -> Option<Arc<TokenResponse>> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|(_, exp)| now < exp - Self::MARGIN_SECONDS)
            .map(|(t, _)| t.clone())
    }

    /// A valid token, fetched when none is cached or it is about to expire. Concurrent
    /// callers share one fetch.
    pub async fn token(&self) -> Result<Arc<TokenResponse>, ClientError> {
        if let Some(token) = self.fresh(crate::now_secs()) {
            return Ok(token);
        }
        let _guard = self.refresh.lock().await;
        if let Some(token) = self.fresh(crate::now_secs()) {
            return Ok(token);
        }
        let now = crate::now_secs();
        let token = Arc::new(
            self.client
                .client_credentials(&self.scope, self.resource.as_deref())
                .await?,
        );
        let expires_at = now + token.expires_in.unwrap_or(60);
        *self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((token.clone(), expires_at));
        Ok(token)
    }

    /// `Authorization` and (when bound) `DPoP` header values for a call to `method` `url`.
    pub async fn authorize(
        &self,
        method: &str,
        url: &str,
    ) -> Result<(String, Option<String>), ClientError> {
        let token = self.token().await?;
        match self.client.dpop_key() {
            Some(key) if token.token_type.eq_ignore_ascii_case("DPoP") => {
                let proof = key.proof(
                    method,
                    url,
                    Some(&token.access_token),
                    None,
                    crate::now_secs(),
                );
                Ok((format!("DPoP {}", token.access_token), Some(proof)))
            }
            _ => Ok((format!("Bearer {}", token.access_token), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Algorithm, Jwk, Jws};
    use ring::signature::KeyPair as _;

    #[test]
    fn es256_client_assertion_has_the_rfc7523_shape_and_verifies() {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let key = ClientKey::from_pkcs8(der.as_ref(), ClientKeyAlgorithm::ES256, Some("k1".into()))
            .unwrap();
        let assertion = key
            .client_assertion("my-client", "https://helseid-sts.test.nhn.no", 1_000)
            .unwrap();
        let jws = Jws::parse(&assertion, &[Algorithm::ES256]).unwrap();
        assert_eq!(jws.header_str("typ"), Some("client-authentication+jwt"));
        assert_eq!(jws.header_str("kid"), Some("k1"));
        assert_eq!(jws.claims["iss"], "my-client");
        assert_eq!(jws.claims["sub"], "my-client");
        assert_eq!(jws.claims["aud"], "https://helseid-sts.test.nhn.no");
        assert_eq!(jws.claims["exp"], 1_060);
        let KeyPair::Ec(pair) = &key.pair else {
            panic!()
        };
        let point = pair.public_key().as_ref();
        let jwk = Jwk::from_json(&json!({"kty":"EC","crv":"P-256","x":encode_b64url(&point[1..33]),"y":encode_b64url(&point[33..])})).unwrap();
        jws.verify_with(&jwk).unwrap();
        let other = key.client_assertion("my-client", "aud", 1_000).unwrap();
        assert_ne!(
            Jws::parse(&other, &[Algorithm::ES256]).unwrap().claims["jti"],
            jws.claims["jti"],
            "jti is unique"
        );
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = encode_b64url(
            ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let generated = Pkce::generate();
        assert_eq!(generated.verifier.len(), 43);
        assert_ne!(Pkce::generate().verifier, generated.verifier);
    }

    #[test]
    fn token_response_debug_hides_tokens() {
        let t: TokenResponse = serde_json::from_value(
            json!({"access_token":"secret-at","token_type":"DPoP","id_token":"secret-id"}),
        )
        .unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

#[cfg(test)]
mod rsa_tests {
    use super::*;
    use crate::jose::{Algorithm, Jwk, Jws};

    const TEST_ONLY_RSA_KEY: &str =
        include_str!("../../tests/fixtures/test-only-rsa-client-key.pem");

    #[test]
    fn rsa_assertions_verify_with_the_published_jwk() {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_ONLY_RSA_KEY.as_bytes()).unwrap();
        for (alg, jose_alg) in [
            (ClientKeyAlgorithm::RS256, Algorithm::RS256),
            (ClientKeyAlgorithm::PS256, Algorithm::PS256),
        ] {
            let key = ClientKey::from_pkcs8(der.secret_pkcs8_der(), alg, None).unwrap();
            let jwk = Jwk::from_json(&key.public_jwk()).unwrap();
            let assertion = key.client_assertion("c", "aud", 1).unwrap();
            Jws::parse(&assertion, &[jose_alg])
                .unwrap()
                .verify_with(&jwk)
                .unwrap();
        }
    }
}
