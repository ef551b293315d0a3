//! Sealing and importing a device cluster's data set (issue 19 item 4, ADR 0017): the last
//! phase of the 5-device test in `device_cluster.rs`, run on its cluster once it is fully
//! redundant again after the kills, over the whole load (2,000 files, 1 GiB, s3cmd's tree).
//!
//! `job seal` on devices 2 and 3 at the same moment freezes the data set on every device (both
//! seals finish, with the same objects) and uploads are refused. `job import --share 1/2` on
//! device 4 and `--share 2/2` on device 5 import it in parallel into a separate Garage; a second
//! run of share 2 started on device 3 meanwhile is refused, naming device 5. Device 5 (its
//! daemon, its Garage node and its import) is killed with -9 mid-way, and its share resumed on
//! it with the device still down (the import starts the device's Garage node itself and takes
//! over the killed run's claim). boto3 then finds every object once, byte for byte; every object
//! that was in the target at the kill keeps its LastModified and ETag (it was not sent again);
//! and the one report lists every object, with each share's runs, whose sent and found-whole
//! counts add up to the share's objects exactly, and every outcome of the job's function on PUT.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::{CLIENT, boto3, garage_env, target_hashes};
use crate::device_cluster::{Member, each};
use crate::support::garage::Garage;
use crate::support::{run, stderr, stdout, tidegate};

/// Where the job imports to in the target bucket.
pub(crate) const PREFIX: &str = "imported/";
/// How long the other devices may take to show a seal (they look every second).
const SEAL_SHOWN_LIMIT: Duration = Duration::from_secs(30);
/// How long a seal, or a share's import, may take on a loaded 2-core machine.
const IMPORT_LIMIT: Duration = Duration::from_secs(900);
/// Device 5 is killed once this many objects of its share are in the target: a third of it.
const KILL_AT: usize = 1000;
/// The share holding the 1 GiB file (the largest object goes to share 1; every other object
/// then goes to share 2, which stays the lighter) and the one holding the small objects.
const BIG_SHARE: &str = "1/2";
const SMALL_SHARE: &str = "2/2";

