//! SPC-4 behaviour shared by every logical unit type: per-LU state (unit attentions, SPC-2
//! and persistent reservations, mode parameters), the reservation access rules, and the
//! primary commands (INQUIRY in `inquiry`, MODE SENSE/SELECT in `mode`, PERSISTENT RESERVE in
//! `pr`, REPORT SUPPORTED OPERATION CODES in `opcodes`).
//!
//! Must not touch the medium: commands that need the block device live in `sbc`. Invariant:
//! `LuState` is only locked for short, non-async sections, so no lock is held across I/O.

pub mod inquiry;
pub mod mode;
pub mod opcodes;
pub mod pr;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::cdb::Command;
use super::sense::{self, Sense};
use super::{Nexus, ScsiResponse};
use crate::gateway::GatewayError;

/// Outcome of a command body: data-in, or the response that ends the command early.
pub type CmdResult = Result<Bytes, ScsiResponse>;

impl From<Sense> for ScsiResponse {
    fn from(s: Sense) -> Self {
        ScsiResponse::check(s)
    }
}

impl From<GatewayError> for ScsiResponse {
    fn from(e: GatewayError) -> Self {
        sense::gateway_error(&e)
    }
}

/// Unit attentions queued per nexus; more than this and the oldest are dropped (SAM-5 §5.14
/// lets a device server coalesce them).
const MAX_PENDING_UA: usize = 8;

/// Mutable state of one logical unit, behind the LU's mutex.
#[derive(Debug)]
pub struct LuState {
    /// Nexuses that have already been told about the power-on (SAM-5 §6.3.1).
    seen: HashSet<Nexus>,
    ua: HashMap<Nexus, VecDeque<Sense>>,
    /// SPC-2 RESERVE(6/10) holder (SPC-2 §7.21).
    spc2: Option<Nexus>,
    pub pr: pr::PrState,
    /// Caching mode page WCE (SBC-4 §6.5.5): with it clear every write is forced unit access.
    pub wce: bool,
}

impl Default for LuState {
    fn default() -> Self {
        Self {
            seen: HashSet::new(),
            ua: HashMap::new(),
            spc2: None,
            pr: pr::PrState::default(),
            wce: true,
        }
    }
}

/// How a command is affected by reservations (SPC-4 §5.13.1 table 46, SBC-4 §4.17 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed under every reservation type (INQUIRY, TEST UNIT READY, READ CAPACITY...).
    Free,
    /// Conflicts only under the exclusive-access types.
    Read,
    /// Conflicts under every type.
    Write,
    /// RESERVE/RELEASE(6/10): their own rules.
    Spc2,
    /// PERSISTENT RESERVE OUT: its own rules in `pr`.
    PrOut,
}

pub fn access(cmd: &Command) -> Access {
    use Command::*;
    match cmd {
        TestUnitReady
        | RequestSense { .. }
        | Inquiry { .. }
        | ReportLuns { .. }
        | ReportSupportedOpcodes { .. }
        | PersistentReserveIn { .. }
        | ReadCapacity10
        | ReadCapacity16 { .. }
        | PreventAllow { .. } => Access::Free,
        ModeSense { .. } | Read { .. } | Verify { .. } | GetLbaStatus { .. } | PreFetch { .. } => {
            Access::Read
        }
        ModeSelect { .. }
        | StartStopUnit { .. }
        | Write { .. }
        | WriteAndVerify { .. }
        | WriteSame { .. }
        | Unmap { .. }
        | SynchronizeCache { .. }
        | CompareAndWrite { .. } => Access::Write,
        Reserve | Release => Access::Spc2,
        PersistentReserveOut { .. } => Access::PrOut,
    }
}

/// Commands that neither report nor clear a pending unit attention (SAM-5 §5.14).
pub fn ua_exempt(opcode: u8) -> bool {
    use super::cdb::op;
    matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
}

