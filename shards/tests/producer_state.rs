//! Idempotent-producer state through the partition log: leader dedupe and refusals, recovery,
//! snapshots at segment roll, retention of the segments that carried a producer, damaged snapshots,
//! the follower path, truncation, a full restart at an offset, and expiry.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chronik_shards::log::batch::{build_producer_test_batch, build_test_batch};
use chronik_shards::log::producers::snapshot;
use chronik_shards::log::{AppendInfo, LogConfig, LogError, PartitionLog, ProducerSummary};

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// Runs `test` on an executor with fresh log directory paths (nothing created there yet).
fn in_log_dirs<F, Fut>(test: F)
where
    F: FnOnce(PathBuf, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    // Not tmpfs: O_DIRECT needs a real filesystem.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (a, b) = (dir.path().join("t-0"), dir.path().join("t-1"));
    run(move || async move {
        test(a, b).await;
        drop(dir);
    });
}

async fn open_log(path: &Path, config: LogConfig) -> Rc<PartitionLog> {
    PartitionLog::open(path.to_path_buf(), config)
        .await
        .unwrap()
}

/// Segments of about six batches, nothing in the tail cache (reads go to the files).
fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2000,
        index_interval_bytes: 300,
        tail_cache_bytes: 0,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Where the tests' batch timestamps start: the wall clock when the test process started, since
/// opening a log expires producers idle past producer.id.expiration.ms by the wall clock.
fn epoch_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// A batch of `records` records by producer `pid` in `epoch` from sequence `seq`, 300 bytes of
/// payload, at timestamp `ts` ms after [`epoch_ms`].
fn pb(pid: i64, epoch: i16, seq: i32, records: i32, ts: i64) -> Vec<u8> {
    build_producer_test_batch(
        0,
        records,
        epoch_ms() + ts,
        &[seq as u8; 300],
        (pid, epoch, seq),
    )
}

fn plain(records: i32, ts: i64) -> Vec<u8> {
    build_test_batch(0, records, ts, &[7; 300])
}

fn offsets(info: AppendInfo) -> (i64, i64, bool) {
    (info.base_offset, info.last_offset, info.duplicate)
}

fn state_of(log: &PartitionLog, pid: i64) -> Option<ProducerSummary> {
    log.producer_states()
        .into_iter()
        .find(|s| s.producer_id == pid)
}

fn snapshots(dir: &Path) -> Vec<i64> {
    snapshot::list(dir).unwrap()
}

fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").and_then(|s| s.parse().ok())
        })
        .collect();
    v.sort_unstable();
    v
}

/// Every batch of the log from `from`, as (base offset, producer id, base sequence).
async fn batches(log: &PartitionLog, from: i64) -> Vec<(i64, i64, i32)> {
    let mut out = Vec::new();
    let mut cur = from;
    while cur < log.log_end_offset() {
        let got = log.read(cur, 1 << 20, i64::MAX).await.unwrap();
        assert!(!got.is_empty());
        for b in got {
            let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
            let delta = i32::from_be_bytes(b[23..27].try_into().unwrap()) as i64;
            let pid = i64::from_be_bytes(b[43..51].try_into().unwrap());
            let seq = i32::from_be_bytes(b[53..57].try_into().unwrap());
            out.push((base, pid, seq));
            cur = base + delta + 1;
        }
    }
    out
}

