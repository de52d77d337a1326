//! Deterministic tests of the producer-state rules and the snapshot format.

use super::*;

fn batch(producer_id: i64, epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
    ProducerBatch {
        producer_id,
        epoch,
        first_seq,
        last_offset_delta: records - 1,
        max_timestamp: 1_000,
    }
}

/// Checks then applies `b` at `base_offset` like a leader append; returns the decision.
fn append(table: &mut ProducerTable, b: ProducerBatch, base_offset: i64) -> Result<Check, Refusal> {
    let check = table.check(&b)?;
    if check == Check::Append {
        table.apply(&b, base_offset, base_offset + b.last_offset_delta as i64);
    }
    Ok(check)
}

#[test]
fn a_retried_batch_is_answered_with_its_original_offsets() {
    let mut t = ProducerTable::default();
    assert_eq!(append(&mut t, batch(7, 0, 0, 3), 10), Ok(Check::Append));
    assert_eq!(append(&mut t, batch(7, 0, 3, 2), 13), Ok(Check::Append));
    assert_eq!(
        append(&mut t, batch(7, 0, 0, 3), 99),
        Ok(Check::Duplicate {
            base_offset: 10,
            last_offset: 12
        })
    );
    assert_eq!(
        t.check(&batch(7, 0, 3, 2)),
        Ok(Check::Duplicate {
            base_offset: 13,
            last_offset: 14
        })
    );
    // The same first sequence with another length is not that batch: out of order.
    assert!(matches!(
        t.check(&batch(7, 0, 3, 1)),
        Err(Refusal::OutOfOrderSequence(_))
    ));
}

#[test]
fn only_the_last_five_batches_are_remembered() {
    let mut t = ProducerTable::default();
    for i in 0..6 {
        append(&mut t, batch(1, 0, i, 1), i as i64).unwrap();
    }
    // Batch 0 fell out: its retry is neither a duplicate nor in sequence.
    assert!(matches!(
        t.check(&batch(1, 0, 0, 1)),
        Err(Refusal::OutOfOrderSequence(_))
    ));
    for i in 1..6 {
        assert!(matches!(
            t.check(&batch(1, 0, i, 1)),
            Ok(Check::Duplicate { .. })
        ));
    }
}

#[test]
fn a_gap_is_out_of_order() {
    let mut t = ProducerTable::default();
    append(&mut t, batch(1, 0, 0, 5), 0).unwrap();
    assert!(matches!(
        t.check(&batch(1, 0, 6, 1)),
        Err(Refusal::OutOfOrderSequence(_))
    ));
    assert_eq!(t.check(&batch(1, 0, 5, 1)), Ok(Check::Append));
}

#[test]
fn epochs_fence_and_restart_sequences() {
    let mut t = ProducerTable::default();
    append(&mut t, batch(1, 3, 0, 2), 0).unwrap();
    // Older epoch: fenced, even for what would be a duplicate in it.
    assert!(matches!(
        t.check(&batch(1, 2, 0, 2)),
        Err(Refusal::InvalidProducerEpoch(_))
    ));
    // A newer epoch must start at 0.
    assert!(matches!(
        t.check(&batch(1, 4, 2, 1)),
        Err(Refusal::OutOfOrderSequence(_))
    ));
    assert_eq!(append(&mut t, batch(1, 4, 0, 1), 2), Ok(Check::Append));
    // The old epoch's batches are forgotten, and the old epoch is now fenced.
    assert!(matches!(
        t.check(&batch(1, 3, 0, 2)),
        Err(Refusal::InvalidProducerEpoch(_))
    ));
    assert_eq!(t.get(1).map(|e| e.batches.len()), Some(1));
}

#[test]
fn an_unknown_producer_may_start_anywhere() {
    let t = ProducerTable::default();
    assert_eq!(t.check(&batch(5, 2, 1234, 1)), Ok(Check::Append));
}

#[test]
fn sequences_wrap_at_i32_max() {
    let mut t = ProducerTable::default();
    let b = batch(1, 0, i32::MAX - 1, 3);
    assert_eq!(b.last_seq(), 0);
    append(&mut t, b, 0).unwrap();
    assert_eq!(t.check(&batch(1, 0, 1, 1)), Ok(Check::Append));
    let mut t = ProducerTable::default();
    append(&mut t, batch(1, 0, i32::MAX, 1), 0).unwrap();
    assert_eq!(t.check(&batch(1, 0, 0, 1)), Ok(Check::Append));
    assert_eq!(increment_sequence(5, 3), 8);
    assert_eq!(increment_sequence(i32::MAX, 1), 0);
}

