//! What can be wrong with an envelope or a key; each variant is one stable problem.

/// Why an envelope or key was refused. The gateway maps each to a problem type; none
/// carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the envelope is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the envelope has more than {limit} recipients")]
    TooManyRecipients { limit: usize },
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported {field}: only {supported}")]
    Unsupported {
        field: &'static str,
        supported: &'static str,
    },
    #[error("{0} is not a P-256 point")]
    InvalidPoint(&'static str),
    #[error("the same recipient key appears twice")]
    DuplicateRecipient,
    #[error("no recipient entry for this key")]
    NotARecipient,
    #[error("the envelope does not decrypt with this key")]
    Decrypt,
    #[error("the sender's signature does not verify")]
    BadSignature,
    #[error("the signer {0} is not a known device of the sender")]
    UnknownSigner(String),
    #[error("the inner and outer headers disagree on {0}")]
    BindingMismatch(&'static str),
    #[error("key generation or signing failed")]
    Crypto,
}
