//! InitProducerId: a producer id and epoch for an idempotent producer.
//!
//! Any broker answers (there is no transaction coordinator: transactions are not implemented).
//! Fresh ids come from the broker's block cache, which the controller fills through Raft
//! (`control::producer_ids`), so no two brokers ever hand out the same id.
//!
//! How each request is answered, and where that differs from Kafka's `TransactionCoordinator`
//! (`handleInitProducerId`) and `KafkaApis`:
//! - no producer id and epoch (-1, -1): a fresh id, epoch 0. As Kafka.
//! - only one of the two given: INVALID_REQUEST. As Kafka.
//! - a producer id and epoch given (v3+, KIP-360): the same id with the epoch one higher, and a
//!   fresh id with epoch 0 once the epoch is exhausted (>= `i16::MAX - 1`, Kafka's
//!   `isEpochExhausted`). Kafka answers a request without a transactional id with a fresh id
//!   whatever it carries; chronik bumps the epoch as Kafka's coordinator does for a
//!   transactional producer it knows, because kafka-python 3 asks exactly this to recover from
//!   OUT_OF_ORDER_SEQUENCE_NUMBER / UNKNOWN_PRODUCER_ID and expects its id back with epoch + 1
//!   (librdkafka and the Java client bump an idempotent producer's epoch locally and never send
//!   one). The answer depends only on the request, so a retried bump gets the same answer.
//!   An id no broker has handed out yet (at or past the image's `next_producer_id`) gets a fresh
//!   id instead, as Kafka would answer.
//! - a transactional id: TRANSACTIONAL_ID_AUTHORIZATION_FAILED (an empty one: INVALID_REQUEST, as
//!   Kafka). Transactions are not implemented, and the response has no message field, so the
//!   code must stop the producer at once instead of letting it retry forever: this is the one
//!   code librdkafka, the Java client and kafka-python all treat as fatal for InitProducerId,
//!   and it is what Kafka itself answers a principal that may not use transactional ids.
//! - no block of ids to be had (no controller during an election, the control plane stopped,
//!   no answer within `ALLOCATION_WAIT`): COORDINATOR_LOAD_IN_PROGRESS, as Kafka's
//!   `RPCProducerIdManager` answers ("Producer ID block is full. Waiting for next block"):
//!   retriable in every client (NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE would send
//!   kafka-python looking for a transaction coordinator with FindCoordinator).

use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ResponseKind};
use kafka_protocol::ResponseError;

use super::Reply;
use crate::server::shard::Shard;

/// The longest a request waits for a block of ids from the controller before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS (the allocation goes on; the client's retry picks it up).
const ALLOCATION_WAIT: Duration = Duration::from_secs(5);
/// An epoch at or above this is exhausted: the producer gets a new id (Kafka's
/// `TransactionMetadata.isEpochExhausted`).
const EXHAUSTED_EPOCH: i16 = i16::MAX - 1;

/// What a request is answered with, decided from the request and the image alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// A fresh producer id, epoch 0.
    Fresh,
    /// This id and epoch (a bumped epoch).
    Existing {
        producer_id: i64,
        epoch: i16,
    },
    Error(ResponseError),
}

/// Decides an InitProducerId request (see the module comment); `next_producer_id` is the first
/// id no broker has been handed yet, from this broker's image.
fn decide(request: &InitProducerIdRequest, next_producer_id: i64) -> Decision {
    match request.transactional_id.as_ref().map(|id| id.0.as_str()) {
        None => {}
        Some("") => return Decision::Error(ResponseError::InvalidRequest),
        Some(_) => return Decision::Error(ResponseError::TransactionalIdAuthorizationFailed),
    }
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    match (producer_id, epoch) {
        (-1, -1) => Decision::Fresh,
        (id, epoch) if id < 0 || epoch < 0 => Decision::Error(ResponseError::InvalidRequest),
        (_, epoch) if epoch >= EXHAUSTED_EPOCH => Decision::Fresh,
        (id, _) if id >= next_producer_id => Decision::Fresh,
        (id, epoch) => Decision::Existing {
            producer_id: id,
            epoch: epoch + 1,
        },
    }
}

