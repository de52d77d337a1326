//! Durable Raft storage for the metadata group, under `<data_dir>/meta/`:
//!
//! - `raft.log`: append-only entry records, each `[len u32][crc32c u32][payload]`. A conflicting
//!   append (a new leader overwrote our uncommitted tail) truncates the file at the first
//!   replaced entry before writing. On open, a torn or corrupt tail record ends the log there and
//!   is cut off (it was never acknowledged: we fsync before reporting entries persisted).
//! - `state`: HardState and ConfState, rewritten atomically (write tmp, fsync, rename, fsync dir).
//! - `snapshot`: the latest snapshot (metadata + the encoded metadata image), also atomic. Entries
//!   up to its index are dropped from `raft.log` (compaction rewrites the file atomically).
//!
//! Every mutation is durable when the method returns: the node reports entries persisted to
//! raft-rs, and sends messages, only after that. A mutation that fails changes nothing in memory
//! (and cuts back what it wrote), so the node can retry it.
//!
//! - `reserve`: preallocated space (see `reserve`), given back when a write fails for want of
//!   space, so a full disk does not stop the control plane or keep a broker from starting.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

mod reserve;

pub use reserve::is_out_of_space;
use reserve::Reserve;

const LOG_FILE: &str = "raft.log";
const STATE_FILE: &str = "state";
const SNAPSHOT_FILE: &str = "snapshot";
const LOCK_FILE: &str = "lock";
/// A record larger than this is treated as corruption (metadata entries are small).
const MAX_RECORD: usize = 64 << 20;
const RECORD_HEADER: usize = 8;

/// Durable `raft::Storage`. Owned by the RawNode on the control thread; mutated through
/// `RawNode::mut_store`.
pub struct DiskStorage {
    dir: PathBuf,
    log: File,
    /// Length of `raft.log` covering exactly `entries`.
    log_len: u64,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    /// File offset of each entry's record, parallel to `entries`.
    offsets: Vec<u64>,
    /// Holds an exclusive `flock` on `lock`: two processes on one data dir would corrupt it.
    _lock: File,
    reserve: Reserve,
}

#[derive(Serialize, Deserialize)]
struct StateRecord {
    term: u64,
    vote: u64,
    commit: u64,
    conf: ConfRecord,
}

#[derive(Serialize, Deserialize, Default)]
struct ConfRecord {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

impl ConfRecord {
    fn from_conf(conf: &ConfState) -> ConfRecord {
        ConfRecord {
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            voters_outgoing: conf.voters_outgoing.clone(),
            learners_next: conf.learners_next.clone(),
            auto_leave: conf.auto_leave,
        }
    }

    fn to_conf(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    index: u64,
    term: u64,
    conf: ConfRecord,
}

impl DiskStorage {
    /// Opens (creating if missing) the storage in `dir` and recovers it. A new storage starts
    /// with `initial_conf` as its configuration (the static voter set of the cluster). On a full
    /// disk it gives back its reserve to do so.
    pub fn open(dir: &Path, initial_conf: ConfState) -> io::Result<DiskStorage> {
        fs::create_dir_all(dir)?;
        let mut storage = match DiskStorage::open_once(dir, initial_conf.clone()) {
            Err(e) if is_out_of_space(&e) && Reserve::open(dir).release() => {
                DiskStorage::open_once(dir, initial_conf)?
            }
            opened => opened?,
        };
        storage.reserve.retake(true);
        Ok(storage)
    }

