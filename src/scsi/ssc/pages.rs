//! The data pages a tape drive reports: MODE SENSE/SELECT (block descriptor with density and
//! block length, data compression page 0Fh, device configuration page 10h), LOG SENSE
//! (supported pages, TapeAlert 2Eh, tape capacity 31h), REPORT DENSITY SUPPORT, READ BLOCK
//! LIMITS and READ POSITION.
//!
//! Pure: bytes from the drive's settings and position. Invariant: every length field matches
//! the bytes built before truncation to the allocation length.

use crate::scsi::sense::{self, Sense};
use crate::scsi::spc::{CmdResult, mode, put_len, truncate};

/// LTO-5 (SSC-3 Annex: density codes), what an ULT3580-TD5 writes.
pub const DENSITY_LTO5: u8 = 0x58;
/// READ BLOCK LIMITS: the largest record we accept (the transport's 32 MiB command limit
/// would allow more; 8 MiB is what LTO drives report and backup products use at most).
pub const MAX_BLOCK_BYTES: u32 = 8 << 20;

const COMPRESSION: u8 = 0x0f;
const DEVICE_CONFIGURATION: u8 = 0x10;
const ALL_PAGES: u8 = 0x3f;

/// The drive's changeable settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveSettings {
    /// 0: variable-length records; else the fixed block length.
    pub block_size: u32,
    /// Data compression enabled (DCE). Data is compressed by the chunk codec either way.
    pub compression: bool,
}

impl Default for DriveSettings {
    fn default() -> Self {
        Self {
            block_size: 0,
            compression: true,
        }
    }
}

fn mode_page(code: u8, s: &DriveSettings, changeable: bool) -> Option<Vec<u8>> {
    let mut p = vec![0u8; 16];
    p[0] = code;
    p[1] = 0x0e;
    match (code, changeable) {
        (COMPRESSION, true) => p[2] = 0x80,
        (COMPRESSION, false) => {
            // DCE as set, DCC (capable), DDE (decompress on read); algorithm 1 (ALDC-like).
            p[2] = if s.compression { 0xc0 } else { 0x40 };
            p[3] = 0x80;
            p[7] = 0x01;
            p[11] = 0x01;
        }
        (DEVICE_CONFIGURATION, true) => {}
        (DEVICE_CONFIGURATION, false) => {
            // BIS (block identifiers supported); EOD defined as the format's default, EEG
            // (generate EOD on a write); SELECT DATA COMPRESSION ALGORITHM 1.
            p[8] = 0x40;
            p[10] = 0x18;
            p[14] = 0x01;
        }
        _ => return None,
    }
    Some(p)
}

/// MODE SENSE(6/10) of a drive; `write_protected` sets WP in the header.
#[allow(clippy::too_many_arguments)]
pub fn mode_sense(
    s: &DriveSettings,
    write_protected: bool,
    ten: bool,
    dbd: bool,
    pc: u8,
    page: u8,
    subpage: u8,
    alloc: u32,
) -> CmdResult {
    if pc == 3 {
        return Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED.into());
    }
    if subpage != 0 && !(page == ALL_PAGES && subpage == 0xff) {
        return Err(Sense::invalid_cdb_field(3, None).into());
    }
    let codes: &[u8] = match page {
        ALL_PAGES => &[COMPRESSION, DEVICE_CONFIGURATION],
        COMPRESSION => &[COMPRESSION],
        DEVICE_CONFIGURATION => &[DEVICE_CONFIGURATION],
        // Page 0: only the header and block descriptor (SSC-3 allows it).
        0x00 => &[],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5)).into()),
    };
    let changeable = pc == 1;
    let mut pages = Vec::new();
    for &c in codes {
        pages.extend(mode_page(c, s, changeable).unwrap_or_default());
    }
    let desc = if dbd {
        Vec::new()
    } else {
        // Block descriptor (SSC-3): density, number of blocks 0 (the rest of the
        // medium), block length (0 = variable).
        let bl = if changeable { 0xff_ffff } else { s.block_size };
        let mut d = vec![if changeable { 0 } else { DENSITY_LTO5 }, 0, 0, 0, 0];
        d.extend_from_slice(&bl.to_be_bytes()[1..]);
        d
    };
    // Device-specific parameter (SSC-3): WP, BUFFERED MODE 1, speed 0.
    let dsp = if write_protected { 0x90 } else { 0x10 };
    Ok(truncate(
        mode::assemble(ten, dsp, false, &desc, &pages),
        alloc,
    ))
}

