//! The floor, sampled while the load runs: raw O_DIRECT 4 KiB write+fdatasync
//! and loopback round trips (with `floor.rs`), one of each per tick, ticks
//! spread evenly over the measured window, so the floor sees the same CPU and
//! disk contention as the broker it normalizes. A floor taken before the run
//! measures a different machine whenever the load around it changes (on a
//! shared 2-vCPU VM its p99 moved between 0.2 and 8 ms from run to run).
//!
//! The floor is counted the way the load counts its records: a sample that
//! outlasts the tick interval also stands for the ticks it held up
//! (HdrHistogram's coordinated-omission correction), as far as the load's
//! in-flight window reaches: the load keeps sending into a stall until
//! `max_in_flight` requests wait on one connection, and each of them counts
//! the stall. Without that, a 60 ms disk stall is one floor sample in a
//! thousand but every record sent during it, and the floor's p99 misses what
//! the load's p99 sees (bench/RESULTS.md, "Session 5"). The probes keep one
//! scratch file and one connection for the whole window: creating and
//! deleting a 64 MiB file per chunk made the sampler itself a source of
//! discards on a `discard`-mounted disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::floor::{FsyncProbe, RttProbe};
use crate::report::FloorInfo;
use crate::stats::{self, Summary};

/// The shortest tick: a floor sample costs a few hundred µs of disk time.
const MIN_INTERVAL: Duration = Duration::from_millis(2);

/// A running sampler.
pub struct FloorSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<(Sampled, Sampled)>>,
    dir: PathBuf,
    stall_window: Duration,
}

/// One kind of sample, as taken and as the load would count it.
#[derive(Debug)]
struct Sampled {
    raw: Histogram<u64>,
    /// With the ticks a slow sample held up (within the stall window).
    stall_counted: Histogram<u64>,
}

impl Sampled {
    fn new() -> Sampled {
        Sampled {
            raw: stats::new_histogram(),
            stall_counted: stats::new_histogram(),
        }
    }
}

impl FloorSampler {
    /// Samples about `samples` of each kind, evenly spread between `from` and `until`; a slow
    /// sample counts for the ticks it held up within `stall_window` (how long the load keeps
    /// sending into a stall).
    pub fn start(
        dir: PathBuf,
        samples: usize,
        from: Instant,
        until: Instant,
        stall_window: Duration,
    ) -> std::io::Result<FloorSampler> {
        let window = until.saturating_duration_since(from);
        let interval =
            (window / u32::try_from(samples.max(1)).unwrap_or(u32::MAX)).max(MIN_INTERVAL);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let dir = dir.clone();
            std::thread::Builder::new()
                .name("floor".into())
                .spawn(move || {
                    let mut fsync_probe = FsyncProbe::new(&dir)?;
                    let mut rtt_probe = RttProbe::new()?;
                    let ticks = Ticks {
                        from,
                        until,
                        interval,
                        stall_window,
                    };
                    let hists =
                        ticks.sample(&stop, || Ok((fsync_probe.sample()?, rtt_probe.sample()?)))?;
                    rtt_probe.close()?;
                    Ok(hists)
                })?
        };
        Ok(FloorSampler {
            stop,
            thread,
            dir,
            stall_window,
        })
    }

    /// Stops sampling and summarizes; `None` if nothing was sampled.
    pub fn finish(self) -> std::io::Result<Option<FloorInfo>> {
        self.stop.store(true, Ordering::SeqCst);
        let (fsync, rtt) = self
            .thread
            .join()
            .map_err(|_| std::io::Error::other("the floor thread panicked"))??;
        if fsync.raw.is_empty() || rtt.raw.is_empty() {
            return Ok(None);
        }
        let fsync_counted = Summary::of(&fsync.stall_counted);
        let rtt_counted = Summary::of(&rtt.stall_counted);
        Ok(Some(FloorInfo {
            dir: self.dir.display().to_string(),
            fsync_4k: Summary::of(&fsync.raw),
            loopback_rtt: Summary::of(&rtt.raw),
            stall_window_ms: self.stall_window.as_secs_f64() * 1000.0,
            fsync_4k_stall_counted: fsync_counted,
            loopback_rtt_stall_counted: rtt_counted,
            floor_p99_us: fsync_counted.p99_us + rtt_counted.p99_us,
        }))
    }
}

