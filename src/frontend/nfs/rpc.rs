//! ONC RPC over TCP (RFC 5531): record marking (§11), call headers with AUTH_NULL / AUTH_UNIX
//! credentials (appendix A), and reply headers. A pure codec: bytes in, typed values out, no
//! I/O (the connection loop in `mod.rs` reads records and writes replies).
//!
//! Invariant: nothing here panics or allocates more than the input holds, whatever the bytes;
//! a call we cannot read is `Malformed`, and if its xid was readable it gets GARBAGE_ARGS.

use std::io::Cursor;

use nfsserve::xdr::XDR;

pub const RPC_VERSION: u32 = 2;
/// A record larger than this is refused and the connection closed: a 1 MiB WRITE plus headers
/// fits with room to spare.
pub const MAX_RECORD_BYTES: usize = 4 << 20;
const LAST_FRAGMENT: u32 = 0x8000_0000;

const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;
const AUTH_NULL: u32 = 0;
pub const AUTH_UNIX: u32 = 1;
/// RFC 5531 appendix A: machinename is at most 255 bytes, at most 16 supplementary groups.
const MAX_MACHINE_NAME: usize = 255;
const MAX_GROUPS: usize = 16;
/// RFC 5531 §8.2: an opaque_auth body is at most 400 bytes.
const MAX_AUTH_BYTES: usize = 400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("incomplete")]
    Incomplete,
    #[error("malformed RPC: {reason}")]
    Malformed { xid: Option<u32>, reason: String },
}

fn malformed(xid: Option<u32>, reason: impl Into<String>) -> RpcError {
    RpcError::Malformed {
        xid,
        reason: reason.into(),
    }
}

/// The credentials of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Null,
    Unix {
        machine: String,
        uid: u32,
        gid: u32,
        gids: Vec<u32>,
    },
    /// A flavor we do not accept (e.g. RPCSEC_GSS); answered with AUTH_ERROR.
    Other(u32),
}

/// A decoded call header; the procedure's arguments start at `args` in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub xid: u32,
    pub rpcvers: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub auth: Auth,
    pub args: usize,
}

/// Accepted-reply statuses (RFC 5531 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    Success = 0,
    ProgUnavail = 1,
    ProgMismatch = 2,
    ProcUnavail = 3,
    GarbageArgs = 4,
    SystemErr = 5,
}

/// A bounds-checked XDR reader over one record.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RpcError> {
        if n > self.remaining() {
            return Err(RpcError::Incomplete);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32, RpcError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, RpcError> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    pub fn bool(&mut self) -> Result<bool, RpcError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(None, format!("boolean {other}"))),
        }
    }

    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], RpcError> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// A variable-length opaque of at most `max` bytes, padding skipped.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], RpcError> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if len > max {
            return Err(malformed(
                None,
                format!("opaque of {len} bytes (at most {max})"),
            ));
        }
        let data = self.take(len)?;
        self.take((4 - len % 4) % 4)?;
        Ok(data)
    }

    /// Decodes a fixed-shape nfsserve type (no variable-length parts, so no unbounded
    /// allocation) from the current position.
    pub fn xdr<T: XDR + Default>(&mut self) -> Result<T, RpcError> {
        let mut cursor = Cursor::new(&self.buf[self.pos..]);
        let mut value = T::default();
        value
            .deserialize(&mut cursor)
            .map_err(|e| malformed(None, e.to_string()))?;
        self.pos += usize::try_from(cursor.position())
            .unwrap_or(usize::MAX)
            .min(self.remaining());
        Ok(value)
    }
}

/// Splits one record-marking fragment header into (last fragment, length).
/// An XDR body under construction (RFC 4506): big-endian words, opaques padded to 4 bytes.
#[derive(Debug, Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn new() -> Self {
        Self(Vec::with_capacity(256))
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }
    /// Fixed-size opaque: the bytes and their padding, no length.
    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0
            .extend(std::iter::repeat_n(0, (4 - data.len() % 4) % 4));
        self
    }
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        self.fixed(data)
    }
    pub fn xdr<T: XDR>(&mut self, v: &T) -> &mut Self {
        // Writing into a Vec cannot fail.
        let _ = v.serialize(&mut self.0);
        self
    }
}

pub fn fragment_header(h: [u8; 4]) -> (bool, usize) {
    let v = u32::from_be_bytes(h);
    (
        v & LAST_FRAGMENT != 0,
        usize::try_from(v & !LAST_FRAGMENT).unwrap_or(usize::MAX),
    )
}

