//! The iSCSI PDU codec (RFC 7143 §11): framing of the 48-byte BHS, AHS, optional header and
//! data digests (CRC32C, §12.1) and the padded data segment, plus typed views of the initiator
//! PDUs we accept (`Request`) and builders for the target PDUs we send (`target`).
//!
//! Pure: bytes in, typed values out; no I/O and no tokio, so it can be property-tested.
//! Invariant: decoding never panics on any input; it answers `Incomplete` (need more bytes) or
//! `Malformed` (the stream cannot be framed), and a data segment longer than the limit we
//! declared (MaxRecvDataSegmentLength) is `Malformed`.

pub mod target;

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the Basic Header Segment (RFC 7143 §11.2).
pub const BHS_LEN: usize = 48;
/// Length of one CRC32C digest.
const DIGEST_LEN: usize = 4;
/// The "reserved" task tag (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (RFC 7143 §11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmt = 0x02,
    Login = 0x03,
    Text = 0x04,
    DataOut = 0x05,
    Logout = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    Async = 0x32,
    Reject = 0x3f,
}

/// Why a byte stream could not be turned into a PDU.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    /// At least `needed` bytes in total are required before the PDU can be decoded.
    #[error("incomplete PDU: need {needed} bytes")]
    Incomplete { needed: usize },
    /// The stream cannot be framed (or a field is invalid); the connection cannot go on.
    #[error("malformed PDU: {reason}")]
    Malformed { reason: &'static str },
    /// The header digest did not match: the framing is untrustworthy (RFC 7143 §7.8).
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest did not match; the PDU is `consumed` bytes long and can be skipped.
    #[error("data digest mismatch")]
    DataDigest {
        consumed: usize,
        bhs: Box<[u8; BHS_LEN]>,
    },
}

/// Which digests are in force on a connection (after login, RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One framed PDU: its BHS, AHS bytes and (unpadded) data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

pub fn crc32c(buf: &[u8]) -> u32 {
    // The iSCSI CRC32C is transmitted little-endian-of-the-register as in RFC 7143 §12.1;
    // crc-fast returns the final value, which we place on the wire least significant byte first.
    u32::try_from(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, buf)).unwrap_or(0)
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

impl Pdu {
    pub fn new(opcode: Opcode) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode as u8;
        Self {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    pub fn opcode_byte(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bhs[off..off + 4]);
        u32::from_be_bytes(b)
    }

    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn lun_raw(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bhs[8..16]);
        b
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Encodes with the length fields taken from `ahs` and `data`. Callers keep the data segment
    /// within the peer's MaxRecvDataSegmentLength; the AHS is at most 1020 bytes by construction
    /// of the PDUs we send (none carry one).
    pub fn encode(&self, digests: Digests, out: &mut BytesMut) {
        let mut bhs = self.bhs;
        let ahs_words = u8::try_from(self.ahs.len() / 4).unwrap_or(u8::MAX);
        bhs[4] = ahs_words;
        let dlen = u32::try_from(self.data.len()).unwrap_or(0) & 0x00ff_ffff;
        bhs[5..8].copy_from_slice(&dlen.to_be_bytes()[1..]);
        let header_start = out.len();
        out.put_slice(&bhs);
        out.put_slice(&self.ahs[..usize::from(ahs_words) * 4]);
        if digests.header {
            let crc = crc32c(&out[header_start..]);
            out.put_u32_le(crc);
        }
        if !self.data.is_empty() {
            let data = &self.data[..dlen as usize];
            out.put_slice(data);
            let pad = padded(data.len()) - data.len();
            out.put_bytes(0, pad);
            if digests.data {
                let start = out.len() - data.len() - pad;
                let crc = crc32c(&out[start..]);
                out.put_u32_le(crc);
            }
        }
    }

    pub fn to_bytes(&self, digests: Digests) -> Bytes {
        let mut out = BytesMut::with_capacity(BHS_LEN + self.ahs.len() + self.data.len() + 16);
        self.encode(digests, &mut out);
        out.freeze()
    }
}

