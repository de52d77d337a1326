//! `chronik bench`: load generators and storage benchmarks.
//!
//! The load generator speaks the Kafka protocol itself so that it measures
//! chronik or any other Kafka-compatible broker the same way.

/// The `chronik bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {}

/// Runs one bench subcommand; returns the process exit code.
pub fn run(command: BenchCommand) -> i32 {
    match command {}
}
