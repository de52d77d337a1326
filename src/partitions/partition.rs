//! One partition replica on its owning shard: the log plus the replica state
//! the Kafka front end needs (high watermark, leader epoch).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use chronik_shards::log::{AppendInfo, LogConfig, LogError, PartitionLog};
use tracing::warn;

use super::offset_watch::OffsetWatch;
use crate::control::{PartitionInfo, TopicInfo};
use crate::replication::ack_tracker::AckFailure;
use crate::replication::leader::LeaderState;

pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// (topic id, index): the registry key.
    pub key: super::PartitionKey,
    pub log: Rc<PartitionLog>,
    /// Offsets below it are readable by consumers and acknowledged to acks=all:
    /// the lowest end offset every in-sync replica acknowledged as durable.
    /// While this broker is the only in-sync replica that is the log's durable
    /// end; with followers in sync it waits for their acknowledgements (which
    /// replication brings; until then it does not advance).
    high_watermark: OffsetWatch,
    leader_epoch: Cell<i32>,
    /// This broker's id and the partition's in-sync replicas, from the image.
    node_id: i32,
    isr: RefCell<Vec<i32>>,
    /// The explicit topic configs the log was last configured from.
    topic_configs: RefCell<BTreeMap<String, String>>,
    /// Whether a task is already waiting for the log's next durable point.
    flushing: Cell<bool>,
    /// Set while this broker leads the partition (replication).
    leader: RefCell<Option<Rc<LeaderState>>>,
    /// This replica follows another broker: its high watermark comes from the leader.
    following: Cell<bool>,
    /// The leader epoch whose leader this follower has checked its log against (truncating what
    /// that leader never had); pushes of any other epoch wait for that check.
    validated_epoch: Cell<Option<i32>>,
}