impl LuState {
    /// Queues the power-on unit attention for a nexus seen for the first time.
    pub fn note_nexus(&mut self, nexus: &Nexus) {
        if !self.seen.contains(nexus) {
            self.seen.insert(nexus.clone());
            self.queue_ua(nexus, sense::POWER_ON_RESET);
        }
    }

    pub fn queue_ua(&mut self, nexus: &Nexus, s: Sense) {
        let q = self.ua.entry(nexus.clone()).or_default();
        if !q.contains(&s) {
            if q.len() >= MAX_PENDING_UA {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// Queues `s` for every nexus in `targets`.
    pub fn queue_ua_all<'a>(&mut self, targets: impl IntoIterator<Item = &'a Nexus>, s: Sense) {
        for n in targets {
            self.queue_ua(n, s);
        }
    }

    /// Queues `s` for every nexus that has talked to this LU except `except`.
    pub fn queue_ua_others(&mut self, except: &Nexus, s: Sense) {
        let others: Vec<Nexus> = self.seen.iter().filter(|n| *n != except).cloned().collect();
        self.queue_ua_all(&others, s);
    }

    pub fn take_ua(&mut self, nexus: &Nexus) -> Option<Sense> {
        self.ua.get_mut(nexus).and_then(VecDeque::pop_front)
    }

    /// LUN RESET: SPC-2 reservations go, persistent ones stay (SPC-4 §5.13.1), and every
    /// nexus gets the reset unit attention on its next command.
    pub fn reset(&mut self) {
        self.spc2 = None;
        self.ua.clear();
        self.seen.clear();
    }

    pub fn nexus_lost(&mut self, nexus: &Nexus) {
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
        self.ua.remove(nexus);
        self.seen.remove(nexus);
    }

    /// The reservation check every command passes before it runs.
    pub fn check_access(&self, nexus: &Nexus, access: Access) -> Result<(), ScsiResponse> {
        if let Some(holder) = &self.spc2
            && holder != nexus
            && !matches!(access, Access::Free | Access::Spc2)
        {
            return Err(ScsiResponse::conflict());
        }
        if self.spc2.is_some() && access == Access::PrOut {
            return Err(ScsiResponse::conflict());
        }
        match access {
            Access::Free | Access::PrOut => Ok(()),
            // SPC-4 §5.13.3: RESERVE/RELEASE conflict while persistent reservations are in use.
            Access::Spc2 if self.pr.in_use() => Err(ScsiResponse::conflict()),
            Access::Spc2 => Ok(()),
            Access::Read | Access::Write => {
                if self.pr.allows(nexus, access == Access::Write) {
                    Ok(())
                } else {
                    Err(ScsiResponse::conflict())
                }
            }
        }
    }

    /// RESERVE(6/10): idempotent for the holder, conflict for anyone else.
    pub fn reserve(&mut self, nexus: &Nexus) -> CmdResult {
        match &self.spc2 {
            Some(h) if h != nexus => Err(ScsiResponse::conflict()),
            _ => {
                self.spc2 = Some(nexus.clone());
                Ok(Bytes::new())
            }
        }
    }

    /// RELEASE(6/10): a release by a non-holder succeeds without effect (SPC-2 §7.17).
    pub fn release(&mut self, nexus: &Nexus) -> CmdResult {
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
        Ok(Bytes::new())
    }

    /// REQUEST SENSE (SPC-4 §6.39): reports and clears one pending unit attention, or NO SENSE.
    pub fn request_sense(&mut self, nexus: &Nexus, desc: bool, alloc: u32) -> CmdResult {
        let s = self.take_ua(nexus).unwrap_or(sense::NO_SENSE);
        let data = if desc {
            s.descriptor()
        } else {
            s.fixed().to_vec()
        };
        Ok(truncate(data, alloc))
    }
}

/// The primary commands every LU type answers alike from its `LuState`: REQUEST SENSE,
/// RESERVE/RELEASE, REPORT LUNS (a LU reached without a `LunMap` reports only LUN 0) and
/// PERSISTENT RESERVE IN/OUT. `None` for any other command.
pub fn shared(st: &mut LuState, cmd: &Command, nexus: &Nexus, data: &[u8]) -> Option<CmdResult> {
    use Command::*;
    Some(match *cmd {
        RequestSense { desc, alloc } => st.request_sense(nexus, desc, alloc),
        Reserve => st.reserve(nexus),
        Release => st.release(nexus),
        ReportLuns { alloc, .. } => {
            let mut d = vec![0u8; 16];
            d[3] = 8;
            Ok(truncate(d, alloc))
        }
        PersistentReserveIn {
            service_action,
            alloc,
        } => pr::pr_in(st, service_action, alloc),
        PersistentReserveOut {
            service_action,
            scope,
            pr_type,
            param_len,
        } => pr::pr_out(st, nexus, service_action, scope, pr_type, param_len, data),
        _ => return None,
    })
}

/// Cuts data-in to the allocation length (SPC-4 §4.2.5.6).
pub fn truncate(mut data: Vec<u8>, alloc: u32) -> Bytes {
    let alloc = usize::try_from(alloc).unwrap_or(usize::MAX);
    data.truncate(alloc);
    Bytes::from(data)
}

/// Writes a big-endian length into `buf[at..at + N]`, saturating if it does not fit.
pub fn put_len<const N: usize>(buf: &mut [u8], at: usize, len: usize) {
    let v = u64::try_from(len).unwrap_or(u64::MAX);
    let max = if N >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * N)) - 1
    };
    let bytes = v.min(max).to_be_bytes();
    if let Some(dst) = buf.get_mut(at..at + N) {
        dst.copy_from_slice(&bytes[8 - N..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(i: &str) -> Nexus {
        Nexus {
            initiator_port: format!("{i},i,0x1"),
            initiator_name: i.into(),
            target_port: "t,t,0x1".into(),
            relative_port: 1,
        }
    }

    #[test]
    fn power_on_ua_once_per_nexus() {
        let mut s = LuState::default();
        let (a, b) = (nexus("a"), nexus("b"));
        s.note_nexus(&a);
        s.note_nexus(&a);
        assert_eq!(s.take_ua(&a), Some(sense::POWER_ON_RESET));
        assert_eq!(s.take_ua(&a), None);
        assert_eq!(s.take_ua(&b), None);
        s.note_nexus(&b);
        assert_eq!(s.take_ua(&b), Some(sense::POWER_ON_RESET));
    }

    #[test]
    fn spc2_reservation_blocks_other_nexus() {
        let mut s = LuState::default();
        let (a, b) = (nexus("a"), nexus("b"));
        assert!(s.reserve(&a).is_ok());
        assert!(s.reserve(&a).is_ok());
        assert!(s.reserve(&b).is_err());
        let table = [
            (Access::Free, true),
            (Access::Read, false),
            (Access::Write, false),
            (Access::Spc2, true),
            (Access::PrOut, false),
        ];
        for (acc, ok) in table {
            assert_eq!(s.check_access(&b, acc).is_ok(), ok, "{acc:?}");
            assert!(s.check_access(&a, acc).is_ok() || acc == Access::PrOut);
        }
        assert!(s.release(&b).is_ok());
        assert!(s.check_access(&b, Access::Write).is_err());
        assert!(s.release(&a).is_ok());
        assert!(s.check_access(&b, Access::Write).is_ok());
        assert!(s.reserve(&a).is_ok());
        s.nexus_lost(&a);
        assert!(s.check_access(&b, Access::Write).is_ok());
    }

    #[test]
    fn put_len_saturates() {
        let mut b = [0u8; 4];
        put_len::<2>(&mut b, 0, 0x1_0000);
        assert_eq!(&b[..2], &[0xff, 0xff]);
        put_len::<2>(&mut b, 2, 0x0102);
        assert_eq!(&b[2..], &[1, 2]);
        put_len::<4>(&mut b, 2, 1); // out of bounds: ignored rather than panicking
    }
}
