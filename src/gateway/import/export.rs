//! The export: a source bucket's objects copied onto the device, verified, sealed for clients.
//!
//! `job export` lists the source prefix and copies every object not yet on the device:
//! `parallel` objects downloading at a time (a one-range object leaves its slot to the next
//! while it is sealed and committed), each read by ranged GETs of one segment's length (the first
//! range also brings the content type and user metadata, so no HEAD is needed). One object is
//! not one ordered stream: up to `RANGES_AHEAD` of its GETs run at once as their own tasks, and
//! their bytes go to the segment writer in range order (which hashes them in order on its own
//! task and seals segments in parallel beside it). A copied object is verified against the source before its
//! record is committed: the MD5 of the bytes against a single-part ETag; for a multipart ETag,
//! the MD5 of the part MD5s cut at the source's own part lengths (HeadObject `partNumber`); a
//! source that cannot tell its part lengths leaves the ETag recorded as-is and the object
//! counted as `etag_unverified` (its size still checked). When every object is on the device,
//! the data set is sealed into the signed device manifest and the job becomes READY; clients
//! then read it over the device's S3 endpoint, read-only.
//!
//! Invariant: an object is on the device (committed) only once it verified; a rerun after a
//! crash skips every committed object whose size and ETag still match the source listing and
//! copies the rest in full (the segments of interrupted copies are removed when the device
//! opens). Records are committed in groups (`Commits`), and a copy counts only once its group
//! committed. Memory: ranges downloaded and not yet taken by a writer stay within a budget of
//! `2 × parallel` segments' worth of bytes over all objects, plus what each writer holds while
//! hashing and sealing (a few segments per object being copied).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::Catalog;
use crate::config::Credentials;
use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, segment_stream};
use crate::gateway::import::etag::{EtagHasher, is_md5, multipart_parts};
use crate::gateway::import::job::{JobKind, JobManifestFile, JobState, job_bucket, open_job};
use crate::gateway::import::record::{ExpectedDigests, ObjectRecord, Segment};
use crate::gateway::import::report::{Failure, ReportRow, failures, write_reports};
use crate::gateway::import::segments::{DigestMismatch, SEGMENT_BYTES};
use crate::gateway::import::transfer::ImportProgress;
use crate::store::keys::{hex, parse_hex};
use crate::store::objects::ObjectHead;
use crate::store::{Bucket, StoreError};

/// Ranged GETs of one object in flight at once: they download while earlier ranges are hashed
/// and sealed, so one large object streams at the source's pace even when it is the last one
/// left (tuned with `benches/device_export.sh`; docs/testing.md has the figures).
const RANGES_AHEAD: usize = 6;

/// Copies under way per download lane: a small object's copy leaves its lane once downloaded,
/// so the next download starts while it is sealed, fsynced and committed.
const COPIES_PER_LANE: usize = 4;

/// Records committed in one catalog transaction at most.
const COMMIT_BATCH: usize = 64;

/// The unit in which fetched bytes are counted against the export's memory budget: small
/// enough that a small object takes little of it, so a large one can keep its ranges in flight.
const BUDGET_UNIT_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Objects copied at once.
    pub parallel: usize,
    pub data_dir: PathBuf,
    /// Source credentials; `Environment` reads the usual AWS variables.
    pub credentials: Credentials,
}

impl ExportOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            parallel: 8,
            data_dir,
            credentials: Credentials::Environment,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub job: String,
    pub source: String,
    pub state: String,
    /// Objects and bytes the source listing holds.
    pub objects: u64,
    pub bytes: u64,
    /// On the device and verified (this run's and earlier runs').
    pub exported_objects: u64,
    pub exported_bytes: u64,
    pub failed_objects: u64,
    /// Objects copied this run whose multipart ETag the source could not help check (their
    /// size was checked; the ETag is recorded as the source gave it).
    pub run_etag_unverified: u64,
    /// Objects from an earlier run no longer in the source, removed from the device.
    pub removed_objects: u64,
    /// This run: objects copied, objects skipped as already on the device, bytes copied, GET
    /// requests, seconds.
    pub run_copied_objects: u64,
    pub run_skipped_objects: u64,
    pub run_copied_bytes: u64,
    pub run_get_requests: u64,
    pub run_seconds: f64,
    pub failures: Vec<Failure>,
    #[serde(skip)]
    pub rows: Vec<ReportRow>,
}

