//! Tapes: rows, where each tape is in the library, its record index (runs), its chunk map and
//! the archive parts of shelved tapes.
//!
//! Invariants: a chunk-map row is written only after its chunk is in the bucket (as for
//! volumes); a tape's index is replaced in one transaction (`commit_tape_index`), so a crash
//! leaves the old index or the new one; two tapes never share an element (UNIQUE constraint).

use rusqlite::{OptionalExtension, Transaction, params};

use crate::catalog::volumes::{ChunkMap, as_i64};

const TAPE_MAP: ChunkMap = ChunkMap {
    table: "tape_chunks",
    owner: "tape_id",
    owners: "tapes",
};
use crate::catalog::{Catalog, CatalogError};

/// A tape's life cycle (docs/design.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeState {
    Available,
    InTransit,
    Archiving,
    Archived,
    Retrieving,
    Retrieved,
    Damaged,
}

impl TapeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::InTransit => "in_transit",
            Self::Archiving => "archiving",
            Self::Archived => "archived",
            Self::Retrieving => "retrieving",
            Self::Retrieved => "retrieved",
            Self::Damaged => "damaged",
        }
    }

    /// How operators read it (`tape list`, status): upper case with spaces, as the issue and
    /// the commercial gateway spell it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Available => "AVAILABLE",
            Self::InTransit => "IN TRANSIT TO SHELF",
            Self::Archiving => "ARCHIVING",
            Self::Archived => "ARCHIVED",
            Self::Retrieving => "RETRIEVING",
            Self::Retrieved => "RETRIEVED",
            Self::Damaged => "DAMAGED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Self::Available,
            "in_transit" => Self::InTransit,
            "archiving" => Self::Archiving,
            "archived" => Self::Archived,
            "retrieving" => Self::Retrieving,
            "retrieved" => Self::Retrieved,
            "damaged" => Self::Damaged,
            _ => return None,
        })
    }
}

/// The element types a tape can sit in (the transport never holds one at rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementKind {
    Slot,
    Drive,
    Mail,
}

impl ElementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slot => "slot",
            Self::Drive => "drive",
            Self::Mail => "mail",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "slot" => Self::Slot,
            "drive" => Self::Drive,
            "mail" => Self::Mail,
            _ => return None,
        })
    }
}

/// Where a tape is: an element of the library (kind, 0-based index within the kind), or the
/// shelf (`None`).
pub type Location = Option<(ElementKind, u32)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "governance",
            Self::Compliance => "compliance",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "governance" => Some(Self::Governance),
            "compliance" => Some(Self::Compliance),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeRow {
    pub id: i64,
    pub barcode: String,
    pub size_bytes: u64,
    pub state: TapeState,
    pub location: Location,
    /// The storage slot it last sat in (reported as a drive's source element).
    pub home_slot: Option<u32>,
    pub read_only: bool,
    pub data_bytes: u64,
    pub objects: u64,
    pub created_unix: i64,
    pub retention_until_unix: Option<i64>,
    pub lock_mode: Option<LockMode>,
    pub tree_hash: Option<[u8; 32]>,
    pub archived_unix: Option<i64>,
    pub progress_bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewTape {
    pub barcode: String,
    pub size_bytes: u64,
    pub slot: u32,
    pub created_unix: i64,
    pub retention_until_unix: Option<i64>,
    pub lock_mode: Option<LockMode>,
}

/// One run of the record index (see the migration): `record_bytes` is `None` for filemarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRow {
    pub first_object: u64,
    pub byte_offset: u64,
    pub count: u64,
    pub record_bytes: Option<u64>,
    pub filemarks_before: u64,
}

/// One archive part of a shelved tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShelfPart {
    pub part: u64,
    pub plain_bytes: u64,
    pub tree_hash: [u8; 32],
}

const COLUMNS: &str = "id, barcode, size_bytes, state, element_type, element_index, read_only, \
     data_bytes, objects, created_unix, retention_until_unix, lock_mode, tree_hash, \
     archived_unix, progress_bytes, error, home_slot";

