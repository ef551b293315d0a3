//! Block volumes (docs/design.md §4): creation rules, the LBA → chunk mapping, and (in `volume.rs`)
//! the
//! `BlockDevice` each volume presents over the write-back cache.
//!
//! Chunk size is 1 MiB (docs/decisions/0002): the unit of upload, dedup and cache fill. A volume
//! is a sequence of chunks `v<id>/<index as 16 hex digits>` in the cache; the catalog's chunk map
//! says which bucket chunk holds each index, and an index with no entry reads as zeros and costs
//! nothing in the bucket. Limits: 32 volumes per gateway, 32 TiB each.

pub mod image;
pub mod manifest;
pub mod sink;
pub mod snapshot;
pub mod stored;
pub mod volume;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::catalog::volumes::{NewVolume, VolumeMode, VolumeRow};
use crate::gateway::GatewayError;

pub const CHUNK_SIZE: u64 = 1 << 20;
pub const BLOCK_SIZE: u32 = 512;
pub const MAX_VOLUMES: usize = 32;
pub const MAX_VOLUME_SIZE: u64 = 32 << 40;
/// Volumes are sized in whole 1 MiB chunks so no chunk is partly outside its volume.
pub const SIZE_GRANULARITY: u64 = CHUNK_SIZE;

/// The cache object holding chunk `index` of volume `id`.
pub fn object_name(volume: i64, index: u64) -> String {
    format!("v{volume}/{index:016x}")
}

/// Inverse of `object_name`; `None` for anything that is not a volume chunk.
pub fn parse_object_name(name: &str) -> Option<(i64, u64)> {
    parse_chunk_name('v', name)
}

/// `<kind><owner id>/<index as 16 hex digits>` split into owner id and index.
pub(crate) fn parse_chunk_name(kind: char, name: &str) -> Option<(i64, u64)> {
    let (owner, index) = name.strip_prefix(kind)?.split_once('/')?;
    if index.len() != 16 {
        return None;
    }
    Some((owner.parse().ok()?, u64::from_str_radix(index, 16).ok()?))
}

/// One piece of an I/O that falls inside a single chunk.
pub(crate) struct Segment {
    pub chunk: u64,
    pub offset: u64,
    pub len: u64,
}

/// Byte offset and length of `blocks` blocks at `lba`, checked against the volume's end.
pub(crate) fn byte_range(
    row: &VolumeRow,
    lba: u64,
    blocks: u64,
) -> Result<(u64, u64), GatewayError> {
    let bs = u64::from(row.block_size);
    let num_blocks = row.size_bytes / bs;
    let end = lba.checked_add(blocks).filter(|&e| e <= num_blocks);
    match (end, lba.checked_mul(bs), blocks.checked_mul(bs)) {
        (Some(_), Some(offset), Some(len)) => Ok((offset, len)),
        _ => Err(GatewayError::OutOfRange(format!(
            "blocks {lba}+{blocks} beyond the end of volume {} ({num_blocks} blocks)",
            row.name
        ))),
    }
}

/// The byte range of a write of `len` bytes at `lba`: whole blocks, inside the volume.
pub(crate) fn write_range(
    row: &VolumeRow,
    lba: u64,
    len: usize,
) -> Result<(u64, u64), GatewayError> {
    let bs = u64::from(row.block_size);
    if !(len as u64).is_multiple_of(bs) {
        return Err(GatewayError::InvalidArgument(format!(
            "{len} bytes is not a whole number of blocks"
        )));
    }
    byte_range(row, lba, len as u64 / bs)
}

/// What a volume answers to INQUIRY (VPD 80h/83h): its name, serial and UUID.
pub(crate) fn identity(row: &VolumeRow) -> crate::gateway::block::DeviceIdentity {
    crate::gateway::block::DeviceIdentity {
        name: row.name.clone(),
        serial: row.serial.clone(),
        uuid: row.uuid,
    }
}

