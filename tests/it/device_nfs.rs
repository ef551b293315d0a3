//! The device's NFS export (issue 8, build item 3) with real clients: libnfs's `nfs-cp`,
//! `nfs-ls` and `nfs-cat` copy a tree in, boto3 lists and reads it over the device's S3
//! endpoint, the job is sealed (NFS writes then fail with NFS3ERR_ROFS) and imported into a
//! real Garage, where boto3 checks every object; a kill -9 right after a COMMIT loses nothing;
//! and the device's data dir holds neither a file name nor a byte of file data in the clear.

use std::path::{Path, PathBuf};

use crate::device::{
    CLIENT, Job, Unlocked, boto3, create_job, files_under, import, report, sha256_file,
    small_files, target_hashes,
};
use crate::nfs_share::{nfs_cat, nfs_cp, nfs_ls};
use crate::support::garage::Garage;
use crate::support::nfs::Client;
use crate::support::{noise, run, stderr, stdout, tidegate, tool};

const MIB: usize = 1 << 20;
pub(crate) const NFS3ERR_ROFS: u32 = 30;

/// The NFS side of an unlocked device: `host:port` and the export path.
pub(crate) struct Export {
    pub addr: String,
    pub path: String,
}

impl Export {
    pub fn of(dev: &Unlocked) -> Export {
        let line = dev
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("nfs export: nfs://"))
            .unwrap_or_else(|| panic!("no nfs export line: {:?}", dev.lines));
        let url = line.split(' ').next().unwrap();
        let (addr, path) = url.split_once('/').unwrap();
        Export {
            addr: addr.to_owned(),
            path: format!("/{path}"),
        }
    }

    /// `nfs://127.0.0.1/EXPORT/REL?nfsport=N&mountport=N` (no portmapper).
    fn url(&self, rel: &str) -> String {
        let port = self.addr.rsplit(':').next().unwrap();
        format!(
            "nfs://127.0.0.1{}/{rel}?nfsport={port}&mountport={port}",
            self.path
        )
    }
}

fn unlock_with_nfs(job: &Job) -> (Unlocked, Export) {
    let dev = Unlocked::start_with(job, &["--nfs-listen", "127.0.0.1:0"]);
    let export = Export::of(&dev);
    (dev, export)
}

/// (key, sha256, size) of every object on the device, through its S3 endpoint (boto3).
fn device_hashes(dev: &Unlocked) -> Vec<(String, String, u64)> {
    let script = format!(
        "{CLIENT}
import hashlib
bucket = s3.list_buckets()['Buckets'][0]['Name']
p = s3.get_paginator('list_objects_v2')
for page in p.paginate(Bucket=bucket):
    for o in page.get('Contents', []):
        body = s3.get_object(Bucket=bucket, Key=o['Key'])['Body'].read()
        print(o['Key'], hashlib.sha256(body).hexdigest(), len(body))
"
    );
    boto3(&script, |c| dev.env(c))
        .lines()
        .map(|l| {
            let mut it = l.rsplitn(3, ' ');
            let size = it.next().unwrap().parse().unwrap();
            let sha = it.next().unwrap().to_owned();
            (it.next().unwrap().to_owned(), sha, size)
        })
        .collect()
}

fn local_hashes(src: &Path) -> Vec<(String, String, u64)> {
    files_under(src)
        .into_iter()
        .map(|(k, p)| {
            let size = std::fs::metadata(&p).unwrap().len();
            (k, sha256_file(&p), size)
        })
        .collect()
}

/// Whether any file under `dir` contains `needle`.
fn holds(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                return Some(p);
            }
        }
    }
    None
}

/// The staging directories of `job` on the shared-memory tmpfs.
fn staging_dirs(job: &Job) -> Vec<PathBuf> {
    let stem = format!("tidegate-device-{}-", job.id);
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&stem)
                .then_some(p)
        })
        .collect()
}

