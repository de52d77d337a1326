//! The log's queue of appended, unwritten batches is bounded for appends that wait for nothing
//! (acks=0): `make_room` writes it out once it holds more than `MAX_UNWRITTEN_BYTES`.

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{FlushPolicy, LogConfig, PartitionLog, MAX_UNWRITTEN_BYTES};

#[test]
fn appends_past_the_unwritten_bound_wait_for_the_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("t-0");
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            // flush=never: nothing writes the queue but the background writer, seconds apart.
            let config = LogConfig {
                flush: FlushPolicy::Never,
                ..LogConfig::default()
            };
            let log = PartitionLog::open(path, config).await.unwrap();
            let batch = build_test_batch(0, 10, 0, &vec![7u8; 50 << 10]);
            let mut peak = 0;
            for _ in 0..800 {
                log.append(&batch, 0).unwrap();
                log.make_room().await.unwrap();
                peak = peak.max(log.unwritten_bytes());
            }
            // 800 appends of 500 KiB: 400 MiB unbounded; the queue never held more than the bound
            // plus the one append that crossed it.
            assert!(
                peak <= MAX_UNWRITTEN_BYTES + batch.len(),
                "{peak} bytes unwritten"
            );
            assert_eq!(log.log_end_offset(), 8000);
            log.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}
