//! The daemon's side of the management API: each call done with the gateway, answered as JSON,
//! and the Prometheus metrics rendered from the live figures.
//!
//! Bandwidth limits set through the API are kept in the catalog (`bandwidth.upload`,
//! `bandwidth.download`; `none` is unlimited) and applied at the next start too; without them
//! the config's limits apply.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};
use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::catalog::snapshots::SnapshotRow;
use crate::catalog::tapes::{ElementKind, LockMode, TapeRow, TapeState};
use crate::catalog::volumes::{VolumeMode, VolumeRow};
use crate::config::{ByteSize, Config};
use crate::daemon::health;
use crate::daemon::volumes::{VolumeService, target_name};
use crate::frontend::api::{ApiError, ApiResult, BoxFuture, Management};
use crate::gateway::GatewayError;
use crate::gateway::library::Element;
use crate::gateway::tapes::{self, CreateTapes, TapeLimits, shelf};
use crate::gateway::volumes::{self, CreateVolume, snapshot};
use crate::store::ChunkStore;

pub struct DaemonManagement {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub chunks: Arc<ChunkStore>,
    pub cache: Arc<Cache>,
    pub volumes: Arc<VolumeService>,
    pub bandwidth: Arc<crate::daemon::bandwidth::Bandwidth>,
    pub history: Arc<crate::daemon::history::History>,
    /// The tape library: its drives count the bytes clients write and read.
    pub library: Arc<crate::gateway::library::Library>,
    pub files: Arc<crate::gateway::files::Files>,
}

fn api_error(e: GatewayError) -> ApiError {
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

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", message)
}

fn volume_json(config: &Config, v: &VolumeRow, mapped_chunks: u64) -> Value {
    json!({
        "name": v.name,
        "size_bytes": v.size_bytes,
        "mode": v.mode.as_str(),
        "target": target_name(config, &v.name),
        "in_bucket_bytes": mapped_chunks * v.chunk_size,
        "local_path": v.local_path,
        "origin_snapshot": v.origin_snapshot,
    })
}

fn share_json(
    r: &crate::catalog::shares::ShareRow,
    sync: Option<&crate::catalog::shares::ShareSyncStats>,
) -> Value {
    let mut v = json!({
        "name": r.name,
        "prefix": r.bucket_prefix,
        "read_only": r.read_only,
        "squash": r.squash.as_str(),
        "allowed_clients": r.allowed_clients
            .split(',')
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        "refresh_secs": r.refresh_secs,
    });
    if let Some(s) = sync {
        v["dirty_files"] = json!(s.dirty_files);
        v["dirty_bytes"] = json!(s.dirty_bytes);
        v["pending_deletes"] = json!(s.pending_deletes);
        v["last_upload_unix"] = json!(s.last_upload_unix);
        v["in_bucket"] = json!(s.dirty_files == 0 && s.pending_deletes == 0);
    }
    v
}

fn share_spec(body: &Value) -> Result<crate::gateway::files::ShareSpec, ApiError> {
    use crate::catalog::shares::Squash;
    let name = text(body, "name")?.ok_or_else(|| bad("`name` is required"))?;
    let mut spec = crate::gateway::files::ShareSpec::new(name);
    spec.bucket_prefix = text(body, "prefix")?
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    spec.read_only = body
        .get("read_only")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(sq) = text(body, "squash")? {
        spec.squash = Squash::parse(sq)
            .ok_or_else(|| bad(format!("`squash` {sq:?}: use root, all or none")))?;
    }
    if let Some(list) = body.get("allowed_clients").filter(|v| !v.is_null()) {
        let list = list
            .as_array()
            .ok_or_else(|| bad("`allowed_clients` must be a list of CIDRs"))?;
        spec.allowed_clients = list
            .iter()
            .map(|c| {
                let c = c
                    .as_str()
                    .ok_or_else(|| bad("`allowed_clients`: CIDR strings"))?;
                crate::gateway::files::Cidr::parse(c).map_err(api_error)
            })
            .collect::<Result<_, _>>()?;
    }
    let number = |field: &str| -> Result<Option<u64>, ApiError> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(format!("`{field}` must be a whole number"))),
        }
    };
    let id = |field: &str| -> Result<Option<u32>, ApiError> {
        number(field)?
            .map(|n| u32::try_from(n).map_err(|_| bad(format!("`{field}` is too large"))))
            .transpose()
    };
    if let Some(v) = id("default_uid")? {
        spec.default_uid = v;
    }
    if let Some(v) = id("default_gid")? {
        spec.default_gid = v;
    }
    // Modes as octal strings ("0644"), as people write them, or plain numbers.
    let mode = |field: &str| -> Result<Option<u32>, ApiError> {
        match body.get(field) {
            Some(Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Some)
                .ok_or_else(|| bad(format!("`{field}` {s:?} is not an octal mode"))),
            _ => id(field),
        }
    };
    if let Some(v) = mode("default_mode")? {
        spec.default_file_mode = v;
    }
    if let Some(v) = mode("default_dir_mode")? {
        spec.default_dir_mode = v;
    }
    if let Some(v) = number("refresh_secs")? {
        spec.refresh = std::time::Duration::from_secs(v);
    }
    Ok(spec)
}

