//! Per-share traffic counters for `/metrics`: calls, reads and writes with their bytes,
//! COMMITs, and what the uploader sent. In memory only (Prometheus counters restart at zero
//! with the process); the upload state a user needs to trust ("is it in the bucket?") is in
//! the catalog instead (`share_status`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::gateway::files::Files;

/// Counters of one share since the daemon started.
#[derive(Debug, Default)]
pub struct ShareTraffic {
    /// Every call that reached the share (after its allow-list check), of any kind.
    pub calls: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub commits: AtomicU64,
    /// Objects the uploader wrote (files, symlinks, directory markers, copies).
    pub uploads: AtomicU64,
    /// File bytes those uploads carried.
    pub upload_bytes: AtomicU64,
}

/// What a call did, for [`Files::count`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted {
    Call,
    Read(u64),
    Write(u64),
    Commit,
    Upload(u64),
}

impl Files {
    fn traffic_of(&self, share: i64) -> Arc<ShareTraffic> {
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(share)
            .or_default()
            .clone()
    }

    pub(crate) fn count(&self, share: i64, what: Counted) {
        let t = self.traffic_of(share);
        let (n, bytes) = match what {
            Counted::Call => (&t.calls, None),
            Counted::Read(b) => (&t.reads, Some((&t.read_bytes, b))),
            Counted::Write(b) => (&t.writes, Some((&t.write_bytes, b))),
            Counted::Commit => (&t.commits, None),
            Counted::Upload(b) => (&t.uploads, Some((&t.upload_bytes, b))),
        };
        n.fetch_add(1, Relaxed);
        if let Some((counter, b)) = bytes {
            counter.fetch_add(b, Relaxed);
        }
    }

    /// The counters of every share that saw traffic, by share id.
    pub fn share_traffic(&self) -> HashMap<i64, Arc<ShareTraffic>> {
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
