//! The partitions a shard owns: opening their logs as the metadata image
//! assigns them, closing or deleting them as it takes them away, and finding
//! them for requests.

pub mod cleaner;
pub mod hw_checkpoint;
pub mod offset_watch;
pub mod orphans;
pub mod partition;
pub mod sync;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chronik_shards::log::{LogConfig, LogError, PartitionLog};
use glommio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

use crate::control::{PartitionInfo, TopicInfo};
pub use partition::Partition;

/// Runs `test` on a glommio executor with a fresh, empty partition log in a temporary directory.
#[cfg(test)]
pub(crate) fn with_test_log<F, Fut>(test: F)
where
    F: FnOnce(Rc<chronik_shards::log::PartitionLog>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let log = chronik_shards::log::PartitionLog::open(
                path,
                chronik_shards::log::LogConfig::default(),
            )
            .await
            .unwrap();
            test(log).await;
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A partition is named by its topic's id (stable for the topic's life) and index.
pub type PartitionKey = (Uuid, i32);

struct Slot {
    partition: RefCell<Option<Rc<Partition>>>,
    /// The directory being opened or open, once known.
    dir: RefCell<Option<PathBuf>>,
    /// Serializes opening and removing, so each happens once.
    lock: Semaphore,
}

/// The partitions of one shard.
///
/// Locks: a slot's lock, then its directory's lock. A directory lock is held
/// while a log is opened in it or removed from it, so a topic re-created
/// under a deleted topic's name never opens the directory being deleted.
pub struct PartitionRegistry {
    data_dir: PathBuf,
    node_id: i32,
    slots: RefCell<HashMap<PartitionKey, Rc<Slot>>>,
    dir_locks: RefCell<HashMap<PathBuf, Rc<Semaphore>>>,
    /// High watermarks from the checkpoint files as this shard started, taken by each
    /// partition as it opens.
    checkpointed: RefCell<HashMap<PartitionKey, i64>>,
    checkpoint: hw_checkpoint::Writer,
}

impl PartitionRegistry {
    /// The registry of shard `shard`; reads the high watermark checkpoints (once, at start).
    pub fn new(data_dir: PathBuf, node_id: i32, shard: usize) -> Self {
        PartitionRegistry {
            checkpointed: RefCell::new(hw_checkpoint::load(&data_dir)),
            checkpoint: hw_checkpoint::Writer::new(hw_checkpoint::path_of(&data_dir, shard)),
            data_dir,
            node_id,
            slots: RefCell::new(HashMap::new()),
            dir_locks: RefCell::new(HashMap::new()),
        }
    }

    /// Writes this shard's high watermark checkpoint (off the reactor) if it changed.
    pub async fn checkpoint_high_watermarks(&self) {
        let entries = self
            .all()
            .iter()
            .map(|p| hw_checkpoint::Entry {
                topic: p.topic.clone(),
                topic_id: p.key.0,
                partition: p.index,
                high_watermark: p.high_watermark(),
            })
            .collect();
        self.checkpoint.write(entries).await;
    }

    /// `<data-dir>/<topic>-<partition>`, as Kafka lays it out.
    pub fn dir_of(&self, topic: &str, index: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{index}"))
    }

    /// The partition if its log is open on this shard.
    pub fn get(&self, key: &PartitionKey) -> Option<Rc<Partition>> {
        let slots = self.slots.borrow();
        let slot = slots.get(key)?;
        let partition = slot.partition.borrow().clone();
        partition
    }

    /// Every open partition.
    pub fn all(&self) -> Vec<Rc<Partition>> {
        self.slots
            .borrow()
            .values()
            .filter_map(|slot| slot.partition.borrow().clone())
            .collect()
    }

    /// Keys of every partition known here (open or opening).
    pub fn keys(&self) -> Vec<PartitionKey> {
        self.slots.borrow().keys().copied().collect()
    }

