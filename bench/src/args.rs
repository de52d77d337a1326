//! Command-line arguments shared by `chronik bench produce` and `e2e`.

use std::path::PathBuf;
use std::time::Duration;

/// Producer acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    /// The value a ProduceRequest carries.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            _ => Err(format!("acks must be 0, 1 or all, not {s:?}")),
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("us") {
        (v, 1e-6)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// How and where to load a broker.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// A broker to bootstrap from (HOST:PORT). Without it, an embedded
    /// cluster is started on loopback in a temporary directory.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Topic to produce to; created if missing.
    #[arg(long, default_value = "chronik-bench")]
    pub topic: String,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Default 3, or the broker count if smaller.
    #[arg(long)]
    pub replication_factor: Option<i16>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Open-loop target, records per second (all partitions together).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Records per batch (one batch per produce request). Default 10.
    #[arg(long, conflicts_with = "linger")]
    pub batch_records: Option<u32>,
    /// Instead of --batch-records: size batches as a producer lingering this
    /// long would at the target rate (rate / partitions x linger records).
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// Produce connections per broker.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Unanswered requests per connection before sends wait (Kafka's
    /// max.in.flight.requests.per.connection).
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Produce request timeout; a batch still unanswered (or failing with
    /// retriable errors) after this counts as failed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also print one row per partition.
    #[arg(long)]
    pub per_partition: bool,
    /// Embedded cluster size (needs cluster mode in `chronik start`).
    #[arg(long, default_value_t = 3)]
    pub brokers: usize,
    /// The `chronik` executable for the embedded cluster (default: this one).
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Extra argument for every embedded `chronik start` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub broker_arg: Vec<String>,
    /// Where the embedded cluster's temporary directory goes and where the
    /// disk floor is measured (default: the system temp dir; must not be tmpfs).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Floor samples (fsync and round trips each), spread over the measured
    /// window while the load runs (0 skips the floor).
    #[arg(long, default_value_t = 2000)]
    pub floor_samples: usize,
    /// Also measure the disk's raw O_DIRECT sequential write bandwidth (1 MiB writes) in the same
    /// run, where the floor is measured: one round of this many MiB right before the load and one
    /// right after it, so the throughput can be judged against the disk of that run (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub raw_bandwidth_mib: u64,
    /// Produce as an idempotent producer (Kafka's enable.idempotence): one producer id from
    /// InitProducerId, a sequence per partition in every batch, so the broker's dedupe path runs.
    #[arg(long)]
    pub idempotent: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// Records per produce request.
    pub fn batch_records(&self) -> u32 {
        match (self.batch_records, self.linger) {
            (Some(n), _) => n.max(1),
            (None, Some(linger)) => {
                let per_partition = self.rate / f64::from(self.partitions.max(1));
                (per_partition * linger.as_secs_f64()).ceil().max(1.0) as u32
            }
            (None, None) => 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn acks_parse() {
        assert_eq!("all".parse::<Acks>().map(Acks::wire), Ok(-1));
        assert_eq!("1".parse::<Acks>().map(Acks::wire), Ok(1));
        assert_eq!("0".parse::<Acks>().map(Acks::wire), Ok(0));
        assert!("2".parse::<Acks>().is_err());
    }
}
