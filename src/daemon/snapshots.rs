//! The daemon's snapshot worker: takes requested snapshots of served volumes one at a time,
//! runs schedules, and prunes scheduled snapshots beyond their `keep`.
//!
//! Requests arrive as catalog rows (the CLI inserts them), so the worker polls; 200 ms keeps a
//! `snapshot create` prompt without measurable cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::catalog::snapshots::SnapshotState;
use crate::daemon::unix_now;
use crate::daemon::volumes::VolumeService;
use crate::gateway::GatewayError;
use crate::gateway::volumes::snapshot::{self, Context, Cut};
use crate::store::ChunkStore;

const POLL: Duration = Duration::from_millis(200);

pub struct SnapshotService {
    pub catalog: Arc<Catalog>,
    pub chunks: Arc<ChunkStore>,
    pub volumes: Arc<VolumeService>,
    pub gateway_id: String,
    pub staging_dir: PathBuf,
}

impl SnapshotService {
    fn context(&self) -> Context<'_> {
        Context {
            catalog: &self.catalog,
            chunks: &self.chunks,
            gateway_id: &self.gateway_id,
            staging_dir: &self.staging_dir,
        }
    }

    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if let Err(e) = snapshot::settle_interrupted(&self.catalog, &self.chunks).await {
            tracing::warn!(error = %e, "settling snapshots interrupted by the last stop");
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
            tokio::select! {
                r = self.tick() => if let Err(e) = r {
                    tracing::warn!(error = %e, "snapshot worker");
                },
                // A snapshot cut short is settled at the next start by its manifest.
                _ = stop.changed() => return,
            }
        }
    }

    async fn tick(&self) -> Result<(), GatewayError> {
        self.run_schedules()?;
        for row in self.catalog.snapshots_in_state(SnapshotState::Requested)? {
            self.volumes.sync()?;
            let Some(volume) = self.volumes.volume(row.volume_id) else {
                self.catalog.move_snapshot(
                    &row.id,
                    SnapshotState::Requested,
                    SnapshotState::Failed,
                    Some("the volume no longer exists"),
                )?;
                continue;
            };
            // A failure is recorded on the row; the next request is still taken.
            let _ = snapshot::take(self.context(), &row, Cut::Live(volume.as_ref())).await;
            if row.scheduled {
                self.prune(row.volume_id).await?;
            }
        }
        Ok(())
    }

    fn run_schedules(&self) -> Result<(), GatewayError> {
        let now = unix_now();
        for s in self.catalog.schedules()? {
            let due = s.last_unix.is_none_or(|last| {
                now.saturating_sub(last) >= i64::try_from(s.every_secs).unwrap_or(i64::MAX)
            });
            if !due {
                continue;
            }
            let Some(volume) = self.catalog.volume_by_id(s.volume_id)? else {
                continue;
            };
            self.catalog.schedule_ran(s.volume_id, now)?;
            let row = snapshot::request(&self.catalog, &volume.name, "scheduled", true)?;
            tracing::info!(volume = %volume.name, snapshot = %row.id, "scheduled snapshot");
        }
        Ok(())
    }

    /// Keeps the newest `keep` complete scheduled snapshots of a volume; manual ones are
    /// never pruned.
    async fn prune(&self, volume_id: i64) -> Result<(), GatewayError> {
        let Some(schedule) = self
            .catalog
            .schedules()?
            .into_iter()
            .find(|s| s.volume_id == volume_id)
        else {
            return Ok(());
        };
        let mut scheduled: Vec<_> = self
            .catalog
            .snapshots(None)?
            .into_iter()
            .filter(|r| {
                r.volume_id == volume_id && r.scheduled && r.state == SnapshotState::Complete
            })
            .collect();
        let keep = usize::try_from(schedule.keep).unwrap_or(usize::MAX);
        if scheduled.len() <= keep {
            return Ok(());
        }
        scheduled.sort_by_key(|r| (r.requested_unix, r.completed_unix));
        let excess = scheduled.len() - keep;
        for old in scheduled.into_iter().take(excess) {
            snapshot::delete(&self.catalog, &self.chunks, &old.id).await?;
            tracing::info!(snapshot = %old.id, "pruned scheduled snapshot");
        }
        Ok(())
    }
}
