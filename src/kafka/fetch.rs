//! Fetch: whole stored batches below the high watermark, within every byte
//! limit of the request, long-polling (max_wait_ms/min_bytes) until appends
//! bring enough data.
//!
//! Byte limits as Kafka applies them: `max_bytes` for the whole response,
//! `partition_max_bytes` per partition, batches never split, and one
//! exception so consumers make progress: the first batch of the first
//! non-empty partition is returned even when it alone exceeds the limits.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::leader_hint::{self, CurrentLeader};
use super::splice::Splices;
use super::{errors, owners, Reply};
use crate::partitions::Partition;
use crate::server::shard::Shard;
use chronik_shards::log::LogError;
use chronik_shards::runtime::mesh::LocalFuture;

/// One partition the request asks for.
#[derive(Clone, Debug)]
struct Wanted {
    /// Placement key: the shard that owns the partition.
    owner: usize,
    topic_id: Uuid,
    index: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
}

/// One partition's answer (Send: read on the owner shard).
#[derive(Clone, Debug)]
struct PartitionAnswer {
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    /// Whole stored batches, in order (spliced into the response uncopied).
    records: Vec<Bytes>,
    /// Their total size.
    records_len: usize,
}

impl PartitionAnswer {
    fn error(code: i16) -> Self {
        PartitionAnswer {
            error_code: code,
            high_watermark: -1,
            log_start_offset: -1,
            records: Vec::new(),
            records_len: 0,
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, request: FetchRequest, version: i16) -> Reply {
    let mut response = FetchResponse::default();
    // chronik keeps no fetch sessions: session_id 0 tells the client so, and
    // it keeps sending full fetches. An incremental fetch on a session we
    // never created is refused as Kafka refuses an unknown session.
    if request.session_id != 0 || request.session_epoch > 0 {
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return Reply::Now(Box::new(ResponseKind::Fetch(response)));
    }
    let image = shard.control.image();
    let mut layout: Vec<(TopicName, Uuid, Vec<i32>)> = Vec::with_capacity(request.topics.len());
    // Each partition: either what to read, or its error.
    let mut parts: Vec<Result<Wanted, i16>> = Vec::new();
    // KIP-951 (v12+): with NOT_LEADER_OR_FOLLOWER, who leads the partition now.
    let mut leaders: Vec<Option<CurrentLeader>> = Vec::new();
    for topic in &request.topics {
        let info = if version >= 13 {
            image
                .topic_by_id(topic.topic_id)
                .ok_or(ResponseError::UnknownTopicId)
        } else {
            image
                .topics
                .get(topic.topic.0.as_str())
                .ok_or(ResponseError::UnknownTopicOrPartition)
        };
        let mut indexes = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            indexes.push(partition.partition);
            let wanted = info.map_err(|e| e.code()).and_then(|info| {
                let to = owners::route(
                    shard,
                    info,
                    partition.partition,
                    partition.current_leader_epoch,
                )?;
                Ok(Wanted {
                    owner: to.owner,
                    topic_id: info.id,
                    index: partition.partition,
                    fetch_offset: partition.fetch_offset,
                    partition_max_bytes: usize::try_from(partition.partition_max_bytes)
                        .unwrap_or(0),
                })
            });
            let hint = match (&wanted, info) {
                (Err(code), Ok(info)) if *code == ResponseError::NotLeaderOrFollower.code() => {
                    leader_hint::current_leader(info, partition.partition)
                }
                _ => None,
            };
            leaders.push(hint.filter(|_| version >= 12));
            parts.push(wanted);
        }
        layout.push((topic.topic.clone(), topic.topic_id, indexes));
    }

    if version >= 16 {
        let ids = leaders.iter().flatten().map(|l| l.leader_id);
        response.node_endpoints = leader_hint::endpoints(&image, ids)
            .into_iter()
            .map(|(id, host, port, rack)| {
                let mut endpoint = NodeEndpoint::default();
                endpoint.node_id = BrokerId(id);
                endpoint.host = StrBytes::from_string(host);
                endpoint.port = i32::from(port);
                endpoint.rack = rack.map(StrBytes::from_string);
                endpoint
            })
            .collect();
    }
    // The broker's fetch.max.bytes caps what any request may ask for.
    let max_bytes = usize::try_from(request.max_bytes)
        .unwrap_or(0)
        .min(shard.limits.fetch_max_bytes);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let shard = shard.clone();
    Reply::LaterSpliced(Box::pin(async move {
        let deadline = Instant::now() + max_wait;
        let answers = loop {
            let (answers, bytes) = read_pass(&shard, &parts, max_bytes).await;
            let has_error = answers.iter().any(|a| a.error_code != errors::NONE);
            let now = Instant::now();
            if bytes >= min_bytes.max(1)
                || has_error
                || now >= deadline
                || shard.shutdown.is_triggered()
            {
                break answers;
            }
            wait_for_data(&shard, &parts, &answers, deadline).await;
        };
        let mut answers = answers.into_iter();
        let mut leaders = leaders.into_iter();
        let mut splices = Splices::default();
        for (name, topic_id, indexes) in layout {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = name;
            topic.topic_id = topic_id;
            for index in indexes {
                let answer = answers.next().unwrap_or_else(|| {
                    PartitionAnswer::error(ResponseError::UnknownServerError.code())
                });
                let mut partition = PartitionData::default();
                partition.partition_index = index;
                partition.error_code = answer.error_code;
                partition.high_watermark = answer.high_watermark;
                // No transactions: everything below the high watermark is stable.
                partition.last_stable_offset = answer.high_watermark;
                partition.log_start_offset = answer.log_start_offset;
                partition.records = Some(splices.records(answer.records));
                if let Some(leader) = leaders.next().flatten() {
                    let mut current = LeaderIdAndEpoch::default();
                    current.leader_id = BrokerId(leader.leader_id);
                    current.leader_epoch = leader.leader_epoch;
                    partition.current_leader = current;
                }
                topic.partitions.push(partition);
            }
            response.responses.push(topic);
        }
        (ResponseKind::Fetch(response), splices)
    }))
}

/// Reads every partition once, in request order, keeping the byte budgets
/// exact: consecutive partitions on the same shard are read in one trip.
async fn read_pass(
    shard: &Rc<Shard>,
    parts: &[Result<Wanted, i16>],
    max_bytes: usize,
) -> (Vec<PartitionAnswer>, usize) {
    let mut answers: Vec<PartitionAnswer> = Vec::with_capacity(parts.len());
    let mut budget = max_bytes;
    let mut first_non_empty_pending = true;
    let mut total = 0usize;
    let mut i = 0;
    while i < parts.len() {
        let wanted = match &parts[i] {
            Err(code) => {
                answers.push(PartitionAnswer::error(*code));
                i += 1;
                continue;
            }
            Ok(w) => w,
        };
        let owner = wanted.owner;
        let mut run = vec![wanted.clone()];
        i += 1;
        while let Some(Ok(next)) = parts.get(i) {
            if next.owner != owner {
                break;
            }
            run.push(next.clone());
            i += 1;
        }
        let run_len = run.len();
        let read = shard
            .mesh
            .call(owner, move |owner_shard: &Rc<Shard>| {
                read_on_owner(owner_shard.clone(), run, budget, first_non_empty_pending)
            })
            .await;
        match read {
            Ok(run_answers) => {
                for answer in run_answers {
                    let len = answer.records_len;
                    if len > 0 {
                        first_non_empty_pending = false;
                    }
                    budget = budget.saturating_sub(len);
                    total += len;
                    answers.push(answer);
                }
            }
            Err(e) => {
                tracing::warn!("forwarding fetch to shard {owner}: {e}");
                for _ in 0..run_len {
                    answers.push(PartitionAnswer::error(
                        ResponseError::NotLeaderOrFollower.code(),
                    ));
                }
            }
        }
    }
    (answers, total)
}

/// Runs on the owner shard: reads a run of partitions within `budget`.
fn read_on_owner(
    shard: Rc<Shard>,
    run: Vec<Wanted>,
    mut budget: usize,
    mut first_non_empty_pending: bool,
) -> LocalFuture<Vec<PartitionAnswer>> {
    Box::pin(async move {
        let mut answers = Vec::with_capacity(run.len());
        for wanted in run {
            let partition = match owners::partition_of(&shard, wanted.topic_id, wanted.index).await
            {
                Ok(partition) => partition,
                Err(code) => {
                    answers.push(PartitionAnswer::error(code));
                    continue;
                }
            };
            let limit = budget.min(wanted.partition_max_bytes);
            let mut answer = PartitionAnswer {
                error_code: errors::NONE,
                high_watermark: partition.high_watermark(),
                log_start_offset: partition.log.log_start_offset(),
                records: Vec::new(),
                records_len: 0,
            };
            // Nothing may be read with no budget left, unless the first-batch rule applies.
            if limit > 0 || first_non_empty_pending {
                match partition.read(wanted.fetch_offset, limit.max(1)).await {
                    Ok(batches) => {
                        let (records, len) = take_within(batches, limit, first_non_empty_pending);
                        if len > 0 {
                            first_non_empty_pending = false;
                        }
                        budget = budget.saturating_sub(len);
                        answer.records = records;
                        answer.records_len = len;
                    }
                    Err(e) => {
                        answer.error_code = errors::log_error_code(&e);
                        if matches!(e, LogError::OffsetOutOfRange { .. }) {
                            answer.high_watermark = partition.high_watermark();
                        }
                    }
                }
            }
            answers.push(answer);
        }
        answers
    })
}

/// Whole batches, in order, whose total stays within `limit`; the first
/// batch alone may exceed it when `allow_oversized_first`. Returns them and
/// their total size.
fn take_within(
    mut batches: Vec<Bytes>,
    limit: usize,
    allow_oversized_first: bool,
) -> (Vec<Bytes>, usize) {
    let mut taken = 0usize;
    let mut count = 0usize;
    for batch in &batches {
        if taken + batch.len() > limit && !(count == 0 && allow_oversized_first) {
            break;
        }
        taken += batch.len();
        count += 1;
    }
    batches.truncate(count);
    (batches, taken)
}

/// Waits until some partition's high watermark passes both its fetch offset
/// and what the last read pass saw (so data already read but short of
/// min_bytes does not wake the wait at once), or the deadline. Each owner
/// shard watches its own partitions.
async fn wait_for_data(
    shard: &Rc<Shard>,
    parts: &[Result<Wanted, i16>],
    seen: &[PartitionAnswer],
    deadline: Instant,
) {
    let mut by_owner: BTreeMap<usize, Vec<(Uuid, i32, i64)>> = BTreeMap::new();
    for (wanted, seen) in parts.iter().zip(seen) {
        if let Ok(wanted) = wanted {
            by_owner.entry(wanted.owner).or_default().push((
                wanted.topic_id,
                wanted.index,
                wanted.fetch_offset.max(seen.high_watermark),
            ));
        }
    }
    let mut waits: Vec<LocalFuture<()>> = Vec::new();
    for (owner, watched) in by_owner {
        match shard
            .mesh
            .send(owner, move |owner_shard: &Rc<Shard>| {
                watch_on_owner(owner_shard.clone(), watched, deadline)
            })
            .await
        {
            Ok(reply) => waits.push(Box::pin(async move {
                let _ = reply.await;
            })),
            Err(_) => return,
        }
    }
    let sleep = deadline.saturating_duration_since(Instant::now());
    let shutdown = shard.shutdown.clone();
    first_of(waits)
        .or(async move {
            glommio::timer::sleep(sleep).await;
        })
        .or(async move { shutdown.wait().await })
        .await;
}

/// Runs on the owner shard: resolves when one of `watched` has data above its
/// fetch offset, or at the deadline.
fn watch_on_owner(
    shard: Rc<Shard>,
    watched: Vec<(Uuid, i32, i64)>,
    deadline: Instant,
) -> LocalFuture<()> {
    let partitions: Vec<(Rc<Partition>, i64)> = watched
        .into_iter()
        .filter_map(|(topic_id, index, offset)| {
            shard
                .partitions
                .get(&(topic_id, index))
                .map(|p| (p, offset))
        })
        .collect();
    let sleep = deadline.saturating_duration_since(Instant::now());
    Box::pin(
        poll_fn(move |cx| {
            for (partition, offset) in &partitions {
                let watch = partition.high_watermark_watch();
                if watch.get() > *offset || watch.is_closed() {
                    return Poll::Ready(());
                }
                watch.register(cx.waker());
            }
            // Nothing open to watch here yet: the caller re-reads at the deadline.
            Poll::Pending
        })
        .or(async move { glommio::timer::sleep(sleep).await }),
    )
}

/// Resolves when the first of `futures` does (never, if there are none).
async fn first_of(mut futures: Vec<LocalFuture<()>>) {
    poll_fn(move |cx| {
        for future in futures.iter_mut() {
            if future.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(sizes: &[usize]) -> Vec<Bytes> {
        sizes.iter().map(|n| Bytes::from(vec![7u8; *n])).collect()
    }

    #[test]
    fn takes_whole_batches_within_the_limit() {
        assert_eq!(take_within(batches(&[10, 10, 10]), 25, false).1, 20);
        assert_eq!(take_within(batches(&[10, 10, 10]), 30, false).1, 30);
        assert_eq!(take_within(batches(&[10, 10, 10]), 30, false).0.len(), 3);
        assert_eq!(take_within(batches(&[10]), 9, false), (vec![], 0));
        assert_eq!(take_within(Vec::new(), 100, true).1, 0);
    }

    #[test]
    fn first_batch_may_exceed_only_when_allowed() {
        assert_eq!(take_within(batches(&[50, 10]), 20, true).1, 50);
        assert_eq!(take_within(batches(&[50, 10]), 20, false).1, 0);
        assert_eq!(take_within(batches(&[5, 50]), 20, true).1, 5);
    }
}
