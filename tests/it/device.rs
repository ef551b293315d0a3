//! The device mode (issue 8) with real clients: the AWS CLI (PyPI awscli), s3cmd and boto3
//! load a device through its HTTPS S3 endpoint, trusting the certificate made at unlock
//! (`--ca-bundle`, `--ca-certs`, `verify=`), and clients without it are refused; the job is sealed and imported into a real Garage,
//! where boto3 checks every object independently; a kill -9 mid-import resumes without
//! re-sending imported objects; a flipped byte in the device store and an edited manifest are
//! caught and named; a wrong unlock code is refused.
//!
//! Sizes are reduced from the acceptance case (10,000 small files and a 5 GiB file) to 1,000
//! small files and one 256 MiB file; `device_full.rs` runs the full size.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::garage::Garage;
use crate::support::s3::S3Server;
use crate::support::{self, python_with, run, stderr, stdout, tidegate, tool};

/// A job created on a fresh data dir.
pub struct Job {
    pub id: String,
    pub code: String,
    pub manifest: PathBuf,
    pub data: PathBuf,
}

pub fn create_job(dir: &Path, garage: &dyn S3Server, prefix: &str) -> Job {
    create_job_of(dir, garage, "import", prefix)
}

/// A job of `kind` (`import`: into Garage's bucket under `prefix`; `export`: from it).
pub fn create_job_of(dir: &Path, garage: &dyn S3Server, kind: &str, prefix: &str) -> Job {
    create_job_with(dir, garage, kind, prefix, &[])
}

/// `create_job_of` with `extra` arguments to `job create KIND` (e.g. `--on-put`).
pub fn create_job_with(
    dir: &Path,
    garage: &dyn S3Server,
    kind: &str,
    prefix: &str,
    extra: &[&str],
) -> Job {
    let data = dir.join("device-data");
    std::fs::create_dir_all(&data).unwrap();
    let manifest = dir.join("job.manifest.json");
    let o = run(tidegate(&data)
        .args([
            "job",
            "create",
            kind,
            if kind == "import" {
                "--target"
            } else {
                "--source"
            },
            &format!("s3://{}/{prefix}", garage.bucket()),
            "--endpoint",
            garage.endpoint(),
            "--region",
            garage.region(),
            "--manifest-out",
            manifest.to_str().unwrap(),
        ])
        .args(extra));
    assert!(o.status.success(), "job create: {}", stderr(&o));
    let out = stdout(&o);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    Job {
        id: field("job"),
        code: field("unlock code"),
        manifest,
        data,
    }
}

/// An unlocked device serving its S3 endpoint; killed on drop if still running.
pub struct Unlocked {
    child: Child,
    pub endpoint: String,
    pub access: String,
    pub secret: String,
    /// The endpoint's certificate file and its printed SHA-256, when it serves HTTPS.
    pub cert: Option<(PathBuf, String)>,
    /// What `device unlock` printed up to `ready`.
    pub lines: Vec<String>,
}

impl Unlocked {
    /// Unlocks with the defaults: HTTPS on a free loopback port.
    pub fn start(job: &Job) -> Unlocked {
        Self::start_with(job, &[])
    }

    /// `device unlock` with `extra` arguments (e.g. `--nfs-listen`).
    /// `device unlock` of `job` on a free loopback port with `extra` arguments, not spawned.
    pub fn command(job: &Job, extra: &[&str]) -> Command {
        let mut cmd = tidegate(&job.data);
        cmd.args([
            "device",
            "unlock",
            "--manifest",
            job.manifest.to_str().unwrap(),
            "--s3-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("TIDEGATE_UNLOCK_CODE", &job.code);
        cmd
    }

    pub fn start_with(job: &Job, extra: &[&str]) -> Unlocked {
        let mut child = Self::command(job, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !lines.iter().any(|l: &String| l == "ready") {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("device did not become ready: {lines:?}"),
            }
        }
        let field = |p: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(p))
                .map(str::to_owned)
        };
        let endpoint = field("s3 endpoint: ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned();
        let cert = field("certificate: ").map(|path| {
            let sha = field("certificate sha256: ").expect("a fingerprint beside the certificate");
            (PathBuf::from(path), sha)
        });
        assert_eq!(
            endpoint.starts_with("https://"),
            cert.is_some(),
            "{endpoint}: {lines:?}"
        );
        Unlocked {
            child,
            endpoint,
            access: field("access key: ").unwrap(),
            secret: field("secret key: ").unwrap(),
            cert,
            lines,
        }
    }

    /// `host:port` of the endpoint, for s3cmd.
    pub fn host(&self) -> &str {
        let rest = self.endpoint.split_once("://").unwrap().1;
        rest.trim_end_matches('/')
    }

    /// Client environment for this device's endpoint: its keys, and for boto3 scripts (`CLIENT`)
    /// its certificate in CA_CERT, passed as `verify=`. The machine's AWS_CA_BUNDLE is removed
    /// so that nothing but the certificate named on each client's command line is trusted.
    pub fn env(&self, cmd: &mut Command) {
        self.env_untrusted(cmd);
        if let Some((cert, _)) = &self.cert {
            cmd.env("CA_CERT", cert);
        }
    }

    /// As `env`, without the certificate: a client that does not trust the endpoint.
    pub fn env_untrusted(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.access)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("ENDPOINT", &self.endpoint)
            .env_remove("CA_CERT")
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_PROFILE");
    }

