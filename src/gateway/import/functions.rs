//! Functions on PUT (issue 19): the operator's program runs once for each stored object whose
//! key matches the job's pattern, in a sandbox (`sandbox.rs`), asynchronously behind the PUT.
//!
//! A commit offers the object to a bounded in-memory queue (`queue.rs`: `Hook::committed`
//! never waits, it runs under the device's commit lock); when the queue is full, or after an
//! unlock, the workers find the rest by scanning the index for objects with no outcome for their current
//! version (the outcome log, `outcomes.rs`). So nothing is lost when the queue overflows or
//! the device restarts: the queue is rebuilt, not persisted. A run may add derived objects
//! (`<key><suffix>`) and user metadata through its stdout (`protocol.rs`); they are applied
//! only when it exits 0, and only while the object is still the version it read.
//!
//! In a device cluster (docs/operations.md, "Device clusters") each device runs the functions of
//! the objects it commits, with the same queue and sandbox; the outcomes are objects in the
//! cluster's bucket (`outcomes.rs`), the program is published there by the device that created
//! the job and copied in by the others (`program.rs`), and a scan takes only the objects the
//! device claims (`queue::claims`).
//!
//! Must not: change an object's bytes, lose an object whatever its function does, or let a
//! function's output start another function (derived objects carry `tidegate-derived-from`
//! and are never offered). Invariant: `job seal` writes the manifest only once the queue is
//! empty and no run is in flight, with the commit lock held so nothing new arrives.

mod outcomes;
mod program;
mod protocol;
mod queue;
mod report;
mod sandbox;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, Inner, ObjectAttrs, Origin, segment_stream};
use crate::gateway::import::record::{ExpectedDigests, ObjectRecord};

pub use outcomes::{Outcome, OutcomeStatus};
pub use program::{FunctionSpec, install_function};
pub(crate) use queue::Hook;
pub use report::FunctionsReport;
pub(crate) use report::report;
pub use sandbox::SandboxError;

use outcomes::Outcomes;
use program::{Known, known, program_path};
use queue::{Queue, State};
use sandbox::{Ending, Limits, Tools};

/// Objects the queue holds before it overflows into a rescan of the index.
const QUEUE_OBJECTS: usize = 1024;
/// Runs at once: functions share the device's cores with the clients loading it.
const MAX_WORKERS: usize = 4;
/// Metadata a derived object carries: the key it came from, percent-encoded.
pub const DERIVED_FROM: &str = "tidegate-derived-from";
/// How often a cluster device that has not learnt the job's function yet looks again.
const CLUSTER_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("--on-put {}: {reason}", path.display())]
    Program { path: PathBuf, reason: String },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the function definition {} does not parse", path.display())]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Log(#[from] outcomes::OutcomeLogError),
}

impl From<FunctionError> for GatewayError {
    fn from(e: FunctionError) -> Self {
        match e {
            e @ (FunctionError::Program { .. } | FunctionError::Sandbox(_)) => {
                GatewayError::InvalidArgument(crate::error_chain::chain(&e))
            }
            other => GatewayError::Internal(Box::new(other)),
        }
    }
}

/// What `job create … --on-put` asks for.
#[derive(Debug, Clone)]
pub struct FunctionRequest {
    pub program: PathBuf,
    /// A key prefix, or a glob where `*` matches any characters (`*.txt`, `logs/*.gz`).
    pub pattern: String,
    pub timeout: Duration,
    pub memory_bytes: u64,
}

impl FunctionRequest {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

    /// Refuses a program that is not an executable file, limits out of range, or a machine
    /// without the sandbox's tools: before the job exists.
    pub fn check(&self) -> Result<(), FunctionError> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |reason: &str| FunctionError::Program {
            path: self.program.clone(),
            reason: reason.to_owned(),
        };
        let meta = std::fs::metadata(&self.program).map_err(|e| bad(&e.to_string()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(bad("not an executable file"));
        }
        if self.timeout.is_zero() {
            return Err(bad("--timeout must be more than 0"));
        }
        if self.memory_bytes < 16 << 20 {
            return Err(bad("--memory must be at least 16MiB"));
        }
        Tools::find()?;
        Ok(())
    }
}

