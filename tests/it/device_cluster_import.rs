//! Sealing and importing a device cluster's data set (issue 19 item 4) with real clients: a
//! 3-device cluster is loaded through two devices with the AWS CLI, `job seal` on devices 2
//! and 3 at the same moment freezes it on every device (both seals finish, with the same
//! objects), and `job import --share 1/2` on device 1 and `--share 2/2` on device 3 import it
//! in parallel into a separate Garage. A second run of share 1 started meanwhile is refused,
//! naming device 1. The importer of share 1 is killed (-9) mid-way and its share resumed on
//! device 2, locked first (the import starts its Garage node): boto3 then finds every object
//! once, byte for byte, every object that was already in the target at the kill keeps its
//! LastModified (it was not sent again), and the one report lists every object with both
//! shares' runs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::{
    CLIENT, boto3, files_under, garage_env, sha256_file, small_files, target_hashes,
};
use crate::device_cluster::{Member, form_cluster};
use crate::support::garage::Garage;
use crate::support::s3::S3Server;
use crate::support::{run, stderr, stdout, tidegate};

const PREFIX: &str = "imported/";
/// How long the other devices may take to show a seal (they look every second).
const SEAL_SHOWN_LIMIT: Duration = Duration::from_secs(30);

/// `job import --share SHARE` on `member`'s data dir, into `garage`.
fn import_cmd(member: &Member, garage: &Garage, share: &str, extra: &[&str]) -> Command {
    let mut cmd = tidegate(&member.job.data);
    cmd.args(["job", "import", "--share", share, "--manifest"])
        .arg(&member.job.manifest)
        .args(extra)
        .env("TIDEGATE_UNLOCK_CODE", &member.job.code);
    garage_env(garage, &mut cmd);
    cmd
}

