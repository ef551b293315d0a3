//! Connection setup: the login phase on the raw socket (RFC 7143 §6) and attaching the
//! result to a new or existing session (§5.3), with the I_T nexus names (§4.2.7 names,
//! SAM-5 ports).
//!
//! Invariant: a connection reaches full feature phase only through `login_phase`, i.e. after
//! `Login` completed and the session accepted it; every refusal sends a Login Response with a
//! status first.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{LOGIN_PDU_TIMEOUT, Read, read_pdu};
use crate::frontend::iscsi::Shared;
use crate::frontend::iscsi::login::{Established, Login, SessionKind, Step, status};
use crate::frontend::iscsi::params::{LOGIN_MAX_DATA_BYTES, Params};
use crate::frontend::iscsi::pdu::{Digests, Pdu, Request};
use crate::frontend::iscsi::session::{JoinError, NewSession, Session};
use crate::scsi::Nexus;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A connection that finished login, attached to its session.
pub(super) struct Joined {
    pub(super) session: Arc<Session>,
    pub(super) cid: u16,
    pub(super) params: Params,
    /// The StatSN of the first full-feature response.
    pub(super) stat_sn: u32,
}

async fn send_raw(stream: &mut TcpStream, pdu: &Pdu) -> bool {
    stream
        .write_all(&pdu.to_bytes(Digests::default()))
        .await
        .is_ok()
}

pub(super) async fn login_phase(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Joined> {
    let mut login = Login::new(&shared.registry, &shared.portal);
    loop {
        let read = tokio::time::timeout(
            LOGIN_PDU_TIMEOUT,
            read_pdu(stream, buf, Digests::default(), LOGIN_MAX_DATA_BYTES),
        )
        .await;
        let pdu = match read {
            Ok(Ok(Read::Pdu(p))) => p,
            Ok(Ok(Read::Eof)) => return None,
            Ok(Ok(Read::Bad(e))) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad pdu during login");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed during login");
                return None;
            }
            Err(_) => {
                tracing::warn!(%peer, "closing connection: login timed out");
                return None;
            }
        };
        let Ok(Request::Login(req)) = Request::parse(&pdu) else {
            // §6.3: only Login PDUs are valid before full feature phase.
            tracing::warn!(%peer, opcode = pdu.opcode_byte(), "closing connection: non-login pdu during login");
            return None;
        };
        match login.handle(&req) {
            Step::Continue(resp) => {
                if !send_raw(stream, &resp).await {
                    return None;
                }
            }
            Step::Fail(resp) => {
                tracing::warn!(%peer, class = resp.bhs[36], detail = resp.bhs[37], "login refused");
                let _ = send_raw(stream, &resp).await;
                return None;
            }
            Step::Complete(mut resp, est) => {
                let attached = attach(shared, &est);
                let (session, conn_params) = match attached {
                    Ok(x) => x,
                    Err(st) => {
                        tracing::warn!(%peer, class = st.0, detail = st.1, "login refused");
                        resp.bhs[1] &= 0x7f;
                        resp.bhs[36] = st.0;
                        resp.bhs[37] = st.1;
                        resp.data = Bytes::new();
                        let _ = send_raw(stream, &resp).await;
                        return None;
                    }
                };
                resp.bhs[14..16].copy_from_slice(&session.tsih.to_be_bytes());
                if !send_raw(stream, &resp).await {
                    shared.sessions.leave(&session, est.cid);
                    return None;
                }
                return Some(Joined {
                    session,
                    cid: est.cid,
                    params: conn_params,
                    stat_sn: est.next_stat_sn,
                });
            }
        }
    }
}

/// Creates the session or joins an existing one (§5.3); returns the connection's parameters.
fn attach(shared: &Shared, est: &Established) -> Result<(Arc<Session>, Params), (u8, u8)> {
    if est.tsih != 0 {
        let session = shared
            .sessions
            .join(est.tsih, est.isid, &est.initiator_name, est.cid)
            .map_err(|e| match e {
                JoinError::NoSuchSession => status::SESSION_DOES_NOT_EXIST,
                JoinError::TooManyConnections => status::TOO_MANY_CONNECTIONS,
            })?;
        // Session-wide values come from the leading login; digests and the receive limit are
        // per connection (§13).
        let mut p = session.params.clone();
        p.header_digest = est.params.header_digest;
        p.data_digest = est.params.data_digest;
        p.initiator_max_recv_data_segment_bytes = est.params.initiator_max_recv_data_segment_bytes;
        return Ok((session, p));
    }
    let target_name = match &est.kind {
        SessionKind::Discovery => "",
        SessionKind::Normal(t) => t.iqn.as_str(),
    };
    let nexus = Nexus {
        initiator_port: format!("{},i,0x{}", est.initiator_name, hex(&est.isid)),
        initiator_name: est.initiator_name.clone(),
        target_port: format!("{},t,0x{:04x}", target_name, shared.portal.tpgt),
        relative_port: 1,
    };
    let session = shared.sessions.create(
        NewSession {
            isid: est.isid,
            initiator_name: est.initiator_name.clone(),
            kind: est.kind.clone(),
            params: est.params.clone(),
            cmd_sn: est.cmd_sn,
            nexus,
        },
        est.cid,
    );
    Ok((session, est.params.clone()))
}
