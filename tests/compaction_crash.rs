//! Issue 15, test 2: SIGKILL a broker at random moments while its cleaner compacts a topic that
//! a producer keeps dirtying, and check the log after every restart.
//!
//! One broker, a compacted topic with 4 KiB segments and a dirty ratio of 0.01 (the cleaner has
//! work after nearly every segment roll), a cleaner backoff of 50 ms, tombstones kept 100 ms (so
//! passes remove them, and a kill between the swaps of one pass could bring an older value back).
//! A producer (acks=all) writes batches of keyed updates and tombstones over 200 keys until a
//! killer thread SIGKILLs the broker at a random moment; the broker restarts on the same
//! directory. After every restart, reading from offset 0: every batch is valid (CRC32C, records
//! that parse), offsets go strictly up, and for every key the latest record is its latest
//! acknowledged write or a later one the producer sent (in flight at the kill); a key is absent
//! only if its latest acknowledged write, or a write in flight at the kill, was a tombstone.
//!
//! Every other life of the broker runs with `CHRONIK_FAULT_SLOW_CLEANER_SWAP_MS` (5..50 ms between
//! the steps of a segment replacement; set it to fix the value for every life), so that kills land
//! inside swaps; the broker's log says how many restarts found one interrupted.
//!
//! Kills: 80 by default (under a minute), 500 with `CHRONIK_LONG_TESTS` (`tests/run --long`),
//! `CHRONIK_COMPACTION_KILLS` to choose; `CHRONIK_COMPACTION_SEED` replays a run (the seed is
//! printed).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::compaction::{
    compacted_configs, create_topic_with, fetch_once, keyed_batch, read_from_start, try_produce,
    Acked, Unacked,
};
use common::Broker;

const TOPIC: &str = "compact-crash";
/// Keys, written with very different frequencies (key `KEYS * u^4` for a uniform u: key 0 about
/// every other write, the last ones once in thousands), so that the latest records of keys lie
/// all over the log, in the cleaned head that every pass rewrites in groups of several small
/// segments too: a replacement interrupted anywhere loses some key's latest record if it is not
/// finished right.
const KEYS: u64 = 2000;
/// The broker's fault hook: sleep this many ms between the steps of a segment replacement.
const SLOW_SWAP: &str = "CHRONIK_FAULT_SLOW_CLEANER_SWAP_MS";
/// The cleaner's debug line per pass (segments in and out) goes to the broker's log.
const CLEANER_LOG: &str = "info,chronik::partitions::cleaner=debug";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A short cleaner backoff: a pass follows the writes within a fraction of a second.
const BROKER_ARGS: &[&str] = &["--log-cleaner-backoff-ms", "50"];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the producer knows: the latest acknowledged write of every key, and per key what it sent
/// after that write without an answer.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Vec<u8>, Acked>,
    unacked: Unacked,
    acked_end: i64,
    acked_records: u64,
}

impl Ledger {
    fn sent(&mut self, records: &[(Vec<u8>, Option<Vec<u8>>)]) {
        for (k, v) in records {
            self.unacked.entry(k.clone()).or_default().push(v.clone());
        }
    }

    fn acknowledged(&mut self, records: &[(Vec<u8>, Option<Vec<u8>>)], base: i64) {
        for (i, (k, v)) in records.iter().enumerate() {
            let offset = base + i as i64;
            // Produce is one request at a time: this write is above every unanswered one.
            self.unacked.remove(k);
            self.acked.insert(
                k.clone(),
                Acked {
                    offset,
                    value: v.clone(),
                },
            );
            self.acked_end = self.acked_end.max(offset + 1);
        }
        self.acked_records += records.len() as u64;
    }
}

/// A batch of 1..=20 writes to random keys (see `KEYS`), one in ten a tombstone; values carry a
/// sequence.
fn next_batch(rng: &mut Rng, seq: &mut u64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..1 + rng.below(20))
        .map(|_| {
            *seq += 1;
            let u = rng.below(1 << 24) as f64 / (1u64 << 24) as f64;
            let key = (KEYS as f64 * u.powi(4)) as u64;
            let key = format!("key-{key:04}");
            let value = (rng.below(10) != 0).then(|| format!("{key}={seq}").into_bytes());
            (key.into_bytes(), value)
        })
        .collect()
}

/// Produces until the connection breaks (the kill). Returns the number of acknowledged batches.
fn produce_until_killed(
    broker: &mut Broker,
    ledger: &mut Ledger,
    rng: &mut Rng,
    seq: &mut u64,
    killing: &AtomicBool,
) -> usize {
    let mut client = broker.client();
    let mut batches = 0;
    loop {
        let records = next_batch(rng, seq);
        ledger.sent(&records);
        match try_produce(&mut client, TOPIC, -1, keyed_batch(&records, now_ms())) {
            Ok((0, base)) => {
                ledger.acknowledged(&records, base);
                batches += 1;
            }
            // Not acknowledged (a timeout under load, say): the records stay unanswered.
            Ok((code, _)) => eprintln!("produce answered error {code}"),
            Err(e) => {
                assert!(
                    killing.load(Ordering::SeqCst),
                    "the connection broke before the kill: {e}\n{}",
                    broker.log()
                );
                return batches;
            }
        }
    }
}

