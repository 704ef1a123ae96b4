//! Our checkpoints against an independent implementation of C2SP signed notes (the
//! `signed_note` crate, a port of Go's `sumdb/note`): each side verifies what the other
//! signed, and both compute the same key id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use icbt_merkle::{Checkpoint, SignedCheckpoint, Signer, VerifierKey};
use ring::signature::{Ed25519KeyPair, KeyPair};

const ORIGIN: &str = "gateway.example/icbt/access-log";

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: ORIGIN.into(),
        size: 1_234_567,
        root: icbt_merkle::leaf_hash(b"root"),
    }
}

fn their_verifier(key: &VerifierKey) -> signed_note::VerifierList {
    let verifier =
        signed_note::StandardVerifier::new(&key.to_string()).expect("their parse of our key");
    signed_note::VerifierList::new(vec![Box::new(verifier)])
}

#[test]
fn they_verify_what_we_sign() {
    let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let ours = signer.sign(checkpoint(), 0).unwrap();
    let key = signer.verifier_key(ORIGIN).unwrap();
    let note = signed_note::Note::from_bytes(ours.note().unwrap().as_bytes())
        .expect("their parse of our note");
    let (verified, unverified) = note
        .verify(&their_verifier(&key))
        .expect("their verification");
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    assert_eq!(verified[0].name(), ORIGIN);
    assert_eq!(format!("{:08x}", verified[0].id()), ours.key_id);
    assert_eq!(note.text(), checkpoint().body().as_bytes());

    // Another key under the same name is theirs to refuse too.
    let other = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let other_key = other.verifier_key(ORIGIN).unwrap();
    assert!(note.verify(&their_verifier(&other_key)).is_err());
}

#[test]
fn we_verify_what_they_sign() {
    let seed = [7u8; 32];
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let public = pair.public_key().as_ref();
    let key = VerifierKey::new(ORIGIN, public).unwrap();
    assert_eq!(
        format!(
            "{:08x}",
            signed_note::key_id(ORIGIN, &[&[1u8][..], public].concat())
        ),
        key.to_string().split('+').nth(1).unwrap()
    );
    let mut private = vec![1u8];
    private.extend_from_slice(&seed);
    let skey = format!(
        "PRIVATE+KEY+{ORIGIN}+{}+{}",
        key.to_string().split('+').nth(1).unwrap(),
        base64_standard(&private)
    );
    let signer = signed_note::StandardSigner::new(&skey).expect("their signer");
    let mut note = signed_note::Note::new(checkpoint().body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&signer]).unwrap();
    let text = String::from_utf8(note.to_bytes()).unwrap();

    let read = SignedCheckpoint::from_note(&text).expect("our parse of their note");
    assert_eq!(read.checkpoint, checkpoint());
    read.verify(&[public])
        .expect("our verification of their signature");
    assert!(read.verify(&[&[9u8; 32][..]]).is_err());
    // Ed25519 is deterministic, so the same key and text give the same bytes on both sides.
    let ours = Signer::from_pkcs8(&pkcs8_v1(&seed))
        .unwrap()
        .sign(checkpoint(), 0)
        .unwrap();
    assert_eq!(ours.note().unwrap(), text);
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The PKCS#8 v1 document of an Ed25519 seed (RFC 8410), as OpenSSL writes it.
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}