/// Decodes one PDU from the front of `buf`, returning it and the number of bytes it used.
/// `max_data` is the MaxRecvDataSegmentLength we declared for this connection.
pub fn decode(buf: &[u8], digests: Digests, max_data: u32) -> Result<(Pdu, usize), PduError> {
    if buf.len() < BHS_LEN {
        return Err(PduError::Incomplete { needed: BHS_LEN });
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let ahs_len = usize::from(bhs[4]) * 4;
    let data_len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]);
    if data_len > max_data {
        return Err(PduError::Malformed {
            reason: "data segment longer than MaxRecvDataSegmentLength",
        });
    }
    // Cannot overflow: data_len < 2^24 and ahs_len < 2^10.
    let data_len = data_len as usize;
    let header_len = BHS_LEN + ahs_len;
    let hd = if digests.header { DIGEST_LEN } else { 0 };
    let dd = if digests.data && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let total = header_len + hd + padded(data_len) + dd;
    if buf.len() < total {
        return Err(PduError::Incomplete { needed: total });
    }
    if digests.header {
        let want = crc32c(&buf[..header_len]);
        if le_u32(&buf[header_len..header_len + DIGEST_LEN]) != want {
            return Err(PduError::HeaderDigest);
        }
    }
    let data_start = header_len + hd;
    if dd != 0 {
        let padded_end = data_start + padded(data_len);
        let want = crc32c(&buf[data_start..padded_end]);
        if le_u32(&buf[padded_end..padded_end + DIGEST_LEN]) != want {
            return Err(PduError::DataDigest {
                consumed: total,
                bhs: Box::new(bhs),
            });
        }
    }
    let pdu = Pdu {
        bhs,
        ahs: Bytes::copy_from_slice(&buf[BHS_LEN..header_len]),
        data: Bytes::copy_from_slice(&buf[data_start..data_start + data_len]),
    };
    Ok((pdu, total))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The LUN field (SAM-5 §4.7): single-level peripheral or flat addressing to a number.
/// Other address methods are kept as the raw 64-bit value so they reach no known unit.
pub fn lun_from_wire(raw: [u8; 8]) -> u64 {
    match raw[0] >> 6 {
        0 if raw[0] == 0 && raw[2..] == [0; 6] => u64::from(raw[1]),
        1 if raw[2..] == [0; 6] => (u64::from(raw[0] & 0x3f) << 8) | u64::from(raw[1]),
        _ => u64::from_be_bytes(raw),
    }
}

pub fn lun_to_wire(lun: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    if lun < 256 {
        raw[1] = lun as u8;
    } else if lun < 0x4000 {
        raw[0] = 0x40 | (lun >> 8) as u8;
        raw[1] = (lun & 0xff) as u8;
    } else {
        raw = lun.to_be_bytes();
    }
    raw
}

/// A SCSI Command PDU (RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub cdb: Bytes,
    pub immediate_data: Bytes,
}

/// A Data-Out PDU (RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub itt: u32,
    pub ttt: u32,
    pub data_sn: u32,
    pub offset: u32,
    pub data: Bytes,
}

/// A Task Management Function Request (RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmt {
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub ref_cmd_sn: u32,
}

/// Login (§11.12), Text (§11.10) and the fields they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun_raw: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
}

/// Every initiator PDU, typed (RFC 7143 §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmt(TaskMgmt),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    /// SNACK (§11.16): only its tag matters to us, since at ERL 0 we reject it.
    Snack {
        itt: u32,
    },
}

/// Why a framed PDU is not an acceptable request; the connection may go on after a Reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Opcode is not one an initiator may send (Reject reason 0x05, §11.17.1).
    UnsupportedOpcode(u8),
    /// A field is invalid (Reject reason 0x09).
    InvalidField(&'static str),
}

