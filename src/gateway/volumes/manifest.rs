//! Snapshot manifests (docs/design.md §2, §4): the list of chunk ids of a volume at one instant.
//!
//! Layout in the bucket: `snapshots/<id>/map/<n>` parts (binary entries: chunk index as u64 LE,
//! then the 32-byte chunk id), then `snapshots/<id>/manifest` (a TOML header naming the parts
//! with their entry counts and content ids). Every object is sealed with the chunk frame, so a
//! changed, swapped or truncated manifest or part fails to open. Invariant: the manifest is
//! written last and never rewritten; a snapshot exists exactly when its manifest does, so an
//! interrupted snapshot leaves only parts, which garbage collection removes.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::store::keys::{
    manifest_snapshot, snapshot_manifest as manifest_key, snapshot_part as part_key,
    snapshot_prefix,
};
use crate::store::{ChunkStore, StoreError};

/// Entries per part: 262,144 × 40 bytes = 10 MiB, so a part is one ordinary object.
pub const ENTRIES_PER_PART: usize = 1 << 18;
const ENTRY_LEN: usize = 40;
const MAGIC: &str = "tidegate-manifest-v1\n";
pub const FORMAT: u32 = 1;

/// Snapshot ids are `snap-` and 16 hex digits; anything else is refused before it reaches a key.
pub fn validate_id(id: &str) -> Result<(), GatewayError> {
    let ok = id
        .strip_prefix("snap-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "{id:?} is not a snapshot id (snap- and 16 hex digits)"
        )))
    }
}

pub fn new_id() -> Result<String, GatewayError> {
    let hex =
        crate::store::master::random_hex::<8>().map_err(|e| GatewayError::Internal(Box::new(e)))?;
    Ok(format!("snap-{hex}"))
}

/// What a snapshot is of; stored in the manifest so a new gateway can restore it alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub snapshot: String,
    pub volume_name: String,
    pub volume_uuid: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub created_unix: i64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub scheduled: bool,
    pub gateway_id: String,
    pub chunks: u64,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub entries: u64,
    /// Content id (keyed BLAKE3) of the part's plaintext: binds each part to this manifest.
    pub id: String,
}

/// A manifest as read back: the header and the chunk map, ascending by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub header: Header,
    pub map: Vec<(u64, [u8; 32])>,
}

fn corrupt(snapshot: &str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::Corrupt(format!("snapshot {snapshot} manifest: {why}").into())
}

fn store(e: StoreError) -> GatewayError {
    GatewayError::from(e)
}

/// Writes the parts, then the manifest (the commit point). Returns the bytes stored.
/// `header.parts` and `header.chunks` are filled in from `map`.
pub async fn write(
    chunks: &ChunkStore,
    mut header: Header,
    map: &[(u64, [u8; 32])],
) -> Result<u64, GatewayError> {
    validate_id(&header.snapshot)?;
    let mut stored = 0;
    header.parts.clear();
    header.chunks = map.len() as u64;
    for (n, entries) in map.chunks(ENTRIES_PER_PART).enumerate() {
        let mut body = Vec::with_capacity(entries.len() * ENTRY_LEN);
        for (index, id) in entries {
            body.extend_from_slice(&index.to_le_bytes());
            body.extend_from_slice(id);
        }
        header.parts.push(Part {
            entries: entries.len() as u64,
            id: chunks.content_id(&body).to_string(),
        });
        stored += chunks
            .put_sealed(&part_key(&header.snapshot, n), Bytes::from(body))
            .await
            .map_err(store)?;
    }
    let text = toml::to_string(&header).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    let body = format!("{MAGIC}{text}");
    stored += chunks
        .put_sealed(&manifest_key(&header.snapshot), Bytes::from(body))
        .await
        .map_err(store)?;
    Ok(stored)
}

/// Reads only the header (one GET).
pub async fn read_header(chunks: &ChunkStore, snapshot: &str) -> Result<Header, GatewayError> {
    validate_id(snapshot)?;
    let raw = chunks
        .get_sealed(&manifest_key(snapshot))
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                GatewayError::NotFound(format!("snapshot {snapshot} in the bucket"))
            }
            other => store(other),
        })?;
    let text = std::str::from_utf8(&raw).map_err(|e| corrupt(snapshot, e))?;
    let text = text
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt(snapshot, "not a tidegate manifest"))?;
    let header: Header = toml::from_str(text).map_err(|e| corrupt(snapshot, e))?;
    if header.format != FORMAT {
        return Err(corrupt(
            snapshot,
            format!("format {} (this tidegate reads {FORMAT})", header.format),
        ));
    }
    if header.snapshot != snapshot {
        return Err(corrupt(snapshot, "names another snapshot"));
    }
    Ok(header)
}

/// Reads and checks a whole manifest: every part opens, matches its id and count, and the map
/// is strictly ascending and inside the volume.
pub async fn read(chunks: &ChunkStore, snapshot: &str) -> Result<Manifest, GatewayError> {
    let header = read_header(chunks, snapshot).await?;
    let limit = header.size_bytes.div_ceil(header.chunk_size.max(1));
    let mut map = Vec::with_capacity(usize::try_from(header.chunks).unwrap_or(0).min(1 << 24));
    for (n, part) in header.parts.iter().enumerate() {
        let body = chunks
            .get_sealed(&part_key(snapshot, n))
            .await
            .map_err(store)?;
        if chunks.content_id(&body).to_string() != part.id {
            return Err(corrupt(snapshot, format!("part {n} does not match")));
        }
        if body.len() as u64 != part.entries * ENTRY_LEN as u64 {
            return Err(corrupt(snapshot, format!("part {n} has the wrong length")));
        }
        for entry in body.chunks_exact(ENTRY_LEN) {
            let (index, id) = entry.split_at(8);
            let index = u64::from_le_bytes(index.try_into().unwrap_or_default());
            let id: [u8; 32] = id.try_into().unwrap_or([0; 32]);
            if index >= limit || map.last().is_some_and(|&(prev, _)| prev >= index) {
                return Err(corrupt(
                    snapshot,
                    format!("chunk index {index} out of order"),
                ));
            }
            map.push((index, id));
        }
    }
    if map.len() as u64 != header.chunks {
        return Err(corrupt(snapshot, "chunk count does not match"));
    }
    Ok(Manifest { header, map })
}

/// Deletes a snapshot: the manifest first, so it stops existing at once, then its parts.
pub async fn delete(chunks: &ChunkStore, snapshot: &str) -> Result<(), GatewayError> {
    validate_id(snapshot)?;
    let bucket = chunks.bucket();
    bucket
        .delete(&manifest_key(snapshot))
        .await
        .map_err(store)?;
    for object in bucket
        .list(&snapshot_prefix(snapshot))
        .await
        .map_err(store)?
    {
        bucket.delete(&object.key).await.map_err(store)?;
    }
    Ok(())
}

/// Ids of every committed snapshot in the bucket (those with a manifest).
pub async fn list_committed(chunks: &ChunkStore) -> Result<BTreeSet<String>, GatewayError> {
    Ok(chunks
        .bucket()
        .list(crate::store::keys::SNAPSHOTS_PREFIX)
        .await
        .map_err(store)?
        .into_iter()
        .filter_map(|o| {
            let id = manifest_snapshot(&o.key)?;
            validate_id(id).ok().map(|()| id.to_owned())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = new_id().unwrap();
        validate_id(&id).unwrap();
        for bad in [
            "snap-",
            "snap-xyz",
            "../manifest",
            "snap-0123456789abcdef0",
            "s",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
