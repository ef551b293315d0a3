//! Jobs: creating one (id, unlock code, manifest file), unlocking it, and its states.
//!
//! The manifest file carries the KDF salt and parameters and a key check; the unlock code is
//! printed once and stored nowhere. Both are needed: the code alone lacks the salt, the file
//! alone the code. Invariant: a wrong code, a manifest file for another job or an edited one
//! fail with the same message, and nothing about the data is read before the key checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::catalog::jobs::{JobCounts, JobRow};
use crate::config::{BucketConfig, BucketLocation, Credentials, parse_bucket_url};
use crate::gateway::GatewayError;
use crate::gateway::import::Device;
use crate::gateway::import::cluster::ClusterLink;
use crate::store::MasterKey;
use crate::store::device::{self as keys, KdfParams};

/// The manifest file's format tag; a new layout gets a new tag.
const MANIFEST_FILE_FORMAT: &str = "tidegate-job-manifest/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Import,
    Export,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Import => "import",
            Self::Export => "export",
        }
    }
}

/// CREATED → LOADING → SEALED → IMPORTING → COMPLETE | FAILED (import);
/// CREATED → EXPORTING → READY → COMPLETE (export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Created,
    Loading,
    Sealed,
    Importing,
    Complete,
    Failed,
    Exporting,
    Ready,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Loading => "LOADING",
            Self::Sealed => "SEALED",
            Self::Importing => "IMPORTING",
            Self::Complete => "COMPLETE",
            Self::Failed => "FAILED",
            Self::Exporting => "EXPORTING",
            Self::Ready => "READY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CREATED" => Self::Created,
            "LOADING" => Self::Loading,
            "SEALED" => Self::Sealed,
            "IMPORTING" => Self::Importing,
            "COMPLETE" => Self::Complete,
            "FAILED" => Self::Failed,
            "EXPORTING" => Self::Exporting,
            "READY" => Self::Ready,
            _ => return None,
        })
    }

    /// Whether the data set may still change: clients load an import job until it is sealed;
    /// an export job is filled by `job export` (never by clients) until it is READY.
    pub fn accepts_writes(self) -> bool {
        matches!(self, Self::Created | Self::Loading | Self::Exporting)
    }
}

/// What `job create` is asked for.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub kind: JobKind,
    /// `s3://bucket[/prefix]`: the import target or the export source.
    pub bucket_url: String,
    pub endpoint: Option<String>,
    pub region: String,
    /// Where the manifest file is written.
    pub manifest_path: PathBuf,
    pub kdf: KdfParams,
}

/// The manifest file as written: everything but the unlock code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobManifestFile {
    pub format: String,
    pub job: String,
    pub kind: String,
    pub bucket_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub region: String,
    pub created_unix: i64,
    pub kdf: KdfParams,
    /// Hex.
    pub salt: String,
    pub key_check: String,
}

impl JobManifestFile {
    pub fn read(path: &Path) -> Result<Self, GatewayError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            GatewayError::InvalidArgument(format!("manifest file {}: {e}", path.display()))
        })?;
        let file: Self = serde_json::from_str(&text).map_err(|e| {
            GatewayError::InvalidArgument(format!(
                "manifest file {} is not a tidegate job manifest: {e}",
                path.display()
            ))
        })?;
        if file.format != MANIFEST_FILE_FORMAT {
            return Err(GatewayError::InvalidArgument(format!(
                "manifest file {}: format {:?} is not one this tidegate reads",
                path.display(),
                file.format
            )));
        }
        Ok(file)
    }
}

/// What `job create` hands back to print.
#[derive(Debug, Clone)]
pub struct CreatedJob {
    pub id: String,
    pub unlock_code: String,
    pub manifest_path: PathBuf,
    pub access_key: String,
    pub secret_key: String,
}

/// A job as `job status` shows it.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub row: JobRow,
    pub counts: JobCounts,
}

/// The S3 bucket a job's URL names (the device exposes it under the same name).
pub(crate) fn bucket_of(url: &str) -> Result<(String, String), GatewayError> {
    match parse_bucket_url(url).map_err(GatewayError::InvalidArgument)? {
        BucketLocation::S3 { bucket, prefix } => Ok((bucket, prefix)),
        BucketLocation::Local { .. } => Err(GatewayError::InvalidArgument(format!(
            "{url}: a job needs an s3:// bucket"
        ))),
    }
}

/// The bucket a job reads from or writes to: `root` for the bucket's root (reports) rather
/// than the job's prefix. Path-style addressing whenever an endpoint is given.
pub(crate) fn job_bucket(
    row: &JobRow,
    credentials: Credentials,
    root: bool,
) -> Result<BucketConfig, GatewayError> {
    let (bucket, prefix) = bucket_of(&row.bucket_url)?;
    let mut cfg = BucketConfig::local(PathBuf::new());
    cfg.location = BucketLocation::S3 {
        bucket,
        prefix: if root { String::new() } else { prefix },
    };
    cfg.endpoint = row.endpoint.clone();
    cfg.region = row.region.clone();
    cfg.path_style = row.endpoint.is_some();
    cfg.credentials = credentials;
    Ok(cfg)
}