    fn slot(&self, key: PartitionKey) -> Rc<Slot> {
        self.slots
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                Rc::new(Slot {
                    partition: RefCell::new(None),
                    dir: RefCell::new(None),
                    lock: Semaphore::new(1),
                })
            })
            .clone()
    }

    /// The open partition, opening (and recovering) its log first if needed.
    pub async fn get_or_open(
        &self,
        topic: &TopicInfo,
        partition: &PartitionInfo,
        config: LogConfig,
    ) -> Result<Rc<Partition>, LogError> {
        let key = (topic.id, partition.index);
        if let Some(open) = self.get(&key) {
            return Ok(open);
        }
        let slot = self.slot(key);
        let _permit = slot
            .lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        if let Some(open) = slot.partition.borrow().clone() {
            return Ok(open);
        }
        let dir = self.dir_of(&topic.name, partition.index);
        *slot.dir.borrow_mut() = Some(dir.clone());
        let dir_lock = self.dir_lock(&dir);
        let _dir_permit = dir_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        // The same directory may still be held for a deleted topic of the same
        // name (this shard has not applied the deletion yet): retire it first.
        let stale: Vec<PartitionKey> = self
            .all()
            .into_iter()
            .filter(|p| p.topic == topic.name && p.index == partition.index && p.key.0 != topic.id)
            .map(|p| p.key)
            .collect();
        for stale_key in stale {
            let stale_slot = self.slots.borrow_mut().remove(&stale_key);
            if let Some(stale) = stale_slot.and_then(|s| s.partition.borrow_mut().take()) {
                retire(&stale, true).await;
            }
        }
        let log = PartitionLog::open(dir.clone(), config).await?;
        let checkpointed = self.checkpointed.borrow_mut().remove(&key);
        let open = Rc::new(Partition::new(
            topic,
            partition,
            self.node_id,
            log,
            checkpointed,
        ));
        info!(
            topic = %topic.name,
            partition = partition.index,
            log_start = open.log.log_start_offset(),
            log_end = open.log.log_end_offset(),
            high_watermark = open.high_watermark(),
            "opened partition log in {}",
            dir.display()
        );
        // A removal that raced with this open took the slot out of the map:
        // put it back only if it is still ours.
        let still_registered = self
            .slots
            .borrow()
            .get(&key)
            .is_some_and(|s| Rc::ptr_eq(s, &slot));
        if !still_registered {
            let _ = open.log.close().await;
            return Err(LogError::Closed);
        }
        *slot.partition.borrow_mut() = Some(open.clone());
        Ok(open)
    }

    fn dir_lock(&self, dir: &Path) -> Rc<Semaphore> {
        self.dir_locks
            .borrow_mut()
            .entry(dir.to_path_buf())
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    /// Takes the partition off this shard: deletes its log (topic deleted) or
    /// only closes it (moved elsewhere, shutdown).
    pub async fn remove(&self, key: &PartitionKey, delete: bool) {
        let Some(slot) = self.slots.borrow_mut().remove(key) else {
            return;
        };
        let _permit = slot.lock.acquire_permit(1).await;
        let Some(dir) = slot.dir.borrow().clone() else {
            return; // never opened
        };
        let dir_lock = self.dir_lock(&dir);
        let _dir_permit = dir_lock.acquire_permit(1).await;
        let partition = slot.partition.borrow_mut().take();
        match partition {
            Some(partition) => retire(&partition, delete).await,
            None if delete => {
                // Its open failed or was abandoned: remove what it may have created (off the
                // reactor: a large directory takes a while to unlink).
                let target = dir.clone();
                let removed = glommio::executor()
                    .spawn_blocking(move || std::fs::remove_dir_all(&target))
                    .await;
                if let Err(e) = removed {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!("removing partition directory {}: {e}", dir.display());
                    }
                }
            }
            None => {}
        }
    }

    /// Closes every log (clean shutdown: flushed, indexes written).
    pub async fn close_all(&self) {
        for key in self.keys() {
            self.remove(&key, false).await;
        }
    }
}

/// Closes or deletes a partition's log; ends every wait on it.
async fn retire(partition: &Partition, delete: bool) {
    partition.close_waits();
    let result = if delete {
        partition.log.delete().await
    } else {
        partition.log.close().await
    };
    match result {
        Ok(()) => info!(
            topic = %partition.topic,
            partition = partition.index,
            "{} partition log",
            if delete { "deleted" } else { "closed" }
        ),
        Err(e) => warn!(
            topic = %partition.topic,
            partition = partition.index,
            "{} partition log failed: {e}",
            if delete { "deleting" } else { "closing" }
        ),
    }
}
