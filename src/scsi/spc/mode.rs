//! MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 §6.11-6.14) over the pages a disk keeps:
//! caching 08h (SBC-4 §6.5.5), control 0Ah (SPC-4 §7.5.8) and informational exceptions 1Ch
//! (SPC-4 §7.5.10).
//!
//! Only WCE is changeable; saved values are not supported (nothing is persisted). Invariant:
//! MODE SELECT either applies every page in the list or none.

use super::super::sense::{self, Sense};
use super::{CmdResult, LuState, put_len, truncate};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;

/// Page control values (SPC-4 §6.14.2 table 158).
const PC_CHANGEABLE: u8 = 1;
const PC_SAVED: u8 = 3;

/// A page as the device reports it: `changeable` masks (PC=01b) or values.
fn page(code: u8, wce: bool, changeable: bool) -> Option<Vec<u8>> {
    let mut p = match code {
        CACHING => vec![0u8; 20],
        CONTROL => vec![0u8; 12],
        INFO_EXCEPTIONS => vec![0u8; 12],
        _ => return None,
    };
    p[0] = code;
    p[1] = u8::try_from(p.len() - 2).unwrap_or(0);
    match (code, changeable) {
        (CACHING, true) => p[2] = 0x04,
        (CACHING, false) => p[2] = if wce { 0x04 } else { 0 },
        // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; TAS=1 (aborted tasks get TASK
        // ABORTED status); BUSY TIMEOUT PERIOD unlimited.
        (CONTROL, false) => {
            p[3] = 0x10;
            p[5] = 0x40;
            p[8] = 0xff;
            p[9] = 0xff;
        }
        // DEXCPT=1: we report no informational exceptions.
        (INFO_EXCEPTIONS, false) => p[2] = 0x08,
        _ => {}
    }
    Some(p)
}

/// MODE SENSE(6/10).
#[allow(clippy::too_many_arguments)]
pub fn mode_sense(
    st: &LuState,
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: u8,
    code: u8,
    subpage: u8,
    alloc: u32,
    geometry: (u64, u32),
) -> CmdResult {
    if pc == PC_SAVED {
        return Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED.into());
    }
    // We have no subpages; 3Fh/FFh asks for all pages and all subpages.
    if subpage != 0 && !(code == ALL_PAGES && subpage == 0xff) {
        return Err(Sense::invalid_cdb_field(3, None).into());
    }
    let codes: &[u8] = match code {
        ALL_PAGES => &[CACHING, CONTROL, INFO_EXCEPTIONS],
        CACHING => &[CACHING],
        CONTROL => &[CONTROL],
        INFO_EXCEPTIONS => &[INFO_EXCEPTIONS],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5)).into()),
    };
    let mut pages = Vec::new();
    for &c in codes {
        pages.extend(page(c, st.wce, pc == PC_CHANGEABLE).unwrap_or_default());
    }
    let (blocks, block_size) = geometry;
    let desc: Vec<u8> = match (dbd, ten && llbaa) {
        (true, _) => Vec::new(),
        (false, false) => {
            // Short block descriptor (SPC-4 §7.5.5.1): all ones when the count does not fit.
            let n = u32::try_from(blocks).unwrap_or(u32::MAX);
            let mut d = n.to_be_bytes().to_vec();
            d.extend_from_slice(&block_size.to_be_bytes());
            d[4] = 0; // density code
            d
        }
        (false, true) => {
            let mut d = blocks.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&block_size.to_be_bytes());
            d
        }
    };
    // Device-specific parameter (SBC-4 §6.5.1): DPOFUA=1; WP=0.
    let out = assemble(ten, 0x10, llbaa && !dbd, &desc, &pages);
    Ok(truncate(out, alloc))
}

/// Mode parameter header (SPC-4 §7.5.4) + block descriptors + pages, the lengths filled in.
/// `dsp` is the device-specific parameter byte, whose meaning each device type defines.
pub fn assemble(ten: bool, dsp: u8, long_lba: bool, desc: &[u8], pages: &[u8]) -> Vec<u8> {
    let mut out = if ten {
        let mut h = vec![0, 0, 0, dsp, u8::from(long_lba), 0, 0, 0];
        put_len::<2>(&mut h, 6, desc.len());
        h
    } else {
        vec![0, 0, dsp, u8::try_from(desc.len()).unwrap_or(0)]
    };
    out.extend_from_slice(desc);
    out.extend_from_slice(pages);
    // MODE DATA LENGTH excludes itself (SPC-4 §7.5.4).
    let n = out.len();
    if ten {
        put_len::<2>(&mut out, 0, n - 2);
    } else {
        out[0] = u8::try_from(n - 1).unwrap_or(u8::MAX);
    }
    out
}

