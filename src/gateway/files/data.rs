//! File data: a staging file per inode being written, ranged GETs for the rest
//! (docs/decisions/0005-file-data-path.md).
//!
//! A file's first write (or truncate) stages it: the catalog row is marked `staged` before any
//! byte is acknowledged, and the staging file `<staging_dir>/<inode id>` holds the whole file
//! from then on (an uploaded file is downloaded once to get there). UNSTABLE writes go to the
//! staging file without fsync; COMMIT (or a stable WRITE) fsyncs it, and that is the durability
//! point: after a crash the catalog still says `staged`, the file holds every committed byte, and
//! the changed write verifier makes clients resend anything uncommitted. Files that are not
//! staged are read from the bucket with ranged GETs and a read-ahead window per inode.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::catalog::shares::{InodeKind, InodeRow, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::blocks::BlockMap;
use crate::gateway::files::local::{self, LocalWrite, Written, io_err, staged_bytes};
use crate::gateway::files::traffic::Counted;
use crate::gateway::files::{
    Attr, Caller, FileId, Files, Stability, blocking, clean, effective, permits, stale,
};

/// How much a bucket read fetches at once: a client's sequential READs are then served from
/// memory for the rest of the window.
pub const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Read-ahead pieces fetched in parallel for a sequential stream.
const READ_AHEAD_PIECES: u64 = 4;
/// What a read that does not continue the last window fetches at least: random 4 KiB reads of
/// an uploaded file then cost a 128 KiB GET each, not a whole 8 MiB window (measured through
/// the kernel client: 8 MiB windows held random reads to 0.22x of nfs-ganesha on local disk).
/// A stream that starts here continues where this window ends and gets full read-ahead.
const RANDOM_READ_BYTES: u64 = 128 << 10;
/// Files whose last read-ahead window is kept in memory, at most (each up to 32 MiB).
const READ_AHEAD_WINDOWS: usize = 8;
/// Uploaded files of at least this many parts are staged sparsely (docs/decisions/0005).
const SPARSE_MIN_PARTS: u64 = 4;
/// The largest READ or WRITE we accept in one call (also what FSINFO advertises).
pub const MAX_IO_BYTES: u32 = 1 << 20;

/// The last window read from the bucket for one inode.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    etag: Option<String>,
    key: String,
    start: u64,
    data: Bytes,
}

/// How old an atime may get before a read advances it even if the file has not changed.
const RELATIME_MAX_AGE_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Linux's relatime: a read advances the atime when it is not newer than the mtime or ctime,
/// or older than a day.
fn relatime_due(row: &InodeRow, now_ns: i64) -> bool {
    row.atime_ns <= row.mtime_ns
        || row.atime_ns <= row.ctime_ns
        || now_ns.saturating_sub(row.atime_ns) > RELATIME_MAX_AGE_NS
}

/// Whether `caller` may write `len` bytes at `offset` of `row` in `share`. Pure, for the
/// write's blocking step.
fn check_write(
    share: &ShareRow,
    caller: &Caller,
    row: &InodeRow,
    offset: u64,
    len: usize,
) -> Result<(), GatewayError> {
    let who = effective(share, caller)?;
    if share.read_only {
        return Err(GatewayError::ReadOnly(format!("share {}", share.name)));
    }
    regular(row)?;
    if !permits(&who, row, 2) && who.uid != row.uid {
        return Err(GatewayError::PermissionDenied(format!(
            "write {}",
            row.path
        )));
    }
    offset
        .checked_add(len as u64)
        .filter(|e| *e <= i64::MAX as u64)
        .ok_or_else(|| GatewayError::OutOfRange(format!("write at {offset}")))?;
    Ok(())
}

/// Data operations apply to regular files only.
fn regular(row: &InodeRow) -> Result<(), GatewayError> {
    match row.kind {
        InodeKind::File => Ok(()),
        InodeKind::Dir => Err(GatewayError::IsDirectory(row.path.clone())),
        InodeKind::Symlink => Err(GatewayError::InvalidArgument(format!(
            "{} is a symlink",
            row.path
        ))),
        // A FIFO's or device's bytes live on the client that opens it; the object has none.
        InodeKind::Fifo | InodeKind::Socket | InodeKind::BlockDev | InodeKind::CharDev => Err(
            GatewayError::InvalidArgument(format!("{} is a special file", row.path)),
        ),
    }
}

