//! Regression tests for defects found by running the gateway as a user would, named
//! `issue_<N>_<what>` after the issue that reported them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{run, stderr, stdout, tidegate};

/// `tidegate serve` on the embedded default with every listener on a free port.
fn spawn_serve(data: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    tidegate(data)
        .arg("serve")
        .args(["--iscsi-listen", "127.0.0.1:0"])
        .args(["--nfs-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        // Port 111 belongs to the tests of the port-111 group (.config/nextest.toml).
        .args(["--rpcbind", "off"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

fn ready(data: &Path, pid: u32) -> bool {
    std::fs::read_to_string(data.join("run/ready.toml"))
        .is_ok_and(|t| t.contains(&format!("pid = {pid}")))
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// A supervisor polling `status` while the daemon's first start creates the catalog: `status`
/// never creates or migrates it, so neither side ever sees the other's half-made schema.
#[test]
fn issue_18_status_during_first_starts_never_races_the_migration() {
    const STARTS: usize = 50;
    const POLLERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();

    // Without a daemon, status on a fresh data dir says there is no catalog and makes none.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let out = run(tidegate(&fresh).arg("status"));
    assert!(
        stdout(&out).contains("catalog.db (not created yet)"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !fresh.join("catalog.db").exists(),
        "status created a catalog"
    );

    let mut failures = Vec::new();
    let mut overlapped = 0;
    for start in 0..STARTS {
        let data = dir.path().join(format!("d{start}"));
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.path().join(format!("d{start}.log"));
        let mut serve = spawn_serve(&data, &log);
        let pid = serve.id();
        // Each poller runs `status` until the daemon is ready (the window in which the catalog
        // is created and migrated), as a readiness probe would.
        let done = AtomicBool::new(false);
        let outputs: Vec<(Option<i32>, String, bool)> = std::thread::scope(|s| {
            let pollers: Vec<_> = (0..POLLERS)
                .map(|_| {
                    s.spawn(|| {
                        let mut seen = Vec::new();
                        loop {
                            let out = run(tidegate(&data).arg("status"));
                            let text = format!("{}{}", stdout(&out), stderr(&out));
                            let saw_catalog = text.contains("(schema v");
                            seen.push((out.status.code(), text, saw_catalog));
                            if done.load(Ordering::Relaxed) {
                                return seen;
                            }
                        }
                    })
                })
                .collect();
            let began = Instant::now();
            while !ready(&data, pid) && began.elapsed() < Duration::from_secs(60) {
                if serve.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            done.store(true, Ordering::Relaxed);
            pollers
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect()
        });
        if !ready(&data, pid) {
            failures.push(format!(
                "start {start}: serve failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        // Exit status 1 is status's "needs attention" (no key yet, bucket not created yet);
        // anything else, or an error line, is a failure.
        for (code, text, _) in &outputs {
            if !matches!(code, Some(0 | 1)) || text.contains("tidegate: ") {
                failures.push(format!("start {start}: status exited {code:?}: {text}"));
            }
        }
        if outputs.iter().any(|(_, _, saw)| *saw) && outputs.iter().any(|(_, _, saw)| !saw) {
            overlapped += 1;
        }
        stop(serve);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The test means something only if status calls ran on both sides of the catalog's creation.
    assert!(
        overlapped > 0,
        "no status call overlapped a catalog's creation"
    );
    println!(
        "{overlapped} of {STARTS} starts had status calls before and after the catalog appeared"
    );
}

/// The one error line `tidegate serve` prints when it cannot start.
fn failed_start(data: &Path, args: &[&str]) -> String {
    let out = run(tidegate(data)
        .arg("serve")
        .args(["--iscsi-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--rpcbind", "off"])
        .args(args));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = crate::support::error_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    lines[0].clone()
}

/// Each cause in an error line appears once: no part of the `a: b: c` chain repeats.
fn assert_causes_once(line: &str, cause: &str) {
    assert_eq!(
        line.matches(cause).count(),
        1,
        "{cause:?} not exactly once in {line}"
    );
    let parts: Vec<&str> = line.trim_start_matches("tidegate: ").split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} repeated in {line}"
        );
    }
}

/// The chain printer shows each cause once: no error message embeds its own source.
#[test]
fn issue_18_startup_errors_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();

    // NFS on a port another socket holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = dir.path().join("port");
    std::fs::create_dir_all(&data).unwrap();
    let line = failed_start(&data, &["--nfs-listen", &format!("127.0.0.1:{port}")]);
    assert!(
        line.contains(&format!("listening for NFS on 127.0.0.1:{port}")),
        "{line}"
    );
    assert_causes_once(&line, "Address already in use");

    // A broken catalog: at schema version 0 but already holding the first migration's table
    // (what a concurrent migration used to leave behind), so migrating it fails.
    let data = dir.path().join("catalog");
    std::fs::create_dir_all(&data).unwrap();
    rusqlite::Connection::open(data.join("catalog.db"))
        .unwrap()
        .execute_batch("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
        .unwrap();
    let line = failed_start(&data, &["--nfs-listen", "127.0.0.1:0"]);
    assert!(line.contains("migrating catalog"), "{line}");
    assert!(line.contains("catalog.db"), "{line}");
    assert_causes_once(&line, "table settings already exists");

    // A catalog file that is not a database at all.
    let data = dir.path().join("garbage");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("catalog.db"), vec![0x5a; 8192]).unwrap();
    let line = failed_start(&data, &["--nfs-listen", "127.0.0.1:0"]);
    assert!(line.contains("catalog.db"), "{line}");
    assert_causes_once(&line, "file is not a database");
}

/// Readiness means ready: right after a restart announces itself (run/ready.toml), each of three
/// volumes answers an iSCSI login and the share a MOUNT, each at the first attempt.
#[test]
fn issue_18_volumes_and_shares_serve_the_moment_readiness_is_announced() {
    use crate::support::gateway::Gateway;
    use crate::support::tool;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for v in ["r1", "r2", "r3"] {
        let out = run(tidegate(&data).args(["volume", "create", "--name", v, "--size", "16MiB"]));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let args = ["--iscsi-listen", "127.0.0.1:0"];
    let gw = Gateway::start_with(&data, None, &args).unwrap();
    let out = run(tidegate(&data).args(["share", "create", "extra", "--squash", "none"]));
    assert!(out.status.success(), "{}", stderr(&out));
    gw.stop();

    for round in 0..3 {
        // start_with returns as soon as the readiness file names the new process.
        let gw = Gateway::start_with(&data, None, &args).unwrap();
        let portal = gw.ready_value("iscsi").unwrap();
        for v in ["r1", "r2", "r3"] {
            let url = format!("iscsi://{portal}/iqn.2026-11.org.tidegate:tidegate.{v}/0");
            let out = Command::new(tool("iscsi-inq")).arg(&url).output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: login to {v} failed at once after readiness: {}",
                stderr(&out)
            );
        }
        let nfs = gw.ready_value("nfs").unwrap();
        let port = nfs.rsplit(':').next().unwrap();
        for share in ["share", "extra"] {
            let url = format!("nfs://127.0.0.1/{share}?nfsport={port}&mountport={port}");
            let out = Command::new(tool("nfs-ls")).arg(&url).output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: mounting {share} failed at once after readiness: {}",
                stderr(&out)
            );
        }
        gw.stop();
    }
}
