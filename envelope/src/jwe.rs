//! The outer encryption: JWE JSON general serialization (RFC 7516 §7.2.1) with
//! A256GCM content encryption and one ECDH-ES+A256KW (RFC 7518 §4.6) entry per
//! recipient key.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jwk::PublicKey;
use crate::jws::{self, SignedMessage};
use crate::kdf::{concat_kdf, unwrap, wrap};
use crate::keys::{DecryptionKey, SigningKey};
use crate::{Binding, ENVELOPE_TYP, EnvelopeError, MESSAGE_TYP, b64, unb64};

const ENC: &str = "A256GCM";
const ALG: &str = "ECDH-ES+A256KW";

/// Bounds applied before any work is done on an envelope.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_recipients: 64,
        }
    }
}

// Every object is closed (`deny_unknown_fields`): members such as `zip`, `crit`, `jku`,
// `aad` or a shared `unprotected` header are refused instead of silently ignored, and
// serde refuses duplicate members.

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    protected: String,
    recipients: Vec<WireRecipient>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRecipient {
    header: RecipientHeader,
    encrypted_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientHeader {
    alg: String,
    kid: String,
    epk: Epk,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectedHeader {
    enc: String,
    typ: String,
    cty: String,
    #[serde(flatten)]
    binding: Binding,
}

/// One recipient entry: the key it is for and its wrapped content key.
#[derive(Debug, Clone)]
pub struct RecipientEntry {
    /// The recipient's encryption key id (RFC 7638 thumbprint).
    pub kid: String,
    epk: PublicKey,
    encrypted_key: [u8; 40],
}

/// A parsed envelope: well-formed, within limits, every point on the curve. Its
/// content is still sealed; [`Envelope::open`] needs a recipient's private key.
#[derive(Debug, Clone)]
pub struct Envelope {
    protected_b64: String,
    binding: Binding,
    recipients: Vec<RecipientEntry>,
    iv: [u8; 12],
    ciphertext: Vec<u8>,
    tag: [u8; 16],
}

/// An opened and verified message.
#[derive(Debug)]
pub struct Opened {
    pub binding: Binding,
    pub payload: Vec<u8>,
}

/// Seals `payload` from the device `sender` to every key in `recipients`: signs it
/// (inner JWS bound to `binding`), then encrypts the JWS once under a fresh content key
/// wrapped for each recipient. Returns the JWE JSON bytes.
pub fn seal(
    payload: &[u8],
    binding: &Binding,
    sender: &SigningKey,
    recipients: &[PublicKey],
) -> Result<Vec<u8>, EnvelopeError> {
    let jws = jws::sign(payload, binding, sender)?;
    let rng = SystemRandom::new();
    let mut cek = Zeroizing::new([0u8; 32]);
    rng.fill(cek.as_mut()).map_err(|_| EnvelopeError::Crypto)?;
    let mut kids = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(recipients.len());
    for key in recipients {
        let kid = key.thumbprint();
        if !kids.insert(kid.clone()) {
            return Err(EnvelopeError::DuplicateRecipient);
        }
        let ephemeral =
            EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EnvelopeError::Crypto)?;
        let epk = ephemeral
            .compute_public_key()
            .map_err(|_| EnvelopeError::Crypto)?;
        let kek = agree_ephemeral(
            ephemeral,
            &UnparsedPublicKey::new(&ECDH_P256, key.sec1()),
            |z| concat_kdf(z, ALG, &[], &[], 256),
        )
        .map_err(|_| EnvelopeError::InvalidPoint("recipient key"))?;
        let encrypted_key = wrap(&kek, &cek)?;
        let (x, y) = PublicKey::from_sec1(epk.as_ref(), "epk")?.coordinates();
        entries.push(WireRecipient {
            header: RecipientHeader {
                alg: ALG.into(),
                kid,
                epk: Epk {
                    kty: "EC".into(),
                    crv: "P-256".into(),
                    x,
                    y,
                },
            },
            encrypted_key: b64(&encrypted_key),
        });
    }
    if entries.is_empty() {
        return Err(EnvelopeError::Malformed("no recipients"));
    }
    let protected = ProtectedHeader {
        enc: ENC.into(),
        typ: ENVELOPE_TYP.into(),
        cty: MESSAGE_TYP.into(),
        binding: binding.clone(),
    };
    let protected_b64 = b64(&serde_json::to_vec(&protected).map_err(|_| EnvelopeError::Crypto)?);
    let mut iv = [0u8; 12];
    rng.fill(&mut iv).map_err(|_| EnvelopeError::Crypto)?;
    let mut data = jws.into_bytes();
    let tag = content_key(cek.as_ref())?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected_b64.as_bytes()),
            &mut data,
        )
        .map_err(|_| EnvelopeError::Crypto)?;
    let wire = Wire {
        protected: protected_b64,
        recipients: entries,
        iv: b64(&iv),
        ciphertext: b64(&data),
        tag: b64(tag.as_ref()),
    };
    serde_json::to_vec(&wire).map_err(|_| EnvelopeError::Crypto)
}

