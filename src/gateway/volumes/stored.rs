//! A stored volume: the local file or block device is the source of truth; changed chunks are
//! shipped to the bucket in the background (docs/design.md §4).
//!
//! Invariants:
//! - A chunk is recorded dirty in the catalog *before* its first local write since its last
//!   upload, so after a crash every chunk that may differ from the bucket is known.
//! - A chunk leaves the dirty set only if no write to it completed after the shipper read it:
//!   writes bump the chunk's generation *after* their local write, and the shipper clears the
//!   chunk only if the generation it read under is still current.
//! - A restored volume downloads its chunks in the background; a read or a write of a chunk not
//!   yet downloaded downloads it first (under one lock, so a download never lands over a write).
//! - The initial upload of `--preserve-existing` data walks the volume once, with a cursor in
//!   the catalog, uploading every chunk whose content differs from the bucket's map.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeRow;
use crate::gateway::GatewayError;
use crate::gateway::block::{BlockDevice, BoxFuture, DeviceIdentity};
use crate::gateway::volumes::snapshot::{Capture, Stage};
use crate::gateway::volumes::{byte_range, segments, write_range};
use crate::store::{ChunkId, ChunkRef, ChunkStore};

/// Chunks uploaded between two saves of the initial-upload cursor.
const CURSOR_EVERY: u64 = 64;

pub struct StoredVolume {
    row: VolumeRow,
    identity: DeviceIdentity,
    file: Arc<File>,
    catalog: Arc<Catalog>,
    chunks: Arc<ChunkStore>,
    state: Mutex<State>,
    /// Serialises downloads of not-yet-local chunks with the I/O that needs them.
    download: tokio::sync::Mutex<()>,
    /// Writes hold it shared; a snapshot's cut exclusively (as for cached volumes).
    gate: tokio::sync::RwLock<()>,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Dirty chunks and the generation of the last write that completed on each.
    dirty: BTreeMap<u64, u64>,
    next_generation: u64,
    /// Chunks still to download (restores).
    pending: BTreeSet<u64>,
    pending_total: u64,
    /// Initial upload: next chunk to compare with the bucket, if still running.
    scan_from: Option<u64>,
    uploaded_chunks: u64,
    upload_errors: u64,
}

/// What `status` shows for a stored volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredProgress {
    pub dirty_chunks: u64,
    pub download_pending: u64,
    pub download_total: u64,
    /// Initial upload position and total, while it runs.
    pub initial_upload: Option<(u64, u64)>,
    pub uploaded_chunks: u64,
    pub upload_errors: u64,
}

fn io_err(what: &str, e: std::io::Error) -> GatewayError {
    GatewayError::Internal(format!("stored volume {what}: {e}").into())
}

impl std::fmt::Debug for StoredVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredVolume")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

