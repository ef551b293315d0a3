//! What `tidegate status` reports, gathered without changing anything: no directory, catalog,
//! key or bucket object is created by looking.

use std::path::PathBuf;

use tidegate_cache::Area;

use crate::catalog::Catalog;
use crate::catalog::settings::{IntegritySummary, keys as setting};
use crate::config::{Config, DiskConfig};
use crate::daemon::Ready;
use crate::error_chain::one_line;
use crate::frontend::api::types;
use crate::store::keycheck::{self, Pairing};
use crate::store::{Bucket, Codec, MasterKey};

#[derive(Debug)]
pub struct Status {
    pub config: Config,
    pub gateway_id: Option<String>,
    pub activated_unix: Option<i64>,
    pub daemon: Option<Ready>,
    pub endpoint: String,
    /// `Ok` when the bucket answered and the key opened its key check.
    pub bucket_state: Result<Pairing, String>,
    pub key: Result<String, String>,
    pub catalog_schema: Option<u32>,
    pub cache: AreaStatus,
    pub upload_buffer: AreaStatus,
    /// The last verification failure, which the snapshot only counts.
    pub integrity: IntegritySummary,
    /// The running daemon's snapshot (`run/status.toml`), or one gathered here from the
    /// catalog and the disks when no daemon runs.
    pub snapshot: types::Status,
}

#[derive(Debug)]
pub struct AreaStatus {
    pub path: PathBuf,
    pub capacity: u64,
    pub used: Option<u64>,
}

impl Status {
    /// True when nothing needs the operator's attention.
    pub fn healthy(&self) -> bool {
        self.bucket_state.is_ok() && self.key.is_ok() && self.snapshot.problems.is_empty()
    }
}

pub async fn gather(config: Config) -> Status {
    // Never `Catalog::open`: that would create and migrate the catalog, racing a daemon that is
    // starting on the same data dir.
    let catalog = Catalog::open_existing(&config.catalog_path())
        .ok()
        .flatten()
        .map(std::sync::Arc::new);
    let setting = |key| catalog.as_ref().and_then(|c| c.setting(key).ok().flatten());
    let key = MasterKey::load(&config.key_file);
    let bucket_state = match (&key, Bucket::open(&config.bucket, false)) {
        (_, Err(e)) => Err(one_line(&e)),
        (Err(_), Ok(bucket)) => bucket
            .check()
            .await
            .map_err(|e| one_line(&e))
            .and(Err("reachable; no usable key to check it with".to_owned())),
        (Ok(key), Ok(bucket)) => match bucket.check().await {
            Err(e) => Err(one_line(&e)),
            Ok(()) => keycheck::ensure(&bucket, &Codec::new(key.clone()), false)
                .await
                .map_err(|e| one_line(&e)),
        },
    };
    let daemon = Ready::read(&config);
    let live: Option<types::Status> = daemon
        .as_ref()
        .and_then(|_| std::fs::read_to_string(config.run_dir().join("status.toml")).ok())
        .and_then(|t| toml::from_str(&t).ok());
    let snapshot = live
        .unwrap_or_else(|| crate::daemon::manage::status::gather(&config, catalog.as_ref(), None));
    let integrity = catalog
        .as_ref()
        .and_then(|c| c.integrity_summary().ok())
        .unwrap_or_default();
    Status {
        snapshot,
        gateway_id: setting(setting::GATEWAY_ID),
        activated_unix: setting(setting::ACTIVATED_AT).and_then(|t| t.parse().ok()),
        daemon,
        endpoint: config
            .bucket
            .endpoint
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        bucket_state,
        key: key.map(|k| k.fingerprint()).map_err(|e| one_line(&e)),
        catalog_schema: catalog.as_ref().and_then(|c| c.schema_version().ok()),
        cache: area_status(&config.cache),
        upload_buffer: area_status(&config.upload_buffer),
        integrity,
        config,
    }
}

pub(crate) fn area_status(disk: &DiskConfig) -> AreaStatus {
    // Only measure an area that exists: opening would create it, racing a starting daemon.
    let used = Area::existing(&disk.path, disk.size.bytes())
        .ok()
        .flatten()
        .and_then(|a| a.used().ok());
    AreaStatus {
        path: disk.path.clone(),
        capacity: disk.size.bytes(),
        used,
    }
}
