//! Issue 15, test 4: a consumer reading a compacted partition from the beginning, again and again,
//! while the cleaner rewrites its segments under it and a producer keeps dirtying it.
//!
//! Every pass reads from offset 0 to the end (a fetch at the high watermark that comes back
//! empty) in small fetches (512 bytes: a fetch seldom covers more than one batch, so segments are
//! swapped between the fetches of one pass). Each pass must see no error, every batch valid,
//! offsets strictly up (no record twice), and for every key, as its last record, the latest write
//! acknowledged before the pass began or a later one: the cleaner may remove a record only for a
//! later record of the same key, which the pass then reads. Tombstones are kept an hour here (a
//! reader slower than `delete.retention.ms` may legitimately miss a tombstone; that is what the
//! setting is for), so a deleted key ends a pass as a tombstone.
//!
//! 20 s of passes by default, 120 s with `CHRONIK_LONG_TESTS` (`tests/run --long`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::compaction::{
    check_latest, compacted_configs, create_topic_with, keyed_batch, read_from_start, try_produce,
    Acked,
};
use common::Broker;

const TOPIC: &str = "compact-reads";
/// Keys, written with very different frequencies (key `KEYS * u^4` for a uniform u), so that the
/// latest records of keys lie all over the log, the cleaned head included.
const KEYS: u64 = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A short cleaner backoff: a pass follows the writes within a fraction of a second.
const BROKER_ARGS: &[&str] = &["--log-cleaner-backoff-ms", "50"];

/// Writes batches of 1..=10 keyed records (one in ten a tombstone), acks=all, about one batch
/// every millisecond or so (a rate the reader catches up with), until `stop`. Every acknowledged write goes
/// into `acked`; an error fails the test.
fn produce(
    broker_addr: std::net::SocketAddr,
    acked: Arc<Mutex<HashMap<Vec<u8>, Acked>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut client = common::Client::connect(broker_addr);
    let mut rng = now_ms() as u64 | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..1 + next(10))
            .map(|_| {
                seq += 1;
                let u = next(1 << 24) as f64 / (1u64 << 24) as f64;
                let key = (KEYS as f64 * u.powi(4)) as u64;
                let key = format!("key-{key:04}");
                let value = (next(10) != 0).then(|| format!("{key}={seq}").into_bytes());
                (key.into_bytes(), value)
            })
            .collect();
        let (code, base) = try_produce(&mut client, TOPIC, -1, keyed_batch(&records, now_ms()))
            .expect("produce while the cleaner runs");
        assert_eq!(code, 0, "produce error");
        let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (k, v)) in records.into_iter().enumerate() {
            acked.insert(
                k,
                Acked {
                    offset: base + i as i64,
                    value: v,
                },
            );
        }
        drop(acked);
        std::thread::sleep(Duration::from_millis(1));
    }
    seq
}

#[test]
fn a_reader_from_the_start_while_the_cleaner_runs_sees_every_keys_latest_write_once() {
    let seconds = if std::env::var_os("CHRONIK_LONG_TESTS").is_some() {
        120
    } else {
        20
    };
    // The cleaner's debug line per pass says how many passes ran under the reader.
    let mut broker = Broker::start_with(
        &[("RUST_LOG", "info,chronik::partitions::cleaner=debug")],
        BROKER_ARGS,
    );
    let configs = compacted_configs("3600000");
    let configs: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(create_topic_with(&mut broker.client(), TOPIC, &configs), 0);

    let acked = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), broker.addr);
        std::thread::spawn(move || produce(addr, acked, stop))
    };

    let mut reader = broker.client();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut passes, mut compacted_passes, mut records_read) = (0u64, 0u64, 0u64);
    let mut failure = None;
    while Instant::now() < deadline && !producer.is_finished() {
        let before = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let end_before = before.values().map(|a| a.offset + 1).max().unwrap_or(0);
        let checked = read_from_start(&mut reader, TOPIC, None, 512)
            .and_then(|log| check_latest(&log, &before, None).map(|_| log));
        match checked {
            Ok(log) => {
                passes += 1;
                records_read += log.len() as u64;
                let end = log.last().map_or(0, |r| r.offset + 1);
                if (log.len() as i64) < end && end >= end_before {
                    compacted_passes += 1;
                }
            }
            Err(e) => {
                failure = Some(format!("pass {passes}: {e}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let produced = producer.join().expect("the producer failed");
    if let Some(e) = failure {
        panic!("{e}\n{}", broker.log());
    }
    let log = broker.log();
    let cleaner_passes = log.matches("segments_in").count();
    eprintln!(
        "{passes} passes ({compacted_passes} over a compacted log), {records_read} records read, \
         {produced} records produced, {cleaner_passes} cleaner passes"
    );
    assert!(
        !log.contains("cleaner pass failed"),
        "a cleaner pass failed:\n{log}"
    );
    assert!(
        cleaner_passes >= 5,
        "only {cleaner_passes} cleaner passes ran under the reader"
    );
    assert!(passes >= 10, "only {passes} passes");
    assert!(
        compacted_passes > 0,
        "no pass read a compacted log: the cleaner never ran under the reader"
    );
    broker.stop();
}
