//! A small raw NFSv4.1 client (RFC 8881) over the NFSv3 client's RPC transport: a session
//! (EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE), COMPOUNDs behind SEQUENCE, and the
//! operations the tests need (OPEN, WRITE, COMMIT, READ, LOCK, LOCKT, LOCKU, CLOSE, CREATE,
//! LINK, RENAME, GETATTR of type and rawdev, of fileid and numlinks). Each
//! helper returns the operation's status so tests can assert on DENIED, GRACE, BAD_STATEID
//! and the rest, and on the bytes of whole replies (the reply cache).

use crate::support::nfs::{Client, Dec, Enc};

pub const NFS4_OK: u32 = 0;
pub const NFS4ERR_DENIED: u32 = 10010;
pub const NFS4ERR_LOCKS_HELD: u32 = 10037;
pub const NFS4ERR_GRACE: u32 = 10013;
pub const NFS4ERR_OLD_STATEID: u32 = 10024;
pub const NFS4ERR_BAD_STATEID: u32 = 10025;
pub const NFS4ERR_STALE_STATEID: u32 = 10023;
pub const NFS4ERR_BADXDR: u32 = 10036;
pub const NFS4ERR_OP_ILLEGAL: u32 = 10044;
pub const NFS4ERR_MINOR_VERS_MISMATCH: u32 = 10021;
pub const NFS4ERR_BADSESSION: u32 = 10052;
pub const NFS4ERR_SEQ_MISORDERED: u32 = 10063;
pub const NFS4ERR_SEQUENCE_POS: u32 = 10064;
pub const NFS4ERR_TOO_MANY_OPS: u32 = 10070;
pub const NFS4ERR_OP_NOT_IN_SESSION: u32 = 10071;
pub const NFS4ERR_INVAL: u32 = 22;
pub const NFS4ERR_WRONG_TYPE: u32 = 10083;
pub const NFS4ERR_EXIST: u32 = 17;
pub const NFS4ERR_XDEV: u32 = 18;
pub const NFS4ERR_NOTDIR: u32 = 20;
pub const NFS4ERR_ISDIR: u32 = 21;

pub const OP_CLOSE: u32 = 4;
pub const OP_COMMIT: u32 = 5;
pub const OP_CREATE: u32 = 6;
pub const OP_GETATTR: u32 = 9;
pub const OP_GETFH: u32 = 10;
pub const OP_LOCK: u32 = 12;
pub const OP_LOCKT: u32 = 13;
pub const OP_LOCKU: u32 = 14;
pub const OP_LINK: u32 = 11;
pub const OP_LOOKUP: u32 = 15;
pub const OP_OPEN: u32 = 18;
pub const OP_PUTFH: u32 = 22;
pub const OP_PUTROOTFH: u32 = 24;
pub const OP_READ: u32 = 25;
pub const OP_RENAME: u32 = 29;
pub const OP_SAVEFH: u32 = 32;
pub const OP_WRITE: u32 = 38;
pub const OP_EXCHANGE_ID: u32 = 42;
pub const OP_CREATE_SESSION: u32 = 43;
pub const OP_SEQUENCE: u32 = 53;
pub const OP_RECLAIM_COMPLETE: u32 = 58;

/// nfs_ftype4 (RFC 8881 §3.3.2).
pub const NF4BLK: u32 = 3;
pub const NF4CHR: u32 = 4;
pub const NF4SOCK: u32 = 6;
pub const NF4FIFO: u32 = 7;

const FATTR4_TYPE: u32 = 1;
const FATTR4_FILEID: u32 = 20;
const FATTR4_NUMLINKS: u32 = 35;
const FATTR4_MODE: u32 = 33;
const FATTR4_RAWDEV: u32 = 41;
pub const FATTR4_TIME_ACCESS: u32 = 47;
pub const FATTR4_TIME_MODIFY: u32 = 53;

