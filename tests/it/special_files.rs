//! Special files (FIFOs, sockets, block and character devices) in a share on Garage: made with
//! NFSv3 MKNOD and NFSv4.1 CREATE (raw clients: the libnfs tools cannot make them) and with
//! `mkfifo`/`mknod` through a FUSE mount; each must reach the bucket as a zero-byte object whose
//! metadata carries the type and device numbers (read back with boto3), keep its type across a
//! restart, and an object another tool wrote with s3fs's metadata must show up as that kind.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fuse::start_with_fuse;
use crate::nfs_share::{boto3, garage_gateway, nfs_addr, object, tg, wait_uploaded};
use crate::support::garage::Garage;
use crate::support::nfs::{self, Client};
use crate::support::nfs4::{self, Session};
use crate::support::{stderr, tool};

/// ftype3 (RFC 1813 §2.6).
const NF3BLK: u32 = 3;
const NF3CHR: u32 = 4;
const NF3SOCK: u32 = 6;
const NF3FIFO: u32 = 7;
const NFS3ERR_BADTYPE: u32 = 10007;

/// Linux's dev_t of a small (major, minor), as s3fs writes `rdev` and stat reports st_rdev.
fn dev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

/// The metadata line `key=value` of an object, as `boto3 get` printed it.
fn meta_value(meta: &str, key: &str) -> Option<String> {
    meta.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// A share object's body and its `file-permissions` and `rdev` metadata.
fn special_object(garage: &Garage, dir: &Path, name: &str) -> (usize, String, Option<String>) {
    let (body, meta) = object(garage, dir, &format!("gw/shares/docs/{name}"));
    let perms = meta_value(&meta, "file-permissions").unwrap_or_default();
    (body.len(), perms, meta_value(&meta, "rdev"))
}

/// GETATTR over NFSv3 of `name` in `dir`.
fn attr_of(c: &mut Client, dir: &[u8], name: &str) -> nfs::Fattr {
    let fh = c.lookup(dir, name).unwrap();
    c.getattr(&fh).unwrap()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
}

#[test]
fn special_files_reach_the_bucket_with_their_type_and_come_back_over_nfs_and_fuse() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start();
    let (gw, config) = garage_gateway(&garage, dir.path(), 0);
    tg(
        &gw,
        Some(&config),
        &["share", "create", "docs", "--squash", "none"],
    );

    // NFSv3 MKNOD: each type, with its mode and (for devices) specdata3.
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let made = [
        ("fifo3", NF3FIFO, 0o640, (0, 0)),
        ("sock3", NF3SOCK, 0o755, (0, 0)),
        ("blk3", NF3BLK, 0o660, (8, 1)),
        ("chr3", NF3CHR, 0o620, (4, 64)),
    ];
    for (name, ftype, mode, rdev) in made {
        let fh = c.mknod(&root, name, ftype, mode, rdev).unwrap();
        let a = c.getattr(&fh).unwrap();
        assert_eq!(
            (a.ftype, a.mode, a.rdev, a.size),
            (ftype, mode, rdev, 0),
            "{name}"
        );
    }
    assert_eq!(
        c.mknod(&root, "reg", 1, 0o644, (0, 0)),
        Err(NFS3ERR_BADTYPE),
        "regular files are CREATE's"
    );
    let fifo3 = c.lookup(&root, "fifo3").unwrap();
    assert_eq!(c.read(&fifo3, 0, 10), Err(nfs::NFS3ERR_INVAL), "no data");

    // NFSv4.1 CREATE of a FIFO and a character device; OPEN and READ refuse them.
    let mut s = Session::new(&nfs_addr(&gw), b"special-files", false);
    let docs = s.fh("/docs").unwrap();
    let fifo4 = s
        .create_special(&docs, "fifo4", nfs4::NF4FIFO, (0, 0), 0o600)
        .unwrap();
    assert_eq!(s.type_and_rawdev(&fifo4).unwrap(), (nfs4::NF4FIFO, (0, 0)));
    let chr4 = s
        .create_special(&docs, "chr4", nfs4::NF4CHR, (10, 200), 0o644)
        .unwrap();
    assert_eq!(s.type_and_rawdev(&chr4).unwrap(), (nfs4::NF4CHR, (10, 200)));
    let sock4 = s
        .create_special(&docs, "sock4", nfs4::NF4SOCK, (0, 0), 0o700)
        .unwrap();
    assert_eq!(s.type_and_rawdev(&sock4).unwrap(), (nfs4::NF4SOCK, (0, 0)));
    let blk3 = c.lookup(&root, "blk3").unwrap();
    assert_eq!(s.type_and_rawdev(&blk3).unwrap(), (nfs4::NF4BLK, (8, 1)));
    assert_eq!(
        s.open(&docs, "fifo4", b"o", false).map(|_| ()),
        Err(nfs4::NFS4ERR_WRONG_TYPE),
        "RFC 8881 §18.16.3"
    );
    let anonymous = nfs4::StateId(0, vec![0; 12]);
    assert_eq!(s.read(&chr4, &anonymous, 0, 10), Err(nfs4::NFS4ERR_INVAL));
    let chr4_by_v3 = attr_of(&mut c, &root, "chr4");
    assert_eq!((chr4_by_v3.ftype, chr4_by_v3.rdev), (NF3CHR, (10, 200)));

    // In the bucket: zero bytes, the type bits in file-permissions, s3fs's rdev for devices.
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    let want = [
        ("fifo3", "0010640", None),
        ("sock3", "0140755", None),
        ("blk3", "0060660", Some(dev(8, 1))),
        ("chr3", "0020620", Some(dev(4, 64))),
        ("fifo4", "0010600", None),
        ("sock4", "0140700", None),
        ("chr4", "0020644", Some(dev(10, 200))),
    ];
    for (name, perms, rdev) in want {
        let got = special_object(&garage, dir.path(), name);
        assert_eq!(
            got,
            (0, perms.to_owned(), rdev.map(|d| d.to_string())),
            "{name}"
        );
    }

    // Objects written by another tool with s3fs's metadata show up with their type; one that
    // changed kind in the bucket becomes that kind.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_str().unwrap();
    let put = |key: &str, meta: &[&str]| {
        let mut args = vec!["put", key, empty];
        args.extend_from_slice(meta);
        boto3(&garage, &args);
    };
    let body = dir.path().join("body");
    std::fs::write(&body, b"a regular file first").unwrap();
    boto3(
        &garage,
        &["put", "gw/shares/docs/turns", body.to_str().unwrap()],
    );
    tg(&gw, Some(&config), &["share", "refresh", "docs"]);
    let turns = attr_of(&mut c, &root, "turns");
    assert_eq!((turns.ftype, turns.size), (1, 20));
    put("gw/shares/docs/s3fs-fifo", &["mode=4516", "uid=7"]);
    put("gw/shares/docs/s3fs-blk", &["mode=24992", "rdev=2049"]);
    put("gw/shares/docs/turns", &["mode=8612", "rdev=2760"]);
    tg(&gw, Some(&config), &["share", "refresh", "docs"]);
    let a = attr_of(&mut c, &root, "s3fs-fifo");
    assert_eq!((a.ftype, a.mode, a.uid), (NF3FIFO, 0o644, 7));
    let a = attr_of(&mut c, &root, "s3fs-blk");
    assert_eq!((a.ftype, a.mode, a.rdev), (NF3BLK, 0o640, (8, 1)));
    let a = attr_of(&mut c, &root, "turns");
    assert_eq!((a.ftype, a.mode, a.rdev), (NF3CHR, 0o644, (10, 200)));
    assert_ne!(
        a.fileid, turns.fileid,
        "another kind of file is another file"
    );
    drop(s);
    drop(c);

    // After a restart, through a FUSE mount: the same kinds and device numbers.
    assert_eq!(gw.stop(), Some(0));
    let (gw, mnt, _unmount) = start_with_fuse(dir.path(), Some(&config), "docs");
    let stat = |name: &str| std::fs::symlink_metadata(mnt.join(name)).unwrap();
    assert!(stat("fifo3").file_type().is_fifo());
    assert!(stat("sock3").file_type().is_socket());
    assert!(stat("sock4").file_type().is_socket());
    assert!(
        stat("turns").file_type().is_char_device(),
        "changed kind kept"
    );
    assert!(stat("fifo4").file_type().is_fifo());
    let blk = stat("blk3");
    assert!(blk.file_type().is_block_device());
    assert_eq!((blk.rdev(), blk.mode() & 0o7777), (dev(8, 1), 0o660));
    let chr = stat("chr4");
    assert!(chr.file_type().is_char_device());
    assert_eq!(chr.rdev(), dev(10, 200));
    assert!(stat("s3fs-blk").file_type().is_block_device());

    // mkfifo and mknod through FUSE, read back over NFSv3 and from the bucket.
    run_ok(
        Command::new(tool("mkfifo"))
            .arg("-m")
            .arg("0640")
            .arg(mnt.join("fuse-fifo")),
    );
    run_ok(
        Command::new(tool("mknod"))
            .args(["-m", "0600"])
            .arg(mnt.join("fuse-null"))
            .args(["c", "1", "3"]),
    );
    let fifo = stat("fuse-fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o7777, 0o640);
    let null = stat("fuse-null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), dev(1, 3));
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let a = attr_of(&mut c, &root, "fuse-null");
    assert_eq!((a.ftype, a.mode, a.rdev), (NF3CHR, 0o600, (1, 3)));
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    assert_eq!(
        special_object(&garage, dir.path(), "fuse-fifo"),
        (0, "0010640".to_owned(), None)
    );
    assert_eq!(
        special_object(&garage, dir.path(), "fuse-null"),
        (0, "0020600".to_owned(), Some(dev(1, 3).to_string()))
    );
    assert_eq!(gw.stop(), Some(0));
}
