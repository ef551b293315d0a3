//! Sense data: the key/ASC/ASCQ triples tidegate reports, the fixed-format (SPC-4 §4.5.3) and
//! descriptor-format (SPC-4 §4.5.2) encoders, and the one mapping from `GatewayError` to SCSI.
//!
//! Owns every sense code the SCSI layer uses, so the codes are chosen in one place. Must not do
//! I/O. Invariant: `gateway_error` is an exhaustive `match` with no `_` arm, so a new
//! `GatewayError` kind breaks the build until someone decides what an initiator sees.

use bytes::Bytes;

use super::{ScsiResponse, Status};
use crate::gateway::GatewayError;

/// Sense keys (SPC-4 §4.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    /// Reading or spacing reached end of data (SSC-3).
    BlankCheck = 0x8,
    AbortedCommand = 0xb,
    /// SSC-3: a write ran past the end of the partition.
    VolumeOverflow = 0xd,
    Miscompare = 0xe,
}

/// Where in the CDB or parameter list an ILLEGAL REQUEST points (SPC-4 §4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the field is in the CDB, false when in the parameter list (C/D bit).
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

/// One sense triple plus the optional INFORMATION and sense-key-specific fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the miscompare offset, SBC-4 §5.3; a tape residue, SSC-3).
    pub info: Option<u32>,
    pub field: Option<FieldPointer>,
    /// The stream-command bits of fixed sense byte 2 (SPC-4 §4.5.3): `FILEMARK`, `EOM`, `ILI`.
    pub stream: u8,
}

/// Stream-command bits of fixed sense byte 2 (SPC-4 §4.5.3, used by SSC-3).
pub mod stream {
    pub const FILEMARK: u8 = 0x80;
    pub const EOM: u8 = 0x40;
    pub const ILI: u8 = 0x20;
}

/// Length of the fixed-format sense we emit: 8-byte header + 10 additional bytes.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            info: None,
            field: None,
            stream: 0,
        }
    }

    pub const fn with_info(mut self, info: u32) -> Self {
        self.info = Some(info);
        self
    }

    /// Sets FILEMARK, EOM and/or ILI (`stream::*`).
    pub const fn with_stream(mut self, bits: u8) -> Self {
        self.stream = bits & 0xe0;
        self
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, when one bit is at fault).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        let mut s = INVALID_FIELD_IN_CDB;
        s.field = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        });
        s
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the data-out.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        let mut s = INVALID_FIELD_IN_PARAMETER_LIST;
        s.field = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        });
        s
    }

    /// Fixed-format sense data (response code 70h, current error).
    pub fn fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        if let Some(info) = self.info {
            b[0] |= 0x80; // VALID: the INFORMATION field means something
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key as u8 | self.stream;
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(fp) = self.field {
            b[15] = 0x80; // SKSV
            if fp.in_cdb {
                b[15] |= 0x40;
            }
            if let Some(bit) = fp.bit {
                b[15] |= 0x08 | (bit & 0x07);
            }
            b[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        b
    }

    /// Descriptor-format sense data (response code 72h), for REQUEST SENSE with DESC=1.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.info {
            // Information descriptor (SPC-4 §4.5.2.2): type 0, length 0Ah, VALID set.
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            b.extend_from_slice(&u64::from(info).to_be_bytes());
        }
        if let Some(fp) = self.field {
            // Sense key specific descriptor (SPC-4 §4.5.2.3): type 2, length 6.
            let mut sks = 0x80u8;
            if fp.in_cdb {
                sks |= 0x40;
            }
            if let Some(bit) = fp.bit {
                sks |= 0x08 | (bit & 0x07);
            }
            let [hi, lo] = fp.byte.to_be_bytes();
            b.extend_from_slice(&[0x02, 0x06, 0, 0, sks, hi, lo, 0]);
        }
        if self.stream != 0 {
            // Stream commands descriptor (SPC-4 §4.5.2.5): type 4, length 2.
            b.extend_from_slice(&[0x04, 0x02, 0, self.stream]);
        }
        b[7] = u8::try_from(b.len() - 8).unwrap_or(u8::MAX);
        b
    }
}

impl ScsiResponse {
    /// CHECK CONDITION carrying `sense` in fixed format.
    pub fn check(sense: Sense) -> Self {
        Self {
            status: Status::CheckCondition,
            data_in: Bytes::new(),
            sense: Some(Bytes::copy_from_slice(&sense.fixed())),
        }
    }

    pub fn status_only(status: Status) -> Self {
        Self {
            status,
            data_in: Bytes::new(),
            sense: None,
        }
    }

    pub fn conflict() -> Self {
        Self::status_only(Status::ReservationConflict)
    }
}

