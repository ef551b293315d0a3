//! An unlocked device: the data set of one job, served to a protocol front end.
//!
//! Holds the job key (dropped with the last `Device` clone: locking is dropping it), an
//! in-memory index of the decrypted object records (names never sit on disk in the clear), and
//! the segment store. Writes stream into a `SegmentWriter` outside any lock; only the commit
//! (catalog row, then index) is serialised. Invariant: the index and the catalog agree after
//! every commit, and nothing changes once the job is sealed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Object bytes as read from the device, piece by piece (Sync so HTTP bodies can hold it).
pub type ByteStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send + Sync>>;

use crate::catalog::Catalog;
use crate::catalog::jobs::JobRow;
use crate::gateway::GatewayError;
use crate::gateway::import::cluster::{ClusterLink, RecordCache};
use crate::gateway::import::job::{JobState, bucket_of};
use crate::gateway::import::record::{self, ExpectedDigests, ObjectRecord};
use crate::gateway::import::segments::{self, SegmentStore, SegmentWriter};
use crate::store::device as keys;
use crate::store::keys::hex;
use crate::store::{Codec, MasterKey};

/// S3's key length limit, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Content type and user metadata a client sets on an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// What a HEAD or GET tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub sha256: String,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub modified_unix: i64,
    /// Part sizes, in order, of an object completed from a multipart upload (else empty).
    pub parts: Vec<u64>,
}

impl ObjectInfo {
    /// The byte range of part `number` (from 1) and how many parts the object has. An object
    /// put whole is one part, as in S3. `None`: no such part.
    pub fn part(&self, number: u32) -> Option<(Range<u64>, u32)> {
        let index = usize::try_from(number).ok()?.checked_sub(1)?;
        if self.parts.is_empty() {
            return (index == 0).then_some((0..self.size, 1));
        }
        let count = u32::try_from(self.parts.len()).ok()?;
        let start: u64 = self.parts.get(..index)?.iter().sum();
        let len = *self.parts.get(index)?;
        Some((start..start + len, count))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub etag: String,
    pub size: u64,
    /// Hex SHA-256 of what was stored.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub modified_unix: i64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<ListedObject>,
    /// Common prefixes, each ending in the delimiter.
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or prefix returned, where the next page starts after.
    pub next_marker: Option<String>,
}

pub(crate) struct Inner {
    pub job: String,
    pub bucket: String,
    pub key: MasterKey,
    pub codec: Codec,
    pub catalog: Arc<Catalog>,
    pub segs: Arc<SegmentStore>,
    pub index: RwLock<BTreeMap<String, Arc<ObjectRecord>>>,
    /// Serialises commits so the catalog and the index change in the same order.
    pub commit: tokio::sync::Mutex<()>,
    pub sealed: AtomicBool,
    /// In a cluster: this device has confirmed a seal begun anywhere (`seal.rs`).
    pub seal_acked: AtomicBool,
    /// Records that did not open when the device was unlocked (tampered or damaged).
    pub unreadable: u64,
    /// The cluster holding the data set, when the device is one of a device cluster.
    pub cluster: Option<ClusterLink>,
    pub records: RecordCache,
    /// Functions on PUT: offered every committed object (`functions.rs`).
    pub functions: crate::gateway::import::functions::Hook,
}

/// Who writes: a client, or the job's function on PUT (`functions.rs`), whose derived objects
/// are still taken while a cluster's seal waits for the functions queued (`seal.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Client,
    Function,
}

/// An unlocked device (cheap to clone; the key goes when the last clone does).
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.job)
    }
}