#[test]
fn device_nfs_copy_in_is_listed_over_s3_sealed_read_only_and_imported_byte_identical() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "nfsin");
    let (dev, export) = unlock_with_nfs(&job);
    assert_eq!(export.path, format!("/{}", garage.bucket));

    // The tree: 300 small files in 7 directories, one 64 MiB file, and a file whose name and
    // content are markers to look for on the device's disks.
    let src = dir.path().join("src");
    small_files(&src, 300, 3000);
    std::fs::create_dir_all(src.join("big")).unwrap();
    std::fs::write(src.join("big/large.bin"), noise(64 * MIB, 5)).unwrap();
    let name_marker = "unmistakable-file-name-9d2c";
    let data_marker = b"PLAINTEXT-MARKER-4f1e7a PLAINTEXT-MARKER-4f1e7a";
    std::fs::write(
        src.join(format!("d0/{name_marker}.txt")),
        data_marker.repeat(1000),
    )
    .unwrap();

    let mut c = Client::connect(&export.addr);
    let root = c.mount(&export.path).unwrap();
    for d in ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "big"] {
        c.mkdir(&root, d).unwrap();
    }
    let want = local_hashes(&src);
    for (key, path) in files_under(&src) {
        nfs_cp(path.to_str().unwrap(), &export.url(&key));
    }

    // Over NFS: listed and read back.
    let mut listed = nfs_ls(&export.url("d3"));
    listed.retain(|n| n != "." && n != "..");
    listed.sort();
    let mut in_d3: Vec<String> = want
        .iter()
        .filter_map(|(k, _, _)| k.strip_prefix("d3/").map(str::to_owned))
        .collect();
    in_d3.sort();
    assert_eq!(listed, in_d3);
    assert_eq!(
        nfs_cat(&export.url(&format!("d0/{name_marker}.txt"))),
        data_marker.repeat(1000)
    );

    // Over S3: the same keys and bytes, 1:1.
    assert_eq!(device_hashes(&dev), want);

    // Nothing on the device's disks names a file or holds its bytes in the clear, and nothing
    // is left staged in memory once every file was committed.
    for needle in [name_marker.as_bytes(), &data_marker[..24]] {
        let found = holds(&job.data, needle);
        assert!(
            found.is_none(),
            "{:?} in the clear in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    let staging = staging_dirs(&job);
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert_eq!(std::fs::read_dir(&staging[0]).unwrap().count(), 0);

    // Sealed: NFS writes fail read-only, the data set is frozen.
    let o = run(tidegate(&job.data).args(["job", "seal"]));
    assert!(o.status.success(), "job seal: {}", stderr(&o));
    let mut refused = None;
    for _ in 0..50 {
        match c.create(&root, "after-seal.txt", 0, 0o644) {
            Err(status) => {
                refused = Some(status);
                break;
            }
            // The export learns of the seal within a poll interval.
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    assert_eq!(refused, Some(NFS3ERR_ROFS), "CREATE after seal");
    let fh = c.lookup(&root, "big").unwrap();
    let fh = c.lookup(&fh, "large.bin").unwrap();
    assert_eq!(
        c.write(&fh, 0, b"x", 0),
        Err(NFS3ERR_ROFS),
        "WRITE after seal"
    );
    let late = dir.path().join("late");
    std::fs::write(&late, b"too late").unwrap();
    let o = std::process::Command::new(tool("nfs-cp"))
        .args([late.to_str().unwrap(), &export.url("late.txt")])
        .output()
        .unwrap();
    assert!(!o.status.success(), "nfs-cp after seal: {}", stdout(&o));
    assert_eq!(device_hashes(&dev), want, "the data set did not change");
    dev.lock(&job);
    assert!(staging_dirs(&job).is_empty(), "staging removed at lock");

    let o = import(&job, &garage, &[]);
    assert!(o.status.success(), "import: {}{}", stdout(&o), stderr(&o));
    let r = report(&job);
    assert_eq!(r["state"], "COMPLETE", "{r}");
    assert_eq!(r["imported_objects"], want.len() as u64, "{r}");
    assert_eq!(r["failed_objects"], 0, "{r}");
    assert_eq!(target_hashes(&garage, "nfsin/"), want);
}

#[test]
fn device_nfs_committed_data_survives_kill_9() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "crash");
    let (dev, export) = unlock_with_nfs(&job);
    let mut c = Client::connect(&export.addr);
    let root = c.mount(&export.path).unwrap();
    let fh = c.create(&root, "crash.bin", 0, 0o600).unwrap();
    let data = noise(3 * MIB, 9);
    for (i, piece) in data.chunks(MIB).enumerate() {
        let (n, committed, _) = c.write(&fh, (i * MIB) as u64, piece, 0).unwrap();
        assert_eq!((n as usize, committed), (piece.len(), 0), "UNSTABLE write");
    }
    c.commit(&fh).unwrap();
    drop(dev); // SIGKILL, right after the COMMIT reply

    let (dev, export) = unlock_with_nfs(&job);
    assert_eq!(
        staging_dirs(&job).len(),
        1,
        "the killed process's staging was removed"
    );
    assert!(
        nfs_cat(&export.url("crash.bin")) == data,
        "committed data reads back over NFS after kill -9"
    );
    let over_s3 = device_hashes(&dev);
    assert_eq!(over_s3.len(), 1, "{over_s3:?}");
    assert_eq!(over_s3[0].0, "crash.bin");
    assert_eq!(over_s3[0].2, data.len() as u64);
    dev.lock(&job);
}
