//! Producer ids, allocated through the controller in blocks (Kafka's KIP-730: the
//! AllocateProducerIds rpc and the ProducerIdsRecord).
//!
//! - The cluster's next free producer id lives in the metadata image (`next_producer_id`), so it
//!   is in every Raft snapshot and replayed from the log after a restart. A broker asks the
//!   controller for a block (`Command::AllocateProducerIds`); applying the command hands out
//!   `[next_producer_id, next_producer_id + BLOCK_SIZE)` and advances the counter. The range is
//!   chosen at apply time, not when the command is planned, so two proposals in flight at once
//!   (or from two controllers across a failover) still get disjoint blocks: the log orders them.
//!   A block whose answer is lost (a timeout, a failover) is never handed out again: ids are
//!   wasted, never reused.
//! - Each broker keeps one `ProducerIdCache` shared by all its shards: ids are taken from the
//!   current block under a mutex, and the next block is asked for once the current one runs low
//!   (Kafka prefetches at 90% use), so InitProducerId rarely waits for Raft.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use event_listener::Event;
use serde::{Deserialize, Serialize};

use super::command::Command;
use super::error::ControlError;
use super::forward::{ClientRequest, ClientResult};
use super::image::MetadataImage;
use super::ControlHandle;

/// Ids per block: Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`.
pub const BLOCK_SIZE: i32 = 1000;
/// The next block is asked for when this many ids of the current one remain (90% used).
const REFILL_AT: i64 = BLOCK_SIZE as i64 / 10;
/// An allocation not answered for this long is given up (the control plane answers every
/// request within its proposal timeout; this only guards against a lost answer).
const ALLOCATION_GIVE_UP: Duration = Duration::from_secs(30);

/// A range of producer ids handed to one broker: `first .. first + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlock {
    pub first: i64,
    pub size: i32,
}

impl ProducerIdBlock {
    /// One past the last id of the block.
    pub fn end(&self) -> i64 {
        self.first.saturating_add(i64::from(self.size))
    }
}

/// The command a broker's request for a block becomes on the controller. Refused at once (no
/// Raft entry) when the broker's incarnation is not the registered one; `apply` checks again.
pub fn plan(
    image: &MetadataImage,
    broker_id: i32,
    incarnation: u64,
) -> Result<Command, ControlError> {
    check_broker_epoch(image, broker_id, incarnation)?;
    Ok(Command::AllocateProducerIds {
        broker_id,
        incarnation,
        size: BLOCK_SIZE,
    })
}

/// Applies `AllocateProducerIds`: the block starting at the image's next free id, which moves
/// past it. Kafka's `ProducerIdControlManager.generateNextProducerId`: a broker that is not
/// registered in this incarnation gets STALE_BROKER_EPOCH; running out of the i64 range is an
/// internal error.
pub fn allocate(
    image: &mut MetadataImage,
    broker_id: i32,
    incarnation: u64,
    size: i32,
) -> Result<ProducerIdBlock, ControlError> {
    check_broker_epoch(image, broker_id, incarnation)?;
    if size <= 0 {
        return Err(ControlError::InvalidRequest(format!(
            "a producer id block of {size} ids"
        )));
    }
    let first = image.next_producer_id;
    let end = first.checked_add(i64::from(size)).ok_or_else(|| {
        ControlError::Internal("producer ids exhausted: the next block passes i64::MAX".into())
    })?;
    image.next_producer_id = end;
    Ok(ProducerIdBlock { first, size })
}

/// Kafka's `checkBrokerEpoch`: the broker must be registered with this incarnation.
fn check_broker_epoch(
    image: &MetadataImage,
    broker_id: i32,
    incarnation: u64,
) -> Result<(), ControlError> {
    match image.brokers.get(&broker_id) {
        Some(broker) if broker.incarnation == incarnation => Ok(()),
        Some(broker) => Err(ControlError::StaleBrokerEpoch(format!(
            "broker {broker_id} incarnation {incarnation} is not the registered one ({})",
            broker.incarnation
        ))),
        None => Err(ControlError::StaleBrokerEpoch(format!(
            "broker {broker_id} is not registered"
        ))),
    }
}

