//! Virtual tapes (docs/design.md §6): the rules for creating and deleting them, and (in `medium`) a
//! tape's data as an append-only stream of records and filemarks over the write-back cache.
//!
//! A tape's record data is one byte stream cut into 1 MiB cache objects `t<id>/<index>` (the
//! same chunking, sealing and dedup as volumes, through the same sink); `index` holds where
//! each record and filemark is. Barcodes are unique across the library and the shelf because
//! both are rows of one table. Limits: 100 GiB to 5 TiB per tape (the lower bound is a config
//! setting for test rigs), 1,500 tapes inside the library.

pub mod index;
pub mod medium;
pub mod shelf;

use crate::catalog::Catalog;
use crate::catalog::tapes::{ElementKind, LockMode, NewTape, TapeRow, TapeState};
use crate::gateway::GatewayError;

pub use crate::gateway::volumes::CHUNK_SIZE;

pub const MIN_TAPE_SIZE: u64 = 100 << 30;
pub const MAX_TAPE_SIZE: u64 = 5 << 40;
/// Tapes inside the library at once (slots, drives and mail slots); the shelf is unbounded.
pub const MAX_TAPES_INSIDE: usize = 1500;
/// Tapes one `tape create` may make.
pub const MAX_CREATE: u32 = 100;

/// The cache object holding chunk `index` of tape `id`'s data stream.
pub fn object_name(tape: i64, index: u64) -> String {
    format!("t{tape}/{index:016x}")
}

/// Inverse of `object_name`; `None` for anything that is not a tape chunk.
pub fn parse_object_name(name: &str) -> Option<(i64, u64)> {
    crate::gateway::volumes::parse_chunk_name('t', name)
}

/// SMC volume tags carry the barcode; 7 to 15 of A-Z and 0-9 is what backup products and
/// label printers accept (LTO labels are 8, the commercial gateway allows up to 15).
pub fn validate_barcode(barcode: &str) -> Result<(), GatewayError> {
    let ok = (7..=15).contains(&barcode.len())
        && barcode
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "barcode {barcode:?}: use 7 to 15 characters of A-Z and 0-9"
        )))
    }
}

/// What `tape create` asks for.
#[derive(Debug, Clone)]
pub struct CreateTapes<'a> {
    pub prefix: &'a str,
    pub count: u32,
    pub size_bytes: u64,
    /// Retention from creation, with its lock mode.
    pub retention: Option<(u32, LockMode)>,
}

/// The bounds a gateway applies to tapes (the library's slot count, the smallest tape size).
#[derive(Debug, Clone, Copy)]
pub struct TapeLimits {
    pub slots: u32,
    pub min_size: u64,
}