/// Waits until the partition answers fetches with a high watermark covering every acknowledged
/// write (a restarted broker takes leadership back first).
fn wait_readable(broker: &Broker, acked_end: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = broker.client();
    loop {
        let last = match fetch_once(&mut client, TOPIC, 0, 1) {
            Ok(f) if f.high_watermark >= acked_end => return,
            Ok(f) => format!("high watermark {} < {acked_end}", f.high_watermark),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "not readable 30 s after the restart: {last}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cleaner passes in the broker's log, and how many wrote fewer segments than they read.
fn cleaner_passes(log: &str) -> (usize, usize) {
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = &line[line.find(name)? + name.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let passes: Vec<(u64, u64)> = log
        .lines()
        .filter_map(|l| Some((field(l, "segments_in=")?, field(l, "segments_out=")?)))
        .collect();
    let merging = passes.iter().filter(|(i, o)| o < i).count();
    (passes.len(), merging)
}

#[test]
fn sigkill_while_the_cleaner_runs_keeps_every_keys_latest_acknowledged_write() {
    let kills = env_u64("CHRONIK_COMPACTION_KILLS").unwrap_or(
        if std::env::var_os("CHRONIK_LONG_TESTS").is_some() {
            500
        } else {
            80
        },
    );
    let seed = env_u64("CHRONIK_COMPACTION_SEED").unwrap_or(now_ms() as u64) | 1;
    eprintln!("compaction crash test: {kills} kills, seed {seed} (CHRONIK_COMPACTION_SEED)");
    let mut rng = Rng(seed);
    let fixed_slow_swap = env_u64(SLOW_SWAP);
    let mut broker = Broker::start_with(&[("RUST_LOG", CLEANER_LOG)], BROKER_ARGS);
    let configs = compacted_configs("100");
    let configs: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        create_topic_with(&mut broker.client(), TOPIC, &configs),
        0,
        "creating the compacted topic"
    );
    wait_readable(&broker, 0);

    let mut ledger = Ledger::default();
    let mut seq = 0u64;
    let (mut compacted_reads, mut rereads, mut max_records) = (0usize, 0usize, 0usize);
    for kill in 0..kills {
        let pid = broker.pid() as i32;
        let delay = Duration::from_millis(50 + rng.below(450));
        let killing = Arc::new(AtomicBool::new(false));
        let killer = {
            let killing = killing.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                killing.store(true, Ordering::SeqCst);
                // SAFETY: kill(2) on our own child, not reaped before this thread is joined.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            })
        };
        produce_until_killed(&mut broker, &mut ledger, &mut rng, &mut seq, &killing);
        killer.join().expect("killer thread");
        broker.kill();
        // Every other life, the replacement's steps are slowed (5..50 ms between them) so that
        // kills land inside swaps.
        let slow_swap = match fixed_slow_swap {
            Some(ms) => ms.to_string(),
            None if kill % 2 == 0 => (5 + rng.below(45)).to_string(),
            None => String::new(),
        };
        let mut env = vec![("RUST_LOG", CLEANER_LOG)];
        if !slow_swap.is_empty() {
            env.push((SLOW_SWAP, slow_swap.as_str()));
        }
        broker.start_again(&env, BROKER_ARGS);
        wait_readable(&broker, ledger.acked_end);

        // A pass that runs while the log is read may remove a tombstone (and the older value it
        // deleted) between two fetches, which a reader of a compacted log can see (Kafka's
        // delete.retention.ms is there for such readers): a failed check is read again, and only
        // a failure on three reads in a row fails the test.
        let mut failures = Vec::new();
        while failures.len() < 3 {
            let read = read_from_start(
                &mut broker.client(),
                TOPIC,
                Some(ledger.acked_end),
                64 << 10,
            );
            let checked = read.and_then(|log| {
                common::compaction::check_latest(&log, &ledger.acked, Some(&ledger.unacked))
                    .map(|_| log.len())
            });
            match checked {
                Ok(records) => {
                    max_records = max_records.max(records);
                    if (records as i64) < ledger.acked_end {
                        compacted_reads += 1;
                    }
                    break;
                }
                Err(e) => {
                    failures.push(e);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        assert!(
            failures.len() < 3,
            "after kill {kill} (seed {seed}): {failures:#?}\n{}",
            broker.log()
        );
        rereads += failures.len();
    }
    // What recovery found: kills inside a replacement, after its commit point or before.
    let log = broker.log();
    let completed = log
        .matches("completing an interrupted segment replacement")
        .count();
    let (passes, merging) = cleaner_passes(&log);
    let discarded = log
        .matches("removing an unfinished cleaned segment")
        .count();
    eprintln!(
        "{kills} kills: {} records acknowledged up to offset {}, at most {max_records} records \
         in the log, {compacted_reads} reads of a compacted log, {rereads} reads again; \
         recovery completed {completed} interrupted replacements and discarded {discarded} \
         unfinished cleaned segments; {passes} cleaner passes, {merging} of them merging segments",
        ledger.acked_records, ledger.acked_end
    );
    assert!(
        compacted_reads > 0,
        "the log was never compacted: the kills tested nothing of the cleaner"
    );
    broker.stop();
}
