//! Shares: their policies, root directories, refresh marks and upload state. The inode table
//! itself is in `inodes.rs`.
//!
//! Invariant: a share and its root directory are created in one transaction.

use rusqlite::{OptionalExtension, Row, params};

use crate::catalog::inodes::{INODE_COLUMNS, child_of, inode_by_id, insert_inode, row_to_inode};
pub use crate::catalog::inodes::{InodeKind, InodeRow, SyncedItem};
use crate::catalog::{Catalog, CatalogError};

/// Squash policy: which callers are mapped to the anonymous user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    Root,
    All,
    None,
}

impl Squash {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::All => "all",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "root" => Some(Self::Root),
            "all" => Some(Self::All),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRow {
    pub id: i64,
    pub name: String,
    pub bucket_prefix: String,
    pub read_only: bool,
    pub squash: Squash,
    pub allowed_clients: String,
    pub default_uid: u32,
    pub default_gid: u32,
    pub default_file_mode: u32,
    pub default_dir_mode: u32,
    pub refresh_secs: u64,
    pub created_unix: i64,
    pub last_upload_unix: Option<i64>,
}

/// Per-share upload state for `share status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShareSyncStats {
    pub dirty_files: u64,
    pub dirty_bytes: u64,
    pub pending_deletes: u64,
    pub last_upload_unix: Option<i64>,
}

const SHARE_COLUMNS: &str = "id, name, bucket_prefix, read_only, squash, allowed_clients, \
     default_uid, default_gid, default_file_mode, default_dir_mode, refresh_secs, created_unix, \
     last_upload_unix";

pub(super) fn bad(i: usize) -> rusqlite::Error {
    rusqlite::Error::IntegralValueOutOfRange(i, -1)
}

pub(super) fn u32_at(r: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    u32::try_from(r.get::<_, i64>(i)?).map_err(|_| bad(i))
}

pub(super) fn u64_at(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    u64::try_from(r.get::<_, i64>(i)?).map_err(|_| bad(i))
}

pub(super) fn as_i64(v: u64) -> rusqlite::Result<i64> {
    i64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX))
}

fn row_to_share(r: &Row<'_>) -> rusqlite::Result<ShareRow> {
    let squash: String = r.get(4)?;
    Ok(ShareRow {
        id: r.get(0)?,
        name: r.get(1)?,
        bucket_prefix: r.get(2)?,
        read_only: r.get::<_, i64>(3)? != 0,
        squash: Squash::parse(&squash).ok_or_else(|| bad(4))?,
        allowed_clients: r.get(5)?,
        default_uid: u32_at(r, 6)?,
        default_gid: u32_at(r, 7)?,
        default_file_mode: u32_at(r, 8)?,
        default_dir_mode: u32_at(r, 9)?,
        refresh_secs: u64_at(r, 10)?,
        created_unix: r.get(11)?,
        last_upload_unix: r.get(12)?,
    })
}