/// How one object's copy ended.
enum Outcome {
    Copied { sha256: String, verified: bool },
    Failed(String),
}

/// Opens an export job's device for `job export`: checks the key, moves the job to EXPORTING
/// (from CREATED, or FAILED for a rerun) and opens its data set writable.
pub async fn open_export(
    catalog: Arc<Catalog>,
    data_dir: &Path,
    manifest: &JobManifestFile,
    code: &str,
) -> Result<Device, GatewayError> {
    open_job(catalog, data_dir, manifest, code, |row, state| {
        if row.kind != JobKind::Export.as_str() {
            return Err(GatewayError::InvalidArgument(format!(
                "job {} is an {} job; `job export` runs export jobs",
                row.id, row.kind
            )));
        }
        match state {
            JobState::Created | JobState::Exporting | JobState::Failed => {
                Ok(Some(JobState::Exporting))
            }
            other => Err(GatewayError::InvalidArgument(format!(
                "export job {} is {}; its data set is already on the device",
                row.id,
                other.as_str()
            ))),
        }
    })
    .await
}

/// Copies the source onto the device (resuming where an earlier run stopped), seals it and
/// marks the job READY, or FAILED naming the objects that did not copy. Returns the report,
/// also written to `DATA_DIR/device/<job>/report.json|csv`.
pub async fn run_export(
    device: &Device,
    opts: &ExportOptions,
    progress: Arc<ImportProgress>,
) -> Result<ExportReport, GatewayError> {
    let catalog = device.inner.catalog.clone();
    let job = device.job_id().to_owned();
    let row = catalog
        .job(&job)?
        .ok_or_else(|| GatewayError::NotFound(format!("job {job}")))?;
    let source = Arc::new(Bucket::open(
        &job_bucket(&row, opts.credentials.clone(), false)?,
        false,
    )?);
    source.check().await?;
    let started = Instant::now();
    let mut listing = source.list("").await?;
    listing.sort_by(|a, b| a.key.cmp(&b.key));

    // Objects already on the device with the listed size and ETag were copied and verified by
    // an earlier run; anything else on the device is stale and goes.
    let on_device: HashMap<String, Arc<ObjectRecord>> = device
        .read_index()
        .iter()
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    let mut rows = Vec::new();
    let mut work = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for obj in listing {
        let etag = obj.etag.clone().unwrap_or_default();
        listed.insert(obj.key.clone());
        match on_device.get(&obj.key) {
            Some(rec) if rec.size == obj.size && rec.etag == etag => {
                rows.push(row_for(
                    &obj.key,
                    obj.size,
                    &rec.sha256,
                    &etag,
                    "exported",
                    "",
                ));
            }
            _ => work.push(obj),
        }
    }
    let mut removed = 0u64;
    for key in on_device.keys().filter(|k| !listed.contains(*k)) {
        device.delete(key).await?;
        removed += 1;
    }
    let skipped = rows.len() as u64;
    let resumed: u64 = rows.iter().map(|r| r.size).sum();
    progress.begin(
        (
            skipped + work.len() as u64,
            resumed + work.iter().map(|o| o.size).sum::<u64>(),
        ),
        (skipped, resumed),
        0,
    );
    let gets_before = source.traffic().gets;

    let limits = Limits::new(opts.parallel.max(1));
    let (commits, committer) = Commits::start(device.clone());
    let results: Vec<(crate::store::ObjectInfo, Outcome)> = futures::stream::iter(work)
        .map(|obj| {
            let (source, progress, limits, commits) =
                (&source, progress.clone(), &limits, &commits);
            async move {
                let outcome = copy_one(source, device, commits, &obj, limits, &progress).await;
                match &outcome {
                    Outcome::Copied { .. } => progress.done_objects.fetch_add(1, Ordering::Relaxed),
                    Outcome::Failed(_) => progress.failed_objects.fetch_add(1, Ordering::Relaxed),
                };
                (obj, outcome)
            }
        })
        .buffer_unordered(opts.parallel.max(1) * COPIES_PER_LANE)
        .collect()
        .await;
    drop(commits);
    committer
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;

    let (mut copied, mut copied_bytes, mut unverified) = (0u64, 0u64, 0u64);
    for (obj, outcome) in results {
        let etag = obj.etag.unwrap_or_default();
        match outcome {
            Outcome::Copied { sha256, verified } => {
                copied += 1;
                copied_bytes += obj.size;
                let note = if verified {
                    ""
                } else {
                    unverified += 1;
                    "size checked; the source did not give its part lengths, so its multipart \
                     ETag is recorded as-is"
                };
                rows.push(row_for(
                    &obj.key, obj.size, &sha256, &etag, "exported", note,
                ));
            }
            Outcome::Failed(reason) => {
                rows.push(row_for(&obj.key, obj.size, "", &etag, "failed", &reason));
            }
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let failures = failures(&rows);
    let state = if failures.is_empty() {
        device.seal_as(JobKind::Export).await?;
        JobState::Ready
    } else {
        let reason = format!(
            "{} of {} objects not exported (a rerun retries them)",
            failures.len(),
            rows.len()
        );
        catalog.set_job_state(&job, JobState::Failed.as_str(), Some(&reason))?;
        JobState::Failed
    };
    let exported: Vec<&ReportRow> = rows.iter().filter(|r| r.status == "exported").collect();
    let mut report = ExportReport {
        job: job.clone(),
        source: row.bucket_url.clone(),
        state: state.as_str().to_owned(),
        objects: rows.len() as u64,
        bytes: rows.iter().map(|r| r.size).sum(),
        exported_objects: exported.len() as u64,
        exported_bytes: exported.iter().map(|r| r.size).sum(),
        failed_objects: failures.len() as u64,
        run_etag_unverified: unverified,
        removed_objects: removed,
        run_copied_objects: copied,
        run_skipped_objects: skipped,
        run_copied_bytes: copied_bytes,
        run_get_requests: source.traffic().gets - gets_before,
        run_seconds: started.elapsed().as_secs_f64(),
        failures,
        rows: Vec::new(),
    };
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    // Local only: an export's credentials need only read the source, and a report written
    // under the source prefix would be exported by the next run.
    write_reports(&opts.data_dir, &job, json, &rows, None).await?;
    report.rows = rows;
    Ok(report)
}

fn row_for(
    key: &str,
    size: u64,
    sha256: &str,
    etag: &str,
    status: &'static str,
    reason: &str,
) -> ReportRow {
    ReportRow {
        key: key.to_owned(),
        size,
        sha256: sha256.to_owned(),
        etag: etag.to_owned(),
        status,
        reason: reason.to_owned(),
    }
}

/// How many budget units a range of `len` bytes takes (at least one).
fn budget_units(len: u64) -> u32 {
    u32::try_from(len.div_ceil(BUDGET_UNIT_BYTES).max(1)).unwrap_or(u32::MAX)
}

/// What one range brings: the object's head as of that GET, and the bytes.
type Fetched = Result<(ObjectHead, Bytes), GatewayError>;

/// How a range is fetched (the source's ranged GET; tests inject their own).
type FetchFn =
    Arc<dyn Fn(Range<u64>) -> futures::future::BoxFuture<'static, Fetched> + Send + Sync>;

/// The ranged GET of `key` in `source`; an empty range (an empty object) is a HEAD, for the
/// metadata.
fn source_fetch(source: Arc<Bucket>, key: &str) -> FetchFn {
    let key: Arc<str> = Arc::from(key);
    Arc::new(move |range: Range<u64>| {
        let (source, key) = (source.clone(), key.clone());
        Box::pin(async move {
            if range.is_empty() {
                let head = source.head_object(&key).await?.ok_or_else(|| {
                    GatewayError::NotFound(format!("{key} vanished from the source"))
                })?;
                return Ok((head, Bytes::new()));
            }
            Ok(source.read_object_with_head(&key, range).await?)
        })
    })
}

/// One range's GET, running as its own task so it downloads while the copy waits on anything
/// else (a future that is merely buffered only makes progress while it is polled); aborted if
/// the copy stops before taking it.
struct Fetch(tokio::task::JoinHandle<Fetched>);

impl Fetch {
    async fn join(mut self) -> Fetched {
        (&mut self.0)
            .await
            .map_err(|e| GatewayError::Internal(Box::new(e)))?
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One object's ranges, fetched up to `RANGES_AHEAD` at once and handed out in the order of
/// the ranges whatever order they complete in, each with its share of the export's memory
/// budget (released once the writer took the bytes).
///
/// No deadlock over the budget: a copy waits for budget only when it has no range in flight;
/// otherwise it takes what is free now and waits on its oldest range, which holds budget and
/// finishes on its own.
struct Ranges {
    fetch: FetchFn,
    todo: std::vec::IntoIter<Range<u64>>,
    ahead: VecDeque<(OwnedSemaphorePermit, Fetch)>,
    budget: Arc<Semaphore>,
}

impl Ranges {
    fn new(fetch: FetchFn, ranges: Vec<Range<u64>>, budget: Arc<Semaphore>) -> Self {
        Self {
            fetch,
            todo: ranges.into_iter(),
            ahead: VecDeque::new(),
            budget,
        }
    }

    /// The next range's bytes, in order, or `None` after the last.
    async fn next(
        &mut self,
    ) -> Result<Option<(OwnedSemaphorePermit, (ObjectHead, Bytes))>, GatewayError> {
        self.fill(true, RANGES_AHEAD).await?;
        let Some((permit, fetch)) = self.ahead.pop_front() else {
            return Ok(None);
        };
        // Refill before waiting (this one still counts as in flight): the following ranges
        // download while this one is written.
        self.fill(false, RANGES_AHEAD - 1).await?;
        Ok(Some((permit, fetch.join().await?)))
    }

    /// Starts ranges until `window` are queued; waits for budget only if `wait` and none is
    /// queued.
    async fn fill(&mut self, wait: bool, window: usize) -> Result<(), GatewayError> {
        while self.ahead.len() < window {
            let Some(range) = self.todo.as_slice().first().cloned() else {
                return Ok(());
            };
            let units = budget_units(range.end - range.start);
            let permit = if wait && self.ahead.is_empty() {
                self.budget
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .map_err(|e| GatewayError::Internal(Box::new(e)))?
            } else {
                match self.budget.clone().try_acquire_many_owned(units) {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                }
            };
            self.todo.next();
            let fetch = Fetch(tokio::spawn((self.fetch)(range)));
            self.ahead.push_back((permit, fetch));
        }
        Ok(())
    }
}

/// What bounds an export's copies.
struct Limits {
    /// Objects downloading at once: `--parallel`.
    lanes: Arc<Semaphore>,
    /// Fetched bytes not yet taken by a writer (a one-range object's until it is sealed):
    /// 2 × `--parallel` segments' worth over all objects, in `BUDGET_UNIT_BYTES`.
    budget: Arc<Semaphore>,
}

impl Limits {
    fn new(parallel: usize) -> Self {
        Self {
            lanes: Arc::new(Semaphore::new(parallel)),
            budget: Arc::new(Semaphore::new(
                parallel * 2 * budget_units(SEGMENT_BYTES as u64) as usize,
            )),
        }
    }
}

/// Copied objects' records waiting to be committed together.
type CommitRequest = (
    ObjectRecord,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Group commit of copied objects: one task commits whatever records are waiting in one
/// catalog transaction, so copies finishing together share one fsync instead of paying one
/// each. A copy returns only once its record is committed (the resume rule is unchanged).
struct Commits {
    tx: tokio::sync::mpsc::Sender<CommitRequest>,
}

impl Commits {
    /// The queue and the task serving it (it ends once the queue is dropped and drained).
    fn start(device: Device) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CommitRequest>(COMMIT_BATCH);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < COMMIT_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let (recs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let result = device.commit_many(recs).await.map_err(|e| e.to_string());
                for reply in replies {
                    // A copy that stopped waiting has nothing left to learn.
                    let _ = reply.send(result.clone());
                }
            }
        });
        (Self { tx }, task)
    }

    async fn commit(&self, rec: ObjectRecord) -> Result<(), GatewayError> {
        let ended = || GatewayError::Internal("the export's commit task ended".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send((rec, reply)).await.map_err(|_| ended())?;
        answer
            .await
            .map_err(|_| ended())?
            .map_err(|reason| GatewayError::Internal(reason.into()))
    }
}

/// How a copied object will be checked against its source ETag.
enum Check {
    /// The ETag is the MD5 of the bytes.
    Md5([u8; 16]),
    /// A multipart ETag, recomputed by the segment writer at the source's part boundaries.
    Parts,
    /// The source cannot tell its part lengths: size only.
    SizeOnly,
}

/// The part boundaries of a multipart object of `parts` parts: uniform if part 1's length
/// explains the size (the usual case, one HEAD), else every part's length; `None` if the
/// source cannot tell.
async fn plan_parts(
    source: &Bucket,
    key: &str,
    size: u64,
    parts: u32,
) -> Result<Option<EtagHasher>, StoreError> {
    let Some((first, count)) = source.part_length(key, 1).await? else {
        return Ok(None);
    };
    if count != parts {
        return Ok(None);
    }
    let n = u64::from(parts);
    if first > 0 && (n - 1) * first < size && size <= n * first {
        return Ok(Some(EtagHasher::uniform(first)));
    }
    Ok(Some(EtagHasher::listed(
        part_lengths(source, key, parts).await?,
    )))
}

async fn part_lengths(source: &Bucket, key: &str, parts: u32) -> Result<Vec<u64>, StoreError> {
    let lengths: Vec<Result<Option<(u64, u32)>, StoreError>> = futures::stream::iter(1..=parts)
        .map(|n| source.part_length(key, n))
        .buffered(8)
        .collect()
        .await;
    lengths
        .into_iter()
        .map(|l| l.map(|l| l.map_or(0, |(len, _)| len)))
        .collect()
}

/// The multipart ETag of copied segments at the given part lengths (a second, local read:
/// needed only when the parts were not uniform after all).
async fn rehash(
    device: &Device,
    segments: &[Segment],
    size: u64,
    lengths: Vec<u64>,
) -> Result<String, GatewayError> {
    let rec = Arc::new(ObjectRecord {
        key: String::new(),
        size,
        sha256: String::new(),
        etag: String::new(),
        content_type: None,
        metadata: Vec::new(),
        modified_unix: 0,
        segments: segments.to_vec(),
        parts: Vec::new(),
        committed_by: None,
    });
    let mut hasher = EtagHasher::listed(lengths);
    let mut stream = segment_stream(device.inner.segs.clone(), rec, 0..size);
    while let Some(piece) = stream.next().await {
        hasher.update(piece?);
    }
    Ok(hasher.finish())
}

async fn copy_one(
    source: &Arc<Bucket>,
    device: &Device,
    commits: &Commits,
    obj: &crate::store::ObjectInfo,
    limits: &Limits,
    progress: &ImportProgress,
) -> Outcome {
    let mut counted = 0u64;
    let outcome = copy_counted(source, device, commits, obj, limits, progress, &mut counted).await;
    match outcome {
        Ok(o) => o,
        Err(e) => {
            progress.done_bytes.fetch_sub(counted, Ordering::Relaxed);
            Outcome::Failed(e.to_string())
        }
    }
}

async fn copy_counted(
    source: &Arc<Bucket>,
    device: &Device,
    commits: &Commits,
    obj: &crate::store::ObjectInfo,
    limits: &Limits,
    progress: &ImportProgress,
    counted: &mut u64,
) -> Result<Outcome, GatewayError> {
    let etag = obj.etag.clone().unwrap_or_default();
    let key = obj.key.as_str();
    let range_len = SEGMENT_BYTES as u64;
    // An empty object still takes one (empty) step, which HEADs it for its metadata.
    let ranges: Vec<Range<u64>> = (0..obj.size.div_ceil(range_len).max(1))
        .map(|i| i * range_len..((i + 1) * range_len).min(obj.size))
        .collect();
    let changed = || {
        GatewayError::Busy(format!(
            "{key} changed in the source during the export (a rerun copies it again)"
        ))
    };
    let single = ranges.len() == 1;
    let lane = limits
        .lanes
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?;
    let mut writer = device.writer()?;
    let check = match (is_md5(&etag), multipart_parts(&etag)) {
        (true, _) => Check::Md5(parse_hex::<16>(&etag).unwrap_or_default()),
        (false, Some(parts)) => match plan_parts(source, key, obj.size, parts).await? {
            Some(hasher) => {
                writer = writer.with_etag(hasher);
                Check::Parts
            }
            None => Check::SizeOnly,
        },
        (false, None) => Check::SizeOnly,
    };
    let mut attrs = None;
    let mut received = 0u64;
    let mut ranges = Ranges::new(
        source_fetch(source.clone(), key),
        ranges,
        limits.budget.clone(),
    );
    let mut kept = None;
    while let Some((permit, (head, data))) = ranges.next().await? {
        if head.etag.as_deref().map(|t| t.trim_matches('"')) != Some(etag.as_str())
            || head.size != obj.size
        {
            return Err(changed());
        }
        if attrs.is_none() {
            attrs = Some((head.content_type, head.metadata, head.modified_ns));
        }
        let len = data.len() as u64;
        received += len;
        writer.write(data).await?;
        // A one-range object's bytes stay in its writer until `finish`: its budget goes then.
        if single {
            kept = Some(permit);
        }
        progress.done_bytes.fetch_add(len, Ordering::Relaxed);
        *counted += len;
    }
    // A one-range object's download is over: its lane goes to the next object while this one
    // is sealed, fsynced and committed. A larger one keeps its lane to the end, which bounds
    // the segments that copies being finished hold.
    if single {
        drop(lane);
    }
    if received != obj.size {
        return Err(changed());
    }
    let expected = ExpectedDigests {
        md5: match &check {
            Check::Md5(m) => Some(*m),
            _ => None,
        },
        sha256: None,
    };
    let finished = writer.finish(expected).await;
    drop(kept);
    let written = match finished {
        Ok(w) => w,
        Err(GatewayError::Corrupt(e)) if e.is::<DigestMismatch>() => {
            return Ok(Outcome::Failed(
                "the MD5 of the bytes copied is not the source's ETag".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let verified = match check {
        Check::Md5(_) => true,
        Check::SizeOnly => false,
        Check::Parts => {
            let mut ok = Ok(written.etag == etag);
            if ok.as_ref().is_ok_and(|ok| !ok) {
                // Part 1's length explained the size, yet the ETag differs: the parts were
                // uneven after all. Recompute at the listed lengths from the device copy.
                let parts = multipart_parts(&etag).unwrap_or(1);
                ok = match part_lengths(source, key, parts).await {
                    Ok(lengths) => rehash(device, &written.segments, written.size, lengths)
                        .await
                        .map(|t| t == etag),
                    Err(e) => Err(e.into()),
                };
            }
            match ok {
                Ok(true) => true,
                failed => {
                    // The copy is not committed: its segments go now, not at the next open.
                    device.inner.segs.remove(&written.segments).await;
                    failed?;
                    return Ok(Outcome::Failed(
                        "the multipart ETag of the bytes copied is not the source's".into(),
                    ));
                }
            }
        }
    };
    let (content_type, metadata, modified_ns) = attrs.unwrap_or_default();
    let sha256 = hex(&written.sha256);
    commits
        .commit(ObjectRecord {
            key: key.to_owned(),
            size: written.size,
            sha256: sha256.clone(),
            etag,
            content_type,
            metadata,
            modified_unix: if modified_ns != 0 {
                modified_ns.div_euclid(1_000_000_000)
            } else {
                obj.modified_unix
            },
            segments: written.segments,
            // The source's part boundaries are not fetched (only its ETag is checked), so an
            // exported object answers partNumber=1 with its whole body.
            parts: Vec::new(),
            committed_by: None,
        })
        .await?;
    Ok(Outcome::Copied { sha256, verified })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Ranges of `len` bytes each, every one filled with its own byte value.
    fn distinct_ranges(count: u64, len: u64) -> (Vec<Range<u64>>, Vec<u8>) {
        let ranges: Vec<Range<u64>> = (0..count).map(|i| i * len..(i + 1) * len).collect();
        let whole = (0..count * len).map(|i| (i / len) as u8).collect();
        (ranges, whole)
    }

    /// A fetch where earlier ranges take longer, so they complete in reverse order; it counts
    /// how many are in flight at once.
    fn reversed_fetch(
        whole: Vec<u8>,
        count: u64,
        in_flight: Arc<(AtomicUsize, AtomicUsize)>,
    ) -> FetchFn {
        let whole = Bytes::from(whole);
        Arc::new(move |range: Range<u64>| {
            let (whole, in_flight) = (whole.clone(), in_flight.clone());
            Box::pin(async move {
                let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
                in_flight.1.fetch_max(now, Ordering::SeqCst);
                let len = range.end - range.start;
                let index = range.start / len;
                tokio::time::sleep(Duration::from_millis(15 * (count - index))).await;
                in_flight.0.fetch_sub(1, Ordering::SeqCst);
                let head = ObjectHead {
                    size: whole.len() as u64,
                    ..ObjectHead::default()
                };
                Ok((head, whole.slice(range.start as usize..range.end as usize)))
            })
        })
    }

    async fn drain(ranges: &mut Ranges) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some((permit, (_, data))) = ranges.next().await.unwrap() {
            got.extend_from_slice(&data);
            drop(permit);
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_completing_in_reverse_are_handed_out_in_order() {
        let count = 10;
        let len = 4096;
        let (list, whole) = distinct_ranges(count, len);
        // Budget for every range at once, then for exactly two: the window is RANGES_AHEAD
        // deep when the budget allows it, and never more than the budget.
        for (budget_ranges, want_max) in [(count as usize, RANGES_AHEAD), (2, 2)] {
            let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
            let budget = Arc::new(Semaphore::new(budget_ranges * budget_units(len) as usize));
            let mut ranges = Ranges::new(
                reversed_fetch(whole.clone(), count, in_flight.clone()),
                list.clone(),
                budget.clone(),
            );
            assert!(
                drain(&mut ranges).await == whole,
                "bytes out of order (budget {budget_ranges})"
            );
            assert_eq!(
                in_flight.1.load(Ordering::SeqCst),
                want_max,
                "budget {budget_ranges}"
            );
            assert_eq!(
                budget.available_permits(),
                budget_ranges * budget_units(len) as usize
            );
        }
    }

    #[tokio::test]
    async fn an_abandoned_object_releases_its_budget() {
        let (list, whole) = distinct_ranges(8, 4096);
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let budget = Arc::new(Semaphore::new(100 * budget_units(4096) as usize));
        let mut ranges = Ranges::new(
            reversed_fetch(whole, 8, in_flight.clone()),
            list,
            budget.clone(),
        );
        let (permit, (_, first)) = ranges.next().await.unwrap().unwrap();
        assert_eq!(first[..], [0u8; 4096][..]);
        drop((permit, ranges));
        assert_eq!(
            budget.available_permits(),
            100 * budget_units(4096) as usize
        );
    }

    #[test]
    fn small_ranges_take_little_budget() {
        assert_eq!(budget_units(0), 1);
        assert_eq!(budget_units(1), 1);
        assert_eq!(budget_units(64 << 10), 1);
        assert_eq!(budget_units((64 << 10) + 1), 2);
        assert_eq!(budget_units(SEGMENT_BYTES as u64), 128);
    }
}