/// Whether `key` matches `pattern`: a prefix, or with `*`, a glob over the whole key.
pub fn matches(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = key.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        return true; // no `*`: a prefix
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn is_derived(rec: &ObjectRecord) -> bool {
    rec.metadata.iter().any(|(k, _)| k == DERIVED_FROM)
}

/// What every run of a job's function shares.
struct Runner {
    spec: FunctionSpec,
    program: PathBuf,
    tools: Tools,
    queue: Arc<Queue>,
}

/// Starts the job's function workers, if the job has a function and still takes writes; the
/// queue starts with a scan, so runs a lock or a crash cut short are redone. A cluster device
/// that cannot tell yet (the creating device publishes the function at its unlock, and the
/// devices are unlocked together) looks again every `CLUSTER_POLL`.
pub(crate) async fn start(device: &Device) -> Result<(), GatewayError> {
    if device.is_sealed() {
        return Ok(());
    }
    if start_with(device, QUEUE_OBJECTS).await? {
        return Ok(());
    }
    let weak = Arc::downgrade(&device.inner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CLUSTER_POLL).await;
            let Some(inner) = weak.upgrade() else { return };
            let device = Device { inner };
            // Once sealed, the seal itself looks (`lock_after_functions`).
            if device.is_sealed() {
                return;
            }
            match start_with(&device, QUEUE_OBJECTS).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %device.job_id(), error = %crate::error_chain::chain(&e), "functions on PUT: looking for the job's function in the cluster")
                }
            }
        }
    });
    Ok(())
}

/// Starts the workers once the job's function is known; false while a cluster device cannot
/// tell yet whether the job has one.
async fn start_with(device: &Device, capacity: usize) -> Result<bool, GatewayError> {
    if device.inner.functions.queue.get().is_some() {
        return Ok(true);
    }
    let spec = match known(device, true).await? {
        Known::Function(spec) => spec,
        Known::NoFunction => return Ok(true),
        Known::NotYet => return Ok(false),
    };
    let tools = tokio::task::spawn_blocking(Tools::find)
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))?
        .map_err(FunctionError::from)?;
    let outcomes = Outcomes::of(device);
    let (done, unreadable) = outcomes.done(&matching(device, &spec.pattern)).await?;
    if unreadable > 0 {
        tracing::warn!(job = %device.job_id(), records = unreadable, "function outcome records do not verify; their objects run again");
    }
    let state = State {
        rescan: true,
        done,
        ..State::default()
    };
    let queue = Arc::new(Queue {
        pattern: spec.pattern.clone(),
        capacity,
        state: Mutex::new(state),
        work: Notify::new(),
        idle: Notify::new(),
        outcomes,
    });
    let runner = Arc::new(Runner {
        program: program_path(&device.inner.segs.dir, &spec),
        spec,
        tools,
        queue: queue.clone(),
    });
    if device.inner.functions.queue.set(queue).is_err() {
        return Ok(true); // started meanwhile on this device
    }
    let workers = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS);
    for _ in 0..workers {
        tokio::spawn(worker(Arc::downgrade(&device.inner), runner.clone()));
    }
    Ok(true)
}

/// The objects the function applies to, as the device's index holds them now.
fn matching(device: &Device, pattern: &str) -> Vec<Arc<ObjectRecord>> {
    device
        .read_index()
        .values()
        .filter(|rec| matches(pattern, &rec.key) && !is_derived(rec))
        .cloned()
        .collect()
}

async fn worker(device: Weak<Inner>, runner: Arc<Runner>) {
    while let Some(key) = runner.queue.next(&device).await {
        let Some(inner) = device.upgrade() else {
            return;
        };
        let device = Device { inner };
        let rec = device.read_index().get(&key).cloned();
        // Nothing runs into a sealed data set (the seal waits for the runs it lets finish).
        let sealed = device.is_sealed() && !device.inner.functions.finishing();
        let ran = match rec {
            Some(rec) if runner.queue.wants(&rec) && !sealed => {
                let outcome = invoke(&device, &runner, &rec).await;
                tracing::info!(job = %device.job_id(), status = ?outcome.status, seconds = outcome.seconds, "function ran");
                if let Err(e) = runner.queue.outcomes.record(&outcome).await {
                    tracing::warn!(job = %device.job_id(), error = %crate::error_chain::chain(&e), "function outcome not recorded; it runs again at the next unlock");
                }
                Some(rec.sha256.clone())
            }
            _ => None,
        };
        runner.queue.finish(&key, ran.as_deref());
    }
}

