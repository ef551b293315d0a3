//! Typed CDBs of the stream commands (SSC-3 §6–§8): bytes in, a `TapeCommand` out. The
//! primary commands a drive shares with every LU (INQUIRY, MODE SENSE, PR...) go through
//! `scsi::cdb` instead; `parse` returns `None` for those.
//!
//! Pure codec. Invariant: never panics; every rejection is an ILLEGAL REQUEST sense.

use crate::scsi::sense::{INVALID_OPCODE, Sense};

pub mod op {
    pub const REWIND: u8 = 0x01;
    pub const READ_BLOCK_LIMITS: u8 = 0x05;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const WRITE_FILEMARKS_6: u8 = 0x10;
    pub const SPACE_6: u8 = 0x11;
    pub const ERASE_6: u8 = 0x19;
    pub const LOAD_UNLOAD: u8 = 0x1b;
    pub const LOCATE_10: u8 = 0x2b;
    pub const READ_POSITION: u8 = 0x34;
    pub const REPORT_DENSITY_SUPPORT: u8 = 0x44;
    pub const LOG_SENSE: u8 = 0x4d;
    pub const WRITE_FILEMARKS_16: u8 = 0x80;
    pub const SPACE_16: u8 = 0x91;
    pub const LOCATE_16: u8 = 0x92;
}

/// SPACE codes (the CODE field of SPACE(6) and SPACE(16), SSC-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceCode {
    Blocks,
    Filemarks,
    EndOfData,
}

