//! The inner signature: JWS compact serialization (RFC 7515 §7.1), ES256 only.

use icbt_jose::{Algorithm, CompactJws, JoseError};
use serde::{Deserialize, Serialize};

use crate::jwk::PublicKey;
use crate::keys::SigningKey;
use crate::{Binding, EnvelopeError, MESSAGE_TYP, b64};

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
        let jws = CompactJws::parse(compact, &[Algorithm::ES256]).map_err(|e| match e {
            JoseError::AlgorithmNotAllowed(_) => EnvelopeError::Unsupported {
                field: "JWS alg",
                supported: "ES256",
            },
            JoseError::BadHeader | JoseError::CriticalHeader => {
                EnvelopeError::Malformed("inner JWS header")
            }
            _ => EnvelopeError::Malformed("inner JWS is not three base64url parts"),
        })?;
        // The core read the header loosely; the envelope's header is strict.
        let header: Header = serde_json::from_slice(&jws.header_bytes)
            .map_err(|_| EnvelopeError::Malformed("inner JWS header"))?;
        if header.typ != MESSAGE_TYP {
            return Err(EnvelopeError::Malformed("inner JWS typ"));
        }
        if header.kid != header.icbt_sender {
            return Err(EnvelopeError::BindingMismatch("sender"));
        }
        if jws.signature().len() != 64 {
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
            signing_input: jws.signing_input().to_owned(),
            signature: jws.signature().to_vec(),
            payload: jws.payload,
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
        let jwk = key.to_jwk();
        if jwk.thumbprint() != self.kid {
            return Err(EnvelopeError::UnknownSigner(self.kid.clone()));
        }
        jwk.verify(
            Algorithm::ES256,
            self.signing_input.as_bytes(),
            &self.signature,
        )
        .map_err(|_| EnvelopeError::BadSignature)
    }

    /// The signed payload; trust it only after [`Self::verify`].
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unb64;

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
        let jwk = key.to_jwk();
        assert!(
            jwk.verify(Algorithm::ES256, input.as_bytes(), &signature)
                .is_ok()
        );
        assert!(
            jwk.verify(
                Algorithm::ES256,
                input.replace("eyJpc3", "eyJpc4").as_bytes(),
                &signature
            )
            .is_err()
        );
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
