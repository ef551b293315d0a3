//! The composition root (garage `server.rs`): opens catalog → key → store → cache areas in that
//! order, starts what is configured, and shuts down on SIGTERM/SIGINT (mini-redis style).
//!
//! Owns start-up order and run files (`run/lock`, `run/ready.toml`); owns no product logic.
//! Invariant: the readiness file exists only while a daemon that passed every start-up check
//! (key check included) is serving; a start that fails leaves no readiness file behind.

pub mod activate;
pub mod backup;
pub mod bandwidth;
pub mod cluster;
pub mod device;
pub mod device_nfs;
pub mod health;
pub mod history;
pub mod library;
pub mod manage;
pub mod notify;
pub mod offline;
pub mod recover;
pub mod rpcbind;
pub mod scrub;
pub mod snapshots;
pub mod status;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidegate_cache::{Cache, CacheConfig, CacheError};

use crate::catalog::settings::keys as setting;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, ConfigError};
use crate::error_chain::one_line;
use crate::gateway::files::{self, Files, FilesConfig};
use crate::store::keycheck::{self, Pairing};
use crate::store::{Bucket, ChunkStore, Codec, KeyError, MasterKey, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key file {key_file} does not match the bucket")]
    WrongKey {
        key_file: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another tidegate daemon is running on {data_dir} (pid {pid})")]
    AlreadyRunning { data_dir: PathBuf, pid: String },
    #[error(
        "the catalog in {data_dir} belongs to bucket {catalog}, but the config names {config}; \
         point the config back at {catalog} or use a new data dir"
    )]
    BucketMismatch {
        data_dir: PathBuf,
        catalog: String,
        config: String,
    },
    #[error("{0}")]
    NotActivated(String),
    #[error(
        "gateway {gateway_id}'s catalog copies are now written by {by}: two daemons run as this \
         gateway on one bucket, so this one takes no more copies; stop one of them"
    )]
    CopiesTakenOver { gateway_id: String, by: String },
    #[error("file gateway")]
    Files(#[from] crate::gateway::GatewayError),
    #[error("cannot serve rpcbind on {addr} ({bind}) nor register with a system rpcbind")]
    Rpcbind {
        addr: std::net::SocketAddr,
        bind: std::io::Error,
        #[source]
        register: crate::frontend::nfs::rpcbind::RpcbindError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The readiness file a running daemon keeps in `run/`: tests and `status` read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    pub started_unix: i64,
    pub config: String,
    /// The bound iSCSI portal, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<String>,
    /// The bound management API and /metrics, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The bound NFS (and MOUNT) port, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<String>,
    /// What port 111 does for NFS: `off`, `serving on …`, `registered with the system rpcbind
    /// at …` or `unavailable: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpcbind: Option<String>,
}

impl Ready {
    pub fn path(config: &Config) -> PathBuf {
        config.run_dir().join("ready.toml")
    }

    /// The readiness file of a daemon that is still alive, if any.
    pub fn read(config: &Config) -> Option<Ready> {
        let text = std::fs::read_to_string(Self::path(config)).ok()?;
        let ready: Ready = toml::from_str(&text).ok()?;
        Path::new(&format!("/proc/{}", ready.pid))
            .exists()
            .then_some(ready)
    }
}

/// Everything the gateways stand on, opened and checked.
#[derive(Debug)]
pub struct Engine {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub chunks: Arc<ChunkStore>,
    pub pairing: Pairing,
}

impl Engine {
    /// Opens the engine. The embedded default activates itself on first start (new key, key
    /// check in its local bucket); a configured gateway must have been activated.
    pub async fn open(config: Config) -> Result<Self, DaemonError> {
        std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
            "creating data dir {}",
            config.data_dir.display()
        )))?;
        let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
        let bucket_url = config.bucket.location.to_string();
        if let Some(recorded) = catalog.setting(setting::BUCKET_URL)?
            && recorded != bucket_url
        {
            return Err(DaemonError::BucketMismatch {
                data_dir: config.data_dir.clone(),
                catalog: recorded,
                config: bucket_url,
            });
        }
        let embedded = config.is_embedded();
        let key = if embedded && !config.key_file.exists() {
            let key = MasterKey::generate()?;
            key.create_file(&config.key_file)?;
            tracing::info!(key_file = %config.key_file.display(), "created a new key for the embedded default");
            key
        } else {
            MasterKey::load(&config.key_file)?
        };
        let bucket = Arc::new(Bucket::open(&config.bucket, embedded)?);
        bucket.check().await?;
        let codec = Codec::new(key);
        let pairing = keycheck::ensure(&bucket, &codec, embedded)
            .await
            .map_err(|e| match e {
                StoreError::WrongKey { .. } => DaemonError::WrongKey {
                    key_file: config.key_file.clone(),
                    source: e,
                },
                StoreError::NotActivated { .. } => DaemonError::NotActivated(format!(
                    "{e}; the config {} names it",
                    match &config.origin {
                        crate::config::Origin::File(p) => p.display().to_string(),
                        crate::config::Origin::Embedded => "embedded default".to_owned(),
                    }
                )),
                other => DaemonError::Store(other),
            })?;
        if catalog.setting(setting::GATEWAY_ID)?.is_none() {
            activate::record_identity(&catalog, &config, codec.key())?;
        }
        let pins = Arc::new(CatalogPins(catalog.clone()));
        Ok(Self {
            chunks: Arc::new(ChunkStore::new(bucket, codec).with_pins(pins)),
            config,
            catalog,
            pairing,
        })
    }
}