fn response(error: Option<ResponseError>, producer_id: i64, epoch: i16) -> ResponseKind {
    let mut response = InitProducerIdResponse::default();
    match error {
        Some(error) => {
            response.error_code = error.code();
            response.producer_id = (-1).into();
            response.producer_epoch = -1;
        }
        None => {
            response.producer_id = producer_id.into();
            response.producer_epoch = epoch;
        }
    }
    ResponseKind::InitProducerId(response)
}

pub fn handle(shard: &Rc<Shard>, request: InitProducerIdRequest) -> Reply {
    match decide(&request, shard.control.image().next_producer_id) {
        Decision::Error(error) => Reply::Now(Box::new(response(Some(error), -1, -1))),
        Decision::Existing { producer_id, epoch } => {
            Reply::Now(Box::new(response(None, producer_id, epoch)))
        }
        Decision::Fresh => {
            let control = shard.control.clone();
            Reply::Later(Box::pin(async move {
                let allocated = async { Some(control.new_producer_id().await) }
                    .or(async {
                        glommio::timer::sleep(ALLOCATION_WAIT).await;
                        None
                    })
                    .await;
                match allocated {
                    Some(Ok(id)) => response(None, id, 0),
                    Some(Err(e)) => {
                        tracing::debug!("no producer id to hand out: {e}");
                        response(Some(ResponseError::CoordinatorLoadInProgress), -1, -1)
                    }
                    None => {
                        tracing::debug!("no producer id block within {ALLOCATION_WAIT:?}");
                        response(Some(ResponseError::CoordinatorLoadInProgress), -1, -1)
                    }
                }
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::protocol::StrBytes;

    fn request(
        transactional_id: Option<&str>,
        producer_id: i64,
        epoch: i16,
    ) -> InitProducerIdRequest {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id =
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
        request.producer_id = producer_id.into();
        request.producer_epoch = epoch;
        request
    }

    #[test]
    fn decisions_follow_kafka_and_kip_360() {
        let next = 5000;
        let cases = [
            (request(None, -1, -1), Decision::Fresh),
            (
                request(None, 42, 0),
                Decision::Existing {
                    producer_id: 42,
                    epoch: 1,
                },
            ),
            (
                request(None, 4999, 7),
                Decision::Existing {
                    producer_id: 4999,
                    epoch: 8,
                },
            ),
            (
                request(None, 42, EXHAUSTED_EPOCH - 1),
                Decision::Existing {
                    producer_id: 42,
                    epoch: EXHAUSTED_EPOCH,
                },
            ),
            (request(None, 42, EXHAUSTED_EPOCH), Decision::Fresh),
            (request(None, 42, i16::MAX), Decision::Fresh),
            // Never handed out by any broker: a fresh id, as Kafka answers.
            (request(None, 5000, 3), Decision::Fresh),
            (
                request(None, -1, 0),
                Decision::Error(ResponseError::InvalidRequest),
            ),
            (
                request(None, 42, -1),
                Decision::Error(ResponseError::InvalidRequest),
            ),
            (
                request(None, -7, 2),
                Decision::Error(ResponseError::InvalidRequest),
            ),
            (
                request(Some("txn"), -1, -1),
                Decision::Error(ResponseError::TransactionalIdAuthorizationFailed),
            ),
            (
                request(Some("txn"), 42, 1),
                Decision::Error(ResponseError::TransactionalIdAuthorizationFailed),
            ),
            (
                request(Some(""), -1, -1),
                Decision::Error(ResponseError::InvalidRequest),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(decide(&request, next), expected, "{request:?}");
        }
    }

    #[test]
    fn the_codes_clients_see() {
        // Fatal in librdkafka, the Java client and kafka-python; retriable in all three.
        assert_eq!(ResponseError::TransactionalIdAuthorizationFailed.code(), 53);
        assert_eq!(ResponseError::CoordinatorLoadInProgress.code(), 14);
    }

    #[test]
    fn errors_carry_no_producer_id() {
        match response(Some(ResponseError::CoordinatorLoadInProgress), 5, 5) {
            ResponseKind::InitProducerId(r) => {
                assert_eq!(
                    (r.error_code, r.producer_id.0, r.producer_epoch),
                    (14, -1, -1)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