#[test]
fn the_leader_dedupes_retries_and_refuses_gaps_and_old_epochs() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(
            offsets(log.append(&pb(7, 0, 0, 3, 10), 0).unwrap()),
            (0, 2, false)
        );
        log.append(&plain(1, 11), 0).unwrap();
        assert_eq!(
            offsets(log.append(&pb(7, 0, 3, 2, 12), 0).unwrap()),
            (4, 5, false)
        );
        // Retries of either batch: the original offsets, nothing appended.
        for (batch, original) in [(pb(7, 0, 0, 3, 10), (0, 2)), (pb(7, 0, 3, 2, 12), (4, 5))] {
            let info = log.append(&batch, 0).unwrap();
            assert_eq!(offsets(info), (original.0, original.1, true));
            assert_eq!(log.log_end_offset(), 6);
        }
        // Through append_bytes too (the produce path's zero-copy entry).
        let info = log.append_bytes(pb(7, 0, 3, 2, 12).into(), 0).unwrap();
        assert_eq!(offsets(info), (4, 5, true));
        // A gap, and the same first sequence with another length.
        for bad in [pb(7, 0, 6, 1, 13), pb(7, 0, 3, 1, 13)] {
            assert!(matches!(
                log.append(&bad, 0),
                Err(LogError::OutOfOrderSequence(_))
            ));
        }
        // A new epoch must start at 0; then the old one is fenced, retries included.
        assert!(matches!(
            log.append(&pb(7, 1, 5, 1, 14), 0),
            Err(LogError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            offsets(log.append(&pb(7, 1, 0, 1, 14), 0).unwrap()),
            (6, 6, false)
        );
        for old in [pb(7, 0, 5, 1, 15), pb(7, 0, 3, 2, 12)] {
            assert!(matches!(
                log.append(&old, 0),
                Err(LogError::InvalidProducerEpoch(_))
            ));
        }
        assert_eq!(log.log_end_offset(), 7);
        // An idempotent producer's batch must come alone.
        let mut two = pb(8, 0, 0, 1, 16);
        two.extend(plain(1, 16));
        assert!(matches!(
            log.append(&two, 0),
            Err(LogError::InvalidBatch(_))
        ));
        log.wait_durable(7).await.unwrap();
        assert_eq!(
            batches(&log, 0).await,
            vec![(0, 7, 0), (3, -1, -1), (4, 7, 3), (6, 7, 0)]
        );
        let s = state_of(&log, 7).unwrap();
        assert_eq!(
            (s.producer_epoch, s.last_sequence, s.last_timestamp),
            (1, 0, epoch_ms() + 14)
        );
    });
}

#[test]
fn the_state_survives_close_and_crash() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, LogConfig::default()).await;
        for i in 0..4 {
            log.append(&pb(3, 2, 2 * i, 2, 100 + i as i64), 0).unwrap();
            log.append(&pb(4, 0, i, 1, 100), 0).unwrap();
        }
        let before = log.producer_states();
        log.close().await.unwrap();

        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.producer_states(), before);
        assert_eq!(
            offsets(log.append(&pb(3, 2, 4, 2, 102), 0).unwrap()),
            (6, 7, true)
        );
        assert!(matches!(
            log.append(&pb(3, 2, 9, 1, 104), 0),
            Err(LogError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            offsets(log.append(&pb(3, 2, 8, 1, 104), 0).unwrap()),
            (12, 12, false)
        );
        log.wait_durable(13).await.unwrap();
        // A crash (no close) once durable: the same.
        let before = log.producer_states();
        drop(log);
        let log = open_log(&path, LogConfig::default()).await;
        assert_eq!(log.producer_states(), before);
        assert_eq!(
            offsets(log.append(&pb(3, 2, 8, 1, 104), 0).unwrap()),
            (12, 12, true)
        );
        assert_eq!(
            offsets(log.append(&pb(4, 0, 3, 1, 100), 0).unwrap()),
            (11, 11, true)
        );
        assert!(matches!(
            log.append(&pb(3, 1, 9, 1, 104), 0),
            Err(LogError::InvalidProducerEpoch(_))
        ));
    });
}

#[test]
fn a_snapshot_is_written_when_a_rolled_segment_is_sealed() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        // One record per batch, so sequence i is at offset i.
        for i in 0..20 {
            log.append(&pb(5, 0, i, 1, 1_000 + i as i64), 0).unwrap();
        }
        log.wait_durable(20).await.unwrap();
        let bases = segment_bases(&path);
        assert!(bases.len() >= 3, "segments {bases:?}");
        let snaps = snapshots(&path);
        // One per rolled segment (the first has none).
        assert_eq!(snaps, bases[1..]);
        for &at in &snaps {
            let bytes = std::fs::read(snapshot::path(&path, at)).unwrap();
            let (stored, table) = snapshot::decode(&bytes).unwrap();
            assert_eq!(stored, at);
            let entry = table.get(5).unwrap();
            // It holds the state as of its offset: the batches below it, the last five of them.
            let last = entry.batches.back().unwrap();
            assert_eq!((last.last_seq, last.last_offset), (at as i32 - 1, at - 1));
            assert_eq!(entry.batches.len(), 5.min(at as usize));
        }
        drop(log);
        let log = open_log(&path, small_config()).await;
        assert_eq!(state_of(&log, 5).unwrap().last_sequence, 19);
        assert_eq!(
            offsets(log.append(&pb(5, 0, 15, 1, 1_015), 0).unwrap()),
            (15, 15, true)
        );
    });
}

