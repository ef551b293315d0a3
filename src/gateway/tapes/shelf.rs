//! The tape shelf (docs/design.md §6): archiving an ejected tape into archive objects, retrieving
//! it back into the library read-only, and verifying an archive.
//!
//! Archive format (docs/formats.md, version 1): the tape's data stream cut into parts of
//! `PART_BYTES` (a power-of-two number of MiB, so part tree hashes combine into the whole's),
//! each sealed like a chunk as `shelf/<barcode>/part-<n>` with its tree hash in metadata; then
//! `shelf/<barcode>/index` (sealed JSON: record index, part hashes, root), written last as the
//! commit point, with the root in metadata; then `shelf/inventory.json`. Tree hashes are
//! computed over the plaintext while it streams through.
//!
//! Invariants: a tape becomes ARCHIVED only once every part and the index are in the bucket
//! and its cached data has reached the bucket (so dropping its chunk map loses nothing); a
//! retrieved tape is served only after every part matched its hash and the root; any mismatch
//! or failed seal marks the tape DAMAGED with an error that names it, and it is never served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::catalog::tapes::{ElementKind, RunRow, ShelfPart, TapeRow, TapeState};
use crate::gateway::GatewayError;
use crate::gateway::tapes::index::Index;
use crate::gateway::tapes::medium::{read_stream, write_stream};
use crate::gateway::tapes::{CHUNK_SIZE, MAX_TAPES_INSIDE, object_name};
use crate::store::keys::{SHELF_INVENTORY, hex, parse_hex, shelf_index, shelf_part};
use crate::store::treehash::{self, TreeHash, TreeHasher};
use crate::store::{ChunkStore, StoreError};

/// Plaintext bytes per archive part: 64 MiB, a power of two so part hashes combine.
pub const PART_BYTES: u64 = 64 << 20;
pub const FORMAT_VERSION: u32 = 1;
/// How often archiving checks that a tape's cached data has reached the bucket.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The sealed `shelf/<barcode>/index` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveIndex {
    pub version: u32,
    pub barcode: String,
    pub size_bytes: u64,
    pub data_bytes: u64,
    pub objects: u64,
    /// (first object, byte offset, count, record bytes or -1 for filemarks).
    pub runs: Vec<(u64, u64, u64, i64)>,
    /// Each part's plaintext length and tree hash (hex).
    pub parts: Vec<(u64, String)>,
    pub tree_hash: String,
}

/// One line of `shelf/inventory.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub barcode: String,
    pub state: String,
    pub size_bytes: u64,
    pub data_bytes: u64,
    pub tree_hash: Option<String>,
    pub archived_unix: Option<i64>,
    pub retention_until_unix: Option<i64>,
    pub lock: Option<String>,
}

fn corrupt(barcode: &str, what: String) -> GatewayError {
    GatewayError::Corrupt(format!("tape {barcode}: {what}").into())
}

/// A store error reading tape `barcode`'s archive, with the tape named.
fn store_error(barcode: &str, key: &str, e: StoreError) -> GatewayError {
    match e {
        StoreError::Corrupt(_) | StoreError::WrongKey { .. } | StoreError::NotFound { .. } => {
            corrupt(
                barcode,
                format!("archive object {key} failed its integrity check: {e}"),
            )
        }
        other => other.into(),
    }
}

fn hash_hex(h: &[u8; 32]) -> String {
    hex(h)
}

