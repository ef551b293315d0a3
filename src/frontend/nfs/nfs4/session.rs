//! The session and client operations of NFSv4.1 (RFC 8881 §18.35-§18.51): EXCHANGE_ID,
//! CREATE_SESSION, DESTROY_SESSION, DESTROY_CLIENTID, BIND_CONN_TO_SESSION,
//! BACKCHANNEL_CTL, RECLAIM_COMPLETE, TEST_STATEID and FREE_STATEID. There is no back
//! channel: CREATE_SESSION never grants one, so no callbacks are ever sent.

use crate::frontend::nfs::rpc::{Out, Reader, RpcError};

use super::consts::*;
use super::state::{ChannelAttrs, MAX_CACHED_REPLY, MAX_SLOTS, SessionId, StateKind};
use super::{Ctx, Fail, OpResult, Ops, client, read_stateid};

/// The largest COMPOUND request and reply this server takes: a 1 MiB WRITE or READ and its
/// headers, well under the RPC layer's record limit.
const MAX_MESSAGE: u32 = (1 << 20) + 64 * 1024;
const MAX_SESSION_OPS: u32 = 64;
/// Below this no COMPOUND with a SEQUENCE fits.
const MIN_MESSAGE: u32 = 128;
const CLIENT_FLAGS: u32 = EXCHGID4_FLAG_SUPP_MOVED_REFER
    | EXCHGID4_FLAG_SUPP_MOVED_MIGR
    | EXCHGID4_FLAG_BIND_PRINC_STATEID
    | EXCHGID4_FLAG_MASK_PNFS
    | EXCHGID4_FLAG_UPD_CONFIRMED_REC_A;

fn read_channel(r: &mut Reader<'_>) -> Result<ChannelAttrs, RpcError> {
    let attrs = ChannelAttrs {
        header_pad: r.u32()?,
        max_request: r.u32()?,
        max_response: r.u32()?,
        max_response_cached: r.u32()?,
        max_ops: r.u32()?,
        max_requests: r.u32()?,
    };
    let ird = r.u32()?;
    if ird > 1 {
        return Err(RpcError::Incomplete);
    }
    for _ in 0..ird {
        r.u32()?;
    }
    Ok(attrs)
}

fn write_channel(out: &mut Out, c: &ChannelAttrs) {
    out.u32(c.header_pad)
        .u32(c.max_request)
        .u32(c.max_response)
        .u32(c.max_response_cached)
        .u32(c.max_ops)
        .u32(c.max_requests)
        .u32(0);
}

/// Skips callback_sec_parms4<> (we never call back, so they are not kept).
fn skip_cb_sec(r: &mut Reader<'_>) -> Result<(), RpcError> {
    let n = r.u32()?;
    if n > 16 {
        return Err(RpcError::Incomplete);
    }
    for _ in 0..n {
        match r.u32()? {
            AUTH_NONE => {}
            AUTH_SYS => {
                r.u32()?;
                r.opaque(255)?;
                r.u32()?;
                r.u32()?;
                let gids = r.u32()?;
                if gids > 16 {
                    return Err(RpcError::Incomplete);
                }
                for _ in 0..gids {
                    r.u32()?;
                }
            }
            // RPCSEC_GSS: service, then the two handles.
            6 => {
                r.u32()?;
                r.opaque(1024)?;
                r.opaque(1024)?;
            }
            _ => return Err(RpcError::Incomplete),
        }
    }
    Ok(())
}

fn skip_bitmap(r: &mut Reader<'_>) -> Result<(), RpcError> {
    super::attrs::Bitmap::read(r).map(|_| ())
}

