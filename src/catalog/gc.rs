//! What garbage collection asks of the catalog: pins, references, and a lock that keeps
//! uploads from pinning while a batch is swept.
//!
//! Invariant: an uploader pins a chunk (a committed row) before it PUTs it; a sweep batch runs
//! inside one write transaction that re-checks pins and chunk maps, so a chunk is either
//! deleted before its pin could be written (and the PUT then re-creates it) or not deleted.

use rusqlite::{OptionalExtension, params};

use crate::catalog::{Catalog, CatalogError};

impl Catalog {
    pub fn pin_chunk(&self, id: &[u8; 32], now_unix: i64) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO chunk_pins (chunk_id, pinned_unix) VALUES (?1, ?2)
             ON CONFLICT (chunk_id) DO UPDATE SET pinned_unix = excluded.pinned_unix",
            params![id.as_slice(), now_unix],
        )?;
        Ok(())
    }

    /// Drops pins older than `before` (no upload takes that long).
    pub fn expire_pins(&self, before_unix: i64) -> Result<u64, CatalogError> {
        Ok(self.conn().execute(
            "DELETE FROM chunk_pins WHERE pinned_unix < ?1",
            [before_unix],
        )? as u64)
    }

    pub fn pinned_chunks(&self) -> Result<Vec<[u8; 32]>, CatalogError> {
        self.chunk_ids("SELECT chunk_id FROM chunk_pins")
    }

    /// Takes the catalog's write lock (BEGIN IMMEDIATE) until the guard drops: pins and
    /// chunk-map changes from other connections wait meanwhile. Holds this connection too, so
    /// use only the guard's methods while it lives.
    pub fn sweep_lock(&self) -> Result<SweepLock<'_>, CatalogError> {
        let conn = self.conn();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(SweepLock { conn })
    }
}

/// The catalog as one sweep batch sees it, under the write lock; committed on drop.
pub struct SweepLock<'a> {
    conn: std::sync::MutexGuard<'a, rusqlite::Connection>,
}

impl Drop for SweepLock<'_> {
    fn drop(&mut self) {
        // Nothing was written under the lock; ending the transaction only releases it.
        let _ = self.conn.execute_batch("COMMIT");
    }
}

impl SweepLock<'_> {
    /// Whether a chunk map or a pin references `id` now.
    pub fn is_referenced(&self, id: &[u8; 32]) -> Result<bool, CatalogError> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM volume_chunks WHERE chunk_id = ?1)
                             OR EXISTS (SELECT 1 FROM tape_chunks WHERE chunk_id = ?1)
                             OR EXISTS (SELECT 1 FROM chunk_pins WHERE chunk_id = ?1)",
                [id.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Snapshots that are being taken or exist, by id, as the catalog has them now.
    pub fn snapshot_states(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, state FROM snapshots WHERE state != 'failed'")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
