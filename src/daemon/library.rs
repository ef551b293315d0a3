//! Serving the tape library: one iSCSI target for the whole VTL, the changer at LUN 0 and
//! drive `i` at LUN `i + 1`, named `<prefix>:<gateway>:vtl` (a volume's target is
//! `<prefix>:<gateway>.<volume>`, so the two can never clash).

use std::sync::Arc;

use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::frontend::iscsi::{Registry, TargetEntry};
use crate::gateway::GatewayError;
use crate::gateway::library::{Layout, Library};
use crate::scsi::LunMap;
use crate::scsi::smc::Changer;
use crate::scsi::ssc::Drive;

pub fn target_name(config: &Config) -> String {
    let volume_style = super::volumes::target_name(config, "");
    format!("{}:vtl", volume_style.trim_end_matches('.'))
}

pub fn layout(config: &Config) -> Layout {
    Layout {
        drives: config.library.drives,
        slots: config.library.slots,
        mail_slots: config.library.mail_slots,
    }
}

/// Opens the library and registers its target.
pub fn serve(
    config: &Config,
    catalog: Arc<Catalog>,
    cache: Arc<Cache>,
    registry: &Registry,
    gateway_id: &str,
) -> Result<Arc<Library>, GatewayError> {
    let library = Arc::new(Library::open(layout(config), catalog, cache, gateway_id)?);
    let mut luns = LunMap::new();
    let drive_luns: Vec<u64> = (1..=u64::from(config.library.drives)).collect();
    luns.insert(
        0,
        Arc::new(Changer::new(library.clone(), drive_luns.clone())),
    );
    for (bay, lun) in library.bays().iter().zip(drive_luns) {
        luns.insert(lun, Arc::new(Drive::new(bay.clone())));
    }
    let iqn = target_name(config);
    registry.add(TargetEntry {
        iqn: iqn.clone(),
        luns: Arc::new(luns),
        chap: super::volumes::chap(config),
    });
    tracing::info!(target_name = %iqn, drives = config.library.drives, "serving the tape library");
    Ok(library)
}
