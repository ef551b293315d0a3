//! NFSv3 found the standard way: clients ask port 111 for MOUNT and NFS, with no port options.
//! libnfs's `nfs-ls`/`nfs-cp`/`nfs-cat` and `qemu-img` (whose `nfs://` driver has no port
//! options at all) against a gateway serving rpcbind on 127.0.0.1:111, and the same gateway
//! registering with Debian's rpcbind when that holds the port. Only one process can hold port
//! 111, so these tests run one at a time (`.config/nextest.toml`, group `port-111`) and fail if
//! something else has it.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::gateway::Gateway;
use crate::support::rpcbind::{
    PORT_111, SystemRpcbind, assert_port_111_free, getport_udp, wait_port_111_released,
};
use crate::support::{noise, run, stderr, stdout, tidegate, tool};

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const TCP: u32 = 6;
const UDP: u32 = 17;

fn nfs_port(gw: &Gateway) -> u16 {
    gw.ready_value("nfs")
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .expect("nfs address in run/ready.toml")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `rpcinfo -p` lines as (program, version, protocol, port).
fn rpcinfo() -> Vec<(u32, u32, String, u16)> {
    ok(Command::new(tool("rpcinfo")).args(["-p", "127.0.0.1"]))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                (*f.get(2)?).to_owned(),
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn status_line(gw: &Gateway) -> String {
    let text = ok(tidegate(&gw.data_dir).arg("status"));
    text.lines()
        .find(|l| l.starts_with("rpcbind:"))
        .unwrap_or_else(|| panic!("no rpcbind line in status:\n{text}"))
        .to_owned()
}

/// Writes a file through `nfs-cp` and reads it back through `nfs-ls` and `nfs-cat`, all with
/// plain `nfs://127.0.0.1/share/...` URLs.
fn libnfs_round_trip(dir: &Path, name: &str, size: usize) {
    let local = dir.join(name);
    let data = noise(size, name.len() as u64);
    std::fs::write(&local, &data).unwrap();
    let url = format!("nfs://127.0.0.1/share/{name}");
    ok(Command::new(tool("nfs-cp")).args([local.to_str().unwrap(), &url]));
    let listing = ok(Command::new(tool("nfs-ls")).arg("nfs://127.0.0.1/share"));
    assert!(
        listing.lines().any(|l| l.ends_with(&format!(" {name}"))),
        "{listing}"
    );
    let out = run(Command::new(tool("nfs-cat")).arg(&url));
    assert!(out.status.success(), "nfs-cat: {}", stderr(&out));
    assert!(out.stdout == data, "nfs-cat read back different bytes");
}

/// A truncated call over TCP gets GARBAGE_ARGS (its xid was readable), a reply-shaped message
/// and random bytes over UDP get nothing; none of it stops the listener.
fn garbage_to_port_111() {
    let mut tcp = TcpStream::connect(PORT_111).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // xid 0x77, CALL, RPC v2, program 100000 v2 GETPORT, then the credentials cut short.
    let call: Vec<u8> = [0x77u32, 0, 2, 100_000, 2, 3, 1]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    let mut record = (0x8000_0000u32 | call.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&call);
    tcp.write_all(&record).unwrap();
    let mut reply = [0u8; 28];
    tcp.read_exact(&mut reply).unwrap();
    let word = |i: usize| u32::from_be_bytes(reply[i..i + 4].try_into().unwrap());
    // xid, REPLY, MSG_ACCEPTED, null verifier, GARBAGE_ARGS (4).
    assert_eq!(
        (word(4), word(8), word(12), word(20), word(24)),
        (0x77, 1, 0, 0, 4)
    );
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0, 0, 0, 9, 0, 0, 0, 1, 0xff], PORT_111)
        .unwrap();
    udp.send_to(&noise(700, 3), PORT_111).unwrap();
}

