//! Snapshots of volumes (docs/design.md §4): request, take, restore, delete.
//!
//! A snapshot is taken in three steps. The cut (`Volume::capture`): writes wait while the
//! chunks not yet in the bucket are copied to a local stage file and the chunk map of the rest
//! is read. The upload: staged chunks are sealed and stored (content-addressed, so a chunk the
//! bucket already has costs one idempotent PUT, and unchanged chunks cost nothing). The commit:
//! the manifest is written last (`manifest::write`). A crash before the commit leaves no
//! snapshot, only parts and chunks that garbage collection removes after its grace period.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::catalog::snapshots::{SnapshotRow, SnapshotState};
use crate::catalog::volumes::{NewVolume, VolumeMode, VolumeRow};
use crate::gateway::GatewayError;
use crate::gateway::volumes::manifest::{self, Header};
use crate::gateway::volumes::{CHUNK_SIZE, check_new, new_identity};
use crate::store::{ChunkRef, ChunkStore};

/// Chunks copied at the cut, kept in a local file until they are uploaded; removed on drop.
#[derive(Debug)]
pub struct Stage {
    file: File,
    path: PathBuf,
    entries: Vec<(u64, u64, usize)>,
    end: u64,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> GatewayError {
    GatewayError::Internal(format!("{what} {}: {e}", path.display()).into())
}

impl Stage {
    pub fn create(dir: &Path, snapshot: &str) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        let path = dir.join(format!("{snapshot}.stage"));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error("creating", &path, e))?;
        Ok(Self {
            file,
            path,
            entries: Vec::new(),
            end: 0,
        })
    }

    pub fn push(&mut self, index: u64, data: &[u8]) -> Result<(), GatewayError> {
        self.file
            .write_all_at(data, self.end)
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.entries.push((index, self.end, data.len()));
        self.end += data.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn read(&self, n: usize) -> Result<(u64, Bytes), GatewayError> {
        let (index, at, len) = self.entries[n];
        let mut buf = vec![0; len];
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| io_error("reading", &self.path, e))?;
        Ok((index, Bytes::from(buf)))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What taking a snapshot needs besides the volume.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub chunks: &'a ChunkStore,
    pub gateway_id: &'a str,
    /// Where stage files go (on the appliance's local disk).
    pub staging_dir: &'a Path,
}

/// Queues a snapshot of `volume`; the daemon (or the CLI, with no daemon running) takes it.
pub fn request(
    catalog: &Catalog,
    volume: &str,
    description: &str,
    scheduled: bool,
) -> Result<SnapshotRow, GatewayError> {
    let row = catalog
        .volume_by_name(volume)?
        .ok_or_else(|| GatewayError::NotFound(format!("volume {volume}")))?;
    if description.len() > 255 {
        return Err(GatewayError::InvalidArgument(
            "a snapshot description is at most 255 bytes".into(),
        ));
    }
    let snapshot = SnapshotRow {
        id: manifest::new_id()?,
        volume_id: row.id,
        volume_name: row.name,
        size_bytes: row.size_bytes,
        description: description.to_owned(),
        scheduled,
        state: SnapshotState::Requested,
        error: None,
        requested_unix: crate::clock::unix_secs(),
        completed_unix: None,
        chunks: 0,
        new_chunks: 0,
        uploaded_bytes: 0,
    };
    catalog.insert_snapshot(&snapshot)?;
    Ok(snapshot)
}

/// A volume's chunk map: (chunk index, chunk id), ascending by index.
pub type ChunkMap = Vec<(u64, [u8; 32])>;

/// A served volume's side of the cut: with writes held, stage every chunk the bucket does not
/// have yet and return the chunk map for the rest.
pub trait Capture: Send + Sync {
    fn capture<'a>(
        &'a self,
        stage: &'a mut Stage,
    ) -> crate::gateway::block::BoxFuture<'a, Result<ChunkMap, GatewayError>>;
}

/// Where the chunks of a snapshot come from at its cut.
pub enum Cut<'a> {
    /// A served volume: writes are held while not-yet-uploaded chunks are staged.
    Live(&'a dyn Capture),
    /// A volume nothing writes to, whose cache has been drained: the catalog map is the state.
    Quiescent,
}