    fn open_once(dir: &Path, initial_conf: ConfState) -> io::Result<DiskStorage> {
        let lock = lock_dir(dir)?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?.unwrap_or_default();
        let (hard_state, conf_state) = match read_checked(&dir.join(STATE_FILE))? {
            Some(bytes) => {
                let record: StateRecord = serde_json::from_slice(&bytes).map_err(invalid_data)?;
                let hs = HardState {
                    term: record.term,
                    vote: record.vote,
                    commit: record.commit,
                    ..Default::default()
                };
                (hs, record.conf.to_conf())
            }
            None if snapshot.get_metadata().index > 0 => {
                // Only possible if the state file was lost: rebuild it from the snapshot.
                let hs = HardState {
                    term: snapshot.get_metadata().term,
                    commit: snapshot.get_metadata().index,
                    ..Default::default()
                };
                (hs, snapshot.get_metadata().get_conf_state().clone())
            }
            None => (HardState::default(), initial_conf),
        };
        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)?;
        let mut storage = DiskStorage {
            dir: dir.to_path_buf(),
            log_len: 0,
            log: log.try_clone()?,
            hard_state,
            conf_state,
            snapshot,
            entries: Vec::new(),
            offsets: Vec::new(),
            _lock: lock,
            reserve: Reserve::open(dir),
        };
        storage.recover_log(&mut log)?;
        // The snapshot is committed; nothing beyond the log can be.
        let commit = storage
            .hard_state
            .commit
            .max(storage.first() - 1)
            .min(storage.last());
        storage.hard_state.commit = commit;
        storage.write_state()?;
        tracing::debug!(
            dir = %dir.display(),
            first = storage.first(),
            last = storage.last(),
            commit = storage.hard_state.commit,
            "raft storage recovered"
        );
        Ok(storage)
    }

    /// Reads every intact record; cuts the file after the last one.
    fn recover_log(&mut self, log: &mut File) -> io::Result<()> {
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let snapshot_index = self.snapshot.get_metadata().index;
        let mut position = 0usize;
        while let Some((payload, next)) = next_record(&bytes, position) {
            let entry = match decode_entry(payload) {
                Some(entry) => entry,
                None => break,
            };
            if entry.index > snapshot_index {
                // An entry at or below the current last replaces the tail (an overwrite whose
                // truncation did not reach the disk before a crash cannot happen, but be safe).
                if entry.index <= self.last() {
                    let keep = (entry.index - self.first()) as usize;
                    self.entries.truncate(keep);
                    self.offsets.truncate(keep);
                }
                if entry.index != self.last() + 1 {
                    tracing::error!(
                        index = entry.index,
                        last = self.last(),
                        "raft log has a gap; ignoring the rest"
                    );
                    break;
                }
                self.offsets.push(position as u64);
                self.entries.push(entry);
            }
            position = next;
        }
        if position < bytes.len() {
            tracing::warn!(
                file = %self.dir.join(LOG_FILE).display(),
                valid = position,
                len = bytes.len(),
                "raft log ends in a torn or corrupt record; truncating it"
            );
            self.log.set_len(position as u64)?;
            self.log.sync_all()?;
        }
        self.log_len = position as u64;
        Ok(())
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    /// Runs a write; if it fails for want of space and the reserve was held, gives the reserve
    /// back and runs it again.
    fn with_reserve<T>(&mut self, op: impl Fn(&mut Self) -> io::Result<T>) -> io::Result<T> {
        match op(self) {
            Err(e) if is_out_of_space(&e) && self.reserve.release() => op(self),
            done => done,
        }
    }

    /// Takes the reserve again once the disk has room (after it was given back); cheap to call
    /// often (an attempt at most every 10 s).
    pub fn maintain_reserve(&mut self) {
        self.reserve.retake(false);
    }

    /// Appends entries from the leader, replacing any conflicting tail; durable on return.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.with_reserve(|storage| storage.append_once(entries))
    }

    fn append_once(&mut self, entries: &[Entry]) -> io::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() {
            return Err(io::Error::other(format!(
                "append at {first_new} overwrites compacted entries (first {})",
                self.first()
            )));
        }
        if first_new > self.last() + 1 {
            return Err(io::Error::other(format!(
                "append at {first_new} leaves a gap after {}",
                self.last()
            )));
        }
        // The file first; memory only once it is durable, so a failed append can be retried.
        let (keep, base) = if first_new <= self.last() {
            let keep = (first_new - self.first()) as usize;
            let cut = self.offsets[keep];
            // What is cut was never committed (a new leader replaces it), in memory or not.
            self.log.set_len(cut)?;
            (keep, cut)
        } else {
            (self.entries.len(), self.log_len)
        };
        let mut buffer = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in entries {
            offsets.push(base + buffer.len() as u64);
            push_record(&mut buffer, &encode_entry(entry));
        }
        if let Err(e) = self
            .log
            .write_all(&buffer)
            .and_then(|()| self.log.sync_data())
        {
            // Cut what may have been written, so the retry appends where this one began.
            let _ = self.log.set_len(base);
            return Err(e);
        }
        if keep < self.entries.len() {
            tracing::info!(from = first_new, "raft log tail replaced by the leader's");
        }
        self.entries.truncate(keep);
        self.offsets.truncate(keep);
        self.entries.extend_from_slice(entries);
        self.offsets.extend(offsets);
        self.log_len = base + buffer.len() as u64;
        Ok(())
    }

