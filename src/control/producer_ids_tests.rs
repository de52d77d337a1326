//! Tests of producer id allocation: the state-machine command, the broker's block cache, and a
//! single-node control plane across restarts (with and without a snapshot).

use std::collections::BTreeSet;
use std::path::Path;

use futures_lite::future::block_on;

use super::*;
use crate::control::state_machine::{apply, Outcome};
use crate::control::{start, BrokerDefaults, ControlConfig, NewTopic};

fn register(id: i32, incarnation: u64) -> Command {
    Command::RegisterBroker {
        id,
        host: "localhost".into(),
        port: 9090,
        rack: None,
        rpc: None,
        incarnation,
    }
}

fn allocation(broker_id: i32, incarnation: u64) -> Command {
    Command::AllocateProducerIds {
        broker_id,
        incarnation,
        size: BLOCK_SIZE,
    }
}

fn image_with_brokers() -> MetadataImage {
    let mut image = MetadataImage::default();
    for (index, command) in [register(1, 11), register(2, 22)].iter().enumerate() {
        let (next, result) = apply(&image, index as u64 + 1, command);
        result.unwrap();
        image = next;
    }
    image
}

fn allocate_in(image: &mut MetadataImage, index: u64, command: &Command) -> ProducerIdBlock {
    let (next, result) = apply(image, index, command);
    *image = next;
    match result {
        Ok(Outcome::ProducerIds(block)) => block,
        other => panic!("{other:?}"),
    }
}

#[test]
fn blocks_are_contiguous_and_never_overlap() {
    let mut image = image_with_brokers();
    let mut blocks = Vec::new();
    for i in 0..10u64 {
        let command = if i % 2 == 0 {
            allocation(1, 11)
        } else {
            allocation(2, 22)
        };
        blocks.push(allocate_in(&mut image, 10 + i, &command));
    }
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(block.size, BLOCK_SIZE);
        assert_eq!(block.first, i as i64 * i64::from(BLOCK_SIZE));
    }
    for pair in blocks.windows(2) {
        assert_eq!(pair[0].end(), pair[1].first, "{pair:?}");
    }
    assert_eq!(image.next_producer_id, 10 * i64::from(BLOCK_SIZE));
}

#[test]
fn stale_or_unknown_broker_epoch_is_refused_and_changes_nothing() {
    let mut image = image_with_brokers();
    allocate_in(&mut image, 3, &allocation(1, 11));
    for command in [allocation(1, 12), allocation(3, 11)] {
        let (next, result) = apply(&image, 4, &command);
        let error = result.unwrap_err();
        assert_eq!(error.code().code(), 77, "{error}");
        assert_eq!(next.next_producer_id, image.next_producer_id);
    }
    // Planning refuses it too, before anything is proposed.
    assert_eq!(plan(&image, 1, 12).unwrap_err().code().code(), 77);
    assert_eq!(plan(&image, 1, 11).unwrap(), allocation(1, 11));
    // A restart re-registers with a new incarnation: the old one's requests are stale.
    let (mut image, result) = apply(&image, 5, &register(1, 13));
    result.unwrap();
    assert!(apply(&image, 6, &allocation(1, 11)).1.is_err());
    assert_eq!(
        allocate_in(&mut image, 6, &allocation(1, 13)).first,
        i64::from(BLOCK_SIZE)
    );
}

#[test]
fn exhausting_the_id_space_is_an_error_not_a_wrap() {
    let mut image = image_with_brokers();
    image.next_producer_id = i64::MAX - 10;
    let (next, result) = apply(&image, 3, &allocation(1, 11));
    assert!(matches!(result, Err(ControlError::Internal(_))));
    assert_eq!(next.next_producer_id, i64::MAX - 10);
    let bad_size = Command::AllocateProducerIds {
        broker_id: 1,
        incarnation: 11,
        size: 0,
    };
    assert!(apply(&image, 3, &bad_size).1.is_err());
}