/// A tape as the API, the console and `tidegate tape` show it: the raw fields plus the labels
/// people read (`state_label` with the shelf progress, `location_label`), so every client
/// prints the same thing.
pub fn tape_json(config: &Config, t: &TapeRow) -> Value {
    let layout = crate::daemon::library::layout(config);
    let (location, location_label) = match t.location {
        None => (Value::Null, "shelf".to_owned()),
        Some((kind, i)) => {
            let (name, e) = match kind {
                ElementKind::Slot => ("slot", Element::Slot(i)),
                ElementKind::Drive => ("drive", Element::Drive(i)),
                ElementKind::Mail => ("mail slot", Element::Mail(i)),
            };
            let address = layout.address(e);
            (
                json!({ "kind": kind.as_str(), "number": i + 1, "address": address }),
                format!("{name} {} ({address:#06x})", i + 1),
            )
        }
    };
    let moving = matches!(t.state, TapeState::Archiving | TapeState::Retrieving);
    let state_label = if moving && t.data_bytes > 0 {
        format!(
            "{} {}%",
            t.state.label(),
            t.progress_bytes.saturating_mul(100) / t.data_bytes
        )
    } else {
        t.state.label().to_owned()
    };
    json!({
        "barcode": t.barcode,
        "size_bytes": t.size_bytes,
        "state": t.state.as_str(),
        "state_label": state_label,
        "location": location,
        "location_label": location_label,
        "data_bytes": t.data_bytes,
        "objects": t.objects,
        "read_only": t.read_only,
        "retention_until_unix": t.retention_until_unix,
        "lock_mode": t.lock_mode.map(LockMode::as_str),
        "tree_hash": t.tree_hash.map(|h| crate::store::keys::hex(&h)),
        "archived_unix": t.archived_unix,
        "progress_bytes": if moving { Some(t.progress_bytes) } else { None },
        "error": t.error,
    })
}

fn job_json(j: &crate::gateway::import::JobStatus) -> Value {
    json!({
        "id": j.row.id,
        "kind": j.row.kind,
        "target": (j.row.kind == "import").then_some(&j.row.bucket_url),
        "source": (j.row.kind == "export").then_some(&j.row.bucket_url),
        "state": j.row.state.to_ascii_lowercase(),
        "reason": j.row.reason,
        "created_unix": j.row.created_unix,
        "updated_unix": j.row.updated_unix,
        "sealed_unix": j.row.sealed_unix,
        "finished_unix": j.row.finished_unix,
        "objects": j.counts.objects,
        "bytes": j.counts.bytes,
        "imported_objects": j.counts.imported,
        "imported_bytes": j.counts.imported_bytes,
        "failed_objects": j.counts.failed,
        "progress": if j.counts.bytes == 0 {
            if j.counts.objects > 0 && j.counts.imported == j.counts.objects { 1.0 } else { 0.0 }
        } else {
            j.counts.imported_bytes as f64 / j.counts.bytes as f64
        },
    })
}

/// What `POST /api/v1/tapes` asks for, owned (`CreateTapes` borrows the prefix).
struct TapeRequest {
    prefix: String,
    count: u32,
    size_bytes: u64,
    retention: Option<(u32, LockMode)>,
}

/// `{"barcode_prefix", "count" (1), "size", "retention_days", "lock"}` as `tape create` takes
/// them.
fn tape_request(body: &Value) -> Result<TapeRequest, ApiError> {
    let prefix = text(body, "barcode_prefix")?
        .ok_or_else(|| bad("`barcode_prefix` is required"))?
        .to_owned();
    let count = match body.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("`count` must be a whole number"))?,
    };
    let size_bytes = size(body, "size")?.ok_or_else(|| bad("`size` is required"))?;
    let days = match body.get("retention_days") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("`retention_days` must be a whole number"))?,
        ),
    };
    let lock = text(body, "lock")?
        .map(|l| {
            LockMode::parse(l)
                .ok_or_else(|| bad(format!("`lock` {l:?}: use governance or compliance")))
        })
        .transpose()?;
    let retention = match (days, lock) {
        (Some(d), Some(l)) => Some((d, l)),
        (None, None) => None,
        _ => return Err(bad("`retention_days` and `lock` go together")),
    };
    Ok(TapeRequest {
        prefix,
        count,
        size_bytes,
        retention,
    })
}

