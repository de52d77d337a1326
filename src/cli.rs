//! Command-line interface.

use clap::{Parser, Subcommand};

/// chronik: a Kafka-wire-compatible streaming broker.
#[derive(Debug, Parser)]
#[command(name = "chronik", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks: load generation against a broker, storage latency.
    #[command(subcommand)]
    Bench(chronik_bench::BenchCommand),
}
