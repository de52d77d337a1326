//! Produce: resolve topics (auto-creating when allowed), append each
//! partition's batches on the shard that owns it, answer once the data is
//! durable (acks=1) or below the high watermark (acks=all); acks=0 gets no
//! answer.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::leader_hint::{self, CurrentLeader, Endpoint};
use super::{topics, Reply};
use crate::control::{topic_config, TopicInfo};
use crate::server::shard::Shard;
use chronik_shards::runtime::mesh::{MeshError, Reply as MeshReply};

mod owner;
use owner::append_on_owner;

/// The shortest wait for durability before a produce times out.
const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long past the request deadline the asking shard waits for an owner's
/// answer before answering REQUEST_TIMED_OUT itself.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// What the producer waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Acks {
    None,
    Leader,
    All,
}

/// One partition's part of the request, sent to its owner shard.
struct AppendWork {
    /// (topic position, partition position) in the request, for the answer.
    slot: (usize, usize),
    topic_id: Uuid,
    partition: i32,
    records: Bytes,
    /// The version of the image the request was checked against (this broker leads there).
    image_version: u64,
}

/// Answers from one owner shard, by (topic, partition) position in the request.
type OwnerResults = Vec<((usize, usize), PartitionResult)>;

/// The request slots sent to one owner, with its pending answer.
type OwnerReply<F> = (Vec<(usize, usize)>, F);

/// One partition's answer (Send: it travels back from the owner shard).
#[derive(Clone, Debug)]
struct PartitionResult {
    error_code: i16,
    error_message: Option<String>,
    base_offset: i64,
    log_start_offset: i64,
    /// KIP-951: with NOT_LEADER_OR_FOLLOWER, who leads the partition now.
    current_leader: Option<CurrentLeader>,
}

impl PartitionResult {
    fn error(code: ResponseError) -> Self {
        Self::error_code(code.code(), None)
    }

    fn error_code(error_code: i16, error_message: Option<String>) -> Self {
        PartitionResult {
            error_code,
            error_message,
            base_offset: -1,
            log_start_offset: -1,
            current_leader: None,
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, mut request: ProduceRequest, version: i16) -> Reply {
    let acks = match request.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    // Kafka acknowledges acks=1 (and acks=all with a lone replica) from
    // memory, so clients may send tiny timeouts; chronik waits for the disk,
    // so the wait gets at least MIN_ACK_TIMEOUT before REQUEST_TIMED_OUT.
    let timeout =
        Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)).max(MIN_ACK_TIMEOUT);

    // Resolve each topic of the request: by id from v13, by name before.
    let mut image = shard.control.image();
    if version < 13 && shard.control.defaults().auto_create_topics_enable {
        let missing: Vec<String> = request
            .topic_data
            .iter()
            .map(|t| t.name.0.to_string())
            .filter(|name| !image.topics.contains_key(name))
            .collect();
        if !missing.is_empty() {
            // Failures (bad names) surface below as unknown/invalid topics.
            let _ = topics::auto_create(shard, dedup(missing)).await;
            image = shard.control.image();
        }
    }

    // Below storage-min-free-bytes, produce is refused before anything is appended (see
    // `server::disk_space`); the watch logs it, not each request.
    let disk_refusal = crate::server::disk_space::produce_refusal();
    if let Some(why) = &disk_refusal {
        tracing::debug!("produce refused: {why}");
    }
    let mut results: Vec<Vec<Option<PartitionResult>>> =
        Vec::with_capacity(request.topic_data.len());
    let mut work: BTreeMap<usize, Vec<AppendWork>> = BTreeMap::new();
    for (t, topic) in request.topic_data.iter_mut().enumerate() {
        let info: Result<&Arc<TopicInfo>, ResponseError> = if version >= 13 {
            image
                .topic_by_id(topic.topic_id)
                .ok_or(ResponseError::UnknownTopicId)
        } else {
            let name = topic.name.0.as_str();
            image
                .topics
                .get(name)
                .ok_or_else(|| match crate::control::topic_name::validate(name) {
                    Ok(()) => ResponseError::UnknownTopicOrPartition,
                    Err(e) => e.code(),
                })
        };
        let mut topic_results = Vec::with_capacity(topic.partition_data.len());
        for (p, data) in topic.partition_data.iter_mut().enumerate() {
            let check = (|| {
                let acks = acks.ok_or(ResponseError::InvalidRequiredAcks)?;
                let info = info.as_ref().map_err(|e| *e)?;
                let partition = info
                    .partitions
                    .iter()
                    .find(|p| p.index == data.index)
                    .ok_or(ResponseError::UnknownTopicOrPartition)?;
                if partition.leader != shard.node_id {
                    return Err(ResponseError::NotLeaderOrFollower);
                }
                if acks == Acks::All {
                    let min_isr = topic_config::min_insync_replicas(info, shard.control.defaults());
                    if (partition.isr.len() as i32) < min_isr {
                        return Err(ResponseError::NotEnoughReplicas);
                    }
                }
                if disk_refusal.is_some() {
                    return Err(ResponseError::KafkaStorageError);
                }
                // Taken, not cloned: see `release_frame`.
                let records = data.records.take().ok_or(ResponseError::InvalidRecord)?;
                Ok((info.id, info.name.as_str(), records))
            })();
            match check {
                Ok((topic_id, name, records)) => {
                    topic_results.push(None);
                    work.entry(shard.owner_of(name, data.index))
                        .or_default()
                        .push(AppendWork {
                            slot: (t, p),
                            topic_id,
                            partition: data.index,
                            records,
                            image_version: image.version,
                        });
                }
                Err(code) => {
                    let mut result = PartitionResult::error(code);
                    if code == ResponseError::NotLeaderOrFollower {
                        result.current_leader = info
                            .as_ref()
                            .ok()
                            .and_then(|info| leader_hint::current_leader(info, data.index));
                    }
                    topic_results.push(Some(result));
                }
            }
        }
        results.push(topic_results);
    }
    // Produce v10+ carries the endpoints of the leaders named above.
    let leader_endpoints = if version >= 10 {
        let leaders = results
            .iter()
            .flatten()
            .flatten()
            .filter_map(|r| r.current_leader.map(|l| l.leader_id));
        leader_hint::endpoints(&image, leaders)
    } else {
        Vec::new()
    };

