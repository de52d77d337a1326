//! Tests of the benchmark harness itself, against a fake Kafka cluster:
//! open-loop pacing under a stall, grouping by leader across a leadership
//! change, e2e read-back, and the stability of the JSON report's keys.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chronik_bench::args::LoadArgs;
use chronik_bench::load::{self, Mode};
use chronik_bench::report::Report;
use clap::Parser;
use common::{Behaviour, FakeCluster, LeaderMove, Stall};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn args(bootstrap: &str, extra: &[&str]) -> LoadArgs {
    let mut argv = vec![
        "bench",
        "--bootstrap",
        bootstrap,
        "--quiet",
        "--record-size",
        "100",
        "--request-timeout",
        "10s",
    ];
    if !extra.contains(&"--floor-samples") {
        argv.extend_from_slice(&["--floor-samples", "0"]);
    }
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

fn no_record_lost(report: &Report) {
    let r = &report.records;
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(
        r.warmup + r.measured,
        r.issued,
        "every issued record is accounted for: {r:?}"
    );
    assert_eq!(report.total.records, r.measured);
}

/// Runs 1000 batches/s for 2 s (after a 0.3 s warm-up) against one broker
/// that stops reading for 200 ms at the 1000th produce request.
fn stalled_run(max_in_flight: &str) -> (Report, FakeCluster) {
    run_with_stall(
        Stall {
            at_request: 1000,
            duration: Duration::from_millis(200),
        },
        max_in_flight,
    )
}

/// Runs 1000 batches/s for 2 s (after a 0.3 s warm-up) against one broker that stalls as told.
fn run_with_stall(stall: Stall, max_in_flight: &str) -> (Report, FakeCluster) {
    let cluster = FakeCluster::start(
        1,
        Behaviour {
            stall: Some(stall),
            leader_move: None,
        },
    );
    let a = args(
        &cluster.bootstrap(),
        &[
            "--topic",
            "stall",
            "--partitions",
            "2",
            "--acks",
            "1",
            "--rate",
            "1000",
            "--batch-records",
            "1",
            "--duration",
            "2s",
            "--warmup",
            "300ms",
            "--max-in-flight",
            max_in_flight,
        ],
    );
    let report = load::run(&a, Mode::Produce).unwrap();
    (report, cluster)
}

#[test]
fn a_stall_shows_in_publish_delay_when_sends_wait_for_room() {
    // Kafka's default of 5 requests in flight: behind the stall, sends wait,
    // so the stall shows as publish delay, not hidden by a waiting client.
    let (report, cluster) = stalled_run("5");
    no_record_lost(&report);
    assert_eq!(
        cluster.stored_records("stall").iter().sum::<i64>() as u64,
        report.records.issued
    );
    let t = &report.total;
    // ~200 of 2000 batches fell due during the stall; 10 % > 1 %.
    assert!(
        t.delay.p99_us >= 100_000.0,
        "delay p99 {} us",
        t.delay.p99_us
    );
    assert!(
        t.latency.max_us >= 200_000.0,
        "latency max {} us",
        t.latency.max_us
    );
    assert!(
        t.latency.p99_us + t.delay.p99_us >= 100_000.0,
        "the stall cannot hide: {t:?}"
    );
}

#[test]
fn a_stall_shows_in_publish_latency_p99_when_requests_pipeline() {
    // Unlimited pipelining: every request sent during the stall waits for
    // its answer, so latency p99 carries the stall.
    let (report, _cluster) = stalled_run("100000");
    no_record_lost(&report);
    let t = &report.total;
    assert!(
        t.latency.p99_us >= 100_000.0,
        "latency p99 {} us",
        t.latency.p99_us
    );
    assert!(
        t.latency.max_us >= 200_000.0,
        "latency max {} us",
        t.latency.max_us
    );
}

#[test]
fn throughput_counts_until_the_last_acknowledgement_of_a_run_that_fell_behind() {
    // The broker stops reading for 600 ms at the 2250th request, 50 ms before the schedule ends,
    // so the measured records are acknowledged over about 2.55 s, not the 2 s the schedule lasted.
    let (report, _cluster) = run_with_stall(
        Stall {
            at_request: 2250,
            duration: Duration::from_millis(600),
        },
        "5",
    );
    no_record_lost(&report);
    let t = &report.total;
    assert_eq!(t.records, 2000, "{t:?}");
    assert!(
        t.records_per_s > 600.0 && t.records_per_s < 900.0,
        "2000 records over about 2.55 s, not 2 s: {} records/s",
        t.records_per_s
    );
}

#[test]
fn raw_bandwidth_is_measured_around_the_load_and_normalizes_the_throughput() {
    let cluster = FakeCluster::start(1, Behaviour::default());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_string();
    let a = args(
        &cluster.bootstrap(),
        &[
            "--partitions",
            "2",
            "--rate",
            "400",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--raw-bandwidth-mib",
            "4",
            "--data-dir",
            &dir_arg,
        ],
    );
    let report = load::run(&a, Mode::Produce).unwrap();
    no_record_lost(&report);
    let d = report
        .disk_bandwidth
        .as_ref()
        .expect("raw bandwidth measured");
    assert_eq!(d.round_bytes, 4 << 20);
    assert!(d.before_mb_s > 0.0 && d.after_mb_s > 0.0, "{d:?}");
    assert_eq!(d.raw_mb_s, d.before_mb_s.max(d.after_mb_s));
    let rf = f64::from(report.config.replication_factor);
    let expected = report.total.mb_per_s / (d.raw_mb_s / rf);
    assert!(
        (d.throughput_over_raw_per_replica - expected).abs() < 1e-9,
        "{d:?}"
    );
    assert!(report.table(false).contains("sequential write"));
    // The scratch file is gone with the run.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
}

#[test]
fn batches_follow_a_leadership_change_and_group_by_the_new_leader() {
    // Partition 0 starts on broker 1 and moves to broker 2 after 300 batches;
    // broker 1 then answers NOT_LEADER_OR_FOLLOWER.
    let cluster = FakeCluster::start(
        2,
        Behaviour {
            stall: None,
            leader_move: Some(LeaderMove {
                partition: 0,
                after_batches: 300,
                to: 2,
            }),
        },
    );
    let a = args(
        &cluster.bootstrap(),
        &[
            "--topic",
            "moving",
            "--partitions",
            "2",
            "--acks",
            "all",
            "--rate",
            "2000",
            "--batch-records",
            "2",
            "--duration",
            "1500ms",
            "--warmup",
            "100ms",
            "--per-partition",
        ],
    );
    let report = load::run(&a, Mode::Produce).unwrap();
    no_record_lost(&report);
    // Nothing lost and nothing written twice.
    let stored: i64 = cluster.stored_records("moving").iter().sum();
    assert_eq!(stored as u64, report.records.issued);
    assert!(cluster.state.lock().unwrap().not_leader_answers > 0);

    let p0 = report.partitions.iter().find(|p| p.partition == 0).unwrap();
    assert_eq!(
        p0.leaders,
        vec![1, 2],
        "partition 0 was acknowledged by both leaders in turn"
    );
    let l1 = report.leaders.iter().find(|l| l.broker_id == 1).unwrap();
    let l2 = report.leaders.iter().find(|l| l.broker_id == 2).unwrap();
    assert_eq!(l1.partitions, vec![0]);
    assert_eq!(l2.partitions, vec![0, 1]);
    assert_eq!(l1.stats.records + l2.stats.records, report.total.records);
    let not_leader = report
        .errors
        .iter()
        .find(|e| e.code == Some(6))
        .expect("NOT_LEADER_OR_FOLLOWER counted");
    assert_eq!(not_leader.name, "NotLeaderOrFollower");
    assert_eq!(
        not_leader.retried, not_leader.count,
        "each was retried on the new leader"
    );
    assert_eq!(report.cluster.brokers, vec![1, 2]);
    let table = report.table(true);
    assert!(table.contains("NotLeaderOrFollower"), "{table}");
}

#[test]
fn e2e_reads_back_every_measured_record() {
    let cluster = FakeCluster::start(2, Behaviour::default());
    let a = args(
        &cluster.bootstrap(),
        &[
            "--topic",
            "e2e",
            "--partitions",
            "3",
            "--rate",
            "500",
            "--batch-records",
            "5",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ],
    );
    let report = load::run(&a, Mode::E2e).unwrap();
    no_record_lost(&report);
    assert_eq!(report.kind, "e2e");
    assert_eq!(report.records.consumed, Some(report.records.measured));
    assert_eq!(report.total.latency.count, report.records.measured);
    assert!(
        report.total.delay.count > 0,
        "publish delay comes from the producer side"
    );
    assert_eq!(
        report
            .leaders
            .iter()
            .map(|l| l.broker_id)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                // Maps keyed by API name are data, not schema.
                if !(path.ends_with("negotiated") || path.ends_with("broker_ranges")) {
                    key_paths(v, &path, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_json_report_keeps_its_keys() {
    // A leadership change, so the report has errors too.
    let cluster = FakeCluster::start(
        2,
        Behaviour {
            stall: None,
            leader_move: Some(LeaderMove {
                partition: 1,
                after_batches: 20,
                to: 1,
            }),
        },
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let json = dir.path().join("report.json");
    let json_arg = json.to_str().unwrap().to_string();
    let dir_arg = dir.path().to_str().unwrap().to_string();
    let a = args(
        &cluster.bootstrap(),
        &[
            "--topic",
            "schema",
            "--partitions",
            "2",
            "--rate",
            "400",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--linger",
            "5ms",
            "--json",
            &json_arg,
            "--floor-samples",
            "50",
            "--data-dir",
            &dir_arg,
        ],
    );
    let report = load::run(&a, Mode::E2e).unwrap();
    load::write_json(&report, &json).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&value, "", &mut keys);
    let golden: BTreeSet<String> = include_str!("golden/report_keys.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = golden.difference(&keys).collect();
    let extra: Vec<_> = keys.difference(&golden).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "report keys changed (bump report::SCHEMA and update tests/golden/report_keys.txt)\nmissing: {missing:?}\nextra: {extra:?}"
    );
    let floor = report.floor.as_ref().expect("floor measured");
    assert!(floor.fsync_4k.count > 0);
    assert!(floor.floor_p99_us > 0.0);
    assert!(report.total.p99_over_floor.is_some());
    // And it reads back (floats may differ in the last bit).
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back.config, report.config);
    assert_eq!(back.records, report.records);
    assert_eq!(back.errors, report.errors);
    assert_eq!(back.leaders.len(), report.leaders.len());
    assert_eq!(back.total.latency.count, report.total.latency.count);
}
