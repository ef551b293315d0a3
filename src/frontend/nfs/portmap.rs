//! Portmapper v2 and rpcbind v3/v4 (RFC 1833) for the services of this gateway: what a client
//! asks on port 111 before it can find MOUNT and NFS (libnfs and QEMU with PMAP GETPORT over
//! TCP, the kernel's mount.nfs with RPCB GETADDR over UDP first, then TCP). A pure codec: the
//! parsed call and its argument bytes in, the whole reply out, no I/O; `rpcbind.rs` serves it
//! on its own listener and `mod.rs` on the NFS port (the old in-port GETPORT).
//!
//! Only our own mappings are known (NFS v3 and v4, MOUNT v1-3, all over TCP at the NFS port):
//! SET and UNSET from others are refused, and anything over UDP maps to port 0 (not served).
//!
//! Invariant: any argument bytes get a reply or GARBAGE_ARGS, never a panic.

use std::net::{IpAddr, SocketAddr};

use super::rpc::{self, AcceptStat, Call, Reader, RpcError};

pub const PROGRAM: u32 = 100_000;
/// Portmapper v2 and rpcbind v3 and v4 share the program number (RFC 1833 §2, §3).
pub const PMAP_VERSION: u32 = 2;
pub const RPCB_LOWEST: u32 = 3;
pub const RPCB_HIGHEST: u32 = 4;

pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;
/// What a registration names as its owner (rpcbind shows it in `rpcinfo`).
pub const OWNER: &str = "tidegate";
/// RFC 1833 leaves strings unbounded; netids and universal addresses are short, and a bound
/// keeps a hostile call from making us copy megabytes.
const MAX_STRING: usize = 1024;

/// Procedures, shared by number between the versions where they mean the same thing.
const PROC_NULL: u32 = 0;
const PROC_SET: u32 = 1;
const PROC_UNSET: u32 = 2;
/// GETPORT in v2, GETADDR in v3/v4.
const PROC_GETPORT: u32 = 3;
const PROC_DUMP: u32 = 4;
/// rpcbind v4 only: like GETADDR, but only the exact version.
const PROC_GETVERSADDR: u32 = 9;

/// One program version this gateway serves, over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub prog: u32,
    pub vers: u32,
}

/// Everything we map: NFS v3 (and v4, which the same port answers), MOUNT v1-3.
pub const MAPPINGS: [Mapping; 5] = [
    Mapping {
        prog: NFS_PROGRAM,
        vers: 3,
    },
    Mapping {
        prog: NFS_PROGRAM,
        vers: 4,
    },
    Mapping {
        prog: MOUNT_PROGRAM,
        vers: 1,
    },
    Mapping {
        prog: MOUNT_PROGRAM,
        vers: 2,
    },
    Mapping {
        prog: MOUNT_PROGRAM,
        vers: 3,
    },
];

/// Where our services are: NFS and MOUNT at the NFS listener, and, on the port 111 listener,
/// the portmapper itself there (clients such as `rpcinfo -p` look it up before they call it,
/// as a system rpcbind lists itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub nfs: SocketAddr,
    pub rpcbind: Option<SocketAddr>,
}

/// One mapping as both protocol versions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    prog: u32,
    vers: u32,
    prot: u32,
    addr: SocketAddr,
}

impl Entry {
    /// The netid (RFC 5665 §4.2) for this protocol and address family.
    fn netid(&self) -> &'static str {
        match (self.prot, self.addr.is_ipv4()) {
            (IPPROTO_UDP, true) => "udp",
            (IPPROTO_UDP, false) => "udp6",
            (_, true) => "tcp",
            (_, false) => "tcp6",
        }
    }

    /// Its universal address: a wildcard listener's address is replaced by the one the client
    /// reached us at, when known.
    fn uaddr(&self, local: Option<IpAddr>) -> String {
        let ip = match (self.addr.ip().is_unspecified(), local) {
            (true, Some(ip)) => ip,
            _ => self.addr.ip(),
        };
        universal_address(SocketAddr::new(ip, self.addr.port()))
    }
}

