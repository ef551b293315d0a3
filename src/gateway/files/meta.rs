//! POSIX attributes ↔ object user metadata, in the dialects already found in buckets
//! (docs/design.md §2): AWS file gateways' `file-permissions` (st_mode in octal, type bits
//! included),
//! `file-owner`, `file-group`, `file-mtime`, `file-ctime` (nanoseconds with an `ns` suffix);
//! s3fs's `mode`, `uid`, `gid`, `mtime` (decimal, seconds) and `rdev` (a device's number as a
//! Linux `dev_t`, decimal); rclone's `mtime` (seconds with a fraction, or RFC 3339). We write the
//! AWS keys plus `mtime` in whole seconds (and `rdev` for devices), and keep every key we do not
//! interpret. Pure functions: a missing or unreadable value falls back to the share's default,
//! and a bare object never reads as mode 0000.

use crate::catalog::shares::InodeKind;

/// st_mode type bits (stat(2)).
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFIFO: u32 = 0o010_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFSOCK: u32 = 0o140_000;

/// The st_mode type bits of an inode kind.
pub fn type_bits(kind: InodeKind) -> u32 {
    match kind {
        InodeKind::File => S_IFREG,
        InodeKind::Dir => S_IFDIR,
        InodeKind::Symlink => S_IFLNK,
        InodeKind::Fifo => S_IFIFO,
        InodeKind::Socket => S_IFSOCK,
        InodeKind::BlockDev => S_IFBLK,
        InodeKind::CharDev => S_IFCHR,
    }
}

/// The inode kind st_mode's type bits name; `None` when there are none or they are unknown
/// (such an object is a regular file, as every other S3 tool sees it).
pub fn kind_of(mode: u32) -> Option<InodeKind> {
    [
        InodeKind::File,
        InodeKind::Dir,
        InodeKind::Symlink,
        InodeKind::Fifo,
        InodeKind::Socket,
        InodeKind::BlockDev,
        InodeKind::CharDev,
    ]
    .into_iter()
    .find(|&k| type_bits(k) == mode & S_IFMT)
}

/// A device number as Linux's `dev_t` (glibc's `makedev`: 32-bit major and minor, the low
/// 8+12 bits where the old 16-bit encoding had them), which is what s3fs writes as `rdev`.
pub fn makedev((major, minor): (u32, u32)) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// The (major, minor) of a Linux `dev_t`; the inverse of [`makedev`].
pub fn major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    // Each is masked to 32 bits above.
    (major as u32, minor as u32)
}

const KNOWN: [&str; 10] = [
    "file-permissions",
    "file-owner",
    "file-group",
    "file-mtime",
    "file-ctime",
    "mode",
    "uid",
    "gid",
    "mtime",
    "rdev",
];

/// Attributes as read from metadata; `None` where the object says nothing usable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixMeta {
    /// Full st_mode when the dialect carries type bits, else permission bits only.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
    /// A device's (major, minor), from s3fs's `rdev`.
    pub rdev: Option<(u32, u32)>,
    /// User metadata we keep but do not interpret, as `key=value` lines.
    pub extra: String,
}

impl PosixMeta {
    /// The kind the mode's type bits name, if they name one.
    pub fn kind(&self) -> Option<InodeKind> {
        self.mode.and_then(kind_of)
    }

    /// Permission bits (the low 12), or `default` when the object has none or claims 0000.
    pub fn perm_or(&self, default: u32) -> u32 {
        match self.mode.map(|m| m & 0o7777) {
            Some(0) | None => default,
            Some(p) => p,
        }
    }
}

