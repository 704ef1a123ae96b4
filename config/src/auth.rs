//! Configuration of authentication: the identity providers the gateway trusts, DPoP, the
//! auditor role, the gateway's own HelseID client and the hosted login.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, Secret, invalid};

/// Algorithms an issuer may sign with. `none` and HMAC are not representable.
pub const SIGNING_ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// Everything about who may call the API.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PEM bundle of CAs trusted for identity providers and outbound calls, instead of
    /// the built-in web PKI roots (for test and internal CAs).
    pub trust_roots_file: Option<PathBuf>,
    /// Trusted token issuers.
    pub issuers: Vec<IssuerConfig>,
    pub jwks: JwksConfig,
    pub dpop: DpopConfig,
    pub auditors: AuditorConfig,
}

/// Which kind of identity provider an issuer is; decides the principal a token yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerKind {
    /// ID-porten: citizens (patients), `pid` and `acr`.
    Idporten,
    /// HelseID: health personnel (HPR number, security level) and system clients.
    Helseid,
}

/// One trusted issuer.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// A short name for logs and metrics, e.g. `idporten`.
    pub name: String,
    pub kind: IssuerKind,
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// OpenID discovery document; defaults to `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// The audience this gateway is known by at this issuer; tokens without it are refused.
    pub audience: String,
    /// Signature algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance for clock differences when checking `exp`, `nbf` and `iat` (at most 300).
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Scopes every token from this issuer must carry to use the API at all.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// ID-porten: the lowest `acr` accepted.
    #[serde(default = "default_min_acr")]
    pub min_acr: String,
    /// HelseID: the lowest security level accepted for personnel.
    #[serde(default = "default_min_security_level")]
    pub min_security_level: u8,
    /// Claim names, where an issuer differs from the defaults of its kind.
    #[serde(default)]
    pub claims: ClaimNames,
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into(), "RS256".into(), "PS256".into()]
}
fn default_skew() -> u64 {
    30
}
fn default_min_acr() -> String {
    "idporten-loa-high".into()
}
fn default_min_security_level() -> u8 {
    4
}

/// Claim names; unset ones take the default of the issuer's kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub pid: Option<String>,
    pub acr: Option<String>,
    pub hpr_number: Option<String>,
    pub security_level: Option<String>,
    pub orgnr_parent: Option<String>,
    pub orgnr_child: Option<String>,
}

/// Key-set caching.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// Keys older than this are refetched (the issuer may still be down: then the cached
    /// keys stay in use).
    pub max_age_seconds: u64,
    /// An unknown `kid` triggers a refetch at most this often per issuer.
    pub min_refetch_interval_seconds: u64,
    /// Time a metadata or key-set fetch may take.
    pub fetch_timeout_ms: u64,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            max_age_seconds: 86_400,
            min_refetch_interval_seconds: 30,
            fetch_timeout_ms: 5_000,
        }
    }
}

/// DPoP proofs (RFC 9449) on the API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpopConfig {
    /// A proof's `iat` may be at most this old (and this far ahead, with the skew).
    pub proof_max_age_seconds: u64,
    /// Demand a server nonce in every proof (`use_dpop_nonce`).
    pub require_nonce: bool,
    /// Key of the stateless nonces, shared by all instances. Required with `require_nonce`.
    pub nonce_secret: Option<Secret>,
    /// A nonce is accepted this long after it was issued.
    pub nonce_lifetime_seconds: u64,
    /// Signature algorithms accepted for proofs.
    pub algorithms: Vec<String>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            proof_max_age_seconds: 60,
            require_nonce: false,
            nonce_secret: None,
            nonce_lifetime_seconds: 300,
            algorithms: vec![
                "ES256".into(),
                "PS256".into(),
                "RS256".into(),
                "EdDSA".into(),
            ],
        }
    }
}