/// The sampling schedule.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    from: Instant,
    until: Instant,
    interval: Duration,
    /// A slow sample stands for the ticks it held up within this time.
    stall_window: Duration,
}

impl Ticks {
    /// Takes one pair of samples (ns) per tick until `until` or `stop`.
    fn sample(
        &self,
        stop: &AtomicBool,
        mut sample: impl FnMut() -> std::io::Result<(u64, u64)>,
    ) -> std::io::Result<(Sampled, Sampled)> {
        let mut first = Sampled::new();
        let mut second = Sampled::new();
        let mut next = self.from;
        while !stop.load(Ordering::SeqCst) && Instant::now() < self.until {
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            let (a, b) = sample()?;
            self.record(&mut first, a);
            self.record(&mut second, b);
            // The ticks a slow sample held up are counted by `record`.
            next = (next + self.interval).max(Instant::now());
        }
        Ok((first, second))
    }

    /// Records `value_ns` as taken, and as counted: with, for every tick it held up within the
    /// stall window, what a sample due at that tick would have waited (the coordinated-omission
    /// correction, capped).
    fn record(&self, sampled: &mut Sampled, value_ns: u64) {
        let _ = sampled.raw.record(value_ns);
        let hist = &mut sampled.stall_counted;
        let _ = hist.record(value_ns);
        let interval = self.interval.as_nanos() as u64;
        let window = (self.stall_window.as_nanos() as u64).min(value_ns);
        let mut held_up = interval;
        while interval > 0 && held_up < window {
            let _ = hist.record(value_ns - held_up);
            held_up += interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_window_and_clean_up() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let now = Instant::now();
        let s = FloorSampler::start(
            dir.path().to_path_buf(),
            10,
            now,
            now + Duration::from_millis(400),
            Duration::from_millis(200),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(450));
        let f = s.finish().unwrap().expect("sampled");
        // A tick every 40 ms; a slow sample counts for the ticks it held up.
        assert!(f.fsync_4k.count >= 5, "{f:?}");
        assert_eq!(f.fsync_4k.count, f.loopback_rtt.count);
        assert!(f.floor_p99_us > 0.0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "scratch files removed"
        );
    }

    #[test]
    fn a_stall_counts_for_every_tick_it_held_up_within_the_window() {
        let now = Instant::now();
        let stop = AtomicBool::new(false);
        let ms = 1_000_000;
        let ticks = |window_ms| Ticks {
            from: now,
            until: now + Duration::from_millis(300),
            interval: Duration::from_millis(10),
            stall_window: Duration::from_millis(window_ms),
        };
        let values = |h: &Histogram<u64>| -> Vec<u64> {
            h.iter_recorded()
                .flat_map(|v| {
                    std::iter::repeat_n(v.value_iterated_to() / ms, v.count_at_value() as usize)
                })
                .collect()
        };

        let mut h = Sampled::new();
        ticks(1000).record(&mut h, 60 * ms);
        assert_eq!(values(&h.stall_counted), [10, 20, 30, 40, 50, 60]);
        assert_eq!(values(&h.raw), [60]);
        let mut h = Sampled::new();
        ticks(50).record(&mut h, 60 * ms);
        assert_eq!(
            values(&h.stall_counted),
            [20, 30, 40, 50, 60],
            "five requests in flight"
        );
        let mut h = Sampled::new();
        ticks(50).record(&mut h, 3 * ms);
        assert_eq!(
            values(&h.stall_counted),
            [3],
            "a fast sample stands for itself"
        );

        let mut n = 0;
        let (fsync, rtt) = ticks(1000)
            .sample(&stop, || {
                n += 1;
                // The second sample stalls for 60 ms: six ticks' worth.
                if n == 2 {
                    std::thread::sleep(Duration::from_millis(60));
                    return Ok((60 * ms, 50_000));
                }
                Ok((ms, 50_000))
            })
            .unwrap();
        let stalled = values(&fsync.stall_counted)
            .into_iter()
            .filter(|&v| v >= 10)
            .count();
        assert_eq!(stalled, 6, "60, 50, 40, 30, 20, 10 ms");
        assert_eq!(fsync.raw.len(), n as u64);
        assert_eq!(
            rtt.stall_counted.len(),
            n as u64,
            "fast samples are not corrected"
        );
        // The schedule resumes after the stall instead of catching up back to back.
        assert!(n <= 300 / 10 + 1 - 5, "{n} ticks");
    }
}
