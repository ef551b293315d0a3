//! The tape drive logical unit (SSC-3): `Drive` turns stream commands into calls on the tape
//! loaded in its `gateway::library::DriveBay`, and reports what happened with the sense data
//! SSC-3 prescribes: FILEMARK, EOM and ILI bits, residues in the INFORMATION field, BLANK
//! CHECK at end of data, VOLUME OVERFLOW past the end of the tape, NOT READY without a tape.
//!
//! Presents itself as an IBM ULT3580-TD5 (LTO-5), which backup products know (docs/tapes.md).
//! The primary commands (INQUIRY, MODE SENSE, reservations, PR) reuse `spc`. Invariants: the
//! bay's lock is held for a whole medium command, so commands on one drive never interleave
//! (a tape has one head); no std mutex is held across an await.

mod cdb;
mod pages;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use self::cdb::{Destination, SpaceCode, TapeCommand};
use self::pages::{DriveSettings, MAX_BLOCK_BYTES, PositionInfo};
use super::cdb::Command;
use super::sense::{self, Sense};
use super::spc::inquiry::{self, Product};
use super::spc::{self, Access, CmdResult, LuState, truncate};
use super::{BoxFuture, LogicalUnit, Nexus, ScsiRequest, ScsiResponse, Status};
use crate::gateway::block::DeviceIdentity;
use crate::gateway::library::{BayState, DriveBay};
use crate::gateway::tapes::index::Stop;
use crate::gateway::tapes::medium::{Medium, ReadOutcome, Written};

/// Peripheral device type of a sequential-access device (SPC-4 §6.6.2).
pub const TYPE_TAPE: u8 = 0x01;

pub const DRIVE: Product<'static> = Product {
    peripheral: TYPE_TAPE,
    removable: true,
    vendor: "IBM",
    product: "ULT3580-TD5",
    revision: "TDG1",
    // SSC-3 (SPC-4 §6.6.2 table 150).
    command_set: 0x0300,
};

/// The transport's limit on one command's data, which also bounds a fixed-mode READ/WRITE.
const MAX_TRANSFER_BYTES: u64 = inquiry::limits::MAX_TRANSFER_BYTES;

