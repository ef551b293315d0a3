//! File shares over NFSv3 with real clients: libnfs's `nfs-cp`/`nfs-ls`/`nfs-cat`, boto3 and
//! s3cmd straight against the Garage bucket, and a raw NFSv3 client (`support::nfs`) for the
//! procedures the libnfs tools do not reach (exclusive create, SETATTR, COMMIT, LINK, paging).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::garage::Garage;
use crate::support::gateway::Gateway;
use crate::support::nfs::{self, Client, Sattr};
use crate::support::s3::S3Server;
use crate::support::{
    activate_on, free_port, noise, python_with_botocore, run, stderr, stdout, tidegate, tool,
};

const MIB: usize = 1 << 20;

/// A daemon on a real server's bucket (prefix `gw/`) with a short upload delay.
pub(crate) fn garage_gateway(
    server: &dyn S3Server,
    dir: &Path,
    nfs_port: u16,
) -> (Gateway, PathBuf) {
    let data = dir.join("data");
    let config = activate_on(server, dir, &data, "gw", &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[files]\nupload_delay_ms = 200\n");
    std::fs::write(&config, text).unwrap();
    let gw = start(&data, Some(&config), nfs_port);
    (gw, config)
}

/// Garage, a daemon on it, and the share `docs` (no squash: the tests run as root).
pub(crate) fn docs_on_garage(dir: &Path, nfs_port: u16) -> (Garage, Gateway, PathBuf) {
    let garage = Garage::start();
    let (gw, config) = docs_on(&garage, dir, nfs_port);
    (garage, gw, config)
}

/// A daemon on `server` and the share `docs` (no squash: the tests run as root).
pub(crate) fn docs_on(server: &dyn S3Server, dir: &Path, nfs_port: u16) -> (Gateway, PathBuf) {
    let (gw, config) = garage_gateway(server, dir, nfs_port);
    tg(
        &gw,
        Some(&config),
        &["share", "create", "docs", "--squash", "none"],
    );
    (gw, config)
}

fn start(data: &Path, config: Option<&Path>, nfs_port: u16) -> Gateway {
    Gateway::start_with(
        data,
        config,
        &[
            "--iscsi-listen",
            "127.0.0.1:0",
            "--nfs-listen",
            &format!("127.0.0.1:{nfs_port}"),
        ],
    )
    .unwrap()
}

pub(crate) fn tg(gw: &Gateway, config: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = tidegate(&gw.data_dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = run(cmd.args(args));
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

pub(crate) fn nfs_addr(gw: &Gateway) -> String {
    gw.ready_value("nfs")
        .expect("nfs address in run/ready.toml")
}

/// `nfs://127.0.0.1/EXPORT/PATH?nfsport=N&mountport=N` (no portmapper).
fn url(gw: &Gateway, path: &str) -> String {
    let port = nfs_addr(gw).rsplit(':').next().unwrap().to_owned();
    format!("nfs://127.0.0.1/{path}?nfsport={port}&mountport={port}")
}

pub(crate) fn nfs_cp(from: &str, to: &str) {
    let out = Command::new(tool("nfs-cp"))
        .args([from, to])
        .output()
        .unwrap();
    assert!(out.status.success(), "nfs-cp {from} {to}: {}", stderr(&out));
}

pub(crate) fn nfs_cat(u: &str) -> Vec<u8> {
    let out = Command::new(tool("nfs-cat")).arg(u).output().unwrap();
    assert!(out.status.success(), "nfs-cat {u}: {}", stderr(&out));
    out.stdout
}

pub(crate) fn nfs_ls(u: &str) -> Vec<String> {
    let out = Command::new(tool("nfs-ls")).arg(u).output().unwrap();
    assert!(out.status.success(), "nfs-ls {u}: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until `share status` reports nothing left to upload.
pub(crate) fn wait_uploaded(gw: &Gateway, config: Option<&Path>, share: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let s = tg(gw, config, &["share", "status", share]);
        if s.contains("dirty files: 0\n") && s.contains("pending deletes: 0") {
            assert!(!s.contains("last upload: never"), "{s}");
            return;
        }
        assert!(start.elapsed() < limit, "not uploaded after {limit:?}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An object's bytes and metadata (as `boto3 get` prints it), fetched with boto3 through a file
/// in `dir`.
pub(crate) fn object(garage: &dyn S3Server, dir: &Path, key: &str) -> (Vec<u8>, String) {
    let got = dir.join("got");
    let meta = boto3(garage, &["get", key, got.to_str().unwrap()]);
    (std::fs::read(&got).unwrap(), meta)
}

/// Runs boto3 against a real server's bucket: `get KEY OUT` (prints the metadata as lines
/// `key=value`), `put KEY IN k=v...`, `delete KEY`, `list PREFIX` (one key a line), `uploads
/// PREFIX` (the multipart uploads in progress, one id a line), `hashes PREFIX` (for each
/// object, a line `KEY<tab>SHA256<tab>k=v k=v...` with its metadata).
pub(crate) fn boto3(server: &dyn S3Server, args: &[&str]) -> String {
    const SCRIPT: &str = r#"
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], region_name=os.environ["REGION"],
    aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"])
b = os.environ["BUCKET"]
op, key = sys.argv[1], sys.argv[2]
if op == "get":
    r = s3.get_object(Bucket=b, Key=key)
    open(sys.argv[3], "wb").write(r["Body"].read())
    for k, v in sorted(r["Metadata"].items()):
        print(f"{k}={v}")
elif op == "put":
    meta = dict(a.split("=", 1) for a in sys.argv[4:])
    s3.put_object(Bucket=b, Key=key, Body=open(sys.argv[3], "rb").read(), Metadata=meta)
elif op == "delete":
    s3.delete_object(Bucket=b, Key=key)
elif op == "list":
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=key):
        for o in page.get("Contents", []):
            print(o["Key"])
elif op == "hashes":
    import hashlib
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=key):
        for o in page.get("Contents", []):
            r = s3.get_object(Bucket=b, Key=o["Key"])
            meta = " ".join(f"{k}={v}" for k, v in sorted(r["Metadata"].items()))
            print(o["Key"], hashlib.sha256(r["Body"].read()).hexdigest(), meta, sep="\t")
elif op == "uploads":
    for u in s3.list_multipart_uploads(Bucket=b, Prefix=key).get("Uploads", []):
        print(u["UploadId"])
"#;
    let out = Command::new(python_with_botocore())
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .env("EP", server.endpoint())
        .env("REGION", server.region())
        .env("AK", server.access_key())
        .env("SK", server.secret_key())
        .env("BUCKET", server.bucket())
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3 {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn s3cmd_ls(server: &dyn S3Server, prefix: &str) -> String {
    let host = server.endpoint().trim_start_matches("http://");
    let out = Command::new(tool("s3cmd"))
        .args([
            "--no-ssl",
            "--host",
            host,
            "--host-bucket",
            host,
            "--region",
            server.region(),
            "--access_key",
            server.access_key(),
            "--secret_key",
            server.secret_key(),
            "--config",
            "/dev/null",
            "ls",
            "--recursive",
            &format!("s3://{}/{prefix}", server.bucket()),
        ])
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "s3cmd ls: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn libnfs_round_trips_are_byte_identical_and_readable_straight_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, gw, config) = docs_on_garage(dir.path(), 0);
    let config = Some(config.as_path());

    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let one = noise(MIB, 1);
    let big = noise(256 * MIB, 2);
    std::fs::write(files.join("one"), &one).unwrap();
    std::fs::write(files.join("big"), &big).unwrap();
    nfs_cp(
        files.join("one").to_str().unwrap(),
        &url(&gw, "docs/one.bin"),
    );
    nfs_cp(
        files.join("big").to_str().unwrap(),
        &url(&gw, "docs/big.bin"),
    );
    assert_eq!(nfs_cat(&url(&gw, "docs/one.bin")), one);

    // 500 small files in a directory made over NFS.
    let mut client = Client::connect(&nfs_addr(&gw));
    let root = client.mount("/docs").unwrap();
    client.mkdir(&root, "small").unwrap();
    for i in 0..500 {
        let path = files.join(format!("s{i}"));
        std::fs::write(&path, format!("small file {i}\n").repeat(i % 7 + 1)).unwrap();
        nfs_cp(
            path.to_str().unwrap(),
            &url(&gw, &format!("docs/small/s{i}")),
        );
    }
    let mut listed = nfs_ls(&url(&gw, "docs/small"));
    listed.sort();
    let mut want: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
    want.sort();
    assert_eq!(listed, want);
    for i in (0..500).step_by(50) {
        let want = std::fs::read(files.join(format!("s{i}"))).unwrap();
        assert_eq!(nfs_cat(&url(&gw, &format!("docs/small/s{i}"))), want);
    }

    wait_uploaded(&gw, config, "docs", Duration::from_secs(300));
    // Staging files are gone once uploaded; reads come from the clean copies kept (within
    // the cache size) or the bucket.
    assert!(
        nfs_cat(&url(&gw, "docs/big.bin")) == big,
        "256 MiB read back over NFS"
    );

    let (got, meta) = object(&garage, dir.path(), "gw/shares/docs/one.bin");
    assert_eq!(got, one);
    for key in [
        "file-permissions=0100",
        "file-owner=0",
        "file-group=0",
        "file-mtime=",
        "mtime=",
    ] {
        assert!(meta.contains(key), "metadata has {key}: {meta}");
    }
    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/big.bin");
    assert!(got == big, "256 MiB straight from the bucket");
    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/small/s7");
    assert_eq!(got, std::fs::read(files.join("s7")).unwrap());
    let ls = s3cmd_ls(&garage, "gw/shares/docs/");
    assert!(ls.contains("gw/shares/docs/one.bin"), "{ls}");
    assert_eq!(ls.matches("gw/shares/docs/small/s").count(), 500, "{ls}");
    assert!(
        ls.contains("gw/shares/docs/small/\n"),
        "directory marker: {ls}"
    );
}

#[test]
fn foreign_objects_appear_after_share_refresh_and_deleted_ones_vanish() {
    foreign_objects_refresh_and_metadata_round_trip(&Garage::start());
}

/// The share smoke of the compatibility suite (tests/it/compat.rs): foreign objects with and
/// without metadata refreshed in, changed and deleted; a file written over NFS uploaded with
/// its metadata in both dialects tidegate writes.
pub(crate) fn foreign_objects_refresh_and_metadata_round_trip(garage: &dyn S3Server) {
    let dir = tempfile::tempdir().unwrap();
    let (gw, config) = docs_on(garage, dir.path(), 0);
    let config = Some(config.as_path());
    // The first listing caches the (empty) directory for the refresh interval.
    assert!(nfs_ls(&url(&gw, "docs")).is_empty());

    let body = dir.path().join("body");
    std::fs::write(&body, b"written by boto3\n").unwrap();
    boto3(
        garage,
        &[
            "put",
            "gw/shares/docs/from-s3.txt",
            body.to_str().unwrap(),
            "mode=33184",
            "uid=1234",
            "color=blue",
        ],
    );
    assert!(
        nfs_ls(&url(&gw, "docs")).is_empty(),
        "not visible before the refresh interval or an explicit refresh"
    );
    tg(&gw, config, &["share", "refresh", "docs"]);
    assert_eq!(nfs_ls(&url(&gw, "docs")), vec!["from-s3.txt".to_owned()]);
    assert_eq!(
        nfs_cat(&url(&gw, "docs/from-s3.txt")),
        b"written by boto3\n"
    );
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let fh = c.lookup(&root, "from-s3.txt").unwrap();
    let a = c.getattr(&fh).unwrap();
    assert_eq!((a.mode, a.uid), (0o640, 1234), "s3fs metadata read");

    // Changed in the bucket: re-read after a refresh (ETag differs).
    std::fs::write(&body, b"changed by boto3, longer now\n").unwrap();
    boto3(
        garage,
        &["put", "gw/shares/docs/from-s3.txt", body.to_str().unwrap()],
    );
    tg(&gw, config, &["share", "refresh", "docs"]);
    assert_eq!(
        nfs_cat(&url(&gw, "docs/from-s3.txt")),
        b"changed by boto3, longer now\n"
    );
    assert_eq!(
        c.lookup(&root, "from-s3.txt").unwrap(),
        fh,
        "same file id after a change"
    );
    let a = c.getattr(&fh).unwrap();
    assert_eq!(a.mode, 0o644, "a bare object gets the share's default mode");

    // A local change not yet uploaded wins over a refresh.
    let local = c.create(&root, "local.txt", 0, 0o644).unwrap();
    c.write(&local, 0, b"mine", 0).unwrap();
    boto3(
        garage,
        &["put", "gw/shares/docs/local.txt", body.to_str().unwrap()],
    );
    tg(&gw, config, &["share", "refresh", "docs"]);
    assert_eq!(c.read(&local, 0, 100).unwrap().0, b"mine");
    c.commit(&local).unwrap();

    // Deleted in the bucket: gone after a refresh.
    boto3(garage, &["delete", "gw/shares/docs/from-s3.txt"]);
    tg(&gw, config, &["share", "refresh", "docs"]);
    assert_eq!(c.lookup(&root, "from-s3.txt"), Err(nfs::NFS3ERR_NOENT));

    // A file written over NFS shows up in s3cmd ls once uploaded, with our content.
    wait_uploaded(&gw, config, "docs", Duration::from_secs(60));
    let ls = s3cmd_ls(garage, "gw/shares/docs/");
    assert!(ls.contains("gw/shares/docs/local.txt"), "{ls}");
    let (got, meta) = object(garage, dir.path(), "gw/shares/docs/local.txt");
    assert_eq!(got, b"mine");
    // s3fs's dialect (file-*) and rclone's (mtime), as docs/formats.md lists them.
    for key in ["file-permissions=0100644", "file-owner=0", "mtime="] {
        assert!(meta.contains(key), "metadata has {key}: {meta}");
    }
}

#[test]
fn committed_data_survives_kill_9_and_the_same_handle_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (garage, gw, config) = docs_on_garage(dir.path(), port);
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let fh = c.create(&root, "crash.bin", 0, 0o600).unwrap();
    let data = noise(3 * MIB, 9);
    let mut verf = Vec::new();
    for (i, piece) in data.chunks(MIB).enumerate() {
        let (n, committed, v) = c.write(&fh, (i * MIB) as u64, piece, 0).unwrap();
        assert_eq!((n as usize, committed), (piece.len(), 0), "UNSTABLE write");
        verf = v;
    }
    assert_eq!(
        c.commit(&fh).unwrap(),
        verf,
        "COMMIT verifier matches the writes'"
    );
    gw.kill9();

    let gw = start(&dir.path().join("data"), Some(&config), port);
    let mut c = Client::connect(&nfs_addr(&gw));
    let attr = c
        .getattr(&fh)
        .expect("the old handle works after a restart");
    assert_eq!(attr.size, data.len() as u64);
    let mut back = Vec::new();
    while back.len() < data.len() {
        let (piece, _) = c.read(&fh, back.len() as u64, MIB as u32).unwrap();
        assert!(!piece.is_empty());
        back.extend_from_slice(&piece);
    }
    assert!(back == data, "committed data reads back after kill -9");
    let new_verf = c.commit(&fh).unwrap();
    assert_ne!(
        new_verf, verf,
        "the verifier changed: uncommitted data may have been lost"
    );
    assert_eq!(
        c.lookup(&root, "crash.bin").unwrap(),
        fh,
        "root handle works too"
    );

    // And it reaches the bucket.
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/crash.bin");
    assert!(got == data);
}

/// Issue 20: CREATEs and COMMITs from many clients at once share group-committed fsyncs (the
/// catalog's WAL, the staging directory). Every file whose `nfs-cp` returned (libnfs's close
/// sends COMMIT) before the gateway was killed with -9 is there, whole, after the restart;
/// copies cut short by the kill are not counted.
#[test]
fn issue_20_concurrent_small_files_acknowledged_before_kill_9_survive() {
    const CLIENTS: usize = 8;
    const FILES_EACH: usize = 60;
    // Killed once this many files have been acknowledged, with copies still in flight.
    const KILL_AFTER: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_garage, gw, config) = docs_on_garage(dir.path(), port);
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let killed = std::sync::Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (acked, src, killed) = (acked.clone(), src.clone(), killed.clone());
            let nfs_port = nfs_addr(&gw).rsplit(':').next().unwrap().to_owned();
            std::thread::spawn(move || {
                for i in 0..FILES_EACH {
                    let name = format!("c{w}-{i}.bin");
                    let data = noise(
                        1 + (w * 7919 + i * 104_729) % (64 << 10),
                        (w * 1000 + i) as u64,
                    );
                    let local = src.join(&name);
                    std::fs::write(&local, &data).unwrap();
                    let mut copy = Command::new(tool("nfs-cp"))
                        .arg(&local)
                        .arg(format!(
                            "nfs://127.0.0.1/docs/{name}?nfsport={nfs_port}&mountport={nfs_port}"
                        ))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .unwrap();
                    // libnfs reconnects for ever to a server that died: a copy still running
                    // at the kill is stopped, and was never acknowledged.
                    let status = loop {
                        if let Some(status) = copy.try_wait().unwrap() {
                            break Some(status);
                        }
                        if killed.load(Ordering::SeqCst) {
                            let _ = copy.kill();
                            let _ = copy.wait();
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    };
                    match status {
                        Some(status) if status.success() => {}
                        None => return,
                        Some(status) => {
                            let out = copy.wait_with_output().unwrap();
                            // Before the kill, every copy must succeed.
                            assert!(
                                killed.load(Ordering::SeqCst),
                                "nfs-cp {name}: {status}: {}",
                                stderr(&out)
                            );
                            return;
                        }
                    }
                    acked.lock().unwrap().push((name, data));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(200);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "the copies did not get going");
        assert!(
            !workers.iter().all(|w| w.is_finished()),
            "every client stopped before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.store(true, Ordering::SeqCst);
    gw.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= KILL_AFTER);

    let gw = start(&dir.path().join("data"), Some(&config), port);
    for (name, data) in &acked {
        let back = nfs_cat(&url(&gw, &format!("docs/{name}")));
        assert!(
            back == *data,
            "{name}: acknowledged before kill -9, then lost or changed"
        );
    }
}

/// Issue 20: SETATTR is checked and applied in one step, and a truncate goes first when it
/// comes with other attributes; what such a SETATTR acknowledged, and a COMMIT of UNSTABLE
/// writes, survive kill -9. A SETATTR that changes nothing (what libnfs sends after an O_TRUNC
/// create, tar's times when they are the file's own) is acknowledged too and changes nothing.
#[test]
fn issue_20_setattr_and_commit_acknowledged_before_kill_9_survive() {
    let (dir, gw, mut c, root) = embedded();
    let f = c.create(&root, "f", 0, 0o644).unwrap();
    let nothing = Sattr {
        size: Some(0),
        mode: Some(0o644),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, nothing), nfs::NFS3_OK);
    c.write(&f, 0, b"hello world", 0).unwrap();
    c.commit(&f).unwrap();
    let set = Sattr {
        mode: Some(0o600),
        size: Some(5),
        mtime: Some(1_600_000_000),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, set), nfs::NFS3_OK);
    let again = Sattr {
        mode: Some(0o600),
        mtime: Some(1_600_000_000),
        ..Sattr::default()
    };
    assert_eq!(
        c.setattr(&f, again),
        nfs::NFS3_OK,
        "the same attributes again"
    );
    let g = c.create(&root, "g", 0, 0o644).unwrap();
    c.write(&g, 0, b"unstable, then committed", 0).unwrap();
    c.commit(&g).unwrap();
    let before = (c.getattr(&f).unwrap(), c.getattr(&g).unwrap());
    gw.kill9();

    let gw = start(&dir.path().join("data"), None, 0);
    let mut c = Client::connect(&nfs_addr(&gw));
    let a = c.getattr(&f).unwrap();
    assert_eq!(
        (a.mode, a.size, a.mtime.0),
        (0o600, 5, 1_600_000_000),
        "SETATTR acknowledged before kill -9"
    );
    assert_eq!((a.clone(), c.getattr(&g).unwrap()), before);
    assert_eq!(c.read(&f, 0, 100).unwrap().0, b"hello");
    assert_eq!(c.read(&g, 0, 100).unwrap().0, b"unstable, then committed");
}

/// The embedded default: its `share` export, local-directory bucket.
fn embedded() -> (tempfile::TempDir, Gateway, Client, nfs::Fh) {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&dir.path().join("data"), None, 0);
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/share").unwrap();
    (dir, gw, c, root)
}

#[test]
fn nfs_semantics_through_a_raw_client() {
    let (_dir, gw, mut c, root) = embedded();

    // mkdir / rmdir, ENOTEMPTY, ENOENT, ENOTDIR.
    let d = c.mkdir(&root, "d").unwrap();
    assert_eq!(c.mkdir(&root, "d"), Err(nfs::NFS3ERR_EXIST));
    let f = c.create(&d, "f", 1, 0o644).unwrap();
    assert_eq!(c.rmdir(&root, "d"), nfs::NFS3ERR_NOTEMPTY);
    assert_eq!(c.lookup(&root, "missing"), Err(nfs::NFS3ERR_NOENT));
    assert_eq!(c.lookup(&f, "x"), Err(nfs::NFS3ERR_NOTDIR));
    assert_eq!(c.rmdir(&d, "f"), nfs::NFS3ERR_NOTDIR);
    assert_eq!(c.remove(&root, "d"), nfs::NFS3ERR_ISDIR);

    // Exclusive create: a retransmission with the same verifier succeeds, another fails.
    let x = c.create_exclusive(&root, "x", *b"verifier").unwrap();
    assert_eq!(c.create_exclusive(&root, "x", *b"verifier").unwrap(), x);
    assert_eq!(
        c.create_exclusive(&root, "x", *b"another!"),
        Err(nfs::NFS3ERR_EXIST)
    );
    assert_eq!(
        c.create(&root, "x", 1, 0o644),
        Err(nfs::NFS3ERR_EXIST),
        "GUARDED"
    );

    // Sparse writes read as zeros; truncate grows and shrinks.
    c.write(&f, 10_000, b"tail", 2).unwrap();
    let (data, eof) = c.read(&f, 0, 20_000).unwrap();
    assert!(eof);
    assert_eq!(data.len(), 10_004);
    assert!(data[..10_000].iter().all(|b| *b == 0));
    assert_eq!(&data[10_000..], b"tail");
    let grow = Sattr {
        size: Some(50_000),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, grow), nfs::NFS3_OK);
    let (data, _) = c.read(&f, 0, 60_000).unwrap();
    assert_eq!(data.len(), 50_000);
    assert_eq!(&data[10_000..10_004], b"tail");
    assert!(data[10_004..].iter().all(|b| *b == 0));
    let shrink = Sattr {
        size: Some(10_002),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, shrink), nfs::NFS3_OK);
    assert_eq!(c.read(&f, 10_000, 100).unwrap().0, b"ta");

    // chmod / chown / utimes.
    let set = Sattr {
        mode: Some(0o640),
        uid: Some(1000),
        gid: Some(100),
        mtime: Some(1_600_000_000),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, set), nfs::NFS3_OK);
    let a = c.getattr(&f).unwrap();
    assert_eq!(
        (a.mode, a.uid, a.gid, a.mtime.0),
        (0o640, 1000, 100, 1_600_000_000)
    );

    // Rename within and across directories, and over an existing file.
    assert_eq!(c.rename(&d, "f", &d, "g"), nfs::NFS3_OK);
    assert_eq!(c.lookup(&d, "f"), Err(nfs::NFS3ERR_NOENT));
    assert_eq!(c.lookup(&d, "g").unwrap(), f, "same file id after a rename");
    assert_eq!(c.rename(&d, "g", &root, "x"), nfs::NFS3_OK);
    assert_eq!(c.lookup(&root, "x").unwrap(), f);
    assert_eq!(
        c.getattr(&x),
        Err(70),
        "the replaced file's handle is stale"
    );
    let e = c.mkdir(&root, "e").unwrap();
    assert_eq!(
        c.rename(&root, "d", &e, "d2"),
        nfs::NFS3_OK,
        "directory rename"
    );
    assert_eq!(c.rmdir(&e, "d2"), nfs::NFS3_OK);

    // Symlinks.
    let l = c.symlink(&root, "link", "x").unwrap();
    assert_eq!(c.readlink(&l).unwrap(), "x");
    assert_eq!(c.getattr(&l).unwrap().ftype, 5);

    // Hard links (LINK3, RFC 1813 §3.3.15): one file id and nlink 2 under both names, data
    // written through one read through the other, every name listed by READDIRPLUS; the
    // RFC's errors for a taken name and a directory; REMOVE of one name leaves the other.
    assert_eq!(c.link(&f, &root, "hard"), nfs::NFS3_OK);
    assert_eq!(c.lookup(&root, "hard").unwrap(), f, "the same file handle");
    let (a, b) = (c.getattr(&f).unwrap(), c.getattr(&f).unwrap());
    assert_eq!((a.nlink, a.fileid), (2, b.fileid));
    let hard = c.lookup(&root, "hard").unwrap();
    c.write(&hard, 0, b"via hard", 2).unwrap();
    assert_eq!(c.read(&f, 0, 8).unwrap().0, b"via hard");
    assert_eq!(c.link(&f, &root, "x"), nfs::NFS3ERR_EXIST);
    assert_eq!(c.link(&e, &root, "dirlink"), nfs::NFS3ERR_ISDIR);
    assert_eq!(c.link(&f, &f, "n"), nfs::NFS3ERR_NOTDIR);
    let mut listed = c.readdirplus_all(&root);
    listed.sort();
    assert!(listed.contains(&"hard".to_owned()) && listed.contains(&"x".to_owned()));
    assert_eq!(
        c.rename(&root, "x", &root, "hard"),
        nfs::NFS3_OK,
        "names of one file"
    );
    assert_eq!(c.getattr(&f).unwrap().nlink, 2, "and nothing changed");
    assert_eq!(c.remove(&root, "x"), nfs::NFS3_OK);
    assert_eq!(c.getattr(&f).unwrap().nlink, 1);
    assert_eq!(c.read(&f, 0, 8).unwrap().0, b"via hard");
    assert_eq!(c.lookup(&root, "x"), Err(nfs::NFS3ERR_NOENT));

    // A 5000-entry directory lists every name exactly once through READDIRPLUS pages.
    let big = c.mkdir(&root, "big").unwrap();
    for i in 0..5000 {
        c.create(&big, &format!("entry-{i:05}"), 0, 0o644).unwrap();
    }
    let mut names = c.readdirplus_all(&big);
    assert_eq!(names.len(), 5000);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5000);
    // And through libnfs's own READDIRPLUS paging.
    let mut listed = nfs_ls(&url(&gw, "share/big"));
    assert_eq!(listed.len(), 5000);
    listed.sort();
    assert_eq!(listed, names);
}

