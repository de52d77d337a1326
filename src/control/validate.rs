//! Turns client requests into Raft commands on the controller: checks them against the current
//! image as Kafka does and fixes everything the state machine must not choose itself (topic ids,
//! replica assignments). A request that passes here can still be rejected at apply time when a
//! racing command got there first; the caller then gets that error.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::assignment;
use super::command::{ChangeBasis, Command};
use super::error::ControlError;
use super::image::MetadataImage;
use super::isr_change;
use super::topic_config::{self, ConfigOp};
use super::topic_name;
use super::{BrokerDefaults, NewTopic};

/// chronik's upper bound on partitions per topic, so that one request cannot exhaust memory.
pub const MAX_PARTITIONS: i32 = 100_000;
/// Partition replicas one broker may hold, all topics together (as Redpanda bounds partitions per
/// shard): a CreateTopics or CreatePartitions past it is refused, so that one request cannot make
/// a broker open (and a shard stall on) tens of thousands of logs. Ten thousand partitions at RF 3
/// on three brokers fit.
pub const MAX_REPLICAS_PER_BROKER: usize = 15_000;

/// Refuses an assignment that would take a broker past [`MAX_REPLICAS_PER_BROKER`].
fn check_broker_capacity(image: &MetadataImage, added: &[Vec<i32>]) -> Result<(), ControlError> {
    let mut held: std::collections::BTreeMap<i32, usize> = std::collections::BTreeMap::new();
    for replicas in added {
        for broker in replicas {
            *held.entry(*broker).or_default() += 1;
        }
    }
    if held.values().all(|&n| n <= MAX_REPLICAS_PER_BROKER) {
        // Only then is counting what the brokers hold already worth it.
        for partition in image.topics.values().flat_map(|t| t.partitions.iter()) {
            for broker in &partition.replicas {
                if let Some(n) = held.get_mut(broker) {
                    *n += 1;
                }
            }
        }
    }
    match held.iter().find(|(_, &n)| n > MAX_REPLICAS_PER_BROKER) {
        Some((broker, n)) => Err(ControlError::InvalidPartitions(format!(
            "broker {broker} would hold {n} partition replicas; a broker holds at most \
             {MAX_REPLICAS_PER_BROKER}"
        ))),
        None => Ok(()),
    }
}

/// Plans the creation of one topic: `id` is the new topic's id.
pub fn create_topic(
    image: &MetadataImage,
    topic: &NewTopic,
    defaults: &BrokerDefaults,
    id: Uuid,
) -> Result<Command, ControlError> {
    topic_name::validate(&topic.name)?;
    if image.topics.contains_key(&topic.name) {
        return Err(ControlError::TopicAlreadyExists(format!(
            "topic {:?} already exists",
            topic.name
        )));
    }
    if let Some(other) = image
        .topics
        .keys()
        .find(|other| topic_name::collides(&topic.name, other))
    {
        return Err(ControlError::InvalidTopic(format!(
            "topic {:?} collides with existing topic {other:?} ('.' and '_' are the same in metric names)",
            topic.name
        )));
    }
    let assignment = if topic.assignments.is_empty() {
        let partitions = match topic.num_partitions {
            -1 => defaults.num_partitions,
            n => n,
        };
        if partitions < 1 {
            return Err(ControlError::InvalidPartitions(
                "number of partitions must be larger than 0".into(),
            ));
        }
        if partitions > MAX_PARTITIONS {
            return Err(ControlError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS} partitions per topic"
            )));
        }
        let replication_factor = match topic.replication_factor {
            -1 => defaults.default_replication_factor,
            rf => rf,
        };
        assignment::assign(image, 0, partitions, replication_factor, None)?
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(ControlError::InvalidRequest(
                "both numPartitions or replicationFactor and replicasAssignments were set".into(),
            ));
        }
        if topic.assignments.len() > MAX_PARTITIONS as usize {
            return Err(ControlError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS} partitions per topic"
            )));
        }
        assignment::validate_explicit(image, 0, &topic.assignments)?
    };
    check_broker_capacity(image, &assignment)?;
    let configs = topic_config::validate_all(&topic.configs)?;
    Ok(Command::CreateTopic {
        id,
        name: topic.name.clone(),
        configs,
        assignment,
    })
}