    /// The AWS CLI against this endpoint, trusting its certificate with `--ca-bundle`.
    pub fn aws(&self) -> Command {
        let mut cmd = Command::new(tool("aws"));
        cmd.args(["--endpoint-url", &self.endpoint]);
        if let Some((cert, _)) = &self.cert {
            cmd.arg("--ca-bundle").arg(cert);
        }
        self.env_untrusted(&mut cmd);
        cmd
    }

    /// s3cmd against this endpoint (path-style, no config file), trusting its certificate with
    /// `--ca-certs`, or `--no-ssl` on a plain-HTTP device.
    pub fn s3cmd(&self) -> Command {
        let mut cmd = Command::new(tool("s3cmd"));
        match &self.cert {
            Some((cert, _)) => cmd.arg("--ca-certs").arg(cert),
            None => cmd.arg("--no-ssl"),
        };
        cmd.args([
            "--host",
            self.host(),
            "--host-bucket",
            self.host(),
            "--access_key",
            &self.access,
            "--secret_key",
            &self.secret,
            "--region",
            "us-east-1",
            "--config",
            "/dev/null",
        ])
        .env_remove("AWS_CA_BUNDLE");
        cmd
    }

    /// kill -9 of the device process (a power loss), waiting until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn lock(mut self, job: &Job) {
        let o = run(tidegate(&job.data).args(["device", "lock"]));
        assert!(o.status.success(), "device lock: {}", stderr(&o));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "device exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "device did not exit after lock");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a boto3 script (python source) with the given environment; returns its stdout.
pub fn boto3(script: &str, env: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new(python_with("boto3", "python3-boto3"));
    cmd.args(["-c", script]);
    env(&mut cmd);
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "boto3 script failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// A real server's environment for boto3 scripts and `job import`.
pub fn garage_env(garage: &dyn S3Server, cmd: &mut Command) {
    cmd.env("AWS_ACCESS_KEY_ID", garage.access_key())
        .env("AWS_SECRET_ACCESS_KEY", garage.secret_key())
        .env("AWS_DEFAULT_REGION", garage.region())
        .env("ENDPOINT", garage.endpoint())
        .env("BUCKET", garage.bucket())
        .env_remove("AWS_CA_BUNDLE");
}

pub const CLIENT: &str = "
import os, boto3, botocore
from botocore.config import Config
s3 = boto3.client('s3', endpoint_url=os.environ['ENDPOINT'], verify=os.environ.get('CA_CERT'),
    config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 2}))
";

/// Writes `count` small files of distinct random content under `dir`, in a few directories.
pub fn small_files(dir: &Path, count: usize, size: usize) {
    for i in 0..count {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("file-{i:05}.bin")),
            random_bytes(size + i % 97),
        )
        .unwrap();
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut out).unwrap();
    out
}

/// Every file under `dir` as (relative key, path), sorted.
pub fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

/// Runs `job import` with Garage's credentials.
pub fn import(job: &Job, garage: &dyn S3Server, extra: &[&str]) -> Output {
    let mut cmd = tidegate(&job.data);
    cmd.args([
        "job",
        "import",
        "--manifest",
        job.manifest.to_str().unwrap(),
    ])
    .args(extra)
    .env("TIDEGATE_UNLOCK_CODE", &job.code);
    garage_env(garage, &mut cmd);
    run(&mut cmd)
}

/// Starts `job import` in the background (output discarded), to be killed mid-way.
pub fn spawn_import(job: &Job, garage: &dyn S3Server, extra: &[&str]) -> Child {
    let mut cmd = tidegate(&job.data);
    cmd.args(["job", "import"])
        .args(extra)
        .arg("--manifest")
        .arg(&job.manifest)
        .env("TIDEGATE_UNLOCK_CODE", &job.code)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    garage_env(garage, &mut cmd);
    cmd.spawn().unwrap()
}

