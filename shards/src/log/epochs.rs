//! Leader epoch history: the first offset written in each leader epoch, for OffsetForLeaderEpoch (a
//! follower of a new leader asks where its last epoch ended and truncates the rest).
//!
//! Kept in memory, and in `leader-epoch-checkpoint` (checksummed, replaced atomically) whenever a
//! segment is sealed, the log is truncated or trimmed by retention, and on close. On open, entries at or
//! past the newest segment's base are rebuilt from its recovery scan, so the file only has to be right
//! for sealed segments; a missing or damaged file is rebuilt from the segments' batch headers. The
//! file names only epochs whose first batch is durable (and the epoch in force at an emptied log), so
//! an epoch whose batches a crash took is not remembered (Kafka truncates its epoch cache to the log
//! end on recovery for the same reason).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::offload;
use super::{LogError, PartitionLog};

const FILE_NAME: &str = "leader-epoch-checkpoint";
const MAGIC: u32 = 0x4348_4550; // "CHEP"
const ENTRY_LEN: usize = 12;

/// Epochs below zero (no leader epoch, -1) are not recorded, like Kafka.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
    /// Changed since it was last saved.
    dirty: bool,
}

impl EpochHistory {
    pub fn from_entries(entries: Vec<(i32, i64)>) -> Self {
        EpochHistory {
            entries,
            dirty: true,
        }
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// Records that the file already holds exactly this history.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// A batch of `epoch` starting at `base_offset` was appended.
    pub fn note(&mut self, epoch: i32, base_offset: i64) {
        if epoch < 0 || self.entries.last().is_some_and(|&(e, _)| e >= epoch) {
            return;
        }
        // An epoch starting where the latest one starts supersedes it: that one holds no batch (it
        // was kept at a log start moved to the log end). Kafka's epoch cache drops it the same way,
        // and recovery, which rebuilds the newest segment's epochs from its batches, would too.
        if self
            .entries
            .last()
            .is_some_and(|&(_, start)| start >= base_offset)
        {
            self.entries.pop();
        }
        self.entries.push((epoch, base_offset));
        self.dirty = true;
    }

    /// Forgets epochs that start at or after `end` (truncation).
    pub fn truncate(&mut self, end: i64) {
        let keep = self.entries.partition_point(|&(_, start)| start < end);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.dirty = true;
        }
    }

    /// Drops epochs that ended before `log_start`; the one in force at `log_start` starts there.
    pub fn trim_start(&mut self, log_start: i64) {
        let in_force = self
            .entries
            .partition_point(|&(_, start)| start <= log_start);
        if in_force > 1 {
            self.entries.drain(..in_force - 1);
            self.dirty = true;
        }
        if let Some(first) = self.entries.first_mut() {
            if first.1 < log_start {
                first.1 = log_start;
                self.dirty = true;
            }
        }
    }

