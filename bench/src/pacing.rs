//! The open-loop schedule: when each batch is due and which partition it
//! goes to, independent of how fast the broker answers. A late send is
//! never skipped; its lateness is what publish delay measures.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats;

/// Batch `k` is due at `start + k * interval` and goes to partition
/// `k % partitions`, so every partition gets the same rate.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    interval_ns: f64,
    pub partitions: i32,
    pub end: Instant,
}

impl Schedule {
    /// `rate` records per second in batches of `batch_records`, for `length`.
    pub fn new(
        start: Instant,
        rate: f64,
        batch_records: u32,
        partitions: i32,
        length: Duration,
    ) -> Schedule {
        let batches_per_s = rate / f64::from(batch_records.max(1));
        Schedule {
            start,
            interval_ns: 1e9 / batches_per_s.max(1e-9),
            partitions: partitions.max(1),
            end: start + length,
        }
    }

    /// The intended send time of batch `k`.
    pub fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// The partition of batch `k`.
    pub fn partition(&self, k: u64) -> i32 {
        (k % self.partitions as u64) as i32
    }

    /// How many batches are due before `end`.
    pub fn total_batches(&self) -> u64 {
        let span = self.end.saturating_duration_since(self.start).as_nanos() as f64;
        (span / self.interval_ns).ceil() as u64
    }
}

/// Runs the schedule on the calling thread: sleeps until each batch is due
/// and hands it to `dispatch(k, partition, intended)`. Stops early when
/// `stop()` says so. Returns the batches issued and how late the pacer woke
/// (harness overhead, not broker latency).
pub fn run(
    schedule: &Schedule,
    mut stop: impl FnMut() -> bool,
    mut dispatch: impl FnMut(u64, i32, Instant),
) -> (u64, Histogram<u64>) {
    let mut lateness = stats::new_histogram();
    let total = schedule.total_batches();
    let mut k = 0;
    while k < total {
        if stop() {
            break;
        }
        let due = schedule.due(k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Everything due by now goes out back to back: open loop never
        // waits for the broker and never skips a batch.
        let now = Instant::now();
        while k < total && schedule.due(k) <= now {
            let intended = schedule.due(k);
            stats::record(&mut lateness, now.saturating_duration_since(intended), 1);
            dispatch(k, schedule.partition(k), intended);
            k += 1;
        }
    }
    (k, lateness)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_evenly_spaced_and_round_robin() {
        let start = Instant::now();
        // 1000 records/s in batches of 10: one batch every 10 ms.
        let s = Schedule::new(start, 1000.0, 10, 3, Duration::from_secs(1));
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(1) - start, Duration::from_millis(10));
        assert_eq!(s.due(100) - start, Duration::from_secs(1));
        assert_eq!(s.total_batches(), 100);
        assert_eq!(
            (0..6).map(|k| s.partition(k)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2]
        );
    }

    #[test]
    fn the_pacer_issues_every_batch_in_order_with_its_intended_time() {
        let start = Instant::now();
        let s = Schedule::new(start, 2000.0, 1, 2, Duration::from_millis(50));
        let mut seen = Vec::new();
        let (issued, lateness) = run(&s, || false, |k, p, t| seen.push((k, p, t)));
        assert_eq!(issued, 100);
        assert_eq!(lateness.len(), 100);
        for (i, (k, p, t)) in seen.iter().enumerate() {
            assert_eq!(*k, i as u64);
            assert_eq!(*p, (i % 2) as i32);
            assert_eq!(*t, s.due(*k));
        }
    }

    #[test]
    fn a_blocked_dispatch_does_not_skip_batches() {
        // The first dispatch blocks for a while (like a stalled socket):
        // the batches that fell due meanwhile are all still issued, late.
        let s = Schedule::new(Instant::now(), 1000.0, 1, 1, Duration::from_millis(40));
        let mut count = 0;
        let (issued, lateness) = run(
            &s,
            || false,
            |k, _, _| {
                count += 1;
                if k == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            },
        );
        assert_eq!(issued, 40);
        assert_eq!(count, 40);
        assert!(
            lateness.max() >= 10_000_000,
            "the batches behind the stall were late"
        );
    }

    #[test]
    fn stop_ends_the_schedule_early() {
        let s = Schedule::new(Instant::now(), 1000.0, 1, 1, Duration::from_secs(60));
        let n = std::cell::Cell::new(0);
        let (issued, _) = run(&s, || n.get() >= 5, |_, _, _| n.set(n.get() + 1));
        assert_eq!(issued, 5);
    }
}
