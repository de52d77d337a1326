//! The metadata state machine: `apply(image, index, command)` returns the next image and what
//! the command did. Pure and deterministic (every node applies the same log to the same image),
//! and a command that no longer fits the image (a topic created twice by racing proposals, a
//! stale partition change) is rejected with a typed error, never dropped silently: the image
//! is then unchanged apart from its version.

use std::sync::Arc;

use uuid::Uuid;

use super::assignment;
use super::command::{ChangeBasis, Command};
use super::error::ControlError;
use super::image::{BrokerInfo, MetadataImage, PartitionInfo, TopicInfo};
use super::isr_change;
use super::producer_ids::{self, ProducerIdBlock};
use super::topic_config;
use super::topic_name;

/// What an applied command did, for the proposer's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    TopicCreated(Arc<TopicInfo>),
    TopicDeleted(Uuid),
    ProducerIds(ProducerIdBlock),
}

/// Applies `command`, committed at Raft `index`, to `image`.
pub fn apply(
    image: &MetadataImage,
    index: u64,
    command: &Command,
) -> (MetadataImage, Result<Outcome, ControlError>) {
    let mut next = image.clone();
    next.version = index;
    match apply_to(&mut next, command) {
        Ok(outcome) => (next, Ok(outcome)),
        Err(error) => {
            let mut unchanged = image.clone();
            unchanged.version = index;
            (unchanged, Err(error))
        }
    }
}

fn apply_to(image: &mut MetadataImage, command: &Command) -> Result<Outcome, ControlError> {
    match command {
        Command::InitCluster { cluster_id } => {
            if !image.cluster_id.is_empty() {
                return Err(ControlError::InvalidRequest(format!(
                    "cluster id already set to {}",
                    image.cluster_id
                )));
            }
            if cluster_id.is_empty() {
                return Err(ControlError::InvalidRequest("empty cluster id".into()));
            }
            image.cluster_id = cluster_id.clone();
        }
        Command::RegisterBroker {
            id,
            host,
            port,
            rack,
            rpc,
            incarnation,
        } => {
            let previous = image.brokers.get(id).map(|b| b.incarnation);
            if previous.is_some_and(|p| p != *incarnation) {
                // The broker restarted: its previous life's leaderships and ISR memberships end.
                fence_in_place(image, *id, true);
            }
            image.brokers.insert(
                *id,
                BrokerInfo {
                    id: *id,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    rpc: *rpc,
                    incarnation: *incarnation,
                    fenced: false,
                },
            );
            restore_offline(image, *id);
        }
        Command::FenceBroker { id, incarnation } => {
            check_incarnation(image, *id, *incarnation)?;
            fence_in_place(image, *id, false);
        }
        Command::UnfenceBroker { id, incarnation } => {
            check_incarnation(image, *id, *incarnation)?;
            if let Some(broker) = image.brokers.get_mut(id) {
                broker.fenced = false;
            }
            restore_offline(image, *id);
        }
        Command::CreateTopic {
            id,
            name,
            configs,
            assignment,
        } => {
            topic_name::validate(name)?;
            if image.topics.contains_key(name) {
                return Err(ControlError::TopicAlreadyExists(format!(
                    "topic {name:?} already exists"
                )));
            }
            if let Some(other) = image
                .topics
                .keys()
                .find(|other| topic_name::collides(name, other))
            {
                return Err(ControlError::InvalidTopic(format!(
                    "topic {name:?} collides with existing topic {other:?}"
                )));
            }
            if image.topic_by_id(*id).is_some() {
                return Err(ControlError::Internal(format!(
                    "topic id {id} is already in use"
                )));
            }
            if assignment.is_empty() {
                return Err(ControlError::InvalidPartitions(
                    "a topic needs at least one partition".into(),
                ));
            }
            for (name, value) in configs {
                topic_config::validate(name, value)?;
            }
            check_registered(image, assignment)?;
            let partitions = assignment
                .iter()
                .enumerate()
                .map(|(index, replicas)| {
                    assignment::new_partition(image, index as i32, replicas.clone())
                })
                .collect();
            let topic = Arc::new(TopicInfo {
                id: *id,
                name: name.clone(),
                configs: configs.clone(),
                partitions,
            });
            image.topics.insert(name.clone(), topic.clone());
            return Ok(Outcome::TopicCreated(topic));
        }
        Command::DeleteTopic { id, name } => {
            match image.topics.get(name) {
                Some(topic) if topic.id == *id => {}
                _ => {
                    return Err(ControlError::UnknownTopic(format!(
                        "topic {name:?} with id {id} does not exist"
                    )))
                }
            }
            image.topics.remove(name);
            return Ok(Outcome::TopicDeleted(*id));
        }
        Command::CreatePartitions {
            topic,
            first_index,
            assignment,
        } => {
            let current = image.topics.get(topic).ok_or_else(|| {
                ControlError::UnknownTopic(format!("topic {topic:?} does not exist"))
            })?;
            if *first_index as usize != current.partitions.len() {
                return Err(ControlError::InvalidPartitions(format!(
                    "topic {topic:?} has {} partitions now, not {first_index}",
                    current.partitions.len()
                )));
            }
            check_registered(image, assignment)?;
            let mut updated = TopicInfo::clone(current);
            for (offset, replicas) in assignment.iter().enumerate() {
                let index = *first_index + offset as i32;
                updated
                    .partitions
                    .push(assignment::new_partition(image, index, replicas.clone()));
            }
            image.topics.insert(topic.clone(), Arc::new(updated));
        }
        Command::AlterTopicConfigs { topic, ops } => {
            let current = image.topics.get(topic).ok_or_else(|| {
                ControlError::UnknownTopic(format!("topic {topic:?} does not exist"))
            })?;
            let configs = topic_config::apply_ops(&current.configs, ops)?;
            let mut updated = TopicInfo::clone(current);
            updated.configs = configs;
            image.topics.insert(topic.clone(), Arc::new(updated));
        }
        Command::ChangePartition {
            topic,
            partition,
            leader_epoch,
            leader,
            isr,
            basis,
        } => {
            change_partition(
                image,
                topic,
                *partition,
                *leader_epoch,
                *leader,
                isr.as_deref(),
                basis.as_ref(),
            )?;
        }
        Command::AllocateProducerIds {
            broker_id,
            incarnation,
            size,
        } => {
            let block = producer_ids::allocate(image, *broker_id, *incarnation, *size)?;
            return Ok(Outcome::ProducerIds(block));
        }
    }
    Ok(Outcome::Done)
}

