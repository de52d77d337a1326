//! The two clocks of the broker, kept apart so that a wall-clock step (NTP, an operator, a VM
//! resumed from a snapshot) cannot decide a duration.
//!
//! - `monotonic_ms`: milliseconds since a process-wide origin, from `std::time::Instant`. Every
//!   duration and deadline of the replication path (acks=all timeouts, follower lag for the ISR)
//!   is measured with it; the state machines (`ack_tracker`, `isr`) take it as their `now`.
//! - `wall_ms`: milliseconds since the Unix epoch, for what is meant as a date (record
//!   timestamps, retention against them, file names). Never subtract two of them for a timeout.
//!
//! Fault injection: `CHRONIK_FAULT_WALL_CLOCK_STEP_MS=OFFSET@AFTER` makes `wall_ms` jump forward
//! by OFFSET ms once AFTER ms (monotonic) have passed since the clock was first read (at the
//! first partition leadership, about the process start), as a clock step would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, UNIX_EPOCH};

/// `OFFSET@AFTER`: a wall-clock step of OFFSET ms, AFTER ms after the process started.
pub const WALL_CLOCK_STEP_ENV: &str = "CHRONIK_FAULT_WALL_CLOCK_STEP_MS";

/// The origin of `monotonic_ms`, fixed by the first call.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since the process-wide monotonic origin; never moves backwards and never jumps
/// with the wall clock.
pub fn monotonic_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The monotonic time `timeout` from now, saturating.
pub fn monotonic_deadline_ms(timeout: std::time::Duration) -> u64 {
    let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    monotonic_ms().saturating_add(timeout)
}

/// The configured wall-clock step (offset, after), read once.
fn wall_step() -> Option<(u64, u64)> {
    static STEP: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *STEP.get_or_init(|| {
        let value = std::env::var(WALL_CLOCK_STEP_ENV).ok()?;
        let (offset, after) = value.split_once('@').unwrap_or((value.as_str(), "0"));
        Some((offset.trim().parse().ok()?, after.trim().parse().ok()?))
    })
}

/// An extra offset tests add to the wall clock directly.
static TEST_WALL_OFFSET_MS: AtomicU64 = AtomicU64::new(0);

/// Steps the wall clock `wall_ms` reports forward by `ms` (tests only: the process-wide clock of
/// the test binary).
#[cfg(test)]
pub fn step_wall_clock_for_test(ms: u64) {
    TEST_WALL_OFFSET_MS.fetch_add(ms, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, as the (possibly stepped) wall clock says.
pub fn wall_ms() -> u64 {
    let real = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let stepped = match wall_step() {
        Some((offset, after)) if monotonic_ms() >= after => offset,
        _ => 0,
    };
    real.saturating_add(stepped)
        .saturating_add(TEST_WALL_OFFSET_MS.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn a_wall_clock_step_moves_wall_ms_but_not_monotonic_ms() {
        let (mono, wall) = (monotonic_ms(), wall_ms());
        step_wall_clock_for_test(HOUR_MS);
        assert!(wall_ms() >= wall + HOUR_MS);
        assert!(monotonic_ms() < mono + HOUR_MS);
        assert!(monotonic_ms() >= mono);
    }

    /// The leader's deadlines and lag come from `leader::now_ms`/`deadline_ms`: a wall-clock step
    /// of an hour between an acks=all wait and the next housekeeping tick neither times the
    /// waiter out nor makes a follower that acknowledged a moment ago a laggard. (With the
    /// leader on the wall clock both happened: the tick saw the waiter an hour late and the ISR
    /// poll proposed dropping every follower.)
    #[test]
    fn a_wall_clock_step_times_out_no_waiter_and_shrinks_no_isr() {
        use crate::replication::ack_tracker::AckTracker;
        use crate::replication::isr::IsrTracker;
        use crate::replication::leader::{deadline_ms, now_ms};

        let mut acks = AckTracker::new(1, &[1, 2, 3], 2, 0);
        acks.on_ack(1, 10);
        let waiting = acks.wait(10, deadline_ms(std::time::Duration::from_secs(30)), 7u32);
        assert_eq!(waiting, None, "the followers have not acknowledged yet");
        let mut isr = IsrTracker::new(1, &[1, 2, 3], &[1, 2, 3], 30_000, now_ms());
        isr.on_ack(2, 10, 10, now_ms(), Some(1));
        isr.on_ack(3, 10, 10, now_ms(), Some(1));

        step_wall_clock_for_test(HOUR_MS);

        assert_eq!(acks.on_tick(now_ms()), vec![], "no waiter timed out");
        assert_eq!(acks.waiting(), 1);
        assert_eq!(isr.in_sync_count(now_ms()), 3);
        assert_eq!(isr.poll(10, now_ms(), |_| Some(1)), None, "no ISR shrink");
    }
}