    /// Kafka's OffsetForLeaderEpoch answer: the largest known epoch <= `epoch` and the offset where it
    /// ended (the next epoch's start, or the log end for the latest); (-1, -1) when undefined.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (-1, -1);
        if epoch < 0 {
            return UNDEFINED;
        }
        match self.entries.last() {
            None => UNDEFINED,
            Some(&(latest, _)) if latest == epoch => (epoch, log_end),
            Some(_) => {
                let higher = self.entries.partition_point(|&(e, _)| e <= epoch);
                match self.entries.get(higher) {
                    None => UNDEFINED,
                    Some(&(_, next_start)) if higher == 0 => (epoch, next_start),
                    Some(&(_, next_start)) => (self.entries[higher - 1].0, next_start),
                }
            }
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Replaces the checkpoint file atomically (write, sync, rename, sync the directory). Blocking:
    /// on a running log, `PartitionLog::save_epochs` does it off the reactor.
    pub fn save(&mut self, dir: &Path) -> io::Result<()> {
        self.save_where(dir, |_| true)
    }

    /// `save` with only the entries whose start offset `keep` accepts. The history stays dirty if any
    /// was left out, so a later save writes it once it may.
    pub fn save_where(&mut self, dir: &Path, keep: impl Fn(i64) -> bool) -> io::Result<()> {
        let save = self.prepare_where(keep);
        write_checkpoint(dir, &save.data)?;
        self.saved(&save);
        Ok(())
    }

    /// The checkpoint's bytes with only the entries whose start offset `keep` accepts, to be written
    /// by [`write_checkpoint`] (off the reactor) and then reported with [`saved`](Self::saved).
    pub fn prepare_where(&self, keep: impl Fn(i64) -> bool) -> PreparedSave {
        let kept: Vec<(i32, i64)> = self
            .entries
            .iter()
            .copied()
            .filter(|&(_, start)| keep(start))
            .collect();
        let mut data = Vec::with_capacity(8 + kept.len() * ENTRY_LEN + 4);
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&(kept.len() as u32).to_le_bytes());
        for &(epoch, start) in &kept {
            data.extend_from_slice(&epoch.to_le_bytes());
            data.extend_from_slice(&start.to_le_bytes());
        }
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_le_bytes());
        PreparedSave {
            data,
            complete: kept.len() == self.entries.len(),
            from: self.entries.clone(),
        }
    }

    /// [`save`](Self::save) off the reactor (for a history no append can change meanwhile).
    pub async fn save_off_reactor(&mut self, dir: &Path) -> io::Result<()> {
        let save = self.prepare_where(|_| true);
        save.write_off_reactor(dir)
            .await
            .map(|save| self.saved(&save))
    }

    /// A prepared save is on disk. The history is clean only if the file holds all of it: nothing
    /// was left out, and nothing changed while the file was written (an append may note an epoch
    /// meanwhile; then a later save writes it).
    pub fn saved(&mut self, save: &PreparedSave) {
        self.dirty = !(save.complete && save.from == self.entries);
    }

    /// The saved history; None if the file is missing or damaged.
    pub fn load(dir: &Path) -> Option<Vec<(i32, i64)>> {
        let data = std::fs::read(Self::path(dir)).ok()?;
        if data.len() < 12 {
            return None;
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return None;
        }
        if u32::from_le_bytes(body[0..4].try_into().ok()?) != MAGIC {
            return None;
        }
        let count = u32::from_le_bytes(body[4..8].try_into().ok()?) as usize;
        if body.len() != 8 + count.checked_mul(ENTRY_LEN)? {
            return None;
        }
        let mut entries: Vec<(i32, i64)> = Vec::with_capacity(count);
        for chunk in body[8..].chunks_exact(ENTRY_LEN) {
            let epoch = i32::from_le_bytes(chunk[0..4].try_into().ok()?);
            let start = i64::from_le_bytes(chunk[4..12].try_into().ok()?);
            if entries
                .last()
                .is_some_and(|&(e, s)| e >= epoch || s >= start)
            {
                return None;
            }
            entries.push((epoch, start));
        }
        Some(entries)
    }
}

/// A checkpoint ready to be written (see `EpochHistory::prepare_where`).
pub struct PreparedSave {
    data: Vec<u8>,
    /// Every entry is in `data`.
    complete: bool,
    /// The history it was prepared from.
    from: Vec<(i32, i64)>,
}

impl PreparedSave {
    /// Writes the checkpoint off the reactor; returns what `EpochHistory::saved` needs.
    async fn write_off_reactor(mut self, dir: &Path) -> io::Result<PreparedSave> {
        let (dir, data) = (dir.to_path_buf(), std::mem::take(&mut self.data));
        offload::run(move || write_checkpoint(&dir, &data)).await?;
        Ok(self)
    }
}

/// Replaces the checkpoint file in `dir` with `data` atomically: a temporary file written and
/// synced, renamed over the old one, the directory synced. Blocking.
fn write_checkpoint(dir: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, EpochHistory::path(dir))?;
    offload::sync_dir_now(dir)
}

