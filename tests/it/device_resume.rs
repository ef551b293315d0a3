//! The import continues an interrupted large object (issue 8: "resumes after a crash or a lost
//! network without re-sending finished objects"): a kill -9 while a 100 MiB object's multipart
//! upload is half sent into a real Garage, then a rerun that lists the parts Garage holds and
//! sends only the rest. Checked with boto3: Garage's parts before the rerun, the object's bytes
//! after, and no multipart upload left open.

use std::time::{Duration, Instant};

use crate::device::{
    CLIENT, Unlocked, boto3, create_job, garage_env, import, lock_and_seal, random_bytes, report,
    sha256_file, spawn_import, target_hashes,
};
use crate::support::garage::Garage;
use crate::support::{stderr, stdout};

const BIG: usize = 100 << 20;
/// The import's default part size (`bucket.part_size`).
const PART: u64 = 16 << 20;

/// Parts Garage holds for the open multipart uploads under `prefix`, by key.
fn open_parts(garage: &Garage, prefix: &str) -> Vec<(String, usize)> {
    let out = boto3(
        &format!(
            "{CLIENT}
b = os.environ['BUCKET']
for u in s3.list_multipart_uploads(Bucket=b, Prefix='{prefix}').get('Uploads', []):
    parts = s3.list_parts(Bucket=b, Key=u['Key'], UploadId=u['UploadId']).get('Parts', [])
    print(u['Key'], len(parts))
"
        ),
        |c| garage_env(garage, c),
    );
    out.lines()
        .map(|l| {
            let (k, n) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn device_import_continues_a_large_object_after_kill9_without_resending_its_parts() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "cont");
    let src = dir.path().join("big.bin");
    std::fs::write(&src, random_bytes(BIG)).unwrap();
    let want = sha256_file(&src);
    let dev = Unlocked::start(&job);
    let out = boto3(
        &format!(
            "{CLIENT}
s3.upload_file('{}', 'tidegate-test', 'big.bin', ExtraArgs={{'Metadata': {{'kind': 'big'}}}})
print('ok')
",
            src.display()
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok");
    lock_and_seal(dev, &job);

    // Slowed to a part every two seconds, so the kill lands mid-object.
    let mut child = spawn_import(
        &job,
        &garage,
        &["--parallel", "1", "--upload-limit", "8MiB"],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let held = loop {
        let parts = open_parts(&garage, "cont/");
        if let Some((_, n)) = parts.iter().find(|(k, n)| k == "cont/big.bin" && *n >= 2) {
            break *n;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no parts reached Garage");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // What Garage holds once it settles is what the rerun may skip (a part whose body was sent
    // before the kill may still be stored).
    let count = || {
        open_parts(&garage, "cont/")
            .into_iter()
            .find(|(k, _)| k == "cont/big.bin")
            .map_or(0, |(_, n)| n)
    };
    let mut held = held;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = count();
        if now == held {
            break;
        }
        held = now;
    }
    let total_parts = (BIG as u64).div_ceil(PART);
    assert!(
        (held as u64) < total_parts,
        "every part was sent before the kill"
    );

    let o = import(&job, &garage, &[]);
    assert!(o.status.success(), "rerun: {}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("not sent again"),
        "the CLI does not say what it reused: {}",
        stdout(&o)
    );
    let r = report(&job);
    assert_eq!(r["state"], "COMPLETE", "{r}");
    let reused = r["run_reused_bytes"].as_u64().unwrap();
    assert_eq!(reused, held as u64 * PART, "{r}");
    let puts = r["run_put_requests"].as_u64().unwrap();
    assert_eq!(puts, total_parts - held as u64, "{r}");
    let got = target_hashes(&garage, "cont/");
    assert_eq!(got, vec![("big.bin".to_owned(), want, BIG as u64)]);
    assert!(
        open_parts(&garage, "cont/").is_empty(),
        "a multipart upload was left open"
    );
}