/// Who holds the auditor role: it reaches the audit API and nothing else.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditorConfig {
    /// HelseID personnel with these HPR numbers are auditors. With a `[[clinics]]`
    /// register, each sees the records of their own hospital's clinics (the hospital or
    /// clinic their token's organisation claims name).
    pub hpr_numbers: Vec<String>,
    /// Tokens carrying this scope are auditors (scoped as `hpr_numbers` are).
    pub scope: Option<String>,
    /// The deployment's (or a national) security team: these HPR numbers see every
    /// clinic's records, whatever their organisation.
    pub deployment_hpr_numbers: Vec<String>,
    /// Tokens carrying this scope see every clinic's records.
    pub deployment_scope: Option<String>,
}

impl AuthConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for issuer in &self.issuers {
            if !names.insert(issuer.name.as_str()) {
                return Err(invalid(
                    "auth.issuers.name",
                    format!("`{}` is used twice", issuer.name),
                    "give each issuer its own name",
                ));
            }
            issuer.validate()?;
        }
        self.validate_dpop()
    }

    fn validate_dpop(&self) -> Result<(), ConfigError> {
        if self.dpop.require_nonce && self.dpop.nonce_secret.is_none() {
            return Err(invalid(
                "auth.dpop.nonce_secret",
                "is required when auth.dpop.require_nonce is true".into(),
                "set nonce_secret = { file = \"...\" } with at least 32 random bytes",
            ));
        }
        if self
            .dpop
            .nonce_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return Err(invalid(
                "auth.dpop.nonce_secret",
                "is shorter than 32 bytes".into(),
                "use at least 32 random bytes",
            ));
        }
        if let Some(bad) = self
            .dpop
            .algorithms
            .iter()
            .find(|a| !SIGNING_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(invalid(
                "auth.dpop.algorithms",
                format!("`{bad}` is not accepted"),
                "use asymmetric algorithms",
            ));
        }
        if self.dpop.proof_max_age_seconds == 0 || self.dpop.proof_max_age_seconds > 600 {
            return Err(invalid(
                "auth.dpop.proof_max_age_seconds",
                "must be 1 to 600".into(),
                "e.g. 60",
            ));
        }
        Ok(())
    }
}

impl IssuerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.issuer.starts_with("https://")
            || self
                .discovery_url
                .as_ref()
                .is_some_and(|u| !u.starts_with("https://"))
        {
            return Err(invalid(
                "auth.issuers.issuer",
                format!("`{}` is not an https URL", self.issuer),
                "use the issuer's exact https URL, e.g. https://helseid-sts.nhn.no",
            ));
        }
        if self.audience.is_empty() {
            return Err(invalid(
                "auth.issuers.audience",
                "is empty".into(),
                "set the audience this gateway has at the issuer",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(invalid(
                "auth.issuers.algorithms",
                "is empty".into(),
                "list e.g. [\"ES256\", \"RS256\"]",
            ));
        }
        if let Some(bad) = self
            .algorithms
            .iter()
            .find(|a| !SIGNING_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(invalid(
                "auth.issuers.algorithms",
                format!("`{bad}` is not an accepted signature algorithm (none and HMAC never are)"),
                "use asymmetric algorithms: ES256, ES384, RS256, PS256, EdDSA, …",
            ));
        }
        if self.clock_skew_seconds > 300 {
            return Err(invalid(
                "auth.issuers.clock_skew_seconds",
                "is over 300".into(),
                "keep it small, e.g. 30",
            ));
        }
        if ![
            "idporten-loa-low",
            "idporten-loa-substantial",
            "idporten-loa-high",
        ]
        .contains(&self.min_acr.as_str())
        {
            return Err(invalid(
                "auth.issuers.min_acr",
                format!("`{}` is not an ID-porten level", self.min_acr),
                "use idporten-loa-high (or -substantial, -low)",
            ));
        }
        if !(1..=4).contains(&self.min_security_level) {
            return Err(invalid(
                "auth.issuers.min_security_level",
                "must be 1 to 4".into(),
                "therapists need 4",
            ));
        }
        Ok(())
    }
}

