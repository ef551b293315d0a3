//! Device clusters (issue 19) with real clients, at the acceptance's sizes: five `device
//! unlock` processes, each running its own Garage node (replication 3, a zone per device) on
//! loopback, are set up by `device cluster create|join`. `aws s3 cp --recursive` of 2,000 files
//! and a 1 GiB file through device 1 and `s3cmd sync` of another tree through device 3 run at
//! once; device 1 (and its Garage node) is killed with -9 mid-load, and the AWS CLI is run again
//! against device 2 as a user would (`aws s3 sync`, which sends what is missing). Every
//! acknowledged object is still there, every object lists on every live device and reads back
//! byte for byte from each; no content or name is found in any Garage directory. The job has a
//! function on PUT (a Python line counter for some of s3cmd's files): its `KEY.lines` objects,
//! written on device 3, list on device 2 and are checked with every object. With a second
//! device killed every object still reads, a PUT gets `ServiceUnavailable` naming the lost write
//! quorum, NFS writes `NFS3ERR_ROFS`, and `device status` names both devices; both restarted,
//! they list everything at once, writes resume and the status says fully redundant again.
//! Then the data set is sealed on device 2 and imported from devices 4 and 5 in parallel into a
//! separate Garage, device 5 killed mid-way and resumed (`device_cluster_import.rs`); the one
//! report lists the function's outcomes.
//!
//! Every object is read back by hashing it as it streams (boto3), not into files: 4 live
//! devices × 1 GiB would otherwise be written to disk too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::device::{CLIENT, Job, Unlocked, boto3, files_under, small_files};
use crate::device_cluster_import::{PREFIX, seal_and_import};
use crate::device_nfs::{Export, NFS3ERR_ROFS};
use crate::support::garage::Garage;
use crate::support::nfs::Client;
use crate::support::s3::S3Server;
use crate::support::{free_port, run, stderr, stdout, tidegate};

const DEVICES: usize = 5;
/// How long a status change may take to show (Garage notices a lost node within seconds).
const STATUS_LIMIT: Duration = Duration::from_secs(90);
/// How long a return may take to be fully redundant: the table sync, then Garage's block
/// resync delay (2 × the cluster's 20 s RPC timeout) and the copies, on a loaded 2-core
/// machine. 79–196 s were measured; a run beside another cluster test (load 13–16) still had
/// 84 blocks to copy at 300 s, with Garage's default resync pace.
const WHOLE_LIMIT: Duration = Duration::from_secs(480);
/// The acceptance's load through device 1: 2,000 small files and one of 1 GiB.
const AWS_FILES: usize = 2000;
const BIG_BYTES: usize = 1 << 30;
/// s3cmd's tree through device 3: text files carrying `MARKER`, and one of 40 MiB (three
/// multipart chunks of s3cmd's 15 MiB).
const SYNC_FILES: usize = 1000;
const SYNC_BIG_BYTES: usize = 40 << 20;
/// A string in every s3cmd file, and a key name, that must not appear in any Garage directory.
const MARKER: &str = "tidegate-cluster-marker-5b8e";
const MARKER_NAME: &str = "marker-name-q7";
/// Device 1 is killed once the AWS CLI has acknowledged this many uploads: about half the small
/// files, with the 1 GiB file (sorted among them) in flight.
const KILL_AFTER_ACKS: usize = 1000;
/// How long a client may go without acknowledging anything before the test calls it stuck.
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// The function on PUT: s3cmd's text files `note-0001`, `-0006`, ..., `-0096` in `s1` (20 files,
/// a glob), whose lines it counts. The failing, hanging and networking programs are the
/// single-device test's (`device_functions.rs`): the cluster runs them through the same code.
const FUNCTION_MATCH: &str = "sync/s1/note-00*.txt";
const COUNT_LINES: &str = r#"#!/usr/bin/python3
import json, sys
lines = sys.stdin.buffer.read().count(b'\n')
print(json.dumps({'suffix': '.lines', 'text': '%d\n' % lines}))
print(json.dumps({'metadata': {'lines': str(lines)}}))
"#;
/// How long after the loads the derived objects may take to list (20 runs of a few hundred ms).
const FUNCTION_LIMIT: Duration = Duration::from_secs(180);

