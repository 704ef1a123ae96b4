//! RFC 9457 problem details: the one place where errors become HTTP responses.
//!
//! Every error kind has a stable `type` URI (clients branch on it), a status and a title.
//! The `detail` is for the client that made the request; it is never logged, because it
//! may echo the client's own input.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use icbt_auth::policy;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::storage::EpisodeRefusal;

/// Prefix of every problem `type` this gateway emits.
pub const TYPE_PREFIX: &str = "urn:icbt-gateway:problem:";

/// The media type of problem responses.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// The kinds of error the HTTP API reports. Adding a variant is adding a documented,
/// stable `type`; renaming one is a breaking change for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    MalformedJson,
    MalformedRequest,
    RequestHeadTooLarge,
    RequestHeadTimeout,
    RequestTimeout,
    Overloaded,
    NotReady,
    StorageUnavailable,
    Internal,
    Unauthenticated,
    AmbiguousCredentials,
    AmbiguousHost,
    UseDpopNonce,
    InsufficientScope,
    AcrTooLow,
    SecurityLevelTooLow,
    HprNumberMissing,
    IssuerUnavailable,
    Forbidden,
    CrossSiteRequest,
    LoginStateInvalid,
    LoginFailed,
    UpstreamUnavailable,
    InvalidField,
    EpisodeIdConflict,
    InvalidTransition,
    EpisodeClosed,
    MessageIdConflict,
    KindNotAllowed,
    RateLimited,
    TooManyStreams,
    SearchTooBroad,
    EnvelopeMalformed,
    EnvelopeBindingMismatch,
    EnvelopeSenderNotADevice,
    EnvelopeRecipientMissing,
    EnvelopeRecipientUnknown,
    JournalKeyMissing,
    ClinicNotRegistered,
    DeviceConflict,
    DeviceProofInvalid,
    DeviceLimit,
    OauthInvalidRequest,
    OauthInvalidClient,
    OauthInvalidGrant,
    OauthUnsupportedGrantType,
    OauthInvalidDpopProof,
    DevPeopleFileInvalid,
}

