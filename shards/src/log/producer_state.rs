//! The log's side of idempotent-producer state (`producers`): the leader's check of a batch, the
//! snapshots taken at segment roll and written once the rolled segment is sealed, and the rebuild
//! from the newest snapshot plus the batches after it, at recovery and after a truncation.

use std::path::Path;

use super::batch::BatchHeader;
use super::offload;
use super::producers::{snapshot, Check, ProducerSummary, ProducerTable, Refusal};
use super::segment::{Cursor, ScanStep, Segment, Source};
use super::{AppendInfo, LogError, LogState, PartitionLog};

/// What a leader append does about its producer fields.
pub(super) enum Admission {
    /// Append (no producer id, or a new batch in order).
    Append,
    /// A retry of a batch already in the log: answer with its offsets.
    Duplicate(AppendInfo),
}

/// Checks a leader append's batches against the producer state (Kafka's rules, see `producers`).
/// Batches of an idempotent producer come one per partition and request, as Kafka requires from
/// produce v3 on; transactional batches are refused (transactions are not implemented).
pub(super) fn validate_batches(batches: &[(BatchHeader, usize)]) -> Result<(), LogError> {
    for (h, _) in batches {
        if h.is_transactional() {
            return Err(LogError::InvalidBatch(
                "transactional batches are not supported".into(),
            ));
        }
        if h.producer_id >= 0 {
            if batches.len() > 1 {
                return Err(LogError::InvalidBatch(
                    "an idempotent producer must send one batch per partition".into(),
                ));
            }
            if h.producer_epoch < 0 || h.base_sequence < 0 {
                return Err(LogError::InvalidBatch(format!(
                    "producer {} with epoch {} and base sequence {}",
                    h.producer_id, h.producer_epoch, h.base_sequence
                )));
            }
        }
    }
    Ok(())
}

/// The leader's decision on validated batches, under the log state's borrow (nothing changes).
pub(super) fn admit(
    st: &LogState,
    batches: &[(BatchHeader, usize)],
) -> Result<Admission, LogError> {
    let Some(batch) = batches.iter().find_map(|(h, _)| h.producer_batch()) else {
        return Ok(Admission::Append);
    };
    match st.producers.check(&batch) {
        Ok(Check::Append) => Ok(Admission::Append),
        Ok(Check::Duplicate {
            base_offset,
            last_offset,
        }) => Ok(Admission::Duplicate(AppendInfo {
            base_offset,
            last_offset,
            max_timestamp: batch.max_timestamp,
            record_count: 0,
            duplicate: true,
        })),
        Err(Refusal::OutOfOrderSequence(why)) => Err(LogError::OutOfOrderSequence(why)),
        Err(Refusal::InvalidProducerEpoch(why)) => Err(LogError::InvalidProducerEpoch(why)),
    }
}

/// Where a rebuild reads one segment: its bytes, how many there are, and the offset after it.
pub(super) struct SegmentView {
    pub base_offset: i64,
    pub source: Source,
    pub bytes: u64,
    pub next_offset: i64,
}

impl SegmentView {
    pub fn of(segment: &Segment) -> Self {
        SegmentView {
            base_offset: segment.base_offset(),
            source: segment.source(),
            bytes: segment.readable_bytes(),
            next_offset: segment.index.next_offset,
        }
    }
}

/// Replays the producer batches of one segment at or above `from` into `table` (recovery and
/// truncation already checked those batches).
async fn replay_segment(
    view: &SegmentView,
    from: i64,
    table: &mut ProducerTable,
) -> Result<(), LogError> {
    let mut cursor = Cursor::new(view.source.clone(), view.bytes);
    let mut pos = 0u64;
    while let ScanStep::Batch { header, .. } = cursor.next(pos).await? {
        if header.base_offset >= from {
            if let Some(batch) = header.producer_batch() {
                table.apply(&batch, header.base_offset, header.last_offset());
            }
        }
        pos += header.total_len() as u64;
    }
    Ok(())
}

/// The producer state of the log made of `segments` (oldest first, all written to their files),
/// from the newest snapshot at or below its end (snapshots above it are removed: a truncation cut
/// what they cover) and the batches after it. When that replayed sealed segments, the state at
/// the newest segment's base is saved as a snapshot, so the next open does not replay them again
/// (a log written before snapshots existed, or whose snapshot was lost). The snapshot files are
/// read, written and pruned off the reactor.
pub(super) async fn rebuild(
    dir: &Path,
    segments: &[SegmentView],
    log_start: i64,
    log_end: i64,
) -> Result<ProducerTable, LogError> {
    let owned = dir.to_path_buf();
    let newest = offload::run(move || {
        snapshot::prune(&owned, log_start, log_end)?;
        snapshot::load_newest(&owned, log_end)
    })
    .await?;
    let (from, mut table) = newest.unwrap_or_default();
    let from = from.max(log_start);
    let newest_base = segments.last().map_or(from, |v| v.base_offset);
    for view in segments.iter().filter(|v| v.next_offset > from) {
        if view.base_offset == newest_base && from < newest_base {
            let (owned, bytes) = (dir.to_path_buf(), snapshot::encode(&table, newest_base));
            let written =
                offload::run(move || snapshot::write_encoded(&owned, newest_base, &bytes)).await;
            if let Err(e) = written {
                tracing::warn!(dir = ?dir, error = %e, "cannot write a producer snapshot");
            }
        }
        replay_segment(view, from, &mut table).await?;
    }
    Ok(table)
}

impl PartitionLog {
    /// The producers this replica knows (DescribeProducers).
    pub fn producer_states(&self) -> Vec<ProducerSummary> {
        self.state.borrow().producers.summaries()
    }

    /// Writes the snapshots taken at rolls at or below `durable_below` (every batch below it is
    /// durable), then drops old ones, off the reactor. A failure is logged, not returned: without
    /// the file, recovery replays from an older snapshot.
    pub(super) async fn write_due_snapshots(&self, durable_below: i64) {
        let due: Vec<(i64, ProducerTable)> = {
            let mut st = self.state.borrow_mut();
            let (due, later) = std::mem::take(&mut st.snapshots_due)
                .into_iter()
                .partition(|(offset, _)| *offset <= durable_below);
            st.snapshots_due = later;
            due
        };
        if due.is_empty() {
            return;
        }
        let log_start = self.log_start_offset();
        let encoded: Vec<(i64, Vec<u8>)> = due
            .iter()
            .map(|(offset, table)| (*offset, snapshot::encode(table, *offset)))
            .collect();
        let dir = self.dir.clone();
        let written = offload::run(move || {
            encoded
                .iter()
                .try_for_each(|(offset, bytes)| snapshot::write_encoded(&dir, *offset, bytes))
                .and_then(|()| snapshot::prune(&dir, log_start, i64::MAX))
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(dir = ?self.dir, error = %e, "cannot write a producer snapshot");
        }
    }

    /// Drops producers idle past `producer.id.expiration.ms` (by their last batch timestamp).
    pub(super) fn expire_producers(&self, now_ms: i64) -> usize {
        let expiration_ms = self.config.borrow().producer_id_expiration_ms;
        self.state
            .borrow_mut()
            .producers
            .expire(now_ms, expiration_ms)
    }
}
