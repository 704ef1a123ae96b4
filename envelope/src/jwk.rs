//! P-256 public keys as JWK (RFC 7517, RFC 7518 §6.2) and their RFC 7638 thumbprints.

use p256::elliptic_curve::sec1::ToSec1Point;
use serde::{Deserialize, Serialize};

use crate::{EnvelopeError, b64, unb64};

/// A JWK as it travels. Only `kty`, `crv`, `x` and `y` define the key; the rest is
/// carried so that keys from other libraries parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    /// Present only in a private JWK; a public key with `d` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

/// A P-256 public key known to be a point on the curve (not the identity).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// SEC 1 uncompressed: 0x04 || x || y.
    sec1: [u8; 65],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PublicKey")
            .field(&self.thumbprint())
            .finish()
    }
}

impl PublicKey {
    /// From a public JWK; refuses other curves, a private key, and points off the curve.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, EnvelopeError> {
        if jwk.kty != "EC" || jwk.crv != "P-256" {
            return Err(EnvelopeError::Unsupported {
                field: "key type",
                supported: "EC P-256",
            });
        }
        if jwk.d.is_some() {
            return Err(EnvelopeError::Malformed(
                "a public key carries a private part",
            ));
        }
        Self::from_coordinates(&jwk.x, &jwk.y, "key")
    }

    /// From base64url coordinates; `what` names the key in errors.
    pub(crate) fn from_coordinates(
        x: &str,
        y: &str,
        what: &'static str,
    ) -> Result<Self, EnvelopeError> {
        let x = unb64(x, "key coordinate x")?;
        let y = unb64(y, "key coordinate y")?;
        if x.len() != 32 || y.len() != 32 {
            return Err(EnvelopeError::InvalidPoint(what));
        }
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..33].copy_from_slice(&x);
        sec1[33..].copy_from_slice(&y);
        Self::from_sec1(&sec1, what)
    }

    /// From SEC 1 uncompressed bytes, checking the point is on the curve.
    pub(crate) fn from_sec1(bytes: &[u8], what: &'static str) -> Result<Self, EnvelopeError> {
        let sec1: [u8; 65] = bytes
            .try_into()
            .map_err(|_| EnvelopeError::InvalidPoint(what))?;
        if sec1[0] != 4 {
            return Err(EnvelopeError::InvalidPoint(what));
        }
        p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| EnvelopeError::InvalidPoint(what))?;
        Ok(Self { sec1 })
    }

    pub(crate) fn from_p256(key: &p256::PublicKey) -> Self {
        let point = key.as_affine().to_sec1_point(false);
        let mut sec1 = [0u8; 65];
        sec1.copy_from_slice(point.as_bytes());
        Self { sec1 }
    }

    pub(crate) fn to_p256(&self) -> Result<p256::PublicKey, EnvelopeError> {
        p256::PublicKey::from_sec1_bytes(&self.sec1).map_err(|_| EnvelopeError::InvalidPoint("key"))
    }

    /// SEC 1 uncompressed bytes, as ring wants them.
    pub fn sec1(&self) -> &[u8; 65] {
        &self.sec1
    }

    /// The public JWK, with no `kid`, `use` or `alg`.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64(&self.sec1[1..33]),
            y: b64(&self.sec1[33..]),
            d: None,
            kid: None,
            use_: None,
            alg: None,
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the key's id everywhere here, so the
    /// directory cannot pair an id with another key.
    pub fn thumbprint(&self) -> String {
        let jwk = self.to_jwk();
        // §3.2: required members only, lexicographic order, no whitespace.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk.x, jwk.y
        );
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(x: &str, y: &str) -> Jwk {
        serde_json::from_value(serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}))
            .unwrap()
    }

    #[test]
    fn accepts_a_point_on_the_curve_and_round_trips() {
        // RFC 7515 Appendix A.3's key.
        let key = PublicKey::from_jwk(&jwk(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        ))
        .unwrap();
        assert_eq!(
            key.to_jwk().x,
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
        );
    }

    #[test]
    fn rejects_a_point_off_the_curve() {
        // The A.3 key with y changed in its last byte: the invalid-curve attack's input.
        let bad = jwk(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5aA",
        );
        assert_eq!(
            PublicKey::from_jwk(&bad),
            Err(EnvelopeError::InvalidPoint("key"))
        );
        let zero = jwk(&b64(&[0; 32]), &b64(&[0; 32]));
        assert!(PublicKey::from_jwk(&zero).is_err());
    }

    #[test]
    fn rejects_other_curves_short_coordinates_and_private_parts() {
        let mut other = jwk("AA", "AA");
        other.crv = "P-384".into();
        assert!(matches!(
            PublicKey::from_jwk(&other),
            Err(EnvelopeError::Unsupported { .. })
        ));
        assert_eq!(
            PublicKey::from_jwk(&jwk("AA", "AA")),
            Err(EnvelopeError::InvalidPoint("key"))
        );
        let mut private = jwk(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        );
        private.d = Some("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI".into());
        assert!(matches!(
            PublicKey::from_jwk(&private),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn thumbprint_follows_rfc_7638_member_order() {
        let key = PublicKey::from_jwk(&jwk(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        ))
        .unwrap();
        let expected = b64(ring::digest::digest(
            &ring::digest::SHA256,
            br#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        )
        .as_ref());
        assert_eq!(key.thumbprint(), expected);
    }
}
