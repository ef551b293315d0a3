//! Where function outcomes are kept: one sealed record per run.
//!
//! On a standalone device, the outcome log: each run appended to `DEVICE_DIR/function-outcomes`
//! and fsynced before the run counts as done. Each record is a 4-byte little-endian length and
//! a store frame (AAD `device/<job>/function-outcome`) holding the outcome as JSON, so the log
//! names no object in the clear. In a device cluster, the cluster's bucket: one sealed object
//! per object version run, `fn/outcome/<version id>`, where the version id is keyed by the job
//! key over the object's name and SHA-256 (so the bucket learns neither), and a listing alone
//! tells which versions have an outcome. Invariant: a torn last record (a crash mid-append)
//! is ignored, its object's function runs again; a record that does not open is counted, never
//! guessed at.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::gateway::import::device::Device;
use crate::gateway::import::record::{self, ObjectRecord};
use crate::store::{Bucket, Codec, MasterKey, StoreError};

const FILE: &str = "function-outcomes";
/// A cluster's outcome objects.
const CLUSTER_PREFIX: &str = "fn/outcome/";
/// Outcome objects fetched at once for a report.
const FETCHES: usize = 16;
/// A record larger than this is not one we wrote (outcomes are small: no object data).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// How one run ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// Exit status 0; its derived objects and metadata are stored.
    Ok,
    /// A non-zero exit status, a killed program, a protocol error or a refused directive.
    Failed,
    /// Killed by the device at its timeout.
    Timeout,
    /// The sandbox did not start or the object could not be read.
    Error,
    /// No run is recorded for the object as it is (only in reports).
    NotRun,
}

/// One run's outcome, as the job report lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub key: String,
    /// The object version the function saw.
    pub sha256: String,
    pub size: u64,
    pub status: OutcomeStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Keys of the derived objects stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived: Vec<String>,
    /// Names of the user metadata added to the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutcomeLogError {
    #[error("{action} the function outcome log {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing a function outcome")]
    Seal(#[source] crate::store::frame::FrameError),
    #[error("encoding a function outcome")]
    Encode(#[source] serde_json::Error),
}

#[derive(Clone)]
pub struct OutcomeLog {
    path: PathBuf,
    codec: Codec,
    aad: String,
}

impl OutcomeLog {
    pub fn new(device_dir: &Path, job: &str, codec: Codec) -> Self {
        Self {
            path: device_dir.join(FILE),
            codec,
            aad: format!("device/{job}/function-outcome"),
        }
    }

    fn io(&self, action: &'static str) -> impl Fn(std::io::Error) -> OutcomeLogError + '_ {
        move |source| OutcomeLogError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    /// Every record that opens, in the order written, and how many did not. Blocking I/O.
    pub fn read(&self) -> Result<(Vec<Outcome>, u64), OutcomeLogError> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(self.io("reading")(e)),
        };
        let mut out = Vec::new();
        let mut unreadable = 0;
        let mut rest = data.as_slice();
        while let Some((len, body)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_RECORD_BYTES {
                unreadable += 1;
                break;
            }
            let Some((frame, after)) = body.split_at_checked(len) else {
                break; // torn by a crash mid-append
            };
            rest = after;
            match self
                .codec
                .open(&self.aad, frame.to_vec())
                .ok()
                .and_then(|plain| serde_json::from_slice::<Outcome>(&plain).ok())
            {
                Some(o) => out.push(o),
                None => unreadable += 1,
            }
        }
        Ok((out, unreadable))
    }

    /// Appends `outcome` and fsyncs it. Blocking I/O; one `write` per record with O_APPEND,
    /// so concurrent appenders do not interleave.
    pub fn append(&self, outcome: &Outcome) -> Result<(), OutcomeLogError> {
        let json = serde_json::to_vec(outcome).map_err(OutcomeLogError::Encode)?;
        let frame = self
            .codec
            .seal(&self.aad, &json)
            .map_err(OutcomeLogError::Seal)?;
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let mut record = Vec::with_capacity(4 + frame.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&frame);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io("opening"))?;
        f.write_all(&record).map_err(self.io("appending to"))?;
        f.sync_data().map_err(self.io("syncing"))
    }
}

/// A device's outcomes: its own log, or its cluster's outcome objects.
#[derive(Clone)]
pub(super) enum Outcomes {
    Log(OutcomeLog),
    Cluster {
        bucket: Arc<Bucket>,
        key: MasterKey,
        codec: Codec,
        job: String,
    },
}

impl Outcomes {
    pub(super) fn of(device: &Device) -> Self {
        let inner = &device.inner;
        match device.link() {
            Some(link) => Self::Cluster {
                bucket: link.bucket.clone(),
                key: inner.key.clone(),
                codec: inner.codec.clone(),
                job: inner.job.clone(),
            },
            None => Self::Log(OutcomeLog::new(
                &inner.segs.dir,
                &inner.job,
                inner.codec.clone(),
            )),
        }
    }

    /// The object name of the outcome of `key` at content `sha256` in a cluster.
    fn object(key: &MasterKey, name: &str, sha256: &str) -> String {
        let id = crate::store::device::name_id(key, &format!("{sha256}\n{name}"));
        format!("{CLUSTER_PREFIX}{}", crate::store::keys::hex(&id))
    }