impl Device {
    /// Opens a job's data set with its (checked) key: decrypts every record into the index and
    /// removes segment files no record names (writes a crash interrupted).
    pub(crate) async fn open(
        catalog: Arc<Catalog>,
        data_dir: &Path,
        row: JobRow,
        key: MasterKey,
        cluster: Option<ClusterLink>,
    ) -> Result<Self, GatewayError> {
        let (bucket, _prefix) = bucket_of(&row.bucket_url)?;
        let dir = device_dir(data_dir, &row.id);
        segments::prepare(&dir)?;
        let codec = Codec::new(key.clone());
        let segs = Arc::new(SegmentStore {
            job: row.id.clone(),
            dir,
            codec: codec.clone(),
            remote: cluster.as_ref().map(|c| c.bucket.clone()),
        });
        let mut index = BTreeMap::new();
        let mut unreadable = 0;
        let mut referenced = std::collections::HashSet::new();
        // A cluster's index is its bucket's records (`sync_all` below), never this catalog's.
        let local = if cluster.is_some() {
            Vec::new()
        } else {
            catalog.job_objects(&row.id)?
        };
        for obj in local {
            let aad = record::object_aad(&row.id, &obj.name_id);
            match record::open::<ObjectRecord>(&codec, &aad, obj.record) {
                Ok(rec) if keys::name_id(&key, &rec.key).as_slice() == obj.name_id => {
                    referenced.extend(rec.segments.iter().map(|s| s.id.clone()));
                    index.insert(rec.key.clone(), Arc::new(rec));
                }
                _ => {
                    unreadable += 1;
                    tracing::warn!(job = %row.id, name = %hex(&obj.name_id), "object record does not verify");
                }
            }
        }
        let state = JobState::parse(&row.state).unwrap_or(JobState::Failed);
        let device = Self {
            inner: Arc::new(Inner {
                job: row.id.clone(),
                bucket,
                key,
                codec,
                catalog,
                segs,
                index: RwLock::new(index),
                commit: tokio::sync::Mutex::new(()),
                sealed: AtomicBool::new(!state.accepts_writes()),
                seal_acked: AtomicBool::new(false),
                unreadable,
                cluster,
                records: RecordCache::default(),
                functions: Default::default(),
            }),
        };
        if device.in_cluster() {
            // Orphan segments cannot be told from another device's writes in flight: a
            // cluster's are left (unreferenced ciphertext), never removed here.
            device.sync_all().await?;
            // A seal begun while this device was away stops its writes before it serves (and
            // runs the functions this device's objects still lack first, `freeze`).
            device.observe_seal().await?;
            crate::gateway::import::functions::start(&device).await?;
            crate::gateway::import::seal::watch(&device);
            return Ok(device);
        }
        if state.accepts_writes() {
            // The parts of uploads in progress are not orphans.
            referenced.extend(device.upload_segment_ids().await?);
            let orphans: Vec<String> = device
                .inner
                .segs
                .all_ids()
                .into_iter()
                .filter(|id| !referenced.contains(id))
                .collect();
            if !orphans.is_empty() {
                tracing::info!(job = %row.id, segments = orphans.len(), "removing segments of interrupted writes");
                device.inner.segs.remove_ids_now(&orphans);
            }
        }
        crate::gateway::import::functions::start(&device).await?;
        Ok(device)
    }

    pub fn job_id(&self) -> &str {
        &self.inner.job
    }

    /// The one bucket the device exposes: the job's target bucket.
    pub fn bucket_name(&self) -> &str {
        &self.inner.bucket
    }

    /// The device's S3 access key id and secret.
    pub fn credentials(&self) -> (String, String) {
        keys::s3_credentials(&self.inner.key)
    }

    pub fn is_sealed(&self) -> bool {
        self.inner.sealed.load(Ordering::SeqCst)
    }

    /// Object records that did not verify at unlock.
    pub fn unreadable_records(&self) -> u64 {
        self.inner.unreadable
    }

    pub fn object_count(&self) -> (u64, u64) {
        let index = self.read_index();
        (
            index.len() as u64,
            index.values().map(|r| r.size).sum::<u64>(),
        )
    }

