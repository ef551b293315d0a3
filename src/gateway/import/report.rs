//! Job reports: `report.json` (counts and failures, shaped by each job kind) and `report.csv`
//! (one row per object), written under the job's device directory and, where the job has a
//! bucket to write to, under `<base>/<job>/` at that bucket's root.
//!
//! Invariant: the local copy is written first, so a bucket that refuses the report still
//! leaves one on the device.

use serde::Serialize;

use crate::gateway::GatewayError;
use crate::gateway::import::device::device_dir;
use crate::store::Bucket;

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub key: String,
    pub size: u64,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ReportRow {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub etag: String,
    pub status: &'static str,
    pub reason: String,
}

/// The failed rows, as the report lists them.
pub(crate) fn failures(rows: &[ReportRow]) -> Vec<Failure> {
    rows.iter()
        .filter(|r| r.status == "failed")
        .map(|r| Failure {
            key: r.key.clone(),
            size: r.size,
            reason: r.reason.clone(),
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub(crate) fn report_csv(rows: &[ReportRow]) -> String {
    let mut out = String::from("key,size,sha256,etag,status,reason\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            csv_field(&r.key),
            r.size,
            r.sha256,
            csv_field(&r.etag),
            r.status,
            csv_field(&r.reason)
        ));
    }
    out
}

/// Writes `json` and the rows' CSV to `DATA_DIR/device/<job>/`, then, with `bucket`, to
/// `<base>/<job>/report.json|csv` in it.
pub(crate) async fn write_reports(
    data_dir: &std::path::Path,
    job: &str,
    json: Vec<u8>,
    rows: &[ReportRow],
    bucket: Option<(&Bucket, &str)>,
) -> Result<(), GatewayError> {
    let csv = report_csv(rows).into_bytes();
    let dir = device_dir(data_dir, job);
    let io = |e: std::io::Error| {
        GatewayError::Internal(format!("writing the report in {}: {e}", dir.display()).into())
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(dir.join("report.json"), &json).map_err(io)?;
    std::fs::write(dir.join("report.csv"), &csv).map_err(io)?;
    let Some((bucket, base)) = bucket else {
        return Ok(());
    };
    for (name, body, t) in [
        ("report.json", json, "application/json"),
        ("report.csv", csv, "text/csv"),
    ] {
        let key = format!("{base}/{job}/{name}");
        let mut up = bucket
            .start_upload(&key, body.len() as u64, Some(t), &[])
            .await?;
        up.write(bytes::Bytes::from(body)).await?;
        up.finish().await?;
    }
    Ok(())
}
