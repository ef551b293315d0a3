//! Hard links of shares (schema 11, docs/decisions/0013-hard-links.md): an inode's names beyond
//! the one its `inodes` row carries.
//!
//! Every name is a complete object in the bucket, so a link row tracks its own object
//! (`remote_key`, `etag`) and the inode version that object holds (`synced_version`). A name is
//! dirty while that version differs from the inode's. Invariants: `inodes.nlink` is 1 plus the
//! inode's rows here, changed in the same transaction as the rows; a name in a directory is in at
//! most one of the two tables; when the inode's own name goes and links remain, one link takes
//! its place (the data lives while any name does), and only the last name removes the inode.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::catalog::inodes::{INODE_COLUMNS, queue_delete, row_to_inode, touch_dir};
use crate::catalog::shares::InodeRow;
use crate::catalog::{Catalog, CatalogError};

/// READDIR cookies of link names start here; an inode's own name has its id as cookie. File
/// ids stay far below it (one id per created file), so the two ranges never meet.
pub const LINK_COOKIE_BASE: u64 = 1 << 62;

/// One extra name of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRow {
    pub id: i64,
    pub share_id: i64,
    pub parent: i64,
    pub name: String,
    pub path: String,
    pub inode: i64,
    pub remote_key: Option<String>,
    pub etag: Option<String>,
    pub synced_version: i64,
}

const LINK_COLUMNS: &str =
    "id, share_id, parent, name, path, inode, remote_key, etag, synced_version";

fn row_to_link(r: &Row<'_>) -> rusqlite::Result<LinkRow> {
    Ok(LinkRow {
        id: r.get(0)?,
        share_id: r.get(1)?,
        parent: r.get(2)?,
        name: r.get(3)?,
        path: r.get(4)?,
        inode: r.get(5)?,
        remote_key: r.get(6)?,
        etag: r.get(7)?,
        synced_version: r.get(8)?,
    })
}

fn inode_in(conn: &rusqlite::Connection, id: i64) -> Result<Option<InodeRow>, CatalogError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {INODE_COLUMNS} FROM inodes WHERE id = ?1"))?
        .query_row([id], row_to_inode)
        .optional()?)
}

fn link_in(conn: &rusqlite::Connection, id: i64) -> Result<Option<LinkRow>, CatalogError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {LINK_COLUMNS} FROM links WHERE id = ?1"))?
        .query_row([id], row_to_link)
        .optional()?)
}

/// The inode row as seen through `link`: its parent, name and path are the link's.
fn seen_as(mut row: InodeRow, link: &LinkRow) -> InodeRow {
    row.parent = Some(link.parent);
    row.name.clone_from(&link.name);
    row.path.clone_from(&link.path);
    row.link = Some(link.id);
    row
}

/// The inode a link named `name` in `parent` points at, as seen through that link.
pub(super) fn named(
    conn: &rusqlite::Connection,
    parent: i64,
    name: &str,
) -> Result<Option<InodeRow>, CatalogError> {
    let link = conn
        .prepare_cached(&format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE parent = ?1 AND name = ?2"
        ))?
        .query_row(params![parent, name], row_to_link)
        .optional()?;
    let Some(link) = link else { return Ok(None) };
    Ok(inode_in(conn, link.inode)?.map(|row| seen_as(row, &link)))
}

/// Whether `name` in `parent` is an inode's own name or a link's. The share is named so that
/// the inodes' (share_id, parent, name) unique index finds the entry: `parent` alone reads
/// every entry of the directory (issue 21, as `Catalog::child` did).
pub(super) const NAME_TAKEN: &str = "SELECT EXISTS (SELECT 1 FROM inodes
         WHERE share_id = (SELECT share_id FROM inodes WHERE id = ?1) AND parent = ?1 AND name = ?2)
     OR EXISTS (SELECT 1 FROM links WHERE parent = ?1 AND name = ?2)";