#[test]
fn retention_of_a_producers_segments_keeps_its_state() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..3 {
            log.append(&pb(9, 4, i, 1, 500), 0).unwrap();
        }
        for i in 0..30 {
            log.append(&plain(1, 600 + i), 0).unwrap();
        }
        log.wait_durable(33).await.unwrap();
        log.update_config(LogConfig {
            retention_bytes: Some(3 * 1800),
            ..small_config()
        });
        assert!(log.apply_retention(0).await.unwrap() > 0);
        let start = log.log_start_offset();
        assert!(start > 3, "log start {start}");
        // The producer's batches are gone, its state is not: a retry is still a duplicate (of
        // offsets below the log start, as in Kafka), the next sequence follows.
        assert_eq!(
            offsets(log.append(&pb(9, 4, 2, 1, 500), 0).unwrap()),
            (2, 2, true)
        );
        assert!(matches!(
            log.append(&pb(9, 4, 5, 1, 500), 0),
            Err(LogError::OutOfOrderSequence(_))
        ));
        log.close().await.unwrap();

        // Reopened: the producer is known from a snapshot alone.
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.log_start_offset(), start);
        let s = state_of(&log, 9).unwrap();
        assert_eq!((s.producer_epoch, s.last_sequence), (4, 2));
        assert_eq!(
            offsets(log.append(&pb(9, 4, 1, 1, 500), 0).unwrap()),
            (1, 1, true)
        );
        assert_eq!(
            offsets(log.append(&pb(9, 4, 3, 1, 500), 0).unwrap()),
            (33, 33, false)
        );
        assert!(matches!(
            log.append(&pb(9, 3, 4, 1, 500), 0),
            Err(LogError::InvalidProducerEpoch(_))
        ));
    });
}

#[test]
fn a_damaged_snapshot_is_ignored_and_the_log_replayed() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..25 {
            log.append(&pb(1 + (i % 2) as i64, 0, i / 2, 1, 700), 0)
                .unwrap();
        }
        log.wait_durable(25).await.unwrap();
        let before = log.producer_states();
        log.close().await.unwrap();
        let snaps = snapshots(&path);
        assert!(snaps.len() >= 2, "snapshots {snaps:?}");

        // The newest torn: an older one and the batches after it.
        let newest = snapshot::path(&path, *snaps.last().unwrap());
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.producer_states(), before);
        log.close().await.unwrap();

        // Every one damaged (a flipped byte): the whole log replayed.
        for at in snapshots(&path) {
            let p = snapshot::path(&path, at);
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[10] ^= 0x40;
            std::fs::write(&p, bytes).unwrap();
        }
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.producer_states(), before);
        assert_eq!(
            offsets(log.append(&pb(2, 0, 11, 1, 700), 0).unwrap()),
            (23, 23, true)
        );
        assert_eq!(
            offsets(log.append(&pb(1, 0, 13, 1, 700), 0).unwrap()),
            (25, 25, false)
        );
    });
}

