//! The benchmark report: what `--json` writes, what `compare` reads, and the
//! table printed at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::floor::bandwidth;
use crate::machine::Machine;
use crate::stats::{Group, Recorder, Summary};

/// Bumped whenever a key is renamed or removed or a figure changes meaning
/// (2: the floor counts stalls as the load does); `compare` refuses a mismatch.
pub const SCHEMA: &str = "chronik-bench-report/2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// `produce` or `e2e`.
    pub kind: String,
    pub started_unix_ms: u64,
    pub config: Config,
    pub versions: VersionsInfo,
    pub machine: Machine,
    pub cluster: ClusterInfo,
    pub floor: Option<FloorInfo>,
    /// Only with `--raw-bandwidth-mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bandwidth: Option<DiskBandwidth>,
    pub harness: Harness,
    pub records: RecordCounts,
    pub total: GroupReport,
    pub leaders: Vec<LeaderReport>,
    pub partitions: Vec<PartitionReport>,
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub bootstrap: Option<String>,
    pub embedded: bool,
    pub brokers_requested: usize,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub acks: String,
    pub record_size: usize,
    pub rate: f64,
    pub batch_records: u32,
    pub linger_ms: Option<f64>,
    pub connections: usize,
    pub max_in_flight: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub request_timeout_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionsInfo {
    pub chronik_bench: String,
    pub kafka_protocol: String,
    /// API name to the version this run used.
    pub negotiated: BTreeMap<String, i16>,
    /// API name to the broker's advertised `[min, max]`.
    pub broker_ranges: BTreeMap<String, [i16; 2]>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub brokers: Vec<i32>,
    pub controller_id: i32,
    /// E.g. why an embedded run has fewer brokers than asked.
    pub note: Option<String>,
}

/// The machine's own floor, measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorInfo {
    pub dir: String,
    /// Raw O_DIRECT 4 KiB write + fdatasync, one sample per tick, as taken.
    pub fsync_4k: Summary,
    /// TCP loopback round trip, as taken.
    pub loopback_rtt: Summary,
    /// How long the load keeps sending into a stall (its in-flight window).
    pub stall_window_ms: f64,
    /// `fsync_4k` counted as the load counts records: a slow sample also
    /// stands for the ticks it held up within the stall window.
    pub fsync_4k_stall_counted: Summary,
    /// `loopback_rtt` counted the same way.
    pub loopback_rtt_stall_counted: Summary,
    /// Stall-counted fsync p99 + round-trip p99: the cheapest durable
    /// acknowledgement this machine gives the same load. Latency p99 is
    /// judged divided by this.
    pub floor_p99_us: f64,
}

/// The disk's raw sequential write bandwidth, measured in the same run as the throughput it
/// normalizes. Every record is written once per replica to this one disk when the embedded
/// cluster's brokers share it, so the ceiling for the produced bytes is raw / RF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskBandwidth {
    pub dir: String,
    /// Bytes of each round (1 MiB O_DIRECT writes one at a time, then one fdatasync).
    pub round_bytes: u64,
    /// MB/s (10^6 bytes) of the round right before the load.
    pub before_mb_s: f64,
    /// MB/s of the round right after the load.
    pub after_mb_s: f64,
    /// The faster of the two: a round slowed by the host must not flatter the ratio below.
    pub raw_mb_s: f64,
    pub replication_factor: i16,
    /// Total produced MB/s over `raw_mb_s / replication_factor`.
    pub throughput_over_raw_per_replica: f64,
}

impl DiskBandwidth {
    /// From the two rounds' (bytes, time) and the run's produced MB/s.
    pub fn new(
        dir: String,
        before: (u64, Duration),
        after: (u64, Duration),
        replication_factor: i16,
        produced_mb_s: f64,
    ) -> DiskBandwidth {
        let (before_mb_s, after_mb_s) = (bandwidth([before]) / 1e6, bandwidth([after]) / 1e6);
        let raw_mb_s = before_mb_s.max(after_mb_s);
        let per_replica = raw_mb_s / f64::from(replication_factor.max(1));
        DiskBandwidth {
            dir,
            round_bytes: before.0,
            before_mb_s,
            after_mb_s,
            raw_mb_s,
            replication_factor,
            throughput_over_raw_per_replica: produced_mb_s / per_replica,
        }
    }
}

