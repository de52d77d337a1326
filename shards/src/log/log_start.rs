//! Moving the log start on a follower's behalf: emptying the log to restart it at an offset (Kafka's
//! `truncateFullyAndStartAt`, for a follower whose log ends below its leader's log start), and
//! deleting whole segments below the leader's log start (Kafka followers track the leader's log
//! start offset, so ListOffsets earliest agrees across replicas after a failover).
//!
//! Restarting is crash safe through an intent file, `log-restart` (the offset, checksummed, written to
//! `log-restart.tmp`, synced, renamed, the directory synced). Until the rename is durable the log is as
//! before (recovery removes a stray `.tmp`); from then on, recovery finishes the restart before opening
//! anything: it deletes every segment and index file, creates the empty segment file of the new base
//! offset, saves an empty leader epoch history, and only then removes the intent. Every step is
//! idempotent, so a crash during recovery's own roll-forward is fine too. A crash therefore leaves a
//! log that reopens either as it was or empty at the new offset, never with a gap.

use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use super::epochs::EpochHistory;
use super::index::SegmentIndex;
use super::offload;
use super::segment::{self, ActiveFile, Segment, Storage};
use super::truncate::TRUNCATIONS_KEPT;
use super::{now_ms, LogError, PartitionLog};

const INTENT_FILE: &str = "log-restart";
const INTENT_MAGIC: u32 = 0x4348_5253; // "CHRS"
const INTENT_LEN: usize = 4 + 8 + 4;

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the intent to restart at `offset` durable: from here on the restart happens, even across a
/// crash.
fn write_intent(dir: &Path, offset: i64) -> std::io::Result<()> {
    let mut data = Vec::with_capacity(INTENT_LEN);
    data.extend_from_slice(&INTENT_MAGIC.to_le_bytes());
    data.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{INTENT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(INTENT_FILE))?;
    offload::sync_dir_now(dir)
}

/// The offset of an unfinished restart, if `dir` holds one. A damaged intent cannot come from a crash
/// (it is renamed into place whole), so it is reported as corruption rather than guessed at.
fn read_intent(dir: &Path) -> Result<Option<i64>, LogError> {
    let path = dir.join(INTENT_FILE);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = |reason: &str| LogError::Corruption {
        segment: path.clone(),
        position: 0,
        reason: reason.to_string(),
    };
    if data.len() != INTENT_LEN {
        return Err(damaged("restart intent has the wrong length"));
    }
    let (body, crc) = data.split_at(INTENT_LEN - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(damaged("restart intent fails its checksum"));
    }
    if body[0..4] != INTENT_MAGIC.to_le_bytes() {
        return Err(damaged("restart intent has the wrong magic"));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&body[4..12]);
    let offset = i64::from_le_bytes(offset);
    if offset < 0 {
        return Err(damaged("restart intent names a negative offset"));
    }
    Ok(Some(offset))
}

/// Carries out a restart whose intent is durable: afterwards `dir` holds one empty segment based at
/// `offset`, an empty leader epoch history, and no intent. Idempotent.
fn complete(dir: &Path, offset: i64) -> Result<(), LogError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stem = name
            .strip_suffix(".log")
            .or_else(|| name.strip_suffix(".index"))
            .or_else(|| name.strip_suffix(".timeindex"))
            .or_else(|| name.strip_suffix(".snapshot"));
        if stem.is_some_and(|stem| segment::parse_log_file_name(&format!("{stem}.log")).is_some()) {
            remove_if_present(&entry.path())?;
        }
    }
    std::fs::File::create(dir.join(segment::log_file_name(offset)))?.sync_all()?;
    EpochHistory::default().save(dir)?;
    offload::sync_dir_now(dir)?;
    remove_if_present(&dir.join(INTENT_FILE))?;
    offload::sync_dir_now(dir)?;
    Ok(())
}

/// Recovery's first step: drops a restart intent that never became durable, finishes one that did.
pub(super) fn finish_interrupted_restart(dir: &Path) -> Result<(), LogError> {
    remove_if_present(&dir.join(format!("{INTENT_FILE}.tmp")))?;
    if let Some(offset) = read_intent(dir)? {
        tracing::info!(dir = ?dir, offset, "finishing an interrupted log restart");
        complete(dir, offset)?;
    }
    Ok(())
}