/// Takes a requested snapshot. Returns `Ok(false)` if someone else took the request.
/// On failure the row is marked failed with the reason, and nothing is committed.
pub async fn take(
    ctx: Context<'_>,
    snapshot: &SnapshotRow,
    cut: Cut<'_>,
) -> Result<bool, GatewayError> {
    if !ctx.catalog.move_snapshot(
        &snapshot.id,
        SnapshotState::Requested,
        SnapshotState::Staging,
        None,
    )? {
        return Ok(false);
    }
    match take_inner(ctx, snapshot, cut).await {
        Ok(()) => Ok(true),
        Err(e) => {
            let reason = e.to_string();
            for from in [SnapshotState::Staging, SnapshotState::Uploading] {
                ctx.catalog.move_snapshot(
                    &snapshot.id,
                    from,
                    SnapshotState::Failed,
                    Some(&reason),
                )?;
            }
            tracing::error!(snapshot = %snapshot.id, error = %reason, "snapshot failed");
            Err(e)
        }
    }
}

async fn take_inner(
    ctx: Context<'_>,
    snapshot: &SnapshotRow,
    cut: Cut<'_>,
) -> Result<(), GatewayError> {
    let volume = ctx
        .catalog
        .volume_by_id(snapshot.volume_id)?
        .ok_or_else(|| GatewayError::NotFound(format!("volume {}", snapshot.volume_name)))?;
    let mut stage = Stage::create(ctx.staging_dir, &snapshot.id)?;
    let started = std::time::Instant::now();
    let map = match cut {
        Cut::Live(v) => v.capture(&mut stage).await?,
        Cut::Quiescent => ctx.catalog.chunk_map(volume.id)?,
    };
    tracing::info!(
        snapshot = %snapshot.id,
        volume = %volume.name,
        staged_chunks = stage.len(),
        cut_ms = started.elapsed().as_millis() as u64,
        "snapshot cut"
    );
    ctx.catalog.move_snapshot(
        &snapshot.id,
        SnapshotState::Staging,
        SnapshotState::Uploading,
        None,
    )?;
    let mut map: BTreeMap<u64, [u8; 32]> = map.into_iter().collect();
    let mut uploaded = 0;
    for n in 0..stage.len() {
        let (index, data) = stage.read(n)?;
        let (stored, bytes) = ctx.chunks.put_counted(data).await?;
        uploaded += bytes;
        match stored {
            ChunkRef::Zero => map.remove(&index),
            ChunkRef::Stored(id) => map.insert(index, id.0),
        };
    }
    drop(stage);
    let map: Vec<(u64, [u8; 32])> = map.into_iter().collect();
    let new_chunks = new_since_previous(ctx, snapshot, &map).await;
    let header = Header {
        format: manifest::FORMAT,
        snapshot: snapshot.id.clone(),
        volume_name: volume.name.clone(),
        volume_uuid: crate::store::keys::hex(&volume.uuid),
        size_bytes: volume.size_bytes,
        block_size: volume.block_size,
        chunk_size: volume.chunk_size,
        created_unix: snapshot.requested_unix,
        description: snapshot.description.clone(),
        scheduled: snapshot.scheduled,
        gateway_id: ctx.gateway_id.to_owned(),
        chunks: 0,
        parts: Vec::new(),
    };
    uploaded += manifest::write(ctx.chunks, header, &map).await?;
    ctx.catalog.complete_snapshot(
        &snapshot.id,
        map.len() as u64,
        new_chunks,
        uploaded,
        crate::clock::unix_secs(),
    )?;
    tracing::info!(
        snapshot = %snapshot.id,
        chunks = map.len(),
        new_chunks,
        uploaded_bytes = uploaded,
        "snapshot committed"
    );
    Ok(())
}

/// Chunks of `map` not in the volume's previous complete snapshot (all of them if there is
/// none or it cannot be read: the figure is informational).
async fn new_since_previous(
    ctx: Context<'_>,
    snapshot: &SnapshotRow,
    map: &[(u64, [u8; 32])],
) -> u64 {
    let previous = ctx
        .catalog
        .snapshots(Some(&snapshot.volume_name))
        .ok()
        .and_then(|rows| {
            rows.into_iter()
                .filter(|r| {
                    r.volume_id == snapshot.volume_id
                        && r.state == SnapshotState::Complete
                        && r.id != snapshot.id
                })
                .max_by_key(|r| (r.requested_unix, r.completed_unix))
        });
    let Some(previous) = previous else {
        return map.len() as u64;
    };
    match manifest::read(ctx.chunks, &previous.id).await {
        Ok(prev) => {
            let had: HashSet<[u8; 32]> = prev.map.into_iter().map(|(_, id)| id).collect();
            map.iter().filter(|(_, id)| !had.contains(id)).count() as u64
        }
        Err(e) => {
            tracing::warn!(previous = %previous.id, error = %e, "reading the previous snapshot");
            map.len() as u64
        }
    }
}

