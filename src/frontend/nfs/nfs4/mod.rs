//! NFSv4.1 (RFC 8881) over `gateway::files`, beside NFSv3 on the same port: program 100003
//! version 4, minor version 1 (other minor versions get NFS4ERR_MINOR_VERS_MISMATCH, which
//! sends a Linux client from 4.2 down to 4.1).
//!
//! - `consts.rs`: protocol numbers; `attrs.rs`: fattr4; `state.rs`: clients, sessions, slots
//!   and stateids. This file runs COMPOUNDs (sequencing, reply cache, current and saved
//!   handles); `session.rs` has the session operations, `ops.rs` the file operations, which
//!   call `gateway::files` with the caller's identity, as NFSv3 does.
//! - Locks and share reservations live in `gateway::files::locks`, shared with FUSE.
//! - Not offered: delegations and pNFS layouts (never granted; their operations answer
//!   NOTSUPP), RPCSEC_GSS (AUTH_ERROR at the RPC layer), named attributes, hard links.
//!
//! Invariant: a COMPOUND we cannot decode gets the status RFC 8881 gives it (BADXDR,
//! TOO_MANY_OPS, OP_ILLEGAL, ...) or GARBAGE_ARGS, never a panic, and nothing it does reaches
//! another client's state.

pub mod attrs;
pub mod consts;
pub mod idmap;
mod ops;
mod session;
pub mod state;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::frontend::nfs::handles::{HandleError, Handles};
use crate::frontend::nfs::nfs3::Outcome;
use crate::frontend::nfs::rpc::{Out, Reader, RpcError};
use crate::gateway::files::locks::LockOwner;
use crate::gateway::files::{Caller, FileId, Files};

use consts::*;
use state::{Seq, SessionId, State, StateId};

pub const VERSION: u32 = 4;
pub const MINOR_VERSION: u32 = 1;
/// More operations than this in one COMPOUND is TOO_MANY_OPS before anything runs, whatever
/// a session allows (a real client sends well under 20).
const MAX_OPS: u32 = 128;
/// Tags, owner ids and other opaques bounded by NFS4_OPAQUE_LIMIT.
const OPAQUE_LIMIT: usize = 1024;
/// How often expired leases are looked for (at most; on the next COMPOUND after this). A
/// lease is 90 s by default, so a second late is nothing, and a COMPOUND does not walk every
/// client.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Settings of the NFSv4.1 server.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a client's state lives without a SEQUENCE; also the grace period after a
    /// restart.
    pub lease: Duration,
    /// With a domain, owners go out as `uid@domain`; without, as plain numbers.
    pub id_domain: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(90),
            id_domain: None,
        }
    }
}

/// The NFSv4.1 server's shared state.
pub struct Nfs4 {
    pub(super) state: State,
    ids: idmap::IdMap,
    opts: Options,
    /// The pseudo-root's change attribute: this run's start.
    root_change: u64,
    /// Owners that held state before the restart and have not yet sent RECLAIM_COMPLETE.
    reclaimers: Mutex<HashSet<Vec<u8>>>,
    /// Owners written to the catalog as holding state (stable-storage client records, RFC
    /// 8881 §8.4.3): a client is added, durably, before its first state is granted, and
    /// clients that hold none are dropped lazily, at a reap. The async lock serialises the
    /// writes and is held from a client's check to its state's grant, so a shrink never drops
    /// a client being granted state.
    recorded: tokio::sync::Mutex<BTreeSet<Vec<u8>>>,
    /// Some client may have lost its last state since the last shrink of `recorded`.
    released: AtomicBool,
    /// When expired leases are looked for next.
    next_reap: Mutex<Instant>,
}

/// A current or saved filehandle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fh {
    Root,
    File(FileId),
}

/// One COMPOUND's running state.
struct Ctx<'a> {
    caller: &'a Caller,
    cur: Option<Fh>,
    saved: Option<Fh>,
    cur_sid: Option<StateId>,
    saved_sid: Option<StateId>,
    /// The current file's attributes as the last operation of this COMPOUND left them (OPEN,
    /// LOOKUP, SETATTR, WRITE, ACCESS, GETATTR), so that the GETATTR and GETFH a client puts after them
    /// cost no second catalog read. Only ever used for the file it names; an operation that
    /// may change anything else drops it ([`keeps_attr`]).
    cur_attr: Option<crate::gateway::files::Attr>,
    /// The caller's read/write/execute bits on a file as OPEN found them, for the ACCESS a
    /// client puts after it; dropped by anything that might change them ([`keeps_access`]).
    cur_access: Option<(FileId, u32)>,
    /// The client of the COMPOUND's SEQUENCE.
    client: Option<u64>,
    /// The session's response limit (READ and READDIR stay under it).
    max_response: u32,
}