fn find<'a>(meta: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// Reads attributes from user metadata (keys as the store returned them).
pub fn parse(meta: &[(String, String)]) -> PosixMeta {
    let octal = |v: &str| u32::from_str_radix(v, 8).ok();
    let mode = find(meta, "file-permissions")
        .and_then(octal)
        .or_else(|| find(meta, "mode").and_then(|v| v.parse().ok()));
    let uid = find(meta, "file-owner")
        .or_else(|| find(meta, "uid"))
        .and_then(|v| v.parse().ok());
    let gid = find(meta, "file-group")
        .or_else(|| find(meta, "gid"))
        .and_then(|v| v.parse().ok());
    let mtime_ns = find(meta, "file-mtime")
        .and_then(parse_time)
        .or_else(|| find(meta, "mtime").and_then(parse_time));
    let ctime_ns = find(meta, "file-ctime").and_then(parse_time);
    let rdev = find(meta, "rdev")
        .and_then(|v| v.parse().ok())
        .map(major_minor);
    let extra = meta
        .iter()
        .filter(|(k, _)| !KNOWN.iter().any(|known| k.eq_ignore_ascii_case(known)))
        .filter(|(k, v)| !k.contains(['=', '\n']) && !v.contains('\n'))
        .map(|(k, v)| format!("{}={v}\n", k.to_ascii_lowercase()))
        .collect();
    PosixMeta {
        mode,
        uid,
        gid,
        mtime_ns,
        ctime_ns,
        rdev,
        extra,
    }
}

/// The metadata we write for an object: AWS's keys, `mtime`, `rdev` for a block or character
/// device, and the kept extras.
pub fn render(
    st_mode: u32,
    (uid, gid): (u32, u32),
    (mtime_ns, ctime_ns): (i64, i64),
    rdev: (u32, u32),
    extra: &str,
) -> Vec<(String, String)> {
    let mut out = vec![
        ("file-permissions".to_owned(), format!("{st_mode:07o}")),
        ("file-owner".to_owned(), uid.to_string()),
        ("file-group".to_owned(), gid.to_string()),
        ("file-mtime".to_owned(), format!("{mtime_ns}ns")),
        ("file-ctime".to_owned(), format!("{ctime_ns}ns")),
        (
            "mtime".to_owned(),
            mtime_ns.div_euclid(1_000_000_000).to_string(),
        ),
    ];
    if matches!(st_mode & S_IFMT, S_IFBLK | S_IFCHR) {
        out.push(("rdev".to_owned(), makedev(rdev).to_string()));
    }
    out.extend(
        extra
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    out
}

/// A time in any of the dialects: `<n>ns`, `<n>ms`, `<n>s`, decimal seconds with an optional
/// fraction, or RFC 3339 (`2024-05-01T12:00:00.5Z`, `+hh:mm` offsets).
pub fn parse_time(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Some(n) = v.strip_suffix("ns") {
        return n.parse().ok();
    }
    if let Some(n) = v.strip_suffix("ms") {
        return n.parse::<i64>().ok()?.checked_mul(1_000_000);
    }
    let v2 = v.strip_suffix('s').unwrap_or(v);
    if let Some(ns) = decimal_seconds(v2) {
        return Some(ns);
    }
    rfc3339(v)
}

fn decimal_seconds(v: &str) -> Option<i64> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let secs: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let frac_ns = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse::<i64>().ok()?
    };
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