fn snapshot_json(s: &SnapshotRow) -> Value {
    json!({
        "id": s.id,
        "volume": s.volume_name,
        "size_bytes": s.size_bytes,
        "state": s.state.as_str(),
        "error": s.error,
        "description": s.description,
        "scheduled": s.scheduled,
        "requested_unix": s.requested_unix,
        "completed_unix": s.completed_unix,
        "chunks": s.chunks,
        "new_chunks": s.new_chunks,
        "uploaded_bytes": s.uploaded_bytes,
    })
}

/// A size as a number of bytes or a string such as "10GiB".
fn size(v: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a whole number of bytes"))),
        Some(Value::String(s)) => ByteSize::from_str(s)
            .map(|b| Some(b.bytes()))
            .map_err(|e| bad(format!("`{field}`: {e}"))),
        Some(_) => Err(bad(format!("`{field}` must be a number or a size string"))),
    }
}

fn text<'a>(v: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("`{field}` must be a string"))),
    }
}

impl DaemonManagement {
    /// Adds a sample of the cumulative traffic (every `history::EVERY_SECS`).
    pub fn sample(&self) {
        let t = self.chunks.bucket().traffic();
        let (mut read_bytes, mut write_bytes) = (0, 0);
        for (_, c) in self.volumes.io() {
            read_bytes += c.read_bytes.load(Relaxed);
            write_bytes += c.write_bytes.load(Relaxed);
        }
        self.history.record(crate::daemon::history::Sample {
            unix: crate::daemon::unix_now(),
            upload_bytes: t.put_bytes,
            download_bytes: t.get_bytes,
            read_bytes,
            write_bytes,
        });
    }

    fn volume_list(&self) -> Result<Vec<Value>, GatewayError> {
        Ok(volumes::list(&self.catalog)?
            .iter()
            .map(|v| volume_json(&self.config, &v.row, v.mapped_chunks))
            .collect())
    }

