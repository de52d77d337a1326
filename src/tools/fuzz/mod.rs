//! `chronik fuzz`: a structured fuzzer for a real broker process.
//!
//! It asks the broker what it serves (ApiVersions), builds valid requests for every advertised API
//! and version ([`generate`]), finds their length fields ([`sites`]), mutates them ([`mutate`]) and
//! sends them pipelined over many connections ([`runner`]); then it bends the replication and
//! control-plane ports ([`peers`]). Around the run it stores keyed records and reads them back
//! ([`intact`]), and it watches the broker's process, RSS and log ([`watch`]). Issue 13's exact
//! frames go first ([`known`]). The run fails on any abort or panic, any request left unanswered
//! past its timeout on an open connection, RSS over `--max-rss-mib`, or any stored record changed.

pub mod generate;
pub mod intact;
pub mod known;
pub mod mutate;
pub mod peers;
pub mod rng;
pub mod runner;
pub mod sites;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chronik_bench::client::Connection;
use kafka_protocol::messages::ApiVersionsRequest;
use uuid::Uuid;

use self::rng::Rng;
use self::runner::{Plan, Tally};

/// The topic the fuzzed requests name.
const FUZZ_TOPIC: &str = "chronik-fuzz";
/// The topic whose records are checked after the run; no fuzzed request names it.
const INTACT_TOPIC: &str = "chronik-fuzz-intact";
const PARTITIONS: i32 = 3;

/// `chronik fuzz` flags.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Start this `chronik` executable as the broker (one node in cluster mode, temporary data
    /// directory) [default: this executable, unless --bootstrap is given].
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Attack the broker at HOST:PORT instead of starting one.
    #[arg(long, conflicts_with = "broker_bin")]
    pub bootstrap: Option<String>,
    /// With --bootstrap: the broker's control-plane (--rpc) address, to fuzz that port too.
    #[arg(long, requires = "bootstrap")]
    pub rpc: Option<String>,
    /// With --bootstrap: the broker's process id, to watch it and sample its RSS.
    #[arg(long, requires = "bootstrap")]
    pub broker_pid: Option<u32>,
    /// With --bootstrap: the broker's log file, to look for panics and failed allocations.
    #[arg(long, requires = "bootstrap")]
    pub broker_log: Option<PathBuf>,
    /// Frames sent to the Kafka listener.
    #[arg(long, default_value_t = 100_000)]
    pub frames: u64,
    /// Frames sent to each of the replication and control ports [default: frames / 50, at
    /// least 500].
    #[arg(long)]
    pub peer_frames: Option<u64>,
    /// Stop sending Kafka frames after this many seconds, whatever --frames says.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Seed of every random choice: the same seed sends the same frames.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
    /// Concurrent connections to the Kafka listener.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// How long a request may go without an answer (beyond the wait it asks for) before an open
    /// connection counts as a failure.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The broker's resident set must stay under this.
    #[arg(long, default_value_t = 2048)]
    pub max_rss_mib: u64,
    /// Keyed records stored before the run and read back after it.
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Brokers to start (broker 1 is attacked; with 2 or more its control-plane port is open).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Extra arguments for the brokers this tool starts (repeat the flag).
    #[arg(long, allow_hyphen_values = true)]
    pub broker_arg: Vec<String>,
}

/// Runs the command; returns the process exit code.
pub fn main(args: &FuzzArgs) -> i32 {
    match run(args) {
        Ok(0) => {
            println!("result: PASS");
            0
        }
        Ok(failures) => {
            println!("result: FAIL ({failures} failures)");
            1
        }
        Err(e) => {
            eprintln!("chronik fuzz: {e:#}");
            println!("result: FAIL (error)");
            1
        }
    }
}

/// Where the broker is and how to watch it.
struct Target {
    kafka: String,
    rpc: Option<String>,
    pid: Option<u32>,
    logs: Vec<PathBuf>,
    own: Option<watch::OwnBroker>,
}

fn target(args: &FuzzArgs) -> Result<Target> {
    if let Some(kafka) = &args.bootstrap {
        return Ok(Target {
            kafka: kafka.clone(),
            rpc: args.rpc.clone(),
            pid: args.broker_pid,
            logs: args.broker_log.iter().cloned().collect(),
            own: None,
        });
    }
    let binary = match &args.broker_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    let mut extra = args.broker_arg.clone();
    if !extra.iter().any(|a| a == "--cores") {
        extra.extend(["--cores".to_string(), "1".to_string()]);
    }
    let own = watch::OwnBroker::start(&binary, args.nodes, &extra)?;
    println!(
        "started {} brokers of {} in {}; broker 1 (pid {}) is attacked",
        args.nodes.max(1),
        binary.display(),
        own.dir().display(),
        own.pid().unwrap_or(0),
    );
    let rpc = (args.nodes > 1).then(|| own.rpc.clone());
    Ok(Target {
        kafka: own.kafka.clone(),
        rpc,
        pid: own.pid(),
        logs: own.logs.clone(),
        own: Some(own),
    })
}

