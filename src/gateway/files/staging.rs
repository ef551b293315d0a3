//! The staging budget: the bytes staging files take on local disk are held to the configured
//! cache size (`cache.size`), as the cache holds volume data to it.
//!
//! Every staging file's allocated size is tracked (`st_blocks`, so a sparsely staged large file
//! counts only the parts it holds). A write that would grow staging past the budget waits,
//! before taking its inode's lock, until uploads free room: staged data leaves the disk as soon
//! as its upload is recorded (clean data is never kept), and while a writer waits the uploader
//! takes every committed file at once instead of after the upload delay. Writers are held,
//! never failed and never dropped. Invariant: a writer whose own file is all that is staged
//! goes ahead (nothing else could make room, and the file must be whole on disk before it can
//! go up), so one file larger than the budget is written, not deadlocked.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::gateway::GatewayError;
use crate::gateway::files::{Files, local};

/// How often a waiting writer looks again even if no upload signalled (a file removed by
/// other means, an upload that failed and freed nothing).
const RECHECK: Duration = Duration::from_millis(500);

/// Staging use as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagingUse {
    pub bytes: u64,
    pub limit_bytes: Option<u64>,
    pub writers_waiting: u64,
    /// Bytes clean copies take in what staging leaves of the limit (clean.rs).
    pub clean_bytes: u64,
}

/// Bytes a file takes on disk (holes do not count); 0 if it is gone.
pub(crate) fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

impl Files {
    /// Records what inode `id`'s staging files take now (`now`, measured by the blocking step
    /// that changed them with `local::staged_bytes`; 0: none), waking waiting writers when
    /// room was freed.
    pub(crate) fn account(&self, id: i64, now: u64) {
        let freed = {
            let mut live = self.live();
            let before = if now == 0 {
                live.staged_sizes.remove(&id).unwrap_or(0)
            } else {
                live.staged_sizes.insert(id, now).unwrap_or(0)
            };
            live.staged_bytes = live.staged_bytes.saturating_sub(before).saturating_add(now);
            now < before
        };
        if freed {
            self.space.notify_waiters();
        } else {
            // Staging grew: clean copies make room for it (clean.rs).
            self.trim_clean();
        }
    }

    /// Waits until `need` more bytes of staging for inode `id` fit the budget, or until this
    /// inode's staging is all there is. The caller must not hold any inode lock.
    pub(crate) async fn staging_room(&self, id: i64, need: u64) {
        let Some(limit) = self.config.staging_limit else {
            return;
        };
        let mut waiting = false;
        loop {
            let freed = self.space.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let fits = {
                let mut live = self.live();
                let mine = live.staged_sizes.get(&id).copied().unwrap_or(0);
                let fits =
                    live.staged_bytes.saturating_add(need) <= limit || live.staged_bytes <= mine;
                if fits && waiting {
                    live.writers_waiting = live.writers_waiting.saturating_sub(1);
                } else if !fits && !waiting {
                    live.writers_waiting += 1;
                }
                fits
            };
            if fits {
                return;
            }
            if !waiting {
                waiting = true;
                tracing::debug!(
                    inode = id,
                    need,
                    limit,
                    "staging full; writer waits for uploads"
                );
            }
            // The uploader takes committed files at once while someone waits.
            self.wake.notify_one();
            let _ = tokio::time::timeout(RECHECK, freed).await;
        }
    }

    /// Syncs the staging directory, so the names of staging files created before the call
    /// survive a power loss. Concurrent callers share one fsync (group commit): a burst of
    /// small files committed at once costs one directory sync, not one each.
    pub(crate) async fn sync_staging_dir(&self) -> Result<(), GatewayError> {
        let (group, dir) = (self.dir_sync.clone(), self.config.staging_dir.clone());
        self.blocking(move |_| group.sync(|| local::sync_dir(&dir)))
            .await
    }

    pub fn staging_use(&self) -> StagingUse {
        let live = self.live();
        StagingUse {
            bytes: live.staged_bytes,
            limit_bytes: self.config.staging_limit,
            writers_waiting: live.writers_waiting,
            clean_bytes: self.clean.as_ref().map_or(0, |c| c.bytes()),
        }
    }

    /// Whether a writer waits for staging room (the uploader then ignores the upload delay).
    pub(crate) fn staging_pressure(&self) -> bool {
        self.live().writers_waiting > 0
    }
}
