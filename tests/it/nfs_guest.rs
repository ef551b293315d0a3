//! The Linux kernel's NFS client in a Debian guest (QEMU, TCG; guest/nfs.sh): `mount -t nfs`
//! with no port options finds MOUNT and NFS through tidegate's rpcbind on port 111 (the guest
//! reaches the host's loopback at 10.0.2.2 through QEMU's user-mode network), writes a file
//! tree with `cp -a` and with `tar`, and reads it back after a remount. The host compares
//! checksums and attributes, then finds the same files in the Garage bucket with their
//! metadata. `tree_round_trip` takes the mount options, so each protocol version is one test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::nfs_share::{boto3, tg, wait_uploaded};
use crate::support::activate_on;
use crate::support::garage::Garage;
use crate::support::gateway::Gateway;
use crate::support::guest::{self, rc, section};
use crate::support::rpcbind::{PORT_111, assert_port_111_free};

/// Garage, a gateway on it serving rpcbind on 127.0.0.1:111 and NFS at `nfs_listen`, and the
/// share `share` (no squash: the guest works as root).
pub(crate) struct Rig {
    pub dir: tempfile::TempDir,
    pub garage: Garage,
    pub gw: Gateway,
    pub config: PathBuf,
}

pub(crate) fn rig(nfs_listen: &str) -> Rig {
    rig_with(nfs_listen, "")
}

/// `rig` with more config lines (e.g. an `[nfs]` section).
pub(crate) fn rig_with(nfs_listen: &str, extra_config: &str) -> Rig {
    assert_port_111_free();
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start();
    let data = dir.path().join("data");
    let config = activate_on(&garage, dir.path(), &data, "gw", &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[files]\nupload_delay_ms = 200\n");
    text.push_str(extra_config);
    std::fs::write(&config, text).unwrap();
    let gw = Gateway::start_with(
        &data,
        Some(&config),
        &[
            "--iscsi-listen",
            "127.0.0.1:0",
            "--nfs-listen",
            nfs_listen,
            "--rpcbind",
            PORT_111,
        ],
    )
    .unwrap();
    tg(
        &gw,
        Some(&config),
        &["share", "create", "share", "--squash", "none"],
    );
    Rig {
        dir,
        garage,
        gw,
        config,
    }
}

/// Boots the NFS-client guest with `script` as its /test.sh and returns the serial log once it
/// powered off (also kept as target/tmp/nfs_guest-NAME-serial.log for reading after a failure).
pub(crate) fn run_guest(dir: &Path, name: &str, script: &str) -> String {
    let image = guest::nfs_client();
    let started = Instant::now();
    let mut vm = guest::boot(dir, image, script);
    let log = guest::run_to_end(&mut vm, Duration::from_secs(900));
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nfs_guest-{name}-serial.log")),
        &log,
    );
    eprintln!("guest {name} ran in {:.0?}", started.elapsed());
    log
}

/// guest/nfs.sh with `options` on both its mount lines (`-o vers=3`, or nothing at all).
pub(crate) fn tree_script(options: &str) -> String {
    include_str!("guest/nfs.sh").replace("@OPTIONS@", options)
}

/// One line of the guest's `attrs`: type, mode, size, uid, gid, mtime, then `PATH -> TARGET`.
fn attrs(log: &str, name: &str) -> BTreeMap<String, Vec<String>> {
    section(log, name)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(7, ' ').collect();
            let [kind, mode, size, uid, gid, mtime, path] = f.as_slice() else {
                return None;
            };
            // A directory's size is the file system's own business, and its mtime changes as
            // entries are added after cp and tar set it; a symlink's times are not restored by
            // every tar. Files keep everything.
            let mut v = vec![
                kind.to_string(),
                mode.to_string(),
                uid.to_string(),
                gid.to_string(),
            ];
            if *kind == "f" {
                v.push(size.to_string());
                v.push(mtime.to_string());
            }
            Some((path.to_string(), v))
        })
        .collect()
}

