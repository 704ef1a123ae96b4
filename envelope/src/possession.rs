//! Proof of possession for a device being published: a compact JWS (RFC 7515, ES256)
//! signed with the device's signing key, over the device id, the thumbprint of its
//! encryption key, its expiry and when the proof was made. The gateway takes a device
//! only with a fresh proof, so nobody can publish a public key they do not hold (someone
//! else's, to be sealed to or to pass off as theirs), and the encryption key is bound to
//! the signing key by the one who holds it.

use icbt_jose::{Algorithm, CompactJws};
use serde::{Deserialize, Serialize};

use crate::jwk::PublicKey;
use crate::keys::DeviceKeys;
use crate::{EnvelopeError, b64};

/// The proof's JWS `typ`.
pub const PROOF_TYP: &str = "icbt-device-proof+jwt";

/// What a proof states; trust it only from [`verify_possession`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PossessionClaims {
    /// The device id: the RFC 7638 thumbprint of the signing key.
    pub device_id: String,
    /// The RFC 7638 thumbprint of the encryption key published with it.
    pub encryption_kid: String,
    /// The expiry published with it (Unix ms).
    pub expires_at_ms: i64,
    /// When the proof was made (Unix seconds).
    pub iat: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

impl DeviceKeys {
    /// A proof that this device's keys, expiring at `expires_at_ms`, are published by
    /// their holder, made at `iat` (Unix seconds).
    pub fn possession_proof(&self, expires_at_ms: i64, iat: i64) -> Result<String, EnvelopeError> {
        let header = Header {
            alg: "ES256".into(),
            typ: PROOF_TYP.into(),
            kid: self.device_id(),
        };
        let claims = PossessionClaims {
            device_id: self.device_id(),
            encryption_kid: self.encryption.kid(),
            expires_at_ms,
            iat,
        };
        let header = serde_json::to_vec(&header).map_err(|_| EnvelopeError::Crypto)?;
        let claims = serde_json::to_vec(&claims).map_err(|_| EnvelopeError::Crypto)?;
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self.signing.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", b64(&signature)))
    }
}

/// Checks `proof` against the signing key being published and returns what it states;
/// the caller compares that with the rest of the request.
pub fn verify_possession(
    proof: &str,
    signing: &PublicKey,
) -> Result<PossessionClaims, EnvelopeError> {
    let jws = CompactJws::parse(proof, &[Algorithm::ES256])
        .map_err(|_| EnvelopeError::Malformed("proof is not an ES256 compact JWS"))?;
    let header: Header = serde_json::from_slice(&jws.header_bytes)
        .map_err(|_| EnvelopeError::Malformed("proof header"))?;
    let jwk = signing.to_jwk();
    if header.typ != PROOF_TYP || header.kid != jwk.thumbprint() {
        return Err(EnvelopeError::Malformed("proof typ or kid"));
    }
    jwk.verify(
        Algorithm::ES256,
        jws.signing_input().as_bytes(),
        jws.signature(),
    )
    .map_err(|_| EnvelopeError::BadSignature)?;
    serde_json::from_slice(&jws.payload).map_err(|_| EnvelopeError::Malformed("proof claims"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_with_its_own_key_only_and_states_what_was_signed() {
        let keys = DeviceKeys::generate().unwrap();
        let proof = keys
            .possession_proof(1_900_000_000_000, 1_800_000_000)
            .unwrap();
        let claims = verify_possession(&proof, keys.signing.public()).unwrap();
        assert_eq!(
            claims,
            PossessionClaims {
                device_id: keys.device_id(),
                encryption_kid: keys.encryption.kid(),
                expires_at_ms: 1_900_000_000_000,
                iat: 1_800_000_000,
            }
        );
        let other = DeviceKeys::generate().unwrap();
        assert!(verify_possession(&proof, other.signing.public()).is_err());
        // One changed byte of the claims.
        let mut parts: Vec<String> = proof.split('.').map(str::to_owned).collect();
        let mut claims = crate::unb64(&parts[1], "claims").unwrap();
        claims[5] ^= 1;
        parts[1] = b64(&claims);
        assert!(verify_possession(&parts.join("."), keys.signing.public()).is_err());
        assert!(verify_possession("a.b", keys.signing.public()).is_err());
    }
}
