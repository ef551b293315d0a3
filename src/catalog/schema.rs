//! Schema versions: numbered migrations applied in order, the version kept in
//! `PRAGMA user_version` (CONTRIBUTING.md: persisted formats carry a version).
//!
//! Invariant: a migration runs inside the same transaction that bumps `user_version`, so a crash
//! leaves the catalog at the old version or the new one, never between. A catalog newer than this
//! build is refused rather than misread.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::catalog::CatalogError;

/// Migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_volumes.sql"),
    include_str!("migrations/0003_snapshots.sql"),
    include_str!("migrations/0004_shares.sql"),
    include_str!("migrations/0005_tapes.sql"),
    include_str!("migrations/0006_jobs.sql"),
    include_str!("migrations/0009_import_uploads.sql"),
    include_str!("migrations/0010_share_uploads.sql"),
    include_str!("migrations/0011_special_files.sql"),
    include_str!("migrations/0012_inode_atime.sql"),
    include_str!("migrations/0013_links.sql"),
    include_str!("migrations/0014_small_journal.sql"),
    include_str!("migrations/0015_create_verifiers.sql"),
];

pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

pub fn version(conn: &Connection) -> Result<u32, CatalogError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// SQLite's failure without the statement text rusqlite appends to it: the text of a whole
/// migration file would turn a one-line error into a page.
fn without_sql(e: rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            rusqlite::Error::SqliteFailure(error, Some(msg))
        }
        other => other,
    }
}

/// Refuses a catalog written by a newer tidegate.
pub fn check_not_newer(found: u32) -> Result<(), CatalogError> {
    if found > CURRENT_VERSION {
        return Err(CatalogError::TooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    Ok(())
}

/// Brings the schema to `CURRENT_VERSION`. Several processes may open a fresh catalog at once
/// (a daemon starting while a script runs a command), so each step reads the version and
/// applies the next migration inside one exclusive transaction: a second process waits for the
/// first to commit and then sees the new version instead of creating the same tables again.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<u32, CatalogError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        let found = version(&tx)?;
        check_not_newer(found)?;
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(found);
        };
        let migrate_err = |source| CatalogError::Migrate {
            path: path.to_path_buf(),
            version: found + 1,
            source: without_sql(source),
        };
        tx.execute_batch(sql).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(migrate_err)?;
        tx.commit().map_err(migrate_err)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_migration_keeps_rows_and_never_reuses_ids() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for sql in &MIGRATIONS[..8] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        conn.execute_batch(
            "INSERT INTO shares (name, bucket_prefix, read_only, squash, allowed_clients,
                 default_uid, default_gid, default_file_mode, default_dir_mode, refresh_secs,
                 created_unix) VALUES ('s', 'shares/s/', 0, 'root', '', 0, 0, 420, 493, 300, 0);
             INSERT INTO inodes (share_id, parent, name, path, kind, mode, uid, gid, size,
                 mtime_ns, ctime_ns, extra_meta) VALUES
                 (1, NULL, '', '', 'dir', 493, 0, 0, 0, 1, 1, ''),
                 (1, 1, 'f', 'f', 'file', 420, 7, 8, 5, 2, 3, 'color=blue'),
                 (1, 1, 'gone', 'gone', 'file', 420, 0, 0, 0, 1, 1, '');
             DELETE FROM inodes WHERE name = 'gone';",
        )
        .unwrap();
        assert_eq!(
            migrate(&mut conn, std::path::Path::new("catalog.db")).unwrap(),
            CURRENT_VERSION
        );
        let (kind, size, extra, rdev): (String, i64, String, i64) = conn
            .query_row(
                "SELECT kind, size, extra_meta, rdev_major FROM inodes WHERE id = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (kind.as_str(), size, extra.as_str(), rdev),
            ("file", 5, "color=blue", 0)
        );
        conn.execute(
            "INSERT INTO inodes (share_id, parent, name, path, kind, mode, uid, gid, size,
                 mtime_ns, ctime_ns, rdev_major, rdev_minor)
             VALUES (1, 1, 'p', 'p', 'fifo', 420, 0, 0, 0, 1, 1, 0, 0)",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 4, "id 3 (deleted) is not reused");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inodes'
                     AND name LIKE 'inodes_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 3);
        let bad = conn.execute(
            "INSERT INTO inodes (share_id, parent, name, path, kind, mode, uid, gid, size,
                 mtime_ns, ctime_ns) VALUES (1, 1, 'x', 'x', 'door', 420, 0, 0, 0, 1, 1)",
            [],
        );
        assert!(bad.is_err(), "unknown kinds are still refused");
    }
}
