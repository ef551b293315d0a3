//! Encrypted catalog copies in the bucket (docs/design.md §2), so a replacement gateway can
//! recover.
//!
//! A copy is a compacted SQLite file (`VACUUM INTO`, on the blocking pool) that
//! `store::parted` streams into the bucket as sealed parts and a manifest under
//! `gateway/<id>/catalog/<generation>`: a copy costs one part of memory (`PART_BYTES`) whatever
//! the catalog's size. The generation is the time in milliseconds, so the newest copy sorts
//! last. The daemon takes one when the catalog changed, at most every `INTERVAL`, and at
//! shutdown; the newest `KEEP` are kept.
//!
//! Before each copy the daemon checks that it still holds the gateway's writer record
//! (`store::writer`). Where the server honours conditional writes, a second daemon running as
//! this gateway (one recovered while this one still runs) takes the record over when it starts,
//! and this one then stops taking and pruning copies, with an error naming the other; its copies
//! are also created with If-None-Match, so neither can overwrite the other's. Where the server
//! ignores conditions (Garage), nothing is detected, as before (docs/compatibility.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::daemon::{DaemonError, io};
use crate::store::keys::{
    catalog_backup, catalog_backup_prefix, catalog_writer, parse_catalog_backup, parse_part_key,
};
use crate::store::parted::PART_BYTES;
use crate::store::writer::{Claim, Writer};
use crate::store::{ChunkStore, StoreError};

pub const INTERVAL: Duration = Duration::from_secs(30);
pub const KEEP: usize = 8;

/// Takes this daemon's catalog copies.
#[derive(Debug)]
pub struct Copier {
    catalog: Arc<Catalog>,
    chunks: Arc<ChunkStore>,
    gateway_id: String,
    scratch: PathBuf,
    me: Writer,
    claim: Option<Claim>,
    /// Who took the writer record over, once another daemon did: no more copies, no pruning.
    lost_to: Option<String>,
}

