//! Volumes and their chunk maps.
//!
//! Invariant: a chunk-map row is written only after its chunk is in the bucket (the uploader
//! calls `set_chunk` after the PUT returned), so the map never points at data that is not there.

use rusqlite::{OptionalExtension, params};

use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeMode {
    Cached,
    Stored,
}

impl VolumeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Stored => "stored",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "cached" => Some(Self::Cached),
            "stored" => Some(Self::Stored),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: i64,
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub mode: VolumeMode,
    pub serial: String,
    pub uuid: [u8; 16],
    pub created_unix: i64,
    /// Stored volumes: the local file or block device holding the data.
    pub local_path: Option<String>,
    /// The snapshot this volume was restored from, if any.
    pub origin_snapshot: Option<String>,
}

/// What a new volume is made of; the catalog assigns the id.
#[derive(Debug, Clone)]
pub struct NewVolume<'a> {
    pub name: &'a str,
    pub size_bytes: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub mode: VolumeMode,
    pub serial: &'a str,
    pub uuid: [u8; 16],
    pub created_unix: i64,
    pub local_path: Option<&'a str>,
    pub origin_snapshot: Option<&'a str>,
}

/// Volume ids name cache objects (`v<id>/...`), so an id is never handed out twice: a new
/// volume must not see a deleted one's cached data. The highest id ever used is kept here.
const ID_HIGH_WATER: &str = "volumes.id_high_water";

/// A chunk-map table (volumes' or tapes'): the table, its owner column and the owners' table.
#[derive(Debug)]
pub(crate) struct ChunkMap {
    pub table: &'static str,
    pub owner: &'static str,
    pub owners: &'static str,
}

pub(crate) const VOLUME_MAP: ChunkMap = ChunkMap {
    table: "volume_chunks",
    owner: "volume_id",
    owners: "volumes",
};

pub(crate) fn as_i64(v: u64) -> Result<i64, CatalogError> {
    i64::try_from(v)
        .map_err(|_| CatalogError::Sql(rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX)))
}

fn row_to_volume(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
    let uuid: Vec<u8> = r.get(7)?;
    let mode: String = r.get(5)?;
    let conv = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
    Ok(VolumeRow {
        id: r.get(0)?,
        name: r.get(1)?,
        size_bytes: u64::try_from(r.get::<_, i64>(2)?).map_err(|_| conv(2))?,
        block_size: u32::try_from(r.get::<_, i64>(3)?).map_err(|_| conv(3))?,
        chunk_size: u64::try_from(r.get::<_, i64>(4)?).map_err(|_| conv(4))?,
        mode: VolumeMode::parse(&mode).ok_or_else(|| conv(5))?,
        serial: r.get(6)?,
        uuid: uuid.try_into().map_err(|_| conv(7))?,
        created_unix: r.get(8)?,
        local_path: r.get(9)?,
        origin_snapshot: r.get(10)?,
    })
}

const COLUMNS: &str = "id, name, size_bytes, block_size, chunk_size, mode, serial, uuid, \
                       created_unix, local_path, origin_snapshot";

/// Inserts a volume under a never-used id, inside the caller's transaction.
fn insert_volume(tx: &rusqlite::Transaction<'_>, v: &NewVolume<'_>) -> Result<i64, CatalogError> {
    let high: i64 = tx.query_row(
        "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM settings WHERE key = ?1), 0),
                    coalesce((SELECT max(id) FROM volumes), 0))",
        [ID_HIGH_WATER],
        |r| r.get(0),
    )?;
    let id = high + 1;
    tx.execute(
        "INSERT INTO volumes (id, name, size_bytes, block_size, chunk_size, mode, serial, uuid,
                              created_unix, local_path, origin_snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            id,
            v.name,
            as_i64(v.size_bytes)?,
            i64::from(v.block_size),
            as_i64(v.chunk_size)?,
            v.mode.as_str(),
            v.serial,
            v.uuid.as_slice(),
            v.created_unix,
            v.local_path,
            v.origin_snapshot,
        ],
    )?;
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![ID_HIGH_WATER, id.to_string()],
    )?;
    Ok(id)
}

impl Catalog {
    pub fn create_volume(&self, v: &NewVolume<'_>) -> Result<VolumeRow, CatalogError> {
        self.create_volume_with_chunks(v, &[], false)
    }

