//! KIP-951: a broker that does not lead a partition answers produce and fetch
//! with NOT_LEADER_OR_FOLLOWER plus who leads it now (and that broker's
//! endpoint), so the client goes there without waiting for a metadata refresh.

use std::collections::BTreeSet;

use crate::control::{MetadataImage, TopicInfo};

/// The current leader of a partition, as this broker's image has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentLeader {
    /// -1 while the partition is offline.
    pub leader_id: i32,
    pub leader_epoch: i32,
}

/// The leader of `topic`'s partition `index`, if the partition exists.
pub fn current_leader(topic: &TopicInfo, index: i32) -> Option<CurrentLeader> {
    topic
        .partitions
        .iter()
        .find(|p| p.index == index)
        .map(|p| CurrentLeader {
            leader_id: p.leader,
            leader_epoch: p.leader_epoch,
        })
}

/// A live broker's Kafka endpoint: (id, host, port, rack).
pub type Endpoint = (i32, String, u16, Option<String>);

/// The endpoints of the live brokers among `leaders`, in id order, once each.
pub fn endpoints(image: &MetadataImage, leaders: impl IntoIterator<Item = i32>) -> Vec<Endpoint> {
    let ids: BTreeSet<i32> = leaders.into_iter().filter(|id| *id >= 0).collect();
    ids.into_iter()
        .filter_map(|id| image.brokers.get(&id).filter(|b| !b.fenced))
        .map(|b| (b.id, b.host.clone(), b.port, b.rack.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;
    use crate::control::{BrokerInfo, PartitionInfo};

    fn broker(id: i32, fenced: bool) -> BrokerInfo {
        BrokerInfo {
            id,
            host: format!("h{id}"),
            port: 9000 + id as u16,
            rack: None,
            rpc: None,
            incarnation: 1,
            fenced,
        }
    }

    #[test]
    fn leader_and_live_endpoints_only() {
        let topic = TopicInfo {
            id: Uuid::from_u128(1),
            name: "t".into(),
            configs: BTreeMap::new(),
            partitions: vec![PartitionInfo {
                index: 0,
                replicas: vec![2, 3],
                leader: 2,
                leader_epoch: 4,
                isr: vec![2, 3],
            }],
        };
        assert_eq!(
            current_leader(&topic, 0),
            Some(CurrentLeader {
                leader_id: 2,
                leader_epoch: 4
            })
        );
        assert_eq!(current_leader(&topic, 1), None);
        let mut image = MetadataImage::default();
        image.brokers.insert(2, broker(2, false));
        image.brokers.insert(3, broker(3, true));
        image.topics.insert("t".into(), Arc::new(topic));
        let found = endpoints(&image, [2, 2, 3, -1, 7]);
        assert_eq!(found, vec![(2, "h2".to_string(), 9002, None)]);
    }
}
