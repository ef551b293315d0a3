//! Port 111 for the tests that need it: a check that nothing else holds it (such tests run
//! one at a time, `.config/nextest.toml` group `port-111`), a system rpcbind started for the
//! registration test, and one raw portmapper call over UDP.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tool;

pub const PORT_111: &str = "127.0.0.1:111";

/// Panics, saying who holds it, unless 127.0.0.1:111 is free for both TCP and UDP.
pub fn assert_port_111_free() {
    let tcp = TcpListener::bind(PORT_111);
    let udp = UdpSocket::bind(PORT_111);
    if tcp.is_err() || udp.is_err() {
        let holders = Command::new(tool("ss"))
            .args(["-lntup", "sport = :111"])
            .output();
        panic!(
            "port 111 is taken by something else (tcp: {:?}, udp: {:?}); these tests serve it \
             themselves, so stop the system rpcbind (systemctl stop rpcbind rpcbind.socket):\n{}",
            tcp.err(),
            udp.err(),
            holders.map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout)
                .into_owned())
        );
    }
}

/// Whether port 111 can be bound again (the holder released it), waited for with a bound.
pub fn wait_port_111_released(limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpListener::bind(PORT_111).is_ok() && UdpSocket::bind(PORT_111).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Debian's rpcbind in the foreground, killed on drop.
pub struct SystemRpcbind(Child);

impl SystemRpcbind {
    pub fn start() -> Self {
        assert_port_111_free();
        let child = Command::new(tool("rpcbind"))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rpcbind");
        let mut me = Self(child);
        let start = Instant::now();
        while TcpListener::bind(PORT_111).is_ok() || !Path::new("/run/rpcbind.sock").exists() {
            assert!(
                me.0.try_wait().unwrap().is_none(),
                "rpcbind -f exited at start"
            );
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "rpcbind not listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }
}

impl Drop for SystemRpcbind {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// PMAP GETPORT over UDP (what nfs-utils' mount.nfs sends first): the port, 0 when unmapped.
pub fn getport_udp(server: SocketAddr, prog: u32, vers: u32, prot: u32) -> u32 {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut call = Vec::new();
    // xid, CALL, RPC v2, PMAP program 100000 v2, GETPORT, AUTH_NULL cred and verifier.
    for w in [
        0x5eed_u32, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, prog, vers, prot, 0,
    ] {
        call.extend_from_slice(&w.to_be_bytes());
    }
    sock.send_to(&call, server).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).expect("a UDP reply from port 111");
    assert!(n >= 28, "short reply: {:?}", &buf[..n]);
    let word = |i: usize| u32::from_be_bytes(buf[i..i + 4].try_into().unwrap());
    assert_eq!((word(0), word(4), word(8), word(20)), (0x5eed, 1, 0, 0));
    word(24)
}
