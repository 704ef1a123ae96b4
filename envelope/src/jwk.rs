//! P-256 public keys, checked to be points on the curve, as JWKs of the JOSE core
//! (`icbt-jose`: one JWK type and one RFC 7638 thumbprint for tokens and envelopes alike).

use icbt_jose::{Curve, Jwk};
use p256::elliptic_curve::sec1::ToSec1Point;

use crate::{EnvelopeError, b64, unb64};

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
    /// From a public JWK (the core refuses private members); refuses other key types and
    /// curves, and points off the curve.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, EnvelopeError> {
        match &jwk.key {
            icbt_jose::PublicKey::Ec {
                curve: Curve::P256,
                point,
            } => Self::from_sec1(point, "key"),
            _ => Err(EnvelopeError::Unsupported {
                field: "key type",
                supported: "EC P-256",
            }),
        }
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
        Jwk::new(icbt_jose::PublicKey::Ec {
            curve: Curve::P256,
            point: self.sec1.to_vec(),
        })
    }

    /// The coordinates, base64url.
    pub fn coordinates(&self) -> (String, String) {
        (b64(&self.sec1[1..33]), b64(&self.sec1[33..]))
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the key's id everywhere here, so the
    /// directory cannot pair an id with another key.
    pub fn thumbprint(&self) -> String {
        self.to_jwk().thumbprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Result<PublicKey, EnvelopeError> {
        let jwk: Jwk = serde_json::from_value(value).map_err(|_| EnvelopeError::Crypto)?;
        PublicKey::from_jwk(&jwk)
    }

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn accepts_a_point_on_the_curve_and_round_trips() {
        // RFC 7515 Appendix A.3's key.
        let key = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y})).unwrap();
        assert_eq!(key.coordinates().0, X);
        assert_eq!(
            serde_json::to_string(&key.to_jwk()).unwrap(),
            format!(r#"{{"kty":"EC","crv":"P-256","x":"{X}","y":"{Y}"}}"#)
        );
    }

    #[test]
    fn rejects_a_point_off_the_curve() {
        // The A.3 key with y changed in its last byte: the invalid-curve attack's input.
        let bad = serde_json::json!({"kty": "EC", "crv": "P-256", "x": X,
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5aA"});
        assert_eq!(jwk(bad), Err(EnvelopeError::InvalidPoint("key")));
        let zero = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&[0; 32]), "y": b64(&[0; 32])});
        assert!(jwk(zero).is_err());
    }

    #[test]
    fn rejects_other_curves_short_coordinates_and_private_parts() {
        let other = serde_json::json!({"kty": "EC", "crv": "P-384",
            "x": b64(&[1; 48]), "y": b64(&[2; 48])});
        assert!(matches!(jwk(other), Err(EnvelopeError::Unsupported { .. })));
        let short = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"});
        assert!(jwk(short).is_err());
        let private = serde_json::json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y,
            "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"});
        assert!(
            jwk(private).is_err(),
            "a public key slot never holds a private key"
        );
    }

    #[test]
    fn thumbprint_follows_rfc_7638_member_order() {
        let key = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y})).unwrap();
        let expected = b64(ring::digest::digest(
            &ring::digest::SHA256,
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{X}","y":"{Y}"}}"#).as_bytes(),
        )
        .as_ref());
        assert_eq!(key.thumbprint(), expected);
    }
}
