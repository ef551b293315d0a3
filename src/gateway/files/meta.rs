//! POSIX attributes ↔ object user metadata, in the dialects already found in buckets
//! (docs/design.md §2): AWS file gateways' `file-permissions` (st_mode in octal, type bits
//! included),
//! `file-owner`, `file-group`, `file-mtime`, `file-ctime` (nanoseconds with an `ns` suffix);
//! s3fs's `mode`, `uid`, `gid`, `mtime` (decimal, seconds); rclone's `mtime` (seconds with a
//! fraction, or RFC 3339). We write the AWS keys plus `mtime` in whole seconds, and keep every
//! key we do not interpret. Pure functions: a missing or unreadable value falls back to the
//! share's default, and a bare object never reads as mode 0000.

/// st_mode type bits (stat(2)).
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFLNK: u32 = 0o120_000;

const KNOWN: [&str; 9] = [
    "file-permissions",
    "file-owner",
    "file-group",
    "file-mtime",
    "file-ctime",
    "mode",
    "uid",
    "gid",
    "mtime",
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
    /// User metadata we keep but do not interpret, as `key=value` lines.
    pub extra: String,
}

impl PosixMeta {
    /// True when the mode's type bits say symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & S_IFMT == S_IFLNK)
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
        extra,
    }
}

/// The metadata we write for an object: AWS's keys, `mtime`, and the kept extras.
pub fn render(
    st_mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
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
        assert!(parse(&kv(&[("file-permissions", "0120777")])).is_symlink());
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
        let out = render(0o100_600, 12, 34, 1_700_000_000_000_000_007, 9, "x=y\n");
        let back = parse(&out);
        assert_eq!(back.mode, Some(0o100_600));
        assert_eq!((back.uid, back.gid), (Some(12), Some(34)));
        assert_eq!(back.mtime_ns, Some(1_700_000_000_000_000_007));
        assert_eq!(back.ctime_ns, Some(9));
        assert_eq!(back.extra, "x=y\n");
    }
}
