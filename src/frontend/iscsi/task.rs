//! One SCSI task's data transfer (RFC 7143 §3.2.4.2, §11.7, §11.8): gathering write data from
//! immediate data, unsolicited Data-Out and solicited bursts (R2T), and turning a SCSI response
//! into Data-In PDUs and a status with residuals.
//!
//! Pure bookkeeping: no sockets. Invariants: write data lands only inside the expected transfer
//! length and each R2T asks for at most MaxBurstLength bytes with one outstanding at a time
//! (we negotiate MaxOutstandingR2T=1); no Data-In PDU exceeds the initiator's
//! MaxRecvDataSegmentLength, and data beyond the expected length is cut and counted as overflow.

use bytes::{Bytes, BytesMut};

use super::params::Params;
use super::pdu::target::{self, DataIn, R2t, RejectReason, Residual};
use super::pdu::{Pdu, RESERVED_TAG, ScsiCommand, lun_to_wire};
use crate::scsi::ScsiResponse;
#[cfg(test)]
use crate::scsi::Status;

/// The largest data transfer one command may ask for, in bytes. Larger commands are refused
/// with INVALID FIELD IN CDB before any buffer is allocated; the SCSI layer's Block Limits VPD
/// should advertise no more than this.
pub const MAX_TRANSFER_BYTES: u32 = 32 * 1024 * 1024;

/// Sense data for ILLEGAL REQUEST / INVALID FIELD IN CDB (SPC-4 §4.5.6, ASC 24h/00h).
pub const SENSE_INVALID_FIELD_IN_CDB: [u8; 18] = [
    0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0,
];

/// Sense data for HARDWARE ERROR / INTERNAL TARGET FAILURE (SPC-4 §4.5.6, ASC 44h/00h).
pub const SENSE_INTERNAL_TARGET_FAILURE: [u8; 18] = [
    0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0x00, 0, 0, 0, 0,
];

/// A PDU to send and whether it carries a status (and so consumes a StatSN).
pub type Outgoing = (Pdu, bool);

/// The Data-In PDUs and/or SCSI Response for a completed command (§11.4, §11.7).
/// Each Data-In PDU holds at most `max_segment` bytes (the initiator's
/// MaxRecvDataSegmentLength) and each Data-In sequence (ended by the F bit) at most `max_burst`
/// bytes (MaxBurstLength, §13.13); DataSN runs on across sequences.
/// `write` is `(expected data transfer length, SCSI transfer length)` for a write: its residual
/// compares what the initiator meant to send with what the CDB asked for (§11.4.5.1), not data-in.
pub fn response_pdus(
    lun: [u8; 8],
    itt: u32,
    expected_in: u32,
    write: Option<(u32, u64)>,
    resp: ScsiResponse,
    max_segment: u32,
    max_burst: u32,
) -> Vec<Outgoing> {
    let residual = match write {
        Some((edtl, spdtl)) => Residual::of(edtl, usize::try_from(spdtl).unwrap_or(usize::MAX)),
        None => Residual::of(expected_in, resp.data_in.len()),
    };
    let mut data = resp.data_in;
    data.truncate(usize::try_from(expected_in).unwrap_or(usize::MAX));
    let seg = usize::try_from(max_segment.max(512)).unwrap_or(8192);
    let burst = usize::try_from(max_burst.max(512)).unwrap_or(262_144);
    let status = resp.status as u8;
    // Status may ride on the last Data-In only when there is no sense (§11.7.3).
    let status_in_data = !data.is_empty() && resp.sense.is_none();
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut data_sn = 0u32;
    while offset < data.len() {
        // A PDU never straddles a burst boundary, so every sequence ends exactly on one.
        let burst_end = (offset / burst + 1) * burst;
        let end = data.len().min(offset + seg).min(burst_end);
        let last = end == data.len();
        let with_status = last && status_in_data;
        out.push((
            target::data_in(DataIn {
                lun,
                itt,
                data_sn,
                offset: u32::try_from(offset).unwrap_or(u32::MAX),
                data: data.slice(offset..end),
                final_bit: last || end == burst_end,
                status: with_status.then_some((status, residual)),
            }),
            with_status,
        ));
        data_sn = data_sn.wrapping_add(1);
        offset = end;
    }
    if !status_in_data {
        let mut pdu = target::scsi_response(itt, status, resp.sense.as_ref(), residual);
        // ExpDataSN: the number of Data-In PDUs sent (§11.4.8).
        pdu.set_u32(36, data_sn);
        out.push((pdu, true));
    }
    out
}

/// What a Data-Out (or the command itself) left to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Wait for more Data-Out.
    Wait,
    /// Send this R2T, then wait.
    Solicit(Pdu),
    /// All data is in: execute.
    Complete,
}

/// Largest write buffer reserved before the data has arrived.
const UPFRONT_RESERVE: u32 = 4 << 20;