/// Opens (creating if needed) the local file of a new stored volume. Without `preserve`, an
/// existing regular file is emptied; an existing block device must be preserved explicitly.
pub fn prepare_local(
    path: &std::path::Path,
    size: Option<u64>,
    preserve: bool,
) -> Result<u64, GatewayError> {
    let exists = path.exists();
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| GatewayError::InvalidArgument(format!("{}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| io_err("metadata", e))?;
    let is_file = meta.file_type().is_file();
    let current = if is_file {
        meta.len()
    } else {
        use std::io::Seek;
        (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| io_err("sizing the device", e))?
    };
    let size = match (size, preserve) {
        (Some(s), _) => s,
        (None, true) if current > 0 => current - current % super::SIZE_GRANULARITY,
        (None, _) => {
            return Err(GatewayError::InvalidArgument(format!(
                "give --size for a new stored volume on {}",
                path.display()
            )));
        }
    };
    if exists && !is_file && !preserve {
        return Err(GatewayError::InvalidArgument(format!(
            "{} is a device: pass --preserve-existing to keep and upload its data (tidegate \
             does not wipe devices)",
            path.display()
        )));
    }
    if is_file {
        if !preserve {
            file.set_len(0)
                .map_err(|e| io_err("emptying the file", e))?;
        }
        if preserve && current > size {
            return Err(GatewayError::InvalidArgument(format!(
                "{} holds {current} bytes, more than the volume size {size}",
                path.display()
            )));
        }
        file.set_len(size)
            .map_err(|e| io_err("sizing the file", e))?;
    } else if current < size {
        return Err(GatewayError::InvalidArgument(format!(
            "{} holds only {current} bytes",
            path.display()
        )));
    }
    file.sync_all().map_err(|e| io_err("syncing", e))?;
    Ok(size)
}

impl StoredVolume {
    pub fn open(
        row: VolumeRow,
        catalog: Arc<Catalog>,
        chunks: Arc<ChunkStore>,
    ) -> Result<Self, GatewayError> {
        let path = row.local_path.clone().ok_or_else(|| {
            GatewayError::InvalidArgument(format!("stored volume {} has no local path", row.name))
        })?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| GatewayError::Unavailable(format!("{path}: {e}").into()))?;
        let mut state = State::default();
        for c in catalog.stored_dirty(row.id)? {
            state.dirty.insert(c, 0);
        }
        state.next_generation = 1;
        state.pending = catalog.stored_pending(row.id)?.into_iter().collect();
        state.pending_total = state.pending.len() as u64;
        state.scan_from = catalog.stored_scan_from(row.id)?;
        Ok(Self {
            identity: super::identity(&row),
            row,
            file: Arc::new(file),
            catalog,
            chunks,
            state: Mutex::new(state),
            download: tokio::sync::Mutex::new(()),
            gate: tokio::sync::RwLock::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn row(&self) -> &VolumeRow {
        &self.row
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn progress(&self) -> StoredProgress {
        let s = self.state();
        StoredProgress {
            dirty_chunks: s.dirty.len() as u64,
            download_pending: s.pending.len() as u64,
            download_total: s.pending_total,
            initial_upload: s.scan_from.map(|f| (f, self.chunk_count())),
            uploaded_chunks: s.uploaded_chunks,
            upload_errors: s.upload_errors,
        }
    }

    fn chunk_count(&self) -> u64 {
        self.row.size_bytes.div_ceil(self.row.chunk_size)
    }

    async fn pread(&self, offset: u64, len: usize) -> Result<Vec<u8>, GatewayError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map(|()| buf)
        })
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?
        .map_err(|e| io_err("read", e))
    }

    async fn pwrite(&self, offset: u64, data: Bytes) -> Result<(), GatewayError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))?
            .map_err(|e| io_err("write", e))
    }

    async fn sync(&self) -> Result<(), GatewayError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))?
            .map_err(|e| io_err("sync", e))
    }

    /// Downloads `chunk` to the local disk if a restore has not brought it yet.
    async fn ensure_local(&self, chunk: u64) -> Result<(), GatewayError> {
        if !self.state().pending.contains(&chunk) {
            return Ok(());
        }
        let _one = self.download.lock().await;
        if !self.state().pending.contains(&chunk) {
            return Ok(());
        }
        if let Some(id) = self.catalog.chunk(self.row.id, chunk)? {
            let data = self
                .chunks
                .get(ChunkId(id))
                .await
                .map_err(GatewayError::from)?;
            if data.len() as u64 != self.row.chunk_size {
                return Err(GatewayError::Corrupt(
                    format!("chunk {} has {} bytes", ChunkId(id), data.len()).into(),
                ));
            }
            self.pwrite(chunk * self.row.chunk_size, data).await?;
            self.sync().await?;
        }
        self.catalog.clear_stored_pending(self.row.id, chunk)?;
        self.state().pending.remove(&chunk);
        Ok(())
    }

    /// Ships dirty chunks, runs the initial upload and the background download until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let worked = match self.step().await {
                Ok(worked) => worked,
                Err(e) => {
                    self.state().upload_errors += 1;
                    tracing::warn!(volume = %self.row.name, error = %e, "stored volume upload");
                    false
                }
            };
            if *stop.borrow() {
                return;
            }
            if !worked {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// One unit of background work; `Ok(false)` when there was nothing to do.
    async fn step(&self) -> Result<bool, GatewayError> {
        let dirty = self.state().dirty.iter().next().map(|(&c, &g)| (c, g));
        if let Some((chunk, generation)) = dirty {
            self.upload(chunk).await?;
            let mut s = self.state();
            if s.dirty.get(&chunk) == Some(&generation) {
                s.dirty.remove(&chunk);
                s.uploaded_chunks += 1;
                drop(s);
                self.catalog.clear_stored_dirty(self.row.id, chunk)?;
            }
            return Ok(true);
        }
        let scan = self.state().scan_from;
        if let Some(from) = scan {
            let end = (from + CURSOR_EVERY).min(self.chunk_count());
            for chunk in from..end {
                if !self.state().dirty.contains_key(&chunk) {
                    self.upload(chunk).await?;
                    self.state().uploaded_chunks += 1;
                }
            }
            let next = (end < self.chunk_count()).then_some(end);
            self.catalog.set_stored_scan_from(self.row.id, next)?;
            self.state().scan_from = next;
            if next.is_none() {
                tracing::info!(volume = %self.row.name, "initial upload complete");
            }
            return Ok(true);
        }
        let pending = self.state().pending.iter().next().copied();
        if let Some(chunk) = pending {
            self.ensure_local(chunk).await?;
            if self.state().pending.is_empty() {
                tracing::info!(volume = %self.row.name, "download complete");
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes the bucket's copy of `chunk` equal the local one (no PUT if it already is).
    async fn upload(&self, chunk: u64) -> Result<(), GatewayError> {
        self.ensure_local(chunk).await?;
        let data = self
            .pread(chunk * self.row.chunk_size, self.row.chunk_size as usize)
            .await?;
        let known = self.catalog.chunk(self.row.id, chunk)?;
        if crate::store::frame::is_zero(&data) {
            if known.is_some() {
                self.catalog.set_chunk(self.row.id, chunk, None)?;
            }
            return Ok(());
        }
        if known == Some(self.chunks.content_id(&data).0) {
            return Ok(());
        }
        match self.chunks.put(Bytes::from(data)).await? {
            ChunkRef::Zero => self.catalog.set_chunk(self.row.id, chunk, None)?,
            ChunkRef::Stored(id) => self.catalog.set_chunk(self.row.id, chunk, Some(&id.0))?,
        }
        Ok(())
    }

    /// Records the chunks a write will touch as dirty, in the catalog first.
    fn mark_dirty(&self, chunks: &[u64]) -> Result<(), GatewayError> {
        let fresh: Vec<u64> = {
            let s = self.state();
            chunks
                .iter()
                .copied()
                .filter(|c| !s.dirty.contains_key(c))
                .collect()
        };
        if !fresh.is_empty() {
            self.catalog.mark_stored_dirty(self.row.id, &fresh)?;
            let mut s = self.state();
            for c in fresh {
                s.dirty.entry(c).or_insert(0);
            }
        }
        Ok(())
    }

    /// After the local write: a new generation, so an upload that read older data stays dirty.
    fn written(&self, chunks: &[u64]) -> Result<(), GatewayError> {
        let mut missing = Vec::new();
        {
            let mut s = self.state();
            for &c in chunks {
                s.next_generation += 1;
                let g = s.next_generation;
                if s.dirty.insert(c, g).is_none() {
                    // The shipper cleared it between our mark and our write: record it again.
                    missing.push(c);
                }
            }
        }
        if !missing.is_empty() {
            self.catalog.mark_stored_dirty(self.row.id, &missing)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    async fn write_range(&self, offset: u64, data: Bytes) -> Result<(), GatewayError> {
        let touched: Vec<u64> = segments(self.row.chunk_size, offset, data.len() as u64)
            .map(|s| s.chunk)
            .collect();
        for &c in &touched {
            self.ensure_local(c).await?;
        }
        self.mark_dirty(&touched)?;
        self.pwrite(offset, data).await?;
        self.written(&touched)
    }
}

impl Capture for StoredVolume {
    fn capture<'a>(
        &'a self,
        stage: &'a mut Stage,
    ) -> BoxFuture<'a, Result<crate::gateway::volumes::snapshot::ChunkMap, GatewayError>> {
        Box::pin(async move {
            let _cut = self.gate.write().await;
            let dirty: Vec<u64> = {
                let s = self.state();
                let mut d: BTreeSet<u64> = s.dirty.keys().copied().collect();
                // Not yet compared with the bucket: staged too, so the snapshot is the disk.
                if let Some(from) = s.scan_from {
                    d.extend(from..self.chunk_count());
                }
                d.into_iter().collect()
            };
            for chunk in dirty {
                self.ensure_local(chunk).await?;
                let data = self
                    .pread(chunk * self.row.chunk_size, self.row.chunk_size as usize)
                    .await?;
                stage.push(chunk, &data)?;
            }
            Ok(self.catalog.chunk_map(self.row.id)?)
        })
    }
}

impl BlockDevice for StoredVolume {
    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn block_size(&self) -> u32 {
        self.row.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.row.size_bytes / u64::from(self.row.block_size)
    }

    fn read(&self, lba: u64, blocks: u32) -> BoxFuture<'_, Result<Bytes, GatewayError>> {
        Box::pin(async move {
            let (offset, len) = byte_range(&self.row, lba, u64::from(blocks))?;
            for s in segments(self.row.chunk_size, offset, len) {
                self.ensure_local(s.chunk).await?;
            }
            let data = self.pread(offset, len as usize).await?;
            Ok(Bytes::from(data))
        })
    }

    fn write(&self, lba: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (offset, _) = write_range(&self.row, lba, data.len())?;
            let _writing = self.gate.read().await;
            self.write_range(offset, data).await?;
            if fua {
                self.sync().await?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(self.sync())
    }

    /// Writes zeros (the local disk must read back zeros; a hole punch needs unsafe code).
    fn unmap(&self, lba: u64, blocks: u64) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (offset, len) = byte_range(&self.row, lba, blocks)?;
            let _writing = self.gate.read().await;
            const STEP: u64 = 4 << 20;
            let mut at = offset;
            while at < offset + len {
                let n = STEP.min(offset + len - at);
                let zeros = BytesMut::zeroed(n as usize).freeze();
                self.write_range(at, zeros).await?;
                at += n;
            }
            Ok(())
        })
    }

    fn lba_status(&self, lba: u64) -> BoxFuture<'_, Result<(bool, u64), GatewayError>> {
        Box::pin(async move {
            let (offset, _) = byte_range(&self.row, lba, 1)?;
            let bs = u64::from(self.row.block_size);
            let chunk_size = self.row.chunk_size;
            let first = offset / chunk_size;
            let horizon = (first + 1024).min(self.chunk_count());
            // Local state first, then the map: a chunk leaves the dirty set (or the scan)
            // only after its map row is written, so it is seen in one or the other.
            let (dirty, unscanned_from) = {
                let s = self.state();
                let dirty: BTreeSet<u64> = s.dirty.range(first..horizon).map(|(&c, _)| c).collect();
                (dirty, s.scan_from.unwrap_or(u64::MAX))
            };
            let in_bucket = self.catalog.mapped_chunks(self.row.id, first, horizon)?;
            // Preserved data not yet compared with the bucket may hold anything: mapped.
            let is_mapped = |c: u64| {
                in_bucket.binary_search(&c).is_ok() || dirty.contains(&c) || c >= unscanned_from
            };
            let state = is_mapped(first);
            let mut end = first + 1;
            while end < horizon && is_mapped(end) == state {
                end += 1;
            }
            Ok((state, ((end * chunk_size - offset) / bs).max(1)))
        })
    }
}
