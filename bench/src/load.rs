//! One load run, `produce` or `e2e`: set up the target (an embedded cluster
//! or `--bootstrap`), measure the floor, create the topic, pace batches
//! open-loop to the partition leaders, drain, and report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::args::LoadArgs;
use crate::batch;
use crate::client::pipeline::{ProduceJob, ProduceSettings};
use crate::client::{ClientError, ClusterMap, Connection};
use crate::driver::Driver;
use crate::e2e::{self, ConsumerPlan, ConsumerSet};
use crate::embedded::{EmbeddedCluster, EmbeddedOptions};
use crate::floor::SeqWriteProbe;
use crate::floor_sampler::FloorSampler;
use crate::interrupt;
use crate::machine::Machine;
use crate::pacing::{self, Schedule};
use crate::report::{
    self, ClusterInfo, Config, DiskBandwidth, Harness, RecordCounts, Report, VersionsInfo,
};
use crate::stats::Summary;
use chronik_shards::log::producers::increment_sequence;

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Produce,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::E2e => "e2e",
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long e2e consumers get to read back the last records.
const CONSUME_GRACE: Duration = Duration::from_secs(10);

/// Runs the benchmark, prints the table, writes the JSON; returns the exit
/// code (0 ok, 1 could not run, 2 records failed or were not read back).
pub fn main(args: &LoadArgs, mode: Mode) -> i32 {
    interrupt::install();
    let report = match run(args, mode) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chronik bench {}: {e}", mode.name());
            return 1;
        }
    };
    print!("{}", report.table(args.per_partition));
    if let Some(path) = &args.json {
        if let Err(e) = write_json(&report, path) {
            eprintln!(
                "chronik bench {}: writing {}: {e}",
                mode.name(),
                path.display()
            );
            return 1;
        }
    }
    if interrupt::interrupted() {
        eprintln!("interrupted: the figures cover only part of the run");
        return 130;
    }
    let r = &report.records;
    if r.failed > 0 {
        eprintln!("{} records were never acknowledged", r.failed);
        return 2;
    }
    if let Some(consumed) = r.consumed {
        if consumed < r.measured {
            eprintln!(
                "{} acknowledged records were not read back",
                r.measured - consumed
            );
            return 2;
        }
    }
    0
}

/// Writes a report as pretty JSON.
pub fn write_json(report: &Report, path: &Path) -> Result<(), std::io::Error> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Runs one benchmark and returns its report.
pub fn run(args: &LoadArgs, mode: Mode) -> Result<Report, ClientError> {
    validate(args)?;
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let machine = Machine::probe();
    let parent = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let embedded = match &args.bootstrap {
        Some(_) => None,
        None => {
            let binary = match &args.broker_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?,
            };
            let options = EmbeddedOptions {
                binary,
                brokers: args.brokers.max(1),
                parent: parent.clone(),
                extra_args: args.broker_arg.clone(),
            };
            if !args.quiet {
                eprintln!(
                    "starting an embedded cluster of {} broker(s)...",
                    options.brokers
                );
            }
            Some(EmbeddedCluster::start(&options)?)
        }
    };
    if let Some(note) = embedded.as_ref().and_then(|c| c.note.as_ref()) {
        eprintln!("note: {note}");
    }
    let result = run_on(
        args,
        mode,
        embedded.as_ref(),
        &parent,
        started_unix_ms,
        machine,
    );
    if let (Err(_), Some(cluster)) = (&result, &embedded) {
        eprintln!("embedded broker logs:\n{}", cluster.log_tails(20));
    }
    result
}

fn validate(args: &LoadArgs) -> Result<(), ClientError> {
    let bad = |m: &str| Err(ClientError::Other(m.to_string()));
    if args.partitions < 1 {
        return bad("--partitions must be at least 1");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return bad("--rate must be a positive number");
    }
    if args.duration.is_zero() {
        return bad("--duration must be positive");
    }
    if args.connections == 0 || args.max_in_flight == 0 {
        return bad("--connections and --max-in-flight must be at least 1");
    }
    Ok(())
}

