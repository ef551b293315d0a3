//! fattr4 (RFC 8881 §5): the attributes this server reports, encoded in bit order, and the
//! settable ones decoded into the gateway's `SetAttr`. Pure: no I/O, no gateway calls.
//!
//! Owners and groups are mapped by `idmap.rs`.

use crate::frontend::nfs::rpc::{Out, Reader, RpcError};
use crate::gateway::files::data::MAX_IO_BYTES;
use crate::gateway::files::path::MAX_NAME_BYTES;
use crate::gateway::files::{Attr, FileKind, SetAttr, SetTime};

use super::consts::*;
use super::idmap::IdMap;

/// Attributes GETATTR answers (write-only ones excluded).
const READABLE: &[u32] = &[
    FATTR4_SUPPORTED_ATTRS,
    FATTR4_TYPE,
    FATTR4_FH_EXPIRE_TYPE,
    FATTR4_CHANGE,
    FATTR4_SIZE,
    FATTR4_LINK_SUPPORT,
    FATTR4_SYMLINK_SUPPORT,
    FATTR4_NAMED_ATTR,
    FATTR4_FSID,
    FATTR4_UNIQUE_HANDLES,
    FATTR4_LEASE_TIME,
    FATTR4_RDATTR_ERROR,
    FATTR4_CANSETTIME,
    FATTR4_CASE_INSENSITIVE,
    FATTR4_CASE_PRESERVING,
    FATTR4_CHOWN_RESTRICTED,
    FATTR4_FILEHANDLE,
    FATTR4_FILEID,
    FATTR4_FILES_AVAIL,
    FATTR4_FILES_FREE,
    FATTR4_FILES_TOTAL,
    FATTR4_HOMOGENEOUS,
    FATTR4_MAXFILESIZE,
    FATTR4_MAXLINK,
    FATTR4_MAXNAME,
    FATTR4_MAXREAD,
    FATTR4_MAXWRITE,
    FATTR4_MODE,
    FATTR4_NO_TRUNC,
    FATTR4_NUMLINKS,
    FATTR4_OWNER,
    FATTR4_OWNER_GROUP,
    FATTR4_RAWDEV,
    FATTR4_SPACE_AVAIL,
    FATTR4_SPACE_FREE,
    FATTR4_SPACE_TOTAL,
    FATTR4_SPACE_USED,
    FATTR4_TIME_ACCESS,
    FATTR4_TIME_DELTA,
    FATTR4_TIME_METADATA,
    FATTR4_TIME_MODIFY,
    FATTR4_MOUNTED_ON_FILEID,
    FATTR4_SUPPATTR_EXCLCREAT,
];

/// Attributes SETATTR and OPEN/CREATE's createattrs accept.
const WRITABLE: &[u32] = &[
    FATTR4_SIZE,
    FATTR4_MODE,
    FATTR4_OWNER,
    FATTR4_OWNER_GROUP,
    FATTR4_TIME_ACCESS_SET,
    FATTR4_TIME_MODIFY_SET,
];

/// What EXCLUSIVE4_1 creates may set along with the verifier (times hold the verifier).
const EXCLCREAT: &[u32] = &[FATTR4_SIZE, FATTR4_MODE, FATTR4_OWNER, FATTR4_OWNER_GROUP];

/// A bucket has no fixed size: the same stable values NFSv3's FSSTAT gives.
const SPACE_BYTES: u64 = 1 << 50;
const SPACE_FILES: u64 = 1 << 32;
/// S3's largest object.
const MAX_FILE_SIZE: u64 = 5 << 40;

/// A set of attribute numbers as bitmap4 words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitmap(pub Vec<u32>);

impl Bitmap {
    pub fn of(bits: &[u32]) -> Self {
        let mut b = Self::default();
        for &n in bits {
            b.set(n);
        }
        b
    }

    pub fn set(&mut self, n: u32) {
        let w = (n / 32) as usize;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (n % 32);
    }