/// Pins chunks in the catalog before they are uploaded (see `catalog::gc`).
#[derive(Debug)]
struct CatalogPins(Arc<Catalog>);

impl crate::store::ChunkPins for CatalogPins {
    fn pin(&self, id: &crate::store::ChunkId) -> Result<(), String> {
        self.0
            .pin_chunk(&id.0, unix_now())
            .map_err(|e| e.to_string())
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    let _lock = lock(&config)?;
    // A stale readiness file from a killed daemon must not announce this one early.
    let ready_path = Ready::path(&config);
    let _ = std::fs::remove_file(&ready_path);

    let engine = Engine::open(config).await?;
    tracing::info!(
        gateway = %engine.config.name,
        bucket = %engine.chunks.bucket().describe(),
        pairing = ?engine.pairing,
        "engine open"
    );
    let config = engine.config.clone();
    let sink = Arc::new(crate::gateway::volumes::sink::BucketSink::new(
        engine.catalog.clone(),
        engine.chunks.clone(),
    ));
    let cache = Arc::new(Cache::open(cache_config(&config), sink)?);

    let registry = Arc::new(crate::frontend::iscsi::Registry::new());
    let volumes = Arc::new(volumes::VolumeService::new(
        config.clone(),
        engine.catalog.clone(),
        cache.clone(),
        registry.clone(),
        engine.chunks.clone(),
    ));
    volumes.sync()?;
    let gateway_id = engine
        .catalog
        .setting(setting::GATEWAY_ID)?
        .unwrap_or_default();
    let library = library::serve(
        &config,
        engine.catalog.clone(),
        cache.clone(),
        &registry,
        &gateway_id,
    )?;
    let listener = tokio::net::TcpListener::bind(config.iscsi.listen)
        .await
        .map_err(io(format!(
            "listening for iSCSI on {}",
            config.iscsi.listen
        )))?;
    let bound = listener
        .local_addr()
        .map_err(io("reading the iSCSI listener's address"))?;
    let portal = crate::frontend::iscsi::PortalConfig {
        advertise: config.iscsi.advertise.unwrap_or(bound),
        tpgt: 1,
        discovery_chap: None,
        nop_in_interval: Some(crate::frontend::iscsi::PortalConfig::DEFAULT_NOP_IN_INTERVAL),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut iscsi_stop = stop_rx.clone();
    let iscsi = tokio::spawn(crate::frontend::iscsi::serve(
        listener,
        registry,
        portal,
        async move {
            let _ = iscsi_stop.changed().await;
        },
    ));
    let snapshots = tokio::spawn(
        Arc::new(snapshots::SnapshotService {
            catalog: engine.catalog.clone(),
            chunks: engine.chunks.clone(),
            volumes: volumes.clone(),
            gateway_id: gateway_id.clone(),
            staging_dir: config.staging_dir(),
        })
        .run(stop_rx.clone()),
    );
    let shelf = tokio::spawn(crate::gateway::tapes::shelf::run(
        engine.catalog.clone(),
        engine.chunks.clone(),
        cache.clone(),
        library.clone(),
        stop_rx.clone(),
    ));
    let copier = backup::Copier::new(
        engine.catalog.clone(),
        engine.chunks.clone(),
        gateway_id.clone(),
        config.name.clone(),
        config.staging_dir(),
    )
    .await?;
    let backups = tokio::spawn(backup_loop(copier, stop_rx.clone()));
    let bandwidth = Arc::new(bandwidth::Bandwidth::new(
        config.bandwidth.clone(),
        engine.catalog.clone(),
        engine.chunks.clone(),
    ));
    let token = api_token(&config.api.token_file)?;
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(io(format!(
            "listening for the API on {}",
            config.api.listen
        )))?;
    let api_bound = api_listener
        .local_addr()
        .map_err(io("reading the API listener's address"))?;
    let mut api_stop = stop_rx.clone();
    let files = Arc::new(Files::new(
        engine.catalog.clone(),
        engine.chunks.bucket().clone(),
        FilesConfig {
            staging_dir: config.files_staging_dir(),
            upload_delay: config.files.upload_delay,
            staging_limit: Some(config.cache.size.bytes()),
            commit_uploads: false,
        },
    )?);
    let management = Arc::new(manage::Manager::daemon(
        config.clone(),
        engine.catalog.clone(),
        manage::Live {
            chunks: engine.chunks.clone(),
            cache: cache.clone(),
            volumes: volumes.clone(),
            bandwidth: bandwidth.clone(),
            history: Arc::new(history::History::default()),
            library: library.clone(),
            files: files.clone(),
        },
    ));
    let api = tokio::spawn(crate::frontend::api::serve(
        api_listener,
        management.clone(),
        token,
        async move {
            let _ = api_stop.changed().await;
        },
    ));
    if config.is_embedded() && files::list_shares(&engine.catalog)?.is_empty() {
        // Loopback-only by default, so root on this machine stays root in the share: the
        // first `nfs-cp` from the README works without extra flags.
        let spec = files::ShareSpec {
            squash: crate::catalog::shares::Squash::None,
            ..files::ShareSpec::new(crate::config::defaults::SHARE_NAME)
        };
        files::create_share(&engine.catalog, &spec)?;
        tracing::info!(
            share = crate::config::defaults::SHARE_NAME,
            "created the embedded default share"
        );
    }
    let nfs_listener = tokio::net::TcpListener::bind(config.nfs.listen)
        .await
        .map_err(io(format!("listening for NFS on {}", config.nfs.listen)))?;
    let nfs_bound = nfs_listener
        .local_addr()
        .map_err(io("reading the NFS listener's address"))?;
    let mut nfs_stop = stop_rx.clone();
    let nfs4_options = crate::frontend::nfs::nfs4::Options {
        lease: config.nfs.lease,
        id_domain: config.nfs.id_domain.clone(),
    };
    let nfs = tokio::spawn(crate::frontend::nfs::serve(
        nfs_listener,
        files.clone(),
        nfs4_options,
        async move {
            let _ = nfs_stop.changed().await;
        },
    ));
    let (port111, rpcbind_state) =
        rpcbind::Port111::start(config.nfs.rpcbind, nfs_bound, stop_rx.clone()).await?;
    let uploader = tokio::spawn(files.clone().run_uploader(stop_rx.clone()));
    let mut mounts = Vec::new();
    for (share, dir) in &config.fuse_mounts {
        let mount = crate::frontend::fuse::mount(
            files.clone(),
            tokio::runtime::Handle::current(),
            share,
            dir,
        )
        .await?;
        tracing::info!(share, dir = %dir.display(), "mounted through FUSE");
        mounts.push(mount);
    }
    let mut sync_stop = stop_rx.clone();
    let sync_volumes = volumes.clone();
    let tick_bandwidth = bandwidth.clone();
    let tick_management = management.clone();
    let status_path = config.run_dir().join("status.toml");
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut sampled: Option<i64> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sync_stop.changed() => break,
            }
            if let Err(e) = sync_volumes.sync() {
                tracing::warn!(error = %e, "volume sync failed");
            }
            tick_bandwidth.apply(unix_now());
            let now = unix_now();
            if sampled.is_none_or(|t| now - t >= history::EVERY_SECS) {
                tick_management.sample();
                sampled = Some(now);
            }
            write_status(&status_path, &tick_management).await;
        }
    });

    let ready = Ready {
        pid: std::process::id(),
        started_unix: unix_now(),
        config: match &config.origin {
            crate::config::Origin::File(p) => p.display().to_string(),
            crate::config::Origin::Embedded => "embedded".to_owned(),
        },
        iscsi: Some(bound.to_string()),
        api: Some(api_bound.to_string()),
        nfs: Some(nfs_bound.to_string()),
        rpcbind: Some(rpcbind_state.clone()),
    };
    write_status(&config.run_dir().join("status.toml"), &management).await;
    write_atomically(
        &ready_path,
        toml::to_string(&ready).unwrap_or_default().as_bytes(),
    )?;
    tracing::info!(ready = %ready_path.display(), iscsi = %bound, api = %api_bound, nfs = %nfs_bound, rpcbind = %rpcbind_state, "tidegate ready");
    let notifier = Arc::new(notify::Notifier::from_env());
    notifier.ready(&format!(
        "serving; iSCSI {bound}, NFS {nfs_bound}, API {api_bound}"
    ));
    let watchdog = notify::Notifier::watchdog_interval().map(|every| {
        let notifier = notifier.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                notifier.watchdog();
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    });

    wait_for_shutdown().await?;
    tracing::info!("shutting down");
    notifier.stopping();
    let _ = std::fs::remove_file(&ready_path);
    // Unmount first: a FUSE call in flight blocks on this runtime.
    drop(mounts);
    let _ = stop_tx.send(true);
    let _ = iscsi.await;
    let _ = api.await;
    let _ = nfs.await;
    port111.stop().await;
    let _ = uploader.await;
    let _ = housekeeping.await;
    let _ = snapshots.await;
    let _ = shelf.await;
    let copier = backups.await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    volumes.shutdown().await;
    library.sync_all().await;
    // Everything acknowledged is made durable in the upload buffer; uploads resume next start.
    if let Err(e) = cache.flush().await {
        tracing::error!(error = %e, "flushing the cache at shutdown");
    }
    match copier {
        Ok(mut copier) => match copier.take().await {
            Ok(key) => tracing::info!(%key, "catalog backed up"),
            Err(e) => tracing::warn!(error = %one_line(&e), "backing up the catalog at shutdown"),
        },
        Err(e) => tracing::error!(error = %e, "the catalog backup task failed"),
    }
    Ok(())
}