/// The function's environment: nothing of the device's own, the object described.
fn environment(device: &Device, rec: &ObjectRecord) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), "/tmp".to_owned()),
        ("TMPDIR".to_owned(), "/tmp".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("TIDEGATE_SCRATCH".to_owned(), "/tmp".to_owned()),
        ("TIDEGATE_JOB".to_owned(), device.job_id().to_owned()),
        (
            "TIDEGATE_BUCKET".to_owned(),
            device.bucket_name().to_owned(),
        ),
        ("TIDEGATE_KEY".to_owned(), rec.key.clone()),
        ("TIDEGATE_SIZE".to_owned(), rec.size.to_string()),
        ("TIDEGATE_ETAG".to_owned(), rec.etag.clone()),
        ("TIDEGATE_SHA256".to_owned(), rec.sha256.clone()),
        (
            "TIDEGATE_METADATA".to_owned(),
            serde_json::to_string(
                &rec.metadata
                    .iter()
                    .cloned()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap_or_default(),
        ),
    ];
    if let Some(t) = &rec.content_type {
        env.push(("TIDEGATE_CONTENT_TYPE".to_owned(), t.clone()));
    }
    for (name, value) in &rec.metadata {
        let var: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.push((format!("TIDEGATE_META_{var}"), value.clone()));
    }
    env
}

async fn invoke(device: &Device, runner: &Runner, rec: &Arc<ObjectRecord>) -> Outcome {
    let mut outcome = Outcome {
        key: rec.key.clone(),
        sha256: rec.sha256.clone(),
        size: rec.size,
        status: OutcomeStatus::Error,
        reason: String::new(),
        derived: Vec::new(),
        metadata: Vec::new(),
        seconds: 0.0,
    };
    let limits = Limits {
        timeout: Duration::from_millis(runner.spec.timeout_ms),
        memory_bytes: runner.spec.memory_bytes,
    };
    let input = segment_stream(device.inner.segs.clone(), rec.clone(), 0..rec.size);
    let env = environment(device, rec);
    let done = match sandbox::run(&runner.tools, &runner.program, &env, input, limits).await {
        Ok(done) => done,
        Err(e) => {
            outcome.reason = crate::error_chain::chain(&e);
            return outcome;
        }
    };
    outcome.seconds = done.elapsed.as_secs_f64();
    let stderr = if done.stderr_tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", done.stderr_tail)
    };
    (outcome.status, outcome.reason) = match (&done.ending, &done.input_error) {
        (_, Some(e)) => (
            OutcomeStatus::Error,
            format!("the object could not be read: {e}"),
        ),
        (Ending::TimedOut, _) => (
            OutcomeStatus::Timeout,
            format!("killed at its timeout of {:?}{stderr}", limits.timeout),
        ),
        (Ending::OutputTooLarge, _) => (
            OutcomeStatus::Failed,
            format!("killed: stdout passed {} bytes", protocol::MAX_OUTPUT_BYTES),
        ),
        (Ending::Exited(code), _) if *code > 128 => (
            OutcomeStatus::Failed,
            format!(
                "exit status {code} (killed by signal {}, e.g. its CPU or memory limit){stderr}",
                code - 128
            ),
        ),
        (Ending::Exited(0), None) => match protocol::parse(&done.stdout) {
            Ok(dirs) => match apply(device, rec, dirs, &mut outcome).await {
                Ok(()) => (OutcomeStatus::Ok, String::new()),
                Err(e) => (OutcomeStatus::Failed, e.to_string()),
            },
            Err(e) => (OutcomeStatus::Failed, e.to_string()),
        },
        (Ending::Exited(code), _) => (OutcomeStatus::Failed, format!("exit status {code}{stderr}")),
    };
    outcome
}

/// Stores a successful run's derived objects, then adds its metadata to the object; refused
/// once the object is no longer the version the function read.
async fn apply(
    device: &Device,
    rec: &ObjectRecord,
    dirs: protocol::Directives,
    outcome: &mut Outcome,
) -> Result<(), GatewayError> {
    for d in dirs.derived {
        device.check_version(rec)?;
        let key = format!("{}{}", rec.key, d.suffix);
        Device::check_key(&key)?;
        let mut writer = device.writer_as(Origin::Function)?;
        writer.write(Bytes::from(d.data)).await?;
        let attrs = ObjectAttrs {
            content_type: d.content_type,
            // Percent-encoded so any key stays a valid header value.
            metadata: vec![(
                DERIVED_FROM.to_owned(),
                crate::percent::encode(&rec.key, true),
            )],
        };
        device
            .put_as(
                &key,
                writer,
                attrs,
                ExpectedDigests::default(),
                Origin::Function,
            )
            .await?;
        outcome.derived.push(key);
    }
    if !dirs.metadata.is_empty() {
        device.add_function_metadata(rec, &dirs.metadata).await?;
        outcome.metadata = dirs.metadata.into_iter().map(|(n, _)| n).collect();
    }
    Ok(())
}

