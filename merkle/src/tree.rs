//! Tree heads: the root of a list of leaf hashes (RFC 9162 §2.1.1), at once or one leaf at
//! a time.

use crate::{Hash, empty_root, node_hash, split};

/// `MTH(D[n])`: the root over `leaves` (leaf hashes, in order).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = usize::try_from(split(n as u64)).unwrap_or(n / 2);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// A tree grown one leaf at a time, holding only the roots of its perfect subtrees
/// (at most 64 hashes), so a log of any length is checked in one pass.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    size: u64,
    /// Roots of perfect subtrees, largest (leftmost) first, with their heights.
    peaks: Vec<(u32, Hash)>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut height = 0;
        let mut hash = leaf;
        while let Some(&(h, left)) = self.peaks.last() {
            if h != height {
                break;
            }
            self.peaks.pop();
            hash = node_hash(&left, &hash);
            height += 1;
        }
        self.peaks.push((height, hash));
        self.size += 1;
    }

    /// The roots of the perfect subtrees, largest first: with [`Tree::size`], all a log
    /// needs to keep to go on appending.
    pub fn peaks(&self) -> Vec<Hash> {
        self.peaks.iter().map(|&(_, h)| h).collect()
    }

    /// A tree of `size` leaves from its [`Tree::peaks`]; `None` if their number does not
    /// fit the size (one peak per set bit).
    pub fn restore(size: u64, peaks: &[Hash]) -> Option<Self> {
        if peaks.len() != size.count_ones() as usize {
            return None;
        }
        let heights = (0..64u32).rev().filter(|bit| size & (1 << bit) != 0);
        Some(Self {
            size,
            peaks: heights.zip(peaks.iter().copied()).collect(),
        })
    }

    /// The root over every leaf pushed so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = peaks.next() else {
            return empty_root();
        };
        for (_, left) in peaks {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaf_hash;
    use crate::vectors::{ROOTS, h, leaf_hashes};

    #[test]
    fn roots_match_the_reference_tree() {
        let leaves = leaf_hashes();
        for n in 0..=leaves.len() {
            assert_eq!(root(&leaves[..n]), h(ROOTS[n]), "size {n}");
        }
    }

    #[test]
    fn incremental_tree_agrees_with_the_recursive_root_at_every_size() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut tree = Tree::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.size(), i as u64 + 1);
            assert_eq!(tree.root(), root(&leaves[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn restored_tree_goes_on_as_the_original() {
        let mut tree = Tree::new();
        for i in 0u32..23 {
            tree.push(leaf_hash(&i.to_be_bytes()));
        }
        let mut restored = Tree::restore(tree.size(), &tree.peaks()).unwrap();
        assert_eq!(restored.root(), tree.root());
        tree.push(leaf_hash(b"next"));
        restored.push(leaf_hash(b"next"));
        assert_eq!(restored.root(), tree.root());
        assert!(Tree::restore(5, &tree.peaks()[..1]).is_none());
        assert!(Tree::restore(0, &[]).is_some());
    }

    #[test]
    fn order_matters() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        assert_ne!(root(&[a, b]), root(&[b, a]));
    }
}
