//! Produce on the shard that owns a partition: append each part (right away, or in its turn in the
//! partition's line when the owner must catch up first: `append_order`), then wait for what the
//! producer's acks ask.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{until, Acks, AppendWork, OwnerResults, PartitionResult};
use crate::control::topic_config;
use crate::kafka::append_order::Ticket;
use crate::kafka::errors;
use crate::partitions::Partition;
use crate::server::shard::Shard;
use chronik_shards::log::{AppendInfo, LogError, PartitionLog};
use chronik_shards::runtime::mesh::LocalFuture;

/// How often an acks=all wait looks whether the leader's log failed to write.
const WRITE_FAILURE_POLL: Duration = Duration::from_millis(50);

/// Runs on the owner shard. Appends what it can right away (in order with earlier work from the
/// same shard), then waits for what `acks` asks.
///
/// A part that cannot append right away (the owner has not applied the image the request was
/// routed by, or the log is not open) takes its place in its partition's line right away, and so
/// does every later part for that partition until the line is empty: appends to one partition
/// happen in the order the work arrived here (`append_order`), whatever each waits for.
pub(super) fn append_on_owner(
    shard: &Rc<Shard>,
    parts: Vec<AppendWork>,
    acks: Acks,
    deadline: Instant,
) -> LocalFuture<OwnerResults> {
    // Ordered part: partitions whose log is open, under the image the request was routed by, with
    // no earlier append of theirs still in line, append now.
    let mut steps: Vec<(AppendWork, Step)> = Vec::with_capacity(parts.len());
    for mut part in parts {
        let key = (part.topic_id, part.partition);
        let open = shard.partitions.get(&key).filter(|_| {
            shard.has_applied(part.image_version) && !shard.append_order.is_waiting(&key)
        });
        let step = match open {
            Some(partition) => {
                let result = append_as_leader(&partition, std::mem::take(&mut part.records), acks);
                Step::Appended(partition, result)
            }
            None => Step::InLine(shard.append_order.join(key)),
        };
        steps.push((part, step));
    }
    let shard = shard.clone();
    Box::pin(async move {
        // The deferred appends, each in its turn, before any wait for acks: a part's append is
        // never held behind another part's durability or replication.
        for (part, step) in steps.iter_mut() {
            if let Step::InLine(ticket) = step {
                let appended = append_in_turn(&shard, part, ticket, acks, deadline).await;
                // Dropping the ticket passes the turn on.
                *step = appended;
            }
        }
        let mut out = Vec::with_capacity(steps.len());
        for (part, step) in steps {
            let (partition, result) = match step {
                Step::Appended(partition, result) => (partition, result),
                Step::Answered(result) => {
                    out.push((part.slot, result));
                    continue;
                }
                // Cannot happen: the loop above replaced every ticket.
                Step::InLine(_) => {
                    out.push((
                        part.slot,
                        PartitionResult::error(ResponseError::UnknownServerError),
                    ));
                    continue;
                }
            };
            let info = match result {
                Ok(info) => info,
                Err(refused) => {
                    out.push((part.slot, refused));
                    continue;
                }
            };
            let end = info.last_offset + 1;
            // One deadline for the whole request: the parts wait one after
            // another, so a per-part timeout would add up.
            let waited = match acks {
                // Nothing to wait for but room: the log's unwritten queue is bounded.
                Acks::None => {
                    until(deadline, async {
                        partition
                            .log
                            .make_room()
                            .await
                            .map_err(|e| errors::log_error_code(&e))
                    })
                    .await
                }
                Acks::Leader => {
                    until(deadline, async {
                        partition
                            .wait_durable(end)
                            .await
                            .map_err(|e| errors::log_error_code(&e))
                    })
                    .await
                }
                Acks::All => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let replicated = partition.wait_replicated(end, left);
                    until(deadline, replicated.or(write_failure(&partition.log))).await
                }
            };
            let result = match waited {
                Ok(()) => PartitionResult {
                    error_code: errors::NONE,
                    error_message: None,
                    base_offset: info.base_offset,
                    log_start_offset: partition.log.log_start_offset(),
                    current_leader: None,
                },
                Err(code) => PartitionResult::error_code(code, None),
            };
            out.push((part.slot, result));
        }
        out
    })
}

/// Where one part of a request stands on its owner.
enum Step {
    /// Appended, or refused by the leader's checks or the log.
    Appended(Rc<Partition>, Result<AppendInfo, PartitionResult>),
    /// Waiting in its partition's line.
    InLine(Ticket),
    /// Answered without an append (it gave up waiting, or the partition cannot open).
    Answered(PartitionResult),
}

