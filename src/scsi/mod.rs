//! Transport-free SCSI (tgt's split): a command arrives as a CDB with its data, a status with its
//! data and sense goes back. The iSCSI target calls `LunMap::execute`; logical units implement
//! `LogicalUnit`. Disk LUs (`sbc`) call `gateway::block::BlockDevice`.
//!
//! Must not know about iSCSI (no PDUs, no sessions): the transport hands over complete data-out
//! and takes complete data-in. Invariant: every command gets a response; malformed CDBs and
//! failures become CHECK CONDITION with sense data, never a panic.

pub mod cdb;
pub mod sbc;
pub mod sense;
pub mod smc;
pub mod spc;
pub mod ssc;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

pub use sbc::Disk;

pub use crate::gateway::block::BoxFuture;

/// SAM status codes (SAM-5 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// The I_T nexus a command came through: reservations are keyed on it (SPC-4 §5.13).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexus {
    /// iSCSI initiator port name: `<initiator name>,i,0x<ISID in hex>`.
    pub initiator_port: String,
    /// The initiator device name alone (TransportID for persistent reservations, SPC-4 §7.6.4.6).
    pub initiator_name: String,
    /// iSCSI target port name: `<target name>,t,0x<TPGT in hex>`.
    pub target_port: String,
    /// Relative target port identifier (VPD 83h), 1-based.
    pub relative_port: u16,
}

/// One SCSI command as the transport delivers it.
#[derive(Debug, Clone)]
pub struct ScsiRequest {
    pub lun: u64,
    /// The CDB as received (6 to 16 bytes for the commands we support; longer ones are passed on).
    pub cdb: Bytes,
    /// All data-out the initiator sent for this command (empty for non-writes).
    pub data_out: Bytes,
    /// The initiator's expected data-in length; data-in beyond it is cut by the transport.
    pub expected_in: u32,
    pub nexus: Arc<Nexus>,
}

/// The outcome of one command.
#[derive(Debug, Clone)]
pub struct ScsiResponse {
    pub status: Status,
    pub data_in: Bytes,
    /// Fixed-format (or descriptor-format) sense data for CHECK CONDITION.
    pub sense: Option<Bytes>,
}

impl ScsiResponse {
    pub fn good(data_in: Bytes) -> Self {
        Self {
            status: Status::Good,
            data_in,
            sense: None,
        }
    }
}

/// A logical unit: a disk (`sbc`), later tape drives (`ssc`) and a changer (`smc`).
pub trait LogicalUnit: Send + Sync {
    fn execute<'a>(&'a self, req: &'a ScsiRequest) -> BoxFuture<'a, ScsiResponse>;
    /// LUN RESET or TARGET RESET task management (SAM-5 §7.7): clears RESERVE/RELEASE
    /// reservations and unit attention bookkeeping as the standard says; persistent
    /// reservations survive.
    fn reset(&self) {}
    /// The nexus is gone (session closed): release what only that nexus held (RESERVE(6)).
    fn nexus_lost(&self, _nexus: &Nexus) {}
    /// Bytes of data-out this CDB asks for (the SCSI transfer length of SAM-5 §5.4.3), so the
    /// transport can report write residuals; `None` when the unit cannot tell (bad CDB).
    fn data_out_length(&self, _cdb: &[u8]) -> Option<u64> {
        None
    }
}

/// The logical units of one target, by LUN. Answers REPORT LUNS itself and rejects unknown LUNs.
#[derive(Default)]
pub struct LunMap {
    luns: BTreeMap<u64, Arc<dyn LogicalUnit>>,
}