    pub(crate) fn read_index(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ObjectRecord>>> {
        // A panic while holding the lock leaves the map as it was: every change is one insert
        // or remove.
        self.inner
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn write_index(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ObjectRecord>>> {
        self.inner
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn check_writable(&self) -> Result<(), GatewayError> {
        self.check_writable_as(Origin::Client)
    }

    pub(crate) fn check_writable_as(&self, origin: Origin) -> Result<(), GatewayError> {
        if let Some(cluster) = &self.inner.cluster {
            cluster.gate.check()?;
        }
        // A cluster's seal refuses clients first, then lets the functions already queued
        // finish: their derived objects belong in the manifest.
        let finishing = origin == Origin::Function && self.inner.functions.finishing();
        if self.is_sealed() && !finishing {
            return Err(GatewayError::ReadOnly(format!(
                "job {} is sealed; its data set can no longer change",
                self.inner.job
            )));
        }
        Ok(())
    }

    pub(crate) fn check_key(key: &str) -> Result<(), GatewayError> {
        if key.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "an object key may not be empty".into(),
            ));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(GatewayError::NameTooLong(format!(
                "object keys are at most {MAX_KEY_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// A writer for a new object's (or part's) data.
    pub fn writer(&self) -> Result<SegmentWriter, GatewayError> {
        self.writer_as(Origin::Client)
    }

    pub(crate) fn writer_as(&self, origin: Origin) -> Result<SegmentWriter, GatewayError> {
        self.check_writable_as(origin)?;
        Ok(SegmentWriter::new(self.inner.segs.clone()))
    }

    /// Commits a written object under `key`, replacing any earlier one.
    pub async fn put(
        &self,
        key: &str,
        data: SegmentWriter,
        attrs: ObjectAttrs,
        expected: ExpectedDigests,
    ) -> Result<PutResult, GatewayError> {
        self.put_as(key, data, attrs, expected, Origin::Client)
            .await
    }

    pub(crate) async fn put_as(
        &self,
        key: &str,
        data: SegmentWriter,
        attrs: ObjectAttrs,
        expected: ExpectedDigests,
        origin: Origin,
    ) -> Result<PutResult, GatewayError> {
        Self::check_key(key)?;
        let written = data.finish(expected).await?;
        let rec = ObjectRecord {
            key: key.to_owned(),
            size: written.size,
            sha256: hex(&written.sha256),
            etag: written.etag,
            content_type: attrs.content_type,
            metadata: attrs.metadata,
            modified_unix: crate::clock::unix_secs(),
            segments: written.segments,
            parts: Vec::new(),
            committed_by: None,
        };
        self.commit_one(rec, origin).await
    }

    /// Stores `rec` in the catalog and the index; the replaced object's segments are removed.
    async fn commit_one(
        &self,
        rec: ObjectRecord,
        origin: Origin,
    ) -> Result<PutResult, GatewayError> {
        let result = PutResult {
            etag: rec.etag.clone(),
            size: rec.size,
            sha256: rec.sha256.clone(),
        };
        self.commit_as(vec![rec], origin).await?;
        Ok(result)
    }

    /// Stores several records in one catalog transaction (one fsync), then in the index, in
    /// order, and offers each to the functions on PUT; the replaced objects' segments are
    /// removed. All or none: on failure the new
    /// records' segments are removed.
    pub(crate) async fn commit_many(&self, recs: Vec<ObjectRecord>) -> Result<(), GatewayError> {
        self.commit_as(recs, Origin::Client).await
    }

    async fn commit_as(
        &self,
        mut recs: Vec<ObjectRecord>,
        origin: Origin,
    ) -> Result<(), GatewayError> {
        if let Some(link) = self.link() {
            // The committing device runs the version's function (`functions.rs`).
            for rec in &mut recs {
                rec.committed_by = Some(link.device.clone());
            }
        }
        let _guard = self.inner.commit.lock().await;
        let stored = match self.check_writable_as(origin) {
            Ok(()) => self.store_records(&recs).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            let segments: Vec<_> = recs.into_iter().flat_map(|r| r.segments).collect();
            self.inner.segs.remove(&segments).await;
            return Err(e);
        }
        let recs: Vec<Arc<ObjectRecord>> = recs.into_iter().map(Arc::new).collect();
        let mut replaced = Vec::new();
        {
            let mut index = self.write_index();
            for rec in &recs {
                if let Some(old) = index.insert(rec.key.clone(), rec.clone()) {
                    replaced.extend(old.segments.iter().cloned());
                }
            }
        }
        for rec in &recs {
            self.inner.functions.committed(rec);
        }
        self.inner.segs.remove(&replaced).await;
        Ok(())
    }

    /// The catalog rows of `recs`, sealed, written in one transaction on the blocking pool.
    pub(crate) async fn store_records(&self, recs: &[ObjectRecord]) -> Result<(), GatewayError> {
        let mut rows = Vec::with_capacity(recs.len());
        for rec in recs {
            let name_id = keys::name_id(&self.inner.key, &rec.key);
            let sealed = record::seal(
                &self.inner.codec,
                &record::object_aad(&self.inner.job, &name_id),
                rec,
            )?;
            // In a cluster the record is the index (a no-op standalone): stored, at Garage's
            // write quorum, before the object counts as committed.
            self.publish(&name_id, &sealed).await?;
            rows.push((name_id, sealed, rec.size));
        }
        let (catalog, job) = (self.inner.catalog.clone(), self.inner.job.clone());
        tokio::task::spawn_blocking(move || catalog.put_job_objects(&job, &rows))
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))??;
        Ok(())
    }

    pub fn head(&self, key: &str) -> Result<ObjectInfo, GatewayError> {
        let index = self.read_index();
        let rec = index
            .get(key)
            .ok_or_else(|| GatewayError::NotFound(key.to_owned()))?;
        Ok(info(rec))
    }

    /// The object's info and a stream of `range` of its bytes (all of it when `None`); each
    /// segment is authenticated before any of its bytes are sent.
    pub fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ByteStream), GatewayError> {
        let rec = self
            .read_index()
            .get(key)
            .cloned()
            .ok_or_else(|| GatewayError::NotFound(key.to_owned()))?;
        let range = range.unwrap_or(0..rec.size);
        if range.start > range.end || range.end > rec.size {
            return Err(GatewayError::OutOfRange(format!(
                "{key}: bytes {}..{} of {}",
                range.start, range.end, rec.size
            )));
        }
        let stream = segment_stream(self.inner.segs.clone(), rec.clone(), range);
        Ok((info(&rec), stream))
    }

    pub async fn delete(&self, key: &str) -> Result<(), GatewayError> {
        self.check_writable()?;
        let _guard = self.inner.commit.lock().await;
        self.check_writable()?;
        let name_id = keys::name_id(&self.inner.key, key);
        self.unpublish(&name_id).await?;
        self.inner
            .catalog
            .delete_job_object(&self.inner.job, &name_id)?;
        let old = self.write_index().remove(key);
        if let Some(old) = old {
            self.inner.segs.remove(&old.segments).await;
        }
        Ok(())
    }

    /// Copies `src` to `dst` (new segments, re-sealed); with `attrs`, they replace the source's.
    pub async fn copy(
        &self,
        src: &str,
        dst: &str,
        attrs: Option<ObjectAttrs>,
    ) -> Result<PutResult, GatewayError> {
        Self::check_key(dst)?;
        let (info, mut stream) = self.read(src, None)?;
        let mut writer = self.writer()?;
        while let Some(piece) = stream.next().await {
            writer.write(piece?).await?;
        }
        let attrs = attrs.unwrap_or(ObjectAttrs {
            content_type: info.content_type,
            metadata: info.metadata,
        });
        self.put(dst, writer, attrs, ExpectedDigests::default())
            .await
    }

    /// One page of keys under `prefix`, after `after`, grouped at `delimiter`.
    pub fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> Listing {
        let index = self.read_index();
        let mut out = Listing::default();
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut entries = 0usize;
        for (key, rec) in index.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            let common = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|pos| key[..prefix.len() + pos + d.len()].to_owned())
            });
            if let Some(p) = &common
                && (after.is_some_and(|a| p.as_str() <= a) || out.prefixes.last() == Some(p))
            {
                continue;
            }
            if entries == max_keys {
                out.truncated = true;
                break;
            }
            entries += 1;
            match common {
                Some(p) => {
                    out.next_marker = Some(p.clone());
                    out.prefixes.push(p);
                }
                None => {
                    out.next_marker = Some(key.clone());
                    out.objects.push(ListedObject {
                        key: key.clone(),
                        size: rec.size,
                        etag: rec.etag.clone(),
                        modified_unix: rec.modified_unix,
                    });
                }
            }
        }
        if !out.truncated {
            out.next_marker = None;
        }
        out
    }
}