impl Services {
    fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = MAPPINGS
            .iter()
            .map(|m| Entry {
                prog: m.prog,
                vers: m.vers,
                prot: IPPROTO_TCP,
                addr: self.nfs,
            })
            .collect();
        if let Some(addr) = self.rpcbind {
            for vers in PMAP_VERSION..=RPCB_HIGHEST {
                for prot in [IPPROTO_TCP, IPPROTO_UDP] {
                    out.push(Entry {
                        prog: PROGRAM,
                        vers,
                        prot,
                        addr,
                    });
                }
            }
        }
        out
    }

    fn port_of(&self, prog: u32, vers: u32, prot: u32) -> u16 {
        self.entries()
            .iter()
            .find(|e| e.prog == prog && e.vers == vers && e.prot == prot)
            .map_or(0, |e| e.addr.port())
    }

    /// The universal address of a served (prog, vers, netid), `""` when not served. With
    /// `any_version`, another version of the program answers too (GETADDR's rule, RFC 1833
    /// §2.2.1: the client then finds the versions with a NULL call).
    fn uaddr(
        &self,
        prog: u32,
        vers: u32,
        netid: &str,
        any_version: bool,
        local: Option<IpAddr>,
    ) -> String {
        let entries = self.entries();
        let of_prog = || {
            entries
                .iter()
                .filter(|e| e.prog == prog && e.netid() == netid)
        };
        let exact = of_prog().find(|e| e.vers == vers);
        let found = exact.or_else(|| of_prog().find(|_| any_version));
        found.map_or(String::new(), |e| e.uaddr(local))
    }
}

/// RFC 5665 §5.2.3.3/§5.2.3.4: the IP address in its usual text form, then the port's high
/// and low bytes in decimal (`127.0.0.1.8.1` is port 2049).
pub fn universal_address(addr: SocketAddr) -> String {
    let p = addr.port();
    format!("{}.{}.{}", addr.ip(), p >> 8, p & 0xff)
}

/// The port of a universal address; `None` when it is not one.
pub fn port_of_universal_address(uaddr: &str) -> Option<u16> {
    let mut parts = uaddr.rsplitn(3, '.');
    let low: u8 = parts.next()?.parse().ok()?;
    let high: u8 = parts.next()?.parse().ok()?;
    parts.next().filter(|host| !host.is_empty())?;
    Some(u16::from(high) << 8 | u16::from(low))
}

/// The rpcbind v3/v4 `rpcb` argument: a program, a version, a netid, an address, an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpcb {
    pub prog: u32,
    pub vers: u32,
    pub netid: String,
    pub addr: String,
    pub owner: String,
}

impl Rpcb {
    fn decode(r: &mut Reader<'_>) -> Result<Self, RpcError> {
        Ok(Self {
            prog: r.u32()?,
            vers: r.u32()?,
            netid: string(r)?,
            addr: string(r)?,
            owner: string(r)?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prog.to_be_bytes());
        out.extend_from_slice(&self.vers.to_be_bytes());
        for s in [&self.netid, &self.addr, &self.owner] {
            put_string(out, s);
        }
    }
}

/// The portmapper v2 `mapping` (RFC 1833 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmapMapping {
    pub prog: u32,
    pub vers: u32,
    pub prot: u32,
    pub port: u32,
}

impl PmapMapping {
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.prog, self.vers, self.prot, self.port] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn string(r: &mut Reader<'_>) -> Result<String, RpcError> {
    Ok(String::from_utf8_lossy(r.opaque(MAX_STRING)?).into_owned())
}

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.extend(std::iter::repeat_n(0, (4 - s.len() % 4) % 4));
}

/// The whole reply (header and result) to a portmapper or rpcbind call. `local` is the
/// address the call arrived at, when known.
pub fn answer(services: &Services, call: &Call, args: &[u8], local: Option<IpAddr>) -> Vec<u8> {
    if call.prog != PROGRAM {
        return rpc::accepted(call.xid, AcceptStat::ProgUnavail);
    }
    let result = match call.vers {
        PMAP_VERSION => pmap(services, call.proc_, args),
        RPCB_LOWEST..=RPCB_HIGHEST => rpcb(services, call.vers, call.proc_, args, local),
        _ => return rpc::prog_mismatch(call.xid, PMAP_VERSION, RPCB_HIGHEST),
    };
    match result {
        Ok(Some(body)) => {
            let mut out = rpc::accepted(call.xid, AcceptStat::Success);
            out.extend_from_slice(&body);
            out
        }
        Ok(None) => rpc::accepted(call.xid, AcceptStat::ProcUnavail),
        Err(_) => rpc::accepted(call.xid, AcceptStat::GarbageArgs),
    }
}