impl std::fmt::Debug for LunMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunMap")
            .field("luns", &self.luns.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LunMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, lun: u64, unit: Arc<dyn LogicalUnit>) {
        self.luns.insert(lun, unit);
    }

    pub fn get(&self, lun: u64) -> Option<&Arc<dyn LogicalUnit>> {
        self.luns.get(&lun)
    }

    pub fn luns(&self) -> impl Iterator<Item = u64> + '_ {
        self.luns.keys().copied()
    }

    pub fn units(&self) -> impl Iterator<Item = &Arc<dyn LogicalUnit>> + '_ {
        self.luns.values()
    }

    /// Runs one command: REPORT LUNS and commands to unknown LUNs are answered here
    /// (SPC-4 §6.33, §4.7.2 of SAM-5 for the unknown-LUN rules), everything else is the
    /// logical unit's.
    pub fn execute<'a>(&'a self, req: &'a ScsiRequest) -> BoxFuture<'a, ScsiResponse> {
        let opcode = req.cdb.first().copied();
        if opcode == Some(cdb::op::REPORT_LUNS) {
            let resp = match cdb::parse(&req.cdb) {
                Ok(cdb::Command::ReportLuns { select, alloc }) => self.report_luns(select, alloc),
                Ok(_) => ScsiResponse::check(sense::INVALID_OPCODE),
                Err(s) => ScsiResponse::check(s),
            };
            return Box::pin(std::future::ready(resp));
        }
        if let Some(unit) = self.luns.get(&req.lun) {
            return unit.execute(req);
        }
        let resp = match cdb::parse(&req.cdb) {
            // SPC-4 §6.6.2: qualifier 011b, type 1Fh: no LU can be addressed at this LUN.
            Ok(cdb::Command::Inquiry {
                evpd: false, alloc, ..
            }) => ScsiResponse::good(spc::truncate(spc::inquiry::standard(0x7f, ""), alloc)),
            Ok(cdb::Command::RequestSense { desc, alloc }) => {
                let s = sense::LUN_NOT_SUPPORTED;
                let d = if desc {
                    s.descriptor()
                } else {
                    s.fixed().to_vec()
                };
                ScsiResponse::good(spc::truncate(d, alloc))
            }
            Err(s) if s == sense::INVALID_OPCODE => ScsiResponse::check(s),
            _ => ScsiResponse::check(sense::LUN_NOT_SUPPORTED),
        };
        Box::pin(std::future::ready(resp))
    }

    /// `LogicalUnit::data_out_length` of the unit at `lun` (0 for REPORT LUNS and unknown LUNs,
    /// which take no data-out).
    pub fn data_out_length(&self, lun: u64, cdb: &[u8]) -> Option<u64> {
        if cdb.first() == Some(&cdb::op::REPORT_LUNS) {
            return Some(0);
        }
        match self.luns.get(&lun) {
            Some(unit) => unit.data_out_length(cdb),
            None => Some(0),
        }
    }

    fn report_luns(&self, select: u8, alloc: u32) -> ScsiResponse {
        // SPC-4 §6.33: alloc must hold at least the 16-byte minimum.
        if alloc < 16 {
            return ScsiResponse::check(sense::Sense::invalid_cdb_field(6, None));
        }
        let luns: Vec<u64> = match select {
            // 00h all, 02h all: we have no well-known LUs, so every form lists the same LUs;
            // 01h lists well-known LUs only (none).
            0x00 | 0x02 => self.luns.keys().copied().collect(),
            0x01 => Vec::new(),
            _ => return ScsiResponse::check(sense::Sense::invalid_cdb_field(2, None)),
        };
        let mut out = vec![0u8; 8];
        for lun in &luns {
            out.extend_from_slice(&encode_lun(*lun));
        }
        let n = out.len() - 8;
        spc::put_len::<4>(&mut out, 0, n);
        ScsiResponse::good(spc::truncate(out, alloc))
    }
}

/// SAM-5 §4.7: peripheral addressing below 256, flat space addressing up to 16383.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        let l = (lun & 0x3fff) as u16;
        b[..2].copy_from_slice(&(0x4000 | l).to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::sbc::testkit::{disk, nexus, run, sense_of};
    use super::*;

    fn map() -> LunMap {
        let mut m = LunMap::new();
        m.insert(0, Arc::new(disk()));
        m.insert(3, Arc::new(disk()));
        m
    }

    async fn exec(m: &LunMap, lun: u64, cdb: &[u8]) -> ScsiResponse {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let req = ScsiRequest {
            lun,
            cdb: Bytes::from(c),
            data_out: Bytes::new(),
            expected_in: 4096,
            nexus: nexus("a"),
        };
        m.execute(&req).await
    }

    #[tokio::test]
    async fn report_luns_selects() {
        let m = map();
        // (select, alloc, expected list length or asc)
        let cases: [(u8, u8, Result<usize, u8>); 5] = [
            (0, 0xff, Ok(16)),
            (2, 0xff, Ok(16)),
            (1, 0xff, Ok(0)),
            (3, 0xff, Err(0x24)),
            (0, 8, Err(0x24)),
        ];
        for (select, alloc, expect) in cases {
            let r = exec(&m, 7, &[0xa0, 0, select, 0, 0, 0, 0, 0, 0, alloc, 0, 0]).await;
            match expect {
                Ok(n) => {
                    assert_eq!(r.status, Status::Good);
                    assert_eq!(r.data_in[3] as usize, n);
                    assert_eq!(r.data_in.len(), 8 + n);
                }
                Err(asc) => assert_eq!(sense_of(&r).map(|s| s.1), Some(asc)),
            }
        }
        let r = exec(&m, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0]).await;
        assert_eq!(&r.data_in[16..24], &[0, 3, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn unknown_lun_answers() {
        let m = map();
        let r = exec(&m, 9, &[0x12, 0, 0, 0, 36, 0]).await;
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data_in[0], 0x7f);
        let r = exec(&m, 9, &[0x00]).await;
        assert_eq!(sense_of(&r), Some((5, 0x25, 0)));
        let r = exec(&m, 9, &[0x03, 0, 0, 0, 18, 0]).await;
        assert_eq!((r.data_in[2], r.data_in[12]), (5, 0x25));
        // Known LUN is delegated (its first TUR reports the power-on UA).
        let d = disk();
        let r = run(&d, &nexus("a"), &[0], &[]).await;
        assert_eq!(sense_of(&r), Some((6, 0x29, 0)));
        let r = exec(&m, 3, &[0x00]).await;
        assert_eq!(sense_of(&r), Some((6, 0x29, 0)));
    }

    #[test]
    fn lun_encoding() {
        let cases = [(0u64, [0u8, 0]), (5, [0, 5]), (300, [0x41, 0x2c])];
        for (lun, first) in cases {
            assert_eq!(&encode_lun(lun)[..2], &first);
        }
    }
}
