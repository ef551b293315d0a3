//! Stored volumes: the local disk is the source of truth and the bucket a copy that catches up.
//! Real clients (qemu-io, qemu-img over iSCSI) write and read; snapshots restored into cached
//! and stored volumes prove what reached the bucket.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::iscsi_volume::{MIB, qemu_io, start, url, wait_for_target};
use crate::snapshots::{random_file, read_lun, restore, snapshot};
use crate::support::gateway::Gateway;
use crate::support::{run, stderr, stdout, tidegate};

/// Equal images, or a panic naming the first differing byte (not 16 MiB of debug output).
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {at} is 0x{:02x}, expected 0x{:02x}",
            got[at], want[at]
        );
    }
}

/// Waits until the daemon reports the stored volume fully in the bucket (and downloaded).
pub(crate) fn wait_shipped(gw: &Gateway, volume: &str, limit: Duration) {
    let start = Instant::now();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    loop {
        let fresh = gw.status_value("updated_unix").is_some_and(|t| t > since);
        let v = |k| gw.stored_value(volume, k);
        if fresh
            && v("dirty_chunks") == Some(0)
            && v("initial_total") == Some(0)
            && v("download_pending") == Some(0)
        {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{volume} not shipped: dirty {:?}, initial {:?}/{:?}, download pending {:?}",
            v("dirty_chunks"),
            v("initial_done"),
            v("initial_total"),
            v("download_pending")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = run(tidegate(data).args(args));
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_stored_volume_keeps_its_disk_and_ships_it_to_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("disk.img");
    let mut expected = random_file(&disk, 16);
    let disk_arg = disk.to_str().unwrap();
    cli(
        &data,
        &[
            "volume",
            "create",
            "--name",
            "st",
            "--mode",
            "stored",
            "--local-path",
            disk_arg,
            "--preserve-existing",
        ],
    );
    let gw = start(&data, None);
    let target = url(&gw, "st");
    wait_for_target(&target);
    same(
        &read_lun(&target, dir.path()),
        &expected,
        "the preserved disk reads back as it was",
    );

    // Writes land on the local disk, which is the source of truth.
    let w = qemu_io(&target, &["write -P 0x44 4M 2M", "flush"]);
    assert!(w.status.success(), "{}", stderr(&w));
    expected[4 * MIB as usize..6 * MIB as usize].fill(0x44);
    same(
        &std::fs::read(&disk).unwrap(),
        &expected,
        "the local disk holds the writes",
    );
    wait_shipped(&gw, "st", Duration::from_secs(120));
    let status = cli(&data, &["status"]);
    assert!(
        status.contains("stored volume:  st: 0 chunk(s) to upload"),
        "{status}"
    );

    // Acknowledged writes survive a crash, and the chunks they changed still reach the bucket.
    let w = qemu_io(&target, &["write -P 0x55 10M 1M", "flush"]);
    assert!(w.status.success(), "{}", stderr(&w));
    expected[10 * MIB as usize..11 * MIB as usize].fill(0x55);
    gw.kill9();
    let gw = start(&data, None);
    let target = url(&gw, "st");
    wait_for_target(&target);
    same(
        &read_lun(&target, dir.path()),
        &expected,
        "acknowledged writes after kill -9",
    );
    wait_shipped(&gw, "st", Duration::from_secs(120));

    // What the bucket holds is the whole disk: a snapshot restored as a cached volume (every
    // chunk from the bucket) and as a stored volume on a new disk (downloaded in the background)
    // both read back identically.
    let snap = snapshot(&data, None, "st");
    restore(&data, None, &snap, "st-c");
    let disk2 = dir.path().join("disk2.img");
    cli(
        &data,
        &[
            "volume",
            "create",
            "--name",
            "st-s",
            "--from-snapshot",
            &snap,
            "--mode",
            "stored",
            "--local-path",
            disk2.to_str().unwrap(),
        ],
    );
    let (cached, stored) = (url(&gw, "st-c"), url(&gw, "st-s"));
    wait_for_target(&cached);
    wait_for_target(&stored);
    same(
        &read_lun(&cached, dir.path()),
        &expected,
        "snapshot of a stored volume, cached",
    );
    same(
        &read_lun(&stored, dir.path()),
        &expected,
        "restored stored volume, while downloading",
    );
    wait_shipped(&gw, "st-s", Duration::from_secs(120));
    same(
        &std::fs::read(&disk2).unwrap(),
        &expected,
        "the download filled the new disk",
    );

    // With no daemon running, a snapshot still holds the local disk's latest writes, shipped
    // or not.
    let w = qemu_io(&target, &["write -P 0x77 0 1M", "flush"]);
    assert!(w.status.success(), "{}", stderr(&w));
    expected[..MIB as usize].fill(0x77);
    gw.kill9();
    let snap = snapshot(&data, None, "st");
    restore(&data, None, &snap, "st-off");
    let gw = start(&data, None);
    let offline = url(&gw, "st-off");
    wait_for_target(&offline);
    same(
        &read_lun(&offline, dir.path()),
        &expected,
        "an offline snapshot of a stored volume",
    );
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn a_new_stored_volume_starts_empty_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("new.img");
    std::fs::write(&disk, vec![0x66u8; 3 * MIB as usize]).unwrap();
    let disk_arg = disk.to_str().unwrap();
    for (args, why) in [
        (vec!["--mode", "stored", "--size", "8MiB"], "no local path"),
        (
            vec!["--size", "8MiB", "--local-path", disk_arg],
            "local path on a cached volume",
        ),
        (
            vec!["--mode", "stored", "--local-path", disk_arg],
            "no size, nothing preserved",
        ),
    ] {
        let out = run(tidegate(&data)
            .args(["volume", "create", "--name", "bad"])
            .args(&args));
        assert_eq!(out.status.code(), Some(2), "{why}: {}", stderr(&out));
    }
    cli(
        &data,
        &[
            "volume",
            "create",
            "--name",
            "fresh",
            "--mode",
            "stored",
            "--size",
            "8MiB",
            "--local-path",
            disk_arg,
        ],
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 * MIB);
    let gw = start(&data, None);
    let target = url(&gw, "fresh");
    wait_for_target(&target);
    let image = read_lun(&target, dir.path());
    assert!(
        image.iter().all(|&b| b == 0),
        "without --preserve-existing the disk starts empty"
    );
    assert_eq!(gw.stop(), Some(0));
}