/// Write data being gathered for one command.
#[derive(Debug)]
pub struct WriteState {
    pub cmd: ScsiCommand,
    buf: BytesMut,
    received: u32,
    unsolicited_done: bool,
    /// End offset of the burst currently solicited, if any.
    burst_end: Option<u32>,
    ttt: u32,
    r2t_sn: u32,
    next_data_sn: u32,
    max_burst: u32,
}

impl WriteState {
    /// Starts gathering; fails when the command carries data it may not (§10.3).
    pub fn start(cmd: ScsiCommand, params: &Params) -> Result<Self, RejectReason> {
        let edtl = cmd.expected_len;
        let imm = u32::try_from(cmd.immediate_data.len()).unwrap_or(u32::MAX);
        if imm > edtl || (imm > 0 && !params.immediate_data) || imm > params.first_burst_bytes {
            return Err(RejectReason::ProtocolError);
        }
        if !cmd.final_bit && params.initial_r2t {
            return Err(RejectReason::ProtocolError);
        }
        // Reserve what the initiator says it will send, up to a bound: growing by doubling would
        // copy a large write two more times, while a lying EDTL can only make us reserve the
        // bound (EDTL itself is capped at MAX_TRANSFER_BYTES before we get here).
        let reserve = usize::try_from(edtl.min(UPFRONT_RESERVE)).unwrap_or(0);
        let mut buf = BytesMut::with_capacity(reserve.max(cmd.immediate_data.len()));
        buf.extend_from_slice(&cmd.immediate_data);
        Ok(Self {
            unsolicited_done: cmd.final_bit || imm >= params.first_burst_bytes,
            cmd,
            buf,
            received: imm,
            burst_end: None,
            ttt: RESERVED_TAG,
            r2t_sn: 0,
            next_data_sn: 0,
            max_burst: params.max_burst_bytes.max(512),
        })
    }

    pub fn is_complete(&self) -> bool {
        self.received >= self.cmd.expected_len
    }

    /// The TTT the next R2T will carry; the connection hands them out so they are unique.
    pub fn assign_ttt(&mut self, ttt: u32) {
        self.ttt = ttt;
    }

    fn progress_or_wait(&mut self) -> Progress {
        if self.received >= self.cmd.expected_len {
            return Progress::Complete;
        }
        if !self.unsolicited_done || self.burst_end.is_some() {
            return Progress::Wait;
        }
        let offset = self.received;
        let length = (self.cmd.expected_len - offset).min(self.max_burst);
        self.burst_end = Some(offset + length);
        self.next_data_sn = 0;
        let pdu = target::r2t(R2t {
            lun: lun_to_wire(self.cmd.lun),
            itt: self.cmd.itt,
            ttt: self.ttt,
            r2t_sn: self.r2t_sn,
            offset,
            length,
        });
        self.r2t_sn = self.r2t_sn.wrapping_add(1);
        Progress::Solicit(pdu)
    }

    /// Called after `assign_ttt` when the command itself (or a burst) asks for an R2T.
    pub fn poll(&mut self) -> Progress {
        self.progress_or_wait()
    }

    /// Takes one Data-Out (§11.7). Data must arrive in order (DataPDUInOrder=Yes).
    pub fn data_out(&mut self, d: &super::pdu::DataOut) -> Result<(), RejectReason> {
        let len = u32::try_from(d.data.len()).map_err(|_| RejectReason::ProtocolError)?;
        let end = d
            .offset
            .checked_add(len)
            .ok_or(RejectReason::InvalidPduField)?;
        let solicited = d.ttt != RESERVED_TAG;
        if solicited && (d.ttt != self.ttt || self.burst_end.is_none()) {
            return Err(RejectReason::InvalidPduField);
        }
        if !solicited && self.unsolicited_done {
            return Err(RejectReason::ProtocolError);
        }
        let limit = if solicited {
            self.burst_end.unwrap_or(0)
        } else {
            self.cmd.expected_len
        };
        if d.offset != self.received || end > limit || end > self.cmd.expected_len {
            return Err(RejectReason::InvalidPduField);
        }
        if d.data_sn != self.next_data_sn {
            return Err(RejectReason::ProtocolError);
        }
        self.next_data_sn = self.next_data_sn.wrapping_add(1);
        debug_assert_eq!(self.buf.len(), d.offset as usize);
        self.buf.extend_from_slice(&d.data);
        self.received = end;
        if solicited {
            if Some(end) == self.burst_end || d.final_bit {
                self.burst_end = None;
            }
        } else if d.final_bit {
            self.unsolicited_done = true;
            // A solicited burst numbers its Data-Out from zero again (§11.7.4).
            self.next_data_sn = 0;
        }
        Ok(())
    }

    /// Whether the next `poll` would send an R2T (so the caller must assign a TTT first).
    pub fn wants_r2t(&self) -> bool {
        self.received < self.cmd.expected_len && self.unsolicited_done && self.burst_end.is_none()
    }

