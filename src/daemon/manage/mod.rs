//! The management operations, implemented once (`Manager`, the `frontend::api::Management`
//! trait). The daemon serves it over the API with its live parts; with no daemon the CLI runs
//! the same `Manager` in-process on the catalog and the bucket, so a command does the same
//! thing and prints the same answer either way.
//!
//! Where the two differ it is because only a running daemon has the thing asked for: it serves
//! volumes at once after a change (`Live::volumes`), takes queued snapshots in its worker
//! (offline the manager takes one itself, the daemon lock held), retrieves tapes, and has
//! bandwidth limits and traffic history.
//!
//! Bandwidth limits set through the API are kept in the catalog (`bandwidth.upload`,
//! `bandwidth.download`; `none` is unlimited) and applied at the next start too; without them
//! the config's limits apply.

pub mod requests;
pub mod status;
pub mod views;

use std::sync::{Arc, OnceLock};

use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::catalog::snapshots::SnapshotRow;
use crate::config::Config;
use crate::daemon::volumes::{VolumeService, target_name};
use crate::daemon::{DaemonError, Engine, unix_now};
use crate::frontend::api::types::{
    self, CreateShare, CreateSnapshot, CreateTapes, CreateVolume, Deleted, RefreshShare, Refreshed,
    Sample, Schedule, SetBandwidth, SetSchedule,
};
use crate::frontend::api::{ApiError, ApiResult, Call, Management};
use crate::gateway::GatewayError;
use crate::gateway::tapes::{self, TapeLimits, shelf};
use crate::gateway::volumes::snapshot::{self, Context as SnapContext, Cut};
use crate::store::ChunkStore;

use requests::bad;

/// What only a running daemon has.
pub struct Live {
    pub chunks: Arc<ChunkStore>,
    pub cache: Arc<Cache>,
    pub volumes: Arc<VolumeService>,
    pub bandwidth: Arc<crate::daemon::bandwidth::Bandwidth>,
    pub history: Arc<crate::daemon::history::History>,
    /// The tape library: its drives count the bytes clients write and read.
    pub library: Arc<crate::gateway::library::Library>,
    pub files: Arc<crate::gateway::files::Files>,
}

pub struct Manager {
    config: Config,
    catalog: Arc<Catalog>,
    /// The bucket: the daemon's, or opened on first need with no daemon (listing volumes
    /// needs no bucket, so it works while the bucket is unreachable).
    chunks: OnceLock<Arc<ChunkStore>>,
    live: Option<Live>,
    /// The catalog's lists last written to the status file, and when (Unix seconds).
    file_lists: std::sync::Mutex<Option<(i64, status::Listed)>>,
}

/// How long the status file may reuse the catalog's lists. They cost catalog queries (a count
/// over each volume's chunk map: about 35 ms for 1 TiB here), too much for every second under
/// the catalog lock; the API and `/metrics` always list afresh.
const FILE_LISTS_SECS: i64 = 10;

/// A gateway error as the API answers it.
pub fn api_error(e: GatewayError) -> ApiError {
    let (status, code) = match &e {
        GatewayError::NotFound(_) => (404, "not_found"),
        GatewayError::AlreadyExists(_) => (409, "already_exists"),
        GatewayError::NotEmpty(_) => (409, "not_empty"),
        GatewayError::Busy(_) => (409, "busy"),
        GatewayError::NotDirectory(_) => (409, "not_a_directory"),
        GatewayError::IsDirectory(_) => (409, "is_a_directory"),
        GatewayError::PermissionDenied(_) => (403, "permission_denied"),
        GatewayError::NameTooLong(_) => (400, "name_too_long"),
        GatewayError::NotSupported(_) => (501, "not_supported"),
        GatewayError::CrossDevice(_) => (409, "cross_device"),
        GatewayError::Stale(_) => (404, "stale"),
        GatewayError::ReadOnly(_) => (403, "read_only"),
        GatewayError::NoSpace(_) => (507, "no_space"),
        GatewayError::InvalidArgument(_) | GatewayError::OutOfRange(_) => (400, "bad_request"),
        GatewayError::Corrupt(_) => (500, "integrity"),
        GatewayError::Unavailable(_) => (503, "unavailable"),
        GatewayError::Internal(_) => (500, "internal"),
    };
    ApiError::new(status, code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "internal", e.to_string())
}

