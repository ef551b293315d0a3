//! Whole chunk maps at once, for deploying and exporting VM images.
//!
//! Invariant: an imported volume appears together with its entire chunk map (one transaction),
//! so an interrupted import leaves no volume at all; the chunks it had uploaded are unreferenced
//! and left to garbage collection. As everywhere in the chunk map, every row written here names
//! a chunk that is already in the bucket.

use rusqlite::params;

use crate::catalog::volumes::{NewVolume, VolumeRow, as_i64, insert_volume};
use crate::catalog::{Catalog, CatalogError};

/// One chunk-map row: chunk index within the volume and the id of the bucket chunk holding it.
pub type MapEntry = (u64, [u8; 32]);

impl Catalog {
    /// Creates a volume and its whole chunk map in one transaction.
    pub fn create_volume_with_map(
        &self,
        v: &NewVolume<'_>,
        map: &[MapEntry],
    ) -> Result<VolumeRow, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row = insert_volume(&tx, v)?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO volume_chunks (volume_id, chunk_index, chunk_id) VALUES (?1, ?2, ?3)",
            )?;
            for (index, id) in map {
                insert.execute(params![row.id, as_i64(*index)?, id.as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(row)
    }

    /// A volume's whole chunk map, by ascending chunk index.
    pub fn chunk_map(&self, volume: i64) -> Result<Vec<MapEntry>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT chunk_index, chunk_id FROM volume_chunks WHERE volume_id = ?1
             ORDER BY chunk_index",
        )?;
        let rows = stmt.query_map([volume], |r| {
            let bad = |i: usize| rusqlite::Error::IntegralValueOutOfRange(i, -1);
            let index = u64::try_from(r.get::<_, i64>(0)?).map_err(|_| bad(0))?;
            let id: Vec<u8> = r.get(1)?;
            Ok((index, id.try_into().map_err(|_| bad(1))?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::volumes::tests::new;

    #[test]
    fn a_volume_arrives_with_its_whole_map_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let v = c
            .create_volume_with_map(&new("img"), &[(0, [1; 32]), (5, [2; 32])])
            .unwrap();
        assert_eq!(c.chunk_map(v.id).unwrap(), vec![(0, [1; 32]), (5, [2; 32])]);
        assert_eq!(c.chunk(v.id, 5).unwrap(), Some([2; 32]));

        // A map the table refuses (a duplicate index) rolls the volume back with it.
        let err = c.create_volume_with_map(&new("half"), &[(1, [1; 32]), (1, [2; 32])]);
        assert!(err.is_err());
        assert_eq!(c.volume_by_name("half").unwrap(), None);
        // So does a name already taken.
        assert!(c.create_volume_with_map(&new("img"), &[]).is_err());
        assert_eq!(c.volumes().unwrap().len(), 1);
    }
}
