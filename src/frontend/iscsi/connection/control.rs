//! Connection-level control PDUs of the full feature phase: task management (RFC 7143
//! §11.5), NOP-Out (§11.18), Text with SendTargets (§11.10, Appendix C) and Logout (§11.14).
//!
//! Split from `connection.rs` to keep the data path apart. Invariant: every request that asks
//! for an answer gets exactly one response PDU, which consumes a StatSN.

use std::sync::Arc;

use bytes::Bytes;

use super::{Conn, Flow, Out, PendingText};
use crate::frontend::iscsi::login::SessionKind;
use crate::frontend::iscsi::params;
use crate::frontend::iscsi::pdu::target::{self, RejectReason};
use crate::frontend::iscsi::pdu::{LogoutRequest, NopOut, RESERVED_TAG, TaskMgmt, TextRequest};
use crate::frontend::iscsi::session::{Session, sn_lt};

impl Conn<'_> {
    pub(super) fn task_mgmt(&mut self, t: TaskMgmt, immediate: bool) -> Flow {
        if !self.admit(immediate, t.cmd_sn) {
            return Flow::Continue;
        }
        let SessionKind::Normal(target) = &self.session.kind else {
            return Flow::Continue;
        };
        let mut flow = Flow::Continue;
        // Responses per §11.6.1.
        let response = match t.function {
            1 => {
                let aborted = self.session.abort_tasks(|itt, _| itt == t.referenced_tag);
                if !aborted.is_empty() {
                    0
                } else if self.session.recently_completed(t.referenced_tag) {
                    // It already answered: nothing was aborted (what tgt does and libiscsi's
                    // AbortTaskSimpleAsync expects).
                    1
                } else if sn_lt(t.ref_cmd_sn, t.cmd_sn) {
                    // Never received although below this request's CmdSN: consider it received
                    // and aborted (§11.5.1).
                    0
                } else {
                    1
                }
            }
            // ABORT TASK SET covers this I_T nexus; CLEAR TASK SET every nexus (SAM-5 §7.3, §7.5).
            2 => {
                self.session.abort_tasks(|_, task| task.lun == t.lun);
                0
            }
            4 => {
                for s in self.same_target_sessions() {
                    s.abort_tasks(|_, task| task.lun == t.lun);
                }
                0
            }
            5 => match target.luns.get(t.lun) {
                Some(unit) => {
                    for s in self.same_target_sessions() {
                        s.abort_tasks(|_, task| task.lun == t.lun);
                    }
                    unit.reset();
                    0
                }
                None => 2,
            },
            6 | 7 => {
                for s in self.same_target_sessions() {
                    s.abort_tasks(|_, _| true);
                }
                for unit in target.luns.units() {
                    unit.reset();
                }
                if t.function == 7 {
                    // A cold reset drops every connection of the target (SAM-5 §7.11).
                    for s in self.same_target_sessions() {
                        s.close();
                    }
                    flow = Flow::Close;
                }
                0
            }
            // ERL 0: no task reassignment (§11.5.1).
            8 => 4,
            _ => 5,
        };
        let live: Vec<u32> = self.writes.keys().copied().collect();
        for itt in live {
            if !self.session.has_task(itt) {
                self.writes.remove(&itt);
            }
        }
        self.send(target::tmf_response(t.itt, response), true);
        flow
    }

    fn same_target_sessions(&self) -> Vec<Arc<Session>> {
        let iqn = self.session.target_iqn();
        self.shared
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.target_iqn() == iqn)
            .collect()
    }

    pub(super) fn nop_out(&mut self, n: NopOut) {
        if n.itt == RESERVED_TAG {
            // An answer to our NOP-In ping, or a ping that wants no reply.
            return;
        }
        if !self.admit(n.immediate, n.cmd_sn) {
            return;
        }
        let mut data = n.data;
        data.truncate(
            usize::try_from(self.params.initiator_max_recv_data_segment_bytes).unwrap_or(0),
        );
        self.send(target::nop_in(n.lun_raw, n.itt, RESERVED_TAG, data), true);
    }

    pub(super) fn text(&mut self, t: TextRequest, bhs: &[u8]) {
        if !self.admit(t.immediate, t.cmd_sn) {
            return;
        }
        // An empty request carrying our TTT asks for the next part of a long answer (§11.11.2).
        if t.ttt != RESERVED_TAG {
            match self.text_pending.take() {
                Some(p) if p.itt == t.itt && p.ttt == t.ttt => self.send_text_part(t.itt, p.rest),
                _ => self.reject(RejectReason::InvalidPduField, bhs),
            }
            return;
        }
        self.text_pending = None;
        let mut reply: Vec<(String, String)> = Vec::new();
        for (key, value) in params::parse(&t.data) {
            if key == "SendTargets" {
                self.send_targets(&value, &mut reply);
            } else {
                reply.push((key, "NotUnderstood".into()));
            }
        }
        self.send_text_part(t.itt, params::encode(&reply));
    }

    /// Sends as much of a text answer as the initiator can take in one PDU; the rest waits for
    /// its continuation request (C bit and a TTT, §11.11.2).
    fn send_text_part(&mut self, itt: u32, data: Bytes) {
        let max = usize::try_from(self.params.initiator_max_recv_data_segment_bytes)
            .unwrap_or(usize::MAX)
            .max(512);
        if data.len() <= max {
            self.send(target::text_response(itt, true, RESERVED_TAG, data), true);
            return;
        }
        let ttt = self.alloc_ttt();
        let part = data.slice(..max);
        self.text_pending = Some(PendingText {
            itt,
            ttt,
            rest: data.slice(max..),
        });
        self.send(target::text_response(itt, false, ttt, part), true);
    }

    /// SendTargets (RFC 7143 §13.3, Appendix C): every target on a discovery session, only
    /// the session's own on a normal one, each with the advertised portal address.
    fn send_targets(&self, value: &str, reply: &mut Vec<(String, String)>) {
        let own = self.session.target_iqn();
        let address = format!(
            "{},{}",
            self.shared.portal.advertise, self.shared.portal.tpgt
        );
        for entry in self.shared.registry.list() {
            let wanted = match (value, own) {
                ("All", None) => true,
                ("All", Some(own)) | ("", Some(own)) => entry.iqn == own,
                (name, None) => entry.iqn == name,
                (name, Some(own)) => entry.iqn == name && name == own,
            };
            if wanted {
                reply.push(("TargetName".into(), entry.iqn.clone()));
                reply.push(("TargetAddress".into(), address.clone()));
            }
        }
    }

    pub(super) fn logout(&mut self, l: LogoutRequest) -> Flow {
        if !self.admit(l.immediate, l.cmd_sn) {
            return Flow::Continue;
        }
        let p = &self.session.params;
        let (t2w, t2r) = (p.default_time2wait, p.default_time2retain);
        let (response, flow) = match l.reason {
            0 => {
                self.send(target::logout_response(l.itt, 0, t2w, t2r), true);
                let _ = self.tx.send(Out::Close);
                self.session.close();
                return Flow::Close;
            }
            1 if l.cid == self.cid => (0, Flow::LoggedOut),
            1 => (1, Flow::Continue),
            // ERL 0: connection recovery is not supported (§11.14.1).
            2 => (2, Flow::Continue),
            _ => {
                self.reject(RejectReason::InvalidPduField, &[]);
                return Flow::Continue;
            }
        };
        self.send(target::logout_response(l.itt, response, t2w, t2r), true);
        flow
    }
}
