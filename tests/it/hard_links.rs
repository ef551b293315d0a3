//! Hard links in shares (ADR 0013): made with `ln` through a FUSE mount on Garage and with
//! NFSv4.1 LINK (raw client; NFSv3 LINK is in `nfs_share.rs`). Every name must show the same
//! inode number and link count, data written through one name must read through the other,
//! each name must be an object with the file's bytes in the bucket (read back with boto3),
//! removing one name must leave the other, and RENAME of a file onto its own hard link must
//! succeed and change nothing (pynfs RNM20, RFC 8881 §18.26.3).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fuse::start_with_fuse;
use crate::nfs_share::{boto3, docs_on_garage, nfs_addr, object, tg, wait_uploaded};
use crate::support::gateway::Gateway;
use crate::support::nfs4::{self, Session};
use crate::support::{stderr, stdout, tool};

/// `stat -c '%h %i'` of a path: its link count and inode number.
fn links_and_inode(path: &Path) -> (u32, u64) {
    let out = Command::new(tool("stat"))
        .args(["-c", "%h %i"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat {path:?}: {}", stderr(&out));
    let text = stdout(&out);
    let (h, i) = text.trim().split_once(' ').unwrap();
    (h.parse().unwrap(), i.parse().unwrap())
}

fn ln(from: &Path, to: &Path) -> std::process::Output {
    Command::new(tool("ln")).arg(from).arg(to).output().unwrap()
}

#[test]
fn hard_links_made_through_fuse_are_one_file_and_one_object_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, gw, config) = docs_on_garage(dir.path(), 0);
    assert_eq!(gw.stop(), Some(0));
    let (gw, mnt, _unmount) = start_with_fuse(dir.path(), Some(&config), "docs");

    std::fs::write(mnt.join("a"), b"first version").unwrap();
    std::fs::create_dir(mnt.join("d")).unwrap();
    let out = ln(&mnt.join("a"), &mnt.join("d/b"));
    assert!(out.status.success(), "ln: {}", stderr(&out));
    let (links, inode) = links_and_inode(&mnt.join("a"));
    assert_eq!(links, 2);
    assert_eq!(links_and_inode(&mnt.join("d/b")), (2, inode), "one inode");
    let out = ln(&mnt.join("a"), &mnt.join("d/b"));
    assert!(!out.status.success(), "ln onto a taken name fails");

    // Written through one name, read through the other; both objects carry it.
    std::fs::write(mnt.join("d/b"), b"second version, longer").unwrap();
    assert_eq!(
        std::fs::read(mnt.join("a")).unwrap(),
        b"second version, longer"
    );
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    let (body_a, meta_a) = object(&garage, dir.path(), "gw/shares/docs/a");
    let (body_b, meta_b) = object(&garage, dir.path(), "gw/shares/docs/d/b");
    assert_eq!(body_a, b"second version, longer");
    assert_eq!(body_b, body_a);
    assert_eq!(meta_b, meta_a, "the same attributes on every name");

    // A third name, moved: its object follows; then the file's first name goes.
    let out = ln(&mnt.join("a"), &mnt.join("c"));
    assert!(out.status.success(), "ln: {}", stderr(&out));
    std::fs::rename(mnt.join("c"), mnt.join("d/c")).unwrap();
    assert_eq!(links_and_inode(&mnt.join("d/c")), (3, inode));
    std::fs::remove_file(mnt.join("a")).unwrap();
    assert_eq!(links_and_inode(&mnt.join("d/b")), (2, inode));
    assert_eq!(
        std::fs::read(mnt.join("d/c")).unwrap(),
        b"second version, longer"
    );
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    let listed = boto3(&garage, &["list", "gw/shares/docs/"]);
    // Directory markers aside.
    let mut keys: Vec<&str> = listed.lines().filter(|k| !k.ends_with('/')).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["gw/shares/docs/d/b", "gw/shares/docs/d/c"],
        "one object per name, none for the removed ones"
    );
    let (body_c, _) = object(&garage, dir.path(), "gw/shares/docs/d/c");
    assert_eq!(body_c, b"second version, longer");

    // A refresh finds every object already named: no new files appear.
    tg(&gw, Some(&config), &["share", "refresh", "docs"]);
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(links_and_inode(&mnt.join("d/c")), (2, inode));
    assert_eq!(gw.stop(), Some(0));
}

#[test]
fn nfs4_link_then_rename_onto_the_link_succeeds_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        &dir.path().join("data"),
        None,
        &["--iscsi-listen", "127.0.0.1:0"],
    )
    .unwrap();
    tg(&gw, None, &["share", "create", "other", "--squash", "none"]);
    let mut s = Session::new(&nfs_addr(&gw), b"hard-links", false);
    let root = s.fh("/share").unwrap();
    let (sid, file) = s.open(&root, "file", b"owner", true).unwrap();
    assert_eq!(s.close(&file, &sid), nfs4::NFS4_OK);

    // LINK: the directory's change attribute moves; both names are one file with 2 links.
    let cinfo = s.link(&file, &root, "link").unwrap();
    assert_ne!(cinfo.before, cinfo.after, "{cinfo:?}");
    let via_link = s.fh("/share/link").unwrap();
    let (fileid, numlinks) = s.fileid_and_numlinks(&file).unwrap();
    assert_eq!(numlinks, 2);
    assert_eq!(s.fileid_and_numlinks(&via_link).unwrap(), (fileid, 2));

    // RNM20: RENAME of the file onto its hard link does nothing, and says so.
    let (source, target) = s.rename(&root, "file", &root, "link").unwrap();
    assert_eq!(source.before, source.after, "{source:?}");
    assert_eq!(target.before, target.after, "{target:?}");
    assert!(s.fh("/share/file").is_ok() && s.fh("/share/link").is_ok());
    assert_eq!(s.fileid_and_numlinks(&file).unwrap(), (fileid, 2));

    // The RFC's errors.
    assert_eq!(s.link(&file, &root, "link"), Err(nfs4::NFS4ERR_EXIST));
    assert_eq!(s.link(&root, &root, "dir"), Err(nfs4::NFS4ERR_ISDIR));
    assert_eq!(s.link(&file, &file, "x"), Err(nfs4::NFS4ERR_NOTDIR));
    let other = s.fh("/other").unwrap();
    assert_eq!(s.link(&file, &other, "x"), Err(nfs4::NFS4ERR_XDEV));

    // Renaming the link elsewhere keeps the file; removing a name drops the count.
    let (_, _) = s.rename(&root, "link", &root, "moved").unwrap();
    assert_eq!(s.fileid_and_numlinks(&file).unwrap(), (fileid, 2));
    assert_eq!(s.fh("/share/link"), Err(2), "NFS4ERR_NOENT");
    let (sid, again) = s.open(&root, "moved", b"owner", false).unwrap();
    assert_eq!(again, file, "the same handle by the moved name");
    assert_eq!(s.close(&again, &sid), nfs4::NFS4_OK);
    assert_eq!(gw.stop(), Some(0));
}
