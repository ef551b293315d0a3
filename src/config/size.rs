//! Byte sizes as operators write them: `1048576`, `512MiB`, `2TiB`, `1.5GiB`, `10GB`.
//!
//! Binary units (KiB…PiB, and the bare K/M/G/T/P shorthand that qemu-img and dd use) are powers of
//! 1024; SI units (kB…PB) are powers of 1000. A size that overflows 64 bits is an error, never a
//! wrapped value.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("{0:?} is not a size (e.g. 512MiB, 2TiB, 1048576)")]
    Malformed(String),
    #[error("unknown unit {0:?} (use B, KiB, MiB, GiB, TiB, PiB or kB, MB, GB, TB, PB)")]
    UnknownUnit(String),
    #[error("{0:?} does not fit in 64 bits")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let unit = unit.trim();
        let multiplier: u64 = match unit {
            "" | "B" | "b" => 1,
            "K" | "k" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "P" | "PiB" => 1 << 50,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "PB" => 1_000_000_000_000_000,
            other => return Err(SizeError::UnknownUnit(other.to_owned())),
        };
        let number = number.replace('_', "");
        let malformed = || SizeError::Malformed(s.to_owned());
        let overflow = || SizeError::Overflow(s.to_owned());
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number.as_str(), ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(malformed());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| malformed())?
        };
        let mut total = whole.checked_mul(multiplier).ok_or_else(overflow)?;
        if !frac.is_empty() {
            // Exact decimal fraction of the unit, rounded down to a whole byte.
            let digits = u32::try_from(frac.len()).map_err(|_| malformed())?;
            let scale = 10u128.checked_pow(digits).ok_or_else(malformed)?;
            let frac: u128 = frac.parse().map_err(|_| malformed())?;
            let extra =
                u64::try_from(frac * u128::from(multiplier) / scale).map_err(|_| overflow())?;
            total = total.checked_add(extra).ok_or_else(overflow)?;
        }
        Ok(ByteSize(total))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that shows the value with at most one decimal place.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut unit = 0;
        let mut value = self.0 as f64;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else if self.0.is_multiple_of(1u64 << (10 * unit)) {
            write!(f, "{value:.0} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string().replace(' ', ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("2TiB", 2 << 40),
            ("2 TiB", 2 << 40),
            ("32T", 32 << 40),
            ("1.5GiB", 3 << 29),
            ("10GB", 10_000_000_000),
            ("4k", 4096),
            ("1_000", 1000),
            (".5KiB", 512),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(*want)), "{text}");
        }
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "abc",
            "12XB",
            "-1",
            "1..2G",
            ".",
            "99999999999PiB",
            "GiB",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for v in [0u64, 1, 1023, 1024, 1 << 20, 3 << 29, 5 << 40, 123_456_789] {
            let shown = ByteSize(v).to_string();
            let back: ByteSize = shown.replace(' ', "").parse().unwrap();
            // One decimal place: exact for whole units, within 5% otherwise.
            let diff = back.0.abs_diff(v) as f64;
            assert!(diff <= v as f64 * 0.05, "{v} -> {shown} -> {}", back.0);
        }
        assert_eq!(ByteSize(2 << 40).to_string(), "2 TiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }
}
