//! Free space of the data directory, watched so that a filling disk refuses produce before it
//! refuses writes (Redpanda's `storage_min_free_bytes`).
//!
//! A thread checks the filesystem with statvfs every 250 ms (one syscall). Below the threshold
//! produce is answered with KAFKA_STORAGE_ERROR (56): Kafka's code for a log directory that cannot
//! be written, and retriable, so clients keep retrying and resume by themselves once space is
//! freed. Everything that reads or frees space goes on: fetch, metadata, ListOffsets, replication
//! catch-up, DeleteTopics, retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chronik_shards::runtime::Shutdown;

/// The threshold when none is configured: 1 GiB (Redpanda's default)...
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
/// ...but never more than this share of the filesystem (1/20 = 5%), so small disks work.
const DEFAULT_MAX_SHARE_DIVISOR: u64 = 20;
/// How often the free space is checked: a producer writing 100 MB/s overshoots the threshold by
/// at most 25 MB, and a statvfs costs microseconds.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// While produce is refused, the warning is repeated this often (not once per request).
const REMIND_INTERVAL: Duration = Duration::from_secs(60);

/// The broker's watch over its data directory (one per process: one broker per process).
static WATCH: OnceLock<Arc<DiskSpace>> = OnceLock::new();

/// The threshold in force: the configured value, or the default capped at 5% of the filesystem.
pub fn threshold(configured: Option<u64>, filesystem_bytes: u64) -> u64 {
    configured
        .unwrap_or_else(|| DEFAULT_MIN_FREE_BYTES.min(filesystem_bytes / DEFAULT_MAX_SHARE_DIVISOR))
}

/// Space of one filesystem, as `df` reports it (bytes available to unprivileged users).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub available: u64,
    pub total: u64,
}

pub fn space_of(dir: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct we own; `path` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(Space {
        available: (st.f_bavail as u64).saturating_mul(unit),
        total: (st.f_blocks as u64).saturating_mul(unit),
    })
}

/// Whether produce is refused, and why (shared by every shard).
pub struct DiskSpace {
    dir: PathBuf,
    configured: Option<u64>,
    low: AtomicBool,
    available: AtomicU64,
    threshold: AtomicU64,
}

impl DiskSpace {
    fn new(dir: PathBuf, configured: Option<u64>) -> Self {
        DiskSpace {
            dir,
            configured,
            low: AtomicBool::new(false),
            available: AtomicU64::new(u64::MAX),
            threshold: AtomicU64::new(0),
        }
    }

    /// Takes a new measurement; returns whether produce was refused before and is now.
    fn update(&self, space: Space) -> (bool, bool) {
        let threshold = threshold(self.configured, space.total);
        self.threshold.store(threshold, Ordering::Relaxed);
        self.available.store(space.available, Ordering::Relaxed);
        let low = space.available < threshold;
        (self.low.swap(low, Ordering::Relaxed), low)
    }

    /// Why produce is refused now, if it is.
    pub fn refusal(&self) -> Option<String> {
        if !self.low.load(Ordering::Relaxed) {
            return None;
        }
        Some(format!(
            "the broker's data directory has {} bytes free, below storage-min-free-bytes ({})",
            self.available.load(Ordering::Relaxed),
            self.threshold.load(Ordering::Relaxed)
        ))
    }
}

/// Why produce is refused on this broker now (its data directory is short of space), if it is.
pub fn produce_refusal() -> Option<String> {
    WATCH.get().and_then(|w| w.refusal())
}

/// Measures the data directory now and then every 250 ms until shutdown, on a thread of its
/// own. Fails if the directory cannot be measured at all.
pub fn start(dir: &Path, configured: Option<u64>, shutdown: Shutdown) -> std::io::Result<()> {
    let watch = Arc::new(DiskSpace::new(dir.to_path_buf(), configured));
    check(&watch, &mut None)?;
    if WATCH.set(watch.clone()).is_err() {
        return Err(std::io::Error::other(
            "the disk space watch is already running",
        ));
    }
    std::thread::Builder::new()
        .name("chronik-disk-space".into())
        .spawn(move || {
            let mut reminded = None;
            while !shutdown.is_triggered() {
                std::thread::sleep(CHECK_INTERVAL);
                if let Err(e) = check(&watch, &mut reminded) {
                    tracing::debug!(dir = %watch.dir.display(), "statvfs failed: {e}");
                }
            }
        })?;
    Ok(())
}

/// One measurement, with the log lines of a change (and a reminder while low).
fn check(watch: &DiskSpace, reminded: &mut Option<Instant>) -> std::io::Result<()> {
    let space = space_of(&watch.dir)?;
    let (was_low, low) = watch.update(space);
    let threshold = watch.threshold.load(Ordering::Relaxed);
    let remind = reminded.is_none_or(|at| at.elapsed() >= REMIND_INTERVAL);
    if low && (!was_low || remind) {
        tracing::warn!(
            dir = %watch.dir.display(),
            available = space.available,
            storage_min_free_bytes = threshold,
            "disk space low: refusing produce with KAFKA_STORAGE_ERROR until space is freed"
        );
        *reminded = Some(Instant::now());
    } else if was_low && !low {
        tracing::info!(
            dir = %watch.dir.display(),
            available = space.available,
            storage_min_free_bytes = threshold,
            "disk space recovered: accepting produce again"
        );
        *reminded = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_one_gib_or_five_percent_of_a_small_filesystem() {
        assert_eq!(threshold(None, 1 << 40), 1 << 30);
        assert_eq!(threshold(None, 300 << 20), 15 << 20);
        assert_eq!(threshold(Some(7), 1 << 40), 7);
        assert_eq!(threshold(Some(0), 300 << 20), 0);
    }

    #[test]
    fn produce_is_refused_below_the_threshold_and_resumes_above() {
        let watch = DiskSpace::new("/data".into(), Some(100));
        assert!(watch.refusal().is_none());
        assert_eq!(
            watch.update(Space {
                available: 99,
                total: 1000
            }),
            (false, true)
        );
        let why = watch.refusal().unwrap();
        assert!(
            why.contains("99 bytes free") && why.contains("(100)"),
            "{why}"
        );
        assert_eq!(
            watch.update(Space {
                available: 100,
                total: 1000
            }),
            (true, false)
        );
        assert!(watch.refusal().is_none());
        // 0 turns the refusal off.
        let off = DiskSpace::new("/data".into(), Some(0));
        off.update(Space {
            available: 0,
            total: 1000,
        });
        assert!(off.refusal().is_none());
    }

    #[test]
    fn measures_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = space_of(dir.path()).unwrap();
        assert!(space.total > 0 && space.available <= space.total);
    }
}
