//! Property test: idempotent producers' batches (new, retried, out of order, new and old epochs) and
//! plain ones appended to a real log among flushes, segment rolls, truncations, retention, log start
//! moves, full restarts at an offset, and clean and unclean reopenings. The reference is a
//! `ProducerTable` fed the batches the log accepted, in order, including those retention deleted
//! (their producers' state stays) and none that a truncation or a crash cut. Checked: every append's
//! answer (appended at the log end, a duplicate with the original offsets, or the refusal), the
//! log's producer summaries after every step, and after every reopening and cut a retry of every
//! batch the reference remembers. A follower replicates the leader after every step (truncated
//! where the leader was cut, restarted where it restarted, as replication does) and must hold the
//! leader's producer state.

use std::path::PathBuf;
use std::rc::Rc;

use chronik_shards::log::batch::{build_producer_test_batch, build_test_batch};
use chronik_shards::log::producers::{Check, ProducerBatch, ProducerTable, Refusal};
use chronik_shards::log::{LogConfig, LogError, PartitionLog};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Req {
    /// The next batch of `n` records in the producer's epoch.
    Next(i32),
    /// A retry of the producer's k-th batch from its newest (0..=5: the sixth is forgotten).
    Retry(usize),
    /// A batch one sequence past the next one.
    Gap,
    /// A new epoch (KIP-360), starting at 0, or (when false) at 1.
    Bump(bool),
    /// A batch of the epoch before the producer's.
    OldEpoch,
}

#[derive(Clone, Debug)]
enum Op {
    Produce(i64, Req, u8),
    Plain(i32, u8),
    LeaderEpoch,
    Flush,
    /// Fraction (0..=1000) of the way from log start to log end.
    Truncate(u16),
    Retention(u64),
    /// `truncate_fully_and_start_at(end + delta)`, at least 0.
    Restart(i64),
    AdvanceStart(u16),
    CloseReopen,
    DropReopen,
}

fn send() -> impl Strategy<Value = Req> {
    prop_oneof![
        8 => (1i32..4).prop_map(Req::Next),
        4 => (0usize..6).prop_map(Req::Retry),
        1 => Just(Req::Gap),
        1 => any::<bool>().prop_map(Req::Bump),
        1 => Just(Req::OldEpoch),
    ]
}

/// Producer 2 is mostly silent, so retention often deletes every batch it wrote.
fn producer() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 3 => Just(1), 1 => Just(2)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (producer(), send(), 0u8..200).prop_map(|(p, s, len)| Op::Produce(p, s, len)),
        3 => (1i32..4, 0u8..200).prop_map(|(n, len)| Op::Plain(n, len)),
        1 => Just(Op::LeaderEpoch),
        2 => Just(Op::Flush),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        1 => (1000u64..5000).prop_map(Op::Retention),
        1 => (-20i64..50).prop_map(Op::Restart),
        1 => (0u16..=1200).prop_map(Op::AdvanceStart),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::DropReopen),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1500,
        index_interval_bytes: 200,
        tail_cache_bytes: 700,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A batch the log accepted, retention-deleted or not.
#[derive(Clone, Copy, Debug)]
struct Accepted {
    producer: Option<ProducerBatch>,
    base: i64,
    last: i64,
}

#[derive(Default)]
struct Model {
    history: Vec<Accepted>,
    start: i64,
    end: i64,
    leader_epoch: i32,
    clock: i64,
    /// The reference: `history`'s producer batches applied in order.
    table: ProducerTable,
}

impl Model {
    /// Cuts the history at `end` (a batch boundary) and rebuilds the reference table.
    fn cut(&mut self, end: i64) {
        self.history.retain(|a| a.last < end);
        self.end = end;
        self.table = ProducerTable::default();
        for a in &self.history {
            if let Some(b) = &a.producer {
                self.table.apply(b, a.base, a.last);
            }
        }
    }

