//! The control-plane rpcs between brokers: heartbeats (liveness and registration) to the
//! controller, client requests forwarded to the controller, and the controller's answers.
//! A broker that is not the controller never proposes: it forwards, and answers its client
//! with what the controller answered once the change was applied.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::command::ChangeBasis;
use super::error::ControlError;
use super::image::TopicInfo;
use super::producer_ids::ProducerIdBlock;
use super::state_machine::Outcome;
use super::topic_config::ConfigOp;
use super::NewTopic;

/// A control-plane message between brokers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    /// Sent to the controller every heartbeat interval.
    Heartbeat(Heartbeat),
    /// A client request for the controller; answered with `Answer` carrying the same id.
    Forward {
        id: u64,
        request: ClientRequest,
    },
    Answer {
        id: u64,
        result: ClientResult,
    },
}

/// A broker's liveness signal and registration data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: i32,
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub rpc: Option<SocketAddr>,
    /// Controlled shutdown: the broker is stopping; move its leaderships away.
    pub shutting_down: bool,
}

/// A metadata change a client asked for, as the controller receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        requests: Vec<(String, i32)>,
        validate_only: bool,
    },
    AlterTopicConfigs {
        topic: String,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    },
    /// A partition leader's ISR change (Kafka's AlterPartition), based on its leader epoch.
    AlterPartitionIsr {
        topic: String,
        partition: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
        /// The leader's ISR and the incarnations of the followers it adds; absent from older
        /// brokers, in which case the controller takes them from its own image.
        #[serde(default)]
        basis: Option<ChangeBasis>,
    },
    /// A broker asks for a block of producer ids (Kafka's AllocateProducerIds), naming the
    /// incarnation it registered with.
    AllocateProducerIds {
        broker_id: i32,
        incarnation: u64,
    },
}

/// The answer to a `ClientRequest`, one result per part in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResult {
    Topics(Vec<Result<Arc<TopicInfo>, ControlError>>),
    Deleted(Vec<Result<Uuid, ControlError>>),
    Units(Vec<Result<(), ControlError>>),
    Unit(Result<(), ControlError>),
    ProducerIds(Result<ProducerIdBlock, ControlError>),
}

/// Which shape of `ClientResult` a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultKind {
    Topics,
    Deleted,
    Units,
    Unit,
    ProducerIds,
}

impl ClientRequest {
    pub fn kind(&self) -> ResultKind {
        match self {
            ClientRequest::CreateTopics { .. } => ResultKind::Topics,
            ClientRequest::DeleteTopics { .. } => ResultKind::Deleted,
            ClientRequest::CreatePartitions { .. } => ResultKind::Units,
            ClientRequest::AlterTopicConfigs { .. } | ClientRequest::AlterPartitionIsr { .. } => {
                ResultKind::Unit
            }
            ClientRequest::AllocateProducerIds { .. } => ResultKind::ProducerIds,
        }
    }

    pub fn validate_only(&self) -> bool {
        match self {
            ClientRequest::CreateTopics { validate_only, .. }
            | ClientRequest::CreatePartitions { validate_only, .. }
            | ClientRequest::AlterTopicConfigs { validate_only, .. } => *validate_only,
            ClientRequest::DeleteTopics { .. }
            | ClientRequest::AlterPartitionIsr { .. }
            | ClientRequest::AllocateProducerIds { .. } => false,
        }
    }

    /// How many results the answer carries.
    pub fn parts(&self) -> usize {
        match self {
            ClientRequest::CreateTopics { topics, .. } => topics.len(),
            ClientRequest::DeleteTopics { names } => names.len(),
            ClientRequest::CreatePartitions { requests, .. } => requests.len(),
            ClientRequest::AlterTopicConfigs { .. }
            | ClientRequest::AlterPartitionIsr { .. }
            | ClientRequest::AllocateProducerIds { .. } => 1,
        }
    }
}

impl ClientResult {
    /// Builds the answer from the outcome of each part.
    pub fn from_outcomes(
        kind: ResultKind,
        outcomes: Vec<Result<Outcome, ControlError>>,
    ) -> ClientResult {
        let unexpected =
            |outcome: Outcome| ControlError::Internal(format!("unexpected outcome {outcome:?}"));
        match kind {
            ResultKind::Topics => ClientResult::Topics(
                outcomes
                    .into_iter()
                    .map(|r| match r? {
                        Outcome::TopicCreated(topic) => Ok(topic),
                        other => Err(unexpected(other)),
                    })
                    .collect(),
            ),
            ResultKind::Deleted => ClientResult::Deleted(
                outcomes
                    .into_iter()
                    .map(|r| match r? {
                        Outcome::TopicDeleted(id) => Ok(id),
                        other => Err(unexpected(other)),
                    })
                    .collect(),
            ),
            ResultKind::Units => {
                ClientResult::Units(outcomes.into_iter().map(|r| r.map(|_| ())).collect())
            }
            ResultKind::Unit => ClientResult::Unit(
                outcomes
                    .into_iter()
                    .next()
                    .map_or(Ok(()), |r| r.map(|_| ())),
            ),
            ResultKind::ProducerIds => {
                ClientResult::ProducerIds(match outcomes.into_iter().next() {
                    Some(Ok(Outcome::ProducerIds(block))) => Ok(block),
                    Some(Ok(other)) => Err(unexpected(other)),
                    Some(Err(error)) => Err(error),
                    None => Err(ControlError::Internal("no outcome".into())),
                })
            }
        }
    }

    /// The same error for every part.
    pub fn all_failed(kind: ResultKind, parts: usize, error: ControlError) -> ClientResult {
        ClientResult::from_outcomes(
            kind,
            (0..parts.max(1)).map(|_| Err(error.clone())).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_round_trip_as_json() {
        let rpc = Rpc::Forward {
            id: 7,
            request: ClientRequest::CreateTopics {
                topics: vec![NewTopic::with_defaults("t")],
                validate_only: false,
            },
        };
        let back: Rpc = serde_json::from_slice(&serde_json::to_vec(&rpc).unwrap()).unwrap();
        assert!(matches!(back, Rpc::Forward { id: 7, request } if request.parts() == 1));
        let answer = Rpc::Answer {
            id: 7,
            result: ClientResult::Deleted(vec![
                Ok(Uuid::from_u128(1)),
                Err(ControlError::UnknownTopic("x".into())),
            ]),
        };
        let back: Rpc = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        match back {
            Rpc::Answer {
                result: ClientResult::Deleted(results),
                ..
            } => {
                assert_eq!(results[1].as_ref().unwrap_err().code().code(), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn results_take_the_requests_shape() {
        let all = ClientResult::all_failed(ResultKind::Topics, 2, ControlError::Timeout);
        assert!(matches!(all, ClientResult::Topics(ref v) if v.len() == 2));
        let unit = ClientResult::from_outcomes(ResultKind::Unit, vec![Ok(Outcome::Done)]);
        assert_eq!(unit, ClientResult::Unit(Ok(())));
    }
}
