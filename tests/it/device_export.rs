//! Export jobs (issue 8) with real clients: boto3 fills a Garage bucket (small objects with
//! user metadata and content types, a 200 MiB multipart object, a multipart object of uneven
//! parts); `job export` copies the prefix onto the device, is killed with SIGKILL mid-way and
//! resumes without copying finished objects again; the AWS CLI then downloads everything from
//! the unlocked device's endpoint and it is byte-identical to what was put, boto3 finds the
//! metadata; writes to a READY device are AccessDenied; a flipped byte in the device's store
//! is an error on GET, never data.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::device::{
    CLIENT, Job, Unlocked, boto3, create_job_of, files_under, garage_env, random_bytes,
    sha256_file, small_files,
};
use crate::support::garage::Garage;
use crate::support::{run, stderr, stdout, tidegate};

/// Uploads every file under `src` to Garage under `prefix` with boto3: user metadata naming the
/// file, a content type, and multipart (8 MiB parts) for files above 8 MiB.
fn put_tree(garage: &Garage, src: &Path, prefix: &str) {
    let out = boto3(
        &format!(
            "{CLIENT}
from boto3.s3.transfer import TransferConfig
from concurrent.futures import ThreadPoolExecutor
root = os.environ['SRC']
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
files = []
for d, _, names in os.walk(root):
    files += [os.path.relpath(os.path.join(d, n), root) for n in names]
def put(rel):
    s3.upload_file(os.path.join(root, rel), os.environ['BUCKET'], '{prefix}' + rel, Config=cfg,
        ExtraArgs={{'Metadata': {{'origin': rel.replace('/', '_')}},
                    'ContentType': 'application/x-' + rel.split('.')[-1]}})
with ThreadPoolExecutor(8) as ex:
    list(ex.map(put, files))
print(len(files))
"
        ),
        |c| {
            garage_env(garage, c);
            c.env("SRC", src);
        },
    );
    assert_eq!(out.trim(), files_under(src).len().to_string());
}

fn export(job: &Job, garage: &Garage, extra: &[&str]) -> Output {
    let mut cmd = tidegate(&job.data);
    cmd.args([
        "job",
        "export",
        "--manifest",
        job.manifest.to_str().unwrap(),
    ])
    .args(extra)
    .env("TIDEGATE_UNLOCK_CODE", &job.code);
    garage_env(garage, &mut cmd);
    run(&mut cmd)
}

/// Creates an export job of `exp/` and runs it once: READY, all `objects` on the device, every
/// ETag verified.
fn export_verified(dir: &Path, garage: &Garage, objects: u64) -> Job {
    let job = create_job_of(dir, garage, "export", "exp");
    let o = export(&job, garage, &[]);
    assert!(o.status.success(), "export: {}{}", stdout(&o), stderr(&o));
    let r = report(&job);
    assert_eq!(
        (
            &r["state"],
            &r["exported_objects"],
            &r["run_etag_unverified"]
        ),
        (&"READY".into(), &objects.into(), &0.into()),
        "{r}"
    );
    job
}