fn row_to_tape(r: &rusqlite::Row<'_>) -> rusqlite::Result<TapeRow> {
    let conv = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
    let u = |i: usize| -> rusqlite::Result<u64> {
        let v: i64 = r.get(i)?;
        u64::try_from(v).map_err(|_| conv(i))
    };
    let state: String = r.get(3)?;
    let kind: Option<String> = r.get(4)?;
    let index: Option<i64> = r.get(5)?;
    let location = match (kind.as_deref().and_then(ElementKind::parse), index) {
        (Some(k), Some(i)) => Some((k, u32::try_from(i).map_err(|_| conv(5))?)),
        _ => None,
    };
    let lock: Option<String> = r.get(11)?;
    let hash: Option<Vec<u8>> = r.get(12)?;
    Ok(TapeRow {
        id: r.get(0)?,
        barcode: r.get(1)?,
        size_bytes: u(2)?,
        state: TapeState::parse(&state).ok_or_else(|| conv(3))?,
        location,
        read_only: r.get::<_, i64>(6)? != 0,
        data_bytes: u(7)?,
        objects: u(8)?,
        created_unix: r.get(9)?,
        retention_until_unix: r.get(10)?,
        lock_mode: lock.as_deref().and_then(LockMode::parse),
        tree_hash: hash.and_then(|h| h.try_into().ok()),
        archived_unix: r.get(13)?,
        progress_bytes: u(14)?,
        error: r.get(15)?,
        home_slot: r
            .get::<_, Option<i64>>(16)?
            .and_then(|v| u32::try_from(v).ok()),
    })
}

fn location_params(loc: Location) -> (Option<&'static str>, Option<i64>) {
    match loc {
        Some((k, i)) => (Some(k.as_str()), Some(i64::from(i))),
        None => (None, None),
    }
}

