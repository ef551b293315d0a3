//! Object data on the device: segments of up to 8 MiB, each one store frame (lz4 + AES-256-GCM
//! under the job key) in its own file, `DEVICE_DIR/seg/<ab>/<id>`; the frame's AAD is
//! `device/<job>/seg/<id>`, so a segment cannot be swapped for another or edited unseen.
//!
//! Invariant: `SegmentWriter::finish` returns only after every segment file is fsynced; a writer
//! dropped without finishing removes what it wrote (a segment still being written when it is
//! dropped is left as an orphan, removed when the device next opens writable); the digests are
//! those of the bytes in the order `write` received them, however many segments are sealed at
//! once. Reads return bytes only after the frame authenticated.
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

/// Segments being sealed and written at once per writer: sealing runs in parallel, so a slow
/// fsync of one segment does not hold up the next ones (3 × 8 MiB per large object).
const SEALS_IN_FLIGHT: usize = 3;

/// Segments queued for the in-order hashing task beyond the one it is hashing: enough to absorb
/// a burst of ranges arriving together without letting a slow hash hold much memory.
const HASHES_QUEUED: usize = 2;

/// The whole-object digests, which must see the bytes in order.
#[derive(Debug)]
enum Hashing {
    /// Not started: an object of at most one segment is hashed in the same blocking task that
    /// seals it (one task per small object, not two).
    Idle(Box<(Sha256, EtagHasher)>),
    /// A second segment came: two blocking tasks, one per digest, hash the segments in the
    /// order they are sent (side by side on two cores when there are two) while the writer
    /// goes on receiving and sealing later ones.
    Running {
        sha: Digest<Sha256>,
        etag: Digest<EtagHasher>,
    },
    Done,
}

/// One digest fed in order on its own blocking task.
#[derive(Debug)]
struct Digest<D> {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<D>,
}

impl<D: Send + 'static> Digest<D> {
    fn start(mut digest: D, update: fn(&mut D, Bytes)) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASHES_QUEUED);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(piece) = rx.blocking_recv() {
                update(&mut digest, piece);
            }
            digest
        });
        Self { tx, task }
    }

    /// Closing the queue lets the task finish the digest.
    async fn finish(self) -> Result<D, GatewayError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))
    }
}

/// Receives an object's bytes in any pieces and stores them as sealed segments, hashing as it
/// goes. Pieces that already are a whole segment are sealed as received (no copy). Hashing runs
/// in order on its own blocking task and overlaps the receiving of later pieces; sealing and
/// writing segments run in parallel beside it (at most `SEALS_IN_FLIGHT`), and `finish` waits
/// for all of them.
#[derive(Debug)]
pub struct SegmentWriter {
    store: Arc<SegmentStore>,
    /// Bytes of the segment being filled, as received.
    pending: Vec<Bytes>,
    pending_len: usize,
    hashing: Hashing,
    sealing: VecDeque<tokio::task::JoinHandle<Result<(), GatewayError>>>,
    segments: Vec<Segment>,
    size: u64,
    finished: bool,
}

impl SegmentWriter {
    pub(crate) fn new(store: Arc<SegmentStore>) -> Self {
        Self {
            store,
            pending: Vec::new(),
            pending_len: 0,
            hashing: Hashing::Idle(Box::new((Sha256::default(), EtagHasher::single()))),
            sealing: VecDeque::new(),
            segments: Vec::new(),
            size: 0,
            finished: false,
        }
    }

    /// Computes the ETag at these part boundaries instead of the MD5 (before any write).
    pub(crate) fn with_etag(mut self, etag: EtagHasher) -> Self {
        if let Hashing::Idle(state) = &mut self.hashing {
            state.1 = etag;
        }
        self
    }

    pub async fn write(&mut self, mut data: Bytes) -> Result<(), GatewayError> {
        while !data.is_empty() {
            let piece = data.split_to((SEGMENT_BYTES - self.pending_len).min(data.len()));
            self.pending_len += piece.len();
            self.pending.push(piece);
            if self.pending_len == SEGMENT_BYTES {
                let segment = self.take_pending();
                self.flush(segment).await?;
            }
        }
        Ok(())
    }

