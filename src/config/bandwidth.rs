//! Weekly bandwidth schedules: windows in which other upload/download limits apply.
//!
//! As written in TOML:
//! ```toml
//! [bandwidth]
//! utc_offset = "+01:00"          # the schedule's clock; default UTC
//! [[bandwidth.schedule]]
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! start = "08:00"
//! end = "18:00"                  # exclusive; "24:00" is the end of the day
//! upload = "10MiB"               # bytes per second; left out = unlimited in the window
//! download = "50MiB"
//! ```
//! The first window that contains the moment wins; outside every window the defaults apply
//! (the bucket's limits, or those set through the API). Windows do not cross midnight: split one
//! that should.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::config::size::ByteSize;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<WindowSection>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSection {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<ByteSize>,
}

/// A validated schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Seconds east of UTC.
    pub utc_offset: i64,
    pub windows: Vec<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` set for day `d`, Monday = 0.
    pub days: u8,
    /// Minutes since midnight, `start < end <= 1440`.
    pub start: u32,
    pub end: u32,
    pub upload: Option<u64>,
    pub download: Option<u64>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(key: &str, v: &str) -> Result<u32, ConfigError> {
    let bad = || ConfigError::new(key, format!("{v:?} is not a time (HH:MM, 00:00 to 24:00)"));
    let (h, m) = v.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn offset(v: &str) -> Result<i64, ConfigError> {
    let key = "bandwidth.utc_offset";
    let bad = || ConfigError::new(key, format!("{v:?} is not an offset like +01:00 or -05:30"));
    let (sign, rest) = match v.as_bytes().first() {
        Some(b'+') => (1, &v[1..]),
        Some(b'-') => (-1, &v[1..]),
        _ => return Err(bad()),
    };
    let m = i64::from(minutes(key, rest).map_err(|_| bad())?);
    if m > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * m * 60)
}

impl Schedule {
    pub fn from_section(s: BandwidthSection) -> Result<Self, ConfigError> {
        let utc_offset = s
            .utc_offset
            .as_deref()
            .map(offset)
            .transpose()?
            .unwrap_or(0);
        let mut windows = Vec::new();
        for w in s.schedule {
            let key = "bandwidth.schedule";
            let mut days = 0u8;
            for d in &w.days {
                let i = DAYS
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(d))
                    .ok_or_else(|| {
                        ConfigError::new(
                            key,
                            format!("day {d:?}: use mon, tue, wed, thu, fri, sat, sun"),
                        )
                    })?;
                days |= 1 << i;
            }
            if days == 0 {
                return Err(ConfigError::new(key, "a window needs at least one day"));
            }
            let (start, end) = (minutes(key, &w.start)?, minutes(key, &w.end)?);
            if start >= end {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{}–{} is empty or crosses midnight: split it in two",
                        w.start, w.end
                    ),
                ));
            }
            let rate = |v: Option<ByteSize>| match v {
                Some(ByteSize(0)) => Err(ConfigError::new(
                    key,
                    "0 would stop all traffic; leave the key out for no limit",
                )),
                other => Ok(other.map(ByteSize::bytes)),
            };
            windows.push(Window {
                days,
                start,
                end,
                upload: rate(w.upload)?,
                download: rate(w.download)?,
            });
        }
        Ok(Self {
            utc_offset,
            windows,
        })
    }

    /// The window in force at `unix` (seconds since the epoch), if any.
    pub fn active(&self, unix: i64) -> Option<(usize, &Window)> {
        let local = unix + self.utc_offset;
        let day = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday (Monday = 0 → 3).
        let weekday = (day + 3).rem_euclid(7) as u32;
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        self.windows
            .iter()
            .enumerate()
            .find(|(_, w)| w.days & (1 << weekday) != 0 && (w.start..w.end).contains(&minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], start: &str, end: &str, upload: Option<u64>) -> WindowSection {
        WindowSection {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            start: start.into(),
            end: end.into(),
            upload: upload.map(ByteSize),
            download: None,
        }
    }

    #[test]
    fn windows_by_weekday_and_time() {
        let s = Schedule::from_section(BandwidthSection {
            utc_offset: Some("+01:00".into()),
            schedule: vec![
                window(
                    &["mon", "tue", "wed", "thu", "fri"],
                    "08:00",
                    "18:00",
                    Some(10),
                ),
                window(&["sat"], "00:00", "24:00", Some(99)),
            ],
        })
        .unwrap();
        // 2026-11-23 is a Monday. 12:00 UTC is 13:00 at +01:00: in the working-day window.
        let monday_noon = 1_795_435_200;
        assert_eq!(s.active(monday_noon).map(|(i, _)| i), Some(0));
        // 07:30 UTC = 08:30 local: inside; 06:59 UTC = 07:59 local: outside.
        assert_eq!(
            s.active(monday_noon - 4 * 3600 - 1800).map(|(i, _)| i),
            Some(0)
        );
        assert!(s.active(monday_noon - 5 * 3600 - 60).is_none());
        // 17:00 UTC = 18:00 local: the end is exclusive.
        assert!(s.active(monday_noon + 5 * 3600).is_none());
        // Saturday all day; Sunday nothing.
        assert_eq!(s.active(monday_noon + 5 * 86_400).map(|(i, _)| i), Some(1));
        assert!(s.active(monday_noon + 6 * 86_400).is_none());
    }

    #[test]
    fn bad_schedules_are_refused() {
        for (w, off) in [
            (window(&["funday"], "08:00", "09:00", None), None),
            (window(&[], "08:00", "09:00", None), None),
            (window(&["mon"], "18:00", "08:00", None), None),
            (window(&["mon"], "8", "09:00", None), None),
            (window(&["mon"], "08:00", "24:30", None), None),
            (window(&["mon"], "08:00", "09:00", Some(0)), None),
            (window(&["mon"], "08:00", "09:00", None), Some("01:00")),
        ] {
            let r = Schedule::from_section(BandwidthSection {
                utc_offset: off.map(str::to_owned),
                schedule: vec![w],
            });
            assert!(r.is_err());
        }
    }
}
