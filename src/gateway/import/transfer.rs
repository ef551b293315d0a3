//! The import: a sealed device's objects into the target bucket, verified, with a report.
//!
//! Each object is checked against its signed manifest entry, streamed from its authenticated
//! segments (SHA-256 over the whole object, MD5 per part as it goes up), committed only if the
//! SHA-256 equals the manifest's, then verified in the target: its size and ETag must equal the
//! ETag the sent bytes give (MD5, or MD5 of part MD5s for multipart), which the target computed
//! from what it received. Objects go up `parallel` at a time; memory is bounded by a few
//! segments and parts per object in flight.
//!
//! Invariant: an object is marked imported only after it verified in the target, so a rerun
//! after a crash or a lost network re-sends only objects that were in flight; an object whose
//! data, record or manifest entry does not verify is never committed to the target.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::catalog::jobs::JobRow;
use crate::config::{BucketConfig, Credentials, defaults};
use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, segment_stream};
use crate::gateway::import::etag::EtagHasher;
use crate::gateway::import::job::{JobState, job_bucket};
use crate::gateway::import::manifest::Entry;
use crate::gateway::import::parts::{
    Finished, Share, ShareImport, ShareSummary, assign, share_of_stray,
};
use crate::gateway::import::record::ObjectRecord;
use crate::gateway::import::report::{Failure, ReportRow, failures, write_reports};
use crate::store::device::{Md5, Sha256, multipart_etag};
use crate::store::keys::hex;
use crate::store::{Bucket, StoreError};

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Objects in flight at once.
    pub parallel: usize,
    pub data_dir: PathBuf,
    /// Target credentials; `Environment` reads the usual AWS variables.
    pub credentials: Credentials,
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Upload rate cap to the target, bytes per second.
    pub upload_limit: Option<u64>,
    /// The share of a cluster's data set this run imports (`parts.rs`); the whole on a
    /// standalone device.
    pub share: Share,
}

impl ImportOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            parallel: 8,
            data_dir,
            credentials: Credentials::Environment,
            multipart_threshold: defaults::MULTIPART_THRESHOLD,
            part_size: defaults::PART_SIZE,
            upload_limit: None,
            share: Share::WHOLE,
        }
    }
}

/// Live counters for a progress display (objects and bytes, overall including earlier runs).
#[derive(Debug, Default)]
pub struct ImportProgress {
    pub total_objects: AtomicU64,
    pub total_bytes: AtomicU64,
    pub done_objects: AtomicU64,
    pub done_bytes: AtomicU64,
    pub failed_objects: AtomicU64,
    /// Bytes already imported before this run started (so a rate counts this run only).
    pub resumed_bytes: AtomicU64,
    /// This run: bytes of parts an interrupted run had already sent, found in the target and
    /// not sent again.
    pub reused_bytes: AtomicU64,
}

