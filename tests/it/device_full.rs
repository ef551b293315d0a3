//! The issue 8 acceptance at full size, over HTTPS: `aws s3 cp --recursive` loads 10,000 small
//! files and one 5 GiB file into the device's endpoint; `s3cmd sync` of the same tree finds
//! nothing left to upload (sizes and MD5 ETags agree) and a second tree syncs; boto3 makes a
//! 3-part multipart upload; `aws s3 ls` and `s3cmd ls` list every object; ranged GETs into the
//! 5 GiB file (its start, a part and segment boundary, past 4 GiB, its end) return the source's
//! bytes. The job is sealed and imported into Garage, and boto3 hashes every object there
//! (streamed) against the sources.
//!
//! Disk: the 5 GiB source is deleted once loaded and checked, before the import, so the peak is
//! about 10 GiB (source + device while loading, device + Garage while importing). It takes
//! both cores (.config/nextest.toml); docs/device.md has its measured time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::device::{
    CLIENT, Unlocked, boto3, create_job, files_under, import_all, random_bytes, seal_running,
    small_files, target_hashes,
};
use crate::support::garage::Garage;
use crate::support::{run, stderr, stdout, tool};

const SMALL_FILES: usize = 10_000;
const BIG_BYTES: u64 = 5 << 30;

/// Writes `len` bytes that neither lz4 nor Garage's block dedup can shrink, fast: a 64 MiB
/// random block repeated, every 64 KiB stamped with its offset so that no two 64 KiB runs (and
/// so no two 1 MiB Garage blocks or 8 MiB device segments) are alike.
fn write_big(path: &Path, len: u64) {
    const BLOCK: usize = 64 << 20;
    const STAMP_EVERY: usize = 64 << 10;
    const CHUNK: usize = 1 << 20;
    let block = random_bytes(BLOCK);
    let mut out = std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(path).unwrap());
    let mut chunk = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = CHUNK.min(usize::try_from(len - at).unwrap());
        let from = usize::try_from(at % BLOCK as u64).unwrap();
        chunk[..n].copy_from_slice(&block[from..from + n]);
        for stamp in (0..n).step_by(STAMP_EVERY) {
            let offset = (at + stamp as u64).to_le_bytes();
            let end = (stamp + offset.len()).min(n);
            chunk[stamp..end].copy_from_slice(&offset[..end - stamp]);
        }
        out.write_all(&chunk[..n]).unwrap();
        at += n as u64;
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

/// sha256sum of many files, a thousand per process.
fn sha256_files(paths: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::with_capacity(paths.len());
    for batch in paths.chunks(1000) {
        let o = run(Command::new(tool("sha256sum")).args(batch));
        assert!(o.status.success(), "sha256sum: {}", stderr(&o));
        out.extend(
            stdout(&o)
                .lines()
                .map(|l| l.split(' ').next().unwrap().to_owned()),
        );
    }
    assert_eq!(out.len(), paths.len());
    out
}

/// Sources as (key, sha256, size), sorted, keys under `prefix`.
fn source_hashes(prefix: &str, dir: &Path) -> Vec<(String, String, u64)> {
    let files = files_under(dir);
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    files
        .iter()
        .zip(sha256_files(&paths))
        .map(|((rel, p), sha)| {
            let len = std::fs::metadata(p).unwrap().len();
            (format!("{prefix}{rel}"), sha, len)
        })
        .collect()
}

fn phase(t0: &mut Instant, what: &str) {
    eprintln!("device_full: {what}: {:.1} s", t0.elapsed().as_secs_f64());
    *t0 = Instant::now();
}

#[test]
fn device_full_size_10000_files_and_5gib_over_https_imported_verified() {
    let start = Instant::now();
    let mut t = Instant::now();
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "full");
    let dev = Unlocked::start(&job);
    assert!(dev.endpoint.starts_with("https://"), "{}", dev.endpoint);

    let src = dir.path().join("src");
    small_files(&src, SMALL_FILES, 700);
    let big = src.join("big-5GiB.bin");
    write_big(&big, BIG_BYTES);
    let mut want = source_hashes("aws/", &src);
    phase(&mut t, "10,000 files and 5 GiB written and hashed");

    let o = dev
        .aws()
        .args(["s3", "cp", "--recursive", "--only-show-errors"])
        .arg(&src)
        .arg("s3://tidegate-test/aws/")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "aws s3 cp: {}{}",
        stdout(&o),
        stderr(&o)
    );
    phase(&mut t, "aws s3 cp --recursive over https");

    // s3cmd sync of the same tree: every size and (single-part) MD5 ETag already matches.
    let sync = |from: &Path, to: &str| {
        let o = dev
            .s3cmd()
            .args(["sync", "--no-progress"])
            .arg(format!("{}/", from.display()))
            .arg(to)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "s3cmd sync: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
            .lines()
            .filter(|l| l.starts_with("upload:"))
            .count()
    };
    assert_eq!(
        sync(&src, "s3://tidegate-test/aws/"),
        0,
        "s3cmd re-uploaded"
    );
    phase(&mut t, "s3cmd sync of the same tree (nothing to upload)");
    let src2 = dir.path().join("src2");
    small_files(&src2, 500, 1500);
    std::fs::write(src2.join("forty.bin"), random_bytes(40 << 20)).unwrap();
    assert_eq!(sync(&src2, "s3://tidegate-test/s3cmd/"), 501);
    assert_eq!(sync(&src2, "s3://tidegate-test/s3cmd/"), 0);
    want.extend(source_hashes("s3cmd/", &src2));
    phase(&mut t, "s3cmd sync of a second tree, twice");

    let three = dir.path().join("three-parts.bin");
    let out = boto3(
        &format!(
            "{CLIENT}
parts = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1 << 20)]
u = s3.create_multipart_upload(Bucket='tidegate-test', Key='boto/three-parts.bin')
done = []
for i, data in enumerate(parts, 1):
    r = s3.upload_part(Bucket='tidegate-test', Key='boto/three-parts.bin', UploadId=u['UploadId'],
        PartNumber=i, Body=data)
    done.append({{'PartNumber': i, 'ETag': r['ETag']}})
