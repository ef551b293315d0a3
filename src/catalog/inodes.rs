//! The inode table of shares and the bucket deletions still owed.
//!
//! Inode ids are the file ids clients see: assigned once, never reused (AUTOINCREMENT), kept
//! across restarts. Invariants: `version != synced_version` exactly when the bucket lags the
//! catalog for that inode; a row's `remote_key` is changed only after the object is at the new
//! key, and the old key is queued in `pending_deletes` in the same transaction, so a crash never
//! loses the only copy and never forgets a leftover object.

use rusqlite::{OptionalExtension, Row, ToSql, params};

use crate::catalog::shares::{as_i64, bad, u32_at, u64_at};
use crate::catalog::{Catalog, CatalogError, links};

/// How long an exclusive create's verifier is kept for a retransmission of that create: far
/// past any client's retransmission or a restart's grace period, and short enough that the
/// table stays small.
pub const VERIFIER_KEEP_SECS: i64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeKind {
    File,
    Dir,
    Symlink,
    /// Special files (schema 9): zero-byte objects whose type is in their metadata.
    Fifo,
    Socket,
    BlockDev,
    CharDev,
}

impl InodeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
            Self::BlockDev => "block",
            Self::CharDev => "char",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::File,
            Self::Dir,
            Self::Symlink,
            Self::Fifo,
            Self::Socket,
            Self::BlockDev,
            Self::CharDev,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One inode. `id` and `share_id` are fixed; the rest is written back by [`Catalog::save_inode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRow {
    pub id: i64,
    pub share_id: i64,
    pub parent: Option<i64>,
    pub name: String,
    pub path: String,
    pub kind: InodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Last access; kept locally only (never in the bucket's metadata).
    pub atime_ns: i64,
    pub target: Option<String>,
    pub remote_key: Option<String>,
    pub etag: Option<String>,
    pub extra_meta: String,
    pub staged: bool,
    pub version: i64,
    pub synced_version: i64,
    pub refreshed_unix: i64,
    /// A block or character device's (major, minor); (0, 0) for every other kind.
    pub rdev: (u32, u32),
    /// How many names the inode has (schema 11): 1 plus its hard links. Changed only by the
    /// catalog's link operations, never written back by [`Catalog::save_inode`].
    pub nlink: u32,
    /// Set when the row was found by one of the inode's other names (a hard link, the
    /// `links` row with this id): `parent`, `name` and `path` are then that name's.
    pub link: Option<i64>,
}

impl InodeRow {
    /// A new inode at `path` (name = its last component), owned by `uid`/`gid`, both times
    /// `time_ns`, nothing in the bucket yet, dirty (`version` 1, `synced_version` 0).
    pub fn new(
        share_id: i64,
        parent: Option<i64>,
        path: &str,
        kind: InodeKind,
        (mode, uid, gid): (u32, u32, u32),
        time_ns: i64,
    ) -> Self {
        Self {
            id: 0,
            share_id,
            parent,
            name: path.rsplit('/').next().unwrap_or(path).to_owned(),
            path: path.to_owned(),
            kind,
            mode,
            uid,
            gid,
            size: 0,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            atime_ns: time_ns,
            target: None,
            remote_key: None,
            etag: None,
            extra_meta: String::new(),
            staged: false,
            version: 1,
            synced_version: 0,
            refreshed_unix: 0,
            rdev: (0, 0),
            nlink: 1,
            link: None,
        }
    }

    pub fn dirty(&self) -> bool {
        self.version != self.synced_version
    }
}

/// The inode `id` on a connection the caller holds: one keyed statement, its text built once.
pub(super) fn inode_by_id(
    conn: &rusqlite::Connection,
    id: i64,
) -> Result<Option<InodeRow>, CatalogError> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {INODE_COLUMNS} FROM inodes WHERE id = ?1"));
    Ok(conn
        .prepare_cached(&SQL)?
        .query_row([id], row_to_inode)
        .optional()?)
}

pub(super) const INODE_COLUMNS: &str = "id, share_id, parent, name, path, kind, mode, uid, gid, size, \
     mtime_ns, ctime_ns, target, remote_key, etag, extra_meta, staged, version, synced_version, \
     refreshed_unix, rdev_major, rdev_minor, atime_ns, nlink";

pub(super) fn row_to_inode(r: &Row<'_>) -> rusqlite::Result<InodeRow> {
    let kind: String = r.get(5)?;
    Ok(InodeRow {
        id: r.get(0)?,
        share_id: r.get(1)?,
        parent: r.get(2)?,
        name: r.get(3)?,
        path: r.get(4)?,
        kind: InodeKind::parse(&kind).ok_or_else(|| bad(5))?,
        mode: u32_at(r, 6)?,
        uid: u32_at(r, 7)?,
        gid: u32_at(r, 8)?,
        size: u64_at(r, 9)?,
        mtime_ns: r.get(10)?,
        ctime_ns: r.get(11)?,
        target: r.get(12)?,
        remote_key: r.get(13)?,
        etag: r.get(14)?,
        extra_meta: r.get(15)?,
        staged: r.get::<_, i64>(16)? != 0,
        version: r.get(17)?,
        synced_version: r.get(18)?,
        refreshed_unix: r.get(19)?,
        rdev: (u32_at(r, 20)?, u32_at(r, 21)?),
        atime_ns: r.get(22)?,
        nlink: u32_at(r, 23)?,
        link: None,
    })
}
/// One upload to record with [`Catalog::mark_synced_batch`].
#[derive(Debug, Clone, Copy)]
pub struct SyncedItem<'a> {
    pub id: i64,
    pub version: i64,
    pub key: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub unstage: bool,
}

impl Catalog {
    // The statements every NFS call runs are cached: parsing them again each time showed in
    // profiles of small-file writes.
    pub fn inode(&self, id: i64) -> Result<Option<InodeRow>, CatalogError> {
        inode_by_id(&self.conn(), id)
    }

    /// The inode named `name` in `parent`, by its own name or by a hard link (then the row's
    /// `link` is set and its parent, name and path are the link's).
    pub fn child(&self, parent: i64, name: &str) -> Result<Option<InodeRow>, CatalogError> {
        child_of(&self.conn(), parent, name)
    }

    /// [`Catalog::inode`] if the connection is free now; `None` when another call holds it,
    /// as [`Catalog::try_inode_with_share`].
    pub fn try_inode(&self, id: i64) -> Result<Option<Option<InodeRow>>, CatalogError> {
        match self.try_conn() {
            Some(conn) => inode_by_id(&conn, id).map(Some),
            None => Ok(None),
        }
    }

    /// Children of `parent` with ids above `after`, in id order (stable READDIR cookies).
    pub fn children(
        &self,
        parent: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<InodeRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {INODE_COLUMNS} FROM inodes WHERE parent = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![parent, after, i64::try_from(limit).unwrap_or(i64::MAX)],
            row_to_inode,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn has_children(&self, parent: i64) -> Result<bool, CatalogError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM inodes WHERE parent = ?1)
                 OR EXISTS (SELECT 1 FROM links WHERE parent = ?1)",
            [parent],
            |r| r.get(0),
        )?)
    }

    /// Inserts an inode (its `id` is ignored) and returns it with the id assigned.
    pub fn insert_inode(&self, row: &InodeRow) -> Result<InodeRow, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let id = insert_inode(&tx, row)?;
            tx.commit()?;
            Ok(InodeRow { id, ..row.clone() })
        })
    }

    /// Inserts a new entry of directory `row.parent` and advances the directory's mtime and
    /// ctime to `now_ns` (POSIX), in one transaction: a create costs one commit.
    pub fn insert_entry(&self, row: &InodeRow, now_ns: i64) -> Result<InodeRow, CatalogError> {
        self.insert_entry_with(row, now_ns, None)
    }

    /// [`Self::insert_entry`]; with `verifier` (an exclusive create) the client's verifier is
    /// recorded with the new inode in the same transaction (schema 13), and verifiers older
    /// than [`VERIFIER_KEEP_SECS`] are pruned.
    pub fn insert_entry_with(
        &self,
        row: &InodeRow,
        now_ns: i64,
        verifier: Option<[u8; 8]>,
    ) -> Result<InodeRow, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let id = insert_inode(&tx, row)?;
            if let Some(dir) = row.parent {
                touch_dir(&tx, dir, now_ns)?;
            }
            if let Some(verifier) = verifier {
                let now_unix = now_ns.div_euclid(1_000_000_000);
                tx.prepare_cached("DELETE FROM create_verifiers WHERE made_unix < ?1")?
                    .execute([now_unix - VERIFIER_KEEP_SECS])?;
                tx.prepare_cached(
                    "INSERT INTO create_verifiers (inode, verifier, made_unix) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, &verifier[..], now_unix])?;
            }
            tx.commit()?;
            Ok(InodeRow { id, ..row.clone() })
        })
    }

    /// The verifier of the exclusive create that made inode `id`, while it is kept.
    pub fn create_verifier(&self, id: i64) -> Result<Option<[u8; 8]>, CatalogError> {
        let found: Option<Vec<u8>> = self
            .conn()
            .prepare_cached("SELECT verifier FROM create_verifiers WHERE inode = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        Ok(found.and_then(|v| v.try_into().ok()))
    }

    /// Writes back every mutable column of `row`.
    pub fn save_inode(&self, row: &InodeRow) -> Result<(), CatalogError> {
        self.grouped(|conn| update_inode(conn, row))
    }

    /// Like `save_inode`, without waiting for the disk (`synchronous=NORMAL` for this one
    /// transaction): it survives a crash of the process (WAL in the page cache) and is made
    /// durable by the next sync of the WAL, e.g. `sync_inode`. For UNSTABLE writes, whose
    /// durability point is the COMMIT that follows.
    pub fn save_inode_unsynced(&self, row: &InodeRow) -> Result<(), CatalogError> {
        self.relaxed(|conn| update_inode(conn, row))
    }

    /// Makes inode `id`'s unsynced changes durable: the WAL, with every earlier unsynced
    /// transaction in it, is on disk when this returns (one group-committed sync, shared with
    /// concurrent callers; no transaction).
    pub fn sync_inode(&self, _id: i64) -> Result<(), CatalogError> {
        self.durable()
    }

    /// A directory's entries changed (an entry created, removed or renamed): its mtime and
    /// ctime become `now_ns` (POSIX). Local only: a directory's times are not in the bucket,
    /// so nothing is uploaded for them.
    pub fn touch_dir(&self, id: i64, now_ns: i64) -> Result<(), CatalogError> {
        touch_dir(&self.conn(), id, now_ns)
    }

    /// Records a read's access time, without waiting for the disk: an access time lost with
    /// power is harmless, and reads must not pay an fsync.
    pub fn set_atime(&self, id: i64, atime_ns: i64) -> Result<(), CatalogError> {
        self.relaxed(|conn| {
            conn.prepare_cached("UPDATE inodes SET atime_ns = ?2 WHERE id = ?1")?
                .execute(params![id, atime_ns])?;
            Ok(())
        })
    }

    /// Removes an inode; its object (if any) is queued for deletion in the same transaction.
    pub fn remove_inode(&self, row: &InodeRow) -> Result<(), CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM inodes WHERE id = ?1", [row.id])?;
            if let Some(key) = &row.remote_key {
                queue_delete(&tx, row.share_id, key)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Removes the name `row` was found by (its own or, with [`InodeRow::link`], a hard link;
    /// see `links::remove_name`) and advances the directory's mtime and ctime to `now_ns`, in
    /// one transaction. Returns true when that was the inode's last name and the inode is gone
    /// (its object queued for deletion).
    pub fn remove_entry(&self, row: &InodeRow, now_ns: i64) -> Result<bool, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let gone = links::remove_name(&tx, row, now_ns)?;
            if let Some(dir) = row.parent {
                touch_dir(&tx, dir, now_ns)?;
            }
            tx.commit()?;
            Ok(gone)
        })
    }

    /// Removes an inode whose object vanished from the bucket (nothing left to delete there).
    /// An inode with a hard link whose object is current keeps living under that name instead.
    /// Returns whether the inode is gone.
    pub fn forget_inode(&self, id: i64) -> Result<bool, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let gone = links::forget_primary(&tx, id)?;
            tx.commit()?;
            Ok(gone)
        })
    }

    /// Moves `row` to `new_parent`/`new_name` (path `new_path`), replacing `replaced` if given,
    /// and rewrites the paths of everything below it; every moved inode becomes dirty so the
    /// uploader copies its object to the new key. Both directories' mtime and ctime become
    /// `ctime_ns` (their entries changed). One transaction. Either may be a name found by a
    /// hard link ([`InodeRow::link`]): that name alone moves or goes (ADR 0013). Returns true
    /// when `replaced` was its file's last name, so the file is gone.
    pub fn rename_inode(
        &self,
        row: &InodeRow,
        new_parent: i64,
        new_name: &str,
        new_path: &str,
        ctime_ns: i64,
        replaced: Option<&InodeRow>,
    ) -> Result<bool, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let gone = match replaced {
                Some(old) => links::remove_name(&tx, old, ctime_ns)?,
                None => false,
            };
            for dir in row.parent.into_iter().chain([new_parent]) {
                touch_dir(&tx, dir, ctime_ns)?;
            }
            if let Some(link) = row.link {
                links::move_link(
                    &tx,
                    link,
                    row.id,
                    (new_parent, new_name, new_path),
                    ctime_ns,
                )?;
                tx.commit()?;
                return Ok(gone);
            }
            tx.execute(
                "UPDATE inodes SET parent = ?2, name = ?3, path = ?4, ctime_ns = ?5,
                 version = version + 1 WHERE id = ?1",
                params![row.id, new_parent, new_name, new_path, ctime_ns],
            )?;
            if row.kind == InodeKind::Dir && !row.path.is_empty() {
                // length() and substr() count characters on both sides, so non-ASCII names
                // are cut where they should be.
                tx.execute(
                    "UPDATE inodes SET path = ?3 || substr(path, length(?2) + 1),
                     version = version + 1
                 WHERE share_id = ?1 AND substr(path, 1, length(?2)) = ?2",
                    params![
                        row.share_id,
                        format!("{}/", row.path),
                        format!("{new_path}/")
                    ],
                )?;
                links::move_subtree(&tx, row.share_id, &row.path, new_path)?;
            }
            tx.commit()?;
            Ok(gone)
        })
    }

    /// Inodes of a share whose bucket state lags the catalog, oldest first.
    /// Ids of a share's dirty inodes, in id order, at most `limit`: read from the dirty index
    /// alone, which the uploader does every round while most of them still wait.
    pub fn dirty_ids(&self, share_id: i64, limit: usize) -> Result<Vec<i64>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM inodes WHERE share_id = ?1 AND version != synced_version
             ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![share_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that version `version` of inode `id` is in the bucket at `key` (with `etag`). The
    /// previous key, if different, is queued for deletion; a pending deletion of `key` itself is
    /// dropped (the new object must survive it). Returns false if the inode is gone.
    pub fn mark_synced(
        &self,
        id: i64,
        version: i64,
        key: Option<&str>,
        etag: Option<&str>,
        unix_now: i64,
    ) -> Result<bool, CatalogError> {
        let item = SyncedItem {
            id,
            version,
            key,
            etag,
            unstage: false,
        };
        Ok(self.mark_synced_batch(&[item], unix_now)?[0].is_some())
    }

    /// `mark_synced` for a batch of uploads in one transaction (one fsync for all of them).
    /// An item with `unstage` also drops the staging flag if nothing was written since the
    /// uploaded version. Per item: `None` if the inode is gone, else whether it was unstaged.
    pub fn mark_synced_batch(
        &self,
        items: &[SyncedItem<'_>],
        unix_now: i64,
    ) -> Result<Vec<Option<bool>>, CatalogError> {
        self.grouped(|conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(items.len());
            let mut shares = std::collections::BTreeSet::new();
            for item in items {
                let Some(row) = inode_by_id(&tx, item.id)? else {
                    out.push(None);
                    continue;
                };
                if let Some(old) = &row.remote_key
                    && Some(old.as_str()) != item.key
                {
                    queue_delete(&tx, row.share_id, old)?;
                }
                if let Some(key) = item.key {
                    tx.prepare_cached("DELETE FROM pending_deletes WHERE key = ?1")?
                        .execute([key])?;
                }
                tx.prepare_cached(
                    "UPDATE inodes SET synced_version = ?2, remote_key = ?3, etag = ?4 WHERE id = ?1",
                )?
                .execute(params![item.id, item.version, item.key, item.etag])?;
                let unstaged = item.unstage
                    && tx
                        .prepare_cached("UPDATE inodes SET staged = 0 WHERE id = ?1 AND version = ?2")?
                        .execute(params![item.id, item.version])?
                        > 0;
                if unstaged {
                    // Its staging file is no longer the file's data (journal.rs).
                    tx.prepare_cached("DELETE FROM small_journal WHERE inode = ?1")?
                        .execute([item.id])?;
                }
                shares.insert(row.share_id);
                out.push(Some(unstaged));
            }
            for share in shares {
                tx.prepare_cached("UPDATE shares SET last_upload_unix = ?2 WHERE id = ?1")?
                    .execute(params![share, unix_now])?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Whether some inode's object, or an object queued for deletion, lives under `prefix`
    /// (a key prefix ending in `/`): such a prefix in a listing is not a new directory.
    pub fn prefix_owned(&self, share_id: i64, prefix: &str) -> Result<bool, CatalogError> {
        let Some(end) = prefix_end(prefix) else {
            return Ok(false);
        };
        Ok(self
            .conn()
            .prepare_cached(PREFIX_OWNED)?
            .query_row(params![share_id, prefix, end], |r| r.get(0))?)
    }

    pub fn pending_deletes(&self, share_id: i64) -> Result<Vec<String>, CatalogError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT key FROM pending_deletes WHERE share_id = ?1 LIMIT 1000")?;
        let rows = stmt.query_map([share_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn is_pending_delete(&self, key: &str) -> Result<bool, CatalogError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM pending_deletes WHERE key = ?1)",
            [key],
            |r| r.get(0),
        )?)
    }

    /// Forgets a pending delete once the object is gone, without waiting for the disk: the
    /// next sync of the WAL makes it durable, and every later durable change syncs it first
    /// (the WAL is written in order). Lost in a power cut, the delete is only run again, as
    /// from the state just before it ran. (A synced commit here held the connection through
    /// an fsync per deleted object, stalling every file operation while a directory of files
    /// was removed.)
    pub fn done_delete(&self, key: &str) -> Result<(), CatalogError> {
        self.relaxed(|conn| {
            conn.prepare_cached("DELETE FROM pending_deletes WHERE key = ?1")?
                .execute([key])?;
            Ok(())
        })
    }

    /// Records a multipart upload the file gateway has opened at `key`, until
    /// [`Self::forget_share_upload`]; what is still here at the next start was cut short.
    pub fn note_share_upload(&self, key: &str, upload_id: &str) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO share_uploads (upload_id, key, started_unix)
             VALUES (?1, ?2, ?3)",
            params![upload_id, key, crate::clock::unix_secs()],
        )?;
        Ok(())
    }

    pub fn forget_share_upload(&self, upload_id: &str) -> Result<(), CatalogError> {
        self.conn().execute(
            "DELETE FROM share_uploads WHERE upload_id = ?1",
            [upload_id],
        )?;
        Ok(())
    }

    /// `(key, upload id)` of every multipart upload recorded as open, oldest first.
    pub fn share_uploads(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT key, upload_id FROM share_uploads ORDER BY started_unix, upload_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether some inode's object, or one of a hard link, currently lives at `key` (a queued
    /// delete must then wait).
    pub fn key_in_use(&self, share_id: i64, key: &str) -> Result<bool, CatalogError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM inodes WHERE share_id = ?1 AND remote_key = ?2)
                 OR EXISTS (SELECT 1 FROM links WHERE share_id = ?1 AND remote_key = ?2)",
            params![share_id, key],
            |r| r.get(0),
        )?)
    }
}

/// [`Catalog::child`] on a connection already held.
pub(super) fn child_of(
    conn: &rusqlite::Connection,
    parent: i64,
    name: &str,
) -> Result<Option<InodeRow>, CatalogError> {
    let mut stmt = conn.prepare_cached(&child_query())?;
    match stmt
        .query_row(params![parent, name], row_to_inode)
        .optional()?
    {
        Some(row) => Ok(Some(row)),
        None => links::named(conn, parent, name),
    }
}

/// The entry `?2` of directory `?1`. The share is named so that the (share_id, parent, name)
/// unique index finds the entry: `parent` alone uses `inodes_by_parent` and reads every entry of
/// the directory, which made each lookup and create in a large directory cost time in
/// proportion to its size (issue 21: 0.7 ms a file at first, 18 ms by 20,000 files).
fn child_query() -> String {
    format!(
        "SELECT {INODE_COLUMNS} FROM inodes
         WHERE share_id = (SELECT share_id FROM inodes WHERE id = ?1)
             AND parent = ?1 AND name = ?2"
    )
}

/// Whether share `?1` has an object under key prefix `?2` (`?3` is [`prefix_end`] of it). A
/// key range, not `substr`, so that the key indexes find it: a refresh asks this for every
/// sub-prefix listed, and a `substr` test read every key of the share each time (issue 21).
pub(super) const PREFIX_OWNED: &str = "SELECT EXISTS (SELECT 1 FROM inodes WHERE share_id = ?1
         AND remote_key IS NOT NULL AND remote_key >= ?2 AND remote_key < ?3)
     OR EXISTS (SELECT 1 FROM links WHERE share_id = ?1
         AND remote_key IS NOT NULL AND remote_key >= ?2 AND remote_key < ?3)
     OR EXISTS (SELECT 1 FROM pending_deletes WHERE key >= ?2 AND key < ?3 AND share_id = ?1)";

/// The least string above every string that starts with `prefix` (SQLite compares text as
/// UTF-8 bytes, which orders as code points): its last character incremented. `None` for an
/// empty prefix.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next code point, skipping the surrogates, which no string holds.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Inserts `row` (its `id` ignored) with every column in one statement, and returns the id
/// assigned.
pub(super) fn insert_inode(
    conn: &rusqlite::Connection,
    row: &InodeRow,
) -> Result<i64, CatalogError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO inodes (share_id, parent, name, path, kind, mode, uid, gid, size, mtime_ns,
             ctime_ns, target, remote_key, etag, extra_meta, staged, version, synced_version,
             refreshed_unix, rdev_major, rdev_minor, atime_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
             ?18, ?19, ?20, ?21, ?22)",
    )?;
    let kind = row.kind.as_str();
    let fixed: [&dyn ToSql; 5] = [&row.share_id, &row.parent, &row.name, &row.path, &kind];
    with_mutable(&mut stmt, &fixed, row)?;
    Ok(conn.last_insert_rowid())
}

/// Writes every mutable column of `row` (all but id, share, parent, name, path, kind).
fn update_inode(conn: &rusqlite::Connection, row: &InodeRow) -> Result<(), CatalogError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE inodes SET mode = ?2, uid = ?3, gid = ?4, size = ?5, mtime_ns = ?6,
             ctime_ns = ?7, target = ?8, remote_key = ?9, etag = ?10, extra_meta = ?11,
             staged = ?12, version = ?13, synced_version = ?14, refreshed_unix = ?15,
             rdev_major = ?16, rdev_minor = ?17, atime_ns = ?18
         WHERE id = ?1",
    )?;
    with_mutable(&mut stmt, &[&row.id], row)?;
    Ok(())
}

/// Runs `stmt` with `first` as its leading parameters, then every mutable column of `row` in
/// the order `update_inode` names them.
fn with_mutable(
    stmt: &mut rusqlite::CachedStatement<'_>,
    first: &[&dyn ToSql],
    row: &InodeRow,
) -> Result<usize, CatalogError> {
    let (size, staged) = (as_i64(row.size)?, i64::from(row.staged));
    let mutable: [&dyn ToSql; 17] = [
        &row.mode,
        &row.uid,
        &row.gid,
        &size,
        &row.mtime_ns,
        &row.ctime_ns,
        &row.target,
        &row.remote_key,
        &row.etag,
        &row.extra_meta,
        &staged,
        &row.version,
        &row.synced_version,
        &row.refreshed_unix,
        &row.rdev.0,
        &row.rdev.1,
        &row.atime_ns,
    ];
    Ok(stmt.execute(rusqlite::params_from_iter(
        first.iter().chain(mutable.iter()),
    ))?)
}

/// A directory's entries changed: its mtime and ctime become `now_ns`. Local only: a
/// directory's times are not in the bucket, so nothing is uploaded for them.
pub(super) fn touch_dir(
    conn: &rusqlite::Connection,
    id: i64,
    now_ns: i64,
) -> Result<(), CatalogError> {
    conn.prepare_cached(
        "UPDATE inodes SET mtime_ns = ?2, ctime_ns = ?2 WHERE id = ?1 AND kind = 'dir'",
    )?
    .execute(params![id, now_ns])?;
    Ok(())
}

pub(super) fn queue_delete(
    tx: &rusqlite::Connection,
    share_id: i64,
    key: &str,
) -> Result<(), CatalogError> {
    tx.prepare_cached(
        "INSERT INTO pending_deletes (share_id, key) VALUES (?1, ?2)
         ON CONFLICT (key) DO NOTHING",
    )?
    .execute(params![share_id, key])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_creates_verifier_is_kept_apart_and_pruned_after_an_hour() {
        let (_dir, c, _, root) = crate::catalog::shares::tests::catalog_with_share();
        let file = |path: &str| {
            InodeRow::new(
                root.share_id,
                Some(root.id),
                path,
                crate::catalog::shares::InodeKind::File,
                (0o644, 0, 0),
                7,
            )
        };
        let hour_ns = VERIFIER_KEEP_SECS * 1_000_000_000;
        let t0 = 1_800_000_000 * 1_000_000_000;
        let a = c
            .insert_entry_with(&file("a"), t0, Some(*b"verifier"))
            .unwrap();
        assert_eq!(c.create_verifier(a.id).unwrap(), Some(*b"verifier"));
        assert_eq!(
            c.inode(a.id).unwrap().unwrap().mtime_ns,
            7,
            "times as given"
        );
        let plain = c.insert_entry(&file("p"), t0).unwrap();
        assert_eq!(c.create_verifier(plain.id).unwrap(), None);
        // Within the hour both are kept; past it, the next exclusive create prunes the old.
        let b = c
            .insert_entry_with(&file("b"), t0 + hour_ns, Some(*b"second!!"))
            .unwrap();
        assert_eq!(c.create_verifier(a.id).unwrap(), Some(*b"verifier"));
        let d = c
            .insert_entry_with(&file("d"), t0 + hour_ns + 2_000_000_000, Some(*b"third!!!"))
            .unwrap();
        assert_eq!(c.create_verifier(a.id).unwrap(), None);
        assert_eq!(c.create_verifier(b.id).unwrap(), Some(*b"second!!"));
        assert_eq!(c.create_verifier(d.id).unwrap(), Some(*b"third!!!"));
    }

    #[test]
    fn issue_21_a_directory_entry_is_found_by_the_unique_index() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let conn = c.conn();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", child_query()))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(params![1, "x"], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("(share_id=? AND parent=? AND name=?)")),
            "the lookup scans the directory: {plan:?}"
        );
    }

    /// SQLite's plan for `sql`, one line per step.
    fn plan_of(c: &Catalog, sql: &str) -> Vec<String> {
        let conn = c.conn();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The steps of a statement's plan that cost time in proportion to a table, a share or a
    /// directory: a SCAN (a whole table or index), an entry looked up by name that the index
    /// finds by parent alone (every entry of the directory is read), or rows found by share
    /// alone (every row of the share), except through the index of dirty inodes.
    fn slow_steps(sql: &str, plan: &[String]) -> Vec<String> {
        plan.iter()
            .filter(|step| {
                let scan = step.starts_with("SCAN ") && !step.starts_with("SCAN CONSTANT ROW");
                let by_parent = sql.contains("name =") && step.ends_with("(parent=?)");
                scan || by_parent || (by_share_only(step) && !step.contains("_dirty "))
            })
            .cloned()
            .collect()
    }

    /// Whether a SEARCH step narrows its rows by nothing but the share: its index constraint
    /// has no equality on another column and no range bounded on both sides (SQLite writes
    /// `remote_key IS NOT NULL` as `remote_key>?`, which bounds nothing).
    fn by_share_only(step: &str) -> bool {
        let Some((_, cons)) = step.rsplit_once('(') else {
            return false;
        };
        let terms: Vec<&str> = cons.trim_end_matches(')').split(" AND ").collect();
        let narrowed = terms.iter().any(|t| {
            let equal = t.ends_with("=?") && !t.contains('<') && !t.contains('>');
            let column = t.split(['<', '>', '=']).next().unwrap_or("");
            (equal && column != "share_id")
                || (t.contains('>') && terms.iter().any(|u| u.starts_with(&format!("{column}<"))))
        });
        step.starts_with("SEARCH ") && !narrowed
    }

    /// Issue 21: create, lookup, stat, attribute changes, READDIR, upload bookkeeping, links,
    /// rename and remove of one file must cost the same in a directory of 10 or 100,000
    /// entries, in a share of any size. Every statement these operations run (recorded with
    /// SQLite's trace hook, values bound) must find its rows through an index.
    #[test]
    fn issue_21_per_file_statements_search_never_scan() {
        use crate::catalog::shares::tests::{catalog_with_share, node};
        use std::sync::{Arc, Mutex};

        let (_dir, c, s, root) = catalog_with_share();
        let d = c
            .insert_inode(&node(s.id, Some(root.id), "d", InodeKind::Dir))
            .unwrap();
        for i in 0..50 {
            let f = node(s.id, Some(d.id), &format!("d/f{i}"), InodeKind::File);
            c.insert_entry(&f, 1).unwrap();
        }
        let ran = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = ran.clone();
        c.conn()
            .trace_v2(
                rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
                Some(move |e: rusqlite::trace::TraceEvent<'_>| {
                    if let rusqlite::trace::TraceEvent::Stmt(stmt, sql) = e {
                        let sql = stmt.expanded_sql().unwrap_or_else(|| sql.to_owned());
                        record.lock().unwrap().push(sql);
                    }
                }),
            )
            .unwrap();

        // Create (a lookup that misses, then the insert), lookup, stat.
        assert!(c.child(d.id, "new").unwrap().is_none());
        let f = node(s.id, Some(d.id), "d/new", InodeKind::File);
        let mut f = c.insert_entry(&f, 2).unwrap();
        assert_eq!(c.child(d.id, "new").unwrap().unwrap().id, f.id);
        c.inode(f.id).unwrap().unwrap();
        // Writes and attribute changes.
        f.size = 5;
        f.version += 1;
        c.save_inode_unsynced(&f).unwrap();
        c.sync_inode(f.id).unwrap();
        c.save_inode(&f).unwrap();
        c.set_atime(f.id, 3).unwrap();
        // READDIR, from the start and from a cookie.
        let page = c.dir_entries(d.id, 0, 10).unwrap();
        c.dir_entries(d.id, page.last().unwrap().0, 10).unwrap();
        c.has_children(d.id).unwrap();
        // The upload's bookkeeping.
        c.dirty_ids(s.id, 10).unwrap();
        let item = SyncedItem {
            id: f.id,
            version: f.version,
            key: Some("share/d/new"),
            etag: Some("e"),
            unstage: true,
        };
        c.mark_synced_batch(&[item], 4).unwrap();
        c.key_in_use(s.id, "share/d/new").unwrap();
        c.is_pending_delete("share/d/new").unwrap();
        c.prefix_owned(s.id, "share/d/").unwrap();
        // A hard link, looked up, renamed; the file renamed; both removed.
        let linked = c.add_link(f.id, d.id, ("l", "d/l"), 5).unwrap().unwrap();
        let l = c.child(d.id, "l").unwrap().unwrap();
        c.rename_inode(&l, root.id, "l2", "l2", 6, None).unwrap();
        let f = c.inode(linked.id).unwrap().unwrap();
        c.rename_inode(&f, d.id, "new2", "d/new2", 7, None).unwrap();
        let l = c.child(root.id, "l2").unwrap().unwrap();
        c.remove_entry(&l, 8).unwrap();
        let f = c.child(d.id, "new2").unwrap().unwrap();
        c.remove_entry(&f, 9).unwrap();
        c.done_delete("share/d/new").unwrap();

        c.conn()
            .trace_v2(
                rusqlite::trace::TraceEventCodes::empty(),
                None::<fn(rusqlite::trace::TraceEvent<'_>)>,
            )
            .unwrap();
        let ran = ran.lock().unwrap().clone();
        assert!(ran.len() > 20, "the trace recorded too little: {ran:?}");
        let mut slow = Vec::new();
        for sql in &ran {
            let word = sql.split_whitespace().next().unwrap_or("").to_uppercase();
            if !matches!(word.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE") {
                continue;
            }
            let steps = slow_steps(sql, &plan_of(&c, sql));
            if !steps.is_empty() {
                slow.push(format!("{sql}\n    {steps:?}"));
            }
        }
        assert!(
            slow.is_empty(),
            "per-file statements scan:\n{}",
            slow.join("\n")
        );
    }

    #[test]
    fn prefix_end_is_above_every_string_with_the_prefix() {
        let cases = [
            ("a/", Some("a0")),
            ("é/x", Some("é/y")),
            ("", None),
            ("a\u{D7FF}", Some("a\u{E000}")),
            ("a\u{10FFFF}", Some("b")),
        ];
        for (prefix, end) in cases {
            assert_eq!(prefix_end(prefix).as_deref(), end, "{prefix:?}");
        }
    }
}
