//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): the table of what a disk LU accepts, in
//! both the all-commands and the one-command forms, with optional timeouts descriptors.
//!
//! Invariant: `DISK_COMMANDS` lists exactly the operation codes `cdb::parse` accepts (a unit
//! test checks every entry parses and that a sample of other codes does not).

use super::super::cdb::op;
use super::super::sense::Sense;
use super::{CmdResult, put_len, truncate};

/// (operation code, service action, CDB length).
pub const DISK_COMMANDS: &[(u8, Option<u16>, u16)] = &[
    (op::TEST_UNIT_READY, None, 6),
    (op::REQUEST_SENSE, None, 6),
    (op::READ_6, None, 6),
    (op::WRITE_6, None, 6),
    (op::INQUIRY, None, 6),
    (op::MODE_SELECT_6, None, 6),
    (op::RESERVE_6, None, 6),
    (op::RELEASE_6, None, 6),
    (op::MODE_SENSE_6, None, 6),
    (op::START_STOP_UNIT, None, 6),
    (op::PREVENT_ALLOW, None, 6),
    (op::READ_CAPACITY_10, None, 10),
    (op::READ_10, None, 10),
    (op::WRITE_10, None, 10),
    (op::WRITE_AND_VERIFY_10, None, 10),
    (op::VERIFY_10, None, 10),
    (op::PRE_FETCH_10, None, 10),
    (op::SYNCHRONIZE_CACHE_10, None, 10),
    (op::WRITE_SAME_10, None, 10),
    (op::UNMAP, None, 10),
    (op::MODE_SELECT_10, None, 10),
    (op::RESERVE_10, None, 10),
    (op::RELEASE_10, None, 10),
    (op::MODE_SENSE_10, None, 10),
    (op::PERSISTENT_RESERVE_IN, Some(0), 10),
    (op::PERSISTENT_RESERVE_IN, Some(1), 10),
    (op::PERSISTENT_RESERVE_IN, Some(2), 10),
    (op::PERSISTENT_RESERVE_IN, Some(3), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(0), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(1), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(2), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(3), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(4), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(5), 10),
    (op::PERSISTENT_RESERVE_OUT, Some(6), 10),
    (op::READ_16, None, 16),
    (op::COMPARE_AND_WRITE, None, 16),
    (op::WRITE_16, None, 16),
    (op::WRITE_AND_VERIFY_16, None, 16),
    (op::VERIFY_16, None, 16),
    (op::PRE_FETCH_16, None, 16),
    (op::SYNCHRONIZE_CACHE_16, None, 16),
    (op::WRITE_SAME_16, None, 16),
    (
        op::SERVICE_ACTION_IN_16,
        Some(op::SA_READ_CAPACITY_16 as u16),
        16,
    ),
    (
        op::SERVICE_ACTION_IN_16,
        Some(op::SA_GET_LBA_STATUS as u16),
        16,
    ),
    (op::REPORT_LUNS, None, 12),
    (
        op::MAINTENANCE_IN,
        Some(op::SA_REPORT_SUPPORTED_OPCODES as u16),
        12,
    ),
    (op::READ_12, None, 12),
    (op::WRITE_12, None, 12),
    (op::WRITE_AND_VERIFY_12, None, 12),
    (op::VERIFY_12, None, 12),
];

/// Command timeouts descriptor (SPC-4 §6.35.4): no nominal time, 60 s recommended, which
/// covers a write that waits for the cache to drain.
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[8..12].copy_from_slice(&60u32.to_be_bytes());
    t
}

/// CDB USAGE DATA: which bits of each CDB byte the device server looks at.
fn usage(opcode: u8, sa: Option<u16>, len: u16) -> Vec<u8> {
    let mut u = vec![0xffu8; usize::from(len)];
    u[0] = opcode;
    if let Some(sa) = sa {
        // The service action is in byte 1 bits 4-0 for every SA command we have.
        u[1] = 0xe0 | (sa as u8 & 0x1f);
    }
    if let Some(last) = u.last_mut() {
        *last = 0x07; // CONTROL: NACA and LINK are examined (and rejected)
    }
    u
}

