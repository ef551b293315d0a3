//! The staging files' blocking steps: plain functions that run inside one
//! [`Files::blocking`](crate::gateway::files::Files) closure each, often together with the
//! catalog change they belong to (blocking.rs). Nothing here is async and nothing here touches
//! the gateway's in-memory state; callers update that once the step has returned.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::catalog::shares::{InodeKind, InodeRow};
use crate::gateway::GatewayError;
use crate::gateway::files::blocking;
use crate::gateway::files::blocks::BlockMap;
use crate::gateway::files::spares::Spares;
use crate::gateway::files::staging::allocated;

pub(crate) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> GatewayError {
    move |e| match e.raw_os_error() {
        Some(28) => GatewayError::NoSpace(format!("{what}: {e}")),
        _ => GatewayError::Internal(format!("{what}: {e}").into()),
    }
}

/// Small files are made durable through the catalog's small-file journal
/// (`catalog/journal.rs`) when their whole content is at most this long: the acknowledging
/// transaction carries the bytes and one WAL sync replaces the syncs of a new staging file and
/// its directory entry. Larger files would only grow the WAL by what their own sync writes.
pub(crate) const JOURNAL_MAX: u64 = 64 * 1024;

/// Bytes an inode's staging files (the file and its block map) take on disk.
pub(crate) fn staged_bytes(path: &Path) -> u64 {
    allocated(path) + allocated(&BlockMap::path(path))
}

/// Removes an inode's staging file and block map, if any.
pub(crate) fn remove_staging(path: &Path) {
    let _ = std::fs::remove_file(path);
    BlockMap::remove(path);
}

/// Creates a staging file as a hole of `size` bytes, with no block map: a file with nothing
/// to fetch from the bucket. Neither it nor its directory entry is synced here; no byte of it
/// is acknowledged as durable before a COMMIT or stable WRITE syncs both. A spare (spares.rs)
/// is renamed into place when one is ready; an empty spare is what creating the file makes.
pub(crate) fn create_hole(
    path: &Path,
    size: u64,
    spares: Option<&Spares>,
) -> Result<std::fs::File, GatewayError> {
    let spare = spares
        .and_then(Spares::take)
        .is_some_and(|spare| std::fs::rename(spare, path).is_ok());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(!spare)
        .truncate(!spare)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    // A new file is already empty: sizing it would be one more system call per small file.
    if size > 0 {
        file.set_len(size)
            .map_err(io_err(format!("sizing {}", path.display())))?;
    }
    BlockMap::remove(path);
    Ok(file)
}

/// Reads `offset..end` of a staging file; what lies past its end (or a file lost before it
/// was ever synced) reads as zeros.
pub(crate) fn read_staged(path: &Path, offset: u64, end: u64) -> Result<Bytes, GatewayError> {
    let mut buf = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Created, never synced, and lost with a power failure: nothing of it was
        // committed, so it reads as the hole it started as.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::from(buf)),
        Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
    };
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], offset + done as u64)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            // Past the staging file's end but within the recorded size: zeros.
            break;
        }
        done += n;
    }
    Ok(Bytes::from(buf))
}

/// Syncs a staging file and its block map if it has one. A file created since the staging
/// directory was last synced needs that too (`Files::sync_staging_dir`), for its name.
pub(crate) fn sync_staged(path: &Path) -> Result<(), GatewayError> {
    if let Ok(file) = std::fs::File::open(path) {
        file.sync_all()
            .map_err(io_err(format!("syncing {}", path.display())))?;
    }
    if let Ok(map) = std::fs::File::open(BlockMap::path(path)) {
        map.sync_all().map_err(io_err(format!(
            "syncing the block map of {}",
            path.display()
        )))?;
    }
    Ok(())
}

/// Syncs a journaled file's staging file and its directory entry, before its journal row goes.
fn settle(file: &std::fs::File, path: &Path, staging_dir: &Path) -> Result<(), GatewayError> {
    file.sync_data()
        .map_err(io_err(format!("syncing {}", path.display())))?;
    sync_dir(staging_dir)
}

/// A COMMIT of a file whose staging entry may not be on disk yet: journals the file's content
/// when it is small and whole (no block map), so that the COMMIT syncs the catalog's WAL only.
/// Returns whether it did; the caller then makes the catalog durable.
pub(crate) fn journal_commit(
    catalog: &Catalog,
    row: &InodeRow,
    path: &Path,
) -> Result<bool, GatewayError> {
    if row.kind != InodeKind::File
        || !row.staged
        || row.size > JOURNAL_MAX
        || BlockMap::path(path).exists()
    {
        return Ok(false);
    }
    let data = read_staged(path, 0, row.size)?;
    catalog.journal_unsynced(row.id, &data)?;
    Ok(true)
}