    /// Takes a new hard state. Term and vote are durable on return (a vote must never be
    /// forgotten); the commit index alone is written with the next durable change or
    /// compaction: Raft treats it as volatile and relearns it from the leader.
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        let durable_change =
            hard_state.term != self.hard_state.term || hard_state.vote != self.hard_state.vote;
        if durable_change {
            let previous = std::mem::replace(&mut self.hard_state, hard_state.clone());
            if let Err(e) = self.with_reserve(|storage| storage.write_state()) {
                self.hard_state = previous;
                return Err(e);
            }
        }
        self.hard_state = hard_state.clone();
        Ok(())
    }

    /// Takes a new commit index (see `set_hard_state`).
    pub fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        self.hard_state.commit = commit;
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (empty if none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Installs a snapshot received from the leader: replaces the whole log.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index < self.first() {
            return Err(io::Error::other(format!(
                "snapshot at {} is older than ours at {}",
                meta.index,
                self.first() - 1
            )));
        }
        write_snapshot(&self.dir, snapshot)?;
        self.snapshot = snapshot.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.write_state()?;
        self.entries.clear();
        self.offsets.clear();
        self.rewrite_log()
    }

    /// Snapshots the applied state `data` at `applied` and drops the entries it covers. Does not
    /// use the reserve (compaction can wait for space); a failure leaves the storage as it was in
    /// memory, and on disk as sound as before (a snapshot newer than the log's first entries is
    /// fine: recovery skips the entries it covers).
    pub fn compact(&mut self, applied: u64, data: Vec<u8>) -> io::Result<()> {
        if applied < self.first() || applied > self.last() {
            return Ok(());
        }
        let covered = (applied + 1 - self.first()) as usize;
        let term = self.entries[covered - 1].term;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta: &mut SnapshotMetadata = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        write_snapshot(&self.dir, &snapshot)?;
        let (log, offsets, log_len) = self.write_log(&self.entries[covered..])?;
        self.snapshot = snapshot;
        self.entries.drain(..covered);
        (self.log, self.offsets, self.log_len) = (log, offsets, log_len);
        self.hard_state.commit = self.hard_state.commit.max(applied);
        self.write_state()?;
        tracing::debug!(index = applied, term, "raft log compacted into a snapshot");
        Ok(())
    }

    /// Rewrites `raft.log` to hold exactly `entries` (tmp file, fsync, rename, fsync dir).
    fn rewrite_log(&mut self) -> io::Result<()> {
        let (log, offsets, log_len) = self.write_log(&self.entries)?;
        (self.log, self.offsets, self.log_len) = (log, offsets, log_len);
        Ok(())
    }

    /// Writes a new `raft.log` holding exactly `entries`; returns it opened for appends, each
    /// entry's offset and its length.
    fn write_log(&self, entries: &[Entry]) -> io::Result<(File, Vec<u64>, u64)> {
        let mut buffer = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in entries {
            offsets.push(buffer.len() as u64);
            push_record(&mut buffer, &encode_entry(entry));
        }
        let path = self.dir.join(LOG_FILE);
        write_atomically(&path, &buffer)?;
        let log = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok((log, offsets, buffer.len() as u64))
    }

    fn write_state(&self) -> io::Result<()> {
        let record = StateRecord {
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            commit: self.hard_state.commit,
            conf: ConfRecord::from_conf(&self.conf_state),
        };
        let json = serde_json::to_vec(&record).map_err(invalid_data)?;
        let mut bytes = Vec::new();
        push_record(&mut bytes, &json);
        write_atomically(&self.dir.join(STATE_FILE), &bytes)
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut size = 0u64;
        let mut result = Vec::with_capacity(to - from);
        for entry in &self.entries[from..to] {
            size += (entry.data.len() + entry.context.len() + 24) as u64;
            if !result.is_empty() && size > max_size {
                break;
            }
            result.push(entry.clone());
        }
        Ok(result)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let snapshot = self.snapshot.get_metadata();
        if index == snapshot.index {
            return Ok(snapshot.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            // The node compacts on its own schedule; until then the follower catches up from
            // the log, or waits for the next snapshot.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Takes the directory's lock, failing at once if another process (or storage) holds it.
fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!(
                "{} is in use by another chronik process ({error})",
                dir.display()
            ),
        ));
    }
    Ok(file)
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn push_record(buffer: &mut Vec<u8>, payload: &[u8]) {
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// The record at `position`, if it is whole and its CRC matches, and the position after it.
fn next_record(bytes: &[u8], position: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(position..position + RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let start = position + RECORD_HEADER;
    let payload = bytes.get(start..start + len)?;
    (crc32c::crc32c(payload) == crc).then_some((payload, start + len))
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_from(code: u8) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

/// `[index u64][term u64][type u8][data len u32][data][context len u32][context]`
fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + entry.data.len() + entry.context.len());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.push(entry_type_code(entry.get_entry_type()));
    out.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry.data);
    out.extend_from_slice(&(entry.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry.context);
    out
}

fn decode_entry(payload: &[u8]) -> Option<Entry> {
    let mut cursor = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (cursor.get(..n)?, cursor.get(n..)?);
        cursor = tail;
        Some(head)
    };
    let index = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let term = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let entry_type = entry_type_from(take(1)?[0])?;
    let data_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let data = take(data_len)?.to_vec();
    let context_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let context = take(context_len)?.to_vec();
    let mut entry = Entry {
        index,
        term,
        data: data.into(),
        context: context.into(),
        ..Default::default()
    };
    entry.set_entry_type(entry_type);
    Some(entry)
}

