//! The tidegate binary as an operator uses it: tree hash against botocore, the embedded default,
//! activation against a real S3 server, config errors, wrong keys and corrupt chunks.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::garage::Garage;
use crate::support::gateway::Gateway;
use crate::support::s3::S3Server;
use crate::support::{error_lines, noise, python_with_botocore, run, stderr, stdout, tidegate};

const MIB: usize = 1 << 20;

#[test]
fn treehash_matches_botocore() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 13 * MIB / 2, 33 * MIB];
    let files: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, noise(size, i as u64 + 1)).unwrap();
            path
        })
        .collect();
    let out = run(tidegate(dir.path()).arg("treehash").args(&files));
    assert!(out.status.success(), "{}", stderr(&out));
    let ours = stdout(&out);

    let script = "import sys, botocore.utils\n\
                  for p in sys.argv[1:]:\n    \
                  print(botocore.utils.calculate_tree_hash(open(p, 'rb')) + '  ' + p)\n";
    let py = Command::new(python_with_botocore())
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    let theirs = stdout(&py);
    assert_eq!(ours.lines().count(), sizes.len());
    assert_eq!(ours, theirs);

    // stdin ("-") gives the same hash as the file.
    let stdin_out = run(Command::new(crate::support::bin())
        .args(["treehash", "-"])
        .stdin(std::fs::File::open(&files[5]).unwrap()));
    let first_field = |s: &str| s.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(
        first_field(&stdout(&stdin_out)),
        first_field(theirs.lines().nth(5).unwrap())
    );
}

#[test]
fn treehash_reports_unreadable_files_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, b"x").unwrap();
    let out = run(tidegate(dir.path())
        .arg("treehash")
        .arg(dir.path().join("missing"))
        .arg(&good));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("good"), "{}", stdout(&out));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

#[test]
fn serve_runs_on_the_embedded_default_from_the_working_directory() {
    let work = tempfile::tempdir().unwrap();
    // No --data-dir, no TIDEGATE_DATA_DIR, no XDG_DATA_HOME: ./tidegate-data.
    let log = std::fs::File::create(work.path().join("serve.log")).unwrap();
    let mut child = Command::new(crate::support::bin())
        .arg("serve")
        .env_remove("TIDEGATE_DATA_DIR")
        .env_remove("TIDEGATE_CONFIG")
        .env_remove("XDG_DATA_HOME")
        .current_dir(work.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let data = work.path().join("tidegate-data");
    let ready = data.join("run/ready.toml");
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "not ready: {}",
            std::fs::read_to_string(work.path().join("serve.log")).unwrap_or_default()
        );
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let key_mode = std::fs::metadata(data.join("key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(data.join("bucket/gateway/keycheck").exists());

    let status = run(tidegate(&data).arg("status"));
    let text = stdout(&status);
    assert!(status.status.success(), "{text}{}", stderr(&status));
    assert!(text.contains("embedded default"), "{text}");
    assert!(
        text.contains(&format!("running (pid {}", child.id())),
        "{text}"
    );
    assert!(text.contains("reachable, key check ok"), "{text}");
    // The embedded default takes port 111 when it is free (this test runs alone in the
    // port-111 group, see .config/nextest.toml), so a plain NFSv3 client finds the share.
    assert!(
        text.contains("rpcbind:        serving on 127.0.0.1:111 (TCP and UDP)"),
        "{text}"
    );

    // A second daemon on the same data dir is refused.
    let second = run(tidegate(&data).arg("serve"));
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another tidegate daemon"),
        "{}",
        stderr(&second)
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!ready.exists(), "readiness file left behind");
}

#[test]
fn bad_configs_give_one_line_naming_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[cache]\nsize = \"12XB\"\n[bucket]\nurl = \"s3://bucket\"\n",
            "`cache.size`",
        ),
        (
            "[bucket]\nurl = \"s3://bucket\"\nendpont = \"http://x\"\n",
            "`bucket.endpont`",
        ),
        ("[gateway]\nname = \"gw\"\n", "`bucket.url`"),
        (
            "[bucket]\nurl = \"s3://bucket\"\nupload_limit = -5\n",
            "`bucket.upload_limit`",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = run(tidegate(dir.path())
            .arg("--config")
            .arg(&path)
            .arg("status"));
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{}", stderr(&out));
        assert!(lines[0].contains(key), "{text}: {}", lines[0]);
        assert!(lines[0].contains("bad.toml"), "{}", lines[0]);
    }
    let missing = run(tidegate(dir.path()).args(["--config", "/nonexistent.toml", "serve"]));
    assert_eq!(missing.status.code(), Some(2));
    let usage = run(tidegate(dir.path()).arg("no-such-command"));
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn corrupt_chunk_fails_the_read_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let input = dir.path().join("input");
    let content = noise(MIB, 42);
    std::fs::write(&input, &content).unwrap();
    let put = run(tidegate(&data_dir).arg("chunk").arg("put").arg(&input));
    assert!(put.status.success(), "{}", stderr(&put));
    let id = stdout(&put).trim().to_owned();
    assert_eq!(id.len(), 64, "{id}");

    let output = dir.path().join("output");
    let get = run(tidegate(&data_dir)
        .args(["chunk", "get", &id, "-o"])
        .arg(&output));
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(std::fs::read(&output).unwrap(), content);

    // Flip one byte of the stored object in the local-directory bucket.
    let object = data_dir.join("bucket/chunks").join(&id);
    let mut raw = std::fs::read(&object).unwrap();
    raw[1000] ^= 1;
    std::fs::write(&object, raw).unwrap();

    let bad = run(tidegate(&data_dir).args(["chunk", "get", &id]));
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty(), "corrupt data was returned");
    let lines = error_lines(&bad);
    assert_eq!(lines.len(), 1, "{}", stderr(&bad));
    assert!(
        lines[0].contains(&format!("integrity error in chunks/{id}")),
        "{}",
        lines[0]
    );

    let scrub = run(tidegate(&data_dir).arg("scrub"));
    assert_eq!(scrub.status.code(), Some(1));
    assert!(stdout(&scrub).contains("1 corrupt"), "{}", stdout(&scrub));

    let status = run(tidegate(&data_dir).arg("status"));
    assert_eq!(status.status.code(), Some(1));
    assert!(
        stdout(&status).contains(&format!("last chunks/{id}")),
        "{}",
        stdout(&status)
    );
}

