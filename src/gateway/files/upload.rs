//! The files uploader: brings the bucket up to date with the catalog, one inode at a time.
//!
//! An inode is due when it is dirty (`version != synced_version`), has no UNSTABLE writes
//! awaiting COMMIT, and has been idle for the upload delay. A staged file is PUT whole from its
//! staging file (multipart with parallel parts when large); a moved file whose data did not
//! change is copied server-side; a symlink is PUT with its target as body. Only after the object
//! is at its new key does the catalog record it, queueing the old key for deletion in the same
//! transaction (`Catalog::mark_synced`), so a crash at any point leaves either the old object or
//! both, never neither; queued deletes run afterwards and skip any key an inode now uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::catalog::shares::{InodeKind, InodeRow, ShareRow, SyncedItem};
use crate::gateway::GatewayError;
use crate::gateway::files::blocks::BlockMap;
use crate::gateway::files::clean::CleanCopies;
use crate::gateway::files::local::remove_staging;
use crate::gateway::files::meta;
use crate::gateway::files::traffic::Counted;
use crate::gateway::files::{Files, path};

/// Uploads in flight at once (each large one also runs parallel parts).
const UPLOAD_CONCURRENCY: usize = 8;
/// How long a file with UNSTABLE writes and no COMMIT may sit before it is uploaded anyway.
const UNCOMMITTED_GRACE: Duration = Duration::from_secs(60);
/// Under staging pressure, how long an uncommitted file must have been left alone before it is
/// uploaded to make room.
const PRESSURE_QUIET: Duration = Duration::from_secs(1);

/// How long a file's last change matters to the uploader: past both the upload delay and the
/// grace of uncommitted writes, an old change time and none at all decide alike.
pub(super) fn change_memory(upload_delay: Duration) -> Duration {
    upload_delay.max(UNCOMMITTED_GRACE).max(PRESSURE_QUIET)
}
/// How often the uploader looks for due work when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// The shortest sleep between rounds, so files falling due one by one are taken a batch at a
/// time.
const MIN_PAUSE: Duration = Duration::from_millis(100);
/// How long a finished upload may wait to be recorded with others.
const RECORD_EVERY: Duration = Duration::from_millis(100);
/// Uploads recorded in the catalog in one transaction, at most.
const RECORD_BATCH: usize = 256;

/// Counters for status.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub uploads: AtomicU64,
    pub errors: AtomicU64,
    /// Bytes of file data read from the bucket (reads, staging, filled blocks).
    pub downloaded: AtomicU64,
    /// Bytes of file data read from clean copies instead (clean.rs).
    pub clean_read: AtomicU64,
    /// Large files whose upload started early (before the upload delay) and completed, and
    /// early uploads abandoned because the file changed (early.rs).
    pub early_completed: AtomicU64,
    pub early_abandoned: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub uploaded: u64,
    /// Dirty but not yet due (uncommitted or inside the upload delay).
    pub waiting: u64,
    pub failed: u64,
    /// How long until the first waiting inode is due, if one waits for the upload delay.
    pub next_due: Option<Duration>,
}