impl Files {
    pub(crate) fn staging_path(&self, id: i64) -> PathBuf {
        self.config.staging_dir.join(id.to_string())
    }

    /// Forgets the in-memory state of a removed inode (read-ahead, flags, its early upload,
    /// its share of staging). Its staging files were removed by the blocking step that
    /// removed it from the catalog (`local::remove_staging`).
    pub(crate) fn drop_local(&self, id: i64) {
        self.readahead_map().remove(&id);
        self.forget_clean(id);
        let mut live = self.live();
        live.uncommitted.remove(&id);
        live.new_entries.remove(&id);
        live.changed.remove(&id);
        live.locks.remove(&id);
        drop(live);
        self.early_discard(id);
        self.account(id, 0);
    }

    fn readahead_map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Window>> {
        self.readahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn read(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> Result<(Bytes, bool, Attr), GatewayError> {
        let count = u64::from(count.min(MAX_IO_BYTES));
        // A staged file's row is read before its inode lock is taken; if its upload finished
        // in between (the staging file is then a clean copy, or gone), the read starts again
        // from the row rather than read a missing staging file as zeros.
        let (row, share, end, data) = loop {
            let (row, share, end, copied) = self.read_row(caller, id, offset, count).await?;
            if offset >= row.size || count == 0 {
                self.count(share.id, Counted::Call);
                return Ok((Bytes::new(), offset >= row.size, self.attr(&row)));
            }
            let data = if let Some(data) = copied {
                self.counters
                    .clean_read
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                data
            } else if row.staged {
                match self.read_staged_row(&row, offset, end).await? {
                    Some(data) => data,
                    None => continue,
                }
            } else if let Some(key) = &row.remote_key {
                self.read_remote(&row, key, offset, end).await?
            } else {
                // Created but never written or uploaded: a hole.
                Bytes::from(vec![0u8; usize::try_from(end - offset).unwrap_or(0)])
            };
            break (row, share, end, data);
        };
        self.count(share.id, Counted::Call);
        self.count(share.id, Counted::Read(data.len() as u64));
        let row = self.accessed(row).await?;
        Ok((data, end >= row.size, self.attr(&row)))
    }

    /// READ's first step: the inode, the checks and, for a file with a clean copy, its bytes.
    /// A hot read (the catalog free this instant, the clean copy's bytes in memory) is answered
    /// here without a hop to the blocking pool: under random reads the hop's two thread
    /// wake-ups cost more CPU than the read itself. Anything that would wait takes the hop.
    async fn read_row(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        count: u64,
    ) -> Result<(InodeRow, ShareRow, u64, Option<Bytes>), GatewayError> {
        if let Some(found) = self.catalog.try_inode_with_share(id.row_id()?)? {
            let (row, share) = found.ok_or_else(|| stale(id.0))?;
            let clean = self.clean.as_deref();
            let step = read_step(row, share, caller, clean, offset, count, true)?;
            // Only a hit (or nothing to read) is final; a miss may still be a copy on disk.
            if step.3.is_some() || offset >= step.2 {
                return Ok(step);
            }
        }
        let (clean, caller) = (self.clean.clone(), caller.clone());
        self.blocking(move |c| {
            let (row, share) = blocking::node(c, id)?;
            read_step(row, share, &caller, clean.as_deref(), offset, count, false)
        })
        .await
    }

    /// `offset..end` of a staged file under its inode lock; `None` when the file is no longer
    /// staged as `row` says (its upload was recorded, or it was written, meanwhile).
    async fn read_staged_row(
        &self,
        row: &InodeRow,
        offset: u64,
        end: u64,
    ) -> Result<Option<Bytes>, GatewayError> {
        let lock = self.inode_lock(row.id);
        let _guard = lock.lock().await;
        let path = self.staging_path(row.id);
        // A hot read (the catalog free this instant, a whole staging file, its bytes in the
        // page cache) is answered here, as `read_row` answers one of a clean copy: under
        // random reads of a file still staged, the hop's two thread wake-ups cost more CPU
        // than the read. The inode lock keeps writes out meanwhile.
        if let Some(Some(now)) = self.catalog.try_inode(row.id)? {
            if !now.staged || now.version != row.version {
                return Ok(None);
            }
            let whole = now.remote_key.is_none() || !BlockMap::path(&path).exists();
            if whole && let Some(data) = clean::read_copy_cached(&path, offset, end) {
                return Ok(Some(data));
            }
        }
        // A sparsely staged file (one with a block map) reads block by block; any other reads
        // its staging file in the same hop.
        let (id, version) = (row.id, row.version);
        let key = row.remote_key.clone();
        let local = self
            .blocking(move |c| {
                let now = blocking::current(c, id)?;
                if !now.staged || now.version != version {
                    return Ok(None);
                }
                Ok(Some(
                    match key.and_then(|k| BlockMap::load(&path).map(|m| (m, k))) {
                        Some(sparse) => Err(sparse),
                        None => Ok(local::read_staged(&path, offset, end)?),
                    },
                ))
            })
            .await?;
        Ok(match local {
            None => None,
            Some(Ok(data)) => Some(data),
            Some(Err((map, key))) => Some(self.read_sparse(row, &map, &key, offset, end).await?),
        })
    }

    /// Advances a file's atime after a read, with Linux's relatime rules: only when the atime
    /// is not newer than the mtime or ctime, or is a day old, so a file read over and over
    /// costs one catalog write a day, not one per READ, while "read since it last changed"
    /// stays answerable (mail readers, tmpwatch).
    async fn accessed(&self, mut row: InodeRow) -> Result<InodeRow, GatewayError> {
        let now = crate::clock::unix_nanos();
        if relatime_due(&row, now) {
            let id = row.id;
            self.blocking(move |c| Ok(c.set_atime(id, now)?)).await?;
            row.atime_ns = now;
        }
        Ok(row)
    }

    /// Reads `offset..end` of inode `id`'s staging file (one hop).
    async fn read_local(&self, id: i64, offset: u64, end: u64) -> Result<Bytes, GatewayError> {
        let path = self.staging_path(id);
        self.blocking(move |_| local::read_staged(&path, offset, end))
            .await
    }

    /// A read of a sparsely staged file: present blocks from the staging file, the rest from
    /// the object it was staged from.
    async fn read_sparse(
        &self,
        row: &InodeRow,
        map: &BlockMap,
        key: &str,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, GatewayError> {
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for b in map.blocks_of(offset, end) {
            let from = offset.max(b * map.block);
            let to = end.min((b + 1).saturating_mul(map.block));
            let piece = if map.is_present(b) {
                self.read_local(row.id, from, to).await?
            } else {
                self.read_remote(row, key, from, to).await?
            };
            out.extend_from_slice(&piece);
        }
        Ok(Bytes::from(out))
    }

    /// Copies the absent blocks of a sparsely staged file that `offset..end` touches (all of
    /// them with `None`) from the bucket into the staging file. Caller holds the inode lock.
    pub(crate) async fn fill_blocks(
        &self,
        row: &InodeRow,
        range: Option<(u64, u64)>,
    ) -> Result<(), GatewayError> {
        let path = self.staging_path(row.id);
        let Some(key) = &row.remote_key else {
            return Ok(());
        };
        let map = {
            let path = path.clone();
            self.blocking(move |_| Ok(BlockMap::load(&path))).await?
        };
        let Some(mut map) = map else {
            return Ok(());
        };
        let wanted: Vec<u64> = match range {
            Some((offset, end)) => map
                .blocks_of(offset, end)
                .filter(|b| !map.is_present(*b))
                .collect(),
            None => map.absent().collect(),
        };
        if wanted.is_empty() && range.is_some() {
            return Ok(());
        }
        let file = {
            let path = path.clone();
            Arc::new(
                self.blocking(move |_| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(format!("opening {}", path.display())))
                })
                .await?,
            )
        };
        for b in wanted {
            let r = map.range(b);
            let data = self.bucket.read_object(key, r.clone()).await?;
            self.counters
                .downloaded
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let (file, path) = (file.clone(), path.clone());
            self.blocking(move |_| {
                file.write_all_at(&data, r.start)
                    .map_err(io_err(format!("writing {}", path.display())))
            })
            .await?;
            map.set_present(b);
        }
        let bytes = self
            .blocking(move |_| {
                if range.is_none() {
                    // Fully local now: the file is an ordinary staging file.
                    file.sync_all()
                        .map_err(io_err(format!("syncing {}", path.display())))?;
                    BlockMap::remove(&path);
                } else {
                    map.save(&path, false).map_err(io_err(format!(
                        "writing the block map of {}",
                        path.display()
                    )))?;
                }
                Ok(staged_bytes(&path))
            })
            .await?;
        self.account(row.id, bytes);
        Ok(())
    }

    async fn read_remote(
        &self,
        row: &InodeRow,
        key: &str,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, GatewayError> {
        if let Some(w) = self.readahead_map().get(&row.id)
            && w.key == key
            && w.etag == row.etag
            && offset >= w.start
            && end <= w.start + w.data.len() as u64
        {
            let from = usize::try_from(offset - w.start).unwrap_or(0);
            let to = usize::try_from(end - w.start).unwrap_or(0);
            return Ok(w.data.slice(from..to));
        }
        // A read that continues where the last window ended is a sequential stream: fetch
        // several read-ahead pieces at once, in parallel, so the stream is not bound by one
        // GET's latency at a time (a 1 GiB file is 128 pieces).
        let sequential = self
            .readahead_map()
            .get(&row.id)
            .is_some_and(|w| w.key == key && w.start + w.data.len() as u64 == offset);
        let (pieces, reach) = if sequential {
            (
                READ_AHEAD_PIECES,
                READ_AHEAD_BYTES.saturating_mul(READ_AHEAD_PIECES),
            )
        } else {
            (1, RANDOM_READ_BYTES)
        };
        let window_end = offset.saturating_add(reach.max(end - offset)).min(row.size);
        let ranges: Vec<std::ops::Range<u64>> = (0..pieces)
            .map(|i| offset.saturating_add(i * READ_AHEAD_BYTES))
            .take_while(|start| *start < window_end)
            .map(|start| {
                let stop = if pieces == 1 {
                    window_end
                } else {
                    start.saturating_add(READ_AHEAD_BYTES).min(window_end)
                };
                start..stop
            })
            .collect();
        let parts = futures::future::try_join_all(
            ranges.into_iter().map(|r| self.bucket.read_object(key, r)),
        )
        .await?;
        let data = if parts.len() == 1 {
            parts.into_iter().next().unwrap_or_default()
        } else {
            let mut joined = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                joined.extend_from_slice(p);
            }
            Bytes::from(joined)
        };
        self.counters
            .downloaded
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if (data.len() as u64) < end - offset {
            return Err(GatewayError::Unavailable(
                format!(
                    "{key}: the bucket returned {} bytes where {} were expected; the object \
                     changed under the share (run `tidegate share refresh`)",
                    data.len(),
                    end - offset
                )
                .into(),
            ));
        }
        let piece = data.slice(0..usize::try_from(end - offset).unwrap_or(0));
        let mut windows = self.readahead_map();
        if windows.len() >= READ_AHEAD_WINDOWS && !windows.contains_key(&row.id) {
            // Bounded memory: drop some other file's window (any will do; it is only a hint).
            if let Some(other) = windows.keys().next().copied() {
                windows.remove(&other);
            }
        }
        windows.insert(
            row.id,
            Window {
                etag: row.etag.clone(),
                key: key.to_owned(),
                start: offset,
                data,
            },
        );
        Ok(piece)
    }

    /// Whether staging `row` would fetch only the parts written (docs/decisions/0005).
    fn stages_sparsely(&self, row: &InodeRow) -> bool {
        row.remote_key.is_some()
            && self.bucket.can_copy_parts()
            && row.size >= SPARSE_MIN_PARTS * self.bucket.part_size()
    }

    /// Makes `row` staged, the catalog marked once the staging file is complete. A large
    /// uploaded file is staged sparsely (a block map; its blocks come down only when written,
    /// and unchanged ones are copied server-side at upload) where the bucket can copy parts;
    /// anything else comes down whole. Returns the row as now stored. Caller holds the inode
    /// lock.
    pub(crate) async fn stage(&self, row: &InodeRow) -> Result<InodeRow, GatewayError> {
        if row.staged {
            return Ok(row.clone());
        }
        self.early_discard(row.id);
        let path = self.staging_path(row.id);
        let mut row = row.clone();
        row.staged = true;
        let sparse = self.stages_sparsely(&row);
        if let Some(clean) = self.clean.clone() {
            // A clean copy of the object becomes the staging file instead of a download. A
            // file that stages sparsely does not use it: its upload copies unchanged parts
            // server-side only when the staging file holds just the written ones.
            let (stored, path) = (row.clone(), path.clone());
            let reused = self
                .blocking(move |c| {
                    let etag = stored.etag.as_deref();
                    let Some(copy) = clean.take(stored.id, etag) else {
                        return Ok(None);
                    };
                    if sparse {
                        let _ = std::fs::remove_file(&copy);
                        return Ok(None);
                    }
                    std::fs::rename(&copy, &path)
                        .map_err(io_err(format!("staging {}", copy.display())))?;
                    // Uploaded copies were not always synced (an uncommitted file goes up
                    // after a while anyway); the catalog is about to say this file holds it.
                    std::fs::File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err(format!("syncing {}", path.display())))?;
                    c.save_inode(&stored)?;
                    Ok(Some(staged_bytes(&path)))
                })
                .await?;
            if let Some(bytes) = reused {
                self.account(row.id, bytes);
                self.readahead_map().remove(&row.id);
                return Ok(row);
            }
        }
        if row.remote_key.is_none() || row.size == 0 {
            // Nothing to fetch: the staging file starts as a hole of the recorded size. Neither
            // it nor the catalog is synced here; no byte of it is acknowledged as durable until
            // a COMMIT, which syncs the file, its directory entry and the catalog together (a
            // small file then costs one round of fsyncs, not three).
            let (stored, spares) = (row.clone(), self.spares.clone());
            let bytes = self
                .blocking(move |c| {
                    local::create_hole(&path, stored.size, spares.as_deref())?;
                    c.save_inode_unsynced(&stored)?;
                    Ok(staged_bytes(&path))
                })
                .await?;
            self.live().new_entries.insert(row.id);
            self.account(row.id, bytes);
            self.readahead_map().remove(&row.id);
            return Ok(row);
        }
        let tmp = path.with_extension("part");
        let file = {
            let (tmp, path) = (tmp.clone(), path.clone());
            let (size, part) = (row.size, self.bucket.part_size());
            self.blocking(move |_| {
                let file = std::fs::File::create(&tmp)
                    .map_err(io_err(format!("creating {}", tmp.display())))?;
                if sparse {
                    BlockMap::new(size, part)
                        .save(&path, true)
                        .map_err(io_err(format!(
                            "writing the block map of {}",
                            path.display()
                        )))?;
                }
                Ok(Arc::new(file))
            })
            .await?
        };
        if !sparse && let Some(key) = &row.remote_key {
            // The whole object comes down once; later writes are local.
            let mut at = 0u64;
            while at < row.size {
                let end = at.saturating_add(READ_AHEAD_BYTES).min(row.size);
                let piece = self.bucket.read_object(key, at..end).await?;
                if piece.is_empty() {
                    break;
                }
                self.counters
                    .downloaded
                    .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let len = piece.len() as u64;
                let (file, tmp) = (file.clone(), tmp.clone());
                self.blocking(move |_| {
                    file.write_all_at(&piece, at)
                        .map_err(io_err(format!("writing {}", tmp.display())))
                })
                .await?;
                at += len;
            }
        }
        let stored = row.clone();
        let bytes = self
            .blocking(move |c| {
                file.set_len(stored.size)
                    .map_err(io_err(format!("sizing {}", tmp.display())))?;
                file.sync_all()
                    .map_err(io_err(format!("syncing {}", tmp.display())))?;
                drop(file);
                std::fs::rename(&tmp, &path)
                    .map_err(io_err(format!("renaming {}", tmp.display())))?;
                c.save_inode(&stored)?;
                Ok(staged_bytes(&path))
            })
            .await?;
        self.account(row.id, bytes);
        self.readahead_map().remove(&row.id);
        Ok(row)
    }