fn check_incarnation(image: &MetadataImage, id: i32, incarnation: u64) -> Result<(), ControlError> {
    match image.brokers.get(&id) {
        Some(broker) if broker.incarnation == incarnation => Ok(()),
        Some(broker) => Err(ControlError::InvalidRequest(format!(
            "broker {id} incarnation {incarnation} is stale (current {})",
            broker.incarnation
        ))),
        None => Err(ControlError::InvalidRequest(format!(
            "broker {id} is not registered"
        ))),
    }
}

fn check_registered(image: &MetadataImage, assignment: &[Vec<i32>]) -> Result<(), ControlError> {
    for replicas in assignment {
        if replicas.is_empty() {
            return Err(ControlError::InvalidReplicaAssignment(
                "a partition has no replicas".into(),
            ));
        }
        if let Some(unknown) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
            return Err(ControlError::InvalidReplicaAssignment(format!(
                "broker {unknown} is not registered"
            )));
        }
    }
    Ok(())
}

/// Applies `edit` to every partition of every topic, replacing only the topics it changed.
fn edit_partitions(
    image: &mut MetadataImage,
    mut edit: impl FnMut(&TopicInfo, &mut PartitionInfo) -> bool,
) {
    let mut changed = Vec::new();
    for (name, topic) in &image.topics {
        let mut updated: Option<TopicInfo> = None;
        for i in 0..topic.partitions.len() {
            let mut partition = topic.partitions[i].clone();
            if edit(topic, &mut partition) {
                updated
                    .get_or_insert_with(|| TopicInfo::clone(topic))
                    .partitions[i] = partition;
            }
        }
        if let Some(updated) = updated {
            changed.push((name.clone(), Arc::new(updated)));
        }
    }
    image.topics.extend(changed);
}