/// Portmapper v2; `Ok(None)` for a procedure we do not serve (CALLIT: no indirect calls).
fn pmap(services: &Services, proc_: u32, args: &[u8]) -> Result<Option<Vec<u8>>, RpcError> {
    let mut r = Reader::new(args, 0);
    Ok(Some(match proc_ {
        PROC_NULL => Vec::new(),
        // Registrations belong to a system rpcbind, not to us: refused (FALSE).
        PROC_SET | PROC_UNSET => {
            decode_pmap_mapping(&mut r)?;
            0u32.to_be_bytes().to_vec()
        }
        PROC_GETPORT => {
            let m = decode_pmap_mapping(&mut r)?;
            u32::from(services.port_of(m.prog, m.vers, m.prot))
                .to_be_bytes()
                .to_vec()
        }
        PROC_DUMP => {
            let mut out = Vec::new();
            for e in services.entries() {
                out.extend_from_slice(&1u32.to_be_bytes());
                PmapMapping {
                    prog: e.prog,
                    vers: e.vers,
                    prot: e.prot,
                    port: u32::from(e.addr.port()),
                }
                .encode(&mut out);
            }
            out.extend_from_slice(&0u32.to_be_bytes());
            out
        }
        _ => return Ok(None),
    }))
}

fn decode_pmap_mapping(r: &mut Reader<'_>) -> Result<PmapMapping, RpcError> {
    Ok(PmapMapping {
        prog: r.u32()?,
        vers: r.u32()?,
        prot: r.u32()?,
        port: r.u32()?,
    })
}