fn name_taken(conn: &rusqlite::Connection, parent: i64, name: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached(NAME_TAKEN)?
        .query_row(params![parent, name], |r| r.get(0))?)
}

/// Removes the name `row` was found by (its own or a link) in `tx`: a link's row goes, and
/// the inode's own name is replaced by its first link if it has one. Returns true when that
/// was the inode's last name and the inode itself is gone. Every removed name's object is
/// queued for deletion.
pub(super) fn remove_name(
    tx: &rusqlite::Connection,
    row: &InodeRow,
    ctime_ns: i64,
) -> Result<bool, CatalogError> {
    if let Some(id) = row.link {
        if let Some(link) = link_in(tx, id)? {
            tx.execute("DELETE FROM links WHERE id = ?1", [id])?;
            if let Some(key) = &link.remote_key {
                queue_delete(tx, link.share_id, key)?;
            }
            tx.execute(
                "UPDATE inodes SET nlink = nlink - 1, ctime_ns = ?2 WHERE id = ?1",
                params![link.inode, ctime_ns],
            )?;
        }
        return Ok(false);
    }
    let Some(current) = inode_in(tx, row.id)? else {
        return Ok(true);
    };
    if let Some(key) = &current.remote_key {
        queue_delete(tx, current.share_id, key)?;
    }
    match first_link(tx, row.id)? {
        Some(link) => {
            promote(tx, &current, &link, ctime_ns)?;
            Ok(false)
        }
        None => {
            tx.execute("DELETE FROM inodes WHERE id = ?1", [row.id])?;
            Ok(true)
        }
    }
}

fn first_link(conn: &rusqlite::Connection, inode: i64) -> Result<Option<LinkRow>, CatalogError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE inode = ?1 ORDER BY id LIMIT 1"
        ))?
        .query_row([inode], row_to_link)
        .optional()?)
}

/// Gives the inode `link`'s name in place of its own, whose object the caller has queued for
/// deletion. If the link's object holds what the inode's did, it becomes the inode's object
/// and nothing is uploaded; otherwise the inode is made dirty so the uploader writes its new
/// key (from the staging file, or copied from the old object, whose queued deletion waits while
/// the inode still points at it).
fn promote(
    tx: &rusqlite::Connection,
    inode: &InodeRow,
    link: &LinkRow,
    ctime_ns: i64,
) -> Result<(), CatalogError> {
    tx.execute("DELETE FROM links WHERE id = ?1", [link.id])?;
    let current = link.remote_key.is_some() && link.synced_version == inode.synced_version;
    if current {
        tx.execute(
            "UPDATE inodes SET parent = ?2, name = ?3, path = ?4, remote_key = ?5, etag = ?6,
                 nlink = nlink - 1, ctime_ns = ?7 WHERE id = ?1",
            params![
                inode.id,
                link.parent,
                link.name,
                link.path,
                link.remote_key,
                link.etag,
                ctime_ns
            ],
        )?;
    } else {
        if let Some(key) = &link.remote_key {
            queue_delete(tx, link.share_id, key)?;
        }
        // The inode's own key stays its copy source: take it off the delete queue until the
        // upload to the new key moves it (mark_synced queues it again then).
        if let Some(key) = &inode.remote_key {
            tx.execute("DELETE FROM pending_deletes WHERE key = ?1", [key])?;
        }
        tx.execute(
            "UPDATE inodes SET parent = ?2, name = ?3, path = ?4, nlink = nlink - 1,
                 ctime_ns = ?5, version = version + 1 WHERE id = ?1",
            params![inode.id, link.parent, link.name, link.path, ctime_ns],
        )?;
    }
    Ok(())
}