impl Ops<'_> {
    pub(super) fn exchange_id(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let verifier: [u8; 8] = r.fixed()?;
        let owner = r.opaque(super::OPAQUE_LIMIT)?.to_vec();
        let flags = r.u32()?;
        let protect = r.u32()?;
        match protect {
            SP4_NONE => {}
            SP4_MACH_CRED => {
                skip_bitmap(r)?;
                skip_bitmap(r)?;
            }
            SP4_SSV => {
                skip_bitmap(r)?;
                skip_bitmap(r)?;
                for _ in 0..2 {
                    let n = r.u32()?;
                    for _ in 0..n.min(64) {
                        r.opaque(1024)?;
                    }
                }
                r.u32()?;
                r.u32()?;
            }
            _ => return Err(NFS4ERR_INVAL.into()),
        }
        let impls = r.u32()?;
        if impls > 1 {
            return Err(NFS4ERR_BADXDR.into());
        }
        for _ in 0..impls {
            r.opaque(super::OPAQUE_LIMIT)?;
            r.opaque(super::OPAQUE_LIMIT)?;
            r.u64()?;
            r.u32()?;
        }
        if flags & !CLIENT_FLAGS != 0 {
            return Err(NFS4ERR_INVAL.into());
        }
        if protect == SP4_SSV {
            // SSV needs RPCSEC_GSS, which is not offered.
            return Err(NFS4ERR_ENCR_ALG_UNSUPP.into());
        }
        let update = flags & EXCHGID4_FLAG_UPD_CONFIRMED_REC_A != 0;
        let x = self
            .nfs
            .state
            .exchange_id(&owner, verifier, ctx.caller.uid, update)?;
        let mut rflags = EXCHGID4_FLAG_USE_NON_PNFS;
        if x.confirmed {
            rflags |= EXCHGID4_FLAG_CONFIRMED_R;
        }
        let major = format!("tidegate-{:016x}", self.files.handle_generation());
        let mut out = Out::new();
        out.u64(x.client).u32(x.seq).u32(rflags);
        // Machine-credential protection is answered with none: AUTH_SYS cannot prove a
        // machine, and the reply tells the client which protection is in force.
        out.u32(SP4_NONE);
        out.u64(0).opaque(major.as_bytes());
        out.opaque(major.as_bytes());
        out.u32(1)
            .opaque(b"tidegate.dev")
            .opaque(concat!("tidegate ", env!("CARGO_PKG_VERSION")).as_bytes())
            .u64(0)
            .u32(0);
        Ok(out)
    }

    pub(super) fn create_session(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let clientid = r.u64()?;
        let seq = r.u32()?;
        let flags = r.u32()?;
        let fore = read_channel(r)?;
        let back = read_channel(r)?;
        let _cb_program = r.u32()?;
        skip_cb_sec(r)?;
        if let Some(cached) = self
            .nfs
            .state
            .create_session_check(clientid, seq, ctx.caller.uid)?
        {
            let mut out = Out::new();
            out.0 = cached;
            return Ok(out);
        }
        let known = CREATE_SESSION4_FLAG_PERSIST
            | CREATE_SESSION4_FLAG_CONN_BACK_CHAN
            | CREATE_SESSION4_FLAG_CONN_RDMA;
        if flags & !known != 0 {
            return Err(NFS4ERR_INVAL.into());
        }
        // A channel on which no request or reply could ever fit (RFC 8881 §18.36.3).
        let too_small = |c: &ChannelAttrs| {
            c.max_request < MIN_MESSAGE || c.max_response < MIN_MESSAGE || c.max_requests == 0
        };
        if too_small(&fore) || too_small(&back) {
            return Err(NFS4ERR_TOOSMALL.into());
        }
        let agreed = ChannelAttrs {
            header_pad: 0,
            max_request: fore.max_request.min(MAX_MESSAGE),
            max_response: fore.max_response.min(MAX_MESSAGE),
            max_response_cached: fore.max_response_cached.min(MAX_CACHED_REPLY),
            max_ops: fore.max_ops.clamp(2, MAX_SESSION_OPS),
            max_requests: fore.max_requests.min(MAX_SLOTS),
        };
        let (sid, replaced) = self.nfs.state.create_session(clientid, seq, agreed)?;
        for old in replaced {
            self.files.locks().release_where(|o| o.client == old);
        }
        let mut out = Out::new();
        // Neither persistence, RDMA nor a back channel is granted: the flags come back clear.
        out.fixed(&sid).u32(seq).u32(0);
        write_channel(&mut out, &agreed);
        write_channel(
            &mut out,
            &ChannelAttrs {
                header_pad: 0,
                max_ops: back.max_ops.min(2),
                max_requests: back.max_requests.min(1),
                ..back
            },
        );
        self.nfs.state.cache_create_session(clientid, out.0.clone());
        Ok(out)
    }

    pub(super) fn destroy_session(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let sid: SessionId = r.fixed()?;
        self.nfs.state.destroy_session(&sid, ctx.caller.uid)?;
        Ok(Out::new())
    }

    pub(super) fn destroy_clientid(&self, r: &mut Reader<'_>) -> OpResult {
        let clientid = r.u64()?;
        self.nfs.state.destroy_client(clientid)?;
        self.files.locks().release_where(|o| o.client == clientid);
        self.nfs.note_released();
        Ok(Out::new())
    }

    pub(super) fn bind_conn(&self, r: &mut Reader<'_>) -> OpResult {
        let sid: SessionId = r.fixed()?;
        let dir = r.u32()?;
        let _rdma = r.bool()?;
        // CDFC4_FORE and CDFC4_FORE_OR_BOTH get the fore channel; without a back channel
        // there is nothing to bind one to.
        let granted = match dir {
            1 | 3 => 1,
            2 | 7 => return Err(NFS4ERR_INVAL.into()),
            _ => return Err(NFS4ERR_INVAL.into()),
        };
        if self.nfs.state.session_client(&sid).is_none() {
            return Err(NFS4ERR_BADSESSION.into());
        }
        let mut out = Out::new();
        out.fixed(&sid).u32(granted).bool(false);
        Ok(out)
    }

    pub(super) fn backchannel_ctl(&self, r: &mut Reader<'_>) -> OpResult {
        let _program = r.u32()?;
        skip_cb_sec(r)?;
        Ok(Out::new())
    }

    pub(super) fn reclaim_complete(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let one_fs = r.bool()?;
        let client = client(ctx)?;
        if one_fs {
            // Per-file-system reclaim is for migration, which a gateway does not do; the
            // client-wide one below is what ends its grace.
            super::cur(ctx)?;
            return Ok(Out::new());
        }
        let owner = self.nfs.state.reclaim_complete(client)?;
        self.nfs.reclaimed(self.files, &owner);
        Ok(Out::new())
    }

    pub(super) fn test_stateid(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let client = client(ctx)?;
        let n = r.u32()?;
        if n > 1024 {
            return Err(NFS4ERR_BADXDR.into());
        }
        let mut out = Out::new();
        out.u32(n);
        for _ in 0..n {
            let sid = read_stateid(r)?;
            let status = if sid.is_special() {
                NFS4ERR_BAD_STATEID
            } else {
                match self.nfs.state.get(client, &sid) {
                    Ok(_) => NFS4_OK,
                    Err(s) => s,
                }
            };
            out.u32(status);
        }
        Ok(out)
    }

    pub(super) fn free_stateid(&self, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let client = client(ctx)?;
        let sid = self.resolve(ctx, read_stateid(r)?)?;
        let sid = super::StateId { seq: 0, ..sid };
        let rec = self.nfs.state.get(client, &sid)?;
        match &rec.kind {
            StateKind::Lock { owner, .. } => {
                if self
                    .files
                    .locks()
                    .holds(rec.file, &super::owner(client, owner))
                {
                    return Err(NFS4ERR_LOCKS_HELD.into());
                }
                self.nfs.state.remove(&sid.other);
                Ok(Out::new())
            }
            StateKind::Open { .. } => Err(NFS4ERR_LOCKS_HELD.into()),
        }
    }

    /// The current stateid stands for the last one an operation of this COMPOUND made.
    pub(super) fn resolve(
        &self,
        ctx: &Ctx<'_>,
        sid: super::StateId,
    ) -> Result<super::StateId, Fail> {
        if sid == super::StateId::CURRENT {
            return ctx.cur_sid.ok_or_else(|| NFS4ERR_BAD_STATEID.into());
        }
        Ok(sid)
    }
}
