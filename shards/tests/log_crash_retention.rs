//! Crash test of retention and segment rolls: a child process (this test binary re-executed with
//! `CHRONIK_RETENTION_CHILD` set) appends batches to a log of small segments, each child in a new
//! leader epoch and a new epoch every few rolls, and applies retention by size after every few
//! batches, reporting each batch once durable and the log start once a retention pass returned. The
//! parent SIGKILLs it at random moments (inside rolls, seals, deletions and checkpoint writes, which
//! run off the reactor and are awaited step by step) and reopens the log. After every kill:
//! - the log start is at least the one last reported (a deletion is durable once retention returns);
//! - the segments form one contiguous run from the log start to the log end (deletions are synced
//!   one at a time, oldest first, so a crash never leaves a gap);
//! - every batch reported durable at or above the log start is there, intact;
//! - the leader epoch history agrees with the batches (the checkpoint written at seal and after
//!   deletions, trimmed to the log start).
//!
//! `CHRONIK_CRASH_KILLS` sets the number of kills (default 200, a quarter of it here).

mod common;

use std::path::{Path, PathBuf};

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{LogConfig, PartitionLog};
use common::crash::{
    base_of, check_epoch_history, clock_seed, epoch_of, kills, next_offset_after, note_epoch,
    run_child_and_kill, run_on_executor, same_but_epoch, say, Rng,
};

const CHILD_ENV: &str = "CHRONIK_RETENTION_CHILD";
/// Retention runs after this many durable batches.
const RETAIN_EVERY: u64 = 7;
/// The child's leader epoch goes up after this many durable batches.
const NEW_EPOCH_EVERY: u64 = 40;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 10,
        retention_bytes: Some(32 << 10),
        index_interval_bytes: 1024,
        tail_cache_bytes: 32 << 10,
        ..LogConfig::default()
    }
}

/// The batch written at `base`: shape and bytes depend only on the offset.
fn expected_batch(base: i64) -> Vec<u8> {
    let records = 1 + (base.unsigned_abs() % 3) as i32;
    let len = 100 + (base.unsigned_abs().wrapping_mul(7919) % 2000) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|i| (base as usize).wrapping_mul(17).wrapping_add(i) as u8)
        .collect();
    let mut b = build_test_batch(0, records, 1_000_000 + base, &payload);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b
}

/// Whether `got` is the batch written at `base` (its leader epoch aside).
fn is_expected(got: &[u8], base: i64) -> bool {
    same_but_epoch(got, &expected_batch(base))
}

/// Child mode: append, report durable batches, apply retention now and then, until killed.
#[test]
fn retention_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(PathBuf::from(dir), config())
                .await
                .unwrap();
            let mut epoch = log.last_leader_epoch().max(0) + 1;
            let mut reports = 0u64;
            loop {
                let base = log.log_end_offset();
                let info = log.append(&expected_batch(base), epoch).unwrap();
                log.wait_durable(info.last_offset + 1).await.unwrap();
                say(format!("DURABLE {} {}", info.base_offset, info.last_offset));
                reports += 1;
                if reports % NEW_EPOCH_EVERY == 0 {
                    epoch += 1;
                }
                if reports % RETAIN_EVERY == 0 {
                    log.apply_retention(0).await.unwrap();
                    say(format!("RETAINED {}", log.log_start_offset()));
                }
            }
        })
    });
}

/// What a child reported: the batches it reported durable, and the last log start it reported.
#[derive(Default)]
struct Reports {
    durable: Vec<(i64, i64)>,
    retained: Option<i64>,
}

/// One line of a child's report.
enum Event {
    Durable(i64, i64),
    Retained(i64),
}

/// Runs one child and kills it at a random moment; returns what it reported.
fn run_child(dir: &Path, rng: &mut Rng) -> Reports {
    let events = run_child_and_kill(
        dir,
        rng,
        "retention_child_entry",
        CHILD_ENV,
        100_000,
        |kind, args| match (kind, args) {
            ("DURABLE", &[base, last]) => Some(Event::Durable(base, last)),
            ("RETAINED", &[start]) => Some(Event::Retained(start)),
            _ => None,
        },
    );
    let mut reports = Reports::default();
    for e in events {
        match e {
            Event::Durable(base, last) => reports.durable.push((base, last)),
            Event::Retained(start) => reports.retained = Some(start),
        }
    }
    reports
}

/// Reopens the log and checks it (see the module comment); returns (log start, log end).
fn verify(dir: &Path, durable: Vec<(i64, i64)>, retained: i64) -> (i64, i64) {
    let dir = dir.to_path_buf();
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(dir, config()).await.unwrap();
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            assert!(
                start >= retained,
                "log start {start} below {retained}, where a finished retention pass left it"
            );
            let mut epoch_starts: Vec<(i32, i64)> = Vec::new();
            let mut seen = std::collections::HashMap::new();
            let mut cur = start;
            while cur < end {
                let got = log.read(cur, 256 << 10, i64::MAX).await.unwrap();
                assert!(
                    !got.is_empty(),
                    "nothing readable at {cur} below the end {end}"
                );
                for b in got {
                    let base = base_of(&b);
                    assert_eq!(
                        base, cur,
                        "a gap in the log: batch at {base} where {cur} was next"
                    );
                    assert!(
                        is_expected(&b, base),
                        "batch at {base} is not what was written"
                    );
                    note_epoch(&mut epoch_starts, epoch_of(&b), base);
                    seen.insert(base, next_offset_after(&b) - 1);
                    cur = next_offset_after(&b);
                }
            }
            assert_eq!(cur, end);
            for &(base, last) in durable.iter().filter(|&&(base, _)| base >= start) {
                assert_eq!(
                    seen.get(&base),
                    Some(&last),
                    "durable batch {base}..={last} lost (log {start}..{end})"
                );
            }
            check_epoch_history(&log, &epoch_starts, end);
            log.close().await.unwrap();
            (start, end)
        })
    })
}

#[test]
fn sigkill_during_rolls_and_retention_leaves_a_contiguous_log() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let kills = kills(4);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("retention-0");
    let seed = clock_seed();
    eprintln!("retention crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let (mut retained, mut end) = (0i64, 0i64);
    let mut reported = 0usize;
    for _ in 0..kills {
        let reports = run_child(&dir, &mut rng);
        reported += reports.durable.len();
        retained = reports.retained.unwrap_or(retained);
        let floor_end = reports.durable.last().map_or(end, |&(_, last)| last + 1);
        let (start, new_end) = verify(&dir, reports.durable, retained);
        assert!(
            new_end >= floor_end,
            "log end {new_end} below {floor_end}, what was reported durable"
        );
        retained = start;
        end = new_end;
    }
    assert!(reported > 0, "the child never reported a durable batch");
    assert!(retained > 0, "retention never deleted a segment");
    eprintln!("retention crash test: {reported} durable batches, log {retained}..{end}");
}
