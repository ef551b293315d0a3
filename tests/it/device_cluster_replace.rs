//! Replacing a dead device of a device cluster (issue 19; docs/operations.md, "Replacing a
//! device"): three devices on loopback, each with its Garage node (replication 3 needs the three
//! zones). Objects go in with the AWS CLI through device 1, the creating device, which is then
//! killed (-9) with its Garage node for good. A fourth device joins in its place with a token
//! that device 2 prints (`device cluster token`; the first token names device 1's node). Its
//! unlock refuses to replace a device that is up and a name that is not in the cluster; in
//! device 1's place it serves, lists every object at once, and the status of the devices says
//! full redundancy again without naming device 1. A write through it lists on device 2; then
//! devices 2 and 3 are killed too and the replacement alone lists and returns every object
//! byte-identical: Garage copied everything onto it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::device::{Job, Unlocked};
use crate::device_cluster::{Member, each, field, form_cluster, hashes_under, node_args, tree};
use crate::support::{run, stderr, stdout, tidegate};

/// How long a status change may take to show (Garage notices a lost node within seconds).
const STATUS_LIMIT: Duration = Duration::from_secs(90);
/// How long the replacement may take to be fully redundant once it serves: Garage's move to the
/// new layout, the table sync, then Garage's block resync delay (2 × the cluster's 20 s RPC
/// timeout), on a loaded 2-core machine.
const WHOLE_LIMIT: Duration = Duration::from_secs(240);
/// The job's target: recorded at `job create`, used only by an import, which this test does not
/// run (nothing listens there).
const TARGET: (&str, &str) = ("s3://replace-target/job", "http://127.0.0.1:9");
const BUCKET: &str = "replace-target";

/// `device unlock` of `job`, which must fail: its stderr.
fn refused_unlock(job: &Job) -> String {
    let mut child = Unlocked::command(job, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "unlock neither served nor refused in 120 s:\n{}{}",
                stdout(&o),
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "unlock served:\n{}", stdout(&o));
    stderr(&o)
}

#[test]
fn device_cluster_replaces_a_dead_device_with_a_new_one() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut members = form_cluster(dir.path(), 3, TARGET, &[], &[]);
    let src = dir.path().join("src");
    // 40 small files and one of 20 MiB (multipart through the AWS CLI).
    tree(&src, "r", 40, true);
    let mut want = hashes_under(&src, "");
    members[0].wait_status("writes accepted", STATUS_LIMIT, |s| {
        s.contains("3 of 3 devices up") && s.contains("writes: accepted")
    });
    let o = members[0].upload(&src, BUCKET);
    assert!(o.status.success(), "upload through dev1: {}", stderr(&o));
    members[1].check(BUCKET, &want, false, "after the load");
    let loaded_at = started.elapsed();

    // Device 1, the creating device, and its node die for good.
    members[0].kill();
    members[1].wait_status("dev1 down", STATUS_LIMIT, |s| {
        s.contains("device dev1: DOWN")
    });
    let o = run(tidegate(&members[1].job.data).args(["device", "cluster", "token"]));
    assert!(o.status.success(), "cluster token: {}", stderr(&o));
    let token = field(&stdout(&o), "join token");
    let new = Job {
        id: members[1].job.id.clone(),
        code: members[1].job.code.clone(),
        manifest: members[1].job.manifest.clone(),
        data: dir.path().join("dev4"),
    };
    std::fs::create_dir_all(&new.data).unwrap();
    let join = |replaces: &str| {
        let o = run(tidegate(&new.data)
            .args(["device", "cluster", "join", "--replaces", replaces])
            .env("TIDEGATE_CLUSTER_TOKEN", &token)
            .args(node_args(&new.manifest, "dev4")));
        assert!(
            o.status.success(),
            "cluster join --replaces {replaces}: {}",
            stderr(&o)
        );
    };

    // Refused at the unlock, which starts nothing: a device that is up, a name not in the
    // cluster. A refused replacement may be joined again, naming another device.
    join("dev2");
    let err = refused_unlock(&new);
    assert!(err.contains("device dev2 is up"), "{err}");
    join("dev9");
    let err = refused_unlock(&new);
    assert!(
        err.contains("no device dev9 in the cluster (its devices: dev1, dev2, dev3)"),
        "{err}"
    );
    let s = members[1].status();
    assert!(
        s.contains("device dev1: DOWN") && !s.contains("dev4"),
        "the refused replacements changed the layout:\n{s}"
    );
    let refused_at = started.elapsed();

    // In device 1's place: device 2 applies the layout change (device 1 applied the first one),
    // and the replacement lists everything as soon as it serves.
    join("dev1");
    let device = Unlocked::start(&new);
    assert!(
        device
            .lines
            .iter()
            .any(|l| l.contains("device dev4 replaces device dev1")),
        "{:?}",
        device.lines
    );
    members.push(Member {
        job: new,
        device: Some(device),
    });
    let serving_at = started.elapsed();
    members[3].check(BUCKET, &want, false, "right after the replacement's unlock");
    // Device 1 left the layout, but its copies are not all on the replacement yet (Garage copies
    // blocks 2 × its 20 s RPC timeout after the tables): not full until then.
    let s = members[1].status();
    assert!(
        !s.contains("dev1") && s.contains("device dev4: up") && !s.contains("redundancy: full"),
        "right after the replacement's unlock:\n{s}"
    );
    each([&members[1], &members[3]], |m| {
        let s = m.wait_status("full redundancy", WHOLE_LIMIT, |s| {
            s.contains("redundancy: full")
        });
        assert!(
            s.contains("3 of 3 devices up") && s.contains("device dev4: up") && !s.contains("dev1"),
            "{s}"
        );
    });
    let whole_at = started.elapsed();

    // A write through the replacement lists on device 2.
    let more = dir.path().join("more");
    tree(&more, "n", 3, false);
    let o = members[3].upload(&more, BUCKET);
    assert!(o.status.success(), "upload through dev4: {}", stderr(&o));
    want.extend(hashes_under(&more, ""));
    members[1].check(BUCKET, &want, false, "after a write through dev4");

    // Devices 2 and 3 die too: every object has a copy on the replacement, which alone lists
    // and returns them all.
    members[1].kill();
    members[2].kill();
    members[3].check(BUCKET, &want, true, "through the replacement alone");
    eprintln!(
        "device cluster replace: 3 devices up and loaded at {:.1} s; refusals done at {:.1} s; \
         replacement serving at {:.1} s; full redundancy at {:.1} s; whole test {:.1} s",
        loaded_at.as_secs_f64(),
        refused_at.as_secs_f64(),
        serving_at.as_secs_f64(),
        whole_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