#[test]
fn rpcbind_on_port_111_lets_libnfs_and_qemu_img_in_without_port_options() {
    assert_port_111_free();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&dir.path().join("data"), None, &["--rpcbind", PORT_111]).unwrap();
    let port = nfs_port(&gw);
    assert_ne!(port, 2049, "the test must not pass by the standard port");
    assert_eq!(
        gw.ready_value("rpcbind").as_deref(),
        Some("serving on 127.0.0.1:111 (TCP and UDP)")
    );
    assert_eq!(
        status_line(&gw),
        "rpcbind:        serving on 127.0.0.1:111 (TCP and UDP)"
    );

    // rpcinfo (portmapper v2 DUMP over TCP, after finding the portmapper with rpcbind v4).
    let maps = rpcinfo();
    for (prog, vers) in [(NFS, 3), (NFS, 4), (MOUNT, 1), (MOUNT, 3)] {
        assert!(
            maps.contains(&(prog, vers, "tcp".into(), port)),
            "{prog} v{vers}: {maps:?}"
        );
    }
    assert!(
        !maps.iter().any(|m| m.0 == NFS && m.2 == "udp"),
        "no UDP NFS: {maps:?}"
    );
    // Over UDP, as mount.nfs asks first: TCP mapped, UDP not served (0).
    let at = PORT_111.parse().unwrap();
    assert_eq!(getport_udp(at, NFS, 3, TCP), u32::from(port));
    assert_eq!(getport_udp(at, MOUNT, 3, TCP), u32::from(port));
    assert_eq!(getport_udp(at, MOUNT, 3, UDP), 0);

    // Garbage on both transports: refused or ignored, and the next client is still served.
    garbage_to_port_111();
    assert_eq!(getport_udp(at, NFS, 3, TCP), u32::from(port));

    libnfs_round_trip(dir.path(), "plain.bin", 3 << 20);

    // qemu-img's nfs driver always asks port 111: a qcow2 written to the share and read back.
    let src = dir.path().join("src.raw");
    let mut image = vec![0u8; 24 << 20];
    // Data, holes and data: qcow2 keeps the holes unallocated, the bytes must still match.
    image[..5 << 20].copy_from_slice(&noise(5 << 20, 11));
    image[16 << 20..19 << 20].copy_from_slice(&noise(3 << 20, 12));
    std::fs::write(&src, &image).unwrap();
    let qcow = "nfs://127.0.0.1/share/vm.qcow2";
    let back = dir.path().join("back.raw");
    ok(Command::new(tool("qemu-img")).args([
        "convert",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        qcow,
    ]));
    let info = ok(Command::new(tool("qemu-img")).args(["info", qcow]));
    assert!(info.contains("file format: qcow2"), "{info}");
    ok(Command::new(tool("qemu-img")).args(["convert", "-O", "raw", qcow, back.to_str().unwrap()]));
    assert!(
        std::fs::read(&back).unwrap() == image,
        "the image read back through qemu-img differs"
    );

    // A clean stop releases port 111.
    assert_eq!(gw.stop(), Some(0));
    assert!(
        wait_port_111_released(Duration::from_secs(10)),
        "port 111 still held after the gateway stopped"
    );
}

#[test]
fn rpcbind_registers_with_a_system_rpcbind_that_holds_port_111_and_unregisters_at_stop() {
    let system = SystemRpcbind::start();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&dir.path().join("data"), None, &["--rpcbind", PORT_111]).unwrap();
    let port = nfs_port(&gw);
    let said = "registered with the system rpcbind at /run/rpcbind.sock";
    assert_eq!(gw.ready_value("rpcbind").as_deref(), Some(said));
    assert_eq!(status_line(&gw), format!("rpcbind:        {said}"));
    assert!(
        gw.log_text()
            .contains("registered NFS and MOUNT with the system rpcbind")
    );

    let maps = rpcinfo();
    for (prog, vers) in [(NFS, 3), (MOUNT, 3)] {
        assert!(
            maps.contains(&(prog, vers, "tcp".into(), port)),
            "{prog} v{vers}: {maps:?}"
        );
    }
    libnfs_round_trip(dir.path(), "through-system-rpcbind.bin", 1 << 20);

    assert_eq!(gw.stop(), Some(0));
    let maps = rpcinfo();
    assert!(
        !maps.iter().any(|m| m.0 == NFS || m.0 == MOUNT),
        "still registered after stop: {maps:?}"
    );
    drop(system);
}
