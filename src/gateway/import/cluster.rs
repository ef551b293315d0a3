//! A device whose data set lives in a device cluster's Garage bucket (docs/operations.md,
//! "Device clusters"): segments as `seg/<id>` (`segments.rs`) and the object index as one sealed
//! record per object, `rec/<name id hex>`, so every device of the cluster lists and reads the
//! whole data set and none holds state of it alone. Multipart uploads keep their records there
//! too, under `mp/` (`uploads.rs`).
//!
//! The in-memory index is a cache of the bucket's records: a HEAD or GET fetches the object's
//! record first (`sync_key`), a listing first reconciles the index with the bucket's `rec/`
//! listing (`sync_all`); while the daemon reports the cluster's tables not yet whole
//! (`TableSync`, after a device returned) both only add and replace, never remove. Writes pass
//! the `WriteGate`, which the daemon closes while Garage reports a partition without its write
//! quorum: a PUT could land in any partition, so none is accepted then. Must not: decide cluster membership or talk to Garage's admin API (the daemon does).
//! Invariant: a write is acknowledged only after Garage acknowledged its segments and then its
//! record (both at Garage's write quorum).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;

use crate::gateway::GatewayError;
use crate::gateway::import::Device;
use crate::gateway::import::record::{self, ObjectRecord};
use crate::store::device as keys;
use crate::store::keys::hex;
use crate::store::{Bucket, StoreError};

/// Records fetched at once while reconciling a listing.
const RECORD_FETCHES: usize = 16;

/// Why writes are refused while the cluster has lost a write quorum (the daemon's words).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuorumLost(pub String);

/// Open (writes accepted) or closed with a reason; shared by the daemon's health watch and the
/// device.
#[derive(Debug, Clone, Default)]
pub struct WriteGate(Arc<RwLock<Option<String>>>);

impl WriteGate {
    pub fn refuse(&self, reason: String) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    pub fn allow(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The reason writes are refused now, if they are.
    pub fn refused(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn check(&self) -> Result<(), GatewayError> {
        match self.refused() {
            Some(reason) => Err(GatewayError::Unavailable(Box::new(QuorumLost(reason)))),
            None => Ok(()),
        }
    }
}

/// Whether the cluster's tables are known to be whole on every node: false from a device's start,
/// and again from the moment a device that was down returns, until the daemon has had every node
/// push its table entries to every other (ADR 0014). While false, a node may answer reads from
/// tables that lack entries written while it was down, so an absence it reports proves nothing:
/// the index keeps what it has and only adds.
#[derive(Debug, Clone, Default)]
pub struct TableSync(Arc<AtomicBool>);

impl TableSync {
    pub fn set(&self, synced: bool) {
        self.0.store(synced, Ordering::SeqCst);
    }

    pub fn synced(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The devices the daemon last saw up and down (`None` until it has read Garage's health once).
/// A seal waits for each device up to confirm it stopped writing, and removes unreferenced
/// segments only while none is down (`seal.rs`).
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<RwLock<Option<Seen>>>);

/// One reading of the cluster's health: the devices up and those down.
#[derive(Debug, Clone)]
struct Seen {
    up: Vec<String>,
    down: Vec<String>,
}

impl Members {
    pub fn set(&self, up: Vec<String>, down: Vec<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Seen { up, down });
    }

    fn seen(&self) -> Option<Seen> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn up(&self) -> Option<Vec<String>> {
        self.seen().map(|s| s.up)
    }

    pub(crate) fn down(&self) -> Option<Vec<String>> {
        self.seen().map(|s| s.down)
    }
}

/// What a device needs of its cluster: the cluster bucket (through this device's own Garage
/// node), the write gate, whether absences the bucket reports can be trusted, this device's
/// name, the devices that are up, and whether this device created the job.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    pub bucket: Arc<Bucket>,
    pub gate: WriteGate,
    pub tables: TableSync,
    pub device: String,
    pub members: Members,
    /// Whether this device created the cluster's job: it publishes the job's function on PUT
    /// (or that it has none) for the others (`functions.rs`).
    pub creator: bool,
}

/// The device's view of the bucket's records: for each record object, the listing stamp it
/// had when it was loaded and the listing generation that loaded (or wrote) it.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    stamps: std::sync::Mutex<HashMap<String, Stamp>>,
    generation: AtomicU64,
    /// One reconciliation at a time: concurrent listings would fetch the same records.
    syncing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified_unix: i64,
    size: u64,
    generation: u64,
}

/// The object key of a record in the cluster's bucket.
pub(crate) fn record_key(name_id: &[u8]) -> String {
    format!("rec/{}", hex(name_id))
}

impl RecordCache {
    fn set(&self, key: String, stamp: Stamp) {
        self.stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, stamp);
    }