/// Archives one tape (state IN TRANSIT or ARCHIVING), resuming after the parts already stored.
pub async fn archive(
    catalog: &Catalog,
    chunks: &ChunkStore,
    cache: &Cache,
    tape: &TapeRow,
    now_unix: i64,
) -> Result<TreeHash, GatewayError> {
    if tape.state == TapeState::InTransit {
        catalog.set_tape_state(tape.id, TapeState::Archiving, None)?;
    }
    let mut parts = catalog.shelf_parts(tape.id)?;
    let mut offset: u64 = parts.iter().map(|p| p.plain_bytes).sum();
    while offset < tape.data_bytes {
        let part = parts.len() as u64;
        let len = PART_BYTES.min(tape.data_bytes - offset);
        let key = shelf_part(&tape.barcode, part);
        let mut hasher = TreeHasher::new();
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut at = offset;
        while at < offset + len {
            let n = CHUNK_SIZE.min(offset + len - at);
            let piece = read_stream(cache, tape.id, at, n).await?;
            hasher.update(&piece);
            data.extend_from_slice(&piece);
            at += n;
        }
        let hash = hasher.finish();
        chunks
            .put_sealed_with(
                &key,
                Bytes::from(data),
                &[("tree-hash".to_owned(), hash.to_string())],
            )
            .await?;
        let p = ShelfPart {
            part,
            plain_bytes: len,
            tree_hash: hash.0,
        };
        offset += len;
        catalog.add_shelf_part(tape.id, &p, offset)?;
        parts.push(p);
        tracing::info!(barcode = %tape.barcode, part, bytes = offset, total = tape.data_bytes, "archive part stored");
    }
    let root = root_of(&parts);
    let runs = catalog.tape_runs(tape.id)?;
    let index = ArchiveIndex {
        version: FORMAT_VERSION,
        barcode: tape.barcode.clone(),
        size_bytes: tape.size_bytes,
        data_bytes: tape.data_bytes,
        objects: tape.objects,
        runs: runs
            .iter()
            .map(|r| {
                let bytes = r
                    .record_bytes
                    .map_or(-1, |b| i64::try_from(b).unwrap_or(-1));
                (r.first_object, r.byte_offset, r.count, bytes)
            })
            .collect(),
        parts: parts
            .iter()
            .map(|p| (p.plain_bytes, hash_hex(&p.tree_hash)))
            .collect(),
        tree_hash: root.to_string(),
    };
    let body = serde_json::to_vec(&index).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    chunks
        .put_sealed_with(
            &shelf_index(&tape.barcode),
            Bytes::from(body),
            &[("tree-hash-root".to_owned(), root.to_string())],
        )
        .await?;
    wait_uploaded(cache, tape).await;
    catalog.finish_archive(tape.id, &root.0, now_unix)?;
    tracing::info!(barcode = %tape.barcode, tree_hash = %root, "tape archived");
    Ok(root)
}

