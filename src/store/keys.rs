//! Object naming in the bucket (docs/design.md §2) and the chunk id type.
//!
//! Owns every object key the gateway writes; no other module formats a key by hand, so the
//! bucket layout changes in one place. Keys are relative to the gateway's bucket root (the
//! configured prefix is applied by the bucket, not here), which is also what a frame's AAD binds:
//! a bucket can move to another prefix without its chunks failing verification.

use std::fmt;
use std::str::FromStr;

/// The key-check object: a sealed known value that tells a wrong key at start-up.
pub const KEYCHECK: &str = "gateway/keycheck";

/// Where chunks live; chunk objects are `chunks/<64 hex digits>`.
pub const CHUNKS_PREFIX: &str = "chunks/";

/// Where snapshot manifests live: `snapshots/<id>/manifest` and its parts `.../map/<n>`.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";

/// The tape shelf (docs/design.md §6): `shelf/<barcode>/part-<n>` archive parts,
/// `shelf/<barcode>/index` (the record index and part hashes), and `shelf/inventory.json`.
pub const SHELF_INVENTORY: &str = "shelf/inventory.json";

pub fn shelf_part(barcode: &str, part: u64) -> String {
    format!("shelf/{barcode}/part-{part:06}")
}

pub fn shelf_index(barcode: &str) -> String {
    format!("shelf/{barcode}/index")
}

pub fn snapshot_manifest(snapshot: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{snapshot}/manifest")
}

pub fn snapshot_part(snapshot: &str, n: usize) -> String {
    format!("{SNAPSHOTS_PREFIX}{snapshot}/map/{n:06}")
}

/// Every object of one snapshot (manifest and parts) is under this prefix.
pub fn snapshot_prefix(snapshot: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{snapshot}/")
}

/// The snapshot id of a manifest key, if `key` is one.
pub fn manifest_snapshot(key: &str) -> Option<&str> {
    key.strip_prefix(SNAPSHOTS_PREFIX)?
        .strip_suffix("/manifest")
}

/// Encrypted catalog copies of one gateway: `gateway/<id>/catalog/<generation, 20 digits>`.
pub fn catalog_backup_prefix(gateway_id: &str) -> String {
    format!("gateway/{gateway_id}/catalog/")
}

pub fn catalog_backup(gateway_id: &str, generation: u64) -> String {
    format!("gateway/{gateway_id}/catalog/{generation:020}")
}

/// `(gateway id, generation)` of a catalog backup key.
pub fn parse_catalog_backup(key: &str) -> Option<(&str, u64)> {
    let (gateway, generation) = key.strip_prefix("gateway/")?.split_once("/catalog/")?;
    (generation.len() == 20).then_some(())?;
    Some((gateway, generation.parse().ok()?))
}

/// The key of part `n` (from 1) of the parted object `key` (store::parted): beside the
/// object, not below it, since a `file://` bucket cannot hold a file and a directory of one name.
pub fn part_key(key: &str, n: u32) -> String {
    format!("{key}.part-{n:06}")
}

/// `(object key, part number)` of a part key.
pub fn parse_part_key(key: &str) -> Option<(&str, u32)> {
    let (object, n) = key.rsplit_once(".part-")?;
    (n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    Some((object, n.parse().ok()?))
}

/// Who writes gateway `<id>`'s catalog copies (store::writer).
pub fn catalog_writer(gateway_id: &str) -> String {
    format!("gateway/{gateway_id}/writer")
}

/// A chunk's content address: keyed BLAKE3 of its plaintext under the gateway's dedup key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn object_key(&self) -> String {
        format!("{CHUNKS_PREFIX}{self}")
    }

    /// Parses a chunk object key back into its id; `None` for anything else under the prefix.
    pub fn from_object_key(key: &str) -> Option<Self> {
        key.strip_prefix(CHUNKS_PREFIX)?.parse().ok()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a chunk id (expected 64 hex digits)")]
pub struct BadChunkId;

impl FromStr for ChunkId {
    type Err = BadChunkId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex::<32>(s).map(ChunkId).ok_or(BadChunkId)
    }
}

/// Bytes from hex of any length (either case); `None` for odd lengths or other characters.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lower-case hex, the form used in object keys, key files and fingerprints.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses exactly `N` bytes of hex (either case); `None` on any other input.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_parse_back() {
        assert_eq!(
            parse_part_key(&part_key("gateway/g/catalog/1", 12)),
            Some(("gateway/g/catalog/1", 12))
        );
        for bad in ["gateway/g/catalog/1", "x.part-12", "x.part-00001a"] {
            assert_eq!(parse_part_key(bad), None, "{bad}");
        }
        // A part of a catalog copy is not taken for a copy.
        let part = part_key(&catalog_backup("g", 7), 1);
        assert_eq!(parse_catalog_backup(&part), None);
    }

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = hex(&bytes);
        assert_eq!(&text[..6], "000102");
        assert_eq!(parse_hex::<256>(&text).unwrap().to_vec(), bytes);
        assert_eq!(parse_hex::<2>("ABcd"), Some([0xab, 0xcd]));
        assert_eq!(unhex(&text), Some(bytes));
        assert_eq!(unhex(""), Some(Vec::new()));
        for bad in ["abc", "zz", "0g", "+1", "abcd "] {
            assert_eq!(parse_hex::<2>(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_keys_round_trip() {
        let id = ChunkId([0x5a; 32]);
        let key = id.object_key();
        assert!(key.starts_with("chunks/5a5a"));
        assert_eq!(ChunkId::from_object_key(&key), Some(id));
        assert_eq!(ChunkId::from_object_key("chunks/xyz"), None);
        assert_eq!(ChunkId::from_object_key(KEYCHECK), None);
    }
}
