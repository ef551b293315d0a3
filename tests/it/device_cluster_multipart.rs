//! Multipart uploads through every device of a device cluster (issue 19: "a client may switch
//! devices mid-load"; ADR 0020): three devices on loopback, each with its Garage node, formed as
//! in `device_cluster.rs`. boto3, with one client per device, begins an upload on device 1,
//! sends its six parts at once, part n through device n % 3 + 1, sends part 2 again through
//! another device, lists the parts on device 2 and the uploads on every device, is refused a
//! completion with a wrong ETag on device 3 and then completes it there; an upload begun on
//! device 2 with a part through device 3 is aborted through device 1 and is gone on every
//! device; a third is left unfinished. Every device then lists the object and returns it
//! byte-identical (a separate boto3 listing and streaming hash per device), and GETs of one part
//! by number agree. `job seal` on device 2 drops the unfinished upload: no device lists an
//! upload afterwards, and the cluster's bucket (listed through device 1's Garage node) holds no
//! multipart record and no segment but the object's: a segment no record names, planted
//! before the seal as a write cut short by a kill leaves one, is removed by it. What one device's Garage node may see a moment after another device's
//! write (listings trail by up to a few hundred ms) is waited for, at most 10 s, and each wait
//! printed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::device::{boto3, seal_running};
use crate::device_cluster::{Member, each, form_cluster};

/// How long the cluster may take to accept writes once every device serves.
const STATUS_LIMIT: Duration = Duration::from_secs(90);
/// The job's target: recorded at `job create`, never imported into here (nothing listens).
const TARGET: (&str, &str) = ("s3://multipart-target/job", "http://127.0.0.1:9");
const BUCKET: &str = "multipart-target";
const KEY: &str = "spread/three-devices.bin";

/// One boto3 client per device, `s[0]` to `s[2]`, each trusting only its device's certificate;
/// `eventually` for what another device's Garage node may see a moment late (ADR 0014: reads
/// in `degraded` mode ask one copy), printing each wait that was needed as `lag WHAT SECONDS`.
const CLIENTS: &str = "
import os, time, hashlib, boto3, botocore
from botocore.config import Config
def client(i):
    return boto3.client('s3', endpoint_url=os.environ[f'ENDPOINT{i}'],
        verify=os.environ.get(f'CA_CERT{i}') or False,
        config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 2}))