    /// The segment being filled as one buffer: the piece itself when it came whole.
    fn take_pending(&mut self) -> Bytes {
        self.pending_len = 0;
        if self.pending.len() == 1 {
            return self.pending.pop().unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
        for piece in self.pending.drain(..) {
            buf.extend_from_slice(&piece);
        }
        buf.freeze()
    }

    /// A new segment's id, recorded before anything is written: a half-written file is removed
    /// on drop too.
    fn new_segment(&mut self, len: u64) -> Result<String, GatewayError> {
        let raw =
            crate::store::device::new_salt().map_err(|e| GatewayError::Internal(Box::new(e)))?;
        let id = hex(&raw);
        self.segments.push(Segment {
            id: id.clone(),
            len,
        });
        self.size += len;
        Ok(id)
    }

    /// The in-order hashing tasks' queues, starting the tasks on the first full segment.
    fn hashers(&mut self) -> Result<[tokio::sync::mpsc::Sender<Bytes>; 2], GatewayError> {
        self.hashing = match std::mem::replace(&mut self.hashing, Hashing::Done) {
            Hashing::Idle(state) => {
                let (sha, etag) = *state;
                Hashing::Running {
                    sha: Digest::start(sha, |sha, piece| sha.update(&piece)),
                    etag: Digest::start(etag, EtagHasher::update),
                }
            }
            other => other,
        };
        match &self.hashing {
            Hashing::Running { sha, etag } => Ok([sha.tx.clone(), etag.tx.clone()]),
            Hashing::Idle(_) | Hashing::Done => Err(hashing_died()),
        }
    }

    async fn flush(&mut self, data: Bytes) -> Result<(), GatewayError> {
        for hasher in self.hashers()? {
            hasher
                .send(data.clone())
                .await
                .map_err(|_| hashing_died())?;
        }
        self.seal(data).await
    }

    /// Seals and writes `data` as the next segment beside the ones in flight.
    async fn seal(&mut self, data: Bytes) -> Result<(), GatewayError> {
        while self.sealing.len() >= SEALS_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let id = self.new_segment(data.len() as u64)?;
        let store = self.store.clone();
        self.sealing.push_back(match store.remote.clone() {
            Some(bucket) => tokio::spawn(put_segment(store, bucket, id, data)),
            None => tokio::task::spawn_blocking(move || write_segment(&store, &id, &data)),
        });
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
        let last = (self.pending_len > 0).then(|| self.take_pending());
        let (sha, etag) = match (std::mem::replace(&mut self.hashing, Hashing::Done), last) {
            // At most one segment: hashed, sealed and written by one blocking task.
            (Hashing::Idle(state), Some(data)) => {
                let (mut sha, mut etag) = *state;
                let id = self.new_segment(data.len() as u64)?;
                let store = self.store.clone();
                let remote = store.remote.clone();
                let hashed = tokio::task::spawn_blocking(move || {
                    sha.update(&data);
                    etag.update(data.clone());
                    // A cluster's segment goes to the cluster's bucket below, not to a file.
                    match remote {
                        Some(_) => Ok((sha, etag, Some((store, id, data)))),
                        None => write_segment(&store, &id, &data).map(|()| (sha, etag, None)),
                    }
                })
                .await
                .map_err(|e| GatewayError::Internal(Box::new(e)))??;
                let (sha, etag, remote_put) = hashed;
                if let Some((store, id, data)) = remote_put
                    && let Some(bucket) = store.remote.clone()
                {
                    put_segment(store, bucket, id, data).await?;
                }
                (sha, etag)
            }
            (Hashing::Idle(state), None) => *state,
            (Hashing::Running { sha, etag }, last) => {
                if let Some(data) = last {
                    for tx in [&sha.tx, &etag.tx] {
                        tx.send(data.clone()).await.map_err(|_| hashing_died())?;
                    }
                    self.seal(data).await?;
                }
                (sha.finish().await?, etag.finish().await?)
            }
            (Hashing::Done, _) => return Err(hashing_died()),
        };
        while !self.sealing.is_empty() {
            self.wait_oldest().await?;
        }
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

fn hashing_died() -> GatewayError {
    GatewayError::Internal("the hashing task of a segment writer ended early".into())
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
    write_new_file(&path, &frame).map_err(io)
}

/// Direct I/O's alignment: of the buffer, the file offsets and the lengths written.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// A blocking thread's buffer for direct writes, reused so that its pages stay mapped.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `bytes` as the whole of the new file `path` and syncs it. With direct I/O where the
/// file system takes it: a segment is written once and seldom read back soon, and copying it
/// into the page cache cost more CPU than sealing it (on this project's VMs each fresh page
/// cache page also costs the host a fault; docs/testing.md, `device_export.sh`). A file system
/// that refuses direct I/O (EINVAL or EOPNOTSUPP: tmpfs, some FUSE ones) gets a buffered write.
fn write_new_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let refused =
        [rustix::io::Errno::INVAL, rustix::io::Errno::OPNOTSUPP].map(|e| e.raw_os_error());
    match write_direct(path, bytes) {
        Err(e) if e.raw_os_error().is_some_and(|code| refused.contains(&code)) => {
            use std::io::Write;
            let mut f = std::fs::File::create(path)?;
            f.write_all(bytes)?;
            f.sync_all()
        }
        other => other,
    }
}

/// [`write_new_file`] with `O_DIRECT`: the bytes go through an aligned buffer, padded with
/// zeros to whole blocks, and the file is then cut to its length before the sync.
fn write_direct(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    let padded = bytes.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    ALIGNED.with_borrow_mut(|buf| {
        if buf.len() < padded + DIRECT_ALIGN {
            buf.resize(padded + DIRECT_ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let block = &mut buf[start..start + padded];
        block[..bytes.len()].copy_from_slice(bytes);
        block[bytes.len()..].fill(0);
        let mut done = 0;
        while done < padded {
            match file.write_at(&block[done..], done as u64)? {
                0 => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                // A short write off a block boundary cannot go on directly: EINVAL, and the
                // caller writes the file again, buffered.
                n => done += n,
            }
        }
        Ok(())
    })?;
    if padded != bytes.len() {
        file.set_len(bytes.len() as u64)?;
    }
    file.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::import::device::tests::device;
    use crate::store::device::Md5;

    /// Whatever the pieces (whole segments taken as received, pieces across segment edges, tiny
    /// ones), the segments hold the bytes in order and the digests are those of the whole
    /// object: the hashing task sees the segments in order while sealing runs beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digests_and_segments_follow_the_byte_order_whatever_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let d = device(dir.path()).await;
        let seg = SEGMENT_BYTES;
        // Each segment-sized stretch has its own byte, so a segment out of place changes both
        // the digests and the bytes read back.
        let data = Bytes::from(
            (0..seg * 5 + 777)
                .map(|i| (i / seg * 37 + i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let piecings: [&[usize]; 4] = [
            &[seg, seg, seg, seg, seg, 777],
            &[seg / 2 + 1, seg, 3, seg * 2, 100],
            &[1, seg * 5 + 776],
            &[seg * 5 + 777],
        ];
        let mut sha = Sha256::default();
        sha.update(&data);
        let sha = sha.finish();
        let mut md5 = Md5::default();
        md5.update(&data);
        let md5 = md5.finish();
        for pieces in piecings {
            let mut w = d.writer().unwrap();
            let mut rest = data.clone();
            for &n in pieces {
                let n = n.min(rest.len());
                w.write(rest.split_to(n)).await.unwrap();
            }
            w.write(rest).await.unwrap();
            let written = w.finish(ExpectedDigests::default()).await.unwrap();
            assert_eq!(written.sha256, sha, "{pieces:?}");
            assert_eq!(written.etag, hex(&md5), "{pieces:?}");
            assert_eq!(written.size, data.len() as u64);
            assert_eq!(written.segments.len(), 6, "{pieces:?}");
            let mut back = Vec::new();
            for s in &written.segments {
                back.extend_from_slice(&d.inner.segs.read(s).await.unwrap());
            }
            assert!(back == data, "bytes out of order for pieces {pieces:?}");
            d.inner.segs.remove(&written.segments).await;
        }
    }

    /// Direct I/O where the file system has it (the test's own directory), a buffered write
    /// where it does not (tmpfs): the same bytes either way, of any length, and a shorter file
    /// written over a longer one keeps nothing of it.
    #[test]
    fn new_files_hold_exactly_their_bytes_with_or_without_direct_io() {
        let disk = tempfile::tempdir().unwrap();
        let shm = std::path::Path::new("/dev/shm");
        let mem = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
        let mut dirs = vec![disk.path().to_path_buf()];
        dirs.extend(mem.as_ref().map(|d| d.path().to_path_buf()));
        for dir in dirs {
            let path = dir.join("f");
            for len in [
                DIRECT_ALIGN * 3 + 17,
                0,
                1,
                DIRECT_ALIGN,
                (1 << 20) + 5,
                100,
            ] {
                let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ 0x5a).collect();
                write_new_file(&path, &bytes).unwrap();
                assert!(
                    std::fs::read(&path).unwrap() == bytes,
                    "{len} bytes in {dir:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_small_object_is_one_segment_and_an_empty_one_none() {
        let dir = tempfile::tempdir().unwrap();
        let d = device(dir.path()).await;
        let mut w = d.writer().unwrap();
        w.write(Bytes::from_static(b"abc")).await.unwrap();
        w.write(Bytes::from_static(b"def")).await.unwrap();
        let written = w.finish(ExpectedDigests::default()).await.unwrap();
        assert_eq!(written.etag, "e80b5017098950fc58aad83c8c14978e");
        assert_eq!(written.segments.len(), 1);
        assert_eq!(
            &d.inner.segs.read(&written.segments[0]).await.unwrap()[..],
            b"abcdef"
        );
        let empty = d
            .writer()
            .unwrap()
            .finish(ExpectedDigests::default())
            .await
            .unwrap();
        assert_eq!(empty.etag, "d41d8cd98f00b204e9800998ecf8427e");
        assert!(empty.segments.is_empty());
    }
}
