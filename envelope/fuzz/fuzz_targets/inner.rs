//! Any text as the inner JWS or as a JWK: parsing never panics.

#![no_main]

use icbt_envelope::{Jwk, PublicKey, SignedMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SignedMessage::parse(text);
    }
    // JWKs through the same serde path the gateway's device directory uses.
    if let Ok(jwk) = serde_json::from_slice::<Jwk>(data) {
        let _ = PublicKey::from_jwk(&jwk);
    }
});