/// Names that appear more than once in one CreateTopics request (Kafka answers each of them
/// with INVALID_REQUEST).
pub fn duplicate_names(topics: &[NewTopic]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    topics
        .iter()
        .filter(|t| !seen.insert(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect()
}

/// Plans a topic deletion.
pub fn delete_topic(image: &MetadataImage, name: &str) -> Result<Command, ControlError> {
    let topic = image
        .topics
        .get(name)
        .ok_or_else(|| ControlError::UnknownTopic(format!("topic {name:?} does not exist")))?;
    Ok(Command::DeleteTopic {
        id: topic.id,
        name: name.to_string(),
    })
}

/// Plans growing `name` to `total` partitions (Kafka never shrinks a topic).
pub fn create_partitions(
    image: &MetadataImage,
    name: &str,
    total: i32,
) -> Result<Command, ControlError> {
    let topic = image
        .topics
        .get(name)
        .ok_or_else(|| ControlError::UnknownTopic(format!("topic {name:?} does not exist")))?;
    let current = topic.partitions.len() as i32;
    if total <= current {
        return Err(ControlError::InvalidPartitions(format!(
            "topic currently has {current} partitions, {total} would not be an increase"
        )));
    }
    if total > MAX_PARTITIONS {
        return Err(ControlError::InvalidPartitions(format!(
            "at most {MAX_PARTITIONS} partitions per topic"
        )));
    }
    let replication_factor = topic.partitions.first().map_or(1, |p| p.replicas.len()) as i16;
    // Continue the rotation where the topic's own assignment started (Kafka does the same).
    let start = topic
        .partitions
        .first()
        .and_then(|p| p.replicas.first().copied());
    let assignment =
        assignment::assign(image, current, total - current, replication_factor, start)?;
    check_broker_capacity(image, &assignment)?;
    Ok(Command::CreatePartitions {
        topic: name.to_string(),
        first_index: current,
        assignment,
    })
}

/// Plans an IncrementalAlterConfigs on a topic: the operations are applied by the state machine
/// (so racing changes compose), and checked here against the current configs first.
pub fn alter_topic_configs(
    image: &MetadataImage,
    name: &str,
    ops: Vec<ConfigOp>,
) -> Result<Command, ControlError> {
    let topic = image
        .topics
        .get(name)
        .ok_or_else(|| ControlError::UnknownTopic(format!("topic {name:?} does not exist")))?;
    topic_config::apply_ops(&topic.configs, &ops)?;
    Ok(Command::AlterTopicConfigs {
        topic: name.to_string(),
        ops,
    })
}

/// Plans an ISR change asked for by a partition's leader (Kafka's AlterPartition). `basis` is
/// what the leader decided on (its ISR, the incarnations of the followers it adds); without one
/// (a leader of an older build) the controller's image stands in for it. Either way the command
/// carries it, and the state machine checks it again when it applies the change
/// (`isr_change`): liveness now is no proof of liveness then.
pub fn alter_partition_isr(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    leader_epoch: i32,
    isr: Vec<i32>,
    basis: Option<ChangeBasis>,
) -> Result<Command, ControlError> {
    let current = image.partition(topic, partition).ok_or_else(|| {
        ControlError::UnknownTopic(format!("partition {topic}-{partition} does not exist"))
    })?;
    if current.leader_epoch != leader_epoch {
        return Err(ControlError::StaleLeaderEpoch(format!(
            "partition {topic}-{partition} is in leader epoch {}, not {leader_epoch}",
            current.leader_epoch
        )));
    }
    if !isr.contains(&current.leader) {
        return Err(ControlError::InvalidRequest(format!(
            "the ISR of {topic}-{partition} must contain its leader {}",
            current.leader
        )));
    }
    let mut sorted = isr.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != isr.len() {
        return Err(ControlError::InvalidRequest(format!(
            "the ISR {isr:?} lists a broker twice"
        )));
    }
    if let Some(bad) = isr
        .iter()
        .find(|b| !current.replicas.contains(b) || !image.is_live(**b))
    {
        return Err(ControlError::IneligibleReplica(format!(
            "broker {bad} cannot be in the ISR of {topic}-{partition}: not a live replica"
        )));
    }
    let basis =
        basis.unwrap_or_else(|| isr_change::basis_from_image(image, current, Some(&isr), None));
    let name = format!("{topic}-{partition}");
    isr_change::check(image, &name, current, Some(&isr), None, &basis)?;
    Ok(Command::ChangePartition {
        topic: topic.to_string(),
        partition,
        leader_epoch,
        leader: None,
        isr: Some(isr),
        basis: Some(basis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state_machine;

    fn image(brokers: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=brokers {
            let (next, r) = state_machine::apply(
                &image,
                id as u64,
                &Command::RegisterBroker {
                    id,
                    host: "h".into(),
                    port: 1,
                    rack: None,
                    rpc: None,
                    incarnation: 1,
                },
            );
            r.unwrap();
            image = next;
        }
        image
    }

    fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: vec![],
        }
    }

    fn code(result: Result<Command, ControlError>) -> i16 {
        result.unwrap_err().code().code()
    }

    /// The fuzzer's CreatePartitions grew a topic to ~30,000 partitions and a shard stalled for
    /// seconds opening and deleting 16,000 logs: a broker's replica count is bounded.
    #[test]
    fn a_broker_holds_at_most_max_replicas_per_broker() {
        let mut image = image(3);
        let d = BrokerDefaults::default();
        let per_broker = MAX_REPLICAS_PER_BROKER as i32;
        // Ten thousand partitions at RF 3 on three brokers fit.
        let command = create_topic(&image, &new_topic("a", 10_000, 3), &d, Uuid::from_u128(1));
        let (next, applied) = state_machine::apply(&image, 100, &command.unwrap());
        applied.unwrap();
        image = next;
        let room = per_broker - 10_000;
        assert_eq!(
            code(create_topic(
                &image,
                &new_topic("b", room + 1, 3),
                &d,
                Uuid::from_u128(2)
            )),
            37
        );
        assert!(create_topic(&image, &new_topic("b", room, 3), &d, Uuid::from_u128(2)).is_ok());
        assert_eq!(code(create_partitions(&image, "a", 10_000 + room + 1)), 37);
        assert!(create_partitions(&image, "a", 10_000 + room).is_ok());
    }

    #[test]
    fn create_topic_rules() {
        let image = image(3);
        let d = BrokerDefaults::default();
        let id = Uuid::from_u128(1);
        match create_topic(&image, &new_topic("t", -1, -1), &d, id).unwrap() {
            Command::CreateTopic { assignment, .. } => assert_eq!(assignment, vec![vec![1]]),
            other => panic!("{other:?}"),
        }
        match create_topic(&image, &new_topic("t", 6, 3), &d, id).unwrap() {
            Command::CreateTopic { assignment, .. } => {
                assert_eq!(assignment.len(), 6);
                assert!(assignment.iter().all(|r| r.len() == 3));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(create_topic(&image, &new_topic("t", 0, 1), &d, id)),
            37
        );
        assert_eq!(
            code(create_topic(&image, &new_topic("t", -2, 1), &d, id)),
            37
        );
        assert_eq!(
            code(create_topic(&image, &new_topic("t", 1, 4), &d, id)),
            38
        );
        assert_eq!(
            code(create_topic(&image, &new_topic("t", 1, 0), &d, id)),
            38
        );
        assert_eq!(
            code(create_topic(&image, &new_topic("a b", 1, 1), &d, id)),
            17
        );
        let mut with_config = new_topic("t", 1, 1);
        with_config.configs = vec![("retention.ms".into(), Some("nope".into()))];
        assert_eq!(code(create_topic(&image, &with_config, &d, id)), 40);
        let mut explicit = new_topic("t", 2, -1);
        explicit.assignments = vec![(0, vec![1])];
        assert_eq!(code(create_topic(&image, &explicit, &d, id)), 42);
        explicit.num_partitions = -1;
        assert!(create_topic(&image, &explicit, &d, id).is_ok());
        explicit.assignments = vec![(0, vec![7])];
        assert_eq!(code(create_topic(&image, &explicit, &d, id)), 39);
    }

    #[test]
    fn existing_topics() {
        let d = BrokerDefaults::default();
        let mut image = image(1);
        let command =
            create_topic(&image, &new_topic("a.b", 2, 1), &d, Uuid::from_u128(1)).unwrap();
        let (next, r) = state_machine::apply(&image, 10, &command);
        r.unwrap();
        image = next;
        assert_eq!(
            code(create_topic(
                &image,
                &new_topic("a.b", 1, 1),
                &d,
                Uuid::from_u128(2)
            )),
            36
        );
        assert_eq!(
            code(create_topic(
                &image,
                &new_topic("a_b", 1, 1),
                &d,
                Uuid::from_u128(2)
            )),
            17
        );
        assert_eq!(code(delete_topic(&image, "zz")), 3);
        assert!(matches!(
            delete_topic(&image, "a.b").unwrap(),
            Command::DeleteTopic { .. }
        ));
        assert_eq!(code(create_partitions(&image, "a.b", 2)), 37);
        assert_eq!(code(create_partitions(&image, "zz", 3)), 3);
        match create_partitions(&image, "a.b", 4).unwrap() {
            Command::CreatePartitions {
                first_index,
                assignment,
                ..
            } => {
                assert_eq!(first_index, 2);
                assert_eq!(assignment, vec![vec![1], vec![1]]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(alter_topic_configs(
                &image,
                "a.b",
                vec![ConfigOp::Set("bogus".into(), "1".into())]
            )),
            40
        );
        assert_eq!(code(alter_topic_configs(&image, "zz", vec![])), 3);
    }

    #[test]
    fn isr_changes() {
        let d = BrokerDefaults::default();
        let mut image = image(3);
        let command = create_topic(&image, &new_topic("t", 1, 3), &d, Uuid::from_u128(1)).unwrap();
        let (next, r) = state_machine::apply(&image, 10, &command);
        r.unwrap();
        image = next;
        let leader = image.topics["t"].partitions[0].leader;
        let follower = image.topics["t"].partitions[0].replicas[1];
        let shrink = alter_partition_isr(&image, "t", 0, 0, vec![leader], None).unwrap();
        let (shrunk, r) = state_machine::apply(&image, 11, &shrink);
        r.unwrap();
        assert_eq!(shrunk.topics["t"].partitions[0].isr, vec![leader]);
        assert_eq!(shrunk.topics["t"].partitions[0].leader_epoch, 0);
        assert!(alter_partition_isr(&shrunk, "t", 0, 0, vec![leader, follower], None).is_ok());
        assert_eq!(
            code(alter_partition_isr(&image, "t", 0, 1, vec![leader], None)),
            74
        );
        assert_eq!(
            code(alter_partition_isr(&image, "t", 0, 0, vec![follower], None)),
            42
        );
        assert_eq!(
            code(alter_partition_isr(
                &image,
                "t",
                0,
                0,
                vec![leader, 9],
                None
            )),
            107
        );
        assert_eq!(
            code(alter_partition_isr(
                &image,
                "t",
                0,
                0,
                vec![leader, leader],
                None
            )),
            42
        );
        assert_eq!(
            code(alter_partition_isr(&image, "t", 1, 0, vec![leader], None)),
            3
        );
        let (fenced, r) = state_machine::apply(
            &shrunk,
            12,
            &Command::FenceBroker {
                id: follower,
                incarnation: 1,
            },
        );
        r.unwrap();
        assert_eq!(
            code(alter_partition_isr(
                &fenced,
                "t",
                0,
                0,
                vec![leader, follower],
                None
            )),
            107
        );
    }

    #[test]
    fn duplicates_in_one_request() {
        let topics = vec![
            new_topic("a", 1, 1),
            new_topic("b", 1, 1),
            new_topic("a", 1, 1),
        ];
        assert_eq!(duplicate_names(&topics), ["a".to_string()].into());
    }
}
