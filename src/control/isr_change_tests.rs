//! ISR and leader changes racing with fencing and restarts, at the state-machine level (issue 14
//! item 3): a change is planned against one image and applied against a later one, in which the
//! brokers it names may have been fenced or restarted, or the ISR it was decided on may have
//! changed. Each test plans on the controller (`validate`) or as `node` does, lets a racing
//! command commit first, and then applies the planned change.

use uuid::Uuid;

use crate::control::command::{ChangeBasis, Command, Envelope};
use crate::control::error::ControlError;
use crate::control::image::{MetadataImage, PartitionInfo};
use crate::control::isr_change;
use crate::control::state_machine::apply;
use crate::control::test_commands::{fence, register, run};
use crate::control::validate;

/// Applies `command` to `image`: the next image and the command's result.
fn try_apply(
    image: &MetadataImage,
    command: &Command,
) -> (MetadataImage, Result<(), ControlError>) {
    let (next, result) = apply(image, image.version + 1, command);
    (next, result.map(|_| ()))
}

fn p0(image: &MetadataImage) -> &PartitionInfo {
    &image.topics["t"].partitions[0]
}

/// Brokers 1-3 (incarnation 1), topic `t` with one partition on [1, 2, 3] (leader 1) whose ISR
/// is `isr`, under `flush` (`always`, the default, or `never`).
fn cluster(isr: &[i32], flush: &str) -> MetadataImage {
    let image = run(
        &MetadataImage::default(),
        &[
            register(1, 1),
            register(2, 1),
            register(3, 1),
            Command::CreateTopic {
                id: Uuid::from_u128(7),
                name: "t".into(),
                configs: [("chronik.flush.policy".to_string(), flush.to_string())].into(),
                assignment: vec![vec![1, 2, 3]],
            },
        ],
    );
    if isr.len() == 3 {
        return image;
    }
    let shrink = validate::alter_partition_isr(&image, "t", 0, 0, isr.to_vec(), None).unwrap();
    run(&image, &[shrink])
}

#[test]
fn an_expansion_planned_before_a_fence_leaves_the_fenced_broker_out() {
    let image = cluster(&[1, 2], "always");
    let expand = validate::alter_partition_isr(&image, "t", 0, 0, vec![1, 2, 3], None).unwrap();
    // Broker 3's session expires before the expansion commits.
    let fenced = run(&image, &[fence(3, 1)]);
    let (after, result) = try_apply(&fenced, &expand);
    assert!(
        matches!(result, Err(ControlError::IneligibleReplica(_))),
        "{result:?}"
    );
    assert_eq!(p0(&after).isr, vec![1, 2], "a fenced broker joined the ISR");
}

#[test]
fn an_expansion_planned_before_a_restart_is_refused() {
    // Broker 3 caught up in its previous life; it restarts (flush=never: it may have lost
    // what it acknowledged) before the expansion that credits that life commits.
    let image = cluster(&[1, 2], "never");
    let expand = validate::alter_partition_isr(&image, "t", 0, 0, vec![1, 2, 3], None).unwrap();
    let restarted = run(&image, &[register(3, 2)]);
    let (after, result) = try_apply(&restarted, &expand);
    assert!(
        matches!(result, Err(ControlError::IneligibleReplica(_))),
        "{result:?}"
    );
    assert_eq!(
        p0(&after).isr,
        vec![1, 2],
        "a restarted broker joined on old credit"
    );
}

#[test]
fn a_shrink_planned_before_a_fence_does_not_bring_the_fenced_broker_back() {
    // The leader decides to drop lagging broker 3 from [1, 2, 3]; broker 2 is fenced first.
    let image = cluster(&[1, 2, 3], "always");
    let shrink = validate::alter_partition_isr(&image, "t", 0, 0, vec![1, 2], None).unwrap();
    let fenced = run(&image, &[fence(2, 1)]);
    assert_eq!(p0(&fenced).isr, vec![1, 3]);
    let (after, result) = try_apply(&fenced, &shrink);
    assert!(
        result.is_err(),
        "a change decided on an ISR that moved on: {result:?}"
    );
    assert_eq!(
        p0(&after).isr,
        vec![1, 3],
        "fenced broker 2 is back in the ISR"
    );
}

#[test]
fn a_leader_change_planned_before_the_new_leader_restarts_is_refused() {
    // The controller moves leadership to preferred replica 2; broker 2 restarts before the
    // change commits (it stays in the ISR: flush=always, it lost nothing acknowledged).
    let mut image = cluster(&[1, 2, 3], "always");
    let mut topic = crate::control::image::TopicInfo::clone(&image.topics["t"]);
    topic.partitions[0].replicas = vec![2, 1, 3];
    image.topics.insert("t".into(), std::sync::Arc::new(topic));
    let elect = Command::ChangePartition {
        topic: "t".into(),
        partition: 0,
        leader_epoch: 0,
        leader: Some(2),
        isr: None,
        basis: Some(isr_change::basis_from_image(
            &image,
            p0(&image),
            None,
            Some(2),
        )),
    };
    let restarted = run(&image, &[register(2, 2)]);
    let (after, result) = try_apply(&restarted, &elect);
    assert!(
        matches!(result, Err(ControlError::IneligibleReplica(_))),
        "{result:?}"
    );
    assert_eq!(p0(&after).leader, 1);
}

#[test]
fn the_leaders_basis_is_checked_when_planned_and_when_applied() {
    let image = cluster(&[1, 2], "always");
    // The leader saw ISR [1, 2] and credited broker 3 in incarnation 1.
    let basis = |isr: Vec<i32>, incarnation| ChangeBasis {
        isr,
        incarnations: [(3, incarnation)].into(),
    };
    let plan = |basis| validate::alter_partition_isr(&image, "t", 0, 0, vec![1, 2, 3], Some(basis));
    assert!(matches!(
        plan(basis(vec![1, 2, 3], 1)),
        Err(ControlError::StaleLeaderEpoch(_))
    ));
    assert!(matches!(
        plan(basis(vec![2, 1], 7)),
        Err(ControlError::IneligibleReplica(_))
    ));
    let expand = plan(basis(vec![2, 1], 1)).unwrap();
    let after = run(&image, std::slice::from_ref(&expand));
    assert_eq!(p0(&after).isr, vec![1, 2, 3]);
    // A fence and an unfence of the same incarnation (a missed heartbeat, no restart) leave
    // the credit good: the process and its data are the same.
    let back = run(
        &image,
        &[
            fence(3, 1),
            Command::UnfenceBroker {
                id: 3,
                incarnation: 1,
            },
        ],
    );
    assert_eq!(p0(&try_apply(&back, &expand).0).isr, vec![1, 2, 3]);
}

#[test]
fn entries_from_the_previous_build_apply_as_they_did() {
    // A ChangePartition as the previous build wrote it (no basis) decodes, and is applied
    // without the new checks, so that replaying an old log gives the image it gave.
    let json = br#"{"proposal":null,"command":{"ChangePartition":{"topic":"t","partition":0,"leader_epoch":0,"leader":null,"isr":[1,2,3]}}}"#;
    let old = Envelope::decode(json).unwrap();
    let image = cluster(&[1, 2], "always");
    let fenced = run(&image, &[fence(3, 1)]);
    let (after, result) = try_apply(&fenced, &old.command);
    result.unwrap();
    assert_eq!(p0(&after).isr, vec![1, 2, 3]);
    // And a command without a basis encodes as before.
    let encoded = Envelope {
        proposal: None,
        command: old.command,
    }
    .encode()
    .unwrap();
    assert_eq!(encoded, json.to_vec());
}
