//! A share mounted through FUSE by the daemon (`serve --fuse SHARE=DIR`), used with plain std::fs
//! calls (the kernel's FUSE client), and checked against NFS and the bucket: the same share,
//! the same semantics.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::{noise, run, stderr, stdout, tidegate, tool};

/// Unmounts (lazily) on drop, so a failed test never leaves a dead mount behind.
pub(crate) struct Unmount(pub(crate) PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

pub(crate) fn mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap()))
}

/// Starts the daemon on `dir/data` with `config` (none: the embedded default) and the share
/// `share` mounted through FUSE at `dir/mnt` (also serving NFS); the guard unmounts.
pub(crate) fn start_with_fuse(
    dir: &Path,
    config: Option<&Path>,
    share: &str,
) -> (Gateway, PathBuf, Unmount) {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let unmount = Unmount(mnt.clone());
    let gw = Gateway::start_with(
        &dir.join("data"),
        config,
        &[
            "--iscsi-listen",
            "127.0.0.1:0",
            "--nfs-listen",
            "127.0.0.1:0",
            "--fuse",
            &format!("{share}={}", mnt.display()),
        ],
    )
    .unwrap();
    assert!(mounted(&mnt), "mounted once the daemon is ready");
    (gw, mnt, unmount)
}

#[test]
fn a_share_mounted_through_fuse_behaves_like_the_nfs_export() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, mnt, _unmount) = start_with_fuse(dir.path(), None, "share");

    // Files, directories, renames, symlinks, attributes.
    let data = noise(3 << 20, 5);
    std::fs::write(mnt.join("a.bin"), &data).unwrap();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::rename(mnt.join("a.bin"), mnt.join("d/b.bin")).unwrap();
    std::os::unix::fs::symlink("d/b.bin", mnt.join("link")).unwrap();
    assert_eq!(std::fs::read(mnt.join("link")).unwrap(), data);
    std::fs::set_permissions(mnt.join("d/b.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let meta = std::fs::metadata(mnt.join("d/b.bin")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.len()),
        (0o600, data.len() as u64)
    );
    assert_eq!(
        std::fs::read_dir(mnt.join("d")).unwrap().count(),
        1,
        "one entry in d"
    );
    let err = std::fs::remove_dir(mnt.join("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(39), "ENOTEMPTY");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("d/b.bin"))
        .unwrap();
    f.set_len(10).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(mnt.join("d/b.bin")).unwrap(), &data[..10]);

    // The same share over NFS.
    let port = gw
        .ready_value("nfs")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let out = Command::new(tool("nfs-cat"))
        .arg(format!(
            "nfs://127.0.0.1/share/d/b.bin?nfsport={port}&mountport={port}"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, &data[..10]);

    // In the (local-directory) bucket once uploaded.
    let object = dir.path().join("data/bucket/shares/share/d/b.bin");
    let start = Instant::now();
    loop {
        let s = stdout(&run(
            tidegate(&gw.data_dir).args(["share", "status", "share"])
        ));
        if s.contains("dirty files: 0\n") && std::fs::read(&object).is_ok_and(|b| b == data[..10]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not uploaded: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir.path().join("data/bucket/shares/share/a.bin").exists());

    assert_eq!(gw.stop(), Some(0));
    assert!(!mounted(&mnt), "unmounted at shutdown");
}
