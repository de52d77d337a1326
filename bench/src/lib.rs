//! `chronik bench`: load generators and storage benchmarks.
//!
//! The load generator speaks the Kafka protocol itself so that it measures
//! chronik or any other Kafka-compatible broker the same way.

pub mod floor;
pub mod log_bench;

/// The `chronik bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Partition log against the raw disk: append+durable latency and throughput, with the floor.
    Log(log_bench::LogBenchArgs),
}

/// Runs one bench subcommand; returns the process exit code.
pub fn run(command: BenchCommand) -> i32 {
    match command {
        BenchCommand::Log(a) => log_bench::main(&a),
    }
}