/// The inode's object vanished from the bucket: a link whose object is current takes the
/// inode's name (nothing to delete), else the inode and its links are dropped. Returns whether
/// the inode is gone.
pub(super) fn forget_primary(tx: &Transaction<'_>, id: i64) -> Result<bool, CatalogError> {
    let Some(inode) = inode_in(tx, id)? else {
        return Ok(true);
    };
    let current = tx
        .prepare_cached(&format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE inode = ?1 AND synced_version = ?2
                 AND remote_key IS NOT NULL ORDER BY id LIMIT 1"
        ))?
        .query_row(params![id, inode.synced_version], row_to_link)
        .optional()?;
    match current {
        Some(link) => {
            promote(tx, &inode, &link, inode.ctime_ns)?;
            Ok(false)
        }
        None => {
            // The links' rows go with the inode (ON DELETE CASCADE); their objects too.
            let keys: Vec<(i64, String)> = tx
                .prepare("SELECT share_id, remote_key FROM links WHERE inode = ?1 AND remote_key IS NOT NULL")?
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (share, key) in keys {
                queue_delete(tx, share, &key)?;
            }
            tx.execute("DELETE FROM inodes WHERE id = ?1", [id])?;
            Ok(true)
        }
    }
}

/// Moves link `id` (of inode `inode`) to a new parent, name and path; its object must be
/// copied to the new key, so the name becomes dirty.
pub(super) fn move_link(
    tx: &rusqlite::Connection,
    id: i64,
    inode: i64,
    (parent, name, path): (i64, &str, &str),
    ctime_ns: i64,
) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE links SET parent = ?2, name = ?3, path = ?4, synced_version = 0 WHERE id = ?1",
        params![id, parent, name, path],
    )?;
    tx.execute(
        "UPDATE inodes SET ctime_ns = ?2 WHERE id = ?1",
        params![inode, ctime_ns],
    )?;
    Ok(())
}

/// A directory moved from `old` to `new`: links below it follow (and become dirty).
pub(super) fn move_subtree(
    tx: &rusqlite::Connection,
    share_id: i64,
    old: &str,
    new: &str,
) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE links SET path = ?3 || substr(path, length(?2) + 1), synced_version = 0
         WHERE share_id = ?1 AND substr(path, 1, length(?2)) = ?2",
        params![share_id, format!("{old}/"), format!("{new}/")],
    )?;
    Ok(())
}

impl Catalog {
    pub fn link(&self, id: i64) -> Result<Option<LinkRow>, CatalogError> {
        link_in(&self.conn(), id)
    }

