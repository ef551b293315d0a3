//! One TCP connection: the login phase, then the full feature phase (RFC 7143 §4, §11): a reader
//! that decodes and handles initiator PDUs, and a writer task that stamps sequence numbers and
//! sends. SCSI commands run as their own tasks and may complete out of order.
//!
//! Owns the connection's StatSN and its partially received writes. Invariants: a malformed or
//! hostile peer costs at most this connection (Reject where the stream can go on, else a
//! `warn!` naming the peer and a close); StatSN is assigned in send order by the writer alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

mod control;
mod setup;

use setup::{Joined, login_phase};

use super::Shared;
use super::login::SessionKind;
use super::params::{OUR_MAX_RECV_DATA_SEGMENT_BYTES, Params};
use super::pdu::target::{
    self, EXP_CMD_SN_OFFSET, MAX_CMD_SN_OFFSET, RejectReason, STAT_SN_OFFSET,
};
use super::pdu::{
    self, DataOut, Digests, Pdu, PduError, RESERVED_TAG, Request, RequestError, ScsiCommand,
    lun_to_wire,
};
use super::session::{AddTask, Session, TaskInfo};
use super::task::{
    MAX_TRANSFER_BYTES, SENSE_INTERNAL_TARGET_FAILURE, SENSE_INVALID_FIELD_IN_CDB, WriteState,
    response_pdus,
};
use crate::scsi::{ScsiRequest, ScsiResponse, Status};

/// A login that stalls this long between PDUs is abandoned.
const LOGIN_PDU_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection waits for its last responses to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

enum Out {
    /// A PDU and whether it consumes a StatSN.
    Pdu(Pdu, bool),
    /// Flush and close the socket.
    Close,
}

enum Read {
    Pdu(Pdu),
    Eof,
    Bad(PduError),
}

async fn read_pdu<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    digests: Digests,
    max_data: u32,
) -> std::io::Result<Read> {
    loop {
        match pdu::decode(buf, digests, max_data) {
            Ok((pdu, used)) => {
                buf.advance(used);
                return Ok(Read::Pdu(pdu));
            }
            Err(PduError::Incomplete { needed }) => {
                buf.reserve(needed.saturating_sub(buf.len()));
                if rd.read_buf(buf).await? == 0 {
                    return Ok(Read::Eof);
                }
            }
            Err(PduError::DataDigest { consumed, bhs }) => {
                buf.advance(consumed);
                return Ok(Read::Bad(PduError::DataDigest { consumed, bhs }));
            }
            Err(e) => return Ok(Read::Bad(e)),
        }
    }
}

/// Serves one accepted connection to its end.
pub(crate) async fn run(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let Some(joined) = login_phase(&mut stream, &mut buf, peer, &shared).await else {
        shared.stats.logins_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.stats.logins.fetch_add(1, Ordering::Relaxed);
    let (session, cid) = (joined.session.clone(), joined.cid);
    tracing::debug!(%peer, initiator = %session.initiator_name, tsih = session.tsih, "login complete");
    let exit = full_feature(stream, buf, peer, &shared, joined).await;
    if exit != Flow::LoggedOut {
        // ERL 0 has no connection recovery (RFC 7143 §7.1.4.3, §6.3.5): a connection that
        // ends without logging out takes its session and every task in it down.
        session.close();
    }
    shared.sessions.leave(&session, cid);
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    session: Arc<Session>,
    mut stat_sn: u32,
    digests: Digests,
) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    let mut closing = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Out::Pdu(mut pdu, consumes) => {
                    let (exp, max) = session.window();
                    pdu.set_u32(STAT_SN_OFFSET, stat_sn);
                    pdu.set_u32(EXP_CMD_SN_OFFSET, exp);
                    pdu.set_u32(MAX_CMD_SN_OFFSET, max);
                    if consumes {
                        stat_sn = stat_sn.wrapping_add(1);
                    }
                    pdu.encode(digests, &mut batch);
                }
                Out::Close => closing = true,
            }
            if !closing && batch.len() < 1024 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
        if closing {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

struct Conn<'a> {
    peer: SocketAddr,
    shared: &'a Shared,
    session: &'a Arc<Session>,
    cid: u16,
    params: Params,
    tx: mpsc::UnboundedSender<Out>,
    writes: HashMap<u32, WriteState>,
    next_ttt: u32,
    text_pending: Option<PendingText>,
}

/// The unsent rest of a long text answer.
struct PendingText {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

/// What the reader does after handling a PDU.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Close the connection (and, at ERL 0, its session).
    Close,
    /// Close only this connection after a clean logout.
    LoggedOut,
}