fn info(rec: &ObjectRecord) -> ObjectInfo {
    ObjectInfo {
        key: rec.key.clone(),
        size: rec.size,
        etag: rec.etag.clone(),
        sha256: rec.sha256.clone(),
        content_type: rec.content_type.clone(),
        metadata: rec.metadata.clone(),
        modified_unix: rec.modified_unix,
        parts: rec.parts.clone(),
    }
}

/// The bytes of `range` of an object, segment by segment.
pub(crate) fn segment_stream(
    segs: Arc<SegmentStore>,
    rec: Arc<ObjectRecord>,
    range: Range<u64>,
) -> ByteStream {
    let mut pieces = Vec::new();
    let mut offset = 0u64;
    for seg in &rec.segments {
        let seg_range = offset..offset + seg.len;
        offset += seg.len;
        let start = range.start.max(seg_range.start);
        let end = range.end.min(seg_range.end);
        if start < end {
            pieces.push((seg.clone(), start - seg_range.start, end - seg_range.start));
        }
    }
    // Two segments in flight: the next one is read and authenticated while this one is sent.
    let stream = futures::stream::iter(pieces)
        .map(move |(seg, from, to)| {
            let segs = segs.clone();
            // A task per segment: a bucket read's future is not `Sync`, its handle is.
            let read = tokio::spawn(async move { segs.read(&seg).await });
            async move {
                let data = read
                    .await
                    .map_err(|e| GatewayError::Internal(Box::new(e)))??;
                let from = usize::try_from(from).unwrap_or(usize::MAX);
                let to = usize::try_from(to).unwrap_or(usize::MAX);
                Ok(data.slice(from..to))
            }
        })
        .buffered(2);
    Box::pin(stream)
}

