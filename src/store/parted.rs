//! A local file kept in the bucket as sealed parts and a sealed manifest: the catalog copies
//! (docs/formats.md "Catalog copies").
//!
//! `<key>.part-000001`, `<key>.part-000002`, … each hold up to `PART_BYTES` of the file, sealed
//! under their own key (the frame's AAD binds each part to its place); `<key>` holds the
//! manifest (magic, part count, length and BLAKE3 of the whole file) and is written last, so an
//! object at `<key>` means every part is there. Memory stays at one part's plaintext and frame,
//! whatever the file's size. Copies written before this format hold the whole file in one frame
//! at `<key>`; `get_sealed_file` still reads them. Invariant: a file is rebuilt only when every
//! part authenticated and the whole has the manifest's length and hash; anything else is
//! `StoreError::Corrupt` and the destination is not left behind.

use std::path::Path;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::store::frame::{CorruptReason, FrameError};
use crate::store::keys::part_key;
use crate::store::{ChunkStore, Precondition, StoreError};

/// How much of the file one part holds: the unit of memory the copy costs.
pub const PART_BYTES: usize = 8 << 20;

const MAGIC: &str = "tidegate parted v1\n";

/// What `put_sealed_file` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub parts: u32,
    /// The file's length.
    pub bytes: u64,
}

impl ChunkStore {
    /// Stores `file` as `key` in parts of `part_bytes`. With `create_only`, every object is
    /// written with If-None-Match (for servers that honour it): a second writer of the same
    /// key gets `StoreError::Conflict` instead of overwriting.
    pub async fn put_sealed_file(
        &self,
        key: &str,
        file: &Path,
        part_bytes: usize,
        create_only: bool,
    ) -> Result<Stored, StoreError> {
        let local = |e: std::io::Error| self.local_error("upload", key, file, e);
        let condition = create_only.then_some(Precondition::Absent);
        let mut f = tokio::fs::File::open(file).await.map_err(local)?;
        let mut hasher = blake3::Hasher::new();
        let (mut parts, mut bytes) = (0u32, 0u64);
        loop {
            let mut piece = Vec::with_capacity(part_bytes);
            (&mut f)
                .take(part_bytes as u64)
                .read_to_end(&mut piece)
                .await
                .map_err(local)?;
            // An empty file still gets one (empty) part, so every copy has part 1.
            if piece.is_empty() && parts > 0 {
                break;
            }
            hasher.update(&piece);
            bytes += piece.len() as u64;
            parts += 1;
            let full = piece.len() == part_bytes;
            self.put_sealed_if(
                &part_key(key, parts),
                Bytes::from(piece),
                condition.as_ref(),
            )
            .await?;
            if !full {
                break;
            }
        }
        let manifest = format!(
            "{MAGIC}parts {parts}\nbytes {bytes}\nblake3 {}\n",
            hasher.finalize().to_hex()
        );
        self.put_sealed_if(key, Bytes::from(manifest), condition.as_ref())
            .await?;
        Ok(Stored { parts, bytes })
    }