/// Splits a byte range into the pieces that fall inside single chunks.
pub(crate) fn segments(chunk_size: u64, offset: u64, len: u64) -> impl Iterator<Item = Segment> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let chunk = pos / chunk_size;
        let within = pos % chunk_size;
        let take = (chunk_size - within).min(end - pos);
        pos += take;
        Some(Segment {
            chunk,
            offset: within,
            len: take,
        })
    })
}

/// Volume names become part of iSCSI target names (RFC 3720 §3.2.6.3.1: lower case, digits,
/// '-', '.'), so they are limited to those.
pub fn validate_name(name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "volume name {name:?}: use 1 to 64 characters of a-z, 0-9, '-' and '.', starting \
             with a letter or digit"
        )))
    }
}

#[derive(Debug)]
pub struct CreateVolume<'a> {
    pub name: &'a str,
    /// Required unless a stored volume preserves an existing disk (its size is then the disk's).
    pub size_bytes: Option<u64>,
    pub mode: VolumeMode,
    /// Stored volumes: the local file (created if missing) or block device.
    pub local_path: Option<&'a str>,
    /// Stored volumes: keep the disk's data and upload it (the initial upload).
    pub preserve_existing: bool,
}

/// Checks a new volume's name and size against the rules and the volumes already there.
pub fn check_new(catalog: &Catalog, name: &str, size_bytes: u64) -> Result<(), GatewayError> {
    validate_name(name)?;
    if size_bytes == 0 || size_bytes > MAX_VOLUME_SIZE {
        return Err(GatewayError::InvalidArgument(format!(
            "volume size must be between 1 MiB and 32 TiB, not {size_bytes} bytes"
        )));
    }
    if !size_bytes.is_multiple_of(SIZE_GRANULARITY) {
        return Err(GatewayError::InvalidArgument(format!(
            "volume size must be a whole number of MiB, not {size_bytes} bytes"
        )));
    }
    let existing = catalog.volumes()?;
    if existing.iter().any(|v| v.name == name) {
        return Err(GatewayError::AlreadyExists(format!("volume {name}")));
    }
    if existing.len() >= MAX_VOLUMES {
        return Err(GatewayError::InvalidArgument(format!(
            "a gateway holds at most {MAX_VOLUMES} volumes"
        )));
    }
    Ok(())
}

/// A fresh identity for a new volume: its SCSI serial and its UUID (VPD 80h / 83h).
pub fn new_identity() -> Result<(String, [u8; 16]), GatewayError> {
    let uuid_hex = crate::store::master::random_hex::<16>()
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
    let uuid = crate::store::keys::parse_hex::<16>(&uuid_hex)
        .ok_or_else(|| GatewayError::InvalidArgument("random id".into()))?;
    Ok((format!("TDG{}", &uuid_hex[..20].to_ascii_uppercase()), uuid))
}

/// Creates a volume in the catalog (for a stored one, prepares its local disk first). A
/// running daemon picks it up and exposes it.
pub fn create(catalog: &Catalog, req: &CreateVolume<'_>) -> Result<VolumeRow, GatewayError> {
    validate_name(req.name)?;
    let (size_bytes, local_path) = match (req.mode, req.local_path) {
        (VolumeMode::Cached, None) if !req.preserve_existing => (
            req.size_bytes.ok_or_else(|| {
                GatewayError::InvalidArgument("a cached volume needs --size".into())
            })?,
            None,
        ),
        (VolumeMode::Cached, _) => {
            return Err(GatewayError::InvalidArgument(
                "--local-path and --preserve-existing are for --mode stored".into(),
            ));
        }
        (VolumeMode::Stored, None) => {
            return Err(GatewayError::InvalidArgument(
                "a stored volume needs --local-path (a file or block device)".into(),
            ));
        }
        (VolumeMode::Stored, Some(path)) => {
            if let Some(size) = req.size_bytes {
                check_new(catalog, req.name, size)?;
            }
            let absolute = std::path::absolute(path)
                .map_err(|e| GatewayError::InvalidArgument(format!("{path}: {e}")))?;
            let size = stored::prepare_local(&absolute, req.size_bytes, req.preserve_existing)?;
            (size, Some(absolute.to_string_lossy().into_owned()))
        }
    };
    let new = NewVolumeSpec {
        name: req.name,
        size_bytes,
        mode: req.mode,
        local_path: local_path.as_deref(),
    };
    let row = create_with(catalog, &new, |v| catalog.create_volume(v))?;
    if req.preserve_existing {
        catalog.set_stored_scan_from(row.id, Some(0))?;
    }
    Ok(row)
}