/// REPORT SUPPORTED OPERATION CODES for `table`.
pub fn report(
    table: &[(u8, Option<u16>, u16)],
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    alloc: u32,
) -> CmdResult {
    let mut out = Vec::new();
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for &(code, sa, len) in table {
                let flags = u8::from(sa.is_some()) | if rctd { 0x02 } else { 0 };
                let [sh, sl] = sa.unwrap_or(0).to_be_bytes();
                let [lh, ll] = len.to_be_bytes();
                out.extend_from_slice(&[code, 0, sh, sl, 0, flags, lh, ll]);
                if rctd {
                    out.extend_from_slice(&timeouts());
                }
            }
            let n = out.len() - 4;
            put_len::<4>(&mut out, 0, n);
        }
        _ => {
            let has_sa = table.iter().any(|&(c, sa, _)| c == opcode && sa.is_some());
            let wanted = match options {
                // Options 1: the opcode must not have service actions; 2: it must.
                1 if has_sa => return Err(Sense::invalid_cdb_field(2, Some(2)).into()),
                1 => None,
                2 if !has_sa => return Err(Sense::invalid_cdb_field(2, Some(2)).into()),
                _ => has_sa.then_some(service_action),
            };
            let found = table
                .iter()
                .find(|&&(c, sa, _)| c == opcode && sa == wanted);
            match found {
                None => out.extend_from_slice(&[0, 0x01, 0, 0]), // SUPPORT 001b: not supported
                Some(&(code, sa, len)) => {
                    let ctdp = if rctd { 0x80 } else { 0 };
                    out.extend_from_slice(&[0, ctdp | 0x03, 0, 0]);
                    put_len::<2>(&mut out, 2, usize::from(len));
                    out.extend_from_slice(&usage(code, sa, len));
                    if rctd {
                        out.extend_from_slice(&timeouts());
                    }
                }
            }
        }
    }
    Ok(truncate(out, alloc))
}

#[cfg(test)]
mod tests {
    use super::super::super::cdb;
    use super::*;

    #[test]
    fn table_matches_parser() {
        for &(code, sa, len) in DISK_COMMANDS {
            let mut raw = vec![0u8; 16];
            raw[0] = code;
            if let Some(sa) = sa {
                raw[1] = sa as u8;
            }
            let err = cdb::parse(&raw).err();
            assert!(
                err.is_none_or(|s| s.asc != 0x20),
                "{code:#x} rejected as unsupported"
            );
            assert_eq!(cdb::cdb_len(code), Some(usize::from(len)));
        }
        for code in [0x01u8, 0x04, 0x07, 0x3b, 0x48, 0x8c, 0xa2] {
            let mut raw = vec![0u8; 16];
            raw[0] = code;
            assert_eq!(cdb::parse(&raw).err().map(|s| s.asc), Some(0x20));
        }
    }

    #[test]
    fn one_command_forms() {
        // (options, opcode, sa, expected byte 1 or asc of the error)
        let cases: [(u8, u8, u16, Result<u8, u8>); 6] = [
            (1, op::READ_10, 0, Ok(0x03)),
            (1, 0x01, 0, Ok(0x01)),
            (1, op::PERSISTENT_RESERVE_IN, 0, Err(0x24)),
            (2, op::READ_10, 0, Err(0x24)),
            (2, op::SERVICE_ACTION_IN_16, 0x10, Ok(0x03)),
            (2, op::SERVICE_ACTION_IN_16, 0x11, Ok(0x01)),
        ];
        for (options, code, sa, expect) in cases {
            let r = report(DISK_COMMANDS, false, options, code, sa, 512);
            match (r, expect) {
                (Ok(d), Ok(b1)) => {
                    assert_eq!(d[1], b1, "{options} {code:#x}");
                    if b1 == 0x03 {
                        assert_eq!(d[4], code);
                    }
                }
                (Err(resp), Err(asc)) => {
                    assert_eq!(resp.sense.expect("sense")[12], asc);
                }
                (r, e) => panic!("{options} {code:#x}: {r:?} vs {e:?}"),
            }
        }
    }

    #[test]
    fn all_commands_with_timeouts() {
        let d = report(DISK_COMMANDS, true, 0, 0, 0, u32::MAX).expect("report");
        assert_eq!(d.len(), 4 + DISK_COMMANDS.len() * 20);
        assert_eq!(d[4 + 5] & 0x02, 0x02);
    }
}