/// The benchmark's own overhead, so it is not mistaken for the broker's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Harness {
    /// How late the pacer thread woke for a due batch (part of every delay).
    pub pacer_lateness: Summary,
    /// Encoding one produce request (before the send time is taken).
    pub encode: Summary,
    pub threads: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Records the schedule issued, warm-up included.
    pub issued: u64,
    /// Issued during warm-up (acknowledged, not in the statistics).
    pub warmup: u64,
    /// Acknowledged (or, with acks=0, written) after warm-up.
    pub measured: u64,
    /// Never acknowledged: a non-retriable error, or no answer in time.
    pub failed: u64,
    /// e2e: measured records read back by the consumers.
    pub consumed: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub records: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// Publish latency (e2e: produce-to-consume latency).
    pub latency: Summary,
    /// Publish delay: actual send minus intended send.
    pub delay: Summary,
    /// latency p99 / floor p99.
    pub p99_over_floor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderReport {
    pub broker_id: i32,
    pub partitions: Vec<i32>,
    #[serde(flatten)]
    pub stats: GroupReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// Leaders that acknowledged this partition's records (more than one
    /// after a leadership change).
    pub leaders: Vec<i32>,
    #[serde(flatten)]
    pub stats: GroupReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// Kafka error code; none for a connection failure.
    pub code: Option<i16>,
    pub name: String,
    pub count: u64,
    /// How many of these were retried (and may have succeeded later).
    pub retried: u64,
}

impl GroupReport {
    pub fn of(group: &Group, seconds: f64, floor_us: Option<f64>) -> GroupReport {
        let latency = Summary::of(&group.latency);
        let secs = seconds.max(1e-9);
        GroupReport {
            records: group.records,
            records_per_s: group.records as f64 / secs,
            mb_per_s: group.bytes as f64 / secs / 1e6,
            latency,
            delay: Summary::of(&group.delay),
            p99_over_floor: floor_us
                .filter(|f| *f > 0.0 && latency.count > 0)
                .map(|f| latency.p99_us / f),
        }
    }
}