    fn get(&self, key: &str) -> Option<Stamp> {
        self.stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// A stamp for a record this device just wrote: newer than every listing begun so far, so
    /// a listing that started before the write cannot remove it.
    fn written(&self, key: String, size: u64) {
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        self.set(
            key,
            Stamp {
                modified_unix: 0,
                size,
                generation,
            },
        );
    }
}

impl Device {
    pub(crate) fn link(&self) -> Option<&ClusterLink> {
        self.inner.cluster.as_ref()
    }

    /// Why the cluster refuses writes now, if it does (never on a standalone device).
    pub fn writes_refused(&self) -> Option<String> {
        self.link().and_then(|l| l.gate.refused())
    }

    /// Whether this device's data set lives in a cluster.
    pub fn in_cluster(&self) -> bool {
        self.link().is_some()
    }

    /// Stores a sealed object record in the cluster (a no-op on a standalone device); returns
    /// once Garage acknowledged it.
    pub(crate) async fn publish(&self, name_id: &[u8], sealed: &[u8]) -> Result<(), GatewayError> {
        let Some(link) = self.link() else {
            return Ok(());
        };
        link.gate.check()?;
        let key = record_key(name_id);
        link.bucket
            .put(&key, bytes::Bytes::copy_from_slice(sealed))
            .await?;
        self.inner.records.written(key, sealed.len() as u64);
        Ok(())
    }

    /// Removes an object's record from the cluster (a no-op on a standalone device).
    pub(crate) async fn unpublish(&self, name_id: &[u8]) -> Result<(), GatewayError> {
        let Some(link) = self.link() else {
            return Ok(());
        };
        link.gate.check()?;
        link.bucket.delete(&record_key(name_id)).await?;
        Ok(())
    }

    /// Opens a sealed record fetched from the bucket; `None` (logged) when it does not verify.
    fn open_record(&self, name_id: Option<&[u8]>, sealed: Vec<u8>) -> Option<ObjectRecord> {
        let inner = &self.inner;
        let try_open = |id: &[u8]| {
            record::open::<ObjectRecord>(&inner.codec, &record::object_aad(&inner.job, id), sealed)
                .ok()
                .filter(|rec| keys::name_id(&inner.key, &rec.key).as_slice() == id)
        };
        let opened = name_id.and_then(try_open);
        if opened.is_none() {
            tracing::warn!(job = %inner.job, "a cluster object record does not verify");
        }
        opened
    }