    async fn create(&self, body: Value) -> ApiResult {
        let name = text(&body, "name")?.ok_or_else(|| bad("`name` is required"))?;
        let mode = match text(&body, "mode")? {
            None | Some("cached") => VolumeMode::Cached,
            Some("stored") => VolumeMode::Stored,
            Some(other) => return Err(bad(format!("`mode` {other:?}: use cached or stored"))),
        };
        let local_path = text(&body, "local_path")?;
        let row = match text(&body, "from_snapshot")? {
            Some(snap) => {
                snapshot::restore(&self.catalog, &self.chunks, snap, name, mode, local_path)
                    .await
                    .map_err(api_error)?
            }
            None => volumes::create(
                &self.catalog,
                &CreateVolume {
                    name,
                    size_bytes: size(&body, "size")?,
                    mode,
                    local_path,
                    preserve_existing: body
                        .get("preserve_existing")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
            )
            .map_err(api_error)?,
        };
        // Served at once, not at the next catalog poll.
        self.volumes.sync().map_err(internal)?;
        let mapped = self.catalog.volume_usage(row.id).map_err(internal)?;
        Ok(volume_json(&self.config, &row, mapped))
    }

    fn render_metrics(&self) -> String {
        let mut m = Metrics::default();
        let c = self.cache.stats();
        let lookups = c.hits + c.misses;
        let hit_ratio = if lookups == 0 {
            1.0
        } else {
            c.hits as f64 / lookups as f64
        };
        let backlog = c.oldest_dirty_age.map_or(0.0, |d| d.as_secs_f64());
        let scalars: [(&str, &str, &str, f64); 11] = [
            (
                "tidegate_cache_bytes",
                "gauge",
                "Bytes held in the local cache.",
                c.cache_bytes as f64,
            ),
            (
                "tidegate_cache_dirty_bytes",
                "gauge",
                "Bytes written but not yet in the bucket.",
                c.dirty_bytes as f64,
            ),
            (
                "tidegate_upload_buffer_bytes",
                "gauge",
                "Bytes used in the upload buffer.",
                c.buffer_bytes as f64,
            ),
            (
                "tidegate_upload_buffer_capacity_bytes",
                "gauge",
                "Size of the upload buffer.",
                c.buffer_capacity as f64,
            ),
            (
                "tidegate_cache_hits_total",
                "counter",
                "Reads served from the cache.",
                c.hits as f64,
            ),
            (
                "tidegate_cache_misses_total",
                "counter",
                "Reads that needed the bucket.",
                c.misses as f64,
            ),
            (
                "tidegate_cache_hit_ratio",
                "gauge",
                "Cache hits over all lookups since start (1 before any).",
                hit_ratio,
            ),
            (
                "tidegate_uploads_total",
                "counter",
                "Objects uploaded by the cache.",
                c.uploads as f64,
            ),
            (
                "tidegate_upload_errors_total",
                "counter",
                "Failed upload attempts (retried).",
                c.upload_errors as f64,
            ),
            (
                "tidegate_upload_backlog_age_seconds",
                "gauge",
                "Age of the oldest data not yet in the bucket.",
                backlog,
            ),
            (
                "tidegate_writers_waiting",
                "gauge",
                "Writers held because the upload buffer is full.",
                c.writers_waiting as f64,
            ),
        ];
        for (name, kind, help, value) in scalars {
            m.family(name, help, kind, &[(String::new(), value)]);
        }
        let bucket = self.chunks.bucket();
        let t = bucket.traffic();
        m.counter(
            "tidegate_bucket_requests_total",
            "Object requests to the bucket.",
            &[("op=\"put\"", t.puts as f64), ("op=\"get\"", t.gets as f64)],
        );
        m.counter(
            "tidegate_bucket_bytes_total",
            "Bytes sent to and received from the bucket.",
            &[
                ("direction=\"upload\"", t.put_bytes as f64),
                ("direction=\"download\"", t.get_bytes as f64),
            ],
        );
        m.counter(
            "tidegate_bucket_errors_total",
            "Bucket requests that failed.",
            &[("", t.errors as f64)],
        );
        let (up, down) = bucket.limits();
        m.gauge(
            "tidegate_bandwidth_limit_bytes_per_second",
            "Bandwidth limit in force (0: unlimited).",
            &[
                ("direction=\"upload\"", up.unwrap_or(0) as f64),
                ("direction=\"download\"", down.unwrap_or(0) as f64),
            ],
        );
        let integrity = self.catalog.integrity_summary().map_or(0, |s| s.count);
        m.counter(
            "tidegate_integrity_failures_total",
            "Chunks or objects that failed verification (ever).",
            &[("", integrity as f64)],
        );
        let io = self.volumes.io();
        let labels: Vec<(String, &crate::gateway::block::IoCounters)> = io
            .iter()
            .map(|(n, c)| (format!("volume=\"{n}\""), c.as_ref()))
            .collect();
        let per = |f: &dyn Fn(&crate::gateway::block::IoCounters) -> u64,
                   op: &str|
         -> Vec<(String, f64)> {
            labels
                .iter()
                .map(|(l, c)| (format!("{l},op=\"{op}\""), f(c) as f64))
                .collect()
        };
        let mut ops = per(&|c| c.reads.load(Relaxed), "read");
        ops.extend(per(&|c| c.writes.load(Relaxed), "write"));
        m.counter_owned(
            "tidegate_volume_ops_total",
            "Block reads and writes per volume.",
            &ops,
        );
        let mut bytes = per(&|c| c.read_bytes.load(Relaxed), "read");
        bytes.extend(per(&|c| c.write_bytes.load(Relaxed), "write"));
        m.counter_owned(
            "tidegate_volume_bytes_total",
            "Bytes read and written per volume.",
            &bytes,
        );
        let errors: Vec<(String, f64)> = labels
            .iter()
            .map(|(l, c)| (l.clone(), c.errors.load(Relaxed) as f64))
            .collect();
        m.counter_owned(
            "tidegate_volume_errors_total",
            "Failed block I/O per volume.",
            &errors,
        );
        let stored = self.volumes.stored_progress();
        let dirty: Vec<(String, f64)> = stored
            .iter()
            .map(|(n, p)| (format!("volume=\"{n}\""), p.dirty_chunks as f64))
            .collect();
        m.gauge_owned(
            "tidegate_stored_dirty_chunks",
            "Stored volumes: chunks not yet in the bucket.",
            &dirty,
        );
        let pending: Vec<(String, f64)> = stored
            .iter()
            .map(|(n, p)| (format!("volume=\"{n}\""), p.download_pending as f64))
            .collect();
        m.gauge_owned(
            "tidegate_stored_download_pending_chunks",
            "Stored volumes restored from a snapshot: chunks still to download.",
            &pending,
        );
        let mut states = std::collections::BTreeMap::new();
        for s in self.catalog.snapshots(None).unwrap_or_default() {
            *states.entry(s.state.as_str()).or_insert(0u64) += 1;
        }
        let states: Vec<(String, f64)> = states
            .into_iter()
            .map(|(s, n)| (format!("state=\"{s}\""), n as f64))
            .collect();
        m.gauge_owned("tidegate_snapshots", "Snapshots by state.", &states);
        self.render_share_metrics(&mut m);
        self.tape_metrics(&mut m);
        self.job_metrics(&mut m);
        m.0
    }

    fn tape_metrics(&self, m: &mut Metrics) {
        let tapes = self.catalog.tapes().unwrap_or_default();
        // Every state, zeros too: a dashboard's series do not vanish when a state empties.
        let states: Vec<(String, f64)> = [
            TapeState::Available,
            TapeState::InTransit,
            TapeState::Archiving,
            TapeState::Archived,
            TapeState::Retrieving,
            TapeState::Retrieved,
            TapeState::Damaged,
        ]
        .iter()
        .map(|s| {
            let n = tapes.iter().filter(|t| t.state == *s).count();
            (format!("state=\"{}\"", s.as_str()), n as f64)
        })
        .collect();
        m.gauge_owned("tidegate_tapes", "Tapes by state.", &states);
        let data: Vec<(String, f64)> = tapes
            .iter()
            .map(|t| (format!("barcode=\"{}\"", t.barcode), t.data_bytes as f64))
            .collect();
        m.gauge_owned(
            "tidegate_tape_data_bytes",
            "Bytes of data on each tape.",
            &data,
        );
        let mut io = Vec::new();
        for bay in self.library.bays() {
            let drive = bay.index + 1;
            io.push((
                format!("drive=\"{drive}\",op=\"write\""),
                bay.written_bytes.load(Relaxed) as f64,
            ));
            io.push((
                format!("drive=\"{drive}\",op=\"read\""),
                bay.read_bytes.load(Relaxed) as f64,
            ));
        }
        m.counter_owned(
            "tidegate_tape_drive_bytes_total",
            "Bytes clients wrote to and read from tapes, per drive.",
            &io,
        );
        let moving: Vec<&TapeRow> = tapes
            .iter()
            .filter(|t| matches!(t.state, TapeState::Archiving | TapeState::Retrieving))
            .collect();
        let label = |t: &TapeRow| {
            format!(
                "barcode=\"{}\",op=\"{}\"",
                t.barcode,
                if t.state == TapeState::Archiving {
                    "archive"
                } else {
                    "retrieve"
                }
            )
        };
        let done: Vec<(String, f64)> = moving
            .iter()
            .map(|t| (label(t), t.progress_bytes as f64))
            .collect();
        m.gauge_owned(
            "tidegate_shelf_progress_bytes",
            "Tapes being archived or retrieved: bytes done.",
            &done,
        );
        let total: Vec<(String, f64)> = moving
            .iter()
            .map(|t| (label(t), t.data_bytes as f64))
            .collect();
        m.gauge_owned(
            "tidegate_shelf_total_bytes",
            "Tapes being archived or retrieved: bytes in all.",
            &total,
        );
    }

    fn job_metrics(&self, m: &mut Metrics) {
        let jobs = crate::gateway::import::job_status(&self.catalog, None).unwrap_or_default();
        use crate::gateway::import::JobState;
        let states: Vec<(String, f64)> = [
            JobState::Created,
            JobState::Loading,
            JobState::Sealed,
            JobState::Importing,
            JobState::Complete,
            JobState::Failed,
            JobState::Exporting,
            JobState::Ready,
        ]
        .iter()
        .map(|s| {
            let n = jobs.iter().filter(|j| j.row.state == s.as_str()).count();
            (
                format!("state=\"{}\"", s.as_str().to_ascii_lowercase()),
                n as f64,
            )
        })
        .collect();
        m.gauge_owned("tidegate_jobs", "Import and export jobs by state.", &states);
        let per = |f: &dyn Fn(&crate::catalog::jobs::JobCounts) -> u64| -> Vec<(String, f64)> {
            jobs.iter()
                .map(|j| {
                    (
                        format!(
                            "job=\"{}\",state=\"{}\"",
                            j.row.id,
                            j.row.state.to_ascii_lowercase()
                        ),
                        f(&j.counts) as f64,
                    )
                })
                .collect()
        };
        m.gauge_owned(
            "tidegate_job_objects",
            "Objects a job holds on the device.",
            &per(&|c| c.objects),
        );
        m.gauge_owned(
            "tidegate_job_imported_objects",
            "Objects an import job has imported.",
            &per(&|c| c.imported),
        );
        m.gauge_owned(
            "tidegate_job_failed_objects",
            "Objects an import job could not import.",
            &per(&|c| c.failed),
        );
        m.gauge_owned(
            "tidegate_job_bytes",
            "Bytes a job holds on the device.",
            &per(&|c| c.bytes),
        );
        m.gauge_owned(
            "tidegate_job_imported_bytes",
            "Bytes an import job has imported.",
            &per(&|c| c.imported_bytes),
        );
    }

    /// File shares: traffic since start (per-volume I/O's counterpart) and the upload state
    /// from the catalog, so an alert can say a share's data is not yet in the bucket.
    fn render_share_metrics(&self, m: &mut Metrics) {
        let traffic = self.files.share_traffic();
        let shares = crate::gateway::files::list_shares(&self.catalog).unwrap_or_default();
        let (mut ops, mut bytes, mut uploads, mut upload_bytes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut dirty_files, mut dirty_bytes, mut deletes, mut last) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in &shares {
            let l = format!("share=\"{}\"", s.name);
            let t = traffic.get(&s.id).cloned().unwrap_or_default();
            let (reads, writes, commits) = (
                t.reads.load(Relaxed),
                t.writes.load(Relaxed),
                t.commits.load(Relaxed),
            );
            let other = t
                .calls
                .load(Relaxed)
                .saturating_sub(reads + writes + commits);
            for (op, n) in [
                ("read", reads),
                ("write", writes),
                ("commit", commits),
                ("other", other),
            ] {
                ops.push((format!("{l},op=\"{op}\""), n as f64));
            }
            bytes.push((
                format!("{l},op=\"read\""),
                t.read_bytes.load(Relaxed) as f64,
            ));
            bytes.push((
                format!("{l},op=\"write\""),
                t.write_bytes.load(Relaxed) as f64,
            ));
            uploads.push((l.clone(), t.uploads.load(Relaxed) as f64));
            upload_bytes.push((l.clone(), t.upload_bytes.load(Relaxed) as f64));
            let sync = self.catalog.share_sync_stats(s.id).unwrap_or_default();
            dirty_files.push((l.clone(), sync.dirty_files as f64));
            dirty_bytes.push((l.clone(), sync.dirty_bytes as f64));
            deletes.push((l.clone(), sync.pending_deletes as f64));
            last.push((l, sync.last_upload_unix.unwrap_or(0) as f64));
        }
        m.counter_owned(
            "tidegate_share_ops_total",
            "Calls per file share (read, write, commit; other: lookups, attributes, names).",
            &ops,
        );
        m.counter_owned(
            "tidegate_share_bytes_total",
            "Bytes read and written per file share.",
            &bytes,
        );
        m.counter_owned(
            "tidegate_share_uploads_total",
            "Objects uploaded per file share.",
            &uploads,
        );
        m.counter_owned(
            "tidegate_share_upload_bytes_total",
            "File bytes uploaded per file share.",
            &upload_bytes,
        );
        m.gauge_owned(
            "tidegate_share_dirty_files",
            "Files, symlinks and changes not yet in the bucket, per share (0: all there).",
            &dirty_files,
        );
        m.gauge_owned(
            "tidegate_share_dirty_bytes",
            "Bytes of files not yet in the bucket, per share.",
            &dirty_bytes,
        );
        m.gauge_owned(
            "tidegate_share_pending_deletes",
            "Objects still to delete from the bucket (removed or renamed files), per share.",
            &deletes,
        );
        let staging = self.files.staging_use();
        m.gauge(
            "tidegate_files_staging_bytes",
            "Bytes the file gateway's staging files take on disk.",
            &[("", staging.bytes as f64)],
        );
        m.gauge(
            "tidegate_files_staging_limit_bytes",
            "The most staging may take (cache.size; 0: unbounded).",
            &[("", staging.limit_bytes.unwrap_or(0) as f64)],
        );
        m.gauge(
            "tidegate_files_writers_waiting",
            "File writers held until uploads free staging room.",
            &[("", staging.writers_waiting as f64)],
        );
        m.gauge_owned(
            "tidegate_share_last_upload_timestamp_seconds",
            "When the share's last upload completed (Unix time; 0: never).",
            &last,
        );
    }
}

/// Prometheus text exposition, written by hand: a handful of families needs no crate.
#[derive(Default)]
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.0, "{name} {value}");
            } else {
                let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
            }
        }
    }

    fn owned(samples: &[(&str, f64)]) -> Vec<(String, f64)> {
        samples.iter().map(|(l, v)| ((*l).to_owned(), *v)).collect()
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(&str, f64)]) {
        self.family(name, help, "gauge", &Self::owned(samples));
    }

    fn counter(&mut self, name: &str, help: &str, samples: &[(&str, f64)]) {
        self.family(name, help, "counter", &Self::owned(samples));
    }

    fn gauge_owned(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.family(name, help, "gauge", samples);
    }

    fn counter_owned(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        self.family(name, help, "counter", samples);
    }
}

