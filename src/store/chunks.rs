//! Chunks by content address: seal and PUT, GET and open.
//!
//! Owns the path between plaintext chunk data and `chunks/<id>` objects. Sealing runs on the
//! blocking pool so concurrent puts use every core (each seal is single-threaded). Invariant:
//! `get` returns only data whose frame authenticated; a failed check is `StoreError::Corrupt`
//! naming the object, and is counted so `status` can report it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::store::frame::{Codec, FrameError, Sealed};
use crate::store::keys::ChunkId;
use crate::store::{Bucket, StoreError};

/// Where a chunk's data is: nowhere (all zeros) or in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRef {
    Zero,
    Stored(ChunkId),
}

#[derive(Debug)]
pub struct ChunkStore {
    bucket: Arc<Bucket>,
    codec: Codec,
    corrupt_reads: AtomicU64,
}

impl ChunkStore {
    pub fn new(bucket: Arc<Bucket>, codec: Codec) -> Self {
        Self {
            bucket,
            codec,
            corrupt_reads: AtomicU64::new(0),
        }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// Seals and uploads a chunk; all-zero data costs nothing and returns `ChunkRef::Zero`.
    pub async fn put(&self, data: Bytes) -> Result<ChunkRef, StoreError> {
        let codec = self.codec.clone();
        let sealed = tokio::task::spawn_blocking(move || codec.seal_chunk(&data))
            .await
            .map_err(|e| self.internal("seal", e.to_string()))?
            .map_err(|e| self.internal("seal", e.to_string()))?;
        match sealed {
            Sealed::Zero => Ok(ChunkRef::Zero),
            Sealed::Chunk { id, frame } => {
                self.bucket
                    .put(&id.object_key(), Bytes::from(frame))
                    .await?;
                Ok(ChunkRef::Stored(id))
            }
        }
    }

    /// Downloads and verifies a chunk.
    pub async fn get(&self, id: ChunkId) -> Result<Bytes, StoreError> {
        let key = id.object_key();
        let frame = self.bucket.get(&key).await?;
        let codec = self.codec.clone();
        // An unshared buffer converts without a copy; decryption happens in place.
        let frame = Vec::from(frame);
        let opened = tokio::task::spawn_blocking(move || codec.open(&key, frame))
            .await
            .map_err(|e| self.internal("open", e.to_string()))?;
        opened.map_err(|e| self.corrupt(e))
    }

    /// Reads of chunks that failed verification since start.
    pub fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads.load(Ordering::Relaxed)
    }

    fn corrupt(&self, e: FrameError) -> StoreError {
        self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "chunk failed verification");
        StoreError::Corrupt(e)
    }

    fn internal(&self, op: &'static str, detail: String) -> StoreError {
        StoreError::Other {
            bucket: self.bucket.describe().to_owned(),
            op,
            key: "chunk".to_owned(),
            detail,
        }
    }
}