s = [client(i) for i in (1, 2, 3)]
B = os.environ['BUCKET']
def code(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response['Error']['Code']
    return 'success'
def eventually(what, check, limit=10):
    start, tries = time.time(), 0
    while True:
        wrong = check()
        tries += 1
        if wrong is None:
            if tries > 1:
                print(f'lag {what.replace(\" \", \"-\")} {time.time() - start:.2f}')
            return
        if time.time() - start > limit:
            raise SystemExit(f'{what}, after {limit} s: {wrong}')
        time.sleep(0.1)
def uploads(c):
    return [(x['Key'], x['UploadId']) for x in c.list_multipart_uploads(Bucket=B).get('Uploads', [])]
def expect(got, want):
    return None if got == want else f'{got!r}, not {want!r}'
";

/// The upload spread over the three devices, the aborted one and the one left open; prints the
/// object's SHA-256.
const SPREAD: &str = "
K = os.environ['KEY']
# Six parts sent at once, part n through device n % 3 + 1; part 2 is then sent again, with
# other bytes, through device 3 (it was first sent through device 3 too: now the replacement
# comes through device 1).
parts = [os.urandom(5 << 20) for _ in range(5)] + [os.urandom(2 << 20)]
u = s[0].create_multipart_upload(Bucket=B, Key=K, ContentType='application/x-spread',
    Metadata={'begun-on': 'dev1'})
uid = u['UploadId']
def send(n, data, via):
    r = s[via].upload_part(Bucket=B, Key=K, UploadId=uid, PartNumber=n, Body=data)
    assert r['ETag'].strip('\"') == hashlib.md5(data).hexdigest(), r
    return {'PartNumber': n, 'ETag': r['ETag']}
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(3) as ex:
    done = list(ex.map(lambda n: send(n, parts[n - 1], n % 3), range(1, 7)))
parts[1] = os.urandom(5 << 20)
done[1] = send(2, parts[1], 0)
want = [(d['PartNumber'], len(p), d['ETag']) for d, p in zip(done, parts)]
eventually('parts listed on dev2', lambda: expect([(p['PartNumber'], p['Size'], p['ETag'])
    for p in s[1].list_parts(Bucket=B, Key=K, UploadId=uid)['Parts']], want))
for i, c in enumerate(s):
    eventually(f'upload listed on dev{i + 1}', lambda: expect(uploads(c), [(K, uid)]))
wrong = [dict(d) for d in done]
wrong[1]['ETag'] = '\"' + '0' * 32 + '\"'
assert code(lambda: s[2].complete_multipart_upload(Bucket=B, Key=K, UploadId=uid,
    MultipartUpload={'Parts': wrong})) == 'InvalidPart'
r = s[2].complete_multipart_upload(Bucket=B, Key=K, UploadId=uid, MultipartUpload={'Parts': done})
md5s = b''.join(hashlib.md5(p).digest() for p in parts)
assert r['ETag'].strip('\"') == hashlib.md5(md5s).hexdigest() + '-6', r
for i, c in enumerate(s):
    eventually(f'no upload listed on dev{i + 1}', lambda: expect(uploads(c), []))
    eventually(f'completed upload gone on dev{i + 1}',
        lambda: expect(code(lambda: c.list_parts(Bucket=B, Key=K, UploadId=uid)), 'NoSuchUpload'))
    eventually(f'object on dev{i + 1}', lambda: expect(code(lambda: c.head_object(Bucket=B, Key=K)), 'success'))
    h = c.head_object(Bucket=B, Key=K)
    assert h['Metadata'] == {'begun-on': 'dev1'} and h['ContentType'] == 'application/x-spread', h
    assert c.get_object(Bucket=B, Key=K, PartNumber=2)['Body'].read() == parts[1]

# Begun on device 2, a part through device 3, aborted through device 1.
a = s[1].create_multipart_upload(Bucket=B, Key='aborted.bin')['UploadId']
s[2].upload_part(Bucket=B, Key='aborted.bin', UploadId=a, PartNumber=1, Body=os.urandom(1 << 20))
s[0].abort_multipart_upload(Bucket=B, Key='aborted.bin', UploadId=a)
for i, c in enumerate(s):
    eventually(f'aborted upload gone on dev{i + 1}',
        lambda: expect(code(lambda: c.list_parts(Bucket=B, Key='aborted.bin', UploadId=a)), 'NoSuchUpload'))
    eventually(f'no upload listed after the abort on dev{i + 1}', lambda: expect(uploads(c), []))
    assert code(lambda: c.head_object(Bucket=B, Key='aborted.bin')) in ('404', 'NoSuchKey')

# Left unfinished: begun on device 3, a part through device 1; the seal drops it.
left = s[2].create_multipart_upload(Bucket=B, Key='left.bin')['UploadId']
s[0].upload_part(Bucket=B, Key='left.bin', UploadId=left, PartNumber=1, Body=b'unfinished')
for i, c in enumerate(s):
    eventually(f'unfinished upload listed on dev{i + 1}', lambda: expect(uploads(c), [('left.bin', left)]))
print('sha256', hashlib.sha256(b''.join(parts)).hexdigest())
print('left', left)
";

/// After the seal: no device lists an upload, and the unfinished one is gone.
const AFTER_SEAL: &str = "
for i, c in enumerate(s):
    eventually(f'no upload listed after the seal on dev{i + 1}', lambda: expect(uploads(c), []))
    assert code(lambda: c.list_parts(Bucket=B, Key='left.bin', UploadId=os.environ['LEFT'])) == 'NoSuchUpload'
print('ok')
";

/// A client of the cluster's bucket through device 1's Garage node, with the cluster's own key.
const GARAGE: &str = "
import os, sys, json, time, collections, boto3
from botocore.config import Config
c = json.load(open(os.environ['CLUSTER_JSON']))
g = boto3.client('s3', endpoint_url='http://' + c['s3_addr'], region_name='garage',
    aws_access_key_id=c['access_key'], aws_secret_access_key=c['secret_key'],
    config=Config(s3={'addressing_style': 'path'}))
STRAY = 'seg/' + '5a' * 16
";

/// Before the seal: a segment no record names, as a write cut short by a kill leaves.
const PLANT_STRAY: &str = "
g.put_object(Bucket=c['bucket'], Key=STRAY, Body=os.urandom(4096))
print('planted')
";

/// The cluster's bucket after the seal: no multipart record is left, one object record, and
/// the object's six segments (one per part); the planted segment, and that of part 2's first
/// copy when device 1's node had not seen it yet as it was sent again there, are removed by the
/// seal. A removal another node made may list a moment late: looked for again for up to 10 s.
/// Prints the count of each prefix and the wait.
const BUCKET_AFTER_SEAL: &str = "
start = time.time()
while True:
    n, keys = collections.Counter(), set()
    for page in g.get_paginator('list_objects_v2').paginate(Bucket=c['bucket']):
        for o in page.get('Contents', []):
            n[o['Key'].split('/')[0]] += 1
            keys.add(o['Key'])
    if n['seg'] == 6 or time.time() - start > 10:
        break
    time.sleep(0.2)
print(' '.join(f'{k}={v}' for k, v in sorted(n.items())), f'after {time.time() - start:.1f} s')
assert n['mp'] == 0 and n['rec'] == 1 and n['seg'] == 6 and STRAY not in keys, n
";

/// The environment of `CLIENTS`: each device's endpoint and certificate, the job's keys (every
/// device of the cluster derives the same ones from the job key).
fn clients_env(members: &[Member], cmd: &mut Command) {
    members[0].device().env(cmd);
    for (i, m) in members.iter().enumerate() {
        let d = m.device();
        cmd.env(format!("ENDPOINT{}", i + 1), &d.endpoint);
        if let Some((cert, _)) = &d.cert {
            cmd.env(format!("CA_CERT{}", i + 1), cert);
        }
        assert_eq!(
            (&d.access, &d.secret),
            (&members[0].device().access, &members[0].device().secret),
            "the devices of one cluster serve one set of keys"
        );
    }
    cmd.env("BUCKET", BUCKET).env("KEY", KEY);
}

/// The environment of `GARAGE`: device 1's cluster file (its node's address, the bucket, the
/// cluster's key).
fn cluster_bucket_env(members: &[Member], cmd: &mut Command) {
    cmd.env(
        "CLUSTER_JSON",
        members[0].job.data.join("cluster/cluster.json"),
    )
    .env_remove("AWS_CA_BUNDLE");
}

#[test]
fn device_cluster_multipart_upload_switches_devices_between_steps() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let members = form_cluster(dir.path(), 3, TARGET, &[], &[]);
    members[0].wait_status("writes accepted", STATUS_LIMIT, |s| {
        s.contains("3 of 3 devices up") && s.contains("writes: accepted")
    });
    let serving_at = started.elapsed();

    let out = boto3(&format!("{CLIENTS}{SPREAD}"), |c| clients_env(&members, c));
    let said = |what: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} in {out}"))
            .to_owned()
    };
    let (sha, left) = (said("sha256"), said("left"));
    let lags: Vec<&str> = out.lines().filter(|l| l.starts_with("lag ")).collect();
    let uploaded_at = started.elapsed();
    let want: BTreeMap<String, String> = [(KEY.to_owned(), sha)].into();
    each(&members, |m| {
        m.check(BUCKET, &want, true, "after completing on dev3")
    });
    let checked_at = started.elapsed();

    let out = boto3(&format!("{GARAGE}{PLANT_STRAY}"), |c| {
        cluster_bucket_env(&members, c)
    });
    assert!(out.lines().any(|l| l == "planted"), "{out}");
    seal_running(&members[1].job, 1);
    let out = boto3(&format!("{CLIENTS}{AFTER_SEAL}"), |c| {
        clients_env(&members, c);
        c.env("LEFT", &left);
    });
    assert!(out.lines().any(|l| l == "ok"), "{out}");
    let garage = boto3(&format!("{GARAGE}{BUCKET_AFTER_SEAL}"), |c| {
        cluster_bucket_env(&members, c)
    });
    eprintln!(
        "device cluster multipart: the cluster's bucket after the seal: {}",
        garage.trim()
    );
    eprintln!("device cluster multipart: waits for another device's writes: {lags:?}");
    eprintln!(
        "device cluster multipart: 3 devices accepting writes at {:.1} s; upload spread, \
         aborted and left open by {:.1} s; read back on 3 devices by {:.1} s; whole test \
         {:.1} s",
        serving_at.as_secs_f64(),
        uploaded_at.as_secs_f64(),
        checked_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