/// Fences broker `id`: it leaves every ISR where others remain, and each partition it led gets
/// the first live ISR member as leader (an out-of-sync live replica only with unclean election
/// enabled), else goes offline (-1). `rejoining`: the broker re-registers right away with a new
/// incarnation, so where no other ISR member is alive it keeps leadership in a new epoch.
///
/// A rejoining broker stays in the ISR of the partitions whose topic acknowledges only what is
/// fsynced (`flush=always`, the default): it acknowledged nothing it had not made durable, so
/// after a crash it still holds everything the high watermark covers, and it is as fit a leader
/// as before (it keeps the leadership it had, in a new epoch). Removing it instead would, after a
/// power cut of the whole cluster, hand each partition to whichever broker registers last, and
/// leave it offline while that broker stays away (issue 14 item 7). Under `flush.ms`/`never` it
/// may have lost acknowledged records in the crash, so it leaves the ISR and catches up first.
fn fence_in_place(image: &mut MetadataImage, id: i32, rejoining: bool) {
    if let Some(broker) = image.brokers.get_mut(&id) {
        broker.fenced = true;
    }
    let live: Vec<i32> = image.live_brokers().map(|b| b.id).collect();
    edit_partitions(image, |topic, partition| {
        if !partition.replicas.contains(&id) {
            return false;
        }
        if rejoining
            && partition.isr.contains(&id)
            && topic_config::acknowledges_only_durable(topic)
        {
            if partition.leader == id {
                partition.leader_epoch += 1;
                return true;
            }
            return false;
        }
        let mut changed = false;
        if partition.isr.contains(&id) && partition.isr.len() > 1 {
            partition.isr.retain(|b| *b != id);
            changed = true;
        }
        if partition.leader == id {
            let next = partition
                .isr
                .iter()
                .copied()
                .find(|b| *b != id && live.contains(b));
            partition.leader = match next {
                Some(leader) => leader,
                None if rejoining => id,
                None if topic_config::unclean_leader_election(topic) => {
                    match partition
                        .replicas
                        .iter()
                        .copied()
                        .find(|b| *b != id && live.contains(b))
                    {
                        Some(leader) => {
                            partition.isr = vec![leader];
                            leader
                        }
                        None => -1,
                    }
                }
                None => -1,
            };
            partition.leader_epoch += 1;
            changed = true;
        }
        changed
    });
}

/// Offline partitions whose ISR holds broker `id` (now live) get it back as leader.
fn restore_offline(image: &mut MetadataImage, id: i32) {
    edit_partitions(image, |_, partition| {
        if partition.leader == -1 && partition.isr.contains(&id) {
            partition.leader = id;
            partition.leader_epoch += 1;
            true
        } else {
            false
        }
    });
}

fn change_partition(
    image: &mut MetadataImage,
    topic: &str,
    index: i32,
    leader_epoch: i32,
    leader: Option<i32>,
    isr: Option<&[i32]>,
    basis: Option<&ChangeBasis>,
) -> Result<(), ControlError> {
    let current = image
        .topics
        .get(topic)
        .ok_or_else(|| ControlError::UnknownTopic(format!("topic {topic:?} does not exist")))?;
    let position = usize::try_from(index)
        .ok()
        .filter(|i| *i < current.partitions.len())
        .ok_or_else(|| {
            ControlError::UnknownTopic(format!("partition {topic}-{index} does not exist"))
        })?;
    let mut partition = current.partitions[position].clone();
    if partition.leader_epoch != leader_epoch {
        return Err(ControlError::StaleLeaderEpoch(format!(
            "partition {topic}-{index}: change based on leader epoch {leader_epoch}, current {}",
            partition.leader_epoch
        )));
    }
    if let Some(basis) = basis {
        let name = format!("{topic}-{index}");
        isr_change::check(image, &name, &partition, isr, leader, basis)?;
    }
    if let Some(isr) = isr {
        if isr.iter().any(|b| !partition.replicas.contains(b)) {
            return Err(ControlError::InvalidRequest(format!(
                "partition {topic}-{index}: ISR {isr:?} not within replicas"
            )));
        }
        partition.isr = isr.to_vec();
    }
    if let Some(leader) = leader {
        if leader != -1 && (!partition.isr.contains(&leader) || !image.is_live(leader)) {
            return Err(ControlError::InvalidRequest(format!(
                "partition {topic}-{index}: leader {leader} is not a live in-sync replica"
            )));
        }
        if leader != partition.leader {
            partition.leader = leader;
            partition.leader_epoch += 1;
        }
    }
    if partition.leader != -1 && !partition.isr.contains(&partition.leader) {
        return Err(ControlError::InvalidRequest(format!(
            "partition {topic}-{index}: the ISR must contain the leader {}",
            partition.leader
        )));
    }
    let mut updated = TopicInfo::clone(current);
    updated.partitions[position] = partition;
    image.topics.insert(topic.to_string(), Arc::new(updated));
    Ok(())
}