    pub async fn write(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> Result<(Stability, Attr), GatewayError> {
        let (committed, attr) = self
            .write_staged(caller, id, offset, data, stability)
            .await?;
        // Run after the inode lock is released: the upload takes it.
        if committed != Stability::Unstable && self.config.commit_uploads {
            self.upload_committed(id).await?;
        }
        Ok((committed, attr))
    }

    async fn write_staged(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        data: &[u8],
        stability: Stability,
    ) -> Result<(Stability, Attr), GatewayError> {
        let row_id = id.row_id()?;
        let stable = stability != Stability::Unstable;
        // Room for the bytes this write adds to staging, waited for before the inode lock:
        // the uploads that make room take inode locks themselves.
        self.staging_room(row_id, data.len() as u64).await;
        let lock = self.inode_lock(row_id);
        let guard = lock.lock().await;
        // One hop in the usual case: the inode and its share read, the checks, the file staged
        // if it is new, the bytes written and the catalog updated (a small new file journaled
        // and synced there; any other stable write synced after, as a COMMIT is).
        let (written, share) = self
            .write_local(id, offset, data.to_vec(), stable, Some(caller.clone()))
            .await?;
        self.count(share.id, Counted::Call);
        let end = offset.saturating_add(data.len() as u64);
        let (row, staged_now, journaled, bytes) = match written {
            Written::Done {
                row,
                staged_now,
                journaled,
                bytes,
            } => (row, staged_now, journaled, bytes),
            Written::NeedsBucket { row, data } => {
                // Part of the file must come from the bucket first: room for that download
                // too, again waited for without the inode lock.
                drop(guard);
                let fetch = if self.stages_sparsely(&row) {
                    self.bucket.part_size()
                } else {
                    row.size
                };
                self.staging_room(row.id, fetch).await;
                let _guard = lock.lock().await;
                // Re-read: the file may have changed while the lock was free.
                let row_id = row.id;
                let row = self.blocking(move |c| blocking::current(c, row_id)).await?;
                let row = self.stage(&row).await?;
                self.fill_blocks(&row, Some((offset, end))).await?;
                match self.write_local(id, offset, data, stable, None).await?.0 {
                    Written::Done { row, bytes, .. } => (row, false, false, bytes),
                    Written::NeedsBucket { row, .. } => {
                        return Err(GatewayError::Internal(
                            format!("{}: staged, yet blocks are missing", row.path).into(),
                        ));
                    }
                }
            }
        };
        if stable && !journaled {
            let new_entry = staged_now || self.live().new_entries.contains(&row.id);
            self.sync_written(row.id, new_entry, |_| Ok(((), true)))
                .await?;
        }
        if staged_now {
            self.early_discard(row.id);
            self.readahead_map().remove(&row.id);
        }
        {
            let mut live = self.live();
            if stable {
                // Its directory entry was synced with it, or it is in the journal.
                live.new_entries.remove(&row.id);
            } else {
                if staged_now {
                    live.new_entries.insert(row.id);
                }
                live.uncommitted.insert(row.id);
            }
        }
        self.early_note_write(row.id, end);
        self.touched(row.id);
        self.account(row.id, bytes);
        self.count(share.id, Counted::Write(end - offset));
        let committed = if stable {
            Stability::FileSync
        } else {
            Stability::Unstable
        };
        Ok((committed, self.attr(&row)))
    }

    /// Runs one [`LocalWrite`] on the blocking pool, after checking that `check` may write
    /// when given; returns what it did and the file's share. Caller holds the inode lock.
    async fn write_local(
        &self,
        id: FileId,
        offset: u64,
        data: Vec<u8>,
        stable: bool,
        check: Option<Caller>,
    ) -> Result<(Written, ShareRow), GatewayError> {
        let row_id = id.row_id()?;
        let path = self.staging_path(row_id);
        let (staging_dir, spares) = (self.config.staging_dir.clone(), self.spares.clone());
        self.blocking(move |c| {
            let (row, share) = blocking::node(c, id)?;
            if let Some(caller) = &check {
                check_write(&share, caller, &row, offset, data.len())?;
            }
            let written = local::write(
                c,
                LocalWrite {
                    id: row.id,
                    path: &path,
                    offset,
                    data,
                    stable,
                    staging_dir: &staging_dir,
                    spares: spares.as_deref(),
                },
            )?;
            Ok((written, share))
        })
        .await
    }

    /// COMMIT / fsync: every byte written to the file so far is on local disk when this
    /// returns. The file is uploaded once it has been idle for the upload delay.
    pub async fn commit(&self, caller: &Caller, id: FileId) -> Result<Attr, GatewayError> {
        let row_id = id.row_id()?;
        let pending = {
            let live = self.live();
            live.uncommitted.contains(&row_id) || live.new_entries.contains(&row_id)
        };
        // Nothing written since the last COMMIT (a kernel client commits on every close and
        // fsync): everything is already on disk. After a restart nothing is pending either;
        // the new write verifier makes clients resend whatever the old run had not synced.
        let (row, share) = if pending {
            self.commit_pending(caller, id).await?
        } else {
            let (row, share) = self.node(id).await?;
            effective(&share, caller)?;
            (row, share)
        };
        self.live().uncommitted.remove(&row.id);
        self.wake_if_due(row.id);
        if self.config.commit_uploads && row.kind == InodeKind::File {
            self.upload_committed(id).await?;
        }
        self.count(share.id, Counted::Call);
        self.count(share.id, Counted::Commit);
        Ok(self.attr(&row))
    }

    /// The syncs of a COMMIT with writes pending: a small new file journaled (one hop, one WAL
    /// sync), anything else through [`Self::sync_written`].
    async fn commit_pending(
        &self,
        caller: &Caller,
        id: FileId,
    ) -> Result<(InodeRow, ShareRow), GatewayError> {
        let row_id = id.row_id()?;
        let lock = self.inode_lock(row_id);
        let _guard = lock.lock().await;
        let new_entry = self.live().new_entries.remove(&row_id);
        if new_entry {
            // A small new file goes into the catalog's journal instead: one hop, one WAL sync.
            let (path, caller) = (self.staging_path(row_id), caller.clone());
            let journaled = self
                .blocking(move |c| {
                    let (row, share) = blocking::node(c, id)?;
                    effective(&share, &caller)?;
                    if !local::journal_commit(c, &row, &path)? {
                        return Ok(None);
                    }
                    c.durable()?;
                    Ok(Some((row, share)))
                })
                .await;
            match journaled {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(e) => {
                    self.live().new_entries.insert(row_id);
                    return Err(e);
                }
            }
        }
        let caller = caller.clone();
        self.sync_written(row_id, new_entry, move |c| {
            let (row, share) = blocking::node(c, id)?;
            effective(&share, &caller)?;
            let sync = row.kind == InodeKind::File && row.staged;
            Ok(((row, share), sync))
        })
        .await
    }

    /// Makes what was written to inode `id` durable: its staging file, its directory entry
    /// (when `new_entry`) and the catalog's WAL are synced at the same time on three blocking
    /// threads, so this costs one fsync latency, not three; the directory and the WAL syncs
    /// are group commits shared with concurrent operations. `first` runs in the file's hop,
    /// before the file's sync, and says whether the file is to be synced (a COMMIT reads and
    /// checks the inode there, not in a hop of its own before). For COMMIT and for a stable
    /// WRITE that the small-file journal does not cover.
    async fn sync_written<T: Send + 'static>(
        &self,
        id: i64,
        new_entry: bool,
        first: impl FnOnce(&crate::catalog::Catalog) -> Result<(T, bool), GatewayError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let path = self.staging_path(id);
        let file = self.blocking(move |c| {
            let (out, sync) = first(c)?;
            if sync {
                local::sync_staged(&path)?;
            }
            Ok(out)
        });
        let dir = async {
            if new_entry {
                self.sync_staging_dir().await
            } else {
                Ok(())
            }
        };
        // The size and version recorded by unsynced WRITEs reach the disk too.
        let catalog = self.blocking(move |c| Ok(c.sync_inode(id)?));
        let (file, dir, catalog) = tokio::join!(file, dir, catalog);
        if dir.is_err() {
            // Its name is still not known to be on disk: the next COMMIT syncs it again.
            self.live().new_entries.insert(id);
        }
        let out = file?;
        dir?;
        catalog?;
        Ok(out)
    }

