//! Garbage collection of bucket chunks (docs/design.md §4): mark and sweep with a grace period.
//!
//! Mark: every chunk a volume's map, a committed snapshot manifest or an upload pin
//! references. Sweep: `chunks/` objects listed *before* the mark, unreferenced, and older than
//! the grace period; plus the parts of snapshots that never committed. Deletion runs in
//! batches under the catalog's write lock, re-checking maps and pins (see `catalog::gc`), and
//! stops if a snapshot started or committed since the mark. Any manifest that cannot be read
//! stops the collection: it never deletes on an incomplete mark.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::gateway::GatewayError;
use crate::gateway::volumes::manifest;
use crate::store::keys::{CHUNKS_PREFIX, SNAPSHOTS_PREFIX, manifest_snapshot};
use crate::store::{ChunkId, ChunkStore};

const BATCH: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_seen: u64,
    pub chunks_live: u64,
    /// Unreferenced but younger than the grace period: kept this time.
    pub chunks_young: u64,
    pub garbage_chunks: u64,
    pub garbage_bytes: u64,
    /// Objects of snapshots that never committed (no manifest).
    pub orphan_objects: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Why the sweep stopped early, if it did.
    pub stopped: Option<String>,
}

pub async fn collect(
    catalog: &Catalog,
    chunks: &ChunkStore,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, GatewayError> {
    let now = crate::clock::unix_secs();
    let cutoff = now.saturating_sub(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
    let bucket = chunks.bucket();
    // Listed before marking: an object created after this cannot be a candidate.
    let chunk_objects = bucket.list(CHUNKS_PREFIX).await?;
    let snapshot_objects = bucket.list(SNAPSHOTS_PREFIX).await?;

    catalog.expire_pins(cutoff)?;
    let mut live: HashSet<[u8; 32]> = catalog.referenced_chunks()?.into_iter().collect();
    live.extend(catalog.pinned_chunks()?);
    let committed: BTreeSet<String> = snapshot_objects
        .iter()
        .filter_map(|o| manifest_snapshot(&o.key).map(str::to_owned))
        .collect();
    for id in &committed {
        let m = manifest::read(chunks, id).await?;
        live.extend(m.map.into_iter().map(|(_, c)| c));
    }
    let known: HashSet<(String, String)> = catalog
        .sweep_lock()?
        .snapshot_states()?
        .into_iter()
        .collect();

    let mut report = GcReport::default();
    let mut candidates = Vec::new();
    for o in &chunk_objects {
        let Some(id) = ChunkId::from_object_key(&o.key) else {
            continue;
        };
        report.chunks_seen += 1;
        if live.contains(&id.0) {
            report.chunks_live += 1;
        } else if o.modified_unix >= cutoff {
            report.chunks_young += 1;
        } else {
            report.garbage_chunks += 1;
            report.garbage_bytes += o.size;
            candidates.push((o.key.clone(), Some(id.0), o.size));
        }
    }
    let in_flight: HashSet<&str> = known
        .iter()
        .filter(|(_, state)| state != "complete")
        .map(|(id, _)| id.as_str())
        .collect();
    for o in &snapshot_objects {
        let Some(snapshot) = o
            .key
            .strip_prefix(SNAPSHOTS_PREFIX)
            .and_then(|k| k.split('/').next())
        else {
            continue;
        };
        if !committed.contains(snapshot)
            && !in_flight.contains(snapshot)
            && o.modified_unix < cutoff
        {
            report.orphan_objects += 1;
            candidates.push((o.key.clone(), None, o.size));
        }
    }
    if dry_run {
        return Ok(report);
    }

    for batch in candidates.chunks(BATCH) {
        // Deletes happen under the lock: a pin written after it is released belongs to an
        // upload whose PUT comes after our DELETE and re-creates the chunk.
        let lock = catalog.sweep_lock()?;
        let states: HashSet<(String, String)> = lock.snapshot_states()?.into_iter().collect();
        if states != known {
            report.stopped = Some(
                "a snapshot started, finished or was deleted during the collection; run it again"
                    .to_owned(),
            );
            break;
        }
        for (key, id, size) in batch {
            if let Some(id) = id
                && lock.is_referenced(id)?
            {
                continue;
            }
            bucket.delete(key).await?;
            report.deleted += 1;
            report.deleted_bytes += size;
        }
        drop(lock);
    }
    Ok(report)
}