async fn full_feature(
    stream: TcpStream,
    mut buf: BytesMut,
    peer: SocketAddr,
    shared: &Shared,
    joined: Joined,
) -> Flow {
    let Joined {
        session,
        cid,
        params,
        stat_sn,
    } = joined;
    let session = &session;
    let digests = Digests {
        header: params.header_digest,
        data: params.data_digest,
    };
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(writer(wr, rx, session.clone(), stat_sn, digests));
    let mut conn = Conn {
        peer,
        shared,
        session,
        cid,
        params,
        tx,
        writes: HashMap::new(),
        next_ttt: 1,
        text_pending: None,
    };
    let mut closed = session.subscribe_closed();
    let mut shutdown = shared.shutdown.clone();
    // Far-future stand-in when pings are off, so the select arm never fires.
    let ping_every = shared
        .portal
        .nop_in_interval
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut ping_outstanding = false;
    let exit = loop {
        tokio::select! {
            read = read_pdu(&mut rd, &mut buf, digests, OUR_MAX_RECV_DATA_SEGMENT_BYTES) => {
                ping_outstanding = false;
                let flow = match read {
                    Ok(Read::Pdu(pdu)) => conn.handle(pdu),
                    Ok(Read::Eof) => Flow::Close,
                    Ok(Read::Bad(PduError::DataDigest { bhs, .. })) => {
                        // ERL 0 (§7.8): discard the PDU and tell the initiator.
                        tracing::warn!(%peer, "data digest error");
                        conn.reject(RejectReason::DataDigestError, &bhs[..]);
                        Flow::Continue
                    }
                    Ok(Read::Bad(e)) => {
                        tracing::warn!(%peer, error = %e, "closing connection: cannot frame pdu");
                        Flow::Close
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection read failed");
                        Flow::Close
                    }
                };
                if flow != Flow::Continue {
                    break flow;
                }
            }
            _ = closed.wait_for(|c| *c) => break Flow::Close,
            _ = shutdown.wait_for(|c| *c) => {
                // Ask the initiator to log out (§11.9.1 event 1) before we go.
                conn.send(target::async_message(1, 0), false);
                break Flow::Close;
            }
            _ = tokio::time::sleep(ping_every) => {
                if ping_outstanding {
                    tracing::warn!(%peer, "closing connection: initiator silent after nop-in ping");
                    break Flow::Close;
                }
                ping_outstanding = true;
                let ttt = conn.alloc_ttt();
                conn.send(target::nop_in([0; 8], RESERVED_TAG, ttt, Bytes::new()), false);
            }
        }
    };
    let _ = conn.tx.send(Out::Close);
    drop(conn);
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    exit
}