#[test]
fn idle_producers_expire() {
    let mut t = ProducerTable::default();
    let mut old = batch(1, 0, 0, 1);
    old.max_timestamp = 100;
    let mut recent = batch(2, 0, 0, 1);
    recent.max_timestamp = 900;
    t.apply(&old, 0, 0);
    t.apply(&recent, 1, 1);
    assert_eq!(t.expire(1_000, 500), 1);
    assert!(t.get(1).is_none());
    assert!(t.get(2).is_some());
    assert_eq!(t.expire(1_000, 500), 0);
}

#[test]
fn snapshots_round_trip_and_reject_damage() {
    let mut t = ProducerTable::default();
    for i in 0..7 {
        append(&mut t, batch(i % 3, (i % 2) as i16, 0, 1), i).unwrap_or(Check::Append);
    }
    append(&mut t, batch(40, 1, 0, 4), 100).unwrap();
    let bytes = snapshot::encode(&t, 104);
    assert_eq!(snapshot::decode(&bytes), Some((104, t.clone())));
    for cut in [0, 1, 10, bytes.len() - 1] {
        assert_eq!(snapshot::decode(&bytes[..cut]), None);
    }
    let mut flipped = bytes.clone();
    flipped[20] ^= 1;
    assert_eq!(snapshot::decode(&flipped), None);
    assert_eq!(
        snapshot::decode(&snapshot::encode(&ProducerTable::default(), 0)),
        Some((0, ProducerTable::default()))
    );
}

#[test]
fn snapshot_files_are_found_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = ProducerTable::default();
    t.apply(&batch(1, 0, 0, 1), 0, 0);
    for offset in [10, 20, 30, 40, 50] {
        snapshot::write(dir.path(), &t, offset).unwrap();
    }
    assert_eq!(
        snapshot::list(dir.path()).unwrap(),
        vec![10, 20, 30, 40, 50]
    );
    let (offset, loaded) = snapshot::load_newest(dir.path(), 45).unwrap().unwrap();
    assert_eq!((offset, &loaded), (40, &t));
    // A damaged newest one is skipped for an older one.
    std::fs::write(snapshot::path(dir.path(), 40), b"torn").unwrap();
    assert_eq!(
        snapshot::load_newest(dir.path(), 45).unwrap().unwrap().0,
        30
    );
    // Truncation to 35 drops 40 and 50; those at or above the log start stay.
    snapshot::prune(dir.path(), 0, 35).unwrap();
    assert_eq!(snapshot::list(dir.path()).unwrap(), vec![10, 20, 30]);
    // The log start moved to 25: 20 stays as the floor below it, 10 goes.
    snapshot::prune(dir.path(), 25, i64::MAX).unwrap();
    assert_eq!(snapshot::list(dir.path()).unwrap(), vec![20, 30]);
    snapshot::remove_all(dir.path()).unwrap();
    assert!(snapshot::list(dir.path()).unwrap().is_empty());
}

#[test]
fn the_table_is_bounded_and_evicts_the_idlest_producer() {
    let mut t = ProducerTable::default();
    for id in 0..MAX_PRODUCERS as i64 {
        let mut b = batch(id, 0, 0, 1);
        b.max_timestamp = 10_000 + id;
        t.apply(&b, id, id);
    }
    // Producer 0 writes again: now producer 1 is the idlest.
    let mut again = batch(0, 0, 1, 1);
    again.max_timestamp = 50_000;
    t.apply(&again, 5_000, 5_000);
    assert_eq!(t.len(), MAX_PRODUCERS);
    let mut newcomer = batch(-7 + 10_000_000, 0, 0, 1);
    newcomer.max_timestamp = 60_000;
    t.apply(&newcomer, 5_001, 5_001);
    assert_eq!(t.len(), MAX_PRODUCERS);
    assert!(t.get(1).is_none(), "the idlest producer is evicted");
    assert!(t.get(0).is_some() && t.get(2).is_some() && t.get(9_999_993).is_some());
    // A known producer never evicts anyone.
    t.apply(&batch(2, 0, 1, 1), 5_002, 5_002);
    assert_eq!(t.len(), MAX_PRODUCERS);
}
