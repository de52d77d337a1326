//! Crash test: a child process (this test binary re-executed with `CHRONIK_CRASH_CHILD` set) appends
//! batches from several tasks sharing group commit and prints each batch once `wait_durable` says it is
//! durable; the parent SIGKILLs it at random moments, reopens the log (running recovery) and checks that
//! every batch reported durable is intact and readable at its offsets, and that everything the log
//! returns is a whole, correct batch. The child also truncates the tail now and then (as a follower
//! does), so kills land inside truncations too. `CHRONIK_CRASH_KILLS` sets the number of kills
//! (default 200). A second child empties and restarts its log at a higher offset over and over
//! (`truncate_fully_and_start_at`), so kills land inside restarts: the log must reopen either as it
//! was or as restarted, with every batch reported durable since the last finished restart.

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{LogConfig, LogError, PartitionLog};
use common::crash::{
    base_of, check_epoch_history, clock_seed, epoch_of, kills, next_offset_after, note_epoch,
    run_child_and_kill, run_on_executor, same_but_epoch, say, Rng,
};

const CHILD_ENV: &str = "CHRONIK_CRASH_CHILD";
const RESTART_CHILD_ENV: &str = "CHRONIK_RESTART_CHILD";
const APPENDERS: usize = 4;
/// A truncation after this many durable reports.
const TRUNCATE_EVERY: u64 = 23;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        tail_cache_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// The batch the child writes at `base`: its shape and bytes depend only on the offset, so the parent
/// can check any batch it reads back.
fn expected_batch(base: i64) -> Vec<u8> {
    let records = 1 + (base.unsigned_abs() % 4) as i32;
    let len = 20 + (base.unsigned_abs().wrapping_mul(7919) % 3000) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|i| (base as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    let mut b = build_test_batch(0, records, 1_000_000 + base, &payload);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b
}

/// Whether `got` is the batch written at `base` (the leader epoch field aside: it varies).
fn is_expected(got: &[u8], base: i64) -> bool {
    same_but_epoch(got, &expected_batch(base))
}

/// Child mode: append and report durable batches until killed; now and then truncate the log tail
/// (reported before it starts and after it ends), as a follower would.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(PathBuf::from(dir), config())
                .await
                .unwrap();
            // Bumped when a truncation starts: a batch appended before it is not reported.
            let generation = Rc::new(Cell::new(0u64));
            // Each child is a new leader: a new epoch, bumped again after each truncation.
            let epoch = Rc::new(Cell::new(log.last_leader_epoch().max(0) + 1));
            let reports = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            for _ in 0..APPENDERS {
                let log = log.clone();
                let generation = generation.clone();
                let reports = reports.clone();
                let epoch = epoch.clone();
                tasks.push(glommio::spawn_local(async move {
                    loop {
                        let base = log.log_end_offset();
                        let batch = expected_batch(base);
                        let gen = generation.get();
                        let info = match log.append(&batch, epoch.get()) {
                            Ok(info) => info,
                            Err(LogError::Truncating) => {
                                glommio::timer::sleep(Duration::from_micros(200)).await;
                                continue;
                            }
                            Err(e) => panic!("append: {e}"),
                        };
                        assert_eq!(info.base_offset, base);
                        match log.wait_durable(info.last_offset + 1).await {
                            Ok(()) => {}
                            Err(LogError::OffsetOutOfRange { .. }) if generation.get() != gen => {
                                continue
                            }
                            Err(e) => panic!("wait_durable: {e}"),
                        }
                        if generation.get() != gen {
                            continue;
                        }
                        say(format!("DURABLE {} {}", info.base_offset, info.last_offset));
                        let n = reports.get() + 1;
                        reports.set(n);
                        if n % TRUNCATE_EVERY == 0 {
                            let back =
                                1 + (base.unsigned_abs().wrapping_mul(2654435761) % 80) as i64;
                            let point = (log.log_end_offset() - back).max(log.log_start_offset());
                            generation.set(generation.get() + 1);
                            say(format!("TRUNCATING {point}"));
                            log.truncate_to(point).await.unwrap();
                            epoch.set(epoch.get() + 1);
                            say(format!("TRUNCATED {point}"));
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
        })
    });
}

/// What the child reported.
enum Event {
    Durable(i64, i64),
    Truncating(i64),
    Truncated(i64),
    Restarting(i64),
    Restarted(i64),
}

/// Runs one child (the test named `entry`, told the directory through `env`) and kills it; returns
/// what it reported, in order.
fn run_child(dir: &Path, rng: &mut Rng, entry: &str, env: &str) -> Vec<Event> {
    run_child_and_kill(dir, rng, entry, env, 40_000, |kind, a| {
        match (kind, a.len()) {
            ("DURABLE", 2) => Some(Event::Durable(a[0], a[1])),
            ("TRUNCATING", 1) => Some(Event::Truncating(a[0])),
            ("TRUNCATED", 1) => Some(Event::Truncated(a[0])),
            ("RESTARTING", 1) => Some(Event::Restarting(a[0])),
            ("RESTARTED", 1) => Some(Event::Restarted(a[0])),
            _ => None,
        }
    })
}

/// A truncation at `point` cuts at the start of the batch holding it; batches have at most 4 records,
/// so everything ending below `point - 3` stays and nothing from `point` on does.
fn cut(durable: &mut Vec<(i64, i64)>, floor_end: &mut i64, point: i64) {
    let lowest = point - 3;
    durable.retain(|&(_, last)| last < lowest);
    *floor_end = (*floor_end).min(lowest);
}

/// Folds one child's reports into what must be in the log now: the batches it reported durable and
/// did not truncate later, and the lowest log end the log may have. A truncation still running at the
/// kill may or may not have happened: batches it would remove are dropped from the requirements.
/// Several appender tasks truncate, so several truncations can be running at once; one that has
/// started but waits for the log's locks cuts whatever was appended (and reported durable) meanwhile.
fn required_after(events: &[Event], floor_end: &mut i64) -> Vec<(i64, i64)> {
    let mut durable: Vec<(i64, i64)> = Vec::new();
    let mut in_flight: Vec<i64> = Vec::new();
    for e in events {
        match *e {
            Event::Durable(base, last) => {
                durable.push((base, last));
                *floor_end = (*floor_end).max(last + 1);
            }
            Event::Truncating(point) => in_flight.push(point),
            Event::Truncated(point) => {
                cut(&mut durable, floor_end, point);
                if let Some(i) = in_flight.iter().position(|&p| p == point) {
                    in_flight.remove(i);
                }
            }
            Event::Restarting(_) | Event::Restarted(_) => {}
        }
    }
    for point in in_flight {
        cut(&mut durable, floor_end, point);
    }
    durable
}

/// Reopens the log and checks it: reported batches intact, everything returned well-formed.
fn verify(dir: &Path, reported: Vec<(i64, i64)>, check_from: i64) -> i64 {
    let dir = dir.to_path_buf();
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(dir, config()).await.unwrap();
            let end = log.log_end_offset();
            for &(base, last) in &reported {
                assert!(
                    last < end,
                    "durable batch {base}..={last} lost: log end is {end}"
                );
                let got = log.read(base, 1, i64::MAX).await.unwrap();
                assert!(is_expected(&got[0], base), "batch {base} damaged");
                assert_eq!(next_offset_after(&got[0]), last + 1);
            }
            // Everything from check_from to the end: contiguous, whole, exactly what was written.
            let mut cur = check_from.max(log.log_start_offset());
            let mut epoch_starts: Vec<(i32, i64)> = Vec::new();
            while cur < end {
                let got = log.read(cur, 256 << 10, i64::MAX).await.unwrap();
                assert!(!got.is_empty());
                for b in got {
                    let base = base_of(&b);
                    assert!(base <= cur && cur < next_offset_after(&b) || base == cur);
                    assert!(
                        is_expected(&b, base),
                        "batch at {base} is not what was written"
                    );
                    note_epoch(&mut epoch_starts, epoch_of(&b), base);
                    cur = next_offset_after(&b);
                }
            }
            assert_eq!(cur, end);
            if check_from == 0 {
                // The whole log was scanned: its epoch history must match the batches.
                check_epoch_history(&log, &epoch_starts, end);
            }
            log.close().await.unwrap();
            end
        })
    })
}