    /// Rebuilds the file stored as `key` at `dest` (either format); returns its length.
    pub async fn get_sealed_file(&self, key: &str, dest: &Path) -> Result<u64, StoreError> {
        let result = self.write_sealed_file(key, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn write_sealed_file(&self, key: &str, dest: &Path) -> Result<u64, StoreError> {
        let local = |e: std::io::Error| self.local_error("download", key, dest, e);
        let head = self.get_sealed(key).await?;
        let mut out = tokio::fs::File::create(dest).await.map_err(local)?;
        let Some(text) = head.strip_prefix(MAGIC.as_bytes()) else {
            // The format before parts: the whole file in one frame.
            out.write_all(&head).await.map_err(local)?;
            out.sync_all().await.map_err(local)?;
            return Ok(head.len() as u64);
        };
        let mismatch = || {
            StoreError::Corrupt(FrameError::Corrupt {
                object: key.to_owned(),
                reason: CorruptReason::PartsMismatch,
            })
        };
        let text = std::str::from_utf8(text).map_err(|_| mismatch())?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .ok_or_else(mismatch)
        };
        let parts: u32 = field("parts")?.parse().map_err(|_| mismatch())?;
        let bytes: u64 = field("bytes")?.parse().map_err(|_| mismatch())?;
        let want = field("blake3")?.to_owned();
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        for n in 1..=parts {
            let piece = self
                .get_sealed(&part_key(key, n))
                .await
                .map_err(|e| match e {
                    // A complete copy (its manifest is there) missing a part is damage.
                    StoreError::NotFound { .. } => mismatch(),
                    other => other,
                })?;
            hasher.update(&piece);
            written += piece.len() as u64;
            out.write_all(&piece).await.map_err(local)?;
        }
        if written != bytes || hasher.finalize().to_hex().as_str() != want {
            return Err(mismatch());
        }
        out.sync_all().await.map_err(local)?;
        Ok(written)
    }

    fn local_error(
        &self,
        op: &'static str,
        key: &str,
        file: &Path,
        e: std::io::Error,
    ) -> StoreError {
        StoreError::Other {
            bucket: self.bucket().describe().to_owned(),
            op,
            key: key.to_owned(),
            detail: format!("{}: {e}", file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BucketConfig;
    use crate::store::{Bucket, Codec, MasterKey};
    use std::sync::Arc;

    fn store(dir: &Path) -> ChunkStore {
        let bucket = Bucket::open(&BucketConfig::local(dir.join("bucket")), true).unwrap();
        ChunkStore::new(Arc::new(bucket), Codec::new(MasterKey::generate().unwrap()))
    }

    #[tokio::test]
    async fn files_of_any_length_round_trip_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = store(dir.path());
        // Empty, shorter than a part, exactly two parts, and a partial last part.
        for (i, len) in [0usize, 100, 2048, 2500].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b * 7 % 251) as u8).collect();
            let src = dir.path().join(format!("src{i}"));
            std::fs::write(&src, &data).unwrap();
            let key = format!("gateway/x/catalog/{i:020}");
            let stored = chunks
                .put_sealed_file(&key, &src, 1024, true)
                .await
                .unwrap();
            assert_eq!(stored.bytes, len as u64);
            assert_eq!(stored.parts, (len.div_ceil(1024)).max(1) as u32, "{len}");
            let dest = dir.path().join(format!("dest{i}"));
            assert_eq!(
                chunks.get_sealed_file(&key, &dest).await.unwrap(),
                len as u64
            );
            assert_eq!(std::fs::read(&dest).unwrap(), data);
        }
    }

    #[tokio::test]
    async fn a_copy_in_one_frame_still_reads() {
        // The format written before parts: `put_sealed` of the whole file at the key.
        let dir = tempfile::tempdir().unwrap();
        let chunks = store(dir.path());
        let data = b"SQLite format 3\0 and the rest of an old catalog copy".to_vec();
        let key = "gateway/x/catalog/00000000000000000001";
        chunks
            .put_sealed(key, Bytes::from(data.clone()))
            .await
            .unwrap();
        let dest = dir.path().join("old");
        chunks.get_sealed_file(key, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    #[tokio::test]
    async fn a_missing_or_swapped_part_is_corrupt_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = store(dir.path());
        let src = dir.path().join("src");
        std::fs::write(&src, vec![5u8; 3000]).unwrap();
        let (a, b) = ("gateway/x/catalog/a", "gateway/x/catalog/b");
        chunks.put_sealed_file(a, &src, 1024, false).await.unwrap();
        std::fs::write(&src, vec![6u8; 3000]).unwrap();
        chunks.put_sealed_file(b, &src, 1024, false).await.unwrap();
        let bucket = chunks.bucket();
        let dest = dir.path().join("dest");
        // Part 2 of another copy in part 2's place: its frame is bound to the other key.
        let other = bucket.get(&part_key(b, 2)).await.unwrap();
        bucket.put(&part_key(a, 2), other).await.unwrap();
        let err = chunks.get_sealed_file(a, &dest).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(!dest.exists());
        // A part gone: damage too (never "not found"), and nothing left behind either.
        bucket.delete(&part_key(b, 3)).await.unwrap();
        let err = chunks.get_sealed_file(b, &dest).await.unwrap_err();
        assert!(err.to_string().contains("do not add up"), "{err}");
        assert!(!dest.exists());
    }
}