    /// The batch a producer sends for `what`, or None when it has nothing to retry.
    fn batch(&mut self, pid: i64, what: &Req) -> Option<ProducerBatch> {
        self.clock += 3;
        let entry = self.table.get(pid);
        let epoch = entry.map_or(0, |e| e.epoch);
        let next = entry
            .and_then(|e| e.batches.back())
            .map_or(0, |b| b.last_seq + 1);
        let fresh = |epoch: i16, first_seq: i32, records: i32| ProducerBatch {
            producer_id: pid,
            epoch,
            first_seq,
            last_offset_delta: records - 1,
            max_timestamp: self.clock,
        };
        Some(match *what {
            Req::Next(n) => fresh(epoch, next, n),
            Req::Gap => fresh(epoch, next + 1, 1),
            Req::Bump(at_zero) => fresh(epoch + 1, if at_zero { 0 } else { 1 }, 1),
            Req::OldEpoch => fresh(epoch - 1, 0, 1),
            Req::Retry(k) => {
                let e = entry?;
                let b = if k < e.batches.len() {
                    e.batches[e.batches.len() - 1 - k]
                } else {
                    // Older than the last five: the sixth newest of its epoch, if the history has it.
                    let old: Vec<&Accepted> = self
                        .history
                        .iter()
                        .filter(|a| {
                            a.producer
                                .is_some_and(|p| p.producer_id == pid && p.epoch == epoch)
                        })
                        .collect();
                    let a = old.iter().rev().nth(k)?;
                    let p = a.producer?;
                    return Some(ProducerBatch {
                        max_timestamp: self.clock,
                        ..p
                    });
                };
                fresh(epoch, b.first_seq, b.last_seq - b.first_seq + 1)
            }
        })
        .filter(|b| b.epoch >= 0)
    }
}

fn bytes_of(b: &ProducerBatch, len: u8) -> Vec<u8> {
    build_producer_test_batch(
        0,
        b.last_offset_delta + 1,
        b.max_timestamp,
        &vec![len; len as usize],
        (b.producer_id, b.epoch, b.first_seq),
    )
}

/// Appends `b` to the log and checks the answer against the reference's decision.
fn produce(log: &PartitionLog, model: &mut Model, b: ProducerBatch, len: u8) {
    let expected = model.table.check(&b);
    let got = log.append(&bytes_of(&b, len), model.leader_epoch);
    match (expected, got) {
        (Ok(Check::Append), Ok(info)) => {
            assert!(!info.duplicate, "{b:?}");
            assert_eq!(
                (info.base_offset, info.last_offset),
                (model.end, model.end + b.last_offset_delta as i64)
            );
            model.table.apply(&b, info.base_offset, info.last_offset);
            model.history.push(Accepted {
                producer: Some(b),
                base: info.base_offset,
                last: info.last_offset,
            });
            model.end = info.last_offset + 1;
        }
        (
            Ok(Check::Duplicate {
                base_offset,
                last_offset,
            }),
            Ok(info),
        ) => {
            assert!(info.duplicate, "{b:?}");
            assert_eq!(
                (info.base_offset, info.last_offset),
                (base_offset, last_offset)
            );
        }
        (Err(Refusal::OutOfOrderSequence(_)), Err(LogError::OutOfOrderSequence(_))) => {}
        (Err(Refusal::InvalidProducerEpoch(_)), Err(LogError::InvalidProducerEpoch(_))) => {}
        (expected, got) => panic!("{b:?}: expected {expected:?}, the log answered {got:?}"),
    }
    assert_eq!(log.log_end_offset(), model.end);
}

/// The log's producer state is the reference's: its summaries, and a retry of every batch the
/// reference remembers is answered with that batch's offsets.
fn check_state(log: &PartitionLog, model: &mut Model) {
    assert_eq!(
        log.producer_states(),
        model.table.summaries(),
        "history {:?}",
        model.history
    );
    let retries: Vec<ProducerBatch> = model
        .table
        .entries()
        .into_iter()
        .flat_map(|(id, e)| {
            e.batches.iter().map(move |b| ProducerBatch {
                producer_id: id,
                epoch: e.epoch,
                first_seq: b.first_seq,
                last_offset_delta: b.last_seq - b.first_seq,
                max_timestamp: 0,
            })
        })
        .collect();
    for b in retries {
        produce(log, model, b, 1);
    }
}

/// What the follower must undo before it copies the leader's new batches.
#[derive(Default)]
struct Divergence {
    /// The leader restarted its log at this offset.
    restart: Option<i64>,
    /// The leader's log was cut to this end (the lowest since the last sync).
    cut: Option<i64>,
}

impl Divergence {
    fn cut_to(&mut self, end: i64) {
        self.cut = Some(self.cut.map_or(end, |c| c.min(end)));
    }
}