impl Catalog {
    /// Inserts new tapes in one transaction: all of them or none (a duplicate barcode or an
    /// occupied slot fails the whole batch).
    pub fn create_tapes(&self, tapes: &[NewTape]) -> Result<Vec<TapeRow>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(tapes.len());
        for t in tapes {
            tx.execute(
                "INSERT INTO tapes (barcode, size_bytes, state, element_type, element_index,
                    home_slot, created_unix, retention_until_unix, lock_mode)
                 VALUES (?1, ?2, 'available', 'slot', ?3, ?3, ?4, ?5, ?6)",
                params![
                    t.barcode,
                    as_i64(t.size_bytes)?,
                    i64::from(t.slot),
                    t.created_unix,
                    t.retention_until_unix,
                    t.lock_mode.map(LockMode::as_str),
                ],
            )?;
            let id = tx.last_insert_rowid();
            out.push(tape_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?);
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn tapes(&self) -> Result<Vec<TapeRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tapes ORDER BY barcode"))?;
        let rows = stmt.query_map([], row_to_tape)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn tape(&self, barcode: &str) -> Result<Option<TapeRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM tapes WHERE barcode = ?1"),
                [barcode],
                row_to_tape,
            )
            .optional()?)
    }

    pub fn tape_by_id(&self, id: i64) -> Result<Option<TapeRow>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tape_in(&tx, id)
    }

    /// Deletes a tape with its index, chunk map and archive parts; false if it did not exist.
    pub fn delete_tape(&self, id: i64) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .execute("DELETE FROM tapes WHERE id = ?1", [id])?
            > 0)
    }

    /// Moves a tape; fails (UNIQUE constraint) if the destination is occupied.
    pub fn set_tape_location(&self, id: i64, loc: Location) -> Result<(), CatalogError> {
        let (kind, index) = location_params(loc);
        self.conn().execute(
            "UPDATE tapes SET element_type = ?2, element_index = ?3,
                home_slot = CASE WHEN ?2 = 'slot' THEN ?3 ELSE home_slot END
             WHERE id = ?1",
            params![id, kind, index],
        )?;
        Ok(())
    }

    /// Sets the state (and the error shown with it, cleared when `None`).
    pub fn set_tape_state(
        &self,
        id: i64,
        state: TapeState,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE tapes SET state = ?2, error = ?3 WHERE id = ?1",
            params![id, state.as_str(), error],
        )?;
        Ok(())
    }

    /// State and location together: an eject or a retrieval is one step.
    pub fn set_tape_state_at(
        &self,
        id: i64,
        state: TapeState,
        loc: Location,
        read_only: bool,
    ) -> Result<(), CatalogError> {
        let (kind, index) = location_params(loc);
        self.conn().execute(
            "UPDATE tapes SET state = ?2, element_type = ?3, element_index = ?4, read_only = ?5,
                home_slot = CASE WHEN ?3 = 'slot' THEN ?4 ELSE home_slot END,
                progress_bytes = 0, error = NULL
             WHERE id = ?1",
            params![id, state.as_str(), kind, index, i64::from(read_only)],
        )?;
        Ok(())
    }

    pub fn set_tape_progress(&self, id: i64, bytes: u64) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE tapes SET progress_bytes = ?2 WHERE id = ?1",
            params![id, as_i64(bytes)?],
        )?;
        Ok(())
    }

    pub fn set_tape_retention(
        &self,
        id: i64,
        until_unix: Option<i64>,
        lock: Option<LockMode>,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE tapes SET retention_until_unix = ?2, lock_mode = ?3 WHERE id = ?1",
            params![id, until_unix, lock.map(LockMode::as_str)],
        )?;
        Ok(())
    }

    /// The tape's record index, in order.
    pub fn tape_runs(&self, id: i64) -> Result<Vec<RunRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT first_object, byte_offset, count, record_bytes, filemarks_before
             FROM tape_runs WHERE tape_id = ?1 ORDER BY first_object",
        )?;
        let rows = stmt.query_map([id], |r| {
            let conv = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
            let u = |i: usize| -> rusqlite::Result<u64> {
                u64::try_from(r.get::<_, i64>(i)?).map_err(|_| conv(i))
            };
            let bytes: i64 = r.get(3)?;
            Ok(RunRow {
                first_object: u(0)?,
                byte_offset: u(1)?,
                count: u(2)?,
                record_bytes: u64::try_from(bytes).ok(),
                filemarks_before: u(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces the index from object `from` on with `runs` and sets the end of data, in one
    /// transaction; chunk-map rows wholly past the end of data (`keep_chunks` and beyond) go.
    pub fn commit_tape_index(
        &self,
        id: i64,
        from: u64,
        runs: &[RunRow],
        end: (u64, u64),
        keep_chunks: u64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM tape_runs WHERE tape_id = ?1 AND first_object >= ?2",
            params![id, as_i64(from)?],
        )?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO tape_runs
                    (tape_id, first_object, byte_offset, count, record_bytes, filemarks_before)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in runs {
                let bytes = match r.record_bytes {
                    Some(b) => as_i64(b)?,
                    None => -1,
                };
                insert.execute(params![
                    id,
                    as_i64(r.first_object)?,
                    as_i64(r.byte_offset)?,
                    as_i64(r.count)?,
                    bytes,
                    as_i64(r.filemarks_before)?,
                ])?;
            }
        }
        tx.execute(
            "UPDATE tapes SET data_bytes = ?2, objects = ?3 WHERE id = ?1",
            params![id, as_i64(end.0)?, as_i64(end.1)?],
        )?;
        tx.execute(
            "DELETE FROM tape_chunks WHERE tape_id = ?1 AND chunk_index >= ?2",
            params![id, as_i64(keep_chunks)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn tape_chunk(&self, tape: i64, index: u64) -> Result<Option<[u8; 32]>, CatalogError> {
        self.mapped_chunk(&TAPE_MAP, tape, index)
    }

    /// Records where a tape chunk's data is; `None` removes the row (all zeros). Does nothing
    /// for a tape that no longer exists.
    pub fn set_tape_chunk(
        &self,
        tape: i64,
        index: u64,
        chunk: Option<&[u8; 32]>,
    ) -> Result<(), CatalogError> {
        self.map_chunk(&TAPE_MAP, tape, index, chunk)
    }

    /// Drops a tape's whole chunk map (its data now lives on the shelf).
    pub fn clear_tape_chunks(&self, tape: i64) -> Result<(), CatalogError> {
        self.conn()
            .execute("DELETE FROM tape_chunks WHERE tape_id = ?1", [tape])?;
        Ok(())
    }

    pub fn shelf_parts(&self, tape: i64) -> Result<Vec<ShelfPart>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT part, plain_bytes, tree_hash FROM shelf_parts WHERE tape_id = ?1
             ORDER BY part",
        )?;
        let rows = stmt.query_map([tape], |r| {
            let conv = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
            let hash: Vec<u8> = r.get(2)?;
            Ok(ShelfPart {
                part: u64::try_from(r.get::<_, i64>(0)?).map_err(|_| conv(0))?,
                plain_bytes: u64::try_from(r.get::<_, i64>(1)?).map_err(|_| conv(1))?,
                tree_hash: hash.try_into().map_err(|_| conv(2))?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an archive part (its object is in the bucket) and the progress in one step.
    pub fn add_shelf_part(
        &self,
        tape: i64,
        p: &ShelfPart,
        progress: u64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO shelf_parts (tape_id, part, plain_bytes, tree_hash)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                tape,
                as_i64(p.part)?,
                as_i64(p.plain_bytes)?,
                p.tree_hash.as_slice()
            ],
        )?;
        tx.execute(
            "UPDATE tapes SET progress_bytes = ?2 WHERE id = ?1",
            params![tape, as_i64(progress)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn clear_shelf_parts(&self, tape: i64) -> Result<(), CatalogError> {
        self.conn()
            .execute("DELETE FROM shelf_parts WHERE tape_id = ?1", [tape])?;
        Ok(())
    }

    /// Archiving finished: the root tree hash, the time, the state, and the tape's chunk map
    /// dropped (its data lives in the archive now), in one transaction.
    pub fn finish_archive(&self, tape: i64, root: &[u8; 32], now: i64) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE tapes SET state = 'archived', tree_hash = ?2, archived_unix = ?3,
                element_type = NULL, element_index = NULL, error = NULL
             WHERE id = ?1",
            params![tape, root.as_slice(), now],
        )?;
        tx.execute("DELETE FROM tape_chunks WHERE tape_id = ?1", [tape])?;
        tx.commit()?;
        Ok(())
    }
}

fn tape_in(tx: &Transaction<'_>, id: i64) -> Result<Option<TapeRow>, CatalogError> {
    Ok(tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM tapes WHERE id = ?1"),
            [id],
            row_to_tape,
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(barcode: &str, slot: u32) -> NewTape {
        NewTape {
            barcode: barcode.into(),
            size_bytes: 100 << 30,
            slot,
            created_unix: 1,
            retention_until_unix: None,
            lock_mode: None,
        }
    }

    #[test]
    fn tapes_round_trip_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let rows = c
            .create_tapes(&[new("TDG00001", 0), new("TDG00002", 1)])
            .unwrap();
        assert_eq!(rows[1].location, Some((ElementKind::Slot, 1)));
        // A duplicate barcode or an occupied slot fails the whole batch.
        assert!(
            c.create_tapes(&[new("TDG00003", 2), new("TDG00001", 3)])
                .is_err()
        );
        assert!(c.create_tapes(&[new("TDG00004", 1)]).is_err());
        assert_eq!(c.tapes().unwrap().len(), 2);
        let t = &rows[0];
        c.set_tape_location(t.id, Some((ElementKind::Drive, 0)))
            .unwrap();
        assert!(
            c.set_tape_location(rows[1].id, Some((ElementKind::Drive, 0)))
                .is_err()
        );
        c.set_tape_location(t.id, None).unwrap();
        c.set_tape_location(rows[1].id, None).unwrap();
        let runs = [
            RunRow {
                first_object: 0,
                byte_offset: 0,
                count: 3,
                record_bytes: Some(512),
                filemarks_before: 0,
            },
            RunRow {
                first_object: 3,
                byte_offset: 1536,
                count: 1,
                record_bytes: None,
                filemarks_before: 0,
            },
        ];
        c.set_tape_chunk(t.id, 0, Some(&[1; 32])).unwrap();
        c.set_tape_chunk(t.id, 5, Some(&[2; 32])).unwrap();
        c.commit_tape_index(t.id, 0, &runs, (1536, 4), 1).unwrap();
        assert_eq!(c.tape_runs(t.id).unwrap(), runs);
        assert_eq!(c.tape_chunk(t.id, 5).unwrap(), None);
        assert_eq!(c.tape_chunk(t.id, 0).unwrap(), Some([1; 32]));
        assert!(c.referenced_chunks().unwrap().contains(&[1; 32]));
        let row = c.tape("TDG00001").unwrap().unwrap();
        assert_eq!((row.data_bytes, row.objects), (1536, 4));
        c.commit_tape_index(t.id, 3, &[], (1536, 3), 2).unwrap();
        assert_eq!(c.tape_runs(t.id).unwrap(), runs[..1]);
        assert!(c.delete_tape(t.id).unwrap());
        assert!(c.tape_runs(t.id).unwrap().is_empty());
        assert!(!c.referenced_chunks().unwrap().contains(&[1; 32]));
    }
}
