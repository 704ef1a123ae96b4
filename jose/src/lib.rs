//! The JOSE core of icbt-gateway, shared by token checking (`icbt-auth`) and sealed
//! envelopes (`icbt-envelope`): compact JWS (RFC 7515) signed with an asymmetric
//! algorithm (RFC 7518 §3), public JWKs (RFC 7517) and their thumbprints (RFC 7638). One
//! JWK type, one thumbprint, one compact-JWS parser and verifier.
//!
//! Must not know about: tokens, DPoP or envelopes; what a header or payload means is the
//! caller's.
//!
//! Signatures are checked with ring. The algorithm comes from an allow-list, never from
//! the token alone (RFC 8725 §3.1): `none` and every HMAC algorithm are refused outright,
//! and a key is used only for the algorithm family of its own key type, so a public RSA
//! or EC key can never be used as an HMAC secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

/// Signature algorithms the gateway can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub enum Algorithm {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Algorithm {
    /// Parses a JWS `alg` value; `None` for anything not verifiable here (`none`, `HS*`,
    /// unknown names).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// Why a JWS or JWK was refused. No variant carries token content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("not a compact JWS (three base64url parts)")]
    Malformed,
    #[error("the JWS header is not valid JSON with an `alg`")]
    BadHeader,
    #[error("the JWS payload is not a JSON object")]
    BadPayload,
    #[error("algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the JWS header has critical extensions this verifier does not understand")]
    CriticalHeader,
    #[error("the key cannot be used with algorithm {0}")]
    KeyAlgorithmMismatch(&'static str),
    #[error("the key is not a valid public JWK")]
    BadKey,
    #[error("the signature does not verify")]
    BadSignature,
}

/// A public key from a JWK, checked for shape. Private members are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// EC P-256 or P-384: the uncompressed point `04 || x || y`.
    Ec { curve: Curve, point: Vec<u8> },
    /// RSA modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Ed25519 public key.
    Ed25519(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }
}

/// A JWK as a key set or a DPoP header carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The `alg` the key is restricted to, when the JWK says.
    pub alg: Option<String>,
    /// `use`, when present.
    pub key_use: Option<String>,
    pub key: PublicKey,
}

fn b64(value: &str) -> Result<Vec<u8>, JoseError> {
    decode_b64url(value).ok_or(JoseError::Malformed)
}

/// base64url without padding, decoded; `None` when it is not.
pub fn decode_b64url(value: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value).ok()
}

fn member<'a>(
    object: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<&'a str, JoseError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or(JoseError::BadKey)
}

impl Jwk {
    /// Parses a public JWK. A JWK with private members (`d`, `p`, …) is refused: a
    /// public key slot must never hold a private key.
    pub fn from_json(value: &Value) -> Result<Self, JoseError> {
        let object = value.as_object().ok_or(JoseError::BadKey)?;
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| object.contains_key(*m))
        {
            return Err(JoseError::BadKey);
        }
        let key = match member(object, "kty")? {
            "EC" => {
                let curve = match member(object, "crv")? {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    _ => return Err(JoseError::BadKey),
                };
                let x = b64(member(object, "x")?).map_err(|_| JoseError::BadKey)?;
                let y = b64(member(object, "y")?).map_err(|_| JoseError::BadKey)?;
                if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
                    return Err(JoseError::BadKey);
                }
                let mut point = Vec::with_capacity(1 + 2 * x.len());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { curve, point }
            }
            "RSA" => {
                let n = b64(member(object, "n")?).map_err(|_| JoseError::BadKey)?;
                let e = b64(member(object, "e")?).map_err(|_| JoseError::BadKey)?;
                if n.len() < 256 || e.is_empty() {
                    // Under 2048 bits: refused, as ring would refuse it anyway.
                    return Err(JoseError::BadKey);
                }
                PublicKey::Rsa { n, e }
            }
            "OKP" => {
                if member(object, "crv")? != "Ed25519" {
                    return Err(JoseError::BadKey);
                }
                let x = b64(member(object, "x")?).map_err(|_| JoseError::BadKey)?;
                if x.len() != 32 {
                    return Err(JoseError::BadKey);
                }
                PublicKey::Ed25519(x)
            }
            _ => return Err(JoseError::BadKey),
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            kid: text("kid"),
            alg: text("alg"),
            key_use: text("use"),
            key,
        })
    }

    /// Whether this key may verify `alg`: same family, and the JWK's own `alg` and `use`
    /// (when present) agree.
    pub fn allows(&self, alg: Algorithm) -> bool {
        let family = matches!(
            (&self.key, alg),
            (
                PublicKey::Ec {
                    curve: Curve::P256,
                    ..
                },
                Algorithm::ES256
            ) | (
                PublicKey::Ec {
                    curve: Curve::P384,
                    ..
                },
                Algorithm::ES384
            ) | (
                PublicKey::Rsa { .. },
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (PublicKey::Ed25519(_), Algorithm::EdDSA)
        );
        family
            && self.alg.as_deref().is_none_or(|a| a == alg.name())
            && self.key_use.as_deref().is_none_or(|u| u == "sig")
    }

    /// Verifies `signature` over `message` with this key and `alg`.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), JoseError> {
        if !self.allows(alg) {
            return Err(JoseError::KeyAlgorithmMismatch(alg.name()));
        }
        let result = match &self.key {
            PublicKey::Ec { point, .. } => {
                let algorithm: &dyn signature::VerificationAlgorithm = match alg {
                    Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    _ => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, point).verify(message, signature)
            }
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            PublicKey::Ed25519(x) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature)
            }
        };
        result.map_err(|_| JoseError::BadSignature)
    }

    /// The RFC 7638 thumbprint: base64url(SHA-256) of the required members in
    /// lexicographic order, no whitespace.
    pub fn thumbprint(&self) -> String {
        let canonical = match &self.key {
            PublicKey::Ec { curve, point } => {
                let (x, y) = point[1..].split_at(curve.coordinate_len());
                format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    curve.name(),
                    URL_SAFE_NO_PAD.encode(x),
                    URL_SAFE_NO_PAD.encode(y)
                )
            }
            PublicKey::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(e),
                URL_SAFE_NO_PAD.encode(n)
            ),
            PublicKey::Ed25519(x) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(x)
            ),
        };
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