/// What `create_with` is asked to create; the rest of the row it fills in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewVolumeSpec<'a> {
    pub name: &'a str,
    pub size_bytes: u64,
    pub mode: VolumeMode,
    pub local_path: Option<&'a str>,
}

/// Checks a new volume, gives it its identity and has `insert` write it: the row alone
/// (`create`), or the row with its whole chunk map in one transaction (an image import).
pub(crate) fn create_with(
    catalog: &Catalog,
    new: &NewVolumeSpec<'_>,
    insert: impl FnOnce(&NewVolume<'_>) -> Result<VolumeRow, crate::catalog::CatalogError>,
) -> Result<VolumeRow, GatewayError> {
    check_new(catalog, new.name, new.size_bytes)?;
    let (serial, uuid) = new_identity()?;
    Ok(insert(&NewVolume {
        name: new.name,
        size_bytes: new.size_bytes,
        block_size: BLOCK_SIZE,
        chunk_size: CHUNK_SIZE,
        mode: new.mode,
        serial: &serial,
        uuid,
        created_unix: crate::clock::unix_secs(),
        local_path: new.local_path,
        origin_snapshot: None,
    })?)
}

pub fn delete(catalog: &Catalog, name: &str) -> Result<(), GatewayError> {
    if catalog.delete_volume(name)? {
        Ok(())
    } else {
        Err(GatewayError::NotFound(format!("volume {name}")))
    }
}

/// A volume with its bucket usage, for listings.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub row: VolumeRow,
    /// Chunks holding data in the bucket (each up to CHUNK_SIZE before compression).
    pub mapped_chunks: u64,
}

pub fn list(catalog: &Arc<Catalog>) -> Result<Vec<VolumeInfo>, GatewayError> {
    catalog
        .volumes()?
        .into_iter()
        .map(|row| {
            Ok(VolumeInfo {
                mapped_chunks: catalog.volume_usage(row.id)?,
                row,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        for (v, i) in [(1, 0), (32, 0x1f_ffff), (7, u64::MAX)] {
            assert_eq!(parse_object_name(&object_name(v, i)), Some((v, i)));
        }
        for bad in [
            "x1/0000000000000000",
            "v1/00",
            "v/0000000000000000",
            "v1-0000000000000000",
        ] {
            assert_eq!(parse_object_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn creation_rules() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        fn ok(name: &str, size_bytes: u64) -> CreateVolume<'_> {
            CreateVolume {
                name,
                size_bytes: Some(size_bytes),
                mode: VolumeMode::Cached,
                local_path: None,
                preserve_existing: false,
            }
        }
        create(&c, &ok("vol-1", 1 << 30)).unwrap();
        create(&c, &ok("big", 32 << 40)).unwrap();
        for (req, why) in [
            (ok("vol-1", 1 << 30), "duplicate"),
            (ok("Vol", 1 << 30), "upper case"),
            (ok("a b", 1 << 30), "space"),
            (ok("-x", 1 << 30), "leading dash"),
            (ok("huge", (32 << 40) + (1 << 20)), "over 32 TiB"),
            (ok("odd", (1 << 20) + 512), "not whole MiB"),
            (ok("zero", 0), "zero"),
        ] {
            assert!(create(&c, &req).is_err(), "{why}");
        }
        for i in 2..MAX_VOLUMES {
            let name = format!("v{i}");
            create(&c, &ok(&name, 1 << 20)).unwrap();
        }
        assert!(create(&c, &ok("one-too-many", 1 << 20)).is_err());
        assert!(delete(&c, "nope").is_err());
        delete(&c, "vol-1").unwrap();
    }
}
