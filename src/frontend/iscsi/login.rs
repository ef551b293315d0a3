//! The login phase of one connection (RFC 7143 §6.3): security stage (CSG 0) → operational
//! stage (CSG 1) → full feature phase (NSG 3), with transit bits, text continuation, discovery
//! and normal sessions, and CHAP when the target or the discovery portal requires it.
//!
//! A pure state machine over typed login requests: no sockets. Attaching the result to a session
//! (TSIH allocation, adding a connection) is the caller's job. Invariant: `Step::Complete` is only
//! returned after authentication succeeded whenever CHAP is configured for what is being logged
//! into, and every failure answers with a Login Response carrying a status class (§11.13.5).

use bytes::{Bytes, BytesMut};

use super::chap::Chap;
use super::params::{self, Answer, OUR_MAX_RECV_DATA_SEGMENT_BYTES, Params};
use super::pdu::target::{
    self, EXP_CMD_SN_OFFSET, LoginResponse, MAX_CMD_SN_OFFSET, STAT_SN_OFFSET,
};
use super::pdu::{LoginRequest, Pdu};
use super::{ChapConfig, PortalConfig, Registry, TargetEntry};

/// Commands the session admits ahead of ExpCmdSN (the window MaxCmdSN - ExpCmdSN + 1).
pub const CMD_WINDOW: u32 = 128;

/// Login status (class, detail), RFC 7143 §11.13.5.
pub mod status {
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0x00);
    pub const AUTH_FAILURE: (u8, u8) = (2, 0x01);
    pub const NOT_FOUND: (u8, u8) = (2, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 0x07);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 0x0a);
    pub const TARGET_ERROR: (u8, u8) = (3, 0x00);
}

/// What is being logged into.
#[derive(Debug, Clone)]
pub enum SessionKind {
    Discovery,
    Normal(TargetEntry),
}

/// A completed login, ready to be attached to a session.
#[derive(Debug, Clone)]
pub struct Established {
    pub kind: SessionKind,
    pub initiator_name: String,
    pub isid: [u8; 6],
    /// Zero for a new session; otherwise the session this connection joins.
    pub tsih: u16,
    pub cid: u16,
    pub params: Params,
    pub cmd_sn: u32,
    pub next_stat_sn: u32,
}

/// The machine's answer to one login request.
#[derive(Debug)]
pub enum Step {
    /// Send the response and wait for the next request.
    Continue(Pdu),
    /// Send the response (a failure status) and close the connection.
    Fail(Pdu),
    /// Send the response (after the caller fills in the TSIH) and enter full feature phase.
    Complete(Pdu, Box<Established>),
}

struct First {
    kind: SessionKind,
    initiator_name: String,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    cmd_sn: u32,
}

pub struct Login<'a> {
    registry: &'a Registry,
    portal: &'a PortalConfig,
    first: Option<First>,
    stage: u8,
    chap_cfg: Option<ChapConfig>,
    chap: Option<Chap>,
    params: Params,
    declared_mrdsl: bool,
    stat_sn: u32,
    partial: BytesMut,
}

