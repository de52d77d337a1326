//! Who may replicate into this broker, decided from the metadata image alone (pure, tested
//! without I/O).
//!
//! - A link is served only when its Hello names a registered, unfenced broker other than this one,
//!   with the broker epoch (incarnation) that broker registered with in its current life; the
//!   same is checked again for every frame, so a link outlives neither a fencing nor a restart of
//!   its leader.
//! - A frame about a partition is forwarded to the partition only when the image says the link's
//!   broker leads it in exactly the frame's leader epoch. An older epoch is answered
//!   [`wire::ACK_FENCED`], a newer one (our image is behind) [`wire::ACK_RETRY`]; the same epoch
//!   led by another broker is a forgery or a confused peer: the link is closed.

use super::wire::{self, Hello, WirePartition};
use crate::control::MetadataImage;

/// Why a link is refused or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A Hello of an older version carries no broker epoch.
    NoBrokerEpoch,
    /// The Hello names this broker.
    Itself,
    NotRegistered(i32),
    Fenced(i32),
    /// The broker registered with another epoch (it restarted, or the Hello is forged).
    StaleEpoch {
        broker: i32,
        sent: u64,
    },
    /// A frame about a partition that another broker leads in the frame's leader epoch.
    NotTheLeader {
        part: WirePartition,
        leader_epoch: i32,
        leader: i32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoBrokerEpoch => {
                write!(
                    f,
                    "a Hello without a broker epoch (a broker of an older version?)"
                )
            }
            Refusal::Itself => write!(f, "a Hello naming this broker"),
            Refusal::NotRegistered(id) => write!(f, "broker {id} is not registered"),
            Refusal::Fenced(id) => write!(f, "broker {id} is fenced"),
            Refusal::StaleEpoch { broker, sent } => {
                write!(f, "broker {broker}'s epoch {sent} is not its current one")
            }
            Refusal::NotTheLeader {
                part,
                leader_epoch,
                leader,
            } => write!(
                f,
                "partition {}-{} is led by broker {leader} in leader epoch {leader_epoch}",
                part.topic_id, part.partition
            ),
        }
    }
}

/// Whether `hello` (read whole) opens a link this broker (`me`) serves.
pub fn check_hello(image: &MetadataImage, me: i32, hello: &Hello) -> Result<(), Refusal> {
    let epoch = hello.broker_epoch.ok_or(Refusal::NoBrokerEpoch)?;
    if hello.leader == me {
        return Err(Refusal::Itself);
    }
    check_broker(image, hello.leader, epoch)
}

/// Whether `broker` is registered, unfenced, and in its life of epoch `epoch`.
pub fn check_broker(image: &MetadataImage, broker: i32, epoch: u64) -> Result<(), Refusal> {
    match image.brokers.get(&broker) {
        None => Err(Refusal::NotRegistered(broker)),
        Some(info) if info.incarnation != epoch => Err(Refusal::StaleEpoch {
            broker,
            sent: epoch,
        }),
        Some(info) if info.fenced => Err(Refusal::Fenced(broker)),
        Some(_) => Ok(()),
    }
}

/// What to do with a frame from `leader` about `part` in `leader_epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the partition (which checks the epoch against its own state again).
    Forward,
    /// Answer with this ack status, touching nothing.
    Answer(i16),
    /// Close the link.
    Close(Refusal),
}