/// `job import --share SHARE` on `member`'s data dir, into `garage`.
fn import_cmd(member: &Member, garage: &Garage, share: &str) -> Command {
    let mut cmd = tidegate(&member.job.data);
    cmd.args(["job", "import", "--parallel", "4", "--share", share])
        .arg("--manifest")
        .arg(&member.job.manifest)
        .env("TIDEGATE_UNLOCK_CODE", &member.job.code);
    garage_env(garage, &mut cmd);
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every object in the target under `PREFIX`: key (without it) → (LastModified, ETag).
fn target_stamps(garage: &Garage) -> BTreeMap<String, (String, String)> {
    let script = format!(
        "{CLIENT}
p = s3.get_paginator('list_objects_v2')
for page in p.paginate(Bucket=os.environ['BUCKET'], Prefix='{PREFIX}'):
    for o in page.get('Contents', []):
        print(o['Key'][len('{PREFIX}'):], o['LastModified'].isoformat(), o['ETag'].strip('\"'))
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

/// Waits (at most `IMPORT_LIMIT`) for `child` to exit successfully; its output.
fn wait_exit(child: &mut Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + IMPORT_LIMIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not finish");
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
    assert!(status.success(), "{what}: {out}{err}");
    std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

/// When each step of the phase ended, from the test's start (for its closing line).
pub(crate) struct Timings {
    pub sealed: Duration,
    pub killed: Duration,
    pub in_target_at_kill: usize,
    pub imported: Duration,
    pub resumed_sent: u64,
    pub resumed_found: u64,
}

/// Seals on devices 2 and 3, imports share 1 on device 4 and share 2 on device 5 into
/// `garage`, kills device 5 mid-way and resumes its share there, and checks the target and the
/// report against `want` (key → SHA-256 of every object in the data set). `bucket` is the
/// devices' bucket; `late` a directory holding one file, for the refused upload.
pub(crate) fn seal_and_import(
    members: &mut [Member],
    garage: &Garage,
    want: &BTreeMap<String, String>,
    (bucket, late): (&str, &std::path::Path),
    started: Instant,
) -> Timings {
    let total = want.len();
    // Seal on devices 2 and 3 at the same moment: both finish, with the same objects (every
    // device stopped writing before either wrote its manifest); every device refuses writes and
    // says so.
    let mut sealers: Vec<Child> = [&members[1], &members[2]]
        .iter()
        .map(|m| {
            let mut seal = tidegate(&m.job.data);
            seal.args(["job", "seal"]);
            spawn(seal)
        })
        .collect();
    for sealer in &mut sealers {
        let o = wait_exit(sealer, "job seal");
        assert!(
            stdout(&o).contains(&format!("sealed: {total} objects")),
            "{}",
            stdout(&o)
        );
    }
    each(members.iter(), |m| {
        m.wait_status("SEALED", SEAL_SHOWN_LIMIT, |s| {
            s.contains("job state: SEALED")
        });
    });
    for m in [&members[0], &members[2]] {
        let o = m.upload(late, bucket);
        assert!(!o.status.success(), "a PUT after the seal was accepted");
        assert!(stderr(&o).contains("AccessDenied"), "{}", stderr(&o));
    }
    let sealed = started.elapsed();

    // Share 1 (the 1 GiB file) on device 4 and share 2 (every other object) on device 5, at
    // once, each beside its serving (now read-only) device, through its Garage node.
    let mut big = spawn(import_cmd(&members[3], garage, BIG_SHARE));
    let mut small = spawn(import_cmd(&members[4], garage, SMALL_SHARE));
    let small_in_target = |stamps: &BTreeMap<String, (String, String)>| {
        stamps.keys().filter(|k| *k != "cp/d3-big.bin").count()
    };
    let wait_in_target = |small: &mut Child, n: usize| {
        let deadline = Instant::now() + IMPORT_LIMIT;
        while small_in_target(&target_stamps(garage)) < n {
            assert!(
                small.try_wait().unwrap().is_none(),
                "share {SMALL_SHARE} ended before {n} of its objects were seen in the target"
            );
            assert!(Instant::now() < deadline, "share {SMALL_SHARE} stalled");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Share 2 is under way: the same share started on device 3 now is refused (it would send
    // share 2's objects a second time), naming the device running it.
    wait_in_target(&mut small, 1);
    let o = run(&mut import_cmd(&members[2], garage, SMALL_SHARE));
    assert!(
        !o.status.success(),
        "a second run of share {SMALL_SHARE} at once was accepted: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains(&format!(
            "share {SMALL_SHARE} is being imported by device dev5"
        )),
        "{}",
        stderr(&o)
    );
    // Mid-way, device 5 dies: its daemon, its Garage node and its import.
    wait_in_target(&mut small, KILL_AT);
    let _ = small.kill();
    members[4].kill();
    let _ = small.wait();
    let killed = started.elapsed();
    // A PUT whose body had reached the target before the kill may still land: look once the
    // target has had a moment.
    std::thread::sleep(Duration::from_secs(1));
    let before = target_stamps(garage);
    let in_target_at_kill = small_in_target(&before);
    assert!(
        in_target_at_kill < total - 1,
        "the kill was not mid-way: {in_target_at_kill} of share {SMALL_SHARE}'s {} objects in \
         the target",
        total - 1
    );

    // Share 2 resumed on device 5 with the device still down: the import starts its Garage
    // node (which rejoins the cluster it left), takes over the killed run's claim once its beat
    // has stopped, and sends only what is not in the target whole.
    let resumed = run(&mut import_cmd(&members[4], garage, SMALL_SHARE));
    assert!(
        resumed.status.success(),
        "share {SMALL_SHARE} resumed on dev5: {}{}",
        stdout(&resumed),
        stderr(&resumed)
    );
    let first = wait_exit(&mut big, "share 1 on dev4");
    let imported = started.elapsed();
    // Whichever share finished last wrote the job's one report; the other said it waited.
    let (last, other, reporter) = if stdout(&resumed).contains("report: ") {
        (&resumed, &first, &members[4])
    } else {
        (&first, &resumed, &members[3])
    };
    assert!(stdout(last).contains("report: "), "{}", stdout(last));
    assert!(
        stdout(other).contains("are not finished"),
        "{}",
        stdout(other)
    );

    // Every object is in the target exactly once, byte for byte (boto3 reads and hashes each).
    let got: BTreeMap<String, String> = target_hashes(garage, PREFIX)
        .into_iter()
        .map(|(k, sha, _)| (k, sha))
        .collect();
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "target holds {} of {total} objects; missing {missing:?}, unexpected {extra:?}",
        got.len()
    );
    for (key, sha) in want {
        assert_eq!(
            &got[key], sha,
            "{key} in the target differs from its source"
        );
    }
    // Nothing already in the target at the kill was sent again.
    let after = target_stamps(garage);
    for (key, stamp) in &before {
        assert_eq!(
            after.get(key),
            Some(stamp),
            "{key} was rewritten after the resume"
        );
    }

    let (sent, found) = check_report(reporter, want);
    Timings {
        sealed,
        killed,
        in_target_at_kill,
        imported,
        resumed_sent: sent,
        resumed_found: found,
    }
}

/// The one report (written by `reporter`, the last share to finish) lists every object of
/// `want` once, all imported, with both shares: share 1's one run on device 4, share 2's killed
/// run and its resumed run on device 5, whose counts add up to the share's objects exactly.
/// Returns what the resumed run sent and found whole.
fn check_report(reporter: &Member, want: &BTreeMap<String, String>) -> (u64, u64) {
    let total = want.len() as u64;
    let job = &reporter.job;
    let path = job.data.join("device").join(&job.id).join("report.json");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(report["state"], "COMPLETE", "{report}");
    assert_eq!(report["objects"], total, "{report}");
    assert_eq!(report["imported_objects"], total, "{report}");
    assert_eq!(report["failed_objects"], 0, "{report}");
    // The function's outcomes, recorded by device 3 in the cluster, are in the one report
    // (written on device 4 or 5): one `ok` per object it matched, naming its derived object.
    let functions = &report["functions"];
    let matched: Vec<&str> = want
        .keys()
        .filter_map(|k| k.strip_suffix(".lines"))
        .collect();
    assert_eq!(functions["ok"], matched.len(), "{functions}");
    assert_eq!(functions["not_run"], 0, "{functions}");
    let outcomes: Vec<(&str, &str, &str)> = functions["outcomes"]
        .as_array()
        .expect("function outcomes in the report")
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
                o["derived"][0].as_str().unwrap_or(""),
            )
        })
        .collect();
    let lines: Vec<String> = matched.iter().map(|k| format!("{k}.lines")).collect();
    let want_outcomes: Vec<(&str, &str, &str)> = matched
        .iter()
        .zip(&lines)
        .map(|(k, l)| (*k, "ok", l.as_str()))
        .collect();
    assert_eq!(outcomes, want_outcomes, "{functions}");
    let csv = std::fs::read_to_string(path.with_file_name("report.csv")).unwrap();
    let mut rows: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    rows.sort();
    let keys: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(rows, keys, "report.csv rows");
    let shares = report["shares"].as_array().expect("shares in the report");
    assert_eq!(shares.len(), 2, "{report}");
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(shares[0]["share"], BIG_SHARE);
    assert_eq!(shares[0]["objects"], 1, "{report}");
    assert_eq!(shares[0]["runs"][0]["device"], "dev4", "{report}");
    assert_eq!(shares[0]["runs"][0]["finished"], true, "{report}");
    let runs = shares[1]["runs"].as_array().unwrap();
    assert_eq!(shares[1]["share"], SMALL_SHARE);
    assert_eq!(runs.len(), 2, "{report}");
    assert_eq!(runs[0]["device"], "dev5");
    assert_eq!(runs[0]["finished"], false);
    assert_eq!(runs[1]["device"], "dev5");
    assert_eq!(runs[1]["finished"], true);
    // The killed run counted what it had checkpointed; the resumed run sent only what was not
    // in the target whole and found the rest (sent before the kill's last checkpoint) there.
    assert_eq!(
        n(&runs[0]["sent_objects"]) + n(&runs[1]["sent_objects"]) + n(&runs[1]["found_objects"]),
        n(&shares[1]["objects"]),
        "share {SMALL_SHARE}'s objects sent once each: {report}"
    );
    assert_eq!(
        n(&shares[0]["objects"]) + n(&shares[1]["objects"]),
        total,
        "{report}"
    );
    (n(&runs[1]["sent_objects"]), n(&runs[1]["found_objects"]))
}