pub fn report(job: &Job) -> serde_json::Value {
    let path = job.data.join("device").join(&job.id).join("report.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// sha256 and size of every object under `prefix` in Garage, by key relative to the prefix,
/// sorted (boto3, 8 GETs at a time, each body hashed as it streams: objects may be GiBs).
pub fn target_hashes(garage: &dyn S3Server, prefix: &str) -> Vec<(String, String, u64)> {
    let script = format!(
        "{CLIENT}
import hashlib
from concurrent.futures import ThreadPoolExecutor
keys = []
p = s3.get_paginator('list_objects_v2')
for page in p.paginate(Bucket=os.environ['BUCKET'], Prefix='{prefix}'):
    keys += [o['Key'] for o in page.get('Contents', [])]
def digest(key):
    h, n = hashlib.sha256(), 0
    for chunk in s3.get_object(Bucket=os.environ['BUCKET'], Key=key)['Body'].iter_chunks(8 << 20):
        h.update(chunk)
        n += len(chunk)
    return key[len('{prefix}'):], h.hexdigest(), n
with ThreadPoolExecutor(8) as ex:
    for key, sha, n in sorted(ex.map(digest, keys)):
        print(key, sha, n)
"
    );
    let out = boto3(&script, |c| garage_env(garage, c));
    out.lines()
        .map(|l| {
            let mut it = l.rsplitn(3, ' ');
            let size = it.next().unwrap().parse().unwrap();
            let sha = it.next().unwrap().to_owned();
            (it.next().unwrap().to_owned(), sha, size)
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let o = Command::new(tool("sha256sum")).arg(path).output().unwrap();
    stdout(&o).split(' ').next().unwrap().to_owned()
}

#[test]
fn device_loaded_by_aws_s3cmd_and_boto3_imports_every_object_verified() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "imported");
    let dev = Unlocked::start(&job);

    // aws s3 cp --recursive: 1,000 small files and one 256 MiB file (multipart, 8 MiB parts).
    let aws_src = dir.path().join("aws-src");
    small_files(&aws_src, 1000, 900);
    std::fs::write(aws_src.join("big-256MiB.bin"), random_bytes(256 << 20)).unwrap();
    let o = dev
        .aws()
        .args(["s3", "cp", "--recursive", "--only-show-errors"])
        .arg(&aws_src)
        .arg("s3://tidegate-test/aws/")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "aws s3 cp: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // s3cmd sync: 300 small files and a 20 MiB file (s3cmd's 15 MiB multipart chunks).
    let s3cmd_src = dir.path().join("s3cmd-src");
    small_files(&s3cmd_src, 300, 2000);
    std::fs::write(s3cmd_src.join("twenty.bin"), random_bytes(20 << 20)).unwrap();
    let s3cmd = |args: &[&str]| dev.s3cmd().args(args).output().unwrap();
    let o = s3cmd(&[
        "sync",
        &format!("{}/", s3cmd_src.display()),
        "s3://tidegate-test/s3cmd/",
    ]);
    assert!(
        o.status.success(),
        "s3cmd sync: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // boto3: a 3-part multipart upload with metadata, parts and uploads listed before completion.
    let out = boto3(
        &format!(
            "{CLIENT}
import hashlib
parts = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1 << 20)]
u = s3.create_multipart_upload(Bucket='tidegate-test', Key='boto/three-parts.bin',
    ContentType='application/x-test', Metadata={{'origin': 'boto3'}})
done = []
for i, data in enumerate(parts, 1):
    r = s3.upload_part(Bucket='tidegate-test', Key='boto/three-parts.bin', UploadId=u['UploadId'],
        PartNumber=i, Body=data)
    done.append({{'PartNumber': i, 'ETag': r['ETag']}})
listed = s3.list_parts(Bucket='tidegate-test', Key='boto/three-parts.bin', UploadId=u['UploadId'])
assert [p['PartNumber'] for p in listed['Parts']] == [1, 2, 3], listed
ups = s3.list_multipart_uploads(Bucket='tidegate-test')
assert [x['UploadId'] for x in ups.get('Uploads', [])] == [u['UploadId']], ups
r = s3.complete_multipart_upload(Bucket='tidegate-test', Key='boto/three-parts.bin',
    UploadId=u['UploadId'], MultipartUpload={{'Parts': done}})
md5s = b''.join(hashlib.md5(p).digest() for p in parts)
assert r['ETag'].strip('\"') == hashlib.md5(md5s).hexdigest() + '-3', r['ETag']
h = s3.head_object(Bucket='tidegate-test', Key='boto/three-parts.bin')
assert h['Metadata'] == {{'origin': 'boto3'}} and h['ContentType'] == 'application/x-test', h
whole = b''.join(parts)
open(os.environ['OUT'], 'wb').write(whole)
# aborting an upload leaves nothing behind
a = s3.create_multipart_upload(Bucket='tidegate-test', Key='boto/aborted')
s3.upload_part(Bucket='tidegate-test', Key='boto/aborted', UploadId=a['UploadId'], PartNumber=1, Body=b'x')
s3.abort_multipart_upload(Bucket='tidegate-test', Key='boto/aborted', UploadId=a['UploadId'])
try:
    s3.list_parts(Bucket='tidegate-test', Key='boto/aborted', UploadId=a['UploadId'])
    raise SystemExit('aborted upload still listed')
except botocore.exceptions.ClientError as e:
    assert e.response['Error']['Code'] == 'NoSuchUpload', e.response
# a copy, then a delete of the copy, and DeleteObjects of two scratch objects
s3.put_object(Bucket='tidegate-test', Key='scratch/a', Body=b'a')
s3.put_object(Bucket='tidegate-test', Key='scratch/b', Body=b'b')
s3.copy_object(Bucket='tidegate-test', Key='scratch/c', CopySource={{'Bucket': 'tidegate-test', 'Key': 'boto/three-parts.bin'}})
assert s3.get_object(Bucket='tidegate-test', Key='scratch/c')['Body'].read() == whole
r = s3.delete_objects(Bucket='tidegate-test', Delete={{'Objects': [{{'Key': 'scratch/a'}}, {{'Key': 'scratch/b'}}, {{'Key': 'scratch/c'}}]}})
assert sorted(d['Key'] for d in r['Deleted']) == ['scratch/a', 'scratch/b', 'scratch/c'], r
# Content-MD5 and x-amz-checksum-sha256 are honoured: a wrong one is BadDigest, nothing stored
import base64
for extra in ({{'ContentMD5': base64.b64encode(hashlib.md5(b'other').digest()).decode()}},
              {{'ChecksumSHA256': base64.b64encode(hashlib.sha256(b'other').digest()).decode()}}):
    try:
        s3.put_object(Bucket='tidegate-test', Key='scratch/bad', Body=b'data', **extra)
        raise SystemExit('a wrong checksum was accepted')
    except botocore.exceptions.ClientError as e:
        assert e.response['Error']['Code'] in ('BadDigest', 'InvalidDigest', 'XAmzContentChecksumMismatch'), e.response
s3.put_object(Bucket='tidegate-test', Key='scratch/good', Body=b'data',
    ContentMD5=base64.b64encode(hashlib.md5(b'data').digest()).decode())
s3.delete_object(Bucket='tidegate-test', Key='scratch/good')
l = s3.list_objects_v2(Bucket='tidegate-test', Prefix='scratch/')
assert l['KeyCount'] == 0, l
print('ok')
"
        ),
        |c| {
            dev.env(c);
            c.env("OUT", dir.path().join("three-parts.bin"));
        },
    );
    assert_eq!(out.trim(), "ok");

    // Listings: aws s3 ls, s3cmd ls, and V1/V2 pagination and delimiters through boto3.
    let o = dev
        .aws()
        .args(["s3", "ls", "--recursive", "s3://tidegate-test/"])
        .output()
        .unwrap();
    assert!(o.status.success(), "aws s3 ls: {}", stderr(&o));
    let expected = 1001 + 301 + 1;
    assert_eq!(stdout(&o).lines().count(), expected, "aws s3 ls");
    let o = s3cmd(&["ls", "s3://tidegate-test/s3cmd/"]);
    assert!(o.status.success(), "s3cmd ls: {}", stderr(&o));
    let listed = stdout(&o);
    assert!(
        listed.contains("s3://tidegate-test/s3cmd/twenty.bin"),
        "{listed}"
    );
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.trim_start().starts_with("DIR"))
            .count(),
        7,
        "{listed}"
    );
    let out = boto3(
        &format!(
            "{CLIENT}
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='tidegate-test', Prefix='aws/',
        PaginationConfig={{'PageSize': 137}}):
    keys += [o['Key'] for o in page.get('Contents', [])]
assert len(keys) == 1001 and keys == sorted(keys) and len(set(keys)) == 1001, len(keys)
v1 = []
for page in s3.get_paginator('list_objects').paginate(Bucket='tidegate-test', Prefix='aws/',
        PaginationConfig={{'PageSize': 250}}):
    v1 += [o['Key'] for o in page.get('Contents', [])]
assert v1 == keys
d = s3.list_objects_v2(Bucket='tidegate-test', Prefix='aws/', Delimiter='/', MaxKeys=3)
# keys and prefixes interleave in key order: 'aws/big...' sorts before 'aws/d0/'
assert [o['Key'] for o in d['Contents']] == ['aws/big-256MiB.bin'], d
assert [p['Prefix'] for p in d['CommonPrefixes']] == ['aws/d0/', 'aws/d1/'], d
assert d['IsTruncated'] and d['KeyCount'] == 3
d2 = s3.list_objects_v2(Bucket='tidegate-test', Prefix='aws/', Delimiter='/',
    ContinuationToken=d['NextContinuationToken'])
assert [p['Prefix'] for p in d2['CommonPrefixes']] == ['aws/d2/', 'aws/d3/', 'aws/d4/', 'aws/d5/', 'aws/d6/'], d2
assert not d2.get('Contents') and not d2['IsTruncated'], d2
b = s3.list_buckets()
assert [x['Name'] for x in b['Buckets']] == ['tidegate-test'], b
print('ok')
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok");

    // Ranged GETs return exactly the bytes asked for (across segment boundaries too).
    let big = std::fs::read(aws_src.join("big-256MiB.bin")).unwrap();
    let ranges: [(u64, u64); 5] = [
        (0, 0),
        (8 << 20, (8 << 20) + 9),
        ((8 << 20) - 5, (8 << 20) + 5),
        (100_000_000, 117_000_000),
        ((256 << 20) - 1, (256 << 20) - 1),
    ];
    let spec: Vec<String> = ranges.iter().map(|(a, b)| format!("({a},{b})")).collect();
    let out = boto3(
        &format!(
            "{CLIENT}
import hashlib
for a, b in [{}]:
    r = s3.get_object(Bucket='tidegate-test', Key='aws/big-256MiB.bin', Range='bytes=%d-%d' % (a, b))
    assert r['ResponseMetadata']['HTTPStatusCode'] == 206
    print(hashlib.sha256(r['Body'].read()).hexdigest())
r = s3.get_object(Bucket='tidegate-test', Key='aws/big-256MiB.bin', Range='bytes=-10')
print(hashlib.sha256(r['Body'].read()).hexdigest())
",
            spec.join(",")
        ),
        |c| dev.env(c),
    );
    let sha = |d: &[u8]| {
        let p = dir.path().join("range.bin");
        std::fs::write(&p, d).unwrap();
        sha256_file(&p)
    };
    let mut want: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| sha(&big[a as usize..=b as usize]))
        .collect();
    want.push(sha(&big[big.len() - 10..]));
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    drop(big);

    // Wrong credentials and a bad signature are refused.
    let out = boto3(
        &format!(
            "{CLIENT}
for key, secret in (('TDGNOTTHEDEVICE0000000', os.environ['AWS_SECRET_ACCESS_KEY']),
                    (os.environ['AWS_ACCESS_KEY_ID'], 'not-the-secret')):
    c = boto3.client('s3', endpoint_url=os.environ['ENDPOINT'], aws_access_key_id=key,
        aws_secret_access_key=secret, verify=os.environ['CA_CERT'],
        config=Config(s3={{'addressing_style': 'path'}}))
    try:
        c.list_objects_v2(Bucket='tidegate-test')
        print('allowed')
    except botocore.exceptions.ClientError as e:
        print(e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode'])
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["AccessDenied 403", "SignatureDoesNotMatch 403"]
    );

    // Seal through the running device: writes are refused from then on.
    seal_running(&job, expected);
    let out = boto3(
        &format!(
            "{CLIENT}
try:
    s3.put_object(Bucket='tidegate-test', Key='late', Body=b'x')
    print('accepted')
except botocore.exceptions.ClientError as e:
    print(e.response['Error']['Code'])
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "AccessDenied");
    dev.lock(&job);

    let r = import_all(&job, &garage, &[], expected);
    assert_eq!(r["tampered"], false);

    // Independently: every object in Garage is byte-identical to its source file.
    let mut want: Vec<(String, String, u64)> = Vec::new();
    for (prefix, src) in [("aws/", &aws_src), ("s3cmd/", &s3cmd_src)] {
        for (rel, path) in files_under(src) {
            let len = std::fs::metadata(&path).unwrap().len();
            want.push((format!("{prefix}{rel}"), sha256_file(&path), len));
        }
    }
    let three = dir.path().join("three-parts.bin");
    want.push((
        "boto/three-parts.bin".into(),
        sha256_file(&three),
        std::fs::metadata(&three).unwrap().len(),
    ));
    want.sort();
    let got = target_hashes(&garage, "imported/");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "target differs from the sources");
    let out = boto3(
        &format!(
            "{CLIENT}
import json
h = s3.head_object(Bucket=os.environ['BUCKET'], Key='imported/boto/three-parts.bin')
print(h['Metadata'].get('origin'), h['ContentType'])
rep = json.loads(s3.get_object(Bucket=os.environ['BUCKET'], Key='imports/{}/report.json')['Body'].read())
print(rep['imported_objects'], rep['failed_objects'])
csv = s3.get_object(Bucket=os.environ['BUCKET'], Key='imports/{}/report.csv')['Body'].read().decode()
print(len(csv.strip().splitlines()) - 1)
",
            job.id, job.id
        ),
        |c| garage_env(&garage, c),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "boto3 application/x-test".to_owned(),
            format!("{expected} 0"),
            expected.to_string()
        ]
    );
    let o = run(tidegate(&job.data).args(["job", "status", &job.id]));
    assert!(stdout(&o).contains("COMPLETE"), "{}", stdout(&o));
}

