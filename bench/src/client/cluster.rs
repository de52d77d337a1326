//! Who leads what: the brokers and partition leaders of one topic, as a
//! Metadata response describes them.

use std::collections::BTreeMap;

use kafka_protocol::messages::MetadataResponse;

use super::ClientError;

/// The leader of one partition as last seen in Metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLeader {
    /// Broker id, or -1 while the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    pub error_code: i16,
}

/// Brokers and the leaders of one topic's partitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMap {
    /// Broker id to `host:port`.
    pub brokers: BTreeMap<i32, String>,
    /// Partition index to its leader.
    pub partitions: BTreeMap<i32, PartitionLeader>,
    pub controller_id: i32,
    /// The topic's own error code (0, or e.g. UNKNOWN_TOPIC_OR_PARTITION).
    pub topic_error: i16,
}

impl ClusterMap {
    /// Reads the brokers and `topic`'s partitions out of a Metadata response.
    pub fn from_metadata(response: &MetadataResponse, topic: &str) -> ClusterMap {
        let brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut map = ClusterMap {
            brokers,
            partitions: BTreeMap::new(),
            controller_id: response.controller_id.0,
            topic_error: kafka_protocol::ResponseError::UnknownTopicOrPartition.code(),
        };
        if let Some(t) = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
        {
            map.topic_error = t.error_code;
            for p in &t.partitions {
                map.partitions.insert(
                    p.partition_index,
                    PartitionLeader {
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        error_code: p.error_code,
                    },
                );
            }
        }
        map
    }

    /// The address of the broker leading `partition`, if it has a live one.
    pub fn leader_of(&self, partition: i32) -> Option<(i32, &str)> {
        let leader = self.partitions.get(&partition)?.leader;
        self.brokers
            .get(&leader)
            .map(|addr| (leader, addr.as_str()))
    }

    /// Whether every partition in `0..count` has a leader among the brokers.
    pub fn all_led(&self, count: i32) -> bool {
        (0..count).all(|p| self.leader_of(p).is_some())
    }

    /// Partitions led by each broker.
    pub fn partitions_by_leader(&self) -> BTreeMap<i32, Vec<i32>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (&p, l) in &self.partitions {
            out.entry(l.leader).or_default().push(p);
        }
        out
    }

    /// Fails unless the topic exists with `count` partitions all led.
    pub fn check_ready(&self, topic: &str, count: i32) -> Result<(), ClientError> {
        if self.topic_error != 0 {
            return Err(super::connection::kafka_error(
                &format!("Metadata {topic}"),
                self.topic_error,
            ));
        }
        if !self.all_led(count) {
            return Err(ClientError::Other(format!(
                "topic {topic}: not every partition of 0..{count} has a leader yet"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn maps_partitions_to_leader_addresses() {
        let response = MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("h1"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("h2"))
                    .with_port(9093),
            ])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![
                    MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(2)),
                    MetadataResponsePartition::default()
                        .with_partition_index(1)
                        .with_leader_id(BrokerId(-1)),
                ])]);
        let map = ClusterMap::from_metadata(&response, "t");
        assert_eq!(map.topic_error, 0);
        assert_eq!(map.leader_of(0), Some((2, "h2:9093")));
        assert_eq!(map.leader_of(1), None);
        assert!(!map.all_led(2));
        assert!(map.check_ready("t", 1).is_ok());
        let other = ClusterMap::from_metadata(&response, "missing");
        assert_ne!(other.topic_error, 0);
    }
}
