//! Serving volumes: each volume is one iSCSI target with the disk at LUN 0 (as the commercial
//! gateway does: one target per volume), named from the gateway and the volume.

use crate::config::Config;

/// IQN prefix: the naming authority is the project's domain with the month it was registered
/// for this use (RFC 3720 §3.2.6.3.1).
pub const IQN_PREFIX: &str = "iqn.2026-11.org.tidegate";

/// `iqn.2026-11.org.tidegate:<gateway>.<volume>`; gateway names may hold upper case and '_',
/// which IQNs do not, so they are folded.
pub fn target_name(config: &Config, volume: &str) -> String {
    let gateway: String = config
        .name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            '_' => '-',
            c => c,
        })
        .collect();
    format!("{IQN_PREFIX}:{gateway}.{volume}")
}

/// The CHAP an initiator must pass for the gateway's targets, from the config.
pub fn chap(config: &Config) -> Option<ChapConfig> {
    config.iscsi.chap.as_ref().map(|c| ChapConfig {
        user: c.user.clone(),
        secret: c.secret.clone(),
        mutual: c.mutual.clone(),
    })
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeMode;
use crate::frontend::iscsi::{ChapConfig, Registry, TargetEntry};
use crate::gateway::block::{BlockDevice, Counted, IoCounters};
use crate::gateway::volumes::snapshot::Capture;
use crate::gateway::volumes::stored::{StoredProgress, StoredVolume};
use crate::gateway::volumes::volume::Volume;
use crate::scsi::LunMap;
use crate::scsi::sbc::Disk;
use crate::store::ChunkStore;

/// Keeps the iSCSI registry in step with the catalog's volumes: volumes created or deleted by
/// the CLI while the daemon runs appear or vanish within one sync interval.
pub struct VolumeService {
    config: Config,
    catalog: Arc<Catalog>,
    cache: Arc<Cache>,
    registry: Arc<Registry>,
    chunks: Arc<ChunkStore>,
    served: Mutex<BTreeMap<i64, Served>>,
}

struct Served {
    iqn: String,
    name: String,
    io: Arc<IoCounters>,
    capture: Arc<dyn Capture>,
    /// A stored volume and the switch that stops its background uploads.
    stored: Option<(Arc<StoredVolume>, tokio::sync::watch::Sender<bool>)>,
}

impl VolumeService {
    pub fn new(
        config: Config,
        catalog: Arc<Catalog>,
        cache: Arc<Cache>,
        registry: Arc<Registry>,
        chunks: Arc<ChunkStore>,
    ) -> Self {
        Self {
            config,
            catalog,
            cache,
            registry,
            chunks,
            served: Mutex::new(BTreeMap::new()),
        }
    }

    fn chap(&self) -> Option<ChapConfig> {
        chap(&self.config)
    }

    /// Adds targets for new volumes and removes those of deleted ones.
    pub fn sync(&self) -> Result<(), crate::catalog::CatalogError> {
        let volumes = self.catalog.volumes()?;
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<i64> = volumes.iter().map(|v| v.id).collect();
        served.retain(|id, s| {
            let keep = live.contains(id);
            if !keep {
                self.registry.remove(&s.iqn);
                if let Some((_, stop)) = &s.stored {
                    let _ = stop.send(true);
                }
                tracing::info!(target_name = %s.iqn, "volume deleted: target removed");
            }
            keep
        });
        for row in volumes {
            if served.contains_key(&row.id) {
                continue;
            }
            let iqn = target_name(&self.config, &row.name);
            let (device, capture, stored): (Arc<dyn BlockDevice>, Arc<dyn Capture>, _) = match row
                .mode
            {
                VolumeMode::Cached => {
                    let v = Arc::new(Volume::new(
                        row.clone(),
                        self.cache.clone(),
                        self.catalog.clone(),
                    ));
                    (v.clone(), v, None)
                }
                VolumeMode::Stored => {
                    let v = match StoredVolume::open(
                        row.clone(),
                        self.catalog.clone(),
                        self.chunks.clone(),
                    ) {
                        Ok(v) => Arc::new(v),
                        Err(e) => {
                            tracing::error!(volume = %row.name, error = %e, "cannot open stored volume");
                            continue;
                        }
                    };
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    tokio::spawn(v.clone().run(stopped));
                    (v.clone(), v.clone(), Some((v, stop)))
                }
            };
            let counted = Counted::new(device);
            let io = counted.counters.clone();
            let mut luns = LunMap::new();
            luns.insert(0, Arc::new(Disk::new(Arc::new(counted))));
            self.registry.add(TargetEntry {
                iqn: iqn.clone(),
                luns: Arc::new(luns),
                chap: self.chap(),
            });
            tracing::info!(volume = %row.name, target_name = %iqn, mode = row.mode.as_str(), "serving volume");
            served.insert(
                row.id,
                Served {
                    iqn,
                    name: row.name.clone(),
                    io,
                    capture,
                    stored,
                },
            );
        }
        Ok(())
    }

    /// The served volume with this id, for a snapshot's cut.
    pub fn volume(&self, id: i64) -> Option<Arc<dyn Capture>> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.get(&id).map(|s| s.capture.clone())
    }

    /// I/O counters of each served volume, by name.
    pub fn io(&self) -> Vec<(String, Arc<IoCounters>)> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served
            .values()
            .map(|s| (s.name.clone(), s.io.clone()))
            .collect()
    }

    /// Background progress of each stored volume, by name.
    pub fn stored_progress(&self) -> Vec<(String, StoredProgress)> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served
            .values()
            .filter_map(|s| {
                s.stored
                    .as_ref()
                    .map(|(v, _)| (s.name.clone(), v.progress()))
            })
            .collect()
    }

    /// Stops the stored volumes' background work and makes their local data durable.
    pub async fn shutdown(&self) {
        let stored: Vec<Arc<StoredVolume>> = {
            let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
            served
                .values()
                .filter_map(|s| {
                    s.stored.as_ref().map(|(v, stop)| {
                        let _ = stop.send(true);
                        v.clone()
                    })
                })
                .collect()
        };
        for v in stored {
            if let Err(e) = v.flush().await {
                tracing::error!(volume = %v.row().name, error = %e, "syncing a stored volume");
            }
        }
    }
}
