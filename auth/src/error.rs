//! Why a request was not authenticated. Each refusal has a stable reason code for the log
//! (never the token), an HTTP status class and the RFC 6750 / RFC 9449 challenge.

use std::fmt::Write as _;

use crate::jose::JoseError;

/// A refused authentication or assurance requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token")]
    MissingToken,
    #[error("the Authorization header is not `Bearer <token>` or `DPoP <token>`")]
    MalformedAuthorization,
    #[error("the access token is not a valid JWS: {0}")]
    Jose(#[from] JoseError),
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("no key of the issuer has the token's kid")]
    UnknownKeyId,
    #[error("the issuer's keys cannot be fetched")]
    IssuerUnavailable,
    #[error("the token type is not at+jwt or JWT")]
    WrongTokenType,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token has no audience")]
    AudienceMissing,
    #[error("the token is for another audience")]
    AudienceMismatch,
    #[error("the token lacks the claim `{0}` or it is malformed")]
    MissingClaim(&'static str),
    #[error("the token lacks the scope `{0}`")]
    InsufficientScope(String),
    #[error("the login's level of assurance is below the required `{required}`")]
    AcrTooLow { required: &'static str },
    #[error("the personnel security level is below {required}")]
    SecurityLevelTooLow { required: u8 },
    #[error("the token carries no HPR number")]
    HprNumberMissing,
    #[error("a DPoP-bound token must be sent with the DPoP scheme")]
    DpopBoundTokenAsBearer,
    #[error("the DPoP scheme needs a DPoP-bound token")]
    DpopSchemeWithUnboundToken,
    #[error("DPoP proof missing")]
    DpopProofMissing,
    #[error("DPoP proof invalid: {0}")]
    DpopProofInvalid(&'static str),
    #[error("DPoP proof was already used")]
    DpopReplay,
    #[error("DPoP proof needs a fresh server nonce")]
    DpopNonceRequired,
    #[error("the replay or session store is unavailable")]
    StoreUnavailable,
    #[error("the session is unknown, ended or expired")]
    SessionInvalid,
    #[error("a cookie-authenticated request came from another site")]
    CrossSiteRequest,
}

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: authenticate (again).
    Unauthenticated,
    /// 403: authenticated, but an assurance or scope requirement is not met.
    Forbidden,
    /// 503: a dependency (issuer keys, replay store) is unavailable.
    Unavailable,
}

impl AuthError {
    /// A stable code for logs and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedAuthorization => "malformed_authorization",
            Self::Jose(JoseError::AlgorithmNotAllowed(_)) => "algorithm_not_allowed",
            Self::Jose(JoseError::BadSignature) => "bad_signature",
            Self::Jose(JoseError::KeyAlgorithmMismatch(_)) => "key_algorithm_mismatch",
            Self::Jose(_) => "malformed_token",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKeyId => "unknown_kid",
            Self::IssuerUnavailable => "issuer_unavailable",
            Self::WrongTokenType => "wrong_token_type",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::AudienceMissing => "audience_missing",
            Self::AudienceMismatch => "audience_mismatch",
            Self::MissingClaim(_) => "missing_claim",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::AcrTooLow { .. } => "acr_too_low",
            Self::SecurityLevelTooLow { .. } => "security_level_too_low",
            Self::HprNumberMissing => "hpr_number_missing",
            Self::DpopBoundTokenAsBearer => "dpop_bound_token_as_bearer",
            Self::DpopSchemeWithUnboundToken => "dpop_scheme_unbound_token",
            Self::DpopProofMissing => "dpop_proof_missing",
            Self::DpopProofInvalid(_) => "dpop_proof_invalid",
            Self::DpopReplay => "dpop_replay",
            Self::DpopNonceRequired => "dpop_nonce_required",
            Self::StoreUnavailable => "store_unavailable",
            Self::SessionInvalid => "session_invalid",
            Self::CrossSiteRequest => "cross_site_request",
        }
    }

    pub fn refusal(&self) -> Refusal {
        match self {
            Self::InsufficientScope(_)
            | Self::AcrTooLow { .. }
            | Self::SecurityLevelTooLow { .. }
            | Self::HprNumberMissing
            | Self::CrossSiteRequest => Refusal::Forbidden,
            Self::IssuerUnavailable | Self::StoreUnavailable => Refusal::Unavailable,
            _ => Refusal::Unauthenticated,
        }
    }

    /// Whether the refusal concerns the DPoP proof (answered with the DPoP scheme).
    pub fn is_dpop(&self) -> bool {
        matches!(
            self,
            Self::DpopProofMissing
                | Self::DpopProofInvalid(_)
                | Self::DpopReplay
                | Self::DpopNonceRequired
        )
    }

    /// The `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9449 §7.1). Both schemes are
    /// offered; the error goes on the scheme the failure belongs to. `dpop_algs` is the
    /// space-separated list of accepted proof algorithms.
    pub fn challenge(&self, realm: &str, dpop_algs: &str) -> String {
        let (error, description) = match self {
            Self::MissingToken => (None, None),
            Self::InsufficientScope(scope) => (
                Some("insufficient_scope"),
                Some(format!("requires scope {scope}")),
            ),
            Self::AcrTooLow { .. } | Self::SecurityLevelTooLow { .. } | Self::HprNumberMissing => (
                Some("insufficient_user_authentication"),
                Some(self.to_string()),
            ),
            Self::DpopNonceRequired => (
                Some("use_dpop_nonce"),
                Some("Resource server requires nonce in DPoP proof".into()),
            ),
            _ if self.is_dpop() => (Some("invalid_dpop_proof"), Some(self.reason_code().into())),
            _ => (Some("invalid_token"), Some(self.reason_code().into())),
        };
        let params = |e: Option<&str>| {
            let mut p = format!("realm=\"{realm}\"");
            if let Some(e) = e {
                let _ = write!(p, ", error=\"{e}\"");
                if let Some(d) = &description {
                    let _ = write!(p, ", error_description=\"{d}\"");
                }
            }
            p
        };
        if self.is_dpop() || matches!(self, Self::DpopBoundTokenAsBearer) {
            format!("DPoP {}, algs=\"{dpop_algs}\"", params(error))
        } else {
            format!(
                "Bearer {}, DPoP realm=\"{realm}\", algs=\"{dpop_algs}\"",
                params(error)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc6750_and_rfc9449() {
        assert_eq!(
            AuthError::MissingToken.challenge("icbt", "ES256"),
            r#"Bearer realm="icbt", DPoP realm="icbt", algs="ES256""#
        );
        let expired = AuthError::Expired.challenge("icbt", "ES256");
        assert!(
            expired.starts_with(r#"Bearer realm="icbt", error="invalid_token""#),
            "{expired}"
        );
        let nonce = AuthError::DpopNonceRequired.challenge("icbt", "ES256");
        assert!(
            nonce.starts_with(r#"DPoP realm="icbt", error="use_dpop_nonce""#),
            "{nonce}"
        );
        let replay = AuthError::DpopReplay.challenge("icbt", "ES256");
        assert!(replay.contains(r#"error="invalid_dpop_proof""#), "{replay}");
    }

    #[test]
    fn assurance_failures_are_forbidden_not_unauthenticated() {
        assert_eq!(
            AuthError::AcrTooLow {
                required: "idporten-loa-high"
            }
            .refusal(),
            Refusal::Forbidden
        );
        assert_eq!(
            AuthError::SecurityLevelTooLow { required: 4 }.refusal(),
            Refusal::Forbidden
        );
        assert_eq!(AuthError::HprNumberMissing.refusal(), Refusal::Forbidden);
        assert_eq!(AuthError::Expired.refusal(), Refusal::Unauthenticated);
        assert_eq!(AuthError::IssuerUnavailable.refusal(), Refusal::Unavailable);
    }
}