/// A file tree of `count` small files plus, when `big`, one of 20 MiB.
pub(crate) fn tree(dir: &Path, tag: &str, count: usize, big: bool) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..count {
        std::fs::write(
            dir.join("sub").join(format!("{tag}-{i}.txt")),
            format!("{tag} file {i}\n").repeat(i * 37 + 1),
        )
        .unwrap();
    }
    if big {
        let data: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join(format!("{tag}-big.bin")), data).unwrap();
    }
}

/// Every file under `dir`, relative path → bytes.
pub(crate) fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

pub(crate) struct Member {
    pub job: Job,
    pub device: Option<Unlocked>,
}

/// A killed device leaves its Garage node behind (as a power loss would not): the test stops
/// both, whatever happens.
impl Drop for Member {
    fn drop(&mut self) {
        if self.device.is_some() {
            self.kill();
        }
    }
}

impl Member {
    pub fn device(&self) -> &Unlocked {
        self.device.as_ref().expect("device is running")
    }

    /// kill -9 of the device and of its Garage node, as a power loss would take both.
    pub fn kill(&mut self) {
        let garage = std::fs::read_to_string(self.job.data.join("cluster/garage.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(mut d) = self.device.take() {
            d.kill9();
        }
        if let Some(pid) = garage {
            kill9(pid);
        }
    }

    pub fn status(&self) -> String {
        let o = run(tidegate(&self.job.data).args(["device", "status"]));
        assert!(o.status.success(), "device status: {}", stderr(&o));
        stdout(&o)
    }

    /// Waits (at most `limit`) until `device status` satisfies `want`.
    pub fn wait_status(&self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status();
            if want(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn upload(&self, src: &Path, bucket: &str) -> std::process::Output {
        run(self.device().aws().args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            src.to_str().unwrap(),
            &format!("s3://{bucket}/"),
        ]))
    }

    /// Every object in `bucket` as this device lists it, key → SHA-256 of its bytes as this
    /// device returns them (boto3, 4 GETs at a time, each body hashed as it streams: one is
    /// 1 GiB), or key → "" with `read` false (a listing only).
    pub fn contents(&self, bucket: &str, read: bool) -> BTreeMap<String, String> {
        let script = format!(
            "{CLIENT}
import hashlib
from concurrent.futures import ThreadPoolExecutor
b = os.environ['BUCKET']
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=b):
    keys += [o['Key'] for o in page.get('Contents', [])]
def digest(key):
    if not os.environ.get('READ'):
        return key, ''
    h = hashlib.sha256()
    for chunk in s3.get_object(Bucket=b, Key=key)['Body'].iter_chunks(1 << 20):
        h.update(chunk)
    return key, h.hexdigest()
with ThreadPoolExecutor(4) as ex:
    for key, sha in ex.map(digest, keys):
        print(key, sha)
"
        );
        let out = boto3(&script, |c| {
            self.device().env(c);
            c.env("BUCKET", bucket);
            if read {
                c.env("READ", "1");
            }
        });
        out.lines()
            .map(|l| {
                let (k, sha) = l.split_once(' ').unwrap_or((l, ""));
                (k.to_owned(), sha.to_owned())
            })
            .collect()
    }

    /// Lists (and with `read`, reads and hashes) the bucket through this device and compares
    /// it with `want` (key → SHA-256).
    pub fn check(&self, bucket: &str, want: &BTreeMap<String, String>, read: bool, when: &str) {
        let got = self.contents(bucket, read);
        let name = self.job.data.file_name().unwrap().to_string_lossy();
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{when}: {name} lists {} of {} objects; missing {} (first {:?}), unexpected {:?}",
            got.len(),
            want.len(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            extra.iter().take(5).collect::<Vec<_>>()
        );
        if read {
            for (key, sha) in want {
                assert_eq!(&got[key], sha, "{when}: {key} read through {name} differs");
            }
        }
    }
}

/// NFS CREATE of `name` in `dir`, retried for a few seconds until it succeeds (the device's
/// export follows the cluster's write gate within a poll interval).
fn wait_nfs_create(c: &mut Client, dir: &[u8], name: &str) -> Result<Vec<u8>, u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.create(dir, name, 0, 0o644);
        if r.is_ok() || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `check` on every member at once (a failure fails the test with its message).