/// The ids a broker holds: the rest of its current block and at most one spare block. I/O-free.
#[derive(Debug, Default)]
struct Blocks {
    /// The next id to hand out and the end of the current block (`next == end`: empty).
    next: i64,
    end: i64,
    spare: Option<ProducerIdBlock>,
}

impl Blocks {
    /// The next id, moving to the spare block when the current one is used up.
    fn take(&mut self) -> Option<i64> {
        if self.next >= self.end {
            let spare = self.spare.take()?;
            self.next = spare.first;
            self.end = spare.end();
        }
        let id = self.next;
        self.next += 1;
        Some(id)
    }

    /// Whether another block should be asked for: no spare and the current one runs low.
    fn wants_block(&self) -> bool {
        self.spare.is_none() && self.end - self.next <= REFILL_AT
    }

    /// Stores a block from the controller. Blocks only grow (the controller's counter only
    /// moves forward); one that does not is refused, as Kafka's `sanityCheckResponse` does.
    fn add(&mut self, block: ProducerIdBlock) -> Result<(), String> {
        let highest = self.spare.map_or(self.end, |spare| spare.end());
        if block.first < highest || block.size <= 0 || block.first < 0 {
            return Err(format!(
                "producer id block {block:?} is not above the ids held (up to {highest})"
            ));
        }
        if self.next >= self.end {
            self.next = block.first;
            self.end = block.end();
        } else if self.spare.is_none() {
            self.spare = Some(block);
        } else {
            return Err(format!(
                "producer id block {block:?} arrived with a spare held"
            ));
        }
        Ok(())
    }
}

/// An allocation asked of the control plane and not yet picked up.
struct InFlight {
    generation: u64,
    /// The answer's channel; taken by the one caller that awaits it (`next_id`), put back if that
    /// caller stops waiting. One holder at a time: with several, a closed and empty channel could
    /// mean "another caller took the answer" as well as "the control thread stopped".
    answer: Option<async_channel::Receiver<ClientResult>>,
    started: Instant,
}

/// What a caller waiting for a block does.
enum Wait {
    /// Await the answer's channel (this caller holds it).
    Receive(async_channel::Receiver<ClientResult>, u64),
    /// Another caller holds it: wait for it to store the answer.
    Listen(event_listener::EventListener),
}

/// Puts the answer's channel back if its holder stops waiting (its future dropped).
struct PutBack<'a> {
    cache: &'a ProducerIdCache,
    answer: Option<async_channel::Receiver<ClientResult>>,
    generation: u64,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let mut state = self.cache.lock();
        if let Some(in_flight) = state
            .in_flight
            .as_mut()
            .filter(|f| f.generation == self.generation)
        {
            in_flight.answer = Some(answer);
        }
        drop(state);
        self.cache.changed.notify(usize::MAX);
    }
}

struct CacheState {
    blocks: Blocks,
    in_flight: Option<InFlight>,
    /// Counts allocations started, so a waiter knows whether the one it waited for failed.
    generation: u64,
    /// The generation of the last allocation that failed, and why.
    failed: Option<(u64, ControlError)>,
}

/// A broker's producer ids, shared by all its shards (see the module comment). Waiting for a
/// block is runtime-agnostic: the answer comes on an async channel from the control thread, and
/// whichever caller is waiting picks it up; nobody has to be waiting for it to arrive.
pub struct ProducerIdCache {
    state: Mutex<CacheState>,
    changed: Event,
}

impl Default for ProducerIdCache {
    fn default() -> Self {
        ProducerIdCache {
            state: Mutex::new(CacheState {
                blocks: Blocks::default(),
                in_flight: None,
                generation: 0,
                failed: None,
            }),
            changed: Event::new(),
        }
    }
}