impl Conn<'_> {
    fn send(&self, pdu: Pdu, consumes_stat_sn: bool) {
        // The writer only goes away when the connection is closing; nothing is lost then.
        let _ = self.tx.send(Out::Pdu(pdu, consumes_stat_sn));
    }

    fn reject(&self, reason: RejectReason, bhs: &[u8]) {
        self.shared.stats.rejects.fetch_add(1, Ordering::Relaxed);
        self.send(target::reject(reason, bhs), false);
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = match self.next_ttt.wrapping_add(1) {
            RESERVED_TAG | 0 => 1,
            n => n,
        };
        t
    }

    /// Admits a non-immediate PDU's CmdSN; immediate PDUs bypass the window (§3.2.2.1).
    fn admit(&self, immediate: bool, cmd_sn: u32) -> bool {
        immediate || self.session.admit(cmd_sn)
    }

    fn handle(&mut self, pdu: Pdu) -> Flow {
        let req = match Request::parse(&pdu) {
            Ok(r) => r,
            Err(RequestError::UnsupportedOpcode(op)) => {
                tracing::warn!(peer = %self.peer, opcode = op, "rejecting unknown opcode");
                self.reject(RejectReason::CommandNotSupported, &pdu.bhs);
                return Flow::Continue;
            }
            Err(RequestError::InvalidField(why)) => {
                tracing::warn!(peer = %self.peer, reason = why, "rejecting invalid pdu");
                self.reject(RejectReason::InvalidPduField, &pdu.bhs);
                return Flow::Continue;
            }
        };
        let discovery = matches!(self.session.kind, SessionKind::Discovery);
        match req {
            Request::Text(t) => self.text(t, &pdu.bhs),
            Request::Logout(l) => return self.logout(l),
            Request::NopOut(n) => self.nop_out(n),
            // §4.3: a discovery session carries only Text and Logout (and keep-alive NOPs).
            _ if discovery => self.reject(RejectReason::ProtocolError, &pdu.bhs),
            Request::ScsiCommand(c) => self.command(c, &pdu),
            Request::DataOut(d) => self.data_out(d, &pdu),
            Request::TaskMgmt(t) => return self.task_mgmt(t, pdu.immediate()),
            Request::Login(_) => self.reject(RejectReason::ProtocolError, &pdu.bhs),
            // ERL 0: no SNACK support (§7.1.4.3).
            Request::Snack { .. } => self.reject(RejectReason::CommandNotSupported, &pdu.bhs),
        }
        Flow::Continue
    }

    fn command(&mut self, cmd: ScsiCommand, pdu: &Pdu) {
        if !self.admit(cmd.immediate, cmd.cmd_sn) {
            tracing::debug!(peer = %self.peer, cmd_sn = cmd.cmd_sn, "dropping command outside the window");
            return;
        }
        self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        let info = TaskInfo {
            lun: cmd.lun,
            abort: None,
        };
        match self.session.add_task(cmd.itt, info) {
            AddTask::Added => {}
            AddTask::DuplicateTag => {
                self.reject(RejectReason::InvalidPduField, &pdu.bhs);
                return;
            }
            AddTask::Full => {
                let resp = ScsiResponse {
                    status: Status::TaskSetFull,
                    data_in: Bytes::new(),
                    sense: None,
                };
                self.respond(&cmd, resp);
                return;
            }
        }
        if cmd.expected_len > MAX_TRANSFER_BYTES {
            self.session.finish_task(cmd.itt);
            let resp = ScsiResponse {
                status: Status::CheckCondition,
                data_in: Bytes::new(),
                sense: Some(Bytes::from_static(&SENSE_INVALID_FIELD_IN_CDB)),
            };
            self.respond(&cmd, resp);
            return;
        }
        if cmd.write && cmd.expected_len > 0 {
            match WriteState::start(cmd, &self.params) {
                Ok(w) => self.drive_write(w),
                Err(reason) => {
                    self.session.finish_task(pdu.itt());
                    self.reject(reason, &pdu.bhs);
                }
            }
        } else if !cmd.immediate_data.is_empty() {
            self.session.finish_task(cmd.itt);
            self.reject(RejectReason::ProtocolError, &pdu.bhs);
        } else {
            self.execute(cmd, Bytes::new());
        }
    }

    /// Answers a command at once, without running it.
    fn respond(&self, cmd: &ScsiCommand, resp: ScsiResponse) {
        let expected_in = if cmd.read { cmd.expected_len } else { 0 };
        let pdus = response_pdus(
            lun_to_wire(cmd.lun),
            cmd.itt,
            expected_in,
            None,
            resp,
            self.params.initiator_max_recv_data_segment_bytes,
            self.params.max_burst_bytes,
        );
        for (pdu, consumes) in pdus {
            self.send(pdu, consumes);
        }
    }

    fn drive_write(&mut self, mut w: WriteState) {
        if w.is_complete() {
            let cmd = w.cmd.clone();
            self.execute(cmd, w.into_data());
            return;
        }
        if w.wants_r2t() {
            let ttt = self.alloc_ttt();
            w.assign_ttt(ttt);
            if let super::task::Progress::Solicit(r2t) = w.poll() {
                self.send(r2t, false);
            }
        }
        self.writes.insert(w.cmd.itt, w);
    }

    fn data_out(&mut self, d: DataOut, pdu: &Pdu) {
        let Some(mut w) = self.writes.remove(&d.itt) else {
            if !self.session.has_task(d.itt) {
                // The task was aborted; Data-Out still in flight for it is discarded.
                return;
            }
            self.reject(RejectReason::InvalidPduField, &pdu.bhs);
            return;
        };
        match w.data_out(&d) {
            Ok(()) => self.drive_write(w),
            Err(reason) => {
                tracing::warn!(peer = %self.peer, itt = d.itt, "rejecting data-out");
                self.reject(reason, &pdu.bhs);
                self.writes.insert(d.itt, w);
            }
        }
    }

    fn execute(&self, cmd: ScsiCommand, data_out: Bytes) {
        let SessionKind::Normal(target) = &self.session.kind else {
            return;
        };
        if !self.session.has_task(cmd.itt) {
            return;
        }
        let luns = target.luns.clone();
        let expected_in = if cmd.read { cmd.expected_len } else { 0 };
        let req = ScsiRequest {
            lun: cmd.lun,
            cdb: cmd.cdb,
            data_out,
            expected_in,
            nexus: self.session.nexus.clone(),
        };
        let tx = self.tx.clone();
        let session = self.session.clone();
        let max_segment = self.params.initiator_max_recv_data_segment_bytes;
        let max_burst = self.params.max_burst_bytes;
        let itt = cmd.itt;
        let write = (!cmd.read).then(|| {
            let spdtl = luns.data_out_length(req.lun, &req.cdb).unwrap_or(0);
            (cmd.expected_len, spdtl)
        });
        let handle = tokio::spawn(async move {
            // A unit that panics must still answer the initiator, or the task would hang until
            // the initiator times out; it gets INTERNAL TARGET FAILURE (SPC-4 ASC 44h/00h).
            let resp = match AssertUnwindSafe(luns.execute(&req)).catch_unwind().await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::error!(lun = req.lun, "logical unit panicked executing a command");
                    ScsiResponse {
                        status: Status::CheckCondition,
                        data_in: Bytes::new(),
                        sense: Some(Bytes::from_static(&SENSE_INTERNAL_TARGET_FAILURE)),
                    }
                }
            };
            if !session.finish_task(itt) {
                // Aborted while running: no response for an aborted task (§11.5.1).
                return;
            }
            for (pdu, consumes) in response_pdus(
                lun_to_wire(req.lun),
                itt,
                expected_in,
                write,
                resp,
                max_segment,
                max_burst,
            ) {
                let _ = tx.send(Out::Pdu(pdu, consumes));
            }
        });
        self.session.set_abort(itt, handle.abort_handle());
    }
}