#[test]
fn squash_owner_on_create_and_allowed_clients_are_enforced() {
    let (_dir, gw, mut c, _) = embedded();
    tg(&gw, None, &["share", "create", "sq"]);
    tg(
        &gw,
        None,
        &["share", "create", "far", "--allowed-clients", "10.0.0.0/8"],
    );
    assert_eq!(
        c.mount("/far"),
        Err(13),
        "MNT3ERR_ACCES for a client not allowed"
    );
    assert_eq!(c.mount("/nope"), Err(2), "MNT3ERR_NOENT");

    let root = c.mount("/sq").unwrap();
    // root is squashed to 65534 and may not write the root-owned 0755 directory.
    assert_eq!(c.create(&root, "r", 0, 0o644), Err(nfs::NFS3ERR_ACCES));
    let mut owner = Client::connect(&nfs_addr(&gw));
    owner.uid = 0;
    let share_root = owner.mount("/share").unwrap();
    let open = Sattr {
        mode: Some(0o777),
        ..Sattr::default()
    };
    let sq_root = owner.mount("/sq").unwrap();
    assert_eq!(
        owner.setattr(&sq_root, open),
        nfs::NFS3ERR_ACCES,
        "squashed"
    );
    // In the unsquashed default share, owners come from the caller.
    let mut user = Client::connect(&nfs_addr(&gw));
    user.uid = 1000;
    user.gid = 1000;
    assert_eq!(owner.setattr(&share_root, open), nfs::NFS3_OK);
    let f = user.create(&share_root, "mine", 0, 0o600).unwrap();
    let a = user.getattr(&f).unwrap();
    assert_eq!((a.uid, a.gid, a.mode), (1000, 1000, 0o600));
    let mut other = Client::connect(&nfs_addr(&gw));
    other.uid = 2000;
    assert_eq!(other.read(&f, 0, 10), Err(nfs::NFS3ERR_ACCES));
}

