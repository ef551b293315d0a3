//! Builders for the PDUs a target sends (RFC 7143 §11). Sequence numbers that belong to the
//! connection (StatSN) and session (ExpCmdSN, MaxCmdSN) at offsets 24..36 are left zero here:
//! the connection's writer stamps them as it sends, so they are always current and in order.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Opcode, Pdu, RESERVED_TAG};

/// Offsets shared by every target PDU that carries sequence numbers (§11.2).
pub const STAT_SN_OFFSET: usize = 24;
pub const EXP_CMD_SN_OFFSET: usize = 28;
pub const MAX_CMD_SN_OFFSET: usize = 32;

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    InvalidPduField = 0x09,
}

/// Residual flags and count for Data-In and SCSI Response (§11.4.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

impl Residual {
    /// The residual of a transfer of `actual` bytes against an expected `expected`.
    pub fn of(expected: u32, actual: usize) -> Self {
        let actual = u32::try_from(actual).unwrap_or(u32::MAX);
        if actual > expected {
            Self {
                overflow: true,
                underflow: false,
                count: actual - expected,
            }
        } else if actual < expected {
            Self {
                overflow: false,
                underflow: true,
                count: expected - actual,
            }
        } else {
            Self::default()
        }
    }

    fn flags(self) -> u8 {
        (if self.overflow { 0x04 } else { 0 }) | (if self.underflow { 0x02 } else { 0 })
    }
}

pub fn scsi_response(itt: u32, status: u8, sense: Option<&Bytes>, residual: Residual) -> Pdu {
    let mut pdu = Pdu::new(Opcode::ScsiResponse);
    pdu.bhs[1] = 0x80 | residual.flags();
    pdu.bhs[2] = 0; // command completed at target
    pdu.bhs[3] = status;
    pdu.set_u32(16, itt);
    pdu.set_u32(44, residual.count);
    if let Some(sense) = sense {
        // §11.4.7: a 2-byte SenseLength precedes the sense data.
        let len = u16::try_from(sense.len()).unwrap_or(u16::MAX);
        let mut data = BytesMut::with_capacity(2 + sense.len());
        data.put_u16(len);
        data.put_slice(&sense[..usize::from(len)]);
        pdu.data = data.freeze();
    }
    pdu
}

/// One Data-In PDU; `status` is set on the last one when it carries the command's status.
pub struct DataIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub data_sn: u32,
    pub offset: u32,
    pub data: Bytes,
    pub final_bit: bool,
    pub status: Option<(u8, Residual)>,
}

pub fn data_in(d: DataIn) -> Pdu {
    let mut pdu = Pdu::new(Opcode::DataIn);
    let mut flags = if d.final_bit { 0x80 } else { 0 };
    if let Some((status, residual)) = d.status {
        flags |= 0x01 | residual.flags();
        pdu.bhs[3] = status;
        pdu.set_u32(44, residual.count);
    }
    pdu.bhs[1] = flags;
    pdu.bhs[8..16].copy_from_slice(&d.lun);
    pdu.set_u32(16, d.itt);
    pdu.set_u32(20, RESERVED_TAG);
    pdu.set_u32(36, d.data_sn);
    pdu.set_u32(40, d.offset);
    pdu.data = d.data;
    pdu
}

pub struct R2t {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub r2t_sn: u32,
    pub offset: u32,
    pub length: u32,
}

pub fn r2t(r: R2t) -> Pdu {
    let mut pdu = Pdu::new(Opcode::R2t);
    pdu.bhs[1] = 0x80;
    pdu.bhs[8..16].copy_from_slice(&r.lun);
    pdu.set_u32(16, r.itt);
    pdu.set_u32(20, r.ttt);
    pdu.set_u32(36, r.r2t_sn);
    pdu.set_u32(40, r.offset);
    pdu.set_u32(44, r.length);
    pdu
}

pub fn nop_in(lun: [u8; 8], itt: u32, ttt: u32, data: Bytes) -> Pdu {
    let mut pdu = Pdu::new(Opcode::NopIn);
    pdu.bhs[1] = 0x80;
    pdu.bhs[8..16].copy_from_slice(&lun);
    pdu.set_u32(16, itt);
    pdu.set_u32(20, ttt);
    pdu.data = data;
    pdu
}