impl PartitionLog {
    /// Saves the leader epoch checkpoint if it changed, with the entries of epochs that start below
    /// `durable_below` (every batch below it is durable). A later entry would name an epoch whose
    /// batches may not survive a crash; recovery rebuilds those from the newest segment's batches, and
    /// a later save writes them once they are durable. The one exception is an epoch that starts at the
    /// log end, which only the epoch in force at an emptied log does (its start moved to its end): no
    /// batch holds it, so only the file can.
    ///
    /// The file is written off the reactor; the caller holds the file lock, so saves never overlap
    /// (they share the temporary file), and it is on disk when this returns.
    pub(super) async fn save_epochs(&self, durable_below: i64) -> Result<(), LogError> {
        let save = {
            let st = self.state.borrow();
            if !st.epochs.is_dirty() {
                return Ok(());
            }
            let log_end = st.log_end;
            st.epochs
                .prepare_where(|start| start < durable_below || start == log_end)
        };
        let save = save.write_off_reactor(&self.dir).await?;
        self.state.borrow_mut().epochs.saved(&save);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> EpochHistory {
        let mut h = EpochHistory::default();
        for (epoch, start) in [(-1, 0), (1, 0), (1, 5), (3, 10), (4, 20)] {
            h.note(epoch, start);
        }
        h
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let h = history();
        assert_eq!(h.entries(), &[(1, 0), (3, 10), (4, 20)]);
        assert_eq!(h.end_offset_for(4, 30), (4, 30));
        assert_eq!(h.end_offset_for(3, 30), (3, 20));
        assert_eq!(h.end_offset_for(2, 30), (1, 10));
        assert_eq!(h.end_offset_for(0, 30), (0, 0));
        assert_eq!(h.end_offset_for(5, 30), (-1, -1));
        assert_eq!(h.end_offset_for(-1, 30), (-1, -1));
        assert_eq!(EpochHistory::default().end_offset_for(1, 0), (-1, -1));
    }

    /// Entries left out of a save (epochs whose batches are not durable yet) keep the history dirty,
    /// so the next save writes them.
    #[test]
    fn a_partial_save_stays_dirty_until_a_full_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = history();
        h.save_where(dir.path(), |start| start < 20).unwrap();
        assert_eq!(EpochHistory::load(dir.path()), Some(vec![(1, 0), (3, 10)]));
        assert!(h.is_dirty());
        h.save(dir.path()).unwrap();
        assert_eq!(
            EpochHistory::load(dir.path()),
            Some(vec![(1, 0), (3, 10), (4, 20)])
        );
        assert!(!h.is_dirty());
    }

    /// A log whose start moved to its end keeps the epoch in force there; the next epoch, starting at
    /// that same offset, replaces it (as after a reopen, which rebuilds it from the batches).
    #[test]
    fn an_epoch_starting_where_the_latest_starts_replaces_it() {
        let mut h = history();
        h.trim_start(25);
        assert_eq!(h.entries(), &[(4, 25)]);
        assert_eq!(h.end_offset_for(4, 25), (4, 25));
        h.note(6, 25);
        assert_eq!(h.entries(), &[(6, 25)]);
        h.note(7, 30);
        assert_eq!(h.entries(), &[(6, 25), (7, 30)]);
    }

    #[test]
    fn truncate_and_trim() {
        let mut h = history();
        h.truncate(20);
        assert_eq!(h.entries(), &[(1, 0), (3, 10)]);
        h.trim_start(12);
        assert_eq!(h.entries(), &[(3, 12)]);
        h.truncate(12);
        assert!(h.entries().is_empty());
    }

    #[test]
    fn file_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut h = history();
        h.save(dir.path()).unwrap();
        assert!(!h.is_dirty());
        assert_eq!(EpochHistory::load(dir.path()).unwrap(), h.entries());
        let p = dir.path().join(FILE_NAME);
        let mut data = std::fs::read(&p).unwrap();
        data[9] ^= 1;
        std::fs::write(&p, &data).unwrap();
        assert!(EpochHistory::load(dir.path()).is_none());
    }

    /// The checkpoint is written off the reactor, so an append may note a new epoch while it is
    /// being written: the history must stay dirty then (the file lacks that epoch), and the next
    /// save writes it. A save that left entries out stays dirty too.
    #[test]
    fn an_epoch_noted_while_the_checkpoint_is_written_is_saved_by_the_next_save() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut h = history();
        let save = h.prepare_where(|_| true);
        h.note(5, 30);
        write_checkpoint(dir.path(), &save.data).unwrap();
        h.saved(&save);
        assert!(h.is_dirty(), "the file lacks epoch 5");
        assert_eq!(
            EpochHistory::load(dir.path()).unwrap(),
            &[(1, 0), (3, 10), (4, 20)]
        );
        h.save(dir.path()).unwrap();
        assert!(!h.is_dirty());
        assert_eq!(EpochHistory::load(dir.path()).unwrap(), h.entries());

        let partial = h.prepare_where(|start| start < 20);
        write_checkpoint(dir.path(), &partial.data).unwrap();
        h.saved(&partial);
        assert!(h.is_dirty(), "epochs 4 and 5 were left out");
        assert_eq!(EpochHistory::load(dir.path()).unwrap(), &[(1, 0), (3, 10)]);
    }
}
