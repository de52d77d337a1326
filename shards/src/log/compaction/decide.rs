//! What the cleaner keeps: pure rules, called by the pass and by tests directly.
//!
//! Kafka's rules (LogCleaner.shouldRetainRecord, and the producer-state rule of KIP-98):
//! - a record whose key has a later record in the mapped range goes;
//! - a tombstone (null value) that is the latest for its key goes once it is below the map's end
//!   and the segment holding it is older than `delete.retention.ms` (every older record of its key
//!   is gone by then: the pass that first mapped the tombstone removed them);
//! - a record without a key goes (a compacted topic refuses them; these were written before the
//!   topic became compacted, and Kafka's cleaner drops them too);
//! - everything else stays, and offsets never change;
//! - a batch whose records all go is dropped, unless it is the last batch its idempotent producer
//!   wrote: it stays, empty, so that the producer's sequence numbers survive (a restarted or new
//!   leader rebuilding producer state from the log still knows where the producer was).

use super::key_map::KeyMap;
use super::records::RecordView;

/// What the rules need to know beyond the record itself.
#[derive(Clone, Copy, Debug)]
pub struct Horizon {
    /// The key map covers offsets below this.
    pub map_end: i64,
    /// The segment being cleaned is older than `delete.retention.ms`.
    pub tombstones_expired: bool,
}

/// Whether the record at `offset` stays.
pub fn keep_record(record: &RecordView<'_>, offset: i64, map: &KeyMap, horizon: Horizon) -> bool {
    let Some(key) = record.key else {
        return false;
    };
    if map.latest(key).is_some_and(|latest| latest > offset) {
        return false;
    }
    !(record.is_tombstone() && offset < horizon.map_end && horizon.tombstones_expired)
}

/// What becomes of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchFate {
    /// Every record stays: the batch is copied as it is.
    Unchanged,
    /// Only the records at these indexes stay (at least one goes).
    Filtered(Vec<usize>),
    /// No record stays, but the batch does, empty (its producer's last batch).
    Empty,
    Dropped,
}

/// The fate of a batch whose first offset is `base_offset`; `producer_last` says whether it is
/// the last batch of its idempotent producer in the log.
pub fn batch_fate(
    records: &[RecordView<'_>],
    base_offset: i64,
    map: &KeyMap,
    horizon: Horizon,
    producer_last: bool,
) -> BatchFate {
    let kept: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| keep_record(r, base_offset + r.offset_delta as i64, map, horizon))
        .map(|(i, _)| i)
        .collect();
    if kept.len() == records.len() {
        BatchFate::Unchanged
    } else if !kept.is_empty() {
        BatchFate::Filtered(kept)
    } else if producer_last {
        BatchFate::Empty
    } else {
        BatchFate::Dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(delta: i32, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RecordView<'a> {
        RecordView {
            offset_delta: delta,
            timestamp_delta: 0,
            key,
            value,
            raw: &[],
        }
    }

    const LIVE: Horizon = Horizon {
        map_end: 100,
        tombstones_expired: false,
    };
    const EXPIRED: Horizon = Horizon {
        map_end: 100,
        tombstones_expired: true,
    };

    #[test]
    fn the_latest_record_of_a_key_stays_older_ones_go() {
        let mut map = KeyMap::new(1 << 20);
        map.put(b"k", 7);
        assert!(!keep_record(&rec(0, Some(b"k"), Some(b"v")), 3, &map, LIVE));
        assert!(keep_record(&rec(0, Some(b"k"), Some(b"v")), 7, &map, LIVE));
        // Beyond the map (a later pass's business) and keys it never saw stay.
        assert!(keep_record(
            &rec(0, Some(b"k"), Some(b"v")),
            150,
            &map,
            LIVE
        ));
        assert!(keep_record(&rec(0, Some(b"x"), Some(b"v")), 3, &map, LIVE));
        assert!(!keep_record(&rec(0, None, Some(b"v")), 3, &map, LIVE));
    }

    #[test]
    fn tombstones_go_only_once_expired_and_mapped() {
        let mut map = KeyMap::new(1 << 20);
        map.put(b"k", 7);
        let t = rec(0, Some(b"k"), None);
        assert!(keep_record(&t, 7, &map, LIVE));
        assert!(!keep_record(&t, 7, &map, EXPIRED));
        // A tombstone past the map's end may still have older records of its key above the map's
        // end... none below it, but the rule stays simple: it waits for a later pass.
        assert!(keep_record(&t, 120, &map, EXPIRED));
        // A tombstone the dirty part never saw (cleaned before) goes once expired.
        assert!(!keep_record(&rec(0, Some(b"old"), None), 5, &map, EXPIRED));
    }

    #[test]
    fn a_producers_last_batch_stays_even_empty() {
        let mut map = KeyMap::new(1 << 20);
        map.put(b"a", 50);
        let recs = [
            rec(0, Some(b"a"), Some(b"1")),
            rec(1, Some(b"a"), Some(b"2")),
        ];
        assert_eq!(batch_fate(&recs, 10, &map, LIVE, false), BatchFate::Dropped);
        assert_eq!(batch_fate(&recs, 10, &map, LIVE, true), BatchFate::Empty);
        assert_eq!(
            batch_fate(&recs, 49, &map, LIVE, false),
            BatchFate::Filtered(vec![1])
        );
        assert_eq!(
            batch_fate(&recs, 60, &map, LIVE, false),
            BatchFate::Unchanged
        );
    }
}