    /// Creates a volume and its whole chunk map at once: a restore or import that fails part
    /// way leaves no half volume behind.
    pub fn create_volume_with_chunks(
        &self,
        v: &NewVolume<'_>,
        chunks: &[(u64, [u8; 32])],
        download: bool,
    ) -> Result<VolumeRow, CatalogError> {
        let mut conn = self.conn();
        // IMMEDIATE: the insert reads the id high-water mark before it writes, and a deferred
        // transaction upgrading from read to write fails at once with SQLITE_BUSY (no busy
        // timeout) when a daemon wrote in between, as it does on every upload.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let id = insert_volume(&tx, v)?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO volume_chunks (volume_id, chunk_index, chunk_id) VALUES (?1, ?2, ?3)",
            )?;
            let mut pending =
                tx.prepare("INSERT INTO stored_pending (volume_id, chunk_index) VALUES (?1, ?2)")?;
            for (index, chunk) in chunks {
                stmt.execute(params![id, as_i64(*index)?, chunk.as_slice()])?;
                if download {
                    pending.execute(params![id, as_i64(*index)?])?;
                }
            }
        }
        let row = tx.query_row(
            &format!("SELECT {COLUMNS} FROM volumes WHERE id = ?1"),
            [id],
            row_to_volume,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// A volume's whole chunk map, ascending by index.
    pub fn chunk_map(&self, volume: i64) -> Result<Vec<(u64, [u8; 32])>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT chunk_index, chunk_id FROM volume_chunks WHERE volume_id = ?1
             ORDER BY chunk_index",
        )?;
        let rows = stmt.query_map([volume], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (index, id) = row?;
            let conv = |i| rusqlite::Error::IntegralValueOutOfRange(i, -1);
            out.push((
                u64::try_from(index).map_err(|_| conv(0))?,
                id.try_into().map_err(|_| conv(1))?,
            ));
        }
        Ok(out)
    }

    /// Every chunk id any volume's map references (for garbage collection's mark phase).
    pub fn referenced_chunks(&self) -> Result<Vec<[u8; 32]>, CatalogError> {
        self.chunk_ids("SELECT chunk_id FROM volume_chunks UNION SELECT chunk_id FROM tape_chunks")
    }

    /// The 32-byte ids a one-column query returns (other lengths are skipped).
    pub(crate) fn chunk_ids(&self, sql: &str) -> Result<Vec<[u8; 32]>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(id) = <[u8; 32]>::try_from(row?) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM volumes ORDER BY name"))?;
        let rows = stmt.query_map([], row_to_volume)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM volumes WHERE name = ?1"),
                [name],
                row_to_volume,
            )
            .optional()?)
    }

    pub fn volume_by_id(&self, id: i64) -> Result<Option<VolumeRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM volumes WHERE id = ?1"),
                [id],
                row_to_volume,
            )
            .optional()?)
    }

    /// Deletes a volume and its chunk map; returns whether it existed.
    pub fn delete_volume(&self, name: &str) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .execute("DELETE FROM volumes WHERE name = ?1", [name])?
            > 0)
    }

    pub fn chunk(&self, volume: i64, index: u64) -> Result<Option<[u8; 32]>, CatalogError> {
        self.mapped_chunk(&VOLUME_MAP, volume, index)
    }

    /// Records where a chunk's data now is; `None` removes the row (the chunk is all zeros).
    /// Does nothing for a volume that no longer exists (deleted while its upload was in flight).
    pub fn set_chunk(
        &self,
        volume: i64,
        index: u64,
        chunk: Option<&[u8; 32]>,
    ) -> Result<(), CatalogError> {
        self.map_chunk(&VOLUME_MAP, volume, index, chunk)
    }

    /// The chunk id at `index` of an owner's chunk map.
    pub(crate) fn mapped_chunk(
        &self,
        map: &ChunkMap,
        owner: i64,
        index: u64,
    ) -> Result<Option<[u8; 32]>, CatalogError> {
        let id: Option<Vec<u8>> = self
            .conn()
            .query_row(
                &format!(
                    "SELECT chunk_id FROM {} WHERE {} = ?1 AND chunk_index = ?2",
                    map.table, map.owner
                ),
                params![owner, as_i64(index)?],
                |r| r.get(0),
            )
            .optional()?;
        Ok(id.and_then(|v| v.try_into().ok()))
    }

    /// Sets (or with `None` removes) a chunk-map row; nothing for an owner that is gone.
    pub(crate) fn map_chunk(
        &self,
        map: &ChunkMap,
        owner: i64,
        index: u64,
        chunk: Option<&[u8; 32]>,
    ) -> Result<(), CatalogError> {
        let conn = self.conn();
        let ChunkMap {
            table,
            owner: column,
            owners,
        } = map;
        match chunk {
            Some(id) => conn.execute(
                &format!(
                    "INSERT INTO {table} ({column}, chunk_index, chunk_id)
                     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM {owners} WHERE id = ?1)
                     ON CONFLICT ({column}, chunk_index) DO UPDATE SET chunk_id = excluded.chunk_id"
                ),
                params![owner, as_i64(index)?, id.as_slice()],
            )?,
            None => conn.execute(
                &format!("DELETE FROM {table} WHERE {column} = ?1 AND chunk_index = ?2"),
                params![owner, as_i64(index)?],
            )?,
        };
        Ok(())
    }

    /// Chunk indexes of a volume that hold data, in `[from, to)`, ascending.
    pub fn mapped_chunks(&self, volume: i64, from: u64, to: u64) -> Result<Vec<u64>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT chunk_index FROM volume_chunks
             WHERE volume_id = ?1 AND chunk_index >= ?2 AND chunk_index < ?3 ORDER BY chunk_index",
        )?;
        let rows = stmt.query_map(params![volume, as_i64(from)?, as_i64(to)?], |r| {
            r.get::<_, i64>(0)
        })?;
        rows.map(|r| Ok(u64::try_from(r?).unwrap_or(0))).collect()
    }

    /// Number of mapped chunks and the bytes they represent, per volume id.
    pub fn volume_usage(&self, volume: i64) -> Result<u64, CatalogError> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM volume_chunks WHERE volume_id = ?1",
            [volume],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewVolume<'_> {
        NewVolume {
            name,
            size_bytes: 1 << 30,
            block_size: 512,
            chunk_size: 1 << 20,
            mode: VolumeMode::Cached,
            serial: "S1",
            uuid: [9; 16],
            created_unix: 5,
            local_path: None,
            origin_snapshot: None,
        }
    }

    #[test]
    fn volumes_and_chunk_maps() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let v = c.create_volume(&new("a")).unwrap();
        assert_eq!(c.volume_by_name("a").unwrap().unwrap(), v);
        assert!(c.create_volume(&new("a")).is_err(), "names are unique");
        assert_eq!(c.chunk(v.id, 3).unwrap(), None);
        c.set_chunk(v.id, 3, Some(&[1; 32])).unwrap();
        c.set_chunk(v.id, 3, Some(&[2; 32])).unwrap();
        c.set_chunk(v.id, 7, Some(&[3; 32])).unwrap();
        assert_eq!(c.chunk(v.id, 3).unwrap(), Some([2; 32]));
        assert_eq!(c.mapped_chunks(v.id, 0, 100).unwrap(), vec![3, 7]);
        c.set_chunk(v.id, 3, None).unwrap();
        assert_eq!(c.mapped_chunks(v.id, 0, 100).unwrap(), vec![7]);
        assert!(c.delete_volume("a").unwrap());
        assert_eq!(
            c.chunk(v.id, 7).unwrap(),
            None,
            "map deleted with the volume"
        );
        // An upload finishing after the delete records nothing.
        c.set_chunk(v.id, 1, Some(&[4; 32])).unwrap();
        assert_eq!(c.chunk(v.id, 1).unwrap(), None);
        // Ids are never reused, even after the newest volume is deleted.
        let b = c.create_volume(&new("b")).unwrap();
        assert!(b.id > v.id);
        assert!(c.delete_volume("b").unwrap());
        let d = c
            .create_volume_with_chunks(&new("d"), &[(2, [5; 32]), (9, [6; 32])], true)
            .unwrap();
        assert!(d.id > b.id, "{} after {}", d.id, b.id);
        assert_eq!(c.chunk_map(d.id).unwrap(), vec![(2, [5; 32]), (9, [6; 32])]);
        assert_eq!(c.referenced_chunks().unwrap().len(), 2);
        assert_eq!(c.stored_pending(d.id).unwrap(), vec![2, 9]);
    }
}