impl PartitionLog {
    /// Empties the log and restarts it at `offset`: every segment deleted, one new empty segment based
    /// at `offset`, log start = log end = `offset`, the leader epoch history cleared. For a follower
    /// whose log ends below its leader's log start. Durable on return; a crash at any point reopens
    /// the log either as before or as after.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: self.log_start_offset(),
                end: self.log_end_offset(),
            });
        }
        self.detached(move |log| async move { log.restart_now(offset).await })
            .await
    }

    async fn restart_now(&self, offset: i64) -> Result<(), LogError> {
        self.check_open()?;
        let _exclusive = self.lock_exclusive().await?;
        self.check_open()?;
        // Appends are refused until the new segment is in place; reads and waits see a new generation.
        self.state.borrow_mut().truncating = true;
        let r = self.restart_locked(offset).await;
        self.state.borrow_mut().truncating = false;
        if let Err(e) = &r {
            tracing::error!(dir = ?self.dir, error = %e, "log restart failed; closing the log");
            self.closed.set(true);
        }
        r
    }

    async fn restart_locked(&self, offset: i64) -> Result<(), LogError> {
        // Nothing buffered survives: drop it and the files' handles first.
        let (old_segments, old_start) = {
            let mut st = self.state.borrow_mut();
            st.pending.clear();
            st.tail.clear();
            (std::mem::take(&mut st.segments), st.log_start)
        };
        for seg in old_segments.into_values() {
            if let Storage::Active(a) = seg.storage {
                drop(a.reader);
                for file in [a.file, a.dsync] {
                    if let Ok(file) = Rc::try_unwrap(file) {
                        // Its contents are about to be deleted: a failed close changes nothing.
                        let _ = file.close().await;
                    }
                }
            }
        }
        // The intent durable, then the restart carried out, step by step, off the reactor.
        let dir = self.dir.clone();
        offload::run(move || {
            write_intent(&dir, offset)?;
            complete(&dir, offset)
        })
        .await?;

        let path = self.dir.join(segment::log_file_name(offset));
        let file = Rc::new(segment::open_dma(&path, false).await?);
        let dsync = Rc::new(segment::open_dsync(&path).await?);
        let reader = Rc::new(segment::open_reader(&path).await?);
        let mut epochs = EpochHistory::default();
        epochs.mark_saved();
        let mut st = self.state.borrow_mut();
        st.segments.insert(
            offset,
            Segment {
                path,
                index: SegmentIndex::new(offset),
                storage: Storage::Active(ActiveFile::new(file, dsync, reader, 0, Vec::new(), 0)),
                created_ms: now_ms(),
            },
        );
        st.log_start = offset;
        st.clean_end = offset;
        st.log_end = offset;
        st.written_end = offset;
        st.synced_end = offset;
        st.last_epoch = -1;
        st.epochs = epochs;
        // The producers' batches went with the segments (as in Kafka); `complete` removed the
        // snapshots.
        st.producers = Default::default();
        st.snapshots_due.clear();
        st.generation += 1;
        // Every offset the log held is gone: waiters on any of them must hear so.
        let generation = st.generation;
        st.truncations
            .push_back((generation, old_start.min(offset)));
        if st.truncations.len() > TRUNCATIONS_KEPT {
            st.truncations.pop_front();
        }
        tracing::info!(dir = ?self.dir, offset, "log emptied and restarted");
        Ok(())
    }

    /// Deletes the segments that lie wholly below `offset` (a follower following its leader's log
    /// start); the active segment is never deleted. Returns how many segments were deleted.
    pub async fn advance_log_start(&self, offset: i64) -> Result<usize, LogError> {
        self.detached(move |log| async move {
            log.check_open()?;
            let _exclusive = log.lock_exclusive().await?;
            log.check_open()?;
            let victims = {
                let st = log.state.borrow();
                let bases: Vec<i64> = st.segments.keys().copied().collect();
                bases
                    .windows(2)
                    .take_while(|w| {
                        w[1] <= offset && st.segments.get(&w[0]).is_some_and(Segment::is_sealed)
                    })
                    .map(|w| w[0])
                    .collect::<Vec<_>>()
            };
            log.delete_oldest_segments(&victims).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! The restart's intermediate states on disk, as a crash can leave them, and what recovery makes
    //! of each: the log as before, or the log restarted.

    use super::*;
    use crate::log::batch::build_test_batch;
    use crate::log::LogConfig;

    fn run<Fut: std::future::Future<Output = ()> + 'static>(
        f: impl FnOnce() -> Fut + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 2000,
            index_interval_bytes: 300,
            ..LogConfig::default()
        }
    }

    /// A closed log of 60 records in epoch 2 over several segments; returns its segment files.
    async fn make_log(dir: &Path) -> Vec<std::path::PathBuf> {
        let log = PartitionLog::open(dir.to_path_buf(), config())
            .await
            .unwrap();
        for i in 0..20 {
            log.append(&build_test_batch(0, 3, i, &[3u8; 300]), 2)
                .unwrap();
        }
        log.close().await.unwrap();
        let mut segments: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        assert!(segments.len() > 2);
        segments
    }

    async fn assert_before(dir: &Path) {
        let log = PartitionLog::open(dir.to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 60));
        assert_eq!(log.end_offset_for_epoch(2), (2, 60));
        assert_eq!(log.read(0, 1 << 20, i64::MAX).await.unwrap().len(), 20);
        log.close().await.unwrap();
    }

    async fn assert_after(dir: &Path, offset: i64) {
        let log = PartitionLog::open(dir.to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (offset, offset)
        );
        assert_eq!(log.end_offset_for_epoch(2), (-1, -1));
        assert_eq!(log.last_leader_epoch(), -1);
        log.close().await.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                segment::log_file_name(offset),
                "leader-epoch-checkpoint".into()
            ]
        );
    }

    #[test]
    fn an_intent_that_never_became_durable_leaves_the_log_as_before() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = tmp.path().join("p-0");
        run(move || async move {
            make_log(&dir).await;
            // Torn: the temporary file half written, never renamed.
            std::fs::write(dir.join(format!("{INTENT_FILE}.tmp")), [1, 2, 3]).unwrap();
            assert_before(&dir).await;
            assert!(!dir.join(format!("{INTENT_FILE}.tmp")).exists());
        });
    }

    #[test]
    fn a_durable_intent_is_finished_from_any_later_state() {
        // Each case: how far the restart got before the crash.
        for case in 0..4 {
            let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
            let dir = tmp.path().join("p-0");
            run(move || async move {
                let segments = make_log(&dir).await;
                write_intent(&dir, 100).unwrap();
                if case >= 1 {
                    // Some old segments (and their indexes) deleted, the oldest and the newest kept.
                    std::fs::remove_file(&segments[1]).unwrap();
                    SegmentIndex::remove_files(&segments[1]).unwrap();
                }
                if case >= 2 {
                    // The new segment created, the old ones all gone.
                    for s in &segments {
                        remove_if_present(s).unwrap();
                        SegmentIndex::remove_files(s).unwrap();
                    }
                    std::fs::File::create(dir.join(segment::log_file_name(100))).unwrap();
                }
                if case >= 3 {
                    // Even the epoch history saved: only the intent is left to remove.
                    EpochHistory::default().save(&dir).unwrap();
                }
                assert_after(&dir, 100).await;
            });
        }
    }

    #[test]
    fn a_restart_at_an_existing_segment_base_replaces_it() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = tmp.path().join("p-0");
        run(move || async move {
            make_log(&dir).await;
            // The oldest segment is based at 0: restarting at 0 must still empty it.
            write_intent(&dir, 0).unwrap();
            assert_after(&dir, 0).await;
        });
    }

    #[test]
    fn a_damaged_intent_is_corruption_not_a_guess() {
        let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let dir = tmp.path().join("p-0");
        run(move || async move {
            make_log(&dir).await;
            write_intent(&dir, 100).unwrap();
            let path = dir.join(INTENT_FILE);
            let mut data = std::fs::read(&path).unwrap();
            data[5] ^= 1;
            std::fs::write(&path, &data).unwrap();
            assert!(matches!(
                PartitionLog::open(dir.clone(), config()).await,
                Err(LogError::Corruption { .. })
            ));
        });
    }
}
