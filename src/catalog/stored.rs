//! Stored volumes' local bookkeeping: chunks changed on the local disk and not yet uploaded
//! (`stored_dirty`, written *before* the local write, so a crash can only leave extra rows),
//! chunks a restore has yet to download (`stored_pending`), and the initial-upload cursor.

use rusqlite::params;

use crate::catalog::volumes::as_i64;
use crate::catalog::{Catalog, CatalogError};

fn scan_key(volume: i64) -> String {
    format!("stored.{volume}.scan_from")
}

impl Catalog {
    /// Records chunks as changed locally (one transaction for the batch).
    pub fn mark_stored_dirty(&self, volume: i64, chunks: &[u64]) -> Result<(), CatalogError> {
        self.index_rows(
            "INSERT OR IGNORE INTO stored_dirty (volume_id, chunk_index) VALUES (?1, ?2)",
            volume,
            chunks,
        )
    }

    pub fn clear_stored_dirty(&self, volume: i64, chunk: u64) -> Result<(), CatalogError> {
        self.index_rows(
            "DELETE FROM stored_dirty WHERE volume_id = ?1 AND chunk_index = ?2",
            volume,
            &[chunk],
        )
    }

    pub fn stored_dirty(&self, volume: i64) -> Result<Vec<u64>, CatalogError> {
        self.index_list(
            "SELECT chunk_index FROM stored_dirty WHERE volume_id = ?1 ORDER BY chunk_index",
            volume,
        )
    }

    pub fn clear_stored_pending(&self, volume: i64, chunk: u64) -> Result<(), CatalogError> {
        self.index_rows(
            "DELETE FROM stored_pending WHERE volume_id = ?1 AND chunk_index = ?2",
            volume,
            &[chunk],
        )
    }

    pub fn stored_pending(&self, volume: i64) -> Result<Vec<u64>, CatalogError> {
        self.index_list(
            "SELECT chunk_index FROM stored_pending WHERE volume_id = ?1 ORDER BY chunk_index",
            volume,
        )
    }

    /// Where the initial upload of a stored volume's existing data has reached (`None`: done).
    pub fn stored_scan_from(&self, volume: i64) -> Result<Option<u64>, CatalogError> {
        Ok(self
            .setting(&scan_key(volume))?
            .and_then(|v| v.parse().ok()))
    }

    pub fn set_stored_scan_from(&self, volume: i64, from: Option<u64>) -> Result<(), CatalogError> {
        match from {
            Some(from) => self.set_settings(&[(&scan_key(volume), &from.to_string())]),
            None => {
                self.conn()
                    .execute("DELETE FROM settings WHERE key = ?1", [scan_key(volume)])?;
                Ok(())
            }
        }
    }

    /// Turns a stored volume into a cached one over the chunks it has in the bucket (recovery
    /// on a machine without its local disk). Returns whether it was a stored volume.
    pub fn stored_to_cached(&self, volume: i64) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE volumes SET mode = 'cached', local_path = NULL WHERE id = ?1 AND mode = 'stored'",
            [volume],
        )?;
        tx.execute("DELETE FROM stored_dirty WHERE volume_id = ?1", [volume])?;
        tx.execute("DELETE FROM stored_pending WHERE volume_id = ?1", [volume])?;
        tx.execute("DELETE FROM settings WHERE key = ?1", [scan_key(volume)])?;
        tx.commit()?;
        Ok(changed > 0)
    }

    fn index_rows(&self, sql: &str, volume: i64, chunks: &[u64]) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(sql)?;
            for &c in chunks {
                stmt.execute(params![volume, as_i64(c)?])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn index_list(&self, sql: &str, volume: i64) -> Result<Vec<u64>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([volume], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(u64::try_from(r?).unwrap_or(0));
        }
        Ok(out)
    }
}
