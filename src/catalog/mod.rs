//! The catalog: the appliance's memory in SQLite (docs/design.md §8). The only module that holds
//! SQL.
//!
//! WAL mode, one connection behind a mutex (one writer), `synchronous=FULL` so a committed
//! transaction survives power loss. The API is synchronous and a write may wait for an fsync:
//! async callers on a request path run it on tokio's blocking pool (the file gateway does, in
//! `gateway/files/blocking.rs`), never inline on a worker. It is not the truth about the bucket: everything in it can be
//! rebuilt from the bucket's manifests and catalog backups. Table groups get a file each:
//! `settings.rs` (gateway identity, integrity events), `volumes.rs`, `snapshots.rs`, `stored.rs`,
//! `shares.rs`, `inodes.rs` and `links.rs` (the file gateway), `tapes.rs`, `jobs.rs` and `gc.rs`.

pub mod gc;
pub mod group;
pub mod inodes;
pub mod jobs;
pub mod journal;
pub mod links;
mod schema;
pub mod settings;
pub mod shares;
pub mod snapshots;
pub mod stored;
pub mod tapes;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

/// How long a statement waits for another process's transaction (a migration, a daemon's write)
/// before failing with "database is locked".
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

pub use schema::CURRENT_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migrating catalog {path} to schema version {version}")]
    Migrate {
        path: PathBuf,
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "catalog schema version {found} is newer than this tidegate understands (up to \
         {supported}); run the newer tidegate that wrote it"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("syncing catalog {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite's own messages name what failed ("no such table: volumes", "database is
    /// locked"); callers add the context they have.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Switches to WAL and returns the journal mode in force. SQLite answers "database is locked"
/// at once, without its busy handler, while another process holds the fresh file (switching
/// modes needs it alone), so the switch is retried for as long as a statement would wait.
fn set_wal(conn: &Connection) -> Result<String, rusqlite::Error> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

#[derive(Debug)]
pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Group commit of the WAL for writes made with [`Catalog::grouped`].
    wal_sync: group::GroupSync,
}

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let open_err = |source| CatalogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Room for every statement a file operation and the uploader run: past rusqlite's 16,
        // statements evicted each other and SQLite parsed them again at every call.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode = set_wal(&conn).map_err(open_err)?;
        // An in-memory catalog (the device's NFS share) has no WAL, and needs none.
        if !mode.eq_ignore_ascii_case("wal") && path != Path::new(":memory:") {
            tracing::warn!(%mode, "catalog could not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            wal_sync: group::GroupSync::default(),
        })
    }

    /// Opens the catalog at `path` only if it exists, changing nothing: no file is created, no
    /// journal mode set, no migration run (for `status`, which may look while a daemon is
    /// creating or migrating it). An older schema is opened as it is; reads of tables it does
    /// not have yet fail, and the caller shows what it can. `Ok(None)`: there is no catalog.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, CatalogError> {
        let open_err = |source| CatalogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(path, flags) {
            Ok(conn) => conn,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(open_err(e)),
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        schema::check_not_newer(schema::version(&conn)?)?;
        Ok(Some(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            wal_sync: group::GroupSync::default(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32, CatalogError> {
        schema::version(&self.conn())
    }

    /// A value that changes whenever this process or another one commits to the catalog, so a
    /// backup is taken only when there is something new to keep.
    pub fn change_marker(&self) -> Result<(i64, u64), CatalogError> {
        let conn = self.conn();
        let other: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok((other, conn.total_changes()))
    }

    /// Writes a consistent, compacted copy of the catalog to `path` (which must not exist).
    ///
    /// The copy is read through a connection of its own: in WAL mode its read transaction sees
    /// one snapshot while writers carry on, so the copy (seconds at a million files) does not
    /// hold the connection every file operation needs (issue 21). An in-memory catalog has no
    /// file another connection could open, and is copied through its own.
    pub fn backup_to(&self, path: &Path) -> Result<(), CatalogError> {
        let target = path.to_string_lossy().into_owned();
        if self.path == Path::new(":memory:") {
            self.conn().execute("VACUUM INTO ?1", [target])?;
            return Ok(());
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(&self.path, flags)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        reader.execute("VACUUM INTO ?1", [target])?;
        Ok(())
    }

    /// Runs `change` with `synchronous=NORMAL` for its transactions only: they survive a crash
    /// of the process (the WAL is in the page cache) and become durable with the next sync of
    /// the WAL, whoever makes it.
    fn relaxed<T>(
        &self,
        change: impl FnOnce(&mut Connection) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let mut conn = self.conn();
        // Cached statements: parsing the pragmas was a tenth of a small file's catalog time.
        conn.prepare_cached("PRAGMA synchronous = NORMAL")?
            .execute([])?;
        let result = change(&mut conn);
        conn.prepare_cached("PRAGMA synchronous = FULL")?
            .execute([])?;
        result
    }

    /// Runs `change` as [`Self::relaxed`], then returns once it is durable, as a
    /// `synchronous=FULL` commit would; but the WAL is synced outside the connection's lock
    /// and one sync covers every change made by then (group commit, `group.rs`), so concurrent
    /// file operations neither queue behind each other's fsync nor pay one each.
    fn grouped<T>(
        &self,
        change: impl FnOnce(&mut Connection) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let out = self.relaxed(change)?;
        self.durable()?;
        Ok(out)
    }

    /// Returns once every transaction committed before the call is on disk.
    pub fn durable(&self) -> Result<(), CatalogError> {
        self.wal_sync.sync(|| self.sync_wal())
    }

    /// WAL syncs run by [`Self::durable`] so far (fewer than its calls when they overlapped).
    pub fn wal_syncs(&self) -> u64 {
        self.wal_sync.syncs()
    }

    /// Syncs the WAL, which holds every transaction since the last checkpoint (a checkpoint
    /// syncs what it copies into the database file before the WAL is reused). Any handle of
    /// the file syncs it: fsync acts on the inode. Without a WAL (an in-memory catalog, or
    /// one that could not switch to WAL) the database file is synced instead.
    fn sync_wal(&self) -> Result<(), CatalogError> {
        if self.path == Path::new(":memory:") {
            return Ok(());
        }
        let sync_err = |source| CatalogError::Sync {
            path: self.path.clone(),
            source,
        };
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let file = match std::fs::File::open(&wal) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open(&self.path).map_err(sync_err)?
            }
            Err(e) => return Err(sync_err(e)),
        };
        file.sync_data().map_err(sync_err)
    }

    /// The connection if no other call holds it now.
    fn try_conn(&self) -> Option<MutexGuard<'_, Connection>> {
        match self.conn.try_lock() {
            Ok(conn) => Some(conn),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied change: every write is a
        // single statement or a transaction that SQLite rolls back.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Test support: holds the write lock of the catalog at `path` from a connection of its own,
/// as another process's transaction or a slow fsync would, until dropped.
#[cfg(test)]
pub(crate) struct WriteLockHolder(Connection);

#[cfg(test)]
impl WriteLockHolder {
    pub(crate) fn take(path: &Path) -> Self {
        let conn = Connection::open(path).expect("open the catalog");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        Self(conn)
    }
}

#[cfg(test)]
impl Drop for WriteLockHolder {
    fn drop(&mut self) {
        // Nothing was written: ending the transaction only releases the lock.
        let _ = self.0.execute_batch("COMMIT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21: a backup (seconds at a million files) does not hold the connection every file
    /// operation waits for; it copies what was committed.
    #[test]
    fn issue_21_a_backup_leaves_the_connection_free() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(Catalog::open(&dir.path().join("c.db")).unwrap());
        c.set_settings(&[("k", "v")]).unwrap();
        let copy = dir.path().join("copy.db");
        let held = c.conn();
        let (done, finished) = std::sync::mpsc::channel();
        let (c2, copy2) = (c.clone(), copy.clone());
        let backup = std::thread::spawn(move || {
            let r = c2.backup_to(&copy2);
            let _ = done.send(());
            r
        });
        let waited = finished.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        backup.join().unwrap().unwrap();
        assert!(
            waited.is_ok(),
            "the backup waited for the catalog's connection"
        );
        let copied = Catalog::open(&copy).unwrap();
        assert_eq!(copied.setting("k").unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), CURRENT_VERSION);
        drop(c);
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), CURRENT_VERSION);
        let mode: String = c
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn open_existing_creates_and_migrates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        assert!(Catalog::open_existing(&path).unwrap().is_none());
        assert!(!path.exists(), "looking created a catalog");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 2)
            .unwrap();
        let c = Catalog::open_existing(&path).unwrap().unwrap();
        assert_eq!(c.schema_version().unwrap(), 2, "open_existing migrated");
    }

    #[test]
    fn issue_18_concurrent_first_opens_migrate_once() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.db");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Catalog::open(&path).map(|c| c.schema_version().unwrap())
                        })
                    })
                    .collect();
                for open in opens {
                    match open.join().unwrap() {
                        Ok(version) => assert_eq!(version, CURRENT_VERSION, "round {round}"),
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }
            });
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", CURRENT_VERSION + 1)
                .unwrap();
        }
        let err = Catalog::open(&path).unwrap_err();
        assert!(matches!(err, CatalogError::TooNew { .. }), "{err}");
    }
}
