//! The metadata image: the cluster's metadata as of one applied Raft index. Immutable once
//! published; shards and request handlers read it through an `Arc` and never lock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The cluster metadata after applying every committed entry up to `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// The Raft index of the last applied entry (monotonic).
    pub version: u64,
    /// Generated once by the first controller and stored in Raft; empty until then.
    pub cluster_id: String,
    /// The current Raft leader as this node knows it. Runtime state, not part of the replicated
    /// state: it is never stored in snapshots.
    #[serde(skip)]
    pub controller_id: Option<i32>,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, Arc<TopicInfo>>,
    /// The first producer id no broker has been handed yet (`producer_ids`). Part of the
    /// replicated state, so snapshots keep it; images from before it existed read as 0.
    #[serde(default)]
    pub next_producer_id: i64,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: i32,
    /// Advertised Kafka endpoint.
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Control-plane endpoint (cluster mode).
    pub rpc: Option<SocketAddr>,
    /// Chosen anew by the broker process at every start, so a restarted broker is told apart
    /// from its previous life.
    pub incarnation: u64,
    /// A fenced broker gets no new replicas and leads nothing.
    pub fenced: bool,
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub id: Uuid,
    pub name: String,
    /// Only the explicitly set configs; defaults come from the broker (`topic_config`).
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionInfo>,
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub index: i32,
    /// The first replica is the preferred leader.
    pub replicas: Vec<i32>,
    /// -1 when the partition is offline.
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

impl MetadataImage {
    /// The topic with this id, if any (Produce v13 and Fetch v13+ name topics by id).
    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<TopicInfo>> {
        self.topics.values().find(|topic| topic.id == id)
    }

    /// Registered brokers that are not fenced: the ones replicas may be assigned to.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values().filter(|broker| !broker.fenced)
    }

    /// Whether `id` is registered and unfenced.
    pub fn is_live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|broker| !broker.fenced)
    }

    /// The partition `index` of `topic`, if both exist.
    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionInfo> {
        let topic = self.topics.get(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
    }
}

impl TopicInfo {
    /// The partitions this broker leads.
    pub fn led_by(&self, broker: i32) -> impl Iterator<Item = &PartitionInfo> {
        self.partitions
            .iter()
            .filter(move |partition| partition.leader == broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: i32, fenced: bool) -> BrokerInfo {
        BrokerInfo {
            id,
            host: "localhost".into(),
            port: 9092,
            rack: None,
            rpc: None,
            incarnation: 1,
            fenced,
        }
    }

    #[test]
    fn lookups() {
        let mut image = MetadataImage::default();
        image.brokers.insert(1, broker(1, false));
        image.brokers.insert(2, broker(2, true));
        let id = Uuid::from_u128(7);
        image.topics.insert(
            "t".into(),
            Arc::new(TopicInfo {
                id,
                name: "t".into(),
                configs: BTreeMap::new(),
                partitions: vec![PartitionInfo {
                    index: 0,
                    replicas: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    isr: vec![1],
                }],
            }),
        );
        assert_eq!(image.topic_by_id(id).map(|t| t.name.as_str()), Some("t"));
        assert!(image.topic_by_id(Uuid::from_u128(8)).is_none());
        let live: Vec<i32> = image.live_brokers().map(|b| b.id).collect();
        assert_eq!(live, vec![1]);
        assert!(image.is_live(1) && !image.is_live(2) && !image.is_live(3));
        assert_eq!(image.partition("t", 0).map(|p| p.leader), Some(1));
        assert!(image.partition("t", 1).is_none());
        assert!(image.partition("t", -1).is_none());
        assert_eq!(image.topics["t"].led_by(1).count(), 1);
    }

    #[test]
    fn serde_round_trip_drops_controller() {
        let mut image = MetadataImage {
            version: 5,
            cluster_id: "abc".into(),
            controller_id: Some(1),
            ..Default::default()
        };
        image.brokers.insert(1, broker(1, false));
        let json = serde_json::to_vec(&image).unwrap();
        let back: MetadataImage = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.controller_id, None);
        image.controller_id = None;
        assert_eq!(back, image);
    }
}