impl Catalog {
    /// Creates a share and its root directory in one transaction.
    pub fn create_share(
        &self,
        share: &ShareRow,
        root: &InodeRow,
    ) -> Result<ShareRow, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO shares (name, bucket_prefix, read_only, squash, allowed_clients,
                 default_uid, default_gid, default_file_mode, default_dir_mode, refresh_secs,
                 created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                share.name,
                share.bucket_prefix,
                i64::from(share.read_only),
                share.squash.as_str(),
                share.allowed_clients,
                share.default_uid,
                share.default_gid,
                share.default_file_mode,
                share.default_dir_mode,
                as_i64(share.refresh_secs)?,
                share.created_unix,
            ],
        )?;
        let id = tx.last_insert_rowid();
        let root = InodeRow {
            share_id: id,
            ..root.clone()
        };
        insert_inode(&tx, &root)?;
        let row = tx.query_row(
            &format!("SELECT {SHARE_COLUMNS} FROM shares WHERE id = ?1"),
            [id],
            row_to_share,
        )?;
        tx.commit()?;
        Ok(row)
    }

    pub fn shares(&self) -> Result<Vec<ShareRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {SHARE_COLUMNS} FROM shares ORDER BY name"))?;
        let rows = stmt.query_map([], row_to_share)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The inode `id` and its share (`None` if either is gone), read under one hold of the
    /// connection: every NFS and FUSE call starts with this, and reading the two apart took the
    /// connection twice and read every share. (As one joined statement SQLite prepared it
    /// again at each run.)
    pub fn inode_with_share(&self, id: i64) -> Result<Option<(InodeRow, ShareRow)>, CatalogError> {
        inode_with_share(&self.conn(), id)
    }

    /// [`Catalog::inode_with_share`] if the connection is free now; `None` when another call
    /// holds it (a commit may be waiting on its fsync), so a caller on an async worker can
    /// take the blocking pool instead of waiting.
    pub fn try_inode_with_share(
        &self,
        id: i64,
    ) -> Result<Option<Option<(InodeRow, ShareRow)>>, CatalogError> {
        match self.try_conn() {
            Some(conn) => inode_with_share(&conn, id).map(Some),
            None => Ok(None),
        }
    }

    /// A directory, its share and its entry `name` (`None`: there is none) read under one hold
    /// of the connection if it is free now, as [`Catalog::try_inode_with_share`]: the first
    /// step of every LOOKUP, CREATE and REMOVE. The outer `None`: another call holds the
    /// connection; the middle one: the directory or its share is gone.
    pub fn try_dir_entry(
        &self,
        dir: i64,
        name: &str,
    ) -> Result<Option<Option<DirEntry>>, CatalogError> {
        let Some(conn) = self.try_conn() else {
            return Ok(None);
        };
        let Some((row, share)) = inode_with_share(&conn, dir)? else {
            return Ok(Some(None));
        };
        let entry = child_of(&conn, row.id, name)?;
        Ok(Some(Some((row, share, entry))))
    }

    pub fn share_by_name(&self, name: &str) -> Result<Option<ShareRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {SHARE_COLUMNS} FROM shares WHERE name = ?1"),
                [name],
                row_to_share,
            )
            .optional()?)
    }

    /// Makes a share read-only (or writable again); true if it exists. Every call the share
    /// serves reads its row, so this takes effect at once.
    pub fn set_share_read_only(&self, name: &str, read_only: bool) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "UPDATE shares SET read_only = ?2 WHERE name = ?1",
            params![name, i64::from(read_only)],
        )? > 0)
    }

    /// Deletes a share and its inodes; true if it existed. Its objects stay in the bucket.
    pub fn delete_share(&self, name: &str) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .execute("DELETE FROM shares WHERE name = ?1", [name])?
            > 0)
    }

    pub fn share_root(&self, share_id: i64) -> Result<Option<InodeRow>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {INODE_COLUMNS} FROM inodes WHERE share_id = ?1 AND parent IS NULL"
                ),
                [share_id],
                row_to_inode,
            )
            .optional()?)
    }

    /// Makes every directory of a share at or below `path` stale, so its next access re-lists
    /// the bucket (`share refresh`). Returns how many directories were marked.
    pub fn invalidate_refresh(&self, share_id: i64, path: &str) -> Result<u64, CatalogError> {
        let n = if path.is_empty() {
            self.conn().execute(
                "UPDATE inodes SET refreshed_unix = 0 WHERE share_id = ?1 AND kind = 'dir'",
                [share_id],
            )?
        } else {
            self.conn().execute(
                "UPDATE inodes SET refreshed_unix = 0 WHERE share_id = ?1 AND kind = 'dir'
                 AND (path = ?2 OR substr(path, 1, length(?2) + 1) = ?2 || '/')",
                params![share_id, path],
            )?
        };
        Ok(n as u64)
    }

    pub fn share_sync_stats(&self, share_id: i64) -> Result<ShareSyncStats, CatalogError> {
        let conn = self.conn();
        let (files, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(CASE WHEN staged = 1 THEN size ELSE 0 END), 0)
             FROM inodes WHERE share_id = ?1 AND version != synced_version AND kind != 'dir'",
            [share_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // Each hard link name is an object of its own that may still be owed.
        let links: i64 = conn.query_row(
            "SELECT count(*) FROM links l JOIN inodes i ON i.id = l.inode
             WHERE l.share_id = ?1 AND l.synced_version != i.version",
            [share_id],
            |r| r.get(0),
        )?;
        let deletes: i64 = conn.query_row(
            "SELECT count(*) FROM pending_deletes WHERE share_id = ?1",
            [share_id],
            |r| r.get(0),
        )?;
        let last: Option<i64> = conn.query_row(
            "SELECT last_upload_unix FROM shares WHERE id = ?1",
            [share_id],
            |r| r.get(0),
        )?;
        Ok(ShareSyncStats {
            dirty_files: u64::try_from(files + links).unwrap_or(0),
            dirty_bytes: u64::try_from(bytes).unwrap_or(0),
            pending_deletes: u64::try_from(deletes).unwrap_or(0),
            last_upload_unix: last,
        })
    }
}

/// A directory, its share and one of its entries, as [`Catalog::try_dir_entry`] reads them.
pub type DirEntry = (InodeRow, ShareRow, Option<InodeRow>);

