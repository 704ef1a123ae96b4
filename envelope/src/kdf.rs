//! Key derivation and key wrapping for ECDH-ES+A256KW: the Concat KDF of NIST SP 800-56A
//! as profiled by RFC 7518 §4.6.2, and AES key wrap (RFC 3394) with a 256-bit KEK.

use aes_kw::KeyInit;
use zeroize::Zeroizing;

use crate::EnvelopeError;

/// Concat KDF with SHA-256 (RFC 7518 §4.6.2) for keys of at most 256 bits: one round,
/// `SHA-256(1 || Z || AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo)`,
/// truncated to `bits`.
pub(crate) fn concat_kdf(
    z: &[u8],
    algorithm: &str,
    apu: &[u8],
    apv: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    fn with_length(context: &mut ring::digest::Context, data: &[u8]) {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        context.update(&len.to_be_bytes());
        context.update(data);
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&1u32.to_be_bytes());
    context.update(z);
    with_length(&mut context, algorithm.as_bytes());
    with_length(&mut context, apu);
    with_length(&mut context, apv);
    context.update(&bits.to_be_bytes());
    let digest = context.finish();
    let bytes = usize::try_from(bits / 8).unwrap_or(32).min(32);
    Zeroizing::new(digest.as_ref()[..bytes].to_vec())
}

/// Wraps a 256-bit content key with a 256-bit KEK (RFC 3394 §2.2.1): 40 bytes out.
pub(crate) fn wrap(kek: &[u8], cek: &[u8; 32]) -> Result<[u8; 40], EnvelopeError> {
    let kw = aes_kw::KwAes256::new_from_slice(kek).map_err(|_| EnvelopeError::Crypto)?;
    let mut out = [0u8; 40];
    kw.wrap_key(cek, &mut out)
        .map_err(|_| EnvelopeError::Crypto)?;
    Ok(out)
}

/// Unwraps a wrapped 256-bit content key; the integrity check (§2.2.3) failing is a
/// decryption failure, not a different error, so a prober learns nothing more.
pub(crate) fn unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    if wrapped.len() != 40 {
        return Err(EnvelopeError::Decrypt);
    }
    let kw = aes_kw::KwAes256::new_from_slice(kek).map_err(|_| EnvelopeError::Crypto)?;
    let mut cek = Zeroizing::new([0u8; 32]);
    kw.unwrap_key(wrapped, cek.as_mut())
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok(cek)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::PublicKey;
    use crate::keys::DecryptionKey;
    use crate::keys::PrivateJwk;
    use crate::{b64, unb64};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3394 §4.6: wrap 256 bits of key data with a 256-bit KEK.
    #[test]
    fn rfc3394_section_4_6_vector() {
        let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let key: [u8; 32] = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
            .try_into()
            .unwrap();
        let wrapped = wrap(&kek, &key).unwrap();
        assert_eq!(
            wrapped.to_vec(),
            hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
        );
        assert_eq!(*unwrap(&kek, &wrapped).unwrap(), key);
        let mut tampered = wrapped;
        tampered[7] ^= 1;
        assert_eq!(unwrap(&kek, &tampered), Err(EnvelopeError::Decrypt));
    }

    /// RFC 7518 Appendix C: ECDH-ES on P-256 with apu "Alice", apv "Bob", A128GCM. Our
    /// static-key agreement (Bob's side) and the KDF give the published key.
    #[test]
    fn rfc7518_appendix_c_key_agreement() {
        let bob: PrivateJwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
            "d": "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw"
        }))
        .unwrap();
        let alice_epk = PublicKey::from_coordinates(
            "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
            "epk",
        )
        .unwrap();
        let bob = DecryptionKey::from_jwk(&bob).unwrap();
        let z = bob.agree(&alice_epk).unwrap();
        let key = concat_kdf(
            z.as_ref(),
            "A128GCM",
            &unb64("QWxpY2U", "apu").unwrap(),
            &unb64("Qm9i", "apv").unwrap(),
            128,
        );
        assert_eq!(b64(&key), "VqqN6vgjbSBcIijNcacQGg");
    }
}