    pub fn into_data(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::iscsi::pdu::DataOut;

    fn cmd(edtl: u32, imm: usize, final_bit: bool) -> ScsiCommand {
        ScsiCommand {
            immediate: false,
            final_bit,
            read: false,
            write: true,
            lun: 0,
            itt: 9,
            expected_len: edtl,
            cmd_sn: 1,
            cdb: Bytes::from_static(&[0x2a; 10]),
            immediate_data: Bytes::from(vec![1u8; imm]),
        }
    }

    fn params() -> Params {
        Params {
            initial_r2t: false,
            first_burst_bytes: 1024,
            max_burst_bytes: 2048,
            ..Params::default()
        }
    }

    fn dout(ttt: u32, sn: u32, offset: u32, len: usize, f: bool) -> DataOut {
        DataOut {
            final_bit: f,
            itt: 9,
            ttt,
            data_sn: sn,
            offset,
            data: Bytes::from(vec![2u8; len]),
        }
    }

    #[test]
    fn immediate_data_covering_all_completes() {
        let w = WriteState::start(cmd(512, 512, true), &params()).unwrap();
        assert!(w.is_complete());
    }

    #[test]
    fn unsolicited_then_r2t_bursts_of_max_burst() {
        let mut w = WriteState::start(cmd(5000, 512, false), &params()).unwrap();
        assert!(!w.wants_r2t());
        w.data_out(&dout(RESERVED_TAG, 0, 512, 512, true)).unwrap();
        assert!(w.wants_r2t());
        w.assign_ttt(77);
        let Progress::Solicit(r2t) = w.poll() else {
            panic!()
        };
        assert_eq!(
            (r2t.u32_at(40), r2t.u32_at(44), r2t.u32_at(20)),
            (1024, 2048, 77)
        );
        w.data_out(&dout(77, 0, 1024, 1024, false)).unwrap();
        assert!(!w.wants_r2t());
        w.data_out(&dout(77, 1, 2048, 1024, true)).unwrap();
        w.assign_ttt(78);
        let Progress::Solicit(r2t) = w.poll() else {
            panic!()
        };
        assert_eq!(
            (r2t.u32_at(36), r2t.u32_at(40), r2t.u32_at(44)),
            (1, 3072, 1928)
        );
        w.data_out(&dout(78, 0, 3072, 1928, true)).unwrap();
        assert_eq!(w.poll(), Progress::Complete);
        let data = w.into_data();
        assert_eq!((data[0], data[600], data[4999]), (1, 2, 2));
    }

    #[test]
    fn data_out_outside_burst_or_bad_sn_is_rejected() {
        let mut w = WriteState::start(cmd(4096, 0, true), &params()).unwrap();
        w.assign_ttt(5);
        assert!(matches!(w.poll(), Progress::Solicit(_)));
        assert!(w.data_out(&dout(5, 0, 0, 4096, true)).is_err());
        assert!(w.data_out(&dout(6, 0, 0, 512, false)).is_err());
        assert!(w.data_out(&dout(5, 3, 0, 512, false)).is_err());
        assert!(w.data_out(&dout(RESERVED_TAG, 0, 0, 512, false)).is_err());
    }

    #[test]
    fn short_read_gives_underflow_in_final_data_in() {
        let resp = ScsiResponse::good(Bytes::from(vec![7u8; 1000]));
        let pdus = response_pdus([0; 8], 1, 4096, None, resp, 512, 1 << 20);
        assert_eq!(pdus.len(), 2);
        let (last, status) = &pdus[1];
        assert!(*status);
        assert_eq!(last.bhs[1], 0x83);
        assert_eq!(last.u32_at(44), 3096);
        assert_eq!(last.u32_at(36), 1);
    }

    #[test]
    fn long_read_ends_a_sequence_at_each_max_burst() {
        let resp = ScsiResponse::good(Bytes::from(vec![1u8; 5000]));
        let pdus = response_pdus([0; 8], 1, 5000, None, resp, 1024, 2048);
        let finals: Vec<bool> = pdus.iter().map(|(p, _)| p.final_bit()).collect();
        let lens: Vec<usize> = pdus.iter().map(|(p, _)| p.data.len()).collect();
        assert_eq!(lens, vec![1024, 1024, 1024, 1024, 904]);
        assert_eq!(finals, vec![false, true, false, true, true]);
        let sns: Vec<u32> = pdus.iter().map(|(p, _)| p.u32_at(36)).collect();
        assert_eq!(sns, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn check_condition_sends_separate_response_with_sense() {
        let resp = ScsiResponse {
            status: Status::CheckCondition,
            data_in: Bytes::new(),
            sense: Some(Bytes::from_static(&[
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0,
            ])),
        };
        let pdus = response_pdus([0; 8], 1, 96, None, resp, 8192, 1 << 20);
        assert_eq!(pdus.len(), 1);
        assert_eq!(pdus[0].0.bhs[3], 2);
        assert_eq!(&pdus[0].0.data[..2], &[0, 18]);
        assert_eq!(pdus[0].0.bhs[1], 0x82);
    }
}
