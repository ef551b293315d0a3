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
    nfs_listen: String,
}

impl Rig {
    /// kill -9 the gateway and start it again on the same data dir, config and ports.
    fn crash_and_restart(&mut self) {
        self.gw.crash();
        self.gw = start(&self.gw.data_dir.clone(), &self.config, &self.nfs_listen);
    }
}

fn start(data: &Path, config: &Path, nfs_listen: &str) -> Gateway {
    Gateway::start_with(
        data,
        Some(config),
        &[
            "--iscsi-listen",
            "127.0.0.1:0",
            "--nfs-listen",
            nfs_listen,
            "--rpcbind",
            PORT_111,
        ],
    )
    .unwrap()
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
    let gw = start(&data, &config, nfs_listen);
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
        nfs_listen: nfs_listen.to_owned(),
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

/// guest/nfs.sh's `dir-times` section: for create, mkdir, rename, unlink and rmdir the
/// directory's mtime and ctime both moved; the read moved the old atime.
fn check_times(log: &str, ctx: &str) {
    assert_eq!(rc(log, "dir-times"), Some(0), "{ctx}");
    let lines = section(log, "dir-times");
    for op in ["create", "mkdir", "rename", "unlink", "rmdir"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{op}|")))
            .unwrap_or_else(|| panic!("no {op} line in {lines:?}\n{ctx}"));
        let f: Vec<&str> = line.split('|').collect();
        let [_, m0, c0, m1, c1] = f.as_slice() else {
            panic!("{line}");
        };
        assert!(
            m1 > m0,
            "{op}: the directory's mtime did not advance: {line}\n{ctx}"
        );
        assert!(
            c1 > c0,
            "{op}: the directory's ctime did not advance: {line}\n{ctx}"
        );
    }
    let line = lines
        .iter()
        .find(|l| l.starts_with("atime|"))
        .unwrap_or_else(|| panic!("no atime line in {lines:?}\n{ctx}"));
    let f: Vec<&str> = line.split('|').collect();
    assert!(
        f[1].starts_with("2020-01-02"),
        "the atime was not set old: {line}\n{ctx}"
    );
    assert!(
        f[2] > f[1],
        "a read did not advance the old atime: {line}\n{ctx}"
    );
}

/// guest/nfs.sh's `hard-links` section: `stat -c '%h %i'` of both names (2 links, one inode),
/// the first name's content after a write through the second, then the second name alone (1
/// link, the same inode) and its content.
fn check_hard_links(log: &str, ctx: &str) {
    assert_eq!(rc(log, "hard-links"), Some(0), "{ctx}");
    let lines = section(log, "hard-links");
    let [a, b, read_a, after, read_b] = lines.as_slice() else {
        panic!("hard-links: {lines:?}\n{ctx}");
    };
    let inode = a.strip_prefix("2 ").unwrap_or_else(|| panic!("{a}\n{ctx}"));
    assert_eq!(*b, format!("2 {inode}"), "{ctx}");
    assert_eq!(*read_a, "changed", "{ctx}");
    assert_eq!(*after, format!("1 {inode}"), "{ctx}");
    assert_eq!(*read_b, "changed", "{ctx}");
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
    check_times(log, &ctx());
    check_hard_links(log, &ctx());
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

#[test]
fn nfs_v41_kernel_client_reclaims_its_lock_after_the_gateway_is_killed() {
    use crate::support::nfs4::{NFS4ERR_DENIED, NFS4ERR_GRACE, Session};
    let mut rig = rig_with("127.0.0.1:2049", "\n[nfs]\nlease_secs = 15\n");
    let nfs = rig.gw.ready_value("nfs").unwrap();
    let dir = rig.dir.path().to_path_buf();
    let guest = std::thread::spawn(move || {
        run_guest(&dir, "v4.1-reclaim", include_str!("guest/nfs4-reclaim.sh"))
    });
    // The guest has written and synced its file and holds a lock on it.
    let mut watcher = Session::new(&nfs, b"host-before", false);
    let started = Instant::now();
    while watcher.fh("/share/held").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the guest never took its lock"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fh = watcher.fh("/share/journal").unwrap();
    drop(watcher);
    rig.crash_and_restart();

    // A second client's OPEN waits out the grace period (GRACE) unless the guest reclaimed
    // first; after it, the guest's reclaimed lock keeps this client's LOCK out.
    let mut other = Session::new(&nfs, b"host-after", false);
    let mut graces = 0;
    let open = loop {
        match other.open_fh(&fh, b"o", false) {
            Ok(sid) => break sid,
            Err(NFS4ERR_GRACE) => graces += 1,
            Err(s) => panic!("OPEN after the restart: {s}\n{}", rig.gw.log_text()),
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let denied = other.lock(&fh, &open, b"l", 0, 1, false);
    assert!(
        matches!(denied, Err((NFS4ERR_DENIED, _))),
        "the guest's lock was not reclaimed: {denied:?} (after {graces} GRACE answers)\n{}",
        rig.gw.log_text()
    );
    let share = other.fh("/share").unwrap();
    other.open(&share, "restarted", b"m", true).unwrap();
    // Once the guest lets go (it closes after checking its data), the lock is ours.
    let started = Instant::now();
    while other.lock(&fh, &open, b"l", 0, 1, false).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the guest's lock never went"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = guest.join().unwrap();
    let ctx = || format!("{log}\n--- daemon ---\n{}", rig.gw.log_text());
    assert_eq!(rc(&log, "mount"), Some(0), "{}", ctx());
    assert_eq!(rc(&log, "hold"), Some(0), "{}", ctx());
    assert_eq!(section(&log, "hold"), ["same"], "{}", ctx());
    assert_eq!(rc(&log, "final-umount"), Some(0), "{}", ctx());
}
