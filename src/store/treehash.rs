//! The Glacier SHA-256 tree hash: SHA-256 of each 1 MiB leaf, then hashes of adjacent pairs,
//! level by level, an odd node carried up unchanged, until one root remains.
//!
//! Owns the tree-hash algorithm for archives (tape shelf, docs/design.md §6) and `tidegate
//! treehash`. Streaming in constant memory: finished subtrees sit on a stack like the digits of a
//! binary counter, at most one per level (≤ 64 entries), so a hash of any length holds one leaf's
//! SHA-256 state plus that stack. Invariant: the streaming result equals the level-by-level
//! definition for every input length, and the tree hash of an upload's parts, each a power-of-two
//! number of MiB (all but the last the same size), combines into the tree hash of the whole.

use std::fmt;
use std::io::Read;

use aws_lc_rs::digest::{self, SHA256};

pub const LEAF_SIZE: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TreeHash(pub [u8; 32]);

impl fmt::Display for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::store::keys::hex(&self.0))
    }
}

impl fmt::Debug for TreeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TreeHash({self})")
    }
}

/// Incremental tree hasher; feed bytes in any pieces with `update`, then `finish`.
pub struct TreeHasher {
    leaf: digest::Context,
    leaf_fill: usize,
    total: u64,
    /// Complete subtrees, left to right, with strictly decreasing heights.
    stack: Vec<(u32, [u8; 32])>,
}

impl Default for TreeHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeHasher {
    pub fn new() -> Self {
        Self {
            leaf: digest::Context::new(&SHA256),
            leaf_fill: 0,
            total: 0,
            stack: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (LEAF_SIZE - self.leaf_fill).min(data.len());
            self.leaf.update(&data[..take]);
            self.leaf_fill += take;
            self.total += take as u64;
            data = &data[take..];
            if self.leaf_fill == LEAF_SIZE {
                self.close_leaf();
            }
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn close_leaf(&mut self) {
        let ctx = std::mem::replace(&mut self.leaf, digest::Context::new(&SHA256));
        self.leaf_fill = 0;
        self.push(0, digest_bytes(ctx.finish()));
    }

    fn push(&mut self, height: u32, hash: [u8; 32]) {
        let mut node = (height, hash);
        while let Some(&(top_height, top)) = self.stack.last() {
            if top_height != node.0 {
                break;
            }
            self.stack.pop();
            node = (node.0 + 1, pair(&top, &node.1));
        }
        self.stack.push(node);
    }

    pub fn finish(mut self) -> TreeHash {
        // An empty input still has one (empty) leaf, as botocore and Glacier define it.
        if self.leaf_fill > 0 || self.total == 0 {
            self.close_leaf();
        }
        // The level-by-level definition carries the odd right-most node up unchanged, which is
        // the same as joining the remaining subtrees from the right.
        let mut nodes = self.stack.into_iter().rev().map(|(_, h)| h);
        let last = nodes
            .next()
            .expect("finish closes at least one leaf, so the stack is not empty");
        TreeHash(nodes.fold(last, |right, left| pair(&left, &right)))
    }
}

/// Combines the tree hashes of consecutive parts into the tree hash of the whole. Valid when
/// every part but the last has the same size, a power-of-two number of MiB (the multipart rule
/// Glacier also imposes); the result is then exactly `TreeHasher` over the concatenation.
pub fn combine(parts: &[TreeHash]) -> Option<TreeHash> {
    let mut level: Vec<[u8; 32]> = parts.iter().map(|p| p.0).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|c| match c {
                [l, r] => pair(l, r),
                [odd] => *odd,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level.first().copied().map(TreeHash)
}

/// Tree hash of everything a reader yields, read in leaf-sized pieces.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<TreeHash> {
    let mut hasher = TreeHasher::new();
    let mut buf = vec![0u8; LEAF_SIZE];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

pub fn hash_bytes(data: &[u8]) -> TreeHash {
    let mut hasher = TreeHasher::new();
    hasher.update(data);
    hasher.finish()
}

fn pair(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&SHA256);
    ctx.update(left);
    ctx.update(right);
    digest_bytes(ctx.finish())
}

fn digest_bytes(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, written the slow obvious way: all leaves, then pairwise levels.
    fn reference(data: &[u8]) -> TreeHash {
        let leaves: Vec<TreeHash> = if data.is_empty() {
            vec![TreeHash(digest_bytes(digest::digest(&SHA256, b"")))]
        } else {
            data.chunks(LEAF_SIZE)
                .map(|c| TreeHash(digest_bytes(digest::digest(&SHA256, c))))
                .collect()
        };
        combine(&leaves).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn known_values() {
        // SHA-256 of the empty string and of one byte: one leaf is its own root.
        assert_eq!(
            hash_bytes(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash_bytes(b"a").to_string(),
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
    }

    #[test]
    fn streaming_matches_definition_at_leaf_boundaries() {
        for leaves in [1usize, 2, 3, 4, 5, 7, 8, 9] {
            for delta in [-1i64, 0, 1] {
                let len = (leaves * LEAF_SIZE) as i64 + delta;
                let d = data(len as usize);
                // Feed in awkward piece sizes so leaf boundaries fall inside updates.
                let mut h = TreeHasher::new();
                for piece in d.chunks(333_333) {
                    h.update(piece);
                }
                assert_eq!(h.finish(), reference(&d), "len {len}");
            }
        }
    }

    #[test]
    fn parts_combine_into_the_whole() {
        let d = data(13 * LEAF_SIZE + 12345);
        for part_mib in [1usize, 2, 4, 8] {
            let parts: Vec<TreeHash> = d.chunks(part_mib * LEAF_SIZE).map(hash_bytes).collect();
            assert_eq!(
                combine(&parts).unwrap(),
                hash_bytes(&d),
                "{part_mib} MiB parts"
            );
        }
        assert_eq!(combine(&[]), None);
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_hash(len in 0usize..(3 * LEAF_SIZE), cut in any::<prop::sample::Index>()) {
            let d = data(len);
            let cut = if len == 0 { 0 } else { cut.index(len) };
            let mut h = TreeHasher::new();
            h.update(&d[..cut]);
            h.update(&d[cut..]);
            prop_assert_eq!(h.finish(), reference(&d));
        }
    }
}
