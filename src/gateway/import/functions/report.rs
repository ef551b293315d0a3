//! The function section of the import report: the job's function and, for every object it
//! applies to as stored, the outcome of its last run (or `not_run`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::outcomes::{Outcome, OutcomeStatus, Outcomes};
use super::{Known, known, matching};
use crate::gateway::GatewayError;
use crate::gateway::import::device::Device;

/// The function section of the import report.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionsReport {
    pub program: PathBuf,
    pub program_sha256: String,
    pub pattern: String,
    pub timeout_seconds: f64,
    pub memory_bytes: u64,
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub errors: u64,
    pub not_run: u64,
    /// One per object the function applies to, by key: its last run on the object as stored.
    pub outcomes: Vec<Outcome>,
}

/// The job's function outcomes for the objects it holds, or `None` without a function. In a
/// cluster the outcomes every device recorded, for the cluster's data set.
pub(crate) async fn report(device: &Device) -> Result<Option<FunctionsReport>, GatewayError> {
    let Known::Function(spec) = known(device, false).await? else {
        return Ok(None);
    };
    let recs = matching(device, &spec.pattern);
    let mut last = Outcomes::of(device).current(&recs).await?;
    let outcomes: Vec<Outcome> = recs
        .iter()
        .map(|rec| {
            last.remove(&rec.key).unwrap_or_else(|| Outcome {
                key: rec.key.clone(),
                sha256: rec.sha256.clone(),
                size: rec.size,
                status: OutcomeStatus::NotRun,
                reason: "no run recorded for the object as stored".to_owned(),
                derived: Vec::new(),
                metadata: Vec::new(),
                seconds: 0.0,
            })
        })
        .collect();
    let count = |s: OutcomeStatus| outcomes.iter().filter(|o| o.status == s).count() as u64;
    Ok(Some(FunctionsReport {
        program: spec.source.clone(),
        program_sha256: spec.program_sha256.clone(),
        pattern: spec.pattern.clone(),
        timeout_seconds: Duration::from_millis(spec.timeout_ms).as_secs_f64(),
        memory_bytes: spec.memory_bytes,
        ok: count(OutcomeStatus::Ok),
        failed: count(OutcomeStatus::Failed),
        timed_out: count(OutcomeStatus::Timeout),
        errors: count(OutcomeStatus::Error),
        not_run: count(OutcomeStatus::NotRun),
        outcomes,
    }))
}