impl Device {
    fn check_version(&self, rec: &ObjectRecord) -> Result<(), GatewayError> {
        let index = self.read_index();
        match index.get(&rec.key) {
            Some(now) if now.sha256 == rec.sha256 && now.segments == rec.segments => Ok(()),
            _ => Err(GatewayError::Busy(format!(
                "{} changed while its function ran; the new version runs again",
                rec.key
            ))),
        }
    }

    /// Adds `pairs` to the object's user metadata (its bytes and segments untouched). A name
    /// the object already has with another value is refused: a function adds, it never
    /// rewrites. The same name with the same value is no change: a run repeated because the
    /// device was killed after its metadata write and before its outcome was recorded finds
    /// its own metadata there, and succeeds as the first run did.
    async fn add_function_metadata(
        &self,
        rec: &ObjectRecord,
        pairs: &[(String, String)],
    ) -> Result<(), GatewayError> {
        let _guard = self.inner.commit.lock().await;
        self.check_writable_as(Origin::Function)?;
        self.check_version(rec)?;
        // In a cluster another device may have replaced the object: its record is read first
        // (a replacement within the moments between this read and the write below is lost to
        // this metadata write; Garage has no conditional writes to close that window).
        if self.replaced_in_cluster(rec).await? {
            return Err(GatewayError::Busy(format!(
                "{} was replaced through another device while its function ran",
                rec.key
            )));
        }
        let mut updated = rec.clone();
        for (name, value) in pairs {
            match updated.metadata.iter().find(|(n, _)| n == name) {
                Some((_, v)) if v == value => {}
                Some(_) => {
                    return Err(GatewayError::AlreadyExists(format!(
                        "metadata {name:?} on {}: a function adds metadata, it does not replace it",
                        rec.key
                    )));
                }
                None => updated.metadata.push((name.clone(), value.clone())),
            }
        }
        if updated.metadata.len() == rec.metadata.len() {
            return Ok(());
        }
        let meta_bytes: usize = updated
            .metadata
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        if meta_bytes > protocol::MAX_METADATA_BYTES {
            return Err(GatewayError::InvalidArgument(format!(
                "{}: user metadata would pass {} bytes",
                rec.key,
                protocol::MAX_METADATA_BYTES
            )));
        }
        // The catalog row, and in a cluster the record every device reads.
        self.store_records(std::slice::from_ref(&updated)).await?;
        self.inner
            .index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(updated.key.clone(), Arc::new(updated));
        Ok(())
    }