#[test]
fn wrong_key_fails_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let gw = Gateway::start(&data_dir, None).unwrap();
    assert_eq!(gw.stop(), Some(0));

    // Replace the key with another valid key.
    let key = data_dir.join("key");
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let err = Gateway::start(&data_dir, None)
        .err()
        .expect("must not start");
    assert!(err.contains("does not match the bucket"), "{err}");
    assert!(err.contains("paired with another key"), "{err}");
    assert!(!data_dir.join("run/ready.toml").exists());

    // A key file others can read is refused too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Gateway::start(&data_dir, None)
        .err()
        .expect("must not start");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn activate_pairs_a_real_s3_bucket_and_refuses_a_second_key() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let creds = garage.credentials_file(dir.path());
    let activate = |data_dir: &std::path::Path, extra: &[&str]| {
        run(tidegate(data_dir)
            .args([
                "activate",
                "--name",
                "gw-test",
                "--bucket",
                "s3://tidegate-test/gw1",
            ])
            .args(["--endpoint", &garage.endpoint, "--region", "garage"])
            .arg("--credentials-file")
            .arg(&creds)
            .args(extra))
    };

    let first = dir.path().join("first");
    let out = activate(&first, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("paired with this key"),
        "{}",
        stdout(&out)
    );
    let config = first.join("tidegate.toml");
    assert!(config.exists());
    let mode = std::fs::metadata(first.join("key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // The daemon starts on the written config and status sees a healthy gateway.
    let gw = Gateway::start(&first, None).unwrap();
    let status = run(tidegate(&first).arg("status"));
    assert!(status.status.success(), "{}", stdout(&status));
    assert!(
        stdout(&status).contains("s3://tidegate-test/gw1"),
        "{}",
        stdout(&status)
    );
    assert!(
        stdout(&status).contains("reachable, key check ok"),
        "{}",
        stdout(&status)
    );
    assert_eq!(gw.stop(), Some(0));

    // Activating again with a fresh key against the same bucket is refused, leaving nothing.
    let second = dir.path().join("second");
    let out = activate(&second, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(lines[0].contains("paired with another key"), "{}", lines[0]);
    assert!(!second.join("key").exists(), "unused new key left behind");
    assert!(
        !second.join("tidegate.toml").exists(),
        "config written after a failure"
    );

    // With the original key (a replacement appliance) the pairing is accepted.
    let key = first.join("key");
    let out = activate(&second, &["--key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("already paired"), "{}", stdout(&out));

    // No credentials in the config: the usual AWS environment variables are used.
    let third = dir.path().join("third");
    let out = run(tidegate(&third)
        .args(["activate", "--bucket", "s3://tidegate-test/gw-env"])
        .args(["--endpoint", &garage.endpoint, "--region", "garage"])
        .env("AWS_ACCESS_KEY_ID", &garage.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret_key));
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(third.join("tidegate.toml")).unwrap();
    assert!(
        !config.contains(&garage.secret_key),
        "secret copied into the config"
    );
    let status = run(tidegate(&third)
        .arg("status")
        .env("AWS_ACCESS_KEY_ID", &garage.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64)));
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert!(
        stdout(&status).contains("access denied"),
        "{}",
        stdout(&status)
    );
}

#[test]
fn bench_codec_prints_steps_and_the_ratio_line_last() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(tidegate(dir.path()).args(["bench", "codec", "--quick"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for step in [
        "sha256",
        "treehash",
        "keyed BLAKE3",
        "aws-lc-rs",
        "aes-gcm 0.11",
        "seal, random",
        "open, random",
    ] {
        assert!(text.contains(step), "missing {step}: {text}");
    }
    let last = text.lines().last().unwrap();
    let fields: Vec<&str> = last.strip_prefix("ratios: ").unwrap().split(' ').collect();
    let names: Vec<&str> = fields
        .iter()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(names, ["treehash", "seal_random", "open_random"], "{last}");
    for f in fields {
        let value: f64 = f.split('=').nth(1).unwrap().parse().unwrap();
        assert!(value > 0.0, "{last}");
    }
}

/// Masks what differs between two data dirs that went through the same commands: their paths,
/// snapshot ids (random), UTC times, and the bytes a snapshot uploaded (its manifest carries
/// the id and times, so its compressed size varies by a few bytes).
fn normalise(text: &str, data: &std::path::Path, snapshot: Option<&str>) -> String {
    let mut text: String = text
        .replace(&data.display().to_string(), "DATA")
        .lines()
        .map(|l| match l.rsplit_once(", ") {
            Some((head, tail)) if tail.ends_with("uploaded by the snapshot") => {
                format!("{head}, SIZE uploaded by the snapshot\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    if let Some(id) = snapshot {
        text = text.replace(id, "SNAP");
    }
    // rfc3339 seconds, `2026-12-06T11:44:33Z`: ten characters, `T`, eight, `Z`.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(t) = rest.find('T') {
        let start = t.saturating_sub(10);
        let candidate = rest.get(start..t + 10).unwrap_or("");
        let is_time = candidate.len() == 20
            && candidate.ends_with('Z')
            && candidate.as_bytes()[4] == b'-'
            && candidate.as_bytes()[13] == b':';
        if is_time {
            out.push_str(&rest[..start]);
            out.push_str("TIME");
            rest = &rest[t + 10..];
        } else {
            out.push_str(&rest[..=t]);
            rest = &rest[t + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Issue 18: every management command prints the same and exits the same whether a daemon
/// runs (the CLI goes through its API) or not (the CLI runs the same implementation
/// in-process). Two data dirs start alike (each served once, so each has the embedded default
/// share); one is then served while the other is not, and each command runs on both.
#[test]
fn issue_18_every_management_command_answers_the_same_with_and_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    let offline = dir.path().join("offline");
    assert_eq!(crate::iscsi_volume::start(&offline, None).stop(), Some(0));
    let gw = crate::iscsi_volume::start(&served, None);

    // (succeeds, arguments); `SNAP` stands for the data dir's own snapshot id.
    let steps: &[(bool, &[&str])] = &[
        (
            true,
            &["volume", "create", "--name", "v1", "--size", "8MiB"],
        ),
        (
            false,
            &["volume", "create", "--name", "v1", "--size", "8MiB"],
        ),
        (
            false,
            &["volume", "create", "--name", "Bad Name", "--size", "8MiB"],
        ),
        (
            false,
            &[
                "volume", "create", "--name", "v2", "--size", "8MiB", "--mode", "stored",
            ],
        ),
        (true, &["volume", "list"]),
        (
            true,
            &["snapshot", "create", "v1", "--description", "both ways"],
        ),
        (false, &["snapshot", "create", "nope"]),
        (true, &["snapshot", "list"]),
        (true, &["snapshot", "list", "v1"]),
        (
            true,
            &["snapshot", "schedule", "v1", "--every", "1h", "--keep", "2"],
        ),
        (
            false,
            &[
                "snapshot", "schedule", "v1", "--every", "10s", "--keep", "1",
            ],
        ),
        (false, &["snapshot", "schedule", "nope", "--off"]),
        (true, &["snapshot", "schedule", "v1", "--off"]),
        (true, &["snapshot", "delete", "SNAP"]),
        (false, &["snapshot", "delete", "SNAP"]),
        (
            true,
            &[
                "share",
                "create",
                "s1",
                "--squash",
                "all",
                "--allowed-clients",
                "10.0.0.0/8",
            ],
        ),
        (false, &["share", "create", "s1"]),
        (
            false,
            &["share", "create", "s2", "--allowed-clients", "not-a-cidr"],
        ),
        (true, &["share", "list"]),
        (true, &["share", "status", "s1"]),
        (false, &["share", "status", "nope"]),
        (true, &["share", "refresh", "s1"]),
        (false, &["share", "refresh", "nope"]),
        (true, &["share", "delete", "s1"]),
        (false, &["share", "delete", "s1"]),
        (
            true,
            &[
                "tape",
                "create",
                "--barcode-prefix",
                "BW",
                "--count",
                "2",
                "--size",
                "100GiB",
            ],
        ),
        (
            false,
            &["tape", "create", "--barcode-prefix", "BW", "--size", "1KiB"],
        ),
        (true, &["tape", "list"]),
        (true, &["tape", "show", "BW000001"]),
        (false, &["tape", "show", "NOPE0001"]),
        (true, &["tape", "delete", "BW000002"]),
        (false, &["tape", "delete", "BW000002"]),
        (true, &["job", "status"]),
        (false, &["job", "status", "nope"]),
        (true, &["volume", "delete", "v1"]),
        (false, &["volume", "delete", "v1"]),
        (true, &["volume", "list"]),
    ];
    let mut snapshots: [Option<String>; 2] = [None, None];
    for (succeeds, step) in steps {
        let answers: Vec<(Option<i32>, String, Vec<String>)> = [&served, &offline]
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let args: Vec<&str> = step
                    .iter()
                    .map(|a| match (*a, &snapshots[i]) {
                        ("SNAP", Some(id)) => id.as_str(),
                        _ => a,
                    })
                    .collect();
                let o = run(tidegate(data).args(&args));
                if step[..2] == ["snapshot", "create"] && o.status.success() {
                    snapshots[i] = stdout(&o).split_whitespace().next().map(str::to_owned);
                }
                let snap = snapshots[i].as_deref();
                let errors = error_lines(&o)
                    .iter()
                    .map(|l| normalise(l, data, snap))
                    .collect();
                (o.status.code(), normalise(&stdout(&o), data, snap), errors)
            })
            .collect();
        assert_eq!(answers[0], answers[1], "tidegate {}", step.join(" "));
        let (code, _, errors) = &answers[0];
        assert_eq!(*code == Some(0), *succeeds, "{step:?}: {errors:?}");
        // A caller's mistake exits 2 with one line saying what was wrong.
        if !succeeds {
            assert_eq!((*code, errors.len()), (Some(2), 1), "{step:?}: {errors:?}");
        }
    }
    assert!(snapshots.iter().all(Option::is_some));

    // Retrieval is the shelf worker's: with no daemon the CLI says to start one.
    let retrieve = run(tidegate(&offline).args(["tape", "retrieve", "BW000001"]));
    assert_eq!(retrieve.status.code(), Some(2), "{}", stderr(&retrieve));
    assert!(
        stderr(&retrieve).contains("start `tidegate serve` first"),
        "{}",
        stderr(&retrieve)
    );
    assert_eq!(gw.stop(), Some(0));
}
