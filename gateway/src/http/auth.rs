//! What authentication needs at request time, apart from any request: the token
//! validator with its rate limit and auditor rule ([`AuthContext`]), and the hosted
//! logins' OpenID clients ([`LoginContext`]). The extractors and the login handlers use
//! them; they know nothing of the handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use icbt_auth::AuthError;
use icbt_auth::client::{ClientKey, ClientKeyAlgorithm, OidcClient};
use icbt_auth::error::Refusal;
use icbt_auth::policy::Rules;
use icbt_auth::principal::Authenticated;
use icbt_auth::token::Validator;
use icbt_config::LoginConfig;

use crate::http::errors::{Problem, ProblemKind};

/// The `DPoP-Nonce` response header (RFC 9449 §8).
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// Per-principal request rate, keyed by a hash of the principal's identity.
pub type PrincipalLimiter = governor::DefaultKeyedRateLimiter<[u8; 32]>;

/// What authentication needs at request time.
#[derive(Debug)]
pub struct AuthContext {
    pub validator: Validator,
    /// `None` when rate limiting is off.
    pub limiter: Option<PrincipalLimiter>,
    /// Origin clients address, for DPoP `htu`; else taken from the request.
    pub public_url: Option<String>,
    /// Who holds the auditor role, and the clinic register's scopes.
    pub rules: Rules,
    realm: String,
    dpop_algs: String,
}

impl AuthContext {
    pub fn new(validator: Validator, public_url: Option<String>, rules: Rules) -> Self {
        Self::with_limit(validator, public_url, rules, None)
    }

    /// With a per-principal rate: `per_minute` requests, `burst` at once.
    pub fn with_limit(
        validator: Validator,
        public_url: Option<String>,
        rules: Rules,
        limit: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,
    ) -> Self {
        let limiter = limit.map(|(per_minute, burst)| {
            governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
        });
        let dpop_algs = validator
            .dpop()
            .algorithms()
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            validator,
            limiter,
            public_url,
            rules,
            realm: "icbt-gateway".into(),
            dpop_algs,
        }
    }

    /// Counts a request of `caller` against its rate; 429 with `Retry-After` when over.
    pub fn admit(&self, caller: &Authenticated) -> Result<(), Problem> {
        use governor::clock::Clock as _;
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&principal_key(caller))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                tracing::info!(reason = "rate_limited", "request refused");
                let mut problem =
                    Problem::new(ProblemKind::RateLimited).with("retry_after_seconds", seconds);
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    problem = problem.header(header::RETRY_AFTER, value);
                }
                problem
            })
    }

    /// Forgets rate state of principals not seen lately (bounded memory).
    pub fn forget_idle_principals(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }

    /// The problem for a refused authentication, with its challenge.
    pub fn refusal(&self, error: &AuthError) -> Problem {
        let kind = match error {
            AuthError::InsufficientScope(_) => ProblemKind::InsufficientScope,
            AuthError::AcrTooLow { .. } => ProblemKind::AcrTooLow,
            AuthError::SecurityLevelTooLow { .. } => ProblemKind::SecurityLevelTooLow,
            AuthError::HprNumberMissing => ProblemKind::HprNumberMissing,
            AuthError::DpopNonceRequired => ProblemKind::UseDpopNonce,
            AuthError::CrossSiteRequest => ProblemKind::CrossSiteRequest,
            _ if error.refusal() == Refusal::Unavailable => {
                if matches!(error, AuthError::IssuerUnavailable) {
                    ProblemKind::IssuerUnavailable
                } else {
                    ProblemKind::StorageUnavailable
                }
            }
            _ => ProblemKind::Unauthenticated,
        };
        let mut problem = Problem::new(kind);
        if error.refusal() == Refusal::Forbidden {
            // The caller is who they say; which requirement failed is theirs to know.
            problem = problem.detail(error.to_string());
        }
        if error.refusal() != Refusal::Unavailable
            && let Ok(value) = HeaderValue::from_str(&error.challenge(&self.realm, &self.dpop_algs))
        {
            problem = problem.header(header::WWW_AUTHENTICATE, value);
        }
        if let Some(nonce) = self.validator.dpop().fresh_nonce(icbt_auth::now_secs())
            && let Ok(value) = HeaderValue::from_str(&nonce)
        {
            problem = problem.header(DPOP_NONCE, value);
        }
        problem
    }

    /// The URI a DPoP proof must name: the configured public origin, else the request's own.
    pub(crate) fn request_uri(&self, parts: &Parts) -> String {
        let path = parts.uri.path();
        if let Some(origin) = &self.public_url {
            return format!("{}{path}", origin.trim_end_matches('/'));
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        format!("https://{authority}{path}")
    }
}

/// Shared authentication state.
pub type SharedAuth = Arc<AuthContext>;

/// One issuer's hosted login.
#[derive(Debug)]
pub struct LoginProvider {
    pub(crate) config: LoginConfig,
    pub(crate) client: OidcClient,
}

/// Every configured hosted login, by issuer name.
#[derive(Debug, Default)]
pub struct LoginContext {
    pub(crate) providers: HashMap<String, LoginProvider>,
}

/// Why the hosted login could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `login.{key}`: {problem}")]
pub struct LoginSetupError {
    key: &'static str,
    problem: String,
}

impl LoginContext {
    /// Builds the clients; they share the issuers' metadata and keys with `validator`.
    pub fn from_config(
        logins: &[LoginConfig],
        validator: &Validator,
        http: &reqwest::Client,
    ) -> Result<Self, LoginSetupError> {
        let mut providers = HashMap::new();
        for config in logins {
            let profile = validator
                .issuers()
                .iter()
                .find(|p| *p.name == *config.issuer)
                .ok_or_else(|| LoginSetupError {
                    key: "issuer",
                    problem: format!("no issuer named `{}`", config.issuer),
                })?;
            let alg = ClientKeyAlgorithm::parse(&config.key_algorithm).ok_or_else(|| {
                LoginSetupError {
                    key: "key_algorithm",
                    problem: "unsupported".into(),
                }
            })?;
            let key = ClientKey::from_pem_file(&config.key_file, alg, config.key_id.clone())
                .map_err(|e| LoginSetupError {
                    key: "key_file",
                    problem: e.to_string(),
                })?;
            let client = OidcClient::new(
                config.client_id.clone(),
                key,
                config.assertion_audience.clone(),
                profile.keys.clone(),
                http.clone(),
                None,
            );
            providers.insert(
                config.issuer.clone(),
                LoginProvider {
                    config: config.clone(),
                    client,
                },
            );
        }
        Ok(Self { providers })
    }
}

/// A principal's key for per-principal limits (rate, open streams): SHA-256 of issuer and
/// identity, so no national id number is kept in the limiters' memory.
pub fn principal_key(caller: &Authenticated) -> crate::push::PrincipalKey {
    use icbt_auth::principal::Principal;
    let identity = match &caller.principal {
        Principal::Patient(p) => format!("patient\u{0}{}", p.pid.expose()),
        Principal::Clinician(c) => format!("clinician\u{0}{}", c.hpr_number),
        Principal::System(s) => format!("system\u{0}{}", s.client_id),
    };
    let mut key = [0u8; 32];
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\u{0}{identity}", caller.issuer).as_bytes(),
    );
    key.copy_from_slice(digest.as_ref());
    key
}
