//! A small raw NFSv3 + MOUNT client over TCP (RFC 1813, RFC 5531 record marking), for the
//! semantics libnfs's command-line tools cannot reach: exclusive create, SETATTR, COMMIT with
//! its verifier, LINK, READDIRPLUS paging. Real RPCs to the real daemon; every helper returns
//! the NFS status on failure so tests can assert on NOENT, NOTEMPTY, NOTDIR and friends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const NFS3_OK: u32 = 0;
pub const NFS3ERR_NOENT: u32 = 2;
pub const NFS3ERR_ACCES: u32 = 13;
pub const NFS3ERR_EXIST: u32 = 17;
pub const NFS3ERR_NOTDIR: u32 = 20;
pub const NFS3ERR_ISDIR: u32 = 21;
pub const NFS3ERR_INVAL: u32 = 22;
pub const NFS3ERR_NOTEMPTY: u32 = 66;

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;

/// XDR encoder.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn opaque(mut self, d: &[u8]) -> Self {
        self = self.u32(d.len() as u32);
        self.0.extend_from_slice(d);
        self.0.extend(std::iter::repeat_n(0, (4 - d.len() % 4) % 4));
        self
    }
    pub fn raw(mut self, d: &[u8]) -> Self {
        self.0.extend_from_slice(d);
        self
    }
}