pub struct Drive {
    bay: Arc<DriveBay>,
    identity: DeviceIdentity,
    state: Mutex<LuState>,
    settings: Mutex<DriveSettings>,
    /// The bay's load generation each nexus has been told about (NOT READY TO READY CHANGE).
    told: Mutex<HashMap<Nexus, u64>>,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("serial", &self.identity.serial)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 16-byte identifier for VPD 83h's NAA designator, from the serial (unique per gateway
/// and drive); the scsi layer has no hash functions, and needs none for this.
pub fn identifier(serial: &str, kind: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = kind;
    for (i, b) in serial.bytes().enumerate() {
        id[1 + i % 15] ^= b;
    }
    id
}

/// CHECK CONDITION with `sense`, still carrying the data read before it.
fn check_with(data: Bytes, s: Sense) -> ScsiResponse {
    let mut r = ScsiResponse::check(s);
    r.data_in = data;
    r
}

fn residue(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn not_ready() -> ScsiResponse {
    sense::MEDIUM_NOT_PRESENT.into()
}

/// The loaded tape, or NOT READY / MEDIUM NOT PRESENT.
fn loaded(st: &mut BayState) -> Result<&mut Medium, ScsiResponse> {
    if !st.loaded {
        return Err(not_ready());
    }
    st.medium.as_mut().ok_or_else(not_ready)
}

fn space_sense(stop: Stop, residue_count: u64) -> ScsiResponse {
    let s = match stop {
        Stop::Filemark => sense::FILEMARK_DETECTED,
        Stop::EndOfData => sense::END_OF_DATA_DETECTED,
        Stop::BeginningOfTape => sense::BEGINNING_OF_MEDIUM_DETECTED,
    };
    s.with_info(residue(residue_count)).into()
}

/// After a write: VOLUME OVERFLOW if some did not fit, early warning if past it, else GOOD.
fn write_outcome(w: Written, wanted: u64, unit_is_bytes: u64) -> CmdResult {
    if w.overflow {
        let left = wanted.saturating_sub(w.count) * unit_is_bytes;
        return Err(sense::VOLUME_OVERFLOW.with_info(residue(left)).into());
    }
    if w.early_warning {
        return Err(sense::END_OF_MEDIUM_DETECTED.with_info(0).into());
    }
    Ok(Bytes::new())
}

impl Drive {
    pub fn new(bay: Arc<DriveBay>) -> Self {
        let identity = DeviceIdentity {
            name: format!("drive{}", bay.index + 1),
            serial: bay.serial.clone(),
            uuid: identifier(&bay.serial, 0x01),
        };
        Self {
            bay,
            identity,
            state: Mutex::new(LuState::default()),
            settings: Mutex::new(DriveSettings::default()),
            told: Mutex::new(HashMap::new()),
        }
    }

    async fn run(&self, req: &ScsiRequest) -> CmdResult {
        let nexus = &*req.nexus;
        let opcode = req.cdb.first().copied().unwrap_or(0xff);
        let exempt = spc::ua_exempt(opcode);
        {
            let mut st = lock(&self.state);
            st.note_nexus(nexus);
            if !exempt && let Some(ua) = st.take_ua(nexus) {
                return Err(ua.into());
            }
        }
        {
            let now = self.bay.generation();
            let mut told = lock(&self.told);
            let seen = told.entry(nexus.clone()).or_insert(now);
            if *seen != now && !exempt {
                *seen = now;
                return Err(sense::NOT_READY_TO_READY_CHANGE.into());
            }
        }
        if let Some(cmd) = cdb::parse(&req.cdb)? {
            lock(&self.state).check_access(nexus, tape_access(&cmd))?;
            return self.tape(cmd, req).await;
        }
        let cmd = super::cdb::parse(&req.cdb)?;
        lock(&self.state).check_access(nexus, spc::access(&cmd))?;
        self.primary(cmd, req, nexus).await
    }

    /// The primary commands a drive accepts; the disk-only ones are invalid opcodes here.
    async fn primary(&self, cmd: Command, req: &ScsiRequest, nexus: &Nexus) -> CmdResult {
        use Command::*;
        if let Some(r) = spc::shared(&mut lock(&self.state), &cmd, nexus, &req.data_out) {
            return r;
        }
        match cmd {
            TestUnitReady => {
                let mut st = self.bay.state.lock().await;
                loaded(&mut st)?;
                Ok(Bytes::new())
            }
            Inquiry { evpd, page, alloc } => Ok(truncate(
                inquiry::identified(&DRIVE, &self.identity, nexus, evpd, page)?,
                alloc,
            )),
            ModeSense {
                ten,
                dbd,
                pc,
                page,
                subpage,
                alloc,
                ..
            } => {
                let wp = {
                    let st = self.bay.state.lock().await;
                    st.medium.as_ref().is_some_and(Medium::read_only)
                };
                let s = *lock(&self.settings);
                pages::mode_sense(&s, wp, ten, dbd, pc, page, subpage, alloc)
            }
            ModeSelect {
                ten, sp, param_len, ..
            } => {
                let cur = *lock(&self.settings);
                let new = pages::mode_select(&cur, ten, sp, param_len, &req.data_out)?;
                if new != cur {
                    *lock(&self.settings) = new;
                    lock(&self.state).queue_ua_others(nexus, sense::MODE_PARAMETERS_CHANGED);
                }
                Ok(Bytes::new())
            }
            PreventAllow { prevent } => {
                self.bay.state.lock().await.prevent = prevent & 0x01 != 0;
                Ok(Bytes::new())
            }
            _ => Err(sense::INVALID_OPCODE.into()),
        }
    }

    async fn tape(&self, cmd: TapeCommand, req: &ScsiRequest) -> CmdResult {
        use TapeCommand::*;
        let settings = *lock(&self.settings);
        let mut st = self.bay.state.lock().await;
        match cmd {
            ReadBlockLimits { mloi: false } => Ok(Bytes::from(pages::block_limits())),
            ReadBlockLimits { mloi: true } => {
                let m = loaded(&mut st)?;
                let max = m.size_bytes();
                Ok(Bytes::from(pages::max_object_identifier(max)))
            }
            ReportDensitySupport { media, alloc } => {
                if media && !st.loaded {
                    return Err(not_ready());
                }
                pages::density_support(media, alloc)
            }
            LogSense {
                page,
                subpage,
                alloc,
                ..
            } => {
                let mib = |b: u64| u32::try_from(b >> 20).unwrap_or(u32::MAX);
                let cap = st.medium.as_ref().map_or((0, 0), |m| {
                    (
                        mib(m.size_bytes().saturating_sub(m.data_bytes())),
                        mib(m.size_bytes()),
                    )
                });
                pages::log_sense(page, subpage, cap, alloc)
            }
            LoadUnload { load } => {
                let Some(m) = st.medium.as_mut() else {
                    return Err(not_ready());
                };
                m.rewind().await?;
                st.loaded = load;
                Ok(Bytes::new())
            }
            Rewind => {
                loaded(&mut st)?.rewind().await?;
                Ok(Bytes::new())
            }
            Read {
                fixed,
                sili,
                length,
            } => {
                let r = read(loaded(&mut st)?, settings, fixed, sili, length).await;
                let n = match &r {
                    Ok(data) => data.len(),
                    Err(resp) => resp.data_in.len(),
                };
                self.bay.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                r
            }
            Write { fixed, length } => {
                let written = &self.bay.written_bytes;
                write(
                    loaded(&mut st)?,
                    settings,
                    fixed,
                    length,
                    &req.data_out,
                    written,
                )
                .await
            }
            WriteFilemarks { count } => {
                let m = loaded(&mut st)?;
                let w = m.write_filemarks(u64::from(count)).await?;
                write_outcome(w, u64::from(count), 1)
            }
            Erase => {
                loaded(&mut st)?.erase().await?;
                Ok(Bytes::new())
            }
            Space { code, count } => {
                let m = loaded(&mut st)?;
                let s = match code {
                    SpaceCode::Blocks => m.space_records(count),
                    SpaceCode::Filemarks => m.space_filemarks(count),
                    SpaceCode::EndOfData => {
                        m.space_to_end_of_data();
                        return Ok(Bytes::new());
                    }
                };
                match s.stop {
                    Some(stop) => Err(space_sense(stop, count.unsigned_abs() - s.done)),
                    None => Ok(Bytes::new()),
                }
            }
            Locate { to } => {
                let m = loaded(&mut st)?;
                let stop = match to {
                    Destination::Object(n) => m.locate(n),
                    Destination::File(f) => m.locate_file(f),
                    Destination::EndOfData => {
                        m.space_to_end_of_data();
                        None
                    }
                };
                match stop {
                    Some(_) => Err(sense::END_OF_DATA_DETECTED.into()),
                    None => Ok(Bytes::new()),
                }
            }
            ReadPosition {
                service_action,
                alloc,
            } => {
                let m = loaded(&mut st)?;
                let p = PositionInfo {
                    object: m.position(),
                    file: m.file_number(),
                    past_early_warning: m.past_early_warning(),
                };
                pages::read_position(&p, service_action, alloc)
            }
        }
    }
}

/// How reservations treat a stream command (SSC-3 reservation tables): reads and moves are
/// blocked only by exclusive-access types, writes by all, inquiries by none.
fn tape_access(cmd: &TapeCommand) -> Access {
    use TapeCommand::*;
    match cmd {
        ReadBlockLimits { .. } | ReportDensitySupport { .. } | LogSense { .. } => Access::Free,
        Read { .. } | Space { .. } | Locate { .. } | Rewind | ReadPosition { .. } => Access::Read,
        Write { .. } | WriteFilemarks { .. } | Erase | LoadUnload { .. } => Access::Write,
    }
}

async fn read(
    m: &mut Medium,
    settings: DriveSettings,
    fixed: bool,
    sili: bool,
    length: u32,
) -> CmdResult {
    let n = u64::from(length);
    if n == 0 {
        return Ok(Bytes::new());
    }
    if !fixed {
        return match m.read(n).await? {
            ReadOutcome::Record { data, len } if len == n => Ok(data),
            ReadOutcome::Record { data, len } if len < n && sili => Ok(data),
            // The residue is requested minus actual: negative (two's complement) for a record
            // longer than asked (SSC-3 READ(6), incorrect-length handling).
            ReadOutcome::Record { data, len } => {
                let info = (i64::try_from(n).unwrap_or(0) - i64::try_from(len).unwrap_or(0)) as u32;
                Err(check_with(data, sense::INCORRECT_LENGTH.with_info(info)))
            }
            ReadOutcome::Filemark => Err(sense::FILEMARK_DETECTED.with_info(length).into()),
            ReadOutcome::EndOfData => Err(sense::END_OF_DATA_DETECTED.with_info(length).into()),
        };
    }
    let bs = u64::from(settings.block_size);
    if bs == 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    if n.checked_mul(bs).is_none_or(|t| t > MAX_TRANSFER_BYTES) {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let mut out = BytesMut::with_capacity(usize::try_from(n * bs).unwrap_or(0));
    for i in 0..n {
        let left = residue(n - i);
        match m.read(bs).await? {
            ReadOutcome::Record { data, len } if len == bs => out.extend_from_slice(&data),
            ReadOutcome::Record { .. } => {
                return Err(check_with(
                    out.freeze(),
                    sense::INCORRECT_LENGTH.with_info(left),
                ));
            }
            ReadOutcome::Filemark => {
                return Err(check_with(
                    out.freeze(),
                    sense::FILEMARK_DETECTED.with_info(left),
                ));
            }
            ReadOutcome::EndOfData => {
                return Err(check_with(
                    out.freeze(),
                    sense::END_OF_DATA_DETECTED.with_info(left),
                ));
            }
        }
    }
    Ok(out.freeze())
}

async fn write(
    m: &mut Medium,
    settings: DriveSettings,
    fixed: bool,
    length: u32,
    data: &[u8],
    written: &AtomicU64,
) -> CmdResult {
    if m.read_only() {
        return Err(sense::WRITE_PROTECTED.into());
    }
    let n = u64::from(length);
    if n == 0 {
        return Ok(Bytes::new());
    }
    let (record, count) = if fixed {
        let bs = u64::from(settings.block_size);
        if bs == 0 {
            return Err(Sense::invalid_cdb_field(1, Some(0)).into());
        }
        (bs, n)
    } else {
        if length > MAX_BLOCK_BYTES {
            return Err(Sense::invalid_cdb_field(2, None).into());
        }
        (n, 1)
    };
    let total = record
        .checked_mul(count)
        .filter(|t| *t <= MAX_TRANSFER_BYTES)
        .ok_or_else(|| ScsiResponse::from(Sense::invalid_cdb_field(2, None)))?;
    let Some(payload) = data.get(..usize::try_from(total).unwrap_or(usize::MAX)) else {
        return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT.into());
    };
    let w = m.write_records(payload, record).await?;
    written.fetch_add(w.count * record, Ordering::Relaxed);
    let unit = if fixed { 1 } else { record };
    write_outcome(w, count, unit)
}

impl LogicalUnit for Drive {
    fn execute<'a>(&'a self, req: &'a ScsiRequest) -> BoxFuture<'a, ScsiResponse> {
        Box::pin(async move {
            match self.run(req).await {
                Ok(data_in) => ScsiResponse::good(data_in),
                Err(resp) => {
                    if resp.status != Status::CheckCondition {
                        tracing::debug!(lun = req.lun, status = ?resp.status, "tape command failed");
                    }
                    resp
                }
            }
        })
    }

    fn reset(&self) {
        lock(&self.state).reset();
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        lock(&self.state).nexus_lost(nexus);
        lock(&self.told).remove(nexus);
    }

    fn data_out_length(&self, raw: &[u8]) -> Option<u64> {
        match cdb::parse(raw).ok()? {
            Some(TapeCommand::Write { fixed, length }) => {
                let n = u64::from(length);
                if fixed {
                    n.checked_mul(u64::from(lock(&self.settings).block_size))
                } else {
                    Some(n)
                }
            }
            Some(_) => Some(0),
            None => match super::cdb::parse(raw).ok()? {
                Command::ModeSelect { param_len, .. }
                | Command::PersistentReserveOut { param_len, .. } => Some(u64::from(param_len)),
                _ => Some(0),
            },
        }
    }
}

#[cfg(test)]
mod tests;
