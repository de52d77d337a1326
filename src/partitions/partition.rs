//! One partition replica on its owning shard: the log plus the replica state
//! the Kafka front end needs (high watermark, leader epoch).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use chronik_shards::log::{AppendInfo, LogConfig, LogError, PartitionLog};
use tracing::warn;

use super::offset_watch::OffsetWatch;

pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// (topic id, index): the registry key.
    pub key: super::PartitionKey,
    pub log: Rc<PartitionLog>,
    /// Offsets below it are readable by consumers and acknowledged to acks=all.
    /// With one replica it follows the log's durable end; replication will make
    /// it the minimum acknowledged end over the ISR.
    high_watermark: OffsetWatch,
    leader_epoch: Cell<i32>,
    /// The explicit topic configs the log was last configured from.
    topic_configs: RefCell<BTreeMap<String, String>>,
    /// Whether a task is already waiting for the log's next durable point.
    flushing: Cell<bool>,
}

impl Partition {
    pub fn new(
        topic: String,
        topic_id: uuid::Uuid,
        index: i32,
        leader_epoch: i32,
        topic_configs: BTreeMap<String, String>,
        log: Rc<PartitionLog>,
    ) -> Self {
        let high_watermark = OffsetWatch::new(log.durable_end_offset());
        Partition {
            topic,
            index,
            key: (topic_id, index),
            log,
            high_watermark,
            leader_epoch: Cell::new(leader_epoch),
            topic_configs: RefCell::new(topic_configs),
            flushing: Cell::new(false),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    pub fn high_watermark_watch(&self) -> &OffsetWatch {
        &self.high_watermark
    }

    pub fn set_leader_epoch(&self, epoch: i32) {
        self.leader_epoch.set(epoch);
    }

    /// Reconfigures the log if the topic's explicit configs changed.
    pub fn update_config(&self, topic_configs: &BTreeMap<String, String>, config: LogConfig) {
        if *self.topic_configs.borrow() != *topic_configs {
            self.log.update_config(config);
            *self.topic_configs.borrow_mut() = topic_configs.clone();
        }
    }

    /// Leader append; starts making it durable in the background so the high
    /// watermark advances even when nobody waits (acks=0).
    pub fn append(self: &Rc<Self>, records: &[u8]) -> Result<AppendInfo, LogError> {
        let info = self.log.append(records, self.leader_epoch.get())?;
        self.start_flusher();
        Ok(info)
    }

    fn start_flusher(self: &Rc<Self>) {
        if self.flushing.replace(true) {
            return;
        }
        let partition = self.clone();
        glommio::spawn_local(async move {
            loop {
                let target = partition.log.log_end_offset();
                match partition.log.wait_durable(target).await {
                    Ok(()) => partition.on_durable(),
                    Err(LogError::Closed) => break,
                    Err(e) => {
                        warn!(
                            topic = %partition.topic,
                            partition = partition.index,
                            "flushing the log failed: {e}"
                        );
                        break;
                    }
                }
                if partition.log.log_end_offset() <= target {
                    break;
                }
            }
            partition.flushing.set(false);
        })
        .detach();
    }

    /// The log became durable further: with a single replica that is the
    /// high watermark.
    fn on_durable(&self) {
        self.high_watermark.advance(self.log.durable_end_offset());
    }

    /// acks=1: resolves once every offset below `end_offset` is durable here.
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), LogError> {
        self.log.wait_durable(end_offset).await?;
        self.on_durable();
        Ok(())
    }

    /// acks=all: resolves once the high watermark reached `end_offset`.
    pub async fn wait_replicated(&self, end_offset: i64) -> Result<(), LogError> {
        if self.high_watermark.wait_at_least(end_offset).await {
            Ok(())
        } else {
            Err(LogError::Closed)
        }
    }

    /// Whole batches from `from_offset`, below the high watermark, up to
    /// `max_bytes` (the first batch may exceed it; the caller decides).
    pub async fn read(&self, from_offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, LogError> {
        let high_watermark = self.high_watermark.get();
        let end = self.log.log_end_offset();
        if from_offset >= high_watermark && from_offset <= end {
            return Ok(Vec::new());
        }
        self.log.read(from_offset, max_bytes, high_watermark).await
    }

    /// Ends every wait on this partition (it is being closed or deleted).
    pub fn close_waits(&self) {
        self.high_watermark.close();
    }
}
