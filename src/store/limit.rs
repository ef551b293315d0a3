//! Bandwidth limits for bucket traffic: a token bucket per direction.
//!
//! Owns pacing only; it never fails or drops a transfer, it only delays it. A transfer larger
//! than the burst is let through by going into debt, and the debt delays whatever comes next, so
//! the long-run rate holds for any mix of object sizes. The arithmetic (`Bucket::take`) is a pure
//! function of time so it is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate limit shared by all transfers in one direction; `None` is unlimited. The rate can be
/// changed while transfers run (bandwidth schedules, the API): the next transfer sees it.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<Option<TokenBucket>>,
}

impl RateLimiter {
    /// `rate` bytes per second, with one second's worth of burst.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            state: Mutex::new(rate.map(|r| TokenBucket::new(r, r, Instant::now()))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Option<TokenBucket>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate in bytes per second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.state().as_ref().map(|b| b.rate as u64)
    }

    /// Changes the rate; a debt already owed is forgiven, so a lowered limit applies at once
    /// and a raised one is not held back by the old one.
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut state = self.state();
        if state.as_ref().map(|b| b.rate as u64) != rate {
            *state = rate.map(|r| TokenBucket::new(r, r, Instant::now()));
        }
    }

    /// Waits until `bytes` may be transferred at the current rate.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self
            .state()
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes, Instant::now()));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go negative: a debt that later transfers wait out.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = burst.max(1) as f64;
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Charges `bytes` at time `now`; returns how long the caller must wait before sending.
    fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_holds_for_any_sizes() {
        let t0 = Instant::now();
        // 1 MB/s; send 10 MB in mixed sizes back to back, sleeping exactly as told.
        let mut b = TokenBucket::new(1_000_000, 1_000_000, t0);
        let mut now = t0;
        let sizes = [4096u64, 3_000_000, 1, 500_000, 2_495_903, 4_000_000];
        for size in sizes {
            now += b.take(size, now);
        }
        let total: u64 = sizes.iter().sum();
        let secs = now.duration_since(t0).as_secs_f64();
        // The first second's burst is free; everything after runs at the rate.
        let expected = (total - 1_000_000) as f64 / 1_000_000.0;
        assert!((secs - expected).abs() < 1e-6, "{secs} vs {expected}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        assert_eq!(b.take(100, t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(100, later), Duration::ZERO);
        assert_eq!(b.take(50, later), Duration::from_millis(500));
    }

    /// Whether `acquire` would wait (a future that is ready at once did not sleep).
    fn waits(l: &RateLimiter, bytes: u64) -> bool {
        use futures::FutureExt;
        l.acquire(bytes).now_or_never().is_none()
    }

    #[tokio::test]
    async fn rates_change_live_and_none_is_unlimited() {
        let l = RateLimiter::new(None);
        assert_eq!(l.rate(), None);
        assert!(!waits(&l, 1 << 30), "unlimited never waits");
        l.set_rate(Some(1 << 20));
        assert_eq!(l.rate(), Some(1 << 20));
        assert!(!waits(&l, 1 << 20), "a full burst is free");
        assert!(waits(&l, 1 << 19), "beyond the burst it waits");
        l.set_rate(None);
        assert!(!waits(&l, 1 << 30), "lifted: no wait, no debt carried over");
    }
}
