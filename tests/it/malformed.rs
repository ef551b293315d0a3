//! Malformed input against the running daemon: garbage, truncated and oversized iSCSI PDUs on raw
//! sockets while a real initiator keeps working, and the daemon keeps serving afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::gateway::Gateway;
use crate::support::{noise, run, stderr, stdout, tidegate, tool};

/// A 48-byte Basic Header Segment: `opcode`, flags, and a data segment length (RFC 7143 §11.2.1).
fn bhs(opcode: u8, flags: u8, data_len: u32) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = opcode;
    h[1] = flags;
    h[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
    h
}

/// Sends `bytes`, half-closes, and waits (bounded) for the target to answer or close.
fn poke(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    // Ok(n) (a Reject or Login Response, then close) or a reset: both fine; a hang is not.
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "target neither answered nor closed after {} bytes: {e}",
            bytes.len()
        ),
    }
}

#[test]
fn garbage_pdus_are_refused_and_other_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(tidegate(&data).args(["volume", "create", "--name", "m", "--size", "64MiB"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let gw = Gateway::start_with(&data, None, &["--iscsi-listen", "127.0.0.1:0"]).unwrap();
    let portal = gw.ready_value("iscsi").unwrap();
    let url = format!("iscsi://{portal}/iqn.2026-11.org.tidegate:tidegate.m/0");
    let inq = |u: &str| Command::new(tool("iscsi-inq")).arg(u).output().unwrap();
    let start = std::time::Instant::now();
    while !inq(&url).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "target never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A real initiator reads throughout.
    let perf = Command::new(tool("iscsi-perf"))
        .args(["-t", "6", "-m", "4", "-b", "8"])
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut oversized = bhs(0x43, 0x87, 0x00ff_ffff);
    oversized.extend(vec![0u8; 4096]);
    let cases: Vec<Vec<u8>> = vec![
        vec![0xff; 48],                    // unknown opcode, every flag set
        bhs(0x43, 0x87, 0)[..20].to_vec(), // truncated header
        oversized,                         // claims a 16 MiB data segment
        bhs(0x01, 0x80, 0),                // SCSI command before login
        bhs(0x3f, 0, 0),                   // a target-only opcode sent by an initiator
        noise(8192, 5),                    // noise
    ];
    for case in &cases {
        poke(&portal, case);
    }

    let out = perf.wait_with_output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "iscsi-perf failed during the garbage: {text}"
    );
    assert!(text.contains("iops average"), "{text}");

    // Still serving, and healthy.
    assert!(inq(&url).status.success());
    let status = run(tidegate(&data).arg("status"));
    assert!(status.status.success(), "{}", stdout(&status));
    assert_eq!(gw.stop(), Some(0));
}