/// Asked of a data dir with no daemon for something only a running daemon does.
fn needs_daemon(what: &str) -> ApiError {
    ApiError::new(
        409,
        "no_daemon",
        format!("the daemon {what}: start `tidegate serve` first"),
    )
}

impl Manager {
    /// The daemon's manager, with its live parts.
    pub fn daemon(config: Config, catalog: Arc<Catalog>, live: Live) -> Self {
        let chunks = OnceLock::from(live.chunks.clone());
        Self {
            config,
            catalog,
            chunks,
            live: Some(live),
            file_lists: std::sync::Mutex::default(),
        }
    }

    /// The manager for a data dir no daemon serves: the catalog (created if new) and the
    /// bucket when an operation needs it.
    pub fn offline(config: Config) -> Result<Self, DaemonError> {
        std::fs::create_dir_all(&config.data_dir).map_err(crate::daemon::io(format!(
            "creating data dir {}",
            config.data_dir.display()
        )))?;
        let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
        Ok(Self {
            config,
            catalog,
            chunks: OnceLock::new(),
            live: None,
            file_lists: std::sync::Mutex::default(),
        })
    }

    async fn chunks(&self) -> ApiResult<Arc<ChunkStore>> {
        if let Some(c) = self.chunks.get() {
            return Ok(c.clone());
        }
        let engine = Engine::open(self.config.clone()).await.map_err(internal)?;
        Ok(self.chunks.get_or_init(|| engine.chunks).clone())
    }

    /// Serves what the catalog now holds at once, not at the daemon's next poll.
    fn sync_volumes(&self) -> ApiResult<()> {
        match &self.live {
            Some(l) => l.volumes.sync().map_err(internal),
            None => Ok(()),
        }
    }

    /// The status snapshot now.
    pub fn snapshot(&self) -> types::Status {
        status::gather(&self.config, Some(&self.catalog), self.live.as_ref())
    }

    /// The snapshot for `run/status.toml`: live figures now, the catalog's lists of at most
    /// `FILE_LISTS_SECS` ago.
    pub fn snapshot_for_file(&self) -> types::Status {
        let now = unix_now();
        let mut cached = self.file_lists.lock().unwrap_or_else(|p| p.into_inner());
        let listed = match cached.as_ref() {
            Some((at, l)) if now.saturating_sub(*at) < FILE_LISTS_SECS => l.clone(),
            _ => {
                let l = status::list(&self.config, Some(&self.catalog));
                *cached = Some((now, l.clone()));
                l
            }
        };
        drop(cached);
        status::assemble(&self.config, listed, self.live.as_ref())
    }

    /// Adds a sample of the cumulative traffic (every `history::EVERY_SECS`).
    pub fn sample(&self) {
        let Some(l) = &self.live else { return };
        let t = l.chunks.bucket().traffic();
        let (mut read_bytes, mut write_bytes) = (0, 0);
        for (_, c) in l.volumes.io() {
            read_bytes += c.read_bytes.load(std::sync::atomic::Ordering::Relaxed);
            write_bytes += c.write_bytes.load(std::sync::atomic::Ordering::Relaxed);
        }
        l.history.record(Sample {
            unix: unix_now(),
            upload_bytes: t.put_bytes,
            download_bytes: t.get_bytes,
            read_bytes,
            write_bytes,
            buffer_bytes: l.cache.stats().buffer_bytes,
        });
    }

    fn volume(&self, row: &crate::catalog::volumes::VolumeRow) -> ApiResult<types::Volume> {
        let mapped = self.catalog.volume_usage(row.id).map_err(internal)?;
        Ok(views::volume(
            row,
            mapped,
            target_name(&self.config, &row.name),
        ))
    }

