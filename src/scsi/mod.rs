//! Transport-free SCSI (tgt's split): a command arrives as a CDB with its data, a status with its
//! data and sense goes back. The iSCSI target calls `LunMap::execute`; logical units implement
//! `LogicalUnit`. Disk LUs (`sbc`) call `gateway::block::BlockDevice`.
//!
//! Must not know about iSCSI (no PDUs, no sessions): the transport hands over complete data-out
//! and takes complete data-in. Invariant: every command gets a response; malformed CDBs and
//! failures become CHECK CONDITION with sense data, never a panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

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
}