    pub fn has(&self, n: u32) -> bool {
        self.0
            .get((n / 32) as usize)
            .is_some_and(|w| w & (1 << (n % 32)) != 0)
    }

    /// Set bits in ascending order.
    pub fn bits(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, w)| {
            (0..32)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u32 * 32 + b)
        })
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, RpcError> {
        let n = r.u32()? as usize;
        // No attribute number we know needs more than 3 words; a few more are read and
        // ignored, a count past that is garbage.
        if n > 8 {
            return Err(RpcError::Malformed {
                xid: None,
                reason: format!("bitmap of {n} words"),
            });
        }
        (0..n).map(|_| r.u32()).collect::<Result<_, _>>().map(Self)
    }

    pub fn write(&self, out: &mut Out) {
        let mut words = self.0.clone();
        while words.last() == Some(&0) {
            words.pop();
        }
        out.u32(words.len() as u32);
        for w in words {
            out.u32(w);
        }
    }
}

/// What is being described: the pseudo-root (the list of exports) or a share's file.
pub enum Obj<'a> {
    Root { change: u64 },
    File(&'a Attr),
}

/// Server-wide values that go into attributes.
pub struct AttrEnv<'a> {
    pub lease_secs: u32,
    pub ids: &'a IdMap,
}

fn time(out: &mut Out, ns: i64) {
    out.u64(ns.div_euclid(1_000_000_000) as u64)
        .u32(ns.rem_euclid(1_000_000_000) as u32);
}

