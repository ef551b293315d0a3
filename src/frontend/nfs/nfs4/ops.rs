//! The file operations of NFSv4.1 (RFC 8881 §18): each reads its arguments, calls
//! `gateway::files` with the caller's identity and shapes the result. Every decision about
//! files (permissions, squash, durability) is the gateway's, as for NFSv3; what is NFSv4's
//! own here is the namespace's pseudo-root, stateids, and the mapping of OPEN and LOCK onto
//! the gateway's lock table.

use crate::frontend::nfs::rpc::{Out, Reader};
use crate::gateway::GatewayError;
use crate::gateway::files::data::MAX_IO_BYTES;
use crate::gateway::files::locks::{LockKind, Refused, SHARE_READ, SHARE_WRITE};
use crate::gateway::files::ops::NewFile;
use crate::gateway::files::path::MAX_NAME_BYTES;
use crate::gateway::files::{Attr, CreateMode, FileId, FileKind, SetAttr, Stability};

use super::attrs::{self, Bitmap, Obj};
use super::consts::*;
use super::state::{StateId, StateKind, StateRec};
use super::{
    Ctx, Fail, Fh, OPAQUE_LIMIT, OpResult, Ops, client, cur, cur_file, owner, read_stateid,
    status4, write_stateid,
};

/// Room kept in a READ or READDIR reply for the COMPOUND's other results.
const REPLY_OVERHEAD: u32 = 512;
const MAX_DIR_ENTRIES: usize = 1024;
/// READDIR cookies 1 and 2 are reserved (RFC 8881 §18.23.3): an entry's cookie is the
/// gateway's plus this.
const COOKIE_BASE: u64 = 2;

fn gw(e: GatewayError) -> Fail {
    status4(&e).into()
}

/// A component name (RFC 8881 §14.5): not empty, not "." or "..", valid UTF-8.
fn read_name<'r>(r: &mut Reader<'r>) -> Result<&'r [u8], Fail> {
    let name = r.opaque(MAX_NAME_BYTES * 4)?;
    if name.is_empty() {
        return Err(NFS4ERR_INVAL.into());
    }
    if std::str::from_utf8(name).is_err() {
        return Err(NFS4ERR_INVAL.into());
    }
    if name == b"." || name == b".." {
        return Err(NFS4ERR_BADNAME.into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NFS4ERR_NAMETOOLONG.into());
    }
    Ok(name)
}

fn cinfo(out: &mut Out, before: u64, after: u64) {
    out.bool(false).u64(before).u64(after);
}

/// A lock range from offset and length (length all ones: to the end of the file).
fn range(offset: u64, length: u64) -> Result<(u64, u64), u32> {
    if length == 0 {
        return Err(NFS4ERR_INVAL);
    }
    if length == u64::MAX {
        return Ok((offset, u64::MAX));
    }
    offset
        .checked_add(length)
        .map(|end| (offset, end))
        .ok_or(NFS4ERR_INVAL)
}

fn lock_kind(t: u32) -> Result<LockKind, u32> {
    match t {
        READ_LT | READW_LT => Ok(LockKind::Read),
        WRITE_LT | WRITEW_LT => Ok(LockKind::Write),
        _ => Err(NFS4ERR_INVAL),
    }
}

/// LOCK4denied: the conflicting lock and its owner.
fn denied(l: &crate::gateway::files::locks::Lock) -> Fail {
    let mut body = Out::new();
    let length = if l.end == u64::MAX {
        u64::MAX
    } else {
        l.end - l.start
    };
    body.u64(l.start)
        .u64(length)
        .u32(match l.kind {
            LockKind::Read => READ_LT,
            LockKind::Write => WRITE_LT,
        })
        .u64(l.owner.client)
        .opaque(&l.owner.owner);
    Fail {
        status: NFS4ERR_DENIED,
        body,
    }
}

/// What a file's type forbids for data operations (READ, WRITE, LOCK, COMMIT): a special
/// file's data is the client's, never ours.
fn regular(a: &Attr) -> Result<(), u32> {
    match a.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => Err(NFS4ERR_ISDIR),
        FileKind::Symlink
        | FileKind::Fifo
        | FileKind::Socket
        | FileKind::BlockDev
        | FileKind::CharDev => Err(NFS4ERR_INVAL),
    }
}

/// What LOOKUP and LOOKUPP answer when the current filehandle is not a directory.
fn not_dir(a: &Attr) -> Result<(), u32> {
    match a.kind {
        FileKind::Dir => Ok(()),
        FileKind::Symlink => Err(NFS4ERR_SYMLINK),
        FileKind::File
        | FileKind::Fifo
        | FileKind::Socket
        | FileKind::BlockDev
        | FileKind::CharDev => Err(NFS4ERR_NOTDIR),
    }
}

/// The special file CREATE makes of a type4 (RFC 8881 §18.4), `None` for the other types.
fn special_kind(type4: u32) -> Option<FileKind> {
    match type4 {
        NF4BLK => Some(FileKind::BlockDev),
        NF4CHR => Some(FileKind::CharDev),
        NF4SOCK => Some(FileKind::Socket),
        NF4FIFO => Some(FileKind::Fifo),
        _ => None,
    }
}

