//! Property test: random appends, flushes, truncations, retention, full restarts at an offset, log start
//! advances, clean and unclean reopenings, reads and timestamp lookups, checked against a simple
//! in-memory model of the log.

use std::path::PathBuf;
use std::rc::Rc;

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{LogConfig, PartitionLog};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Batches of (records, payload length, timestamp).
    Append(Vec<(i32, usize, i64)>, bool),
    Flush,
    /// Fraction (0..=1000) of the way from log start to log end.
    Truncate(u16),
    Read(u16, usize),
    Timestamp(i64),
    Retention(u64),
    Epoch(i32),
    /// `truncate_fully_and_start_at(end + delta)` (clamped at 0: sometimes below the log start).
    Restart(i64),
    /// `advance_log_start` to a fraction (0..=1200) of the way from log start to log end.
    AdvanceStart(u16),
    CloseReopen,
    DropReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((1i32..5, 0usize..400, 0i64..100), 1..4), any::<bool>())
            .prop_map(|(b, e)| Op::Append(b, e)),
        2 => Just(Op::Flush),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        4 => ((0u16..=1000), 0usize..3000).prop_map(|(f, m)| Op::Read(f, m)),
        1 => (0i64..110).prop_map(Op::Timestamp),
        1 => (1000u64..6000).prop_map(Op::Retention),
        1 => (-1i32..12).prop_map(Op::Epoch),
        1 => (-50i64..200).prop_map(Op::Restart),
        1 => (0u16..=1200).prop_map(Op::AdvanceStart),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::DropReopen),
    ]
}

#[derive(Clone)]
struct ModelBatch {
    epoch: i32,
    base: i64,
    last: i64,
    max_ts: i64,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Model {
    batches: Vec<ModelBatch>,
    start: i64,
    end: i64,
    epoch: i32,
    /// The epoch of the last batch a log-start move deleted when it deleted every batch, at the new
    /// start: like Kafka's epoch cache after `truncateFromStart`, the log still knows it.
    floor_epoch: Option<(i32, i64)>,
}

impl Model {
    /// OffsetForLeaderEpoch from the batches themselves (Kafka's rules).
    fn end_offset_for(&self, epoch: i32) -> (i32, i64) {
        let mut starts: Vec<(i32, i64)> = self.floor_epoch.into_iter().collect();
        for b in &self.batches {
            match starts.last_mut() {
                Some(last) if last.0 == b.epoch => {}
                // The floor epoch holds no batch: one starting at the same offset supersedes it.
                Some(last) if last.1 == b.base => *last = (b.epoch, b.base),
                _ => starts.push((b.epoch, b.base)),
            }
        }
        if epoch < 0 || starts.is_empty() {
            return (-1, -1);
        }
        if starts.last().unwrap().0 == epoch {
            return (epoch, self.end);
        }
        match starts.iter().position(|&(e, _)| e > epoch) {
            None => (-1, -1),
            Some(0) => (epoch, starts[0].1),
            Some(i) => (starts[i - 1].0, starts[i].1),
        }
    }

    /// The log start moved (retention, advance_log_start) to `start`: a batch boundary, or the log
    /// end when every batch went.
    fn move_start(&mut self, start: i64) {
        if start <= self.start {
            return;
        }
        let count = self.batches.iter().position(|b| b.base == start);
        let count = count.unwrap_or_else(|| {
            assert_eq!(start, self.end, "log start {start} is not a batch boundary");
            self.batches.len()
        });
        self.drop_front(count, start);
    }

    /// The log start moved to `start`, deleting the first `count` batches.
    fn drop_front(&mut self, count: usize, start: i64) {
        if count > 0 && count == self.batches.len() {
            self.floor_epoch = Some((self.batches[count - 1].epoch, start));
        } else if count > 0 {
            self.floor_epoch = None;
        } else if let Some(floor) = self.floor_epoch.as_mut() {
            // Already empty: the epoch in force moves with the start.
            floor.1 = floor.1.max(start);
        }
        self.batches.drain(..count);
        self.start = start;
    }