/// Start-up: writes every journaled small file back into its staging file and syncs them and
/// the staging directory, then empties the journal. A file the catalog no longer stages (an
/// upload recorded, the inode gone) is skipped. Returns how many files were written back.
pub(crate) fn replay_journal(catalog: &Catalog, staging_dir: &Path) -> Result<usize, GatewayError> {
    let entries = catalog.journal_entries()?;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut restored = 0;
    for (id, data) in entries {
        if !catalog
            .inode(id)?
            .is_some_and(|row| row.staged && row.kind == InodeKind::File)
        {
            continue;
        }
        let path = staging_dir.join(id.to_string());
        let file = create_hole(&path, 0, None)?;
        file.write_all_at(&data, 0)
            .map_err(io_err(format!("writing {}", path.display())))?;
        file.sync_all()
            .map_err(io_err(format!("syncing {}", path.display())))?;
        restored += 1;
    }
    sync_dir(staging_dir)?;
    catalog.clear_journal()?;
    Ok(restored)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), GatewayError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

/// A WRITE as one blocking step.
pub(crate) struct LocalWrite<'a> {
    pub id: i64,
    pub path: &'a Path,
    pub offset: u64,
    pub data: Vec<u8>,
    /// FILE_SYNC / DATA_SYNC: a whole new small file is journaled and the WAL synced here;
    /// the caller syncs any other stable write (`Files::sync_written`).
    pub stable: bool,
    /// The staging directory, synced with a journaled file's staging file before its journal
    /// row goes.
    pub staging_dir: &'a Path,
    /// Where a new staging file comes from when one is ready.
    pub spares: Option<&'a Spares>,
}

/// What a [`LocalWrite`] did.
pub(crate) enum Written {
    Done {
        row: InodeRow,
        /// The file was staged by this write (a new staging file).
        staged_now: bool,
        /// A stable write made durable through the small-file journal; any other stable
        /// write still needs `Files::sync_written`.
        journaled: bool,
        /// What the inode's staging files take on disk now.
        bytes: u64,
    },
    /// Part of what the write touches is still only in the bucket: the caller stages or
    /// fills it, and runs the write again (the data comes back unused).
    NeedsBucket { row: InodeRow, data: Vec<u8> },
}

/// Writes into an inode's staging file and records the new size and times, staging the file
/// first when nothing of it must come from the bucket (a new file, or one never uploaded).
/// Caller holds the inode lock. The row is marked staged in the same catalog write as the
/// data's size, before the write is acknowledged.
pub(crate) fn write(catalog: &Catalog, w: LocalWrite<'_>) -> Result<Written, GatewayError> {
    let mut row = blocking::current(catalog, w.id)?;
    let end = w.offset + w.data.len() as u64;
    let staged_now = !row.staged;
    if staged_now && row.remote_key.is_some() && row.size > 0 {
        return Ok(Written::NeedsBucket { row, data: w.data });
    }
    if !staged_now
        && row.remote_key.is_some()
        && let Some(map) = BlockMap::load(w.path)
        && map.blocks_of(w.offset, end).any(|b| !map.is_present(b))
    {
        return Ok(Written::NeedsBucket { row, data: w.data });
    }
    let path = w.path;
    let file = if staged_now {
        row.staged = true;
        create_hole(path, row.size, w.spares)?
    } else {
        // `create`: a staging file created but never synced is gone after a power loss, and
        // the client then resends what it had not committed into a new one.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?
    };
    file.write_all_at(&w.data, w.offset)
        .map_err(io_err(format!("writing {}", path.display())))?;
    // A stable write that is the whole of a new small file: its bytes go into the journal.
    let journal = w.stable && staged_now && w.offset == 0 && row.size <= end && end <= JOURNAL_MAX;
    if !staged_now && catalog.journaled(row.id)? {
        // The journal row no longer matches the file: the file (with these bytes) and its
        // directory entry go to disk before the row is dropped, so at no point is the data
        // only in the page cache while the catalog has forgotten it.
        settle(&file, path, w.staging_dir)?;
        catalog.unjournal_unsynced(row.id)?;
    }
    let now = crate::clock::unix_nanos();
    row.size = row.size.max(end);
    row.mtime_ns = now;
    row.ctime_ns = now;
    row.version += 1;
    catalog.save_inode_unsynced(&row)?;
    if journal {
        catalog.journal_unsynced(row.id, &w.data)?;
        catalog.durable()?;
    }
    Ok(Written::Done {
        row,
        staged_now,
        journaled: journal,
        bytes: staged_bytes(path),
    })
}
