//! Object data on the device: segments of up to 8 MiB, each one store frame (lz4 + AES-256-GCM
//! under the job key) in its own file, `DEVICE_DIR/seg/<ab>/<id>`; the frame's AAD is
//! `device/<job>/seg/<id>`, so a segment cannot be swapped for another or edited unseen.
//!
//! Invariant: `SegmentWriter::finish` returns only after every segment file is fsynced; a writer
//! dropped without finishing removes what it wrote (a segment still being written when it is
//! dropped is left as an orphan, removed when the device next opens writable). Reads return bytes only after the frame
//! authenticated.
//!
//! A device in a cluster (docs/operations.md, "Device clusters") keeps the same frames as
//! objects `seg/<id>` in the cluster's Garage bucket instead of files: `finish` then returns only
//! after Garage acknowledged every segment at its write quorum.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::gateway::GatewayError;
use crate::gateway::import::etag::EtagHasher;
use crate::gateway::import::record::{ExpectedDigests, Segment};
use crate::store::device::Sha256;
use crate::store::keys::hex;
use crate::store::{Bucket, Codec};

/// Plaintext per segment: large enough that per-file costs vanish, small enough to seal on the
/// blocking pool without holding much memory per stream.
pub(crate) const SEGMENT_BYTES: usize = 8 << 20;

/// Where a job's segments live and how they are sealed.
#[derive(Debug, Clone)]
pub(crate) struct SegmentStore {
    pub job: String,
    pub dir: PathBuf,
    pub codec: Codec,
    /// The cluster's bucket when the data set lives in a device cluster; `None`: files in `dir`.
    pub remote: Option<Arc<Bucket>>,
}

/// The object key of a segment in a cluster's bucket.
pub(crate) fn segment_key(id: &str) -> String {
    format!("seg/{id}")
}

impl SegmentStore {
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join("seg").join(&id[..2]).join(id)
    }

    fn aad(&self, id: &str) -> String {
        format!("device/{}/seg/{id}", self.job)
    }

    /// Reads and authenticates one segment.
    pub(crate) async fn read(&self, seg: &Segment) -> Result<Bytes, GatewayError> {
        let frame = match &self.remote {
            Some(bucket) => bucket.get(&segment_key(&seg.id)).await?.to_vec(),
            None => tokio::fs::read(self.path(&seg.id)).await.map_err(|e| {
                GatewayError::Corrupt(
                    format!("device segment {} is unreadable: {e}", seg.id).into(),
                )
            })?,
        };
        let codec = self.codec.clone();
        let aad = self.aad(&seg.id);
        let data = tokio::task::spawn_blocking(move || codec.open(&aad, frame))
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))?
            .map_err(|e| GatewayError::Corrupt(Box::new(e)))?;
        if data.len() as u64 != seg.len {
            return Err(GatewayError::Corrupt(
                format!("device segment {} has the wrong length", seg.id).into(),
            ));
        }
        Ok(data)
    }

    /// Removes segment files (after the record that named them is gone). Missing ones are fine.
    pub(crate) async fn remove(&self, segments: &[Segment]) {
        if let Some(bucket) = &self.remote {
            for s in segments {
                if let Err(e) = bucket.delete(&segment_key(&s.id)).await {
                    tracing::warn!(job = %self.job, segment = %s.id, error = %e, "removing a segment");
                }
            }
            return;
        }
        for s in segments {
            if let Err(e) = tokio::fs::remove_file(self.path(&s.id)).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(job = %self.job, segment = %s.id, error = %e, "removing a segment");
            }
        }
    }

    /// Every segment id on disk (for removing orphans of writes a crash interrupted).
    pub(crate) fn all_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(top) = std::fs::read_dir(self.dir.join("seg")) else {
            return out;
        };
        for sub in top.flatten() {
            if let Ok(files) = std::fs::read_dir(sub.path()) {
                out.extend(
                    files
                        .flatten()
                        .filter_map(|f| f.file_name().to_str().map(str::to_owned)),
                );
            }
        }
        out
    }

    pub(crate) fn remove_ids_now(&self, ids: &[String]) {
        if let Some(bucket) = &self.remote {
            // Called from `Drop`: the deletes go on in the background when a runtime is there;
            // a segment left behind is only unreferenced ciphertext.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (bucket, ids) = (bucket.clone(), ids.to_vec());
                rt.spawn(async move {
                    for id in ids {
                        let _ = bucket.delete(&segment_key(&id)).await;
                    }
                });
            }
            return;
        }
        for id in ids {
            let _ = std::fs::remove_file(self.path(id));
        }
    }
}

/// The client's data did not match the checksum it sent (Content-MD5, x-amz-checksum-sha256).
#[derive(Debug, thiserror::Error)]
#[error("the {which} of the data received does not match the one the client sent")]
pub struct DigestMismatch {
    pub which: &'static str,
}

/// What a finished writer produced.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub segments: Vec<Segment>,
    pub size: u64,
    pub sha256: [u8; 32],
    /// The S3 ETag of the bytes, unquoted: their MD5 unless the writer was given part
    /// boundaries (`with_etag`).
    pub etag: String,
}

/// Segments being sealed and written while the next one fills: enough to hide one fsync behind
/// the hashing of the next segment.
const SEALS_IN_FLIGHT: usize = 2;

