//! Blocking file work off the shard's reactor. Directory fsyncs, small files written and synced
//! (index files, the leader epoch checkpoint, producer snapshots), unlinks and directory removal have
//! no io_uring path here and can take milliseconds (a directory fsync waits for a journal commit):
//! on the reactor thread they would stall every partition of the shard. They run on the
//! executor's blocking thread instead (glommio's `spawn_blocking`), and the calling task awaits
//! them, so the order the log's crash-safety rests on (a deletion synced before the next one, a
//! segment sealed before the next is created) is kept exactly: each step still completes before
//! the caller takes the next one. Only the reactor is free meanwhile.
//!
//! The closures own what they touch (paths and bytes moved in, never an `Rc`), because they run
//! on another thread. A caller that drops the future does not stop the work; the log runs
//! file-changing work in detached tasks anyway (`PartitionLog::detached`).

use std::io;
use std::path::{Path, PathBuf};

use super::index::SegmentIndex;

/// Runs `work` on the executor's blocking thread and waits for it.
pub(super) async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    glommio::executor().spawn_blocking(work).await
}

/// fsyncs a directory, making the creations, renames and unlinks in it durable.
pub(super) fn sync_dir_now(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// [`sync_dir_now`] off the reactor.
pub(super) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    run(move || sync_dir_now(&dir)).await
}

/// Removes a segment file and its index files, then syncs the directory: the deletion is durable
/// on return, before the caller deletes the next segment. `missing_ok`: a segment file that is not
/// there counts as removed (truncation, which may repeat a deletion a crash interrupted).
pub(super) async fn delete_segment(
    dir: &Path,
    log_path: &Path,
    missing_ok: bool,
) -> io::Result<()> {
    let (dir, log_path): (PathBuf, PathBuf) = (dir.to_path_buf(), log_path.to_path_buf());
    run(move || {
        match std::fs::remove_file(&log_path) {
            Ok(()) => {}
            Err(e) if missing_ok && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        SegmentIndex::remove_files(&log_path)?;
        sync_dir_now(&dir)
    })
    .await
}

/// Removes a directory and everything in it (a deleted partition); a missing one is fine.
pub(super) async fn remove_dir_all(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    run(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
    .await
}
