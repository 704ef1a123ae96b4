//! Any bytes as an envelope: parsing never panics, and an envelope that parses is
//! decrypted with a fixed recipient key (ECDH with the attacker's epk, key unwrap,
//! AES-GCM, the inner JWS parse and binding check) without panicking either. The seeds
//! in ../seeds are envelopes sealed to this key, so mutations reach the crypto.

#![no_main]

use std::sync::OnceLock;

use icbt_envelope::{DeviceKeys, Envelope, Limits};
use libfuzzer_sys::fuzz_target;

/// A key made for fuzzing only; it protects nothing.
const FUZZ_ONLY_KEYS: &str = "{\n  \"signing\": {\n    \"kty\": \"EC\",\n    \"crv\": \"P-256\",\n    \"x\": \"iGEMf31MhXpmkzc2Hzm8I1k6qNHVM4qyfhjcFEAj8gM\",\n    \"y\": \"FFsaAnQnC0IQfemrXfktD9HDAUGZfsmI_uha0z3udVg\",\n    \"d\": \"ReSZN6uLcE9bhitZHcMU0FblzGPxHF76Kgj_MZNGUe8\"\n  },\n  \"encryption\": {\n    \"kty\": \"EC\",\n    \"crv\": \"P-256\",\n    \"x\": \"3kaDtMtFAGF7nd3dR_jfaMddgvbkjUhwdxSNW1yLtUY\",\n    \"y\": \"jQnYJ-jZXn8OFCTsLMTwzvdvSPXpEFcaqoxuksRAyjQ\",\n    \"d\": \"rToVFlBHV_AwhG96EVJgASuc_5gmOUuvctSRx4YbcYw\"\n  }\n}";

fn reader() -> &'static DeviceKeys {
    static KEYS: OnceLock<DeviceKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        DeviceKeys::from_private_json(FUZZ_ONLY_KEYS).unwrap_or_else(|_| unreachable!())
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 64 * 1024,
        max_recipients: 16,
    };
    if let Ok(envelope) = Envelope::parse(data, &limits) {
        let _ = envelope.binding();
        if let Ok(signed) = envelope.decrypt(&reader().encryption) {
            let _ = signed.verify(reader().signing.public());
        }
    }
});