/// Receives an object's bytes in any pieces and stores them as sealed segments, hashing as it
/// goes. Hashing runs in order on the blocking pool; sealing and writing a segment overlap the
/// hashing of the next (at most `SEALS_IN_FLIGHT`), and `finish` waits for all of them.
#[derive(Debug)]
pub struct SegmentWriter {
    store: Arc<SegmentStore>,
    buf: BytesMut,
    hashes: Option<(Sha256, EtagHasher)>,
    sealing: VecDeque<tokio::task::JoinHandle<Result<(), GatewayError>>>,
    segments: Vec<Segment>,
    size: u64,
    finished: bool,
}

impl SegmentWriter {
    pub(crate) fn new(store: Arc<SegmentStore>) -> Self {
        Self {
            store,
            buf: BytesMut::new(),
            hashes: Some((Sha256::default(), EtagHasher::single())),
            sealing: VecDeque::new(),
            segments: Vec::new(),
            size: 0,
            finished: false,
        }
    }

    /// Computes the ETag at these part boundaries instead of the MD5 (before any write).
    pub(crate) fn with_etag(mut self, etag: EtagHasher) -> Self {
        if let Some((_, e)) = self.hashes.as_mut() {
            *e = etag;
        }
        self
    }

    pub async fn write(&mut self, mut data: Bytes) -> Result<(), GatewayError> {
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(SEGMENT_BYTES);
            }
            let room = SEGMENT_BYTES - self.buf.len();
            let piece = data.split_to(room.min(data.len()));
            self.buf.extend_from_slice(&piece);
            if self.buf.len() == SEGMENT_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), GatewayError> {
        let data = std::mem::take(&mut self.buf).freeze();
        let mut raw = [0u8; 16];
        crate::store::device::new_salt()
            .map(|s| raw = s)
            .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        let id = hex(&raw);
        let len = data.len() as u64;
        let (mut sha, mut etag) = self
            .hashes
            .take()
            .unwrap_or_else(|| (Sha256::default(), EtagHasher::single()));
        let hashed = data.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            sha.update(&hashed);
            etag.update(&hashed);
            (sha, etag)
        })
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        self.hashes = Some(hashes);
        while self.sealing.len() >= SEALS_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        // Recorded before the write: a half-written file is removed on drop too.
        self.segments.push(Segment {
            id: id.clone(),
            len,
        });
        let store = self.store.clone();
        self.sealing.push_back(match store.remote.clone() {
            Some(bucket) => tokio::spawn(put_segment(store, bucket, id, data)),
            None => tokio::task::spawn_blocking(move || write_segment(&store, &id, &data)),
        });
        self.size += len;
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), GatewayError> {
        match self.sealing.pop_front() {
            Some(task) => task
                .await
                .map_err(|e| GatewayError::Internal(Box::new(e)))?,
            None => Ok(()),
        }
    }

    /// Stores what is buffered and returns the segments and digests; fails (and removes the
    /// segments) if the data does not match what the client declared.
    pub(crate) async fn finish(
        mut self,
        expected: ExpectedDigests,
    ) -> Result<Written, GatewayError> {
        if !self.buf.is_empty() {
            self.flush().await?;
        }
        while !self.sealing.is_empty() {
            self.wait_oldest().await?;
        }
        let (sha, etag) = self
            .hashes
            .take()
            .unwrap_or_else(|| (Sha256::default(), EtagHasher::single()));
        let (sha256, etag) = (sha.finish(), etag.finish());
        let mismatch = |which| GatewayError::Corrupt(Box::new(DigestMismatch { which }));
        if expected.md5.is_some_and(|m| hex(&m) != etag) {
            return Err(mismatch("Content-MD5"));
        }
        if expected.sha256.is_some_and(|s| s != sha256) {
            return Err(mismatch("x-amz-checksum-sha256"));
        }
        self.finished = true;
        Ok(Written {
            segments: std::mem::take(&mut self.segments),
            size: self.size,
            sha256,
            etag,
        })
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if !self.finished {
            let ids: Vec<String> = self.segments.iter().map(|s| s.id.clone()).collect();
            self.store.remove_ids_now(&ids);
        }
    }
}

fn write_segment(store: &SegmentStore, id: &str, data: &[u8]) -> Result<(), GatewayError> {
    use std::io::Write;
    let frame = store
        .codec
        .seal(&store.aad(id), data)
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
    let path = store.path(id);
    let io = |e: std::io::Error| {
        GatewayError::NoSpace(format!("writing device segment {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::File::create(&path).map_err(io)?;
    f.write_all(&frame).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Seals a segment and stores it in the cluster's bucket; returns once Garage acknowledged it.
async fn put_segment(
    store: Arc<SegmentStore>,
    bucket: Arc<Bucket>,
    id: String,
    data: Bytes,
) -> Result<(), GatewayError> {
    let aad = store.aad(&id);
    let codec = store.codec.clone();
    let frame = tokio::task::spawn_blocking(move || codec.seal(&aad, &data))
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
    bucket
        .put(&segment_key(&id), Bytes::from(frame))
        .await
        .map_err(GatewayError::from)
}

/// Creates the job's directories.
pub(crate) fn prepare(dir: &Path) -> Result<(), GatewayError> {
    std::fs::create_dir_all(dir.join("seg"))
        .map_err(|e| GatewayError::Internal(format!("creating {}: {e}", dir.display()).into()))
}