/// Creates a job: a new id, unlock code and key; the manifest file is written (never over an
/// existing file) before the job row, so a job never exists without its file.
pub fn create_job(catalog: &Catalog, req: &JobRequest) -> Result<CreatedJob, GatewayError> {
    bucket_of(&req.bucket_url)?;
    if let Some(ep) = &req.endpoint
        && !(ep.starts_with("http://") || ep.starts_with("https://"))
    {
        return Err(GatewayError::InvalidArgument(format!(
            "--endpoint {ep:?}: expected an http:// or https:// URL"
        )));
    }
    let internal = |e: keys::DeviceKeyError| GatewayError::Internal(Box::new(e));
    let salt = keys::new_salt().map_err(internal)?;
    let id = format!(
        "JID{}",
        crate::store::keys::hex(&keys::new_salt().map_err(internal)?[..6])
    );
    let unlock_code = keys::generate_unlock_code().map_err(internal)?;
    let key = keys::derive_job_key(&unlock_code, &salt, req.kdf).map_err(internal)?;
    let created_unix = crate::clock::unix_secs();
    let file = JobManifestFile {
        format: MANIFEST_FILE_FORMAT.to_owned(),
        job: id.clone(),
        kind: req.kind.as_str().to_owned(),
        bucket_url: req.bucket_url.clone(),
        endpoint: req.endpoint.clone(),
        region: req.region.clone(),
        created_unix,
        kdf: req.kdf,
        salt: crate::store::keys::hex(&salt),
        key_check: keys::key_check(&key, &id),
    };
    let text =
        serde_json::to_string_pretty(&file).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    write_new(&req.manifest_path, text.as_bytes())?;
    catalog.insert_job(&JobRow {
        id: id.clone(),
        kind: req.kind.as_str().to_owned(),
        bucket_url: req.bucket_url.clone(),
        endpoint: req.endpoint.clone(),
        region: req.region.clone(),
        state: JobState::Created.as_str().to_owned(),
        reason: None,
        key_check: file.key_check.clone(),
        created_unix,
        updated_unix: created_unix,
        sealed_unix: None,
        finished_unix: None,
    })?;
    let (access_key, secret_key) = keys::s3_credentials(&key);
    Ok(CreatedJob {
        id,
        unlock_code,
        manifest_path: req.manifest_path.clone(),
        access_key,
        secret_key,
    })
}