r = s3.complete_multipart_upload(Bucket='tidegate-test', Key='boto/three-parts.bin',
    UploadId=u['UploadId'], MultipartUpload={{'Parts': done}})
assert r['ETag'].strip('\"').endswith('-3'), r
open(os.environ['OUT'], 'wb').write(b''.join(parts))
print('ok')
"
        ),
        |c| {
            dev.env(c);
            c.env("OUT", &three);
        },
    );
    assert_eq!(out.trim(), "ok");
    let three_sha = sha256_files(std::slice::from_ref(&three)).remove(0);
    want.push((
        "boto/three-parts.bin".into(),
        three_sha,
        std::fs::metadata(&three).unwrap().len(),
    ));
    want.sort();
    let total = want.len();
    assert_eq!(total, SMALL_FILES + 1 + 501 + 1);

    // Both listings see every object.
    let o = dev
        .aws()
        .args(["s3", "ls", "--recursive", "s3://tidegate-test/"])
        .output()
        .unwrap();
    assert!(o.status.success(), "aws s3 ls: {}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), total, "aws s3 ls --recursive");
    let o = dev
        .s3cmd()
        .args(["ls", "--recursive", "s3://tidegate-test/"])
        .output()
        .unwrap();
    assert!(o.status.success(), "s3cmd ls: {}", stderr(&o));
    let listed = stdout(&o);
    assert_eq!(listed.lines().count(), total, "s3cmd ls --recursive");
    let big_line = listed
        .lines()
        .find(|l| l.ends_with("s3://tidegate-test/aws/big-5GiB.bin"))
        .expect("s3cmd ls lists the 5 GiB object");
    assert!(
        big_line
            .split_whitespace()
            .any(|f| f == BIG_BYTES.to_string()),
        "{big_line}"
    );
    phase(&mut t, "aws s3 ls and s3cmd ls");

    // Ranged GETs against the source file's bytes: the start, the AWS CLI's 8 MiB part (and
    // the device's segment) boundary, a 64 MiB run across many segments, the 4 GiB mark (32-bit
    // offsets), the last bytes and a suffix range.
    let gib = 1u64 << 30;
    let ranges = [
        (0, 0),
        (0, (1 << 20) - 1),
        ((8 << 20) - 7, (8 << 20) + 7),
        (2 * gib - 3, 2 * gib + (64 << 20)),
        (4 * gib - 1, 4 * gib + 1),
        (BIG_BYTES - (8 << 20) - 100, BIG_BYTES - 1),
        (BIG_BYTES - 1, BIG_BYTES - 1),
    ];
    let spec: Vec<String> = ranges.iter().map(|(a, b)| format!("({a},{b})")).collect();
    let out = boto3(
        &format!(
            "{CLIENT}
src = open(os.environ['BIG'], 'rb')
def check(rng, a, b):
    r = s3.get_object(Bucket='tidegate-test', Key='aws/big-5GiB.bin', Range=rng)
    assert r['ResponseMetadata']['HTTPStatusCode'] == 206, r['ResponseMetadata']
    got = r['Body'].read()
    src.seek(a)
    want = src.read(b - a + 1)
    assert len(got) == len(want) == b - a + 1, (rng, len(got), len(want))
    assert got == want, rng
for a, b in [{}]:
    check('bytes=%d-%d' % (a, b), a, b)
check('bytes=-10', {big} - 10, {big} - 1)
check('bytes=%d-' % ({big} - 5), {big} - 5, {big} - 1)
print('ok')
",
            spec.join(","),
            big = BIG_BYTES
        ),
        |c| {
            dev.env(c);
            c.env("BIG", &big);
        },
    );
    assert_eq!(out.trim(), "ok");
    // Its hash is in `want`; the bytes are not needed again.
    std::fs::remove_file(&big).unwrap();
    phase(&mut t, "ranged GETs");

    seal_running(&job, total);
    dev.lock(&job);
    phase(&mut t, "seal");

    let r = import_all(&job, &garage, &["--parallel", "8"], total);
    let bytes: u64 = want.iter().map(|w| w.2).sum();
    assert_eq!(r["imported_bytes"], bytes);
    phase(&mut t, "job import into garage");

    let got = target_hashes(&garage, "full/");
    assert_eq!(got.len(), want.len());
    let differ: Vec<_> = got.iter().zip(&want).filter(|(g, w)| g != w).collect();
    assert!(
        differ.is_empty(),
        "{} objects differ, first {:?}",
        differ.len(),
        differ.first()
    );
    phase(&mut t, "every object hashed in garage with boto3");
    eprintln!("device_full: total {:.1} s", start.elapsed().as_secs_f64());
}
