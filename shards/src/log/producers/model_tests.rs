//! Model-based property test of the producer state: simulated idempotent producers, each with up to
//! five batches in flight, send, deliver out of order (gaps), retry (duplicates), bump their epoch
//! (KIP-360: sequence back to 0, older requests still on the wire), while the table acts as the
//! partition leader and is now and then "restarted": replaced by its snapshot's round trip, by a
//! replay of the whole log, or by an older snapshot plus the batches after it (recovery).
//!
//! The reference decides every batch from the log itself (the list of accepted batches), not from
//! a table. Checked after every step:
//! - the leader, a shadow table that never restarts, and the reference give the same answer;
//! - the log never holds one (producer, epoch, sequence) twice;
//! - per producer and epoch, the log's batches are the first ones that producer sent in that
//!   epoch, in send order, with contiguous sequences;
//! - a retry of any of a producer's last five batches in its epoch gets the original offsets;
//! - a restored table equals the live one.

use proptest::prelude::*;

use super::*;

const PRODUCERS: usize = 3;
/// Producer 2 starts its first epoch just below `i32::MAX`, so its sequences wrap (an unknown
/// producer may start anywhere; a later epoch starts at 0).
const WRAPPING_START: i32 = i32::MAX - 6;

#[derive(Clone, Debug)]
enum Op {
    /// Producer sends a new batch of this many records (if fewer than five are in flight).
    Send(usize, i32),
    /// One of the producer's requests in flight (by index) reaches the leader.
    Deliver(usize, usize),
    /// The response to the producer's oldest request arrives, if that request was appended.
    Ack(usize),
    /// The producer retries one of its last five appended batches of the epoch (by index).
    Retry(usize, usize),
    /// KIP-360 epoch bump: its requests in flight become stale ones, still on the wire.
    BumpEpoch(usize),
    /// One of the producer's stale requests (by index) reaches the leader.
    DeliverStale(usize, usize),
    /// A segment roll: the log keeps a snapshot of the table at its end.
    Roll,
    Restart(Restart),
}

#[derive(Clone, Copy, Debug)]
enum Restart {
    /// The table is replaced by `decode(encode(table))`.
    Snapshot,
    /// The table is rebuilt by applying every batch of the log to an empty one.
    Replay,
    /// Recovery: the snapshot kept at the n-th roll (from the newest) plus the batches after it.
    SnapshotAndReplay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PRODUCERS;
    prop_oneof![
        6 => (p.clone(), 1i32..4).prop_map(|(p, n)| Op::Send(p, n)),
        8 => (p.clone(), 0usize..5).prop_map(|(p, i)| Op::Deliver(p, i)),
        4 => p.clone().prop_map(Op::Ack),
        3 => (p.clone(), 0usize..5).prop_map(|(p, i)| Op::Retry(p, i)),
        1 => p.clone().prop_map(Op::BumpEpoch),
        1 => (p, 0usize..5).prop_map(|(p, i)| Op::DeliverStale(p, i)),
        1 => Just(Op::Roll),
        1 => prop_oneof![
            Just(Restart::Snapshot),
            Just(Restart::Replay),
            (0usize..3).prop_map(Restart::SnapshotAndReplay),
        ]
        .prop_map(Op::Restart),
    ]
}

/// One request of a producer.
#[derive(Clone, Copy, Debug)]
struct Sent {
    batch: ProducerBatch,
    /// Where the leader appended it, once it did.
    offsets: Option<(i64, i64)>,
}

/// A simulated producer: the client side of idempotence.
#[derive(Debug)]
struct Producer {
    id: i64,
    epoch: i16,
    next_seq: i32,
    /// Requests not yet acknowledged, oldest first (at most five).
    in_flight: Vec<Sent>,
    /// Requests of older epochs, still on the wire (the last five).
    stale: Vec<Sent>,
    /// Every batch sent in the current epoch, in send order.
    sent: Vec<ProducerBatch>,
}

/// A batch in the log.
#[derive(Clone, Copy, Debug)]
struct Logged {
    batch: ProducerBatch,
    base: i64,
    last: i64,
}

/// The reference: the log's batches, and the decision rules read off them.
#[derive(Default)]
struct Reference {
    log: Vec<Logged>,
    end: i64,
}