#[test]
fn sigkill_never_loses_durable_batches() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let kills = kills(1);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("crash-0");
    let seed = clock_seed();
    eprintln!("crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let mut checked_to = 0i64;
    let mut floor_end = 0i64;
    let mut total_reported = 0usize;
    let mut truncations = 0usize;
    for _ in 0..kills {
        let events = run_child(&dir, &mut rng, "crash_child_entry", CHILD_ENV);
        truncations += events
            .iter()
            .filter(|e| matches!(e, Event::Truncated(_)))
            .count();
        let required = required_after(&events, &mut floor_end);
        total_reported += required.len();
        let end = verify(&dir, required, checked_to.saturating_sub(64).min(floor_end));
        assert!(
            end >= floor_end,
            "log end {end} below {floor_end}, what was durable and not truncated"
        );
        checked_to = end;
        floor_end = end;
    }
    // Final pass over the whole log.
    let end = verify(&dir, Vec::new(), 0);
    assert!(
        total_reported > 0,
        "the child never reported a durable batch"
    );
    eprintln!(
        "crash test: {total_reported} durable batches checked, {truncations} truncations, log end {end}"
    );
}

/// Child mode for restarts: appends a few batches, reports them durable, then restarts the log a
/// little above its end (reported before it starts and after it ends), until killed.
#[test]
fn restart_child_entry() {
    let Ok(dir) = std::env::var(RESTART_CHILD_ENV) else {
        return;
    };
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(PathBuf::from(dir), config())
                .await
                .unwrap();
            let mut round = 0u64;
            loop {
                round += 1;
                for _ in 0..1 + round % 5 {
                    let base = log.log_end_offset();
                    let info = log.append(&expected_batch(base), 1).unwrap();
                    log.wait_durable(info.last_offset + 1).await.unwrap();
                    say(format!("DURABLE {} {}", info.base_offset, info.last_offset));
                }
                let at = log.log_end_offset() + 1 + (round.wrapping_mul(2654435761) % 50) as i64;
                say(format!("RESTARTING {at}"));
                log.truncate_fully_and_start_at(at).await.unwrap();
                say(format!("RESTARTED {at}"));
            }
        })
    });
}