impl ProblemKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ProblemKind; 52] = [
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::MalformedJson,
        Self::MalformedRequest,
        Self::RequestHeadTooLarge,
        Self::RequestHeadTimeout,
        Self::RequestTimeout,
        Self::Overloaded,
        Self::NotReady,
        Self::StorageUnavailable,
        Self::Internal,
        Self::Unauthenticated,
        Self::AmbiguousCredentials,
        Self::AmbiguousHost,
        Self::UseDpopNonce,
        Self::InsufficientScope,
        Self::AcrTooLow,
        Self::SecurityLevelTooLow,
        Self::HprNumberMissing,
        Self::IssuerUnavailable,
        Self::Forbidden,
        Self::CrossSiteRequest,
        Self::LoginStateInvalid,
        Self::LoginFailed,
        Self::UpstreamUnavailable,
        Self::InvalidField,
        Self::EpisodeIdConflict,
        Self::InvalidTransition,
        Self::EpisodeClosed,
        Self::MessageIdConflict,
        Self::KindNotAllowed,
        Self::RateLimited,
        Self::TooManyStreams,
        Self::SearchTooBroad,
        Self::EnvelopeMalformed,
        Self::EnvelopeBindingMismatch,
        Self::EnvelopeSenderNotADevice,
        Self::EnvelopeRecipientMissing,
        Self::EnvelopeRecipientUnknown,
        Self::JournalKeyMissing,
        Self::ClinicNotRegistered,
        Self::DeviceConflict,
        Self::DeviceProofInvalid,
        Self::DeviceLimit,
        Self::OauthInvalidRequest,
        Self::OauthInvalidClient,
        Self::OauthInvalidGrant,
        Self::OauthUnsupportedGrantType,
        Self::OauthInvalidDpopProof,
        Self::DevPeopleFileInvalid,
    ];

    /// The last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::MalformedJson => "malformed-json",
            Self::MalformedRequest => "malformed-request",
            Self::RequestHeadTooLarge => "request-head-too-large",
            Self::RequestHeadTimeout => "request-head-timeout",
            Self::RequestTimeout => "request-timeout",
            Self::Overloaded => "overloaded",
            Self::NotReady => "not-ready",
            Self::StorageUnavailable => "storage-unavailable",
            Self::Internal => "internal",
            Self::Unauthenticated => "unauthenticated",
            Self::AmbiguousCredentials => "ambiguous-credentials",
            Self::AmbiguousHost => "ambiguous-host",
            Self::UseDpopNonce => "use-dpop-nonce",
            Self::InsufficientScope => "insufficient-scope",
            Self::AcrTooLow => "acr-too-low",
            Self::SecurityLevelTooLow => "security-level-too-low",
            Self::HprNumberMissing => "hpr-number-missing",
            Self::IssuerUnavailable => "issuer-unavailable",
            Self::Forbidden => "forbidden",
            Self::CrossSiteRequest => "cross-site-request",
            Self::LoginStateInvalid => "login-state-invalid",
            Self::LoginFailed => "login-failed",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::InvalidField => "invalid-field",
            Self::EpisodeIdConflict => "episode-id-conflict",
            Self::InvalidTransition => "invalid-transition",
            Self::EpisodeClosed => "episode-closed",
            Self::MessageIdConflict => "message-id-conflict",
            Self::KindNotAllowed => "kind-not-allowed",
            Self::RateLimited => "rate-limited",
            Self::TooManyStreams => "too-many-streams",
            Self::SearchTooBroad => "search-too-broad",
            Self::EnvelopeMalformed => "envelope-malformed",
            Self::EnvelopeBindingMismatch => "envelope-binding-mismatch",
            Self::EnvelopeSenderNotADevice => "envelope-sender-not-a-device",
            Self::EnvelopeRecipientMissing => "envelope-recipient-missing",
            Self::EnvelopeRecipientUnknown => "envelope-recipient-unknown",
            Self::JournalKeyMissing => "journal-key-missing",
            Self::ClinicNotRegistered => "clinic-not-registered",
            Self::DeviceConflict => "device-conflict",
            Self::DeviceProofInvalid => "device-proof-invalid",
            Self::DeviceLimit => "device-limit",
            Self::OauthInvalidRequest => "oauth-invalid-request",
            Self::OauthInvalidClient => "oauth-invalid-client",
            Self::OauthInvalidGrant => "oauth-invalid-grant",
            Self::OauthUnsupportedGrantType => "oauth-unsupported-grant-type",
            Self::OauthInvalidDpopProof => "oauth-invalid-dpop-proof",
            Self::DevPeopleFileInvalid => "dev-people-file-invalid",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestHeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestHeadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MalformedJson
            | Self::MalformedRequest
            | Self::LoginStateInvalid
            | Self::OauthInvalidRequest
            | Self::OauthInvalidGrant
            | Self::OauthUnsupportedGrantType
            | Self::OauthInvalidDpopProof
            | Self::AmbiguousHost => StatusCode::BAD_REQUEST,
            Self::RequestTimeout
            | Self::Overloaded
            | Self::NotReady
            | Self::StorageUnavailable
            | Self::IssuerUnavailable
            | Self::DevPeopleFileInvalid => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthenticated
            | Self::AmbiguousCredentials
            | Self::UseDpopNonce
            | Self::LoginFailed
            | Self::OauthInvalidClient => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope
            | Self::AcrTooLow
            | Self::SecurityLevelTooLow
            | Self::HprNumberMissing
            | Self::Forbidden
            | Self::CrossSiteRequest
            | Self::KindNotAllowed => StatusCode::FORBIDDEN,
            Self::InvalidField
            | Self::EnvelopeMalformed
            | Self::EnvelopeBindingMismatch
            | Self::EnvelopeSenderNotADevice
            | Self::EnvelopeRecipientMissing
            | Self::EnvelopeRecipientUnknown
            | Self::JournalKeyMissing
            | Self::ClinicNotRegistered
            | Self::DeviceProofInvalid
            | Self::SearchTooBroad => StatusCode::UNPROCESSABLE_ENTITY,
            Self::EpisodeIdConflict
            | Self::InvalidTransition
            | Self::EpisodeClosed
            | Self::MessageIdConflict
            | Self::DeviceConflict
            | Self::DeviceLimit => StatusCode::CONFLICT,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::RateLimited | Self::TooManyStreams => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::NotFound => "No such resource",
            Self::MethodNotAllowed => "Method not allowed on this resource",
            Self::PayloadTooLarge => "Request body too large",
            Self::UnsupportedMediaType => "Unsupported request content type",
            Self::MalformedJson => "Request body is not the expected JSON",
            Self::MalformedRequest => "The request is not well-formed HTTP",
            Self::RequestHeadTooLarge => "The request head is larger than the gateway accepts",
            Self::RequestHeadTimeout => "The request head did not arrive in time",
            Self::RequestTimeout => "The request took too long and was abandoned",
            Self::Overloaded => "The gateway is at its concurrency limit",
            Self::NotReady => "The gateway is not ready to serve requests",
            Self::StorageUnavailable => "The database is unavailable",
            Self::Internal => "Internal error",
            Self::Unauthenticated => "Authentication required",
            Self::AmbiguousCredentials => "A request carries exactly one Authorization header",
            Self::AmbiguousHost => "A request names exactly one host",
            Self::UseDpopNonce => "The DPoP proof must carry the server's nonce",
            Self::InsufficientScope => "The token lacks a required scope",
            Self::AcrTooLow => "The login's level of assurance is too low",
            Self::SecurityLevelTooLow => "The personnel security level is too low",
            Self::HprNumberMissing => "The token carries no HPR number",
            Self::IssuerUnavailable => "The identity provider's keys are unavailable",
            Self::Forbidden => "Not allowed for this principal",
            Self::CrossSiteRequest => "A cookie-authenticated change must come from this site",
            Self::LoginStateInvalid => "The login state is unknown, used or expired",
            Self::LoginFailed => "The login did not succeed",
            Self::UpstreamUnavailable => {
                "A service the gateway depends on did not answer as expected"
            }
            Self::InvalidField => "A field has a value the gateway cannot accept",
            Self::EpisodeIdConflict => "The episode id belongs to an episode with other details",
            Self::InvalidTransition => "The episode cannot move to that state from its current one",
            Self::EpisodeClosed => "The episode is finished or cancelled and takes no new messages",
            Self::MessageIdConflict => "The message id was used for a different message",
            Self::KindNotAllowed => "This kind of message cannot be sent by this principal",
            Self::RateLimited => {
                "Too many requests from this principal; retry after the given time"
            }
            Self::TooManyStreams => "Too many open event streams and long polls for this principal",
            Self::SearchTooBroad => "The search ran out of time: narrow it",
            Self::EnvelopeMalformed => "The sealed envelope is not a valid icbt envelope",
            Self::EnvelopeBindingMismatch => {
                "The envelope's protected header names another episode, message or kind"
            }
            Self::EnvelopeSenderNotADevice => {
                "The envelope's sender is not an active device of the caller"
            }
            Self::EnvelopeRecipientMissing => {
                "The envelope leaves out a required recipient (a participant's device or the journal)"
            }
            Self::EnvelopeRecipientUnknown => {
                "The envelope is sealed to a key of no participant of the episode"
            }
            Self::JournalKeyMissing => {
                "The clinic has no active journal key, so nothing can be sealed to its record"
            }
            Self::ClinicNotRegistered => {
                "The clinic is not in this deployment's clinic register, so its records would have no journal to go to"
            }
            Self::DeviceConflict => {
                "The device id or its encryption key is already published with other details"
            }
            Self::DeviceLimit => "The owner already has the most active devices allowed",
            Self::DeviceProofInvalid => {
                "The proof does not show that the publisher holds the device's signing key"
            }
            Self::OauthInvalidRequest => {
                "The dev identity provider could not read the request (OAuth invalid_request)"
            }
            Self::OauthInvalidClient => {
                "The dev identity provider does not know the client or its credentials (OAuth invalid_client)"
            }
            Self::OauthInvalidGrant => {
                "The code is unknown, used, expired or does not match (OAuth invalid_grant)"
            }
            Self::OauthUnsupportedGrantType => {
                "The dev identity provider does not support this grant type"
            }
            Self::OauthInvalidDpopProof => {
                "The DPoP proof sent to the token endpoint does not verify"
            }
            Self::DevPeopleFileInvalid => {
                "The dev people file cannot be read; fix it and try again"
            }
        }
    }

    /// The full `type` URI.
    pub fn type_uri(self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug())
    }
}

