//! Functions on PUT (issue 19, item 5), with real clients: a job created with `--on-put` and a
//! Python program, loaded by the AWS CLI (a multipart object among them) over the device's
//! HTTPS endpoint. The program counts lines into `KEY.lines` objects and metadata for every
//! `*.txt`; for some keys it sleeps forever, exits 1, opens a TCP connection to the device's own
//! S3 port, or writes outside its scratch directory. The device is killed with -9 right after
//! the load and unlocked again (the queue is rebuilt), sealed (waiting for the functions), and
//! imported into Garage, where boto3 hashes every object: the originals are unchanged and the
//! derived objects are there; the report names each outcome.

use std::collections::BTreeMap;
use std::path::Path;

use crate::device::{
    CLIENT, Unlocked, boto3, create_job_with, import_all, random_bytes, seal_running, sha256_file,
    target_hashes,
};
use crate::support::garage::Garage;
use crate::support::succeeded;

/// The operator's program: what it does depends on the key's file name.
const PROGRAM: &str = r#"#!/usr/bin/python3
import json, os, socket, sys, time
key = os.environ['TIDEGATE_KEY']
name = key.rsplit('/', 1)[-1]
data = sys.stdin.buffer.read()
if name.startswith('sleep'):
    time.sleep(1000000)
if name.startswith('fail'):
    print('failing on purpose', file=sys.stderr)
    sys.exit(1)
if name.startswith('net'):
    socket.create_connection(('127.0.0.1', int(data)), timeout=5)
    print(json.dumps({'suffix': '.net', 'text': 'connected'}))
    sys.exit(0)
if name.startswith('escape'):
    with open(data.decode().strip(), 'w') as f:
        f.write('escaped')
    print(json.dumps({'suffix': '.escaped', 'text': 'wrote'}))
    sys.exit(0)
with open(os.path.join(os.environ['TIDEGATE_SCRATCH'], 'copy'), 'wb') as f:
    f.write(data)
lines = data.count(b'\n')
print(json.dumps({'suffix': '.lines', 'text': '%d\n' % lines}))
print(json.dumps({'metadata': {'lines': str(lines), 'seen-size': os.environ['TIDEGATE_SIZE'],
    'seen-etag': os.environ['TIDEGATE_ETAG'], 'seen-owner': os.environ.get('TIDEGATE_META_OWNER', '')}}))
"#;

fn lines_of(n: usize, width: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i:0width$}\n").into_bytes())
        .collect()
}