/// The public members of a JWK in the order they are written: the key's own members as
/// RFC 7518 lists them, then `kid`, `use`, `alg`. Stored keys and key log leaves hold
/// this text, so it does not change.
#[derive(serde::Serialize)]
struct Written<'a> {
    kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<&'a str>,
}

impl Jwk {
    /// A JWK for `key` with no `kid`, `use` or `alg`.
    pub fn new(key: PublicKey) -> Self {
        Self {
            kid: None,
            alg: None,
            key_use: None,
            key,
        }
    }

    fn written(&self) -> Written<'_> {
        let mut written = Written {
            kty: "EC",
            crv: None,
            n: None,
            e: None,
            x: None,
            y: None,
            kid: self.kid.as_deref(),
            key_use: self.key_use.as_deref(),
            alg: self.alg.as_deref(),
        };
        match &self.key {
            PublicKey::Ec { curve, point } => {
                let (x, y) = point[1..].split_at(curve.coordinate_len());
                written.crv = Some(curve.name());
                written.x = Some(URL_SAFE_NO_PAD.encode(x));
                written.y = Some(URL_SAFE_NO_PAD.encode(y));
            }
            PublicKey::Rsa { n, e } => {
                written.kty = "RSA";
                written.n = Some(URL_SAFE_NO_PAD.encode(n));
                written.e = Some(URL_SAFE_NO_PAD.encode(e));
            }
            PublicKey::Ed25519(x) => {
                written.kty = "OKP";
                written.crv = Some("Ed25519");
                written.x = Some(URL_SAFE_NO_PAD.encode(x));
            }
        }
        written
    }

    /// The public JWK as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.written()).unwrap_or(Value::Null)
    }
}

impl serde::Serialize for Jwk {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.written().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Jwk {
    /// Through [`Jwk::from_json`]: a JWK with private members does not deserialize.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A compact JWS split and decoded, not yet verified, with a payload of any bytes.
#[derive(Debug)]
pub struct CompactJws<'a> {
    pub alg: Algorithm,
    pub header: serde_json::Map<String, Value>,
    /// The header as decoded, for callers that read it into a stricter shape.
    pub header_bytes: Vec<u8>,
    pub payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Splits `token` into exactly three parts, decodes them, and checks `alg` against
    /// `allowed` and that no `crit` extension is asked for.
    pub fn parse(token: &'a str, allowed: &[Algorithm]) -> Result<Self, JoseError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(JoseError::Malformed)?;
        let (header_b64, payload_b64) =
            signing_input.split_once('.').ok_or(JoseError::Malformed)?;
        if payload_b64.contains('.') {
            return Err(JoseError::Malformed);
        }
        let header_bytes = b64(header_b64)?;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&header_bytes).map_err(|_| JoseError::BadHeader)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JoseError::BadHeader)?;
        let alg = Algorithm::from_name(alg_name)
            .filter(|a| allowed.contains(a))
            .ok_or_else(|| JoseError::AlgorithmNotAllowed(alg_name.chars().take(16).collect()))?;
        if header.contains_key("crit") {
            return Err(JoseError::CriticalHeader);
        }
        let payload = b64(payload_b64)?;
        let signature = b64(signature)?;
        Ok(Self {
            alg,
            header,
            header_bytes,
            payload,
            signing_input,
            signature,
        })
    }

    /// What the signature covers: the header and payload parts as sent.
    pub fn signing_input(&self) -> &str {
        self.signing_input
    }

    /// The signature's bytes.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Verifies the signature with `key`.
    pub fn verify_with(&self, key: &Jwk) -> Result<(), JoseError> {
        key.verify(self.alg, self.signing_input.as_bytes(), &self.signature)
    }
}