pub const WRITE_LT: u32 = 2;
pub const FILE_SYNC4: u32 = 2;

/// A change_info4 (RFC 8881 §3.3.8): whether atomic, the change attribute before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeInfo {
    pub atomic: bool,
    pub before: u64,
    pub after: u64,
}

impl ChangeInfo {
    fn dec(d: &mut Dec<'_>) -> Self {
        Self {
            atomic: d.u32() != 0,
            before: d.u64(),
            after: d.u64(),
        }
    }
}

/// A stateid4: seqid and "other".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateId(pub u32, pub Vec<u8>);

impl StateId {
    pub fn enc(&self, e: Enc) -> Enc {
        e.u32(self.0).raw(&self.1)
    }
    fn dec(d: &mut Dec<'_>) -> Self {
        Self(d.u32(), d.fixed(12))
    }
}

/// A COMPOUND's reply: overall status and the results of the operations that ran. A body is
/// only the rest of the reply after that result's status (the operations' own decoders take
/// what they need from it).
#[derive(Debug)]
pub struct Reply {
    pub status: u32,
    pub raw: Vec<u8>,
    pub results: Vec<(u32, u32)>,
    /// The body after the last result's status (or after the SEQUENCE result).
    pub tail: Vec<u8>,
}

/// Sends one raw COMPOUND (tag, minor version, ops already encoded) and returns the reply.
pub fn compound_raw(c: &mut Client, minor: u32, nops: u32, ops: &[u8]) -> Reply {
    let args = Enc::default().opaque(b"t").u32(minor).u32(nops).raw(ops);
    let (stat, body) = c.call(100_003, 4, 1, &args.0);
    assert_eq!(stat, 0, "COMPOUND accepted at the RPC layer");
    parse(&body)
}

/// Parses a COMPOUND4res, walking the results it can skip (statuses only for failed ops;
/// for successful ones, only SEQUENCE's fixed body is skipped: callers ask for one op's body
/// at a time by sending the ops whose bodies they read last).
pub fn parse(body: &[u8]) -> Reply {
    let mut d = Dec::new(body);
    let status = d.u32();
    d.opaque();
    let n = d.u32();
    let mut results = Vec::new();
    for _ in 0..n {
        let op = d.u32();
        let st = d.u32();
        results.push((op, st));
        if op == OP_SEQUENCE && st == NFS4_OK {
            d.fixed(16 + 20);
        } else {
            break;
        }
    }
    Reply {
        status,
        raw: body.to_vec(),
        results,
        tail: d.rest().to_vec(),
    }
}

/// An NFSv4.1 session.
pub struct Session {
    pub c: Client,
    pub client_id: u64,
    pub session: Vec<u8>,
    pub seq: u32,
}

impl Session {
    /// EXCHANGE_ID + CREATE_SESSION (+ RECLAIM_COMPLETE unless `reclaiming`).
    pub fn new(addr: &str, owner: &[u8], reclaiming: bool) -> Session {
        let mut c = Client::connect(addr);
        let eid = Enc::default()
            .u32(OP_EXCHANGE_ID)
            .raw(&[1, 2, 3, 4, 5, 6, 7, 8])
            .opaque(owner)
            .u32(0)
            .u32(0)
            .u32(0);
        let r = compound_raw(&mut c, 1, 1, &eid.0);
        assert_eq!(r.status, NFS4_OK, "EXCHANGE_ID");
        let mut d = Dec::new(&r.tail);
        let client_id = d.u64();
        let seq = d.u32();
        let chan = |e: Enc| {
            e.u32(0)
                .u32(1 << 21)
                .u32(1 << 21)
                .u32(64 * 1024)
                .u32(16)
                .u32(8)
                .u32(0)
        };
        let cs = Enc::default()
            .u32(OP_CREATE_SESSION)
            .u64(client_id)
            .u32(seq)
            .u32(0);
        let cs = chan(chan(cs)).u32(0x4000_0000).u32(1).u32(0);
        let r = compound_raw(&mut c, 1, 1, &cs.0);
        assert_eq!(r.status, NFS4_OK, "CREATE_SESSION");
        let session = Dec::new(&r.tail).fixed(16);
        let mut s = Session {
            c,
            client_id,
            session,
            seq: 0,
        };
        if !reclaiming {
            s.reclaim_complete();
        }
        s
    }

