//! The virtual tape library under the Linux kernel's own drivers: a Debian guest (QEMU, TCG)
//! logs in to the VTL target with open-iscsi, so the changer is an `sg` device for mtx and the
//! drive is `/dev/nst0` of the `st` driver. Inside, mtx lists and moves the tapes, tar writes
//! two archives separated by filemarks and reads them back, and Bacula's btape runs its `test`
//! and `autochanger` commands. The guest's script (guest/vtl.sh) prints each step's output and
//! exit status between markers on the serial console; this test reads and checks them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::guest::{self, rc, section};
use crate::support::{activate_with_dir_bucket, free_port, run, stderr, tidegate};

const TARGET: &str = "iqn.2026-11.org.tidegate:tidegate:vtl";
const TAPES: [&str; 3] = ["TDG00001", "TDG00002", "TDG00003"];

#[test]
fn vtl_in_a_linux_guest_mtx_tar_and_btape() {
    let image = guest::tape_client();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    activate_with_dir_bucket(&data, &dir.path().join("bucket"));
    let out = run(tidegate(&data).args([
        "tape",
        "create",
        "--barcode-prefix",
        "TDG",
        "--count",
        "3",
        "--size",
        "100GiB",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));

    // Inside QEMU's user-mode network the host's loopback is 10.0.2.2: listen on loopback and
    // advertise that address, so SendTargets gives the guest a portal it can reach.
    let port = free_port();
    let config = data.join("tidegate.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[iscsi]\nlisten = \"127.0.0.1:{port}\"\nadvertise = \"10.0.2.2:{port}\"\n\
         \n[library]\ndrives = 2\nslots = 20\n"
    ));
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start_with(&data, None, &[]).unwrap();

    let script = include_str!("guest/vtl.sh")
        .replace("@PORTAL@", &format!("10.0.2.2:{port}"))
        .replace("@TARGET@", TARGET);
    let started = Instant::now();
    let mut vm = guest::boot(dir.path(), image, &script);
    let log = guest::run_to_end(&mut vm, Duration::from_secs(900));
    // Kept for reading after a failure (the temp dir goes with the test).
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("vtl_guest-serial.log"),
        &log,
    );
    eprintln!("guest ran in {:.0?}", started.elapsed());
    let ctx = || format!("{}\n--- daemon ---\n{}", log, gw.log_text());

    for step in ["discovery", "login"] {
        assert_eq!(rc(&log, step), Some(0), "{step}\n{}", ctx());
    }
    assert!(
        section(&log, "discovery")
            .iter()
            .any(|l| l.starts_with(&format!("10.0.2.2:{port},")) && l.ends_with(TARGET)),
        "{}",
        ctx()
    );

    // mtx status: each barcode once, in the slot it was made in; then in the drive; then back.
    let status = |name: &str| -> Vec<String> {
        assert_eq!(rc(&log, name), Some(0), "mtx {name}\n{}", ctx());
        section(&log, name).iter().map(|l| l.to_string()).collect()
    };
    let tags = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split_once("VolumeTag"))
            .map(|(_, t)| t.trim_start_matches([' ', '=']).trim().to_owned())
            .collect()
    };
    let first = status("status1");
    assert_eq!(tags(&first), TAPES, "{first:#?}");
    for (i, b) in TAPES.iter().enumerate() {
        let slot = format!("Storage Element {}:Full :VolumeTag={b}", i + 1);
        assert!(
            first
                .iter()
                .any(|l| l.replace(' ', "") == slot.replace(' ', "")),
            "{slot} in {first:#?}"
        );
    }
    assert!(
        first
            .iter()
            .any(|l| l.contains("Data Transfer Element 0:Empty")),
        "{first:#?}"
    );
    assert_eq!(rc(&log, "load"), Some(0), "{}", ctx());
    let loaded = status("status2");
    assert!(slot1_in_drive0(&loaded), "{loaded:#?}");
    assert!(
        loaded
            .iter()
            .any(|l| l.replace(' ', "") == "StorageElement1:Empty"),
        "{loaded:#?}"
    );

    // tar across two filemarks: every file reads back with the hash it was written with.
    for step in [
        "rewind1", "tar1", "tar2", "rewind2", "fsf", "untar2", "rewind3", "untar1",
    ] {
        assert_eq!(rc(&log, step), Some(0), "{step}\n{}", ctx());
    }
    let sums = section(&log, "sums");
    let written: Vec<&str> = sums
        .iter()
        .filter_map(|l| l.strip_prefix("written "))
        .collect();
    let read: Vec<&str> = sums
        .iter()
        .filter_map(|l| l.strip_prefix("read "))
        .collect();
    assert_eq!(written.len(), 3, "{sums:#?}");
    assert_eq!(written, read, "{}", ctx());

    assert_eq!(rc(&log, "unload"), Some(0), "{}", ctx());
    let unloaded = status("status3");
    assert_eq!(tags(&unloaded), TAPES, "{unloaded:#?}");
    assert!(
        unloaded
            .iter()
            .any(|l| l.contains("Data Transfer Element 0:Empty")),
        "{unloaded:#?}"
    );

    // Bacula's btape: `test` runs its essential checks (write/rewind/re-read, block
    // positioning, append after end of data, forward space files) and, since the device is in
    // an autochanger, the autochanger test; `autochanger` runs that again on its own.
    for step in ["btapetest", "btapechanger"] {
        assert_eq!(rc(&log, step), Some(0), "{step}\n{}", ctx());
    }
    let test = section(&log, "btapetest").join("\n");
    for want in [
        "=== Test Succeeded. End Write, rewind, and re-read test ===",
        "Block 20000 re-read correctly.",
        "We should be in file 3. I am at file 3. This is correct!",
        "Total files=4, blocks=7, bytes = 56,896",
        "Block re-read correct. Test succeeded!",
        "We should be in file 5. I am at file 5. This is correct!",
        "=== End Forward space files test ===",
        "The test autochanger worked!!",
    ] {
        assert!(test.contains(want), "btape test lacks {want:?}\n{}", ctx());
    }
    assert_eq!(
        test.matches("=== Test Succeeded.").count(),
        2,
        "btape test\n{}",
        ctx()
    );
    let changer = section(&log, "btapechanger").join("\n");
    assert!(
        changer.contains("The test autochanger worked!!"),
        "btape autochanger\n{}",
        ctx()
    );
    // The autochanger test left slot 1's tape in drive 0, through mtx-changer's MOVE MEDIUM.
    let last = status("status4");
    assert!(slot1_in_drive0(&last), "{last:#?}");
    assert_eq!(rc(&log, "logout"), Some(0), "{}", ctx());
}

/// Whether an `mtx status` listing has TDG00001, from storage element 1, in drive 0.
fn slot1_in_drive0(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        l.replace(' ', "")
            .starts_with("DataTransferElement0:Full(StorageElement1Loaded):VolumeTag=TDG00001")
    })
}