/// The whole run; Ok(number of failures). A failed run keeps the brokers' data and logs.
fn run(args: &FuzzArgs) -> Result<u64> {
    // Ctrl-C and SIGTERM end the run early; the brokers (in their own process group) are still
    // stopped and the summary printed.
    chronik_bench::interrupt::install();
    let mut target = target(args)?;
    let result = attack(args, &mut target);
    if let Some(own) = target.own.as_mut() {
        if !matches!(result, Ok(0)) {
            own.keep = true;
            println!("kept the brokers' data and logs in {}", own.dir().display());
        }
    }
    result
}

fn attack(args: &FuzzArgs, target: &mut Target) -> Result<u64> {
    let sampler = target.pid.map(watch::RssSampler::start);
    let seed = Rng::new(args.seed);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut failures = 0u64;

    // Setup: what the broker serves, a topic to aim at, records to check afterwards.
    let mut conn = Connection::connect(&target.kafka, Duration::from_secs(30))?;
    let versions = conn.request(&ApiVersionsRequest::default(), 3)?;
    let advertised: Vec<(i16, i16, i16)> = versions
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    conn.create_topic(FUZZ_TOPIC, PARTITIONS, 1, Duration::from_secs(30))?;
    let metadata = conn.metadata(Some(&[FUZZ_TOPIC]))?;
    let topic_id = metadata
        .topics
        .first()
        .map(|t| t.topic_id)
        .unwrap_or_default();
    let broker_id = metadata.brokers.first().map_or(1, |b| b.node_id.0);
    let replication_factor = if args.bootstrap.is_some() {
        1
    } else {
        args.nodes.clamp(1, 3) as i16
    };
    let expected = intact::seed(
        &target.kafka,
        INTACT_TOPIC,
        PARTITIONS,
        replication_factor,
        args.records,
        &mut seed.fork(u64::MAX),
    )?;
    let intact_id = conn
        .metadata(Some(&[INTACT_TOPIC]))?
        .topics
        .first()
        .map(|t| t.topic_id)
        .unwrap_or_default();
    drop(conn);
    let fuzz_target = generate::Target {
        topic: FUZZ_TOPIC.into(),
        topic_id,
        partitions: PARTITIONS,
        broker_id,
    };
    let templates = generate::templates(&advertised, &fuzz_target, &seed.fork(u64::MAX - 1));
    println!(
        "chronik fuzz: seed {}, {} templates over {} APIs, {} records stored to check, target {}",
        args.seed,
        templates.len(),
        advertised.len(),
        expected.records(),
        target.kafka
    );

    // Issue 13's frames, one connection each.
    for (name, frame) in known::frames() {
        let outcome = known::send(&target.kafka, &frame, timeout);
        let next = Connection::connect(&target.kafka, timeout).and_then(|mut c| c.metadata(None));
        let verdict = match (&outcome, &next) {
            (known::Outcome::Failed(why), _) => format!("FAILED: {why}"),
            (_, Err(e)) => format!("FAILED: the next client was not served: {e}"),
            (known::Outcome::Answered, Ok(_)) => "answered; next client served".into(),
            (known::Outcome::Closed, Ok(_)) => "closed; next client served".into(),
        };
        if verdict.starts_with("FAILED") {
            failures += 1;
            println!("  frame: {}", runner::hex(&frame));
        }
        println!("known frame: {name}: {verdict}");
        if broker_exited(target) {
            break;
        }
    }
    if broker_exited(target) {
        failures += check_broker(args, target, sampler.as_ref(), &expected);
        return Ok(failures.max(1));
    }

    // The Kafka listener.
    let plan = Arc::new(Plan {
        address: target.kafka.clone(),
        templates,
        advertised,
        frames: args.frames,
        connections: args.connections.max(1),
        window: args.window.max(1),
        timeout,
        max_declared_wait: Duration::from_secs(60),
        seed: seed.clone(),
        deadline: Instant::now() + Duration::from_secs(args.duration),
    });
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let worker = {
        let (plan, tally) = (plan.clone(), tally.clone());
        std::thread::spawn(move || runner::run(plan, tally))
    };
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed().as_secs() % 10 == 0 && started.elapsed().subsec_millis() < 200 {
            println!(
                "  ... {} frames, {} responses, {} closes, {} failures",
                tally.settled(),
                tally.responses.load(Ordering::Relaxed),
                tally.closes.load(Ordering::Relaxed),
                tally.failures.load(Ordering::Relaxed)
            );
        }
        if let Some(own) = target.own.as_mut() {
            if own.exit_status().is_some() {
                break;
            }
        }
    }
    let _ = worker.join();
    let elapsed = started.elapsed().as_secs_f64();
    let settled = tally.settled();
    println!(
        "kafka: {settled} frames in {elapsed:.1} s ({:.0} frames/s; {} writes with the frames sent \
         again after a close) on {} connections: {} responses, {} closes by the broker, {} acks=0 \
         produce unanswered, {} abandoned (long wait asked), {} failures",
        settled as f64 / elapsed.max(0.001),
        tally.sent.load(Ordering::Relaxed),
        tally.connections.load(Ordering::Relaxed),
        tally.responses.load(Ordering::Relaxed),
        tally.closes.load(Ordering::Relaxed),
        tally.unanswered_produce.load(Ordering::Relaxed),
        tally.abandoned.load(Ordering::Relaxed),
        tally.failures.load(Ordering::Relaxed),
    );
    failures += tally.failures.load(Ordering::Relaxed);
    if chronik_bench::interrupt::interrupted() {
        println!("interrupted after {settled} of {} frames", args.frames);
        failures += 1;
    } else if settled
        + tally.abandoned.load(Ordering::Relaxed)
        + tally.failures.load(Ordering::Relaxed)
        < args.frames
    {
        println!(
            "note: --duration {} s ended the run after {settled} of {} frames",
            args.duration, args.frames
        );
    }
    for f in tally
        .failed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        println!(
            "  FAILURE frame #{} (seed {}), correlation id {:?}: {}\n    frame: {}",
            f.frame_no,
            args.seed,
            f.correlation,
            f.what,
            runner::hex(&f.frame[..f.frame.len().min(512)])
        );
    }

    // The broker-to-broker ports.
    let peer_frames = args.peer_frames.unwrap_or((args.frames / 50).max(500));
    let topics: Vec<Uuid> = [topic_id, intact_id]
        .into_iter()
        .filter(|id| !id.is_nil())
        .collect();
    let mut ports = vec![(peers::Port::Replication, target.kafka.clone())];
    if let Some(rpc) = &target.rpc {
        ports.push((peers::Port::Control, rpc.clone()));
    }
    for (i, (port, address)) in ports.into_iter().enumerate() {
        if chronik_bench::interrupt::interrupted() {
            println!("interrupted: the {port:?} port was not fuzzed");
            failures += 1;
            continue;
        }
        let started = Instant::now();
        let t = peers::run(
            port,
            &address,
            &topics,
            peer_frames,
            timeout,
            &seed.fork(u64::MAX - 2 - i as u64),
        );
        println!(
            "{port:?} port: {} frames on {} connections in {:.1} s, {} closed by the broker \
             after end of stream, {} lingering",
            t.frames,
            t.connections,
            started.elapsed().as_secs_f64(),
            t.closed_by_broker,
            t.lingering.len()
        );
        for l in t.lingering.iter().take(5).chain(t.connect_errors.iter()) {
            println!("  FAILURE {l}");
        }
        failures += (t.lingering.len() + t.connect_errors.len()) as u64;
    }

    failures += check_broker(args, target, sampler.as_ref(), &expected);
    Ok(failures)
}

