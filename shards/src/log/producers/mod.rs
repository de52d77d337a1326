//! Idempotent-producer state of one partition: for each producer id, its epoch and the sequence
//! ranges (with their offsets) of its last five batches. An I/O-free state machine, as Kafka's
//! `ProducerStateManager`/`ProducerAppendInfo`: the leader asks [`ProducerTable::check`] whether a
//! batch is new, a retry of one already in the log, or out of order; every replica (leader, follower,
//! recovery) feeds the batches of its log through [`ProducerTable::apply`] in offset order, so the
//! state is a function of the log's batches and a new leader has it at once.
//!
//! Rules (Kafka's, `ProducerAppendInfo.checkSequence`/`checkProducerEpoch`):
//! - a batch whose epoch and sequence range match one of the producer's last five is a duplicate,
//!   answered with that batch's offsets and not appended again;
//! - an epoch older than the producer's is INVALID_PRODUCER_EPOCH;
//! - a newer epoch must start at sequence 0 (unless the producer is unknown);
//! - in the same epoch the first sequence must follow the last one (wrapping at `i32::MAX`);
//! - an unknown producer (never seen, or expired) may start at any sequence: its state may have
//!   been removed by expiry, and Kafka (KIP-360) accepts it rather than answer UNKNOWN_PRODUCER_ID.
//!
//! Time is an input: a producer whose last batch timestamp is older than
//! `producer.id.expiration.ms` is dropped by [`ProducerTable::expire`]. Retention deleting the
//! segments that carried a producer's batches does not drop its state.

use std::collections::{HashMap, VecDeque};

pub mod snapshot;

/// Batches remembered per producer for duplicate detection: a producer has at most five requests in
/// flight per partition (`max.in.flight.requests.per.connection` <= 5 with idempotence).
pub const BATCHES_RETAINED: usize = 5;

/// Producers remembered per partition. Any client can write batches under any producer id (an
/// unknown one is accepted), so without a bound a peer could grow the table without limit until
/// expiry. When full, a new producer evicts the one idle longest (by last batch timestamp, then
/// id, so every replica evicts the same one): the evicted producer only loses its duplicate
/// detection, as if it had expired. About 200 bytes each at most: 200 KiB per partition.
pub const MAX_PRODUCERS: usize = 1_000;

/// The producer fields of one batch with a producer id (its RecordBatch header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    /// `lastOffsetDelta`: the batch covers sequences `first_seq ..= first_seq + last_offset_delta`.
    pub last_offset_delta: i32,
    /// The batch's max timestamp: the producer's last activity, for expiry.
    pub max_timestamp: i64,
}

impl ProducerBatch {
    /// The last sequence of the batch, wrapping past `i32::MAX` to 0 as Kafka's sequences do.
    pub fn last_seq(&self) -> i32 {
        increment_sequence(self.first_seq, self.last_offset_delta)
    }
}

/// `seq + delta` in Kafka's sequence space (0 ..= i32::MAX, wrapping to 0).
pub fn increment_sequence(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// Where one retained batch of a producer went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// One producer's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`BATCHES_RETAINED`].
    pub batches: VecDeque<BatchMetadata>,
    pub last_timestamp: i64,
}

impl ProducerEntry {
    fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }
}

/// What the leader does with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// New and in order: append it.
    Append,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// Why the leader refuses a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// OUT_OF_ORDER_SEQUENCE_NUMBER: a gap (or a new epoch not starting at 0).
    OutOfOrderSequence(String),
    /// INVALID_PRODUCER_EPOCH: a fenced (older) epoch.
    InvalidProducerEpoch(String),
}

/// What DescribeProducers shows of one producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
}

/// The producer state of one partition replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    /// The leader's decision on `batch` (nothing changes: [`apply`](Self::apply) records it once
    /// appended).
    pub fn check(&self, batch: &ProducerBatch) -> Result<Check, Refusal> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Check::Append);
        };
        let last_seq = batch.last_seq();
        if batch.epoch == entry.epoch {
            if let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == batch.first_seq && b.last_seq == last_seq)
            {
                return Ok(Check::Duplicate {
                    base_offset: dup.base_offset,
                    last_offset: dup.last_offset,
                });
            }
        }
        if batch.epoch < entry.epoch {
            return Err(Refusal::InvalidProducerEpoch(format!(
                "epoch {} of producer {} is older than its current epoch {}",
                batch.epoch, batch.producer_id, entry.epoch
            )));
        }
        if batch.epoch != entry.epoch {
            if batch.first_seq != 0 {
                return Err(Refusal::OutOfOrderSequence(format!(
                    "producer {} starts its new epoch {} at sequence {}, not 0",
                    batch.producer_id, batch.epoch, batch.first_seq
                )));
            }
            return Ok(Check::Append);
        }
        match entry.last_seq() {
            Some(last) if !in_sequence(last, batch.first_seq) => {
                Err(Refusal::OutOfOrderSequence(format!(
                    "producer {} epoch {}: sequence {} after {}",
                    batch.producer_id, batch.epoch, batch.first_seq, last
                )))
            }
            _ => Ok(Check::Append),
        }
    }

    /// Records a batch of the log (appended here as leader, replicated, or replayed at recovery),
    /// in offset order. A new epoch forgets the batches of the old one.
    pub fn apply(&mut self, batch: &ProducerBatch, base_offset: i64, last_offset: i64) {
        if self.producers.len() >= MAX_PRODUCERS && !self.producers.contains_key(&batch.producer_id)
        {
            self.evict_idlest();
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::new(),
                last_timestamp: batch.max_timestamp,
            });
        if entry.epoch != batch.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq(),
            base_offset,
            last_offset,
        });
        entry.last_timestamp = entry.last_timestamp.max(batch.max_timestamp);
    }

    /// Makes room for one producer: drops the one idle longest (ties broken by id).
    fn evict_idlest(&mut self) {
        let idlest = self
            .producers
            .iter()
            .min_by_key(|(&id, e)| (e.last_timestamp, id))
            .map(|(&id, _)| id);
        if let Some(id) = idlest {
            self.producers.remove(&id);
        }
    }

    /// Drops producers whose last batch timestamp is `expiration_ms` or more before `now_ms`
    /// (`producer.id.expiration.ms`). Returns how many were dropped.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every producer, by id.
    pub fn summaries(&self) -> Vec<ProducerSummary> {
        let mut out: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(&id, e)| ProducerSummary {
                producer_id: id,
                producer_epoch: e.epoch,
                last_sequence: e.last_seq().unwrap_or(-1),
                last_timestamp: e.last_timestamp,
            })
            .collect();
        out.sort_by_key(|s| s.producer_id);
        out
    }

    /// The producers with their entries, by id (for snapshots).
    pub fn entries(&self) -> Vec<(i64, &ProducerEntry)> {
        let mut out: Vec<(i64, &ProducerEntry)> =
            self.producers.iter().map(|(&id, e)| (id, e)).collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Puts back an entry read from a snapshot.
    pub fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.producers.insert(producer_id, entry);
    }
}

/// Whether `next` may follow `last` in one epoch.
fn in_sequence(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (next == 0 && last == i32::MAX)
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