/// MODE SELECT(6/10) of a drive: block length and density in the block descriptor, DCE in
/// page 0Fh; page 10h is accepted as is. Returns the new settings.
pub fn mode_select(
    s: &DriveSettings,
    ten: bool,
    sp: bool,
    param_len: u32,
    data: &[u8],
) -> Result<DriveSettings, Sense> {
    if sp {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let len = usize::try_from(param_len).unwrap_or(usize::MAX);
    let Some(list) = data.get(..len) else {
        return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT);
    };
    let mut out = *s;
    if list.is_empty() {
        return Ok(out);
    }
    let ptr = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);
    let (bd, pages_at) = mode::block_descriptors(ten, list)?;
    let hdr = pages_at - bd.len();
    match bd.len() {
        0 => {}
        8 => {
            // Density 0 (default), 7Fh (no change) or ours.
            if !matches!(bd[0], 0 | 0x7f | DENSITY_LTO5) {
                return Err(Sense::invalid_param_field(ptr(hdr), None));
            }
            let bl = u32::from_be_bytes([0, bd[5], bd[6], bd[7]]);
            if bl > MAX_BLOCK_BYTES {
                return Err(Sense::invalid_param_field(ptr(hdr + 5), None));
            }
            out.block_size = bl;
        }
        _ => {
            return Err(Sense::invalid_param_field(
                ptr(if ten { 6 } else { 3 }),
                None,
            ));
        }
    }
    let mut at = pages_at;
    while at < list.len() {
        let code = list[at] & 0x3f;
        let Some(&plen) = list.get(at + 1) else {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        let end = at + 2 + usize::from(plen);
        let Some(page) = list.get(at..end) else {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        match code {
            COMPRESSION if page.len() >= 3 => out.compression = page[2] & 0x80 != 0,
            DEVICE_CONFIGURATION => {}
            _ => return Err(Sense::invalid_param_field(ptr(at), Some(5))),
        }
        at = end;
    }
    Ok(out)
}

/// READ BLOCK LIMITS (SSC-3): granularity 0, maximum and minimum record length.
pub fn block_limits() -> Vec<u8> {
    let mut d = vec![0u8; 6];
    d[1..4].copy_from_slice(&MAX_BLOCK_BYTES.to_be_bytes()[1..]);
    d[4..6].copy_from_slice(&1u16.to_be_bytes());
    d
}

/// READ BLOCK LIMITS with MLOI: the maximum logical object identifier.
pub fn max_object_identifier(max: u64) -> Vec<u8> {
    let mut d = vec![0u8; 20];
    d[12..20].copy_from_slice(&max.to_be_bytes());
    d
}

/// REPORT DENSITY SUPPORT (SSC-3): one density descriptor, LTO-5.
pub fn density_support(media: bool, alloc: u32) -> CmdResult {
    let _ = media; // the only density is both supported and the mounted medium's
    let mut d = vec![0u8; 52];
    d[0] = DENSITY_LTO5;
    d[1] = DENSITY_LTO5;
    d[2] = 0xa0; // WRTOK, DEFLT
    d[5..8].copy_from_slice(&15_142u32.to_be_bytes()[1..]); // bits per mm
    d[8..10].copy_from_slice(&127u16.to_be_bytes()); // 12.7 mm
    d[10..12].copy_from_slice(&1280u16.to_be_bytes()); // tracks
    d[12..16].copy_from_slice(&1_430_511u32.to_be_bytes()); // capacity, MiB
    d[16..24].copy_from_slice(b"LTO-CVE ");
    d[24..32].copy_from_slice(b"U-516   ");
    d[32..52].copy_from_slice(b"Ultrium 5/16T       ");
    let mut out = vec![0u8; 4];
    put_len::<2>(&mut out, 0, d.len() + 2);
    out.extend_from_slice(&d);
    Ok(truncate(out, alloc))
}

/// The position as READ POSITION reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionInfo {
    pub object: u64,
    pub file: u64,
    pub past_early_warning: bool,
}

