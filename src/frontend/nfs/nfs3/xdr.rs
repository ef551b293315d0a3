//! NFSv3 result encoding and argument pieces shared by the procedures: the reply builder,
//! attribute conversions (gateway `Attr` ↔ `fattr3`, `sattr3` → `SetAttr`), handle decoding and
//! each procedure's failure shape. Pure: no I/O, no gateway calls.

use nfsserve::nfs::{
    fattr3, ftype3, nfsstat3, nfstime3, post_op_attr, pre_op_attr, sattr3, set_atime, set_gid3,
    set_mode3, set_mtime, set_size3, set_uid3, specdata3, wcc_data,
};

use crate::frontend::nfs::handles::{HandleError, Handles};
use crate::frontend::nfs::rpc::{Reader, RpcError};
use crate::gateway::files::{Attr, FileId, FileKind, SetAttr, SetTime};

const FH_MAX: usize = 64;

pub(super) use crate::frontend::nfs::rpc::Out;

/// NFSv3 statuses go out as their `u32` discriminant.
pub(super) trait Status3 {
    fn status(&mut self, s: nfsstat3) -> &mut Self;
}

impl Status3 for Out {
    fn status(&mut self, s: nfsstat3) -> &mut Self {
        self.u32(s as u32)
    }
}

pub(super) fn time(ns: i64) -> nfstime3 {
    let ns = ns.max(0);
    nfstime3 {
        seconds: u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX),
        nseconds: u32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

pub(super) fn fattr(a: &Attr) -> fattr3 {
    fattr3 {
        ftype: match a.kind {
            FileKind::File => ftype3::NF3REG,
            FileKind::Dir => ftype3::NF3DIR,
            FileKind::Symlink => ftype3::NF3LNK,
            FileKind::Fifo => ftype3::NF3FIFO,
            FileKind::Socket => ftype3::NF3SOCK,
            FileKind::BlockDev => ftype3::NF3BLK,
            FileKind::CharDev => ftype3::NF3CHR,
        },
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size.div_ceil(4096) * 4096,
        rdev: specdata3 {
            specdata1: a.rdev.0,
            specdata2: a.rdev.1,
        },
        fsid: u64::try_from(a.share.0).unwrap_or(0),
        fileid: a.id.0,
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
    }
}

pub(super) fn post(a: Option<&Attr>) -> post_op_attr {
    a.map_or(post_op_attr::Void, |a| post_op_attr::attributes(fattr(a)))
}

pub(super) fn wcc(after: Option<&Attr>) -> wcc_data {
    wcc_data {
        before: pre_op_attr::Void,
        after: post(after),
    }
}

pub(super) fn sattr(s: &sattr3) -> SetAttr {
    let t = |ns: nfstime3| i64::from(ns.seconds) * 1_000_000_000 + i64::from(ns.nseconds);
    SetAttr {
        mode: match s.mode {
            set_mode3::mode(m) => Some(m),
            set_mode3::Void => None,
        },
        uid: match s.uid {
            set_uid3::uid(u) => Some(u),
            set_uid3::Void => None,
        },
        gid: match s.gid {
            set_gid3::gid(g) => Some(g),
            set_gid3::Void => None,
        },
        size: match s.size {
            set_size3::size(v) => Some(v),
            set_size3::Void => None,
        },
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(SetTime::ServerNow),
            set_atime::SET_TO_CLIENT_TIME(c) => Some(SetTime::Client(t(c))),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(SetTime::ServerNow),
            set_mtime::SET_TO_CLIENT_TIME(c) => Some(SetTime::Client(t(c))),
        },
    }
}

/// Why a procedure produced no result of its own.
pub(super) enum Reject {
    /// Arguments we could not decode: GARBAGE_ARGS.
    Args(RpcError),
    /// A handle that is not ours or no longer valid: the status, with the procedure's
    /// failure body and no attributes.
    Handle(nfsstat3),
}

impl From<RpcError> for Reject {
    fn from(e: RpcError) -> Self {
        Self::Args(e)
    }
}

impl From<nfsstat3> for Reject {
    fn from(s: nfsstat3) -> Self {
        Self::Handle(s)
    }
}

/// The failure result of procedure `proc_` for a bad handle (RFC 1813 §3.3: each procedure's
/// resfail arm).
pub(super) fn failed_handle(proc_: u32, status: nfsstat3) -> Out {
    let mut out = Out::new();
    out.status(status);
    match proc_ {
        // GETATTR's failure carries nothing.
        1 => {}
        // SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, COMMIT: wcc_data.
        2 | 7..=13 | 21 => {
            out.xdr(&wcc(None));
        }
        // RENAME: two wcc_data.
        14 => {
            out.xdr(&wcc(None)).xdr(&wcc(None));
        }
        // LINK: the file's attributes and the directory's wcc_data.
        15 => {
            out.xdr(&post_op_attr::Void).xdr(&wcc(None));
        }
        // The rest: post_op_attr.
        _ => {
            out.xdr(&post_op_attr::Void);
        }
    }
    out
}

/// A decoded handle, or the status to answer with.
pub(super) fn handle(
    handles: &Handles,
    r: &mut Reader<'_>,
) -> Result<Result<FileId, nfsstat3>, RpcError> {
    let fh = r.opaque(FH_MAX)?;
    Ok(handles.decode(fh).map_err(|e| match e {
        HandleError::Bad => nfsstat3::NFS3ERR_BADHANDLE,
        HandleError::Stale => nfsstat3::NFS3ERR_STALE,
    }))
}
