//! Snapshots, restores, garbage collection and gateway recovery, checked with real clients:
//! qemu-io/qemu-img over iSCSI write and read the volumes; restored volumes are read back over
//! iSCSI and compared byte for byte.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::iscsi_volume::{MIB, create_volume, qemu_io, start, url, wait_drained, wait_for_target};
use crate::support::activate_on;
use crate::support::garage::Garage;
use crate::support::s3::S3Server;
use crate::support::{run, stderr, stdout, tidegate, tool};

pub(crate) fn snapshot(data: &Path, config: Option<&Path>, volume: &str) -> String {
    let mut cmd = tidegate(data);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = run(cmd.args(["snapshot", "create", volume]));
    assert!(out.status.success(), "snapshot: {}", stderr(&out));
    let text = stdout(&out);
    let id = text.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with("snap-"), "{text}");
    id
}

pub(crate) fn restore(data: &Path, config: Option<&Path>, snapshot: &str, name: &str) {
    let mut cmd = tidegate(data);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = run(cmd.args([
        "volume",
        "create",
        "--name",
        name,
        "--from-snapshot",
        snapshot,
    ]));
    assert!(out.status.success(), "restore: {}", stderr(&out));
}

/// Fills `path` with `mib` MiB of random data (incompressible, never deduplicated); returns it.
pub(crate) fn random_file(path: &Path, mib: u64) -> Vec<u8> {
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={mib}"))
        .arg(format!("of={}", path.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read(path).unwrap()
}

/// Writes a raw image onto a LUN over iSCSI (qemu-img, a real initiator).
pub(crate) fn write_image(image: &Path, target: &str) {
    let out = Command::new(tool("qemu-img"))
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(image)
        .arg(target)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img write: {}", stderr(&out));
}

/// Reads a whole LUN over iSCSI into memory (qemu-img, a real initiator).
pub(crate) fn read_lun(target: &str, scratch: &Path) -> Vec<u8> {
    static READS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = scratch.join(format!("read-{n}.raw"));
    let out = Command::new(tool("qemu-img"))
        .args(["convert", "-f", "raw", "-O", "raw", target])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img read: {}", stderr(&out));
    let data = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    data
}

fn expect(image: &[u8], offset: u64, len: u64, byte: u8, what: &str) {
    let region = &image[offset as usize..(offset + len) as usize];
    if let Some(at) = region.iter().position(|&b| b != byte) {
        panic!(
            "{what}: byte {} is 0x{:02x}, expected 0x{byte:02x}",
            offset as usize + at,
            region[at]
        );
    }
}

#[test]
fn snapshots_restore_exactly_the_state_at_their_cut() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "src", "32MiB");
    let gw = start(&data, None);
    let src = url(&gw, "src");
    wait_for_target(&src);

    assert!(qemu_io(&src, &["write -P 0xaa 0 8M"]).status.success());
    let s1 = snapshot(&data, None, "src");
    assert!(qemu_io(&src, &["write -P 0xbb 4M 8M"]).status.success());
    let s2 = snapshot(&data, None, "src");
    assert!(qemu_io(&src, &["write -P 0xcc 0 16M"]).status.success());

    restore(&data, None, &s1, "r1");
    restore(&data, None, &s2, "r2");
    let (r1, r2) = (url(&gw, "r1"), url(&gw, "r2"));
    wait_for_target(&r1);
    wait_for_target(&r2);
    let a = read_lun(&r1, dir.path());
    assert_eq!(a.len() as u64, 32 * MIB);
    expect(&a, 0, 8 * MIB, 0xaa, "snapshot 1 (A)");
    expect(&a, 8 * MIB, 24 * MIB, 0x00, "snapshot 1 beyond A");
    let ab = read_lun(&r2, dir.path());
    expect(&ab, 0, 4 * MIB, 0xaa, "snapshot 2 (A)");
    expect(&ab, 4 * MIB, 8 * MIB, 0xbb, "snapshot 2 (B)");
    expect(&ab, 12 * MIB, 20 * MIB, 0x00, "snapshot 2 beyond B");
    let now = read_lun(&src, dir.path());
    expect(&now, 0, 16 * MIB, 0xcc, "the source volume (C)");

    // A snapshot exports to an image file while the daemon keeps running.
    let exported = dir.path().join("s1.raw");
    let out = run(tidegate(&data)
        .args(["volume", "export", "src"])
        .arg(&exported)
        .args(["--snapshot", &s1]));
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert!(
        std::fs::read(&exported).unwrap() == a,
        "the exported snapshot is A"
    );
    let wrong = run(tidegate(&data)
        .args(["volume", "export", "r1"])
        .arg(dir.path().join("x.raw"))
        .args(["--snapshot", &s1]));
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));

    // A restored volume is independent: writing it leaves the snapshot and the source alone.
    assert!(qemu_io(&r1, &["write -P 0xdd 0 1M"]).status.success());
    restore(&data, None, &s1, "r3");
    let r3 = url(&gw, "r3");
    wait_for_target(&r3);
    expect(
        &read_lun(&r3, dir.path()),
        0,
        8 * MIB,
        0xaa,
        "snapshot 1 again",
    );

    let out = run(tidegate(&data).args(["snapshot", "list", "src"]));
    assert!(
        stdout(&out).contains(&s1) && stdout(&out).contains(&s2),
        "{}",
        stdout(&out)
    );
    assert_eq!(gw.stop(), Some(0));
}