/// A failed operation: its status, and for the few that carry one (LOCK, LOCKT, SETATTR) a
/// body after it.
struct Fail {
    status: u32,
    body: Out,
}

impl From<u32> for Fail {
    fn from(status: u32) -> Self {
        Self {
            status,
            body: Out::new(),
        }
    }
}

impl From<RpcError> for Fail {
    fn from(_: RpcError) -> Self {
        NFS4ERR_BADXDR.into()
    }
}

type OpResult = Result<Out, Fail>;

/// Operations that may open a COMPOUND without SEQUENCE, and then must be alone in it
/// (RFC 8881 §2.10.6.2, §18.35.3, §18.36.3).
fn sessionless(op: u32) -> bool {
    matches!(
        op,
        OP_EXCHANGE_ID
            | OP_CREATE_SESSION
            | OP_DESTROY_SESSION
            | OP_DESTROY_CLIENTID
            | OP_BIND_CONN_TO_SESSION
    )
}

struct Slot {
    session: SessionId,
    slot: u32,
    cache: bool,
    max_cached: u32,
    max_response: u32,
}

impl Nfs4 {
    /// Starts the server; if clients held state when the gateway last ran, starts the grace
    /// period in which they reclaim it.
    pub async fn new(files: &Files, opts: Options) -> Self {
        let recorded = files.lock_clients().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the NFSv4 clients of the last run");
            Vec::new()
        });
        if !recorded.is_empty() {
            files.locks().start_grace(opts.lease);
            tracing::info!(
                clients = recorded.len(),
                grace_secs = opts.lease.as_secs(),
                "NFSv4 grace period: clients of the last run may reclaim their locks"
            );
        }
        let root_change = crate::clock::unix_nanos().max(1) as u64;
        Self {
            state: State::new(opts.lease),
            ids: idmap::IdMap::load(opts.id_domain.as_deref()),
            reclaimers: Mutex::new(recorded.iter().cloned().collect()),
            recorded: tokio::sync::Mutex::new(recorded.into_iter().collect()),
            released: AtomicBool::new(false),
            next_reap: Mutex::new(Instant::now()),
            opts,
            root_change,
        }
    }

    /// Procedures of program 100003 version 4: NULL and COMPOUND.
    pub async fn dispatch(
        &self,
        files: &Files,
        handles: &Handles,
        proc_: u32,
        caller: &Caller,
        args: &[u8],
    ) -> Outcome {
        match proc_ {
            0 => Outcome::Reply(Vec::new()),
            1 => match self.compound(files, handles, caller, args).await {
                Some(reply) => Outcome::Reply(reply),
                None => Outcome::Garbage("unreadable COMPOUND header".into()),
            },
            _ => Outcome::NoProc,
        }
    }

    /// Runs one COMPOUND; `None` if its header cannot be read.
    async fn compound(
        &self,
        files: &Files,
        handles: &Handles,
        caller: &Caller,
        args: &[u8],
    ) -> Option<Vec<u8>> {
        self.reap(files).await;
        let mut r = Reader::new(args, 0);
        let tag = r.opaque(OPAQUE_LIMIT).ok()?.to_vec();
        let minor = r.u32().ok()?;
        let count = r.u32().ok()?;
        let reply = |status: u32, n: u32, results: &[u8]| {
            let mut out = Out::new();
            out.u32(status).opaque(&tag).u32(n);
            out.0.extend_from_slice(results);
            out.0
        };
        if minor != MINOR_VERSION {
            return Some(reply(NFS4ERR_MINOR_VERS_MISMATCH, 0, &[]));
        }
        if count > MAX_OPS {
            let first = r.u32().unwrap_or(OP_ILLEGAL);
            let mut res = Out::new();
            res.u32(first).u32(NFS4ERR_TOO_MANY_OPS);
            return Some(reply(NFS4ERR_TOO_MANY_OPS, 1, &res.0));
        }
        let mut ctx = Ctx {
            caller,
            cur: None,
            saved: None,
            cur_sid: None,
            saved_sid: None,
            cur_attr: None,
            cur_access: None,
            client: None,
            max_response: u32::MAX,
        };
        let mut results = Out::new();
        let mut done = 0;
        let mut status = NFS4_OK;
        let mut slot: Option<Slot> = None;
        let ops = Ops {
            nfs: self,
            files,
            handles,
        };
        for i in 0..count {
            let Ok(op) = r.u32() else {
                // Fewer operations than announced: the request was cut short.
                results.u32(OP_ILLEGAL).u32(NFS4ERR_BADXDR);
                done += 1;
                status = NFS4ERR_BADXDR;
                break;
            };
            let outcome = if i == 0 && op == OP_SEQUENCE {
                match self.sequence(&mut ctx, &mut r, count, args.len()) {
                    Ok((body, s)) => {
                        slot = Some(s);
                        Ok(body)
                    }
                    Err(SeqOutcome::Replay(cached)) => return Some(cached.to_vec()),
                    Err(SeqOutcome::Fail(f)) => Err(f),
                }
            } else if op == OP_SEQUENCE {
                Err(NFS4ERR_SEQUENCE_POS.into())
            } else if i == 0 && !sessionless(op) && known(op) {
                Err(NFS4ERR_OP_NOT_IN_SESSION.into())
            } else if i == 0 && sessionless(op) && count > 1 && op != OP_DESTROY_SESSION {
                Err(NFS4ERR_NOT_ONLY_OP.into())
            } else {
                ops.run(op, &mut ctx, &mut r).await
            };
            let op = if known(op) { op } else { OP_ILLEGAL };
            results.u32(op);
            done += 1;
            let outcome = match (outcome, &slot) {
                (Ok(body), Some(s)) => {
                    // The reply so far: status, tag, count, results, this op's status.
                    let size = 12 + tag.len() + results.0.len() + 4 + body.0.len();
                    if size > s.max_response as usize {
                        Err(NFS4ERR_REP_TOO_BIG.into())
                    } else if s.cache && size > s.max_cached as usize {
                        Err(NFS4ERR_REP_TOO_BIG_TO_CACHE.into())
                    } else {
                        Ok(body)
                    }
                }
                (o, _) => o,
            };
            match outcome {
                Ok(body) => {
                    results.u32(NFS4_OK);
                    results.0.extend_from_slice(&body.0);
                }
                Err(f) => {
                    results.u32(f.status);
                    results.0.extend_from_slice(&f.body.0);
                    status = f.status;
                    break;
                }
            }
        }
        let out = reply(status, done, &results.0);
        if let Some(s) = slot {
            let keep = s.cache || out.len() <= s.max_cached as usize;
            let cached = (keep && out.len() <= state::MAX_CACHED_REPLY as usize)
                .then(|| Arc::new(out.clone()));
            self.state.finish(&s.session, s.slot, cached);
        }
        Some(out)
    }

    /// SEQUENCE as the first operation: the slot check, reply-cache lookup and lease renewal.
    fn sequence(
        &self,
        ctx: &mut Ctx<'_>,
        r: &mut Reader<'_>,
        count: u32,
        request_bytes: usize,
    ) -> Result<(Out, Slot), SeqOutcome> {
        let fail = |s: u32| SeqOutcome::Fail(s.into());
        let session: SessionId = r.fixed().map_err(|_| fail(NFS4ERR_BADXDR))?;
        let seq = r.u32().map_err(|_| fail(NFS4ERR_BADXDR))?;
        let slot = r.u32().map_err(|_| fail(NFS4ERR_BADXDR))?;
        let highest = r.u32().map_err(|_| fail(NFS4ERR_BADXDR))?;
        let cache = r.bool().map_err(|_| fail(NFS4ERR_BADXDR))?;
        let found = self
            .state
            .sequence(&session, seq, slot, highest)
            .map_err(fail)?;
        let (client, highest_slot, fore) = match found {
            Seq::Replay(reply) => return Err(SeqOutcome::Replay(reply)),
            Seq::New {
                client,
                highest_slot,
                fore,
            } => (client, highest_slot, fore),
        };
        let over = if count > fore.max_ops {
            Some(NFS4ERR_TOO_MANY_OPS)
        } else if request_bytes > fore.max_request as usize {
            Some(NFS4ERR_REQ_TOO_BIG)
        } else {
            None
        };
        if let Some(s) = over {
            self.state.finish(&session, slot, None);
            return Err(fail(s));
        }
        ctx.client = Some(client);
        ctx.max_response = fore.max_response;
        let mut out = Out::new();
        out.fixed(&session)
            .u32(seq)
            .u32(slot)
            .u32(highest_slot)
            .u32(highest_slot)
            .u32(0);
        Ok((
            out,
            Slot {
                session,
                slot,
                cache,
                max_cached: fore.max_response_cached,
                max_response: fore.max_response,
            },
        ))
    }

    /// Expires clients whose lease ran out and releases their locks and reservations, at most
    /// every [`REAP_EVERY`]; then drops clients that hold no state from the catalog's list.
    async fn reap(&self, files: &Files) {
        {
            let mut next = self.next_reap.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now < *next {
                return;
            }
            *next = now + REAP_EVERY;
        }
        let gone = self.state.expire();
        for (client, _) in &gone {
            files.locks().release_where(|o| o.client == *client);
            tracing::info!(
                client = format!("{client:x}"),
                "NFSv4 lease expired: locks released"
            );
        }
        if !gone.is_empty() {
            self.released.store(true, Ordering::Relaxed);
        }
        if self.released.swap(false, Ordering::Relaxed) {
            self.shrink_recorded(files).await;
        }
    }

    /// Notes that some client may have given up its last state (CLOSE, DESTROY_CLIENTID, the
    /// end of grace): the next reap rewrites the catalog's list without it. Being listed
    /// without state costs nothing but a wait in the next grace period, so this is lazy.
    fn note_released(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    /// Makes sure `client` is in the catalog's list of clients with state, writing it there
    /// (durably) if it is not. The returned guard keeps the list from shrinking: hold it until
    /// the state is granted. Clients already listed pay a set lookup.
    async fn record_client(
        &self,
        files: &Files,
        client: u64,
    ) -> Result<tokio::sync::MutexGuard<'_, BTreeSet<Vec<u8>>>, crate::gateway::GatewayError> {
        let mut recorded = self.recorded.lock().await;
        let Some(owner) = self.state.client_owner(client) else {
            // Gone meanwhile: the operation fails on its own further on.
            return Ok(recorded);
        };
        if !recorded.contains(&owner) {
            let mut with = recorded.clone();
            with.insert(owner);
            files
                .set_lock_clients(&with.iter().cloned().collect::<Vec<_>>())
                .await?;
            *recorded = with;
        }
        Ok(recorded)
    }

    /// Rewrites the catalog's list as the clients that hold state now (and, in grace, those
    /// that may still reclaim), when that differs from what is written.
    async fn shrink_recorded(&self, files: &Files) {
        let mut recorded = self.recorded.lock().await;
        let mut owners: BTreeSet<Vec<u8>> = self.state.owners_with_state().into_iter().collect();
        if files.locks().in_grace() {
            let pending = self.reclaimers.lock().unwrap_or_else(|p| p.into_inner());
            owners.extend(pending.iter().cloned());
        }
        if *recorded == owners {
            return;
        }
        let list: Vec<Vec<u8>> = owners.iter().cloned().collect();
        match files.set_lock_clients(&list).await {
            Ok(()) => *recorded = owners,
            Err(e) => {
                // Tried again at the next reap.
                self.note_released();
                tracing::warn!(error = %e, "recording NFSv4 clients with state");
            }
        }
    }

    /// Whether `client` may still reclaim (grace, listed, no RECLAIM_COMPLETE yet).
    fn may_reclaim(&self, files: &Files, client: u64) -> Result<(), u32> {
        if !files.locks().in_grace() || self.state.reclaim_done(client) {
            return Err(NFS4ERR_NO_GRACE);
        }
        let owner = self
            .state
            .client_owner(client)
            .ok_or(NFS4ERR_STALE_CLIENTID)?;
        let pending = self.reclaimers.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains(&owner) {
            Ok(())
        } else {
            Err(NFS4ERR_RECLAIM_BAD)
        }
    }

    /// Whether `client` may take new opens and locks: not while the server is in grace, nor
    /// before the client's own RECLAIM_COMPLETE (RFC 8881 §18.51.3).
    fn may_take_new(&self, files: &Files, client: u64) -> Result<(), u32> {
        if files.locks().in_grace() || !self.state.reclaim_done(client) {
            return Err(NFS4ERR_GRACE);
        }
        Ok(())
    }

    /// A client finished reclaiming; the grace period ends when every listed client has.
    fn reclaimed(&self, files: &Files, owner: &[u8]) {
        let mut pending = self.reclaimers.lock().unwrap_or_else(|p| p.into_inner());
        if pending.remove(owner) && pending.is_empty() {
            files.locks().end_grace();
            self.note_released();
            tracing::info!("NFSv4 grace period over: every client reclaimed");
        }
    }
}

