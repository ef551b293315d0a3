//! What `tidegate status` reports, gathered without changing anything: no directory, catalog,
//! key or bucket object is created by looking.

use std::path::PathBuf;

use tidegate_cache::Area;

use crate::catalog::Catalog;
use crate::catalog::settings::{IntegritySummary, keys as setting};
use crate::config::{Config, DiskConfig};
use crate::daemon::Ready;
use crate::error_chain::one_line;
use crate::store::keycheck::{self, Pairing};
use crate::store::{Bucket, Codec, MasterKey};

#[derive(Debug)]
pub struct Status {
    pub config: Config,
    pub gateway_id: Option<String>,
    pub activated_unix: Option<i64>,
    pub daemon: Option<Ready>,
    pub bucket: String,
    pub endpoint: String,
    /// `Ok` when the bucket answered and the key opened its key check.
    pub bucket_state: Result<Pairing, String>,
    pub key: Result<String, String>,
    pub catalog_schema: Option<u32>,
    pub cache: AreaStatus,
    pub upload_buffer: AreaStatus,
    pub integrity: IntegritySummary,
    /// The running daemon's live figures (`run/status.toml`), if it is running.
    pub live: Option<LiveStatus>,
    pub volumes: Vec<crate::gateway::volumes::VolumeInfo>,
    /// Every share with its upload state (files and bytes not yet in the bucket, last upload).
    pub shares: Vec<(
        crate::catalog::shares::ShareRow,
        crate::catalog::shares::ShareSyncStats,
    )>,
    /// What needs the operator's attention beyond the bucket and the key (daemon/health).
    pub problems: Vec<String>,
    /// Every tape (library and shelf), with its state.
    pub tapes: Vec<crate::catalog::tapes::TapeRow>,
}

/// What a running daemon reports about its cache and upload buffer (`run/status.toml`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct LiveStatus {
    pub updated_unix: i64,
    pub cache_bytes: u64,
    pub dirty_bytes: u64,
    pub buffer_bytes: u64,
    pub buffer_capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub uploads: u64,
    pub upload_errors: u64,
    pub writers_waiting: u64,
    pub oldest_dirty_secs: u64,
    /// File gateway: objects uploaded, failed upload attempts, bytes read from the bucket.
    #[serde(default)]
    pub files_uploads: u64,
    #[serde(default)]
    pub files_upload_errors: u64,
    #[serde(default)]
    pub files_download_bytes: u64,
    /// Large files whose upload started before the upload delay ran out, and such uploads
    /// abandoned because the file changed.
    #[serde(default)]
    pub files_early_uploads: u64,
    #[serde(default)]
    pub files_early_abandoned: u64,
    /// Stored volumes' background work.
    #[serde(default)]
    pub stored: Vec<StoredLive>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct StoredLive {
    pub volume: String,
    /// Chunks changed locally and not yet in the bucket.
    pub dirty_chunks: u64,
    /// Restore: chunks still to download, of how many.
    pub download_pending: u64,
    pub download_total: u64,
    /// Initial upload of preserved data: chunks compared so far, of how many (0 of 0 when done).
    pub initial_done: u64,
    pub initial_total: u64,
    pub uploaded_chunks: u64,
    pub upload_errors: u64,
}

impl StoredLive {
    pub fn new(volume: String, p: &crate::gateway::volumes::stored::StoredProgress) -> Self {
        let (initial_done, initial_total) = p.initial_upload.unwrap_or((0, 0));
        Self {
            volume,
            dirty_chunks: p.dirty_chunks,
            download_pending: p.download_pending,
            download_total: p.download_total,
            initial_done,
            initial_total,
            uploaded_chunks: p.uploaded_chunks,
            upload_errors: p.upload_errors,
        }
    }
}

impl LiveStatus {
    pub fn new(s: &tidegate_cache::CacheStats, updated_unix: i64) -> Self {
        Self {
            updated_unix,
            cache_bytes: s.cache_bytes,
            dirty_bytes: s.dirty_bytes,
            buffer_bytes: s.buffer_bytes,
            buffer_capacity: s.buffer_capacity,
            hits: s.hits,
            misses: s.misses,
            uploads: s.uploads,
            upload_errors: s.upload_errors,
            writers_waiting: s.writers_waiting,
            oldest_dirty_secs: s.oldest_dirty_age.map_or(0, |d| d.as_secs()),
            stored: Vec::new(),
            files_uploads: 0,
            files_upload_errors: 0,
            files_download_bytes: 0,
            files_early_uploads: 0,
            files_early_abandoned: 0,
        }
    }
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
        self.bucket_state.is_ok() && self.key.is_ok() && self.problems.is_empty()
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
    let live = daemon
        .as_ref()
        .and_then(|_| std::fs::read_to_string(config.run_dir().join("status.toml")).ok())
        .and_then(|t| toml::from_str(&t).ok());
    let volumes = catalog
        .as_ref()
        .and_then(|c| crate::gateway::volumes::list(c).ok())
        .unwrap_or_default();
    let shares = catalog
        .as_ref()
        .and_then(|c| {
            let names = crate::gateway::files::list_shares(c).ok()?;
            names
                .iter()
                .map(|s| crate::gateway::files::share_status(c, &s.name).ok())
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default();
    let tapes = catalog
        .as_ref()
        .and_then(|c| c.tapes().ok())
        .unwrap_or_default();
    let cache = area_status(&config.cache);
    let upload_buffer = area_status(&config.upload_buffer);
    let integrity = catalog
        .as_ref()
        .and_then(|c| c.integrity_summary().ok())
        .unwrap_or_default();
    // A running daemon's figures are current; without one, what the areas hold on disk.
    let l = live.clone().unwrap_or_else(|| LiveStatus {
        cache_bytes: cache.used.unwrap_or(0),
        buffer_bytes: upload_buffer.used.unwrap_or(0),
        ..LiveStatus::default()
    });
    let problems = super::health::problems(&super::health::Inputs {
        writers_waiting: l.writers_waiting,
        buffer_bytes: l.buffer_bytes,
        buffer_capacity: l.buffer_capacity,
        upload_errors: l.upload_errors,
        dirty_bytes: l.dirty_bytes,
        integrity_failures: integrity.count,
        damaged_tapes: super::health::damaged_tapes(&tapes),
        disks: super::health::disks(&config, l.cache_bytes, l.buffer_bytes),
    });
    Status {
        problems,
        live,
        volumes,
        shares,
        tapes,
        gateway_id: setting(setting::GATEWAY_ID),
        activated_unix: setting(setting::ACTIVATED_AT).and_then(|t| t.parse().ok()),
        daemon,
        bucket: config.bucket.location.to_string(),
        endpoint: config
            .bucket
            .endpoint
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        bucket_state,
        key: key.map(|k| k.fingerprint()).map_err(|e| one_line(&e)),
        catalog_schema: catalog.as_ref().and_then(|c| c.schema_version().ok()),
        cache,
        upload_buffer,
        integrity,
        config,
    }
}

fn area_status(disk: &DiskConfig) -> AreaStatus {
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