#[test]
fn sigkill_during_restarts_leaves_the_log_before_or_after() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var(RESTART_CHILD_ENV).is_ok() {
        return;
    }
    let kills = kills(4);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("restart-0");
    let seed = clock_seed();
    eprintln!("restart crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    // Where the log started when the child was started.
    let mut start = 0i64;
    let (mut interrupted, mut finished) = (0usize, 0usize);
    for _ in 0..kills {
        let events = run_child(&dir, &mut rng, "restart_child_entry", RESTART_CHILD_ENV);
        // The log start and the durable batches since the last finished restart; a restart still
        // running at the kill may or may not have happened.
        let mut durable: Vec<(i64, i64)> = Vec::new();
        let mut in_flight = None;
        for e in &events {
            match *e {
                Event::Durable(base, last) => durable.push((base, last)),
                Event::Restarting(at) => in_flight = Some(at),
                Event::Restarted(at) => {
                    finished += 1;
                    start = at;
                    durable.clear();
                    in_flight = None;
                }
                Event::Truncating(_) | Event::Truncated(_) => unreachable!(),
            }
        }
        let dir = dir.clone();
        start = run_on_executor(move || {
            Box::pin(async move {
                let log = PartitionLog::open(dir, config()).await.unwrap();
                let (log_start, end) = (log.log_start_offset(), log.log_end_offset());
                let restarted = match in_flight {
                    Some(at) if log_start == at => {
                        assert_eq!(end, at, "a restarted log must be empty");
                        true
                    }
                    _ => false,
                };
                if !restarted {
                    assert_eq!(log_start, start, "log start moved without a restart");
                    for &(base, last) in &durable {
                        assert!(last < end, "durable batch {base}..={last} lost: end {end}");
                    }
                    let mut cur = log_start;
                    while cur < end {
                        let got = log.read(cur, 256 << 10, i64::MAX).await.unwrap();
                        assert!(!got.is_empty());
                        for b in got {
                            let base = base_of(&b);
                            assert_eq!(base, cur);
                            assert!(
                                is_expected(&b, base),
                                "batch at {base} is not what was written"
                            );
                            cur = next_offset_after(&b);
                        }
                    }
                    assert_eq!(cur, end);
                }
                log.close().await.unwrap();
                log_start
            })
        });
        if in_flight.is_some() {
            interrupted += 1;
        }
    }
    eprintln!(
        "restart crash test: {finished} restarts finished, {interrupted} kills during a restart"
    );
    assert!(finished > 0, "the child never finished a restart");
}