impl Management for DaemonManagement {
    fn metrics(&self) -> String {
        self.render_metrics()
    }

    fn status(&self) -> ApiResult {
        let c = self.cache.stats();
        let integrity = self.catalog.integrity_summary().map_err(internal)?;
        let problems = health::problems(&health::Inputs {
            writers_waiting: c.writers_waiting,
            buffer_bytes: c.buffer_bytes,
            buffer_capacity: c.buffer_capacity,
            upload_errors: c.upload_errors,
            dirty_bytes: c.dirty_bytes,
            integrity_failures: integrity.count,
            damaged_tapes: health::damaged_tapes(&self.catalog.tapes().map_err(internal)?),
            disks: health::disks(&self.config, c.cache_bytes, c.buffer_bytes),
        });
        let (up, down) = self.chunks.bucket().limits();
        Ok(json!({
            "gateway": self.config.name,
            "bucket": self.chunks.bucket().describe(),
            "healthy": problems.is_empty(),
            "problems": problems,
            "cache": {
                "capacity": self.config.cache.size.bytes(),
                "bytes": c.cache_bytes,
                "dirty_bytes": c.dirty_bytes,
                "oldest_dirty_secs": c.oldest_dirty_age.map_or(0, |d| d.as_secs()),
                "hits": c.hits,
                "misses": c.misses,
            },
            "upload_buffer": { "bytes": c.buffer_bytes, "capacity": c.buffer_capacity },
            "uploads": c.uploads,
            "upload_errors": c.upload_errors,
            "writers_waiting": c.writers_waiting,
            "bandwidth": { "upload": up, "download": down },
            "volumes": self.volume_list().map_err(api_error)?,
        }))
    }