impl Reference {
    fn decide(&self, b: &ProducerBatch) -> Result<Check, &'static str> {
        let mine: Vec<&Logged> = self
            .log
            .iter()
            .filter(|l| l.batch.producer_id == b.producer_id)
            .collect();
        let Some(last) = mine.last() else {
            return Ok(Check::Append);
        };
        let epoch = last.batch.epoch;
        if b.epoch < epoch {
            return Err("epoch");
        }
        if b.epoch > epoch {
            return if b.first_seq == 0 {
                Ok(Check::Append)
            } else {
                Err("sequence")
            };
        }
        let same_epoch: Vec<&&Logged> = mine.iter().filter(|l| l.batch.epoch == epoch).collect();
        let recent = &same_epoch[same_epoch.len().saturating_sub(BATCHES_RETAINED)..];
        if let Some(dup) = recent
            .iter()
            .find(|l| l.batch.first_seq == b.first_seq && l.batch.last_seq() == b.last_seq())
        {
            return Ok(Check::Duplicate {
                base_offset: dup.base,
                last_offset: dup.last,
            });
        }
        if b.first_seq == increment_sequence(last.batch.last_seq(), 1) {
            Ok(Check::Append)
        } else {
            Err("sequence")
        }
    }

    fn append(&mut self, batch: ProducerBatch) -> (i64, i64) {
        let base = self.end;
        let last = base + batch.last_offset_delta as i64;
        self.log.push(Logged { batch, base, last });
        self.end = last + 1;
        (base, last)
    }
}

fn kind(r: &Result<Check, Refusal>) -> Result<Check, &'static str> {
    match r {
        Ok(c) => Ok(*c),
        Err(Refusal::InvalidProducerEpoch(_)) => Err("epoch"),
        Err(Refusal::OutOfOrderSequence(_)) => Err("sequence"),
    }
}

struct World {
    producers: Vec<Producer>,
    reference: Reference,
    /// The leader's table: replaced at every restart.
    leader: ProducerTable,
    /// The same batches applied, never restarted.
    shadow: ProducerTable,
    /// (log end, snapshot bytes) kept at rolls, oldest first.
    snapshots: Vec<(i64, Vec<u8>)>,
    clock: i64,
}

impl World {
    fn new() -> Self {
        let producers = (0..PRODUCERS)
            .map(|i| Producer {
                id: 1000 + i as i64,
                epoch: i as i16,
                next_seq: if i == 2 { WRAPPING_START } else { 0 },
                in_flight: Vec::new(),
                stale: Vec::new(),
                sent: Vec::new(),
            })
            .collect();
        World {
            producers,
            reference: Reference::default(),
            leader: ProducerTable::default(),
            shadow: ProducerTable::default(),
            snapshots: Vec::new(),
            clock: 1_000,
        }
    }

    /// A request reaches the leader: the leader decides, appends if told to, and every answer is
    /// checked against the shadow table and the reference. Returns the offsets it was answered with.
    fn deliver(&mut self, batch: ProducerBatch) -> Option<(i64, i64)> {
        let expected = self.reference.decide(&batch);
        let got = self.leader.check(&batch);
        assert_eq!(kind(&got), expected, "leader on {batch:?}");
        assert_eq!(self.shadow.check(&batch), got, "shadow on {batch:?}");
        match got {
            Ok(Check::Append) => {
                let (base, last) = self.reference.append(batch);
                self.leader.apply(&batch, base, last);
                self.shadow.apply(&batch, base, last);
                Some((base, last))
            }
            Ok(Check::Duplicate {
                base_offset,
                last_offset,
            }) => Some((base_offset, last_offset)),
            Err(_) => None,
        }
    }

    fn step(&mut self, op: Op) {
        self.clock += 7;
        match op {
            Op::Send(p, n) => {
                let clock = self.clock;
                let pr = &mut self.producers[p];
                if pr.in_flight.len() < BATCHES_RETAINED {
                    let batch = ProducerBatch {
                        producer_id: pr.id,
                        epoch: pr.epoch,
                        first_seq: pr.next_seq,
                        last_offset_delta: n - 1,
                        max_timestamp: clock,
                    };
                    pr.next_seq = increment_sequence(batch.last_seq(), 1);
                    pr.in_flight.push(Sent {
                        batch,
                        offsets: None,
                    });
                    pr.sent.push(batch);
                }
            }
            Op::Deliver(p, i) => {
                let n = self.producers[p].in_flight.len();
                if n > 0 {
                    let sent = self.producers[p].in_flight[i % n];
                    let answer = self.deliver(sent.batch);
                    if let (Some(original), Some(now)) = (sent.offsets, answer) {
                        assert_eq!(now, original, "a retry moved {:?}", sent.batch);
                    }
                    if answer.is_some() {
                        self.producers[p].in_flight[i % n].offsets = answer;
                    }
                }
            }
            Op::Ack(p) => {
                let pr = &mut self.producers[p];
                if pr.in_flight.first().is_some_and(|s| s.offsets.is_some()) {
                    pr.in_flight.remove(0);
                }
            }
            Op::Retry(p, i) => {
                let (id, epoch) = (self.producers[p].id, self.producers[p].epoch);
                let mine: Vec<Logged> = self
                    .reference
                    .log
                    .iter()
                    .filter(|l| l.batch.producer_id == id && l.batch.epoch == epoch)
                    .copied()
                    .collect();
                let recent = &mine[mine.len().saturating_sub(BATCHES_RETAINED)..];
                if !recent.is_empty() {
                    let original = recent[i % recent.len()];
                    let end = self.reference.end;
                    let answer = self.deliver(original.batch);
                    assert_eq!(answer, Some((original.base, original.last)));
                    assert_eq!(self.reference.end, end, "a retry was appended");
                }
            }
            Op::BumpEpoch(p) => {
                let pr = &mut self.producers[p];
                pr.epoch += 1;
                pr.next_seq = 0;
                pr.sent.clear();
                let old = std::mem::take(&mut pr.in_flight);
                pr.stale
                    .extend(old.into_iter().filter(|s| s.offsets.is_none()));
                let excess = pr.stale.len().saturating_sub(BATCHES_RETAINED);
                pr.stale.drain(..excess);
            }
            Op::DeliverStale(p, i) => {
                let n = self.producers[p].stale.len();
                if n > 0 {
                    let sent = self.producers[p].stale.remove(i % n);
                    self.deliver(sent.batch);
                }
            }
            Op::Roll => {
                let end = self.reference.end;
                self.snapshots
                    .push((end, snapshot::encode(&self.leader, end)));
                let excess = self.snapshots.len().saturating_sub(3);
                self.snapshots.drain(..excess);
            }
            Op::Restart(how) => {
                self.leader = self.restored(how);
                assert_eq!(self.leader, self.shadow, "restored by {how:?}");
            }
        }
        self.check_log();
    }