#[test]
fn malformed_rpcs_are_rejected_and_a_second_client_is_served() {
    let (_dir, gw, mut c, root) = embedded();
    let mut bad = Client::connect(&nfs_addr(&gw));
    // A GETATTR whose handle length runs past the record: GARBAGE_ARGS (4).
    let (stat, _) = bad.call(100_003, 3, 1, &[0, 0, 1, 0, 1, 2]);
    assert_eq!(stat, 4);
    // An unknown program: PROG_UNAVAIL (1); an unknown NFS procedure: PROC_UNAVAIL (3).
    assert_eq!(bad.call(399_999, 1, 0, &[]).0, 1);
    assert_eq!(bad.call(100_003, 3, 99, &[]).0, 3);
    // Pure garbage and an oversized record header close only that connection.
    bad.send_record(&[0xde, 0xad]);
    let mut huge = Client::connect(&nfs_addr(&gw));
    use std::io::Write as _;
    let mut raw = std::net::TcpStream::connect(nfs_addr(&gw)).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    drop(raw);
    assert_eq!(huge.getattr(&root).unwrap().ftype, 2);
    assert_eq!(
        c.getattr(&root).unwrap().ftype,
        2,
        "first client still served"
    );
}

#[test]
fn renames_attribute_changes_and_empty_directories_reach_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, gw, config) = docs_on_garage(dir.path(), 0);
    let config = Some(config.as_path());
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let d = c.mkdir(&root, "d").unwrap();
    c.mkdir(&root, "empty").unwrap();
    let f = c.create(&d, "f", 0, 0o644).unwrap();
    c.write(&f, 0, b"contents", 2).unwrap();
    c.commit(&f).unwrap();
    wait_uploaded(&gw, config, "docs", Duration::from_secs(60));
    let keys = boto3(&garage, &["list", "gw/shares/docs/"]);
    assert!(
        keys.contains("gw/shares/docs/empty/\n"),
        "marker for the empty directory: {keys}"
    );
    assert!(keys.contains("gw/shares/docs/d/f\n"), "{keys}");

    // chmod/chown of an uploaded file: new metadata in the bucket, same bytes.
    let set = Sattr {
        mode: Some(0o600),
        uid: Some(42),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, set), nfs::NFS3_OK);
    wait_uploaded(&gw, config, "docs", Duration::from_secs(60));
    let (got, meta) = object(&garage, dir.path(), "gw/shares/docs/d/f");
    assert!(meta.contains("file-permissions=0100600"), "{meta}");
    assert!(meta.contains("file-owner=42"), "{meta}");
    assert_eq!(got, b"contents");

    // A directory rename moves every object below it and its marker; the old keys go.
    assert_eq!(c.rename(&root, "d", &root, "moved"), nfs::NFS3_OK);
    assert_eq!(c.rmdir(&root, "empty"), nfs::NFS3_OK);
    // A refresh before the objects have moved shows no ghost of the old names.
    tg(&gw, config, &["share", "refresh", "docs"]);
    let mut names = c.readdirplus_all(&root);
    names.sort();
    assert_eq!(names, vec!["moved".to_owned()]);
    wait_uploaded(&gw, config, "docs", Duration::from_secs(60));
    let keys = boto3(&garage, &["list", "gw/shares/docs/"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(
        keys,
        vec!["gw/shares/docs/moved/", "gw/shares/docs/moved/f"],
        "old keys deleted"
    );
    let (got, meta) = object(&garage, dir.path(), "gw/shares/docs/moved/f");
    assert_eq!(got, b"contents");
    assert!(meta.contains("file-owner=42"), "{meta}");
    assert_eq!(
        nfs_cat(&url(&gw, "docs/moved/f")),
        b"contents",
        "read back from the moved object"
    );
}

#[test]
fn a_partial_overwrite_of_a_large_uploaded_file_downloads_only_the_touched_part() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, gw, config) = docs_on_garage(dir.path(), 0);
    let config = Some(config.as_path());
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let mut data = noise(80 * MIB, 3);
    let f = write_committed(&mut c, &root, "large.bin", &data);
    wait_uploaded(&gw, config, "docs", Duration::from_secs(120));
    let before = live_value(&gw, "files.download_bytes");

    let patch = vec![0xA5u8; 4096];
    let at = 40 * MIB + 10;
    c.write(&f, at as u64, &patch, 0).unwrap();
    c.commit(&f).unwrap();
    data[at..at + patch.len()].copy_from_slice(&patch);
    wait_uploaded(&gw, config, "docs", Duration::from_secs(120));
    let fetched = live_value(&gw, "files.download_bytes") - before;
    assert!(
        fetched > 0 && fetched <= 16 * MIB as i64,
        "one 16 MiB part fetched, not the whole 80 MiB file: {fetched}"
    );

    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/large.bin");
    assert!(
        got == data,
        "the object holds the patch and every unchanged part"
    );
    let (piece, _) = c.read(&f, (at - 10) as u64, 8192).unwrap();
    assert_eq!(piece, &data[at - 10..at - 10 + 8192]);
}