impl ProducerIdCache {
    /// A producer id never handed out before by any broker of the cluster. Waits for a block
    /// from the controller only when none is held; fails with the control plane's error when
    /// the block it waited for could not be allocated. Callers bound the wait themselves.
    pub async fn next_id(&self, control: &ControlHandle) -> Result<i64, ControlError> {
        let mut waited_for: Option<u64> = None;
        loop {
            let wait = {
                let mut state = self.lock();
                self.pick_up(&mut state);
                let id = state.blocks.take();
                if let Some((generation, error)) = &state.failed {
                    if id.is_none() && waited_for == Some(*generation) {
                        return Err(error.clone());
                    }
                }
                let now = Instant::now();
                if state
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| now.duration_since(f.started) > ALLOCATION_GIVE_UP)
                {
                    tracing::warn!("a producer id block was not answered in time; asking again");
                    state.in_flight = None;
                }
                if state.in_flight.is_none() && state.blocks.wants_block() {
                    state.generation += 1;
                    let request = ClientRequest::AllocateProducerIds {
                        broker_id: control.node_id(),
                        incarnation: control.incarnation(),
                    };
                    state.in_flight = Some(InFlight {
                        generation: state.generation,
                        answer: Some(control.send(request)),
                        started: now,
                    });
                }
                if let Some(id) = id {
                    return Ok(id);
                }
                let Some(in_flight) = state.in_flight.as_mut() else {
                    // Not reached: with no id held, `wants_block` holds and one was just asked for.
                    return Err(ControlError::Internal(
                        "no producer id block in flight".into(),
                    ));
                };
                waited_for = Some(in_flight.generation);
                match in_flight.answer.take() {
                    Some(answer) => Wait::Receive(answer, in_flight.generation),
                    None => Wait::Listen(self.changed.listen()),
                }
            };
            match wait {
                Wait::Listen(listener) => listener.await,
                Wait::Receive(answer, generation) => {
                    let mut holder = PutBack {
                        cache: self,
                        answer: Some(answer.clone()),
                        generation,
                    };
                    let received = answer.recv().await;
                    holder.answer = None;
                    let mut state = self.lock();
                    if state
                        .in_flight
                        .as_ref()
                        .is_some_and(|f| f.generation == generation)
                    {
                        state.in_flight = None;
                    }
                    match received {
                        Ok(result) => self.store(&mut state, generation, result),
                        // Only this caller held the channel: the control thread dropped the
                        // request (it stopped).
                        Err(_) => state.failed = Some((generation, stopped())),
                    }
                    drop(state);
                    self.changed.notify(usize::MAX);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the in-flight allocation's answer if it has arrived.
    fn pick_up(&self, state: &mut CacheState) {
        let Some(in_flight) = &state.in_flight else {
            return;
        };
        let generation = in_flight.generation;
        let Some(answer) = &in_flight.answer else {
            // A caller is awaiting it and will store it.
            return;
        };
        match answer.try_recv() {
            Ok(result) => {
                state.in_flight = None;
                self.store(state, generation, result);
                self.changed.notify(usize::MAX);
            }
            Err(async_channel::TryRecvError::Empty) => {}
            Err(async_channel::TryRecvError::Closed) => {
                state.in_flight = None;
                state.failed = Some((generation, stopped()));
                self.changed.notify(usize::MAX);
            }
        }
    }

    fn store(&self, state: &mut CacheState, generation: u64, result: ClientResult) {
        match result {
            ClientResult::ProducerIds(Ok(block)) => {
                tracing::debug!(?block, "producer id block received");
                if let Err(e) = state.blocks.add(block) {
                    tracing::error!("{e}");
                    state.failed = Some((generation, ControlError::Internal(e)));
                }
            }
            ClientResult::ProducerIds(Err(error)) => {
                tracing::debug!("allocating producer ids failed: {error}");
                state.failed = Some((generation, error));
            }
            other => {
                tracing::error!(?other, "answer of an unexpected kind");
                state.failed = Some((
                    generation,
                    ControlError::Internal("answer of an unexpected kind".into()),
                ));
            }
        }
    }
}

fn stopped() -> ControlError {
    ControlError::Internal("the control plane has stopped".into())
}

#[cfg(test)]
#[path = "producer_ids_tests.rs"]
mod tests;