    let topic_data = release_frame(request);

    // Queue the appends on their owners, in request order per owner. Each send is awaited here, in
    // the ordered part, so the next request of this connection reaches each owner after this one
    // (the guarantee is spelled out in `append_order`).
    let acks = acks.unwrap_or(Acks::Leader);
    let deadline = Instant::now() + timeout;
    let mut replies: Vec<OwnerReply<MeshReply<OwnerResults>>> = Vec::new();
    for (owner, parts) in work {
        let slots: Vec<(usize, usize)> = parts.iter().map(|part| part.slot).collect();
        let sent = shard
            .mesh
            .send(owner, move |owner_shard: &Rc<Shard>| {
                append_on_owner(owner_shard, parts, acks, deadline)
            })
            .await;
        match sent {
            Ok(reply) => replies.push((slots, reply)),
            Err(e) => {
                tracing::warn!("forwarding produce to shard {owner}: {e}");
                return Reply::Close(format!("shard {owner} unavailable: {e}"));
            }
        }
    }

    let collect = async move {
        // The owners bound their waits by `deadline`; this bound (a little
        // later, so their own answers win) holds even if an owner never
        // answers, so the connection's in-order responses never stall.
        collect_answers(replies, deadline + ANSWER_GRACE, &mut results).await;
        build_response(topic_data, results, leader_endpoints)
    };

    if acks == Acks::None {
        // No answer; but like Kafka, close the connection on an error so the
        // producer notices (it cannot see error codes).
        let response = collect.await;
        let failed = response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.error_code != 0);
        return match failed {
            Some(p) => Reply::Close(format!(
                "acks=0 produce failed with error code {} (partition {})",
                p.error_code, p.index
            )),
            None => Reply::Nothing,
        };
    }
    Reply::Later(Box::pin(
        async move { ResponseKind::Produce(collect.await) },
    ))
}

/// Fills `results` with the owners' answers; a part whose owner did not
/// answer by `deadline` is REQUEST_TIMED_OUT (its append may still happen).
async fn collect_answers<F>(
    replies: Vec<OwnerReply<F>>,
    deadline: Instant,
    results: &mut [Vec<Option<PartitionResult>>],
) where
    F: std::future::Future<Output = Result<OwnerResults, MeshError>>,
{
    for (slots, reply) in replies {
        let answer = until(deadline, async { Ok(reply.await) }).await;
        match answer {
            Ok(Ok(parts)) => {
                for ((t, p), result) in parts {
                    results[t][p] = Some(result);
                }
            }
            Ok(Err(e)) => tracing::warn!("produce answer lost: {e}"),
            Err(code) => {
                tracing::debug!("produce answer missing at the request deadline");
                for (t, p) in slots {
                    results[t][p] = Some(PartitionResult::error_code(code, None));
                }
            }
        }
    }
}

/// Runs `wait` until `deadline`; past it, REQUEST_TIMED_OUT. The timer is
/// polled with the wait, so it fires even when nothing ever wakes `wait`.
async fn until<T>(
    deadline: Instant,
    wait: impl std::future::Future<Output = Result<T, i16>>,
) -> Result<T, i16> {
    wait.or(async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err(ResponseError::RequestTimedOut.code())
    })
    .await
}