/// A writer runs 64 KiB writes in order, each acknowledged before the next; a snapshot taken
/// meanwhile must hold a prefix of them (one instant) that includes every write acknowledged
/// before the snapshot call.
#[test]
fn a_snapshot_during_writes_is_one_instant() {
    const REGION: u64 = 64 * 1024;
    const WRITES: u64 = 1200;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "busy", "128MiB");
    let gw = start(&data, None);
    let target = url(&gw, "busy");
    wait_for_target(&target);

    let pattern = |i: u64| (i % 251) as u8 + 1;
    let mut cmd = Command::new(tool("qemu-io"));
    cmd.args(["-f", "raw"]);
    for i in 0..WRITES {
        cmd.args([
            "-c",
            &format!("write -P {} {} {REGION}", pattern(i), i * REGION),
        ]);
    }
    let mut writer = cmd
        .arg(&target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut acknowledged = 0u64;
    while acknowledged < WRITES / 4 {
        let line = lines.next().expect("writer output").unwrap();
        if line.starts_with("wrote ") {
            acknowledged += 1;
        }
    }
    let before_call = acknowledged;
    let snap = snapshot(&data, None, "busy");
    for line in lines {
        if line.unwrap().starts_with("wrote ") {
            acknowledged += 1;
        }
    }
    assert!(writer.wait().unwrap().success());
    assert_eq!(acknowledged, WRITES);

    restore(&data, None, &snap, "busy-at-cut");
    let restored = url(&gw, "busy-at-cut");
    wait_for_target(&restored);
    let image = read_lun(&restored, dir.path());
    // The first region not holding its write: every region before it must hold its write, and
    // every region from it on must still be zeros.
    let holds = |i: u64| {
        let r = &image[(i * REGION) as usize..((i + 1) * REGION) as usize];
        if r.iter().all(|&b| b == pattern(i)) {
            Some(true)
        } else if r.iter().all(|&b| b == 0) {
            Some(false)
        } else {
            None
        }
    };
    let cut = (0..WRITES)
        .find(|&i| holds(i) != Some(true))
        .unwrap_or(WRITES);
    for i in cut..WRITES {
        assert_eq!(
            holds(i),
            Some(false),
            "region {i} after the cut at {cut} is not untouched: not one instant"
        );
    }
    println!(
        "snapshot cut after write {cut} of {WRITES}; {before_call} acknowledged before the call"
    );
    assert!(
        cut >= before_call,
        "the snapshot misses writes acknowledged before it was requested ({cut} < {before_call})"
    );
    assert_eq!(gw.stop(), Some(0));
}

/// Bytes stored under the local bucket's `chunks/` and `snapshots/` (the embedded default).
fn bucket_bytes(data: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() { walk(&e.path()) } else { m.len() }
            })
            .sum()
        })
    }
    let bucket = data.join("bucket");
    walk(&bucket.join("chunks")) + walk(&bucket.join("snapshots"))
}