pub(crate) fn each<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    check: impl Fn(&Member) + Sync,
) {
    std::thread::scope(|s| {
        for m in members {
            let check = &check;
            s.spawn(move || check(m));
        }
    });
}

/// The value of the `NAME: value` line in a command's output.
pub(crate) fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

/// `device cluster create|join` arguments for device `name` of the job whose manifest file is
/// `manifest`: its own loopback ports for Garage's RPC, S3 and admin APIs, 1 GiB of capacity.
pub(crate) fn node_args(manifest: &Path, name: &str) -> Vec<String> {
    vec![
        "--manifest".into(),
        manifest.to_str().unwrap().into(),
        "--name".into(),
        name.into(),
        "--rpc-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--garage-s3-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--garage-admin-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--capacity".into(),
        "1GiB".into(),
    ]
}

/// Creates an import job on device 1 of `devices` (into `target`, an s3:// URL at `endpoint`,
/// with `create_args` added to `job create`), sets up the cluster with `device cluster
/// create|join` and unlocks every device at once (each waits for the layout that needs all of
/// them); the devices numbered (from 0) in `nfs` also serve their NFS export.
pub(crate) fn form_cluster(
    dir: &Path,
    devices: usize,
    (target, endpoint): (&str, &str),
    create_args: &[&str],
    nfs: &[usize],
) -> Vec<Member> {
    let data: Vec<PathBuf> = (1..=devices).map(|i| dir.join(format!("dev{i}"))).collect();
    for d in &data {
        std::fs::create_dir_all(d).unwrap();
    }
    let manifest = dir.join("job.manifest.json");
    let o = run(tidegate(&data[0])
        .args([
            "job",
            "create",
            "import",
            "--target",
            target,
            "--endpoint",
            endpoint,
            "--region",
            "garage",
            "--manifest-out",
            manifest.to_str().unwrap(),
        ])
        .args(create_args));
    assert!(o.status.success(), "job create: {}", stderr(&o));
    let created = stdout(&o);
    let (job_id, code) = (field(&created, "job"), field(&created, "unlock code"));

    let node_args = |i: usize| node_args(&manifest, &format!("dev{}", i + 1));
    let o = run(tidegate(&data[0])
        .args([
            "device",
            "cluster",
            "create",
            "--devices",
            &devices.to_string(),
        ])
        .args(node_args(0)));
    assert!(o.status.success(), "cluster create: {}", stderr(&o));
    let token = field(&stdout(&o), "join token");
    // The configuration holds secrets: owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data[0].join("cluster/garage.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "garage.toml is readable by others");
    for (i, d) in data.iter().enumerate().skip(1) {
        let o = run(tidegate(d)
            .args(["device", "cluster", "join"])
            .env("TIDEGATE_CLUSTER_TOKEN", &token)
            .args(node_args(i)));
        assert!(o.status.success(), "cluster join: {}", stderr(&o));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let job = Job {
                    id: job_id.clone(),
                    code: code.clone(),
                    manifest: manifest.clone(),
                    data: d.clone(),
                };
                let extra: &[&str] = if nfs.contains(&i) {
                    &["--nfs-listen", "127.0.0.1:0"]
                } else {
                    &[]
                };
                s.spawn(move || {
                    let device = Unlocked::start_with(&job, extra);
                    Member {
                        job,
                        device: Some(device),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of a file, read in 8 MiB chunks.
fn sha256_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex(ctx.finish().as_ref());
        }
        ctx.update(&buf[..n]);
    }
}

/// A file of `len` random bytes, written in 8 MiB chunks (never held whole in memory).
fn random_file(path: &Path, len: usize) {
    let mut rng = std::fs::File::open("/dev/urandom").unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.read_exact(&mut buf[..n]).unwrap();
        out.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
}

/// Key (`prefix` + relative path) → SHA-256 of every file under `dir`.
pub(crate) fn hashes_under(dir: &Path, prefix: &str) -> BTreeMap<String, String> {
    files_under(dir)
        .into_iter()
        .map(|(rel, path)| (format!("{prefix}{rel}"), sha256_of(&path)))
        .collect()
}

/// A client process whose stdout lines arrive on a channel as they are printed.
struct Load {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Load {
    fn spawn(mut cmd: Command) -> Load {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Load {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Keys the client reported as uploaded (`upload: SRC to s3://BUCKET/KEY` from the AWS
    /// CLI, `upload: 'SRC' -> 's3://BUCKET/KEY'` from s3cmd), printed once the PUT (or the
    /// multipart completion) was acknowledged.
    fn acked(&self, bucket: &str) -> BTreeSet<String> {
        let at = format!("s3://{bucket}/");
        self.seen
            .iter()
            .filter(|l| l.starts_with("upload: "))
            .filter_map(|l| l.rsplit_once(&at))
            .map(|(_, key)| key.split('\'').next().unwrap().to_owned())
            .collect()
    }

    /// Waits until `enough` holds for the lines seen so far; false if the client ended first.
    fn wait_for(&mut self, what: &str, enough: impl Fn(&[String]) -> bool) -> bool {
        while !enough(&self.seen) {
            match self.lines.recv_timeout(LOAD_LIMIT) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => panic!("{what}: the client stalled"),
            }
        }
        true
    }

    /// Waits for the client to exit (reading the rest of its output); its stderr is returned.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        while self.wait_for("finishing", |_| false) {}
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.child.wait().unwrap(), err)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Device 1's tree: 2,000 small files in `d0`..`d6` and the 1 GiB file `d3-big.bin`, which the
/// AWS CLI sends (in 8 MiB parts) between `d2/` and `d3/`: mid-load.
fn aws_tree(dir: &Path) {
    small_files(dir, AWS_FILES, 1500);
    random_file(&dir.join("d3-big.bin"), BIG_BYTES);
}

/// Device 3's tree: text files with `MARKER` in them (and one named `MARKER_NAME`), and one
/// 40 MiB random file.
fn sync_tree(dir: &Path) {
    for i in 0..SYNC_FILES {
        let sub = dir.join(format!("s{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        let name = if i == 7 {
            format!("{MARKER_NAME}.txt")
        } else {
            format!("note-{i:04}.txt")
        };
        let line = format!("{MARKER} note {i}\n");
        std::fs::write(sub.join(name), line.repeat(1 + (i * 53) % 600)).unwrap();
    }
    random_file(&dir.join("s-big.bin"), SYNC_BIG_BYTES);
}

/// `grep` for the marker content and name in every device's Garage directories: both must be
/// absent (Garage holds ciphertext and opaque names only).
fn assert_no_marker(data: &[PathBuf]) {
    let o = run(Command::new(crate::support::tool("grep"))
        .args(["-r", "-a", "-F", "-l", "-e", MARKER, "-e", MARKER_NAME])
        .args(data.iter().map(|d| d.join("cluster"))));
    assert_eq!(
        o.status.code(),
        Some(1),
        "grep found a marker in the clear (or failed): {}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// With two devices down: a PUT through `m` is refused with `ServiceUnavailable` naming the lost
/// write quorum, and an NFS CREATE through its export fails at once as read-only.
fn refuse_writes(m: &Member, nfs: &mut Client, nfs_root: &[u8], third: &Path, bucket: &str) {
    // Each device closes its own gate (within its 1 s health poll): wait for this one's.
    m.wait_status("writes refused on dev3", STATUS_LIMIT, |s| {
        s.contains("writes: REFUSED")
    });
    let o = m.upload(third, bucket);
    assert!(
        !o.status.success(),
        "a PUT with two devices down was accepted"
    );
    let err = stderr(&o);
    assert!(
        err.contains("ServiceUnavailable") && err.contains("write quorum lost"),
        "{err}"
    );
    // Once the device refuses writes (and its export has looked, every 100 ms), a create that
    // went through would leave an object behind, so one try decides.
    std::thread::sleep(Duration::from_millis(500));
    let refused = nfs.create(nfs_root, "quorum-lost.txt", 0, 0o644);
    assert_eq!(
        refused,
        Err(NFS3ERR_ROFS),
        "NFS CREATE without a write quorum"
    );
}

#[test]
fn device_cluster_carries_concurrent_loads_through_a_kill_and_degrades_as_documented() {
    let started = Instant::now();
    // The separate Garage the sealed data set is imported into.
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    // Both trees are made while the cluster comes up.
    let (aws_src, sync_src) = (dir.path().join("aws-src"), dir.path().join("sync-src"));
    let trees = std::thread::spawn({
        let (a, s) = (aws_src.clone(), sync_src.clone());
        move || {
            aws_tree(&a);
            sync_tree(&s);
            let mut want = hashes_under(&a, "cp/");
            want.extend(hashes_under(&s, "sync/"));
            want
        }
    });
    // The job counts the lines of some of s3cmd's text files (their PUTs go through device 3)
    // into `KEY.lines` objects and `lines` metadata.
    let program = dir.path().join("count-lines.py");
    std::fs::write(&program, COUNT_LINES).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Device 3 also serves NFS: its writes follow the cluster's write quorum too.
    let mut members = form_cluster(
        dir.path(),
        DEVICES,
        (
            &format!("s3://{}/{}", garage.bucket(), PREFIX.trim_end_matches('/')),
            garage.endpoint(),
        ),
        &[
            "--on-put",
            program.to_str().unwrap(),
            "--match",
            FUNCTION_MATCH,
        ],
        &[2],
    );
    let export = Export::of(members[2].device());
    let mut nfs = Client::connect(&export.addr);
    let nfs_root = nfs.mount(&export.path).unwrap();
    let data: Vec<PathBuf> = members.iter().map(|m| m.job.data.clone()).collect();
    let bucket = garage.bucket();
    let status = members[0].wait_status("full redundancy", STATUS_LIMIT, |s| {
        s.contains("redundancy: full")
    });
    assert!(status.contains("5 of 5 devices up"), "{status}");
    let mut want = trees.join().unwrap();
    let up = started.elapsed();

    // The two loads at once: the AWS CLI through device 1, s3cmd through device 3.
    let mut cp = members[0].device().aws();
    cp.args(["s3", "cp", "--recursive", "--no-progress"])
        .arg(&aws_src)
        .arg(format!("s3://{bucket}/cp/"));
    let mut cp = Load::spawn(cp);
    let mut sync = members[2].device().s3cmd();
    sync.args(["sync", "--no-progress"])
        .arg(format!("{}/", sync_src.display()))
        .arg(format!("s3://{bucket}/sync/"));
    let mut sync = Load::spawn(sync);

    // Mid-load, device 1 and its Garage node die. The AWS CLI retries the dead endpoint for
    // minutes; a user stops it and runs it again against another device.
    let mid = cp.wait_for("aws s3 cp through dev1", |seen| {
        seen.iter().filter(|l| l.starts_with("upload: ")).count() >= KILL_AFTER_ACKS
    });
    assert!(mid, "aws s3 cp ended before the kill: {:?}", cp.finish());
    members[0].kill();
    let killed_at = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let _ = cp.child.kill();
    let _ = cp.finish();
    let acked = cp.acked(bucket);
    let big_acked = acked.contains("cp/d3-big.bin");
    let sync_running = sync.child.try_wait().unwrap().is_none();
    let aws_total = AWS_FILES + 1;
    assert!(
        acked.len() < aws_total,
        "the kill was not mid-load: {} acknowledged",
        acked.len()
    );
    // A write in flight when dev1 died may have reached dev1 and one other holder only; the
    // survivors sync their tables once they see it down (the status names the loss until
    // then). After that, every upload the client saw acknowledged lists through every other
    // device.
    // Bounded like a return's restore: a sync under this load may first wait out Garage's
    // Merkle trees (30 s) and be tried again.
    members[1].wait_status("the tables synced after the loss", WHOLE_LIMIT, |s| {
        s.contains("missing devices: dev1)")
    });
    each(&members[1..], |m| {
        let listed = m.contents(bucket, false);
        let lost: Vec<&String> = acked.iter().filter(|k| !listed.contains_key(*k)).collect();
        assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    });
    let mut again = members[1].device().aws();
    again
        .args(["s3", "sync", "--no-progress"])
        .arg(&aws_src)
        .arg(format!("s3://{bucket}/cp/"));
    let mut again = Load::spawn(again);
    let (status, err) = again.finish();
    assert!(status.success(), "aws s3 sync through dev2: {err}");
    let resent = again.acked(bucket);
    let twice: Vec<&String> = resent.intersection(&acked).collect();
    assert!(
        twice.is_empty(),
        "aws s3 sync found acknowledged objects missing or different: {twice:?}"
    );
    let (status, err) = sync.finish();
    assert!(status.success(), "s3cmd sync through dev3: {err}");
    assert_eq!(
        sync.acked(bucket).len(),
        SYNC_FILES + 1,
        "s3cmd's uploads: {:?}",
        sync.seen
    );
    let loaded_at = started.elapsed();

    // The function ran on device 3 for each matching PUT it took: the derived objects list on
    // device 2, and the metadata shows there.
    let derived = derived_lines(&sync_src);
    let deadline = Instant::now() + FUNCTION_LIMIT;
    loop {
        let listed = members[1].contents(bucket, false);
        if derived.keys().all(|k| listed.contains_key(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev2 lists {} of the {} derived objects",
            derived.keys().filter(|k| listed.contains_key(*k)).count(),
            derived.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (one, lines_obj) = derived
        .iter()
        .next()
        .expect("some files match the function");
    let meta = boto3(
        &format!(
            "{CLIENT}
h = s3.head_object(Bucket=os.environ['BUCKET'], Key='{}')
print(h['Metadata'].get('lines'))
",
            one.trim_end_matches(".lines")
        ),
        |c| {
            members[1].device().env(c);
            c.env("BUCKET", bucket);
        },
    );
    assert_eq!(format!("{}\n", meta.trim()), lines_obj.0, "{one}");
    want.extend(derived.into_iter().map(|(k, (_, sha))| (k, sha)));
    let functions_at = started.elapsed();

    // Every object lists on every live device and reads back byte for byte from each; Garage's
    // directories are searched for the markers meanwhile.
    std::thread::scope(|s| {
        s.spawn(|| assert_no_marker(&data));
        each(&members[1..], |m| {
            m.check(bucket, &want, true, "after the load")
        });
    });
    let read_at = started.elapsed();
    let s = members[2].status();
    assert!(
        s.contains("writes: accepted") && s.contains("missing devices: dev1"),
        "{s}"
    );

    // Two lost: every object still reads; a PUT is refused, naming the lost quorum.
    members[4].kill();
    let s = members[1].wait_status("writes refused", STATUS_LIMIT, |s| {
        s.contains("writes: REFUSED")
    });
    assert!(
        s.contains("device dev1: DOWN") && s.contains("device dev5: DOWN"),
        "{s}"
    );
    assert!(s.contains("missing devices: dev1, dev5"), "{s}");
    let third = dir.path().join("third");
    tree(&third, "c", 1, false);
    // Every object still reads (through device 4) while writes are tried through device 3.
    let refused_at = std::thread::scope(|s| {
        s.spawn(|| members[3].check(bucket, &want, true, "with two devices down"));
        refuse_writes(&members[2], &mut nfs, &nfs_root, &third, bucket);
        started.elapsed()
    });
    let two_down_read_at = started.elapsed();

    // Both come back (same data dirs, same ports): writes resume, Garage brings them up to
    // date, and the status says so.
    std::thread::scope(|s| {
        for (i, m) in members.iter_mut().enumerate() {
            if i == 0 || i == 4 {
                s.spawn(move || m.device = Some(Unlocked::start(&m.job)));
            }
        }
    });
    let returned_at = started.elapsed();
    // A returned device serves only once the others have pushed it what it missed: its own
    // node answers listings, and without that push it would list only what it held before
    // (device 1 missed half the load).
    each([&members[0], &members[4]], |m| {
        m.check(bucket, &want, false, "right after the return")
    });
    // Blocks the returned devices missed are copied later (2 × Garage's RPC timeout after the
    // tables): until then redundancy is not full, whatever the partitions say.
    let s = members[1].status();
    assert!(
        !s.contains("redundancy: full"),
        "full at once after the return:\n{s}"
    );
    // Device 1 reads back everything it missed while Garage copies the blocks.
    let whole_at = std::thread::scope(|s| {
        s.spawn(|| members[0].check(bucket, &want, true, "through a returned device"));
        let s = members[1].wait_status("full redundancy again", WHOLE_LIMIT, |s| {
            s.contains("redundancy: full") && s.contains("writes: accepted")
        });
        assert!(s.contains("5 of 5 devices up"), "{s}");
        started.elapsed()
    });
    let o = members[2].upload(&third, bucket);
    assert!(
        o.status.success(),
        "upload via dev3 after the return: {}",
        stderr(&o)
    );
    for (key, bytes) in files(&third) {
        want.insert(key, hex(&sha256(&bytes)));
    }
    each(&members, |m| {
        m.check(bucket, &want, false, "once redundancy is full again")
    });
    // NFS writes through device 3 are accepted again.
    let created = wait_nfs_create(&mut nfs, &nfs_root, "quorum-back.txt");
    assert!(created.is_ok(), "NFS CREATE after the return: {created:?}");
    // The created (empty) file becomes an object once its create reaches the device.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !members[2]
        .contents(bucket, false)
        .contains_key("quorum-back.txt")
    {
        assert!(
            Instant::now() < deadline,
            "the NFS-created file never listed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    want.insert("quorum-back.txt".into(), hex(&sha256(b"")));

    // Sealed on devices 2 and 3 at once and imported from devices 4 and 5 in parallel, device 5
    // killed mid-way and resumed.
    let import = seal_and_import(&mut members, &garage, &want, (bucket, &third), started);
    eprintln!(
        "device cluster: 5 devices up and trees made in {:.1} s; dev1 killed at {:.1} s with \
         {} of {aws_total} aws uploads acknowledged (1 GiB file {}, s3cmd {}); loads done at \
         {:.1} s (aws s3 sync sent {}); derived objects listed at {:.1} s; read back on 4 devices by {:.1} s; writes refused at \
         {:.1} s, read back with two down by {:.1} s; returned at {:.1} s; full redundancy at {:.1} s; sealed at {:.1} s; \
         dev5 killed while importing at {:.1} s with {} of its share's objects in the target; \
         imported at {:.1} s (dev5's resumed run sent {}, found {} whole); whole test {:.1} s",
        up.as_secs_f64(),
        killed_at.as_secs_f64(),
        acked.len(),
        if big_acked { "done" } else { "in flight" },
        if sync_running {
            "still running"
        } else {
            "done"
        },
        loaded_at.as_secs_f64(),
        resent.len(),
        functions_at.as_secs_f64(),
        read_at.as_secs_f64(),
        refused_at.as_secs_f64(),
        two_down_read_at.as_secs_f64(),
        returned_at.as_secs_f64(),
        whole_at.as_secs_f64(),
        import.sealed.as_secs_f64(),
        import.killed.as_secs_f64(),
        import.in_target_at_kill,
        import.imported.as_secs_f64(),
        import.resumed_sent,
        import.resumed_found,
        started.elapsed().as_secs_f64()
    );
    // Stopping 5 devices and removing some 10 GiB of Garage data is part of the test's cost.
    drop(nfs);
    let t = Instant::now();
    drop(members);
    let stopped = t.elapsed();
    drop(dir);
    eprintln!(
        "device cluster: devices stopped in {:.1} s, data removed in {:.1} s",
        stopped.as_secs_f64(),
        (t.elapsed() - stopped).as_secs_f64()
    );
}

/// The derived objects the function writes for s3cmd's files under `sync_src` that it matches
/// (`FUNCTION_MATCH`: a prefix and a suffix): `KEY.lines` → (its content, its SHA-256).
fn derived_lines(sync_src: &Path) -> BTreeMap<String, (String, String)> {
    let (head, tail) = FUNCTION_MATCH.split_once('*').unwrap();
    files(sync_src)
        .into_iter()
        .map(|(rel, bytes)| (format!("sync/{rel}"), bytes))
        .filter(|(key, _)| key.starts_with(head) && key.ends_with(tail))
        .map(|(key, bytes)| {
            let text = format!("{}\n", bytes.iter().filter(|b| **b == b'\n').count());
            let sha = hex(&sha256(text.as_bytes()));
            (format!("{key}.lines"), (text, sha))
        })
        .collect()
}