/// Bytes the files in `dir` take on disk (holes excluded), 0 if it is missing.
/// Bytes the files (not subdirectories) directly in `dir` take on disk.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks() * 512)
            .sum()
    })
}

/// Garage and a gateway with `cache.size` 64 MiB, the upload delay given and share `docs`;
/// returns the data dir and config too.
fn docs_in_64_mib(dir: &Path, delay_ms: u64, port: u16) -> (Garage, Gateway, PathBuf, PathBuf) {
    let garage = Garage::start();
    let data = dir.join("data");
    let config = activate_on(&garage, dir, &data, "gw", &["--cache-size", "64MiB"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[files]\nupload_delay_ms = {delay_ms}\n"));
    std::fs::write(&config, text).unwrap();
    let gw = start(&data, Some(&config), port);
    tg(
        &gw,
        Some(&config),
        &["share", "create", "docs", "--squash", "none"],
    );
    (garage, gw, data, config)
}

/// Copies `mib` MiB of noise (seeded `i + seed`) to `docs/f{i}` with `nfs-cp`; returns them.
fn copy_in(gw: &Gateway, dir: &Path, i: usize, mib: usize, seed: u64) -> Vec<u8> {
    let local = dir.join(format!("f{i}"));
    let bytes = noise(mib * MIB, i as u64 + seed);
    std::fs::write(&local, &bytes).unwrap();
    nfs_cp(local.to_str().unwrap(), &url(gw, &format!("docs/f{i}")));
    std::fs::remove_file(&local).unwrap();
    bytes
}

/// Staging files and the clean copies kept beside them (files-staging/clean).
fn staging_and_copies(staging: &Path) -> (u64, u64) {
    (
        allocated_bytes(staging),
        allocated_bytes(&staging.join("clean")),
    )
}

/// Uploaded files stay on local disk as clean copies: reading one back, and writing into it,
/// costs no download. The copies share `cache.size` (64 MiB) with staging, the least recently
/// used going first, so reading an evicted file goes to the bucket again; after kill -9 and a
/// restart none is trusted and every file reads back whole from the bucket.
#[test]
fn uploaded_files_are_read_from_local_copies_within_the_cache_size() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (garage, gw, data, config) = docs_in_64_mib(dir.path(), 200, port);
    let staging = data.join("files-staging");
    let mut files: Vec<Vec<u8>> = Vec::new();
    let copy = |i: usize, mib: usize| copy_in(&gw, dir.path(), i, mib, 70);
    for i in 0..3 {
        files.push(copy(i, 8));
    }
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    assert_eq!(staging_and_copies(&staging).0, 0, "nothing left staged");
    for (i, bytes) in files.iter().enumerate() {
        assert!(nfs_cat(&url(&gw, &format!("docs/f{i}"))) == *bytes, "f{i}");
    }
    assert_eq!(live_value(&gw, "files.download_bytes"), 0, "no download");
    assert!(live_value(&gw, "files.clean_read_bytes") >= 24 * MIB as i64);

    // A write into an uploaded file stages it from its copy, not from the bucket.
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let f1 = c.lookup(&root, "f1").unwrap();
    let patch = vec![0x5Au8; 5000];
    c.write(&f1, 3 * MIB as u64 + 7, &patch, 0).unwrap();
    c.commit(&f1).unwrap();
    files[1][3 * MIB + 7..3 * MIB + 7 + patch.len()].copy_from_slice(&patch);
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    assert_eq!(
        live_value(&gw, "files.download_bytes"),
        0,
        "staged from the copy"
    );
    assert!(
        nfs_cat(&url(&gw, "docs/f1")) == files[1],
        "f1 after the patch"
    );
    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/f1");
    assert!(got == files[1], "the patched f1 in the bucket");

    // 60 MiB more: copies and staging stay within the 64 MiB, f0 (least recently used) goes.
    for i in 3..8 {
        files.push(copy(i, 12));
        let (staged, copies) = staging_and_copies(&staging);
        assert!(
            staged + copies <= (64 + 8) * MIB as u64,
            "staging {staged} + copies {copies} bytes, over the 64 MiB cache size"
        );
    }
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    let kept = live_value(&gw, "files.clean_bytes");
    assert!(
        kept > 0 && kept <= 64 * MIB as i64,
        "copies take {kept} bytes"
    );
    assert!(
        nfs_cat(&url(&gw, "docs/f0")) == files[0],
        "f0 from the bucket"
    );
    assert!(
        live_value(&gw, "files.download_bytes") >= 8 * MIB as i64,
        "f0's copy was evicted, so it came from the bucket"
    );

    // After kill -9, no copy is trusted: everything reads back whole from the bucket.
    gw.kill9();
    let gw = start(&data, Some(&config), port);
    assert_eq!(staging_and_copies(&staging).1, 0, "copies dropped at start");
    for (i, bytes) in files.iter().enumerate() {
        assert!(nfs_cat(&url(&gw, &format!("docs/f{i}"))) == *bytes, "f{i}");
    }
    assert_eq!(live_value(&gw, "files.clean_read_bytes"), 0);
    drop(garage);
}

/// Staging is held to `cache.size` (64 MiB here): 160 MiB of files copied with `nfs-cp`, with
/// an upload delay long enough that they would all pile up unbounded, never take more than
/// the cache size (plus the writes in flight) in DATA_DIR/files-staging; writers are held
/// until uploads make room, nothing fails, and every file reads back whole. A single file
/// larger than the cache size still goes through.
#[test]
fn staging_is_held_to_the_cache_size_and_writers_wait_for_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, gw, data, config) = docs_in_64_mib(dir.path(), 5000, free_port());
    let staging = data.join("files-staging");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, staging) = (stop.clone(), staging.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (staged, copies) = staging_and_copies(&staging);
                most = most.max(staged + copies);
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        })
    };
    let copy = |i: usize, mib: usize| copy_in(&gw, dir.path(), i, mib, 40);
    let mut files: Vec<Vec<u8>> = (0..10).map(|i| copy(i, 16)).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    println!("staging peaked at {} MiB", most >> 20);
    assert!(most >= 32 * MIB as u64, "staging was used ({most} bytes)");
    assert!(
        most <= (64 + 8) * MIB as u64,
        "staging and clean copies peaked at {most} bytes, over the 64 MiB cache size"
    );
    // Larger than the whole budget: it waits for the others, then goes through alone.
    files.push(copy(10, 80));
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    assert_eq!(allocated_bytes(&staging), 0, "uploaded files left staging");
    for (i, bytes) in files.iter().enumerate() {
        assert!(
            nfs_cat(&url(&gw, &format!("docs/f{i}"))) == *bytes,
            "f{i} reads back whole"
        );
    }
    drop(garage);
}