/// Creates `count` tapes with barcodes `<prefix><number>` (numbers padded so barcodes are at
/// least 8 characters; numbers already used are skipped) in the lowest free storage slots.
pub fn create(
    catalog: &Catalog,
    req: &CreateTapes<'_>,
    limits: TapeLimits,
    now_unix: i64,
) -> Result<Vec<TapeRow>, GatewayError> {
    let prefix_ok = (1..=12).contains(&req.prefix.len())
        && req
            .prefix
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if !prefix_ok {
        return Err(GatewayError::InvalidArgument(format!(
            "barcode prefix {:?}: use 1 to 12 characters of A-Z and 0-9",
            req.prefix
        )));
    }
    if req.count == 0 || req.count > MAX_CREATE {
        return Err(GatewayError::InvalidArgument(format!(
            "--count must be 1 to {MAX_CREATE}, not {}",
            req.count
        )));
    }
    if req.size_bytes < limits.min_size || req.size_bytes > MAX_TAPE_SIZE {
        return Err(GatewayError::InvalidArgument(format!(
            "tape size must be between {} and {} bytes (100 GiB to 5 TiB), not {}",
            limits.min_size, MAX_TAPE_SIZE, req.size_bytes
        )));
    }
    if !req.size_bytes.is_multiple_of(CHUNK_SIZE) {
        return Err(GatewayError::InvalidArgument(format!(
            "tape size must be a whole number of MiB, not {} bytes",
            req.size_bytes
        )));
    }
    let existing = catalog.tapes()?;
    let inside = existing.iter().filter(|t| t.location.is_some()).count();
    let count = req.count as usize;
    if inside + count > MAX_TAPES_INSIDE {
        return Err(GatewayError::NoSpace(format!(
            "the library holds at most {MAX_TAPES_INSIDE} tapes; {inside} are inside"
        )));
    }
    let used_slots: std::collections::HashSet<u32> = existing
        .iter()
        .filter_map(|t| match t.location {
            Some((ElementKind::Slot, i)) => Some(i),
            _ => None,
        })
        .collect();
    let free: Vec<u32> = (0..limits.slots)
        .filter(|s| !used_slots.contains(s))
        .take(count)
        .collect();
    if free.len() < count {
        return Err(GatewayError::NoSpace(format!(
            "only {} free storage slots for {count} tapes",
            free.len()
        )));
    }
    let used: std::collections::HashSet<&str> =
        existing.iter().map(|t| t.barcode.as_str()).collect();
    let width = 8usize.saturating_sub(req.prefix.len()).max(1);
    let mut barcodes = Vec::with_capacity(count);
    let mut n: u64 = 1;
    while barcodes.len() < count {
        let b = format!("{}{n:0width$}", req.prefix);
        if b.len() > 15 {
            return Err(GatewayError::NoSpace(format!(
                "no free barcodes left with prefix {}",
                req.prefix
            )));
        }
        if !used.contains(b.as_str()) {
            validate_barcode(&b)?;
            barcodes.push(b);
        }
        n += 1;
    }
    let (until, lock) = match req.retention {
        Some((days, lock)) => (
            Some(now_unix.saturating_add(i64::from(days) * 86_400)),
            Some(lock),
        ),
        None => (None, None),
    };
    let new: Vec<NewTape> = barcodes
        .into_iter()
        .zip(free)
        .map(|(barcode, slot)| NewTape {
            barcode,
            size_bytes: req.size_bytes,
            slot,
            created_unix: now_unix,
            retention_until_unix: until,
            lock_mode: lock,
        })
        .collect();
    Ok(catalog.create_tapes(&new)?)
}

pub fn find(catalog: &Catalog, barcode: &str) -> Result<TapeRow, GatewayError> {
    catalog
        .tape(barcode)?
        .ok_or_else(|| GatewayError::NotFound(format!("tape {barcode}")))
}