/// The shape of every error body, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemDocument {
    /// Stable URI of the kind of problem, `urn:icbt-gateway:problem:<slug>`.
    r#type: String,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// A problem response under construction.
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemKind,
    detail: Option<String>,
    extensions: Map<String, Value>,
    headers: Vec<(axum::http::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    r#type: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten)]
    extensions: &'a Map<String, Value>,
}

impl Problem {
    pub fn new(kind: ProblemKind) -> Self {
        Self {
            kind,
            detail: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// A human-readable explanation for this occurrence.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An extension member, e.g. `path` of a JSON error or `limit` of a size error.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// A response header, e.g. `WWW-Authenticate`.
    #[must_use]
    pub fn header(mut self, name: axum::http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        let body = Body {
            r#type: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.kind.status().as_u16(),
            detail: self.detail.as_deref(),
            extensions: &self.extensions,
        };
        // Serialising this struct of strings and JSON values cannot fail; keep a fallback
        // anyway so that an error path never panics.
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"title":"Internal error","status":500}"#.to_vec())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.kind.status(), body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        if self.kind.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ProblemKind> for Problem {
    fn from(kind: ProblemKind) -> Self {
        Problem::new(kind)
    }
}

impl From<crate::storage::StorageError> for Problem {
    fn from(error: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError;
        // Storage errors carry no row content, so the log may have the whole message.
        tracing::error!(error = %error, "storage error");
        match error {
            StorageError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
            )
            | StorageError::Connect { .. } => Problem::new(ProblemKind::StorageUnavailable),
            StorageError::TooBroad { limit_ms } => Problem::new(ProblemKind::SearchTooBroad)
                .detail(format!(
                    "the search did not finish within {limit_ms} ms: add a patient, principal or episode, or a shorter time range"
                ))
                .with("limit_ms", limit_ms),
            _ => Problem::new(ProblemKind::Internal),
        }
    }
}

/// 422 `invalid-field` naming the field at `path`.
pub fn invalid(path: &str, detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidField)
        .detail(detail)
        .with("path", path)
}