    fn aad(job: &str, object: &str) -> String {
        format!("device/{job}/function-outcome/{object}")
    }

    /// Records one run's outcome; once this returns, the run counts as done.
    pub(super) async fn record(&self, outcome: &Outcome) -> Result<(), GatewayError> {
        match self {
            Self::Log(log) => {
                let (log, outcome) = (log.clone(), outcome.clone());
                tokio::task::spawn_blocking(move || log.append(&outcome))
                    .await
                    .map_err(|e| GatewayError::Internal(Box::new(e)))?
                    .map_err(|e| super::FunctionError::Log(e).into())
            }
            Self::Cluster {
                bucket,
                key,
                codec,
                job,
            } => {
                let object = Self::object(key, &outcome.key, &outcome.sha256);
                let sealed = record::seal(codec, &Self::aad(job, &object), outcome)?;
                Ok(bucket.put(&object, sealed.into()).await?)
            }
        }
    }

    /// Key → SHA-256 of the object versions with a recorded outcome (in a cluster, among
    /// `recs`), and how many records did not open.
    pub(super) async fn done(
        &self,
        recs: &[Arc<ObjectRecord>],
    ) -> Result<(HashMap<String, String>, u64), GatewayError> {
        match self {
            Self::Log(log) => {
                let (logged, unreadable) = read_log(log).await?;
                Ok((
                    logged.into_iter().map(|o| (o.key, o.sha256)).collect(),
                    unreadable,
                ))
            }
            Self::Cluster { bucket, key, .. } => {
                let listed: HashSet<String> = bucket
                    .list(CLUSTER_PREFIX)
                    .await?
                    .into_iter()
                    .map(|o| o.key)
                    .collect();
                let done = recs
                    .iter()
                    .filter(|r| listed.contains(&Self::object(key, &r.key, &r.sha256)))
                    .map(|r| (r.key.clone(), r.sha256.clone()))
                    .collect();
                Ok((done, 0))
            }
        }
    }

    /// The last recorded outcome of each of `recs` as it is now (a version never run, or run
    /// only in an earlier version, is absent).
    pub(super) async fn current(
        &self,
        recs: &[Arc<ObjectRecord>],
    ) -> Result<HashMap<String, Outcome>, GatewayError> {
        let found: Vec<Outcome> = match self {
            Self::Log(log) => {
                let mut last = HashMap::new();
                for o in read_log(log).await?.0 {
                    last.insert(o.key.clone(), o);
                }
                recs.iter().filter_map(|r| last.remove(&r.key)).collect()
            }
            Self::Cluster {
                bucket,
                key,
                codec,
                job,
            } => {
                let fetched: Vec<Result<Option<Outcome>, GatewayError>> =
                    futures::stream::iter(recs)
                        .map(|r| async move {
                            let object = Self::object(key, &r.key, &r.sha256);
                            match bucket.get(&object).await {
                                Ok(sealed) => Ok(record::open::<Outcome>(
                                    codec,
                                    &Self::aad(job, &object),
                                    sealed.to_vec(),
                                )
                                .inspect_err(|e| {
                                    tracing::warn!(job = %job, error = %e, "a function outcome in the cluster does not verify; reported as not run");
                                })
                                .ok()),
                                Err(StoreError::NotFound { .. }) => Ok(None),
                                Err(e) => Err(e.into()),
                            }
                        })
                        .buffer_unordered(FETCHES)
                        .collect()
                        .await;
                let mut found = Vec::new();
                for f in fetched {
                    found.extend(f?);
                }
                found
            }
        };
        let now: HashMap<&str, &str> = recs
            .iter()
            .map(|r| (r.key.as_str(), r.sha256.as_str()))
            .collect();
        Ok(found
            .into_iter()
            .filter(|o| now.get(o.key.as_str()) == Some(&o.sha256.as_str()))
            .map(|o| (o.key.clone(), o))
            .collect())
    }
}

async fn read_log(log: &OutcomeLog) -> Result<(Vec<Outcome>, u64), GatewayError> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.read())
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?
        .map_err(|e| super::FunctionError::Log(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(key: &str, status: OutcomeStatus) -> Outcome {
        Outcome {
            key: key.into(),
            sha256: "00".into(),
            size: 1,
            status,
            reason: String::new(),
            derived: vec![format!("{key}.lines")],
            metadata: Vec::new(),
            seconds: 0.5,
        }
    }

    #[test]
    fn records_read_back_in_order_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new(crate::store::MasterKey::from_bytes([7; 32]));
        let log = OutcomeLog::new(dir.path(), "J1", codec.clone());
        assert_eq!(log.read().unwrap(), (Vec::new(), 0));
        let a = outcome("a.txt", OutcomeStatus::Ok);
        let b = outcome("b.txt", OutcomeStatus::Timeout);
        log.append(&a).unwrap();
        log.append(&b).unwrap();
        assert_eq!(log.read().unwrap(), (vec![a.clone(), b.clone()], 0));
        // A torn append: the records before it stand.
        let path = dir.path().join(FILE);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(log.read().unwrap(), (vec![a.clone(), b.clone()], 0));
        // Another job's key (or an edited record) does not open.
        let other = OutcomeLog::new(dir.path(), "J2", codec);
        assert_eq!(other.read().unwrap(), (Vec::new(), 2));
        assert!(!String::from_utf8_lossy(&data).contains("a.txt"));
    }
}
