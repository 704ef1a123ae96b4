//! The dev identity providers: one shaped like ID-porten, one like HelseID, served under
//! the gateway's own origin in dev mode only. They issue the tokens the production path
//! validates, signed with a key of their own that the gateway finds by OpenID discovery
//! like any issuer's; nothing in the request path knows they are local.
//!
//! What they do: discovery, JWKS, pushed authorization requests, an authorization page to
//! choose a person, the code exchange with PKCE S256, client credentials for system
//! clients (HelseID), DPoP-bound tokens wherever the client sends a proof (and always for
//! HelseID client credentials), and end-session. Clients authenticate with
//! `private_key_jwt` (the gateway's own login client) or a client secret (the platform
//! clients of the people file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use icbt_auth::client::{ClientKey, ClientKeyAlgorithm, random_value};
use icbt_auth::dpop::{DpopVerifier, MemoryReplayStore, ReplayStore as _};
use icbt_auth::jose::{Algorithm, Jwk, Jws, encode_b64url};
use serde_json::{Value, json};

use super::people::{People, Person, Role, SystemClient};

/// Where both providers live on the gateway's origin.
pub const PATH_PREFIX: &str = "/dev/idp/";
/// The audience of every dev token: the gateway.
pub const AUDIENCE: &str = "icbt-gateway-dev";
/// The scope that makes a HelseID token an auditor's.
pub const AUDIT_SCOPE: &str = "nhn:icbt-gateway/audit";
/// The gateway's own client at both providers, for the hosted login.
pub const LOGIN_CLIENT_ID: &str = "icbt-gateway-dev-login";

/// Access tokens and ID tokens live this long.
const TOKEN_LIFETIME: i64 = 3_600;
/// A pushed request, and a code, must be used within these.
const REQUEST_LIFETIME: i64 = 90;
const CODE_LIFETIME: i64 = 60;

/// Which of the two providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Idporten,
    Helseid,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Self::Idporten, Self::Helseid];

    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "idporten" => Some(Self::Idporten),
            "helseid" => Some(Self::Helseid),
            _ => None,
        }
    }

    /// The path segment after [`PATH_PREFIX`].
    pub fn segment(self) -> &'static str {
        match self {
            Self::Idporten => "idporten",
            Self::Helseid => "helseid",
        }
    }

    /// The `[[auth.issuers]]` name dev mode gives it.
    pub fn issuer_name(self) -> &'static str {
        match self {
            Self::Idporten => "dev-idporten",
            Self::Helseid => "dev-helseid",
        }
    }

    /// What the provider is called on its page.
    pub fn title(self) -> &'static str {
        match self {
            Self::Idporten => "ID-porten (dev)",
            Self::Helseid => "HelseID (dev)",
        }
    }

    /// The scope every token of this provider carries, and the gateway requires.
    pub fn api_scope(self) -> &'static str {
        match self {
            Self::Idporten => "icbt:messages",
            Self::Helseid => "nhn:icbt-gateway/api",
        }
    }

    /// The provider a person logs in at.
    pub fn of(role: Role) -> Self {
        match role {
            Role::Patient => Self::Idporten,
            Role::Therapist | Role::Auditor => Self::Helseid,
        }
    }

    pub fn issuer(self, origin: &str) -> String {
        format!("{origin}{PATH_PREFIX}{}", self.segment())
    }
}

/// Why a request to a dev provider was refused: the OAuth error code (RFC 6749 §5.2) and
/// a description that names what to fix. Never a secret, never a national id number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("grant_type `{0}` is not supported here")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    InvalidDpopProof(String),
    /// The people file cannot be read; the description names the file.
    #[error("{0}")]
    People(String),
}

impl IdpError {
    /// The OAuth `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
            Self::People(_) => "server_error",
        }
    }
}

/// Who authenticated at a provider's endpoint.
#[derive(Debug, Clone)]
pub enum ClientIdentity {
    /// The gateway's own login client.
    Login,
    System(SystemClient),
}

impl ClientIdentity {
    fn client_id(&self) -> &str {
        match self {
            Self::Login => LOGIN_CLIENT_ID,
            Self::System(c) => &c.client_id,
        }
    }
}

/// An authorization request pushed by the login client, waiting for a person.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub provider: Provider,
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    pub login_hint: Option<String>,
    expires_at: i64,
}

/// A code handed out and not yet exchanged.
#[derive(Debug)]
struct Grant {
    provider: Provider,
    redirect_uri: String,
    code_challenge: String,
    nonce: String,
    scope: String,
    person: String,
    expires_at: i64,
}