/// A new volume whose content is the snapshot's. A cached volume is usable at once: it holds
/// the snapshot's chunk map and downloads a chunk only when it is read.
/// A stored volume (`local_path` given) downloads every chunk to its local disk in the
/// background, serving reads of chunks not yet there from the bucket meanwhile.
pub async fn restore(
    catalog: &Catalog,
    chunks: &ChunkStore,
    snapshot: &str,
    name: &str,
    mode: VolumeMode,
    local_path: Option<&str>,
) -> Result<VolumeRow, GatewayError> {
    let m = manifest::read(chunks, snapshot).await?;
    if m.header.chunk_size != CHUNK_SIZE {
        return Err(GatewayError::InvalidArgument(format!(
            "snapshot {snapshot} uses {}-byte chunks; this tidegate restores {CHUNK_SIZE}-byte ones",
            m.header.chunk_size
        )));
    }
    check_new(catalog, name, m.header.size_bytes)?;
    let local_path = match (mode, local_path) {
        (VolumeMode::Stored, Some(p)) => {
            crate::gateway::volumes::stored::prepare_local(
                Path::new(p),
                Some(m.header.size_bytes),
                false,
            )?;
            Some(p)
        }
        (VolumeMode::Stored, None) => {
            return Err(GatewayError::InvalidArgument(
                "a stored volume needs --local-path".into(),
            ));
        }
        (VolumeMode::Cached, _) => None,
    };
    let (serial, uuid) = new_identity()?;
    Ok(catalog.create_volume_with_chunks(
        &NewVolume {
            name,
            size_bytes: m.header.size_bytes,
            block_size: m.header.block_size,
            chunk_size: m.header.chunk_size,
            mode,
            serial: &serial,
            uuid,
            created_unix: crate::clock::unix_secs(),
            local_path,
            origin_snapshot: Some(snapshot),
        },
        &m.map,
        mode == VolumeMode::Stored,
    )?)
}

/// Deletes a snapshot: its manifest (and so the snapshot) first, then its row. Its chunks
/// are freed by garbage collection if nothing else references them.
pub async fn delete(
    catalog: &Catalog,
    chunks: &ChunkStore,
    snapshot: &str,
) -> Result<(), GatewayError> {
    manifest::validate_id(snapshot)?;
    let row = catalog.snapshot(snapshot)?;
    if let Some(row) = &row
        && row.state.in_flight()
    {
        return Err(GatewayError::Busy(format!(
            "snapshot {snapshot} is being taken ({})",
            row.state.as_str()
        )));
    }
    if row.is_none() && !manifest::list_committed(chunks).await?.contains(snapshot) {
        return Err(GatewayError::NotFound(format!("snapshot {snapshot}")));
    }
    manifest::delete(chunks, snapshot).await?;
    catalog.delete_snapshot_row(snapshot)?;
    Ok(())
}

/// After a restart: a snapshot left mid-way is complete if its manifest made it to the
/// bucket (the commit point), failed otherwise.
pub async fn settle_interrupted(
    catalog: &Catalog,
    chunks: &ChunkStore,
) -> Result<(), GatewayError> {
    for state in [SnapshotState::Staging, SnapshotState::Uploading] {
        for row in catalog.snapshots_in_state(state)? {
            match manifest::read(chunks, &row.id).await {
                Ok(m) => {
                    catalog.complete_snapshot(
                        &row.id,
                        m.map.len() as u64,
                        row.new_chunks,
                        row.uploaded_bytes,
                        crate::clock::unix_secs(),
                    )?;
                }
                Err(GatewayError::NotFound(_)) => {
                    catalog.move_snapshot(
                        &row.id,
                        state,
                        SnapshotState::Failed,
                        Some("interrupted by a restart before its manifest was written"),
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