/// An object written to the bucket, waiting to be recorded in the catalog with the rest of its
/// batch. It keeps its key locked until then, so no other upload to that key runs in between.
struct Done {
    id: i64,
    version: i64,
    /// Where the inode's object now is (`None`: it has none, e.g. the share root).
    key: Option<String>,
    etag: Option<String>,
    kind: InodeKind,
    /// File bytes the object carries (0 for directories and symlinks).
    size: u64,
    lock_key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Files {
    /// Runs the uploader until `stop` changes.
    pub async fn run_uploader(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(self.clone().run_early_uploads(stop.clone()));
        loop {
            let pause = match self.upload_round(false).await {
                Ok(r) => r.next_due.map_or(TICK, |d| d.clamp(MIN_PAUSE, TICK)),
                Err(e) => {
                    tracing::warn!(error = %e, "files upload round failed");
                    TICK
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
    }

    pub fn upload_counters(&self) -> &UploadCounters {
        &self.counters
    }

    /// One pass over every share. With `now` set, the upload delay and COMMIT are not waited
    /// for (shutdown, tests).
    pub async fn upload_round(&self, now: bool) -> Result<Round, GatewayError> {
        let mut round = Round::default();
        for share in self.blocking(|c| Ok(c.shares()?)).await? {
            // Ids first (the dirty index alone); rows only for those due now.
            let share_id = share.id;
            let dirty = self
                .blocking(move |c| Ok(c.dirty_ids(share_id, 4096)?))
                .await?;
            let mut due_ids = Vec::new();
            // A writer waits for staging room: committed files go up now, not after the delay.
            let pressure = self.staging_pressure();
            {
                let live = self.live();
                for id in dirty {
                    let quiet = live.changed.get(&id).map(Instant::elapsed);
                    let idle = quiet.is_none_or(|q| q >= self.config.upload_delay);
                    // A client that wrote UNSTABLE and went away without COMMIT: after a long
                    // silence the upload (whose read of the staging file is as good as an
                    // fsync) goes ahead anyway.
                    let abandoned = quiet.is_none_or(|q| q >= UNCOMMITTED_GRACE);
                    let committed = !live.uncommitted.contains(&id) || abandoned;
                    // Under staging pressure even uncommitted files go once quiet for a moment:
                    // their writers may be the ones waiting, and an upload is as durable as a
                    // COMMIT.
                    let quiet_enough = quiet.is_none_or(|q| q >= PRESSURE_QUIET);
                    if now || (idle && committed) || (pressure && (committed || quiet_enough)) {
                        due_ids.push(id);
                    } else {
                        round.waiting += 1;
                        if let Some(q) = quiet.filter(|_| committed) {
                            let left = self.config.upload_delay.saturating_sub(q);
                            round.next_due = Some(round.next_due.map_or(left, |d| d.min(left)));
                        }
                    }
                }
            }
            let due = self
                .blocking(move |c| {
                    let mut due = Vec::with_capacity(due_ids.len());
                    for id in due_ids {
                        // Gone since it was listed: nothing to upload.
                        if let Some(row) = c.inode(id)? {
                            due.push(row);
                        }
                    }
                    Ok(due)
                })
                .await?;
            // Uploads run in parallel; those finished within RECORD_EVERY of each other are
            // recorded in one catalog transaction, so a burst of small files costs a few
            // fsyncs a second, not one or two each (each holds the catalog, which every NFS
            // call needs).
            let mut finished = futures::stream::iter(due)
                .map(|row| {
                    let share = &share;
                    async move { self.sync_inode(share, row).await }
                })
                .buffer_unordered(UPLOAD_CONCURRENCY);
            let mut done = Vec::new();
            let mut oldest: Option<Instant> = None;
            loop {
                let next = match oldest {
                    None => finished.next().await.map(Some),
                    // `next` is cancel-safe: uploads stay in the stream while we record.
                    Some(t) => tokio::time::timeout(
                        RECORD_EVERY.saturating_sub(t.elapsed()),
                        finished.next(),
                    )
                    .await
                    .map_or(Some(None), |n| n.map(Some)),
                };
                let Some(next) = next else { break };
                match next {
                    Some(Ok(Some(d))) => {
                        oldest.get_or_insert_with(Instant::now);
                        done.push(d);
                    }
                    // Moved or already synced meanwhile: a later round looks again.
                    Some(Ok(None)) => round.uploaded += 1,
                    Some(Err(e)) => {
                        round.failed += 1;
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(share = %share.name, error = %e, "upload failed; will retry");
                    }
                    None => {}
                }
                if done.len() >= RECORD_BATCH || oldest.is_some_and(|t| t.elapsed() >= RECORD_EVERY)
                {
                    round.uploaded += done.len() as u64;
                    self.record(&share, std::mem::take(&mut done)).await?;
                    oldest = None;
                }
            }
            round.uploaded += done.len() as u64;
            self.record(&share, done).await?;
            // Hard link names, once the objects they copy are current.
            let links = self.sync_links(&share).await?;
            round.uploaded += links.copied;
            round.failed += links.failed;
            self.run_deletes(&share).await?;
        }
        Ok(round)
    }

    /// With `commit_uploads`: returns once the file's content as of this call is in the
    /// bucket. The upload runs here, not in the uploader, so the caller gets its error; one the
    /// uploader runs meanwhile is waited for (the key lock serialises the two, and a row found
    /// synced is not uploaded again). A file removed meanwhile has nothing left to keep.
    pub(crate) async fn upload_committed(
        &self,
        id: crate::gateway::files::FileId,
    ) -> Result<(), GatewayError> {
        let target = match self.node(id).await {
            Ok((row, _)) => row.version,
            Err(GatewayError::Stale(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut settling = false;
        loop {
            let (row, share) = match self.node(id).await {
                Ok(found) => found,
                Err(GatewayError::Stale(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            if row.synced_version >= target {
                return Ok(());
            }
            if share.read_only {
                return Err(GatewayError::ReadOnly(format!(
                    "share {} became read-only before {} was stored",
                    share.name, row.path
                )));
            }
            if settling {
                tokio::time::sleep(MIN_PAUSE).await;
            }
            // `None`: the uploader had it (look again at once), or it moved since it was read
            // (look again after the move settles).
            settling = match self.sync_inode(&share, row).await? {
                Some(done) => {
                    self.record(&share, vec![done]).await?;
                    false
                }
                None => true,
            };
        }
    }

    /// Uploads until nothing is dirty (bounded by `limit`); for shutdown and tests.
    pub async fn drain(&self, limit: Duration) -> Result<bool, GatewayError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let r = self.upload_round(true).await?;
            if r.uploaded == 0 && r.waiting == 0 && r.failed == 0 {
                return Ok(true);
            }
            if r.failed > 0 {
                tokio::time::sleep(TICK).await;
            }
        }
        Ok(false)
    }

    async fn run_deletes(&self, share: &ShareRow) -> Result<(), GatewayError> {
        let share_id = share.id;
        let keys = self
            .blocking(move |c| Ok(c.pending_deletes(share_id)?))
            .await?;
        for key in keys {
            let lock = self.key_lock(&key);
            let guard = lock.lock().await;
            let in_use = {
                let key = key.clone();
                self.blocking(move |c| Ok(c.key_in_use(share_id, &key)?))
                    .await?
            };
            let result = if in_use {
                Ok(())
            } else {
                self.bucket.delete_object(&key).await
            };
            drop(guard);
            self.release_key_lock(&key, lock);
            match result {
                Ok(()) => {
                    let key = key.clone();
                    self.blocking(move |c| Ok(c.done_delete(&key)?)).await?;
                }
                Err(e) => {
                    tracing::warn!(share = %share.name, key, error = %e, "delete failed; will retry");
                }
            }
        }
        Ok(())
    }

    /// Syncs one inode's object, holding its target key's lock: an upload still in flight for a
    /// file that was replaced or deleted finishes before the file now at that key is written
    /// there. The lock stays held in the returned [`Done`] until the catalog has recorded it.
    async fn sync_inode(
        &self,
        share: &ShareRow,
        listed: InodeRow,
    ) -> Result<Option<Done>, GatewayError> {
        let key = path::key(&share.bucket_prefix, &listed.path)?;
        let lock = self.key_lock(&key);
        let guard = lock.clone().lock_owned().await;
        match self.sync_inode_locked(&listed, &key).await {
            Ok(Some((row, object, etag))) => Ok(Some(Done {
                id: row.id,
                version: row.version,
                key: object,
                etag,
                kind: row.kind,
                size: if row.kind == InodeKind::File {
                    row.size
                } else {
                    0
                },
                lock_key: key,
                lock,
                guard,
            })),
            other => {
                drop(guard);
                self.release_key_lock(&key, lock);
                other.map(|_| None)
            }
        }
    }

    /// Records a batch of uploads in the catalog (one transaction), then removes the staging
    /// files that are no longer needed and releases the keys.
    async fn record(&self, share: &ShareRow, done: Vec<Done>) -> Result<(), GatewayError> {
        if done.is_empty() {
            return Ok(());
        }
        // A write must not re-stage a file between the catalog dropping its staging flag and
        // its staging file being removed: hold the files' inode locks (in id order) across both.
        let mut ids: Vec<i64> = done
            .iter()
            .filter(|d| d.kind == InodeKind::File)
            .map(|d| d.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut inode_guards = Vec::with_capacity(ids.len());
        for id in ids {
            inode_guards.push(self.inode_lock(id).lock_owned().await);
        }
        // The batch is recorded and the staging files it frees are removed in one hop.
        let items: Vec<Synced> = done
            .iter()
            .map(|d| Synced {
                id: d.id,
                version: d.version,
                key: d.key.clone(),
                etag: d.etag.clone(),
                unstage: d.kind == InodeKind::File,
                staging: self.staging_path(d.id),
            })
            .collect();
        let clean = self.clean.clone();
        let outcomes = self
            .blocking(move |c| record_synced(c, &items, clean.as_deref()))
            .await?;
        for (d, outcome) in done.iter().zip(outcomes) {
            match outcome {
                Some(unstaged) => {
                    self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                    self.count(share.id, Counted::Upload(d.size));
                    if unstaged {
                        self.account(d.id, 0);
                    }
                    tracing::debug!(share = %share.name, key = ?d.key, "uploaded");
                }
                // Deleted while it was uploading: the object just written belongs to nobody.
                None if d.kind != InodeKind::Dir => {
                    let share_id = share.id;
                    let in_use = match d.key.clone() {
                        Some(key) => {
                            self.blocking(move |c| Ok(c.key_in_use(share_id, &key)?))
                                .await?
                        }
                        None => true,
                    };
                    if let Some(key) = &d.key
                        && !in_use
                        && let Err(e) = self.bucket.delete_object(key).await
                    {
                        tracing::warn!(share = %share.name, key, error = %e, "removing an orphan failed");
                    }
                }
                None => {}
            }
        }
        // The copies just kept take what staging leaves of the budget.
        self.trim_clean();
        drop(inode_guards);
        for d in done {
            drop(d.guard);
            self.release_key_lock(&d.lock_key, d.lock);
        }
        Ok(())
    }

    pub(super) fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.live()
            .key_locks
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    pub(super) fn release_key_lock(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut live = self.live();
        // Only the map's reference and ours: nobody else waits for this key.
        if Arc::strong_count(&lock) == 2 {
            live.key_locks.remove(key);
        }
    }

    /// Writes the bucket side of one inode; returns the row as uploaded, where its object now
    /// is and its ETag, or `None` when there is nothing to do after all.
    async fn sync_inode_locked(
        &self,
        listed: &InodeRow,
        key: &str,
    ) -> Result<Option<(InodeRow, Option<String>, Option<String>)>, GatewayError> {
        // The row as it is now (gone, moved or already synced means a later round decides)
        // and, for a staged file, its staging file, read in the same hop.
        let (id, staging) = (listed.id, self.staging_path(listed.id));
        let small = self.bucket.multipart_threshold();
        let found = self
            .blocking(move |c| {
                let Some(row) = c.inode(id)? else {
                    return Ok(None);
                };
                let probe = (row.kind == InodeKind::File && row.staged)
                    .then(|| Staged::probe(&staging, small));
                Ok(Some((row, probe)))
            })
            .await?;
        let Some((row, probe)) = found else {
            return Ok(None);
        };
        if row.path != listed.path || !row.dirty() {
            return Ok(None);
        }
        let key = key.to_owned();
        let etag = match row.kind {
            InodeKind::Dir => {
                // A `dir/` marker (with the directory's attributes) where the bucket can hold
                // one; the share root needs none. Elsewhere directories are implied by keys.
                let marker = format!("{key}/");
                let m = Self::object_meta(&row);
                let written = !row.path.is_empty() && self.bucket.put_marker(&marker, &m).await?;
                return Ok(Some((row, written.then_some(marker), None)));
            }
            InodeKind::Symlink => match (&row.target, &row.remote_key) {
                (Some(target), _) => {
                    let m = Self::object_meta(&row);
                    self.bucket
                        .put_object(&key, Bytes::from(target.clone().into_bytes()), &m)
                        .await?
                }
                (None, Some(old)) => {
                    self.bucket.copy_object(old, &key).await?;
                    self.bucket.head_object(&key).await?.and_then(|h| h.etag)
                }
                (None, None) => None,
            },
            InodeKind::File => self.sync_file(&row, &key, probe).await?,
            // Zero bytes and the metadata: a new PUT is as cheap as any copy, for a move or
            // an attribute change too.
            InodeKind::Fifo | InodeKind::Socket | InodeKind::BlockDev | InodeKind::CharDev => {
                self.bucket
                    .put_object(&key, Bytes::new(), &Self::object_meta(&row))
                    .await?
            }
        };
        Ok(Some((row, Some(key), etag)))
    }

    /// The user metadata of an inode's object: its attributes with its kind's type bits.
    pub(super) fn object_meta(row: &InodeRow) -> Vec<(String, String)> {
        meta::render(
            meta::type_bits(row.kind) | (row.mode & 0o7777),
            (row.uid, row.gid),
            (row.mtime_ns, row.ctime_ns),
            row.rdev,
            &row.extra_meta,
        )
    }

    async fn sync_file(
        &self,
        row: &InodeRow,
        key: &str,
        probe: Option<Staged>,
    ) -> Result<Option<String>, GatewayError> {
        let m = Self::object_meta(row);
        if let Some(probe) = probe {
            let staging = self.staging_path(row.id);
            let map = match probe {
                Staged::Small(data) => {
                    // Read in the hop that read the row: one PUT, no more trips to the pool.
                    if let Some(etag) = self.early_finish(row, key, &staging).await? {
                        return Ok(etag);
                    }
                    return Ok(self.bucket.put_object(key, data, &m).await?);
                }
                Staged::Other { exists, map } => (exists, map),
            };
            let map = match map {
                (false, None) => {
                    // Staged, never synced, and lost with a power failure: none of it was
                    // committed, and what the catalog knows is a hole of the recorded size.
                    let lock = self.inode_lock(row.id);
                    let _guard = lock.lock().await;
                    let (id, size, staging) = (row.id, row.size, staging.clone());
                    self.blocking(move |c| {
                        if !c.inode(id)?.is_some_and(|r| r.staged) {
                            return Err(GatewayError::Stale(format!("file id {id} changed")));
                        }
                        std::fs::File::create(&staging)
                            .and_then(|f| f.set_len(size))
                            .map_err(|e| {
                                GatewayError::Internal(
                                    format!("recreating {}: {e}", staging.display()).into(),
                                )
                            })?;
                        Ok(BlockMap::load(&staging))
                    })
                    .await?
                }
                (_, map) => map,
            };
            if map.is_some() {
                self.early_discard(row.id);
            } else if let Some(etag) = self.early_finish(row, key, &staging).await? {
                return Ok(etag);
            }
            if let (Some(map), Some(source)) = (&map, &row.remote_key)
                && map.block == self.bucket.part_size()
            {
                // Unchanged blocks are copied server-side from the object it was staged from.
                let present = |i: u64| map.is_present(i);
                return Ok(self
                    .bucket
                    .put_patched(key, &staging, row.size, source, &present, &m)
                    .await?);
            }
            if map.is_some() {
                let lock = self.inode_lock(row.id);
                let _guard = lock.lock().await;
                self.fill_blocks(row, None).await?;
            }
            return Ok(self.bucket.put_file(key, &staging, &m).await?);
        }
        match &row.remote_key {
            None => Ok(self
                .bucket
                .put_object(
                    key,
                    Bytes::from(vec![0u8; usize::try_from(row.size).unwrap_or(0)]),
                    &m,
                )
                .await?),
            Some(old) => {
                // A move or an attribute change: one server-side copy carrying the new
                // metadata, where the bucket can do that.
                if self.bucket.copy_with_metadata(old, key, &m).await? {
                    return Ok(self.bucket.head_object(key).await?.and_then(|h| h.etag));
                }
                if old != key {
                    self.bucket.copy_object(old, key).await?;
                }
                let head = self.bucket.head_object(key).await?.unwrap_or_default();
                let have = meta::parse(&head.metadata);
                let want = meta::parse(&m);
                let same = (have.mode, have.uid, have.gid, have.mtime_ns)
                    == (want.mode, want.uid, want.gid, want.mtime_ns);
                if same || !self.bucket.keeps_user_metadata() {
                    return Ok(head.etag);
                }
                // Only the attributes changed and the bucket cannot copy with new metadata
                // (a test store): re-upload from a staged copy.
                let lock = self.inode_lock(row.id);
                let guard = lock.lock().await;
                let id = row.id;
                let current = self
                    .blocking(move |c| crate::gateway::files::blocking::current(c, id))
                    .await?;
                let staged = self.stage(&current).await?;
                drop(guard);
                Ok(self
                    .bucket
                    .put_file(key, &self.staging_path(staged.id), &Self::object_meta(row))
                    .await?)
            }
        }
    }
}

/// A staged file's staging file as the uploader's first hop found it.
enum Staged {
    /// Whole (no block map) and under the multipart threshold: its bytes, for one PUT.
    Small(Bytes),
    /// Anything else: whether it exists, and its block map if it is staged sparsely.
    Other { exists: bool, map: Option<BlockMap> },
}

impl Staged {
    /// Looks at the staging file at `path`, reading it whole when it has no block map and is
    /// smaller than `small` bytes. A file that cannot be read is left to the upload proper,
    /// which reports why.
    fn probe(path: &std::path::Path, small: u64) -> Self {
        let map = BlockMap::load(path);
        if map.is_none()
            && let Ok(mut file) = std::fs::File::open(path)
            && file.metadata().is_ok_and(|m| m.len() < small)
        {
            let mut data = Vec::new();
            if std::io::Read::read_to_end(&mut file, &mut data).is_ok() {
                return Self::Small(Bytes::from(data));
            }
        }
        Self::Other {
            exists: path.exists(),
            map,
        }
    }
}

/// One upload to record, owned for the blocking step.
struct Synced {
    id: i64,
    version: i64,
    key: Option<String>,
    etag: Option<String>,
    unstage: bool,
    staging: std::path::PathBuf,
}

/// Records a batch of uploads (`Catalog::mark_synced_batch`, one transaction) and keeps the
/// staging files of those unstaged as clean copies where `clean` allows (a whole file with its
/// ETag), else removes them. Per item: `None` if the inode is gone, else whether it was
/// unstaged.
fn record_synced(
    catalog: &crate::catalog::Catalog,
    items: &[Synced],
    clean: Option<&CleanCopies>,
) -> Result<Vec<Option<bool>>, GatewayError> {
    let batch: Vec<SyncedItem<'_>> = items
        .iter()
        .map(|d| SyncedItem {
            id: d.id,
            version: d.version,
            key: d.key.as_deref(),
            etag: d.etag.as_deref(),
            unstage: d.unstage,
        })
        .collect();
    let outcomes = catalog.mark_synced_batch(&batch, crate::clock::unix_secs())?;
    for (d, outcome) in items.iter().zip(&outcomes) {
        if *outcome != Some(true) {
            continue;
        }
        // A sparsely staged file holds only the parts that were written: not a copy. A file
        // created and never written (an empty CREATE) has no staging file to keep.
        let whole = d.staging.exists() && !BlockMap::path(&d.staging).exists();
        let kept = match (clean, &d.etag) {
            (Some(clean), Some(etag)) if whole => match clean.adopt(d.id, etag, &d.staging) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(inode = d.id, "{e}; removing it instead");
                    false
                }
            },
            _ => false,
        };
        if !kept {
            remove_staging(&d.staging);
        }
    }
    Ok(outcomes)
}