use SenseKey::*;

pub const NO_SENSE: Sense = Sense::new(NoSense, 0x00, 0x00);
pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(IllegalRequest, 0x1a, 0x00);
pub const INVALID_OPCODE: Sense = Sense::new(IllegalRequest, 0x20, 0x00);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(IllegalRequest, 0x21, 0x00);
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(IllegalRequest, 0x24, 0x00);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(IllegalRequest, 0x25, 0x00);
pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(IllegalRequest, 0x26, 0x00);
pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(IllegalRequest, 0x26, 0x04);
/// The initiator sent less data-out than the CDB asks for (SAM-5 §5.4.3 / FCP-4 option b).
pub const INVALID_FIELD_IN_INFORMATION_UNIT: Sense = Sense::new(IllegalRequest, 0x0e, 0x03);
pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(IllegalRequest, 0x39, 0x00);
pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(IllegalRequest, 0x53, 0x02);
pub const POWER_ON_RESET: Sense = Sense::new(UnitAttention, 0x29, 0x00);
pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(UnitAttention, 0x2a, 0x01);
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2a, 0x03);
pub const RESERVATIONS_RELEASED: Sense = Sense::new(UnitAttention, 0x2a, 0x04);
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2a, 0x05);
pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(Miscompare, 0x1d, 0x00);
pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(MediumError, 0x11, 0x00);
pub const BECOMING_READY: Sense = Sense::new(NotReady, 0x04, 0x01);
pub const MEDIUM_NOT_PRESENT: Sense = Sense::new(NotReady, 0x3a, 0x00);
pub const WRITE_PROTECTED: Sense = Sense::new(DataProtect, 0x27, 0x00);
pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(DataProtect, 0x27, 0x07);
pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(HardwareError, 0x44, 0x00);

// Stream (SSC-3) and media changer (SMC-3) codes.
pub const FILEMARK_DETECTED: Sense = Sense::new(NoSense, 0x00, 0x01).with_stream(stream::FILEMARK);
/// Early warning on a write, and the end of the partition on a write that did not fit.
pub const END_OF_MEDIUM_DETECTED: Sense = Sense::new(NoSense, 0x00, 0x02).with_stream(stream::EOM);
pub const BEGINNING_OF_MEDIUM_DETECTED: Sense =
    Sense::new(NoSense, 0x00, 0x04).with_stream(stream::EOM);
pub const END_OF_DATA_DETECTED: Sense = Sense::new(BlankCheck, 0x00, 0x05);
pub const VOLUME_OVERFLOW: Sense = Sense::new(VolumeOverflow, 0x00, 0x02).with_stream(stream::EOM);
pub const INCORRECT_LENGTH: Sense = Sense::new(NoSense, 0x00, 0x00).with_stream(stream::ILI);
pub const NOT_READY_TO_READY_CHANGE: Sense = Sense::new(UnitAttention, 0x28, 0x00);
pub const INVALID_ELEMENT_ADDRESS: Sense = Sense::new(IllegalRequest, 0x21, 0x01);
pub const MEDIUM_DESTINATION_FULL: Sense = Sense::new(IllegalRequest, 0x3b, 0x0d);
pub const MEDIUM_SOURCE_EMPTY: Sense = Sense::new(IllegalRequest, 0x3b, 0x0e);

/// What an initiator sees for a gateway failure. BUSY carries no sense (SAM-5 §5.3.1); the
/// rest are CHECK CONDITION.
pub fn gateway_error(e: &GatewayError) -> ScsiResponse {
    log_failure(e);
    let sense = match e {
        // The volume behind the LU went away (deleted while exported): no medium.
        GatewayError::NotFound(_) => MEDIUM_NOT_PRESENT,
        // Namespace kinds cannot arise from block I/O; if one does it is our bug, and a
        // hardware error makes the initiator fail the I/O instead of retrying forever.
        GatewayError::AlreadyExists(_)
        | GatewayError::NotEmpty(_)
        | GatewayError::NotDirectory(_)
        | GatewayError::IsDirectory(_)
        | GatewayError::NameTooLong(_)
        | GatewayError::CrossDevice(_)
        | GatewayError::Stale(_) => INTERNAL_TARGET_FAILURE,
        GatewayError::PermissionDenied(_) => WRITE_PROTECTED,
        GatewayError::NotSupported(_) => INVALID_FIELD_IN_CDB,
        GatewayError::ReadOnly(_) => WRITE_PROTECTED,
        // The cache makes writers wait while dirty data drains, so NoSpace only surfaces when
        // space is truly exhausted: the thin-provisioning answer (SBC-4 §4.7.3.7), which Linux
        // turns into ENOSPC rather than EIO, so file systems report "no space" and stay usable.
        GatewayError::NoSpace(_) => SPACE_ALLOCATION_FAILED,
        GatewayError::InvalidArgument(_) => INVALID_FIELD_IN_CDB,
        GatewayError::OutOfRange(_) => LBA_OUT_OF_RANGE,
        // Integrity failures are never retried into a wrong answer (CONTRIBUTING.md, "Errors").
        GatewayError::Corrupt(_) => UNRECOVERED_READ_ERROR,
        // The bucket is unreachable but may come back: NOT READY / BECOMING READY is the
        // retryable NOT READY (Linux requeues it rather than failing the I/O at once), unlike
        // 04/0C which is ALUA-specific and would trigger path failover we do not offer.
        GatewayError::Unavailable(_) => BECOMING_READY,
        GatewayError::Busy(_) => return ScsiResponse::status_only(Status::Busy),
        GatewayError::Internal(_) => INTERNAL_TARGET_FAILURE,
    };
    ScsiResponse::check(sense)
}