    fn truncate(&mut self, offset: i64) {
        // rounded down to the batch containing offset
        if let Some(i) = self.batches.iter().position(|b| b.last >= offset) {
            self.end = self.batches[i].base;
            self.batches.truncate(i);
        }
    }
}

fn config(tail: usize) -> LogConfig {
    LogConfig {
        segment_bytes: 1500,
        index_interval_bytes: 200,
        tail_cache_bytes: tail,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn pick(model: &Model, frac: u16) -> i64 {
    model.start + (model.end - model.start) * frac as i64 / 1000
}

async fn check_all(log: &PartitionLog, model: &Model) {
    for e in -1..12 {
        assert_eq!(
            log.end_offset_for_epoch(e),
            model.end_offset_for(e),
            "epoch {e}; model start {} end {} floor {:?} batches {:?}",
            model.start,
            model.end,
            model.floor_epoch,
            model
                .batches
                .iter()
                .map(|b| (b.epoch, b.base))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(log.log_start_offset(), model.start);
    assert_eq!(log.log_end_offset(), model.end);
    let got = log.read(model.start, usize::MAX, i64::MAX).await.unwrap();
    assert_eq!(got.len(), model.batches.len());
    for (g, m) in got.iter().zip(&model.batches) {
        assert_eq!(g.as_ref(), m.bytes.as_slice(), "batch {}", m.base);
    }
}

async fn run_ops(dir: PathBuf, tail: usize, ops: Vec<Op>) {
    let mut log: Rc<PartitionLog> = PartitionLog::open(dir.clone(), config(tail)).await.unwrap();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append(batches, bump) => {
                if bump {
                    model.epoch += 1;
                }
                let mut records = Vec::new();
                for &(n, len, ts) in &batches {
                    records.extend(build_test_batch(0, n, ts, &vec![len as u8; len]));
                }
                let info = log.append(&records, model.epoch).unwrap();
                assert_eq!(info.base_offset, model.end);
                let mut pos = 0;
                for &(n, len, ts) in &batches {
                    let mut b = build_test_batch(0, n, ts, &vec![len as u8; len]);
                    b[0..8].copy_from_slice(&model.end.to_be_bytes());
                    b[12..16].copy_from_slice(&model.epoch.to_be_bytes());
                    pos += b.len();
                    model.batches.push(ModelBatch {
                        epoch: model.epoch,
                        base: model.end,
                        last: model.end + n as i64 - 1,
                        max_ts: ts,
                        bytes: b,
                    });
                    model.end += n as i64;
                }
                assert_eq!(pos, records.len());
                assert_eq!(info.last_offset, model.end - 1);
            }
            Op::Flush => {
                log.wait_durable(model.end).await.unwrap();
                assert!(log.durable_end_offset() >= model.end);
            }
            Op::Truncate(frac) => {
                let offset = pick(&model, frac);
                let before = model.end;
                log.truncate_to(offset).await.unwrap();
                model.truncate(offset);
                if offset <= model.start {
                    model.end = model.start;
                    model.batches.clear();
                }
                if offset < before && model.floor_epoch.is_some_and(|f| f.1 >= model.end) {
                    // A cut at the floor epoch's start forgets it, as Kafka's truncateFromEnd does.
                    model.floor_epoch = None;
                }
                assert_eq!(log.log_end_offset(), model.end);
                if offset < before {
                    // a real truncation is durable on return; truncating at the end is a no-op
                    assert_eq!(log.durable_end_offset(), model.end);
                }
            }
            Op::Read(frac, max_bytes) => {
                let from = pick(&model, frac);
                let upper = model.end - (model.end - from) / 3;
                let got = log.read(from, max_bytes, upper).await.unwrap();
                let mut expected: Vec<&ModelBatch> = Vec::new();
                let mut taken = 0;
                for b in model.batches.iter().filter(|b| b.last >= from) {
                    if b.base >= upper
                        || (!expected.is_empty() && taken + b.bytes.len() > max_bytes)
                    {
                        break;
                    }
                    taken += b.bytes.len();
                    expected.push(b);
                    if taken >= max_bytes {
                        break;
                    }
                }
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "read({from}, {max_bytes}, {upper})"
                );
                for (g, m) in got.iter().zip(expected) {
                    assert_eq!(g.as_ref(), m.bytes.as_slice());
                }
            }
            Op::Timestamp(ts) => {
                let expected = model
                    .batches
                    .iter()
                    .find(|b| b.max_ts >= ts)
                    .map(|b| (b.base, b.max_ts));
                assert_eq!(
                    log.offset_for_timestamp(ts).await.unwrap(),
                    expected,
                    "ts {ts}"
                );
            }
            Op::Retention(bytes) => {
                log.update_config(LogConfig {
                    retention_bytes: Some(bytes),
                    ..config(tail)
                });
                log.apply_retention(0).await.unwrap();
                log.update_config(config(tail));
                let start = log.log_start_offset();
                assert!(start >= model.start && start <= model.end);
                model.move_start(start);
            }
            Op::Epoch(e) => {
                assert_eq!(
                    log.end_offset_for_epoch(e),
                    model.end_offset_for(e),
                    "epoch {e}"
                );
            }
            Op::Restart(delta) => {
                let offset = (model.end + delta).max(0);
                log.truncate_fully_and_start_at(offset).await.unwrap();
                model.batches.clear();
                model.floor_epoch = None;
                model.start = offset;
                model.end = offset;
                check_all(&log, &model).await;
                assert_eq!(log.durable_end_offset(), offset);
            }
            Op::AdvanceStart(frac) => {
                let offset = pick(&model, frac);
                log.advance_log_start(offset).await.unwrap();
                let start = log.log_start_offset();
                assert!(
                    start >= model.start && start <= offset.max(model.start),
                    "start {start} after advancing from {} to {offset}",
                    model.start
                );
                assert_eq!(log.log_end_offset(), model.end);
                model.move_start(start);
            }
            Op::CloseReopen => {
                log.close().await.unwrap();
                log = PartitionLog::open(dir.clone(), config(tail)).await.unwrap();
                check_all(&log, &model).await;
            }
            Op::DropReopen => {
                // Like a process crash without a machine crash: the durable prefix must survive; what
                // was only buffered may or may not.
                let durable = log.durable_end_offset();
                drop(log);
                log = PartitionLog::open(dir.clone(), config(tail)).await.unwrap();
                let end = log.log_end_offset();
                assert!(
                    end >= durable && end <= model.end,
                    "end {end}, durable {durable}, model {}",
                    model.end
                );
                model.truncate(end);
                if end <= model.start {
                    model.end = model.start.max(end);
                }
                check_all(&log, &model).await;
            }
        }
    }
    check_all(&log, &model).await;
    log.close().await.unwrap();
    let log = PartitionLog::open(dir, config(tail)).await.unwrap();
    check_all(&log, &model).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60), tail in prop_oneof![Just(0usize), Just(700), Just(1 << 20)]) {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("p-0");
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || run_ops(dir, tail, ops))
            .unwrap()
            .join()
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Arbitrary bytes, and valid batches with one byte changed, are errors or batches: never a panic.
    #[test]
    fn batch_validation_never_panics(
        noise in prop::collection::vec(any::<u8>(), 0..200),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        records in 1i32..5,
    ) {
        let _ = chronik_shards::log::batch::split_batches(&noise, 1 << 20);
        let mut b = build_test_batch(0, records, 7, &noise);
        let i = at.index(b.len());
        b[i] ^= flip;
        // only the fields outside the CRC may change and still pass
        if chronik_shards::log::batch::split_batches(&b, 1 << 20).is_ok() {
            prop_assert!(i < 8 || (12..16).contains(&i));
        }
    }
}