    /// Wakes the uploader if inode `id` is due for upload now (no upload delay, a writer
    /// waiting for staging room, or a file idle for the delay already). Otherwise the uploader's
    /// own timer, which never sleeps past a tick, takes it once its delay has passed: a wake at
    /// every COMMIT made it list every dirty inode once per small file, a fifth of the
    /// gateway's CPU while a burst of small files was written.
    pub(crate) fn wake_if_due(&self, id: i64) {
        let delay = self.config.upload_delay;
        let due = {
            let live = self.live();
            delay.is_zero()
                || live.writers_waiting > 0
                || live.changed.get(&id).is_none_or(|at| at.elapsed() >= delay)
        };
        if due {
            self.wake.notify_one();
        }
    }

    /// Sets a file's size: shrinking drops bytes, growing adds a hole that reads as zeros.
    pub(crate) async fn truncate(&self, row: &InodeRow, size: u64) -> Result<(), GatewayError> {
        if size == row.size {
            return Ok(());
        }
        let lock = self.inode_lock(row.id);
        let _guard = lock.lock().await;
        let id = row.id;
        let row = self.blocking(move |c| blocking::current(c, id)).await?;
        // An upload started early holds the old size.
        self.early_discard(row.id);
        let emptied = size == 0;
        let row = if emptied {
            // Nothing of the old content survives: no need to fetch it.
            let mut empty = row;
            empty.size = 0;
            empty.staged = true;
            empty
        } else {
            let row = self.stage(&row).await?;
            // A sparse file's absent blocks must stay inside the remote object: fill them all.
            self.fill_blocks(&row, None).await?;
            row
        };
        let path = self.staging_path(row.id);
        let new_entry = self.live().new_entries.remove(&row.id);
        let staging_dir = self.config.staging_dir.clone();
        let (row, bytes) = self
            .blocking(move |c| {
                let mut row = row;
                // A journaled file's entry may not be on disk either; its journal row goes
                // once the truncated file and the entry are (catalog/journal.rs).
                let journaled = c.journaled(row.id)?;
                if emptied {
                    std::fs::File::create(&path)
                        .map_err(io_err(format!("creating {}", path.display())))?;
                    BlockMap::remove(&path);
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                file.set_len(size)
                    .map_err(io_err(format!("sizing {}", path.display())))?;
                file.sync_all()
                    .map_err(io_err(format!("syncing {}", path.display())))?;
                if new_entry || journaled {
                    local::sync_dir(&staging_dir)?;
                }
                if journaled {
                    c.unjournal_unsynced(row.id)?;
                }
                let now = crate::clock::unix_nanos();
                row.size = size;
                row.mtime_ns = now;
                row.ctime_ns = now;
                row.version += 1;
                c.save_inode(&row)?;
                Ok((row, staged_bytes(&path)))
            })
            .await?;
        self.readahead_map().remove(&row.id);
        self.touched(row.id);
        self.account(row.id, bytes);
        Ok(())
    }
}

/// READ's checks on the inode and, for a file with a clean copy, the copy's bytes; `hot` reads
/// the copy only if its bytes are in memory (see [`Files::read`]).
fn read_step(
    row: InodeRow,
    share: ShareRow,
    caller: &Caller,
    clean: Option<&clean::CleanCopies>,
    offset: u64,
    count: u64,
    hot: bool,
) -> Result<(InodeRow, ShareRow, u64, Option<Bytes>), GatewayError> {
    let who = effective(&share, caller)?;
    regular(&row)?;
    if !permits(&who, &row, 4) && who.uid != row.uid {
        return Err(GatewayError::PermissionDenied(format!("read {}", row.path)));
    }
    let end = offset.saturating_add(count).min(row.size);
    let copied = match clean {
        Some(clean) if !row.staged && offset < end => {
            clean.hit(row.id, row.etag.as_deref()).and_then(|hit| {
                let data = if hot {
                    clean::read_copy_cached(&hit.path, offset, end)?
                } else {
                    clean::read_copy(&hit.path, offset, end).ok()?
                };
                clean.still(&hit).then_some(data)
            })
        }
        _ => None,
    };
    Ok((row, share, end, copied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::inodes::InodeKind;

    #[test]
    fn relatime_advances_stale_atimes_only() {
        const DAY: i64 = RELATIME_MAX_AGE_NS;
        let now = 10 * DAY;
        // (atime, mtime, ctime, due)
        let cases = [
            (now - 10, now - 20, now - 20, false),
            (now - 20, now - 10, now - 30, true),
            (now - 20, now - 30, now - 10, true),
            (now - 20, now - 20, now - 30, true),
            (now - DAY - 1, now - 2 * DAY, now - 2 * DAY, true),
            (now - DAY + 1, now - 2 * DAY, now - 2 * DAY, false),
        ];
        for (atime, mtime, ctime, due) in cases {
            let mut row = InodeRow::new(1, None, "f", InodeKind::File, (0o644, 0, 0), mtime);
            row.ctime_ns = ctime;
            row.atime_ns = atime;
            assert_eq!(relatime_due(&row, now), due, "{atime} {mtime} {ctime}");
        }
    }
}