/// Where LOCATE goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Object(u64),
    File(u64),
    EndOfData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeCommand {
    Rewind,
    ReadBlockLimits {
        mloi: bool,
    },
    /// `length` is blocks when `fixed`, bytes otherwise.
    Read {
        fixed: bool,
        sili: bool,
        length: u32,
    },
    Write {
        fixed: bool,
        length: u32,
    },
    WriteFilemarks {
        count: u32,
    },
    Space {
        code: SpaceCode,
        count: i64,
    },
    Erase,
    LoadUnload {
        load: bool,
    },
    Locate {
        to: Destination,
    },
    ReadPosition {
        service_action: u8,
        alloc: u32,
    },
    ReportDensitySupport {
        media: bool,
        alloc: u32,
    },
    LogSense {
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

fn be32(b: &[u8]) -> u32 {
    u32::try_from(be(b)).unwrap_or(u32::MAX)
}

fn bad(byte: u16, bit: Option<u8>) -> Sense {
    Sense::invalid_cdb_field(byte, bit)
}

/// Parses a stream command; `Ok(None)` when the operation code is not one (the caller tries
/// the primary commands next).
pub fn parse(raw: &[u8]) -> Result<Option<TapeCommand>, Sense> {
    use TapeCommand::*;
    use op::*;
    let Some(&opcode) = raw.first() else {
        return Err(INVALID_OPCODE);
    };
    let len = match opcode {
        REWIND | READ_BLOCK_LIMITS | READ_6 | WRITE_6 | WRITE_FILEMARKS_6 | SPACE_6 | ERASE_6
        | LOAD_UNLOAD => 6,
        LOCATE_10 | READ_POSITION | REPORT_DENSITY_SUPPORT | LOG_SENSE => 10,
        WRITE_FILEMARKS_16 | SPACE_16 | LOCATE_16 => 16,
        _ => return Ok(None),
    };
    let Some(c) = raw.get(..len) else {
        return Err(bad(0, None));
    };
    // CONTROL byte: no NACA, no linked commands (SAM-5 §5.2).
    if c[len - 1] & 0x05 != 0 {
        return Err(bad(u16::try_from(len - 1).unwrap_or(0), None));
    }
    let cmd = match opcode {
        REWIND => Rewind,
        READ_BLOCK_LIMITS => ReadBlockLimits {
            mloi: c[1] & 0x01 != 0,
        },
        READ_6 => {
            let (fixed, sili) = (c[1] & 0x01 != 0, c[1] & 0x02 != 0);
            // SSC-3: SILI with FIXED is an illegal combination.
            if fixed && sili {
                return Err(bad(1, Some(1)));
            }
            Read {
                fixed,
                sili,
                length: be32(&c[2..5]),
            }
        }
        WRITE_6 => Write {
            fixed: c[1] & 0x01 != 0,
            length: be32(&c[2..5]),
        },
        WRITE_FILEMARKS_6 | WRITE_FILEMARKS_16 => {
            // WSMK: setmarks are not supported (SSC-3 made them obsolete).
            if c[1] & 0x02 != 0 {
                return Err(bad(1, Some(1)));
            }
            let count = if opcode == WRITE_FILEMARKS_6 {
                be32(&c[2..5])
            } else {
                be32(&c[10..14])
            };
            WriteFilemarks { count }
        }
        SPACE_6 | SPACE_16 => {
            let code = match c[1] & 0x0f {
                0 => SpaceCode::Blocks,
                1 => SpaceCode::Filemarks,
                3 => SpaceCode::EndOfData,
                _ => return Err(bad(1, Some(3))),
            };
            let count = if opcode == SPACE_6 {
                // 24-bit two's complement.
                let v = be(&c[2..5]);
                if v & 0x80_0000 != 0 {
                    i64::try_from(v).unwrap_or(0) - 0x100_0000
                } else {
                    i64::try_from(v).unwrap_or(0)
                }
            } else {
                if be(&c[12..14]) != 0 {
                    return Err(bad(12, None));
                }
                i64::from_be_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]])
            };
            Space { code, count }
        }
        ERASE_6 => Erase,
        LOAD_UNLOAD => {
            // HOLD, EOT and RETEN ask for behaviour a virtual tape has no use for; accepted.
            LoadUnload {
                load: c[4] & 0x01 != 0,
            }
        }
        LOCATE_10 | LOCATE_16 => {
            let cp = c[1] & 0x02 != 0;
            let (partition, to) = if opcode == LOCATE_10 {
                // BT (bit 2): block addresses are logical object identifiers here either way.
                (c[8], Destination::Object(be(&c[3..7])))
            } else {
                let id = be(&c[4..12]);
                let to = match (c[1] >> 3) & 0x07 {
                    0 => Destination::Object(id),
                    1 => Destination::File(id),
                    3 => Destination::EndOfData,
                    _ => return Err(bad(1, Some(5))),
                };
                (c[3], to)
            };
            // One partition: changing to another is invalid.
            if cp && partition != 0 {
                return Err(bad(if opcode == LOCATE_10 { 8 } else { 3 }, None));
            }
            Locate { to }
        }
        READ_POSITION => ReadPosition {
            service_action: c[1] & 0x1f,
            alloc: be32(&c[7..9]),
        },
        REPORT_DENSITY_SUPPORT => ReportDensitySupport {
            media: c[1] & 0x01 != 0,
            alloc: be32(&c[7..9]),
        },
        LOG_SENSE => LogSense {
            pc: c[2] >> 6,
            page: c[2] & 0x3f,
            subpage: c[3],
            alloc: be32(&c[7..9]),
        },
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stream_cdbs_parse() {
        type Case = (&'static [u8], Result<Option<TapeCommand>, u8>);
        let cases: [Case; 12] = [
            (&[0x01, 0, 0, 0, 0, 0], Ok(Some(TapeCommand::Rewind))),
            (
                &[0x08, 0x02, 0, 0x10, 0, 0],
                Ok(Some(TapeCommand::Read {
                    fixed: false,
                    sili: true,
                    length: 4096,
                })),
            ),
            (&[0x08, 0x03, 0, 0, 1, 0], Err(0x24)),
            (
                &[0x0a, 0x01, 0, 0, 4, 0],
                Ok(Some(TapeCommand::Write {
                    fixed: true,
                    length: 4,
                })),
            ),
            (
                &[0x11, 0x01, 0xff, 0xff, 0xfe, 0],
                Ok(Some(TapeCommand::Space {
                    code: SpaceCode::Filemarks,
                    count: -2,
                })),
            ),
            (&[0x11, 0x02, 0, 0, 1, 0], Err(0x24)),
            (&[0x10, 0x02, 0, 0, 1, 0], Err(0x24)),
            (
                &[0x10, 0, 0, 0, 3, 0],
                Ok(Some(TapeCommand::WriteFilemarks { count: 3 })),
            ),
            (
                &[0x2b, 0, 0, 0, 0, 1, 2, 0, 0, 0],
                Ok(Some(TapeCommand::Locate {
                    to: Destination::Object(0x102),
                })),
            ),
            (
                &[0x92, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0],
                Ok(Some(TapeCommand::Locate {
                    to: Destination::File(5),
                })),
            ),
            (&[0x12, 0, 0, 0, 36, 0], Ok(None)),
            (&[0x1b, 0, 0, 0, 0x01, 0x01], Err(0x24)),
        ];
        for (cdb, want) in cases {
            let got = parse(cdb).map_err(|s| s.asc);
            assert_eq!(got, want, "{cdb:02x?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_cdbs_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse(&raw);
        }
    }
}
