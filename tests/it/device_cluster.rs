//! Device clusters (issue 19) with real clients: five `device unlock` processes, each running
//! its own Garage node (replication 3, a zone per device) on loopback, are set up by `device
//! cluster create|join`; the AWS CLI puts a tree through one device and every device lists and
//! returns it byte for byte; with one device killed (-9, its Garage node too) loads go on
//! through the others; with two killed every object still reads, a PUT gets
//! `ServiceUnavailable` naming the lost write quorum, and `device status` names both devices.
//!
//! Sizes are small (24 files, one of 20 MiB that spans three segments): the test checks the
//! wiring and the failure behaviour, not throughput.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::device::{Job, Unlocked};
use crate::device_nfs::{Export, NFS3ERR_ROFS};
use crate::support::nfs::Client;
use crate::support::{free_port, run, stderr, stdout, tidegate};

const DEVICES: usize = 5;
/// How long a status change may take to show (Garage notices a lost node within seconds).
const STATUS_LIMIT: Duration = Duration::from_secs(90);
/// How long a return may take to be fully redundant: the table sync, then Garage's block
/// resync delay (2 × the cluster's 20 s RPC timeout), on a loaded 2-core machine.
const WHOLE_LIMIT: Duration = Duration::from_secs(180);

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

    /// Lists the bucket through this device and compares the keys with `want`'s.
    fn check_listing(&self, bucket: &str, want: &[(String, Vec<u8>)], when: &str) {
        let o =
            run(self
                .device()
                .aws()
                .args(["s3", "ls", "--recursive", &format!("s3://{bucket}/")]));
        assert!(o.status.success(), "list: {}", stderr(&o));
        let mut got: Vec<String> = stdout(&o)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .collect();
        got.sort();
        let want: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            got,
            want,
            "{when}: listing through {} ({} of {} objects)",
            self.job.data.display(),
            got.len(),
            want.len()
        );
    }

    /// Downloads the whole bucket through this device and compares it with `want`.
    fn check_all(&self, bucket: &str, scratch: &Path, want: &[(String, Vec<u8>)]) {
        let name = self.job.data.file_name().unwrap().to_string_lossy();
        let out = scratch.join(format!("get-{name}-{}", free_port()));
        let o = run(self.device().aws().args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            &format!("s3://{bucket}/"),
            out.to_str().unwrap(),
        ]));
        assert!(o.status.success(), "download: {}", stderr(&o));
        let got = files(&out);
        assert_eq!(got.len(), want.len(), "object count");
        for (g, w) in got.iter().zip(want) {
            assert!(g == w, "{} differs from what was put", g.0);
        }
        std::fs::remove_dir_all(&out).unwrap();
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
pub(crate) fn each(members: &[Member], check: impl Fn(&Member) + Sync) {
    std::thread::scope(|s| {
        for m in members {
            let check = &check;
            s.spawn(move || check(m));
        }
    });
}

