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
use crate::store::{Bucket, Precondition, StoreError};

/// Where a chunk's data is: nowhere (all zeros) or in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRef {
    Zero,
    Stored(ChunkId),
}

/// Told about every chunk just before it is PUT, so garbage collection never deletes a chunk
/// an upload is about to reference (catalog::gc). An error aborts the put.
pub trait ChunkPins: Send + Sync + std::fmt::Debug {
    fn pin(&self, id: &ChunkId) -> Result<(), String>;
}

#[derive(Debug)]
pub struct ChunkStore {
    bucket: Arc<Bucket>,
    codec: Codec,
    corrupt_reads: AtomicU64,
    pins: Option<Arc<dyn ChunkPins>>,
}

impl ChunkStore {
    pub fn new(bucket: Arc<Bucket>, codec: Codec) -> Self {
        Self {
            bucket,
            codec,
            corrupt_reads: AtomicU64::new(0),
            pins: None,
        }
    }

    /// Pins every chunk before its PUT (the daemon and every command that uploads chunks).
    pub fn with_pins(mut self, pins: Arc<dyn ChunkPins>) -> Self {
        self.pins = Some(pins);
        self
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// Seals and uploads a chunk; all-zero data costs nothing and returns `ChunkRef::Zero`.
    pub async fn put(&self, data: Bytes) -> Result<ChunkRef, StoreError> {
        Ok(self.put_counted(data).await?.0)
    }

    /// `put`, also returning the bytes stored in the bucket (0 for a zero chunk).
    pub async fn put_counted(&self, data: Bytes) -> Result<(ChunkRef, u64), StoreError> {
        let codec = self.codec.clone();
        let sealed = super::background::run(move || codec.seal_chunk(&data))
            .await
            .map_err(|e| self.internal("seal", e.to_string()))?
            .map_err(|e| self.internal("seal", e.to_string()))?;
        match sealed {
            Sealed::Zero => Ok((ChunkRef::Zero, 0)),
            Sealed::Chunk { id, frame } => {
                if let Some(pins) = &self.pins {
                    pins.pin(&id).map_err(|e| self.internal("pin", e))?;
                }
                let len = frame.len() as u64;
                self.bucket
                    .put(&id.object_key(), Bytes::from(frame))
                    .await?;
                Ok((ChunkRef::Stored(id), len))
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

    /// `put_sealed` with user metadata on the object (a shelf archive's tree hashes); a
    /// `file://` bucket keeps no metadata, so nothing may depend on reading it back.
    pub async fn put_sealed_with(
        &self,
        key: &str,
        data: Bytes,
        metadata: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let frame = self.seal_for(key, data).await?;
        let len = frame.len() as u64;
        self.bucket
            .put_object(key, Bytes::from(frame), metadata)
            .await?;
        Ok(len)
    }

    /// Seals `data` under the object key `key` (manifests, catalog backups) and uploads it.
    /// Returns the bytes stored.
    pub async fn put_sealed(&self, key: &str, data: Bytes) -> Result<u64, StoreError> {
        let frame = self.seal_for(key, data).await?;
        let len = frame.len() as u64;
        self.bucket.put(key, Bytes::from(frame)).await?;
        Ok(len)
    }

    /// Seals `data` for the object `key` on the blocking pool.
    async fn seal_for(&self, key: &str, data: Bytes) -> Result<Vec<u8>, StoreError> {
        let codec = self.codec.clone();
        let object = key.to_owned();
        super::background::run(move || codec.seal(&object, &data))
            .await
            .map_err(|e| self.internal("seal", e.to_string()))?
            .map_err(|e| self.internal("seal", e.to_string()))
    }

    /// `put_sealed` under a condition (`None`: none), returning the new ETag; a refusal is
    /// `StoreError::Conflict`. See `Bucket::put_if` for servers that ignore conditions.
    pub async fn put_sealed_if(
        &self,
        key: &str,
        data: Bytes,
        condition: Option<&Precondition>,
    ) -> Result<Option<String>, StoreError> {
        let frame = Bytes::from(self.seal_for(key, data).await?);
        match condition {
            Some(c) => self.bucket.put_if(key, frame, c).await,
            None => self.bucket.put_object(key, frame, &[]).await,
        }
    }

    /// Downloads and opens an object written by `put_sealed`; tampering is `Corrupt`.
    pub async fn get_sealed(&self, key: &str) -> Result<Bytes, StoreError> {
        let frame = self.bucket.get(key).await?;
        self.open_sealed(key, frame).await
    }

    /// `get_sealed`, also returning the object's ETag for a later `put_sealed_if`.
    pub async fn get_sealed_tagged(
        &self,
        key: &str,
    ) -> Result<(Bytes, Option<String>), StoreError> {
        let (frame, etag) = self.bucket.get_tagged(key).await?;
        Ok((self.open_sealed(key, frame).await?, etag))
    }

    async fn open_sealed(&self, key: &str, frame: Bytes) -> Result<Bytes, StoreError> {
        let frame = Vec::from(frame);
        let codec = self.codec.clone();
        let object = key.to_owned();
        let opened = tokio::task::spawn_blocking(move || codec.open(&object, frame))
            .await
            .map_err(|e| self.internal("open", e.to_string()))?;
        opened.map_err(|e| self.corrupt(e))
    }

    /// The content id `put` would give `data` (keyed BLAKE3), without storing anything.
    pub fn content_id(&self, data: &[u8]) -> ChunkId {
        self.codec.chunk_id(data)
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