/// 403, with the policy's reason in the log only.
pub fn forbidden(denial: policy::Denial) -> Problem {
    tracing::info!(reason = denial.reason_code(), "authorisation refused");
    Problem::new(ProblemKind::Forbidden)
}

impl From<EpisodeRefusal> for Problem {
    fn from(refusal: EpisodeRefusal) -> Self {
        match refusal {
            EpisodeRefusal::NotFound => Problem::new(ProblemKind::NotFound),
            EpisodeRefusal::IdConflict => Problem::new(ProblemKind::EpisodeIdConflict),
            EpisodeRefusal::InvalidTransition { from, to } => {
                Problem::new(ProblemKind::InvalidTransition)
                    .detail(format!("an episode cannot go from {from} to {to}"))
                    .with("from", from)
                    .with("to", to)
            }
            EpisodeRefusal::Closed(state) => {
                Problem::new(ProblemKind::EpisodeClosed).with("state", state)
            }
            EpisodeRefusal::Storage(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_kind_has_a_distinct_type_and_an_error_status() {
        let mut seen = HashSet::new();
        for kind in ProblemKind::ALL {
            assert!(seen.insert(kind.type_uri()), "duplicate type for {kind:?}");
            assert!(kind.status().is_client_error() || kind.status().is_server_error());
            assert!(!kind.title().is_empty());
        }
    }

    #[test]
    fn storage_time_outs_are_503_and_other_failures_500() {
        let timeout = Problem::from(crate::storage::StorageError::Database(
            sqlx::Error::PoolTimedOut,
        ));
        assert_eq!(timeout.kind(), ProblemKind::StorageUnavailable);
        let corrupt = Problem::from(crate::storage::StorageError::Corrupt("episodes.state"));
        assert_eq!(corrupt.kind(), ProblemKind::Internal);
    }

    #[test]
    fn body_is_rfc9457_with_extensions() {
        let p = Problem::new(ProblemKind::MalformedJson)
            .detail("bad")
            .with("path", "a.b[0]");
        let v: Value = serde_json::from_slice(&p.body()).unwrap();
        assert_eq!(v["type"], "urn:icbt-gateway:problem:malformed-json");
        assert_eq!(v["status"], 400);
        assert_eq!(v["detail"], "bad");
        assert_eq!(v["path"], "a.b[0]");
        assert!(v["title"].is_string());
    }
}