#[test]
fn a_second_snapshot_after_a_small_change_is_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "big", "1GiB");
    let gw = start(&data, None);
    let target = url(&gw, "big");
    wait_for_target(&target);

    let before = bucket_bytes(&data);
    // Random (incompressible, never deduplicated) content for the whole volume.
    let image = dir.path().join("random.raw");
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=1024", "status=none"])
        .arg(format!("of={}", image.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    write_image(&image, &target);
    std::fs::remove_file(&image).unwrap();
    snapshot(&data, None, "big");
    wait_drained(&gw, Duration::from_secs(300));
    let first = bucket_bytes(&data) - before;

    // Change 1% (10 MiB of the 1 GiB, in whole chunks) with new random data.
    let change = dir.path().join("change.raw");
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=10", "status=none"])
        .arg(format!("of={}", change.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let w = qemu_io(
        &target,
        &[&format!("write -s {} 300M 10M", change.display())],
    );
    assert!(w.status.success(), "{}", stderr(&w));
    let between = bucket_bytes(&data);
    let s2 = snapshot(&data, None, "big");
    wait_drained(&gw, Duration::from_secs(120));
    let second = bucket_bytes(&data) - between;
    println!(
        "first snapshot stored {first} bytes; second (1% changed) stored {second} bytes ({:.2}%)",
        100.0 * second as f64 / first as f64
    );
    assert!(
        first >= 1000 * MIB,
        "the first snapshot holds the whole volume: {first}"
    );
    assert!(
        second * 50 <= first,
        "the second snapshot stored more than 2% of the first: {second} of {first}"
    );
    let list = stdout(&run(tidegate(&data).args(["snapshot", "list", "big"])));
    let line = list.lines().find(|l| l.starts_with(&s2)).unwrap();
    println!("{line}");
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn garbage_collection_frees_only_what_nothing_references() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "keep", "16MiB");
    create_volume(&data, None, "gone", "16MiB");
    let gw = start(&data, None);
    let (keep, gone) = (url(&gw, "keep"), url(&gw, "gone"));
    wait_for_target(&keep);
    wait_for_target(&gone);
    // Unique random chunks so nothing is shared by accident.
    let (keep_data, gone_data) = (dir.path().join("keep.raw"), dir.path().join("gone.raw"));
    random_file(&keep_data, 4);
    random_file(&gone_data, 6);
    for (t, file, n) in [(&keep, &keep_data, 4), (&gone, &gone_data, 6)] {
        let w = qemu_io(t, &[&format!("write -s {} 0 {n}M", file.display())]);
        assert!(w.status.success(), "{}", stderr(&w));
    }
    let snap = snapshot(&data, None, "keep");
    // Overwrite 'keep' after the snapshot: its old chunks live on only in the snapshot.
    assert!(qemu_io(&keep, &["write -P 0x5a 0 2M"]).status.success());
    wait_drained(&gw, Duration::from_secs(60));
    assert_eq!(gw.stop(), Some(0));
    let out = run(tidegate(&data).args(["volume", "delete", "gone"]));
    assert!(out.status.success(), "{}", stderr(&out));

    let gc = |args: &[&str]| {
        let out = run(tidegate(&data).arg("gc").args(args));
        assert!(out.status.success(), "gc: {}", stderr(&out));
        stdout(&out)
    };
    let number = |text: &str, before: &str| -> u64 {
        let at = text
            .find(before)
            .unwrap_or_else(|| panic!("{before:?} in {text}"))
            + before.len();
        text[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let young = gc(&["--dry-run"]);
    assert_eq!(
        number(&young, "garbage: "),
        0,
        "the default grace keeps new chunks: {young}"
    );
    // Pins and upload times have one-second resolution: a chunk uploaded by the shutdown drain
    // in this same second is still "younger than 0 s". Uploads wait for writes to pause, so
    // the drain at stop may well be this second.
    std::thread::sleep(Duration::from_millis(1100));
    let dry = gc(&["--dry-run", "--grace", "0s"]);
    let garbage = number(&dry, "garbage: ");
    // At least the deleted volume's six chunks (an upload of a chunk caught mid-write adds more).
    assert!(garbage >= 6, "{dry}");
    assert!(dry.contains("nothing deleted"), "{dry}");
    let real = gc(&["--grace", "0s"]);
    assert_eq!(number(&real, "deleted: "), garbage, "{real}");
    let again = gc(&["--dry-run", "--grace", "0s"]);
    assert_eq!(number(&again, "garbage: "), 0, "{again}");
    println!("{dry}{real}");

    // Everything still referenced reads back: the volume, and the snapshot through a restore.
    restore(&data, None, &snap, "from-snap");
    let gw = start(&data, None);
    let (keep, restored) = (url(&gw, "keep"), url(&gw, "from-snap"));
    wait_for_target(&keep);
    wait_for_target(&restored);
    let now = read_lun(&keep, dir.path());
    expect(&now, 0, 2 * MIB, 0x5a, "keep after gc");
    assert_eq!(
        &now[2 * MIB as usize..4 * MIB as usize],
        &std::fs::read(&keep_data).unwrap()[2 * MIB as usize..]
    );
    let then = read_lun(&restored, dir.path());
    assert_eq!(
        &then[..4 * MIB as usize],
        &std::fs::read(&keep_data).unwrap()[..],
        "the snapshot after gc"
    );
    expect(&then, 4 * MIB, 12 * MIB, 0, "the snapshot after gc");
    assert_eq!(gw.stop(), Some(0));
}

/// `tidegate recover` of the gateway under `prefix` of the server's bucket into `data`.
pub(crate) fn recover(
    server: &dyn S3Server,
    prefix: &str,
    dir: &Path,
    data: &Path,
    key: &Path,
) -> std::process::Output {
    run(tidegate(data)
        .args([
            "recover",
            "--bucket",
            &format!("s3://{}/{prefix}", server.bucket()),
        ])
        .args(["--endpoint", server.endpoint(), "--region", server.region()])
        .arg("--key-file")
        .arg(key)
        .arg("--credentials-file")
        .arg(server.credentials_file(dir)))
}

#[test]
fn a_lost_gateway_is_recovered_from_its_bucket_and_key() {
    lost_gateway_recovered_then_gc(&Garage::start());
}

/// The volume smoke of the compatibility suite (tests/it/compat.rs): cached and stored volumes
/// written, the appliance (cache included) lost and recovered from the bucket and key, every
/// volume read back from the bucket, `gc` run on the recovered gateway (it must keep everything,
/// all of it still referenced), then a snapshot restored.
pub(crate) fn lost_gateway_recovered_then_gc(garage: &dyn S3Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("gateway.key");
    let key_arg = key.to_str().unwrap().to_owned();
    let config = activate_on(garage, dir.path(), &data, "dr", &["--key-file", &key_arg]);
    create_volume(&data, Some(&config), "vm", "32MiB");
    create_volume(&data, Some(&config), "db", "16MiB");
    // A stored volume whose local disk is lost with the appliance.
    let disk = data.join("local.img");
    let out = run(tidegate(&data)
        .args(["--config"])
        .arg(&config)
        .args([
            "volume",
            "create",
            "--name",
            "local",
            "--mode",
            "stored",
            "--size",
            "8MiB",
            "--local-path",
        ])
        .arg(&disk));
    assert!(out.status.success(), "{}", stderr(&out));
    let gw = start(&data, Some(&config));
    let (vm, db) = (url(&gw, "vm"), url(&gw, "db"));
    wait_for_target(&vm);
    wait_for_target(&db);
    assert!(qemu_io(&vm, &["write -P 0x11 0 8M"]).status.success());
    assert!(qemu_io(&db, &["write -P 0x22 1M 2M"]).status.success());
    let snap = snapshot(&data, Some(&config), "vm");
    assert!(qemu_io(&vm, &["write -P 0x33 4M 8M"]).status.success());
    let local = url(&gw, "local");
    wait_for_target(&local);
    assert!(
        qemu_io(&local, &["write -P 0x44 2M 3M", "flush"])
            .status
            .success()
    );
    wait_drained(&gw, Duration::from_secs(120));
    crate::stored_volumes::wait_shipped(&gw, "local", Duration::from_secs(120));
    let local_before = read_lun(&local, dir.path());
    let vm_before = read_lun(&vm, dir.path());
    let db_before = read_lun(&db, dir.path());
    assert_eq!(gw.stop(), Some(0));

    // The appliance is lost: only the key file survives.
    std::fs::remove_dir_all(&data).unwrap();
    let fresh = dir.path().join("fresh");
    let out = recover(garage, "dr", dir.path(), &fresh, &key);
    assert!(out.status.success(), "recover: {}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("vm") && report.contains("db") && report.contains(&snap),
        "{report}"
    );

    let config = fresh.join("tidegate.toml");
    // Nothing in the recovered bucket is garbage: the overwritten chunks live on in the snapshot.
    std::thread::sleep(Duration::from_millis(1100));
    let out = run(tidegate(&fresh)
        .arg("--config")
        .arg(&config)
        .args(["gc", "--grace", "0s"]));
    assert!(out.status.success(), "gc: {}", stderr(&out));
    assert!(stdout(&out).contains("deleted: 0"), "{}", stdout(&out));
    let gw = start(&fresh, Some(&config));
    let (vm, db) = (url(&gw, "vm"), url(&gw, "db"));
    wait_for_target(&vm);
    wait_for_target(&db);
    assert!(
        read_lun(&vm, dir.path()) == vm_before,
        "vm reads differently after recovery"
    );
    assert!(
        read_lun(&db, dir.path()) == db_before,
        "db reads differently after recovery"
    );
    let local = url(&gw, "local");
    wait_for_target(&local);
    assert!(
        read_lun(&local, dir.path()) == local_before,
        "the stored volume reads differently after recovery"
    );
    restore(&fresh, Some(&config), &snap, "vm-then");
    let then = url(&gw, "vm-then");
    wait_for_target(&then);
    let image = read_lun(&then, dir.path());
    expect(&image, 0, 8 * MIB, 0x11, "the snapshot after recovery");
    expect(
        &image,
        8 * MIB,
        24 * MIB,
        0x00,
        "the snapshot after recovery",
    );
    assert_eq!(gw.stop(), Some(0));

    // A wrong key is refused before anything is written.
    let other = dir.path().join("other");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = recover(garage, "dr", dir.path(), &other, &wrong);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert!(!other.join("tidegate.toml").exists());
}

/// Scheduled snapshots: the first is taken at once, later ones when due (made due here by
/// moving the schedule's last run back in the catalog), and only the newest `keep` remain.
#[test]
fn scheduled_snapshots_are_taken_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_volume(&data, None, "sched", "8MiB");
    let gw = start(&data, None);
    let target = url(&gw, "sched");
    wait_for_target(&target);
    let out = run(tidegate(&data).args([
        "snapshot", "schedule", "sched", "--every", "1h", "--keep", "2",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let too_often = run(tidegate(&data).args(["snapshot", "schedule", "sched", "--every", "10s"]));
    assert_eq!(too_often.status.code(), Some(2), "{}", stderr(&too_often));

    let scheduled = || -> Vec<String> {
        let out = run(tidegate(&data).args(["snapshot", "list", "sched"]));
        stdout(&out)
            .lines()
            .filter(|l| l.contains("[scheduled]") && l.contains("complete"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let wait_for = |n: usize| {
        let start = std::time::Instant::now();
        loop {
            let got = scheduled();
            if got.len() == n {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{n} scheduled snapshots: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = wait_for(1);
    let make_due = || {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                 c.execute('UPDATE snapshot_schedules SET last_unix = 0'); c.commit()",
            )
            .arg(data.join("catalog.db"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    assert!(qemu_io(&target, &["write -P 0x01 0 1M"]).status.success());
    make_due();
    let two = wait_for(2);
    assert!(two.contains(&first[0]));
    make_due();
    // A third run prunes the oldest: two remain, the first is gone.
    let start = std::time::Instant::now();
    loop {
        let got = scheduled();
        if got.len() == 2 && !got.contains(&first[0]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pruning: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(gw.stop(), Some(0));
}