impl Ops<'_> {
    /// The attributes of `id`: those the COMPOUND's last operation left for the current file
    /// when it is `id`, else read from the gateway.
    pub(super) async fn attr(&self, ctx: &Ctx<'_>, id: FileId) -> Result<Attr, Fail> {
        match &ctx.cur_attr {
            Some(a) if a.id == id && ctx.cur == Some(Fh::File(id)) => Ok(a.clone()),
            _ => self.files.getattr(ctx.caller, id).await.map_err(gw),
        }
    }

    /// The change attribute of a directory (for change_info4).
    async fn change(&self, ctx: &Ctx<'_>, fh: Fh) -> u64 {
        match fh {
            Fh::Root => self.nfs.root_change,
            Fh::File(id) => self
                .files
                .getattr(ctx.caller, id)
                .await
                .map_or(0, |a| attrs::change_of(&a)),
        }
    }

    /// The current filehandle as a directory of a share we may change.
    async fn cur_dir(&self, ctx: &Ctx<'_>) -> Result<(FileId, Attr), Fail> {
        let id = cur_file(ctx, NFS4ERR_ROFS)?;
        let a = self.attr(ctx, id).await?;
        if a.kind != FileKind::Dir {
            return Err(NFS4ERR_NOTDIR.into());
        }
        Ok((id, a))
    }

    pub(super) async fn lookup(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let name = read_name(r)?;
        let found = match cur(ctx)? {
            Fh::Root => {
                let name = String::from_utf8_lossy(name);
                let e = self
                    .files
                    .export(ctx.caller, &format!("/{name}"))
                    .await
                    .map_err(gw)?;
                e.root
            }
            Fh::File(dir) => {
                let d = self.attr(ctx, dir).await?;
                not_dir(&d)?;
                let a = self.files.lookup(ctx.caller, dir, name).await.map_err(gw)?;
                let id = a.id;
                ctx.cur_attr = Some(a);
                id
            }
        };
        if ctx.cur_attr.as_ref().is_some_and(|a| a.id != found) {
            ctx.cur_attr = None;
        }
        ctx.cur = Some(Fh::File(found));
        ctx.cur_sid = None;
        Ok(Out::new())
    }

    pub(super) async fn lookupp(&self, ctx: &mut Ctx<'_>) -> OpResult {
        let id = cur_file(ctx, NFS4ERR_NOENT)?;
        let a = self.attr(ctx, id).await?;
        not_dir(&a)?;
        let parent = self.files.lookup(ctx.caller, id, b"..").await.map_err(gw)?;
        // A share's root is its own parent in the gateway; above it is the pseudo-root.
        ctx.cur = Some(if parent.id == id {
            Fh::Root
        } else {
            Fh::File(parent.id)
        });
        ctx.cur_sid = None;
        Ok(Out::new())
    }

    /// The attributes `want` asks for of the current filehandle's object.
    async fn encode_cur(&self, ctx: &Ctx<'_>, want: &Bitmap) -> Result<(Bitmap, Vec<u8>), Fail> {
        let fh = cur(ctx)?;
        let raw = self.fh_bytes(fh);
        let env = self.attr_env();
        Ok(match fh {
            Fh::Root => {
                let root = Obj::Root {
                    change: self.nfs.root_change,
                };
                attrs::encode(&env, &root, &raw, want)
            }
            Fh::File(id) => {
                let a = self.attr(ctx, id).await?;
                attrs::encode(&env, &Obj::File(&a), &raw, want)
            }
        })
    }

    pub(super) async fn getattr(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let want = Bitmap::read(r)?;
        if let Fh::File(id) = cur(ctx)? {
            let a = self.attr(ctx, id).await?;
            ctx.cur_attr = Some(a);
        }
        let (got, vals) = self.encode_cur(ctx, &want).await?;
        let mut out = Out::new();
        attrs::write_encoded(&mut out, &got, &vals);
        Ok(out)
    }

    pub(super) async fn access(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let want = r.u32()?;
        let all = ACCESS4_READ
            | ACCESS4_LOOKUP
            | ACCESS4_MODIFY
            | ACCESS4_EXTEND
            | ACCESS4_DELETE
            | ACCESS4_EXECUTE;
        if want & !all != 0 {
            return Err(NFS4ERR_INVAL.into());
        }
        let granted = match cur(ctx)? {
            Fh::Root => ACCESS4_READ | ACCESS4_LOOKUP,
            Fh::File(id) => {
                // Right after OPEN, the bits it read with the file (a kernel client's OPEN
                // compound ends with ACCESS and GETATTR).
                let (kind, rwx) = match (&ctx.cur_access, &ctx.cur_attr) {
                    (Some((of, rwx)), Some(a)) if *of == id && a.id == id => (a.kind, *rwx),
                    _ => {
                        let (a, rwx) = self.files.access(ctx.caller, id).await.map_err(gw)?;
                        let kind = a.kind;
                        // The file as just read: a kernel client's ACCESS compound ends with
                        // GETATTR, which then costs no second catalog read.
                        ctx.cur_attr = Some(a);
                        (kind, rwx)
                    }
                };
                let dir = kind == FileKind::Dir;
                let mut g = 0;
                if rwx & 4 != 0 {
                    g |= ACCESS4_READ;
                }
                if rwx & 2 != 0 {
                    g |= ACCESS4_MODIFY | ACCESS4_EXTEND | if dir { ACCESS4_DELETE } else { 0 };
                }
                if rwx & 1 != 0 {
                    g |= if dir { ACCESS4_LOOKUP } else { ACCESS4_EXECUTE };
                }
                g
            }
        };
        let mut out = Out::new();
        out.u32(want).u32(granted & want);
        Ok(out)
    }

    pub(super) async fn readlink(&self, ctx: &mut Ctx<'_>) -> OpResult {
        let id = cur_file(ctx, NFS4ERR_INVAL)?;
        let a = self.attr(ctx, id).await?;
        if a.kind != FileKind::Symlink {
            return Err(NFS4ERR_INVAL.into());
        }
        let target = self.files.readlink(ctx.caller, id).await.map_err(gw)?;
        let mut out = Out::new();
        out.opaque(target.as_bytes());
        Ok(out)
    }

    pub(super) async fn readdir(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let cookie = r.u64()?;
        let verf: [u8; 8] = r.fixed()?;
        let _dircount = r.u32()?;
        let maxcount = r.u32()?;
        let want = Bitmap::read(r)?;
        let fh = cur(ctx)?;
        if cookie == 1 || cookie == 2 {
            return Err(NFS4ERR_BAD_COOKIE.into());
        }
        // Cookies are stable whatever is added or removed: one verifier serves.
        let _ = verf;
        let budget = maxcount
            .min(ctx.max_response)
            .saturating_sub(REPLY_OVERHEAD) as usize;
        let entries: Vec<(u64, String, Attr)> = match fh {
            Fh::Root => self.export_entries(ctx, cookie).await?,
            Fh::File(dir) => {
                let max = (budget / 64).clamp(1, MAX_DIR_ENTRIES);
                let after = cookie.saturating_sub(COOKIE_BASE);
                let page = self
                    .files
                    .readdir(ctx.caller, dir, after, max)
                    .await
                    .map_err(gw)?;
                let eof = page.eof;
                let mut v: Vec<(u64, String, Attr)> = page
                    .entries
                    .into_iter()
                    .map(|e| (e.cookie + COOKIE_BASE, e.name, e.attr))
                    .collect();
                if !eof {
                    // Marks "more to come" for the loop below.
                    v.push((0, String::new(), page.dir));
                }
                v
            }
        };
        let env = self.attr_env();
        let mut body = Out::new();
        let mut eof = true;
        for (i, (c, name, a)) in entries.iter().enumerate() {
            if *c == 0 {
                eof = false;
                break;
            }
            let mut one = Out::new();
            one.bool(true).u64(*c).opaque(name.as_bytes());
            attrs::write_fattr(
                &mut one,
                &env,
                &Obj::File(a),
                &self.handles.encode(a.id),
                &want,
            );
            if body.0.len() + one.0.len() > budget {
                if i == 0 {
                    return Err(NFS4ERR_TOOSMALL.into());
                }
                eof = false;
                break;
            }
            body.0.extend_from_slice(&one.0);
        }
        let mut out = Out::new();
        out.fixed(&[0u8; 8]);
        out.0.extend_from_slice(&body.0);
        out.bool(false).bool(eof);
        Ok(out)
    }

    /// The pseudo-root's entries: one per export, cookies counting from 3.
    async fn export_entries(
        &self,
        ctx: &Ctx<'_>,
        after: u64,
    ) -> Result<Vec<(u64, String, Attr)>, Fail> {
        let names = self.files.exports().await.map_err(gw)?;
        let mut out = Vec::new();
        for (i, path) in names.iter().enumerate() {
            let c = i as u64 + COOKIE_BASE + 1;
            if c <= after {
                continue;
            }
            // An export the caller may not see (allowed clients) is left out of the list.
            if let Ok(e) = self.files.export(ctx.caller, path).await
                && let Ok(a) = self.files.getattr(ctx.caller, e.root).await
            {
                out.push((c, e.name, a));
            }
        }
        Ok(out)
    }

    pub(super) async fn secinfo(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>, op: u32) -> OpResult {
        if op == OP_SECINFO {
            let name = read_name(r)?;
            match cur(ctx)? {
                Fh::Root => {
                    let name = String::from_utf8_lossy(name);
                    self.files
                        .export(ctx.caller, &format!("/{name}"))
                        .await
                        .map_err(gw)?;
                }
                Fh::File(dir) => {
                    let d = self.attr(ctx, dir).await?;
                    if d.kind != FileKind::Dir {
                        return Err(NFS4ERR_NOTDIR.into());
                    }
                    self.files.lookup(ctx.caller, dir, name).await.map_err(gw)?;
                }
            }
        } else {
            let style = r.u32()?;
            if style > 1 {
                return Err(NFS4ERR_INVAL.into());
            }
            // SECINFO_STYLE4_PARENT of the pseudo-root: it has no parent.
            if style == 1 && cur(ctx)? == Fh::Root {
                return Err(NFS4ERR_NOENT.into());
            }
            cur(ctx)?;
        }
        // RFC 8881 §2.6.3.1.1.8: SECINFO consumes the current filehandle.
        ctx.cur = None;
        ctx.cur_sid = None;
        let mut out = Out::new();
        out.u32(2).u32(AUTH_SYS).u32(AUTH_NONE);
        Ok(out)
    }

    pub(super) async fn verify(
        &self,
        ctx: &mut Ctx<'_>,
        r: &mut Reader<'_>,
        negate: bool,
    ) -> OpResult {
        let want = Bitmap::read(r)?;
        let theirs = r.opaque(64 * 1024)?;
        if want.has(FATTR4_RDATTR_ERROR) {
            return Err(NFS4ERR_INVAL.into());
        }
        let (got, ours) = self.encode_cur(ctx, &want).await?;
        if want.bits().any(|b| !got.has(b)) {
            return Err(NFS4ERR_ATTRNOTSUPP.into());
        }
        let same = ours == theirs;
        match (negate, same) {
            (false, true) | (true, false) => Ok(Out::new()),
            (false, false) => Err(NFS4ERR_NOT_SAME.into()),
            (true, true) => Err(NFS4ERR_SAME.into()),
        }
    }

    /// Checks a stateid used for READ, WRITE or a size change of `file`.
    fn io_state(&self, ctx: &Ctx<'_>, sid: StateId, file: FileId, write: bool) -> Result<(), Fail> {
        let sid = self.resolve(ctx, sid)?;
        let want = if write { SHARE_WRITE } else { SHARE_READ };
        if sid == StateId::ANONYMOUS || sid == StateId::BYPASS {
            if self.files.locks().denied(file, None, want) {
                return Err(NFS4ERR_LOCKED.into());
            }
            return Ok(());
        }
        let client = client(ctx)?;
        let rec = self.nfs.state.get(client, &sid)?;
        if rec.file != file {
            return Err(NFS4ERR_BAD_STATEID.into());
        }
        let access = self.open_access(client, &rec)?;
        // A write-only open may still read (RFC 8881 §9.1.2 leaves it to the server; Linux
        // fills pages around partial writes that way).
        if write && access & SHARE_WRITE == 0 {
            return Err(NFS4ERR_OPENMODE.into());
        }
        Ok(())
    }

    /// [`Self::io_state`] for READ and WRITE, where a file that is not a regular one is
    /// ISDIR or INVAL before any stateid error. The type is read only when the stateid fails
    /// and no attributes are at hand: otherwise the gateway's read or write refuses other
    /// types itself, with the same errors, and a READ costs no extra catalog read.
    async fn data_state(
        &self,
        ctx: &mut Ctx<'_>,
        sid: StateId,
        id: FileId,
        write: bool,
    ) -> Result<(), Fail> {
        if let Some(a) = ctx.cur_attr.as_ref().filter(|a| a.id == id) {
            regular(a)?;
        }
        if let Err(e) = self.io_state(ctx, sid, id, write) {
            let a = self.attr(ctx, id).await?;
            regular(&a)?;
            return Err(e);
        }
        Ok(())
    }

    /// The share access of the open behind an open or lock stateid.
    fn open_access(&self, client: u64, rec: &StateRec) -> Result<u32, Fail> {
        match &rec.kind {
            StateKind::Open { access, .. } => Ok(*access),
            StateKind::Lock { open, .. } => {
                let sid = StateId {
                    seq: 0,
                    other: *open,
                };
                match self.nfs.state.get(client, &sid)?.kind {
                    StateKind::Open { access, .. } => Ok(access),
                    StateKind::Lock { .. } => Err(NFS4ERR_BAD_STATEID.into()),
                }
            }
        }
    }

    pub(super) async fn open(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let _seqid = r.u32()?;
        let access = r.u32()?;
        let deny = r.u32()?;
        let _owner_client = r.u64()?;
        let open_owner = r.opaque(OPAQUE_LIMIT)?.to_vec();
        let how = match r.u32()? {
            OPEN4_NOCREATE => None,
            OPEN4_CREATE => Some(self.read_createhow(r)?),
            _ => return Err(NFS4ERR_BADXDR.into()),
        };
        let claim = r.u32()?;
        let name = match claim {
            CLAIM_NULL => Some(read_name(r)?.to_vec()),
            CLAIM_PREVIOUS => {
                let _delegate_type = r.u32()?;
                None
            }
            CLAIM_FH => None,
            // No delegations are granted, so none can be claimed.
            CLAIM_DELEGATE_CUR | CLAIM_DELEGATE_PREV | CLAIM_DELEG_CUR_FH | CLAIM_DELEG_PREV_FH => {
                return Err(NFS4ERR_NOTSUPP.into());
            }
            _ => return Err(NFS4ERR_INVAL.into()),
        };
        let client = client(ctx)?;
        let share_access = access & OPEN4_SHARE_ACCESS_BOTH;
        let wants = OPEN4_SHARE_ACCESS_WANT_DELEG_MASK | 0x3_0000;
        if share_access == 0 || access & !(OPEN4_SHARE_ACCESS_BOTH | wants) != 0 {
            return Err(NFS4ERR_INVAL.into());
        }
        if deny > OPEN4_SHARE_DENY_BOTH {
            return Err(NFS4ERR_INVAL.into());
        }
        let locks = self.files.locks();
        if claim == CLAIM_PREVIOUS {
            self.nfs.may_reclaim(self.files, client)?;
        } else {
            self.nfs.may_take_new(self.files, client)?;
        }
        let mut attrset = Bitmap::default();
        // The caller's access bits when the gateway read them with the file.
        let mut known_access = None;
        let (file, before, after, created) = match name {
            Some(name) => {
                if cur(ctx)? == Fh::Root {
                    // The pseudo-root holds only exports, which are directories.
                    return Err(if how.is_some() {
                        NFS4ERR_ROFS
                    } else {
                        NFS4ERR_ISDIR
                    }
                    .into());
                }
                match &how {
                    None => {
                        let (dir, d) = self.cur_dir(ctx).await?;
                        let change = attrs::change_of(&d);
                        let a = self
                            .files
                            .lookup(ctx.caller, dir, &name)
                            .await
                            .map_err(gw)?;
                        (a, change, change, false)
                    }
                    Some(c) => {
                        // The gateway checks that the directory is one and may be written,
                        // and reads it before and after, in the hops of the create itself.
                        let dir = cur_file(ctx, NFS4ERR_ROFS)?;
                        let req = NewFile {
                            dir,
                            name: &name,
                            how: c.mode,
                            attrs: c.attrs.set,
                        };
                        let opened = self.files.create_open(ctx.caller, req).await.map_err(gw)?;
                        if opened.created {
                            attrset = c.attrs.bits.clone();
                        }
                        known_access = opened.access;
                        (
                            opened.attr,
                            attrs::change_of(&opened.dir_before),
                            attrs::change_of(&opened.dir_after),
                            opened.created,
                        )
                    }
                }
            }
            None => {
                let id = cur_file(ctx, NFS4ERR_ISDIR)?;
                let a = self.attr(ctx, id).await?;
                let c = attrs::change_of(&a);
                (a, c, c, false)
            }
        };
        // RFC 8881 §18.16.3: a directory is ISDIR, a symlink SYMLINK, any other non-regular
        // file WRONG_TYPE (NFSv4.0 said SYMLINK for those too).
        match file.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(NFS4ERR_ISDIR.into()),
            FileKind::Symlink => return Err(NFS4ERR_SYMLINK.into()),
            FileKind::Fifo | FileKind::Socket | FileKind::BlockDev | FileKind::CharDev => {
                return Err(NFS4ERR_WRONG_TYPE.into());
            }
        }
        if !created {
            let rwx = match known_access {
                Some(rwx) => rwx,
                None => self.files.access(ctx.caller, file.id).await.map_err(gw)?.1,
            };
            known_access = Some(rwx);
            let owner_ok = file.uid == ctx.caller.uid;
            if share_access & SHARE_READ != 0 && rwx & 4 == 0 && !owner_ok
                || share_access & SHARE_WRITE != 0 && rwx & 2 == 0
            {
                return Err(NFS4ERR_ACCESS.into());
            }
        }
        // Listed in the catalog before it holds any state, so that after a restart it may
        // reclaim; the guard is held until the state exists.
        let recorded = self
            .nfs
            .record_client(self.files, client)
            .await
            .map_err(gw)?;
        let who = owner(client, &open_owner);
        let existing = self.nfs.state.find_open(client, &open_owner, file.id);
        let (all_access, all_deny) = match &existing {
            Some((
                _,
                StateRec {
                    kind:
                        StateKind::Open {
                            access: a, deny: d, ..
                        },
                    ..
                },
            )) => (a | share_access, d | deny),
            _ => (share_access, deny),
        };
        locks
            .reserve(file.id, &who, all_access, all_deny)
            .map_err(|_| Fail::from(NFS4ERR_SHARE_DENIED))?;
        let sid = match existing {
            Some((other, _)) => self
                .nfs
                .state
                .update(&other, |rec| {
                    rec.kind = StateKind::Open {
                        owner: open_owner.clone(),
                        access: all_access,
                        deny: all_deny,
                    }
                })
                .ok_or(NFS4ERR_BAD_STATEID)?,
            None => self.nfs.state.add_state(StateRec {
                client,
                file: file.id,
                seq: 1,
                kind: StateKind::Open {
                    owner: open_owner,
                    access: all_access,
                    deny: all_deny,
                },
            }),
        };
        drop(recorded);
        ctx.cur = Some(Fh::File(file.id));
        ctx.cur_sid = Some(sid);
        ctx.cur_access = known_access.map(|rwx| (file.id, rwx));
        ctx.cur_attr = Some(file);
        let mut out = Out::new();
        write_stateid(&mut out, &sid);
        cinfo(&mut out, before, after);
        out.u32(OPEN4_RESULT_LOCKTYPE_POSIX);
        attrset.write(&mut out);
        // No delegation is ever granted; a client that said what it wants is told why not.
        match access & OPEN4_SHARE_ACCESS_WANT_DELEG_MASK {
            0 => {
                out.u32(OPEN_DELEGATE_NONE);
            }
            OPEN4_SHARE_ACCESS_WANT_NO_DELEG => {
                out.u32(OPEN_DELEGATE_NONE_EXT).u32(WND4_NOT_WANTED);
            }
            _ => {
                out.u32(OPEN_DELEGATE_NONE_EXT)
                    .u32(WND4_RESOURCE)
                    .bool(false);
            }
        }
        Ok(out)
    }

    fn read_createhow(&self, r: &mut Reader<'_>) -> Result<Create, Fail> {
        let domain = &self.nfs.ids;
        Ok(match r.u32()? {
            UNCHECKED4 => Create {
                mode: CreateMode::Unchecked,
                attrs: attrs::read_settable(r, domain)?,
            },
            GUARDED4 => Create {
                mode: CreateMode::Guarded,
                attrs: attrs::read_settable(r, domain)?,
            },
            EXCLUSIVE4 => Create {
                mode: CreateMode::Exclusive(r.fixed()?),
                attrs: attrs::Decoded::default(),
            },
            EXCLUSIVE4_1 => {
                let verf = r.fixed()?;
                let attrs = attrs::read_settable(r, domain)?;
                // Times are not in suppattr_exclcreat: an exclusive create may not set them
                // (RFC 8881 §18.16.3). The verifier is kept apart from them (schema 13).
                if attrs.set.atime.is_some() || attrs.set.mtime.is_some() {
                    return Err(NFS4ERR_INVAL.into());
                }
                Create {
                    mode: CreateMode::Exclusive(verf),
                    attrs,
                }
            }
            _ => return Err(NFS4ERR_BADXDR.into()),
        })
    }

    pub(super) async fn open_downgrade(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let sid = self.resolve(ctx, read_stateid(r)?)?;
        let _seqid = r.u32()?;
        let access = r.u32()? & OPEN4_SHARE_ACCESS_BOTH;
        let deny = r.u32()?;
        let client = client(ctx)?;
        let file = cur_file(ctx, NFS4ERR_ISDIR)?;
        let rec = self.nfs.state.get(client, &sid)?;
        let StateKind::Open {
            owner: open_owner,
            access: had_access,
            deny: had_deny,
        } = rec.kind
        else {
            return Err(NFS4ERR_BAD_STATEID.into());
        };
        if rec.file != file {
            return Err(NFS4ERR_BAD_STATEID.into());
        }
        if access == 0 || access & !had_access != 0 || deny & !had_deny != 0 {
            return Err(NFS4ERR_INVAL.into());
        }
        self.files
            .locks()
            .reserve(file, &owner(client, &open_owner), access, deny)
            .map_err(|_| Fail::from(NFS4ERR_SHARE_DENIED))?;
        let sid = self
            .nfs
            .state
            .update(&sid.other, |rec| {
                rec.kind = StateKind::Open {
                    owner: open_owner.clone(),
                    access,
                    deny,
                }
            })
            .ok_or(NFS4ERR_BAD_STATEID)?;
        ctx.cur_sid = Some(sid);
        let mut out = Out::new();
        write_stateid(&mut out, &sid);
        Ok(out)
    }

    pub(super) async fn close(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let _seqid = r.u32()?;
        let sid = self.resolve(ctx, read_stateid(r)?)?;
        let client = client(ctx)?;
        let file = cur_file(ctx, NFS4ERR_ISDIR)?;
        let rec = self.nfs.state.get(client, &sid)?;
        let StateKind::Open {
            owner: open_owner, ..
        } = &rec.kind
        else {
            return Err(NFS4ERR_BAD_STATEID.into());
        };
        if rec.file != file {
            return Err(NFS4ERR_BAD_STATEID.into());
        }
        let lock_states = self.nfs.state.locks_of_open(&sid.other);
        for (_, l) in &lock_states {
            if let StateKind::Lock { owner: lo, .. } = &l.kind
                && self.files.locks().holds(file, &owner(client, lo))
            {
                return Err(NFS4ERR_LOCKS_HELD.into());
            }
        }
        for (other, _) in lock_states {
            self.nfs.state.remove(&other);
        }
        self.nfs.state.remove(&sid.other);
        self.files
            .locks()
            .unreserve(file, &owner(client, open_owner));
        self.nfs.note_released();
        ctx.cur_sid = None;
        let mut out = Out::new();
        write_stateid(&mut out, &StateId::INVALID);
        Ok(out)
    }

    pub(super) async fn read(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let sid = read_stateid(r)?;
        let offset = r.u64()?;
        let count = r.u32()?;
        let id = cur_file(ctx, NFS4ERR_ISDIR)?;
        self.data_state(ctx, sid, id, false).await?;
        let count = count
            .min(MAX_IO_BYTES)
            .min(ctx.max_response.saturating_sub(REPLY_OVERHEAD));
        let (data, eof, _) = self
            .files
            .read(ctx.caller, id, offset, count)
            .await
            .map_err(gw)?;
        let mut out = Out::new();
        out.bool(eof).opaque(&data);
        Ok(out)
    }

    pub(super) async fn write(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let sid = read_stateid(r)?;
        let offset = r.u64()?;
        let stable = match r.u32()? {
            UNSTABLE4 => Stability::Unstable,
            DATA_SYNC4 => Stability::DataSync,
            FILE_SYNC4 => Stability::FileSync,
            _ => return Err(NFS4ERR_BADXDR.into()),
        };
        let data = r.opaque(MAX_IO_BYTES as usize)?;
        let id = cur_file(ctx, NFS4ERR_ISDIR)?;
        self.data_state(ctx, sid, id, true).await?;
        let (committed, after) = self
            .files
            .write(ctx.caller, id, offset, data, stable)
            .await
            .map_err(gw)?;
        ctx.cur_attr = Some(after);
        let mut out = Out::new();
        out.u32(data.len() as u32)
            .u32(match committed {
                Stability::Unstable => UNSTABLE4,
                Stability::DataSync => DATA_SYNC4,
                Stability::FileSync => FILE_SYNC4,
            })
            .fixed(&self.files.write_verifier());
        Ok(out)
    }

    pub(super) async fn commit(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let offset = r.u64()?;
        let count = r.u32()?;
        if offset.checked_add(u64::from(count)).is_none() {
            return Err(NFS4ERR_INVAL.into());
        }
        let id = cur_file(ctx, NFS4ERR_ISDIR)?;
        let a = self.attr(ctx, id).await?;
        regular(&a)?;
        self.files.commit(ctx.caller, id).await.map_err(gw)?;
        let mut out = Out::new();
        out.fixed(&self.files.write_verifier());
        Ok(out)
    }

    pub(super) async fn create(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let kind = r.u32()?;
        let mut rdev = (0, 0);
        let target = match kind {
            NF4LNK => Some(r.opaque(8192)?.to_vec()),
            NF4BLK | NF4CHR => {
                rdev = (r.u32()?, r.u32()?);
                None
            }
            _ => None,
        };
        let name = read_name(r)?.to_vec();
        let attrs = attrs::read_settable(r, &self.nfs.ids)?;
        let (dir, d) = self.cur_dir(ctx).await?;
        let before = attrs::change_of(&d);
        let made = match kind {
            NF4DIR => self
                .files
                .mkdir(ctx.caller, dir, &name, attrs.set)
                .await
                .map_err(gw)?,
            NF4LNK => {
                let target = target.unwrap_or_default();
                self.files
                    .symlink(ctx.caller, dir, &name, &target)
                    .await
                    .map_err(gw)?
            }
            // Regular files are made by OPEN.
            _ => {
                let special = special_kind(kind).ok_or(NFS4ERR_BADTYPE)?;
                let only_mode = SetAttr {
                    mode: attrs.set.mode,
                    ..SetAttr::default()
                };
                self.files
                    .mknod(ctx.caller, dir, &name, special, only_mode, rdev)
                    .await
                    .map_err(gw)?
            }
        };
        // What MKDIR/SYMLINK/MKNOD did not take (owner, group, times; a symlink's mode).
        let rest = SetAttr {
            mode: if kind == NF4LNK { attrs.set.mode } else { None },
            size: None,
            ..attrs.set
        };
        if rest != SetAttr::default() {
            self.files
                .setattr(ctx.caller, made.id, rest)
                .await
                .map_err(gw)?;
        }
        let after = self.change(ctx, Fh::File(dir)).await;
        ctx.cur = Some(Fh::File(made.id));
        ctx.cur_sid = None;
        let mut out = Out::new();
        cinfo(&mut out, before, after);
        attrs.bits.write(&mut out);
        Ok(out)
    }

    pub(super) async fn remove(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let name = read_name(r)?;
        let (dir, d) = self.cur_dir(ctx).await?;
        let before = attrs::change_of(&d);
        match self.files.remove(ctx.caller, dir, name).await {
            Err(GatewayError::IsDirectory(_)) => {
                self.files.rmdir(ctx.caller, dir, name).await.map_err(gw)?
            }
            other => other.map_err(gw)?,
        }
        let after = self.change(ctx, Fh::File(dir)).await;
        let mut out = Out::new();
        cinfo(&mut out, before, after);
        Ok(out)
    }

    pub(super) async fn rename(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let from = read_name(r)?;
        let to = read_name(r)?;
        let src = ctx.saved.ok_or(NFS4ERR_NOFILEHANDLE)?;
        let dst = cur(ctx)?;
        let (Fh::File(src), Fh::File(dst)) = (src, dst) else {
            return Err(NFS4ERR_XDEV.into());
        };
        let s = self.attr(ctx, src).await?;
        let t = self.attr(ctx, dst).await?;
        if s.kind != FileKind::Dir || t.kind != FileKind::Dir {
            return Err(NFS4ERR_NOTDIR.into());
        }
        if s.share != t.share {
            return Err(NFS4ERR_XDEV.into());
        }
        self.files
            .rename(ctx.caller, src, from, dst, to)
            .await
            .map_err(gw)?;
        let s_after = self.change(ctx, Fh::File(src)).await;
        let t_after = self.change(ctx, Fh::File(dst)).await;
        let mut out = Out::new();
        cinfo(&mut out, attrs::change_of(&s), s_after);
        cinfo(&mut out, attrs::change_of(&t), t_after);
        Ok(out)
    }

    pub(super) async fn link(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let name = read_name(r)?;
        let file = match ctx.saved.ok_or(NFS4ERR_NOFILEHANDLE)? {
            Fh::File(id) => id,
            Fh::Root => return Err(NFS4ERR_ISDIR.into()),
        };
        let (dir, d) = self.cur_dir(ctx).await?;
        let a = self.attr(ctx, file).await?;
        if a.kind == FileKind::Dir {
            return Err(NFS4ERR_ISDIR.into());
        }
        if a.share != d.share {
            return Err(NFS4ERR_XDEV.into());
        }
        let before = attrs::change_of(&d);
        self.files
            .link(ctx.caller, file, dir, name)
            .await
            .map_err(gw)?;
        let after = self.change(ctx, Fh::File(dir)).await;
        let mut out = Out::new();
        cinfo(&mut out, before, after);
        Ok(out)
    }

    pub(super) async fn setattr(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        // SETATTR's result carries the attributes set, empty on failure.
        let fail = |status: u32| {
            let mut body = Out::new();
            body.u32(0);
            Fail { status, body }
        };
        let sid = read_stateid(r).map_err(|_| fail(NFS4ERR_BADXDR))?;
        let attrs = attrs::read_settable(r, &self.nfs.ids).map_err(fail)?;
        let id = match cur(ctx).map_err(fail)? {
            Fh::File(id) => id,
            Fh::Root => return Err(fail(NFS4ERR_ROFS)),
        };
        if attrs.set.size.is_some() {
            let a = self.attr(ctx, id).await.map_err(|f| fail(f.status))?;
            regular(&a).map_err(fail)?;
            self.io_state(ctx, sid, id, true)
                .map_err(|f| fail(f.status))?;
        }
        let after = self
            .files
            .setattr(ctx.caller, id, attrs.set)
            .await
            .map_err(|e| fail(status4(&e)))?;
        ctx.cur_attr = Some(after);
        let mut out = Out::new();
        attrs.bits.write(&mut out);
        Ok(out)
    }

    pub(super) async fn lock(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let kind = r.u32()?;
        let reclaim = r.bool()?;
        let offset = r.u64()?;
        let length = r.u64()?;
        let new_owner = r.bool()?;
        let locker = if new_owner {
            let _open_seqid = r.u32()?;
            let open = read_stateid(r)?;
            let _lock_seqid = r.u32()?;
            // In 4.1 the session names the client; the owner's clientid field is ignored
            // (RFC 8881 §18.10.3).
            let _owner_client = r.u64()?;
            let lock_owner = r.opaque(OPAQUE_LIMIT)?.to_vec();
            Locker::New { open, lock_owner }
        } else {
            let sid = read_stateid(r)?;
            let _lock_seqid = r.u32()?;
            Locker::Existing(sid)
        };
        let kind = lock_kind(kind)?;
        let (start, end) = range(offset, length)?;
        let client = client(ctx)?;
        let file = cur_file(ctx, NFS4ERR_ISDIR)?;
        let a = self.attr(ctx, file).await?;
        regular(&a)?;
        if reclaim {
            self.nfs.may_reclaim(self.files, client)?;
        } else {
            self.nfs.may_take_new(self.files, client)?;
        }
        let (lock_owner, open_rec, open_other, existing) = match locker {
            Locker::New { open, lock_owner } => {
                let open = self.resolve(ctx, open)?;
                let rec = self.nfs.state.get(client, &open)?;
                if !matches!(rec.kind, StateKind::Open { .. }) {
                    return Err(NFS4ERR_BAD_STATEID.into());
                }
                let existing = self
                    .nfs
                    .state
                    .find_lock(client, &lock_owner, file)
                    .map(|(o, _)| o);
                (lock_owner, rec, open.other, existing)
            }
            Locker::Existing(sid) => {
                let sid = self.resolve(ctx, sid)?;
                let rec = self.nfs.state.get(client, &sid)?;
                let StateKind::Lock { owner: lo, open } = rec.kind.clone() else {
                    return Err(NFS4ERR_BAD_STATEID.into());
                };
                (lo, rec, open, Some(sid.other))
            }
        };
        if open_rec.file != file {
            return Err(NFS4ERR_BAD_STATEID.into());
        }
        let access = self.open_access(client, &open_rec)?;
        let needed = match kind {
            LockKind::Read => SHARE_READ,
            LockKind::Write => SHARE_WRITE,
        };
        if access & needed == 0 {
            return Err(NFS4ERR_OPENMODE.into());
        }
        let who = owner(client, &lock_owner);
        match self
            .files
            .locks()
            .lock(file, &who, kind, start, end, reclaim)
        {
            Ok(()) => {}
            Err(Refused::Conflict(l)) => return Err(denied(&l)),
            Err(Refused::Grace) => return Err(NFS4ERR_GRACE.into()),
            Err(Refused::ShareDenied) => return Err(NFS4ERR_SHARE_DENIED.into()),
        }
        let sid = match existing {
            Some(other) => self
                .nfs
                .state
                .update(&other, |_| {})
                .ok_or(NFS4ERR_BAD_STATEID)?,
            None => self.nfs.state.add_state(StateRec {
                client,
                file,
                seq: 1,
                kind: StateKind::Lock {
                    owner: lock_owner,
                    open: open_other,
                },
            }),
        };
        ctx.cur_sid = Some(sid);
        let mut out = Out::new();
        write_stateid(&mut out, &sid);
        Ok(out)
    }

    pub(super) async fn lockt(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let kind = lock_kind(r.u32()?)?;
        let offset = r.u64()?;
        let length = r.u64()?;
        // As in LOCK, the session names the client.
        let _owner_client = r.u64()?;
        let lock_owner = r.opaque(OPAQUE_LIMIT)?.to_vec();
        let (start, end) = range(offset, length)?;
        let client = client(ctx)?;
        let file = cur_file(ctx, NFS4ERR_ISDIR)?;
        let a = self.attr(ctx, file).await?;
        regular(&a)?;
        match self
            .files
            .locks()
            .test(file, &owner(client, &lock_owner), kind, start, end)
        {
            Some(l) => Err(denied(&l)),
            None => Ok(Out::new()),
        }
    }

    pub(super) async fn locku(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let _kind = lock_kind(r.u32()?)?;
        let _seqid = r.u32()?;
        let sid = read_stateid(r)?;
        let offset = r.u64()?;
        let length = r.u64()?;
        let (start, end) = range(offset, length)?;
        let client = client(ctx)?;
        let file = cur_file(ctx, NFS4ERR_ISDIR)?;
        let sid = self.resolve(ctx, sid)?;
        let rec = self.nfs.state.get(client, &sid)?;
        let StateKind::Lock { owner: lo, .. } = &rec.kind else {
            return Err(NFS4ERR_BAD_STATEID.into());
        };
        if rec.file != file {
            return Err(NFS4ERR_BAD_STATEID.into());
        }
        self.files
            .locks()
            .unlock(file, &owner(client, lo), start, end);
        let sid = self
            .nfs
            .state
            .update(&sid.other, |_| {})
            .ok_or(NFS4ERR_BAD_STATEID)?;
        ctx.cur_sid = Some(sid);
        let mut out = Out::new();
        write_stateid(&mut out, &sid);
        Ok(out)
    }
}

/// OPEN's createhow4.
struct Create {
    mode: CreateMode,
    attrs: attrs::Decoded,
}

/// LOCK's locker4.
enum Locker {
    New { open: StateId, lock_owner: Vec<u8> },
    Existing(StateId),
}