/// The checks of one run of guest/nfs.sh: every step succeeded, `/proc/mounts` shows `vers`,
/// both copies read back byte-identical with the source's attributes, and the bucket holds
/// the same bytes with the same metadata.
pub(crate) fn check_tree(rig: &Rig, log: &str, vers: &str) {
    let ctx = || format!("{log}\n--- daemon ---\n{}", rig.gw.log_text());
    for step in [
        "mount",
        "cp",
        "tar",
        "sync",
        "umount",
        "remount",
        "src-sums",
        "copied-sums",
        "untarred-sums",
        "final-umount",
    ] {
        assert_eq!(rc(log, step), Some(0), "step {step}\n{}", ctx());
    }
    let mounts = section(log, "proc-mounts").join("\n");
    assert!(
        mounts.contains(&format!("vers={vers}")) && mounts.contains("10.0.2.2:/share"),
        "{mounts}\n{}",
        ctx()
    );

    let src = section(log, "src-sums");
    assert!(src.len() >= 45, "source tree checksums: {src:?}\n{}", ctx());
    for copy in ["copied", "untarred"] {
        assert_eq!(
            section(log, &format!("{copy}-sums")),
            src,
            "{copy} read back differs\n{}",
            ctx()
        );
        assert_eq!(
            attrs(log, &format!("{copy}-attrs")),
            attrs(log, "src-attrs"),
            "{copy} attributes differ\n{}",
            ctx()
        );
    }

    // The bucket: each regular file under both copies, same bytes, mode, owner and mtime.
    wait_uploaded(
        &rig.gw,
        Some(&rig.config),
        "share",
        Duration::from_secs(300),
    );
    let stored: BTreeMap<String, (String, String)> =
        boto3(&rig.garage, &["hashes", "gw/shares/share/"])
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                Some((
                    f.next()?.to_owned(),
                    (f.next()?.to_owned(), f.next().unwrap_or("").to_owned()),
                ))
            })
            .collect();
    let src_attrs = attrs(log, "src-attrs");
    for (prefix, label) in [("copied", "cp -a"), ("untarred/tree", "tar")] {
        for line in &src {
            let (sum, path) = line.split_once("  ./").expect("sha256sum line");
            let key = format!("gw/shares/share/{prefix}/{path}");
            let (got, meta) = stored
                .get(&key)
                .unwrap_or_else(|| panic!("{label}: {key} not in the bucket: {stored:?}"));
            assert_eq!(got, sum, "{label}: {key}");
            let a = &src_attrs[&format!("{path} -> ")];
            let mode = u32::from_str_radix(&a[1], 8).unwrap();
            let secs = a[5].split('.').next().unwrap();
            for want in [
                format!("file-permissions={:07o}", 0o100_000 | mode),
                "file-owner=0".to_owned(),
                "file-group=0".to_owned(),
                format!("mtime={secs}"),
            ] {
                assert!(
                    meta.split(' ').any(|m| m == want),
                    "{label}: {key} lacks {want}: {meta}"
                );
            }
        }
        let link = &stored[&format!("gw/shares/share/{prefix}/link")].1;
        assert!(
            link.contains("file-permissions=0120777"),
            "{label}: link {link}"
        );
        assert!(
            stored.contains_key(&format!("gw/shares/share/{prefix}/empty-dir/")),
            "{label}: empty directory marker"
        );
    }
}

#[test]
fn nfs_v3_kernel_client_mounts_through_rpcbind_and_round_trips_a_tree() {
    // NFS on a port no client would guess: only rpcbind can tell the guest where it is.
    let rig = rig("127.0.0.1:0");
    // The line from docs/nfs-clients.md, as written: no port options, no `nolock` (the mount
    // works; lock calls over v3 would fail, since tidegate serves no NLM: NFSv4.1 has locks).
    let log = run_guest(rig.dir.path(), "v3", &tree_script("-o vers=3"));
    check_tree(&rig, &log, "3");
}

/// What the host's own NFSv4.1 client saw while the guest ran its lock steps (guest/nfs4-locks.sh).
struct HostSaw {
    guest_lock_seen: bool,
    guest_lock_gone: bool,
}

/// The host side of the lock steps: holds a write lock on `host.lock` (renewing its lease)
/// until the guest has found it busy, then goes silent so its lease runs out; then watches the
/// guest's lock on `guest.lock` with LOCKT from a second session.
fn host_lock_partner(nfs: String) -> HostSaw {
    use crate::support::nfs4::Session;
    let wait_for = |s: &mut Session, path: &str, limit: Duration| {
        let started = Instant::now();
        while s.fh(path).is_err() {
            assert!(started.elapsed() < limit, "{path} never appeared");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let mut holder = Session::new(&nfs, b"host-holder", false);
    let share = holder.fh("/share").unwrap();
    let (sid, fh) = holder.open(&share, "host.lock", b"o", true).unwrap();
    holder.lock(&fh, &sid, b"host", 0, u64::MAX, false).unwrap();
    // Renew (every SEQUENCE does) until the guest reports the lock busy.
    wait_for(&mut holder, "/share/busy-checked", Duration::from_secs(900));
    drop(holder);

    let mut watcher = Session::new(&nfs, b"host-watcher", false);
    wait_for(&mut watcher, "/share/guest-held", Duration::from_secs(600));
    let lock = watcher.fh("/share/guest.lock").unwrap();
    let guest_lock_seen = watcher.lockt(&lock, b"w", 0, 1).is_err();
    wait_for(
        &mut watcher,
        "/share/guest-released",
        Duration::from_secs(300),
    );
    let guest_lock_gone = watcher.lockt(&lock, b"w", 0, u64::MAX).is_ok();
    HostSaw {
        guest_lock_seen,
        guest_lock_gone,
    }
}

#[test]
fn nfs_v41_kernel_client_mounts_with_no_options_and_its_locks_meet_other_clients() {
    // The standard port, as a plain `mount -t nfs` without options uses it for NFSv4; a short
    // lease so the host's abandoned lock is released within the test.
    let rig = rig_with("127.0.0.1:2049", "\n[nfs]\nlease_secs = 15\n");
    let nfs = rig.gw.ready_value("nfs").unwrap();
    let partner = std::thread::spawn(move || host_lock_partner(nfs));
    let script = tree_script("").replace(
        "step final-umount umount /mnt",
        include_str!("guest/nfs4-locks.sh"),
    );
    let log = run_guest(rig.dir.path(), "v4.1", &script);
    check_tree(&rig, &log, "4.1");
    let ctx = || format!("{log}\n--- daemon ---\n{}", rig.gw.log_text());
    // The host's lock kept the guest's flock out, and its expiry let the guest in.
    assert_eq!(section(&log, "busy"), ["1"], "{}", ctx());
    assert_eq!(rc(&log, "wait-for-expiry"), Some(0), "{}", ctx());
    let saw = partner.join().unwrap();
    assert!(
        saw.guest_lock_seen,
        "LOCKT did not see the guest's lock\n{}",
        ctx()
    );
    assert!(
        saw.guest_lock_gone,
        "the guest's lock outlived its close\n{}",
        ctx()
    );
    assert_eq!(rc(&log, "final-umount"), Some(0), "{}", ctx());
}