fn rfc3339(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &v[19..];
    let mut frac_ns = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        let frac = &r[..digits.min(9)];
        frac_ns = format!("{frac:0<9}").parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh = rest.get(1..3)?.parse::<i64>().ok()?;
            let om = rest.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_dialect_is_read() {
        let aws = parse(&kv(&[
            ("file-permissions", "0100640"),
            ("file-owner", "1000"),
            ("file-group", "100"),
            ("file-mtime", "1700000000123456789ns"),
            ("color", "blue"),
        ]));
        assert_eq!(aws.mode, Some(0o100_640));
        assert_eq!((aws.uid, aws.gid), (Some(1000), Some(100)));
        assert_eq!(aws.mtime_ns, Some(1_700_000_000_123_456_789));
        assert_eq!(aws.extra, "color=blue\n");
        let s3fs = parse(&kv(&[
            ("mode", "33188"),
            ("uid", "7"),
            ("mtime", "1700000000"),
        ]));
        assert_eq!(s3fs.mode, Some(0o100_644));
        assert_eq!(s3fs.uid, Some(7));
        assert_eq!(s3fs.mtime_ns, Some(1_700_000_000_000_000_000));
        let rclone = parse(&kv(&[("mtime", "1700000000.5")]));
        assert_eq!(rclone.mtime_ns, Some(1_700_000_000_500_000_000));
        let bare = parse(&[]);
        assert_eq!(bare.perm_or(0o644), 0o644);
        assert_eq!(parse(&kv(&[("mode", "0")])).perm_or(0o644), 0o644);
        assert_eq!(
            parse(&kv(&[("file-permissions", "0120777")])).kind(),
            Some(InodeKind::Symlink)
        );
    }

    #[test]
    fn times_in_each_format() {
        let cases: [(&str, Option<i64>); 8] = [
            ("5ns", Some(5)),
            ("2ms", Some(2_000_000)),
            ("3", Some(3_000_000_000)),
            ("1.25", Some(1_250_000_000)),
            ("1970-01-01T00:00:01Z", Some(1_000_000_000)),
            ("2023-11-14T22:13:20.5Z", Some(1_700_000_000_500_000_000)),
            ("2023-11-15T00:13:20+02:00", Some(1_700_000_000_000_000_000)),
            ("soon", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text), want, "{text}");
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let out = render(
            0o100_600,
            (12, 34),
            (1_700_000_000_000_000_007, 9),
            (0, 0),
            "x=y\n",
        );
        let back = parse(&out);
        assert_eq!(back.mode, Some(0o100_600));
        assert_eq!((back.uid, back.gid), (Some(12), Some(34)));
        assert_eq!(back.mtime_ns, Some(1_700_000_000_000_000_007));
        assert_eq!(back.ctime_ns, Some(9));
        assert_eq!(back.extra, "x=y\n");
        assert_eq!(back.rdev, None, "no rdev for a regular file");
    }

    #[test]
    fn special_files_round_trip_with_their_type_and_device() {
        let cases = [
            (S_IFIFO | 0o644, InodeKind::Fifo, None),
            (S_IFSOCK | 0o755, InodeKind::Socket, None),
            (S_IFBLK | 0o660, InodeKind::BlockDev, Some((8, 1))),
            (S_IFCHR | 0o666, InodeKind::CharDev, Some((4095, 1_048_575))),
            (
                S_IFCHR | 0o600,
                InodeKind::CharDev,
                Some((u32::MAX, u32::MAX)),
            ),
        ];
        for (mode, kind, rdev) in cases {
            let out = render(mode, (0, 0), (1, 1), rdev.unwrap_or((7, 7)), "");
            let back = parse(&out);
            assert_eq!(back.mode, Some(mode), "{mode:o}");
            assert_eq!(back.kind(), Some(kind), "{mode:o}");
            assert_eq!(back.rdev, rdev, "{mode:o}");
            assert_eq!(type_bits(kind) | (mode & 0o7777), mode);
        }
    }

    #[test]
    fn s3fs_devices_are_read() {
        // s3fs on Linux: mknod b 8 1 gives st_mode 0o60644 = 24 996 and st_rdev 0x801 = 2049;
        // major 300, minor 70000 is dev_t 0x1111_2c70 with the split bit fields.
        let m = parse(&kv(&[("mode", "24996"), ("rdev", "2049")]));
        assert_eq!(m.kind(), Some(InodeKind::BlockDev));
        assert_eq!(m.rdev, Some((8, 1)));
        assert_eq!(makedev((300, 70_000)), 0x1111_2c70);
        assert_eq!(major_minor(0x1111_2c70), (300, 70_000));
        assert_eq!(
            parse(&kv(&[("mode", "4516")])).kind(),
            Some(InodeKind::Fifo)
        );
        assert_eq!(parse(&kv(&[("mode", "420")])).kind(), None, "bare 0644");
        assert_eq!(parse(&kv(&[("rdev", "junk")])).rdev, None);
    }
}