/// Per-leader, per-partition and total rows out of a recorder.
pub fn groups(
    recorder: &Recorder,
    seconds: f64,
    floor_us: Option<f64>,
) -> (GroupReport, Vec<LeaderReport>, Vec<PartitionReport>) {
    let total = GroupReport::of(&recorder.total(), seconds, floor_us);
    let leaders = recorder
        .by_leader()
        .into_iter()
        .map(|(broker_id, (partitions, g))| LeaderReport {
            broker_id,
            partitions,
            stats: GroupReport::of(&g, seconds, floor_us),
        })
        .collect();
    let partitions = recorder
        .by_partition()
        .into_iter()
        .map(|(partition, (leaders, g))| PartitionReport {
            partition,
            leaders,
            stats: GroupReport::of(&g, seconds, floor_us),
        })
        .collect();
    (total, leaders, partitions)
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn list(v: &[i32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn row(out: &mut String, first: &str, second: &str, g: &GroupReport) {
    let ratio = g
        .p99_over_floor
        .map(|r| format!("{r:.1}"))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{first:<8} {second:<12} {:>10} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8}",
        g.records,
        g.mb_per_s,
        ms(g.latency.p50_us),
        ms(g.latency.p99_us),
        ms(g.latency.p999_us),
        ms(g.latency.max_us),
        ms(g.delay.p99_us),
        ratio
    );
}

impl Report {
    /// The human-readable table printed after a run.
    pub fn table(&self, per_partition: bool) -> String {
        let mut out = String::new();
        let what = if self.kind == "e2e" {
            "end-to-end latency"
        } else {
            "publish latency"
        };
        let _ = writeln!(
            out,
            "{} -> topic {} ({} partitions, RF {}, acks={}, {} B records, {} rec/s target, {} per batch)",
            self.kind,
            self.config.topic,
            self.config.partitions,
            self.config.replication_factor,
            self.config.acks,
            self.config.record_size,
            self.config.rate,
            self.config.batch_records
        );
        let _ = writeln!(
            out,
            "machine: {} cores, {}, kernel {}, load {:.2}; brokers {:?}",
            self.machine.cores,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.load_avg_1m,
            self.cluster.brokers
        );
        if let Some(note) = &self.cluster.note {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(
            out,
            "{what} in ms; delay = publish delay (actual - intended send)"
        );
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8}",
            "leader",
            "partitions",
            "records",
            "MB/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "delay p99",
            "p99/flr"
        );
        for l in &self.leaders {
            row(
                &mut out,
                &l.broker_id.to_string(),
                &list(&l.partitions),
                &l.stats,
            );
        }
        row(&mut out, "total", "", &self.total);
        if per_partition {
            let _ = writeln!(out, "{:<8} {:<12}", "partition", "leaders");
            for p in &self.partitions {
                row(
                    &mut out,
                    &p.partition.to_string(),
                    &list(&p.leaders),
                    &p.stats,
                );
            }
        }
        match &self.floor {
            Some(f) => {
                let _ = writeln!(
                    out,
                    "floor ({}): fsync 4 KiB p99 {} ms ({} ms counting stalls within {} ms), loopback RTT p99 {} ms, floor {} ms; total p99 / floor = {}",
                    f.dir,
                    ms(f.fsync_4k.p99_us),
                    ms(f.fsync_4k_stall_counted.p99_us),
                    f.stall_window_ms.round(),
                    ms(f.loopback_rtt.p99_us),
                    ms(f.floor_p99_us),
                    self.total
                        .p99_over_floor
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
            None => {
                let _ = writeln!(out, "floor: not measured");
            }
        }
        if let Some(d) = &self.disk_bandwidth {
            let _ = writeln!(
                out,
                "disk ({}): raw O_DIRECT 1 MiB sequential write {:.1} MB/s before the load, {:.1} after; total MB/s / ({:.1} / RF {}) = {:.2}",
                d.dir,
                d.before_mb_s,
                d.after_mb_s,
                d.raw_mb_s,
                d.replication_factor,
                d.throughput_over_raw_per_replica
            );
        }
        let _ = writeln!(
            out,
            "harness: pacer lateness p99 {} ms (max {} ms), request encode p99 {} ms",
            ms(self.harness.pacer_lateness.p99_us),
            ms(self.harness.pacer_lateness.max_us),
            ms(self.harness.encode.p99_us)
        );
        let r = &self.records;
        let _ = write!(
            out,
            "records: issued {}, warm-up {}, measured {}, failed {}",
            r.issued, r.warmup, r.measured, r.failed
        );
        if let Some(c) = r.consumed {
            let _ = write!(out, ", consumed {c}");
        }
        let _ = writeln!(out);
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            for e in &self.errors {
                let code = e.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "error {code} {}: {} (retried {})",
                    e.name, e.count, e.retried
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_bandwidth_judges_against_the_faster_round_per_replica() {
        let d = DiskBandwidth::new(
            "/d".into(),
            (600_000_000, Duration::from_secs(1)),
            (900_000_000, Duration::from_secs(1)),
            3,
            150.0,
        );
        assert_eq!(d.round_bytes, 600_000_000);
        assert!((d.before_mb_s - 600.0).abs() < 1e-9);
        assert!((d.after_mb_s - 900.0).abs() < 1e-9);
        assert!((d.raw_mb_s - 900.0).abs() < 1e-9);
        // 150 MB/s of records, each written by 3 replicas to a 900 MB/s disk: half its share.
        assert!((d.throughput_over_raw_per_replica - 0.5).abs() < 1e-9);
    }
}