enum SeqOutcome {
    Replay(Arc<Vec<u8>>),
    Fail(Fail),
}

/// Operations numbered in minor version 1 (0-2 and 4.2's are not).
fn known(op: u32) -> bool {
    (OP_ACCESS..=OP_RECLAIM_COMPLETE).contains(&op)
}

/// The operations of one COMPOUND, with what they run against.
struct Ops<'a> {
    nfs: &'a Nfs4,
    files: &'a Files,
    handles: &'a Handles,
}

impl Ops<'_> {
    fn attr_env(&self) -> attrs::AttrEnv<'_> {
        attrs::AttrEnv {
            lease_secs: self.nfs.opts.lease.as_secs() as u32,
            ids: &self.nfs.ids,
        }
    }

    fn fh_bytes(&self, fh: Fh) -> Vec<u8> {
        match fh {
            Fh::Root => self.handles.root(),
            Fh::File(id) => self.handles.encode(id),
        }
    }

    fn decode_fh(&self, raw: &[u8]) -> Result<Fh, u32> {
        match self.handles.decode_any(raw) {
            Ok(None) => Ok(Fh::Root),
            Ok(Some(id)) => Ok(Fh::File(id)),
            Err(HandleError::Bad) => Err(NFS4ERR_BADHANDLE),
            Err(HandleError::Stale) => Err(NFS4ERR_STALE),
        }
    }

    async fn run(&self, op: u32, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        let result = self.dispatch(op, ctx, r).await;
        if result.is_err() || !keeps_attr(op) {
            ctx.cur_attr = None;
        }
        if result.is_err() || !keeps_access(op) {
            ctx.cur_access = None;
        }
        result
    }

    async fn dispatch(&self, op: u32, ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> OpResult {
        match op {
            OP_EXCHANGE_ID => self.exchange_id(ctx, r),
            OP_CREATE_SESSION => self.create_session(ctx, r),
            OP_DESTROY_SESSION => self.destroy_session(ctx, r),
            OP_DESTROY_CLIENTID => self.destroy_clientid(r),
            OP_BIND_CONN_TO_SESSION => self.bind_conn(r),
            OP_BACKCHANNEL_CTL => self.backchannel_ctl(r),
            OP_RECLAIM_COMPLETE => self.reclaim_complete(ctx, r),
            OP_TEST_STATEID => self.test_stateid(ctx, r),
            OP_FREE_STATEID => self.free_stateid(ctx, r),
            OP_PUTROOTFH | OP_PUTPUBFH => {
                ctx.cur = Some(Fh::Root);
                ctx.cur_sid = None;
                Ok(Out::new())
            }
            OP_PUTFH => {
                let raw = r.opaque(OPAQUE_LIMIT)?;
                if raw.len() > 128 {
                    return Err(NFS4ERR_BADHANDLE.into());
                }
                ctx.cur = Some(self.decode_fh(raw)?);
                ctx.cur_sid = None;
                Ok(Out::new())
            }
            OP_GETFH => {
                let fh = cur(ctx)?;
                if let Fh::File(id) = fh {
                    self.attr(ctx, id).await?;
                }
                let mut out = Out::new();
                out.opaque(&self.fh_bytes(fh));
                Ok(out)
            }
            OP_SAVEFH => {
                ctx.saved = Some(cur(ctx)?);
                ctx.saved_sid = ctx.cur_sid;
                Ok(Out::new())
            }
            OP_RESTOREFH => {
                ctx.cur = Some(ctx.saved.ok_or(NFS4ERR_RESTOREFH)?);
                ctx.cur_sid = ctx.saved_sid;
                Ok(Out::new())
            }
            OP_LOOKUP => self.lookup(ctx, r).await,
            OP_LOOKUPP => self.lookupp(ctx).await,
            OP_GETATTR => self.getattr(ctx, r).await,
            OP_ACCESS => self.access(ctx, r).await,
            OP_READLINK => self.readlink(ctx).await,
            OP_READDIR => self.readdir(ctx, r).await,
            OP_SECINFO | OP_SECINFO_NO_NAME => self.secinfo(ctx, r, op).await,
            OP_VERIFY | OP_NVERIFY => self.verify(ctx, r, op == OP_NVERIFY).await,
            OP_OPEN => self.open(ctx, r).await,
            OP_OPEN_DOWNGRADE => self.open_downgrade(ctx, r).await,
            OP_CLOSE => self.close(ctx, r).await,
            OP_READ => self.read(ctx, r).await,
            OP_WRITE => self.write(ctx, r).await,
            OP_COMMIT => self.commit(ctx, r).await,
            OP_CREATE => self.create(ctx, r).await,
            OP_REMOVE => self.remove(ctx, r).await,
            OP_RENAME => self.rename(ctx, r).await,
            OP_LINK => self.link(ctx, r).await,
            OP_SETATTR => self.setattr(ctx, r).await,
            OP_LOCK => self.lock(ctx, r).await,
            OP_LOCKT => self.lockt(ctx, r).await,
            OP_LOCKU => self.locku(ctx, r).await,
            // No delegations are ever granted, so there is none to return.
            OP_DELEGRETURN => {
                let _ = read_stateid(r)?;
                cur(ctx)?;
                Err(NFS4ERR_BAD_STATEID.into())
            }
            // Minor version 0 operations that 4.1 forbids (RFC 8881 §18: "MUST NOT").
            OP_OPEN_CONFIRM
            | OP_RENEW
            | OP_SETCLIENTID
            | OP_SETCLIENTID_CONFIRM
            | OP_RELEASE_LOCKOWNER => Err(NFS4ERR_NOTSUPP.into()),
            // Delegations, pNFS, named attributes and SSV are not offered.
            OP_DELEGPURGE
            | OP_OPENATTR
            | OP_GET_DIR_DELEGATION
            | OP_GETDEVICEINFO
            | OP_GETDEVICELIST
            | OP_LAYOUTCOMMIT
            | OP_LAYOUTGET
            | OP_LAYOUTRETURN
            | OP_SET_SSV
            | OP_WANT_DELEGATION => Err(NFS4ERR_NOTSUPP.into()),
            _ => Err(NFS4ERR_OP_ILLEGAL.into()),
        }
    }
}