/// The gateway's own HelseID client, for outbound calls (EPJ, summary record).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundClientConfig {
    /// The HelseID issuer; its discovery document names the token endpoint.
    pub issuer: String,
    pub client_id: String,
    /// PEM private key (PKCS#8) for `private_key_jwt`; RSA or EC P-256.
    pub key_file: PathBuf,
    /// `RS256`, `PS256` or `ES256`.
    pub key_algorithm: String,
    /// `kid` of the key as registered at HelseID.
    #[serde(default)]
    pub key_id: Option<String>,
    /// `aud` of the client assertion: the issuer (NHN's current practice) or the token
    /// endpoint (older documentation). Defaults to the issuer.
    #[serde(default)]
    pub assertion_audience: Option<String>,
    /// Scopes to ask for, space-separated.
    pub scope: String,
    /// The API the token is for (RFC 8707 `resource`), where the provider wants it.
    #[serde(default)]
    pub resource: Option<String>,
    /// Bind tokens to a DPoP key (HelseID requires it for DPoP APIs).
    #[serde(default = "yes")]
    pub dpop: bool,
}

fn yes() -> bool {
    true
}

/// A hosted login (backend-for-frontend) at one issuer: the gateway runs the code flow
/// with PAR and PKCE and keeps the result in an HttpOnly session cookie.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// `name` of the `[[auth.issuers]]` entry whose users log in here.
    pub issuer: String,
    pub client_id: String,
    /// PEM private key (PKCS#8) for `private_key_jwt`.
    pub key_file: PathBuf,
    /// `RS256`, `PS256` or `ES256`.
    pub key_algorithm: String,
    #[serde(default)]
    pub key_id: Option<String>,
    /// `aud` of client assertions; the issuer when unset.
    #[serde(default)]
    pub assertion_audience: Option<String>,
    /// This gateway's callback, as registered at the issuer: `https://…/auth/callback`.
    pub redirect_uri: String,
    /// Scopes to ask for; must include `openid` and the API scope.
    pub scope: String,
    /// RFC 8707 resource of the API, where the issuer wants it.
    #[serde(default)]
    pub resource: Option<String>,
    /// `acr_values` to request, e.g. `idporten-loa-high`.
    #[serde(default)]
    pub acr_values: Option<String>,
    /// Where the issuer sends the browser after logout.
    pub post_logout_redirect_uri: String,
    /// A session unused this long ends.
    #[serde(default = "default_idle")]
    pub session_idle_timeout_seconds: u64,
    /// A session ends this long after login, used or not.
    #[serde(default = "default_absolute")]
    pub session_absolute_timeout_seconds: u64,
}

fn default_idle() -> u64 {
    1_800
}
fn default_absolute() -> u64 {
    43_200
}

impl LoginConfig {
    pub(crate) fn validate(&self, auth: &AuthConfig) -> Result<(), ConfigError> {
        if !auth.issuers.iter().any(|i| i.name == self.issuer) {
            return Err(invalid(
                "login.issuer",
                format!("`{}` names no [[auth.issuers]] entry", self.issuer),
                "use the name of a configured issuer",
            ));
        }
        crate::readable_file(
            "login.key_file",
            &self.key_file,
            "point it at the login client's PEM private key",
        )?;
        if !["RS256", "PS256", "ES256"].contains(&self.key_algorithm.as_str()) {
            return Err(invalid(
                "login.key_algorithm",
                format!("`{}` is not supported", self.key_algorithm),
                "use RS256, PS256 or ES256",
            ));
        }
        if !self.redirect_uri.starts_with("https://") {
            return Err(invalid(
                "login.redirect_uri",
                "is not an https URL".into(),
                "use https://<gateway>/auth/callback",
            ));
        }
        if !self.scope.split_whitespace().any(|s| s == "openid") {
            return Err(invalid(
                "login.scope",
                "lacks `openid`".into(),
                "add openid and the API scope",
            ));
        }
        if self.session_idle_timeout_seconds == 0
            || self.session_idle_timeout_seconds > self.session_absolute_timeout_seconds
        {
            return Err(invalid(
                "login.session_idle_timeout_seconds",
                "must be above 0 and at most session_absolute_timeout_seconds".into(),
                "e.g. 1800 idle, 43200 absolute",
            ));
        }
        Ok(())
    }
}
