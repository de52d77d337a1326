//! Latency histograms and their summaries. Values are recorded in
//! nanoseconds into auto-resizing HdrHistograms (3 significant digits), so
//! no sample is ever dropped for being out of range; summaries are in
//! microseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A new, empty latency histogram (ns, 3 significant digits, auto-resizing).
pub fn new_histogram() -> Histogram<u64> {
    // `new` only fails for sigfig > 5.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
}

/// Records `count` samples of `value` (weighted: one sample per record).
pub fn record(h: &mut Histogram<u64>, value: Duration, count: u64) {
    let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX).max(1);
    // An auto-resizing histogram only refuses values beyond u64 range.
    if h.record_n(ns, count.max(1)).is_err() {
        tracing::warn!(ns, "latency sample out of histogram range");
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Histograms of one (leader, partition) group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Publish latency: ack minus actual send (or, for e2e, consume minus send).
    pub latency: Histogram<u64>,
    /// Publish delay: actual send minus intended send.
    pub delay: Histogram<u64>,
    pub records: u64,
    pub bytes: u64,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            latency: new_histogram(),
            delay: new_histogram(),
            records: 0,
            bytes: 0,
        }
    }
}

impl Group {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Group) {
        // Both histograms auto-resize, so adding cannot run out of range.
        let _ = self.latency.add(&other.latency);
        let _ = self.delay.add(&other.delay);
        self.records += other.records;
        self.bytes += other.bytes;
    }
}

/// Samples keyed by (partition leader, partition).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub groups: BTreeMap<(i32, i32), Group>,
}

impl Recorder {
    /// One batch of `records` records and `bytes` bytes: its latency (none
    /// with acks=0) and publish delay (none on the consumer side of e2e).
    pub fn record(
        &mut self,
        leader: i32,
        partition: i32,
        latency: Option<Duration>,
        delay: Option<Duration>,
        records: u64,
        bytes: u64,
    ) {
        let g = self.groups.entry((leader, partition)).or_default();
        if let Some(latency) = latency {
            record(&mut g.latency, latency, records);
        }
        if let Some(delay) = delay {
            record(&mut g.delay, delay, records);
        }
        g.records += records;
        g.bytes += bytes;
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &Recorder) {
        for (k, g) in &other.groups {
            self.groups.entry(*k).or_default().merge(g);
        }
    }

    /// All samples together.
    pub fn total(&self) -> Group {
        let mut t = Group::default();
        for g in self.groups.values() {
            t.merge(g);
        }
        t
    }

    /// Samples grouped by leader, with the partitions each leader served.
    pub fn by_leader(&self) -> BTreeMap<i32, (Vec<i32>, Group)> {
        let mut out: BTreeMap<i32, (Vec<i32>, Group)> = BTreeMap::new();
        for (&(leader, partition), g) in &self.groups {
            let e = out
                .entry(leader)
                .or_insert_with(|| (Vec::new(), Group::default()));
            e.0.push(partition);
            e.1.merge(g);
        }
        out
    }

    /// Samples grouped by partition, with the leaders that served it.
    pub fn by_partition(&self) -> BTreeMap<i32, (Vec<i32>, Group)> {
        let mut out: BTreeMap<i32, (Vec<i32>, Group)> = BTreeMap::new();
        for (&(leader, partition), g) in &self.groups {
            let e = out
                .entry(partition)
                .or_insert_with(|| (Vec::new(), Group::default()));
            e.0.push(leader);
            e.1.merge(g);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            record(&mut h, Duration::from_micros(v), 1);
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 % of the exact value.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(s.min_us, 1.0), "{s:?}");
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn weighted_samples_count_once_per_record() {
        let mut h = new_histogram();
        record(&mut h, ms(1), 99);
        record(&mut h, ms(200), 1);
        let s = Summary::of(&h);
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 1000.0).abs() < 1.0);
        assert!(
            (s.p99_us - 1000.0).abs() < 1.0,
            "99 of 100 records took 1 ms"
        );
        assert!((s.p999_us - 200_000.0).abs() < 200.0);
        assert!((s.max_us - 200_000.0).abs() < 200.0);
    }

    #[test]
    fn huge_values_are_kept_not_dropped() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_secs(3600), 1);
        record(&mut h, Duration::ZERO, 1);
        assert_eq!(h.len(), 2);
        let s = Summary::of(&h);
        assert!((s.max_us - 3.6e9).abs() < 3.6e6);
        assert_eq!(s.min_us, 0.001, "zero is stored as 1 ns");
    }

    #[test]
    fn empty_summary_is_all_zero() {
        assert_eq!(Summary::of(&new_histogram()), Summary::default());
    }

    #[test]
    fn groups_merge_per_leader_and_total_sums_everything() {
        let mut r = Recorder::default();
        r.record(1, 0, Some(ms(1)), Some(ms(0)), 10, 100);
        r.record(1, 2, Some(ms(3)), Some(ms(0)), 10, 100);
        r.record(2, 1, Some(ms(5)), Some(ms(1)), 5, 50);
        // Partition 0 moved to leader 2 after a leadership change.
        r.record(2, 0, Some(ms(7)), Some(ms(2)), 5, 50);

        let leaders = r.by_leader();
        assert_eq!(leaders[&1].0, vec![0, 2]);
        assert_eq!(leaders[&1].1.records, 20);
        assert_eq!(leaders[&2].0, vec![0, 1]);
        assert_eq!(leaders[&2].1.latency.len(), 10);
        let partitions = r.by_partition();
        assert_eq!(partitions[&0].0, vec![1, 2]);
        assert_eq!(partitions[&0].1.records, 15);

        let total = r.total();
        assert_eq!(total.records, 30);
        assert_eq!(total.bytes, 300);
        assert_eq!(total.latency.len(), 30);
        assert_eq!(total.delay.len(), 30);
        let s = Summary::of(&total.latency);
        assert!((s.max_us - 7000.0).abs() < 7.0);

        let mut other = Recorder::default();
        other.record(3, 4, None, Some(ms(1)), 1, 10);
        r.merge(&other);
        assert_eq!(r.total().records, 31);
        assert_eq!(r.total().latency.len(), 30, "no latency sample for acks=0");
        assert_eq!(r.total().delay.len(), 31);
    }
}
