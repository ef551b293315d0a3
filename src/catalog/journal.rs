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

/// A file whose local bytes a recovered catalog knew of but this machine does not have
/// ([`Catalog::forget_local_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertedFile {
    pub share: String,
    pub path: String,
    /// It had an uploaded version (it comes back as that); else it comes back empty.
    pub uploaded: bool,
}

impl Catalog {
    /// For a catalog restored onto a new machine (`tidegate recover`): the staging files and
    /// journal rows it names were the old machine's, and the copy may be older than the bucket.
    /// Replaying its journal rows, or uploading staging files that are not here (they read as
    /// zeros), would write older or empty content over what the bucket holds. So every staged
    /// file goes back to its uploaded version (clean, its ETag forgotten, so the first look at
    /// its directory reads the object's size and metadata again), a file never uploaded
    /// becomes an empty file still to upload, the journal is emptied, and every directory is
    /// listed again at its first use. Returns the files that lost local writes.
    pub fn forget_local_files(&self) -> Result<Vec<RevertedFile>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let reverted = {
            let mut stmt = tx.prepare(
                "SELECT s.name, i.path, i.remote_key IS NOT NULL FROM inodes i
                 JOIN shares s ON s.id = i.share_id WHERE i.staged = 1 ORDER BY s.name, i.path",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RevertedFile {
                    share: r.get(0)?,
                    path: r.get(1)?,
                    uploaded: r.get(2)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.execute(
            "UPDATE inodes SET staged = 0, synced_version = version, etag = NULL
             WHERE staged = 1 AND remote_key IS NOT NULL",
            [],
        )?;
        tx.execute(
            "UPDATE inodes SET size = 0 WHERE staged = 1 AND remote_key IS NULL",
            [],
        )?;
        tx.execute("DELETE FROM small_journal", [])?;
        tx.execute(
            "UPDATE inodes SET refreshed_unix = 0 WHERE kind = 'dir'",
            [],
        )?;
        tx.commit()?;
        Ok(reverted)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::inodes::InodeKind;
    use crate::catalog::shares::tests::{catalog_with_share, node};

    #[test]
    fn a_recovered_catalog_forgets_local_bytes_it_does_not_have() {
        let (_dir, c, s, root) = catalog_with_share();
        let add = |name: &str, remote: Option<&str>, staged: bool, size: u64| {
            let mut row = c
                .insert_inode(&node(s.id, Some(root.id), name, InodeKind::File))
                .unwrap();
            row.remote_key = remote.map(str::to_owned);
            row.etag = remote.map(|_| "\"old\"".to_owned());
            row.staged = staged;
            row.size = size;
            c.save_inode(&row).unwrap();
            c.journal_unsynced(row.id, b"local bytes").unwrap();
            row.id
        };
        let uploaded = add("uploaded-then-written", Some("k/a"), true, 11);
        let never = add("never-uploaded", None, true, 11);
        let not_staged = add("not-staged", Some("k/c"), false, 7);
        let mut top = c.inode(root.id).unwrap().unwrap();
        top.refreshed_unix = 123;
        c.save_inode(&top).unwrap();
        assert_eq!(c.inode(root.id).unwrap().unwrap().refreshed_unix, 123);
        let reverted = c.forget_local_files().unwrap();
        let names: Vec<_> = reverted
            .iter()
            .map(|r| (r.path.as_str(), r.uploaded))
            .collect();
        assert_eq!(
            names,
            vec![("never-uploaded", false), ("uploaded-then-written", true)]
        );
        assert!(c.journal_entries().unwrap().is_empty());
        let a = c.inode(uploaded).unwrap().unwrap();
        assert!(!a.staged && !a.dirty() && a.etag.is_none(), "{a:?}");
        let n = c.inode(never).unwrap().unwrap();
        assert!(n.staged && n.size == 0 && n.dirty(), "{n:?}");
        let k = c.inode(not_staged).unwrap().unwrap();
        assert_eq!((k.size, k.etag.as_deref()), (7, Some("\"old\"")));
        assert_eq!(c.inode(root.id).unwrap().unwrap().refreshed_unix, 0);
    }

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