    async fn create_volume_now(&self, req: CreateVolume) -> ApiResult<types::Volume> {
        let mode = requests::volume_mode(req.mode.as_deref())?;
        let local_path = req.local_path.as_deref();
        let row = match &req.from_snapshot {
            Some(snap) => {
                let chunks = self.chunks().await?;
                snapshot::restore(&self.catalog, &chunks, snap, &req.name, mode, local_path)
                    .await
                    .map_err(api_error)?
            }
            None => crate::gateway::volumes::create(
                &self.catalog,
                &crate::gateway::volumes::CreateVolume {
                    name: &req.name,
                    size_bytes: requests::optional_size(req.size.as_ref(), "size")?,
                    mode,
                    local_path,
                    preserve_existing: req.preserve_existing,
                },
            )
            .map_err(api_error)?,
        };
        self.sync_volumes()?;
        self.volume(&row)
    }

    fn set_schedule_now(&self, volume: &str, req: &SetSchedule) -> ApiResult<Schedule> {
        let row = self
            .catalog
            .volume_by_name(volume)
            .map_err(internal)?
            .ok_or_else(|| ApiError::new(404, "not_found", format!("no volume {volume}")))?;
        if req.off {
            self.catalog.remove_schedule(row.id).map_err(internal)?;
            return Ok(Schedule {
                volume: volume.to_owned(),
                every_secs: None,
                keep: None,
            });
        }
        if req.every_secs < 60 {
            return Err(bad(
                "a schedule takes a snapshot at most every minute (--every 1m)",
            ));
        }
        if req.keep == 0 {
            return Err(bad("a schedule keeps at least one snapshot (--keep 1)"));
        }
        self.catalog
            .set_schedule(row.id, req.every_secs, req.keep)
            .map_err(internal)?;
        Ok(Schedule {
            volume: volume.to_owned(),
            every_secs: Some(req.every_secs),
            keep: Some(req.keep),
        })
    }

    /// With no daemon, the snapshot just requested is taken here, as the daemon's worker would:
    /// the upload buffer drained under the daemon lock, a stored volume cut live.
    async fn take_offline(&self, row: SnapshotRow) -> ApiResult<SnapshotRow> {
        let staging = self.config.staging_dir();
        let quiet = match crate::daemon::offline::quiesce(self.config.clone()).await {
            Ok(q) => q,
            // A daemon started meanwhile: its worker takes the request.
            Err(DaemonError::AlreadyRunning { .. }) => return Ok(row),
            Err(e) => return Err(internal(e)),
        };
        let engine = &quiet.engine;
        let gateway_id = engine
            .catalog
            .setting(crate::catalog::settings::keys::GATEWAY_ID)
            .map_err(internal)?
            .unwrap_or_default();
        let ctx = SnapContext {
            catalog: &engine.catalog,
            chunks: &engine.chunks,
            gateway_id: &gateway_id,
            staging_dir: &staging,
        };
        // A stored volume's local changes are not in the bucket yet: cut it as the daemon does.
        let stored = match engine
            .catalog
            .volume_by_id(row.volume_id)
            .map_err(internal)?
        {
            Some(v) if v.mode == crate::catalog::volumes::VolumeMode::Stored => Some(
                crate::gateway::volumes::stored::StoredVolume::open(
                    v,
                    engine.catalog.clone(),
                    engine.chunks.clone(),
                )
                .map_err(api_error)?,
            ),
            _ => None,
        };
        let cut = match &stored {
            Some(v) => Cut::Live(v),
            None => Cut::Quiescent,
        };
        // A failure is recorded on the row, which the answer carries.
        if let Err(e) = snapshot::take(ctx, &row, cut).await {
            tracing::debug!(error = %e, "snapshot failed");
        }
        self.catalog
            .snapshot(&row.id)
            .map_err(internal)?
            .ok_or_else(|| internal(format!("snapshot {} vanished from the catalog", row.id)))
    }