/// The failures an operator must hear about go to the log, at most once a second per kind: a
/// full disk or a corrupt chunk fails every command that touches it, and one line says enough.
fn log_failure(e: &GatewayError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
    let slot = match e {
        GatewayError::NoSpace(_) => 0,
        GatewayError::Corrupt(_) => 1,
        GatewayError::Internal(_) => 2,
        _ => return,
    };
    let now = crate::clock::since_epoch().as_secs();
    if LAST[slot].swap(now, Ordering::Relaxed) != now {
        tracing::error!(error = %e, "SCSI command failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_layout() {
        let cases: [(Sense, &[(usize, u8)]); 3] = [
            (
                LBA_OUT_OF_RANGE,
                &[(0, 0x70), (2, 0x05), (7, 10), (12, 0x21), (13, 0), (15, 0)],
            ),
            (
                Sense::invalid_cdb_field(2, Some(5)),
                &[(12, 0x24), (15, 0x80 | 0x40 | 0x08 | 5), (16, 0), (17, 2)],
            ),
            (
                MISCOMPARE_DURING_VERIFY.with_info(0x0102_0304),
                &[
                    (0, 0xf0),
                    (2, 0x0e),
                    (3, 1),
                    (4, 2),
                    (5, 3),
                    (6, 4),
                    (12, 0x1d),
                ],
            ),
        ];
        for (sense, expect) in cases {
            let b = sense.fixed();
            for &(i, v) in expect {
                assert_eq!(b[i], v, "{sense:?} byte {i}");
            }
        }
    }

    #[test]
    fn descriptor_sense_layout() {
        let d = Sense::invalid_param_field(7, None).descriptor();
        assert_eq!(&d[..4], &[0x72, 0x05, 0x26, 0x00]);
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..10], &[0x02, 0x06]);
        assert_eq!(d[12], 0x80);
        assert_eq!(d[14], 7);
    }

    #[test]
    fn gateway_errors_map_to_expected_sense() {
        let io = || Box::new(std::io::Error::other("x"));
        type Case = (GatewayError, Option<(u8, u8, u8)>);
        let cases: Vec<Case> = vec![
            (GatewayError::NotFound("v".into()), Some((2, 0x3a, 0))),
            (GatewayError::AlreadyExists("v".into()), Some((4, 0x44, 0))),
            (GatewayError::NotEmpty("v".into()), Some((4, 0x44, 0))),
            (GatewayError::ReadOnly("v".into()), Some((7, 0x27, 0))),
            (GatewayError::NoSpace("v".into()), Some((7, 0x27, 7))),
            (
                GatewayError::InvalidArgument("v".into()),
                Some((5, 0x24, 0)),
            ),
            (GatewayError::OutOfRange("v".into()), Some((5, 0x21, 0))),
            (GatewayError::Corrupt(io()), Some((3, 0x11, 0))),
            (GatewayError::Unavailable(io()), Some((2, 0x04, 1))),
            (GatewayError::Busy("v".into()), None),
            (GatewayError::Internal(io()), Some((4, 0x44, 0))),
        ];
        for (e, expect) in cases {
            let r = gateway_error(&e);
            match expect {
                None => {
                    assert_eq!(r.status, Status::Busy);
                    assert!(r.sense.is_none());
                }
                Some((k, asc, ascq)) => {
                    assert_eq!(r.status, Status::CheckCondition, "{e}");
                    let s = r.sense.expect("sense");
                    assert_eq!((s[2], s[12], s[13]), (k, asc, ascq), "{e}");
                }
            }
        }
    }
}
