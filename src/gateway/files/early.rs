//! Early uploads of large files (ADR 0011): once a large file is committed and has not been
//! written for a moment ([`QUIET`]), its multipart upload starts, parts going up in the
//! background while the upload delay runs; the upload that follows the delay sends what is
//! left and completes it. Without this a 1 GiB copy waits out the delay before its first byte
//! goes up.
//!
//! The upload goes straight to the file's key with the file's attributes of that moment (an
//! upload's metadata is fixed when it starts, and copying an object afterwards to change them
//! rewrites all of it in Garage). So it is speculative: any write, truncate or attribute change
//! afterwards makes it worthless, and it is aborted — at the write, or at completion, where the
//! file's version, key and size must still be those it started from. A writer pausing longer
//! than [`QUIET`] mid-file costs the parts sent meanwhile. Only the upload's id is durable (the
//! catalog's `share_uploads`): after a crash the file is uploaded whole as before, and the next
//! start aborts the upload the crash left open, so its parts do not linger in the bucket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::catalog::shares::InodeKind;
use crate::gateway::GatewayError;
use crate::gateway::files::blocks::BlockMap;
use crate::gateway::files::{FileId, Files, blocking, path};
use crate::store::objects::read_range;
use crate::store::upload::CheckedPart;

/// How long a committed large file must go unwritten before its upload starts early: a
/// client streaming a file (and committing as it goes, as kernel clients do) has written again
/// long before.
const QUIET: Duration = Duration::from_millis(100);
/// Parts of early uploads in flight at once, and of the upload completing one: more than a
/// plain upload's 4, which did no better against Garage (ADR 0011).
const PARTS_IN_FLIGHT: usize = 8;
/// How often the early uploader looks for work.
const TICK: Duration = Duration::from_millis(50);
/// How long before uploads left open by an earlier run are tried again, when the bucket
/// refused to abort them.
const LEFTOVER_RETRY: Duration = Duration::from_secs(60);

/// The early uploads of every large file.
#[derive(Debug, Default)]
pub(super) struct EarlyFiles {
    /// Large files written since they were last looked at: candidates.
    watch: HashSet<i64>,
    files: HashMap<i64, EarlyFile>,
}

#[derive(Debug)]
struct EarlyFile {
    key: String,
    upload_id: String,
    /// The inode's version and size the upload was started from.
    version: i64,
    size: u64,
    /// Parts in the upload, by index.
    sent: HashMap<u64, CheckedPart>,
    in_flight: HashSet<u64>,
    /// The final upload has taken over: no new parts.
    closing: bool,
}

impl Files {
    fn early(&self) -> std::sync::MutexGuard<'_, EarlyFiles> {
        // Each update is a single map change; a panic cannot leave it half done.
        self.early.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn early_enabled(&self) -> bool {
        self.bucket.can_resume_uploads()
    }

    /// Notes a write ending at `end` (called once its bytes are in the staging file): an
    /// early upload of the file is now stale, and a large file becomes a candidate.
    pub(super) fn early_note_write(&self, id: i64, end: u64) {
        if !self.early_enabled() {
            return;
        }
        let mut early = self.early();
        if early.files.contains_key(&id) {
            drop(early);
            self.early_discard(id);
            early = self.early();
        }
        if end >= self.bucket.multipart_threshold() {
            early.watch.insert(id);
        }
    }

    /// Forgets a file's early upload, aborting it in the bucket: the file changed other than
    /// by a write (truncate, restage), or it is gone.
    pub(super) fn early_discard(&self, id: i64) {
        let f = {
            let mut early = self.early();
            early.watch.remove(&id);
            early.files.remove(&id)
        };
        if let Some(f) = f {
            tracing::debug!(key = f.key, "early upload abandoned");
            self.counters
                .early_abandoned
                .fetch_add(1, Ordering::Relaxed);
            let (bucket, catalog) = (self.bucket.clone(), self.catalog.clone());
            tokio::spawn(async move {
                if abort_logged(&bucket, &f.key, &f.upload_id).await {
                    forget(catalog, f.upload_id).await;
                }
            });
        }
    }

    /// Aborts an early upload in the bucket and forgets it; one whose abort fails stays
    /// recorded, for the next start to abort.
    async fn early_abort(&self, key: &str, upload_id: &str) {
        if abort_logged(&self.bucket, key, upload_id).await {
            forget(self.catalog.clone(), upload_id.to_owned()).await;
        }
    }