/// Encodes the attributes of `obj` that `want` asks for and we have; returns the bitmap of
/// what was encoded and the values.
pub fn encode(env: &AttrEnv<'_>, obj: &Obj<'_>, fh: &[u8], want: &Bitmap) -> (Bitmap, Vec<u8>) {
    let mut got = Bitmap::default();
    let mut v = Out::new();
    let supported = Bitmap::of(READABLE);
    for n in want.bits() {
        if !supported.has(n) {
            continue;
        }
        got.set(n);
        match n {
            FATTR4_SUPPORTED_ATTRS => {
                let mut all = Bitmap::of(READABLE);
                for &w in WRITABLE {
                    all.set(w);
                }
                all.write(&mut v);
            }
            FATTR4_TYPE => {
                v.u32(match obj {
                    Obj::Root { .. } => NF4DIR,
                    Obj::File(a) => match a.kind {
                        FileKind::File => NF4REG,
                        FileKind::Dir => NF4DIR,
                        FileKind::Symlink => NF4LNK,
                        FileKind::Fifo => NF4FIFO,
                        FileKind::Socket => NF4SOCK,
                        FileKind::BlockDev => NF4BLK,
                        FileKind::CharDev => NF4CHR,
                    },
                });
            }
            // FH4_PERSISTENT: handles never expire.
            FATTR4_FH_EXPIRE_TYPE => {
                v.u32(0);
            }
            FATTR4_CHANGE => {
                v.u64(match obj {
                    Obj::Root { change } => *change,
                    Obj::File(a) => change_of(a),
                });
            }
            FATTR4_SIZE => {
                v.u64(match obj {
                    Obj::Root { .. } => 4096,
                    Obj::File(a) => a.size,
                });
            }
            // No named attributes.
            FATTR4_NAMED_ATTR | FATTR4_CASE_INSENSITIVE => {
                v.bool(false);
            }
            FATTR4_LINK_SUPPORT
            | FATTR4_SYMLINK_SUPPORT
            | FATTR4_UNIQUE_HANDLES
            | FATTR4_CANSETTIME
            | FATTR4_CASE_PRESERVING
            | FATTR4_CHOWN_RESTRICTED
            | FATTR4_HOMOGENEOUS
            | FATTR4_NO_TRUNC => {
                v.bool(true);
            }
            FATTR4_FSID => {
                // Each share is its own file system (its catalog id); the pseudo-root is
                // another, so clients see the crossing into a share.
                let major = match obj {
                    Obj::Root { .. } => 0,
                    Obj::File(a) => u64::try_from(a.share.0).unwrap_or(0),
                };
                v.u64(major).u64(match obj {
                    Obj::Root { .. } => 1,
                    Obj::File(_) => 0,
                });
            }
            FATTR4_LEASE_TIME => {
                v.u32(env.lease_secs);
            }
            FATTR4_RDATTR_ERROR => {
                v.u32(NFS4_OK);
            }
            FATTR4_FILEHANDLE => {
                v.opaque(fh);
            }
            FATTR4_FILEID | FATTR4_MOUNTED_ON_FILEID => {
                v.u64(fileid(obj));
            }
            FATTR4_FILES_AVAIL | FATTR4_FILES_FREE | FATTR4_FILES_TOTAL => {
                v.u64(SPACE_FILES);
            }
            FATTR4_MAXFILESIZE => {
                v.u64(MAX_FILE_SIZE);
            }
            FATTR4_MAXLINK => {
                v.u32(crate::gateway::files::MAX_LINKS);
            }
            FATTR4_MAXNAME => {
                v.u32(MAX_NAME_BYTES as u32);
            }
            FATTR4_MAXREAD | FATTR4_MAXWRITE => {
                v.u64(u64::from(MAX_IO_BYTES));
            }
            FATTR4_MODE => {
                v.u32(match obj {
                    Obj::Root { .. } => 0o555,
                    Obj::File(a) => a.mode & 0o7777,
                });
            }
            FATTR4_NUMLINKS => {
                v.u32(match obj {
                    Obj::Root { .. } => 2,
                    Obj::File(a) => a.nlink,
                });
            }
            FATTR4_OWNER | FATTR4_OWNER_GROUP => {
                let id = match obj {
                    Obj::Root { .. } => 0,
                    Obj::File(a) if n == FATTR4_OWNER => a.uid,
                    Obj::File(a) => a.gid,
                };
                v.opaque(env.ids.to_string(id, n == FATTR4_OWNER_GROUP).as_bytes());
            }
            FATTR4_RAWDEV => {
                let (major, minor) = match obj {
                    Obj::Root { .. } => (0, 0),
                    Obj::File(a) => a.rdev,
                };
                v.u32(major).u32(minor);
            }
            FATTR4_SPACE_AVAIL | FATTR4_SPACE_FREE | FATTR4_SPACE_TOTAL => {
                v.u64(SPACE_BYTES);
            }
            FATTR4_SPACE_USED => {
                v.u64(match obj {
                    Obj::Root { .. } => 4096,
                    Obj::File(a) => a.size.div_ceil(4096) * 4096,
                });
            }
            FATTR4_TIME_ACCESS => time(
                &mut v,
                match obj {
                    Obj::Root { change } => *change as i64,
                    Obj::File(a) => a.atime_ns,
                },
            ),
            FATTR4_TIME_MODIFY => time(&mut v, mtime(obj)),
            FATTR4_TIME_METADATA => time(
                &mut v,
                match obj {
                    Obj::Root { change } => *change as i64,
                    Obj::File(a) => a.ctime_ns,
                },
            ),
            FATTR4_TIME_DELTA => time(&mut v, 1),
            FATTR4_SUPPATTR_EXCLCREAT => Bitmap::of(EXCLCREAT).write(&mut v),
            _ => {}
        }
    }
    (got, v.0)
}

fn fileid(obj: &Obj<'_>) -> u64 {
    match obj {
        // Outside every share's id space (catalog ids start at 1 and count up).
        Obj::Root { .. } => u64::MAX,
        Obj::File(a) => a.id.0,
    }
}

fn mtime(obj: &Obj<'_>) -> i64 {
    match obj {
        Obj::Root { change } => *change as i64,
        Obj::File(a) => a.mtime_ns,
    }
}

/// The change attribute: the inode's ctime, which the gateway advances on every change of
/// data or metadata, so a client's cache is right whenever it differs.
pub fn change_of(a: &Attr) -> u64 {
    a.ctime_ns.max(0) as u64
}