/// rpcbind v3 and v4.
fn rpcb(
    services: &Services,
    vers: u32,
    proc_: u32,
    args: &[u8],
    local: Option<IpAddr>,
) -> Result<Option<Vec<u8>>, RpcError> {
    let mut r = Reader::new(args, 0);
    let mut out = Vec::new();
    match proc_ {
        PROC_NULL => {}
        PROC_SET | PROC_UNSET => {
            Rpcb::decode(&mut r)?;
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        PROC_GETPORT => {
            let q = Rpcb::decode(&mut r)?;
            put_string(
                &mut out,
                &services.uaddr(q.prog, q.vers, &q.netid, true, local),
            );
        }
        PROC_GETVERSADDR if vers == RPCB_HIGHEST => {
            let q = Rpcb::decode(&mut r)?;
            put_string(
                &mut out,
                &services.uaddr(q.prog, q.vers, &q.netid, false, local),
            );
        }
        PROC_DUMP => {
            for e in services.entries() {
                out.extend_from_slice(&1u32.to_be_bytes());
                Rpcb {
                    prog: e.prog,
                    vers: e.vers,
                    netid: e.netid().to_owned(),
                    addr: e.uaddr(local),
                    owner: OWNER.to_owned(),
                }
                .encode(&mut out);
            }
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        _ => return Ok(None),
    }
    Ok(Some(out))
}

/// Whether a reply to a SET/UNSET we sent says TRUE; `None` when it is not a successful reply
/// to `xid` at all.
pub fn bool_reply(reply: &[u8], xid: u32) -> Option<bool> {
    let mut r = Reader::new(reply, 0);
    // xid, REPLY, MSG_ACCEPTED, verifier (flavor, body), SUCCESS, then the bool.
    if r.u32().ok()? != xid || r.u32().ok()? != 1 || r.u32().ok()? != 0 {
        return None;
    }
    r.u32().ok()?;
    r.opaque(400).ok()?;
    if r.u32().ok()? != 0 {
        return None;
    }
    r.bool().ok()
}

/// A call to the portmapper/rpcbind program with AUTH_NULL credentials, as sent to a system
/// rpcbind when we register with it instead of serving port 111 (it identifies local callers
/// by their socket, not by credentials).
pub fn call(xid: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + args.len());
    for v in [xid, 0, rpc::RPC_VERSION, PROGRAM, vers, proc_, 0, 0, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(args);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NFS: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 2049);

    fn ask(vers: u32, proc_: u32, args: &[u8]) -> (u32, Vec<u8>) {
        ask_at(
            Services {
                nfs: NFS,
                rpcbind: None,
            },
            vers,
            proc_,
            args,
            None,
        )
    }

    fn ask_at(
        services: Services,
        vers: u32,
        proc_: u32,
        args: &[u8],
        local: Option<IpAddr>,
    ) -> (u32, Vec<u8>) {
        let rec = call(9, vers, proc_, args);
        let c = rpc::parse_call(&rec).unwrap();
        let reply = answer(&services, &c, &rec[c.args..], local);
        let stat = u32::from_be_bytes(reply[20..24].try_into().unwrap());
        (stat, reply[24..].to_vec())
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn rpcb_args(prog: u32, vers: u32, netid: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Rpcb {
            prog,
            vers,
            netid: netid.into(),
            addr: String::new(),
            owner: String::new(),
        }
        .encode(&mut out);
        out
    }

    fn decoded_string(body: &[u8]) -> String {
        string(&mut Reader::new(body, 0)).unwrap()
    }

    #[test]
    fn getport_answers_the_nfs_port_for_our_programs_over_tcp_only() {
        let cases = [
            (NFS_PROGRAM, 3, IPPROTO_TCP, 2049),
            (NFS_PROGRAM, 4, IPPROTO_TCP, 2049),
            (MOUNT_PROGRAM, 1, IPPROTO_TCP, 2049),
            (MOUNT_PROGRAM, 3, IPPROTO_TCP, 2049),
            (NFS_PROGRAM, 3, IPPROTO_UDP, 0),
            (MOUNT_PROGRAM, 3, IPPROTO_UDP, 0),
            (NFS_PROGRAM, 2, IPPROTO_TCP, 0),
            (100_021, 4, IPPROTO_TCP, 0),
        ];
        for (prog, vers, prot, port) in cases {
            let (stat, body) = ask(2, PROC_GETPORT, &words(&[prog, vers, prot, 0]));
            assert_eq!(stat, 0);
            assert_eq!(body, words(&[port]), "{prog} v{vers} prot {prot}");
        }
    }

    #[test]
    fn getaddr_answers_universal_addresses_for_the_listener_family() {
        let cases = [
            (4, PROC_GETPORT, NFS_PROGRAM, 3, "tcp", "127.0.0.1.8.1"),
            (3, PROC_GETPORT, MOUNT_PROGRAM, 3, "tcp", "127.0.0.1.8.1"),
            (3, PROC_GETPORT, NFS_PROGRAM, 3, "udp", ""),
            (4, PROC_GETPORT, NFS_PROGRAM, 3, "tcp6", ""),
            // GETADDR answers another version of a program we serve; GETVERSADDR does not.
            (4, PROC_GETPORT, NFS_PROGRAM, 2, "tcp", "127.0.0.1.8.1"),
            (4, PROC_GETVERSADDR, NFS_PROGRAM, 2, "tcp", ""),
            (4, PROC_GETVERSADDR, NFS_PROGRAM, 4, "tcp", "127.0.0.1.8.1"),
            (4, PROC_GETPORT, 100_021, 4, "tcp", ""),
        ];
        for (vers, proc_, prog, pvers, netid, want) in cases {
            let (stat, body) = ask(vers, proc_, &rpcb_args(prog, pvers, netid));
            assert_eq!(stat, 0);
            assert_eq!(
                decoded_string(&body),
                want,
                "v{vers} {proc_} {prog} {netid}"
            );
        }
    }

    #[test]
    fn a_wildcard_listener_answers_with_the_address_the_client_reached() {
        let services = Services {
            nfs: "0.0.0.0:20049".parse().unwrap(),
            rpcbind: None,
        };
        let nfs3_at = |services, netid, local| {
            let args = rpcb_args(NFS_PROGRAM, 3, netid);
            decoded_string(&ask_at(services, 4, PROC_GETPORT, &args, local).1)
        };
        let local = Some("192.0.2.7".parse().unwrap());
        assert_eq!(nfs3_at(services, "tcp", local), "192.0.2.7.78.81");
        let v6 = Services {
            nfs: "[::1]:2049".parse().unwrap(),
            rpcbind: None,
        };
        assert_eq!(nfs3_at(v6, "tcp6", None), "::1.8.1");
    }

    #[test]
    fn dumps_list_every_mapping() {
        let (stat, body) = ask(2, PROC_DUMP, &[]);
        assert_eq!(stat, 0);
        let mut r = Reader::new(&body, 0);
        let mut got = Vec::new();
        while r.bool().unwrap() {
            let m = decode_pmap_mapping(&mut r).unwrap();
            got.push((m.prog, m.vers, m.prot, m.port));
        }
        assert_eq!(r.remaining(), 0);
        let want: Vec<_> = MAPPINGS
            .iter()
            .map(|m| (m.prog, m.vers, IPPROTO_TCP, 2049))
            .collect();
        assert_eq!(got, want);

        let (stat, body) = ask(4, PROC_DUMP, &[]);
        assert_eq!(stat, 0);
        let mut r = Reader::new(&body, 0);
        let mut got = Vec::new();
        while r.bool().unwrap() {
            got.push(Rpcb::decode(&mut r).unwrap());
        }
        assert_eq!(r.remaining(), 0);
        assert_eq!(got.len(), MAPPINGS.len());
        assert!(
            got.iter()
                .all(|e| e.netid == "tcp" && e.addr == "127.0.0.1.8.1" && e.owner == OWNER)
        );
    }

    #[test]
    fn the_port_111_listener_lists_itself_like_a_system_rpcbind() {
        let services = Services {
            nfs: NFS,
            rpcbind: Some("127.0.0.1:111".parse().unwrap()),
        };
        // rpcinfo -p asks where the portmapper is (GETADDR 100000 v2 tcp) before DUMP.
        for (vers, netid) in [(2, "tcp"), (4, "udp")] {
            let (_, body) = ask_at(
                services,
                4,
                PROC_GETPORT,
                &rpcb_args(PROGRAM, vers, netid),
                None,
            );
            assert_eq!(decoded_string(&body), "127.0.0.1.0.111");
        }
        let (_, body) = ask_at(
            services,
            2,
            PROC_GETPORT,
            &words(&[PROGRAM, 2, IPPROTO_UDP, 0]),
            None,
        );
        assert_eq!(body, words(&[111]));
        let (_, body) = ask_at(services, 2, PROC_DUMP, &[], None);
        // Five of ours, then 3 versions x 2 transports of the portmapper.
        assert_eq!(body.len(), 4 + (MAPPINGS.len() + 6) * 20);
    }

    #[test]
    fn other_calls_get_the_proper_rejections() {
        // NULL in every version, SET refused, unknown procedures and versions.
        for vers in 2..=4 {
            assert_eq!(ask(vers, PROC_NULL, &[]), (0, Vec::new()));
        }
        assert_eq!(ask(2, PROC_SET, &words(&[1, 1, 6, 99])), (0, words(&[0])));
        assert_eq!(
            ask(4, PROC_UNSET, &rpcb_args(1, 1, "tcp")),
            (0, words(&[0]))
        );
        assert_eq!(ask(2, 5, &[]).0, AcceptStat::ProcUnavail as u32);
        assert_eq!(
            ask(3, PROC_GETVERSADDR, &[]).0,
            AcceptStat::ProcUnavail as u32
        );
        assert_eq!(ask(5, PROC_NULL, &[]), (2, words(&[2, 4])));
        assert_eq!(
            ask(2, PROC_GETPORT, &[0, 0]).0,
            AcceptStat::GarbageArgs as u32
        );
        assert_eq!(ask(4, PROC_GETPORT, &words(&[1, 1, 9999])).0, 4);
    }

    #[test]
    fn universal_addresses_round_trip() {
        for addr in ["127.0.0.1:111", "[fe80::1]:2049", "10.0.2.2:65535"] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(
                port_of_universal_address(&universal_address(a)),
                Some(a.port())
            );
        }
        for bad in ["", "1.2", "127.0.0.1.300.1", ".8.1", "x.y.z"] {
            assert_eq!(port_of_universal_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn bool_replies_are_read_and_others_are_not() {
        let mut ok = rpc::accepted(5, AcceptStat::Success);
        ok.extend_from_slice(&words(&[1]));
        assert_eq!(bool_reply(&ok, 5), Some(true));
        assert_eq!(bool_reply(&ok, 6), None);
        assert_eq!(
            bool_reply(&rpc::accepted(5, AcceptStat::ProcUnavail), 5),
            None
        );
        assert_eq!(bool_reply(&rpc::auth_error(5, 1), 5), None);
    }

    proptest! {
        #[test]
        fn arbitrary_arguments_never_panic(
            vers in 0u32..6,
            proc_ in 0u32..14,
            args in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let rec = call(1, vers, proc_, &args);
            let c = rpc::parse_call(&rec).unwrap();
            let reply = answer(&Services { nfs: NFS, rpcbind: None }, &c, &rec[c.args..], None);
            prop_assert!(reply.len() >= 24);
        }
    }
}
