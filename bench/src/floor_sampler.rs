//! The floor, sampled while the load runs: small chunks of raw O_DIRECT
//! 4 KiB write+fdatasync and loopback round trips (with `floor.rs`), spread
//! evenly over the measured window, so the floor sees the same CPU and disk
//! contention as the broker it normalizes. A floor taken before the run
//! measures a different machine whenever the load around it changes (on a
//! shared 2-vCPU VM its p99 moved between 0.2 and 8 ms from run to run).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::floor;
use crate::report::FloorInfo;
use crate::stats::{self, Summary};

/// Time between two chunks.
const PERIOD: Duration = Duration::from_millis(200);

/// A running sampler.
pub struct FloorSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<(Histogram<u64>, Histogram<u64>)>>,
    dir: PathBuf,
}

impl FloorSampler {
    /// Samples about `samples` of each kind between `from` and `until`.
    pub fn start(
        dir: PathBuf,
        samples: usize,
        from: Instant,
        until: Instant,
    ) -> std::io::Result<FloorSampler> {
        let periods =
            (until.saturating_duration_since(from).as_secs_f64() / PERIOD.as_secs_f64()).max(1.0);
        let chunk = ((samples as f64 / periods).ceil() as usize).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let dir = dir.clone();
            std::thread::Builder::new()
                .name("floor".into())
                .spawn(move || {
                    let mut fsync = stats::new_histogram();
                    let mut rtt = stats::new_histogram();
                    let mut next = from;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep((next - now).min(PERIOD));
                            continue;
                        }
                        next += PERIOD;
                        let _ = fsync.add(floor::fdatasync_floor(&dir, chunk)?);
                        let _ = rtt.add(floor::loopback_rtt_floor(chunk)?);
                    }
                    Ok((fsync, rtt))
                })?
        };
        Ok(FloorSampler { stop, thread, dir })
    }

    /// Stops sampling and summarizes; `None` if nothing was sampled.
    pub fn finish(self) -> std::io::Result<Option<FloorInfo>> {
        self.stop.store(true, Ordering::SeqCst);
        let (fsync, rtt) = self
            .thread
            .join()
            .map_err(|_| std::io::Error::other("the floor thread panicked"))??;
        if fsync.is_empty() || rtt.is_empty() {
            return Ok(None);
        }
        let fsync = Summary::of(&fsync);
        let rtt = Summary::of(&rtt);
        Ok(Some(FloorInfo {
            dir: self.dir.display().to_string(),
            fsync_4k: fsync,
            loopback_rtt: rtt,
            floor_p99_us: fsync.p99_us + rtt.p99_us,
        }))
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
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(450));
        let f = s.finish().unwrap().expect("sampled");
        // Two periods of 200 ms, 5 samples each.
        assert!(f.fsync_4k.count >= 5, "{f:?}");
        assert_eq!(f.fsync_4k.count, f.loopback_rtt.count);
        assert!(f.floor_p99_us > 0.0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "scratch files removed"
        );
    }
}