impl Partition {
    /// A partition of `topic` described by `info`, whose log is `log`, on broker `node_id`;
    /// `checkpointed` is its high watermark from the checkpoint file, if it had one.
    pub fn new(
        topic: &TopicInfo,
        info: &PartitionInfo,
        node_id: i32,
        log: Rc<PartitionLog>,
        checkpointed: Option<i64>,
    ) -> Self {
        // Alone in sync, everything recovered is durable, hence committed.
        // With followers in sync, what the checkpoint says was replicated (Kafka's
        // replication-offset-checkpoint), never more than this log holds; the rest waits for
        // the followers to acknowledge it again.
        let alone = info.isr.iter().all(|r| *r == node_id);
        let (start, durable) = (log.log_start_offset(), log.durable_end_offset());
        let high_watermark = OffsetWatch::new(if alone {
            durable
        } else {
            checkpointed.map_or(start, |hw| hw.min(durable).max(start))
        });
        Partition {
            topic: topic.name.clone(),
            index: info.index,
            key: (topic.id, info.index),
            log,
            high_watermark,
            leader_epoch: Cell::new(info.leader_epoch),
            node_id,
            isr: RefCell::new(info.isr.clone()),
            topic_configs: RefCell::new(topic.configs.clone()),
            flushing: Cell::new(false),
            leader: RefCell::new(None),
            following: Cell::new(false),
            validated_epoch: Cell::new(None),
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// The leader state while this broker leads the partition.
    pub fn leader_state(&self) -> Option<Rc<LeaderState>> {
        self.leader.borrow().clone()
    }

    pub fn set_leader_state(&self, state: Option<Rc<LeaderState>>) {
        if state.is_some() {
            self.following.set(false);
        }
        *self.leader.borrow_mut() = state;
    }

    /// Whether this replica follows another broker (its image says so).
    pub fn is_following(&self) -> bool {
        self.following.get()
    }

    /// This replica now follows another broker.
    pub fn set_follower(&self) {
        self.following.set(true);
    }

    pub fn validated_epoch(&self) -> Option<i32> {
        self.validated_epoch.get()
    }

    pub fn set_validated_epoch(&self, epoch: i32) {
        self.validated_epoch.set(Some(epoch));
    }

    /// A follower learns the leader's high watermark (never beyond its own log).
    pub fn follow_high_watermark(&self, leader_high_watermark: i64) {
        self.high_watermark
            .advance(leader_high_watermark.min(self.log.log_end_offset()));
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    pub fn high_watermark_watch(&self) -> &OffsetWatch {
        &self.high_watermark
    }

    /// Applies the leader epoch and ISR of a newer metadata image.
    pub fn set_replica_state(&self, leader_epoch: i32, isr: &[i32]) {
        self.leader_epoch.set(leader_epoch);
        if *self.isr.borrow() != isr {
            *self.isr.borrow_mut() = isr.to_vec();
            self.on_durable();
        }
    }

    fn only_in_sync_replica(&self) -> bool {
        self.isr.borrow().iter().all(|r| *r == self.node_id)
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
    pub fn append(self: &Rc<Self>, records: Bytes) -> Result<AppendInfo, LogError> {
        let info = self.log.append_bytes(records, self.leader_epoch.get())?;
        if let Some(leader) = self.leader.borrow().as_ref() {
            leader.appended.advance(info.last_offset + 1);
        }
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

    /// The log became durable further: the leader acknowledges it to itself;
    /// without a leader state, when no other replica is in sync, that is the
    /// high watermark.
    fn on_durable(&self) {
        let durable = self.log.durable_end_offset();
        let leader = self.leader.borrow().clone();
        match leader {
            Some(leader) => {
                let hw = leader.on_ack(leader.me, durable);
                self.high_watermark.advance(hw);
            }
            None if self.following.get() => {}
            None if self.only_in_sync_replica() => self.high_watermark.advance(durable),
            None => {}
        }
    }

    /// acks=1: resolves once every offset below `end_offset` is durable here.
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), LogError> {
        self.log.wait_durable(end_offset).await?;
        self.on_durable();
        Ok(())
    }

    /// acks=all: resolves once the high watermark reached `end_offset`, or
    /// with the Kafka error code saying why not (the caller bounds the wait).
    pub async fn wait_replicated(
        &self,
        end_offset: i64,
        timeout: std::time::Duration,
    ) -> Result<(), i16> {
        let leader = self.leader.borrow().clone();
        match leader {
            Some(leader) => leader
                .wait(end_offset, timeout)
                .await
                .map_err(AckFailure::code),
            None if self.high_watermark.wait_at_least(end_offset).await => Ok(()),
            None => Err(AckFailure::NotLeader.code()),
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
        if let Some(leader) = self.leader.borrow_mut().take() {
            leader.stop();
        }
        self.high_watermark.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch() -> Bytes {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: 0,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, [&record], &options).unwrap();
        buf.freeze()
    }

    fn topic(isr: Vec<i32>) -> (TopicInfo, PartitionInfo) {
        let info = PartitionInfo {
            index: 0,
            replicas: vec![1, 2],
            leader: 1,
            leader_epoch: 3,
            isr,
        };
        let topic = TopicInfo {
            id: uuid::Uuid::from_u128(9),
            name: "t".into(),
            configs: BTreeMap::new(),
            partitions: vec![info.clone()],
        };
        (topic, info)
    }

    #[test]
    fn high_watermark_waits_for_other_in_sync_replicas() {
        super::super::with_test_log(|log| async move {
            let (topic, info) = topic(vec![1, 2]);
            let partition = Rc::new(Partition::new(&topic, &info, 1, log, None));
            let appended = partition.append(batch()).unwrap();
            partition
                .wait_durable(appended.last_offset + 1)
                .await
                .unwrap();
            // Durable here, but broker 2 is in sync and has not acknowledged.
            assert_eq!(partition.high_watermark(), 0);
            assert!(partition.read(0, 1 << 20).await.unwrap().is_empty());
            // Broker 2 leaves the ISR: this broker alone decides.
            partition.set_replica_state(4, &[1]);
            assert_eq!(partition.high_watermark(), 1);
            assert_eq!(partition.read(0, 1 << 20).await.unwrap().len(), 1);
            partition.log.close().await.unwrap();
        });
    }

    /// IncrementalAlterConfigs reaches a running log through the image: `apply_image` hands
    /// every open partition its topic's configs and `log_config`, and the partition passes a
    /// changed one on to its log.
    #[test]
    fn a_changed_cleanup_policy_reaches_the_running_log() {
        super::super::with_test_log(|log| async move {
            let (mut topic, info) = topic(vec![1]);
            let defaults = crate::control::BrokerDefaults::default();
            let partition = Rc::new(Partition::new(&topic, &info, 1, log, None));
            assert_eq!(
                partition.log.compaction_config(),
                chronik_shards::log::CompactionConfig::default()
            );
            topic.configs = [
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("min.cleanable.dirty.ratio".to_string(), "0.1".to_string()),
                ("delete.retention.ms".to_string(), "5".to_string()),
            ]
            .into();
            let config = crate::control::topic_config::log_config(&topic, &defaults);
            assert!(config.compact && config.retention_ms.is_none());
            partition.update_config(&topic.configs, config);
            let compaction = partition.log.compaction_config();
            assert_eq!(compaction.min_cleanable_dirty_ratio, 0.1);
            assert_eq!(compaction.delete_retention_ms, 5);
            // Back to the defaults when the configs are deleted again.
            topic.configs.clear();
            let config = crate::control::topic_config::log_config(&topic, &defaults);
            partition.update_config(&topic.configs, config);
            assert_eq!(
                partition.log.compaction_config(),
                chronik_shards::log::CompactionConfig::default()
            );
            partition.log.close().await.unwrap();
        });
    }
}
