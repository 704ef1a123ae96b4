//! Envelopes sealed by our SDK open with npm `jose`, and envelopes sealed by `jose` open
//! with our SDK: the format is plain JOSE that a browser client can produce.

#![allow(clippy::unwrap_used)] // test code stops at the first surprise

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_e2e::jose;
use icbt_envelope::{Binding, DeviceKeys, Envelope, EnvelopeError, Limits, PublicKey, seal};
use serde_json::{Value, json};

fn binding(sender: &DeviceKeys) -> Binding {
    Binding {
        episode: "0b1f6a52-8d2e-4c3b-9f1a-7e6d5c4b3a21".into(),
        message: "5f0e9d8c-7b6a-4958-8372-6a5b4c3d2e1f".into(),
        kind: "feedback".into(),
        sender: sender.device_id(),
    }
}

fn binding_json(b: &Binding) -> Value {
    serde_json::to_value(b).unwrap()
}

#[test]
fn jose_opens_what_we_seal() {
    let sender = DeviceKeys::generate().unwrap();
    let readers = [
        DeviceKeys::generate().unwrap(),
        DeviceKeys::generate().unwrap(),
    ];
    let keys: Vec<PublicKey> = readers
        .iter()
        .map(|r| r.encryption.public().clone())
        .collect();
    let payload = "Uke 3: Bra jobba med eksponeringsoppgaven! – æøå".as_bytes();
    let sealed = seal(payload, &binding(&sender), &sender.signing, &keys).unwrap();
    for reader in &readers {
        let answer = jose::run(
            "open",
            &json!({
                "envelope": serde_json::from_slice::<Value>(&sealed).unwrap(),
                "recipient": reader.encryption.to_private_jwk(),
                "sender": sender.signing.public().to_jwk(),
            }),
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(answer["payload_b64"].as_str().unwrap())
                .unwrap(),
            payload
        );
        assert_eq!(answer["binding"], binding_json(&binding(&sender)));
    }
    // jose, too, refuses the envelope when it is verified against another sender key.
    let other = DeviceKeys::generate().unwrap();
    let refused = jose::run(
        "open",
        &json!({
            "envelope": serde_json::from_slice::<Value>(&sealed).unwrap(),
            "recipient": readers[0].encryption.to_private_jwk(),
            "sender": other.signing.public().to_jwk(),
        }),
    );
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn we_open_what_jose_seals() {
    let sender = DeviceKeys::generate().unwrap();
    let reader = DeviceKeys::generate().unwrap();
    let journal = DeviceKeys::generate().unwrap();
    let payload = br#"{"text":"Takk for tilbakemeldingen"}"#;
    let answer = jose::run(
        "seal",
        &json!({
            "payload_b64": URL_SAFE_NO_PAD.encode(payload),
            "binding": binding_json(&binding(&sender)),
            "sender": sender.signing.to_private_jwk(),
            "recipients": [reader.encryption.public().to_jwk(), journal.encryption.public().to_jwk()],
        }),
    )
    .unwrap();
    let bytes = serde_json::to_vec(&answer["envelope"]).unwrap();
    let envelope = Envelope::parse(&bytes, &Limits::default()).unwrap();
    assert_eq!(envelope.binding(), &binding(&sender));
    let kids: Vec<&str> = envelope
        .recipients()
        .iter()
        .map(|r| r.kid.as_str())
        .collect();
    assert_eq!(kids, [reader.encryption.kid(), journal.encryption.kid()]);
    for key in [&reader, &journal] {
        let opened = envelope
            .open(&key.encryption, sender.signing.public())
            .unwrap();
        assert_eq!(opened.payload, payload);
    }
    let outsider = DeviceKeys::generate().unwrap();
    assert_eq!(
        envelope
            .open(&outsider.encryption, sender.signing.public())
            .err(),
        Some(EnvelopeError::NotARecipient)
    );
}
