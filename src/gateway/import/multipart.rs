//! Multipart uploads into the device: parts stored as segments under sealed part records, an
//! upload completed into one object whose segment list is the parts' lists in order.
//!
//! S3's rules (parts 1..=10000, every part but the last at least 5 MiB, the listed ETags
//! matching the stored parts, ascending order) are enforced at completion. The records live
//! where `uploads.rs` keeps them: the catalog on a standalone device, the cluster's bucket on a
//! device of a device cluster, so every step of an upload may come through another device of the
//! cluster; each operation here is written once for both. Invariant: the completed object's
//! SHA-256 is computed from the stored, authenticated segments, so the manifest hashes what the
//! device holds; a record that does not open under its own upload id and part number is an
//! `UploadRecordInvalid` error, never used.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, ObjectAttrs, PutResult};
use crate::gateway::import::record::{
    self, ExpectedDigests, ObjectRecord, PartRecord, Segment, UploadRecord,
};
use crate::gateway::import::segments::SegmentWriter;
use crate::gateway::import::uploads::UploadStore;
use crate::store::device::{Sha256, multipart_etag};
use crate::store::keys::{hex, parse_hex};

/// S3's part number range and minimum part size (all but the last part).
const MAX_PART_NUMBER: u32 = 10_000;
const MIN_PART_BYTES: u64 = 5 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub upload_id: String,
    pub key: String,
    pub initiated_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub modified_unix: i64,
}

/// A multipart record that does not open under the job key with the upload id (and part
/// number) it is stored under: edited, damaged, or moved from another job, upload or part.
#[derive(Debug, thiserror::Error)]
#[error(
    "the record of {what} does not verify (tampered, damaged, or moved from another job, \
     upload or part); it is not used"
)]
pub struct UploadRecordInvalid {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// `record::open`, its failure named for the record.
fn open_named<T: for<'de> serde::Deserialize<'de>>(
    device: &Device,
    aad: &str,
    sealed: Vec<u8>,
    what: impl FnOnce() -> String,
) -> Result<T, GatewayError> {
    record::open(&device.inner.codec, aad, sealed).map_err(|e| match e {
        GatewayError::Corrupt(source) => GatewayError::Corrupt(Box::new(UploadRecordInvalid {
            what: what(),
            source,
        })),
        other => other,
    })
}

impl Device {
    /// Where this device keeps its multipart records: the cluster's bucket in a device
    /// cluster, its catalog otherwise.
    pub(crate) fn uploads(&self) -> UploadStore {
        match self.link() {
            Some(link) => UploadStore::Cluster {
                bucket: link.bucket.clone(),
            },
            None => UploadStore::Catalog {
                catalog: self.inner.catalog.clone(),
                job: self.inner.job.clone(),
            },
        }
    }

    pub async fn create_upload(
        &self,
        key: &str,
        attrs: ObjectAttrs,
    ) -> Result<String, GatewayError> {
        self.check_writable()?;
        Self::check_key(key)?;
        let raw =
            crate::store::device::new_salt().map_err(|e| GatewayError::Internal(Box::new(e)))?;
        let upload_id = hex(&raw);
        let rec = UploadRecord {
            key: key.to_owned(),
            content_type: attrs.content_type,
            metadata: attrs.metadata,
        };
        let sealed = record::seal(
            &self.inner.codec,
            &record::upload_aad(&self.inner.job, &upload_id),
            &rec,
        )?;
        self.uploads().insert(&upload_id, sealed).await?;
        Ok(upload_id)
    }

    fn open_upload(&self, upload_id: &str, sealed: Vec<u8>) -> Result<UploadRecord, GatewayError> {
        open_named(
            self,
            &record::upload_aad(&self.inner.job, upload_id),
            sealed,
            || format!("multipart upload {upload_id}"),
        )
    }

