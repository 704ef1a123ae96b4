//! Verifiable logs in the style of RFC 9162 (Certificate Transparency 2.0): Merkle tree
//! hashing, inclusion and consistency proofs, and checkpoints as C2SP signed notes.
//!
//! Owns: the hash rules (§2.1.1), proof generation (§2.1.3.1, §2.1.4.1) and verification
//! (§2.1.3.2, §2.1.4.2), an incremental tree for one pass over a long log ([`Tree`]), and
//! the checkpoint text that is signed ([`Checkpoint`], C2SP `tlog-checkpoint`) in a C2SP
//! signed note ([`note`]).
//!
//! Must not know about: what the leaves are (audit records, device keys) or where they are
//! stored. Pure: no I/O, so the gateway, its command line and client SDKs share it.
//!
//! A reader starts at [`Tree`] and [`verify_inclusion`].

mod checkpoint;
pub mod cosignature;
pub mod note;
mod proof;
mod tree;

pub use checkpoint::{Checkpoint, CheckpointError, Format, SignedCheckpoint, Signer};
pub use cosignature::CosignerKey;
pub use note::{Note, NoteError, NoteSignature, VerifierKey};
pub use proof::{
    ProofError, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion,
};
pub use tree::{Tree, root};

/// A SHA-256 node or leaf hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing (§2.1.1).
pub fn empty_root() -> Hash {
    digest(&[&[]])
}

/// `SHA-256(0x00 || data)` (§2.1.1): the hash of a leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    digest(&[&[0x00], data])
}

/// `SHA-256(0x01 || left || right)` (§2.1.1): the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    digest(&[&[0x01], left, right])
}

fn digest(parts: &[&[u8]]) -> Hash {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Lower-case hex of a hash.
pub fn to_hex(hash: &Hash) -> String {
    hex(hash)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A hash from 64 hex digits.
pub fn from_hex(hex: &str) -> Option<Hash> {
    from_hex_array(hex)
}

/// `N` bytes from `2N` lower-case hex digits: the one form [`to_hex`] writes, so a
/// stored hash has exactly one spelling (an upper-case digit or a `+` sign is refused,
/// not read as the same bytes).
fn from_hex_array<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The largest power of two smaller than `n` (`n > 1`): where RFC 9162 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (n - 1).ilog2()
}

#[cfg(test)]
pub(crate) mod vectors {
    //! The reference tree of RFC 6962's test suite (the same hashing as RFC 9162): eight
    //! leaves and the root of each prefix.
    pub const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    pub const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    pub fn leaf_hashes() -> Vec<super::Hash> {
        LEAVES.iter().map(|l| super::leaf_hash(l)).collect()
    }

    pub fn h(hex: &str) -> super::Hash {
        super::from_hex(hex).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(to_hex(&empty_root()), vectors::ROOTS[0]);
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_input() {
        let h = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("00"), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
        // One spelling per hash: no upper case, no sign.
        assert_eq!(from_hex(&to_hex(&h).to_uppercase()), None);
        assert_eq!(from_hex(&format!("+{}", &to_hex(&h)[1..])), None);
    }

    #[test]
    fn split_is_the_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(8), 4);
        assert_eq!(split(9), 8);
    }
}