/// Reads a file written by `write_atomically` and checks its CRC; None if it does not exist.
fn read_checked(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match next_record(&bytes, 0) {
        Some((payload, end)) if end == bytes.len() => Ok(Some(payload.to_vec())),
        _ => Err(invalid_data(format!("{} is corrupt", path.display()))),
    }
}

fn write_snapshot(dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let meta = snapshot.get_metadata();
    let header = SnapshotHeader {
        index: meta.index,
        term: meta.term,
        conf: ConfRecord::from_conf(meta.get_conf_state()),
    };
    let header = serde_json::to_vec(&header).map_err(invalid_data)?;
    let mut payload = Vec::with_capacity(4 + header.len() + snapshot.data.len());
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    payload.extend_from_slice(&snapshot.data);
    let mut bytes = Vec::with_capacity(payload.len() + RECORD_HEADER);
    push_record(&mut bytes, &payload);
    write_atomically(&dir.join(SNAPSHOT_FILE), &bytes)
}

fn read_snapshot(path: &Path) -> io::Result<Option<Snapshot>> {
    let Some(payload) = read_checked(path)? else {
        return Ok(None);
    };
    let corrupt = || invalid_data(format!("{} is corrupt", path.display()));
    let header_len = u32::from_le_bytes(
        payload
            .get(..4)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let header_bytes = payload.get(4..4 + header_len).ok_or_else(corrupt)?;
    let header: SnapshotHeader = serde_json::from_slice(header_bytes).map_err(invalid_data)?;
    let mut snapshot = Snapshot {
        data: payload[4 + header_len..].to_vec().into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = header.index;
    meta.term = header.term;
    meta.set_conf_state(header.conf.to_conf());
    Ok(Some(snapshot))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn survives_a_crash_with_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            storage
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            storage.set_hard_state(&hs(1, 1, 2)).unwrap();
            // Dropped without any close: a crash after the last fsync.
        }
        let storage = DiskStorage::open(dir.path(), voters(&[9])).unwrap();
        let state = storage.initial_state().unwrap();
        assert_eq!(state.hard_state, hs(1, 1, 2));
        assert_eq!(state.conf_state.voters, vec![1]);
        assert_eq!(
            (
                storage.first_index().unwrap(),
                storage.last_index().unwrap()
            ),
            (1, 3)
        );
        let entries = storage
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            entries,
            vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]
        );
        assert_eq!(storage.term(2).unwrap(), 1);
    }

    #[test]
    fn commit_index_is_recovered_within_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            storage
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
                .unwrap();
            storage.set_hard_state(&hs(1, 1, 1)).unwrap();
            storage.set_commit(2).unwrap();
            assert_eq!(storage.hard_state().commit, 2);
        }
        // The commit index alone is not written synchronously: it comes back as last written.
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert_eq!(storage.initial_state().unwrap().hard_state, hs(1, 1, 1));
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            storage
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
                .unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let whole = fs::read(&path).unwrap();
        // A half-written third record.
        let mut record = Vec::new();
        push_record(&mut record, &encode_entry(&entry(3, 1, b"ccc")));
        let mut torn = whole.clone();
        torn.extend_from_slice(&record[..record.len() - 2]);
        fs::write(&path, &torn).unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            assert_eq!(storage.last_index().unwrap(), 2);
            assert_eq!(fs::read(&path).unwrap(), whole);
            storage.append(&[entry(3, 1, b"d")]).unwrap();
        }
        // A flipped bit in the last record: cut there too.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert_eq!(storage.last_index().unwrap(), 2);
    }

    #[test]
    fn conflicting_append_truncates() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            storage
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            storage.append(&[entry(2, 2, b"x")]).unwrap();
            assert_eq!(storage.last_index().unwrap(), 2);
            assert!(storage.append(&[entry(5, 2, b"gap")]).is_err());
        }
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        let entries = storage
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries, vec![entry(1, 1, b"a"), entry(2, 2, b"x")]);
    }

    #[test]
    fn compaction_keeps_the_snapshot_and_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
            storage
                .append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")])
                .unwrap();
            storage.set_hard_state(&hs(2, 1, 3)).unwrap();
            storage.compact(2, b"image".to_vec()).unwrap();
            assert_eq!(storage.first_index().unwrap(), 3);
            assert_eq!(storage.term(2).unwrap(), 1);
            assert!(matches!(
                storage.term(1),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            storage.append(&[entry(4, 2, b"d")]).unwrap();
        }
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert_eq!(
            (
                storage.first_index().unwrap(),
                storage.last_index().unwrap()
            ),
            (3, 4)
        );
        let snapshot = storage.snapshot(2, 0).unwrap();
        assert_eq!(snapshot.get_metadata().index, 2);
        assert_eq!(&snapshot.data[..], b"image");
        assert_eq!(snapshot.get_metadata().get_conf_state().voters, vec![1]);
        assert!(storage.snapshot(3, 0).is_err());
        let entries = storage
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(entries, vec![entry(3, 2, b"c"), entry(4, 2, b"d")]);
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(dir.path(), voters(&[1, 2])).unwrap();
        storage.append(&[entry(1, 1, b"a")]).unwrap();
        let mut snapshot = Snapshot {
            data: b"img".to_vec().into(),
            ..Default::default()
        };
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 3;
        snapshot.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
        storage.apply_snapshot(&snapshot).unwrap();
        assert_eq!(
            (
                storage.first_index().unwrap(),
                storage.last_index().unwrap()
            ),
            (11, 10)
        );
        storage.append(&[entry(11, 3, b"n")]).unwrap();
        drop(storage);
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert_eq!(
            storage.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3]
        );
        assert_eq!(storage.initial_state().unwrap().hard_state.commit, 10);
        assert_eq!(storage.last_index().unwrap(), 11);
    }

    #[test]
    fn a_second_open_of_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert!(DiskStorage::open(dir.path(), voters(&[1])).is_err());
        drop(storage);
        assert!(DiskStorage::open(dir.path(), voters(&[1])).is_ok());
    }

    #[test]
    fn max_size_limits_but_returns_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        storage
            .append(&[entry(1, 1, &[0; 100]), entry(2, 1, &[0; 100])])
            .unwrap();
        let one = storage
            .entries(1, 3, Some(10), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        let both = storage
            .entries(1, 3, Some(1000), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(both.len(), 2);
    }
}