/// READ POSITION (SSC-3): short (00h/01h), long (06h) and extended (08h) forms.
pub fn read_position(p: &PositionInfo, service_action: u8, alloc: u32) -> CmdResult {
    let bop = if p.object == 0 { 0x80 } else { 0 };
    let bpew = u8::from(p.past_early_warning);
    let d = match service_action {
        0x00 | 0x01 => {
            let mut d = vec![0u8; 20];
            // A position past 32 bits cannot be reported here: PERR (position error) then.
            let (obj, perr) = match u32::try_from(p.object) {
                Ok(v) => (v, 0),
                Err(_) => (u32::MAX, 0x02),
            };
            d[0] = bop | bpew | perr;
            d[4..8].copy_from_slice(&obj.to_be_bytes());
            d[8..12].copy_from_slice(&obj.to_be_bytes());
            return Ok(bytes::Bytes::from(d));
        }
        0x06 => {
            let mut d = vec![0u8; 32];
            d[0] = bop | bpew;
            d[8..16].copy_from_slice(&p.object.to_be_bytes());
            d[16..24].copy_from_slice(&p.file.to_be_bytes());
            d
        }
        0x08 => {
            let mut d = vec![0u8; 32];
            d[0] = bop | bpew;
            d[2..4].copy_from_slice(&0x1cu16.to_be_bytes());
            d[8..16].copy_from_slice(&p.object.to_be_bytes());
            d[16..24].copy_from_slice(&p.object.to_be_bytes());
            d
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    };
    Ok(truncate(d, alloc))
}

const LOG_SUPPORTED: u8 = 0x00;
const LOG_TAPE_ALERT: u8 = 0x2e;
const LOG_CAPACITY: u8 = 0x31;

/// LOG SENSE (SPC-4 §6.8) of a drive. `capacity` is (remaining, maximum) in MiB of the loaded
/// tape (zeros without one).
pub fn log_sense(page: u8, subpage: u8, capacity: (u32, u32), alloc: u32) -> CmdResult {
    if subpage != 0 {
        return Err(Sense::invalid_cdb_field(3, None).into());
    }
    let body: Vec<u8> = match page {
        LOG_SUPPORTED => vec![LOG_SUPPORTED, LOG_TAPE_ALERT, LOG_CAPACITY],
        // TapeAlert (SSC-3 Annex): 64 one-byte flags, all clear: a virtual drive never needs
        // cleaning and its media never wear.
        LOG_TAPE_ALERT => (1u16..=64)
            .flat_map(|code| {
                let [hi, lo] = code.to_be_bytes();
                [hi, lo, 0x03, 0x01, 0x00]
            })
            .collect(),
        // Tape capacity (IBM LTO): main partition remaining and maximum; no alternate.
        LOG_CAPACITY => {
            let mut b = Vec::new();
            for (code, v) in [(1u16, capacity.0), (2, 0), (3, capacity.1), (4, 0)] {
                b.extend_from_slice(&code.to_be_bytes());
                b.extend_from_slice(&[0x00, 0x04]);
                b.extend_from_slice(&v.to_be_bytes());
            }
            b
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(5)).into()),
    };
    let mut out = vec![page, 0, 0, 0];
    put_len::<2>(&mut out, 2, body.len());
    out.extend_from_slice(&body);
    Ok(truncate(out, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_sense_reports_block_size_density_and_wp() {
        let s = DriveSettings {
            block_size: 65536,
            compression: true,
        };
        let d = mode_sense(&s, true, false, false, 0, ALL_PAGES, 0, 255).unwrap();
        assert_eq!(usize::from(d[0]) + 1, d.len());
        assert_eq!(d[2], 0x90, "WP and buffered mode");
        assert_eq!(d[3], 8);
        assert_eq!(d[4], DENSITY_LTO5);
        assert_eq!(&d[9..12], &[0x01, 0x00, 0x00]);
        assert_eq!(d[12], COMPRESSION);
        assert_eq!(d[14] & 0x80, 0x80);
        assert_eq!(d[28], DEVICE_CONFIGURATION);
        let d10 = mode_sense(&s, false, true, true, 0, COMPRESSION, 0, 255).unwrap();
        assert_eq!(d10.len(), 8 + 16);
        assert!(mode_sense(&s, false, false, false, 3, 0x0f, 0, 255).is_err());
        assert!(mode_sense(&s, false, false, false, 0, 0x08, 0, 255).is_err());
    }

    #[test]
    fn mode_select_sets_block_size_and_compression() {
        let s = DriveSettings::default();
        let mut list = vec![0, 0, 0x10, 8, DENSITY_LTO5, 0, 0, 0, 0, 0, 0x80, 0];
        list.extend_from_slice(&[0x0f, 0x0e, 0x00]);
        list.extend_from_slice(&[0u8; 13]);
        let n = list.len() as u32;
        let got = mode_select(&s, false, false, n, &list).unwrap();
        assert_eq!(got.block_size, 0x8000);
        assert!(!got.compression);
        let mut bad = list.clone();
        bad[4] = 0x44;
        assert_eq!(
            mode_select(&s, false, false, n, &bad).unwrap_err().asc,
            0x26
        );
        let mut huge = list.clone();
        huge[9] = 0xff;
        assert!(mode_select(&s, false, false, n, &huge).is_err());
        assert!(mode_select(&s, false, false, n + 4, &list).is_err());
    }

    #[test]
    fn read_position_forms() {
        let p = PositionInfo {
            object: 7,
            file: 2,
            past_early_warning: false,
        };
        let short = read_position(&p, 0, 0).unwrap();
        assert_eq!(short.len(), 20);
        assert_eq!(&short[4..8], &[0, 0, 0, 7]);
        let long = read_position(&p, 6, 32).unwrap();
        assert_eq!((long[15], long[23]), (7, 2));
        let ext = read_position(&PositionInfo { object: 0, ..p }, 8, 32).unwrap();
        assert_eq!((ext[0], ext[3]), (0x80, 0x1c));
        assert!(read_position(&p, 3, 32).is_err());
    }

    #[test]
    fn log_pages() {
        let s = log_sense(0, 0, (0, 0), 255).unwrap();
        assert_eq!(&s[4..], &[0x00, 0x2e, 0x31]);
        let t = log_sense(0x2e, 0, (0, 0), 1024).unwrap();
        assert_eq!(t.len(), 4 + 64 * 5);
        let c = log_sense(0x31, 0, (10, 20), 255).unwrap();
        assert_eq!(&c[8..12], &10u32.to_be_bytes());
        assert!(log_sense(0x0c, 0, (0, 0), 255).is_err());
        let d = density_support(false, 1024).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
    }
}