/// The block descriptors of a MODE SELECT parameter list and where its pages start, after
/// the mode parameter header (SPC-4 §7.5.4).
pub fn block_descriptors(ten: bool, list: &[u8]) -> Result<(&[u8], usize), Sense> {
    let hdr = if ten { 8 } else { 4 };
    if list.len() < hdr {
        return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let bd_len = if ten {
        usize::from(u16::from_be_bytes([list[6], list[7]]))
    } else {
        usize::from(list[3])
    };
    let pages_at = hdr + bd_len;
    match list.get(hdr..pages_at) {
        Some(bd) => Ok((bd, pages_at)),
        None => Err(sense::PARAMETER_LIST_LENGTH_ERROR),
    }
}

/// MODE SELECT(6/10): only WCE may change; any other difference from the current values is
/// INVALID FIELD IN PARAMETER LIST pointing at the byte.
pub fn mode_select(
    st: &mut LuState,
    ten: bool,
    pf: bool,
    sp: bool,
    param_len: u32,
    data: &[u8],
    block_size: u32,
) -> Result<bool, Sense> {
    if sp {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let len = usize::try_from(param_len).unwrap_or(usize::MAX);
    if len == 0 {
        return Ok(false);
    }
    if !pf {
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    let Some(list) = data.get(..len) else {
        return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT);
    };
    let (bd, pages_at) = block_descriptors(ten, list)?;
    // A block descriptor may restate our block length (or leave it 0); it cannot change it.
    if bd.len() >= 8 {
        let bl = &bd[bd.len() - 3..];
        let given = u32::from_be_bytes([0, bl[0], bl[1], bl[2]]);
        if given != 0 && given != block_size {
            let at = u16::try_from(pages_at - 3).unwrap_or(u16::MAX);
            return Err(Sense::invalid_param_field(at, None));
        }
    }
    let mut wce = st.wce;
    let mut at = pages_at;
    while at < list.len() {
        let code = list[at] & 0x3f;
        let ptr = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
        if list[at] & 0x40 != 0 {
            return Err(Sense::invalid_param_field(ptr(at), Some(6))); // SPF: no subpages
        }
        let Some(&plen) = list.get(at + 1) else {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        let end = at + 2 + usize::from(plen);
        let Some(given) = list.get(at..end) else {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        let (Some(current), Some(mask)) = (page(code, wce, false), page(code, wce, true)) else {
            return Err(Sense::invalid_param_field(ptr(at), Some(5)));
        };
        if given.len() != current.len() {
            return Err(Sense::invalid_param_field(ptr(at + 1), None));
        }
        // PS is reserved in MODE SELECT (SPC-4 §7.5.7); compare the rest under the mask.
        if given[0] & 0x80 != 0 {
            return Err(Sense::invalid_param_field(ptr(at), Some(7)));
        }
        for i in 2..given.len() {
            if (given[i] ^ current[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_param_field(ptr(at + i), None));
            }
        }
        if code == CACHING {
            wce = given[2] & 0x04 != 0;
        }
        at = end;
    }
    let changed = wce != st.wce;
    st.wce = wce;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sense(st: &LuState, ten: bool, dbd: bool, pc: u8, code: u8) -> Bytes {
        mode_sense(st, ten, dbd, false, pc, code, 0, 255, (2048, 512)).expect("mode sense")
    }

    #[test]
    fn mode_sense_lengths_and_pages() {
        let st = LuState::default();
        // (ten, dbd, page, expected total length)
        let cases = [
            (false, false, ALL_PAGES, 4 + 8 + 20 + 12 + 12),
            (false, true, CACHING, 4 + 20),
            (true, false, CONTROL, 8 + 8 + 12),
            (true, true, INFO_EXCEPTIONS, 8 + 12),
        ];
        for (ten, dbd, code, len) in cases {
            let d = sense(&st, ten, dbd, 0, code);
            assert_eq!(d.len(), len, "{ten} {dbd} {code:#x}");
            let mdl = if ten {
                usize::from(u16::from_be_bytes([d[0], d[1]])) + 2
            } else {
                usize::from(d[0]) + 1
            };
            assert_eq!(mdl, len);
        }
        let caching = sense(&st, false, true, 0, CACHING);
        assert_eq!(caching[4 + 2] & 0x04, 0x04, "WCE=1 by default");
    }

    #[test]
    fn mode_sense_rejects_saved_and_unknown() {
        let st = LuState::default();
        let cases = [
            (3, CACHING, 0, 0x39),
            (0, 0x19, 0, 0x24),
            (0, CACHING, 1, 0x24),
        ];
        for (pc, code, sub, asc) in cases {
            let r = mode_sense(&st, false, false, false, pc, code, sub, 255, (1, 512));
            let s = r.expect_err("must fail").sense.expect("sense");
            assert_eq!(s[12], asc);
        }
    }

    #[test]
    fn mode_select_changes_only_wce() {
        let mut st = LuState::default();
        let cur = sense(&st, false, true, 0, CACHING);
        let mut list = cur.to_vec();
        list[0] = 0;
        list[4 + 2] &= !0x04;
        let n = u32::try_from(list.len()).expect("len");
        assert_eq!(
            mode_select(&mut st, false, true, false, n, &list, 512),
            Ok(true)
        );
        assert!(!st.wce);
        list[4 + 3] = 0x55; // not changeable
        let err = mode_select(&mut st, false, true, false, n, &list, 512).expect_err("reject");
        assert_eq!((err.asc, err.field.map(|f| f.byte)), (0x26, Some(7)));
        assert!(!st.wce);
        let err = mode_select(&mut st, false, true, true, n, &list, 512).expect_err("SP");
        assert_eq!(err.asc, 0x24);
    }
}