/// A deferred part's append: waits for its turn in its partition's line, for the owner to apply
/// the image the request was routed by and for the log to open, then appends. A part that gives up
/// (the request's deadline, the image never applied, the log cannot open) does not append; either
/// way the caller's dropping the ticket lets the next in line go.
async fn append_in_turn(
    shard: &Rc<Shard>,
    part: &mut AppendWork,
    ticket: &Ticket,
    acks: Acks,
    deadline: Instant,
) -> Step {
    let ready = until(deadline, async {
        ticket.turn().await;
        let behind = !shard.has_applied(part.image_version);
        if !shard.caught_up_with(part.image_version, deadline).await {
            // Not appended: the owner does not lead the partition as the request expected (yet).
            let code = if Instant::now() >= deadline {
                ResponseError::RequestTimedOut
            } else {
                ResponseError::NotLeaderOrFollower // shutting down
            };
            return Err(code.code());
        }
        let partition = open_partition(shard, part.topic_id, part.partition)
            .await
            .map_err(|code| code.code())?;
        if let Some(delay) = slow_deferred_append().filter(|_| behind) {
            glommio::timer::sleep(delay).await;
        }
        Ok(partition)
    })
    .await;
    match ready {
        Ok(partition) => {
            let result = append_as_leader(&partition, std::mem::take(&mut part.records), acks);
            Step::Appended(partition, result)
        }
        Err(code) => Step::Answered(PartitionResult::error_code(code, None)),
    }
}

/// Fault injection for tests: an append that had to wait for its owner to apply the request's image
/// waits this many milliseconds more before it appends, so that requests sent meanwhile find the
/// owner caught up.
pub const SLOW_DEFERRED_APPEND_ENV: &str = "CHRONIK_FAULT_SLOW_DEFERRED_APPEND_MS";

/// The delay `SLOW_DEFERRED_APPEND_ENV` asks for, read once per process.
fn slow_deferred_append() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let delay = std::env::var(SLOW_DEFERRED_APPEND_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        if let Some(delay) = delay {
            tracing::warn!(
                "fault injection: deferred produce appends wait {delay:?} before appending \
                 ({SLOW_DEFERRED_APPEND_ENV})"
            );
        }
        delay
    })
}

/// The owner's own checks, then the leader append. This replica must lead the partition as the
/// owner's applied image says: a replica still following (the image making it leader not applied
/// here) would write the batch under the old leader's epoch. With acks=all the leader, which sees
/// followers fall behind before the controller shrinks the ISR (or when no controller can),
/// refuses to append with too few in sync.
fn append_as_leader(
    partition: &Rc<Partition>,
    records: Bytes,
    acks: Acks,
) -> Result<AppendInfo, PartitionResult> {
    let refused = match partition.leader_state() {
        Some(leader) if leader.is_stopped() => Some(ResponseError::NotLeaderOrFollower),
        None if partition.is_following() => Some(ResponseError::NotLeaderOrFollower),
        Some(leader) if acks == Acks::All && !leader.enough_in_sync() => {
            Some(ResponseError::NotEnoughReplicas)
        }
        _ => None,
    };
    if let Some(code) = refused {
        return Err(PartitionResult::error(code));
    }
    partition.append(records).map_err(|e| {
        let code = match &e {
            // The log cannot write (a full disk) and said so once; not a warning per request.
            LogError::StorageUnavailable(_) => ResponseError::KafkaStorageError.code(),
            other => errors::log_error_code(other),
        };
        PartitionResult::error_code(code, Some(e.to_string()))
    })
}

/// Opens a partition this shard owns but has not opened yet.
async fn open_partition(
    shard: &Rc<Shard>,
    topic_id: Uuid,
    index: i32,
) -> Result<Rc<Partition>, ResponseError> {
    if let Some(partition) = shard.partitions.get(&(topic_id, index)) {
        return Ok(partition);
    }
    let image = shard.control.image();
    let topic = image
        .topic_by_id(topic_id)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let info = topic
        .partitions
        .iter()
        .find(|p| p.index == index)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let config = topic_config::log_config(topic, shard.control.defaults());
    shard
        .partitions
        .get_or_open(topic, info, config)
        .await
        .map_err(|e| match e {
            LogError::Closed => ResponseError::NotLeaderOrFollower,
            other => {
                tracing::warn!(topic = %topic.name, partition = index, "cannot open partition log: {other}");
                ResponseError::KafkaStorageError
            }
        })
}

/// Resolves with KAFKA_STORAGE_ERROR once the leader's log cannot write (a full disk): an acks=all
/// wait then ends at once, as an acks=1 wait does, instead of at its timeout (the high watermark
/// cannot pass what the leader could not write).
async fn write_failure(log: &PartitionLog) -> Result<(), i16> {
    loop {
        if log.write_failure().is_some() {
            return Err(ResponseError::KafkaStorageError.code());
        }
        glommio::timer::sleep(WRITE_FAILURE_POLL).await;
    }
}