fn broker_exited(target: &mut Target) -> bool {
    target
        .own
        .as_mut()
        .is_some_and(|own| own.exit_status().is_some())
}

/// After the run: alive, log clean, RSS under the limit, data intact, a new client served.
fn check_broker(
    args: &FuzzArgs,
    target: &mut Target,
    sampler: Option<&watch::RssSampler>,
    expected: &intact::Expected,
) -> u64 {
    let mut failures = 0;
    let alive = match (target.own.as_mut(), target.pid) {
        (Some(own), _) => match own.exit_status() {
            Some(status) => {
                println!("FAILURE broker exited: {status}\n{}", own.log_tail(15));
                false
            }
            None => true,
        },
        (None, Some(pid)) => watch::process_alive(pid),
        (None, None) => true,
    };
    if !alive {
        failures += 1;
    }
    for log in &target.logs {
        let fatal = watch::fatal_lines(log, 10);
        for line in &fatal {
            println!("FAILURE broker log {}: {line}", log.display());
        }
        failures += fatal.len() as u64;
    }
    match sampler {
        Some(s) => {
            let peak = s.peak_mib();
            let verdict = if peak > args.max_rss_mib as f64 {
                failures += 1;
                "FAILURE: over the limit"
            } else {
                "under the limit"
            };
            println!(
                "broker: peak RSS {peak:.1} MiB ({verdict} of {} MiB)",
                args.max_rss_mib
            );
        }
        None => println!("broker: RSS not watched (no --broker-pid)"),
    }
    if alive {
        match intact::verify(&target.kafka, expected) {
            Ok(()) => println!(
                "data: {} records stored before the run read back intact",
                expected.records()
            ),
            Err(e) => {
                failures += 1;
                println!("FAILURE data: {e:#}");
            }
        }
        match Connection::connect(&target.kafka, Duration::from_secs(10))
            .and_then(|mut c| c.metadata(None))
        {
            Ok(_) => println!("broker: serves a new client"),
            Err(e) => {
                failures += 1;
                println!("FAILURE broker does not serve a new client: {e}");
            }
        }
    }
    failures
}
