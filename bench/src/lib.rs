//! `chronik bench`: load generators and storage benchmarks.
//!
//! The load generator speaks the Kafka protocol itself so that it measures
//! chronik or any other Kafka-compatible broker the same way.

pub mod args;
pub mod batch;
pub mod clean_bench;
pub mod client;
pub mod compare;
pub mod driver;
pub mod e2e;
pub mod embedded;
pub mod floor;
pub mod floor_sampler;
pub mod interrupt;
pub mod load;
pub mod local_cluster;
pub mod log_bench;
pub mod machine;
pub mod pacing;
pub mod report;
pub mod stats;

/// The `chronik bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Open-loop produce load: publish latency and delay per partition leader.
    Produce(args::LoadArgs),
    /// End-to-end latency (produce to consume) per partition leader.
    E2e(args::LoadArgs),
    /// Compare two --json reports; exit 1 past --max-regression.
    Compare(compare::CompareArgs),
    /// Partition log against the raw disk: append+durable latency and throughput, with the floor.
    Log(log_bench::LogBenchArgs),
    /// The log cleaner's throughput (dirty MiB/s compacted) against the raw disk bandwidth.
    Clean(clean_bench::CleanBenchArgs),
}

/// Runs one bench subcommand; returns the process exit code.
pub fn run(command: BenchCommand) -> i32 {
    match command {
        BenchCommand::Produce(a) => load::main(&a, load::Mode::Produce),
        BenchCommand::E2e(a) => load::main(&a, load::Mode::E2e),
        BenchCommand::Compare(a) => compare::main(&a),
        BenchCommand::Log(a) => log_bench::main(&a),
        BenchCommand::Clean(a) => clean_bench::main(&a),
    }
}