    /// The upload `upload_id` of `key`; NotFound when there is none (an id of the wrong shape
    /// never reaches the store: it names the record's key in a cluster).
    async fn upload(&self, key: &str, upload_id: &str) -> Result<UploadRecord, GatewayError> {
        let missing = || GatewayError::NotFound(format!("upload {upload_id}"));
        if upload_id.len() != 32 || parse_hex::<16>(upload_id).is_none() {
            return Err(missing());
        }
        let sealed = self.uploads().get(upload_id).await?.ok_or_else(missing)?;
        let rec = self.open_upload(upload_id, sealed)?;
        if rec.key != key {
            return Err(missing());
        }
        Ok(rec)
    }

    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: SegmentWriter,
        expected: ExpectedDigests,
    ) -> Result<String, GatewayError> {
        self.check_writable()?;
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(GatewayError::InvalidArgument(format!(
                "part number {number} is outside 1..={MAX_PART_NUMBER}"
            )));
        }
        self.upload(key, upload_id).await?;
        let written = data.finish(expected).await?;
        let rec = PartRecord {
            size: written.size,
            md5: written.etag,
            sha256: hex(&written.sha256),
            modified_unix: crate::clock::unix_secs(),
            segments: written.segments,
        };
        let sealed = record::seal(
            &self.inner.codec,
            &record::part_aad(&self.inner.job, upload_id, number),
            &rec,
        )?;
        // Under the commit lock: a seal takes it before dropping the unfinished uploads, so no
        // part record lands after that for an upload it dropped.
        let stored = async {
            let _guard = self.inner.commit.lock().await;
            self.check_writable()?;
            self.uploads()
                .put_part(upload_id, number, sealed, rec.size)
                .await
        }
        .await;
        let old = match stored {
            Ok(old) => old,
            Err(e) => {
                self.inner.segs.remove(&rec.segments).await;
                return Err(e);
            }
        };
        if let Some(old) = old
            && let Ok(old) = self.open_part(upload_id, number, old)
        {
            self.inner.segs.remove(&old.segments).await;
        }
        Ok(rec.md5)
    }

    fn open_part(
        &self,
        upload_id: &str,
        number: u32,
        sealed: Vec<u8>,
    ) -> Result<PartRecord, GatewayError> {
        open_named(
            self,
            &record::part_aad(&self.inner.job, upload_id, number),
            sealed,
            || format!("part {number} of multipart upload {upload_id}"),
        )
    }

    async fn parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>, GatewayError> {
        self.uploads()
            .parts(upload_id)
            .await?
            .into_iter()
            .map(|(n, sealed)| Ok((n, self.open_part(upload_id, n, sealed)?)))
            .collect()
    }

    pub async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, GatewayError> {
        self.upload(key, upload_id).await?;
        Ok(self
            .parts(upload_id)
            .await?
            .into_iter()
            .map(|(number, p)| PartInfo {
                number,
                size: p.size,
                etag: p.md5,
                modified_unix: p.modified_unix,
            })
            .collect())
    }

    /// Uploads in progress whose key starts with `prefix`, by key (in a cluster: begun through
    /// any device).
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>, GatewayError> {
        let mut out = Vec::new();
        for stored in self.uploads().list().await? {
            let rec = self.open_upload(&stored.upload_id, stored.sealed)?;
            if rec.key.starts_with(prefix) {
                out.push(UploadInfo {
                    upload_id: stored.upload_id,
                    key: rec.key,
                    initiated_unix: stored.created_unix,
                });
            }
        }
        out.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(a.initiated_unix.cmp(&b.initiated_unix))
        });
        Ok(out)
    }

    /// The segments the object `key` holds now, or with `None` those every object holds: a
    /// completion cut short between its object record and the end of its upload leaves an
    /// upload (or part records) whose segments are the object's.
    pub(crate) fn held_segments(&self, key: Option<&str>) -> HashSet<String> {
        match key {
            Some(key) => self
                .read_index()
                .get(key)
                .map(|r| r.segments.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default(),
            None => self
                .read_index()
                .values()
                .flat_map(|r| r.segments.iter().map(|s| s.id.clone()))
                .collect(),
        }
    }

    /// Frees `segments` except those in `held` ([`Self::held_segments`]).
    async fn free_unless_held(&self, held: &HashSet<String>, segments: Vec<Segment>) {
        let free: Vec<Segment> = segments
            .into_iter()
            .filter(|s| !held.contains(&s.id))
            .collect();
        self.inner.segs.remove(&free).await;
    }

    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), GatewayError> {
        self.upload(key, upload_id).await?;
        let parts = self.parts(upload_id).await?;
        let numbers: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
        self.uploads().finish(upload_id, &numbers, None).await?;
        // In a cluster the object may have been completed elsewhere from these very parts.
        self.sync_key(key).await?;
        let segments = parts.into_iter().flat_map(|(_, p)| p.segments).collect();
        let held = self.held_segments(Some(key));
        self.free_unless_held(&held, segments).await;
        Ok(())
    }

    /// Aborts the unfinished multipart uploads, for a seal: a sealed data set has none. In a
    /// cluster, called once every device has stopped writing; an upload another device ended
    /// meanwhile is skipped, and part records whose upload is gone are swept with their
    /// segments (those of no object).
    pub(crate) async fn drop_uploads(&self) -> Result<(), GatewayError> {
        for upload in self.list_uploads("").await? {
            tracing::info!(job = %self.inner.job, key = %upload.key, "dropping an unfinished multipart upload at seal");
            match self.abort_upload(&upload.key, &upload.upload_id).await {
                Ok(()) | Err(GatewayError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let store = self.uploads();
        let strays = store.strays().await?;
        if strays.is_empty() {
            return Ok(());
        }
        // The index must be whole before "no object holds it" frees a segment.
        self.sync_all().await?;
        let held = self.held_segments(None);
        for stray in strays {
            tracing::info!(job = %self.inner.job, upload = %stray.upload_id, part = stray.number, "removing a part record whose upload is gone");
            match self.open_part(&stray.upload_id, stray.number, stray.sealed) {
                Ok(part) => self.free_unless_held(&held, part.segments).await,
                // Not ours to read: its segments (if any) stay, unreferenced ciphertext.
                Err(e) => {
                    tracing::warn!(job = %self.inner.job, error = %crate::error_chain::chain(&e), "a stray part record")
                }
            }
            store.remove_stray(&stray.upload_id, stray.number).await?;
        }
        Ok(())
    }

    /// Segments held by the multipart uploads in progress whose part records open (so the
    /// orphan scan at unlock keeps them).
    pub(crate) async fn upload_segment_ids(&self) -> Result<HashSet<String>, GatewayError> {
        let store = self.uploads();
        let mut ids = HashSet::new();
        for upload in store.list().await? {
            for (number, sealed) in store.parts(&upload.upload_id).await? {
                if let Ok(part) = self.open_part(&upload.upload_id, number, sealed) {
                    ids.extend(part.segments.into_iter().map(|s| s.id));
                }
            }
        }
        Ok(ids)
    }

    /// Completes an upload from the listed (part number, ETag) pairs.
    pub async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        listed: &[(u32, String)],
    ) -> Result<PutResult, GatewayError> {
        self.check_writable()?;
        let upload = self.upload(key, upload_id).await?;
        if listed.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "a multipart upload needs at least one part".into(),
            ));
        }
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(GatewayError::InvalidArgument(
                "InvalidPartOrder: parts must be listed in ascending order".into(),
            ));
        }
        let store = self.uploads();
        let mut stored: HashMap<u32, (Vec<u8>, PartRecord)> = HashMap::new();
        for (n, sealed) in store.parts(upload_id).await? {
            let part = self.open_part(upload_id, n, sealed.clone())?;
            stored.insert(n, (sealed, part));
        }
        // A part stored (or stored again) through another device an instant ago that this
        // device's listing does not show yet is read by its own key (the catalog's listing is
        // complete: there, this finds nothing new).
        for (number, etag) in listed {
            let known = stored.get(number);
            if known.is_some_and(|(_, p)| p.md5 == etag.trim_matches('"')) {
                continue;
            }
            let stale = known.map(|(sealed, _)| sealed.as_slice());
            if let Some(sealed) = store.part(upload_id, *number, stale).await? {
                let part = self.open_part(upload_id, *number, sealed.clone())?;
                stored.insert(*number, (sealed, part));
            }
        }
        let stored: HashMap<u32, PartRecord> =
            stored.into_iter().map(|(n, (_, p))| (n, p)).collect();
        let mut chosen = Vec::with_capacity(listed.len());
        for (i, (number, etag)) in listed.iter().enumerate() {
            let part = stored
                .get(number)
                .filter(|p| p.md5 == etag.trim_matches('"'));
            let Some(part) = part else {
                return Err(GatewayError::InvalidArgument(format!(
                    "InvalidPart: part {number} was not uploaded or its ETag differs"
                )));
            };
            if i + 1 < listed.len() && part.size < MIN_PART_BYTES {
                return Err(GatewayError::InvalidArgument(format!(
                    "EntityTooSmall: part {number} is {} bytes; all but the last part need 5 MiB",
                    part.size
                )));
            }
            chosen.push(part.clone());
        }
        let mut md5s = Vec::with_capacity(chosen.len());
        let mut segments = Vec::new();
        let mut size = 0u64;
        let parts = chosen.iter().map(|p| p.size).collect();
        for p in &chosen {
            md5s.push(parse_hex::<16>(&p.md5).ok_or_else(|| {
                GatewayError::Corrupt(
                    format!("part record of upload {upload_id} is malformed").into(),
                )
            })?);
            segments.extend(p.segments.iter().cloned());
            size += p.size;
        }
        let mut rec = ObjectRecord {
            key: key.to_owned(),
            size,
            sha256: String::new(),
            etag: multipart_etag(&md5s),
            content_type: upload.content_type,
            metadata: upload.metadata,
            modified_unix: crate::clock::unix_secs(),
            segments,
            parts,
            // The completing device runs the object's function on PUT (`functions.rs`).
            committed_by: self.link().map(|l| l.device.clone()),
        };
        // The whole object's SHA-256 from what the device holds (each segment authenticated).
        let mut sha = Sha256::default();
        let mut stream = crate::gateway::import::device::segment_stream(
            self.inner.segs.clone(),
            Arc::new(rec.clone()),
            0..size,
        );
        while let Some(piece) = stream.next().await {
            sha.update(&piece?);
        }
        rec.sha256 = hex(&sha.finish());

        let _guard = self.inner.commit.lock().await;
        self.check_writable()?;
        let name_id = crate::store::device::name_id(&self.inner.key, key);
        let sealed = record::seal(
            &self.inner.codec,
            &record::object_aad(&self.inner.job, &name_id),
            &rec,
        )?;
        self.publish(&name_id, &sealed).await?;
        let numbers: Vec<u32> = stored.keys().copied().collect();
        store
            .finish(upload_id, &numbers, Some((name_id.to_vec(), sealed, size)))
            .await?;
        let result = PutResult {
            etag: rec.etag.clone(),
            size,
            sha256: rec.sha256.clone(),
        };
        let used: HashSet<u32> = listed.iter().map(|(n, _)| *n).collect();
        let rec = Arc::new(rec);
        let old = self.write_index().insert(key.to_owned(), rec.clone());
        self.inner.functions.committed(&rec);
        if let Some(old) = old {
            self.inner.segs.remove(&old.segments).await;
        }
        for (n, p) in stored {
            if !used.contains(&n) {
                self.inner.segs.remove(&p.segments).await;
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::store::Bucket;

    async fn cluster(dir: &std::path::Path) -> (Device, Device, Arc<Bucket>) {
        crate::gateway::import::cluster::tests::pair(dir, |_, _| {}).await
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    async fn part(d: &Device, key: &str, id: &str, n: u32, bytes: &[u8]) -> String {
        let mut w = d.writer().unwrap();
        w.write(Bytes::copy_from_slice(bytes)).await.unwrap();
        d.put_part(key, id, n, w, ExpectedDigests::default())
            .await
            .unwrap()
    }

    async fn read(d: &Device, key: &str) -> Vec<u8> {
        d.sync_key(key).await.unwrap();
        let (_, mut s) = d.read(key, None).unwrap();
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            out.extend_from_slice(&p.unwrap());
        }
        out
    }

    fn invalid_record(e: &GatewayError) -> Option<String> {
        match e {
            GatewayError::Corrupt(s) => s
                .downcast_ref::<UploadRecordInvalid>()
                .map(|r| r.what.clone()),
            _ => None,
        }
    }

    /// issue 19: an upload begun on device a takes parts through a and b, is listed on both,
    /// completed on b and read back identical on both; another is aborted through the device it
    /// did not begin on, and its parts' segments go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue_19_an_upload_moves_between_cluster_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, bucket) = cluster(dir.path()).await;
        let attrs = ObjectAttrs {
            content_type: Some("application/x-test".into()),
            metadata: vec![("origin".into(), "a".into())],
        };
        let id = a.create_upload("big.bin", attrs.clone()).await.unwrap();
        let pieces = [data(5 << 20, 1), data(5 << 20, 2), data(1000, 3)];
        let e1 = part(&a, "big.bin", &id, 1, &pieces[0]).await;
        let e2 = part(&b, "big.bin", &id, 2, &pieces[1]).await;
        // Part 3 twice, through each device: the second replaces the first, whose segment goes.
        part(&a, "big.bin", &id, 3, b"replaced").await;
        let e3 = part(&b, "big.bin", &id, 3, &pieces[2]).await;
        for d in [&a, &b] {
            let listed = d.list_parts("big.bin", &id).await.unwrap();
            let numbers: Vec<(u32, u64)> = listed.iter().map(|p| (p.number, p.size)).collect();
            assert_eq!(numbers, [(1, 5 << 20), (2, 5 << 20), (3, 1000)], "{d:?}");
            let ups = d.list_uploads("big").await.unwrap();
            assert_eq!(ups.len(), 1, "{d:?}");
            assert_eq!(
                (ups[0].key.as_str(), ups[0].upload_id.as_str()),
                ("big.bin", id.as_str())
            );
        }
        // The wrong key for the upload is no upload at all.
        assert!(matches!(
            b.list_parts("other", &id).await,
            Err(GatewayError::NotFound(_))
        ));
        let done = b
            .complete_upload("big.bin", &id, &[(1, e1), (2, e2), (3, e3)])
            .await
            .unwrap();
        let whole: Vec<u8> = pieces.concat();
        let mut sha = Sha256::default();
        sha.update(&whole);
        assert_eq!(done.sha256, hex(&sha.finish()));
        assert!(done.etag.ends_with("-3"), "{}", done.etag);
        for d in [&a, &b] {
            assert_eq!(read(d, "big.bin").await, whole, "{d:?}");
            let info = d.head("big.bin").unwrap();
            assert_eq!(
                (info.content_type, info.metadata),
                (attrs.content_type.clone(), attrs.metadata.clone())
            );
            assert_eq!(info.parts, [5 << 20, 5 << 20, 1000]);
            assert!(d.list_uploads("").await.unwrap().is_empty(), "{d:?}");
            assert!(matches!(
                d.list_parts("big.bin", &id).await,
                Err(GatewayError::NotFound(_))
            ));
        }
        assert_eq!(b.read_index()["big.bin"].committed_by.as_deref(), Some("b"));
        assert!(bucket.list("mp/").await.unwrap().is_empty());
        // Only the object's segments are left in the bucket (the replaced part 3's went).
        let segs = bucket.list("seg/").await.unwrap().len();
        assert_eq!(segs, b.read_index()["big.bin"].segments.len());

        // Begun on b, a part through each, aborted through a: records and segments go.
        let gone = b
            .create_upload("gone", ObjectAttrs::default())
            .await
            .unwrap();
        part(&b, "gone", &gone, 1, b"one").await;
        part(&a, "gone", &gone, 2, b"two").await;
        assert_eq!(bucket.list("seg/").await.unwrap().len(), segs + 2);
        a.abort_upload("gone", &gone).await.unwrap();
        assert!(bucket.list("mp/").await.unwrap().is_empty());
        assert_eq!(bucket.list("seg/").await.unwrap().len(), segs);
        for d in [&a, &b] {
            assert!(matches!(
                d.abort_upload("gone", &gone).await,
                Err(GatewayError::NotFound(_))
            ));
            let mut w = d.writer().unwrap();
            w.write(Bytes::from_static(b"late")).await.unwrap();
            assert!(matches!(
                d.put_part("gone", &gone, 3, w, ExpectedDigests::default())
                    .await,
                Err(GatewayError::NotFound(_))
            ));
        }
    }

    /// Records edited, moved to another part or upload, or objects the device never writes
    /// under `mp/`, are named errors, never used.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampered_and_moved_cluster_upload_records_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, bucket) = cluster(dir.path()).await;
        let id = a.create_upload("k", ObjectAttrs::default()).await.unwrap();
        let e1 = part(&a, "k", &id, 1, b"first").await;
        let other = b.create_upload("k2", ObjectAttrs::default()).await.unwrap();
        part(&b, "k2", &other, 1, b"second").await;
        let p1 = format!("mp/part/{id}/1");
        let original = bucket.get(&p1).await.unwrap();

        // Part 1 of `id` moved to part 2: it does not open there.
        bucket
            .put(&format!("mp/part/{id}/2"), original.clone())
            .await
            .unwrap();
        let err = b.list_parts("k", &id).await.unwrap_err();
        assert_eq!(
            invalid_record(&err).as_deref(),
            Some(&*format!("part 2 of multipart upload {id}")),
            "{err}"
        );
        bucket.delete(&format!("mp/part/{id}/2")).await.unwrap();

        // Another upload's part 1 in place of this one's.
        let theirs = bucket.get(&format!("mp/part/{other}/1")).await.unwrap();
        bucket.put(&p1, theirs).await.unwrap();
        let err = b
            .complete_upload("k", &id, &[(1, e1.clone())])
            .await
            .unwrap_err();
        assert_eq!(
            invalid_record(&err).as_deref(),
            Some(&*format!("part 1 of multipart upload {id}")),
            "{err}"
        );

        // A flipped byte in the part record.
        let mut edited = original.to_vec();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        bucket.put(&p1, edited.into()).await.unwrap();
        let err = a.list_parts("k", &id).await.unwrap_err();
        assert!(invalid_record(&err).is_some(), "{err}");
        bucket.put(&p1, original).await.unwrap();
        assert_eq!(a.list_parts("k", &id).await.unwrap().len(), 1);

        // An upload record swapped for another upload's.
        let up = format!("mp/up/{id}");
        let mine = bucket.get(&up).await.unwrap();
        bucket
            .put(&up, bucket.get(&format!("mp/up/{other}")).await.unwrap())
            .await
            .unwrap();
        let err = b.list_uploads("").await.unwrap_err();
        assert_eq!(
            invalid_record(&err).as_deref(),
            Some(&*format!("multipart upload {id}")),
            "{err}"
        );
        bucket.put(&up, mine).await.unwrap();

        // Something under mp/ the device never writes.
        bucket
            .put(&format!("mp/part/{id}/01"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let err = a.list_parts("k", &id).await.unwrap_err();
        assert!(
            matches!(&err, GatewayError::Corrupt(s) if s.is::<crate::gateway::import::ForeignUploadObject>()),
            "{err}"
        );
        bucket.delete(&format!("mp/part/{id}/01")).await.unwrap();
        let done = a.complete_upload("k", &id, &[(1, e1)]).await.unwrap();
        assert_eq!(done.size, 5);
    }

    /// A cluster's seal drops the uploads begun on any device, and sweeps part records left
    /// without their upload (a part stored while its upload was being dropped) with their
    /// segments, but never a segment an object holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_seal_drops_every_upload_and_stray_part() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, bucket) = cluster(dir.path()).await;
        let open = a
            .create_upload("open", ObjectAttrs::default())
            .await
            .unwrap();
        part(&b, "open", &open, 1, b"part").await;
        // A stray: a part record whose upload record is gone (as a completion cut short
        // between its object record and the end of its upload leaves, here with its object).
        let kept = b
            .create_upload("kept", ObjectAttrs::default())
            .await
            .unwrap();
        let e = part(&a, "kept", &kept, 1, b"kept data").await;
        let stray = b
            .create_upload("stray", ObjectAttrs::default())
            .await
            .unwrap();
        part(&b, "stray", &stray, 1, b"stray data").await;
        let kept_part = bucket.get(&format!("mp/part/{kept}/1")).await.unwrap();
        b.complete_upload("kept", &kept, &[(1, e)]).await.unwrap();
        bucket
            .put(&format!("mp/part/{kept}/1"), kept_part)
            .await
            .unwrap();
        bucket.delete(&format!("mp/up/{stray}")).await.unwrap();
        assert_eq!(bucket.list("seg/").await.unwrap().len(), 3);

        assert_eq!(a.seal().await.unwrap(), (1, 9));
        assert!(bucket.list("mp/").await.unwrap().is_empty());
        // The open upload's and the stray's segments went; the object's stayed.
        assert_eq!(bucket.list("seg/").await.unwrap().len(), 1);
        assert_eq!(read(&b, "kept").await, b"kept data");
        assert!(matches!(
            b.create_upload("late", ObjectAttrs::default()).await,
            Err(GatewayError::ReadOnly(_))
        ));
    }

    /// A standalone device keeps its upload records in its catalog, and nothing in a bucket.
    #[tokio::test]
    async fn a_standalone_upload_completes_from_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::gateway::import::device::tests::device(dir.path()).await;
        assert!(matches!(d.uploads(), UploadStore::Catalog { .. }));
        let id = d.create_upload("k", ObjectAttrs::default()).await.unwrap();
        let e1 = part(&d, "k", &id, 1, &data(5 << 20, 9)).await;
        let e2 = part(&d, "k", &id, 2, b"tail").await;
        part(&d, "k", &id, 3, b"unused").await;
        assert_eq!(d.list_uploads("").await.unwrap().len(), 1);
        // Out of order, a wrong ETag, a part too small before the last: S3's errors.
        for (listed, want) in [
            (vec![(2, e2.clone()), (1, e1.clone())], "InvalidPartOrder"),
            (vec![(1, "0".repeat(32))], "InvalidPart"),
            (vec![(2, e2.clone()), (3, String::new())], "EntityTooSmall"),
            (vec![(1, e1.clone()), (3, "0".repeat(32))], "InvalidPart"),
        ] {
            match d.complete_upload("k", &id, &listed).await {
                Err(GatewayError::InvalidArgument(m)) => assert!(m.starts_with(want), "{m}"),
                other => panic!("{listed:?}: {other:?}"),
            }
        }
        d.complete_upload("k", &id, &[(1, e1), (2, e2)])
            .await
            .unwrap();
        assert_eq!(read(&d, "k").await.len(), (5 << 20) + 4);
        assert!(d.list_uploads("").await.unwrap().is_empty());
        // The unused part's segment went: only the object's are on disk.
        assert_eq!(
            d.inner.segs.all_ids().len(),
            d.read_index()["k"].segments.len()
        );
    }
}