    fn restored(&self, how: Restart) -> ProducerTable {
        let end = self.reference.end;
        let (from, mut table) = match how {
            Restart::Snapshot => {
                let decoded = snapshot::decode(&snapshot::encode(&self.leader, end));
                return decoded.map(|(_, t)| t).expect("a fresh snapshot decodes");
            }
            Restart::Replay => (0, ProducerTable::default()),
            Restart::SnapshotAndReplay(n) => match self.snapshots.iter().rev().nth(n) {
                Some((at, bytes)) => {
                    let (stored, table) = snapshot::decode(bytes).expect("a kept snapshot decodes");
                    assert_eq!(stored, *at);
                    (stored, table)
                }
                None => (0, ProducerTable::default()),
            },
        };
        for l in self.reference.log.iter().filter(|l| l.base >= from) {
            table.apply(&l.batch, l.base, l.last);
        }
        table
    }

    /// The log's invariants, from the reference's list of accepted batches.
    fn check_log(&self) {
        let mut seen = std::collections::HashSet::new();
        for l in &self.reference.log {
            let b = l.batch;
            for d in 0..=b.last_offset_delta {
                let seq = increment_sequence(b.first_seq, d);
                assert!(
                    seen.insert((b.producer_id, b.epoch, seq)),
                    "producer {} epoch {} sequence {seq} twice in the log",
                    b.producer_id,
                    b.epoch
                );
            }
        }
        for pr in &self.producers {
            self.logged_run(pr);
        }
    }

    /// Where in what `pr` sent in its current epoch the log's batches of that epoch begin. They are
    /// a contiguous run of what it sent, in send order; the run starts at its first batch unless the
    /// leader knew nothing of the producer then (an unknown producer may start at any sequence, as
    /// in Kafka: its earlier batches, delivered late, are then out of order).
    fn logged_run(&self, pr: &Producer) -> usize {
        let logged: Vec<ProducerBatch> = self
            .reference
            .log
            .iter()
            .filter(|l| l.batch.producer_id == pr.id && l.batch.epoch == pr.epoch)
            .map(|l| l.batch)
            .collect();
        let Some(first) = logged.first() else {
            return 0;
        };
        let start = pr.sent.iter().position(|b| b == first);
        let run = start.and_then(|k| pr.sent.get(k..k + logged.len()));
        assert!(
            run == Some(&logged[..]),
            "producer {} epoch {}: the log holds {logged:?}, it sent {:?}",
            pr.id,
            pr.epoch,
            pr.sent
        );
        let start = start.unwrap_or(0);
        if start > 0 {
            let earliest = self
                .reference
                .log
                .iter()
                .find(|l| l.batch.producer_id == pr.id)
                .map(|l| l.batch);
            assert_eq!(
                earliest,
                Some(*first),
                "producer {} known to the leader started epoch {} at sequence {}",
                pr.id,
                pr.epoch,
                first.first_seq
            );
        }
        start
    }
}

proptest! {
    // Cases from PROPTEST_CASES (tests/run sets it), 256 by default.
    #![proptest_config(ProptestConfig { max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn producer_table_matches_the_reference(ops in prop::collection::vec(op(), 1..250)) {
        let mut world = World::new();
        for op in ops {
            world.step(op);
        }
        // Every producer's in-flight batches, delivered in order, end as appended or duplicates.
        for p in 0..PRODUCERS {
            for i in 0..world.producers[p].in_flight.len() {
                world.step(Op::Deliver(p, i));
            }
        }
        // Those left unappended are the ones sent before an unknown producer's first logged batch.
        for pr in &world.producers {
            let lost = &pr.sent[..world.logged_run(pr)];
            for s in pr.in_flight.iter().filter(|s| s.offsets.is_none()) {
                prop_assert!(lost.contains(&s.batch), "{:?} never appended", s.batch);
            }
        }
    }
}
