//! Replica assignment: which brokers hold each partition of a new topic (or new partitions).
//!
//! Kafka's rack-unaware algorithm: partition `p`'s first replica (its preferred leader) is
//! broker `(start + p) mod n`; followers follow at a shift that grows by one every `n`
//! partitions, so replicas of consecutive partitions land on different broker pairs. Over live
//! (registered, unfenced) brokers only, sorted by id. `start` is the broker leading the fewest
//! partitions today, so that preferred leadership stays spread across topics; the result is
//! computed on the controller and stored in the Raft command, so every node applies the same.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ControlError;
use super::image::{MetadataImage, PartitionInfo};

/// Assigns `replication_factor` replicas to partitions `first_partition..first_partition+count`.
/// `start_broker`: the broker whose turn it is to lead `first_partition` (None: least loaded).
pub fn assign(
    image: &MetadataImage,
    first_partition: i32,
    count: i32,
    replication_factor: i16,
    start_broker: Option<i32>,
) -> Result<Vec<Vec<i32>>, ControlError> {
    let brokers: Vec<i32> = image.live_brokers().map(|broker| broker.id).collect();
    let n = brokers.len();
    if replication_factor < 1 {
        return Err(ControlError::InvalidReplicationFactor(
            "replication factor must be larger than 0".into(),
        ));
    }
    let rf = usize::try_from(replication_factor).unwrap_or(0);
    if rf > n {
        return Err(ControlError::InvalidReplicationFactor(format!(
            "replication factor: {replication_factor} larger than available brokers: {n}"
        )));
    }
    if count < 0 || first_partition < 0 {
        return Err(ControlError::InvalidPartitions(
            "number of partitions must be larger than 0".into(),
        ));
    }
    let start = match start_broker.and_then(|id| brokers.iter().position(|b| *b == id)) {
        Some(position) => position,
        None => least_loaded(image, &brokers),
    };
    let mut shift = start;
    let mut result = Vec::with_capacity(count as usize);
    for partition in first_partition as usize..(first_partition + count) as usize {
        if partition > 0 && partition % n == 0 {
            shift += 1;
        }
        let first = (partition + start) % n;
        let mut replicas = Vec::with_capacity(rf);
        replicas.push(brokers[first]);
        for j in 0..rf - 1 {
            let follower_shift = 1 + (shift + j) % (n - 1);
            replicas.push(brokers[(first + follower_shift) % n]);
        }
        result.push(replicas);
    }
    Ok(result)
}

/// Index in `brokers` of the broker that is the preferred leader of the fewest partitions.
fn least_loaded(image: &MetadataImage, brokers: &[i32]) -> usize {
    let mut load: BTreeMap<i32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            if let Some(count) = partition.replicas.first().and_then(|b| load.get_mut(b)) {
                *count += 1;
            }
        }
    }
    brokers
        .iter()
        .enumerate()
        .min_by_key(|(i, b)| (load[b], *i))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Checks an explicit assignment (partition index -> replicas) as Kafka does and returns it as
/// a dense list ordered by partition index, starting at `first_partition`.
pub fn validate_explicit(
    image: &MetadataImage,
    first_partition: i32,
    assignments: &[(i32, Vec<i32>)],
) -> Result<Vec<Vec<i32>>, ControlError> {
    let invalid = |message: String| Err(ControlError::InvalidReplicaAssignment(message));
    let mut by_index: BTreeMap<i32, &Vec<i32>> = BTreeMap::new();
    for (index, replicas) in assignments {
        if by_index.insert(*index, replicas).is_some() {
            return invalid(format!("partition {index} is assigned twice"));
        }
    }
    let expected: Vec<i32> = (first_partition..first_partition + by_index.len() as i32).collect();
    if by_index.keys().copied().collect::<Vec<_>>() != expected {
        return invalid(format!(
            "partitions must be numbered consecutively from {first_partition}"
        ));
    }
    let mut result = Vec::with_capacity(by_index.len());
    let mut rf = None;
    for (index, replicas) in by_index {
        if replicas.is_empty() {
            return invalid(format!("partition {index} has no replicas"));
        }
        if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
            return invalid(format!("partition {index} lists a broker twice"));
        }
        if *rf.get_or_insert(replicas.len()) != replicas.len() {
            return invalid("all partitions must have the same number of replicas".into());
        }
        if let Some(unknown) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
            return invalid(format!(
                "partition {index} is assigned to unregistered broker {unknown}"
            ));
        }
        if !replicas.iter().any(|b| image.is_live(*b)) {
            return invalid(format!(
                "all brokers assigned to partition {index} are fenced"
            ));
        }
        result.push(replicas.clone());
    }
    Ok(result)
}

