//! The control plane's reserve of disk space: a preallocated file in the raft directory, given
//! back when a write of the raft storage fails for want of space, so the metadata can still be
//! written (a broker on a full disk starts, and topics can be deleted to free space), and taken
//! again once the filesystem has room.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size of the reserve: raft entries and hard states are small (a topic's creation is a few KB),
/// so this covers thousands of metadata changes on a full disk.
pub const RESERVE_BYTES: u64 = 8 << 20;
const RESERVE_FILE: &str = "reserve";
/// A released reserve is taken again at most this often (a failing attempt costs one fallocate).
const RETAKE_INTERVAL: Duration = Duration::from_secs(10);

pub struct Reserve {
    path: PathBuf,
    held: bool,
    last_attempt: Option<Instant>,
}

pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl Reserve {
    /// The reserve of `dir`: held if its file already has the full size (from an earlier run).
    pub fn open(dir: &Path) -> Reserve {
        let path = dir.join(RESERVE_FILE);
        let held = std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES);
        Reserve {
            path,
            held,
            last_attempt: None,
        }
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Gives the reserved space back to the filesystem; false if there was none to give.
    pub fn release(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        self.last_attempt = Some(Instant::now());
        match OpenOptions::new().write(true).open(&self.path) {
            Ok(file) => match file.set_len(0).and_then(|()| file.sync_all()) {
                Ok(()) => {
                    tracing::warn!(
                        file = %self.path.display(),
                        bytes = RESERVE_BYTES,
                        "disk full: released the control plane's reserve to write metadata"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), "cannot release the reserve: {e}");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "cannot release the reserve: {e}");
                false
            }
        }
    }

    /// Takes the reserve again if it is not held and the last attempt is old enough (`force`:
    /// whatever the time). A filesystem without room keeps nothing of the attempt.
    pub fn retake(&mut self, force: bool) {
        if self.held {
            return;
        }
        if !force
            && self
                .last_attempt
                .is_some_and(|at| at.elapsed() < RETAKE_INTERVAL)
        {
            return;
        }
        self.last_attempt = Some(Instant::now());
        match allocate(&self.path) {
            Ok(()) => {
                if force {
                    tracing::debug!(file = %self.path.display(), "control plane reserve in place");
                } else {
                    tracing::info!(file = %self.path.display(), "control plane reserve taken again");
                }
                self.held = true;
            }
            Err(e) => {
                tracing::debug!(file = %self.path.display(), "cannot take the reserve: {e}");
                if let Ok(file) = OpenOptions::new().write(true).open(&self.path) {
                    let _ = file.set_len(0);
                }
            }
        }
    }
}

/// Preallocates the reserve file to its full size (real blocks, not a sparse file) and syncs it.
fn allocate(path: &Path) -> io::Result<()> {
    let file: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, RESERVE_BYTES as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_released_and_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut reserve = Reserve::open(dir.path());
        assert!(!reserve.is_held());
        reserve.retake(true);
        assert!(reserve.is_held());
        let path = dir.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RESERVE_BYTES);
        // A reopened storage finds it in place.
        assert!(Reserve::open(dir.path()).is_held());
        assert!(reserve.release());
        assert!(!reserve.release());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // Not retried before its interval unless forced.
        reserve.retake(false);
        assert!(!reserve.is_held());
        reserve.retake(true);
        assert!(reserve.is_held());
    }
}