#[cfg(test)]
#[path = "state_machine_restarts.rs"]
mod restart_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::test_commands::register;

    /// Applies commands in order, asserting each succeeds.
    fn run(commands: &[Command]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (i, command) in commands.iter().enumerate() {
            let (next, result) = apply(&image, i as u64 + 1, command);
            result.unwrap();
            image = next;
        }
        image
    }

    fn create(name: &str, id: u128, assignment: Vec<Vec<i32>>) -> Command {
        Command::CreateTopic {
            id: Uuid::from_u128(id),
            name: name.into(),
            configs: Default::default(),
            assignment,
        }
    }

    fn three_brokers_and_topic() -> MetadataImage {
        run(&[
            register(1, 1),
            register(2, 1),
            register(3, 1),
            create("t", 1, vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]),
        ])
    }

    #[test]
    fn deterministic() {
        assert_eq!(three_brokers_and_topic(), three_brokers_and_topic());
    }

    #[test]
    fn create_topic_sets_leaders_and_isr() {
        let image = three_brokers_and_topic();
        assert_eq!(image.version, 4);
        let topic = &image.topics["t"];
        assert_eq!(
            topic
                .partitions
                .iter()
                .map(|p| p.leader)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(topic
            .partitions
            .iter()
            .all(|p| p.isr.len() == 3 && p.leader_epoch == 0));
    }

    #[test]
    fn rejects_duplicates_without_changing_the_image() {
        let image = three_brokers_and_topic();
        for (command, code) in [
            (create("t", 2, vec![vec![1]]), 36),
            (create("t_x", 1, vec![vec![1]]), -1),
            (create("bad name", 3, vec![vec![1]]), 17),
            (create("u", 3, vec![]), 37),
            (create("u", 3, vec![vec![9]]), 39),
        ] {
            let (next, result) = apply(&image, 10, &command);
            assert_eq!(result.unwrap_err().code().code(), code, "{command:?}");
            assert_eq!(next.version, 10);
            assert_eq!(next.topics, image.topics);
        }
        let image = run(&[register(1, 1), create("a.b", 1, vec![vec![1]])]);
        let (_, result) = apply(&image, 3, &create("a_b", 2, vec![vec![1]]));
        assert!(matches!(result, Err(ControlError::InvalidTopic(_))));
    }

    #[test]
    fn fence_moves_leadership_to_isr_and_bumps_epoch_once() {
        let image = three_brokers_and_topic();
        let (image, result) = apply(
            &image,
            5,
            &Command::FenceBroker {
                id: 1,
                incarnation: 1,
            },
        );
        result.unwrap();
        assert!(image.brokers[&1].fenced);
        let p0 = &image.topics["t"].partitions[0];
        assert_eq!((p0.leader, p0.leader_epoch), (2, 1));
        assert_eq!(p0.isr, vec![2, 3]);
        let p1 = &image.topics["t"].partitions[1];
        assert_eq!((p1.leader, p1.leader_epoch), (2, 0));
        assert_eq!(p1.isr, vec![2, 3]);
        // Stale incarnation is rejected.
        let (_, result) = apply(
            &image,
            6,
            &Command::FenceBroker {
                id: 2,
                incarnation: 7,
            },
        );
        assert!(result.is_err());
    }

    #[test]
    fn last_isr_member_fenced_goes_offline_then_returns() {
        let image = run(&[
            register(1, 1),
            register(2, 1),
            create("t", 1, vec![vec![1]]),
        ]);
        let (image, _) = apply(
            &image,
            4,
            &Command::FenceBroker {
                id: 1,
                incarnation: 1,
            },
        );
        let p = &image.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (-1, 1, vec![1]));
        let (image, result) = apply(
            &image,
            5,
            &Command::UnfenceBroker {
                id: 1,
                incarnation: 1,
            },
        );
        result.unwrap();
        let p = &image.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 2));
    }

    #[test]
    fn unclean_election_only_when_enabled() {
        let mut image = run(&[register(1, 1), register(2, 1)]);
        let (next, r) = apply(&image, 3, &create("t", 1, vec![vec![1, 2]]));
        r.unwrap();
        image = next;
        // Shrink the ISR to [1], then enable unclean election and fence 1.
        let (next, r) = apply(
            &image,
            4,
            &Command::ChangePartition {
                topic: "t".into(),
                partition: 0,
                leader_epoch: 0,
                leader: None,
                isr: Some(vec![1]),
                basis: None,
            },
        );
        r.unwrap();
        let (clean, _) = apply(
            &next,
            5,
            &Command::FenceBroker {
                id: 1,
                incarnation: 1,
            },
        );
        assert_eq!(clean.topics["t"].partitions[0].leader, -1);
        let (unclean, r) = apply(
            &next,
            5,
            &Command::AlterTopicConfigs {
                topic: "t".into(),
                ops: vec![topic_config::ConfigOp::Set(
                    "unclean.leader.election.enable".into(),
                    "true".into(),
                )],
            },
        );
        r.unwrap();
        let (unclean, _) = apply(
            &unclean,
            6,
            &Command::FenceBroker {
                id: 1,
                incarnation: 1,
            },
        );
        let p = &unclean.topics["t"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn restart_with_new_incarnation_bumps_epoch_once() {
        let image = run(&[
            register(1, 1),
            create("t", 1, vec![vec![1]]),
            register(1, 2),
        ]);
        let p = &image.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 1));
        assert_eq!(image.brokers[&1].incarnation, 2);
        assert!(!image.brokers[&1].fenced);
        // Re-registering the same incarnation changes nothing.
        let (again, r) = apply(&image, 4, &register(1, 2));
        r.unwrap();
        assert_eq!(again.topics, image.topics);
    }

    #[test]
    fn delete_partitions_configs() {
        let image = three_brokers_and_topic();
        let (image, r) = apply(
            &image,
            5,
            &Command::CreatePartitions {
                topic: "t".into(),
                first_index: 3,
                assignment: vec![vec![1, 2, 3]],
            },
        );
        r.unwrap();
        assert_eq!(image.topics["t"].partitions.len(), 4);
        assert_eq!(image.topics["t"].partitions[3].index, 3);
        let (_, r) = apply(
            &image,
            6,
            &Command::CreatePartitions {
                topic: "t".into(),
                first_index: 3,
                assignment: vec![vec![1]],
            },
        );
        assert!(matches!(r, Err(ControlError::InvalidPartitions(_))));
        let (image, r) = apply(
            &image,
            6,
            &Command::AlterTopicConfigs {
                topic: "t".into(),
                ops: vec![topic_config::ConfigOp::Set(
                    "retention.ms".into(),
                    "10".into(),
                )],
            },
        );
        r.unwrap();
        assert_eq!(image.topics["t"].configs["retention.ms"], "10");
        let (_, r) = apply(
            &image,
            7,
            &Command::DeleteTopic {
                id: Uuid::from_u128(9),
                name: "t".into(),
            },
        );
        assert!(matches!(r, Err(ControlError::UnknownTopic(_))));
        let (image, r) = apply(
            &image,
            7,
            &Command::DeleteTopic {
                id: Uuid::from_u128(1),
                name: "t".into(),
            },
        );
        assert_eq!(r.unwrap(), Outcome::TopicDeleted(Uuid::from_u128(1)));
        assert!(image.topics.is_empty());
    }

    #[test]
    fn change_partition_checks_epoch_and_membership() {
        let image = three_brokers_and_topic();
        let change = |epoch, leader, isr: Option<Vec<i32>>| Command::ChangePartition {
            topic: "t".into(),
            partition: 0,
            leader_epoch: epoch,
            leader,
            isr,
            basis: None,
        };
        let (next, r) = apply(&image, 5, &change(0, Some(2), None));
        r.unwrap();
        let p = &next.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
        assert!(
            apply(&next, 6, &change(0, Some(3), None)).1.is_err(),
            "stale epoch"
        );
        assert!(
            apply(&next, 6, &change(1, None, Some(vec![1, 3])))
                .1
                .is_err(),
            "ISR without leader"
        );
        assert!(
            apply(&next, 6, &change(1, None, Some(vec![2, 7])))
                .1
                .is_err(),
            "ISR outside replicas"
        );
        let (next, r) = apply(&next, 6, &change(1, None, Some(vec![2])));
        r.unwrap();
        assert_eq!(next.topics["t"].partitions[0].isr, vec![2]);
        assert!(
            apply(&next, 7, &change(1, Some(1), None)).1.is_err(),
            "leader outside ISR"
        );
    }

    #[test]
    fn cluster_id_set_once() {
        let image = run(&[Command::InitCluster {
            cluster_id: "abc".into(),
        }]);
        let (next, r) = apply(
            &image,
            2,
            &Command::InitCluster {
                cluster_id: "def".into(),
            },
        );
        assert!(r.is_err());
        assert_eq!(next.cluster_id, "abc");
    }
}
