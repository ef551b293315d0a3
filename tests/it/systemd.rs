//! The daemon under systemd's notify protocol: the test plays systemd's side, a datagram
//! socket named by `NOTIFY_SOCKET`, and checks READY=1, watchdog pings and STOPPING=1.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use crate::support::tidegate;

#[test]
fn serve_reports_ready_watchdog_and_stopping_over_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = tidegate(&data)
        .args([
            "serve",
            "--iscsi-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--nfs-listen",
            "127.0.0.1:0",
            "--rpcbind",
            "off",
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(
        first.contains(&format!("MAINPID={}", child.id())),
        "{first}"
    );
    // Readiness means serving: the readiness file is there and names this process.
    let ready = std::fs::read_to_string(data.join("run/ready.toml")).unwrap();
    assert!(ready.contains(&format!("pid = {}", child.id())), "{ready}");
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stopping = false;
    for _ in 0..20 {
        if next() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 at SIGTERM");
    assert!(child.wait().unwrap().success());
}

/// The shipped unit parses: `systemd-analyze verify` on it, pointed at the built binary.
#[test]
fn the_shipped_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidegate.service"
    ))
    .unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    let path = dir.path().join("tidegate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tidegate", crate::support::bin()),
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::tool("systemd-analyze"))
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        crate::support::stdout(&out),
        crate::support::stderr(&out)
    );
    // Only the unit's own lines matter (the host's other units may warn about themselves).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tidegate.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{text}");
}
