//! A device's two key pairs: ECDSA P-256 for signing what it sends, ECDH P-256 for
//! opening what is sealed to it. Private scalars live in zeroizing buffers.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jwk::PublicKey;
use crate::{EnvelopeError, b64, unb64};

/// A private P-256 key as its owner's key file keeps it: the public JWK's members and
/// `d`. Private keys never travel, and the JOSE core's [`icbt_jose::Jwk`] refuses private
/// members, so the key file has this shape of its own.
#[derive(Clone, Serialize, Deserialize)]
pub struct PrivateJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub d: String,
}

impl std::fmt::Debug for PrivateJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateJwk")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl PrivateJwk {
    fn of(public: &PublicKey, d: &[u8]) -> Self {
        let (x, y) = public.coordinates();
        Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            d: b64(d),
        }
    }
}

/// A fresh private scalar: 32 random bytes that are a valid non-zero scalar.
fn random_scalar(rng: &SystemRandom) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    loop {
        let mut d = Zeroizing::new([0u8; 32]);
        rng.fill(d.as_mut()).map_err(|_| EnvelopeError::Crypto)?;
        if p256::SecretKey::from_slice(d.as_ref()).is_ok() {
            return Ok(d);
        }
    }
}

fn scalar_from_jwk(
    jwk: &PrivateJwk,
) -> Result<(Zeroizing<[u8; 32]>, p256::SecretKey), EnvelopeError> {
    if jwk.kty != "EC" || jwk.crv != "P-256" {
        return Err(EnvelopeError::Unsupported {
            field: "key type",
            supported: "EC P-256",
        });
    }
    let raw = Zeroizing::new(unb64(&jwk.d, "private key d")?);
    let d: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("private key d is not 32 bytes"))?;
    let d = Zeroizing::new(d);
    let secret = p256::SecretKey::from_slice(d.as_ref())
        .map_err(|_| EnvelopeError::Malformed("private key d is not a P-256 scalar"))?;
    let public = PublicKey::from_p256(&secret.public_key());
    if PublicKey::from_coordinates(&jwk.x, &jwk.y, "key")? != public {
        return Err(EnvelopeError::Malformed(
            "private key d does not match x and y",
        ));
    }
    Ok((d, secret))
}

/// An ES256 signing key (ring does the signing).
pub struct SigningKey {
    d: Zeroizing<[u8; 32]>,
    pair: EcdsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, EnvelopeError> {
        let rng = SystemRandom::new();
        let d = random_scalar(&rng)?;
        Self::from_scalar(d, rng)
    }

    fn from_scalar(d: Zeroizing<[u8; 32]>, rng: SystemRandom) -> Result<Self, EnvelopeError> {
        let secret = p256::SecretKey::from_slice(d.as_ref()).map_err(|_| EnvelopeError::Crypto)?;
        let public = PublicKey::from_p256(&secret.public_key());
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            d.as_ref(),
            public.sec1(),
            &rng,
        )
        .map_err(|_| EnvelopeError::Crypto)?;
        Ok(Self {
            d,
            pair,
            public,
            rng,
        })
    }

    /// From a private JWK (`d` present and matching `x`, `y`).
    pub fn from_jwk(jwk: &PrivateJwk) -> Result<Self, EnvelopeError> {
        let (d, _) = scalar_from_jwk(jwk)?;
        Self::from_scalar(d, SystemRandom::new())
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id: the public key's RFC 7638 thumbprint.
    pub fn kid(&self) -> String {
        self.public.thumbprint()
    }

    /// ES256 signature (R || S, 64 bytes) over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| EnvelopeError::Crypto)
    }

    /// The private JWK; handle it as the secret it is.
    pub fn to_private_jwk(&self) -> PrivateJwk {
        PrivateJwk::of(&self.public, self.d.as_ref())
    }
}