/// Both providers' state.
pub struct DevIdp {
    origin: String,
    people_file: PathBuf,
    signer: ClientKey,
    jwks: Value,
    login_client_key: Jwk,
    redirect_uri: String,
    pushed: Mutex<HashMap<String, Pushed>>,
    codes: Mutex<HashMap<String, Grant>>,
    dpop: DpopVerifier,
    /// Proof ids and client assertion ids already used.
    replay: MemoryReplayStore,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A form parsed strictly: every parameter at most once (RFC 6749 §3.1).
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, IdpError> {
    let mut form = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if form.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(IdpError::InvalidRequest(format!(
                "the parameter `{name}` is given more than once"
            )));
        }
    }
    Ok(form)
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, IdpError> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| IdpError::InvalidRequest(format!("the parameter `{name}` is missing")))
}

fn sha256_b64url(value: &str) -> String {
    encode_b64url(ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref())
}

/// Compares secrets by their digests, so the time taken says nothing about the secret.
fn same_secret(given: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl DevIdp {
    /// The providers of `origin`, signing with the PKCS#8 key in `signing_key_der`; the
    /// login client proves itself with the key whose public half is `login_client_key`.
    pub fn new(
        origin: &str,
        people_file: &Path,
        signing_key_der: &[u8],
        login_client_key: Jwk,
    ) -> Result<Self, icbt_auth::client::ClientError> {
        let probe = ClientKey::from_pkcs8(signing_key_der, ClientKeyAlgorithm::ES256, None)?;
        let kid = Jwk::from_json(&probe.public_jwk())
            .map(|j| j.thumbprint())
            .unwrap_or_default();
        let signer = ClientKey::from_pkcs8(signing_key_der, ClientKeyAlgorithm::ES256, Some(kid))?;
        let jwks = json!({ "keys": [signer.public_jwk()] });
        Ok(Self {
            origin: origin.trim_end_matches('/').to_owned(),
            people_file: people_file.to_owned(),
            signer,
            jwks,
            login_client_key,
            redirect_uri: format!("{}/auth/callback", origin.trim_end_matches('/')),
            pushed: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            dpop: DpopVerifier::new(
                vec![
                    Algorithm::ES256,
                    Algorithm::PS256,
                    Algorithm::RS256,
                    Algorithm::EdDSA,
                ],
                60,
                5,
                None,
            ),
            replay: MemoryReplayStore::default(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The people file as it is now.
    pub fn people(&self) -> Result<People, IdpError> {
        People::load(&self.people_file).map_err(|e| IdpError::People(e.to_string()))
    }

    fn endpoint(&self, provider: Provider, name: &str) -> String {
        format!("{}/{name}", provider.issuer(&self.origin))
    }

    /// The token endpoint's URL (DPoP proofs name it).
    pub fn token_endpoint(&self, provider: Provider) -> String {
        self.endpoint(provider, "token")
    }

    /// The OpenID discovery document.
    pub fn metadata(&self, provider: Provider) -> Value {
        let mut grants = vec!["authorization_code"];
        if provider == Provider::Helseid {
            grants.push("client_credentials");
        }
        json!({
            "issuer": provider.issuer(&self.origin),
            "jwks_uri": self.endpoint(provider, "jwks"),
            "authorization_endpoint": self.endpoint(provider, "authorize"),
            "pushed_authorization_request_endpoint": self.endpoint(provider, "par"),
            "token_endpoint": self.token_endpoint(provider),
            "end_session_endpoint": self.endpoint(provider, "logout"),
            "response_types_supported": ["code"],
            "grant_types_supported": grants,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "dpop_signing_alg_values_supported": ["ES256", "PS256", "RS256", "EdDSA"],
            "require_pushed_authorization_requests": true,
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["openid", provider.api_scope()],
        })
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Authenticates the client of a PAR or token request: a client assertion for the
    /// login client, a secret (form or HTTP Basic) for system clients.
    pub async fn authenticate_client(
        &self,
        provider: Provider,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
        now: i64,
    ) -> Result<ClientIdentity, IdpError> {
        if let Some(assertion) = form.get("client_assertion") {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(IdpError::InvalidClient(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
            }
            return self.check_assertion(provider, form, assertion, now).await;
        }
        let (client_id, secret) = match (basic, form.get("client_secret")) {
            (Some(_), Some(_)) => {
                return Err(IdpError::InvalidRequest(
                    "use one client authentication method, not two".into(),
                ));
            }
            (Some(pair), None) => pair,
            (None, Some(secret)) => (required(form, "client_id")?.to_owned(), secret.clone()),
            (None, None) => {
                return Err(IdpError::InvalidClient(
                    "no client authentication: send client_secret or a client_assertion".into(),
                ));
            }
        };
        let people = self.people()?;
        match people.client_by_id(&client_id) {
            Some(client) if same_secret(&secret, &client.client_secret) => {
                Ok(ClientIdentity::System(client.clone()))
            }
            _ => Err(IdpError::InvalidClient(
                "unknown client_id or wrong client_secret".into(),
            )),
        }
    }

    async fn check_assertion(
        &self,
        provider: Provider,
        form: &HashMap<String, String>,
        assertion: &str,
        now: i64,
    ) -> Result<ClientIdentity, IdpError> {
        let bad = |why: &str| IdpError::InvalidClient(format!("client_assertion: {why}"));
        let jws = Jws::parse(
            assertion,
            &[Algorithm::ES256, Algorithm::RS256, Algorithm::PS256],
        )
        .map_err(|_| bad("not a signed JWT"))?;
        let claim = |name: &str| jws.claims.get(name).and_then(Value::as_str);
        if claim("iss") != Some(LOGIN_CLIENT_ID) || claim("sub") != Some(LOGIN_CLIENT_ID) {
            return Err(bad("iss and sub must be a registered client id"));
        }
        if form
            .get("client_id")
            .is_some_and(|id| id != LOGIN_CLIENT_ID)
        {
            return Err(bad("client_id differs from the assertion's"));
        }
        jws.verify_with(&self.login_client_key)
            .map_err(|_| bad("signature does not verify"))?;
        let issuer = provider.issuer(&self.origin);
        let audience_ok = match jws.claims.get("aud") {
            Some(Value::String(a)) => *a == issuer || *a == self.token_endpoint(provider),
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(issuer.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(bad("aud must be the issuer"));
        }
        let exp = jws.claims.get("exp").and_then(Value::as_i64);
        if exp.is_none_or(|exp| exp <= now || exp > now + 300) {
            return Err(bad("exp must be within the next five minutes"));
        }
        let jti = claim("jti").ok_or_else(|| bad("no jti"))?;
        let fresh = self
            .replay
            .first_use(&format!("assertion\u{0}{jti}"), now + 300)
            .await
            .unwrap_or(false);
        if !fresh {
            return Err(bad("jti was used before"));
        }
        Ok(ClientIdentity::Login)
    }

    /// `POST …/par`: keeps the login client's request; answers its `request_uri`.
    pub fn push(
        &self,
        provider: Provider,
        client: &ClientIdentity,
        form: &HashMap<String, String>,
        now: i64,
    ) -> Result<(String, i64), IdpError> {
        if !matches!(client, ClientIdentity::Login) {
            return Err(IdpError::InvalidClient(
                "only the gateway's login client uses the authorization code flow here".into(),
            ));
        }
        if required(form, "response_type")? != "code" {
            return Err(IdpError::InvalidRequest(
                "response_type must be code".into(),
            ));
        }
        if required(form, "redirect_uri")? != self.redirect_uri {
            return Err(IdpError::InvalidRequest(format!(
                "redirect_uri must be {}",
                self.redirect_uri
            )));
        }
        if required(form, "code_challenge_method")? != "S256" {
            return Err(IdpError::InvalidRequest(
                "code_challenge_method must be S256".into(),
            ));
        }
        let scope = required(form, "scope")?;
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(IdpError::InvalidRequest("scope must include openid".into()));
        }
        let pushed = Pushed {
            provider,
            redirect_uri: self.redirect_uri.clone(),
            scope: scope.to_owned(),
            state: required(form, "state")?.to_owned(),
            nonce: required(form, "nonce")?.to_owned(),
            code_challenge: required(form, "code_challenge")?.to_owned(),
            login_hint: form.get("login_hint").cloned(),
            expires_at: now + REQUEST_LIFETIME,
        };
        let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", random_value());
        let mut all = self
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|_, p| p.expires_at > now);
        all.insert(request_uri.clone(), pushed);
        Ok((request_uri, REQUEST_LIFETIME))
    }

    /// The pushed request behind `request_uri`, still unused.
    pub fn pending(
        &self,
        provider: Provider,
        client_id: Option<&str>,
        request_uri: Option<&str>,
        now: i64,
    ) -> Result<Pushed, IdpError> {
        if client_id != Some(LOGIN_CLIENT_ID) {
            return Err(IdpError::InvalidRequest("unknown client_id".into()));
        }
        let all = self
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        request_uri
            .and_then(|uri| all.get(uri))
            .filter(|p| p.provider == provider && p.expires_at > now)
            .cloned()
            .ok_or_else(|| {
                IdpError::InvalidRequest(
                    "the request_uri is unknown, used or expired; start the login again".into(),
                )
            })
    }

    /// The people who may log in at `provider`.
    pub fn persons_for(&self, provider: Provider) -> Result<Vec<Person>, IdpError> {
        Ok(self
            .people()?
            .persons
            .into_iter()
            .filter(|p| Provider::of(p.role) == provider)
            .collect())
    }

    /// The person chose themself: the pushed request is used up and a code goes back to
    /// the client. Returns the redirect.
    pub fn choose(
        &self,
        provider: Provider,
        request_uri: &str,
        person: &str,
        now: i64,
    ) -> Result<String, IdpError> {
        let people = self.people()?;
        let Some(chosen) = people
            .person(person)
            .filter(|p| Provider::of(p.role) == provider)
        else {
            return Err(IdpError::InvalidRequest(format!(
                "no person named `{person}` logs in at {}; add them to {}",
                provider.title(),
                self.people_file.display()
            )));
        };
        let pushed = self
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(request_uri)
            .filter(|p| p.provider == provider && p.expires_at > now)
            .ok_or_else(|| {
                IdpError::InvalidRequest(
                    "the request_uri is unknown, used or expired; start the login again".into(),
                )
            })?;
        let code = random_value();
        let mut location = url::Url::parse(&pushed.redirect_uri)
            .map_err(|_| IdpError::InvalidRequest("redirect_uri".into()))?;
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &pushed.state)
            .append_pair("iss", &provider.issuer(&self.origin));
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        codes.retain(|_, g| g.expires_at > now);
        codes.insert(
            code,
            Grant {
                provider,
                redirect_uri: pushed.redirect_uri,
                code_challenge: pushed.code_challenge,
                nonce: pushed.nonce,
                scope: pushed.scope,
                person: chosen.name.clone(),
                expires_at: now + CODE_LIFETIME,
            },
        );
        Ok(location.into())
    }

    /// Checks a token request's DPoP proof, when there is one; returns the key thumbprint
    /// the token is bound to.
    pub async fn dpop_binding(
        &self,
        provider: Provider,
        proofs: &[&str],
        now: i64,
    ) -> Result<Option<String>, IdpError> {
        match proofs {
            [] => Ok(None),
            [proof] => self
                .dpop
                .verify_for_token_request(
                    proof,
                    "POST",
                    &self.token_endpoint(provider),
                    now,
                    &self.replay,
                )
                .await
                .map(Some)
                .map_err(|e| IdpError::InvalidDpopProof(e.to_string())),
            _ => Err(IdpError::InvalidDpopProof(
                "more than one DPoP header".into(),
            )),
        }
    }

    /// `POST …/token`: the code exchange, or client credentials at HelseID.
    pub fn exchange(
        &self,
        provider: Provider,
        client: &ClientIdentity,
        form: &HashMap<String, String>,
        jkt: Option<&str>,
        now: i64,
    ) -> Result<Value, IdpError> {
        match required(form, "grant_type")? {
            "authorization_code" => self.exchange_code(provider, client, form, jkt, now),
            "client_credentials" if provider == Provider::Helseid => {
                let ClientIdentity::System(system) = client else {
                    return Err(IdpError::InvalidClient(
                        "client credentials are for system clients".into(),
                    ));
                };
                let Some(jkt) = jkt else {
                    return Err(IdpError::InvalidDpopProof(
                        "HelseID client credentials need a DPoP proof".into(),
                    ));
                };
                let token = self.system_token(system, Some(jkt), now);
                Ok(json!({
                    "access_token": token, "token_type": "DPoP",
                    "expires_in": TOKEN_LIFETIME, "scope": Provider::Helseid.api_scope(),
                }))
            }
            other => Err(IdpError::UnsupportedGrantType(
                other.chars().take(64).collect(),
            )),
        }
    }

    fn exchange_code(
        &self,
        provider: Provider,
        client: &ClientIdentity,
        form: &HashMap<String, String>,
        jkt: Option<&str>,
        now: i64,
    ) -> Result<Value, IdpError> {
        let code = required(form, "code")?;
        let redirect_uri = required(form, "redirect_uri")?;
        let verifier = required(form, "code_verifier")?;
        let grant = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(code)
            .filter(|g| g.provider == provider && g.expires_at > now)
            .ok_or_else(|| IdpError::InvalidGrant("the code is unknown, used or expired".into()))?;
        if !matches!(client, ClientIdentity::Login) {
            return Err(IdpError::InvalidGrant(
                "the code was issued to another client".into(),
            ));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(IdpError::InvalidGrant(
                "redirect_uri differs from the request's".into(),
            ));
        }
        if sha256_b64url(verifier) != grant.code_challenge {
            return Err(IdpError::InvalidGrant(
                "code_verifier does not match the challenge".into(),
            ));
        }
        let people = self.people()?;
        let person = people
            .person(&grant.person)
            .ok_or_else(|| IdpError::InvalidGrant("the person left the people file".into()))?;
        let access = self.person_token(person, &people, client.client_id(), jkt, now);
        let mut id_claims = Self::person_claims(person, &people);
        id_claims.insert("iss".into(), json!(provider.issuer(&self.origin)));
        id_claims.insert("aud".into(), json!(client.client_id()));
        id_claims.insert("nonce".into(), json!(grant.nonce));
        id_claims.insert("iat".into(), json!(now));
        id_claims.insert("auth_time".into(), json!(now));
        id_claims.insert("exp".into(), json!(now + TOKEN_LIFETIME));
        id_claims.insert("name".into(), json!(person.display_name));
        let id_token = self.sign("JWT", &Value::Object(id_claims));
        Ok(json!({
            "access_token": access,
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": TOKEN_LIFETIME,
            "scope": grant.scope,
            "id_token": id_token,
        }))
    }

    fn sign(&self, typ: &str, claims: &Value) -> String {
        // Signing fails only without an entropy source; an empty token is then refused.
        self.signer.sign(typ, claims).unwrap_or_default()
    }

    /// The identity claims of `person` in the shape of their provider.
    fn person_claims(person: &Person, people: &People) -> serde_json::Map<String, Value> {
        let provider = Provider::of(person.role);
        let sub = sha256_b64url(&format!(
            "{}\u{0}{}",
            provider.segment(),
            person.pid.expose()
        ));
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), json!(sub));
        match provider {
            Provider::Idporten => {
                claims.insert("pid".into(), json!(person.pid.expose()));
                claims.insert("acr".into(), json!("idporten-loa-high"));
                claims.insert("amr".into(), json!(["BankID"]));
            }
            Provider::Helseid => {
                claims.insert(
                    "helseid://claims/identity/pid".into(),
                    json!(person.pid.expose()),
                );
                claims.insert(
                    "helseid://claims/identity/security_level".into(),
                    json!("4"),
                );
                claims.insert(
                    "helseid://claims/identity/assurance_level".into(),
                    json!("high"),
                );
                if let Some(hpr) = &person.hpr_number {
                    claims.insert(
                        "helseid://claims/hpr/hpr_number".into(),
                        json!(hpr.as_str()),
                    );
                }
                claims.insert(
                    "helseid://claims/client/claims/orgnr_parent".into(),
                    json!(people.clinic.org_number.as_str()),
                );
            }
        }
        claims
    }

    /// An access token for `person`, as their provider issues it to `client_id`.
    pub fn person_token(
        &self,
        person: &Person,
        people: &People,
        client_id: &str,
        jkt: Option<&str>,
        now: i64,
    ) -> String {
        let provider = Provider::of(person.role);
        let mut scope = format!("openid {}", provider.api_scope());
        if person.role == Role::Auditor {
            scope.push(' ');
            scope.push_str(AUDIT_SCOPE);
        }
        let mut claims = Self::person_claims(person, people);
        self.common_claims(&mut claims, provider, client_id, &scope, jkt, now);
        self.sign("at+jwt", &Value::Object(claims))
    }

    /// A HelseID client-credentials token for `client`.
    pub fn system_token(&self, client: &SystemClient, jkt: Option<&str>, now: i64) -> String {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), json!(client.client_id));
        claims.insert(
            "helseid://claims/client/claims/orgnr_parent".into(),
            json!(client.org_number.as_str()),
        );
        let scope = Provider::Helseid.api_scope();
        self.common_claims(
            &mut claims,
            Provider::Helseid,
            &client.client_id,
            scope,
            jkt,
            now,
        );
        self.sign("at+jwt", &Value::Object(claims))
    }

    fn common_claims(
        &self,
        claims: &mut serde_json::Map<String, Value>,
        provider: Provider,
        client_id: &str,
        scope: &str,
        jkt: Option<&str>,
        now: i64,
    ) {
        claims.insert("iss".into(), json!(provider.issuer(&self.origin)));
        claims.insert("aud".into(), json!(AUDIENCE));
        claims.insert("client_id".into(), json!(client_id));
        claims.insert("scope".into(), json!(scope));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + TOKEN_LIFETIME));
        claims.insert("jti".into(), json!(random_value()));
        if let Some(jkt) = jkt {
            claims.insert("cnf".into(), json!({ "jkt": jkt }));
        }
    }
}