#[test]
fn device_wrong_unlock_code_is_refused_and_reveals_nothing() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "p");
    // Same form, one symbol changed.
    let mut wrong: Vec<char> = job.code.chars().collect();
    wrong[0] = if wrong[0] == '7' { '8' } else { '7' };
    let wrong: String = wrong.into_iter().collect();
    for code in [wrong.as_str(), "not-a-code"] {
        let o = run(tidegate(&job.data)
            .args(["device", "unlock", "--manifest"])
            .arg(&job.manifest)
            .args(["--s3-listen", "127.0.0.1:0"])
            .env("TIDEGATE_UNLOCK_CODE", code));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let lines = support::error_lines(&o);
        assert_eq!(lines.len(), 1, "{}", stderr(&o));
        assert!(lines[0].contains("unlock code"), "{}", lines[0]);
        assert!(!stdout(&o).contains("access key"), "{}", stdout(&o));
        let o = import(&job, &garage, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    // A manifest file edited (another salt) fails the same way.
    let text = std::fs::read_to_string(&job.manifest).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let salt = v["salt"].as_str().unwrap();
    let edited = text.replace(salt, &"0".repeat(salt.len()));
    let bad = dir.path().join("edited.json");
    std::fs::write(&bad, edited).unwrap();
    let o = run(tidegate(&job.data)
        .args(["job", "seal", "--manifest"])
        .arg(&bad)
        .env("TIDEGATE_UNLOCK_CODE", &job.code));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not unlock"), "{}", stderr(&o));
    // The right code still works, and the device dir holds no plaintext key material.
    let dev = Unlocked::start(&job);
    dev.lock(&job);
}

/// Loads `n` small objects and one two-segment object through boto3, seals, locks.
fn loaded_job(dir: &Path, garage: &dyn S3Server, prefix: &str, n: usize, size: usize) -> Job {
    let job = create_job(dir, garage, prefix);
    // Plain HTTP on loopback stays allowed; these tests load over it.
    let dev = Unlocked::start_with(&job, &["--plain-http"]);
    assert!(dev.endpoint.starts_with("http://"), "{}", dev.endpoint);
    let out = boto3(
        &format!(
            "{CLIENT}
from concurrent.futures import ThreadPoolExecutor
def put(i):
    s3.put_object(Bucket='tidegate-test', Key='small/%05d' % i, Body=os.urandom({size} + i % 13),
        Metadata={{'n': str(i)}})
with ThreadPoolExecutor(8) as ex:
    list(ex.map(put, range({n})))
s3.put_object(Bucket='tidegate-test', Key='a-longer-name-for-the-one-big-object.bin',
    Body=os.urandom((8 << 20) + 4096))
print('ok')
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok");
    lock_and_seal(dev, &job);
    job
}

/// The device smoke of the compatibility suite (tests/it/compat.rs): 40 small objects with
/// metadata and one multipart-sized object loaded through boto3, imported into `server`'s
/// bucket with every object verified by its ETag, then hashed there by boto3.
pub(crate) fn import_smoke(server: &dyn S3Server) {
    let dir = tempfile::tempdir().unwrap();
    let job = loaded_job(dir.path(), server, "imported/", 40, 3000);
    let r = import_all(&job, server, &[], 41);
    assert_eq!(r["imported_objects"], 41, "{r}");
    let hashes = target_hashes(server, "imported/");
    assert_eq!(hashes.len(), 41, "{hashes:?}");
}

/// Locks the device, then seals the job offline with its manifest and code.
/// `job seal` through the running device, which must report `objects` objects sealed.
pub fn seal_running(job: &Job, objects: usize) {
    let o = run(tidegate(&job.data).args(["job", "seal"]));
    assert!(o.status.success(), "job seal: {}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("sealed: {objects} objects")),
        "{}",
        stdout(&o)
    );
}

/// `job import` into Garage, which must complete with all `objects` imported and none failed;
/// returns the report.
pub fn import_all(
    job: &Job,
    garage: &dyn S3Server,
    extra: &[&str],
    objects: usize,
) -> serde_json::Value {
    let o = import(job, garage, extra);
    assert!(
        o.status.success(),
        "job import: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let r = report(job);
    assert_eq!(r["state"], "COMPLETE", "{r}");
    assert_eq!(r["objects"], objects as u64);
    assert_eq!(r["imported_objects"], objects as u64);
    assert_eq!(r["failed_objects"], 0);
    r
}

pub fn lock_and_seal(dev: Unlocked, job: &Job) {
    dev.lock(job);
    let o = run(tidegate(&job.data)
        .args(["job", "seal", "--manifest"])
        .arg(&job.manifest)
        .env("TIDEGATE_UNLOCK_CODE", &job.code));
    assert!(o.status.success(), "offline seal: {}", stderr(&o));
}

#[test]
fn device_import_resumes_after_kill9_without_resending_imported_objects() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let job = loaded_job(dir.path(), &garage, "resumed", n, 20_000);
    let total = (n + 1) as u64;

    let mut child = spawn_import(&job, &garage, &["--parallel", "2"]);
    let catalog = tidegate::catalog::Catalog::open(&job.data.join("catalog.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = catalog.job_counts(&job.id).unwrap();
        if c.imported >= total / 4 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "import ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "import made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = catalog.job_counts(&job.id).unwrap().imported;
    assert!(before < total, "the import finished before the kill");
    let o = run(tidegate(&job.data).args(["job", "status", &job.id]));
    assert!(stdout(&o).contains("IMPORTING"), "{}", stdout(&o));

    let o = import(&job, &garage, &[]);
    assert!(
        o.status.success(),
        "resumed import: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let r = report(&job);
    assert_eq!(r["state"], "COMPLETE", "{r}");
    assert_eq!(r["imported_objects"], total);
    // The resumed run sent exactly the objects not yet imported (the kill may have caught up
    // to two uploads between their PUT and their record: parallel 2), one PUT each.
    let resent = r["run_uploaded_objects"].as_u64().unwrap();
    assert!(
        (total - before..=total - before + 2).contains(&resent),
        "resent {resent}, {before} of {total} were imported before the kill: {r}"
    );
    let puts = r["run_put_requests"].as_u64().unwrap();
    assert_eq!(puts, resent, "{r}");
    let got = target_hashes(&garage, "resumed/");
    assert_eq!(got.len() as u64, total);
}

#[test]
fn device_flipped_byte_and_edited_manifest_are_caught_and_named() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = loaded_job(dir.path(), &garage, "tampered", 30, 20_000);
    let device_dir = job.data.join("device").join(&job.id);
    // Flip a byte in the big object's second segment: its 4096 bytes make the only segment
    // file smaller than the 20 kB objects'.
    let seg = files_under(&device_dir.join("seg"))
        .into_iter()
        .map(|(_, p)| p)
        .find(|p| {
            let len = std::fs::metadata(p).unwrap().len();
            (4096..10_000).contains(&len)
        })
        .expect("the big object's tail segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    // Edit one manifest entry that is not the big object's (its entry is the longest).
    let manifest = device_dir.join("manifest.jsonl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let longest = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap();
    let victim = lines[1..lines.len() - 1]
        .iter()
        .position(|l| l.len() < longest)
        .unwrap()
        + 1;
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let line = &edited[victim];
    let at = line.find("\"entry\":\"").unwrap() + 20;
    let c = &line[at..at + 1];
    let flipped = if c == "0" { "1" } else { "0" };
    edited[victim] = format!("{}{flipped}{}", &line[..at], &line[at + 1..]);
    std::fs::write(&manifest, edited.join("\n") + "\n").unwrap();

    let o = import(&job, &garage, &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let r = report(&job);
    assert_eq!(r["state"], "FAILED", "{r}");
    assert_eq!(r["tampered"], true);
    assert_eq!(r["failed_objects"], 2, "{r}");
    let failures = r["failures"].as_array().unwrap();
    let big = failures
        .iter()
        .find(|f| f["key"] == "a-longer-name-for-the-one-big-object.bin")
        .expect("the big object is named");
    assert!(
        big["reason"]
            .as_str()
            .unwrap()
            .contains("device data does not verify"),
        "{big}"
    );
    let other = failures
        .iter()
        .find(|f| f["key"] != "a-longer-name-for-the-one-big-object.bin")
        .unwrap();
    assert!(
        other["reason"].as_str().unwrap().contains("manifest"),
        "{other}"
    );
    let named = other["key"].as_str().unwrap().to_owned();
    assert!(stdout(&o).contains(&named), "{}", stdout(&o));
    // Neither is in the target; everything else is.
    let got = target_hashes(&garage, "tampered/");
    assert_eq!(got.len(), 29);
    assert!(
        got.iter()
            .all(|(k, _, _)| k != &named && !k.starts_with("a-longer"))
    );
}

/// HTTPS is the default: the certificate made at unlock names the listen address, localhost and
/// `--tls-name`, its printed fingerprint is openssl's, and it holds no key; the AWS CLI, s3cmd
/// and boto3 without it are refused (certificate verify failed), as are plain-HTTP clients and a
/// client that stalls its handshake, without disturbing a trusting client; a new unlock makes a
/// new key, so the old certificate is no longer trusted. `--plain-http` is refused off loopback.
#[test]
fn device_https_refuses_untrusting_clients_and_plain_http_off_loopback() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "tls");

    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let o = run(tidegate(&job.data)
            .args(["device", "unlock", "--plain-http", "--manifest"])
            .arg(&job.manifest)
            .args(["--s3-listen", listen])
            .env("TIDEGATE_UNLOCK_CODE", &job.code));
        assert_eq!(o.status.code(), Some(2), "{listen}: {}", stderr(&o));
        let lines = support::error_lines(&o);
        assert!(
            lines.len() == 1 && lines[0].contains("--plain-http is allowed only on a loopback"),
            "{listen}: {}",
            stderr(&o)
        );
    }
    let o = run(tidegate(&job.data)
        .args(["device", "unlock", "--tls-name", "not a name", "--manifest"])
        .arg(&job.manifest)
        .args(["--s3-listen", "127.0.0.1:0"])
        .env("TIDEGATE_UNLOCK_CODE", &job.code));
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("\"not a name\""), "{}", stderr(&o));

    let dev = Unlocked::start_with(&job, &["--tls-name", "device.example.test"]);
    let (cert, printed) = dev.cert.clone().unwrap();
    assert_eq!(
        cert,
        job.data
            .join("device")
            .join(&job.id)
            .join("endpoint-cert.pem")
    );
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(pem.matches("-----BEGIN").count(), 1, "{pem}");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let openssl = |args: &[&str]| {
        let o = run(Command::new(tool("openssl"))
            .arg("x509")
            .arg("-in")
            .arg(&cert)
            .arg("-noout")
            .args(args));
        assert!(o.status.success(), "openssl x509: {}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(
        openssl(&["-fingerprint", "-sha256"]).trim(),
        format!("sha256 Fingerprint={printed}")
    );
    let sans = openssl(&["-ext", "subjectAltName"]);
    for want in [
        "IP Address:127.0.0.1",
        "DNS:localhost",
        "DNS:device.example.test",
    ] {
        assert!(sans.contains(want), "{want} missing: {sans}");
    }

    // Clients that do not trust the certificate are refused.
    let o = dev.aws().args(["s3", "ls", "s3://tidegate-test/"]).output();
    assert!(o.unwrap().status.success(), "aws with --ca-bundle");
    let mut untrusting = Command::new(tool("aws"));
    untrusting.args([
        "--endpoint-url",
        &dev.endpoint,
        "s3",
        "ls",
        "s3://tidegate-test/",
    ]);
    dev.env_untrusted(&mut untrusting);
    let o = untrusting.output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("certificate verify failed"),
        "aws without --ca-bundle: {}",
        stderr(&o)
    );
    let mut s3cmd = Command::new(tool("s3cmd"));
    s3cmd
        .args(["--host", dev.host(), "--host-bucket", dev.host()])
        .args(["--access_key", &dev.access, "--secret_key", &dev.secret])
        .args(["--region", "us-east-1", "--config", "/dev/null"])
        .args(["ls", "s3://tidegate-test/"])
        .env_remove("AWS_CA_BUNDLE");
    let o = s3cmd.output().unwrap();
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("CERTIFICATE_VERIFY_FAILED"),
        "s3cmd without --ca-certs: {said}"
    );
    let plain = dev.endpoint.replace("https://", "http://");
    let script = format!(
        "{CLIENT}
import socket, ssl
# a client that stalls in its handshake and one that speaks plain HTTP to the TLS port
stall = socket.create_connection(('127.0.0.1', {port}))
stall.send(b'\\x16\\x03\\x01')
garbage = socket.create_connection(('127.0.0.1', {port}))
garbage.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
garbage.settimeout(30)
try:
    print('garbage answered with', len(garbage.recv(4096)), 'bytes')
except OSError as e:
    print('garbage dropped:', e)
for name, c in (('no verify', boto3.client('s3', endpoint_url=os.environ['ENDPOINT'],
                    config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 1}}))),
                ('plain http', boto3.client('s3', endpoint_url='{plain}',
                    config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 1}})))):
    try:
        c.list_objects_v2(Bucket='tidegate-test')
        print(name, 'allowed')
    except botocore.exceptions.SSLError as e:
        print(name, 'certificate verify failed' in str(e) and 'verify failed' or e)
    except botocore.exceptions.ConnectionClosedError as e:
        print(name, 'closed')
    except Exception as e:
        print(name, type(e).__name__)
