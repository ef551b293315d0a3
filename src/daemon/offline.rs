//! Commands that need the volumes' live state while no daemon runs (a snapshot, an export):
//! they take the daemon's lock, open the engine and the cache as `serve` would (replaying the
//! upload buffer), and drain it, so the catalog's chunk maps hold every acknowledged write.

use std::sync::Arc;

use tidegate_cache::Cache;

use crate::config::Config;
use crate::daemon::{DaemonError, Engine, cache_config, lock};
use crate::gateway::volumes::sink::BucketSink;

/// The engine with a drained cache, holding the daemon lock until dropped.
pub struct Quiesced {
    pub engine: Engine,
    _lock: std::fs::File,
}

/// Opens and drains; fails with `AlreadyRunning` if a daemon holds the data dir.
pub async fn quiesce(config: Config) -> Result<Quiesced, DaemonError> {
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir)
        .map_err(crate::daemon::io(format!("creating {}", run_dir.display())))?;
    let lock = lock(&config)?;
    let engine = Engine::open(config).await?;
    let sink = Arc::new(BucketSink::new(
        engine.catalog.clone(),
        engine.chunks.clone(),
    ));
    let cache = Cache::open(cache_config(&engine.config), sink)?;
    let pending = cache.stats();
    tracing::info!(
        dirty_bytes = pending.dirty_bytes,
        "uploading what the upload buffer holds"
    );
    cache.drain().await?;
    cache.close().await;
    Ok(Quiesced {
        engine,
        _lock: lock,
    })
}