fn content_key(cek: &[u8]) -> Result<LessSafeKey, EnvelopeError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, cek).map_err(|_| EnvelopeError::Crypto)?,
    ))
}

impl Envelope {
    /// Parses and checks an envelope's structure without any private key: what the
    /// gateway does before it commits one.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Self, EnvelopeError> {
        if bytes.len() > limits.max_bytes {
            return Err(EnvelopeError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|_| EnvelopeError::Malformed("envelope JSON"))?;
        if wire.recipients.is_empty() {
            return Err(EnvelopeError::Malformed("no recipients"));
        }
        if wire.recipients.len() > limits.max_recipients {
            return Err(EnvelopeError::TooManyRecipients {
                limit: limits.max_recipients,
            });
        }
        let protected: ProtectedHeader =
            serde_json::from_slice(&unb64(&wire.protected, "protected header")?)
                .map_err(|_| EnvelopeError::Malformed("protected header"))?;
        if protected.enc != ENC {
            return Err(EnvelopeError::Unsupported {
                field: "enc",
                supported: ENC,
            });
        }
        if protected.typ != ENVELOPE_TYP || protected.cty != MESSAGE_TYP {
            return Err(EnvelopeError::Malformed("protected header typ or cty"));
        }
        let mut kids = std::collections::HashSet::new();
        let mut recipients = Vec::with_capacity(wire.recipients.len());
        for entry in wire.recipients {
            let header = entry.header;
            if header.alg != ALG {
                return Err(EnvelopeError::Unsupported {
                    field: "alg",
                    supported: ALG,
                });
            }
            if header.kid.is_empty() || header.kid.len() > 100 {
                return Err(EnvelopeError::Malformed("recipient kid"));
            }
            if !kids.insert(header.kid.clone()) {
                return Err(EnvelopeError::DuplicateRecipient);
            }
            if header.epk.kty != "EC" || header.epk.crv != "P-256" {
                return Err(EnvelopeError::Unsupported {
                    field: "epk",
                    supported: "EC P-256",
                });
            }
            let epk = PublicKey::from_coordinates(&header.epk.x, &header.epk.y, "epk")?;
            let encrypted_key: [u8; 40] = unb64(&entry.encrypted_key, "encrypted_key")?
                .try_into()
                .map_err(|_| EnvelopeError::Malformed("encrypted_key is not 40 bytes"))?;
            recipients.push(RecipientEntry {
                kid: header.kid,
                epk,
                encrypted_key,
            });
        }
        let iv: [u8; 12] = unb64(&wire.iv, "iv")?
            .try_into()
            .map_err(|_| EnvelopeError::Malformed("iv is not 12 bytes"))?;
        let tag: [u8; 16] = unb64(&wire.tag, "tag")?
            .try_into()
            .map_err(|_| EnvelopeError::Malformed("tag is not 16 bytes"))?;
        Ok(Self {
            protected_b64: wire.protected,
            binding: protected.binding,
            recipients,
            iv,
            ciphertext: unb64(&wire.ciphertext, "ciphertext")?,
            tag,
        })
    }