/// XDR decoder over a reply body.
pub struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }
    pub fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes(self.b[self.pos..self.pos + 4].try_into().unwrap());
        self.pos += 4;
        v
    }
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    pub fn opaque(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let v = self.b[self.pos..self.pos + n].to_vec();
        self.pos += n + (4 - n % 4) % 4;
        v
    }
    /// What is left to decode.
    pub fn rest(&self) -> &'a [u8] {
        &self.b[self.pos..]
    }
    pub fn fixed(&mut self, n: usize) -> Vec<u8> {
        let v = self.b[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }
    pub fn post_op_attr(&mut self) -> Option<Fattr> {
        (self.u32() == 1).then(|| self.fattr())
    }
    pub fn wcc(&mut self) -> Option<Fattr> {
        if self.u32() == 1 {
            self.fixed(24);
        }
        self.post_op_attr()
    }
    pub fn fattr(&mut self) -> Fattr {
        let ftype = self.u32();
        let mode = self.u32();
        let nlink = self.u32();
        let uid = self.u32();
        let gid = self.u32();
        let size = self.u64();
        let _used = self.u64();
        let rdev = (self.u32(), self.u32());
        let _fsid = self.u64();
        let fileid = self.u64();
        let _atime = self.u64();
        let mtime = (self.u32(), self.u32());
        let _ctime = self.u64();
        Fattr {
            ftype,
            mode,
            nlink,
            uid,
            gid,
            size,
            fileid,
            mtime,
            rdev,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fattr {
    /// ftype3: 1 regular, 2 directory, 3 block, 4 character, 5 symlink, 6 socket, 7 FIFO.
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub fileid: u64,
    pub mtime: (u32, u32),
    /// specdata3: a device's (major, minor).
    pub rdev: (u32, u32),
}

/// What SETATTR changes; `None` leaves it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// Seconds since the epoch, set as client time.
    pub mtime: Option<u32>,
}

impl Sattr {
    fn enc(&self, mut e: Enc) -> Enc {
        for v in [self.mode, self.uid, self.gid] {
            e = match v {
                Some(v) => e.u32(1).u32(v),
                None => e.u32(0),
            };
        }
        e = match self.size {
            Some(s) => e.u32(1).u64(s),
            None => e.u32(0),
        };
        e = e.u32(0);
        match self.mtime {
            Some(t) => e.u32(2).u32(t).u32(0),
            None => e.u32(0),
        }
    }
}

pub type Fh = Vec<u8>;

pub struct Client {
    stream: TcpStream,
    xid: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connecting to the NFS port");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client {
            stream,
            xid: 1,
            uid: 0,
            gid: 0,
        }
    }

    /// Sends a raw record (already framed or not) and returns the raw reply record.
    pub fn send_record(&mut self, record: &[u8]) {
        let mut framed = (0x8000_0000u32 | record.len() as u32)
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(record);
        self.stream.write_all(&framed).unwrap();
    }

    pub fn read_record(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 4];
            self.stream.read_exact(&mut h).unwrap();
            let v = u32::from_be_bytes(h);
            let mut part = vec![0u8; (v & 0x7fff_ffff) as usize];
            self.stream.read_exact(&mut part).unwrap();
            out.extend_from_slice(&part);
            if v & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    /// One call; returns (accept_stat, result body).
    pub fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> (u32, Vec<u8>) {
        self.xid += 1;
        let xid = self.xid;
        let cred = Enc::default()
            .u32(0)
            .opaque(b"test")
            .u32(self.uid)
            .u32(self.gid)
            .u32(0);
        let rec = Enc::default()
            .u32(xid)
            .u32(0)
            .u32(2)
            .u32(prog)
            .u32(vers)
            .u32(proc_)
            .u32(1)
            .opaque(&cred.0)
            .u32(0)
            .u32(0)
            .raw(args);
        self.send_record(&rec.0);
        let reply = self.read_record();
        let mut d = Dec::new(&reply);
        assert_eq!(d.u32(), xid, "reply xid");
        assert_eq!(d.u32(), 1, "a reply");
        assert_eq!(d.u32(), 0, "call accepted (not denied)");
        d.u32();
        d.opaque();
        let stat = d.u32();
        (stat, reply[d.pos..].to_vec())
    }

    fn nfs(&mut self, proc_: u32, args: Enc) -> (u32, Vec<u8>) {
        let (stat, body) = self.call(NFS, 3, proc_, &args.0);
        assert_eq!(stat, 0, "NFS procedure {proc_} accepted");
        let status = u32::from_be_bytes(body[..4].try_into().unwrap());
        (status, body[4..].to_vec())
    }

    pub fn mount(&mut self, path: &str) -> Result<Fh, u32> {
        let (stat, body) = self.call(MOUNT, 3, 1, &Enc::default().opaque(path.as_bytes()).0);
        assert_eq!(stat, 0);
        let mut d = Dec::new(&body);
        match d.u32() {
            0 => Ok(d.opaque()),
            s => Err(s),
        }
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Result<Fattr, u32> {
        let (s, b) = self.nfs(1, Enc::default().opaque(fh));
        if s != NFS3_OK {
            return Err(s);
        }
        Ok(Dec::new(&b).fattr())
    }

    pub fn setattr(&mut self, fh: &[u8], attrs: Sattr) -> u32 {
        let e = attrs.enc(Enc::default().opaque(fh)).u32(0);
        self.nfs(2, e).0
    }

    pub fn lookup(&mut self, dir: &[u8], name: &str) -> Result<Fh, u32> {
        let (s, b) = self.nfs(3, Enc::default().opaque(dir).opaque(name.as_bytes()));
        if s != NFS3_OK {
            return Err(s);
        }
        Ok(Dec::new(&b).opaque())
    }

    pub fn readlink(&mut self, fh: &[u8]) -> Result<String, u32> {
        let (s, b) = self.nfs(5, Enc::default().opaque(fh));
        if s != NFS3_OK {
            return Err(s);
        }
        let mut d = Dec::new(&b);
        d.post_op_attr();
        Ok(String::from_utf8(d.opaque()).unwrap())
    }

    /// READ; returns (data, eof).
    pub fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> Result<(Vec<u8>, bool), u32> {
        let (s, b) = self.nfs(6, Enc::default().opaque(fh).u64(offset).u32(count));
        if s != NFS3_OK {
            return Err(s);
        }
        let mut d = Dec::new(&b);
        d.post_op_attr();
        let _count = d.u32();
        let eof = d.u32() == 1;
        Ok((d.opaque(), eof))
    }

    /// WRITE (stable: 0 unstable, 2 file sync); returns (count, committed, verifier).
    pub fn write(
        &mut self,
        fh: &[u8],
        offset: u64,
        data: &[u8],
        stable: u32,
    ) -> Result<(u32, u32, Vec<u8>), u32> {
        let e = Enc::default()
            .opaque(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(stable)
            .opaque(data);
        let (s, b) = self.nfs(7, e);
        if s != NFS3_OK {
            return Err(s);
        }
        let mut d = Dec::new(&b);
        d.wcc();
        Ok((d.u32(), d.u32(), d.fixed(8)))
    }

    fn new_object(&mut self, proc_: u32, args: Enc) -> Result<Fh, u32> {
        let (s, b) = self.nfs(proc_, args);
        if s != NFS3_OK {
            return Err(s);
        }
        let mut d = Dec::new(&b);
        assert_eq!(d.u32(), 1, "handle follows");
        Ok(d.opaque())
    }

    /// CREATE UNCHECKED (0) or GUARDED (1) with `mode`.
    pub fn create(&mut self, dir: &[u8], name: &str, how: u32, mode: u32) -> Result<Fh, u32> {
        let attrs = Sattr {
            mode: Some(mode),
            ..Sattr::default()
        };
        let e = attrs.enc(Enc::default().opaque(dir).opaque(name.as_bytes()).u32(how));
        self.new_object(8, e)
    }

    pub fn create_exclusive(&mut self, dir: &[u8], name: &str, verf: [u8; 8]) -> Result<Fh, u32> {
        let e = Enc::default()
            .opaque(dir)
            .opaque(name.as_bytes())
            .u32(2)
            .raw(&verf);
        self.new_object(8, e)
    }

    pub fn mkdir(&mut self, dir: &[u8], name: &str) -> Result<Fh, u32> {
        let attrs = Sattr {
            mode: Some(0o755),
            ..Sattr::default()
        };
        self.new_object(
            9,
            attrs.enc(Enc::default().opaque(dir).opaque(name.as_bytes())),
        )
    }

    pub fn symlink(&mut self, dir: &[u8], name: &str, target: &str) -> Result<Fh, u32> {
        let e = Sattr::default()
            .enc(Enc::default().opaque(dir).opaque(name.as_bytes()))
            .opaque(target.as_bytes());
        self.new_object(10, e)
    }

    /// MKNOD (RFC 1813 §3.3.11) of `ftype` with `mode`; `rdev` goes out for devices (3, 4).
    pub fn mknod(
        &mut self,
        dir: &[u8],
        name: &str,
        ftype: u32,
        mode: u32,
        rdev: (u32, u32),
    ) -> Result<Fh, u32> {
        let attrs = Sattr {
            mode: Some(mode),
            ..Sattr::default()
        };
        let e = Enc::default()
            .opaque(dir)
            .opaque(name.as_bytes())
            .u32(ftype);
        let e = match ftype {
            3 | 4 => attrs.enc(e).u32(rdev.0).u32(rdev.1),
            6 | 7 => attrs.enc(e),
            _ => e,
        };
        self.new_object(11, e)
    }

    pub fn remove(&mut self, dir: &[u8], name: &str) -> u32 {
        self.nfs(12, Enc::default().opaque(dir).opaque(name.as_bytes()))
            .0
    }

    pub fn rmdir(&mut self, dir: &[u8], name: &str) -> u32 {
        self.nfs(13, Enc::default().opaque(dir).opaque(name.as_bytes()))
            .0
    }

    pub fn rename(&mut self, from: &[u8], fname: &str, to: &[u8], tname: &str) -> u32 {
        let e = Enc::default()
            .opaque(from)
            .opaque(fname.as_bytes())
            .opaque(to)
            .opaque(tname.as_bytes());
        self.nfs(14, e).0
    }

    pub fn link(&mut self, file: &[u8], dir: &[u8], name: &str) -> u32 {
        let e = Enc::default()
            .opaque(file)
            .opaque(dir)
            .opaque(name.as_bytes());
        self.nfs(15, e).0
    }

    /// Every name in a directory, paging READDIRPLUS through its cookies.
    pub fn readdirplus_all(&mut self, dir: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut cookie = 0u64;
        loop {
            let e = Enc::default()
                .opaque(dir)
                .u64(cookie)
                .raw(&[0; 8])
                .u32(8192)
                .u32(32768);
            let (s, b) = self.nfs(17, e);
            assert_eq!(s, NFS3_OK, "READDIRPLUS");
            let mut d = Dec::new(&b);
            d.post_op_attr();
            d.fixed(8);
            while d.u32() == 1 {
                let _fileid = d.u64();
                names.push(String::from_utf8(d.opaque()).unwrap());
                cookie = d.u64();
                d.post_op_attr();
                if d.u32() == 1 {
                    d.opaque();
                }
            }
            if d.u32() == 1 {
                return names;
            }
        }
    }

    pub fn commit(&mut self, fh: &[u8]) -> Result<Vec<u8>, u32> {
        let (s, b) = self.nfs(21, Enc::default().opaque(fh).u64(0).u32(0));
        if s != NFS3_OK {
            return Err(s);
        }
        let mut d = Dec::new(&b);
        d.wcc();
        Ok(d.fixed(8))
    }
}