    fn volumes(&self) -> ApiResult {
        Ok(Value::Array(self.volume_list().map_err(api_error)?))
    }

    fn create_volume(&self, body: Value) -> BoxFuture<'_, ApiResult> {
        Box::pin(self.create(body))
    }

    fn delete_volume(&self, name: String) -> ApiResult {
        volumes::delete(&self.catalog, &name).map_err(api_error)?;
        self.volumes.sync().map_err(internal)?;
        Ok(json!({ "deleted": name }))
    }

    fn snapshots(&self) -> ApiResult {
        Ok(Value::Array(
            self.catalog
                .snapshots(None)
                .map_err(internal)?
                .iter()
                .map(snapshot_json)
                .collect(),
        ))
    }

    fn create_snapshot(&self, body: Value) -> ApiResult {
        let volume = text(&body, "volume")?.ok_or_else(|| bad("`volume` is required"))?;
        let description = text(&body, "description")?.unwrap_or("");
        let row =
            snapshot::request(&self.catalog, volume, description, false).map_err(api_error)?;
        Ok(snapshot_json(&row))
    }

    fn delete_snapshot(&self, id: String) -> BoxFuture<'_, ApiResult> {
        Box::pin(async move {
            snapshot::delete(&self.catalog, &self.chunks, &id)
                .await
                .map_err(api_error)?;
            Ok(json!({ "deleted": id }))
        })
    }

    fn shares(&self) -> ApiResult {
        let rows = crate::gateway::files::list_shares(&self.catalog).map_err(api_error)?;
        let mut out = Vec::new();
        for r in rows {
            let sync = self.catalog.share_sync_stats(r.id).map_err(internal)?;
            out.push(share_json(&r, Some(&sync)));
        }
        Ok(Value::Array(out))
    }

    /// `{"name", "prefix", "read_only", "squash", "allowed_clients": [CIDR...], "default_uid",
    /// "default_gid", "default_mode", "default_dir_mode", "refresh_secs"}`; all but the name
    /// optional, with the CLI's defaults.
    fn create_share(&self, body: Value) -> BoxFuture<'_, ApiResult> {
        Box::pin(async move {
            let spec = share_spec(&body)?;
            let row =
                crate::gateway::files::create_share(&self.catalog, &spec).map_err(api_error)?;
            Ok(share_json(&row, None))
        })
    }

    fn delete_share(&self, name: String, force: bool) -> ApiResult {
        crate::gateway::files::delete_share(&self.catalog, &name, force).map_err(api_error)?;
        Ok(json!({ "deleted": name }))
    }

    fn refresh_share(&self, name: String, body: Value) -> ApiResult {
        let path = text(&body, "path")?.unwrap_or("");
        let directories = crate::gateway::files::request_refresh(&self.catalog, &name, path)
            .map_err(api_error)?;
        Ok(json!({ "share": name, "directories": directories }))
    }

    fn tapes(&self) -> ApiResult {
        Ok(Value::Array(
            self.catalog
                .tapes()
                .map_err(internal)?
                .iter()
                .map(|t| tape_json(&self.config, t))
                .collect(),
        ))
    }

    fn create_tapes(&self, body: Value) -> ApiResult {
        let r = tape_request(&body)?;
        let req = CreateTapes {
            prefix: &r.prefix,
            count: r.count,
            size_bytes: r.size_bytes,
            retention: r.retention,
        };
        let limits = TapeLimits {
            slots: self.config.library.slots,
            min_size: self.config.library.min_tape_size,
        };
        let made = tapes::create(&self.catalog, &req, limits, crate::daemon::unix_now())
            .map_err(api_error)?;
        Ok(Value::Array(
            made.iter().map(|t| tape_json(&self.config, t)).collect(),
        ))
    }

    fn delete_tape(&self, barcode: String, bypass_governance: bool) -> ApiResult {
        tapes::delete(
            &self.catalog,
            &barcode,
            bypass_governance,
            crate::daemon::unix_now(),
        )
        .map_err(api_error)?;
        Ok(json!({ "deleted": barcode }))
    }

    fn retrieve_tape(&self, barcode: String) -> ApiResult {
        let t = tapes::find(&self.catalog, &barcode).map_err(api_error)?;
        shelf::request_retrieval(&self.catalog, &t).map_err(api_error)?;
        let t = tapes::find(&self.catalog, &barcode).map_err(api_error)?;
        Ok(tape_json(&self.config, &t))
    }

    fn jobs(&self) -> ApiResult {
        let jobs = crate::gateway::import::job_status(&self.catalog, None).map_err(api_error)?;
        Ok(Value::Array(jobs.iter().map(job_json).collect()))
    }

    fn history(&self) -> ApiResult {
        serde_json::to_value(self.history.samples()).map_err(internal)
    }

    fn bandwidth(&self) -> ApiResult {
        let (up, down) = self.chunks.bucket().limits();
        let (_, window) = self.bandwidth.effective(crate::daemon::unix_now());
        let (default_up, default_down) = self.bandwidth.defaults();
        let schedule: Vec<Value> = self
            .bandwidth
            .schedule()
            .windows
            .iter()
            .map(|w| {
                let days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| w.days & (1 << i) != 0)
                    .map(|(_, d)| *d)
                    .collect();
                json!({
                    "days": days,
                    "start": format!("{:02}:{:02}", w.start / 60, w.start % 60),
                    "end": format!("{:02}:{:02}", w.end / 60, w.end % 60),
                    "upload": w.upload,
                    "download": w.download,
                })
            })
            .collect();
        Ok(json!({
            "upload": up,
            "download": down,
            "defaults": { "upload": default_up, "download": default_down },
            "schedule": schedule,
            "active_window": window,
        }))
    }

    /// `{"upload": 10485760 | "10MiB" | null, "download": ...}`; a field left out keeps its
    /// value, `null` removes the limit. Applies to the next transfer.
    fn set_bandwidth(&self, body: Value) -> ApiResult {
        let (mut up, mut down) = self.bandwidth.defaults();
        if body.get("upload").is_some() {
            up = size(&body, "upload")?;
        }
        if body.get("download").is_some() {
            down = size(&body, "download")?;
        }
        if up == Some(0) || down == Some(0) {
            return Err(bad(
                "a limit of 0 would stop all traffic; use null for no limit",
            ));
        }
        self.bandwidth.set_defaults((up, down)).map_err(internal)?;
        tracing::info!(upload = ?up, download = ?down, "default bandwidth limits changed");
        self.bandwidth()
    }
}