fn connect_any(addrs: &[String]) -> Result<Connection, ClientError> {
    let mut last = ClientError::Other("no bootstrap address".into());
    for a in addrs {
        match Connection::connect(a, CONNECT_TIMEOUT) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn run_on(
    args: &LoadArgs,
    mode: Mode,
    embedded: Option<&EmbeddedCluster>,
    parent: &Path,
    started_unix_ms: u64,
    machine: Machine,
) -> Result<Report, ClientError> {
    let bootstrap_list: Vec<String> = match (&args.bootstrap, embedded) {
        (Some(b), _) => b.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(c)) => c.bootstrap.split(',').map(str::to_string).collect(),
        (None, None) => return Err(ClientError::Other("no target".into())),
    };
    let floor_dir: PathBuf = embedded
        .map(|c| c.data_dir().to_path_buf())
        .unwrap_or_else(|| parent.to_path_buf());

    let mut admin = connect_any(&bootstrap_list)?;
    let md = admin.metadata(Some(&[]))?;
    let broker_count = md.brokers.len().max(1);
    let replication_factor = args
        .replication_factor
        .unwrap_or(3)
        .min(i16::try_from(broker_count).unwrap_or(i16::MAX))
        .max(1);
    admin.create_topic(
        &args.topic,
        args.partitions,
        replication_factor,
        args.request_timeout,
    )?;
    let map = wait_for_leaders(&mut admin, &args.topic, args.partitions)?;

    let batch_records = args.batch_records();
    let value = batch::payload(args.record_size);
    let settings = ProduceSettings {
        topic: args.topic.clone(),
        acks: args.acks.wire(),
        timeout: args.request_timeout,
        max_in_flight: args.max_in_flight,
    };
    // The raw bandwidth round before the load; the file stays until the round after it, which
    // writes the other half (fresh blocks, as the log's appends are), so no deletion's discards
    // land in the measured window.
    let raw_round_bytes = args.raw_bandwidth_mib << 20;
    let mut seq_probe = match raw_round_bytes {
        0 => None,
        n => Some(SeqWriteProbe::new(&floor_dir, 2 * n)?),
    };
    let raw_before = seq_probe
        .as_mut()
        .map(|p| p.round(raw_round_bytes))
        .transpose()?;
    let base = Instant::now();
    // Setup (connections, consumers) happens before the first batch is due.
    let start = base + Duration::from_millis(500);
    let measure_from = start + args.warmup;
    let schedule = Schedule::new(
        start,
        args.rate,
        batch_records,
        args.partitions,
        args.warmup + args.duration,
    );
    let mut driver = Driver::connect(
        settings,
        &bootstrap_list,
        args.connections,
        CONNECT_TIMEOUT,
        measure_from,
    )?;
    let nonce: u64 = u64::from(std::process::id()) << 32 | (started_unix_ms & 0xffff_ffff);
    let consumers = match mode {
        Mode::E2e => Some(ConsumerSet::start(
            ConsumerPlan {
                topic: args.topic.clone(),
                bootstrap: bootstrap_list.clone(),
                nonce,
                base,
                measure_from_ns: measure_from.saturating_duration_since(base).as_nanos() as u64,
                connect_timeout: CONNECT_TIMEOUT,
            },
            args.partitions,
        )?),
        Mode::Produce => None,
    };

    // Produce mode sends the same encoded batch every time; e2e encodes each
    // batch at its send time so the consumer can tell how old it is.
    let fixed = batch::encode(batch_records, &value, |_| None)?;
    // An idempotent producer numbers each partition's batches, so each batch is encoded at its
    // send time as in e2e mode (the pacer does it, ahead of the send it times).
    let producer = match args.idempotent {
        true => Some(admin.init_producer_id(args.request_timeout)?),
        false => None,
    };
    let mut sequences = vec![0i32; usize::try_from(args.partitions).unwrap_or(0)];
    let sampler = match args.floor_samples {
        0 => None,
        n => Some(FloorSampler::start(
            floor_dir.clone(),
            n,
            measure_from,
            schedule.end,
            stall_window(args, batch_records, &map),
        )?),
    };
    let issued_batches = Arc::new(AtomicU64::new(0));
    let pacer = {
        let dispatcher = driver.dispatcher();
        let issued_batches = issued_batches.clone();
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                pacing::run(
                    &schedule,
                    interrupt::interrupted,
                    |_, partition, intended| {
                        let sequenced = producer.and_then(|(producer_id, epoch)| {
                            let next = sequences.get_mut(usize::try_from(partition).ok()?)?;
                            let base_sequence = *next;
                            *next = increment_sequence(base_sequence, batch_records as i32);
                            Some(batch::Sequenced {
                                producer_id,
                                epoch,
                                base_sequence,
                            })
                        });
                        let records = match mode {
                            Mode::Produce if sequenced.is_some() => {
                                batch::encode_as(batch_records, &value, |_| None, sequenced)
                                    .unwrap_or_else(|_| fixed.clone())
                            }
                            Mode::Produce => fixed.clone(),
                            Mode::E2e => {
                                let now = Instant::now();
                                match batch::encode_as(
                                    batch_records,
                                    &value,
                                    |_| Some(batch::e2e_key(nonce, base, now)),
                                    sequenced,
                                ) {
                                    Ok(b) => b,
                                    Err(_) => fixed.clone(),
                                }
                            }
                        };
                        dispatcher.dispatch(ProduceJob {
                            partition,
                            intended,
                            first_sent: None,
                            records,
                            record_count: batch_records,
                            attempts: 0,
                            waited_for_leader: false,
                        });
                        issued_batches.fetch_add(1, Ordering::SeqCst);
                    },
                )
            })?
    };

    let mut progress = Progress::new(args.quiet, start, args.warmup + args.duration);
    while !pacer.is_finished() {
        driver.pump(Duration::from_millis(50));
        progress.tick(&driver, issued_batches.load(Ordering::SeqCst));
    }
    // An interrupted run measured only until the pacer stopped.
    let measured_until = if interrupt::interrupted() {
        Instant::now().min(schedule.end)
    } else {
        schedule.end
    };
    let (issued, lateness) = pacer
        .join()
        .map_err(|_| ClientError::Other("the pacer thread panicked".into()))?;
    let drain_deadline = Instant::now() + args.request_timeout + Duration::from_secs(5);
    while driver.counts.finished_batches < issued
        && Instant::now() < drain_deadline
        && !interrupt::interrupted()
    {
        driver.drain(
            issued,
            (Instant::now() + Duration::from_millis(200)).min(drain_deadline),
        );
        progress.tick(&driver, issued);
    }
    driver.close();
    progress.done();
    let floor = match sampler {
        Some(s) => s.finish()?,
        None => None,
    };
    let raw_after = seq_probe
        .as_mut()
        .map(|p| p.round(raw_round_bytes))
        .transpose()?;
    drop(seq_probe);

    let mut consumed = None;
    let recorder = match consumers {
        Some(c) => {
            let want = driver.counts.measured_records;
            let deadline = Instant::now() + CONSUME_GRACE;
            while c.consumed.load(Ordering::SeqCst) < want
                && Instant::now() < deadline
                && !interrupt::interrupted()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let consumer = c.finish();
            consumed = Some(consumer.total().records);
            e2e::combine(&consumer, &driver.recorder)
        }
        None => driver.recorder.clone(),
    };

    // Throughput counts until the last measured acknowledgement when that came after the schedule's
    // end: a cluster that fell behind delivered the records over that longer time.
    let seconds = driver
        .last_measured_done
        .map_or(measured_until, |done| done.max(measured_until))
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let floor_us = floor.as_ref().map(|f| f.floor_p99_us);
    let (total, leaders, partitions) = report::groups(&recorder, seconds, floor_us);
    let disk_bandwidth = match (raw_before, raw_after) {
        (Some(before), Some(after)) => Some(DiskBandwidth::new(
            floor_dir.display().to_string(),
            before,
            after,
            replication_factor,
            total.mb_per_s,
        )),
        _ => None,
    };
    let refreshed = driver.cluster.clone();
    let versions = versions_info(&admin, driver.produce_version);
    Ok(Report {
        schema: report::SCHEMA.to_string(),
        kind: mode.name().to_string(),
        started_unix_ms,
        config: Config {
            bootstrap: args.bootstrap.clone(),
            embedded: embedded.is_some(),
            brokers_requested: if embedded.is_some() { args.brokers } else { 0 },
            topic: args.topic.clone(),
            partitions: args.partitions,
            replication_factor,
            acks: args.acks.name().to_string(),
            record_size: args.record_size,
            rate: args.rate,
            batch_records,
            linger_ms: args.linger.map(|d| d.as_secs_f64() * 1000.0),
            connections: args.connections,
            max_in_flight: args.max_in_flight,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            request_timeout_s: args.request_timeout.as_secs_f64(),
        },
        versions,
        machine,
        cluster: cluster_info(&refreshed, &map, embedded),
        floor,
        disk_bandwidth,
        harness: Harness {
            pacer_lateness: Summary::of(&lateness),
            encode: Summary::of(&driver.encode),
            threads: 2 + 2 * refreshed.brokers.len() * args.connections,
        },
        records: RecordCounts {
            issued: issued * u64::from(batch_records),
            warmup: driver.counts.warmup_records,
            measured: driver.counts.measured_records,
            failed: driver.counts.failed_records,
            consumed,
        },
        total,
        leaders,
        partitions,
        errors: driver.errors(),
    })
}