/// Task management responses (§11.6.1).
pub fn tmf_response(itt: u32, response: u8) -> Pdu {
    let mut pdu = Pdu::new(Opcode::TaskMgmtResponse);
    pdu.bhs[1] = 0x80;
    pdu.bhs[2] = response;
    pdu.set_u32(16, itt);
    pdu
}

pub struct LoginResponse {
    pub transit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

pub fn login_response(r: LoginResponse) -> Pdu {
    let mut pdu = Pdu::new(Opcode::LoginResponse);
    pdu.bhs[1] = (if r.transit { 0x80 } else { 0 }) | ((r.csg & 3) << 2) | (r.nsg & 3);
    pdu.bhs[2] = 0; // version-max
    pdu.bhs[3] = 0; // version-active
    pdu.bhs[8..14].copy_from_slice(&r.isid);
    pdu.bhs[14..16].copy_from_slice(&r.tsih.to_be_bytes());
    pdu.set_u32(16, r.itt);
    pdu.bhs[36] = r.status_class;
    pdu.bhs[37] = r.status_detail;
    pdu.data = r.data;
    pdu
}

pub fn text_response(itt: u32, final_bit: bool, ttt: u32, data: Bytes) -> Pdu {
    let mut pdu = Pdu::new(Opcode::TextResponse);
    pdu.bhs[1] = if final_bit { 0x80 } else { 0x40 };
    pdu.set_u32(16, itt);
    pdu.set_u32(20, ttt);
    pdu.data = data;
    pdu
}

pub fn logout_response(itt: u32, response: u8, time2wait: u16, time2retain: u16) -> Pdu {
    let mut pdu = Pdu::new(Opcode::LogoutResponse);
    pdu.bhs[1] = 0x80;
    pdu.bhs[2] = response;
    pdu.set_u32(16, itt);
    pdu.bhs[40..42].copy_from_slice(&time2wait.to_be_bytes());
    pdu.bhs[42..44].copy_from_slice(&time2retain.to_be_bytes());
    pdu
}

/// Asynchronous Message (§11.9); event 1 asks the initiator to log out within `param3` s.
pub fn async_message(event: u8, param3: u16) -> Pdu {
    let mut pdu = Pdu::new(Opcode::Async);
    pdu.bhs[1] = 0x80;
    pdu.set_u32(16, RESERVED_TAG);
    pdu.bhs[36] = event;
    pdu.bhs[42..44].copy_from_slice(&param3.to_be_bytes());
    pdu
}

/// Reject (§11.17): the data segment carries the offending BHS.
pub fn reject(reason: RejectReason, offending_bhs: &[u8]) -> Pdu {
    let mut pdu = Pdu::new(Opcode::Reject);
    pdu.bhs[1] = 0x80;
    pdu.bhs[2] = reason as u8;
    pdu.set_u32(16, RESERVED_TAG);
    pdu.data = Bytes::copy_from_slice(offending_bhs);
    pdu
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::iscsi::pdu::{Digests, decode};

    #[test]
    fn residual_of_short_read_is_underflow() {
        assert_eq!(
            Residual::of(4096, 512),
            Residual {
                overflow: false,
                underflow: true,
                count: 3584
            }
        );
        assert!(Residual::of(512, 4096).overflow);
        assert_eq!(Residual::of(8, 8), Residual::default());
    }

    #[test]
    fn scsi_response_carries_sense_length() {
        let sense = Bytes::from_static(&[0x70, 0, 5]);
        let pdu = scsi_response(1, 2, Some(&sense), Residual::default());
        let wire = pdu.to_bytes(Digests::default());
        let (back, _) = decode(&wire, Digests::default(), 8192).unwrap();
        assert_eq!(&back.data[..], &[0, 3, 0x70, 0, 5]);
        assert_eq!(back.bhs[3], 2);
    }

    #[test]
    fn data_in_with_status_sets_s_and_u_bits() {
        let pdu = data_in(DataIn {
            lun: [0; 8],
            itt: 5,
            data_sn: 2,
            offset: 1024,
            data: Bytes::from_static(b"xy"),
            final_bit: true,
            status: Some((0, Residual::of(10, 2))),
        });
        assert_eq!(pdu.bhs[1], 0x83);
        assert_eq!(pdu.u32_at(44), 8);
        assert_eq!(pdu.u32_at(40), 1024);
    }
}