/// A static ECDH P-256 key that envelopes are sealed to. `p256::SecretKey` zeroizes on
/// drop.
pub struct DecryptionKey {
    secret: p256::SecretKey,
    public: PublicKey,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl DecryptionKey {
    pub fn generate() -> Result<Self, EnvelopeError> {
        let d = random_scalar(&SystemRandom::new())?;
        let secret = p256::SecretKey::from_slice(d.as_ref()).map_err(|_| EnvelopeError::Crypto)?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: p256::SecretKey) -> Self {
        let public = PublicKey::from_p256(&secret.public_key());
        Self { secret, public }
    }

    /// From a private JWK (`d` present and matching `x`, `y`).
    pub fn from_jwk(jwk: &PrivateJwk) -> Result<Self, EnvelopeError> {
        let (_, secret) = scalar_from_jwk(jwk)?;
        Ok(Self::from_secret(secret))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn kid(&self) -> String {
        self.public.thumbprint()
    }

    /// The ECDH shared secret Z with `peer` (RFC 7518 §4.6.2), zeroized on drop.
    pub(crate) fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
        let shared = p256::ecdh::diffie_hellman(
            self.secret.to_nonzero_scalar(),
            peer.to_p256()?.as_affine(),
        );
        let mut z = Zeroizing::new([0u8; 32]);
        z.copy_from_slice(shared.raw_secret_bytes().as_slice());
        Ok(z)
    }

    pub fn to_private_jwk(&self) -> PrivateJwk {
        let d = Zeroizing::new(self.secret.to_bytes());
        PrivateJwk::of(&self.public, d.as_slice())
    }
}

/// One device's keys. Its id is the signing key's thumbprint.
#[derive(Debug)]
pub struct DeviceKeys {
    pub signing: SigningKey,
    pub encryption: DecryptionKey,
}

#[derive(Serialize, Deserialize)]
struct StoredDevice {
    signing: PrivateJwk,
    encryption: PrivateJwk,
}

impl DeviceKeys {
    pub fn generate() -> Result<Self, EnvelopeError> {
        Ok(Self {
            signing: SigningKey::generate()?,
            encryption: DecryptionKey::generate()?,
        })
    }

    /// The device id: the signing key's RFC 7638 thumbprint, the JWS `kid`.
    pub fn device_id(&self) -> String {
        self.signing.kid()
    }

    /// Both private keys as JSON, for the device's own key file.
    pub fn to_private_json(&self) -> Zeroizing<String> {
        let stored = StoredDevice {
            signing: self.signing.to_private_jwk(),
            encryption: self.encryption.to_private_jwk(),
        };
        Zeroizing::new(serde_json::to_string_pretty(&stored).unwrap_or_default())
    }

    pub fn from_private_json(json: &str) -> Result<Self, EnvelopeError> {
        let stored: StoredDevice =
            serde_json::from_str(json).map_err(|_| EnvelopeError::Malformed("device key file"))?;
        let keys = Self {
            signing: SigningKey::from_jwk(&stored.signing)?,
            encryption: DecryptionKey::from_jwk(&stored.encryption)?,
        };
        drop(Zeroizing::new(stored.signing.d));
        drop(Zeroizing::new(stored.encryption.d));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_survive_their_key_file() {
        let keys = DeviceKeys::generate().unwrap();
        let json = keys.to_private_json();
        let back = DeviceKeys::from_private_json(&json).unwrap();
        assert_eq!(back.device_id(), keys.device_id());
        assert_eq!(back.encryption.kid(), keys.encryption.kid());
        assert_ne!(keys.device_id(), keys.encryption.kid());
    }

    #[test]
    fn refuses_a_private_key_that_does_not_match_its_public_part() {
        let a = SigningKey::generate().unwrap().to_private_jwk();
        let b = SigningKey::generate().unwrap().to_private_jwk();
        let mixed = PrivateJwk { d: b.d, ..a };
        assert!(matches!(
            SigningKey::from_jwk(&mixed),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn debug_never_prints_the_private_scalar() {
        let keys = DeviceKeys::generate().unwrap();
        let d = keys.signing.to_private_jwk().d;
        let e = keys.encryption.to_private_jwk().d;
        let printed = format!("{keys:?}");
        assert!(!printed.contains(&d) && !printed.contains(&e), "{printed}");
    }
}