/// The API's bearer token: read from its file, or created there (0600) on first start.
fn api_token(path: &Path) -> Result<String, DaemonError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_owned();
        if token.len() >= 16 {
            return Ok(token);
        }
        return Err(DaemonError::Io {
            what: format!("API token file {}", path.display()),
            source: std::io::Error::other("holds fewer than 16 characters"),
        });
    }
    let token = crate::store::master::random_hex::<32>()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating API token file {}", path.display())))?;
    writeln!(file, "{token}").map_err(io(format!("writing {}", path.display())))?;
    tracing::info!(token_file = %path.display(), "created the API token");
    Ok(token)
}

/// Backs the catalog up to the bucket whenever it changed, at most every `backup::INTERVAL`;
/// hands the copier back at shutdown for the last copy. Once another daemon has taken the
/// gateway's copies over, says so once and stops.
async fn backup_loop(
    mut copier: backup::Copier,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> backup::Copier {
    let catalog = copier.catalog().clone();
    let mut saved = None;
    loop {
        let marker = catalog.change_marker().ok();
        if marker.is_some() && marker != saved {
            match copier.take().await {
                Ok(key) => {
                    tracing::debug!(%key, "catalog backed up");
                    saved = marker;
                }
                Err(e @ DaemonError::CopiesTakenOver { .. }) => {
                    tracing::error!(error = %one_line(&e), "backing up the catalog");
                    return copier;
                }
                Err(e) => tracing::warn!(error = %one_line(&e), "backing up the catalog"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backup::INTERVAL) => {}
            _ = stop.changed() => return copier,
        }
    }
}

fn cache_config(config: &Config) -> CacheConfig {
    let mut c = CacheConfig::new(
        config.cache.path.clone(),
        config.cache.size.bytes(),
        config.upload_buffer.path.clone(),
        config.upload_buffer.size.bytes(),
    );
    c.object_size = crate::gateway::volumes::CHUNK_SIZE;
    c
}

/// `run/status.toml`: the status snapshot, rewritten every second for `status` and tests.
/// Gathered off the async workers: it reads the catalog.
async fn write_status(path: &Path, management: &Arc<manage::Manager>) {
    let m = management.clone();
    let Ok(snapshot) = tokio::task::spawn_blocking(move || m.snapshot_for_file()).await else {
        return;
    };
    match toml::to_string(&snapshot) {
        Ok(text) => {
            let _ = write_atomically(path, text.as_bytes());
        }
        Err(e) => tracing::warn!(error = %e, "writing the status file"),
    }
}

/// Holds `run/lock` for the daemon's lifetime: one daemon per data dir.
fn lock(config: &Config) -> Result<std::fs::File, DaemonError> {
    let path = config.run_dir().join("lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::Write;
            file.set_len(0).map_err(io("truncating lock file"))?;
            write!(file, "{}", std::process::id()).map_err(io("writing lock file"))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::AlreadyRunning {
            data_dir: config.data_dir.clone(),
            pid: std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", path.display()))(e)),
    }
}

async fn wait_for_shutdown() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<(), DaemonError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

/// The daemon's name for `clock::unix_secs`, kept for the management layer's call sites.
pub(crate) use crate::clock::unix_secs as unix_now;