/// The initial state of a partition with these replicas: in sync are the live ones, the leader
/// is the first of those (the preferred leader when it is live).
pub fn new_partition(image: &MetadataImage, index: i32, replicas: Vec<i32>) -> PartitionInfo {
    let isr: Vec<i32> = replicas
        .iter()
        .copied()
        .filter(|b| image.is_live(*b))
        .collect();
    PartitionInfo {
        index,
        leader: isr.first().copied().unwrap_or(-1),
        leader_epoch: 0,
        isr,
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::image::BrokerInfo;

    fn image_with(brokers: &[(i32, bool)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (id, fenced) in brokers {
            image.brokers.insert(
                *id,
                BrokerInfo {
                    id: *id,
                    host: "h".into(),
                    port: 1,
                    rack: None,
                    rpc: None,
                    incarnation: 1,
                    fenced: *fenced,
                },
            );
        }
        image
    }

    #[test]
    fn spreads_leaders_and_replicas_evenly() {
        let image = image_with(&[(1, false), (2, false), (3, false)]);
        let assignment = assign(&image, 0, 12, 3, None).unwrap();
        assert_eq!(assignment.len(), 12);
        let mut leaders = BTreeMap::new();
        for replicas in &assignment {
            assert_eq!(replicas.len(), 3);
            assert_eq!(replicas.iter().collect::<BTreeSet<_>>().len(), 3);
            *leaders.entry(replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
        // Kafka's shifted followers: the first three partitions start at 1, 2, 3 with shift 1.
        assert_eq!(assignment[0], vec![1, 2, 3]);
        assert_eq!(assignment[1], vec![2, 3, 1]);
        assert_eq!(assignment[3], vec![1, 3, 2]);
    }

    #[test]
    fn five_brokers_rf_two() {
        let image = image_with(&[(1, false), (2, false), (3, false), (4, false), (5, false)]);
        let assignment = assign(&image, 0, 10, 2, None).unwrap();
        let mut replica_count = BTreeMap::new();
        for replicas in &assignment {
            assert_ne!(replicas[0], replicas[1]);
            for b in replicas {
                *replica_count.entry(*b).or_insert(0) += 1;
            }
        }
        assert!(replica_count.values().all(|c| *c == 4));
    }

    #[test]
    fn skips_fenced_brokers_and_rejects_large_rf() {
        let image = image_with(&[(1, false), (2, true), (3, false)]);
        let assignment = assign(&image, 0, 4, 2, None).unwrap();
        assert!(assignment.iter().flatten().all(|b| *b != 2));
        let err = assign(&image, 0, 1, 3, None).unwrap_err();
        assert!(matches!(err, ControlError::InvalidReplicationFactor(_)));
        let err = assign(&image, 0, 1, 0, None).unwrap_err();
        assert!(matches!(err, ControlError::InvalidReplicationFactor(_)));
    }

    #[test]
    fn start_moves_to_least_loaded_broker() {
        let mut image = image_with(&[(1, false), (2, false)]);
        let first = assign(&image, 0, 1, 1, None).unwrap();
        assert_eq!(first, vec![vec![1]]);
        image.topics.insert(
            "a".into(),
            std::sync::Arc::new(crate::control::image::TopicInfo {
                id: uuid::Uuid::from_u128(1),
                name: "a".into(),
                configs: Default::default(),
                partitions: vec![new_partition(&image, 0, vec![1])],
            }),
        );
        assert_eq!(assign(&image, 0, 1, 1, None).unwrap(), vec![vec![2]]);
        assert_eq!(assign(&image, 0, 1, 1, Some(1)).unwrap(), vec![vec![1]]);
    }

    #[test]
    fn explicit_assignment_rules() {
        let image = image_with(&[(1, false), (2, false), (3, true)]);
        let ok = validate_explicit(&image, 0, &[(1, vec![2, 1]), (0, vec![1, 2])]).unwrap();
        assert_eq!(ok, vec![vec![1, 2], vec![2, 1]]);
        for bad in [
            vec![(0, vec![1]), (0, vec![2])],
            vec![(1, vec![1])],
            vec![(0, vec![])],
            vec![(0, vec![1, 1])],
            vec![(0, vec![1]), (1, vec![1, 2])],
            vec![(0, vec![9])],
            vec![(0, vec![3])],
        ] {
            let err = validate_explicit(&image, 0, &bad).unwrap_err();
            assert!(
                matches!(err, ControlError::InvalidReplicaAssignment(_)),
                "{bad:?}"
            );
        }
        assert!(validate_explicit(&image, 2, &[(2, vec![1])]).is_ok());
    }

    #[test]
    fn new_partition_leads_with_first_live_replica() {
        let image = image_with(&[(1, true), (2, false), (3, false)]);
        let partition = new_partition(&image, 0, vec![1, 2, 3]);
        assert_eq!(partition.leader, 2);
        assert_eq!(partition.isr, vec![2, 3]);
        assert_eq!(partition.leader_epoch, 0);
    }
}