#[test]
fn a_follower_builds_the_leaders_state() {
    in_log_dirs(|leader_dir, follower_dir| async move {
        let leader = open_log(&leader_dir, small_config()).await;
        let follower = open_log(&follower_dir, small_config()).await;
        let mut seq = [0i32; 3];
        for i in 0..30usize {
            let p = i % 3;
            if i % 7 == 6 && seq[p] >= 2 {
                // A retry of the producer's previous batch: answered, not replicated twice.
                let retry = leader.append(&pb(p as i64, 1, seq[p] - 2, 2, 800), 2);
                assert!(retry.unwrap().duplicate);
            }
            if i % 11 == 10 {
                leader.append(&plain(2, 800), 2).unwrap();
            }
            leader.append(&pb(p as i64, 1, seq[p], 2, 800), 2).unwrap();
            seq[p] += 2;
            if i % 5 == 4 {
                // Replicate what the leader has so far, as a follower fetch does.
                let from = follower.log_end_offset();
                for b in leader.read(from, 1 << 20, i64::MAX).await.unwrap() {
                    follower.append_replica(b).unwrap();
                }
            }
        }
        leader.wait_durable(leader.log_end_offset()).await.unwrap();
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(follower.producer_states(), leader.producer_states());

        // The follower, made leader, answers a retry as the old leader would, and after a restart.
        follower
            .wait_durable(follower.log_end_offset())
            .await
            .unwrap();
        follower.close().await.unwrap();
        let follower = open_log(&follower_dir, small_config()).await;
        assert_eq!(follower.producer_states(), leader.producer_states());
        let retry = pb(1, 1, seq[1] - 2, 2, 800);
        let old = leader.append(&retry, 2).unwrap();
        let new = follower.append(&retry, 3).unwrap();
        assert!(old.duplicate);
        assert_eq!(offsets(new), offsets(old));
    });
}

#[test]
fn truncation_rolls_the_producer_state_back() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        // Producer 6 writes offsets 0..30, one record per batch; snapshots at the rolls above.
        for i in 0..30 {
            log.append(&pb(6, 0, i, 1, 900), 0).unwrap();
        }
        log.wait_durable(30).await.unwrap();
        assert!(snapshots(&path).iter().any(|&s| s > 8));
        log.truncate_to(8).await.unwrap();
        assert_eq!(log.log_end_offset(), 8);
        assert!(
            snapshots(&path).iter().all(|&s| s <= 8),
            "{:?}",
            snapshots(&path)
        );
        assert_eq!(state_of(&log, 6).unwrap().last_sequence, 7);
        // The cut batches are new again; those below the cut are still duplicates.
        assert_eq!(
            offsets(log.append(&pb(6, 0, 7, 1, 900), 0).unwrap()),
            (7, 7, true)
        );
        assert!(matches!(
            log.append(&pb(6, 0, 9, 1, 900), 0),
            Err(LogError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            offsets(log.append(&pb(6, 0, 8, 1, 900), 1).unwrap()),
            (8, 8, false)
        );
        // A truncation that cuts a new epoch's only batch restores the old epoch's state.
        log.append(&pb(6, 1, 0, 1, 901), 1).unwrap();
        log.wait_durable(10).await.unwrap();
        log.truncate_to(9).await.unwrap();
        let s = state_of(&log, 6).unwrap();
        assert_eq!((s.producer_epoch, s.last_sequence), (0, 8));
        assert_eq!(
            offsets(log.append(&pb(6, 0, 8, 1, 900), 1).unwrap()),
            (8, 8, true)
        );
        log.append(&pb(6, 0, 9, 1, 900), 1).unwrap();
        log.wait_durable(10).await.unwrap();
        // After a reopen, the same (no snapshot from before the cut came back).
        let before = log.producer_states();
        log.close().await.unwrap();
        let log = open_log(&path, small_config()).await;
        assert_eq!(log.producer_states(), before);
        assert_eq!(
            offsets(log.append(&pb(6, 0, 9, 1, 900), 1).unwrap()),
            (9, 9, true)
        );
        // A cut of every batch of a producer forgets it.
        log.truncate_to(0).await.unwrap();
        assert!(log.producer_states().is_empty());
        assert_eq!(
            offsets(log.append(&pb(6, 0, 5, 1, 900), 1).unwrap()),
            (0, 0, false)
        );
    });
}

