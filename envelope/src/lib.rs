//! The sealed message of icbt-gateway, on JOSE so that a browser can make one with
//! Web Crypto or the npm `jose` library.
//!
//! A message is signed by the sender's device (JWS compact, ES256, RFC 7515) and the
//! JWS is encrypted (JWE general JSON serialization, RFC 7516) with A256GCM to one
//! recipient entry per device key, each with ECDH-ES+A256KW on P-256 (RFC 7518 §4.6).
//! Both protected headers bind the episode, message id, kind and sending device, so a
//! ciphertext cannot be replayed under another episode or id. docs/envelope.md is the
//! format with a worked example.
//!
//! Owns: the format ([`seal`], [`Envelope::parse`], [`Envelope::open`]), device keys
//! ([`DeviceKeys`]), the gateway's policy over an envelope it cannot open
//! ([`policy::check`]), and the safety number two people compare ([`safety_number`]).
//!
//! Must not know about: HTTP, storage, tokens, or who the participants of an episode
//! are; callers pass key ids and public keys in. Pure: no I/O, no clock.
//!
//! Primitives: ring for AES-256-GCM, SHA-256 (the Concat KDF), ECDSA P-256 and the
//! sender's ephemeral ECDH. ring's ECDH accepts only ephemeral private keys, so the
//! recipient's static-key agreement and the validation of received points (the
//! invalid-curve defence) use the `RustCrypto` `p256` crate; ring has no AES key wrap, so RFC 3394
//! comes from the `RustCrypto` `aes-kw` crate. Private scalars are zeroized on drop.
//!
//! A reader starts at [`seal`] and [`Envelope`].

mod error;
mod jwe;
mod jwk;
mod jws;
mod kdf;
mod keys;
pub mod policy;
mod possession;
mod safety;

pub use error::EnvelopeError;
pub use icbt_jose::Jwk;
pub use jwe::{Envelope, Limits, Opened, RecipientEntry, seal};
pub use jwk::PublicKey;
pub use jws::SignedMessage;
pub use keys::PrivateJwk;
pub use keys::{DecryptionKey, DeviceKeys, SigningKey};
pub use possession::{PROOF_TYP, PossessionClaims, verify_possession};
pub use safety::safety_number;

/// The media type of a sealed envelope (the JWE JSON serialization's own).
pub const MEDIA_TYPE: &str = "application/jose+json";
/// `typ` of the outer JWE.
pub const ENVELOPE_TYP: &str = "icbt-envelope+jwe";
/// `cty` of the outer JWE and `typ` of the inner JWS.
pub const MESSAGE_TYP: &str = "icbt-message+jws";

/// What a sealed message is bound to: both protected headers carry it and a reader and
/// the gateway compare it with where the message was posted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    /// The treatment episode's id (UUID, lower-case hyphenated).
    #[serde(rename = "icbt_episode")]
    pub episode: String,
    /// The message's client-chosen id (UUID, lower-case hyphenated).
    #[serde(rename = "icbt_message")]
    pub message: String,
    /// `message`, `feedback`, `questionnaire-response` or `notice`.
    #[serde(rename = "icbt_kind")]
    pub kind: String,
    /// The sending device: its signing key's RFC 7638 thumbprint, also the JWS `kid`.
    #[serde(rename = "icbt_sender")]
    pub sender: String,
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn unb64(text: &str, what: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| EnvelopeError::Malformed(what))
}