    /// Aborts the multipart uploads an earlier run left open (a crash cut them short; none of
    /// this run's has started yet). Returns whether any is left because the bucket refused.
    async fn abort_leftover_uploads(&self) -> bool {
        let left = match self.blocking(|c| Ok(c.share_uploads()?)).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, "listing the uploads left open by the last run");
                return true;
            }
        };
        let mut refused = false;
        for (key, upload_id) in left {
            match self.bucket.abort_upload(&key, &upload_id).await {
                Ok(()) => {
                    tracing::info!(key, "aborted a multipart upload left open by the last run");
                    forget(self.catalog.clone(), upload_id).await;
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not abort a multipart upload left open by the last run; will try again");
                    refused = true;
                }
            }
        }
        refused
    }

    /// Starts and feeds early uploads until `stop` changes.
    pub(super) async fn run_early_uploads(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if !self.early_enabled() {
            return;
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(PARTS_IN_FLIGHT));
        let mut leftovers = Some(Instant::now());
        loop {
            if leftovers.is_some_and(|at| at <= Instant::now()) {
                leftovers = self
                    .abort_leftover_uploads()
                    .await
                    .then(|| Instant::now() + LEFTOVER_RETRY);
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = self.early_round(&slots).await {
                tracing::debug!(error = %e, "early upload round failed");
            }
        }
    }

    async fn early_round(
        self: &Arc<Self>,
        slots: &Arc<tokio::sync::Semaphore>,
    ) -> Result<(), GatewayError> {
        self.early_start_quiet().await?;
        let ps = self.bucket.part_size();
        let free = slots.available_permits();
        // Parts not yet sent, lowest file id and part first.
        let mut picks: Vec<(i64, u64)> = Vec::new();
        {
            let early = self.early();
            let mut ids: Vec<i64> = early.files.keys().copied().collect();
            ids.sort_unstable();
            'files: for id in ids {
                let Some(f) = early.files.get(&id).filter(|f| !f.closing) else {
                    continue;
                };
                for part in 0..f.size.div_ceil(ps) {
                    if picks.len() >= free {
                        break 'files;
                    }
                    if !f.sent.contains_key(&part) && !f.in_flight.contains(&part) {
                        picks.push((id, part));
                    }
                }
            }
        }
        for (id, part) in picks {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let (key, upload_id, size) = {
                let mut early = self.early();
                let Some(f) = early.files.get_mut(&id).filter(|f| !f.closing) else {
                    continue;
                };
                f.in_flight.insert(part);
                (f.key.clone(), f.upload_id.clone(), f.size)
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let staging = me.staging_path(id);
                let start = part * ps;
                let sent = me
                    .send_part(
                        &staging,
                        &key,
                        &upload_id,
                        part,
                        start,
                        ps.min(size - start),
                    )
                    .await;
                let mut early = me.early();
                // Discarded (and perhaps started again) meanwhile: not ours to record.
                if let Some(f) = early.files.get_mut(&id)
                    && f.upload_id == upload_id
                {
                    f.in_flight.remove(&part);
                    match sent {
                        Ok(p) => {
                            f.sent.insert(part, p);
                        }
                        Err(e) => tracing::debug!(key, part, error = %e, "early part failed"),
                    }
                }
            });
        }
        Ok(())
    }

    /// Starts the uploads of watched files that are committed and quiet, and still inside
    /// their upload delay (past it, the uploader has them).
    async fn early_start_quiet(&self) -> Result<(), GatewayError> {
        let due: Vec<i64> = {
            let watch: Vec<i64> = self.early().watch.iter().copied().collect();
            let live = self.live();
            watch
                .into_iter()
                .filter(|id| {
                    let quiet = live.changed.get(id).map(Instant::elapsed);
                    !live.uncommitted.contains(id)
                        && quiet.is_some_and(|q| q >= QUIET && q < self.config.upload_delay)
                })
                .collect()
        };
        for id in due {
            self.early().watch.remove(&id);
            let file = FileId(u64::try_from(id).unwrap_or(0));
            let staging = self.staging_path(id);
            // The row, its share and its staging file's length and block map, in one hop.
            let found = self
                .blocking(move |c| {
                    let (row, share) = blocking::node(c, file)?;
                    let on_disk = std::fs::metadata(&staging).map(|m| m.len()).ok();
                    let sparse = BlockMap::load(&staging).is_some();
                    Ok((row, share, on_disk, sparse))
                })
                .await;
            let (row, share, on_disk, sparse) = match found {
                Ok(found) => found,
                Err(GatewayError::Stale(_)) => continue,
                Err(e) => return Err(e),
            };
            if row.kind != InodeKind::File
                || !row.staged
                || !row.dirty()
                || row.size < self.bucket.multipart_threshold()
                || on_disk != Some(row.size)
                || sparse
            {
                continue;
            }
            let key = path::key(&share.bucket_prefix, &row.path)?;
            let upload_id = self
                .bucket
                .begin_checked(&key, &Self::object_meta(&row))
                .await?;
            let noted = {
                let (key, upload_id) = (key.clone(), upload_id.clone());
                self.blocking(move |c| Ok(c.note_share_upload(&key, &upload_id)?))
                    .await
            };
            if let Err(e) = noted {
                self.bucket.abort_resumable(&key, &upload_id).await;
                return Err(e);
            }
            tracing::debug!(key, size = row.size, "early upload started");
            let f = EarlyFile {
                key,
                upload_id,
                version: row.version,
                size: row.size,
                sent: HashMap::new(),
                in_flight: HashSet::new(),
                closing: false,
            };
            let stale = {
                let mut early = self.early();
                // A write since the row was read, or an upload already running: not this one.
                let moved = self.live().changed.get(&id).map(Instant::elapsed);
                if early.files.contains_key(&id) || moved.is_none_or(|q| q < QUIET) {
                    Some(f)
                } else {
                    early.files.insert(id, f);
                    None
                }
            };
            if let Some(f) = stale {
                self.early_abort(&f.key, &f.upload_id).await;
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `start` of a staging file and sends them as part `part`.
    async fn send_part(
        &self,
        staging: &std::path::Path,
        key: &str,
        upload_id: &str,
        part: u64,
        start: u64,
        len: u64,
    ) -> Result<CheckedPart, GatewayError> {
        let data = read_range(staging, start, start + len).await.map_err(|e| {
            GatewayError::Internal(format!("reading {}: {e}", staging.display()).into())
        })?;
        let number = u32::try_from(part + 1).unwrap_or(u32::MAX);
        Ok(self
            .bucket
            .send_checked_part(key, upload_id, number, data)
            .await?)
    }

    /// The final upload of a staged file at `key`: completes the file's early upload, sending
    /// the parts still missing. `None`: it has none, or one that no longer matches the file
    /// (aborted now), and the caller uploads the file as usual. Returns the object's ETag.
    pub(super) async fn early_finish(
        &self,
        row: &crate::catalog::shares::InodeRow,
        key: &str,
        staging: &std::path::Path,
    ) -> Result<Option<Option<String>>, GatewayError> {
        let id = row.id;
        match self.early().files.get_mut(&id) {
            None => return Ok(None),
            Some(f) => f.closing = true,
        }
        // Parts still going up are waited for: they are worth keeping.
        let f = loop {
            {
                let mut early = self.early();
                match early.files.get(&id) {
                    None => return Ok(None),
                    Some(f) if f.in_flight.is_empty() => break early.files.remove(&id),
                    Some(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Some(f) = f else {
            return Ok(None);
        };
        let on_disk = {
            let staging = staging.to_path_buf();
            self.blocking(move |_| Ok(std::fs::metadata(&staging).map(|m| m.len()).ok()))
                .await?
        };
        if f.version != row.version || f.key != key || on_disk != Some(f.size) {
            tracing::debug!(key, "early upload stale at completion");
            self.counters
                .early_abandoned
                .fetch_add(1, Ordering::Relaxed);
            self.early_abort(&f.key, &f.upload_id).await;
            return Ok(None);
        }
        let started = Instant::now();
        let ps = self.bucket.part_size();
        let parts = f.size.div_ceil(ps);
        let early = f.sent.len();
        let results: Vec<Result<CheckedPart, GatewayError>> = futures::stream::iter(0..parts)
            .map(|part| {
                let sent = f.sent.get(&part).cloned();
                let f = &f;
                async move {
                    if let Some(p) = sent {
                        return Ok(p);
                    }
                    let start = part * ps;
                    self.send_part(
                        staging,
                        key,
                        &f.upload_id,
                        part,
                        start,
                        ps.min(f.size - start),
                    )
                    .await
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .collect()
            .await;
        let sent = match results.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(sent) => sent,
            Err(e) => {
                self.early_abort(&f.key, &f.upload_id).await;
                return Err(e);
            }
        };
        match self.bucket.complete_checked(key, &f.upload_id, &sent).await {
            Ok(etag) => {
                forget(self.catalog.clone(), f.upload_id.clone()).await;
                tracing::debug!(key, parts, early, took = ?started.elapsed(), "early upload completed");
                self.counters
                    .early_completed
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(etag))
            }
            Err(e) => {
                self.early_abort(&f.key, &f.upload_id).await;
                Err(e.into())
            }
        }
    }
}

/// Aborts an upload; false (logged) when the bucket refused.
async fn abort_logged(bucket: &crate::store::Bucket, key: &str, upload_id: &str) -> bool {
    match bucket.abort_upload(key, upload_id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(key, error = %e, "aborting an early upload failed; the next start tries again");
            false
        }
    }
}

/// Drops a finished upload's record (on the blocking pool). A record left behind costs one
/// needless abort at the next start, so a failure here is only logged.
async fn forget(catalog: Arc<crate::catalog::Catalog>, upload_id: String) {
    let done = tokio::task::spawn_blocking(move || catalog.forget_share_upload(&upload_id)).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "forgetting a finished multipart upload"),
        Err(e) => tracing::warn!(error = %e, "forgetting a finished multipart upload"),
    }
}