/// Creates an import job on device 1 of `devices` (into `target`, an s3:// URL at `endpoint`),
/// sets up the cluster with `device cluster create|join` and unlocks every device at once (each
/// waits for the layout that needs all of them); the devices numbered (from 0) in `nfs` also
/// serve their NFS export.
pub(crate) fn form_cluster(
    dir: &Path,
    devices: usize,
    target: &str,
    endpoint: &str,
    nfs: &[usize],
) -> Vec<Member> {
    let data: Vec<PathBuf> = (1..=devices).map(|i| dir.join(format!("dev{i}"))).collect();
    for d in &data {
        std::fs::create_dir_all(d).unwrap();
    }
    let manifest = dir.join("job.manifest.json");
    let o = run(tidegate(&data[0]).args([
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
    ]));
    assert!(o.status.success(), "job create: {}", stderr(&o));
    let created = stdout(&o);
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    let (job_id, code) = (field(&created, "job"), field(&created, "unlock code"));

    let node_args = |i: usize| -> Vec<String> {
        vec![
            "--manifest".into(),
            manifest.to_str().unwrap().into(),
            "--name".into(),
            format!("dev{}", i + 1),
            "--rpc-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--garage-s3-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--garage-admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--capacity".into(),
            "1GiB".into(),
        ]
    };
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

#[test]
fn device_cluster_serves_one_data_set_and_degrades_as_documented() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Device 3 also serves NFS: its writes follow the cluster's write quorum too.
    let mut members = form_cluster(
        dir.path(),
        DEVICES,
        "s3://target/cluster",
        "http://127.0.0.1:9",
        &[2],
    );
    let export = Export::of(members[2].device());
    let mut nfs = Client::connect(&export.addr);
    let nfs_root = nfs.mount(&export.path).unwrap();
    let data: Vec<PathBuf> = members.iter().map(|m| m.job.data.clone()).collect();
    let up = started.elapsed();
    let bucket = "target";
    let status = members[0].wait_status("full redundancy", STATUS_LIMIT, |s| {
        s.contains("redundancy: full")
    });
    assert!(status.contains("5 of 5 devices up"), "{status}");

    // Put through device 1; every device lists and returns the same bytes.
    let first = dir.path().join("first");
    tree(&first, "a", 20, true);
    let o = members[0].upload(&first, bucket);
    assert!(o.status.success(), "upload via dev1: {}", stderr(&o));
    let mut want = files(&first);
    // Each device on its own thread: the checks are independent and mostly wait on the clients.
    each(&members, |m| m.check_all(bucket, dir.path(), &want));
    let loaded = started.elapsed();
    // Garage's disks hold ciphertext and opaque names only: neither a file's content nor its
    // name appears anywhere in a device's Garage metadata or data.
    let marker_content = b"a file 7\na file 7\n".to_vec();
    let marker_name = b"a-7.txt".to_vec();
    for d in &data {
        for (path, bytes) in files(&d.join("cluster")) {
            for marker in [&marker_content, &marker_name] {
                assert!(
                    !bytes.windows(marker.len()).any(|w| w == &marker[..]),
                    "{} holds {:?} in the clear",
                    path,
                    String::from_utf8_lossy(marker)
                );
            }
        }
    }

    // One device lost: loads continue through the others, nothing is refused.
    members[4].kill();
    members[0].wait_status("dev5 down", STATUS_LIMIT, |s| {
        s.contains("device dev5: DOWN")
    });
    let second = dir.path().join("second");
    tree(&second, "b", 4, false);
    let o = members[1].upload(&second, bucket);
    assert!(
        o.status.success(),
        "upload via dev2 with dev5 down: {}",
        stderr(&o)
    );
    want.extend(files(&second));
    want.sort();
    members[3].check_all(bucket, dir.path(), &want);
    let s = members[2].status();
    assert!(
        s.contains("writes: accepted") && s.contains("missing devices: dev5"),
        "{s}"
    );

    // Two lost: every object still reads; a PUT is refused, naming the lost quorum.
    members[3].kill();
    let s = members[0].wait_status("writes refused", STATUS_LIMIT, |s| {
        s.contains("writes: REFUSED")
    });
    assert!(
        s.contains("device dev4: DOWN") && s.contains("device dev5: DOWN"),
        "{s}"
    );
    assert!(s.contains("missing devices: dev4, dev5"), "{s}");
    members[1].check_all(bucket, dir.path(), &want);
    let third = dir.path().join("third");
    tree(&third, "c", 1, false);
    let o = members[2].upload(&third, bucket);
    assert!(
        !o.status.success(),
        "a PUT with two devices down was accepted"
    );
    let err = stderr(&o);
    assert!(
        err.contains("ServiceUnavailable") && err.contains("write quorum lost"),
        "{err}"
    );
    // NFS writes through device 3 fail at once as read-only (not JUKEBOX, which a hard mount
    // would retry for ever), while reads go on.
    // Once device 3 itself refuses writes (and its export has looked, every 100 ms), a create
    // that went through would leave an object behind, so one try decides.
    members[2].wait_status("writes refused on dev3", STATUS_LIMIT, |s| {
        s.contains("writes: REFUSED")
    });
    std::thread::sleep(Duration::from_millis(500));
    let refused = nfs.create(&nfs_root, "quorum-lost.txt", 0, 0o644);
    assert_eq!(
        refused,
        Err(NFS3ERR_ROFS),
        "NFS CREATE without a write quorum"
    );
    let refused_at = started.elapsed();

    // Both come back (same data dirs, same ports): writes resume, Garage brings them up to
    // date, and the status says so.
    for m in &mut members[3..] {
        m.device = Some(Unlocked::start(&m.job));
    }
    let returned_at = started.elapsed();
    // A returned device serves only once the others have pushed it what it missed: its own
    // node answers listings, and without that push it would list only what it held before.
    each(&members[3..], |m| {
        m.check_listing(bucket, &want, "right after the return")
    });
    // Blocks the returned devices missed are copied later (2 × Garage's RPC timeout after the
    // tables): until then redundancy is not full, whatever the partitions say.
    let s = members[0].status();
    assert!(
        !s.contains("redundancy: full"),
        "full at once after the return:\n{s}"
    );
    let s = members[0].wait_status("full redundancy again", WHOLE_LIMIT, |s| {
        s.contains("redundancy: full") && s.contains("writes: accepted")
    });
    assert!(s.contains("5 of 5 devices up"), "{s}");
    let whole_at = started.elapsed();
    each(&members, |m| {
        m.check_listing(bucket, &want, "once redundancy is full again")
    });
    let o = members[2].upload(&third, bucket);
    assert!(
        o.status.success(),
        "upload via dev3 after the return: {}",
        stderr(&o)
    );
    want.extend(files(&third));
    want.sort();
    members[4].check_all(bucket, dir.path(), &want);
    // NFS writes through device 3 are accepted again.
    let created = wait_nfs_create(&mut nfs, &nfs_root, "quorum-back.txt");
    assert!(created.is_ok(), "NFS CREATE after the return: {created:?}");
    eprintln!(
        "device cluster: writes refused {:.1} s in, returned at {:.1} s, full redundancy at \
         {:.1} s, checked at {:.1} s",
        refused_at.as_secs_f64(),
        returned_at.as_secs_f64(),
        whole_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "device cluster: 5 devices up in {:.1} s, loaded and read on all in {:.1} s, whole test {:.1} s",
        up.as_secs_f64(),
        loaded.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