fn find<'p>(pairs: &'p [(String, String)], key: &str) -> Option<&'p str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl<'a> Login<'a> {
    pub fn new(registry: &'a Registry, portal: &'a PortalConfig) -> Self {
        Self {
            registry,
            portal,
            first: None,
            stage: 0,
            chap_cfg: None,
            chap: None,
            params: Params::default(),
            declared_mrdsl: false,
            stat_sn: 0,
            partial: BytesMut::new(),
        }
    }

    fn response(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        status: (u8, u8),
        data: Bytes,
    ) -> Pdu {
        let mut pdu = target::login_response(LoginResponse {
            transit,
            csg: self.stage,
            nsg: if transit { req.nsg } else { 0 },
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            status_class: status.0,
            status_detail: status.1,
            data,
        });
        let cmd_sn = self.first.as_ref().map_or(req.cmd_sn, |f| f.cmd_sn);
        pdu.set_u32(STAT_SN_OFFSET, self.stat_sn);
        pdu.set_u32(EXP_CMD_SN_OFFSET, cmd_sn);
        pdu.set_u32(MAX_CMD_SN_OFFSET, cmd_sn.wrapping_add(CMD_WINDOW - 1));
        // Each login response consumes a StatSN, as any status-bearing response does.
        self.stat_sn = self.stat_sn.wrapping_add(1);
        pdu
    }

    fn fail(&mut self, req: &LoginRequest, status: (u8, u8)) -> Step {
        Step::Fail(self.response(req, false, status, Bytes::new()))
    }

    /// Handles one login request.
    pub fn handle(&mut self, req: &LoginRequest) -> Step {
        if self.first.is_none() {
            // §6.3: the first response's StatSN is arbitrary; follow the initiator's ExpStatSN.
            self.stat_sn = req.exp_stat_sn;
        }
        // Text continuation (§6.3.4 / §11.12.3): gather until C is clear, answer empty.
        self.partial.extend_from_slice(&req.data);
        if self.partial.len() > 64 * 1024 {
            return self.fail(req, status::INITIATOR_ERROR);
        }
        if req.cont {
            if self.first.is_none() {
                self.stage = req.csg;
            }
            return Step::Continue(self.response(req, false, (0, 0), Bytes::new()));
        }
        let text = std::mem::take(&mut self.partial);
        let pairs = params::parse(&text);
        let mut reply: Vec<(String, String)> = Vec::new();

        if self.first.is_none() {
            if req.version_min > 0 {
                return self.fail(req, status::UNSUPPORTED_VERSION);
            }
            let Some(initiator_name) = find(&pairs, "InitiatorName") else {
                return self.fail(req, status::MISSING_PARAMETER);
            };
            let kind = match find(&pairs, "SessionType").unwrap_or("Normal") {
                "Discovery" => {
                    self.chap_cfg = self.portal.discovery_chap.clone();
                    SessionKind::Discovery
                }
                "Normal" => {
                    let Some(name) = find(&pairs, "TargetName") else {
                        return self.fail(req, status::MISSING_PARAMETER);
                    };
                    let Some(entry) = self.registry.get(name) else {
                        return self.fail(req, status::NOT_FOUND);
                    };
                    self.chap_cfg = entry.chap.clone();
                    // §13.9: the first response of a normal session names the portal group.
                    reply.push(("TargetPortalGroupTag".into(), self.portal.tpgt.to_string()));
                    SessionKind::Normal(entry)
                }
                _ => return self.fail(req, status::INITIATOR_ERROR),
            };
            self.first = Some(First {
                kind,
                initiator_name: initiator_name.to_owned(),
                isid: req.isid,
                tsih: req.tsih,
                cid: req.cid,
                cmd_sn: req.cmd_sn,
            });
            self.stage = req.csg;
        }
        // ISID, TSIH and CID name the login being negotiated; the ITT may change per PDU.
        let same_login = self
            .first
            .as_ref()
            .is_some_and(|f| f.isid == req.isid && f.tsih == req.tsih && f.cid == req.cid);
        if !same_login {
            return self.fail(req, status::INITIATOR_ERROR);
        }

        // Stages only move forward, and only as we agreed (§6.3): the initiator may open at the
        // operational stage, skipping security, which is refused when CHAP is required.
        match (self.stage, req.csg) {
            (s, c) if s == c => {}
            (0, 1) if self.chap.is_none() => self.stage = 1,
            _ => return self.fail(req, status::INITIATOR_ERROR),
        }
        if self.stage == 1 && self.chap_cfg.is_some() && !self.chap_authenticated() {
            return self.fail(req, status::AUTH_FAILURE);
        }
        if req.csg > 1 {
            return self.fail(req, status::INITIATOR_ERROR);
        }

        for (key, value) in &pairs {
            match key.as_str() {
                "AuthMethod" => {
                    if self.stage != 0 {
                        reply.push((key.clone(), "Irrelevant".into()));
                        continue;
                    }
                    let offered: Vec<&str> = value.split(',').collect();
                    if self.chap_cfg.is_some() {
                        if !offered.contains(&"CHAP") {
                            return self.fail(req, status::AUTH_FAILURE);
                        }
                        match Chap::new() {
                            Ok(c) => self.chap = Some(c),
                            Err(_) => return self.fail(req, status::TARGET_ERROR),
                        }
                        reply.push((key.clone(), "CHAP".into()));
                    } else if offered.contains(&"None") {
                        reply.push((key.clone(), "None".into()));
                    } else {
                        return self.fail(req, status::AUTH_FAILURE);
                    }
                }
                k if k.starts_with("CHAP_") => {}
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "SendTargets" | "TargetAlias" => reply.push((key.clone(), "Irrelevant".into())),
                _ => match self.params.negotiate(key, value) {
                    Answer::Reply(v) => reply.push((key.clone(), v)),
                    Answer::NotMine | Answer::Silent => {}
                },
            }
        }
        if let (Some(chap), Some(cfg), 0) = (self.chap.as_mut(), self.chap_cfg.as_ref(), self.stage)
        {
            match chap.step(&pairs, cfg) {
                Ok(keys) => reply.extend(keys),
                Err(e) => {
                    tracing::warn!(error = %e, "chap authentication failed");
                    return self.fail(req, status::AUTH_FAILURE);
                }
            }
        }
        if self.stage == 1 && !self.declared_mrdsl {
            self.declared_mrdsl = true;
            reply.push((
                "MaxRecvDataSegmentLength".into(),
                OUR_MAX_RECV_DATA_SEGMENT_BYTES.to_string(),
            ));
        }

        let mut transit = req.transit;
        if transit && self.stage == 0 && self.chap_cfg.is_some() && !self.chap_authenticated() {
            if self.chap.is_none() {
                // The initiator wants to leave security without ever offering CHAP.
                return self.fail(req, status::AUTH_FAILURE);
            }
            // CHAP still in progress: stay in the security stage (§6.3.1).
            transit = false;
        }
        if transit && (req.nsg <= self.stage || req.nsg == 2) {
            return self.fail(req, status::INITIATOR_ERROR);
        }
        let data = params::encode(&reply);
        let pdu = self.response(req, transit, (0, 0), data);
        if !transit {
            return Step::Continue(pdu);
        }
        if req.nsg != 3 {
            self.stage = req.nsg;
            return Step::Continue(pdu);
        }
        let Some(first) = self.first.take() else {
            return self.fail(req, status::TARGET_ERROR);
        };
        Step::Complete(
            pdu,
            Box::new(Established {
                kind: first.kind,
                initiator_name: first.initiator_name,
                isid: first.isid,
                tsih: first.tsih,
                cid: first.cid,
                params: self.params.clone(),
                cmd_sn: first.cmd_sn,
                next_stat_sn: self.stat_sn,
            }),
        )
    }

    fn chap_authenticated(&self) -> bool {
        self.chap.as_ref().is_some_and(Chap::authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::LunMap;
    use std::sync::Arc;

    fn setup(chap: Option<ChapConfig>) -> (Registry, PortalConfig) {
        let reg = Registry::new();
        reg.add(TargetEntry {
            iqn: "iqn.t".into(),
            luns: Arc::new(LunMap::new()),
            chap,
        });
        let portal = PortalConfig {
            advertise: "127.0.0.1:3260".parse().unwrap(),
            tpgt: 1,
            discovery_chap: None,
            nop_in_interval: None,
        };
        (reg, portal)
    }

    fn req(csg: u8, nsg: u8, transit: bool, text: &str) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 5,
            exp_stat_sn: 0,
            data: Bytes::from(text.replace('\n', "\0")),
        }
    }

    fn status_of(step: &Step) -> (u8, u8) {
        let pdu = match step {
            Step::Continue(p) | Step::Fail(p) | Step::Complete(p, _) => p,
        };
        (pdu.bhs[36], pdu.bhs[37])
    }

    use proptest::prelude::Strategy as _;

    proptest::proptest! {
        #[test]
        fn login_never_panics_on_any_request_sequence(
            steps in proptest::collection::vec(
                (proptest::prelude::any::<u8>(),
                 proptest::collection::vec(
                     (proptest::sample::select(vec![
                         "InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A",
                         "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C", "MaxBurstLength",
                         "HeaderDigest", "MaxRecvDataSegmentLength", "X-Odd",
                     ]),
                     proptest::prop_oneof![
                         proptest::sample::select(vec![
                             "iqn.t", "Discovery", "Normal", "CHAP,None", "None", "5", "u",
                             "0x00", "0b", "CRC32C", "4294967296", "",
                         ]).prop_map(str::to_owned),
                         "[ -~]{0,12}",
                     ]),
                     0..6)),
                1..6),
            chap in proptest::prelude::any::<bool>(),
        ) {
            let (reg, portal) = setup(chap.then(|| ChapConfig {
                user: "u".into(),
                secret: "s".into(),
                mutual: Some(("t".into(), "m".into())),
            }));
            let mut l = Login::new(&reg, &portal);
            for (flags, pairs) in steps {
                let text: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                let mut r = req((flags >> 2) & 3, flags & 3, flags & 0x80 != 0, &text);
                r.cont = flags & 0x40 != 0;
                if matches!(l.handle(&r), Step::Fail(_) | Step::Complete(..)) {
                    break;
                }
            }
        }
    }

    #[test]
    fn login_unknown_target_is_not_found() {
        let (reg, portal) = setup(None);
        let mut l = Login::new(&reg, &portal);
        let s = l.handle(&req(
            1,
            3,
            true,
            "InitiatorName=iqn.i\nTargetName=iqn.nope\n",
        ));
        assert!(matches!(s, Step::Fail(_)));
        assert_eq!(status_of(&s), status::NOT_FOUND);
    }

    #[test]
    fn login_without_security_completes_in_one_step() {
        let (reg, portal) = setup(None);
        let mut l = Login::new(&reg, &portal);
        let s = l.handle(&req(
            1,
            3,
            true,
            "InitiatorName=iqn.i\nTargetName=iqn.t\nInitialR2T=No\nFoo=1\n",
        ));
        let Step::Complete(pdu, est) = s else {
            panic!("not complete: {s:?}")
        };
        let text = params::parse(&pdu.data);
        assert!(text.contains(&("Foo".into(), "NotUnderstood".into())));
        assert!(text.contains(&("TargetPortalGroupTag".into(), "1".into())));
        assert!(!est.params.initial_r2t);
        assert_eq!(pdu.bhs[1], 0x80 | (1 << 2) | 3);
    }

    #[test]
    fn login_skipping_chap_is_auth_failure() {
        let (reg, portal) = setup(Some(ChapConfig {
            user: "u".into(),
            secret: "s".into(),
            mutual: None,
        }));
        let mut l = Login::new(&reg, &portal);
        let s = l.handle(&req(1, 3, true, "InitiatorName=iqn.i\nTargetName=iqn.t\n"));
        assert_eq!(status_of(&s), status::AUTH_FAILURE);
        let mut l = Login::new(&reg, &portal);
        let s = l.handle(&req(
            0,
            1,
            true,
            "InitiatorName=iqn.i\nTargetName=iqn.t\nAuthMethod=None\n",
        ));
        assert_eq!(status_of(&s), status::AUTH_FAILURE);
    }

    #[test]
    fn login_with_chap_offered_stays_in_security_stage() {
        let (reg, portal) = setup(Some(ChapConfig {
            user: "u".into(),
            secret: "s".into(),
            mutual: None,
        }));
        let mut l = Login::new(&reg, &portal);
        let s = l.handle(&req(
            0,
            1,
            true,
            "InitiatorName=iqn.i\nTargetName=iqn.t\nAuthMethod=CHAP,None\n",
        ));
        let Step::Continue(pdu) = s else {
            panic!("{s:?}")
        };
        assert_eq!(pdu.bhs[1] & 0x80, 0);
        let s = l.handle(&req(0, 1, true, "CHAP_A=5\n"));
        let Step::Continue(pdu) = s else {
            panic!("{s:?}")
        };
        assert!(find(&params::parse(&pdu.data), "CHAP_C").is_some());
        let s = l.handle(&req(0, 1, true, "CHAP_N=u\nCHAP_R=0x00\n"));
        assert_eq!(status_of(&s), status::AUTH_FAILURE);
    }
}