    /// The commit lock, taken once no function is queued or running: `job seal` freezes the
    /// data set only after every stored object's function ran (their derived objects are part
    /// of it). Holding the lock keeps new objects out until the seal is done.
    ///
    /// In a cluster (`seal.rs`: every device waits so before it confirms the seal) the device's
    /// function writes are still taken meanwhile, a device that has not learnt the job's
    /// function yet looks once more, and a scan first takes the objects no device's queue holds
    /// (`queue::claims`).
    pub(crate) async fn lock_after_functions(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let hook = &self.inner.functions;
        hook.set_finishing(true);
        if self.in_cluster()
            && hook.queue.get().is_none()
            && let Err(e) = start_with(self, QUEUE_OBJECTS).await
        {
            tracing::warn!(job = %self.inner.job, error = %crate::error_chain::chain(&e), "functions on PUT: the job's function is not known; sealing without it");
        }
        let Some(queue) = hook.queue.get() else {
            hook.set_finishing(false);
            return self.inner.commit.lock().await;
        };
        queue.request_rescan();
        loop {
            if !queue.is_idle() {
                tracing::info!(job = %self.inner.job, "waiting for functions on PUT to finish before sealing");
            }
            queue.wait_idle().await;
            let guard = self.inner.commit.lock().await;
            if queue.is_idle() {
                hook.set_finishing(false);
                return guard;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn patterns_are_prefixes_or_whole_key_globs() {
        let cases = [
            ("", "anything", true),
            ("logs/", "logs/a.gz", true),
            ("logs/", "log/a", false),
            ("*.txt", "a/b.txt", true),
            ("*.txt", "a/b.txt.lines", false),
            ("*.txt", ".txt", true),
            ("logs/*.gz", "logs/x/y.gz", true),
            ("logs/*.gz", "other/y.gz", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-c-b", false),
            ("*", "", true),
            ("a*a", "a", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(matches(pattern, key), want, "{pattern:?} {key:?}");
        }
    }

    async fn put(d: &Device, key: &str, data: &'static [u8]) {
        put_with(d, key, data, ObjectAttrs::default()).await;
    }

    async fn put_with(d: &Device, key: &str, data: &'static [u8], attrs: ObjectAttrs) {
        let mut w = d.writer().unwrap();
        w.write(Bytes::from_static(data)).await.unwrap();
        d.put(key, w, attrs, ExpectedDigests::default())
            .await
            .unwrap();
    }

    /// Counts the object's lines into `KEY.n` and metadata `n`, taking a moment (so a seal
    /// right after the PUTs finds runs in flight).
    const COUNT_LINES: &str = r#"#!/bin/sh
n=$(wc -l | tr -d ' ')
sleep 0.2
echo "{\"suffix\": \".n\", \"text\": \"$n\"}"
echo "{\"metadata\": {\"n\": \"$n\"}}"
"#;

    /// Installs `script` as the job's function for `*.txt`.
    fn install(dir: &Path, d: &Device, script: &str) {
        let program = dir.join("function.sh");
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let req = FunctionRequest {
            program,
            pattern: "*.txt".into(),
            timeout: Duration::from_secs(20),
            memory_bytes: FunctionRequest::DEFAULT_MEMORY_BYTES,
        };
        install_function(dir, d.job_id(), &req).expect("bubblewrap is needed");
    }

    /// Objects stored before the function's workers started (a restart) are found by the
    /// start-up scan; the seal waits for their runs.
    #[tokio::test]
    async fn objects_without_an_outcome_run_at_start_and_seal_waits_for_them() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let d = crate::gateway::import::device::tests::device(dir.path()).await;
        put(&d, "a.txt", b"1\n2\n").await;
        put(&d, "b.bin", b"x\n").await;
        install(dir.path(), &d, COUNT_LINES);
        start(&d).await.unwrap();
        assert_eq!(d.seal().await.unwrap().0, 3);
        let (_, mut body) = d.read("a.txt.n", None).unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "2");
        assert_eq!(
            d.head("a.txt").unwrap().metadata,
            vec![("n".to_owned(), "2".to_owned())]
        );
        let report = report(&d).await.unwrap().unwrap();
        assert_eq!((report.ok, report.outcomes.len()), (1, 1), "{report:?}");
        assert_eq!(report.outcomes[0].derived, ["a.txt.n"]);
    }

    /// A run repeated after a kill -9 that came between the first run's metadata write and its
    /// outcome finds its own metadata on the object: the same value is no change and the run
    /// succeeds; another value is a rewrite and is refused.
    #[tokio::test]
    async fn a_repeated_runs_own_metadata_is_no_change_but_another_value_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::gateway::import::device::tests::device(dir.path()).await;
        for (key, n) in [("again.txt", "2"), ("other.txt", "9")] {
            let attrs = ObjectAttrs {
                content_type: None,
                metadata: vec![("n".to_owned(), n.to_owned())],
            };
            put_with(&d, key, b"1\n2\n", attrs).await;
        }
        install(dir.path(), &d, COUNT_LINES);
        start(&d).await.unwrap();
        d.seal().await.unwrap();
        let report = report(&d).await.unwrap().unwrap();
        let status = |key: &str| {
            let o = report.outcomes.iter().find(|o| o.key == key).unwrap();
            (o.status, o.reason.clone())
        };
        assert_eq!(status("again.txt").0, OutcomeStatus::Ok, "{report:?}");
        let (other, why) = status("other.txt");
        assert_eq!(other, OutcomeStatus::Failed, "{report:?}");
        assert!(why.contains("does not replace"), "{why}");
        assert_eq!(
            d.head("other.txt").unwrap().metadata,
            vec![("n".to_owned(), "9".to_owned())],
            "the object's metadata is as it was"
        );
    }

    /// Objects a full queue had no room for are run all the same, before the seal.
    #[tokio::test]
    async fn objects_past_a_full_queue_run_before_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::gateway::import::device::tests::device(dir.path()).await;
        install(
            dir.path(),
            &d,
            "#!/bin/sh\ncat >/dev/null\nsleep 0.3\necho '{\"suffix\": \".done\", \"text\": \"\"}'\n",
        );
        start_with(&d, 2).await.unwrap();
        let keys = [
            "1.txt", "2.txt", "3.txt", "4.txt", "5.txt", "6.txt", "7.txt",
        ];
        for key in keys {
            put(&d, key, b"x").await;
        }
        let queue = d.inner.functions.queue.get().unwrap().clone();
        assert!(queue.lock().overflows > 0, "the queue never filled");
        assert_eq!(d.seal().await.unwrap().0, 14);
        for key in keys {
            d.head(&format!("{key}.done")).unwrap();
        }
        let report = report(&d).await.unwrap().unwrap();
        assert_eq!(report.ok, 7, "{report:?}");
    }

    /// Two devices of a cluster over one bucket (a local directory standing in for Garage):
    /// the creating device publishes the function, the other copies it in; each runs the
    /// functions of its own PUTs, once; a seal begun on one waits for both queues; derived
    /// objects, metadata and outcomes are the cluster's, seen from either device.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_devices_run_their_own_puts_and_share_outcomes_and_program() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        // The job is created (with its function) on device a, as `job create` does.
        let (a, b, bucket) =
            crate::gateway::import::cluster::tests::pair(dir.path(), |a_dir, first| {
                install(a_dir, first, COUNT_LINES)
            })
            .await;
        let job = a.job_id().to_owned();
        let b_dir = dir.path().join("b");
        // b copied the program in from the cluster.
        let b_spec = program::read_spec(&crate::gateway::import::device_dir(&b_dir, &job)).unwrap();
        assert_eq!(b_spec.unwrap().pattern, "*.txt");
        put(&a, "a.txt", b"1\n2\n").await;
        put(&b, "b.txt", b"1\n2\n3\n").await;
        put(&b, "c.bin", b"x\n").await;
        // Sealed at once from b: both devices' queues drain first, so the derived objects are
        // in the data set sealed.
        assert_eq!(b.seal().await.unwrap().0, 5);
        for d in [&a, &b] {
            d.sync_all().await.unwrap();
            for (key, n) in [("a.txt", "2"), ("b.txt", "3")] {
                let (_, mut body) = d.read(&format!("{key}.n"), None).unwrap();
                assert_eq!(body.next().await.unwrap().unwrap(), n);
                assert_eq!(
                    d.head(key).unwrap().metadata,
                    vec![("n".to_owned(), n.to_owned())]
                );
            }
            let report = report(d).await.unwrap().unwrap();
            assert_eq!((report.ok, report.outcomes.len()), (2, 2), "{report:?}");
        }
        // One run per object, each on the device that took its PUT.
        assert_eq!(bucket.list("fn/outcome/").await.unwrap().len(), 2);
        assert_eq!(a.read_index()["a.txt"].committed_by.as_deref(), Some("a"));
        assert_eq!(a.read_index()["b.txt"].committed_by.as_deref(), Some("b"));
        // A scan takes its own objects, and a missing device's only on the first device up.
        let mut orphan = (*a.read_index()["a.txt"]).clone();
        for (by, a_claims, b_claims) in [("a", true, false), ("b", false, true), ("c", true, false)]
        {
            orphan.committed_by = Some(by.into());
            assert_eq!(queue::claims(&a, &orphan), a_claims, "{by}");
            assert_eq!(queue::claims(&b, &orphan), b_claims, "{by}");
        }
    }

    #[test]
    fn programs_that_cannot_run_and_limits_out_of_range_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        let plain = dir.path().join("plain");
        for (path, mode) in [(&exe, 0o755), (&plain, 0o644)] {
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let req = |program: &Path, timeout_secs, memory_bytes| FunctionRequest {
            program: program.to_owned(),
            pattern: String::new(),
            timeout: Duration::from_secs(timeout_secs),
            memory_bytes,
        };
        req(&exe, 30, 256 << 20)
            .check()
            .expect("bubblewrap is needed");
        let refused = [
            req(&plain, 30, 256 << 20),
            req(&dir.path().join("missing"), 30, 256 << 20),
            req(dir.path(), 30, 256 << 20),
            req(&exe, 0, 256 << 20),
            req(&exe, 30, 1 << 20),
        ];
        for r in refused {
            assert!(
                matches!(r.check(), Err(FunctionError::Program { .. })),
                "{r:?}"
            );
        }
    }
}
