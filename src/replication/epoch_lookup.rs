//! OffsetForLeaderEpoch on a partition log, from the log's leader epoch history (persisted in its
//! `leader-epoch-checkpoint`, rebuilt on recovery).

use chronik_shards::log::PartitionLog;

use super::epochs::{UNDEFINED_EPOCH, UNDEFINED_OFFSET};

/// (the largest epoch <= `requested` in the log, the offset where it ended): the first offset of
/// a newer epoch, or the log end. Undefined for an empty log or a negative epoch.
///
/// Unlike Kafka's cache, which records a new leader's epoch as soon as it leads, the log records
/// an epoch only once a batch of it is written: a follower asking about an epoch newer than the
/// log's last batch (a leader deposed before replicating it) is told where the log's newest epoch
/// ends, which is where its log ends, instead of "undefined" (which would empty the follower).
pub fn end_offset_for(log: &PartitionLog, requested: i32) -> (i32, i64) {
    let end = log.log_end_offset();
    if requested < 0 || log.log_start_offset() >= end {
        return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
    }
    let last = log.last_leader_epoch();
    if last >= 0 && last < requested {
        return (last, end);
    }
    log.end_offset_for_epoch(requested)
}

/// OffsetForLeaderEpoch as the leader of `current_epoch` answers it to clients (KIP-320), as
/// Kafka's leader does: its own epoch ends at the log end; an epoch newer than its own is
/// undefined; an older one ends where the next epoch began.
///
/// Kafka's leader records its epoch at the log end as soon as it leads; this log records an epoch
/// only with its first batch. Until then the current epoch starts at the log end, so every older
/// epoch at or after the log's newest ends there.
pub fn leader_end_offset_for(log: &PartitionLog, current_epoch: i32, requested: i32) -> (i32, i64) {
    if requested < 0 || requested > current_epoch {
        return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
    }
    let end = log.log_end_offset();
    if requested == current_epoch {
        return (current_epoch, end);
    }
    let last = log.last_leader_epoch();
    if last < current_epoch && requested >= last {
        // No batch of an epoch between: `requested` ended where the current epoch began. With
        // no batch at all it is older than anything known, which Kafka answers the same way.
        return (if last < 0 { requested } else { last }, end);
    }
    log.end_offset_for_epoch(requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::with_test_log;
    use chronik_shards::log::batch::build_test_batch;

    #[test]
    fn answers_from_the_log_and_never_empties_a_follower_for_an_unwritten_epoch() {
        with_test_log(|log| async move {
            assert_eq!(end_offset_for(&log, 0), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
            // Epoch 1: offsets 0..4, epoch 3: 4..6.
            log.append(&build_test_batch(0, 2, 0, b"a"), 1).unwrap();
            log.append(&build_test_batch(0, 2, 0, b"b"), 1).unwrap();
            log.append(&build_test_batch(0, 2, 0, b"c"), 3).unwrap();
            assert_eq!(end_offset_for(&log, 1), (1, 4));
            assert_eq!(end_offset_for(&log, 2), (1, 4));
            assert_eq!(end_offset_for(&log, 3), (3, 6));
            assert_eq!(end_offset_for(&log, 0), (0, 0));
            // Epoch 5 was never written here (its leader was deposed first).
            assert_eq!(end_offset_for(&log, 5), (3, 6));
            assert_eq!(
                end_offset_for(&log, -1),
                (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
            );
            log.close().await.unwrap();
        });
    }

    #[test]
    fn a_leader_answers_as_kafka_does() {
        with_test_log(|log| async move {
            // An empty log led in epoch 2: its epoch ends at 0, older ones too.
            assert_eq!(leader_end_offset_for(&log, 2, 2), (2, 0));
            assert_eq!(leader_end_offset_for(&log, 2, 1), (1, 0));
            assert_eq!(
                leader_end_offset_for(&log, 2, 3),
                (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
            );
            // Epoch 1: offsets 0..4, epoch 3: 4..6; led in epoch 5, nothing written in it.
            log.append(&build_test_batch(0, 2, 0, b"a"), 1).unwrap();
            log.append(&build_test_batch(0, 2, 0, b"b"), 1).unwrap();
            log.append(&build_test_batch(0, 2, 0, b"c"), 3).unwrap();
            assert_eq!(leader_end_offset_for(&log, 5, 5), (5, 6));
            assert_eq!(leader_end_offset_for(&log, 5, 4), (3, 6));
            assert_eq!(leader_end_offset_for(&log, 5, 3), (3, 6));
            assert_eq!(leader_end_offset_for(&log, 5, 2), (1, 4));
            assert_eq!(leader_end_offset_for(&log, 5, 1), (1, 4));
            assert_eq!(leader_end_offset_for(&log, 5, 0), (0, 0));
            assert_eq!(
                leader_end_offset_for(&log, 5, 6),
                (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
            );
            assert_eq!(
                leader_end_offset_for(&log, 5, -1),
                (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
            );
            // Once epoch 5 is written its start ends epoch 3.
            log.append(&build_test_batch(0, 1, 0, b"d"), 5).unwrap();
            assert_eq!(leader_end_offset_for(&log, 5, 5), (5, 7));
            assert_eq!(leader_end_offset_for(&log, 5, 4), (3, 6));
            log.close().await.unwrap();
        });
    }
}