# meanwhile a trusting client is served, the stalled handshake still open
s3.put_object(Bucket='tidegate-test', Key='over-tls', Body=b'sealed in transit')
assert s3.get_object(Bucket='tidegate-test', Key='over-tls')['Body'].read() == b'sealed in transit'
stall.close()
print('ok')
",
        port = dev.host().rsplit_once(':').unwrap().1
    );
    let out = boto3(&script, |c| dev.env(c));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], "no verify verify failed", "{out}");
    assert_ne!(lines[2], "plain http allowed", "{out}");
    assert_eq!(lines.last(), Some(&"ok"), "{out}");

    // A new unlock makes a new key: the old certificate no longer opens the endpoint.
    let old = std::fs::read(&cert).unwrap();
    dev.lock(&job);
    let old_cert = dir.path().join("old-cert.pem");
    std::fs::write(&old_cert, old).unwrap();
    let dev = Unlocked::start(&job);
    assert_ne!(dev.cert.as_ref().unwrap().1, printed);
    let mut stale = Command::new(tool("aws"));
    stale
        .args(["--endpoint-url", &dev.endpoint, "--ca-bundle"])
        .arg(&old_cert)
        .args(["s3", "ls", "s3://tidegate-test/"]);
    dev.env_untrusted(&mut stale);
    let o = stale.output().unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("certificate verify failed"),
        "{}",
        stderr(&o)
    );
    let o = dev
        .aws()
        .args(["s3", "cp", "s3://tidegate-test/over-tls", "-"])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "sealed in transit", "{}", stderr(&o));
    dev.lock(&job);
}

