//! The rules a partition change (ISR and/or leader) must still satisfy when it is applied, not
//! only when it was planned (issue 14 item 3). A change is planned against one image (by the
//! partition leader's ISR tracker, or by the controller for a preferred leader) and committed
//! later; in between a FenceBroker, a broker's re-registration or another ISR change may commit.
//! Kafka's controller checks AlterPartition at apply time against the partition epoch and the
//! broker epoch of every replica it adds (KIP-497, KIP-841, KIP-903, ReplicationControlManager):
//!
//! - the ISR must be the one the change was decided on ([`ChangeBasis::isr`]), else the change
//!   is stale (FENCED_LEADER_EPOCH; the leader re-plans from the next image);
//! - every broker the change adds to the ISR or makes leader must be registered, unfenced, and
//!   in the incarnation the proposer credited (INELIGIBLE_REPLICA): a fenced broker must not come
//!   back through a change planned before its fence, and a restarted one must not come back on
//!   acknowledgements from its previous life, which it may have lost (flush.ms/never).
//!
//! Changes without a basis (Raft entries written by builds before it) are applied as they were
//! then, so that replaying an old log gives the image it gave before.

use super::command::ChangeBasis;
use super::error::ControlError;
use super::image::{MetadataImage, PartitionInfo};

/// Checks `basis` for a change of `current` (partition `name`) to ISR `isr` and leader `leader`
/// (None: unchanged) against `image`, the image the change is applied to.
pub fn check(
    image: &MetadataImage,
    name: &str,
    current: &PartitionInfo,
    isr: Option<&[i32]>,
    leader: Option<i32>,
    basis: &ChangeBasis,
) -> Result<(), ControlError> {
    if !same_members(&basis.isr, &current.isr) {
        return Err(ControlError::StaleLeaderEpoch(format!(
            "partition {name}: change decided on ISR {:?}, the ISR is {:?} now",
            basis.isr, current.isr
        )));
    }
    for broker in joining(current, isr, leader) {
        check_eligible(
            image,
            name,
            broker,
            basis.incarnations.get(&broker).copied(),
        )?;
    }
    Ok(())
}

/// The basis for a change of `current` that adds or elects brokers as `image` has them: what
/// the controller uses when it plans a change itself, or when a leader from an older build did
/// not say what it decided on.
pub fn basis_from_image(
    image: &MetadataImage,
    current: &PartitionInfo,
    isr: Option<&[i32]>,
    leader: Option<i32>,
) -> ChangeBasis {
    let incarnations = joining(current, isr, leader)
        .into_iter()
        .filter_map(|b| image.brokers.get(&b).map(|info| (b, info.incarnation)))
        .collect();
    ChangeBasis {
        isr: current.isr.clone(),
        incarnations,
    }
}

/// Brokers the change brings in: new ISR members, and a new leader.
fn joining(current: &PartitionInfo, isr: Option<&[i32]>, leader: Option<i32>) -> Vec<i32> {
    let mut brokers: Vec<i32> = isr
        .unwrap_or(&[])
        .iter()
        .copied()
        .filter(|b| !current.isr.contains(b))
        .collect();
    if let Some(leader) = leader.filter(|l| *l != -1 && *l != current.leader) {
        if !brokers.contains(&leader) {
            brokers.push(leader);
        }
    }
    brokers
}

/// `broker` may join partition `name`'s ISR (or lead it) as the incarnation `credited`.
fn check_eligible(
    image: &MetadataImage,
    name: &str,
    broker: i32,
    credited: Option<u64>,
) -> Result<(), ControlError> {
    let Some(info) = image.brokers.get(&broker) else {
        return Err(ControlError::IneligibleReplica(format!(
            "broker {broker} cannot join {name}: not registered"
        )));
    };
    if info.fenced {
        return Err(ControlError::IneligibleReplica(format!(
            "broker {broker} cannot join {name}: fenced"
        )));
    }
    match credited {
        Some(incarnation) if incarnation == info.incarnation => Ok(()),
        Some(incarnation) => Err(ControlError::IneligibleReplica(format!(
            "broker {broker} cannot join {name}: credited in incarnation {incarnation}, \
             registered as {} now",
            info.incarnation
        ))),
        None => Err(ControlError::IneligibleReplica(format!(
            "broker {broker} cannot join {name}: the change names no incarnation for it"
        ))),
    }
}

/// Whether `a` and `b` hold the same brokers, order aside.
fn same_members(a: &[i32], b: &[i32]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
#[path = "isr_change_tests.rs"]
mod tests;