/// How long the load keeps sending into a stall: until `max_in_flight` requests wait on one
/// connection, at the rate one connection's batches are due (the floor counts a stall that long).
fn stall_window(args: &LoadArgs, batch_records: u32, map: &ClusterMap) -> Duration {
    let leaders: std::collections::BTreeSet<i32> =
        map.partitions.values().map(|p| p.leader).collect();
    let connections = (leaders.len().max(1) * args.connections) as f64;
    let batches_per_s = args.rate / batch_records.max(1) as f64 / connections;
    Duration::try_from_secs_f64(args.max_in_flight as f64 / batches_per_s).unwrap_or(Duration::MAX)
}

fn wait_for_leaders(
    admin: &mut Connection,
    topic: &str,
    partitions: i32,
) -> Result<ClusterMap, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = admin.metadata(Some(&[topic]))?;
        let map = ClusterMap::from_metadata(&md, topic);
        match map.check_ready(topic, partitions) {
            Ok(()) => return Ok(map),
            Err(e) if Instant::now() >= deadline || interrupt::interrupted() => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn cluster_info(
    map: &ClusterMap,
    initial: &ClusterMap,
    embedded: Option<&EmbeddedCluster>,
) -> ClusterInfo {
    let map = if map.brokers.is_empty() { initial } else { map };
    ClusterInfo {
        brokers: map.brokers.keys().copied().collect(),
        controller_id: map.controller_id,
        note: embedded.and_then(|c| c.note.clone()),
    }
}

fn versions_info(admin: &Connection, produce: Option<i16>) -> VersionsInfo {
    let v = &admin.versions;
    let mut negotiated = std::collections::BTreeMap::new();
    for (name, chosen) in [
        ("Produce", produce.or(v.produce)),
        ("Fetch", v.fetch),
        ("ListOffsets", v.list_offsets),
        ("Metadata", v.metadata),
        ("CreateTopics", v.create_topics),
    ] {
        if let Some(c) = chosen {
            negotiated.insert(name.to_string(), c);
        }
    }
    VersionsInfo {
        chronik_bench: env!("CARGO_PKG_VERSION").to_string(),
        kafka_protocol: "0.18".to_string(),
        negotiated,
        broker_ranges: v
            .broker
            .iter()
            .map(|(k, (lo, hi))| (k.clone(), [*lo, *hi]))
            .collect(),
    }
}

/// The progress line on stderr: once a second on a terminal, every five
/// seconds otherwise.
struct Progress {
    enabled: bool,
    every: Duration,
    start: Instant,
    length: Duration,
    next: Instant,
    tty: bool,
}

impl Progress {
    fn new(quiet: bool, start: Instant, length: Duration) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        Progress {
            enabled: !quiet,
            every,
            start,
            length,
            next: start + every,
            tty,
        }
    }

    fn tick(&mut self, driver: &Driver, issued_batches: u64) {
        if !self.enabled || Instant::now() < self.next {
            return;
        }
        self.next += self.every;
        let elapsed = self.start.elapsed().as_secs_f64();
        let total = driver.recorder.total();
        let p99 = Summary::of(&total.latency).p99_us / 1000.0;
        let delay = Summary::of(&total.delay).p99_us / 1000.0;
        let errors: u64 = driver.errors().iter().map(|e| e.count).sum();
        let line = format!(
            "[{elapsed:6.1}s/{:.0}s] batches issued {issued_batches}, done {}, in flight {}; measured records {}; p99 {p99:.2} ms, delay p99 {delay:.2} ms; errors {errors}",
            self.length.as_secs_f64(),
            driver.counts.finished_batches,
            driver.in_flight(),
            driver.counts.measured_records,
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn done(&self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }
}