/// GET and HEAD honour If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since
/// (412 and 304 as S3 answers them), and `partNumber` returns one part of a multipart object
/// with its Content-Range and parts count, as SDK transfer managers download (issue 18).
#[test]
fn device_get_and_head_honour_conditions_and_part_numbers() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let job = create_job(dir.path(), &garage, "conditional");
    let dev = Unlocked::start(&job);
    let out = boto3(
        &format!(
            "{CLIENT}
import datetime, hashlib
B = 'tidegate-test'
def code(call, **kw):
    try:
        r = call(Bucket=B, **kw)
        return r['ResponseMetadata']['HTTPStatusCode']
    except botocore.exceptions.ClientError as e:
        return e.response['ResponseMetadata']['HTTPStatusCode']

s3.put_object(Bucket=B, Key='plain', Body=b'hello conditional world')
h = s3.head_object(Bucket=B, Key='plain')
etag, modified = h['ETag'], h['LastModified']
before = modified - datetime.timedelta(hours=1)
after = modified + datetime.timedelta(hours=1)
for call in (s3.get_object, s3.head_object):
    k = dict(Key='plain')
    assert code(call, IfNoneMatch=etag, **k) == 304, call
    assert code(call, IfNoneMatch='\"0123\"', **k) == 200, call
    assert code(call, IfNoneMatch='*', **k) == 304, call
    assert code(call, IfMatch=etag, **k) == 200, call
    assert code(call, IfMatch='\"0123\"', **k) == 412, call
    assert code(call, IfModifiedSince=after, **k) == 304, call
    assert code(call, IfModifiedSince=before, **k) == 200, call
    assert code(call, IfUnmodifiedSince=before, **k) == 412, call
    assert code(call, IfUnmodifiedSince=after, **k) == 200, call
    # RFC 9110 13.2.2: If-Match decides over If-Unmodified-Since, If-None-Match over
    # If-Modified-Since.
    assert code(call, IfMatch=etag, IfUnmodifiedSince=before, **k) == 200, call
    assert code(call, IfNoneMatch='\"0123\"', IfModifiedSince=after, **k) == 200, call
body = s3.get_object(Bucket=B, Key='plain', IfMatch=etag)['Body'].read()
assert body == b'hello conditional world', body

# A multipart object of uneven parts, fetched part by part.
parts = [os.urandom(5 << 20), os.urandom((5 << 20) + 4097), os.urandom(1000)]
u = s3.create_multipart_upload(Bucket=B, Key='parts.bin')
done = []
for i, data in enumerate(parts, 1):
    r = s3.upload_part(Bucket=B, Key='parts.bin', UploadId=u['UploadId'], PartNumber=i, Body=data)
    done.append({{'PartNumber': i, 'ETag': r['ETag']}})
s3.complete_multipart_upload(Bucket=B, Key='parts.bin', UploadId=u['UploadId'],
    MultipartUpload={{'Parts': done}})
total = sum(len(p) for p in parts)
start = 0
for i, data in enumerate(parts, 1):
    g = s3.get_object(Bucket=B, Key='parts.bin', PartNumber=i)
    got = g['Body'].read()
    assert got == data, (i, len(got), len(data))
    assert g['ResponseMetadata']['HTTPStatusCode'] == 206, g['ResponseMetadata']
    assert g['PartsCount'] == 3, g
    assert g['ContentLength'] == len(data), g
    assert g['ContentRange'] == 'bytes %d-%d/%d' % (start, start + len(data) - 1, total), g
    h = s3.head_object(Bucket=B, Key='parts.bin', PartNumber=i)
    assert h['PartsCount'] == 3 and h['ContentLength'] == len(data), h
    start += len(data)
assert code(s3.get_object, Key='parts.bin', PartNumber=4) == 416
assert code(s3.head_object, Key='parts.bin', PartNumber=4) == 416
assert code(s3.get_object, Key='parts.bin', PartNumber=1, Range='bytes=0-1') == 400
# An object put whole is one part: part 1 is all of it, and it has no parts count.
g = s3.get_object(Bucket=B, Key='plain', PartNumber=1)
assert g['Body'].read() == b'hello conditional world' and 'PartsCount' not in g, g
assert code(s3.get_object, Key='plain', PartNumber=2) == 416
print('ok')
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok", "{out}");

    // Locked and unlocked again: the part boundaries come back from the sealed records.
    drop(dev);
    let dev = Unlocked::start(&job);
    let out = boto3(
        &format!(
            "{CLIENT}
g = s3.get_object(Bucket='tidegate-test', Key='parts.bin', PartNumber=3)
assert g['PartsCount'] == 3 and g['ContentLength'] == 1000, g
print('ok')
"
        ),
        |c| dev.env(c),
    );
    assert_eq!(out.trim(), "ok", "{out}");
}
