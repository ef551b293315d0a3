//! Sparse staging of large uploaded files: which part-sized blocks of a staging file hold the
//! file's bytes, and which are still only in the bucket object the file was staged from.
//!
//! Kept beside the staging file as `<inode id>.blocks` (text: `v1 <remote size> <block size>`,
//! then one `0`/`1` per block), replaced atomically on every change and fsynced by COMMIT after
//! the staging file. Invariant: an absent block lies wholly inside the remote object, so its
//! bytes can be read or copied (UploadPartCopy) from the same offsets there; anything that
//! would break that (a truncate) fills every absent block first.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockMap {
    pub remote_size: u64,
    pub block: u64,
    pub present: Vec<bool>,
}

impl BlockMap {
    /// A map for a file staged from a `remote_size`-byte object: nothing present yet.
    pub fn new(remote_size: u64, block: u64) -> Self {
        let blocks = remote_size.div_ceil(block.max(1));
        Self {
            remote_size,
            block: block.max(1),
            present: vec![false; usize::try_from(blocks).unwrap_or(0)],
        }
    }

    pub fn path(staging: &Path) -> PathBuf {
        staging.with_extension("blocks")
    }

    pub fn is_present(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.present.get(i).copied())
            // Blocks past the remote object never had remote bytes.
            .unwrap_or(true)
    }

    pub fn set_present(&mut self, index: u64) {
        if let Some(p) = usize::try_from(index)
            .ok()
            .and_then(|i| self.present.get_mut(i))
        {
            *p = true;
        }
    }

    /// The blocks that `offset..end` touches.
    pub fn blocks_of(&self, offset: u64, end: u64) -> std::ops::Range<u64> {
        offset / self.block..end.div_ceil(self.block)
    }

    /// The remote byte range of block `index`.
    pub fn range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index.saturating_mul(self.block);
        start..start.saturating_add(self.block).min(self.remote_size)
    }

    pub fn absent(&self) -> impl Iterator<Item = u64> + '_ {
        self.present
            .iter()
            .enumerate()
            .filter(|(_, p)| !**p)
            .map(|(i, _)| i as u64)
    }

    fn render(&self) -> String {
        let bits: String = self
            .present
            .iter()
            .map(|p| if *p { '1' } else { '0' })
            .collect();
        format!("v1 {} {}\n{bits}\n", self.remote_size, self.block)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split_whitespace();
        if head.next()? != "v1" {
            return None;
        }
        let remote_size = head.next()?.parse().ok()?;
        let block: u64 = head.next()?.parse().ok()?;
        let present: Vec<bool> = lines
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| c == '1')
            .collect();
        (block > 0
            && present.len() as u64 == remote_size / block + u64::from(remote_size % block != 0))
        .then_some(Self {
            remote_size,
            block,
            present,
        })
    }

    /// The map of a staging file, `None` when the file is fully local (or the map unreadable,
    /// which only happens to a map this version did not write).
    pub fn load(staging: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(Self::path(staging)).ok()?)
    }

    /// Replaces the map atomically (temporary file + rename); `sync` also fsyncs it.
    pub fn save(&self, staging: &Path, sync: bool) -> std::io::Result<()> {
        let path = Self::path(staging);
        let tmp = path.with_extension("blocks-new");
        std::fs::write(&tmp, self.render())?;
        if sync {
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(staging: &Path) {
        let _ = std::fs::remove_file(Self::path(staging));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_render_parse_and_ranges() {
        let mut m = BlockMap::new(40, 16);
        assert_eq!(m.present.len(), 3);
        assert_eq!(m.range(2), 32..40);
        assert_eq!(m.blocks_of(15, 17), 0..2);
        m.set_present(1);
        assert!(m.is_present(1) && !m.is_present(0) && m.is_present(7));
        assert_eq!(m.absent().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(BlockMap::parse(&m.render()), Some(m));
        assert_eq!(BlockMap::parse("v1 40 16\n01\n"), None);
        assert_eq!(BlockMap::parse("v2 40 16\n011\n"), None);
    }
}
