//! Encrypted catalog copies in the bucket (docs/design.md §2), so a replacement gateway can
//! recover.
//!
//! A copy is a compacted SQLite file (`VACUUM INTO`) sealed with the chunk frame under
//! `gateway/<id>/catalog/<generation>`; the generation is the time in milliseconds, so the
//! newest copy sorts last. The daemon takes one when the catalog changed, at most every
//! `INTERVAL`, and at shutdown; the newest `KEEP` are kept.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::daemon::{DaemonError, io};
use crate::store::ChunkStore;
use crate::store::keys::{catalog_backup, catalog_backup_prefix, parse_catalog_backup};

pub const INTERVAL: Duration = Duration::from_secs(30);
pub const KEEP: usize = 8;

/// Takes one backup now; returns its object key.
pub async fn take(
    catalog: &Catalog,
    chunks: &ChunkStore,
    gateway_id: &str,
    scratch_dir: &Path,
) -> Result<String, DaemonError> {
    std::fs::create_dir_all(scratch_dir)
        .map_err(io(format!("creating {}", scratch_dir.display())))?;
    let tmp = scratch_dir.join("catalog-backup.db");
    let _ = std::fs::remove_file(&tmp);
    catalog.backup_to(&tmp)?;
    let data = std::fs::read(&tmp).map_err(io(format!("reading {}", tmp.display())));
    let _ = std::fs::remove_file(&tmp);
    let data = data?;
    let generation = crate::clock::unix_millis();
    let key = catalog_backup(gateway_id, generation);
    chunks.put_sealed(&key, Bytes::from(data)).await?;
    prune(chunks, gateway_id).await?;
    Ok(key)
}

/// Generations of a gateway's catalog copies in the bucket, oldest first.
pub async fn generations(chunks: &ChunkStore, gateway_id: &str) -> Result<Vec<u64>, DaemonError> {
    let mut found: Vec<u64> = chunks
        .bucket()
        .list(&catalog_backup_prefix(gateway_id))
        .await?
        .iter()
        .filter_map(|o| parse_catalog_backup(&o.key).map(|(_, g)| g))
        .collect();
    found.sort_unstable();
    Ok(found)
}

async fn prune(chunks: &ChunkStore, gateway_id: &str) -> Result<(), DaemonError> {
    let found = generations(chunks, gateway_id).await?;
    let excess = found.len().saturating_sub(KEEP);
    for generation in &found[..excess] {
        chunks
            .bucket()
            .delete(&catalog_backup(gateway_id, *generation))
            .await?;
    }
    Ok(())
}
