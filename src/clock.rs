//! The wall clock as the catalog, object metadata and wire formats store it: time since the
//! Unix epoch. The one place that reads `SystemTime::now()` for that.
//!
//! A leaf: it depends on nothing else in tidegate. A clock set before 1970 reads as the epoch
//! and one past the year 2262 (nanoseconds) or 292 billion (seconds) saturates, rather than
//! failing: callers store and compare these values, and none can act on a clock error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the epoch (zero if the clock is set before it).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds since the epoch, as `*_unix` catalog columns hold them.
pub fn unix_secs() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch.
pub fn unix_millis() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the epoch, as file times (`*_ns`) are kept.
pub fn unix_nanos() -> i64 {
    i64::try_from(since_epoch().as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_agree() {
        let (s, ms, ns) = (unix_secs(), unix_millis(), unix_nanos());
        // 2026-01-01 is a lower bound for any clock this runs under.
        assert!(s > 1_767_225_600, "{s}");
        assert!((i64::try_from(ms / 1000).unwrap() - s).abs() <= 1);
        assert!((ns / 1_000_000_000 - s).abs() <= 1);
    }
}