    pub fn reclaim_complete(&mut self) {
        let r = self.compound(1, &Enc::default().u32(OP_RECLAIM_COMPLETE).u32(0).0);
        assert_eq!(r.status, NFS4_OK, "RECLAIM_COMPLETE");
    }

    /// The SEQUENCE op of the next request on slot 0. sa_cachethis is off, as Linux sends it
    /// for READ and WRITE: a reply larger than the session's cache limit is then still sent.
    pub fn sequence(&mut self) -> Enc {
        self.seq += 1;
        Enc::default()
            .u32(OP_SEQUENCE)
            .raw(&self.session)
            .u32(self.seq)
            .u32(0)
            .u32(0)
            .u32(0)
    }

    /// SEQUENCE then `nops` encoded operations.
    pub fn compound(&mut self, nops: u32, ops: &[u8]) -> Reply {
        let all = self.sequence().raw(ops);
        compound_raw(&mut self.c, 1, nops + 1, &all.0)
    }

    /// PUTROOTFH, LOOKUP of each path component.
    pub fn path_ops(path: &str) -> (u32, Enc) {
        let mut e = Enc::default().u32(OP_PUTROOTFH);
        let mut n = 1;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            e = e.u32(OP_LOOKUP).opaque(part.as_bytes());
            n += 1;
        }
        (n, e)
    }

    /// The handle of a path.
    pub fn fh(&mut self, path: &str) -> Result<Vec<u8>, u32> {
        let (n, e) = Self::path_ops(path);
        let r = self.compound(n + 1, &e.u32(OP_GETFH).0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        Ok(Dec::new(last_body(&r)).opaque())
    }

    /// OPEN (create unchecked if `create`) of `name` in directory `dir` for read and write;
    /// returns the open stateid and the file's handle.
    pub fn open(
        &mut self,
        dir: &[u8],
        name: &str,
        owner: &[u8],
        create: bool,
    ) -> Result<(StateId, Vec<u8>), u32> {
        let e = self.open_ops(dir, name, owner, create).u32(OP_GETFH);
        let (sid, fh, _) = self.opened(e)?;
        Ok((sid, fh))
    }

    /// Sends PUTFH, OPEN and GETFH encoded in `e`: the open stateid, the handle and the
    /// attrset bitmap words of OPEN4resok.
    fn opened(&mut self, e: Enc) -> Result<(StateId, Vec<u8>, Vec<u32>), u32> {
        let r = self.compound(3, &e.0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        // The OPEN result is followed by GETFH's; walk OPEN4resok.
        let mut d = Dec::new(last_body(&r));
        let sid = StateId::dec(&mut d);
        d.fixed(4 + 16 + 4);
        let words = d.u32() as usize;
        let attrset = (0..words).map(|_| d.u32()).collect();
        assert_eq!(d.u32(), 0, "no delegation");
        assert_eq!((d.u32(), d.u32()), (OP_GETFH, NFS4_OK));
        Ok((sid, d.opaque(), attrset))
    }

    /// PUTFH `dir` and an OPEN of `name` for reading and writing (with `create`, UNCHECKED
    /// with mode 0644), for callers to put more operations after.
    pub fn open_ops(&self, dir: &[u8], name: &str, owner: &[u8], create: bool) -> Enc {
        let e = self.open_head(dir, owner);
        let e = if create {
            mode_0644(e.u32(1).u32(0))
        } else {
            e.u32(0)
        };
        e.u32(0).opaque(name.as_bytes())
    }

    /// PUTFH `dir` (or the file, for a claim by handle) and OPEN's arguments up to
    /// `openflag4`: for reading and writing, no deny.
    fn open_head(&self, dir: &[u8], owner: &[u8]) -> Enc {
        Enc::default()
            .u32(OP_PUTFH)
            .opaque(dir)
            .u32(OP_OPEN)
            .u32(0)
            .u32(3)
            .u32(0)
            .u64(self.client_id)
            .opaque(owner)
    }

    /// OPEN of `name` in `dir` with an EXCLUSIVE4_1 create (verifier `verf`, mode 0644), for
    /// reading and writing: the open stateid, the file's handle and the attrset bitmap words
    /// the server returned (which attributes it set, or used to store the verifier).
    pub fn open_exclusive(
        &mut self,
        dir: &[u8],
        name: &str,
        owner: &[u8],
        verf: [u8; 8],
    ) -> Result<(StateId, Vec<u8>, Vec<u32>), u32> {
        let e = mode_0644(self.open_head(dir, owner).u32(1).u32(3).raw(&verf));
        self.opened(e.u32(0).opaque(name.as_bytes()).u32(OP_GETFH))
    }

    /// GETATTR of FATTR4_TIME_MODIFY: seconds since the epoch.
    pub fn mtime_secs(&mut self, fh: &[u8]) -> Result<i64, u32> {
        let vals = self.getattr(fh, &[FATTR4_TIME_MODIFY])?;
        Ok(Dec::new(&vals).u64() as i64)
    }

    /// OPEN by handle (CLAIM_FH) or, with `reclaim`, CLAIM_PREVIOUS.
    pub fn open_fh(&mut self, fh: &[u8], owner: &[u8], reclaim: bool) -> Result<StateId, u32> {
        // The handle stands where OPEN by name has the directory's.
        let e = self.open_head(fh, owner).u32(0);
        let e = if reclaim { e.u32(1).u32(0) } else { e.u32(4) };
        let r = self.compound(2, &e.0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        Ok(StateId::dec(&mut Dec::new(last_body(&r))))
    }

    pub fn write(&mut self, fh: &[u8], sid: &StateId, offset: u64, data: &[u8]) -> u32 {
        let e = sid.enc(Enc::default().u32(OP_PUTFH).opaque(fh).u32(OP_WRITE));
        let e = e.u64(offset).u32(FILE_SYNC4).opaque(data);
        self.compound(2, &e.0).status
    }

    pub fn commit(&mut self, fh: &[u8]) -> u32 {
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(fh)
            .u32(OP_COMMIT)
            .u64(0)
            .u32(0);
        self.compound(2, &e.0).status
    }

    pub fn read(
        &mut self,
        fh: &[u8],
        sid: &StateId,
        offset: u64,
        count: u32,
    ) -> Result<Vec<u8>, u32> {
        let e = sid.enc(Enc::default().u32(OP_PUTFH).opaque(fh).u32(OP_READ));
        let r = self.compound(2, &e.u64(offset).u32(count).0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        let mut d = Dec::new(last_body(&r));
        d.u32();
        Ok(d.opaque())
    }

    /// LOCK (a new lock owner from an open stateid); Ok(lock stateid) or Err((status, the
    /// conflicting owner's bytes when DENIED)).
    pub fn lock(
        &mut self,
        fh: &[u8],
        open: &StateId,
        lock_owner: &[u8],
        offset: u64,
        length: u64,
        reclaim: bool,
    ) -> Result<StateId, (u32, Vec<u8>)> {
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(fh)
            .u32(OP_LOCK)
            .u32(WRITE_LT)
            .u32(u32::from(reclaim))
            .u64(offset)
            .u64(length)
            .u32(1)
            .u32(0);
        let e = open.enc(e).u32(0).u64(self.client_id).opaque(lock_owner);
        let r = self.compound(2, &e.0);
        let body = last_body(&r);
        match r.status {
            NFS4_OK => Ok(StateId::dec(&mut Dec::new(body))),
            s => Err((s, denied_owner(s, body))),
        }
    }

    /// LOCKT for a write lock; Ok(()) if free, Err((status, holder's owner bytes)).
    pub fn lockt(
        &mut self,
        fh: &[u8],
        owner: &[u8],
        offset: u64,
        length: u64,
    ) -> Result<(), (u32, Vec<u8>)> {
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(fh)
            .u32(OP_LOCKT)
            .u32(WRITE_LT)
            .u64(offset)
            .u64(length)
            .u64(self.client_id)
            .opaque(owner);
        let r = self.compound(2, &e.0);
        match r.status {
            NFS4_OK => Ok(()),
            s => Err((s, denied_owner(s, last_body(&r)))),
        }
    }

    pub fn locku(&mut self, fh: &[u8], sid: &StateId, offset: u64, length: u64) -> u32 {
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(fh)
            .u32(OP_LOCKU)
            .u32(WRITE_LT)
            .u32(0);
        self.compound(2, &sid.enc(e).u64(offset).u64(length).0)
            .status
    }

    /// CREATE of a special file (`type4` NF4BLK, NF4CHR, NF4SOCK or NF4FIFO; `rdev` is sent
    /// as specdata4 for devices) named `name` in `dir`, with `mode`; returns its handle.
    pub fn create_special(
        &mut self,
        dir: &[u8],
        name: &str,
        type4: u32,
        rdev: (u32, u32),
        mode: u32,
    ) -> Result<Vec<u8>, u32> {
        let mut e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(dir)
            .u32(OP_CREATE)
            .u32(type4);
        if matches!(type4, NF4BLK | NF4CHR) {
            e = e.u32(rdev.0).u32(rdev.1);
        }
        // createattrs: a bitmap4 with only FATTR4_MODE (word 1), then its value.
        e = e
            .opaque(name.as_bytes())
            .u32(2)
            .u32(0)
            .u32(1 << (FATTR4_MODE - 32))
            .opaque(&mode.to_be_bytes())
            .u32(OP_GETFH);
        let r = self.compound(3, &e.0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        // CREATE4resok: change_info4, then the attrset bitmap4; GETFH's result follows.
        let mut d = Dec::new(last_body(&r));
        d.fixed(4 + 8 + 8);
        let words = d.u32() as usize;
        d.fixed(4 * words);
        assert_eq!((d.u32(), d.u32()), (OP_GETFH, NFS4_OK));
        Ok(d.opaque())
    }

    /// GETATTR of the attributes numbered `attrs` (each below 64): their values' bytes.
    fn getattr(&mut self, fh: &[u8], attrs: &[u32]) -> Result<Vec<u8>, u32> {
        let mut words = [0u32; 2];
        for a in attrs {
            words[(a / 32) as usize] |= 1 << (a % 32);
        }
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(fh)
            .u32(OP_GETATTR)
            .u32(2)
            .u32(words[0])
            .u32(words[1]);
        let r = self.compound(2, &e.0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        let mut d = Dec::new(last_body(&r));
        let words = d.u32() as usize;
        d.fixed(4 * words);
        Ok(d.opaque())
    }

    /// GETATTR of FATTR4_TYPE and FATTR4_RAWDEV: (nfs_ftype4, (specdata1, specdata2)).
    pub fn type_and_rawdev(&mut self, fh: &[u8]) -> Result<(u32, (u32, u32)), u32> {
        let vals = self.getattr(fh, &[FATTR4_TYPE, FATTR4_RAWDEV])?;
        let mut v = Dec::new(&vals);
        Ok((v.u32(), (v.u32(), v.u32())))
    }

    /// PUTFH `saved`, SAVEFH, PUTFH `current`, then `op` with its encoded arguments: the shape
    /// of LINK and RENAME. Returns the last result's body.
    fn saved_and_current(&mut self, saved: &[u8], current: &[u8], op: Enc) -> Result<Vec<u8>, u32> {
        let e = Enc::default()
            .u32(OP_PUTFH)
            .opaque(saved)
            .u32(OP_SAVEFH)
            .u32(OP_PUTFH)
            .opaque(current)
            .raw(&op.0);
        let r = self.compound(4, &e.0);
        if r.status != NFS4_OK {
            return Err(r.status);
        }
        Ok(last_body(&r).to_vec())
    }

    /// LINK (RFC 8881 §18.9): `file` gets the name `name` in `dir`; returns the directory's
    /// change_info4.
    pub fn link(&mut self, file: &[u8], dir: &[u8], name: &str) -> Result<ChangeInfo, u32> {
        let op = Enc::default().u32(OP_LINK).opaque(name.as_bytes());
        let body = self.saved_and_current(file, dir, op)?;
        Ok(ChangeInfo::dec(&mut Dec::new(&body)))
    }

    /// RENAME (RFC 8881 §18.26) of `from`/`fname` to `to`/`tname`; returns the source and
    /// target directories' change_info4.
    pub fn rename(
        &mut self,
        from: &[u8],
        fname: &str,
        to: &[u8],
        tname: &str,
    ) -> Result<(ChangeInfo, ChangeInfo), u32> {
        let op = Enc::default()
            .u32(OP_RENAME)
            .opaque(fname.as_bytes())
            .opaque(tname.as_bytes());
        let body = self.saved_and_current(from, to, op)?;
        let mut d = Dec::new(&body);
        Ok((ChangeInfo::dec(&mut d), ChangeInfo::dec(&mut d)))
    }

    /// GETATTR of FATTR4_FILEID and FATTR4_NUMLINKS.
    pub fn fileid_and_numlinks(&mut self, fh: &[u8]) -> Result<(u64, u32), u32> {
        let vals = self.getattr(fh, &[FATTR4_FILEID, FATTR4_NUMLINKS])?;
        let mut v = Dec::new(&vals);
        Ok((v.u64(), v.u32()))
    }

    pub fn close(&mut self, fh: &[u8], sid: &StateId) -> u32 {
        let e = Enc::default().u32(OP_PUTFH).opaque(fh).u32(OP_CLOSE).u32(0);
        self.compound(2, &sid.enc(e).0).status
    }
}

/// The body of the last result in a reply whose earlier results all succeeded: skips the
/// SEQUENCE result and each PUTFH/PUTROOTFH/LOOKUP (which have no body).
/// A fattr4 of mode 0644, as OPEN's create attributes.
fn mode_0644(e: Enc) -> Enc {
    e.u32(2)
        .u32(0)
        .u32(1 << (FATTR4_MODE - 32))
        .opaque(&0o644u32.to_be_bytes())
}

pub fn last_body(r: &Reply) -> &[u8] {
    let mut d = Dec::new(&r.tail);
    // `parse` stopped after SEQUENCE; the ops after it are PUTFH-like (status only) until the
    // one whose body we want.
    loop {
        let rest = d.rest();
        if rest.len() < 8 {
            return rest;
        }
        let op = d.u32();
        let st = d.u32();
        let bodiless =
            matches!(op, OP_PUTFH | OP_PUTROOTFH | OP_LOOKUP | OP_SAVEFH) && st == NFS4_OK;
        if !bodiless {
            return d.rest();
        }
    }
}

/// LOCK4denied's owner bytes, when the status is DENIED.
fn denied_owner(status: u32, body: &[u8]) -> Vec<u8> {
    if status != NFS4ERR_DENIED {
        return Vec::new();
    }
    let mut d = Dec::new(body);
    d.u64();
    d.u64();
    d.u32();
    d.u64();
    d.opaque()
}