    /// Episode, message, kind and sender from the protected header.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    pub fn recipients(&self) -> &[RecipientEntry] {
        &self.recipients
    }

    /// Decrypts with `key` and returns the inner JWS, parsed but not verified; its
    /// binding is checked against the outer header.
    pub fn decrypt(&self, key: &DecryptionKey) -> Result<SignedMessage, EnvelopeError> {
        let kid = key.kid();
        let entry = self
            .recipients
            .iter()
            .find(|r| r.kid == kid)
            .ok_or(EnvelopeError::NotARecipient)?;
        let z = key.agree(&entry.epk)?;
        let kek = concat_kdf(z.as_ref(), ALG, &[], &[], 256);
        let cek = unwrap(&kek, &entry.encrypted_key)?;
        let mut data = Vec::with_capacity(self.ciphertext.len() + 16);
        data.extend_from_slice(&self.ciphertext);
        data.extend_from_slice(&self.tag);
        let plain = content_key(cek.as_ref())?
            .open_in_place(
                Nonce::assume_unique_for_key(self.iv),
                Aad::from(self.protected_b64.as_bytes()),
                &mut data,
            )
            .map_err(|_| EnvelopeError::Decrypt)?;
        let jws = std::str::from_utf8(plain).map_err(|_| EnvelopeError::Malformed("inner JWS"))?;
        let signed = SignedMessage::parse(jws)?;
        let inner = signed.binding();
        for (field, same) in [
            ("episode", inner.episode == self.binding.episode),
            ("message", inner.message == self.binding.message),
            ("kind", inner.kind == self.binding.kind),
            ("sender", inner.sender == self.binding.sender),
        ] {
            if !same {
                return Err(EnvelopeError::BindingMismatch(field));
            }
        }
        Ok(signed)
    }

    /// Decrypts with `key` and verifies the sender's signature with `sender`, the
    /// signing key the reader trusts for the header's sender.
    pub fn open(&self, key: &DecryptionKey, sender: &PublicKey) -> Result<Opened, EnvelopeError> {
        let signed = self.decrypt(key)?;
        signed.verify(sender)?;
        Ok(Opened {
            binding: signed.binding().clone(),
            payload: signed.payload().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKeys;

    fn binding(sender: &DeviceKeys) -> Binding {
        Binding {
            episode: "4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11".into(),
            message: "9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21".into(),
            kind: "feedback".into(),
            sender: sender.device_id(),
        }
    }

    /// RFC 7520 §5.2 (RSA-OAEP with A256GCM): with the published CEK and IV, our
    /// A256GCM content encryption gives the published ciphertext and tag over the
    /// published protected header, and opens them.
    #[test]
    fn rfc7520_section_5_2_a256gcm_content_encryption() {
        let protected = "eyJhbGciOiJSU0EtT0FFUCIsImtpZCI6InNhbXdpc2UuZ2FtZ2VlQGhvYmJpdG9uLmV4YW1wbGUiLCJlbmMiOiJBMjU2R0NNIn0";
        let cek = unb64("mYMfsggkTAm0TbvtlFh2hyoXnbEzJQjMxmgLN3d8xXA", "cek").unwrap();
        let iv: [u8; 12] = unb64("-nBoKLH0YkLZPSI9", "iv").unwrap().try_into().unwrap();
        let ciphertext = "o4k2cnGN8rSSw3IDo1YuySkqeS_t2m1GXklSgqBdpACm6UJuJowOHC5ytjqYgRL-I-soPlwqMUf4UgRWWeaOGNw6vGW-xyM01lTYxrXfVzIIaRdhYtEMRBvBWbEwP7ua1DRfvaOjgZv6Ifa3brcAM64d8p5lhhNcizPersuhw5f-pGYzseva-TUaL8iWnctc-sSwy7SQmRkfhDjwbz0fz6kFovEgj64X1I5s7E6GLp5fnbYGLa1QUiML7Cc2GxgvI7zqWo0YIEc7aCflLG1-8BboVWFdZKLK9vNoycrYHumwzKluLWEbSVmaPpOslY2n525DxDfWaVFUfKQxMF56vn4B9QMpWAbnypNimbM8zVOw";
        let tag = "UCGiqJxhBI3IFVdPalHHvA";
        let mut data = unb64(ciphertext, "ct").unwrap();
        data.extend_from_slice(&unb64(tag, "tag").unwrap());
        let plain = content_key(&cek)
            .unwrap()
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut data,
            )
            .unwrap()
            .to_vec();
        let text = String::from_utf8(plain.clone()).unwrap();
        assert!(
            text.starts_with("You can trust us to stick with you"),
            "{text}"
        );
        assert!(text.ends_with("We are your friends, Frodo."));
        let mut again = plain;
        let again_tag = content_key(&cek)
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut again,
            )
            .unwrap();
        assert_eq!(b64(&again), ciphertext);
        assert_eq!(b64(again_tag.as_ref()), tag);
    }

    #[test]
    fn every_recipient_opens_and_sees_the_signed_payload() {
        let sender = DeviceKeys::generate().unwrap();
        let readers: Vec<DeviceKeys> = (0..3).map(|_| DeviceKeys::generate().unwrap()).collect();
        let keys: Vec<PublicKey> = readers
            .iter()
            .map(|r| r.encryption.public().clone())
            .collect();
        let sealed = seal(
            b"week 3 feedback",
            &binding(&sender),
            &sender.signing,
            &keys,
        )
        .unwrap();
        let envelope = Envelope::parse(&sealed, &Limits::default()).unwrap();
        assert_eq!(envelope.binding(), &binding(&sender));
        assert_eq!(envelope.recipients().len(), 3);
        for reader in &readers {
            let opened = envelope
                .open(&reader.encryption, sender.signing.public())
                .unwrap();
            assert_eq!(opened.payload, b"week 3 feedback");
        }
        let outsider = DeviceKeys::generate().unwrap();
        assert_eq!(
            envelope
                .open(&outsider.encryption, sender.signing.public())
                .err(),
            Some(EnvelopeError::NotARecipient)
        );
    }

    fn edit(sealed: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(sealed).unwrap();
        change(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_changed_protected_header_or_tag_does_not_open() {
        let sender = DeviceKeys::generate().unwrap();
        let reader = DeviceKeys::generate().unwrap();
        let sealed = seal(
            b"x",
            &binding(&sender),
            &sender.signing,
            &[reader.encryption.public().clone()],
        )
        .unwrap();
        // Replayed under another message id: the header is the AAD, so the tag fails.
        let mut other = binding(&sender);
        other.message = "00000000-0000-4000-8000-000000000000".into();
        let header = serde_json::json!({"enc": "A256GCM", "typ": ENVELOPE_TYP, "cty": MESSAGE_TYP,
            "icbt_episode": other.episode, "icbt_message": other.message, "icbt_kind": other.kind,
            "icbt_sender": other.sender});
        let replayed = edit(&sealed, |v| {
            v["protected"] = b64(header.to_string().as_bytes()).into();
        });
        let envelope = Envelope::parse(&replayed, &Limits::default()).unwrap();
        assert_eq!(
            envelope
                .open(&reader.encryption, sender.signing.public())
                .err(),
            Some(EnvelopeError::Decrypt)
        );
        let flipped = edit(&sealed, |v| {
            let tag = v["tag"].as_str().unwrap();
            let mut bytes = unb64(tag, "tag").unwrap();
            bytes[0] ^= 0x80;
            v["tag"] = b64(&bytes).into();
        });
        let envelope = Envelope::parse(&flipped, &Limits::default()).unwrap();
        assert_eq!(
            envelope
                .open(&reader.encryption, sender.signing.public())
                .err(),
            Some(EnvelopeError::Decrypt)
        );
    }

    #[test]
    fn a_recipient_cannot_re_seal_anothers_signature_under_a_new_binding() {
        // A recipient opens, then re-encrypts the same inner JWS under another message
        // id: the inner binding no longer matches the outer.
        let sender = DeviceKeys::generate().unwrap();
        let reader = DeviceKeys::generate().unwrap();
        let jws = jws::sign(b"x", &binding(&sender), &sender.signing).unwrap();
        let mut other = binding(&sender);
        other.message = "00000000-0000-4000-8000-000000000000".into();
        let protected = ProtectedHeader {
            enc: ENC.into(),
            typ: ENVELOPE_TYP.into(),
            cty: MESSAGE_TYP.into(),
            binding: other,
        };
        let sealed = seal(
            b"x",
            &binding(&sender),
            &sender.signing,
            &[reader.encryption.public().clone()],
        )
        .unwrap();
        let envelope = Envelope::parse(&sealed, &Limits::default()).unwrap();
        // Rebuild the content with the foreign JWS under the new header and the same key.
        let z = reader
            .encryption
            .agree(&envelope.recipients[0].epk)
            .unwrap();
        let kek = concat_kdf(z.as_ref(), ALG, &[], &[], 256);
        let cek = unwrap(&kek, &envelope.recipients[0].encrypted_key).unwrap();
        let protected_b64 = b64(&serde_json::to_vec(&protected).unwrap());
        let mut data = jws.into_bytes();
        let tag = content_key(cek.as_ref())
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(envelope.iv),
                Aad::from(protected_b64.as_bytes()),
                &mut data,
            )
            .unwrap();
        let forged = Envelope {
            protected_b64,
            binding: protected.binding,
            ciphertext: data,
            tag: tag.as_ref().try_into().unwrap(),
            ..envelope
        };
        assert_eq!(
            forged
                .open(&reader.encryption, sender.signing.public())
                .err(),
            Some(EnvelopeError::BindingMismatch("message"))
        );
    }

    type Expect = fn(&EnvelopeError) -> bool;

    #[test]
    fn refuses_bad_structure_before_any_crypto() {
        let sender = DeviceKeys::generate().unwrap();
        let reader = DeviceKeys::generate().unwrap();
        let sealed = seal(
            b"x",
            &binding(&sender),
            &sender.signing,
            &[reader.encryption.public().clone()],
        )
        .unwrap();
        let limits = Limits::default();
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (b"{".to_vec(), |e| matches!(e, EnvelopeError::Malformed(_))),
            (edit(&sealed, |v| v["zip"] = "DEF".into()), |e| {
                matches!(e, EnvelopeError::Malformed(_))
            }),
            (
                edit(&sealed, |v| v["recipients"] = serde_json::json!([])),
                |e| matches!(e, EnvelopeError::Malformed(_)),
            ),
            (
                edit(&sealed, |v| {
                    v["recipients"][0]["header"]["alg"] = "RSA-OAEP".into();
                }),
                |e| matches!(e, EnvelopeError::Unsupported { field: "alg", .. }),
            ),
            (
                edit(&sealed, |v| {
                    v["recipients"][0]["header"]["epk"]["y"] = b64(&[1; 32]).into();
                }),
                |e| matches!(e, EnvelopeError::InvalidPoint("epk")),
            ),
            (edit(&sealed, |v| v["tag"] = "AAAA".into()), |e| {
                matches!(e, EnvelopeError::Malformed(_))
            }),
            (edit(&sealed, |v| v["iv"] = "!".into()), |e| {
                matches!(e, EnvelopeError::Malformed(_))
            }),
            (
                edit(&sealed, |v| {
                    let first = v["recipients"][0].clone();
                    v["recipients"].as_array_mut().unwrap().push(first);
                }),
                |e| matches!(e, EnvelopeError::DuplicateRecipient),
            ),
        ];
        for (bytes, expected) in cases {
            let error = Envelope::parse(&bytes, &limits).unwrap_err();
            assert!(expected(&error), "{error:?}");
        }
        let small = Limits {
            max_bytes: 100,
            max_recipients: 64,
        };
        assert_eq!(
            Envelope::parse(&sealed, &small).unwrap_err(),
            EnvelopeError::TooLarge { limit: 100 }
        );
    }
}