    /// Adds the name `name` (path `path`) in directory `parent` to inode `inode` (the file's
    /// ctime and the directory's mtime and ctime become `ctime_ns`), unless the
    /// name is taken (then `Ok(None)`) or the inode is gone (`Ok(None)` as well: the caller
    /// checked it a moment ago and reports it). Returns the inode with its new link count.
    pub fn add_link(
        &self,
        inode: i64,
        parent: i64,
        (name, path): (&str, &str),
        ctime_ns: i64,
    ) -> Result<Option<InodeRow>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = inode_in(&tx, inode)? else {
            return Ok(None);
        };
        if name_taken(&tx, parent, name)? {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO links (share_id, parent, name, path, inode) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.share_id, parent, name, path, inode],
        )?;
        tx.execute(
            "UPDATE inodes SET nlink = nlink + 1, ctime_ns = ?2 WHERE id = ?1",
            params![inode, ctime_ns],
        )?;
        touch_dir(&tx, parent, ctime_ns)?;
        let row = inode_in(&tx, inode)?;
        tx.commit()?;
        Ok(row)
    }

    /// Entries of directory `parent` after READDIR cookie `after` (0: from the start), at most
    /// `limit`, with their cookies: the inodes named here in id order, then the links named
    /// here in link id order (cookies from [`LINK_COOKIE_BASE`]). Each stays at its cookie
    /// while it exists.
    pub fn dir_entries(
        &self,
        parent: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InodeRow)>, CatalogError> {
        let mut out = Vec::new();
        if after < LINK_COOKIE_BASE {
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            for row in self.children(parent, after, limit)? {
                out.push((u64::try_from(row.id).unwrap_or(0), row));
            }
        }
        let left = limit.saturating_sub(out.len());
        if left == 0 {
            return Ok(out);
        }
        let conn = self.conn();
        let after_link = i64::try_from(after.saturating_sub(LINK_COOKIE_BASE)).unwrap_or(i64::MAX);
        let links: Vec<LinkRow> = conn
            .prepare_cached(&format!(
                "SELECT {LINK_COLUMNS} FROM links WHERE parent = ?1 AND id > ?2 ORDER BY id
                 LIMIT ?3"
            ))?
            .query_map(
                params![parent, after_link, i64::try_from(left).unwrap_or(i64::MAX)],
                row_to_link,
            )?
            .collect::<Result<_, _>>()?;
        for link in links {
            if let Some(row) = inode_in(&conn, link.inode)? {
                let cookie = LINK_COOKIE_BASE + u64::try_from(link.id).unwrap_or(0);
                out.push((cookie, seen_as(row, &link)));
            }
        }
        Ok(out)
    }

    /// The link names in directory `parent`.
    pub fn links_in(&self, parent: i64) -> Result<Vec<LinkRow>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LINK_COLUMNS} FROM links WHERE parent = ?1"
        ))?;
        let rows = stmt.query_map([parent], row_to_link)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of a share's link names whose objects lag their inode, in id order, at most `limit`.
    pub fn dirty_links(&self, share_id: i64, limit: usize) -> Result<Vec<i64>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT l.id FROM links l JOIN inodes i ON i.id = l.inode
             WHERE l.share_id = ?1 AND l.synced_version != i.version ORDER BY l.id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![share_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that link `id`'s object, copied for the name at `path`, holds inode version
    /// `version` at `key`. Its previous key, if different, is queued for deletion and a queued
    /// deletion of `key` is dropped, as `mark_synced` does for inodes. A link moved while its
    /// object was copied keeps `key` as its object but stays dirty, so it is copied again to
    /// its new key. Returns false if the link is gone.
    pub fn mark_link_synced(
        &self,
        id: i64,
        (path, version): (&str, i64),
        key: &str,
        etag: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(link) = link_in(&tx, id)? else {
            return Ok(false);
        };
        if let Some(old) = &link.remote_key
            && old != key
        {
            queue_delete(&tx, link.share_id, old)?;
        }
        tx.execute("DELETE FROM pending_deletes WHERE key = ?1", [key])?;
        let version = if link.path == path { version } else { 0 };
        tx.execute(
            "UPDATE links SET synced_version = ?2, remote_key = ?3, etag = ?4 WHERE id = ?1",
            params![id, version, key, etag],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Drops a link name whose object vanished from the bucket (nothing left to delete there).
    pub fn forget_link(&self, id: i64) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(link) = link_in(&tx, id)? {
            tx.execute("DELETE FROM links WHERE id = ?1", [id])?;
            tx.execute(
                "UPDATE inodes SET nlink = nlink - 1 WHERE id = ?1",
                [link.inode],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::shares::InodeKind;
    use crate::catalog::shares::tests::{catalog_with_share, node};

    fn setup() -> (tempfile::TempDir, Catalog, InodeRow) {
        let (dir, c, _, root) = catalog_with_share();
        (dir, c, root)
    }

    fn dir(c: &Catalog, parent: &InodeRow, path: &str) -> InodeRow {
        c.insert_inode(&node(
            parent.share_id,
            Some(parent.id),
            path,
            InodeKind::Dir,
        ))
        .unwrap()
    }

    fn file(c: &Catalog, parent: &InodeRow, path: &str) -> InodeRow {
        let row = InodeRow::new(
            parent.share_id,
            Some(parent.id),
            path,
            InodeKind::File,
            (0o644, 0, 0),
            1,
        );
        c.insert_inode(&row).unwrap()
    }

    /// Marks the inode synced at `key` and its links copied, as the uploader would.
    fn sync_all(c: &Catalog, id: i64, key: &str) {
        let row = c.inode(id).unwrap().unwrap();
        c.mark_synced(id, row.version, Some(key), Some("e"), 0)
            .unwrap();
        for l in c.dirty_links(row.share_id, 100).unwrap() {
            let link = c.link(l).unwrap().unwrap();
            let key = format!("shares/s/{}", link.path);
            c.mark_link_synced(l, (&link.path, row.version), &key, Some("e"))
                .unwrap();
        }
    }

    #[test]
    fn links_are_found_listed_counted_and_removed_name_by_name() {
        let (_d, c, root) = setup();
        let d = dir(&c, &root, "d");
        let f = file(&c, &root, "f");
        let other = file(&c, &root, "g");
        assert!(c.add_link(f.id, d.id, ("l", "d/l"), 5).unwrap().is_some());
        assert!(
            c.add_link(f.id, root.id, ("g", "g"), 5).unwrap().is_none(),
            "a name taken by an inode"
        );
        assert!(
            c.add_link(other.id, d.id, ("l", "d/l"), 5)
                .unwrap()
                .is_none(),
            "a name taken by a link"
        );
        let two = c.add_link(f.id, root.id, ("m", "m"), 6).unwrap().unwrap();
        assert_eq!((two.nlink, two.ctime_ns), (3, 6));
        let seen = c.child(d.id, "l").unwrap().unwrap();
        assert_eq!(
            (seen.id, seen.path.as_str(), seen.nlink, seen.link.is_some()),
            (f.id, "d/l", 3, true)
        );
        assert!(
            c.has_children(d.id).unwrap(),
            "a link name fills a directory"
        );

        // READDIR: inodes by id, then links; every cookie resumes after its entry.
        let all = c.dir_entries(root.id, 0, 100).unwrap();
        let names: Vec<_> = all.iter().map(|(_, r)| r.name.as_str()).collect();
        assert_eq!(names, ["d", "f", "g", "m"]);
        for (i, (cookie, _)) in all.iter().enumerate() {
            let rest = c.dir_entries(root.id, *cookie, 100).unwrap();
            assert_eq!(rest.len(), all.len() - i - 1, "after {cookie}");
        }
        let page = c.dir_entries(root.id, 0, 3).unwrap();
        assert_eq!(page.len(), 3);

        // Removing the inode's own name promotes a link; the last name removes the inode.
        sync_all(&c, f.id, "shares/s/f");
        let own = c.child(root.id, "f").unwrap().unwrap();
        assert!(!c.remove_entry(&own, 7).unwrap());
        let now = c.inode(f.id).unwrap().unwrap();
        assert_eq!(
            (now.path.as_str(), now.nlink, now.dirty()),
            ("d/l", 2, false),
            "the link's current object became the inode's"
        );
        assert_eq!(now.remote_key.as_deref(), Some("shares/s/d/l"));
        assert!(c.is_pending_delete("shares/s/f").unwrap());
        assert!(c.child(d.id, "l").unwrap().unwrap().link.is_none());
        let m = c.child(root.id, "m").unwrap().unwrap();
        assert!(!c.remove_entry(&m, 8).unwrap());
        assert!(c.is_pending_delete("shares/s/m").unwrap());
        assert_eq!(c.inode(f.id).unwrap().unwrap().nlink, 1);
        let last = c.child(d.id, "l").unwrap().unwrap();
        assert!(c.remove_entry(&last, 9).unwrap());
        assert!(c.inode(f.id).unwrap().is_none());
        assert!(!c.has_children(d.id).unwrap());
    }

    #[test]
    fn promoting_a_stale_link_keeps_the_old_object_as_copy_source() {
        let (_d, c, root) = setup();
        let f = file(&c, &root, "f");
        c.mark_synced(f.id, f.version, Some("shares/s/f"), Some("e"), 0)
            .unwrap();
        c.add_link(f.id, root.id, ("l", "l"), 2).unwrap().unwrap();
        // Not yet copied: the link has no object, so the inode is uploaded to its new key.
        c.remove_entry(&c.child(root.id, "f").unwrap().unwrap(), 3)
            .unwrap();
        let now = c.inode(f.id).unwrap().unwrap();
        assert_eq!(now.path, "l");
        assert!(now.dirty());
        assert_eq!(now.remote_key.as_deref(), Some("shares/s/f"));
        assert!(c.key_in_use(now.share_id, "shares/s/f").unwrap());
        c.mark_synced(f.id, now.version, Some("shares/s/l"), None, 0)
            .unwrap();
        assert!(c.is_pending_delete("shares/s/f").unwrap());
    }

    #[test]
    fn renames_move_link_names_and_links_below_a_moved_directory() {
        let (_d, c, root) = setup();
        let d = dir(&c, &root, "d");
        let f = file(&c, &root, "f");
        c.add_link(f.id, d.id, ("l", "d/l"), 2).unwrap();
        c.add_link(f.id, root.id, ("m", "m"), 2).unwrap();
        sync_all(&c, f.id, "shares/s/f");
        assert!(c.dirty_links(root.share_id, 10).unwrap().is_empty());
        // The directory moves: its link follows and must be copied again.
        let d_row = c.inode(d.id).unwrap().unwrap();
        c.rename_inode(&d_row, root.id, "e", "e", 3, None).unwrap();
        let l = c.child(d.id, "l").unwrap().unwrap();
        assert_eq!(l.path, "e/l");
        assert_eq!(c.dirty_links(root.share_id, 10).unwrap(), [l.link.unwrap()]);
        // A copy made for the old path (the move came while it ran) leaves the name dirty.
        let version = c.inode(f.id).unwrap().unwrap().version;
        c.mark_link_synced(l.link.unwrap(), ("d/l", version), "shares/s/d/l", None)
            .unwrap();
        assert_eq!(c.dirty_links(root.share_id, 10).unwrap(), [l.link.unwrap()]);
        assert!(c.key_in_use(root.share_id, "shares/s/d/l").unwrap());
        // A link name moves over another file, which goes.
        let g = file(&c, &root, "g");
        let m = c.child(root.id, "m").unwrap().unwrap();
        c.rename_inode(&m, root.id, "g", "g", 4, Some(&g)).unwrap();
        assert!(c.inode(g.id).unwrap().is_none());
        let now = c.child(root.id, "g").unwrap().unwrap();
        assert_eq!((now.id, now.link.is_some()), (f.id, true));
        assert!(c.child(root.id, "m").unwrap().is_none());
        // A file moved over a link name replaces that name only.
        let h = file(&c, &root, "h");
        c.rename_inode(&h, root.id, "g", "g", 5, Some(&now))
            .unwrap();
        assert_eq!(c.child(root.id, "g").unwrap().unwrap().id, h.id);
        assert_eq!(c.inode(f.id).unwrap().unwrap().nlink, 2);
        assert!(c.is_pending_delete("shares/s/m").unwrap());
    }

    #[test]
    fn a_vanished_object_hands_the_inode_to_a_current_link() {
        let (_d, c, root) = setup();
        let f = file(&c, &root, "f");
        c.add_link(f.id, root.id, ("l", "l"), 2).unwrap();
        sync_all(&c, f.id, "shares/s/f");
        c.forget_inode(f.id).unwrap();
        let now = c.inode(f.id).unwrap().unwrap();
        assert_eq!((now.path.as_str(), now.nlink), ("l", 1));
        assert!(!c.is_pending_delete("shares/s/f").unwrap());
        c.forget_inode(f.id).unwrap();
        assert!(c.inode(f.id).unwrap().is_none());
    }
}
