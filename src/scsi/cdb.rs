//! Typed CDBs: bytes in, a `Command` out, for every operation code tidegate supports.
//!
//! A pure codec (no tokio, no I/O) so it can be property-tested. It validates what can be
//! validated from the CDB alone (length, reserved and unsupported bits, the CONTROL byte);
//! range checks against the medium belong to the logical unit. Invariant: `parse` never panics
//! and every rejection is an ILLEGAL REQUEST sense, with a field pointer where one helps.

use super::sense::{INVALID_OPCODE, Sense};

/// Operation codes (SPC-4 §D.3.1, SBC-4 §5).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;

    /// Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
}

/// A range of logical blocks named by a CDB (not yet checked against the capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        /// Page control: 0 current, 1 changeable, 2 default, 3 saved (SPC-4 §6.14.2).
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        ten: bool,
        pf: bool,
        sp: bool,
        param_len: u32,
    },
    StartStopUnit {
        power_condition: u8,
        loej: bool,
        start: bool,
    },
    PreventAllow {
        prevent: u8,
    },
    Reserve,
    Release,
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc: u32,
    },
    PersistentReserveIn {
        service_action: u8,
        alloc: u32,
    },
    PersistentReserveOut {
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    Read {
        ext: Extent,
        fua: bool,
    },
    Write {
        ext: Extent,
        fua: bool,
    },
    WriteAndVerify {
        ext: Extent,
        bytchk: bool,
    },
    Verify {
        ext: Extent,
        /// SBC-4 §5.30: 0 no data-out, 1 compare every block, 3 one block compared to each.
        bytchk: u8,
    },
    WriteSame {
        ext: Extent,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    SynchronizeCache {
        ext: Extent,
    },
    CompareAndWrite {
        ext: Extent,
        fua: bool,
    },
    PreFetch {
        ext: Extent,
    },
}

/// The CDB length for an operation code's group (SPC-4 §4.2.5.1); `None` for vendor-specific
/// and variable-length groups we never accept.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

fn be32(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
}

/// Rejects set bits of `mask` in byte `i` with a pointer at the highest offending bit.
fn reserved(c: &[u8], i: usize, mask: u8) -> Result<(), Sense> {
    let bad = c[i] & mask;
    if bad == 0 {
        return Ok(());
    }
    let bit = 7 - u8::try_from(bad.leading_zeros()).unwrap_or(0);
    Err(Sense::invalid_cdb_field(ptr(i), Some(bit)))
}

fn ptr(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// Protection fields (RDPROTECT etc., bits 7-5 of byte 1) must be zero: we format no PI.
fn no_protection(c: &[u8]) -> Result<(), Sense> {
    if c[1] & 0xe0 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

/// Parses a CDB. `raw` may be longer than the command's CDB (iSCSI pads to 16 bytes).
pub fn parse(raw: &[u8]) -> Result<Command, Sense> {
    let Some(&opcode) = raw.first() else {
        return Err(INVALID_OPCODE);
    };
    let Some(len) = cdb_len(opcode) else {
        return Err(INVALID_OPCODE);
    };
    if raw.len() < len {
        return Err(Sense::invalid_cdb_field(0, None));
    }
    let c = &raw[..len];
    // CONTROL byte (SAM-5 §5.2): we support neither NACA nor linked commands.
    reserved(c, len - 1, 0x05)?;
    use Command::*;
    use op::*;
    let cmd = match opcode {
        TEST_UNIT_READY => TestUnitReady,
        REQUEST_SENSE => {
            reserved(c, 1, 0xfe)?;
            RequestSense {
                desc: c[1] & 1 != 0,
                alloc: u32::from(c[4]),
            }
        }
        INQUIRY => {
            // CMDDT (bit 1) is obsolete since SPC-3; we answer it as unsupported.
            reserved(c, 1, 0xfe)?;
            let evpd = c[1] & 1 != 0;
            if !evpd && c[2] != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Inquiry {
                evpd,
                page: c[2],
                alloc: be32(&c[3..5]),
            }
        }
        MODE_SENSE_6 | MODE_SENSE_10 => {
            let ten = opcode == MODE_SENSE_10;
            reserved(c, 1, if ten { 0xe7 } else { 0xf7 })?;
            ModeSense {
                ten,
                dbd: c[1] & 0x08 != 0,
                llbaa: ten && c[1] & 0x10 != 0,
                pc: c[2] >> 6,
                page: c[2] & 0x3f,
                subpage: c[3],
                alloc: if ten { be32(&c[7..9]) } else { u32::from(c[4]) },
            }
        }
        MODE_SELECT_6 | MODE_SELECT_10 => {
            let ten = opcode == MODE_SELECT_10;
            reserved(c, 1, 0xee)?;
            ModeSelect {
                ten,
                pf: c[1] & 0x10 != 0,
                sp: c[1] & 0x01 != 0,
                param_len: if ten { be32(&c[7..9]) } else { u32::from(c[4]) },
            }
        }
        START_STOP_UNIT => {
            reserved(c, 4, 0x08)?;
            StartStopUnit {
                power_condition: c[4] >> 4,
                loej: c[4] & 0x02 != 0,
                start: c[4] & 0x01 != 0,
            }
        }
        PREVENT_ALLOW => PreventAllow {
            prevent: c[4] & 0x03,
        },
        RESERVE_6 | RELEASE_6 | RESERVE_10 | RELEASE_10 => {
            // Third-party reservations (SPC-2 §7.21) are not supported.
            if len == 10 {
                reserved(c, 1, 0x10)?;
            }
            if opcode == RESERVE_6 || opcode == RESERVE_10 {
                Reserve
            } else {
                Release
            }
        }
        REPORT_LUNS => ReportLuns {
            select: c[2],
            alloc: be32(&c[6..10]),
        },
        MAINTENANCE_IN if c[1] & 0x1f == SA_REPORT_SUPPORTED_OPCODES => {
            reserved(c, 2, 0x78)?;
            let options = c[2] & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            ReportSupportedOpcodes {
                rctd: c[2] & 0x80 != 0,
                options,
                opcode: c[3],
                service_action: u16::from_be_bytes([c[4], c[5]]),
                alloc: be32(&c[6..10]),
            }
        }
        MAINTENANCE_IN => return Err(Sense::invalid_cdb_field(1, Some(4))),
        PERSISTENT_RESERVE_IN => PersistentReserveIn {
            service_action: c[1] & 0x1f,
            alloc: be32(&c[7..9]),
        },
        PERSISTENT_RESERVE_OUT => PersistentReserveOut {
            service_action: c[1] & 0x1f,
            scope: c[2] >> 4,
            pr_type: c[2] & 0x0f,
            param_len: be32(&c[5..9]),
        },
        READ_CAPACITY_10 => {
            // PMI is obsolete (SBC-4 §5.20); with it clear the LBA must be zero.
            if c[8] & 1 == 0 && be(&c[2..6]) != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            ReadCapacity10
        }
        SERVICE_ACTION_IN_16 => match c[1] & 0x1f {
            SA_READ_CAPACITY_16 => ReadCapacity16 {
                alloc: be32(&c[10..14]),
            },
            SA_GET_LBA_STATUS => GetLbaStatus {
                lba: be(&c[2..10]),
                alloc: be32(&c[10..14]),
            },
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        },
        READ_6 | WRITE_6 => {
            // Transfer length 0 means 256 blocks in the 6-byte forms (SBC-4 §5.15).
            let blocks = match c[4] {
                0 => 256,
                n => u32::from(n),
            };
            let ext = Extent {
                lba: be(&c[1..4]) & 0x1f_ffff,
                blocks,
            };
            if opcode == READ_6 {
                Read { ext, fua: false }
            } else {
                Write { ext, fua: false }
            }
        }
        READ_10 | READ_12 | READ_16 | WRITE_10 | WRITE_12 | WRITE_16 => {
            no_protection(c)?;
            let ext = extent(c);
            let fua = c[1] & 0x08 != 0;
            if matches!(opcode, READ_10 | READ_12 | READ_16) {
                Read { ext, fua }
            } else {
                Write { ext, fua }
            }
        }
        WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
            no_protection(c)?;
            // BYTCHK 10b/11b are reserved for WRITE AND VERIFY (SBC-4 §5.47).
            reserved(c, 1, 0x04)?;
            WriteAndVerify {
                ext: extent(c),
                bytchk: c[1] & 0x02 != 0,
            }
        }
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            no_protection(c)?;
            let bytchk = (c[1] >> 1) & 0x03;
            if bytchk == 2 {
                return Err(Sense::invalid_cdb_field(1, Some(2)));
            }
            Verify {
                ext: extent(c),
                bytchk,
            }
        }
        WRITE_SAME_10 | WRITE_SAME_16 => {
            no_protection(c)?;
            // ANCHOR needs anchored-LBA support we do not report; PBDATA/LBDATA are obsolete.
            reserved(c, 1, 0x16)?;
            WriteSame {
                ext: extent(c),
                unmap: c[1] & 0x08 != 0,
                ndob: opcode == WRITE_SAME_16 && c[1] & 0x01 != 0,
            }
        }
        UNMAP => {
            reserved(c, 1, 0x01)?;
            Unmap {
                param_len: be32(&c[7..9]),
            }
        }
        SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => SynchronizeCache { ext: extent(c) },
        PRE_FETCH_10 | PRE_FETCH_16 => PreFetch { ext: extent(c) },
        COMPARE_AND_WRITE => {
            no_protection(c)?;
            CompareAndWrite {
                ext: Extent {
                    lba: be(&c[2..10]),
                    blocks: u32::from(c[13]),
                },
                fua: c[1] & 0x08 != 0,
            }
        }
        _ => return Err(INVALID_OPCODE),
    };
    Ok(cmd)
}

/// LBA and transfer length of the 10-, 12- and 16-byte block commands, which share a layout.
fn extent(c: &[u8]) -> Extent {
    match c.len() {
        10 => Extent {
            lba: be(&c[2..6]),
            blocks: be32(&c[7..9]),
        },
        12 => Extent {
            lba: be(&c[2..6]),
            blocks: be32(&c[6..10]),
        },
        _ => Extent {
            lba: be(&c[2..10]),
            blocks: be32(&c[10..14]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cdb(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(16, 0);
        v
    }

    #[test]
    fn parses_block_commands() {
        let cases: Vec<(Vec<u8>, Command)> = vec![
            (
                cdb(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]),
                Command::Read {
                    ext: Extent {
                        lba: 0x010203,
                        blocks: 256,
                    },
                    fua: false,
                },
            ),
            (
                cdb(&[0x28, 0x08, 0, 0, 0, 9, 0, 0, 2, 0]),
                Command::Read {
                    ext: Extent { lba: 9, blocks: 2 },
                    fua: true,
                },
            ),
            (
                cdb(&[0xaa, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0]),
                Command::Write {
                    ext: Extent { lba: 7, blocks: 3 },
                    fua: false,
                },
            ),
            (
                cdb(&[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0]),
                Command::Write {
                    ext: Extent { lba: 5, blocks: 1 },
                    fua: false,
                },
            ),
            (
                cdb(&[0x93, 0x09, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0]),
                Command::WriteSame {
                    ext: Extent { lba: 5, blocks: 1 },
                    unmap: true,
                    ndob: true,
                },
            ),
            (
                cdb(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0]),
                Command::CompareAndWrite {
                    ext: Extent { lba: 5, blocks: 1 },
                    fua: false,
                },
            ),
            (
                cdb(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
                Command::ReadCapacity16 { alloc: 32 },
            ),
        ];
        for (raw, expect) in cases {
            assert_eq!(parse(&raw), Ok(expect), "{raw:02x?}");
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let cases: Vec<(Vec<u8>, Sense)> = vec![
            (cdb(&[0xff]), INVALID_OPCODE),
            (cdb(&[0x02]), INVALID_OPCODE),
            (vec![0x28, 0, 0], Sense::invalid_cdb_field(0, None)),
            (
                cdb(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]),
                Sense::invalid_cdb_field(1, Some(7)),
            ),
            (
                cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x04]),
                Sense::invalid_cdb_field(9, Some(2)),
            ),
            (
                cdb(&[0x12, 0, 0x80, 0, 36, 0]),
                Sense::invalid_cdb_field(2, None),
            ),
            (
                cdb(&[0x12, 0x02, 0, 0, 36, 0]),
                Sense::invalid_cdb_field(1, Some(1)),
            ),
            (cdb(&[0x9e, 0x11]), Sense::invalid_cdb_field(1, Some(4))),
            (
                cdb(&[0x2f, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]),
                Sense::invalid_cdb_field(1, Some(2)),
            ),
            (
                cdb(&[0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0]),
                Sense::invalid_cdb_field(1, Some(4)),
            ),
        ];
        for (raw, expect) in cases {
            assert_eq!(parse(&raw), Err(expect), "{raw:02x?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = parse(&raw);
        }
    }
}