fn report(job: &Job) -> serde_json::Value {
    let path = job.data.join("device").join(&job.id).join("report.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn status(job: &Job) -> String {
    let o = run(tidegate(&job.data).args(["job", "status", &job.id]));
    assert!(o.status.success(), "job status: {}", stderr(&o));
    stdout(&o)
}

/// Runs a boto3 script against the device's endpoint.
fn on_device(dev: &Unlocked, script: &str) -> String {
    boto3(&format!("{CLIENT}\n{script}"), |c| dev.env(c))
}

#[test]
fn device_export_copies_a_prefix_resumes_after_kill9_and_serves_it_read_only() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    small_files(&src, 300, 1500);
    std::fs::write(src.join("big-200MiB.bin"), random_bytes(200 << 20)).unwrap();
    put_tree(&garage, &src, "exp/");
    // Outside the exported prefix: must not reach the device.
    boto3(
        &format!("{CLIENT}\ns3.put_object(Bucket=os.environ['BUCKET'], Key='other/x', Body=b'x')"),
        |c| garage_env(&garage, c),
    );
    let total = files_under(&src).len() as u64;

    let job = create_job_of(dir.path(), &garage, "export", "exp");
    assert!(status(&job).contains("CREATED"));
    // A device that has not been filled yet cannot be unlocked for clients.
    let o = run(tidegate(&job.data)
        .args(["device", "unlock", "--manifest"])
        .arg(&job.manifest)
        .args(["--s3-listen", "127.0.0.1:0"])
        .env("TIDEGATE_UNLOCK_CODE", &job.code));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("job export"), "{}", stderr(&o));

    // Kill -9 once a third of the objects are on the device.
    let mut cmd = tidegate(&job.data);
    cmd.args(["job", "export", "--parallel", "2", "--manifest"])
        .arg(&job.manifest)
        .env("TIDEGATE_UNLOCK_CODE", &job.code)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    garage_env(&garage, &mut cmd);
    let mut child = cmd.spawn().unwrap();
    let catalog = tidegate::catalog::Catalog::open(&job.data.join("catalog.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while catalog.job_counts(&job.id).unwrap().objects < total / 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "export ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "export made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = catalog.job_counts(&job.id).unwrap().objects;
    assert!(before < total, "the export finished before the kill");
    assert!(status(&job).contains("EXPORTING"));

    let o = export(&job, &garage, &["--parallel", "4"]);
    assert!(o.status.success(), "export: {}{}", stdout(&o), stderr(&o));
    let r = report(&job);
    assert_eq!(r["state"], "READY", "{r}");
    assert_eq!(r["objects"], total, "{r}");
    assert_eq!(r["exported_objects"], total, "{r}");
    assert_eq!(r["failed_objects"], 0, "{r}");
    assert_eq!(r["run_etag_unverified"], 0, "{r}");
    // Every object committed before the kill was skipped, every other one copied once.
    assert_eq!(r["run_skipped_objects"], before, "{r}");
    assert_eq!(r["run_copied_objects"], total - before, "{r}");
    assert!(status(&job).contains("READY"));
    let csv =
        std::fs::read_to_string(job.data.join("device").join(&job.id).join("report.csv")).unwrap();
    assert_eq!(csv.lines().count() as u64, total + 1);

    // Clients read it back with the AWS CLI: byte-identical to what was put.
    let dev = Unlocked::start(&job);
    let out_dir = dir.path().join("downloaded");
    let o = dev
        .aws()
        .args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "s3://tidegate-test/",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "aws s3 cp: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let want: Vec<(String, String)> = files_under(&src)
        .into_iter()
        .map(|(rel, p)| (rel, sha256_file(&p)))
        .collect();
    let got: Vec<(String, String)> = files_under(&out_dir)
        .into_iter()
        .map(|(rel, p)| (rel, sha256_file(&p)))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the device's objects differ from the source's");

    // Metadata, content type and ETags as in the source (boto3 on both sides).
    let heads = "
for key in ['big-200MiB.bin', 'd3/file-00003.bin', 'd0/file-00294.bin']:
    h = s3.head_object(Bucket='tidegate-test', Key=PREFIX + key)
    print(key, h['Metadata'].get('origin'), h['ContentType'], h['ETag'], h['ContentLength'])
";
    let from_device = on_device(&dev, &format!("PREFIX = ''{heads}"));
    let from_source = boto3(&format!("{CLIENT}\nPREFIX = 'exp/'{heads}"), |c| {
        garage_env(&garage, c)
    });
    assert_eq!(from_device, from_source);
    assert!(
        from_device.contains("big-200MiB.bin big-200MiB.bin application/x-bin")
            && from_device.contains("-25\""),
        "{from_device}"
    );

    // READY is read-only for clients.
    let out = on_device(
        &dev,
        "
for op in (lambda: s3.put_object(Bucket='tidegate-test', Key='late', Body=b'x'),
           lambda: s3.delete_object(Bucket='tidegate-test', Key='big-200MiB.bin')):
    try:
        op()
        print('accepted')
    except botocore.exceptions.ClientError as e:
        print(e.response['Error']['Code'])
print(s3.head_object(Bucket='tidegate-test', Key='big-200MiB.bin')['ContentLength'])
",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["AccessDenied", "AccessDenied", &(200u64 << 20).to_string()]
    );
    dev.lock(&job);

    let o = run(tidegate(&job.data).args(["job", "complete", &job.id]));
    assert!(o.status.success(), "job complete: {}", stderr(&o));
    assert!(status(&job).contains("COMPLETE"));
}

#[test]
fn device_export_verifies_uneven_parts_and_a_flipped_byte_is_an_error_on_get() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    // Uneven parts (5 MiB, 6 MiB, 1000 bytes): part 1's length alone would mislead.
    let uneven = dir.path().join("uneven.bin");
    boto3(
        &format!(
            "{CLIENT}
parts = [os.urandom(5 << 20), os.urandom(6 << 20), os.urandom(1000)]
b, k = os.environ['BUCKET'], 'exp/uneven.bin'
u = s3.create_multipart_upload(Bucket=b, Key=k)
done = [{{'PartNumber': i, 'ETag': s3.upload_part(Bucket=b, Key=k, UploadId=u['UploadId'],
    PartNumber=i, Body=p)['ETag']}} for i, p in enumerate(parts, 1)]
s3.complete_multipart_upload(Bucket=b, Key=k, UploadId=u['UploadId'], MultipartUpload={{'Parts': done}})
open(os.environ['OUT'], 'wb').write(b''.join(parts))
s3.put_object(Bucket=b, Key='exp/victim.bin', Body=os.urandom(100000))
for i in range(5):
    s3.put_object(Bucket=b, Key='exp/ok-%d' % i, Body=os.urandom(1000))
s3.put_object(Bucket=b, Key='exp/empty', Body=b'', Metadata={{'kind': 'empty'}})
"
        ),
        |c| {
            garage_env(&garage, c);
            c.env("OUT", &uneven);
        },
    );
    let job = export_verified(dir.path(), &garage, 8);

    // The management API shows the export's state and source.
    let gw = crate::iscsi_volume::start(&job.data, None);
    let jobs = crate::api::Api::of(&gw, &job.data).ok("GET", "/api/v1/jobs", None);
    assert_eq!(
        (&jobs[0]["kind"], &jobs[0]["state"], &jobs[0]["source"]),
        (
            &"export".into(),
            &"ready".into(),
            &"s3://tidegate-test/exp".into()
        ),
        "{jobs}"
    );
    assert_eq!(jobs[0]["objects"], 8, "{jobs}");
    gw.stop();

    // Flip a byte in the victim's segment: the only one of about 100 kB.
    let seg = files_under(&job.data.join("device").join(&job.id).join("seg"))
        .into_iter()
        .map(|(_, p)| p)
        .find(|p| (100_000..101_000).contains(&std::fs::metadata(p).unwrap().len()))
        .expect("the victim's segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[5000] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();

    let dev = Unlocked::start(&job);
    let got = dir.path().join("uneven.got");
    let out = boto3(
        &format!(
            "{CLIENT}
b = 'tidegate-test'
open(os.environ['GOT'], 'wb').write(s3.get_object(Bucket=b, Key='uneven.bin')['Body'].read())
print(s3.head_object(Bucket=b, Key='empty')['Metadata'])
try:
    data = s3.get_object(Bucket=b, Key='victim.bin')['Body'].read()
    print('served', len(data))
except Exception as e:
    print('refused')
print(len(s3.get_object(Bucket=b, Key='ok-3')['Body'].read()))
"
        ),
        |c| {
            dev.env(c);
            c.env("GOT", &got);
        },
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["{'kind': 'empty'}", "refused", "1000"],
        "{out}"
    );
    assert_eq!(sha256_file(&got), sha256_file(&uneven));
}

/// Issue 20: the export fetches several 8 MiB ranges of one object at once and seals them in
/// parallel while hashing them in order. An object whose ranges each hold their own content
/// (a marker of the range's number, then random bytes) is exported both as a multipart object
/// (8 MiB parts, ETag checked part by part) and as a single-part one (MD5): both must read back
/// byte-identical through the AWS CLI and carry the source's SHA-256 in the report, which no
/// reassembly or hashing out of order could give.
#[test]
fn issue_20_export_reassembles_parallel_ranges_in_order() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ranges.bin");
    let mut data = Vec::new();
    for range in 0..7u8 {
        data.extend(std::iter::repeat_n(range, 64 << 10));
        data.extend(random_bytes((8 << 20) - (64 << 10)));
    }
    data.extend(random_bytes(1234));
    std::fs::write(&src, &data).unwrap();
    boto3(
        &format!(
            "{CLIENT}
from boto3.s3.transfer import TransferConfig
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
s3.upload_file(os.environ['SRC'], os.environ['BUCKET'], 'exp/multi.bin', Config=cfg)
s3.put_object(Bucket=os.environ['BUCKET'], Key='exp/single.bin', Body=open(os.environ['SRC'], 'rb').read())
"
        ),
        |c| {
            garage_env(&garage, c);
            c.env("SRC", &src);
        },
    );
    let job = export_verified(dir.path(), &garage, 2);
    let want = sha256_file(&src);
    let csv =
        std::fs::read_to_string(job.data.join("device").join(&job.id).join("report.csv")).unwrap();
    let rows: Vec<(&str, &str)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0], f[2])
        })
        .collect();
    assert_eq!(
        rows,
        [("multi.bin", want.as_str()), ("single.bin", want.as_str())],
        "{csv}"
    );

    let dev = Unlocked::start(&job);
    for key in ["multi.bin", "single.bin"] {
        let got = dir.path().join(format!("{key}.got"));
        let o = dev
            .aws()
            .args(["s3", "cp", "--only-show-errors"])
            .arg(format!("s3://tidegate-test/{key}"))
            .arg(&got)
            .output()
            .unwrap();
        assert!(o.status.success(), "aws s3 cp {key}: {}", stderr(&o));
        assert_eq!(sha256_file(&got), want, "{key} read back from the device");
    }
}