/// Prefixes a reply with its (single, last) fragment header.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX) & !LAST_FRAGMENT;
    out.extend_from_slice(&(LAST_FRAGMENT | len).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn parse_auth(r: &mut Reader<'_>, xid: u32) -> Result<Auth, RpcError> {
    let flavor = r.u32()?;
    let body = r.opaque(MAX_AUTH_BYTES).map_err(|e| match e {
        RpcError::Malformed { reason, .. } => malformed(Some(xid), reason),
        other => other,
    })?;
    Ok(match flavor {
        AUTH_NULL => Auth::Null,
        AUTH_UNIX => {
            let mut b = Reader::new(body, 0);
            let bad = |e: RpcError| match e {
                RpcError::Incomplete => malformed(Some(xid), "truncated AUTH_UNIX credentials"),
                RpcError::Malformed { reason, .. } => malformed(Some(xid), reason),
            };
            let _stamp = b.u32().map_err(bad)?;
            let machine =
                String::from_utf8_lossy(b.opaque(MAX_MACHINE_NAME).map_err(bad)?).into_owned();
            let uid = b.u32().map_err(bad)?;
            let gid = b.u32().map_err(bad)?;
            let n = usize::try_from(b.u32().map_err(bad)?).unwrap_or(usize::MAX);
            if n > MAX_GROUPS {
                return Err(malformed(Some(xid), format!("{n} groups in AUTH_UNIX")));
            }
            let mut gids = Vec::with_capacity(n);
            for _ in 0..n {
                gids.push(b.u32().map_err(bad)?);
            }
            Auth::Unix {
                machine,
                uid,
                gid,
                gids,
            }
        }
        other => Auth::Other(other),
    })
}

/// Decodes the call header of a complete record.
pub fn parse_call(record: &[u8]) -> Result<Call, RpcError> {
    let mut r = Reader::new(record, 0);
    let trunc = |xid: Option<u32>| move |_| malformed(xid, "truncated call header");
    let xid = r.u32().map_err(trunc(None))?;
    let mtype = r.u32().map_err(trunc(Some(xid)))?;
    if mtype != MSG_CALL {
        // A reply or garbage: nothing to answer (RFC 5531 §9: only calls get replies).
        return Err(malformed(
            None,
            format!("message type {mtype} is not a call"),
        ));
    }
    let rpcvers = r.u32().map_err(trunc(Some(xid)))?;
    let prog = r.u32().map_err(trunc(Some(xid)))?;
    let vers = r.u32().map_err(trunc(Some(xid)))?;
    let proc_ = r.u32().map_err(trunc(Some(xid)))?;
    let auth = parse_auth(&mut r, xid).map_err(|e| match e {
        RpcError::Incomplete => malformed(Some(xid), "truncated credentials"),
        other => other,
    })?;
    // The verifier: its flavor and body are read and ignored (we issue no AUTH_SHORT).
    r.u32().map_err(trunc(Some(xid)))?;
    r.opaque(MAX_AUTH_BYTES).map_err(trunc(Some(xid)))?;
    Ok(Call {
        xid,
        rpcvers,
        prog,
        vers,
        proc_,
        auth,
        args: r.pos(),
    })
}

/// Header of an accepted reply (AUTH_NULL verifier); the result body follows.
pub fn accepted(xid: u32, stat: AcceptStat) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for v in [xid, MSG_REPLY, 0, AUTH_NULL, 0, stat as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// PROG_MISMATCH with the supported version range.
pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Vec<u8> {
    let mut out = accepted(xid, AcceptStat::ProgMismatch);
    out.extend_from_slice(&low.to_be_bytes());
    out.extend_from_slice(&high.to_be_bytes());
    out
}

/// MSG_DENIED / RPC_MISMATCH (we speak RPC version 2 only).
pub fn rpc_mismatch(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [xid, MSG_REPLY, 1, 0, RPC_VERSION, RPC_VERSION] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// MSG_DENIED / AUTH_ERROR with the given auth_stat (1 = AUTH_BADCRED, 5 = AUTH_TOOWEAK).
pub fn auth_error(xid: u32, stat: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    for v in [xid, MSG_REPLY, 1, 1, stat] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(prog: u32, auth: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [7u32, 0, 2, prog, 3, 1] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(auth);
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD]);
        v
    }

    fn auth_unix(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"abc\0");
        body.extend_from_slice(&uid.to_be_bytes());
        body.extend_from_slice(&gid.to_be_bytes());
        body.extend_from_slice(&(gids.len() as u32).to_be_bytes());
        for g in gids {
            body.extend_from_slice(&g.to_be_bytes());
        }
        let mut out = AUTH_UNIX.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn auth_unix_call_is_decoded() {
        let rec = call(100_003, &auth_unix(1000, 100, &[4, 27]));
        let c = parse_call(&rec).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (7, 100_003, 3, 1));
        assert_eq!(
            c.auth,
            Auth::Unix {
                machine: "abc".into(),
                uid: 1000,
                gid: 100,
                gids: vec![4, 27]
            }
        );
        assert_eq!(&rec[c.args..], &[0xAA, 0xBB, 0xCC, 0xDD]);
    }

    #[test]
    fn bad_headers_are_malformed_with_the_xid_when_known() {
        let cases: [(Vec<u8>, Option<u32>); 4] = [
            (vec![0, 0], None),
            (call(1, &[0, 0, 0, 1, 0, 0, 0, 200]), Some(7)),
            (call(1, &auth_unix(0, 0, &[0; 17])), Some(7)),
            (
                {
                    let mut v = call(1, &[0; 8]);
                    v[7] = 1;
                    v
                },
                None,
            ),
        ];
        for (rec, xid) in cases {
            match parse_call(&rec) {
                Err(RpcError::Malformed { xid: got, .. }) => assert_eq!(got, xid, "{rec:?}"),
                other => panic!("{rec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn fragments_and_replies_are_framed() {
        assert_eq!(fragment_header([0x80, 0, 1, 0]), (true, 256));
        assert_eq!(fragment_header([0, 0, 0, 8]), (false, 8));
        let f = frame(&[1, 2, 3, 4]);
        assert_eq!(&f[..4], &[0x80, 0, 0, 4]);
        let r = accepted(9, AcceptStat::GarbageArgs);
        assert_eq!(r.len(), 24);
        assert_eq!(&r[20..], &4u32.to_be_bytes());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_call(&bytes);
            let mut r = Reader::new(&bytes, 0);
            let _ = r.opaque(64);
            let _ = r.xdr::<nfsserve::nfs::sattr3>();
            let _ = r.u64();
        }

        #[test]
        fn valid_prefix_with_random_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut rec = call(100_003, &auth_unix(1, 2, &[3]));
            rec.truncate(24);
            rec.extend_from_slice(&tail);
            let _ = parse_call(&rec);
        }
    }
}
