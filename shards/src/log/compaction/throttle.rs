//! The cleaner's I/O budget: a token bucket of bytes per second shared by the cleaner passes of a
//! shard, so that compaction never takes the disk from produce.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most this much budget accumulates while the cleaner is idle (one second's worth, but at
/// least 1 MiB so that a small budget still lets whole batches through).
const MIN_BURST: f64 = (1 << 20) as f64;

pub struct IoThrottle {
    bytes_per_sec: f64,
    /// Tokens (bytes) available at `at`; negative after a take larger than what was there.
    tokens: Cell<f64>,
    at: Cell<Instant>,
}

impl IoThrottle {
    /// A budget of `bytes_per_sec` (`f64::INFINITY` or 0: unlimited).
    pub fn new(bytes_per_sec: f64) -> Self {
        IoThrottle {
            bytes_per_sec,
            tokens: Cell::new(0.0),
            at: Cell::new(Instant::now()),
        }
    }

    fn unlimited(&self) -> bool {
        !self.bytes_per_sec.is_finite() || self.bytes_per_sec <= 0.0
    }

    fn burst(&self) -> f64 {
        self.bytes_per_sec.max(MIN_BURST)
    }

    /// Accounts for `bytes` of I/O at `now` and says how long to wait before doing more
    /// (pure: time is an input).
    pub fn take_at(&self, bytes: u64, now: Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.at.get()).as_secs_f64();
        let tokens = (self.tokens.get() + elapsed * self.bytes_per_sec).min(self.burst());
        let left = tokens - bytes as f64;
        self.tokens.set(left);
        self.at.set(now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.bytes_per_sec)
        }
    }

    /// Accounts for `bytes` of I/O and sleeps as long as the budget requires.
    pub async fn take(&self, bytes: u64) {
        let wait = self.take_at(bytes, Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        let t = IoThrottle::new(1_000_000.0);
        let start = Instant::now();
        t.at.set(start);
        // Nothing accumulated yet: 1 MB costs one second.
        assert_eq!(t.take_at(1_000_000, start), Duration::from_secs(1));
        // After that second the debt is paid; half a second later half a MB is free.
        let later = start + Duration::from_millis(1500);
        assert_eq!(t.take_at(500_000, later), Duration::ZERO);
    }

    #[test]
    fn idle_time_accumulates_at_most_a_burst() {
        let t = IoThrottle::new(1_000_000.0);
        let start = Instant::now();
        t.at.set(start);
        let much_later = start + Duration::from_secs(3600);
        // Only the burst (1 MiB here) accumulated: 2 MiB waits for the remainder.
        let wait = t.take_at(2 << 20, much_later);
        assert!(wait > Duration::from_millis(1000) && wait < Duration::from_millis(1100));
    }

    #[test]
    fn zero_is_unlimited() {
        let t = IoThrottle::new(0.0);
        assert_eq!(t.take_at(u64::MAX, Instant::now()), Duration::ZERO);
    }
}
