//! Authentication of API requests: the `Caller` extractor turns the request's token and
//! DPoP proof into a verified principal, or a problem with the RFC 6750 / RFC 9449
//! challenge. The reason goes to the log; the client gets the standard error code only.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use icbt_auth::AuthError;
use icbt_auth::error::Refusal;
use icbt_auth::policy::AuditorRule;
use icbt_auth::principal::Authenticated;
use icbt_auth::token::{RequestFacts, Validator};

use crate::api::AppState;
use crate::problem::{Problem, ProblemKind};

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
    pub auditors: AuditorRule,
    realm: String,
    dpop_algs: String,
}

impl AuthContext {
    pub fn new(validator: Validator, public_url: Option<String>, auditors: AuditorRule) -> Self {
        Self::with_limit(validator, public_url, auditors, None)
    }

    /// With a per-principal rate: `per_minute` requests, `burst` at once.
    pub fn with_limit(
        validator: Validator,
        public_url: Option<String>,
        auditors: AuditorRule,
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
            auditors,
            realm: "icbt-gateway".into(),
            dpop_algs,
        }
    }

    /// Counts a request of `caller` against its rate; 429 with `Retry-After` when over.
    pub fn admit(&self, caller: &Authenticated) -> Result<(), Problem> {
        use governor::clock::Clock as _;
        use icbt_auth::principal::Principal;
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
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
        limiter.check_key(&key).map_err(|not_until| {
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

    fn request_uri(&self, parts: &Parts) -> String {
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

/// The verified caller of an API request.
#[derive(Debug, Clone)]
pub struct Caller(pub Authenticated);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(cached) = parts.extensions.get::<Caller>() {
            return Ok(cached.clone());
        }
        let auth = &state.auth;
        if !parts.headers.contains_key(header::AUTHORIZATION)
            && let Some(cookie) = crate::login::session_cookie(&parts.headers)
        {
            let cookie = cookie.to_owned();
            return match crate::login::session_principal(state, parts, &cookie).await {
                Ok(authenticated) => {
                    tracing::Span::current().record("principal", authenticated.principal.kind());
                    auth.admit(&authenticated)?;
                    let caller = Caller(authenticated);
                    parts.extensions.insert(caller.clone());
                    Ok(caller)
                }
                Err(error) => {
                    tracing::info!(reason = error.reason_code(), "authentication refused");
                    Err(auth.refusal(&error))
                }
            };
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let dpop: Vec<&str> = parts
            .headers
            .get_all("dpop")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let uri = auth.request_uri(parts);
        let facts = RequestFacts {
            authorization,
            dpop: &dpop,
            method: parts.method.as_str(),
            uri: &uri,
        };
        match auth.validator.authenticate(facts, &state.store).await {
            Ok(authenticated) => {
                auth.admit(&authenticated)?;
                let span = tracing::Span::current();
                span.record("principal", authenticated.principal.kind());
                span.record("issuer", &*authenticated.issuer);
                let caller = Caller(authenticated);
                parts.extensions.insert(caller.clone());
                Ok(caller)
            }
            Err(error) => {
                tracing::info!(reason = error.reason_code(), "authentication refused");
                Err(auth.refusal(&error))
            }
        }
    }
}

impl Caller {
    /// Refuses the request unless the token carries `scope` (a per-route requirement on
    /// top of the issuer's required scopes): 403 `insufficient-scope` with the RFC 6750
    /// challenge.
    pub fn require_scope(&self, auth: &AuthContext, scope: &str) -> Result<(), Problem> {
        if self.0.has_scope(scope) {
            return Ok(());
        }
        let error = AuthError::InsufficientScope(scope.to_owned());
        tracing::info!(reason = error.reason_code(), "authorisation refused");
        Err(auth.refusal(&error))
    }
}

/// Shared authentication state.
pub type SharedAuth = Arc<AuthContext>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use icbt_auth::dpop::DpopVerifier;
    use icbt_auth::principal::{Principal, SystemClient};

    #[test]
    fn per_route_scope_is_required() {
        let auth = AuthContext::new(
            Validator::new(
                Vec::new(),
                DpopVerifier::new(vec![icbt_auth::jose::Algorithm::ES256], 60, 5, None),
            ),
            None,
            AuditorRule::default(),
        );
        let caller = Caller(Authenticated {
            principal: Principal::System(SystemClient {
                client_id: "p".into(),
                orgnr_parent: None,
                orgnr_child: None,
            }),
            issuer: Arc::from("helseid"),
            client_id: Some("p".into()),
            scopes: vec!["nhn:icbt-gateway/api".into()],
            token_id: None,
            expires_at: i64::MAX,
            dpop_jkt: None,
        });
        assert!(caller.require_scope(&auth, "nhn:icbt-gateway/api").is_ok());
        let refused = caller
            .require_scope(&auth, "nhn:icbt-gateway/episodes.write")
            .unwrap_err()
            .into_response();
        assert_eq!(refused.status(), 403);
        let challenge = refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
    }
}