/// `DATA_DIR/device/<job>`: everything the device stores for a job besides its catalog rows.
pub fn device_dir(data_dir: &Path, job: &str) -> std::path::PathBuf {
    data_dir.join("device").join(job)
}

#[cfg(test)]
pub(crate) mod tests {
    use futures::StreamExt;

    #[test]
    fn object_parts_are_found_by_number() {
        let info = |parts: Vec<u64>| ObjectInfo {
            key: "k".into(),
            size: 25,
            etag: String::new(),
            sha256: String::new(),
            content_type: None,
            metadata: Vec::new(),
            modified_unix: 0,
            parts,
        };
        let split = info(vec![10, 10, 5]);
        let whole = info(Vec::new());
        let cases = [
            (&split, 1, Some((0..10, 3))),
            (&split, 2, Some((10..20, 3))),
            (&split, 3, Some((20..25, 3))),
            (&split, 4, None),
            (&split, 0, None),
            (&whole, 1, Some((0..25, 1))),
            (&whole, 2, None),
        ];
        for (object, number, want) in cases {
            assert_eq!(
                object.part(number),
                want,
                "part {number} of {:?}",
                object.parts
            );
        }
    }

    use super::*;
    use crate::gateway::import::{JobKind, JobManifestFile, JobRequest, create_job, unlock_job};
    use crate::store::device::KdfParams;

    /// An unlocked import job's device on a fresh catalog in `dir` (cheap KDF).
    pub(crate) async fn device(dir: &Path) -> Device {
        device_and_code(dir).await.0
    }

    /// `device`, and its job's unlock code.
    pub(crate) async fn device_and_code(dir: &Path) -> (Device, String) {
        let catalog = Arc::new(Catalog::open(&dir.join("c.db")).unwrap());
        let manifest_path = dir.join("m.json");
        let created = create_job(
            &catalog,
            &JobRequest {
                kind: JobKind::Import,
                bucket_url: "s3://bkt/p".into(),
                endpoint: None,
                region: "r".into(),
                manifest_path: manifest_path.clone(),
                kdf: KdfParams {
                    m_kib: 64,
                    t: 1,
                    p: 1,
                },
            },
        )
        .unwrap();
        let file = JobManifestFile::read(&manifest_path).unwrap();
        let device = unlock_job(catalog, dir, &file, &created.unlock_code)
            .await
            .unwrap();
        (device, created.unlock_code)
    }

