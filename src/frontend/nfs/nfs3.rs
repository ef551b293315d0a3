//! NFSv3 (RFC 1813): all 22 procedures, decoded with the bounded reader from `rpc.rs`, called
//! into `gateway::files` with the caller's identity, and encoded with nfsserve's wire types.
//!
//! Owns argument decoding and result shapes only; every decision (permissions, squash,
//! durability) is the gateway's. Invariant: an argument we cannot decode is GARBAGE_ARGS, a
//! gateway failure is a status from `status.rs`, and every result carries the attributes RFC
//! 1813 asks for where we have them.

use nfsserve::nfs::{fsinfo3, nfs_fh3, nfsstat3, nfstime3, post_op_attr, post_op_fh3, sattr3};

use crate::frontend::nfs::handles::Handles;
use crate::frontend::nfs::rpc::{Reader, RpcError};
use crate::frontend::nfs::status::nfsstat;
use crate::gateway::GatewayError;
use crate::gateway::files::MAX_LINKS;
use crate::gateway::files::data::MAX_IO_BYTES;
use crate::gateway::files::ops::NewFile;
use crate::gateway::files::path::MAX_NAME_BYTES;
use crate::gateway::files::{
    Attr, Caller, CreateMode, FileId, FileKind, Files, SetAttr, Stability,
};

mod xdr;

use xdr::{Out, Reject, Status3, failed_handle, fattr, handle, post, sattr, time, wcc};

pub const PROGRAM: u32 = 100_003;
pub const VERSION: u32 = 3;
const PATH_MAX: usize = 4096;
/// A READDIR page never asks the catalog for more entries than this.
const MAX_DIR_ENTRIES: usize = 4096;

/// What a procedure produced: a result body, or arguments we could not decode.
pub enum Outcome {
    Reply(Vec<u8>),
    Garbage(String),
    NoProc,
}

/// The NFS program bound to one gateway.
pub struct Nfs3<'a> {
    pub files: &'a Files,
    pub handles: &'a Handles,
}

