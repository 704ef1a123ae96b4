//! Seal and open throughput for a 2 KiB message to 4 recipients, on one core, beside the
//! raw rates of the primitives that bound them, measured in the same run: ring
//! AES-256-GCM over the same bytes, ring P-256 ECDH (ephemeral, the sender's side) and
//! `p256` static ECDH (the recipient's side), ring ES256 sign and verify.
//!
//! `cargo bench -p icbt-envelope --bench seal [-- N]` (N iterations per figure, default
//! 2000). A seal is 1 signature + 4 ephemeral ECDH + 4 key wraps + one AES-GCM pass; an
//! open is 1 static ECDH + 1 unwrap + one AES-GCM pass + 1 signature check.

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::too_many_lines, // a benchmark reads best as one straight script
)]

use std::hint::black_box;
use std::time::Instant;

use icbt_envelope::{Binding, DeviceKeys, Envelope, Limits, PublicKey, seal};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey as VerifyKey};

fn per_second(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args()
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let payload = vec![b'x'; 2048];
    let sender = DeviceKeys::generate().unwrap();
    let readers: Vec<DeviceKeys> = (0..4).map(|_| DeviceKeys::generate().unwrap()).collect();
    let keys: Vec<PublicKey> = readers
        .iter()
        .map(|r| r.encryption.public().clone())
        .collect();
    let binding = Binding {
        episode: "4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11".into(),
        message: "9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21".into(),
        kind: "feedback".into(),
        sender: sender.device_id(),
    };

    let started = Instant::now();
    for _ in 0..n {
        black_box(seal(&payload, &binding, &sender.signing, &keys).unwrap());
    }
    let seal_rate = per_second(n, started);

    let sealed = seal(&payload, &binding, &sender.signing, &keys).unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let envelope = Envelope::parse(&sealed, &Limits::default()).unwrap();
        black_box(
            envelope
                .open(&readers[0].encryption, sender.signing.public())
                .unwrap(),
        );
    }
    let open_rate = per_second(n, started);

    let started = Instant::now();
    for _ in 0..n * 10 {
        black_box(Envelope::parse(&sealed, &Limits::default()).unwrap());
    }
    let parse_rate = per_second(n * 10, started);

    // The primitives, raw.
    let rng = SystemRandom::new();
    let gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    // The bytes AES-GCM encrypts in a seal: the inner JWS, as long as the ciphertext.
    let wire: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    let inner_len = wire["ciphertext"].as_str().unwrap().len() * 3 / 4;
    let mut buffer = vec![b'j'; inner_len];
    let started = Instant::now();
    for i in 0..n * 10 {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let _ = black_box(
            gcm.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buffer,
            )
            .unwrap(),
        );
    }
    let gcm_rate = per_second(n * 10, started);
    let gcm_mib = gcm_rate * buffer.len() as f64 / (1024.0 * 1024.0);

    let peer = readers[0].encryption.public().sec1().to_vec();
    let started = Instant::now();
    for _ in 0..n {
        let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let _ = ephemeral.compute_public_key().unwrap();
        black_box(
            agree_ephemeral(ephemeral, &UnparsedPublicKey::new(&ECDH_P256, &peer), |z| {
                z[0]
            })
            .unwrap(),
        );
    }
    let ecdh_ring = per_second(n, started);

    let secret = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let point = p256::PublicKey::from_sec1_bytes(&peer).unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), point.as_affine());
        black_box(shared.raw_secret_bytes()[0]);
    }
    let ecdh_static = per_second(n, started);

    let message = b"the signing input of a JWS";
    let started = Instant::now();
    for _ in 0..n {
        black_box(sender.signing.sign(message).unwrap());
    }
    let sign_rate = per_second(n, started);
    let signature = sender.signing.sign(message).unwrap();
    let verify_key = VerifyKey::new(
        &ECDSA_P256_SHA256_FIXED,
        sender.signing.public().sec1().to_vec(),
    );
    let started = Instant::now();
    for _ in 0..n {
        verify_key.verify(message, &signature).unwrap();
    }
    let verify_rate = per_second(n, started);

    println!(
        "2 KiB message, 4 recipients ({} byte envelope), one core, {n} iterations per figure",
        sealed.len()
    );
    println!("seal                     {seal_rate:>10.0} /s");
    println!("open (parse+decrypt+verify) {open_rate:>7.0} /s");
    println!("parse only (gateway)     {parse_rate:>10.0} /s");
    println!(
        "ring AES-256-GCM seal    {gcm_rate:>10.0} /s over the {} bytes a seal encrypts ({gcm_mib:.0} MiB/s)",
        buffer.len()
    );
    println!("ring P-256 ECDH (ephemeral keygen + agree) {ecdh_ring:>6.0} /s");
    println!("p256 static ECDH (recipient side) {ecdh_static:>10.0} /s");
    println!("ring ES256 sign          {sign_rate:>10.0} /s");
    println!("ring ES256 verify        {verify_rate:>10.0} /s");
    let seal_bound = 1.0 / (1.0 / sign_rate + 4.0 / ecdh_ring + 1.0 / gcm_rate);
    let open_bound = 1.0 / (1.0 / ecdh_static + 1.0 / verify_rate + 1.0 / gcm_rate);
    println!(
        "seal at {:.0} % of its primitives' bound ({seal_bound:.0} /s); open at {:.0} % ({open_bound:.0} /s)",
        100.0 * seal_rate / seal_bound,
        100.0 * open_rate / open_bound
    );
}