    /// Brings the index entry of `key` up to date with the cluster (a no-op standalone): the
    /// object another device put, replaced or deleted is seen at once.
    pub async fn sync_key(&self, key: &str) -> Result<(), GatewayError> {
        let Some(link) = self.link() else {
            return Ok(());
        };
        let name_id = keys::name_id(&self.inner.key, key);
        let rkey = record_key(&name_id);
        match link.bucket.get(&rkey).await {
            Ok(sealed) => {
                let size = sealed.len() as u64;
                if let Some(rec) = self.open_record(Some(&name_id), sealed.to_vec()) {
                    self.write_index().insert(rec.key.clone(), Arc::new(rec));
                    self.inner.records.written(rkey, size);
                }
                Ok(())
            }
            // An absence counts only once the tables are whole (`TableSync`).
            Err(StoreError::NotFound { .. }) if link.tables.synced() => {
                self.write_index().remove(key);
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the cluster holds another version of `rec`'s object than `rec` (another device
    /// replaced it); the record read is not taken into the index. An absent record says no: a
    /// copy lagging behind a write just acknowledged cannot be told from a delete.
    pub(crate) async fn replaced_in_cluster(
        &self,
        rec: &ObjectRecord,
    ) -> Result<bool, GatewayError> {
        let Some(link) = self.link() else {
            return Ok(false);
        };
        let name_id = keys::name_id(&self.inner.key, &rec.key);
        match link.bucket.get(&record_key(&name_id)).await {
            Ok(sealed) => Ok(self
                .open_record(Some(&name_id), sealed.to_vec())
                .is_some_and(|now| now.sha256 != rec.sha256 || now.segments != rec.segments)),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reconciles the whole index with the cluster's records (a no-op standalone): new and
    /// changed records are fetched, records gone from the bucket leave the index.
    pub async fn sync_all(&self) -> Result<(), GatewayError> {
        let Some(link) = self.link() else {
            return Ok(());
        };
        let records = &self.inner.records;
        let _one = records.syncing.lock().await;
        let generation = records.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // Read before listing: a listing begun before the tables were whole may lack entries.
        let complete = link.tables.synced();
        let listed = link.bucket.list("rec/").await?;
        let mut present = std::collections::HashSet::new();
        let mut stale = Vec::new();
        for obj in &listed {
            present.insert(obj.key.clone());
            let known = records.get(&obj.key);
            if known.is_none_or(|s| s.modified_unix != obj.modified_unix || s.size != obj.size) {
                stale.push(obj.clone());
            }
        }
        let fetched: Vec<_> = futures::stream::iter(stale)
            .map(|obj| {
                let bucket = link.bucket.clone();
                async move { (bucket.get(&obj.key).await, obj) }
            })
            .buffer_unordered(RECORD_FETCHES)
            .collect()
            .await;
        for (got, obj) in fetched {
            let sealed = match got {
                Ok(sealed) => sealed,
                // Deleted between the listing and the fetch: the next listing drops it.
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let name_id = obj
                .key
                .strip_prefix("rec/")
                .and_then(crate::store::keys::parse_hex::<32>);
            if let Some(rec) = self.open_record(name_id.as_ref().map(|n| &n[..]), sealed.to_vec()) {
                self.write_index().insert(rec.key.clone(), Arc::new(rec));
            }
            records.set(
                obj.key.clone(),
                Stamp {
                    modified_unix: obj.modified_unix,
                    size: obj.size,
                    generation,
                },
            );
        }
        if !complete {
            return Ok(());
        }
        let gone: Vec<String> = self
            .read_index()
            .keys()
            .filter(|name| {
                let rkey = record_key(&keys::name_id(&self.inner.key, name));
                !present.contains(&rkey)
                    && records
                        .get(&rkey)
                        .is_none_or(|s| s.generation <= generation)
            })
            .cloned()
            .collect();
        if !gone.is_empty() {
            let mut index = self.write_index();
            for name in gone {
                index.remove(&name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two devices, a (which created the job) and b, of one cluster over one bucket (a local
    /// directory in `dir` standing in for Garage), both unlocked, and the bucket. `prepare`
    /// runs on a's data dir and standalone device between `job create` and the cluster unlock.
    pub(crate) async fn pair(
        dir: &std::path::Path,
        prepare: impl FnOnce(&std::path::Path, &Device),
    ) -> (Device, Device, Arc<Bucket>) {
        use crate::gateway::import::job::{JobManifestFile, adopt_job, unlock_job_in};
        let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a_dir).unwrap();
        std::fs::create_dir_all(&b_dir).unwrap();
        let bucket = Arc::new(
            Bucket::open(
                &crate::config::BucketConfig::local(dir.join("bucket")),
                true,
            )
            .unwrap(),
        );
        let members = Members::default();
        members.set(vec!["a".into(), "b".into()], Vec::new());
        let (first, code) = crate::gateway::import::device::tests::device_and_code(&a_dir).await;
        prepare(&a_dir, &first);
        let catalog = first.inner.catalog.clone();
        drop(first);
        let manifest = JobManifestFile::read(&a_dir.join("m.json")).unwrap();
        let b_catalog = Arc::new(crate::catalog::Catalog::open(&b_dir.join("c.db")).unwrap());
        adopt_job(&b_catalog, &manifest).unwrap();
        let mut devices = Vec::new();
        for (catalog, dir, name) in [(catalog, &a_dir, "a"), (b_catalog, &b_dir, "b")] {
            let link = link(&bucket, &members, name, name == "a");
            let device = unlock_job_in(catalog, dir, &manifest, &code, Some(link));
            devices.push(device.await.unwrap());
        }
        let b = devices.pop().unwrap();
        let a = devices.pop().unwrap();
        (a, b, bucket)
    }

    /// A link of device `name` to a cluster over `bucket` whose tables are whole.
    pub(crate) fn link(
        bucket: &Arc<Bucket>,
        members: &Members,
        name: &str,
        creator: bool,
    ) -> ClusterLink {
        let tables = TableSync::default();
        tables.set(true);
        ClusterLink {
            bucket: bucket.clone(),
            gate: WriteGate::default(),
            tables,
            device: name.into(),
            members: members.clone(),
            creator,
        }
    }

    #[test]
    fn a_closed_gate_refuses_with_its_reason_until_opened() {
        let gate = WriteGate::default();
        assert!(gate.check().is_ok());
        gate.refuse("write quorum lost: devices d4, d5 are down".into());
        match gate.check() {
            Err(GatewayError::Unavailable(e)) => assert!(e.to_string().contains("d4, d5")),
            other => panic!("{other:?}"),
        }
        gate.allow();
        assert!(gate.check().is_ok());
    }
}