impl Nfs3<'_> {
    fn fh(&self, id: FileId) -> nfs_fh3 {
        nfs_fh3 {
            data: self.handles.encode(id),
        }
    }

    async fn attr_of(&self, caller: &Caller, id: FileId) -> Option<Attr> {
        self.files.getattr(caller, id).await.ok()
    }

    pub async fn dispatch(&self, proc_: u32, caller: &Caller, args: &[u8]) -> Outcome {
        let mut r = Reader::new(args, 0);
        let result = match proc_ {
            0 => Ok(Out::new()),
            1 => self.getattr(caller, &mut r).await,
            2 => self.setattr(caller, &mut r).await,
            3 => self.lookup(caller, &mut r).await,
            4 => self.access(caller, &mut r).await,
            5 => self.readlink(caller, &mut r).await,
            6 => self.read(caller, &mut r).await,
            7 => self.write(caller, &mut r).await,
            8 => self.create(caller, &mut r).await,
            9 => self.mkdir(caller, &mut r).await,
            10 => self.symlink(caller, &mut r).await,
            11 => self.mknod(caller, &mut r).await,
            12 => self.remove(caller, &mut r, false).await,
            13 => self.remove(caller, &mut r, true).await,
            14 => self.rename(caller, &mut r).await,
            15 => self.link(caller, &mut r).await,
            16 => self.readdir(caller, &mut r, false).await,
            17 => self.readdir(caller, &mut r, true).await,
            18..=20 => self.fs_query(caller, &mut r, proc_).await,
            21 => self.commit(caller, &mut r).await,
            _ => return Outcome::NoProc,
        };
        match result {
            Ok(out) => Outcome::Reply(out.0),
            Err(Reject::Args(RpcError::Incomplete)) => {
                Outcome::Garbage("truncated arguments".into())
            }
            Err(Reject::Args(RpcError::Malformed { reason, .. })) => Outcome::Garbage(reason),
            Err(Reject::Handle(status)) => Outcome::Reply(failed_handle(proc_, status).0),
        }
    }

    async fn getattr(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let mut out = Out::new();
        let id = handle(self.handles, r)??;
        match self.files.getattr(caller, id).await {
            Ok(a) => out.status(nfsstat3::NFS3_OK).xdr(&fattr(&a)),
            Err(e) => out.status(nfsstat(&e)),
        };
        Ok(out)
    }

    async fn setattr(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let s: sattr3 = r.xdr()?;
        let guard = if r.bool()? {
            Some(r.xdr::<nfstime3>()?)
        } else {
            None
        };
        let mut out = Out::new();
        let id = match id {
            Ok(id) => id,
            Err(st) => {
                out.status(st).xdr(&wcc(None));
                return Ok(out);
            }
        };
        if let Some(g) = guard {
            // RFC 1813 §3.3.2: the change applies only if ctime still matches.
            if let Some(a) = self.attr_of(caller, id).await {
                let now = time(a.ctime_ns);
                if (now.seconds, now.nseconds) != (g.seconds, g.nseconds) {
                    out.status(nfsstat3::NFS3ERR_NOT_SYNC).xdr(&wcc(Some(&a)));
                    return Ok(out);
                }
            }
        }
        match self.files.setattr(caller, id, sattr(&s)).await {
            Ok(a) => out.status(nfsstat3::NFS3_OK).xdr(&wcc(Some(&a))),
            Err(e) => {
                let a = self.attr_of(caller, id).await;
                out.status(nfsstat(&e)).xdr(&wcc(a.as_ref()))
            }
        };
        Ok(out)
    }

    fn name<'r>(r: &mut Reader<'r>) -> Result<&'r [u8], RpcError> {
        // Longer names are read (up to a bound) so the gateway can answer NAMETOOLONG.
        r.opaque(MAX_NAME_BYTES * 4)
    }

    async fn lookup(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let mut out = Out::new();
        let dir = dir?;
        // The directory's attributes come from the lookup's own hop (none when it could not
        // be read; they are optional in the reply).
        let (found, d) = self.files.lookup_in(caller, dir, name).await;
        match found {
            Ok(a) => {
                out.status(nfsstat3::NFS3_OK)
                    .xdr(&self.fh(a.id))
                    .xdr(&post(Some(&a)))
                    .xdr(&post(d.as_ref()));
            }
            Err(e) => {
                out.status(nfsstat(&e)).xdr(&post(d.as_ref()));
            }
        }
        Ok(out)
    }

    async fn access(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let want = r.u32()?;
        let mut out = Out::new();
        let id = id?;
        match self.files.access(caller, id).await {
            Ok((a, rwx)) => {
                // ACCESS3 bits (RFC 1813 §3.3.4): READ 1, LOOKUP 2, MODIFY 4, EXTEND 8,
                // DELETE 0x10, EXECUTE 0x20.
                let mut granted = 0;
                if rwx & 4 != 0 {
                    granted |= 0x01;
                }
                if rwx & 2 != 0 {
                    granted |= 0x04 | 0x08 | if a.kind == FileKind::Dir { 0x10 } else { 0 };
                }
                if rwx & 1 != 0 {
                    granted |= if a.kind == FileKind::Dir { 0x02 } else { 0x20 };
                }
                out.status(nfsstat3::NFS3_OK)
                    .xdr(&post(Some(&a)))
                    .u32(granted & want);
            }
            Err(e) => {
                out.status(nfsstat(&e)).xdr(&post_op_attr::Void);
            }
        }
        Ok(out)
    }

    async fn readlink(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let mut out = Out::new();
        let id = id?;
        let a = self.attr_of(caller, id).await;
        match self.files.readlink(caller, id).await {
            Ok(t) => out
                .status(nfsstat3::NFS3_OK)
                .xdr(&post(a.as_ref()))
                .opaque(t.as_bytes()),
            Err(e) => out.status(nfsstat(&e)).xdr(&post(a.as_ref())),
        };
        Ok(out)
    }

    async fn read(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let offset = r.u64()?;
        let count = r.u32()?;
        let mut out = Out::new();
        let id = id?;
        match self.files.read(caller, id, offset, count).await {
            Ok((data, eof, a)) => {
                out.0.reserve(data.len() + 128);
                out.status(nfsstat3::NFS3_OK)
                    .xdr(&post(Some(&a)))
                    .u32(u32::try_from(data.len()).unwrap_or(0))
                    .bool(eof)
                    .opaque(&data);
            }
            Err(e) => {
                let a = self.attr_of(caller, id).await;
                out.status(nfsstat(&e)).xdr(&post(a.as_ref()));
            }
        }
        Ok(out)
    }

    async fn write(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let offset = r.u64()?;
        let count = r.u32()?;
        let stable = match r.u32()? {
            0 => Stability::Unstable,
            1 => Stability::DataSync,
            2 => Stability::FileSync,
            other => {
                return Err(Reject::Args(RpcError::Malformed {
                    xid: None,
                    reason: format!("stable_how {other}"),
                }));
            }
        };
        let data = r.opaque(MAX_IO_BYTES as usize)?;
        let mut out = Out::new();
        let id = id?;
        // RFC 1813 §3.3.7: count and the data length should agree; the data is what we have.
        let data = &data[..data.len().min(count as usize)];
        match self.files.write(caller, id, offset, data, stable).await {
            Ok((committed, a)) => {
                out.status(nfsstat3::NFS3_OK)
                    .xdr(&wcc(Some(&a)))
                    .u32(u32::try_from(data.len()).unwrap_or(0))
                    .u32(committed as u32)
                    .xdr(&self.files.write_verifier());
            }
            Err(e) => {
                let a = self.attr_of(caller, id).await;
                out.status(nfsstat(&e)).xdr(&wcc(a.as_ref()));
            }
        }
        Ok(out)
    }

    /// The shared result shape of CREATE, MKDIR, SYMLINK and MKNOD.
    async fn created(
        &self,
        caller: &Caller,
        dir: FileId,
        result: Result<Attr, GatewayError>,
    ) -> Out {
        let mut out = Out::new();
        let d = self.attr_of(caller, dir).await;
        match result {
            Ok(a) => out
                .status(nfsstat3::NFS3_OK)
                .xdr(&post_op_fh3::handle(self.fh(a.id)))
                .xdr(&post(Some(&a)))
                .xdr(&wcc(d.as_ref())),
            Err(e) => out.status(nfsstat(&e)).xdr(&wcc(d.as_ref())),
        };
        out
    }

    async fn create(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let (how, attrs) = match r.u32()? {
            0 => (CreateMode::Unchecked, sattr(&r.xdr::<sattr3>()?)),
            1 => (CreateMode::Guarded, sattr(&r.xdr::<sattr3>()?)),
            2 => (CreateMode::Exclusive(r.fixed::<8>()?), SetAttr::default()),
            other => {
                return Err(Reject::Args(RpcError::Malformed {
                    xid: None,
                    reason: format!("createmode3 {other}"),
                }));
            }
        };
        let dir = dir?;
        let req = NewFile {
            dir,
            name,
            how,
            attrs,
        };
        match self.files.create_open(caller, req).await {
            // The directory as the create's own hop left it: no GETATTR of it after.
            Ok(opened) => {
                let mut out = Out::new();
                out.status(nfsstat3::NFS3_OK)
                    .xdr(&post_op_fh3::handle(self.fh(opened.attr.id)))
                    .xdr(&post(Some(&opened.attr)))
                    .xdr(&wcc(Some(&opened.dir_after)));
                Ok(out)
            }
            Err(e) => Ok(self.created(caller, dir, Err(e)).await),
        }
    }

    async fn mkdir(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let attrs = sattr(&r.xdr::<sattr3>()?);
        let dir = dir?;
        let result = self.files.mkdir(caller, dir, name, attrs).await;
        Ok(self.created(caller, dir, result).await)
    }

    async fn symlink(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let attrs = sattr(&r.xdr::<sattr3>()?);
        let target = r.opaque(PATH_MAX)?;
        let dir = dir?;
        let mut result = self.files.symlink(caller, dir, name, target).await;
        if let Ok(a) = &result
            && (attrs.uid.is_some() || attrs.gid.is_some())
        {
            let owner = SetAttr {
                uid: attrs.uid,
                gid: attrs.gid,
                ..SetAttr::default()
            };
            result = self.files.setattr(caller, a.id, owner).await;
        }
        Ok(self.created(caller, dir, result).await)
    }

    /// MKNOD (RFC 1813 §3.3.11): devices carry attributes and specdata3, FIFOs and sockets
    /// attributes only; any other type is NFS3ERR_BADTYPE.
    async fn mknod(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let kind = match r.u32()? {
            3 => Some(FileKind::BlockDev),
            4 => Some(FileKind::CharDev),
            6 => Some(FileKind::Socket),
            7 => Some(FileKind::Fifo),
            // Regular files, directories and symlinks have their own procedures; mknoddata3's
            // arm for them (and for anything else) is void.
            _ => None,
        };
        let (attrs, rdev) = match kind {
            Some(FileKind::BlockDev | FileKind::CharDev) => {
                let attrs = sattr(&r.xdr::<sattr3>()?);
                (attrs, (r.u32()?, r.u32()?))
            }
            Some(_) => (sattr(&r.xdr::<sattr3>()?), (0, 0)),
            None => (SetAttr::default(), (0, 0)),
        };
        let dir = dir?;
        let Some(kind) = kind else {
            let d = self.attr_of(caller, dir).await;
            let mut out = Out::new();
            out.status(nfsstat3::NFS3ERR_BADTYPE).xdr(&wcc(d.as_ref()));
            return Ok(out);
        };
        let result = self.files.mknod(caller, dir, name, kind, attrs, rdev).await;
        Ok(self.created(caller, dir, result).await)
    }

    async fn remove(
        &self,
        caller: &Caller,
        r: &mut Reader<'_>,
        dir_only: bool,
    ) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let dir = dir?;
        let result = if dir_only {
            self.files.rmdir(caller, dir, name).await
        } else {
            self.files.remove(caller, dir, name).await
        };
        let d = self.attr_of(caller, dir).await;
        let mut out = Out::new();
        match result {
            Ok(()) => out.status(nfsstat3::NFS3_OK),
            Err(e) => out.status(nfsstat(&e)),
        }
        .xdr(&wcc(d.as_ref()));
        Ok(out)
    }

    async fn rename(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let from = handle(self.handles, r)?;
        let from_name = Self::name(r)?;
        let to = handle(self.handles, r)?;
        let to_name = Self::name(r)?;
        let mut out = Out::new();
        let (from, to) = (from?, to?);
        let result = self
            .files
            .rename(caller, from, from_name, to, to_name)
            .await;
        let fa = self.attr_of(caller, from).await;
        let ta = self.attr_of(caller, to).await;
        match result {
            Ok(()) => out.status(nfsstat3::NFS3_OK),
            Err(e) => out.status(nfsstat(&e)),
        }
        .xdr(&wcc(fa.as_ref()))
        .xdr(&wcc(ta.as_ref()));
        Ok(out)
    }

    async fn link(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let file = handle(self.handles, r)?;
        let dir = handle(self.handles, r)?;
        let name = Self::name(r)?;
        let mut out = Out::new();
        let (file, dir) = (file?, dir?);
        let status = match self.files.link(caller, file, dir, name).await {
            Ok(_) => nfsstat3::NFS3_OK,
            Err(e) => nfsstat(&e),
        };
        let fa = self.attr_of(caller, file).await;
        let da = self.attr_of(caller, dir).await;
        out.status(status)
            .xdr(&post(fa.as_ref()))
            .xdr(&wcc(da.as_ref()));
        Ok(out)
    }

    async fn readdir(
        &self,
        caller: &Caller,
        r: &mut Reader<'_>,
        plus: bool,
    ) -> Result<Out, Reject> {
        let dir = handle(self.handles, r)?;
        let cookie = r.u64()?;
        let _verf: [u8; 8] = r.fixed()?;
        let dircount = r.u32()?;
        let maxcount = if plus { r.u32()? } else { dircount };
        let mut out = Out::new();
        let dir = dir?;
        // Room for the entries: the reply's fixed part is well under 200 bytes.
        let budget = usize::try_from(maxcount).unwrap_or(0).saturating_sub(200);
        let per_entry_min = if plus { 140 } else { 28 };
        let want = (budget / per_entry_min).clamp(1, MAX_DIR_ENTRIES);
        let page = match self.files.readdir(caller, dir, cookie, want).await {
            Ok(p) => p,
            Err(e) => {
                let d = self.attr_of(caller, dir).await;
                out.status(nfsstat(&e)).xdr(&post(d.as_ref()));
                return Ok(out);
            }
        };
        let mut body = Out::new();
        let mut all = true;
        for (i, e) in page.entries.iter().enumerate() {
            let mut one = Out::new();
            one.bool(true)
                .u64(e.attr.id.0)
                .opaque(e.name.as_bytes())
                .u64(e.cookie);
            if plus {
                one.xdr(&post(Some(&e.attr)))
                    .xdr(&post_op_fh3::handle(self.fh(e.attr.id)));
            }
            if body.0.len() + one.0.len() > budget && i > 0 {
                all = false;
                break;
            }
            if body.0.len() + one.0.len() > budget {
                // Not even one entry fits the client's buffer.
                out.status(nfsstat3::NFS3ERR_TOOSMALL)
                    .xdr(&post(Some(&page.dir)));
                return Ok(out);
            }
            body.0.extend_from_slice(&one.0);
        }
        out.status(nfsstat3::NFS3_OK)
            .xdr(&post(Some(&page.dir)))
            .xdr(&[0u8; 8]);
        out.0.extend_from_slice(&body.0);
        out.bool(false).bool(all && page.eof);
        Ok(out)
    }

    /// FSSTAT (18), FSINFO (19) and PATHCONF (20): the file's attributes, then fixed values.
    async fn fs_query(
        &self,
        caller: &Caller,
        r: &mut Reader<'_>,
        proc_: u32,
    ) -> Result<Out, Reject> {
        let id = handle(self.handles, r)??;
        let mut out = Out::new();
        let a = match self.files.getattr(caller, id).await {
            Ok(a) => a,
            Err(e) => {
                out.status(nfsstat(&e)).xdr(&post_op_attr::Void);
                return Ok(out);
            }
        };
        out.status(nfsstat3::NFS3_OK);
        match proc_ {
            18 => {
                // A bucket has no fixed size: 1 PiB free and 2^32 files, stable values that
                // keep `df` and clients' space checks happy.
                let (bytes, files) = (1u64 << 50, 1u64 << 32);
                out.xdr(&post(Some(&a)));
                for v in [bytes, bytes, bytes, files, files, files] {
                    out.u64(v);
                }
                out.u32(0);
            }
            19 => {
                out.xdr(&fsinfo3 {
                    obj_attributes: post(Some(&a)),
                    rtmax: MAX_IO_BYTES,
                    rtpref: MAX_IO_BYTES,
                    rtmult: 4096,
                    wtmax: MAX_IO_BYTES,
                    wtpref: MAX_IO_BYTES,
                    wtmult: 4096,
                    dtpref: 64 * 1024,
                    maxfilesize: i64::MAX as u64,
                    time_delta: nfstime3 {
                        seconds: 0,
                        nseconds: 1,
                    },
                    // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME.
                    properties: 0x0001 | 0x0002 | 0x0008 | 0x0010,
                });
            }
            _ => {
                // linkmax, name_max, no_trunc, chown_restricted, case_insensitive false,
                // case_preserving.
                out.xdr(&post(Some(&a)))
                    .u32(MAX_LINKS)
                    .u32(MAX_NAME_BYTES as u32)
                    .bool(true)
                    .bool(true)
                    .bool(false)
                    .bool(true);
            }
        }
        Ok(out)
    }

    async fn commit(&self, caller: &Caller, r: &mut Reader<'_>) -> Result<Out, Reject> {
        let id = handle(self.handles, r)?;
        let _offset = r.u64()?;
        let _count = r.u32()?;
        let mut out = Out::new();
        let id = id?;
        match self.files.commit(caller, id).await {
            Ok(a) => out
                .status(nfsstat3::NFS3_OK)
                .xdr(&wcc(Some(&a)))
                .xdr(&self.files.write_verifier()),
            Err(e) => out.status(nfsstat(&e)).xdr(&wcc(None)),
        };
        Ok(out)
    }
}