fn write_new(path: &Path, data: &[u8]) -> Result<(), GatewayError> {
    use std::io::Write;
    let err = |e: std::io::Error| {
        GatewayError::InvalidArgument(format!("writing manifest file {}: {e}", path.display()))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The job key from a manifest file and an unlock code, checked against the manifest's and the
/// catalog's key checks. Runs Argon2id on the blocking pool.
pub(crate) async fn job_key(
    catalog: &Catalog,
    manifest: &JobManifestFile,
    code: &str,
) -> Result<(JobRow, MasterKey), GatewayError> {
    let row = catalog.job(&manifest.job)?.ok_or_else(|| {
        GatewayError::NotFound(format!(
            "job {} (the manifest file belongs to a job this device does not hold)",
            manifest.job
        ))
    })?;
    let refused = || {
        GatewayError::PermissionDenied(
            "the unlock code does not unlock this job with this manifest file".to_owned(),
        )
    };
    let salt = crate::store::keys::parse_hex::<16>(&manifest.salt).ok_or_else(refused)?;
    let code = code.to_owned();
    let params = manifest.kdf;
    let key = tokio::task::spawn_blocking(move || keys::derive_job_key(&code, &salt, params))
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?
        .map_err(|e| match e {
            keys::DeviceKeyError::CodeFormat => GatewayError::PermissionDenied(e.to_string()),
            other => GatewayError::Internal(Box::new(other)),
        })?;
    if !keys::key_check_matches(&key, &row.id, &manifest.key_check)
        || !keys::key_check_matches(&key, &row.id, &row.key_check)
    {
        return Err(refused());
    }
    Ok((row, key))
}

/// Checks an unlock code against a job's manifest file and catalog row, opening nothing (a
/// device cluster starts only for the right code).
pub async fn check_unlock(
    catalog: &Catalog,
    manifest: &JobManifestFile,
    code: &str,
) -> Result<(), GatewayError> {
    job_key(catalog, manifest, code).await.map(|_| ())
}

/// Checks the key, lets `next` refuse the job or name the state it moves to, and opens the
/// job's data set.
pub(crate) async fn open_job(
    catalog: Arc<Catalog>,
    data_dir: &Path,
    manifest: &JobManifestFile,
    code: &str,
    next: impl FnOnce(&JobRow, JobState) -> Result<Option<JobState>, GatewayError>,
) -> Result<Device, GatewayError> {
    open_job_in(catalog, data_dir, manifest, code, next, None).await
}

/// `open_job`, with the data set in a device cluster when `cluster` is given.
async fn open_job_in(
    catalog: Arc<Catalog>,
    data_dir: &Path,
    manifest: &JobManifestFile,
    code: &str,
    next: impl FnOnce(&JobRow, JobState) -> Result<Option<JobState>, GatewayError>,
    cluster: Option<ClusterLink>,
) -> Result<Device, GatewayError> {
    let (row, key) = job_key(&catalog, manifest, code).await?;
    let state = JobState::parse(&row.state).unwrap_or(JobState::Failed);
    if let Some(next) = next(&row, state)? {
        catalog.set_job_state(&row.id, next.as_str(), None)?;
    }
    let row = catalog
        .job(&row.id)?
        .ok_or_else(|| GatewayError::NotFound(format!("job {}", row.id)))?;
    Device::open(catalog, data_dir, row, key, cluster).await
}

/// Unlocks a job's device for clients: checks the key, opens the data set. A CREATED import
/// job becomes LOADING; an export job opens only once READY (read-only: `job export` fills it).
pub async fn unlock_job(
    catalog: Arc<Catalog>,
    data_dir: &Path,
    manifest: &JobManifestFile,
    code: &str,
) -> Result<Device, GatewayError> {
    unlock_job_in(catalog, data_dir, manifest, code, None).await
}

/// `unlock_job` for a device of a device cluster: the data set is the cluster's.
pub async fn unlock_job_in(
    catalog: Arc<Catalog>,
    data_dir: &Path,
    manifest: &JobManifestFile,
    code: &str,
    cluster: Option<ClusterLink>,
) -> Result<Device, GatewayError> {
    open_job_in(
        catalog,
        data_dir,
        manifest,
        code,
        |row, state| {
            if row.kind == JobKind::Export.as_str() {
                return match state {
                    JobState::Ready | JobState::Complete => Ok(None),
                    _ => Err(GatewayError::InvalidArgument(format!(
                        "export job {} is {}; its data set is not ready for clients yet (run \
                     `tidegate job export`)",
                        row.id, row.state
                    ))),
                };
            }
            Ok((state == JobState::Created).then_some(JobState::Loading))
        },
        cluster,
    )
    .await
}

/// Enters a job created on another device into this device's catalog from its manifest file
/// (a device joining a device cluster); nothing happens if the job is already here. The key
/// check comes from the file, so a later unlock checks the code exactly as on the first device.
pub fn adopt_job(catalog: &Catalog, manifest: &JobManifestFile) -> Result<(), GatewayError> {
    if catalog.job(&manifest.job)?.is_some() {
        return Ok(());
    }
    if manifest.kind != JobKind::Import.as_str() {
        return Err(GatewayError::InvalidArgument(format!(
            "job {} is an {} job; only import jobs run on a device cluster",
            manifest.job, manifest.kind
        )));
    }
    bucket_of(&manifest.bucket_url)?;
    Ok(catalog.insert_job(&JobRow {
        id: manifest.job.clone(),
        kind: manifest.kind.clone(),
        bucket_url: manifest.bucket_url.clone(),
        endpoint: manifest.endpoint.clone(),
        region: manifest.region.clone(),
        state: JobState::Created.as_str().to_owned(),
        reason: None,
        key_check: manifest.key_check.clone(),
        created_unix: manifest.created_unix,
        updated_unix: crate::clock::unix_secs(),
        sealed_unix: None,
        finished_unix: None,
    })?)
}

/// Marks a READY export job COMPLETE: its clients are done with the data set.
pub fn complete_job(catalog: &Catalog, id: &str) -> Result<(), GatewayError> {
    let row = catalog
        .job(id)?
        .ok_or_else(|| GatewayError::NotFound(format!("job {id}")))?;
    if row.kind != JobKind::Export.as_str() {
        return Err(GatewayError::InvalidArgument(format!(
            "job {id} is an {} job; an import completes when `job import` verified it",
            row.kind
        )));
    }
    match JobState::parse(&row.state) {
        Some(JobState::Ready) => {
            Ok(catalog.set_job_state(id, JobState::Complete.as_str(), None)?)
        }
        Some(JobState::Complete) => Ok(()),
        _ => Err(GatewayError::InvalidArgument(format!(
            "export job {id} is {}; only a READY job can complete",
            row.state
        ))),
    }
}

/// One job's row and counts, or every job's.
pub fn job_status(catalog: &Catalog, id: Option<&str>) -> Result<Vec<JobStatus>, GatewayError> {
    let rows = match id {
        Some(id) => vec![
            catalog
                .job(id)?
                .ok_or_else(|| GatewayError::NotFound(format!("job {id}")))?,
        ],
        None => catalog.jobs()?,
    };
    rows.into_iter()
        .map(|row| {
            let counts = catalog.job_counts(&row.id)?;
            Ok(JobStatus { row, counts })
        })
        .collect()
}