/// Whether the current file's attributes as left by the operation before are still true after
/// `op`: it leaves the current filehandle and its attributes alone, or sets `cur_attr` itself.
/// READ is not among them (it moves the access time), nor is anything that changes a
/// directory or the current filehandle without reading it.
fn keeps_attr(op: u32) -> bool {
    matches!(
        op,
        OP_GETATTR
            | OP_GETFH
            | OP_SAVEFH
            | OP_ACCESS
            | OP_VERIFY
            | OP_NVERIFY
            | OP_OPEN
            | OP_LOOKUP
            | OP_SETATTR
            | OP_WRITE
            | OP_COMMIT
            | OP_CLOSE
            | OP_LOCK
            | OP_LOCKT
            | OP_LOCKU
    )
}

/// Whether the access bits OPEN left are still true after `op`: it changes nothing (OPEN sets
/// them itself). SETATTR may change the mode or owner, so it is not among them.
fn keeps_access(op: u32) -> bool {
    matches!(
        op,
        OP_GETATTR | OP_GETFH | OP_SAVEFH | OP_ACCESS | OP_VERIFY | OP_NVERIFY | OP_OPEN
    )
}

fn cur(ctx: &Ctx<'_>) -> Result<Fh, u32> {
    ctx.cur.ok_or(NFS4ERR_NOFILEHANDLE)
}

/// The current filehandle as a share's file (the pseudo-root has no data or locks).
fn cur_file(ctx: &Ctx<'_>, on_root: u32) -> Result<FileId, u32> {
    match cur(ctx)? {
        Fh::File(id) => Ok(id),
        Fh::Root => Err(on_root),
    }
}

fn client(ctx: &Ctx<'_>) -> Result<u64, u32> {
    ctx.client.ok_or(NFS4ERR_OP_NOT_IN_SESSION)
}

fn read_stateid(r: &mut Reader<'_>) -> Result<StateId, RpcError> {
    Ok(StateId {
        seq: r.u32()?,
        other: r.fixed()?,
    })
}

fn write_stateid(out: &mut Out, sid: &StateId) {
    out.u32(sid.seq).fixed(&sid.other);
}

fn status4(e: &crate::gateway::GatewayError) -> u32 {
    crate::frontend::nfs::status::nfsstat4(e)
}

fn owner(client: u64, owner: &[u8]) -> LockOwner {
    LockOwner {
        client,
        owner: owner.to_vec(),
    }
}