impl Request {
    pub fn parse(pdu: &Pdu) -> Result<Self, RequestError> {
        let b = &pdu.bhs;
        let imm = pdu.immediate();
        let fin = pdu.final_bit();
        Ok(match pdu.opcode_byte() {
            0x00 => Self::NopOut(NopOut {
                immediate: imm,
                lun_raw: pdu.lun_raw(),
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                data: pdu.data.clone(),
            }),
            0x01 => {
                let mut cdb = BytesMut::from(&b[32..48]);
                // An extended-CDB AHS (type 1, §11.2.2.3) carries the bytes past 16.
                if pdu.ahs.len() >= 4 && pdu.ahs[2] == 1 {
                    let ahs_len = usize::from(u16::from_be_bytes([pdu.ahs[0], pdu.ahs[1]]));
                    let ext = ahs_len.saturating_sub(1);
                    let end = 4usize.saturating_add(ext);
                    let ext_bytes = pdu
                        .ahs
                        .get(4..end)
                        .ok_or(RequestError::InvalidField("extended CDB AHS too short"))?;
                    cdb.extend_from_slice(ext_bytes);
                }
                Self::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_bit: fin,
                    read: b[1] & 0x40 != 0,
                    write: b[1] & 0x20 != 0,
                    lun: lun_from_wire(pdu.lun_raw()),
                    itt: pdu.itt(),
                    expected_len: pdu.u32_at(20),
                    cmd_sn: pdu.u32_at(24),
                    cdb: cdb.freeze(),
                    immediate_data: pdu.data.clone(),
                })
            }
            0x02 => Self::TaskMgmt(TaskMgmt {
                function: b[1] & 0x7f,
                lun: lun_from_wire(pdu.lun_raw()),
                itt: pdu.itt(),
                referenced_tag: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                ref_cmd_sn: pdu.u32_at(32),
            }),
            0x03 => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Self::Login(LoginRequest {
                    transit: b[1] & 0x80 != 0,
                    cont: b[1] & 0x40 != 0,
                    csg: (b[1] >> 2) & 3,
                    nsg: b[1] & 3,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: u16::from_be_bytes([b[14], b[15]]),
                    itt: pdu.itt(),
                    cid: u16::from_be_bytes([b[20], b[21]]),
                    cmd_sn: pdu.u32_at(24),
                    exp_stat_sn: pdu.u32_at(28),
                    data: pdu.data.clone(),
                })
            }
            0x04 => Self::Text(TextRequest {
                immediate: imm,
                final_bit: fin,
                cont: b[1] & 0x40 != 0,
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                cmd_sn: pdu.u32_at(24),
                data: pdu.data.clone(),
            }),
            0x05 => Self::DataOut(DataOut {
                final_bit: fin,
                itt: pdu.itt(),
                ttt: pdu.u32_at(20),
                data_sn: pdu.u32_at(36),
                offset: pdu.u32_at(40),
                data: pdu.data.clone(),
            }),
            0x06 => Self::Logout(LogoutRequest {
                immediate: imm,
                reason: b[1] & 0x7f,
                itt: pdu.itt(),
                cid: u16::from_be_bytes([b[20], b[21]]),
                cmd_sn: pdu.u32_at(24),
            }),
            0x10 => Self::Snack { itt: pdu.itt() },
            other => return Err(RequestError::UnsupportedOpcode(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Digests; 4] = [
        Digests {
            header: false,
            data: false,
        },
        Digests {
            header: true,
            data: false,
        },
        Digests {
            header: false,
            data: true,
        },
        Digests {
            header: true,
            data: true,
        },
    ];

    fn normalized(mut pdu: Pdu) -> Pdu {
        pdu.bhs[4] = (pdu.ahs.len() / 4) as u8;
        let len = (pdu.data.len() as u32).to_be_bytes();
        pdu.bhs[5..8].copy_from_slice(&len[1..]);
        pdu
    }

    #[test]
    fn crc32c_matches_rfc3720_vector() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn decode_short_buffer_is_incomplete() {
        let pdu = Pdu {
            data: Bytes::from_static(b"hello"),
            ..Pdu::new(Opcode::NopOut)
        };
        let wire = pdu.to_bytes(ALL[3]);
        for cut in 0..wire.len() {
            assert!(matches!(
                decode(&wire[..cut], ALL[3], 8192),
                Err(PduError::Incomplete { .. })
            ));
        }
        assert_eq!(decode(&wire, ALL[3], 8192).unwrap().1, wire.len());
    }

    #[test]
    fn decode_oversize_data_is_malformed() {
        let pdu = Pdu {
            data: Bytes::from(vec![1u8; 100]),
            ..Pdu::new(Opcode::DataOut)
        };
        let wire = pdu.to_bytes(Digests::default());
        assert!(matches!(
            decode(&wire, Digests::default(), 99),
            Err(PduError::Malformed { .. })
        ));
    }

    #[test]
    fn decode_flipped_digest_is_reported() {
        let pdu = Pdu {
            data: Bytes::from_static(b"abcdefg"),
            ..Pdu::new(Opcode::DataOut)
        };
        let mut wire = pdu.to_bytes(ALL[3]).to_vec();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(matches!(
            decode(&wire, ALL[3], 8192),
            Err(PduError::DataDigest { consumed, .. }) if consumed == wire.len()
        ));
        wire[3] ^= 1;
        assert_eq!(decode(&wire, ALL[3], 8192), Err(PduError::HeaderDigest));
    }

    #[test]
    fn lun_encodings_round_trip() {
        for lun in [0u64, 1, 255, 256, 0x3fff, 0x4000, u64::MAX] {
            assert_eq!(lun_from_wire(lun_to_wire(lun)), lun);
        }
    }

    #[test]
    fn parse_scsi_command_reads_fields() {
        let mut pdu = Pdu::new(Opcode::ScsiCommand);
        pdu.bhs[1] = 0xc0;
        pdu.bhs[9] = 3;
        pdu.set_u32(16, 7);
        pdu.set_u32(20, 512);
        pdu.set_u32(24, 9);
        pdu.bhs[32] = 0x28;
        let Request::ScsiCommand(cmd) = Request::parse(&pdu).unwrap() else {
            panic!("not a command")
        };
        assert!(cmd.read && cmd.final_bit && !cmd.write);
        assert_eq!(
            (cmd.lun, cmd.itt, cmd.expected_len, cmd.cmd_sn),
            (3, 7, 512, 9)
        );
        assert_eq!(cmd.cdb[0], 0x28);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                      d in 0usize..4, max in 0u32..1024) {
            if let Ok((pdu, used)) = decode(&bytes, ALL[d], max) {
                prop_assert!(used <= bytes.len());
                let _ = Request::parse(&pdu);
            }
        }

        #[test]
        fn request_parse_never_panics(bhs in proptest::collection::vec(any::<u8>(), BHS_LEN),
                                      op in proptest::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6, 0x10, 0x3f]),
                                      ahs in proptest::collection::vec(any::<u8>(), 0..40),
                                      data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = [0u8; BHS_LEN];
            b.copy_from_slice(&bhs);
            b[0] = (b[0] & 0x40) | op;
            let ahs_len = ahs.len() / 4 * 4;
            let pdu = Pdu { bhs: b, ahs: Bytes::from(ahs[..ahs_len].to_vec()), data: Bytes::from(data) };
            let _ = Request::parse(&pdu);
        }

        #[test]
        fn encode_decode_round_trips(bhs in proptest::collection::vec(any::<u8>(), BHS_LEN),
                                     ahs_words in 0usize..8,
                                     data in proptest::collection::vec(any::<u8>(), 0..300),
                                     d in 0usize..4) {
            let mut b = [0u8; BHS_LEN];
            b.copy_from_slice(&bhs);
            let pdu = normalized(Pdu {
                bhs: b,
                ahs: Bytes::from(vec![0xa5; ahs_words * 4]),
                data: Bytes::from(data),
            });
            let wire = pdu.to_bytes(ALL[d]);
            let (back, used) = decode(&wire, ALL[d], 300).unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(back, pdu);
        }
    }
}
