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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::frontend::iscsi::{ChapConfig, Registry, TargetEntry};
use crate::gateway::volumes::volume::Volume;
use crate::scsi::LunMap;
use crate::scsi::sbc::Disk;

/// Keeps the iSCSI registry in step with the catalog's volumes: volumes created or deleted by
/// the CLI while the daemon runs appear or vanish within one sync interval.
pub struct VolumeService {
    config: Config,
    catalog: Arc<Catalog>,
    cache: Arc<Cache>,
    registry: Arc<Registry>,
    served: Mutex<BTreeMap<i64, (String, Arc<Volume>)>>,
}

impl VolumeService {
    pub fn new(
        config: Config,
        catalog: Arc<Catalog>,
        cache: Arc<Cache>,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            config,
            catalog,
            cache,
            registry,
            served: Mutex::new(BTreeMap::new()),
        }
    }

    fn chap(&self) -> Option<ChapConfig> {
        self.config.iscsi.chap.as_ref().map(|c| ChapConfig {
            user: c.user.clone(),
            secret: c.secret.clone(),
            mutual: c.mutual.clone(),
        })
    }

    /// Adds targets for new volumes and removes those of deleted ones.
    pub fn sync(&self) -> Result<(), crate::catalog::CatalogError> {
        let volumes = self.catalog.volumes()?;
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<i64> = volumes.iter().map(|v| v.id).collect();
        served.retain(|id, (iqn, _)| {
            let keep = live.contains(id);
            if !keep {
                self.registry.remove(iqn);
                tracing::info!(target_name = %iqn, "volume deleted: target removed");
            }
            keep
        });
        for row in volumes {
            if served.contains_key(&row.id) {
                continue;
            }
            let iqn = target_name(&self.config, &row.name);
            let volume = Arc::new(Volume::new(
                row.clone(),
                self.cache.clone(),
                self.catalog.clone(),
            ));
            let mut luns = LunMap::new();
            luns.insert(0, Arc::new(Disk::new(volume.clone())));
            self.registry.add(TargetEntry {
                iqn: iqn.clone(),
                luns: Arc::new(luns),
                chap: self.chap(),
            });
            tracing::info!(volume = %row.name, target_name = %iqn, "serving volume");
            served.insert(row.id, (iqn, volume));
        }
        Ok(())
    }

    /// The served volume with this id, if any.
    pub fn volume(&self, id: i64) -> Option<Arc<Volume>> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.get(&id).map(|(_, v)| v.clone())
    }
}