impl ImportProgress {
    /// Sets the totals at the start of a run, counting what earlier runs finished as done.
    pub(crate) fn begin(&self, total: (u64, u64), done: (u64, u64), failed: u64) {
        self.total_objects.store(total.0, Ordering::Relaxed);
        self.total_bytes.store(total.1, Ordering::Relaxed);
        self.done_objects.store(done.0, Ordering::Relaxed);
        self.done_bytes.store(done.1, Ordering::Relaxed);
        self.resumed_bytes.store(done.1, Ordering::Relaxed);
        self.failed_objects.store(failed, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub job: String,
    pub target: String,
    pub state: String,
    pub objects: u64,
    pub bytes: u64,
    pub imported_objects: u64,
    pub imported_bytes: u64,
    pub failed_objects: u64,
    /// Whether the device data or manifest did not verify somewhere.
    pub tampered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_problem: Option<String>,
    /// This run: objects and bytes sent, PUT requests (parts counted one each), seconds.
    pub run_uploaded_objects: u64,
    pub run_uploaded_bytes: u64,
    pub run_put_requests: u64,
    /// Bytes of large objects' parts an interrupted run had sent, kept in the target and not
    /// sent again (included in `run_uploaded_bytes`, which counts whole objects).
    pub run_reused_bytes: u64,
    /// This run: objects an interrupted run had sent whole, found in the target and not sent
    /// again (a device cluster's share).
    pub run_found_objects: u64,
    pub run_seconds: f64,
    /// The share this run imported, on a device cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Shares not finished yet: the report covers this run's share only until they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_shares: Vec<String>,
    /// Every share of a device cluster's import and its runs (the merged report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareSummary>,
    pub failures: Vec<Failure>,
    /// The job's function on PUT and its outcome per object, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub functions: Option<crate::gateway::import::FunctionsReport>,
    #[serde(skip)]
    pub rows: Vec<ReportRow>,
}

/// Why one object did not import: a permanent verdict, or a failure that a rerun may clear.
enum Outcome {
    Imported,
    /// Already whole in the target (sent by an interrupted run), not sent again.
    Found,
    Rejected(String),
    Retry(String),
}

fn target_config(
    row: &JobRow,
    opts: &ImportOptions,
    root: bool,
) -> Result<BucketConfig, GatewayError> {
    let mut cfg = job_bucket(row, opts.credentials.clone(), root)?;
    cfg.multipart_threshold = opts.multipart_threshold;
    cfg.part_size = opts.part_size;
    Ok(cfg)
}

/// Imports a sealed (or interrupted) job. Returns the report, also written locally and to the
/// target's `imports/<job>/`.
pub async fn run_import(
    device: &Device,
    opts: &ImportOptions,
    progress: Arc<ImportProgress>,
) -> Result<ImportReport, GatewayError> {
    let catalog = device.inner.catalog.clone();
    let job = device.job_id().to_owned();
    let row = catalog
        .job(&job)?
        .ok_or_else(|| GatewayError::NotFound(format!("job {job}")))?;
    let state = JobState::parse(&row.state).unwrap_or(JobState::Failed);
    match state {
        JobState::Sealed | JobState::Importing | JobState::Failed => {}
        JobState::Created | JobState::Loading => {
            return Err(GatewayError::InvalidArgument(format!(
                "job {job} is {}; seal it first (`tidegate job seal`)",
                row.state
            )));
        }
        other => {
            return Err(GatewayError::InvalidArgument(format!(
                "job {job} is {}; there is nothing to import",
                other.as_str()
            )));
        }
    }
    let shares = if device.in_cluster() {
        Some(ShareImport::begin(device, opts.share).await?)
    } else if opts.share != Share::WHOLE {
        return Err(GatewayError::InvalidArgument(format!(
            "--share {} needs a device cluster: a standalone device imports its data set whole",
            opts.share
        )));
    } else {
        None
    };
    let target = Bucket::open(&target_config(&row, opts, false)?, false)?;
    let reports = Bucket::open(&target_config(&row, opts, true)?, false)?;
    target.check().await?;
    target.set_limits(opts.upload_limit, None);
    catalog.set_job_state(&job, JobState::Importing.as_str(), None)?;
    let started = Instant::now();

    let check = device.check_manifest();
    // A cluster's import states are its shares' parts; a standalone device's, its catalog.
    let states: HashMap<Vec<u8>, (String, u64)> = match &shares {
        Some(s) => s
            .imported
            .iter()
            .map(|id| (id.clone(), ("imported".to_owned(), 0)))
            .collect(),
        None => catalog
            .job_objects(&job)?
            .into_iter()
            .map(|r| (r.name_id, (r.state, r.size)))
            .collect(),
    };
    let share = opts.share;
    let owners = assign(&check.entries, share.count);
    let mine = |id: &[u8]| {
        share.count == 1
            || owners
                .get(id)
                .copied()
                .unwrap_or_else(|| share_of_stray(id, share.count))
                == share.index
    };
    if shares.is_some() {
        // A record this device's listing has not shown yet is fetched by name.
        let missing: Vec<String> = {
            let index = device.read_index();
            check
                .entries
                .iter()
                .filter(|(id, e)| mine(id) && !index.contains_key(&e.key))
                .map(|(_, e)| e.key.clone())
                .collect()
        };
        for key in missing {
            device.sync_key(&key).await?;
        }
    }
    let index: Vec<Arc<ObjectRecord>> = device.read_index().values().cloned().collect();
    let mut rows: Vec<ReportRow> = Vec::new();
    let mut work: Vec<(Vec<u8>, Arc<ObjectRecord>, Entry)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for rec in index {
        let id = crate::store::device::name_id(&device.inner.key, &rec.key).to_vec();
        seen.insert(id.clone());
        if !mine(&id) {
            continue;
        }
        let row = |status, reason: &str| ReportRow {
            key: rec.key.clone(),
            size: rec.size,
            sha256: rec.sha256.clone(),
            etag: rec.etag.clone(),
            status,
            reason: reason.to_owned(),
        };
        match check.entries.get(&id) {
            None => rows.push(row(
                "failed",
                "not in the signed device manifest, or its manifest entry was altered",
            )),
            Some(e) if e.size != rec.size || e.sha256 != rec.sha256 || e.etag != rec.etag => {
                rows.push(row("failed", "differs from its signed manifest entry"));
            }
            Some(_) if states.get(&id).is_some_and(|(s, _)| s == "imported") => {
                rows.push(row("imported", ""));
            }
            Some(e) => work.push((id, rec.clone(), e.clone())),
        }
    }
    for (id, entry) in &check.entries {
        if !seen.contains(id) && mine(id) {
            rows.push(ReportRow {
                key: entry.key.clone(),
                size: entry.size,
                sha256: entry.sha256.clone(),
                etag: entry.etag.clone(),
                status: "failed",
                reason: "in the signed device manifest but its data or record on the device \
                         does not verify"
                    .into(),
            });
        }
    }
    for (id, (_, size)) in &states {
        if shares.is_none() && !seen.contains(id) && !check.entries.contains_key(id) {
            rows.push(ReportRow {
                key: format!("<unreadable record {}>", hex(id)),
                size: *size,
                sha256: String::new(),
                etag: String::new(),
                status: "failed",
                reason: "its record on the device does not verify and the manifest does not \
                         name it"
                    .into(),
            });
        }
    }
    for failed in rows.iter().filter(|r| r.status == "failed") {
        if let Some(id) = check
            .entries
            .iter()
            .find(|(_, e)| e.key == failed.key)
            .map(|(id, _)| id.clone())
        {
            let _ = catalog.set_job_object_state(&job, &id, "failed", Some(&failed.reason));
        }
    }

    let total_bytes: u64 =
        rows.iter().map(|r| r.size).sum::<u64>() + work.iter().map(|(_, r, _)| r.size).sum::<u64>();
    let already: Vec<&ReportRow> = rows.iter().filter(|r| r.status == "imported").collect();
    progress.begin(
        ((rows.len() + work.len()) as u64, total_bytes),
        (
            already.len() as u64,
            already.iter().map(|r| r.size).sum::<u64>(),
        ),
        rows.iter().filter(|r| r.status == "failed").count() as u64,
    );
    let puts_before = target.traffic().puts;

    let recheck = shares.as_ref().is_some_and(|s| s.resumed);
    let results: Vec<(Vec<u8>, Arc<ObjectRecord>, Outcome)> = futures::stream::iter(work)
        .map(|(id, rec, _entry)| {
            let target = &target;
            let progress = progress.clone();
            let segs = device.inner.segs.clone();
            let catalog = &catalog;
            let job = &job;
            let in_cluster = shares.is_some();
            async move {
                let outcome = if recheck && found_in_target(target, segs.clone(), &rec).await {
                    progress.done_bytes.fetch_add(rec.size, Ordering::Relaxed);
                    Outcome::Found
                } else if rec.size >= target.multipart_threshold()
                    && target.can_resume_uploads()
                    && !in_cluster
                {
                    // The upload ids of resumable uploads are kept in this device's catalog:
                    // a cluster's share may resume on another device, so there an object is
                    // sent whole again unless `found_in_target` finds it complete.
                    let resume = Resume {
                        catalog,
                        job,
                        id: &id,
                    };
                    import_resumable(target, &resume, segs, &rec, &progress).await
                } else {
                    import_one(target, segs, &rec, &progress).await
                };
                match &outcome {
                    Outcome::Imported | Outcome::Found => {
                        progress.done_objects.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Rejected(_) | Outcome::Retry(_) => {
                        progress.failed_objects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (id, rec, outcome)
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .then(|(id, rec, outcome)| {
            let catalog = catalog.clone();
            let job = job.clone();
            let shares = shares.as_ref();
            let target = &target;
            async move {
                if let Some(shares) = shares {
                    let puts = target.traffic().puts - puts_before;
                    let found = matches!(outcome, Outcome::Found);
                    if let Err(e) = shares.note(&outcome_row(&rec, &outcome), found, puts).await {
                        tracing::warn!(job = %job, error = %e, "recording the share's progress");
                    }
                    return (id, rec, outcome);
                }
                let (state, reason) = match &outcome {
                    Outcome::Imported | Outcome::Found => ("imported", None),
                    Outcome::Rejected(r) => ("failed", Some(r.as_str())),
                    Outcome::Retry(r) => ("stored", Some(r.as_str())),
                };
                if let Err(e) = catalog.set_job_object_state(&job, &id, state, reason) {
                    tracing::warn!(job = %job, error = %e, "recording an object's import state");
                }
                (id, rec, outcome)
            }
        })
        .collect()
        .await;

    let mut run_objects = 0;
    let mut run_bytes = 0;
    let mut run_found = 0;
    for (_, rec, outcome) in results {
        match outcome {
            Outcome::Imported => {
                run_objects += 1;
                run_bytes += rec.size;
            }
            Outcome::Found => run_found += 1,
            Outcome::Rejected(_) | Outcome::Retry(_) => {}
        }
        rows.push(outcome_row(&rec, &outcome));
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let run_puts = target.traffic().puts - puts_before;
    // A cluster's share: the report is the merge of every share's part once all are complete.
    let (rows, summaries, pending) = match &shares {
        None => (rows, Vec::new(), Vec::new()),
        Some(s) => match s.finish(&rows, run_puts).await? {
            Finished::Merged(all, summaries) => (all, summaries, Vec::new()),
            Finished::Pending(pending) => (rows, Vec::new(), pending),
        },
    };
    let failures = failures(&rows);
    let imported: Vec<&ReportRow> = rows.iter().filter(|r| r.status == "imported").collect();
    let tampered = check.tampered()
        || device.unreadable_records() > 0
        || failures
            .iter()
            .any(|f| !f.reason.contains("a rerun retries it"));
    let state = if !pending.is_empty() {
        JobState::Importing
    } else if failures.is_empty() {
        JobState::Complete
    } else {
        JobState::Failed
    };
    let mut report = ImportReport {
        job: job.clone(),
        target: row.bucket_url.clone(),
        state: state.as_str().to_owned(),
        objects: rows.len() as u64,
        bytes: rows.iter().map(|r| r.size).sum(),
        imported_objects: imported.len() as u64,
        imported_bytes: imported.iter().map(|r| r.size).sum(),
        failed_objects: failures.len() as u64,
        tampered,
        manifest_problem: check.problem.clone(),
        run_uploaded_objects: run_objects,
        run_uploaded_bytes: run_bytes,
        run_put_requests: run_puts,
        run_reused_bytes: progress.reused_bytes.load(Ordering::Relaxed),
        run_found_objects: run_found,
        run_seconds: started.elapsed().as_secs_f64(),
        share: shares.as_ref().map(|s| s.share.to_string()),
        pending_shares: pending,
        shares: summaries,
        failures,
        functions: crate::gateway::import::functions::report(device).await?,
        rows: Vec::new(),
    };
    report.rows = rows;
    if !report.pending_shares.is_empty() {
        // This share is done; the last share to finish writes the job's report.
        return Ok(report);
    }
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    write_reports(
        &opts.data_dir,
        &report.job,
        json,
        &report.rows,
        Some((&reports, "imports")),
    )
    .await?;
    let reason = (!report.failures.is_empty()).then(|| {
        format!(
            "{} of {} objects not imported{}",
            report.failed_objects,
            report.objects,
            if report.tampered {
                " (device data or manifest does not verify)"
            } else {
                ""
            }
        )
    });
    catalog.set_job_state(&job, state.as_str(), reason.as_deref())?;
    Ok(report)
}

/// One object's row in the report.
fn outcome_row(rec: &ObjectRecord, outcome: &Outcome) -> ReportRow {
    let (status, reason) = match outcome {
        Outcome::Imported | Outcome::Found => ("imported", String::new()),
        Outcome::Rejected(r) => ("failed", r.clone()),
        Outcome::Retry(r) => ("failed", format!("{r} (a rerun retries it)")),
    };
    ReportRow {
        key: rec.key.clone(),
        size: rec.size,
        sha256: rec.sha256.clone(),
        etag: rec.etag.clone(),
        status,
        reason,
    }
}

/// Whether the target already holds the object whole: the size it lists and its ETag equal
/// those of the device's data as this import would send it (read and hashed here; nothing is
/// sent), and the data matches the manifest's SHA-256. Any failure answers no (it is sent).
async fn found_in_target(
    target: &Bucket,
    segs: Arc<crate::gateway::import::segments::SegmentStore>,
    rec: &Arc<ObjectRecord>,
) -> bool {
    let Ok(Some(head)) = target.head_object(&rec.key).await else {
        return false;
    };
    if head.size != rec.size {
        return false;
    }
    let mut etag = if rec.size >= target.multipart_threshold() {
        EtagHasher::uniform(target.part_size())
    } else {
        EtagHasher::single()
    };
    let mut sha = Sha256::default();
    let mut stream = segment_stream(segs, rec.clone(), 0..rec.size);
    while let Some(piece) = stream.next().await {
        let Ok(piece) = piece else { return false };
        sha.update(&piece);
        etag.update(piece);
    }
    hex(&sha.finish()) == rec.sha256
        && head.etag.as_deref().map(|e| e.trim_matches('"')) == Some(etag.finish().as_str())
}

async fn import_one(
    target: &Bucket,
    segs: Arc<crate::gateway::import::segments::SegmentStore>,
    rec: &Arc<ObjectRecord>,
    progress: &ImportProgress,
) -> Outcome {
    let mut upload = match target
        .start_upload(
            &rec.key,
            rec.size,
            rec.content_type.as_deref(),
            &rec.metadata,
        )
        .await
    {
        Ok(u) => u,
        Err(e) => return transient(e),
    };
    let mut etag = if upload.is_multipart() {
        EtagHasher::uniform(target.part_size())
    } else {
        EtagHasher::single()
    };
    let mut sha = Sha256::default();
    let mut sent = 0u64;
    let mut stream = segment_stream(segs, rec.clone(), 0..rec.size);
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                upload.abort().await;
                return Outcome::Rejected(format!("device data does not verify: {e}"));
            }
        };
        sha.update(&piece);
        etag.update(piece.clone());
        let len = piece.len() as u64;
        if let Err(e) = upload.write(piece).await {
            upload.abort().await;
            progress.done_bytes.fetch_sub(sent, Ordering::Relaxed);
            return transient(e);
        }
        sent += len;
        progress.done_bytes.fetch_add(len, Ordering::Relaxed);
    }
    if hex(&sha.finish()) != rec.sha256 {
        upload.abort().await;
        progress.done_bytes.fetch_sub(sent, Ordering::Relaxed);
        return Outcome::Rejected(
            "device data does not match the SHA-256 in the signed manifest".into(),
        );
    }
    if let Err(e) = upload.finish().await {
        progress.done_bytes.fetch_sub(sent, Ordering::Relaxed);
        return transient(e);
    }
    let expected = etag.finish();
    match verify(target, rec, &expected).await {
        Ok(None) => Outcome::Imported,
        Ok(Some(reason)) => Outcome::Rejected(reason),
        Err(e) => transient(e),
    }
}

/// Where an import keeps the upload id of a large object's multipart upload.
struct Resume<'a> {
    catalog: &'a crate::catalog::Catalog,
    job: &'a str,
    id: &'a [u8],
}

fn transient(e: StoreError) -> Outcome {
    if e.is_transient() {
        Outcome::Retry(e.to_string())
    } else {
        Outcome::Rejected(e.to_string())
    }
}

/// Imports a large object as a multipart upload whose id is kept in the catalog: a run that
/// finds one continues it, sending only the parts the target does not hold with the same MD5
/// (every part is still read from the device and hashed: the SHA-256 over the whole object is
/// what commits it). A failure to reach the target keeps the upload for the next run; device
/// data that does not verify aborts it.
async fn import_resumable(
    target: &Bucket,
    resume: &Resume<'_>,
    segs: Arc<crate::gateway::import::segments::SegmentStore>,
    rec: &Arc<ObjectRecord>,
    progress: &ImportProgress,
) -> Outcome {
    let part_size = target.part_size().max(1);
    let catalog_err = |e: crate::catalog::CatalogError| Outcome::Retry(e.to_string());
    let mut held: HashMap<u32, (u64, String)> = HashMap::new();
    let previous = match resume.catalog.target_upload(resume.job, resume.id) {
        Ok(p) => p,
        Err(e) => return catalog_err(e),
    };
    let mut upload_id = None;
    if let Some((id, size)) = previous {
        if size == part_size {
            match target.resumable_parts(&rec.key, &id).await {
                Ok(Some(parts)) => {
                    held = parts
                        .into_iter()
                        .map(|p| (p.number, (p.size, p.etag)))
                        .collect();
                    upload_id = Some(id);
                }
                // Completed, aborted or expired: start over.
                Ok(None) => {}
                Err(e) => return transient(e),
            }
        } else {
            target.abort_resumable(&rec.key, &id).await;
        }
    }
    let upload_id = match upload_id {
        Some(id) => id,
        None => {
            let id = match target
                .begin_resumable(&rec.key, rec.content_type.as_deref(), &rec.metadata)
                .await
            {
                Ok(id) => id,
                Err(e) => return transient(e),
            };
            if let Err(e) = resume
                .catalog
                .set_target_upload(resume.job, resume.id, &id, part_size)
            {
                target.abort_resumable(&rec.key, &id).await;
                return catalog_err(e);
            }
            id
        }
    };
    let abort = || async {
        target.abort_resumable(&rec.key, &upload_id).await;
        if let Err(e) = resume.catalog.clear_target_upload(resume.job, resume.id) {
            tracing::warn!(error = %e, "forgetting an aborted upload");
        }
    };

    let mut sha = Sha256::default();
    let mut part_md5s: Vec<[u8; 16]> = Vec::new();
    let mut etags: Vec<Option<String>> = Vec::new();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut buf = bytes::BytesMut::new();
    let mut counted = 0u64;
    let mut stream = segment_stream(segs, rec.clone(), 0..rec.size);
    let mut ended = false;
    while !ended {
        // Fill one part (the last one may be shorter, and an empty object has one empty part).
        while (buf.len() as u64) < part_size {
            match stream.next().await {
                Some(Ok(piece)) => {
                    sha.update(&piece);
                    buf.extend_from_slice(&piece);
                }
                Some(Err(e)) => {
                    abort().await;
                    progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
                    return Outcome::Rejected(format!("device data does not verify: {e}"));
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if buf.is_empty() && !part_md5s.is_empty() {
            break;
        }
        let take = usize::try_from(part_size)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let part = buf.split_to(take).freeze();
        let mut md5 = Md5::default();
        md5.update(&part);
        let digest = md5.finish();
        part_md5s.push(digest);
        let number = u32::try_from(part_md5s.len()).unwrap_or(u32::MAX);
        let len = part.len() as u64;
        counted += len;
        progress.done_bytes.fetch_add(len, Ordering::Relaxed);
        match held.get(&number) {
            Some((size, etag)) if *size == len && *etag == hex(&digest) => {
                progress.reused_bytes.fetch_add(len, Ordering::Relaxed);
                etags.push(Some(etag.clone()));
            }
            _ => {
                etags.push(None);
                let upload_id = &upload_id;
                in_flight.push_back(async move {
                    let etag = target
                        .send_part(&rec.key, upload_id, number, part, &digest)
                        .await?;
                    Ok::<_, StoreError>((number, etag))
                });
                if in_flight.len() >= crate::store::PART_CONCURRENCY {
                    match in_flight.next().await {
                        Some(Ok((n, etag))) => etags[n as usize - 1] = Some(etag),
                        Some(Err(e)) => {
                            progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
                            return transient(e);
                        }
                        None => {}
                    }
                }
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        match r {
            Ok((n, etag)) => etags[n as usize - 1] = Some(etag),
            Err(e) => {
                progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
                return transient(e);
            }
        }
    }
    if hex(&sha.finish()) != rec.sha256 {
        abort().await;
        progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
        return Outcome::Rejected(
            "device data does not match the SHA-256 in the signed manifest".into(),
        );
    }
    let etags: Vec<String> = etags.into_iter().map(Option::unwrap_or_default).collect();
    if let Err(e) = target
        .complete_resumable(&rec.key, &upload_id, &etags)
        .await
    {
        progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
        return transient(e);
    }
    if let Err(e) = resume.catalog.clear_target_upload(resume.job, resume.id) {
        tracing::warn!(error = %e, "forgetting a completed upload");
    }
    match verify(target, rec, &multipart_etag(&part_md5s)).await {
        Ok(None) => Outcome::Imported,
        Ok(Some(reason)) => Outcome::Rejected(reason),
        Err(e) => transient(e),
    }
}

/// Checks the object in the target: size and ETag; where the store gives no content ETag
/// (a `file://` target), the bytes are read back and hashed instead.
async fn verify(
    target: &Bucket,
    rec: &ObjectRecord,
    expected_etag: &str,
) -> Result<Option<String>, StoreError> {
    let Some(head) = target.head_object(&rec.key).await? else {
        return Ok(Some("not found in the target after upload".into()));
    };
    if head.size != rec.size {
        return Ok(Some(format!(
            "the target holds {} bytes, the manifest says {}",
            head.size, rec.size
        )));
    }
    let etag = head.etag.as_deref().unwrap_or("").trim_matches('"');
    if etag == expected_etag {
        return Ok(None);
    }
    if target.keeps_user_metadata() {
        return Ok(Some(format!(
            "the target's ETag {etag} is not {expected_etag}, the ETag of the data sent"
        )));
    }
    let data = target.read_object(&rec.key, 0..rec.size).await?;
    let mut sha = Sha256::default();
    sha.update(&data);
    if hex(&sha.finish()) == rec.sha256 {
        Ok(None)
    } else {
        Ok(Some(
            "the target's bytes do not match the manifest's SHA-256".into(),
        ))
    }
}