#[test]
fn a_full_restart_clears_the_state_and_the_snapshots() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        for i in 0..20 {
            log.append(&pb(2, 0, i, 1, 900), 0).unwrap();
        }
        log.wait_durable(20).await.unwrap();
        assert!(!snapshots(&path).is_empty());
        log.truncate_fully_and_start_at(100).await.unwrap();
        assert!(log.producer_states().is_empty());
        assert!(snapshots(&path).is_empty());
        // The producer is unknown: its old sequence is appended, not answered from the past.
        assert_eq!(
            offsets(log.append(&pb(2, 0, 19, 1, 900), 0).unwrap()),
            (100, 100, false)
        );
        log.close().await.unwrap();
        let log = open_log(&path, small_config()).await;
        assert_eq!(state_of(&log, 2).unwrap().last_sequence, 19);
        assert_eq!(log.producer_states().len(), 1);
    });
}

#[test]
fn an_idle_producer_expires_at_retention() {
    in_log_dirs(|path, _| async move {
        let config = LogConfig {
            producer_id_expiration_ms: 1_000,
            ..small_config()
        };
        let log = open_log(&path, config.clone()).await;
        log.append(&pb(1, 0, 0, 1, 10_000), 0).unwrap();
        log.append(&pb(2, 0, 0, 1, 10_600), 0).unwrap();
        log.apply_retention(epoch_ms() + 10_999).await.unwrap();
        assert_eq!(log.producer_states().len(), 2);
        log.apply_retention(epoch_ms() + 11_000).await.unwrap();
        let ids: Vec<i64> = log
            .producer_states()
            .iter()
            .map(|s| s.producer_id)
            .collect();
        assert_eq!(ids, vec![2]);
        // Forgotten: its next batch is accepted at any sequence (Kafka, KIP-360), a retry of its
        // old sequence included.
        assert_eq!(
            offsets(log.append(&pb(1, 0, 0, 1, 11_000), 0).unwrap()),
            (2, 2, false)
        );
        log.apply_retention(epoch_ms() + 11_600).await.unwrap();
        let ids: Vec<i64> = log
            .producer_states()
            .iter()
            .map(|s| s.producer_id)
            .collect();
        assert_eq!(ids, vec![1]);
        // A batch timestamp counts, not the wall clock: a producer active again is kept.
        log.append(&pb(1, 0, 1, 1, 20_000), 0).unwrap();
        log.apply_retention(epoch_ms() + 20_500).await.unwrap();
        assert_eq!(state_of(&log, 1).unwrap().last_sequence, 1);
    });
}

#[test]
fn a_deep_truncation_after_retention_keeps_the_retained_producers() {
    in_log_dirs(|path, _| async move {
        let log = open_log(&path, small_config()).await;
        // Producer 4's batches fill the first segment only; plain batches roll four more.
        for i in 0..5 {
            log.append(&pb(4, 0, i, 1, 100), 0).unwrap();
        }
        for i in 0..20 {
            log.append(&plain(1, 200 + i), 0).unwrap();
        }
        log.wait_durable(25).await.unwrap();
        let bases = segment_bases(&path);
        assert_eq!(bases, vec![0, 5, 10, 15, 20]);
        // Retention deletes the producer's segment.
        log.update_config(LogConfig {
            retention_bytes: Some(4 * 1805),
            ..small_config()
        });
        assert_eq!(log.apply_retention(0).await.unwrap(), 1);
        assert_eq!(log.log_start_offset(), 5);
        // A follower cut deep (below the newest snapshots) still knows the producer: its retry is
        // a duplicate, not a second copy in the log.
        log.truncate_to(7).await.unwrap();
        assert_eq!(log.log_end_offset(), 7);
        assert_eq!(state_of(&log, 4).map(|s| s.last_sequence), Some(4));
        assert_eq!(
            offsets(log.append(&pb(4, 0, 4, 1, 100), 0).unwrap()),
            (4, 4, true)
        );
        // And a cut to the log start (the log emptied there).
        log.truncate_to(5).await.unwrap();
        assert_eq!(state_of(&log, 4).map(|s| s.last_sequence), Some(4));
        log.close().await.unwrap();
        let log = open_log(&path, small_config()).await;
        assert_eq!(state_of(&log, 4).map(|s| s.last_sequence), Some(4));
    });
}
