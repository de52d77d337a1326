//! The high watermark checkpoint (Kafka's `replication-offset-checkpoint`).
//!
//! A restarted replica does not know which of its offsets the ISR had acknowledged: without this
//! file a leader with followers in sync starts at its log start and ListOffsets latest answers
//! the log start (0) until every follower has acknowledged again, so after a full restart
//! consumers see nothing for a while. Each shard writes the high watermarks of its partitions to
//! `<data-dir>/replication-offset-checkpoint.shard-<id>` every few seconds and at a clean shutdown;
//! a partition opens with `min(checkpointed, log end)`, so the checkpoint can lag (the high
//! watermark then starts lower, as before) but never claims what the log does not have.
//!
//! The file is replaced atomically (tmp, fsync, rename, directory fsync) on glommio's blocking
//! pool, never on the shard's reactor. Format, one text line each: the version `0`, the number
//! of entries, then `<topic> <partition> <high watermark> <topic id>` (Kafka's lines plus the
//! topic id, so a topic re-created under the same name never inherits an old value).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use glommio::sync::Semaphore;
use tracing::warn;
use uuid::Uuid;

use super::PartitionKey;

/// How often each shard writes its file (Kafka's `replica.high.watermark.checkpoint.interval.ms`
/// default).
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The file name's prefix; each shard adds `.shard-<id>`.
pub const FILE_PREFIX: &str = "replication-offset-checkpoint";
const VERSION: &str = "0";

/// One partition's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    pub high_watermark: i64,
}

/// The checkpoint file of shard `shard` in `data_dir`.
pub fn path_of(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("{FILE_PREFIX}.shard-{shard}"))
}

/// The file's text for `entries`.
pub fn encode(entries: &[Entry]) -> String {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for e in entries {
        text.push_str(&format!(
            "{} {} {} {}\n",
            e.topic, e.partition, e.high_watermark, e.topic_id
        ));
    }
    text
}

/// The entries of one file's text; None if it is not a whole checkpoint (the count line
/// protects against a torn file, which the atomic rename should already rule out).
pub fn decode(text: &str) -> Option<Vec<Entry>> {
    let mut lines = text.lines();
    if lines.next()? != VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries = Vec::new();
    for line in lines {
        let mut fields = line.split(' ');
        let (Some(topic), Some(partition), Some(hw), Some(id), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        entries.push(Entry {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
            high_watermark: hw.parse().ok()?,
            topic_id: id.parse().ok()?,
        });
    }
    (entries.len() == count).then_some(entries)
}

/// Every checkpointed high watermark in `data_dir`, from the files of all shards (a partition
/// may have been owned by another shard before, with another shard count): the highest value
/// per partition. Every value was committed when it was written, so the highest is too.
/// Unreadable files are logged and skipped: the partitions then start as without a checkpoint.
pub fn load(data_dir: &Path) -> HashMap<PartitionKey, i64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(data_dir) else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(FILE_PREFIX) || name.ends_with(".tmp") {
            continue;
        }
        let decoded = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| decode(&t));
        let Some(entries) = decoded else {
            warn!("ignoring unreadable high watermark checkpoint {name}");
            continue;
        };
        for e in entries {
            let hw = out
                .entry((e.topic_id, e.partition))
                .or_insert(e.high_watermark);
            *hw = (*hw).max(e.high_watermark);
        }
    }
    out
}

/// Replaces `path` with `text` atomically and durably (blocking: run it off the reactor).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .map_or(String::new(), |e| e.to_string_lossy().into_owned())
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One shard's checkpoint file: written only when its text changed, one write at a time.
pub struct Writer {
    path: PathBuf,
    last: RefCell<Option<String>>,
    lock: Semaphore,
}

impl Writer {
    pub fn new(path: PathBuf) -> Self {
        Writer {
            path,
            last: RefCell::new(None),
            lock: Semaphore::new(1),
        }
    }

    /// Writes `entries` (sorted here, so equal contents give equal text) on the blocking pool.
    pub async fn write(&self, mut entries: Vec<Entry>) {
        let Ok(_permit) = self.lock.acquire_permit(1).await else {
            return;
        };
        entries.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let text = encode(&entries);
        if self.last.borrow().as_deref() == Some(text.as_str()) {
            return;
        }
        let (path, written) = (self.path.clone(), text.clone());
        let result = glommio::executor()
            .spawn_blocking(move || write_atomically(&path, &written))
            .await;
        match result {
            Ok(()) => *self.last.borrow_mut() = Some(text),
            Err(e) => warn!(
                "writing the high watermark checkpoint {}: {e}",
                self.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, partition: i32, hw: i64, id: u128) -> Entry {
        Entry {
            topic: topic.into(),
            topic_id: Uuid::from_u128(id),
            partition,
            high_watermark: hw,
        }
    }

    #[test]
    fn encode_decode_round_trip_and_torn_files_are_refused() {
        let entries = vec![entry("a", 0, 10, 1), entry("b.c-d", 2, 0, 2)];
        let text = encode(&entries);
        assert_eq!(decode(&text), Some(entries));
        let torn = &text[..text.len() - 10];
        assert_eq!(decode(torn), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode("1\n0\n"), None, "unknown version");
    }

    #[test]
    fn load_takes_the_highest_value_over_every_shards_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = encode(&[entry("a", 0, 5, 1), entry("a", 1, 7, 1)]);
        let new = encode(&[entry("a", 0, 9, 1)]);
        write_atomically(&path_of(dir.path(), 0), &old).unwrap();
        write_atomically(&path_of(dir.path(), 1), &new).unwrap();
        std::fs::write(dir.path().join(format!("{FILE_PREFIX}.shard-2")), "junk").unwrap();
        let loaded = load(dir.path());
        assert_eq!(loaded.get(&(Uuid::from_u128(1), 0)), Some(&9));
        assert_eq!(loaded.get(&(Uuid::from_u128(1), 1)), Some(&7));
        assert_eq!(loaded.len(), 2);
    }
}