    fn bandwidth_now(&self) -> ApiResult<types::Bandwidth> {
        let Some(l) = &self.live else {
            return Err(needs_daemon("sets the bandwidth limits"));
        };
        let (upload, download) = l.chunks.bucket().limits();
        let (_, active_window) = l.bandwidth.effective(unix_now());
        let (default_up, default_down) = l.bandwidth.defaults();
        Ok(types::Bandwidth {
            upload,
            download,
            defaults: types::Limits {
                upload: default_up,
                download: default_down,
            },
            schedule: l
                .bandwidth
                .schedule()
                .windows
                .iter()
                .map(views::window)
                .collect(),
            active_window,
        })
    }

    fn set_bandwidth_now(&self, req: &SetBandwidth) -> ApiResult<types::Bandwidth> {
        let Some(l) = &self.live else {
            return Err(needs_daemon("sets the bandwidth limits"));
        };
        let (mut up, mut down) = l.bandwidth.defaults();
        if let Some(v) = &req.upload {
            up = requests::optional_size(v.as_ref(), "upload")?;
        }
        if let Some(v) = &req.download {
            down = requests::optional_size(v.as_ref(), "download")?;
        }
        if up == Some(0) || down == Some(0) {
            return Err(bad(
                "a limit of 0 would stop all traffic; use null for no limit",
            ));
        }
        l.bandwidth.set_defaults((up, down)).map_err(internal)?;
        tracing::info!(upload = ?up, download = ?down, "default bandwidth limits changed");
        self.bandwidth_now()
    }

    fn tape_views(&self, rows: &[crate::catalog::tapes::TapeRow]) -> Vec<types::Tape> {
        let layout = crate::daemon::library::layout(&self.config);
        rows.iter().map(|t| views::tape(&layout, t)).collect()
    }

    fn create_tapes_now(&self, req: &CreateTapes) -> ApiResult<Vec<types::Tape>> {
        let r = requests::tape_request(req)?;
        let made = tapes::create(
            &self.catalog,
            &tapes::CreateTapes {
                prefix: &req.barcode_prefix,
                count: r.count,
                size_bytes: r.size_bytes,
                retention: r.retention,
            },
            TapeLimits {
                slots: self.config.library.slots,
                min_size: self.config.library.min_tape_size,
            },
            unix_now(),
        )
        .map_err(api_error)?;
        Ok(self.tape_views(&made))
    }

    fn retrieve_tape_now(&self, barcode: &str) -> ApiResult<types::Tape> {
        if self.live.is_none() {
            return Err(needs_daemon("retrieves tapes"));
        }
        let t = tapes::find(&self.catalog, barcode).map_err(api_error)?;
        shelf::request_retrieval(&self.catalog, &t).map_err(api_error)?;
        let t = tapes::find(&self.catalog, barcode).map_err(api_error)?;
        Ok(self.tape_views(std::slice::from_ref(&t)).remove(0))
    }

    fn shares_now(&self) -> ApiResult<Vec<types::Share>> {
        crate::gateway::files::list_shares(&self.catalog)
            .map_err(api_error)?
            .iter()
            .map(|r| {
                let sync = self.catalog.share_sync_stats(r.id).map_err(internal)?;
                Ok(views::share(r, &sync))
            })
            .collect()
    }
}

