//! Inclusion and consistency proofs: generation (RFC 9162 §2.1.3.1, §2.1.4.1) from the
//! leaf hashes, and verification (§2.1.3.2, §2.1.4.2) from the proof alone.

use crate::{Hash, node_hash, root, split};

/// Why a proof does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not inside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {first} is larger than tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

fn len(leaves: &[Hash]) -> u64 {
    leaves.len() as u64
}

fn at(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `PATH(index, D[n])`: the audit path of leaf `index` in the tree over `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= len(leaves) {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: len(leaves),
        });
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Ok(proof)
}

fn path(m: u64, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = len(leaves);
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..at(k)], out);
        out.push(root(&leaves[at(k)..]));
    } else {
        path(m - k, &leaves[at(k)..], out);
        out.push(root(&leaves[..at(k)]));
    }
}

/// `PROOF(first, D[n])`: that the tree of the first `first` leaves is a prefix of the tree
/// over all of `leaves`.
pub fn consistency_proof(leaves: &[Hash], first: u64) -> Result<Vec<Hash>, ProofError> {
    if first > len(leaves) {
        return Err(ProofError::SizesOutOfOrder {
            first,
            second: len(leaves),
        });
    }
    let mut proof = Vec::new();
    if first > 0 {
        subproof(first, leaves, true, &mut proof);
    }
    Ok(proof)
}

fn subproof(m: u64, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = len(leaves);
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..at(k)], complete, out);
        out.push(root(&leaves[at(k)..]));
    } else {
        subproof(m - k, &leaves[at(k)..], false, out);
        out.push(root(&leaves[..at(k)]));
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some((head, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *first_root || sr != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaf_hash;
    use crate::vectors::{h, leaf_hashes};

    #[test]
    fn inclusion_proofs_match_the_reference_tree() {
        let leaves = leaf_hashes();
        let cases: [(u64, u64, &[&str]); 4] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                1,
                2,
                &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
            ),
        ];
        for (index, size, expected) in cases {
            let tree = &leaves[..at(size)];
            let proof = inclusion_proof(tree, index).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(proof, expected, "leaf {index} of {size}");
            verify_inclusion(&leaves[at(index)], index, size, &proof, &root(tree)).unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_tree() {
        let leaves = leaf_hashes();
        let cases: [(u64, u64, &[&str]); 3] = [
            (1, 1, &[]),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (first, second, expected) in cases {
            let tree = &leaves[..at(second)];
            let proof = consistency_proof(tree, first).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(proof, expected, "{first} → {second}");
            verify_consistency(
                first,
                second,
                &root(&leaves[..at(first)]),
                &root(tree),
                &proof,
            )
            .unwrap();
        }
    }

    /// Every proof of every tree up to 40 leaves verifies, and a proof altered in any
    /// hash, or checked against another root, index or size, does not.
    #[test]
    fn every_proof_verifies_and_no_altered_one_does() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let size = n as u64;
            let top = root(tree);
            for i in 0..size {
                let proof = inclusion_proof(tree, i).unwrap();
                verify_inclusion(&tree[at(i)], i, size, &proof, &top).unwrap();
                if size > 1 {
                    let other = (i + 1) % size;
                    assert!(verify_inclusion(&tree[at(i)], other, size, &proof, &top).is_err());
                    assert!(verify_inclusion(&tree[at(other)], i, size, &proof, &top).is_err());
                }
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][0] ^= 1;
                    assert!(verify_inclusion(&tree[at(i)], i, size, &bad, &top).is_err());
                }
                let mut longer = proof.clone();
                longer.push(top);
                assert!(verify_inclusion(&tree[at(i)], i, size, &longer, &top).is_err());
            }
            for m in 0..=size {
                let proof = consistency_proof(tree, m).unwrap();
                let first = root(&tree[..at(m)]);
                verify_consistency(m, size, &first, &top, &proof).unwrap();
                if m > 0 && m < size {
                    let wrong = root(&tree[..at(m - 1)]);
                    assert!(verify_consistency(m, size, &wrong, &top, &proof).is_err());
                    for j in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[j][31] ^= 0x80;
                        assert!(verify_consistency(m, size, &first, &top, &bad).is_err());
                    }
                    let mut forked = tree.to_vec();
                    forked[at(m) - 1] = leaf_hash(b"rewritten");
                    assert!(verify_consistency(m, size, &first, &root(&forked), &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_errors_not_panics() {
        let leaves = leaf_hashes();
        assert!(inclusion_proof(&leaves, 8).is_err());
        assert!(inclusion_proof(&[], 0).is_err());
        assert!(consistency_proof(&leaves, 9).is_err());
        let r = root(&leaves);
        assert!(verify_inclusion(&leaves[0], 3, 2, &[], &r).is_err());
        assert!(verify_inclusion(&leaves[0], 0, 0, &[], &r).is_err());
        assert!(verify_consistency(5, 3, &r, &r, &[]).is_err());
        assert!(verify_consistency(3, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(0, 5, &r, &r, &[r]).is_err());
    }
}
