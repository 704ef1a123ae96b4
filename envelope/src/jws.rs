//! The inner signature: JWS compact serialization (RFC 7515 §7.1), ES256 only.

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::jwk::PublicKey;
use crate::keys::SigningKey;
use crate::{Binding, EnvelopeError, MESSAGE_TYP, b64, unb64};

/// The JWS protected header. Unknown members are refused: a member we do not check
/// could be read differently by another library (RFC 7515 §4, `crit`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
    icbt_episode: String,
    icbt_message: String,
    icbt_kind: String,
    icbt_sender: String,
}

/// Signs `payload` for `binding` with the device key (whose id must be the binding's
/// sender). Returns the JWS compact serialization.
pub(crate) fn sign(
    payload: &[u8],
    binding: &Binding,
    key: &SigningKey,
) -> Result<String, EnvelopeError> {
    let header = Header {
        alg: "ES256".into(),
        kid: key.kid(),
        typ: MESSAGE_TYP.into(),
        icbt_episode: binding.episode.clone(),
        icbt_message: binding.message.clone(),
        icbt_kind: binding.kind.clone(),
        icbt_sender: binding.sender.clone(),
    };
    if header.kid != binding.sender {
        return Err(EnvelopeError::BindingMismatch("sender"));
    }
    let header = serde_json::to_vec(&header).map_err(|_| EnvelopeError::Crypto)?;
    let input = format!("{}.{}", b64(&header), b64(payload));
    let signature = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&signature)))
}

/// A parsed, not yet verified, inner JWS.
#[derive(Debug)]
pub struct SignedMessage {
    binding: Binding,
    kid: String,
    signing_input: String,
    signature: Vec<u8>,
    payload: Vec<u8>,
}

impl SignedMessage {
    pub fn parse(compact: &str) -> Result<Self, EnvelopeError> {
        let mut parts = compact.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(EnvelopeError::Malformed("inner JWS is not three parts"));
        };
        let header: Header = serde_json::from_slice(&unb64(header_b64, "inner JWS header")?)
            .map_err(|_| EnvelopeError::Malformed("inner JWS header"))?;
        if header.alg != "ES256" {
            return Err(EnvelopeError::Unsupported {
                field: "JWS alg",
                supported: "ES256",
            });
        }
        if header.typ != MESSAGE_TYP {
            return Err(EnvelopeError::Malformed("inner JWS typ"));
        }
        if header.kid != header.icbt_sender {
            return Err(EnvelopeError::BindingMismatch("sender"));
        }
        let signature = unb64(signature_b64, "inner JWS signature")?;
        if signature.len() != 64 {
            return Err(EnvelopeError::BadSignature);
        }
        Ok(Self {
            binding: Binding {
                episode: header.icbt_episode,
                message: header.icbt_message,
                kind: header.icbt_kind,
                sender: header.icbt_sender,
            },
            kid: header.kid,
            signing_input: format!("{header_b64}.{payload_b64}"),
            signature,
            payload: unb64(payload_b64, "inner JWS payload")?,
        })
    }

    /// The signer's key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Checks the signature with `key`, which must be the key `kid` names.
    pub fn verify(&self, key: &PublicKey) -> Result<(), EnvelopeError> {
        if key.thumbprint() != self.kid {
            return Err(EnvelopeError::UnknownSigner(self.kid.clone()));
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.sec1())
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// The signed payload; trust it only after [`Self::verify`].
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Verifies any ES256 compact JWS over `signing_input` (used by the RFC vector test).
#[cfg(test)]
fn verify_es256(key: &PublicKey, signing_input: &str, signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.sec1())
        .verify(signing_input.as_bytes(), signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(sender: &str) -> Binding {
        Binding {
            episode: "e".into(),
            message: "m".into(),
            kind: "message".into(),
            sender: sender.into(),
        }
    }

    /// RFC 7515 Appendix A.3: the published ES256 JWS verifies with ring through our key
    /// parsing, and fails when one byte of the payload changes.
    #[test]
    fn rfc7515_appendix_a3_es256() {
        let key = PublicKey::from_coordinates(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            "key",
        )
        .unwrap();
        let input = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let signature = unb64(
            "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
            "sig",
        )
        .unwrap();
        assert!(verify_es256(&key, input, &signature));
        assert!(!verify_es256(
            &key,
            &input.replace("eyJpc3", "eyJpc4"),
            &signature
        ));
    }

    #[test]
    fn signs_and_verifies_with_the_binding_in_the_header() {
        let key = SigningKey::generate().unwrap();
        let jws = sign(b"hello", &binding(&key.kid()), &key).unwrap();
        let parsed = SignedMessage::parse(&jws).unwrap();
        parsed.verify(key.public()).unwrap();
        assert_eq!(parsed.payload(), b"hello");
        assert_eq!(parsed.binding(), &binding(&key.kid()));
    }

    #[test]
    fn refuses_another_key_and_a_changed_payload() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let jws = sign(b"hello", &binding(&key.kid()), &key).unwrap();
        let parsed = SignedMessage::parse(&jws).unwrap();
        assert!(matches!(
            parsed.verify(other.public()),
            Err(EnvelopeError::UnknownSigner(_))
        ));
        let mut parts: Vec<&str> = jws.split('.').collect();
        let changed = b64(b"hellO");
        parts[1] = &changed;
        let forged = SignedMessage::parse(&parts.join(".")).unwrap();
        assert_eq!(
            forged.verify(key.public()),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn refuses_a_sender_that_is_not_the_signer() {
        let key = SigningKey::generate().unwrap();
        assert_eq!(
            sign(b"x", &binding("someone-else"), &key).err(),
            Some(EnvelopeError::BindingMismatch("sender"))
        );
    }

    #[test]
    fn refuses_malformed_compact_forms() {
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA"] {
            assert!(SignedMessage::parse(bad).is_err(), "{bad}");
        }
    }
}