impl Copier {
    /// A copier for gateway `gateway_id` named `name`; nothing is sent until the first `take`.
    pub async fn new(
        catalog: Arc<Catalog>,
        chunks: Arc<ChunkStore>,
        gateway_id: String,
        name: String,
        scratch: PathBuf,
    ) -> Result<Self, DaemonError> {
        let host = tokio::fs::read_to_string("/proc/sys/kernel/hostname")
            .await
            .map_or_else(|_| "unknown".to_owned(), |h| h.trim().to_owned());
        let me = Writer {
            instance: crate::store::master::random_hex::<8>()?,
            name,
            host,
            since_unix: crate::clock::unix_secs(),
        };
        Ok(Self {
            catalog,
            chunks,
            gateway_id,
            scratch,
            me,
            claim: None,
            lost_to: None,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Takes one copy now; returns its object key.
    pub async fn take(&mut self) -> Result<String, DaemonError> {
        let create_only = self.hold().await?;
        let tmp = self.scratch.join("catalog-backup.db");
        let (catalog, scratch, path) = (self.catalog.clone(), self.scratch.clone(), tmp.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&scratch)
                .map_err(io(format!("creating {}", scratch.display())))?;
            let _ = std::fs::remove_file(&path);
            catalog.backup_to(&path).map_err(DaemonError::from)
        })
        .await
        .map_err(|e| DaemonError::Io {
            what: "compacting the catalog".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let key = catalog_backup(&self.gateway_id, crate::clock::unix_millis());
        let stored = self
            .chunks
            .put_sealed_file(&key, &tmp, PART_BYTES, create_only)
            .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        stored?;
        prune(&self.chunks, &self.gateway_id).await?;
        Ok(key)
    }

    /// Claims the writer record on first use and checks it after; returns whether the server
    /// honours conditional writes (then copies are created with If-None-Match).
    async fn hold(&mut self) -> Result<bool, DaemonError> {
        if let Some(by) = &self.lost_to {
            return Err(self.taken_over(by.clone()));
        }
        let held = match &mut self.claim {
            Some(claim) => claim.check(&self.chunks).await.map(|()| claim.is_checked()),
            None => {
                let key = catalog_writer(&self.gateway_id);
                Claim::take(&self.chunks, &key, self.me.clone())
                    .await
                    .map(|(claim, previous)| {
                        let checked = claim.is_checked();
                        if let Some(p) = previous.filter(|p| p.instance != self.me.instance) {
                            tracing::info!(previous = %p.describe(), "claimed the catalog copies from their last writer");
                        }
                        if !checked {
                            tracing::info!(
                                gateway = %self.gateway_id,
                                "the bucket ignores conditional writes: a second daemon running \
                                 as this gateway would not be detected"
                            );
                        }
                        self.claim = Some(claim);
                        checked
                    })
            }
        };
        match held {
            Ok(checked) => Ok(checked),
            Err(StoreError::Conflict { by, .. }) => {
                self.lost_to = Some(by.clone());
                Err(self.taken_over(by))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn taken_over(&self, by: String) -> DaemonError {
        DaemonError::CopiesTakenOver {
            gateway_id: self.gateway_id.clone(),
            by,
        }
    }
}

/// The complete copies (oldest first) and the parts `(generation, key)` under the gateway's
/// prefix.
async fn listed(
    chunks: &ChunkStore,
    gateway_id: &str,
) -> Result<(Vec<u64>, Vec<(u64, String)>), DaemonError> {
    let mut copies = Vec::new();
    let mut parts = Vec::new();
    for o in chunks
        .bucket()
        .list(&catalog_backup_prefix(gateway_id))
        .await?
    {
        if let Some((_, g)) = parse_catalog_backup(&o.key) {
            copies.push(g);
        } else if let Some((_, g)) =
            parse_part_key(&o.key).and_then(|(c, _)| parse_catalog_backup(c))
        {
            parts.push((g, o.key));
        }
    }
    copies.sort_unstable();
    Ok((copies, parts))
}

/// Deletes all but the newest `KEEP` copies, manifest first (so no manifest ever names a
/// missing part), then the parts of no kept copy that are older than the newest one: those of
/// deleted copies and of copies cut short (their manifest never written).
async fn prune(chunks: &ChunkStore, gateway_id: &str) -> Result<(), DaemonError> {
    let (copies, parts) = listed(chunks, gateway_id).await?;
    let excess = copies.len().saturating_sub(KEEP);
    let bucket = chunks.bucket();
    for generation in &copies[..excess] {
        bucket
            .delete(&catalog_backup(gateway_id, *generation))
            .await?;
    }
    let kept = &copies[excess..];
    let newest = kept.last().copied().unwrap_or(0);
    for (generation, key) in parts {
        if generation < newest && !kept.contains(&generation) {
            bucket.delete(&key).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BucketConfig;
    use crate::store::keys::part_key;
    use crate::store::{Bucket, Codec, MasterKey};

    #[tokio::test]
    async fn prune_keeps_the_newest_copies_whole_and_drops_every_other_part() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::open(&BucketConfig::local(dir.path().join("bucket")), true).unwrap();
        let chunks = ChunkStore::new(Arc::new(bucket), Codec::new(MasterKey::generate().unwrap()));
        let file = dir.path().join("copy");
        std::fs::write(&file, vec![1u8; 2500]).unwrap();
        let total = KEEP as u64 + 2;
        for g in 1..=total {
            let key = catalog_backup("gw", g * 10);
            chunks
                .put_sealed_file(&key, &file, 1024, false)
                .await
                .unwrap();
        }
        // A copy cut short before the newest (its manifest never written), and one in progress
        // after it: the first is garbage, the second is not.
        let orphan = part_key(&catalog_backup("gw", 15), 1);
        let pending = part_key(&catalog_backup("gw", total * 10 + 5), 1);
        for key in [&orphan, &pending] {
            chunks
                .bucket()
                .put(key, bytes::Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        prune(&chunks, "gw").await.unwrap();
        let (copies, parts) = listed(&chunks, "gw").await.unwrap();
        let kept: Vec<u64> = (3..=total).map(|g| g * 10).collect();
        assert_eq!(copies, kept);
        let mut want: Vec<String> = kept
            .iter()
            .flat_map(|g| (1..=3).map(move |n| part_key(&catalog_backup("gw", *g), n)))
            .collect();
        want.push(pending);
        want.sort();
        let mut got: Vec<String> = parts.into_iter().map(|(_, k)| k).collect();
        got.sort();
        assert_eq!(got, want);
        // Every kept copy still restores.
        let dest = dir.path().join("restored");
        let newest = catalog_backup("gw", total * 10);
        assert_eq!(chunks.get_sealed_file(&newest, &dest).await.unwrap(), 2500);
    }
}