/// Every object in the target under `PREFIX`: key → (LastModified, ETag).
fn target_stamps(garage: &Garage) -> std::collections::BTreeMap<String, (String, String)> {
    let script = format!(
        "{CLIENT}
p = s3.get_paginator('list_objects_v2')
for page in p.paginate(Bucket=os.environ['BUCKET'], Prefix='{PREFIX}'):
    for o in page.get('Contents', []):
        print(o['Key'], o['LastModified'].isoformat(), o['ETag'].strip('\"'))
"
    );
    boto3(&script, |c| garage_env(garage, c))
        .lines()
        .map(|l| {
            let mut it = l.rsplitn(3, ' ');
            let etag = it.next().unwrap().to_owned();
            let modified = it.next().unwrap().to_owned();
            (it.next().unwrap().to_owned(), (modified, etag))
        })
        .collect()
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "job import did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "job import: {out}{err}");
    std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

#[test]
fn device_cluster_seals_on_any_device_and_imports_in_shares_exactly_once() {
    let started = Instant::now();
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let mut members = form_cluster(
        dir.path(),
        3,
        &format!("s3://{}/{}", garage.bucket(), PREFIX.trim_end_matches('/')),
        garage.endpoint(),
        &[],
    );
    let up = started.elapsed();
    let bucket = garage.bucket().to_owned();

    // Load through two devices: small files through device 1 (and a 20 MiB one that spans
    // segments and goes up to the target in parts), more through device 3.
    let first = dir.path().join("first");
    small_files(&first, 120, 1500);
    crate::device_cluster::tree(&first.join("t"), "a", 3, true);
    let second = dir.path().join("second");
    small_files(&second.join("more"), 60, 1500);
    let o = members[0].upload(&first, &bucket);
    assert!(o.status.success(), "upload via dev1: {}", stderr(&o));
    let o = members[2].upload(&second, &bucket);
    assert!(o.status.success(), "upload via dev3: {}", stderr(&o));
    let mut want: Vec<(String, String)> = files_under(&first)
        .into_iter()
        .chain(files_under(&second))
        .map(|(k, p)| (k, sha256_file(&p)))
        .collect();
    want.sort();
    let total = want.len();

    // Seal on devices 2 and 3 at the same moment: both finish, with the same objects (every
    // device stopped writing before either wrote its manifest); every device refuses writes and
    // says so.
    let sealers: Vec<Child> = [&members[1], &members[2]]
        .iter()
        .map(|m| {
            tidegate(&m.job.data)
                .args(["job", "seal"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut sealer in sealers {
        let o = wait_exit(&mut sealer, Duration::from_secs(180));
        assert!(
            stdout(&o).contains(&format!("sealed: {total} objects")),
            "{}",
            stdout(&o)
        );
    }
    for m in &members {
        m.wait_status("SEALED", SEAL_SHOWN_LIMIT, |s| {
            s.contains("job state: SEALED")
        });
    }
    let late = dir.path().join("late");
    small_files(&late, 1, 100);
    for m in [&members[0], &members[2]] {
        let o = m.upload(&late, &bucket);
        assert!(!o.status.success(), "a PUT after the seal was accepted");
        assert!(stderr(&o).contains("AccessDenied"), "{}", stderr(&o));
    }
    let sealed_at = started.elapsed();

    // Share 1 of 2 on device 1 (its upload rate capped so the kill lands mid-way: the 20 MiB
    // object is in this share, the largest goes to share 1), share 2 on device 3, at once.
    let spawn = |m: &Member, share: &str, extra: &[&str]| {
        import_cmd(m, &garage, share, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut one = spawn(
        &members[0],
        "1/2",
        &["--parallel", "2", "--upload-limit", "8KiB"],
    );
    let mut two = spawn(&members[2], "2/2", &["--parallel", "4"]);
    let o = wait_exit(&mut two, Duration::from_secs(300));
    let out = stdout(&o);
    assert!(
        out.contains("share 2/2 done; shares 1/2 are not finished"),
        "{out}"
    );
    // Share 1 is still sending its large object: the same share started on device 3 now is
    // refused (it would send share 1's objects a second time), naming the device running it.
    let o = run(&mut import_cmd(&members[2], &garage, "1/2", &[]));
    assert!(
        !o.status.success(),
        "a second run of share 1/2 at once was accepted: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("share 1/2 is being imported by device dev1"),
        "{}",
        stderr(&o)
    );
    // Then kill share 1 there.
    assert!(
        one.try_wait().unwrap().is_none(),
        "share 1 finished before it could be killed"
    );
    let _ = one.kill();
    let _ = one.wait();
    let killed_at = started.elapsed();
    let before = target_stamps(&garage);
    assert!(
        !before.is_empty() && before.len() < total,
        "the kill was not mid-way: {} of {total} objects in the target",
        before.len()
    );

    // Resume share 1 on another device (2), locked first: the import starts the device's
    // Garage node itself, takes over the claim of the killed run once its beat has stopped,
    // completes the import and writes the report.
    let dev2 = members[1].device.take().unwrap();
    dev2.lock(&members[1].job);
    let o = run(&mut import_cmd(
        &members[1],
        &garage,
        "1/2",
        &["--parallel", "4"],
    ));
    assert!(
        o.status.success(),
        "resumed share 1 on dev2: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("report: "), "{}", stdout(&o));
    let imported_at = started.elapsed();

    // Every object is in the target exactly once, byte for byte (boto3 reads and hashes each).
    let got: Vec<(String, String)> = target_hashes(&garage, PREFIX)
        .into_iter()
        .map(|(k, sha, _)| (k, sha))
        .collect();
    assert_eq!(got.len(), total, "objects in the target");
    assert_eq!(got, want, "the target's objects and their SHA-256");
    // Nothing already in the target at the kill was sent again.
    let after = target_stamps(&garage);
    for (key, stamp) in &before {
        assert_eq!(
            after.get(key),
            Some(stamp),
            "{key} was rewritten after the resume"
        );
    }

    // One report, written by the last share to finish, lists every object once.
    let job = &members[1].job;
    let path = job.data.join("device").join(&job.id).join("report.json");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report["state"], "COMPLETE", "{report}");
    assert_eq!(report["objects"], total as u64, "{report}");
    assert_eq!(report["imported_objects"], total as u64, "{report}");
    assert_eq!(report["failed_objects"], 0, "{report}");
    let csv = std::fs::read_to_string(path.with_file_name("report.csv")).unwrap();
    let mut rows: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    rows.sort();
    let keys: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(rows, keys, "report.csv rows");
    // Both shares and their runs: share 1's killed run counted what it had checkpointed, the
    // resumed run sent only what was not in the target whole.
    let shares = report["shares"].as_array().expect("shares in the report");
    assert_eq!(shares.len(), 2, "{report}");
    let runs = shares[0]["runs"].as_array().unwrap();
    assert_eq!(shares[0]["share"], "1/2");
    assert_eq!(runs.len(), 2, "{report}");
    assert_eq!(runs[0]["device"], "dev1");
    assert_eq!(runs[0]["finished"], false);
    assert_eq!(runs[1]["device"], "dev2");
    assert_eq!(runs[1]["finished"], true);
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(
        n(&runs[0]["sent_objects"]) + n(&runs[1]["sent_objects"]) + n(&runs[1]["found_objects"]),
        n(&shares[0]["objects"]),
        "share 1's objects sent once each: {report}"
    );
    assert_eq!(
        n(&shares[0]["objects"]) + n(&shares[1]["objects"]),
        total as u64,
        "{report}"
    );
    assert_eq!(shares[1]["runs"][0]["device"], "dev3");
    eprintln!(
        "device cluster import: 3 devices up in {:.1} s, loaded and sealed at {:.1} s, share 1 \
         killed at {:.1} s with {} of {total} objects in the target, imported at {:.1} s \
         (share 1 run 2: {} sent, {} found whole), whole test {:.1} s",
        up.as_secs_f64(),
        sealed_at.as_secs_f64(),
        killed_at.as_secs_f64(),
        before.len(),
        imported_at.as_secs_f64(),
        runs[1]["sent_objects"],
        runs[1]["found_objects"],
        started.elapsed().as_secs_f64()
    );
}