pub fn check_frame(
    image: &MetadataImage,
    leader: i32,
    part: &WirePartition,
    leader_epoch: i32,
) -> Verdict {
    let info = image.topic_by_id(part.topic_id).and_then(|topic| {
        usize::try_from(part.partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
    });
    // Unknown here: a topic our image does not have yet (or no longer has).
    let Some(info) = info else {
        return Verdict::Answer(wire::ACK_RETRY);
    };
    if leader_epoch < info.leader_epoch {
        Verdict::Answer(wire::ACK_FENCED)
    } else if leader_epoch > info.leader_epoch {
        Verdict::Answer(wire::ACK_RETRY)
    } else if info.leader != leader {
        Verdict::Close(Refusal::NotTheLeader {
            part: *part,
            leader_epoch,
            leader: info.leader,
        })
    } else {
        Verdict::Forward
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;
    use crate::control::image::{BrokerInfo, PartitionInfo, TopicInfo};

    const TOPIC: Uuid = Uuid::from_u128(42);

    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        for (id, incarnation, fenced) in [(1, 11, false), (2, 22, false), (3, 33, true)] {
            image.brokers.insert(
                id,
                BrokerInfo {
                    id,
                    host: "h".into(),
                    port: 1,
                    rack: None,
                    rpc: None,
                    incarnation,
                    fenced,
                },
            );
        }
        image.topics.insert(
            "t".into(),
            Arc::new(TopicInfo {
                id: TOPIC,
                name: "t".into(),
                configs: BTreeMap::new(),
                partitions: vec![PartitionInfo {
                    index: 0,
                    replicas: vec![1, 2, 3],
                    leader: 2,
                    leader_epoch: 5,
                    isr: vec![1, 2],
                }],
            }),
        );
        image
    }

    fn hello(leader: i32, broker_epoch: Option<u64>) -> Hello {
        Hello {
            leader,
            shard: Some(0),
            broker_epoch,
            frame_len: wire::HELLO_BYTES,
        }
    }

    #[test]
    fn only_a_registered_unfenced_broker_in_its_current_epoch_opens_a_link() {
        let image = image();
        assert_eq!(check_hello(&image, 1, &hello(2, Some(22))), Ok(()));
        assert_eq!(
            check_hello(&image, 1, &hello(2, None)),
            Err(Refusal::NoBrokerEpoch)
        );
        assert_eq!(
            check_hello(&image, 1, &hello(1, Some(11))),
            Err(Refusal::Itself)
        );
        assert_eq!(
            check_hello(&image, 1, &hello(9, Some(22))),
            Err(Refusal::NotRegistered(9))
        );
        assert_eq!(
            check_hello(&image, 1, &hello(3, Some(33))),
            Err(Refusal::Fenced(3))
        );
        // Broker 2 restarted: its previous life's epoch, or a guess, is refused.
        assert_eq!(
            check_hello(&image, 1, &hello(2, Some(21))),
            Err(Refusal::StaleEpoch {
                broker: 2,
                sent: 21
            })
        );
    }

    #[test]
    fn frames_reach_a_partition_only_from_its_leader_in_its_epoch() {
        let image = image();
        let part = WirePartition {
            topic_id: TOPIC,
            partition: 0,
        };
        assert_eq!(check_frame(&image, 2, &part, 5), Verdict::Forward);
        assert_eq!(
            check_frame(&image, 2, &part, 4),
            Verdict::Answer(wire::ACK_FENCED)
        );
        assert_eq!(
            check_frame(&image, 2, &part, 6),
            Verdict::Answer(wire::ACK_RETRY)
        );
        assert_eq!(
            check_frame(&image, 1, &part, 5),
            Verdict::Close(Refusal::NotTheLeader {
                part,
                leader_epoch: 5,
                leader: 2
            })
        );
        // Another broker claiming an older epoch is answered FENCED, never forwarded.
        assert_eq!(
            check_frame(&image, 1, &part, 4),
            Verdict::Answer(wire::ACK_FENCED)
        );
        for unknown in [
            WirePartition {
                topic_id: TOPIC,
                partition: 1,
            },
            WirePartition {
                topic_id: TOPIC,
                partition: -1,
            },
            WirePartition {
                topic_id: Uuid::from_u128(7),
                partition: 0,
            },
        ] {
            assert_eq!(
                check_frame(&image, 2, &unknown, 5),
                Verdict::Answer(wire::ACK_RETRY)
            );
        }
    }
}