/// ADR 0011: a large file committed and left alone starts its multipart upload inside the
/// upload delay; a write meanwhile abandons it (and aborts it in Garage), and the upload that
/// finally lands holds every byte and the attributes of the last write.
/// Creates `name` in `dir` and writes `data` into it, UNSTABLE 1 MiB at a time, then COMMITs.
fn write_committed(c: &mut Client, dir: &nfs::Fh, name: &str, data: &[u8]) -> nfs::Fh {
    let f = c.create(dir, name, 0, 0o644).unwrap();
    for (i, piece) in data.chunks(MIB).enumerate() {
        c.write(&f, (i * MIB) as u64, piece, 0).unwrap();
    }
    c.commit(&f).unwrap();
    f
}

/// A value of the daemon's live status file, read after it has been rewritten (every second)
/// since whatever came before.
fn live_value(gw: &Gateway, key: &str) -> i64 {
    std::thread::sleep(Duration::from_millis(1500));
    gw.status_value(key).unwrap()
}

/// A status figure once it reads `want` (the status file is rewritten about every second, later
/// under load), or whatever it reads after 15 s, for the caller's assertion.
fn settled_value(gw: &Gateway, key: &str, want: i64) -> i64 {
    let started = Instant::now();
    loop {
        let v = gw.status_value(key).unwrap_or(-1);
        if v == want || started.elapsed() > Duration::from_secs(15) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Garage and a gateway (data in `dir/data`) with share `docs` and the upload delay given;
/// returns the config path too.
fn docs_with_delay(dir: &Path, delay_ms: u64) -> (Garage, Gateway, PathBuf) {
    docs_with(dir, delay_ms, None)
}

/// As `docs_with_delay`, with the bucket's upload rate limited to `upload_limit` bytes a
/// second when given.
fn docs_with(dir: &Path, delay_ms: u64, upload_limit: Option<u64>) -> (Garage, Gateway, PathBuf) {
    let garage = Garage::start();
    let data_dir = dir.join("data");
    let config = activate_on(&garage, dir, &data_dir, "gw", &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    if let Some(limit) = upload_limit {
        assert!(text.contains("[bucket]\n"), "{text}");
        text = text.replacen(
            "[bucket]\n",
            &format!("[bucket]\nupload_limit = {limit}\n"),
            1,
        );
    }
    text.push_str(&format!("\n[files]\nupload_delay_ms = {delay_ms}\n"));
    std::fs::write(&config, text).unwrap();
    let gw = start(&data_dir, Some(&config), 0);
    tg(
        &gw,
        Some(&config),
        &["share", "create", "docs", "--squash", "none"],
    );
    (garage, gw, config)
}

#[test]
fn a_large_committed_file_uploads_early_and_a_rewrite_abandons_the_early_upload() {
    let dir = tempfile::tempdir().unwrap();
    // A delay long enough that the early upload, not the delay, starts the upload, and an
    // upload rate that keeps 100 MiB in flight for about 10 s: the rewrite below must land
    // while the early upload runs, and a boto3 listing costs a second or more on a loaded
    // machine.
    let (garage, gw, config) = docs_with(dir.path(), 4000, Some(10 * MIB as u64));
    let config = Some(config.as_path());
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let mut data = noise(100 * MIB, 11);
    let f = write_committed(&mut c, &root, "stream.bin", &data);
    // The upload starts a moment after the COMMIT, inside the 4 s delay; it is seen while it
    // runs.
    let committed = Instant::now();
    loop {
        let uploads = boto3(&garage, &["uploads", "gw/shares/docs/stream.bin"]);
        if uploads.lines().count() == 1 {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(8),
            "no multipart upload in progress 8 s after the COMMIT: {uploads:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rewrite at once, while the early upload is still in flight (no wait for a fresh status
    // figure here).
    assert_eq!(gw.status_value("files.early_abandoned"), Some(0));

    let patch = vec![0x5Au8; 3000];
    let at = 70 * MIB + 5;
    c.write(&f, at as u64, &patch, 0).unwrap();
    c.commit(&f).unwrap();
    data[at..at + patch.len()].copy_from_slice(&patch);
    wait_uploaded(&gw, config, "docs", Duration::from_secs(120));
    assert_eq!(settled_value(&gw, "files.early_abandoned", 1), 1);
    assert_eq!(settled_value(&gw, "files.early_uploads", 1), 1);
    assert_eq!(
        boto3(&garage, &["uploads", "gw/shares/docs/stream.bin"]),
        "",
        "the abandoned upload was aborted"
    );

    let (got, meta) = object(&garage, dir.path(), "gw/shares/docs/stream.bin");
    assert!(
        got == data,
        "the object holds the rewrite and everything else"
    );
    let a = c.getattr(&f).unwrap();
    let mtime_ns = u64::from(a.mtime.0) * 1_000_000_000 + u64::from(a.mtime.1);
    assert!(
        meta.contains(&format!("file-mtime={mtime_ns}ns")),
        "the object carries the mtime of the last write ({mtime_ns}): {meta}"
    );
}

#[test]
fn an_early_upload_cut_short_by_a_crash_is_aborted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the crash comes while the early upload waits out the delay.
    let (garage, gw, config) = docs_with_delay(dir.path(), 60_000);
    let data_dir = dir.path().join("data");
    let mut c = Client::connect(&nfs_addr(&gw));
    let root = c.mount("/docs").unwrap();
    let data = noise(80 * MIB, 12);
    write_committed(&mut c, &root, "cut.bin", &data);
    let committed = Instant::now();
    let open = loop {
        let uploads = boto3(&garage, &["uploads", "gw/shares/docs/cut.bin"]);
        if uploads.lines().count() == 1 {
            break uploads;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "no early upload in progress 5 s after the COMMIT: {uploads:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    gw.kill9();

    // The restarted gateway aborts the upload the crash left open, then uploads the committed
    // file whole (a restart forgets how long it was idle).
    let gw = start(&data_dir, Some(&config), 0);
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(120));
    let left = boto3(&garage, &["uploads", "gw/shares/docs/cut.bin"]);
    assert!(
        !left.contains(open.trim()),
        "the upload left open by the crash ({}) was aborted: {left:?}",
        open.trim()
    );
    assert_eq!(left, "", "no multipart upload is left open");
    let (got, _) = object(&garage, dir.path(), "gw/shares/docs/cut.bin");
    assert!(got == data, "the object holds the committed file");
    assert!(
        gw.log_text()
            .contains("aborted a multipart upload left open by the last run"),
        "the abort is logged"
    );
}

/// `recover` from a catalog copy older than the bucket. The copy knew two files with local
/// writes not yet uploaded: `f.txt`, new, its bytes kept in the catalog's small-file journal,
/// and `g.txt`, uploaded once and rewritten since. After the copy both were uploaded, and
/// `f.txt` rewritten and uploaded again. The recovered gateway must serve, and leave in the
/// bucket, the bucket's versions: the old machine's bytes (or the zeros of its missing staging
/// files) are never written over them.
#[test]
fn recover_from_an_older_catalog_copy_keeps_the_buckets_newer_files() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start();
    let data = dir.path().join("data");
    let key = dir.path().join("gateway.key");
    let config = activate_on(
        &garage,
        dir.path(),
        &data,
        "gw",
        &["--key-file", key.to_str().unwrap()],
    );
    let base = std::fs::read_to_string(&config).unwrap();
    let with_delay = |ms: u64| {
        std::fs::write(
            &config,
            format!("{base}\n[files]\nupload_delay_ms = {ms}\n"),
        )
        .unwrap();
    };
    let (f1, f2, g1, g2) = (
        vec![b'1'; 5000],
        vec![b'2'; 5000],
        vec![b'a'; 7000],
        vec![b'b'; 7000],
    );
    let src = dir.path().join("src");
    let rewrite = |gw: &Gateway, name: &str, bytes: &[u8]| {
        let mut c = Client::connect(&nfs_addr(gw));
        let docs = c.mount("/docs").unwrap();
        let f = c.lookup(&docs, name).unwrap();
        c.write(&f, 0, bytes, 0).unwrap();
        c.commit(&f).unwrap();
    };
    with_delay(200);
    let gw = start(&data, Some(&config), 0);
    tg(
        &gw,
        Some(&config),
        &["share", "create", "docs", "--squash", "none"],
    );
    std::fs::write(&src, &g1).unwrap();
    nfs_cp(src.to_str().unwrap(), &url(&gw, "docs/g.txt"));
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    assert_eq!(gw.stop(), Some(0));

    with_delay(600_000);
    let gw = start(&data, Some(&config), 0);
    rewrite(&gw, "g.txt", &g2);
    std::fs::write(&src, &f1).unwrap();
    nfs_cp(src.to_str().unwrap(), &url(&gw, "docs/f.txt"));
    // A clean stop takes a catalog copy: both files in it as staged, f.txt's bytes in the
    // journal.
    assert_eq!(gw.stop(), Some(0));
    let copies = |prefix: &str| -> Vec<String> {
        boto3(&garage, &["list", prefix])
            .lines()
            .filter(|k| {
                k.rsplit_once("/catalog/")
                    .is_some_and(|(_, g)| g.len() == 20 && g.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(str::to_owned)
            .collect()
    };
    let taken = copies("gw/");
    assert!(!taken.is_empty(), "no catalog copy after a clean stop");

    // Both are uploaded, then f.txt is rewritten and uploaded again.
    with_delay(200);
    let gw = start(&data, Some(&config), 0);
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    rewrite(&gw, "f.txt", &f2);
    wait_uploaded(&gw, Some(&config), "docs", Duration::from_secs(60));
    let listed = boto3(&garage, &["list", "gw/"]);
    let key_of = |name: &str| -> String {
        listed
            .lines()
            .find(|k| k.ends_with(&format!("/{name}")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{name} not in the bucket: {listed}"))
    };
    let (f_key, g_key) = (key_of("f.txt"), key_of("g.txt"));
    same(
        &object(&garage, dir.path(), &f_key).0,
        &f2,
        "f.txt before the loss",
    );
    same(
        &object(&garage, dir.path(), &g_key).0,
        &g2,
        "g.txt before the loss",
    );
    // The appliance is lost, and the newest catalog copy in the bucket is the older one.
    gw.kill9();
    for k in copies("gw/") {
        if !taken.contains(&k) {
            boto3(&garage, &["delete", &k]);
        }
    }
    std::fs::remove_dir_all(&data).unwrap();

    let fresh = dir.path().join("fresh");
    let out = crate::snapshots::recover(&garage, "gw", dir.path(), &fresh, &key);
    assert!(out.status.success(), "recover: {}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("docs/f.txt: not in the bucket then")
            && report.contains("docs/g.txt: back to its uploaded version"),
        "{report}"
    );
    let config = fresh.join("tidegate.toml");
    let gw = start(&fresh, Some(&config), 0);
    same(
        &nfs_cat(&url(&gw, "docs/f.txt")),
        &f2,
        "f.txt after recover",
    );
    same(
        &nfs_cat(&url(&gw, "docs/g.txt")),
        &g2,
        "g.txt after recover",
    );
    // Past the default upload delay: nothing went up over the bucket's objects.
    std::thread::sleep(Duration::from_secs(3));
    let status = tg(&gw, Some(&config), &["share", "status", "docs"]);
    assert!(status.contains("dirty files: 0\n"), "{status}");
    same(
        &object(&garage, dir.path(), &f_key).0,
        &f2,
        "f.txt in the bucket",
    );
    same(
        &object(&garage, dir.path(), &g_key).0,
        &g2,
        "g.txt in the bucket",
    );
    assert_eq!(gw.stop(), Some(0));
}

/// Asserts `got == want` without printing kilobytes of bytes.
fn same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {} bytes starting {:?}, want {} bytes starting {:?}",
        got.len(),
        &got[..got.len().min(8)],
        want.len(),
        &want[..want.len().min(8)]
    );
}
