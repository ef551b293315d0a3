//! A job's program: copied into `DEVICE_DIR/function/` with its definition
//! (`DEVICE_DIR/function.json`) at `job create`, and in a device cluster published into the
//! cluster's bucket by the device that created the job and copied from there by the others
//! (`fn/program`, sealed under the job key; `fn/none` for a job without a function).
//!
//! Must not: run anything (`sandbox.rs` does). Invariant: a copy taken from the cluster is
//! used only if it opens under the job key and matches the SHA-256 of its definition.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{FunctionError, FunctionRequest};
use crate::gateway::GatewayError;
use crate::gateway::import::device::Device;
use crate::gateway::import::record;
use crate::store::StoreError;

/// The function's definition, beside the job's segments.
const SPEC_FILE: &str = "function.json";
/// The copy of the program that runs (the operator's file may change or go after create).
const PROGRAM_DIR: &str = "function";
/// In a cluster's bucket: the job's function (definition and program, sealed), or the mark that
/// the job has none; written by the device that created the job.
const CLUSTER_PROGRAM: &str = "fn/program";
const CLUSTER_NONE: &str = "fn/none";

/// The program's copy that runs.
pub(super) fn program_path(device_dir: &Path, spec: &FunctionSpec) -> PathBuf {
    device_dir.join(PROGRAM_DIR).join(&spec.program)
}

/// A job's function as stored in `DEVICE_DIR/function.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunctionSpec {
    /// The program's file name under `DEVICE_DIR/function/`.
    pub program: String,
    /// Where the operator's program was copied from, and its SHA-256 (for the report).
    pub source: PathBuf,
    pub program_sha256: String,
    pub pattern: String,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
}

/// Copies the program into the job's device directory and writes its definition.
pub fn install_function(
    data_dir: &Path,
    job: &str,
    req: &FunctionRequest,
) -> Result<FunctionSpec, FunctionError> {
    req.check()?;
    let dir = crate::gateway::import::device_dir(data_dir, job);
    let bytes = std::fs::read(&req.program).map_err(io("reading", &req.program))?;
    let name = req
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".to_owned());
    let spec = FunctionSpec {
        program: name,
        source: std::path::absolute(&req.program).unwrap_or_else(|_| req.program.clone()),
        program_sha256: sha256_hex(&bytes),
        pattern: req.pattern.clone(),
        timeout_ms: u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX),
        memory_bytes: req.memory_bytes,
    };
    store_program(&dir, &spec, &bytes)?;
    Ok(spec)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut sha = crate::store::device::Sha256::default();
    sha.update(bytes);
    crate::store::keys::hex(&sha.finish())
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FunctionError {
    let path = path.to_owned();
    move |source| FunctionError::Io {
        action,
        path,
        source,
    }
}

/// Writes the program's copy (read-only) and then its definition into the job's device
/// directory. Blocking I/O.
fn store_program(dir: &Path, spec: &FunctionSpec, bytes: &[u8]) -> Result<(), FunctionError> {
    use std::os::unix::fs::PermissionsExt;
    let prog_dir = dir.join(PROGRAM_DIR);
    std::fs::create_dir_all(&prog_dir).map_err(io("creating", &prog_dir))?;
    let copy = program_path(dir, spec);
    // A copy left read-only by an interrupted install is replaced, not written through.
    match std::fs::remove_file(&copy) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", &copy)(e));
        }
        _ => {}
    }
    std::fs::write(&copy, bytes).map_err(io("writing", &copy))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o555))
        .map_err(io("setting the mode of", &copy))?;
    let path = dir.join(SPEC_FILE);
    let json = serde_json::to_vec_pretty(&spec).map_err(|source| FunctionError::Spec {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json).map_err(io("writing", &path))
}

pub(super) fn read_spec(device_dir: &Path) -> Result<Option<FunctionSpec>, FunctionError> {
    let path = device_dir.join(SPEC_FILE);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| FunctionError::Spec { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FunctionError::Io {
            action: "reading",
            path,
            source,
        }),
    }
}

/// The job's function as a cluster publishes it (sealed under the job key).
#[derive(Serialize, Deserialize)]
struct Published {
    spec: FunctionSpec,
    /// The program's bytes, base64.
    program: String,
}

/// What a device knows of its job's function.
pub(super) enum Known {
    Function(FunctionSpec),
    NoFunction,
    /// A cluster device whose job's creator has not published it yet.
    NotYet,
}

fn cluster_aad(job: &str, what: &str) -> String {
    format!("device/{job}/{what}")
}

/// The job's function: this device's copy, else (in a cluster) the one its creator published,
/// copied in. With `publish`, the creating device of a cluster publishes its own (or that it
/// has none) if the cluster does not hold it yet.
pub(super) async fn known(device: &Device, publish: bool) -> Result<Known, GatewayError> {
    let dir = device.inner.segs.dir.clone();
    let local = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || read_spec(&dir))
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))??
    };
    let Some(link) = device.link() else {
        return Ok(local.map_or(Known::NoFunction, Known::Function));
    };
    let (job, codec) = (&device.inner.job, &device.inner.codec);
    let get = |key: &'static str| async move {
        match link.bucket.get(key).await {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(GatewayError::from(e)),
        }
    };
    if let Some(spec) = local {
        if publish && link.creator && get(CLUSTER_PROGRAM).await?.is_none() {
            let program_path = program_path(&dir, &spec);
            let bytes = tokio::fs::read(&program_path)
                .await
                .map_err(io("reading", &program_path))
                .map_err(GatewayError::from)?;
            let published = Published {
                spec: spec.clone(),
                program: base64::engine::general_purpose::STANDARD.encode(bytes),
            };
            let sealed = record::seal(codec, &cluster_aad(job, CLUSTER_PROGRAM), &published)?;
            link.bucket.put(CLUSTER_PROGRAM, sealed.into()).await?;
            tracing::info!(job = %job, "device cluster: the function on PUT is published");
        }
        return Ok(Known::Function(spec));
    }
    if let Some(sealed) = get(CLUSTER_PROGRAM).await? {
        let published: Published = record::open(codec, &cluster_aad(job, CLUSTER_PROGRAM), sealed)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&published.program)
            .map_err(|e| GatewayError::Corrupt(format!("the cluster's function: {e}").into()))?;
        if sha256_hex(&bytes) != published.spec.program_sha256 {
            return Err(GatewayError::Corrupt(
                "the cluster's function program does not match its SHA-256".into(),
            ));
        }
        let spec = published.spec;
        let stored = spec.clone();
        tokio::task::spawn_blocking(move || store_program(&dir, &stored, &bytes))
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))??;
        tracing::info!(job = %job, "device cluster: the function on PUT is copied from the cluster");
        return Ok(Known::Function(spec));
    }
    if link.creator {
        if publish {
            let sealed = record::seal(codec, &cluster_aad(job, CLUSTER_NONE), &())?;
            link.bucket.put(CLUSTER_NONE, sealed.into()).await?;
        }
        return Ok(Known::NoFunction);
    }
    Ok(match get(CLUSTER_NONE).await? {
        Some(_) => Known::NoFunction,
        None => Known::NotYet,
    })
}