/// A compact JWS whose payload is a JSON object (a token, a DPoP proof, an assertion).
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Algorithm,
    pub header: serde_json::Map<String, Value>,
    pub claims: serde_json::Map<String, Value>,
    compact: CompactJws<'a>,
}

impl<'a> Jws<'a> {
    /// Splits `token`, decodes header and payload, and checks `alg` against `allowed`.
    pub fn parse(token: &'a str, allowed: &[Algorithm]) -> Result<Self, JoseError> {
        let mut compact = CompactJws::parse(token, allowed)?;
        let claims: serde_json::Map<String, Value> =
            serde_json::from_slice(&compact.payload).map_err(|_| JoseError::BadPayload)?;
        Ok(Self {
            alg: compact.alg,
            header: std::mem::take(&mut compact.header),
            claims,
            compact,
        })
    }

    /// A header member as a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// Verifies the signature with `key`.
    pub fn verify_with(&self, key: &Jwk) -> Result<(), JoseError> {
        self.compact.verify_with(key)
    }
}

/// base64url without padding, as JOSE uses it.
pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` with an ES256 key into a compact JWS with `header` (which must say
/// `"alg": "ES256"`). Used for DPoP proofs and client assertions.
pub fn sign_es256(
    pair: &ring::signature::EcdsaKeyPair,
    rng: &dyn ring::rand::SecureRandom,
    header: &Value,
    claims: &Value,
) -> String {
    let input = format!(
        "{}.{}",
        encode_b64url(header.to_string().as_bytes()),
        encode_b64url(claims.to_string().as_bytes())
    );
    // ring fails to sign only when the RNG fails; an empty signature is then refused by
    // every verifier, which is the safe direction.
    let signature = pair
        .sign(rng, input.as_bytes())
        .map(|s| encode_b64url(s.as_ref()))
        .unwrap_or_default();
    format!("{input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};
    use serde_json::json;

    /// RFC 7515 Appendix A.3: the ES256 example, verified with the published key.
    #[test]
    fn rfc7515_a3_es256_vector_verifies() {
        let jwk = Jwk::from_json(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .unwrap();
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let jws = Jws::parse(token, &[Algorithm::ES256]).unwrap();
        jws.verify_with(&jwk).unwrap();
        assert_eq!(jws.claims["iss"], "joe");
        // One flipped signature bit fails.
        let mut tampered = token.to_owned().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            Jws::parse(&tampered, &[Algorithm::ES256])
                .unwrap()
                .verify_with(&jwk),
            Err(JoseError::BadSignature)
        );
    }

    /// RFC 7638 §3.1: the thumbprint of the example RSA key.
    #[test]
    fn rfc7638_thumbprint_vector() {
        let jwk = Jwk::from_json(&json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn refuses_none_hmac_and_unknown_algorithms() {
        for alg in ["none", "HS256", "HS512", "ES256K", "nonsense"] {
            let header = encode_b64url(json!({ "alg": alg }).to_string().as_bytes());
            let token = format!("{header}.{}.", encode_b64url(b"{}"));
            assert!(
                matches!(
                    Jws::parse(&token, &[Algorithm::ES256, Algorithm::RS256]),
                    Err(JoseError::AlgorithmNotAllowed(_))
                ),
                "{alg}"
            );
        }
    }

    #[test]
    fn refuses_algorithm_outside_the_allow_list() {
        let header = encode_b64url(br#"{"alg":"RS256"}"#);
        let token = format!("{header}.{}.AA", encode_b64url(b"{}"));
        assert!(matches!(
            Jws::parse(&token, &[Algorithm::ES256]),
            Err(JoseError::AlgorithmNotAllowed(_))
        ));
    }

    #[test]
    fn key_type_must_match_algorithm_family() {
        let ec = Jwk::from_json(&json!({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})).unwrap();
        assert!(ec.allows(Algorithm::ES256));
        assert!(!ec.allows(Algorithm::RS256));
        assert!(!ec.allows(Algorithm::ES384));
        assert_eq!(
            ec.verify(Algorithm::RS256, b"m", b"s"),
            Err(JoseError::KeyAlgorithmMismatch("RS256"))
        );
        let restricted = Jwk {
            alg: Some("ES384".into()),
            ..ec.clone()
        };
        assert!(!restricted.allows(Algorithm::ES256));
        let encryption = Jwk {
            key_use: Some("enc".into()),
            ..ec
        };
        assert!(!encryption.allows(Algorithm::ES256));
    }

    #[test]
    fn writes_members_in_a_fixed_order_and_reads_them_back() {
        let text = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k","use":"sig","alg":"ES256"}"#;
        let jwk: Jwk = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&jwk).unwrap(), text);
        let bare = Jwk::new(jwk.key.clone());
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#
        );
        let private = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;
        assert!(serde_json::from_str::<Jwk>(private).is_err());
    }

    #[test]
    fn a_payload_of_any_bytes_is_kept_as_it_was_signed() {
        let header = encode_b64url(br#"{"alg":"ES256"}"#);
        let token = format!("{header}.{}.AA", encode_b64url(&[0, 159, 255]));
        let compact = CompactJws::parse(&token, &[Algorithm::ES256]).unwrap();
        assert_eq!(compact.payload, [0, 159, 255]);
        assert_eq!(compact.header_bytes, br#"{"alg":"ES256"}"#);
        assert_eq!(
            Jws::parse(&token, &[Algorithm::ES256]).unwrap_err(),
            JoseError::BadPayload
        );
    }

    #[test]
    fn refuses_private_and_malformed_keys() {
        let private = json!({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"});
        assert_eq!(Jwk::from_json(&private), Err(JoseError::BadKey));
        assert_eq!(
            Jwk::from_json(&json!({"kty":"oct","k":"c2VjcmV0"})),
            Err(JoseError::BadKey)
        );
        assert_eq!(
            Jwk::from_json(&json!({"kty":"EC","crv":"P-256","x":"AA","y":"AA"})),
            Err(JoseError::BadKey)
        );
        assert_eq!(
            Jwk::from_json(&json!({"kty":"RSA","n":"AQAB","e":"AQAB"})),
            Err(JoseError::BadKey)
        );
    }

    #[test]
    fn point_not_on_the_curve_never_verifies() {
        // A syntactically valid P-256 JWK whose point is not on the curve.
        let off_curve = Jwk::from_json(&json!({
            "kty":"EC","crv":"P-256",
            "x": encode_b64url(&[1u8; 32]), "y": encode_b64url(&[2u8; 32])
        }))
        .unwrap();
        assert_eq!(
            off_curve.verify(Algorithm::ES256, b"m", &[0u8; 64]),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn refuses_critical_headers_and_wrong_part_counts() {
        let header = encode_b64url(br#"{"alg":"ES256","crit":["exp"]}"#);
        let token = format!("{header}.{}.AA", encode_b64url(b"{}"));
        assert_eq!(
            Jws::parse(&token, &[Algorithm::ES256]).unwrap_err(),
            JoseError::CriticalHeader
        );
        assert_eq!(
            Jws::parse("a.b", &[Algorithm::ES256]).unwrap_err(),
            JoseError::Malformed
        );
        assert_eq!(
            Jws::parse("a.b.c.d.e", &[Algorithm::ES256]).unwrap_err(),
            JoseError::Malformed
        );
        assert_eq!(
            Jws::parse("", &[Algorithm::ES256]).unwrap_err(),
            JoseError::Malformed
        );
    }

    #[test]
    fn signs_and_verifies_a_fresh_es256_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = pair.public_key().as_ref();
        let jwk = Jwk::from_json(&json!({
            "kty":"EC","crv":"P-256",
            "x": encode_b64url(&public[1..33]), "y": encode_b64url(&public[33..])
        }))
        .unwrap();
        let input = format!(
            "{}.{}",
            encode_b64url(br#"{"alg":"ES256"}"#),
            encode_b64url(br#"{"a":1}"#)
        );
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", encode_b64url(sig.as_ref()));
        Jws::parse(&token, &[Algorithm::ES256])
            .unwrap()
            .verify_with(&jwk)
            .unwrap();
    }
}