/// Deletes a tape: one inside the library only if it holds no data (and is not in a drive);
/// one on the shelf only once its retention has passed. A compliance lock binds everyone; a
/// governance lock yields to `bypass_governance`.
pub fn delete(
    catalog: &Catalog,
    barcode: &str,
    bypass_governance: bool,
    now_unix: i64,
) -> Result<(), GatewayError> {
    let t = find(catalog, barcode)?;
    if let Some(until) = t.retention_until_unix
        && now_unix < until
    {
        let locked = match t.lock_mode {
            Some(LockMode::Compliance) => true,
            Some(LockMode::Governance) => !bypass_governance,
            None => false,
        };
        if locked {
            return Err(GatewayError::PermissionDenied(format!(
                "tape {barcode} is under {} retention until {} (unix time)",
                t.lock_mode.map_or("", LockMode::as_str),
                until
            )));
        }
    }
    match (t.state, t.location) {
        (_, Some((ElementKind::Drive, _))) => Err(GatewayError::Busy(format!(
            "tape {barcode} is in a drive; move it to a slot first"
        ))),
        (TapeState::Available, Some(_)) if t.objects > 0 => Err(GatewayError::NotEmpty(format!(
            "tape {barcode} holds data; eject it to the shelf, or erase it"
        ))),
        (TapeState::Archived | TapeState::Damaged, None) | (TapeState::Available, Some(_)) => {
            catalog.delete_tape(t.id)?;
            Ok(())
        }
        (state, _) => Err(GatewayError::Busy(format!(
            "tape {barcode} is {}; it can be deleted when empty in the library or archived",
            state.label()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TapeLimits = TapeLimits {
        slots: 4,
        min_size: MIN_TAPE_SIZE,
    };

    fn req(prefix: &str, count: u32) -> CreateTapes<'_> {
        CreateTapes {
            prefix,
            count,
            size_bytes: MIN_TAPE_SIZE,
            retention: None,
        }
    }

    #[test]
    fn barcodes_and_sizes() {
        for ok in ["TDG0001", "ABCDEFGHIJKLMNO", "12345678"] {
            assert!(validate_barcode(ok).is_ok(), "{ok}");
        }
        for bad in ["TDG001", "ABCDEFGHIJKLMNOP", "tdg00001", "TDG-0001", ""] {
            assert!(validate_barcode(bad).is_err(), "{bad}");
        }
        for (name, round) in [
            ("t3/00000000000000ff", Some((3, 255))),
            ("v3/00000000000000ff", None),
        ] {
            assert_eq!(parse_object_name(name), round);
        }
        assert_eq!(object_name(3, 255), "t3/00000000000000ff");
    }

    #[test]
    fn create_and_delete_rules() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let made = create(&c, &req("TDG", 2), LIMITS, 10).unwrap();
        let names: Vec<_> = made.iter().map(|t| t.barcode.as_str()).collect();
        assert_eq!(names, ["TDG00001", "TDG00002"]);
        for (r, why) in [
            (req("tdg", 1), "lower case prefix"),
            (req("TDG", 0), "zero count"),
            (req("TDG", 3), "only 2 slots left"),
            (
                CreateTapes {
                    size_bytes: 50 << 30,
                    ..req("TDG", 1)
                },
                "too small",
            ),
            (
                CreateTapes {
                    size_bytes: 6 << 40,
                    ..req("TDG", 1)
                },
                "too large",
            ),
        ] {
            assert!(create(&c, &r, LIMITS, 10).is_err(), "{why}");
        }
        let more = create(&c, &req("TDG", 1), LIMITS, 10).unwrap();
        assert_eq!(more[0].barcode, "TDG00003");
        assert_eq!(more[0].location, Some((ElementKind::Slot, 2)));
        let locked = create(
            &c,
            &CreateTapes {
                retention: Some((1, LockMode::Compliance)),
                ..req("LCK", 1)
            },
            LIMITS,
            10,
        )
        .unwrap();
        // An empty tape in a slot goes; a locked one stays until its date, bypass or not.
        delete(&c, "TDG00001", false, 20).unwrap();
        assert!(delete(&c, "TDG00001", false, 20).is_err());
        let b = &locked[0].barcode;
        assert!(delete(&c, b, true, 20).is_err());
        delete(&c, b, false, 10 + 86_400).unwrap();
        // A tape with data in the library is refused.
        let t = c.tape("TDG00002").unwrap().unwrap();
        c.commit_tape_index(t.id, 0, &[], (0, 1), 0).unwrap();
        assert!(delete(&c, "TDG00002", false, 20).is_err());
    }
}

/// An engine for tests: a catalog, a local-directory bucket, a cache over it, in a temp dir.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::Arc;

    use tidegate_cache::{Cache, CacheConfig};

    use crate::catalog::Catalog;
    use crate::config::BucketConfig;
    use crate::gateway::volumes::sink::BucketSink;
    use crate::store::{Bucket, ChunkStore, Codec, MasterKey};

    pub struct Rig {
        /// Kept so the directory lives as long as the rig.
        #[allow(dead_code)]
        pub dir: tempfile::TempDir,
        pub catalog: Arc<Catalog>,
        #[allow(dead_code)]
        pub chunks: Arc<ChunkStore>,
        pub cache: Arc<Cache>,
    }

    pub fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).unwrap());
        let bucket =
            Arc::new(Bucket::open(&BucketConfig::local(dir.path().join("bucket")), true).unwrap());
        let chunks = Arc::new(ChunkStore::new(
            bucket,
            Codec::new(MasterKey::generate().unwrap()),
        ));
        let sink = Arc::new(BucketSink::new(catalog.clone(), chunks.clone()));
        let cfg = CacheConfig::new(
            dir.path().join("cache"),
            64 << 20,
            dir.path().join("buffer"),
            64 << 20,
        );
        let cache = Arc::new(Cache::open(cfg, sink).unwrap());
        Rig {
            dir,
            catalog,
            chunks,
            cache,
        }
    }
}
