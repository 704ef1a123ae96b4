//! The safety number: a short decimal fingerprint over two people's device signing keys
//! that they compare face to face (at the intake), in the manner of Signal's safety
//! numbers. It changes whenever either side's set of devices changes.

use crate::jwk::PublicKey;

/// Hash iterations per side: makes finding a second key set with the same 30 digits
/// cost 2^100 * this many hashes instead of 2^100.
const ITERATIONS: usize = 5200;

fn side(keys: &[PublicKey]) -> String {
    let mut thumbprints: Vec<String> = keys.iter().map(PublicKey::thumbprint).collect();
    thumbprints.sort();
    thumbprints.dedup();
    let identity = thumbprints.join(",");
    let mut hash = ring::digest::digest(
        &ring::digest::SHA256,
        format!("icbt-safety-number-v1\n{identity}").as_bytes(),
    );
    for _ in 0..ITERATIONS {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(hash.as_ref());
        context.update(identity.as_bytes());
        hash = context.finish();
    }
    // Six groups of five digits from six 5-byte chunks.
    hash.as_ref()
        .chunks(5)
        .take(6)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// 60 digits in twelve groups of five; the same whichever side computes it.
pub fn safety_number(mine: &[PublicKey], theirs: &[PublicKey]) -> String {
    let (a, b) = (side(mine), side(theirs));
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn key() -> PublicKey {
        SigningKey::generate().unwrap().public().clone()
    }

    #[test]
    fn both_sides_compute_the_same_sixty_digits() {
        let (patient, therapist) = (vec![key()], vec![key(), key()]);
        let number = safety_number(&patient, &therapist);
        assert_eq!(number, safety_number(&therapist, &patient));
        assert_eq!(number.split(' ').count(), 12);
        assert_eq!(number.chars().filter(char::is_ascii_digit).count(), 60);
        let reordered = vec![therapist[1].clone(), therapist[0].clone()];
        assert_eq!(number, safety_number(&patient, &reordered));
    }

    #[test]
    fn a_swapped_or_added_key_changes_the_number() {
        let (patient, therapist) = (vec![key()], vec![key()]);
        let number = safety_number(&patient, &therapist);
        assert_ne!(number, safety_number(&[key()], &therapist));
        let mut more = therapist.clone();
        more.push(key());
        assert_ne!(number, safety_number(&patient, &more));
    }
}