    async fn put(d: &Device, key: &str, data: &[u8]) {
        let mut w = d.writer().unwrap();
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        d.put(key, w, ObjectAttrs::default(), ExpectedDigests::default())
            .await
            .unwrap();
    }

    async fn read(d: &Device, key: &str, range: Option<Range<u64>>) -> Vec<u8> {
        let (_, mut s) = d.read(key, range).unwrap();
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            out.extend_from_slice(&p.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn listing_pages_and_groups_like_s3() {
        let dir = tempfile::tempdir().unwrap();
        let d = device(dir.path()).await;
        for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d"] {
            put(&d, k, k.as_bytes()).await;
        }
        let keys = |l: &Listing| l.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        let all = d.list("", None, None, 1000);
        assert_eq!(keys(&all), ["a/1", "a/2", "b", "c/x/1", "c/y", "d"]);
        assert!(!all.truncated && all.next_marker.is_none());
        let p1 = d.list("", Some("/"), None, 2);
        assert_eq!(
            (p1.prefixes.clone(), keys(&p1)),
            (vec!["a/".to_owned()], vec!["b".to_owned()])
        );
        assert!(p1.truncated);
        let p2 = d.list("", Some("/"), p1.next_marker.as_deref(), 2);
        assert_eq!(
            (p2.prefixes.clone(), keys(&p2)),
            (vec!["c/".to_owned()], vec!["d".to_owned()])
        );
        assert!(!p2.truncated);
        let c = d.list("c/", Some("/"), None, 10);
        assert_eq!(
            (c.prefixes.clone(), keys(&c)),
            (vec!["c/x/".to_owned()], vec!["c/y".to_owned()])
        );
        let after = d.list("a/", None, Some("a/1"), 10);
        assert_eq!(keys(&after), ["a/2"]);
    }

    #[tokio::test]
    async fn objects_span_segments_and_ranges_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let d = device(dir.path()).await;
        let data: Vec<u8> = (0..(segments::SEGMENT_BYTES * 2 + 1234))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        put(&d, "big", &data).await;
        assert_eq!(read(&d, "big", None).await, data);
        let edge = segments::SEGMENT_BYTES as u64;
        for r in [0..1, edge - 3..edge + 3, edge * 2..data.len() as u64, 5..5] {
            let want = &data[r.start as usize..r.end as usize];
            assert_eq!(read(&d, "big", Some(r.clone())).await, want, "{r:?}");
        }
        assert!(matches!(
            d.read("big", Some(0..data.len() as u64 + 1)),
            Err(GatewayError::OutOfRange(_))
        ));
        // Replacing and deleting remove the old segments from disk.
        put(&d, "big", b"small now").await;
        assert_eq!(d.inner.segs.all_ids().len(), 1);
        d.delete("big").await.unwrap();
        assert!(d.inner.segs.all_ids().is_empty());
        assert!(matches!(d.head("big"), Err(GatewayError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_wrong_checksum_stores_nothing_and_sealing_freezes_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let d = device(dir.path()).await;
        let mut w = d.writer().unwrap();
        w.write(Bytes::from_static(b"data")).await.unwrap();
        let wrong = ExpectedDigests {
            md5: Some([0; 16]),
            sha256: None,
        };
        let err = d
            .put("k", w, ObjectAttrs::default(), wrong)
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::Corrupt(ref s) if s.is::<segments::DigestMismatch>()));
        assert!(d.inner.segs.all_ids().is_empty());
        put(&d, "k", b"data").await;
        assert_eq!(d.seal().await.unwrap(), (1, 4));
        assert!(matches!(d.writer(), Err(GatewayError::ReadOnly(_))));
        let check = d.check_manifest();
        assert!(!check.tampered(), "{check:?}");
        assert_eq!(check.entries.len(), 1);
    }
}
