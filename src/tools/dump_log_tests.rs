//! `chronik dump-log` on segment files written here: records in order, the latest per key,
//! preallocated zeros, and each kind of damage reported (never skipped silently).

use std::path::Path;

use bytes::Bytes;
use chronik_bench::batch::{keyed_batch, Layout};
use kafka_protocol::records::Compression;

use super::*;

/// One batch at `base` of (key, value) records, as a producer writes it.
fn batch(base: i64, recs: &[(Option<&str>, Option<&str>)], compression: Compression) -> Vec<u8> {
    let bytes = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let records = recs.iter().map(|(k, v)| (k.map(bytes), v.map(bytes)));
    let layout = Layout {
        base_offset: base,
        timestamp: 1_000,
        timestamp_step: 1,
        leader_epoch: 0,
        compression,
        producer: None,
    };
    keyed_batch(records, &layout).unwrap().to_vec()
}

fn segment(dir: &Path, base: i64, parts: &[&[u8]]) -> PathBuf {
    let path = dir.join(format!("{base:020}.log"));
    std::fs::write(&path, parts.concat()).unwrap();
    path
}

fn text(b: &Option<Vec<u8>>) -> Option<&str> {
    b.as_deref().map(|b| std::str::from_utf8(b).unwrap())
}

fn kv(r: &DumpedRecord) -> (i64, Option<&str>, Option<&str>) {
    (r.offset, text(&r.key), text(&r.value))
}

#[test]
fn records_of_every_segment_in_offset_order_and_the_latest_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 8192];
    let b0 = batch(
        0,
        &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
        Compression::None,
    );
    // Offsets 2..3 were removed by compaction: a gap between batches.
    let b4 = batch(
        4,
        &[(Some("a"), Some("2")), (Some("c"), None)],
        Compression::None,
    );
    segment(tmp.path(), 0, &[&b0, &b4]);
    let b6 = batch(
        6,
        &[(Some("b"), None), (Some("d"), Some("x"))],
        Compression::None,
    );
    segment(tmp.path(), 6, &[&b6, &zeros]);
    // Not segments: left alone (a swap in progress, an index, a checkpoint).
    std::fs::write(tmp.path().join("00000000000000000000.log.cleaned"), &b6).unwrap();
    std::fs::write(tmp.path().join("00000000000000000006.index"), [1u8; 40]).unwrap();

    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(dump.faults, vec![]);
    let got: Vec<_> = dump.records.iter().map(kv).collect();
    assert_eq!(
        got,
        vec![
            (0, Some("a"), Some("1")),
            (1, Some("b"), Some("1")),
            (4, Some("a"), Some("2")),
            (5, Some("c"), None),
            (6, Some("b"), None),
            (7, Some("d"), Some("x")),
        ]
    );
    let latest: Vec<_> = latest(&dump.records).values().map(|r| kv(r)).collect();
    assert_eq!(
        latest,
        vec![
            (4, Some("a"), Some("2")),
            (6, Some("b"), None),
            (5, Some("c"), None),
            (7, Some("d"), Some("x")),
        ]
    );
}

#[test]
fn json_lines_carry_utf8_or_hex_and_null() {
    let r = DumpedRecord {
        offset: 3,
        timestamp: 9,
        key: Some(vec![0xff, 0x00]),
        value: None,
        control: false,
    };
    assert_eq!(
        record_json(&r),
        json!({"offset": 3, "timestamp": 9, "key": {"hex": "ff00"}, "value": null, "tombstone": true})
    );
    assert_eq!(bytes_json(Some(b"k-1")), json!("k-1"));
}

#[test]
fn a_bad_crc_is_reported_and_reading_that_segment_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let good = batch(0, &[(Some("a"), Some("1"))], Compression::None);
    let mut bad = batch(1, &[(Some("b"), Some("1"))], Compression::None);
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let path = segment(tmp.path(), 0, &[&good, &bad]);
    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(
        dump.records.iter().map(kv).collect::<Vec<_>>(),
        vec![(0, Some("a"), Some("1"))]
    );
    assert_eq!(dump.faults.len(), 1, "{:?}", dump.faults);
    assert_eq!(dump.faults[0].file, path);
    assert_eq!(dump.faults[0].position, good.len() as u64);
    assert!(dump.faults[0].what.contains("CRC32C"), "{:?}", dump.faults);
}

#[test]
fn a_torn_tail_and_garbage_after_zeros_are_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let good = batch(0, &[(Some("a"), Some("1"))], Compression::None);
    let torn = batch(1, &[(Some("b"), Some("2"))], Compression::None);
    segment(tmp.path(), 0, &[&good, &torn[..torn.len() / 2]]);
    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(dump.records.len(), 1);
    assert!(
        dump.faults[0].what.contains("truncated"),
        "{:?}",
        dump.faults
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut tail = vec![0u8; 5000];
    tail[4999] = 7;
    segment(tmp.path(), 0, &[&good, &tail]);
    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(dump.records.len(), 1);
    assert_eq!(
        dump.faults.len(),
        1,
        "zeros followed by data are not preallocation"
    );
}

#[test]
fn offsets_that_go_backwards_are_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let b5 = batch(
        5,
        &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
        Compression::None,
    );
    let b6 = batch(6, &[(Some("c"), Some("1"))], Compression::None);
    segment(tmp.path(), 5, &[&b5, &b6]);
    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(dump.faults.len(), 1, "{:?}", dump.faults);
    assert!(dump.faults[0].what.contains("does not follow"));

    // A segment that starts below the previous one's end.
    let tmp = tempfile::tempdir().unwrap();
    segment(tmp.path(), 5, &[&b5]);
    segment(tmp.path(), 6, &[&b6]);
    let dump = read_dir(tmp.path()).unwrap();
    assert!(
        dump.faults.iter().any(|f| f.what.contains("below")),
        "{:?}",
        dump.faults
    );
}

#[test]
fn reading_changes_nothing_in_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let good = batch(0, &[(Some("a"), Some("1"))], Compression::None);
    let torn = batch(1, &[(Some("b"), Some("2"))], Compression::None);
    let path = segment(tmp.path(), 0, &[&good, &torn[..20]]);
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = (listing(tmp.path()), std::fs::read(&path).unwrap());
    let dump = read_dir(tmp.path()).unwrap();
    assert_eq!(dump.faults.len(), 1);
    assert_eq!((listing(tmp.path()), std::fs::read(&path).unwrap()), before);
}

#[test]
fn a_directory_that_does_not_exist_is_an_error() {
    assert!(read_dir(Path::new("/nonexistent/chronik-dump-log")).is_err());
}

#[test]
fn compressed_batches_are_read_through_their_codec() {
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let b0 = batch(0, &[(Some("a"), Some("1")), (Some("b"), None)], compression);
        segment(tmp.path(), 0, &[&b0]);
        let dump = read_dir(tmp.path()).unwrap();
        assert_eq!(dump.faults, vec![], "{compression:?}");
        assert_eq!(
            dump.records.iter().map(kv).collect::<Vec<_>>(),
            vec![(0, Some("a"), Some("1")), (1, Some("b"), None)],
            "{compression:?}"
        );
    }
}
