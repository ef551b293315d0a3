//! The small-file journal (schema 12): a small file's whole content kept in the catalog, so
//! that the transaction which acknowledges it makes it durable with one WAL sync, instead of
//! syncing a new staging file and its directory entry as well.
//!
//! Invariant: while an inode has a row here, its staging file holds exactly that row's bytes
//! (or was lost with the page cache and is rebuilt from the row at start-up). Whoever changes
//! the staging file syncs it and its entry before deleting the row (`gateway/files/local.rs`),
//! and an upload that unstages the file deletes the row in the same transaction
//! (`mark_synced_batch`). Removing the inode deletes it by cascade.

use rusqlite::{OptionalExtension, params};

use crate::catalog::{Catalog, CatalogError};

impl Catalog {
    /// Journals inode `id`'s whole content, without waiting for the disk: the caller makes it
    /// durable with [`Catalog::durable`] before acknowledging anything.
    pub fn journal_unsynced(&self, id: i64, data: &[u8]) -> Result<(), CatalogError> {
        self.relaxed(|conn| {
            conn.prepare_cached(
                "INSERT INTO small_journal (inode, data) VALUES (?1, ?2)
                 ON CONFLICT (inode) DO UPDATE SET data = excluded.data",
            )?
            .execute(params![id, data])?;
            Ok(())
        })
    }

    /// Whether inode `id`'s content is in the journal.
    pub fn journaled(&self, id: i64) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM small_journal WHERE inode = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Drops inode `id`'s journal row, without waiting for the disk. The caller has synced
    /// the staging file and its directory entry first.
    pub fn unjournal_unsynced(&self, id: i64) -> Result<(), CatalogError> {
        self.relaxed(|conn| {
            conn.prepare_cached("DELETE FROM small_journal WHERE inode = ?1")?
                .execute([id])?;
            Ok(())
        })
    }

    /// Every journal row, for the start-up replay.
    pub fn journal_entries(&self) -> Result<Vec<(i64, Vec<u8>)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT inode, data FROM small_journal ORDER BY inode")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Empties the journal once its rows are back in their synced staging files; durable when
    /// this returns.
    pub fn clear_journal(&self) -> Result<(), CatalogError> {
        self.grouped(|conn| {
            conn.execute("DELETE FROM small_journal", [])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::inodes::InodeKind;
    use crate::catalog::shares::tests::{catalog_with_share, node};

    #[test]
    fn rows_replace_and_go_with_their_inode() {
        let (_dir, c, s, root) = catalog_with_share();
        let file = c
            .insert_inode(&node(s.id, Some(root.id), "f", InodeKind::File))
            .unwrap();
        assert!(!c.journaled(file.id).unwrap());
        c.journal_unsynced(file.id, b"one").unwrap();
        c.journal_unsynced(file.id, b"two").unwrap();
        assert_eq!(
            c.journal_entries().unwrap(),
            vec![(file.id, b"two".to_vec())]
        );
        c.unjournal_unsynced(file.id).unwrap();
        assert!(!c.journaled(file.id).unwrap());
        c.journal_unsynced(file.id, b"three").unwrap();
        c.remove_inode(&file).unwrap();
        assert!(
            c.journal_entries().unwrap().is_empty(),
            "gone with its inode"
        );
    }
}