/// Waits until none of the tape's cached chunks holds data the bucket lacks: the chunk map is
/// dropped next, and an upload finishing afterwards would put a row back.
async fn wait_uploaded(cache: &Cache, tape: &TapeRow) {
    let names: Vec<String> = (0..tape.data_bytes.div_ceil(CHUNK_SIZE))
        .map(|c| object_name(tape.id, c))
        .collect();
    loop {
        let dirty: Vec<&String> = names.iter().filter(|n| cache.is_dirty(n)).collect();
        if dirty.is_empty() {
            return;
        }
        for n in dirty {
            cache.upload_now(n);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn root_of(parts: &[ShelfPart]) -> TreeHash {
    let hashes: Vec<TreeHash> = parts.iter().map(|p| TreeHash(p.tree_hash)).collect();
    treehash::combine(&hashes).unwrap_or_else(|| TreeHasher::new().finish())
}

/// Reads and checks the index object against the catalog's root.
async fn read_index(chunks: &ChunkStore, tape: &TapeRow) -> Result<ArchiveIndex, GatewayError> {
    let key = shelf_index(&tape.barcode);
    let body = chunks
        .get_sealed(&key)
        .await
        .map_err(|e| store_error(&tape.barcode, &key, e))?;
    let index: ArchiveIndex = serde_json::from_slice(&body).map_err(|e| {
        corrupt(
            &tape.barcode,
            format!("archive index {key} is unreadable: {e}"),
        )
    })?;
    if index.version != FORMAT_VERSION {
        return Err(corrupt(
            &tape.barcode,
            format!(
                "archive index version {} is not one this build reads",
                index.version
            ),
        ));
    }
    let expected = tape.tree_hash.map(|h| hash_hex(&h));
    if expected.as_deref() != Some(index.tree_hash.as_str()) || index.barcode != tape.barcode {
        return Err(corrupt(
            &tape.barcode,
            format!(
                "archive index {key} names tree hash {} but the catalog recorded {}",
                index.tree_hash,
                expected.unwrap_or_else(|| "none".into())
            ),
        ));
    }
    Ok(index)
}

/// Downloads part `n`, checks its tree hash against the index, returns its plaintext.
async fn read_part(
    chunks: &ChunkStore,
    barcode: &str,
    index: &ArchiveIndex,
    n: usize,
) -> Result<(Bytes, TreeHash), GatewayError> {
    let key = shelf_part(barcode, n as u64);
    let data = chunks
        .get_sealed(&key)
        .await
        .map_err(|e| store_error(barcode, &key, e))?;
    let (len, want) = &index.parts[n];
    let got = treehash::hash_bytes(&data);
    if data.len() as u64 != *len || got.to_string() != *want {
        return Err(corrupt(
            barcode,
            format!("archive object {key} has tree hash {got}, expected {want}"),
        ));
    }
    Ok((data, got))
}

fn check_root(
    barcode: &str,
    index: &ArchiveIndex,
    hashes: &[TreeHash],
) -> Result<TreeHash, GatewayError> {
    let root = treehash::combine(hashes).unwrap_or_else(|| TreeHasher::new().finish());
    if root.to_string() != index.tree_hash {
        return Err(corrupt(
            barcode,
            format!(
                "the parts' tree hash {root} differs from the archive's {}",
                index.tree_hash
            ),
        ));
    }
    Ok(root)
}

/// Re-reads an archived tape's objects and checks every part hash and the root.
pub async fn verify(chunks: &ChunkStore, tape: &TapeRow) -> Result<TreeHash, GatewayError> {
    let index = read_index(chunks, tape).await?;
    let mut hashes = Vec::with_capacity(index.parts.len());
    for n in 0..index.parts.len() {
        hashes.push(read_part(chunks, &tape.barcode, &index, n).await?.1);
    }
    check_root(&tape.barcode, &index, &hashes)
}

/// Asks for a retrieval: the daemon's shelf worker does it.
pub fn request_retrieval(catalog: &Catalog, tape: &TapeRow) -> Result<(), GatewayError> {
    match tape.state {
        TapeState::Archived => {
            let inside = catalog
                .tapes()?
                .iter()
                .filter(|t| t.location.is_some())
                .count();
            if inside >= MAX_TAPES_INSIDE {
                return Err(GatewayError::NoSpace(format!(
                    "the library holds {MAX_TAPES_INSIDE} tapes already"
                )));
            }
            catalog.set_tape_state(tape.id, TapeState::Retrieving, None)?;
            catalog.set_tape_progress(tape.id, 0)?;
            Ok(())
        }
        TapeState::Retrieving => Ok(()),
        state => Err(GatewayError::InvalidArgument(format!(
            "tape {} is {}; only an archived tape can be retrieved",
            tape.barcode,
            state.label()
        ))),
    }
}

/// Retrieves one tape (state RETRIEVING) into `slot`: every part verified, written back as the
/// tape's data stream, then the index; resumes after the parts recorded in `progress_bytes`.
pub async fn retrieve(
    catalog: &Catalog,
    chunks: &ChunkStore,
    cache: &Cache,
    tape: &TapeRow,
    slot: u32,
) -> Result<TreeHash, GatewayError> {
    let index = read_index(chunks, tape).await?;
    let mut hashes = Vec::with_capacity(index.parts.len());
    let mut offset = 0u64;
    for n in 0..index.parts.len() {
        let len = index.parts[n].0;
        if offset + len <= tape.progress_bytes {
            // Written and flushed before a restart; its hash is the index's (checked then).
            let h = parse_hex::<32>(&index.parts[n].1)
                .ok_or_else(|| corrupt(&tape.barcode, "a part hash is not hex".into()))?;
            hashes.push(TreeHash(h));
            offset += len;
            continue;
        }
        let (data, h) = read_part(chunks, &tape.barcode, &index, n).await?;
        write_stream(cache, tape.id, offset, &data).await?;
        cache
            .flush()
            .await
            .map_err(crate::gateway::volumes::volume::cache_error)?;
        offset += len;
        hashes.push(h);
        catalog.set_tape_progress(tape.id, offset)?;
    }
    let root = check_root(&tape.barcode, &index, &hashes)?;
    let runs: Vec<RunRow> = rebuild_runs(&tape.barcode, &index)?;
    catalog.commit_tape_index(
        tape.id,
        0,
        &runs,
        (index.data_bytes, index.objects),
        index.data_bytes.div_ceil(CHUNK_SIZE),
    )?;
    catalog.set_tape_state_at(
        tape.id,
        TapeState::Retrieved,
        Some((ElementKind::Slot, slot)),
        true,
    )?;
    tracing::info!(barcode = %tape.barcode, slot, tree_hash = %root, "tape retrieved");
    Ok(root)
}

fn rebuild_runs(barcode: &str, index: &ArchiveIndex) -> Result<Vec<RunRow>, GatewayError> {
    let mut ix = Index::default();
    for &(_, _, count, bytes) in &index.runs {
        match u64::try_from(bytes) {
            Ok(b) => ix.push_records(b, count),
            Err(_) => ix.push_filemarks(count),
        }
    }
    if ix.bytes() != index.data_bytes || ix.objects() != index.objects {
        return Err(corrupt(
            barcode,
            "the archive's record index does not add up to its data".into(),
        ));
    }
    Ok(ix.runs().to_vec())
}

/// Marks a tape damaged with the error that says why.
pub fn mark_damaged(catalog: &Catalog, tape: &TapeRow, e: &GatewayError) {
    tracing::error!(barcode = %tape.barcode, error = %e, "tape damaged");
    if let Err(db) = catalog.set_tape_state(tape.id, TapeState::Damaged, Some(&e.to_string())) {
        tracing::error!(error = %db, "recording a damaged tape");
    }
}

/// Rewrites `shelf/inventory.json` from the catalog: every tape on the shelf or from it.
pub async fn write_inventory(catalog: &Catalog, chunks: &ChunkStore) -> Result<(), GatewayError> {
    let entries: Vec<InventoryEntry> = catalog
        .tapes()?
        .into_iter()
        .filter(|t| t.tree_hash.is_some() || t.location.is_none())
        .map(|t| InventoryEntry {
            barcode: t.barcode,
            state: t.state.label().to_owned(),
            size_bytes: t.size_bytes,
            data_bytes: t.data_bytes,
            tree_hash: t.tree_hash.map(|h| hash_hex(&h)),
            archived_unix: t.archived_unix,
            retention_until_unix: t.retention_until_unix,
            lock: t.lock_mode.map(|l| l.as_str().to_owned()),
        })
        .collect();
    let body =
        serde_json::to_vec_pretty(&entries).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    chunks
        .bucket()
        .put_object(SHELF_INVENTORY, Bytes::from(body), &[])
        .await?;
    Ok(())
}

/// The shelf worker: archives ejected tapes and retrieves requested ones, one at a time,
/// until `stop`; woken by ejects and otherwise polling (retrievals come from the CLI).
pub async fn run(
    catalog: Arc<Catalog>,
    chunks: Arc<ChunkStore>,
    cache: Arc<Cache>,
    library: Arc<crate::gateway::library::Library>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let wake = library.ejected.clone();
    loop {
        match step(&catalog, &chunks, &cache, &library).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "shelf worker"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Does one piece of shelf work; true if there was some.
async fn step(
    catalog: &Catalog,
    chunks: &ChunkStore,
    cache: &Cache,
    library: &crate::gateway::library::Library,
) -> Result<bool, GatewayError> {
    let tapes = catalog.tapes()?;
    let now = crate::clock::unix_secs();
    if let Some(t) = tapes
        .iter()
        .find(|t| matches!(t.state, TapeState::InTransit | TapeState::Archiving))
    {
        match archive(catalog, chunks, cache, t, now).await {
            Ok(_) => {}
            Err(e @ GatewayError::Corrupt(_)) => mark_damaged(catalog, t, &e),
            Err(e) => return Err(e),
        }
        write_inventory(catalog, chunks).await?;
        return Ok(true);
    }
    if let Some(t) = tapes.iter().find(|t| t.state == TapeState::Retrieving) {
        let Some(slot) = library.free_slot()? else {
            return Err(GatewayError::NoSpace(format!(
                "no free storage slot to retrieve tape {} into",
                t.barcode
            )));
        };
        match retrieve(catalog, chunks, cache, t, slot).await {
            Ok(_) => {}
            Err(e @ GatewayError::Corrupt(_)) => mark_damaged(catalog, t, &e),
            Err(e) => return Err(e),
        }
        write_inventory(catalog, chunks).await?;
        return Ok(true);
    }
    Ok(false)
}