fn dedup(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

/// What the response needs from the request, with the topic names copied, so the request (and its
/// slices of the receive buffer) can be dropped before the appends run. A records buffer that then has
/// no other owner (a large request for one partition, read into its own buffer) is patched in place by
/// the log and stored as received, instead of copied.
fn release_frame(request: ProduceRequest) -> Vec<(TopicName, Uuid, Vec<i32>)> {
    request
        .topic_data
        .into_iter()
        .map(|t| {
            (
                TopicName(StrBytes::from_string(t.name.0.to_string())),
                t.topic_id,
                t.partition_data.iter().map(|p| p.index).collect(),
            )
        })
        .collect()
}

fn build_response(
    topic_data: Vec<(TopicName, Uuid, Vec<i32>)>,
    results: Vec<Vec<Option<PartitionResult>>>,
    leader_endpoints: Vec<Endpoint>,
) -> ProduceResponse {
    let mut response = ProduceResponse::default();
    response.node_endpoints = leader_endpoints
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
    for ((name, topic_id, indexes), topic_results) in topic_data.into_iter().zip(results) {
        let mut topic = TopicProduceResponse::default();
        topic.name = name;
        topic.topic_id = topic_id;
        for (index, result) in indexes.into_iter().zip(topic_results) {
            let result =
                result.unwrap_or_else(|| PartitionResult::error(ResponseError::UnknownServerError));
            let mut partition = PartitionProduceResponse::default();
            partition.index = index;
            partition.error_code = result.error_code;
            partition.error_message = result.error_message.map(StrBytes::from_string);
            partition.base_offset = result.base_offset;
            partition.log_append_time_ms = -1;
            partition.log_start_offset = result.log_start_offset;
            if let Some(leader) = result.current_leader {
                let mut current = LeaderIdAndEpoch::default();
                current.leader_id = BrokerId(leader.leader_id);
                current.leader_epoch = leader.leader_epoch;
                partition.current_leader = current;
            }
            topic.partition_responses.push(partition);
        }
        response.responses.push(topic);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::errors;
    use chronik_shards::runtime::mesh::LocalFuture;

    fn run<F, T>(test: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(test)
            .unwrap()
            .join()
            .unwrap();
    }

    fn answered(base_offset: i64) -> PartitionResult {
        PartitionResult {
            error_code: errors::NONE,
            error_message: None,
            base_offset,
            log_start_offset: 0,
            current_leader: None,
        }
    }

    /// An owner that never answers (its task never woken, or stuck before its own
    /// timer) must not hold the response: its parts time out at the deadline, the
    /// others keep their answers.
    #[test]
    fn an_owner_that_never_answers_times_out_at_the_deadline() {
        run(|| async {
            let mut results = vec![vec![None, None], vec![None]];
            let stuck: LocalFuture<Result<OwnerResults, MeshError>> =
                Box::pin(futures_lite::future::pending());
            let fine: LocalFuture<Result<OwnerResults, MeshError>> =
                Box::pin(async { Ok(vec![((0, 1), answered(7))]) });
            let replies = vec![(vec![(0, 0), (1, 0)], stuck), (vec![(0, 1)], fine)];
            let deadline = Instant::now() + Duration::from_millis(20);
            collect_answers(replies, deadline, &mut results).await;
            let timed_out = ResponseError::RequestTimedOut.code();
            assert_eq!(results[0][0].as_ref().unwrap().error_code, timed_out);
            assert_eq!(results[1][0].as_ref().unwrap().error_code, timed_out);
            assert_eq!(results[0][1].as_ref().unwrap().base_offset, 7);
            assert_eq!(results[0][1].as_ref().unwrap().error_code, errors::NONE);
        });
    }

    /// A lost owner answer (work abandoned) is left unset: build_response turns it
    /// into UNKNOWN_SERVER_ERROR rather than waiting.
    #[test]
    fn an_abandoned_answer_is_not_waited_for() {
        run(|| async {
            let mut results = vec![vec![None]];
            let canceled: LocalFuture<Result<OwnerResults, MeshError>> =
                Box::pin(async { Err(MeshError::Canceled(1)) });
            let deadline = Instant::now() + Duration::from_secs(3600);
            collect_answers(vec![(vec![(0, 0)], canceled)], deadline, &mut results).await;
            assert!(results[0][0].is_none());
        });
    }

    /// Parts of one request wait one after another on their owner against one
    /// deadline: once it passed, a later part's wait ends at once instead of
    /// getting a fresh timeout of its own.
    #[test]
    fn waits_share_the_request_deadline() {
        run(|| async {
            let deadline = Instant::now() + Duration::from_millis(10);
            let first = until(deadline, futures_lite::future::pending::<Result<(), i16>>()).await;
            assert_eq!(first, Err(ResponseError::RequestTimedOut.code()));
            assert!(Instant::now() >= deadline);
            let second = until(deadline, futures_lite::future::pending::<Result<(), i16>>()).await;
            assert_eq!(second, Err(ResponseError::RequestTimedOut.code()));
            // A wait that ends in time keeps its own outcome.
            let ready = until(Instant::now() + Duration::from_secs(3600), async {
                Err::<(), i16>(errors::NONE + 1)
            })
            .await;
            assert_eq!(ready, Err(1));
        });
    }
}