fn inode_with_share(
    conn: &rusqlite::Connection,
    id: i64,
) -> Result<Option<(InodeRow, ShareRow)>, CatalogError> {
    let Some(row) = inode_by_id(conn, id)? else {
        return Ok(None);
    };
    static SHARE_BY_ID: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {SHARE_COLUMNS} FROM shares WHERE id = ?1"));
    let mut stmt = conn.prepare_cached(&SHARE_BY_ID)?;
    let share = stmt.query_row([row.share_id], row_to_share).optional()?;
    Ok(share.map(|share| (row, share)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn share() -> ShareRow {
        ShareRow {
            id: 0,
            name: "s".into(),
            bucket_prefix: "shares/s/".into(),
            read_only: false,
            squash: Squash::Root,
            allowed_clients: String::new(),
            default_uid: 0,
            default_gid: 0,
            default_file_mode: 0o644,
            default_dir_mode: 0o755,
            refresh_secs: 60,
            created_unix: 1,
            last_upload_unix: None,
        }
    }

    pub(in crate::catalog) fn node(
        share_id: i64,
        parent: Option<i64>,
        path: &str,
        kind: InodeKind,
    ) -> InodeRow {
        InodeRow::new(share_id, parent, path, kind, (0o755, 0, 0), 0)
    }

    pub(in crate::catalog) fn catalog_with_share()
    -> (tempfile::TempDir, Catalog, ShareRow, InodeRow) {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let s = c
            .create_share(&share(), &node(0, None, "", InodeKind::Dir))
            .unwrap();
        let root = c.share_root(s.id).unwrap().unwrap();
        (dir, c, s, root)
    }

    #[test]
    fn rename_of_a_directory_moves_its_subtree_and_ids_are_never_reused() {
        let (_dir, c, s, root) = catalog_with_share();
        let a = c
            .insert_inode(&node(s.id, Some(root.id), "é", InodeKind::Dir))
            .unwrap();
        let f = c
            .insert_inode(&node(s.id, Some(a.id), "é/f", InodeKind::File))
            .unwrap();
        let ab = c
            .insert_inode(&node(s.id, Some(root.id), "ab", InodeKind::File))
            .unwrap();
        c.rename_inode(&a, root.id, "b", "b", 5, None).unwrap();
        assert_eq!(c.inode(f.id).unwrap().unwrap().path, "b/f");
        assert_eq!(c.inode(ab.id).unwrap().unwrap().path, "ab");
        assert_eq!(c.child(root.id, "b").unwrap().unwrap().id, a.id);
        c.remove_inode(&c.inode(ab.id).unwrap().unwrap()).unwrap();
        let again = c
            .insert_inode(&node(s.id, Some(root.id), "ab", InodeKind::File))
            .unwrap();
        assert!(again.id > f.id, "ids are never reused");
    }

    #[test]
    fn an_inode_is_read_with_its_share() {
        let (_dir, c, s, root) = catalog_with_share();
        let second = c
            .create_share(
                &ShareRow {
                    name: "t".into(),
                    bucket_prefix: "shares/t/".into(),
                    read_only: true,
                    default_file_mode: 0o600,
                    ..share()
                },
                &node(0, None, "", InodeKind::Dir),
            )
            .unwrap();
        let f = c
            .insert_inode(&node(s.id, Some(root.id), "f", InodeKind::File))
            .unwrap();
        let second_root = c.share_root(second.id).unwrap().unwrap();
        for (id, want) in [(f.id, &s), (root.id, &s), (second_root.id, &second)] {
            let (row, share) = c.inode_with_share(id).unwrap().unwrap();
            assert_eq!(row, c.inode(id).unwrap().unwrap());
            assert_eq!(&share, want);
        }
        assert!(c.inode_with_share(f.id + 100).unwrap().is_none());
    }

    #[test]
    fn synced_moves_queue_the_old_key_and_protect_the_new_one() {
        let (_dir, c, s, root) = catalog_with_share();
        let f = c
            .insert_inode(&node(s.id, Some(root.id), "f", InodeKind::File))
            .unwrap();
        assert!(c.mark_synced(f.id, 1, Some("k1"), None, 9).unwrap());
        assert!(c.mark_synced(f.id, 2, Some("k2"), None, 9).unwrap());
        assert_eq!(c.pending_deletes(s.id).unwrap(), vec!["k1".to_owned()]);
        assert!(c.mark_synced(f.id, 3, Some("k1"), None, 9).unwrap());
        assert_eq!(c.pending_deletes(s.id).unwrap(), vec!["k2".to_owned()]);
        let stats = c.share_sync_stats(s.id).unwrap();
        assert_eq!(stats.last_upload_unix, Some(9));
    }

    #[test]
    fn open_share_uploads_are_kept_until_forgotten_and_survive_a_reopen() {
        let (dir, c, _, _) = catalog_with_share();
        c.note_share_upload("shares/s/a.bin", "id-a").unwrap();
        c.note_share_upload("shares/s/b.bin", "id-b").unwrap();
        c.forget_share_upload("id-a").unwrap();
        // Forgetting one twice (or one never noted) is harmless.
        c.forget_share_upload("id-a").unwrap();
        drop(c);
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(
            c.share_uploads().unwrap(),
            vec![("shares/s/b.bin".to_owned(), "id-b".to_owned())]
        );
    }
}