/// Encodes a whole fattr4 (bitmap + attrlist opaque).
pub fn write_fattr(out: &mut Out, env: &AttrEnv<'_>, obj: &Obj<'_>, fh: &[u8], want: &Bitmap) {
    let (got, vals) = encode(env, obj, fh, want);
    write_encoded(out, &got, &vals);
}

/// Writes what `encode` returned as a fattr4.
pub fn write_encoded(out: &mut Out, got: &Bitmap, vals: &[u8]) {
    got.write(out);
    out.opaque(vals);
}

/// Settable attributes decoded from a fattr4.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub set: SetAttr,
    pub bits: Bitmap,
}

/// Reads a fattr4 and decodes what may be set. Unknown or unsupported attributes are
/// ATTRNOTSUPP, read-only ones INVAL, malformed values BADXDR.
pub fn read_settable(r: &mut Reader<'_>, ids: &IdMap) -> Result<Decoded, u32> {
    let bits = Bitmap::read(r).map_err(|_| NFS4ERR_BADXDR)?;
    let vals = r.opaque(64 * 1024).map_err(|_| NFS4ERR_BADXDR)?;
    decode_settable(&bits, vals, ids)
}

pub fn decode_settable(bits: &Bitmap, vals: &[u8], ids: &IdMap) -> Result<Decoded, u32> {
    let writable = Bitmap::of(WRITABLE);
    let readable = Bitmap::of(READABLE);
    for n in bits.bits() {
        if !writable.has(n) {
            return Err(if readable.has(n) {
                NFS4ERR_INVAL
            } else {
                NFS4ERR_ATTRNOTSUPP
            });
        }
    }
    let mut r = Reader::new(vals, 0);
    let mut set = SetAttr::default();
    let bad = |_| NFS4ERR_BADXDR;
    for n in bits.bits() {
        match n {
            FATTR4_SIZE => set.size = Some(r.u64().map_err(bad)?),
            FATTR4_MODE => {
                let m = r.u32().map_err(bad)?;
                if m > 0o7777 {
                    return Err(NFS4ERR_INVAL);
                }
                set.mode = Some(m);
            }
            FATTR4_OWNER => set.uid = Some(ids.parse(r.opaque(1024).map_err(bad)?, false)?),
            FATTR4_OWNER_GROUP => set.gid = Some(ids.parse(r.opaque(1024).map_err(bad)?, true)?),
            FATTR4_TIME_ACCESS_SET | FATTR4_TIME_MODIFY_SET => {
                let t = match r.u32().map_err(bad)? {
                    0 => SetTime::ServerNow,
                    1 => {
                        let secs = r.u64().map_err(bad)? as i64;
                        let nsecs = r.u32().map_err(bad)?;
                        if nsecs >= 1_000_000_000 {
                            return Err(NFS4ERR_INVAL);
                        }
                        SetTime::Client(
                            secs.saturating_mul(1_000_000_000)
                                .saturating_add(i64::from(nsecs)),
                        )
                    }
                    _ => return Err(NFS4ERR_BADXDR),
                };
                if n == FATTR4_TIME_ACCESS_SET {
                    set.atime = Some(t);
                } else {
                    set.mtime = Some(t);
                }
            }
            _ => return Err(NFS4ERR_ATTRNOTSUPP),
        }
    }
    if r.remaining() != 0 {
        return Err(NFS4ERR_BADXDR);
    }
    Ok(Decoded {
        set,
        bits: bits.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::files::{FileId, ShareId};

    fn attr() -> Attr {
        Attr {
            id: FileId(9),
            share: ShareId(2),
            kind: FileKind::File,
            mode: 0o640,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: 5000,
            mtime_ns: 1_500_000_000,
            ctime_ns: 2_000_000_001,
            rdev: (0, 0),
            atime_ns: 1_500_000_000,
        }
    }

    #[test]
    fn bitmaps_round_trip_in_order() {
        let b = Bitmap::of(&[FATTR4_MODE, FATTR4_TYPE, FATTR4_SUPPATTR_EXCLCREAT]);
        assert_eq!(
            b.bits().collect::<Vec<_>>(),
            vec![FATTR4_TYPE, FATTR4_MODE, FATTR4_SUPPATTR_EXCLCREAT]
        );
        let mut out = Out::new();
        b.write(&mut out);
        let mut r = Reader::new(&out.0, 0);
        assert_eq!(Bitmap::read(&mut r).unwrap(), b);
    }

    #[test]
    fn attributes_are_encoded_in_bit_order_with_their_sizes() {
        let env = AttrEnv {
            lease_secs: 90,
            ids: &IdMap::numeric(),
        };
        let a = attr();
        let want = Bitmap::of(&[FATTR4_OWNER, FATTR4_SIZE, FATTR4_TYPE, 200]);
        let (got, vals) = encode(&env, &Obj::File(&a), b"fh", &want);
        assert_eq!(
            got.bits().collect::<Vec<_>>(),
            vec![FATTR4_TYPE, FATTR4_SIZE, FATTR4_OWNER]
        );
        let mut r = Reader::new(&vals, 0);
        assert_eq!(r.u32().unwrap(), NF4REG);
        assert_eq!(r.u64().unwrap(), 5000);
        assert_eq!(r.opaque(100).unwrap(), b"1000");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn special_files_report_their_type_and_device_numbers() {
        let env = AttrEnv {
            lease_secs: 90,
            ids: &IdMap::numeric(),
        };
        let cases = [
            (FileKind::Fifo, NF4FIFO, (0, 0)),
            (FileKind::Socket, NF4SOCK, (0, 0)),
            (FileKind::BlockDev, NF4BLK, (8, 1)),
            (FileKind::CharDev, NF4CHR, (4095, 70_000)),
        ];
        for (kind, want_type, rdev) in cases {
            let a = Attr {
                kind,
                rdev,
                size: 0,
                ..attr()
            };
            let want = Bitmap::of(&[FATTR4_TYPE, FATTR4_RAWDEV]);
            let (_, vals) = encode(&env, &Obj::File(&a), b"fh", &want);
            let mut r = Reader::new(&vals, 0);
            assert_eq!(r.u32().unwrap(), want_type, "{kind:?}");
            assert_eq!((r.u32().unwrap(), r.u32().unwrap()), rdev, "{kind:?}");
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn settable_attributes_decode_and_others_are_refused() {
        let mut vals = Out::new();
        vals.u64(7)
            .u32(0o600)
            .opaque(b"42@example.org")
            .u32(1)
            .u64(10)
            .u32(5);
        let bits = Bitmap::of(&[
            FATTR4_SIZE,
            FATTR4_MODE,
            FATTR4_OWNER,
            FATTR4_TIME_MODIFY_SET,
        ]);
        let domain = IdMap::with_domain("example.org", "", "");
        let d = decode_settable(&bits, &vals.0, &domain).unwrap();
        assert_eq!(d.set.size, Some(7));
        assert_eq!(d.set.mode, Some(0o600));
        assert_eq!(d.set.uid, Some(42));
        assert_eq!(d.set.mtime, Some(SetTime::Client(10_000_000_005)));
        assert_eq!(
            decode_settable(&bits, &vals.0, &IdMap::numeric()),
            Err(NFS4ERR_BADOWNER)
        );
        assert_eq!(
            decode_settable(
                &Bitmap::of(&[FATTR4_TYPE]),
                &[0, 0, 0, 1],
                &IdMap::numeric()
            ),
            Err(NFS4ERR_INVAL)
        );
        assert_eq!(
            decode_settable(&Bitmap::of(&[FATTR4_ACL_FOR_TEST]), &[], &IdMap::numeric()),
            Err(NFS4ERR_ATTRNOTSUPP)
        );
        assert_eq!(
            decode_settable(&Bitmap::of(&[FATTR4_SIZE]), &[0, 0], &IdMap::numeric()),
            Err(NFS4ERR_BADXDR)
        );
    }

    const FATTR4_ACL_FOR_TEST: u32 = 12;
}