#[test]
fn the_counter_survives_a_snapshot_of_the_image() {
    let mut image = image_with_brokers();
    for i in 0..3 {
        allocate_in(&mut image, 3 + i, &allocation(2, 22));
    }
    // What the control node writes as a snapshot, and reads back.
    let bytes = serde_json::to_vec(&image).unwrap();
    let mut restored: MetadataImage = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(restored.next_producer_id, 3 * i64::from(BLOCK_SIZE));
    let block = allocate_in(&mut restored, 6, &allocation(1, 11));
    assert_eq!(block.first, 3 * i64::from(BLOCK_SIZE));
    // A snapshot written before the field existed reads as 0.
    let mut old: serde_json::Value = serde_json::to_value(&image).unwrap();
    old.as_object_mut().unwrap().remove("next_producer_id");
    let old: MetadataImage = serde_json::from_value(old).unwrap();
    assert_eq!(old.next_producer_id, 0);
}

#[test]
fn the_cache_takes_ids_in_order_and_asks_for_a_block_when_low() {
    let mut blocks = Blocks::default();
    assert!(blocks.wants_block());
    assert_eq!(blocks.take(), None);
    blocks
        .add(ProducerIdBlock {
            first: 0,
            size: 200,
        })
        .unwrap();
    assert!(!blocks.wants_block());
    for expected in 0..100 {
        assert_eq!(blocks.take(), Some(expected));
    }
    assert!(blocks.wants_block(), "100 left: time for the next block");
    blocks
        .add(ProducerIdBlock {
            first: 5000,
            size: 3,
        })
        .unwrap();
    assert!(!blocks.wants_block(), "a spare is held");
    // Not above what is held: refused (Kafka's monotonic check).
    assert!(blocks.add(ProducerIdBlock { first: 10, size: 5 }).is_err());
    for expected in (100..200).chain(5000..5003) {
        assert_eq!(blocks.take(), Some(expected));
    }
    assert_eq!(blocks.take(), None);
    assert!(blocks.wants_block());
}

fn config(dir: &Path) -> ControlConfig {
    ControlConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        kafka_endpoint: ("127.0.0.1".into(), 9092),
        rack: None,
        rpc: None,
        peers: Vec::new(),
        control_core: None,
        defaults: BrokerDefaults::default(),
    }
}

/// `count` ids taken by four threads at once (as four shards would), all distinct.
fn take_ids(control: &ControlHandle, count: usize) -> BTreeSet<i64> {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let control = control.clone();
            std::thread::spawn(move || {
                (0..count / 4)
                    .map(|_| block_on(control.new_producer_id()).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for thread in threads {
        for id in thread.join().unwrap() {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    ids
}

#[test]
fn a_broker_hands_out_distinct_ids_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let control = start(config(dir.path())).unwrap();
        let ids = take_ids(&control, 2400);
        assert!(control.image().next_producer_id > *ids.last().unwrap());
        block_on(control.shutdown());
        ids
    };
    let control = start(config(dir.path())).unwrap();
    let after = take_ids(&control, 400);
    assert!(
        after.first() > before.last(),
        "ids after the restart must be new: {:?} vs {:?}",
        after.first(),
        before.last()
    );
    let block = block_on(control.allocate_producer_ids()).unwrap();
    assert!(block.first > *after.last().unwrap());
    block_on(control.shutdown());
}

#[test]
fn a_restart_from_a_snapshot_keeps_the_counter() {
    let dir = tempfile::tempdir().unwrap();
    let (before, next) = {
        let control = start(config(dir.path())).unwrap();
        let ids = take_ids(&control, 40);
        // Enough entries after the allocation that the log is compacted into a snapshot.
        let count = crate::control::node::SNAPSHOT_EVERY as usize + 10;
        let topics = (0..count)
            .map(|i| NewTopic {
                name: format!("t{i}"),
                num_partitions: 1,
                replication_factor: 1,
                assignments: Vec::new(),
                configs: Vec::new(),
            })
            .collect();
        let results = block_on(control.create_topics(topics, false));
        assert!(results.iter().all(Result::is_ok));
        let next = control.image().next_producer_id;
        block_on(control.shutdown());
        (ids, next)
    };
    assert!(dir.path().join("meta/snapshot").exists());
    let control = start(config(dir.path())).unwrap();
    assert_eq!(control.image().next_producer_id, next);
    let id = block_on(control.new_producer_id()).unwrap();
    assert!(id >= next && id > *before.last().unwrap());
    block_on(control.shutdown());
}

#[test]
fn a_stopped_control_plane_answers_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(config(dir.path())).unwrap();
    block_on(control.shutdown());
    assert!(block_on(control.new_producer_id()).is_err());
    assert!(block_on(control.allocate_producer_ids()).is_err());
}