#[test]
fn device_functions_on_put_derive_objects_and_report_failures_in_a_sandbox() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("count-lines.py");
    std::fs::write(&program, PROGRAM).unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let job = create_job_with(
        dir.path(),
        &garage,
        "import",
        "fn/",
        &[
            "--on-put",
            program.to_str().unwrap(),
            "--match",
            "*.txt",
            "--timeout",
            "3s",
            "--memory",
            "256MiB",
        ],
    );
    let dev = Unlocked::start(&job);
    let port = dev.host().rsplit(':').next().unwrap().to_owned();

    // What clients copy in: line files (one multipart), a file no function matches, and the
    // keys that make the program misbehave.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    let escape_host = dir.path().join("escaped-to-host");
    let mut want_lines = BTreeMap::new();
    for (key, data) in [
        ("docs/a.txt", lines_of(3, 4)),
        ("docs/b.txt", lines_of(1000, 10)),
        ("docs/empty.txt", Vec::new()),
        ("big.txt", lines_of(2_000_000, 9)),
    ] {
        want_lines.insert(key.to_owned(), data.iter().filter(|b| **b == b'\n').count());
        std::fs::write(src.join(key), data).unwrap();
    }
    let plain: [(&str, Vec<u8>); 6] = [
        ("data.bin", random_bytes(100_000)),
        ("sleep.txt", b"zzz\n".to_vec()),
        ("fail.txt", b"x\n".to_vec()),
        ("net.txt", port.clone().into_bytes()),
        ("escape-usr.txt", b"/usr/tidegate-escaped".to_vec()),
        (
            "escape-host.txt",
            escape_host.to_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    for (key, data) in &plain {
        std::fs::write(src.join(key), data).unwrap();
    }
    succeeded(
        "aws s3 cp",
        dev.aws()
            .args(["s3", "cp", "--recursive", "--only-show-errors"])
            .args(["--metadata", "owner=ops"])
            .arg(&src)
            .arg("s3://tidegate-test/")
            .output()
            .unwrap(),
    );
    let originals = crate::device::files_under(&src);
    assert_eq!(originals.len(), 10);

    // kill -9 straight after the load (runs in flight or queued are lost with the process),
    // then unlock again: the queue is rebuilt from the objects without an outcome.
    drop(dev);
    let dev = Unlocked::start(&job);
    seal_running(&job, originals.len() + want_lines.len());
    let listed = boto3(
        &format!(
            "{CLIENT}
import json
out = {{}}
for o in s3.list_objects_v2(Bucket='tidegate-test')['Contents']:
    k = o['Key']
    h = s3.head_object(Bucket='tidegate-test', Key=k)
    body = s3.get_object(Bucket='tidegate-test', Key=k)['Body'].read() if k.endswith('.lines') else b''
    out[k] = {{'meta': h['Metadata'], 'body': body.decode()}}
print(json.dumps(out))
"
        ),
        |c| dev.env(c),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    for (key, lines) in &want_lines {
        let derived = &listed[format!("{key}.lines")];
        assert_eq!(derived["body"], format!("{lines}\n"), "{key}: {listed}");
        assert_eq!(derived["meta"]["tidegate-derived-from"], *key);
        let meta = &listed[key.as_str()]["meta"];
        assert_eq!(meta["lines"], lines.to_string(), "{key}: {meta}");
        assert_eq!(meta["owner"], "ops");
        assert_eq!(meta["seen-owner"], "ops");
        let size = std::fs::metadata(src.join(key)).unwrap().len();
        assert_eq!(meta["seen-size"], size.to_string());
    }
    for key in [
        "data.bin",
        "sleep.txt",
        "fail.txt",
        "net.txt",
        "escape-usr.txt",
        "escape-host.txt",
    ] {
        assert!(listed[key].is_object(), "{key} lost: {listed}");
        let derived: Vec<&String> = listed
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(key) && *k != key)
            .collect();
        assert!(derived.is_empty(), "{key}: {derived:?}");
    }
    assert!(
        !escape_host.exists(),
        "a function wrote outside its sandbox"
    );
    dev.lock(&job);

    // Import: every original unchanged, every derived object there, the outcomes reported.
    let objects = originals.len() + want_lines.len();
    let report = import_all(&job, &garage, &[], objects);
    let hashes: BTreeMap<String, String> = target_hashes(&garage, "fn/")
        .into_iter()
        .map(|(k, sha, _)| (k, sha))
        .collect();
    assert_eq!(hashes.len(), objects, "{hashes:?}");
    for (key, path) in &originals {
        assert_eq!(hashes.get(key), Some(&sha256_file(path)), "{key}");
    }
    let functions = &report["functions"];
    let outcomes: BTreeMap<String, &serde_json::Value> = functions["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["key"].as_str().unwrap().to_owned(), o))
        .collect();
    assert_eq!(outcomes.len(), 9, "{functions}");
    assert_eq!(functions["not_run"], 0, "{functions}");
    for key in want_lines.keys() {
        assert_eq!(outcomes[key]["status"], "ok", "{key}: {functions}");
        assert_eq!(outcomes[key]["derived"][0], format!("{key}.lines"));
    }
    let status = |key: &str| {
        (
            outcomes[key]["status"].as_str().unwrap(),
            outcomes[key]["reason"].as_str().unwrap_or(""),
        )
    };
    let (s, why) = status("sleep.txt");
    assert_eq!(s, "timeout", "{why}");
    assert!(why.contains("timeout of 3s"), "{why}");
    let (s, why) = status("fail.txt");
    assert_eq!(s, "failed");
    assert!(
        why.contains("exit status 1") && why.contains("failing on purpose"),
        "{why}"
    );
    let (s, why) = status("net.txt");
    assert_eq!(s, "failed");
    assert!(
        why.contains("Connection refused") || why.contains("Network is unreachable"),
        "{why}"
    );
    for key in ["escape-usr.txt", "escape-host.txt"] {
        let (s, why) = status(key);
        assert_eq!(s, "failed", "{key}");
        assert!(
            why.contains("Read-only file system") || why.contains("No such file or directory"),
            "{key}: {why}"
        );
    }
    assert_eq!(functions["ok"], 4);
    assert_eq!(functions["timed_out"], 1);
    assert_eq!(functions["failed"], 4);
    assert!(!Path::new("/usr/tidegate-escaped").exists());
}

/// A program that cannot run is refused before the job exists (exit 2, nothing created).
#[test]
fn device_functions_a_program_that_cannot_run_is_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = dir.path().join("not-executable.py");
    std::fs::write(&script, PROGRAM).unwrap();
    for program in [script.as_path(), dir.path().join("missing").as_path()] {
        let o = crate::support::run(
            crate::support::tidegate(&data)
                .args(["job", "create", "import", "--target", "s3://b/p"])
                .args(["--endpoint", "http://127.0.0.1:9", "--manifest-out"])
                .arg(dir.path().join("m.json"))
                .arg("--on-put")
                .arg(program),
        );
        assert_eq!(o.status.code(), Some(2), "{}", crate::support::stderr(&o));
        assert!(
            crate::support::stderr(&o).contains("--on-put"),
            "{}",
            crate::support::stderr(&o)
        );
        assert!(!dir.path().join("m.json").exists());
    }
}