impl Management for Manager {
    fn status(&self) -> Call<'_, types::Status> {
        Box::pin(async move { Ok(self.snapshot()) })
    }

    fn volumes(&self) -> Call<'_, Vec<types::Volume>> {
        Box::pin(async move {
            crate::gateway::volumes::list(&self.catalog)
                .map_err(api_error)?
                .iter()
                .map(|v| {
                    Ok(views::volume(
                        &v.row,
                        v.mapped_chunks,
                        target_name(&self.config, &v.row.name),
                    ))
                })
                .collect()
        })
    }

    fn create_volume(&self, req: CreateVolume) -> Call<'_, types::Volume> {
        Box::pin(self.create_volume_now(req))
    }

    fn delete_volume(&self, name: String) -> Call<'_, Deleted> {
        Box::pin(async move {
            crate::gateway::volumes::delete(&self.catalog, &name).map_err(api_error)?;
            self.sync_volumes()?;
            Ok(Deleted { deleted: name })
        })
    }

    fn set_schedule(&self, volume: String, req: SetSchedule) -> Call<'_, Schedule> {
        Box::pin(async move { self.set_schedule_now(&volume, &req) })
    }

    fn snapshots(&self) -> Call<'_, Vec<types::Snapshot>> {
        Box::pin(async move {
            Ok(self
                .catalog
                .snapshots(None)
                .map_err(internal)?
                .iter()
                .map(views::snapshot)
                .collect())
        })
    }

    fn create_snapshot(&self, req: CreateSnapshot) -> Call<'_, types::Snapshot> {
        Box::pin(async move {
            let row = snapshot::request(&self.catalog, &req.volume, &req.description, false)
                .map_err(api_error)?;
            let row = match self.live {
                Some(_) => row,
                None => self.take_offline(row).await?,
            };
            Ok(views::snapshot(&row))
        })
    }

    fn delete_snapshot(&self, id: String) -> Call<'_, Deleted> {
        Box::pin(async move {
            let chunks = self.chunks().await?;
            snapshot::delete(&self.catalog, &chunks, &id)
                .await
                .map_err(api_error)?;
            Ok(Deleted { deleted: id })
        })
    }

    fn bandwidth(&self) -> Call<'_, types::Bandwidth> {
        Box::pin(async move { self.bandwidth_now() })
    }

    fn set_bandwidth(&self, req: SetBandwidth) -> Call<'_, types::Bandwidth> {
        Box::pin(async move { self.set_bandwidth_now(&req) })
    }

    fn history(&self) -> Call<'_, Vec<Sample>> {
        Box::pin(async move {
            Ok(self
                .live
                .as_ref()
                .map(|l| l.history.samples())
                .unwrap_or_default())
        })
    }

    fn shares(&self) -> Call<'_, Vec<types::Share>> {
        Box::pin(async move { self.shares_now() })
    }

    fn create_share(&self, req: CreateShare) -> Call<'_, types::Share> {
        Box::pin(async move {
            let spec = requests::share_spec(&req)?;
            let row =
                crate::gateway::files::create_share(&self.catalog, &spec).map_err(api_error)?;
            let sync = self.catalog.share_sync_stats(row.id).map_err(internal)?;
            Ok(views::share(&row, &sync))
        })
    }

    fn delete_share(&self, name: String, force: bool) -> Call<'_, Deleted> {
        Box::pin(async move {
            crate::gateway::files::delete_share(&self.catalog, &name, force).map_err(api_error)?;
            Ok(Deleted { deleted: name })
        })
    }

    fn refresh_share(&self, name: String, req: RefreshShare) -> Call<'_, Refreshed> {
        Box::pin(async move {
            let path = req.path.as_deref().unwrap_or("");
            let directories = crate::gateway::files::request_refresh(&self.catalog, &name, path)
                .map_err(api_error)?;
            Ok(Refreshed {
                share: name,
                directories,
            })
        })
    }

    fn tapes(&self) -> Call<'_, Vec<types::Tape>> {
        Box::pin(async move {
            let rows = self.catalog.tapes().map_err(internal)?;
            Ok(self.tape_views(&rows))
        })
    }

    fn create_tapes(&self, req: CreateTapes) -> Call<'_, Vec<types::Tape>> {
        Box::pin(async move { self.create_tapes_now(&req) })
    }

    fn delete_tape(&self, barcode: String, bypass_governance: bool) -> Call<'_, Deleted> {
        Box::pin(async move {
            tapes::delete(&self.catalog, &barcode, bypass_governance, unix_now())
                .map_err(api_error)?;
            Ok(Deleted { deleted: barcode })
        })
    }

    fn retrieve_tape(&self, barcode: String) -> Call<'_, types::Tape> {
        Box::pin(async move { self.retrieve_tape_now(&barcode) })
    }

    fn jobs(&self) -> Call<'_, Vec<types::Job>> {
        Box::pin(async move {
            let jobs =
                crate::gateway::import::job_status(&self.catalog, None).map_err(api_error)?;
            Ok(jobs.iter().map(views::job).collect())
        })
    }
}
