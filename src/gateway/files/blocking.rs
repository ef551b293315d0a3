//! Off the async workers: every catalog call and every staging-file operation of the file
//! gateway runs on tokio's blocking pool through [`Files::blocking`], never inline in an
//! `async fn` on a tokio worker and never while the worker holds an async lock idle. A worker
//! blocked on SQLite's fsync or a staging file's would stall every other NFS and FUSE request
//! scheduled on it (docs/design.md §8). A few reads are the exception, because they cannot
//! wait: the inode-and-share read ([`Files::node`]), a directory's entry for LOOKUP, CREATE and
//! REMOVE, and a READ of a clean copy or a staged file in the page cache run inline only if
//! the catalog connection is free at that instant (`try_lock`) and, for the bytes, they need no
//! disk (`RWF_NOWAIT`); otherwise they take the hop.
//!
//! One hop per step: what an operation does with the catalog and its staging files between two
//! awaits on the bucket (or on an inode lock) goes into one closure, so a small-file CREATE or
//! WRITE crosses to the pool once. A hop costs a thread wake-up each way, tens of
//! microseconds on this class of machine, well under one fsync.

use crate::catalog::Catalog;
use crate::catalog::shares::{InodeRow, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::{FileId, Files, stale};

impl Files {
    /// Runs `work` with the catalog on tokio's blocking pool and returns its result. The
    /// closure owns what it needs ('static); dropping the returned future does not stop it, so
    /// a change it makes is never half done.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> Result<T, GatewayError>
    where
        F: FnOnce(&Catalog) -> Result<T, GatewayError> + Send + 'static,
        T: Send + 'static,
    {
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || work(&catalog))
            .await
            .map_err(|e| GatewayError::Internal(format!("catalog or staging work: {e}").into()))?
    }

    /// The inode behind a file id and its share; a vanished id is `Stale`.
    ///
    /// Read inline when the catalog connection is free this instant: a keyed read of two hot
    /// rows takes a few microseconds, the hop two thread wake-ups, and nearly every NFS and
    /// FUSE call starts here. When another call holds the connection (it may be waiting on an
    /// fsync) the read takes the hop rather than wait on a worker.
    pub(crate) async fn node(&self, id: FileId) -> Result<(InodeRow, ShareRow), GatewayError> {
        match self.catalog.try_inode_with_share(id.row_id()?)? {
            Some(found) => found.ok_or_else(|| stale(id.0)),
            None => self.blocking(move |c| node(c, id)).await,
        }
    }
}

/// [`Files::node`] inside a blocking closure.
pub(crate) fn node(catalog: &Catalog, id: FileId) -> Result<(InodeRow, ShareRow), GatewayError> {
    catalog
        .inode_with_share(id.row_id()?)?
        .ok_or_else(|| stale(id.0))
}

/// The inode `id` as stored now; a vanished one is `Stale`.
pub(crate) fn current(catalog: &Catalog, id: i64) -> Result<InodeRow, GatewayError> {
    catalog.inode(id)?.ok_or_else(|| stale(id))
}