/// Brings the follower to the leader's log (follower appends of the leader's stored batches) and
/// checks it holds the same producer state.
async fn sync_follower(leader: &PartitionLog, follower: &PartitionLog, diverged: &mut Divergence) {
    if let Some(offset) = diverged.restart.take() {
        follower.truncate_fully_and_start_at(offset).await.unwrap();
    }
    if let Some(end) = diverged.cut.take() {
        follower.truncate_to(end).await.unwrap();
    }
    while follower.log_end_offset() < leader.log_end_offset() {
        let from = follower.log_end_offset();
        for b in leader.read(from, 1 << 20, i64::MAX).await.unwrap() {
            follower.append_replica(b).unwrap();
        }
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(
        follower.producer_states(),
        leader.producer_states(),
        "follower"
    );
}

async fn run_ops(dir: PathBuf, follower_dir: PathBuf, ops: Vec<Op>) {
    let mut log: Rc<PartitionLog> = PartitionLog::open(dir.clone(), config()).await.unwrap();
    let follower = PartitionLog::open(follower_dir, config()).await.unwrap();
    let mut diverged = Divergence::default();
    // Batch timestamps near the wall clock: a reopen expires producers idle past
    // producer.id.expiration.ms by it.
    let mut model = Model {
        clock: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Produce(pid, what, len) => {
                if let Some(b) = model.batch(pid, &what) {
                    produce(&log, &mut model, b, len);
                }
            }
            Op::Plain(n, len) => {
                model.clock += 3;
                let info = log
                    .append(
                        &build_test_batch(0, n, model.clock, &vec![len; len as usize]),
                        model.leader_epoch,
                    )
                    .unwrap();
                assert_eq!(info.base_offset, model.end);
                model.history.push(Accepted {
                    producer: None,
                    base: info.base_offset,
                    last: info.last_offset,
                });
                model.end = info.last_offset + 1;
            }
            Op::LeaderEpoch => model.leader_epoch += 1,
            Op::Flush => log.wait_durable(model.end).await.unwrap(),
            Op::Truncate(frac) => {
                let offset = model.start + (model.end - model.start) * frac as i64 / 1000;
                log.truncate_to(offset).await.unwrap();
                let end = log.log_end_offset();
                let expected = model
                    .history
                    .iter()
                    .find(|a| a.last >= offset.max(model.start))
                    .map_or(model.end, |a| a.base.max(model.start));
                assert_eq!(end, expected, "truncate_to({offset})");
                model.cut(end);
                diverged.cut_to(end);
                check_state(&log, &mut model);
            }
            Op::Retention(bytes) => {
                log.update_config(LogConfig {
                    retention_bytes: Some(bytes),
                    ..config()
                });
                log.apply_retention(0).await.unwrap();
                log.update_config(config());
                model.start = log.log_start_offset();
                check_state(&log, &mut model);
            }
            Op::Restart(delta) => {
                let offset = (model.end + delta).max(0);
                log.truncate_fully_and_start_at(offset).await.unwrap();
                model.history.clear();
                model.start = offset;
                model.cut(offset);
                diverged = Divergence {
                    restart: Some(offset),
                    cut: None,
                };
                check_state(&log, &mut model);
            }
            Op::AdvanceStart(frac) => {
                let offset = model.start + (model.end - model.start) * frac as i64 / 1000;
                log.advance_log_start(offset).await.unwrap();
                model.start = log.log_start_offset();
            }
            Op::CloseReopen => {
                log.close().await.unwrap();
                log = PartitionLog::open(dir.clone(), config()).await.unwrap();
                assert_eq!(log.log_end_offset(), model.end);
                check_state(&log, &mut model);
            }
            Op::DropReopen => {
                let durable = log.durable_end_offset();
                drop(log);
                log = PartitionLog::open(dir.clone(), config()).await.unwrap();
                let end = log.log_end_offset();
                assert!(
                    end >= durable && end <= model.end,
                    "end {end}, durable {durable}, model {}",
                    model.end
                );
                model.cut(end.max(model.start));
                diverged.cut_to(model.end);
                check_state(&log, &mut model);
            }
        }
        // A leader epoch below the log's last one is fenced: follow the log.
        model.leader_epoch = model.leader_epoch.max(log.last_leader_epoch());
        assert_eq!(log.producer_states(), model.table.summaries());
        sync_follower(&log, &follower, &mut diverged).await;
    }
    follower.close().await.unwrap();
    log.close().await.unwrap();
    let log = PartitionLog::open(dir, config()).await.unwrap();
    check_state(&log, &mut model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 300, ..ProptestConfig::default() })]
    #[test]
    fn the_logs_producer_state_matches_the_reference(ops in prop::collection::vec(op(), 1..80)) {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (dir, follower_dir) = (tmp.path().join("p-0"), tmp.path().join("p-1"));
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || run_ops(dir, follower_dir, ops))
            .unwrap()
            .join()
            .unwrap();
    }
}
