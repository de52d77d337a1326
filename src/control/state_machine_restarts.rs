//! Brokers restarting (new incarnations) and staying away, at the state-machine level (issue 14
//! item 7): after a power cut of the whole cluster, the partitions must get leaders from the
//! brokers that come back, when those acknowledged only what they had fsynced.

use super::*;
use crate::control::test_commands::{fence, register, run};

fn create(name: &str, configs: &[(&str, &str)]) -> Command {
    Command::CreateTopic {
        id: Uuid::from_u128(name.len() as u128 + 100),
        name: name.into(),
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        assignment: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
    }
}

/// Three brokers (incarnation 1), `topic` with three partitions at RF 3, ISR full.
fn cluster(topic: Command) -> MetadataImage {
    run(
        &MetadataImage::default(),
        &[register(1, 1), register(2, 1), register(3, 1), topic],
    )
}

#[test]
fn after_a_power_cut_the_returning_brokers_lead() {
    // Brokers 1 and 2 come back (new incarnations), broker 3 stays away and its session expires.
    let image = run(
        &cluster(create("t", &[])),
        &[register(1, 2), register(2, 2), fence(3, 1)],
    );
    for p in &image.topics["t"].partitions {
        assert!([1, 2].contains(&p.leader), "{p:?}");
        let mut isr = p.isr.clone();
        isr.sort_unstable();
        assert_eq!(isr, vec![1, 2], "{p:?}");
    }
}

#[test]
fn after_a_power_cut_without_the_broker_that_registers_first() {
    // The order of the returns must not matter: broker 1 stays away.
    let image = run(
        &cluster(create("t", &[])),
        &[register(3, 2), register(2, 2), fence(1, 1)],
    );
    for p in &image.topics["t"].partitions {
        assert!([2, 3].contains(&p.leader), "{p:?}");
        assert!(!p.isr.contains(&1), "{p:?}");
    }
}

#[test]
fn a_restarted_leader_keeps_leading_in_a_new_epoch() {
    let before = cluster(create("t", &[]));
    let after = run(&before, &[register(1, 2)]);
    for (old, new) in before.topics["t"]
        .partitions
        .iter()
        .zip(&after.topics["t"].partitions)
    {
        assert_eq!((new.leader, &new.isr), (old.leader, &old.isr));
        let bump = i32::from(old.leader == 1);
        assert_eq!(new.leader_epoch, old.leader_epoch + bump, "{new:?}");
    }
}

#[test]
fn without_fsync_before_acks_a_restarted_broker_leaves_the_isr() {
    // flush=never: a crash may have lost what it acknowledged, so it must catch up first.
    let image = run(
        &cluster(create("t", &[("chronik.flush.policy", "never")])),
        &[register(1, 2)],
    );
    for p in &image.topics["t"].partitions {
        assert!(!p.isr.contains(&1), "{p:?}");
        assert_ne!(p.leader, 1, "{p:?}");
    }
}
