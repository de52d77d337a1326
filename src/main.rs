//! The `chronik` binary: the broker (`chronik start`) and its tools.

mod cli;
mod config;
// Parts of the control plane's API (controller queries, cluster mode) have
// no caller in a single broker yet.
#[allow(dead_code, unused_imports)]
mod control;
mod kafka;
mod partitions;
mod replication;
mod server;
mod tools;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Start(args) => {
            init_logging();
            start(&args)
        }
        cli::Command::Bench(command) => chronik_bench::run(command),
        cli::Command::Cluster(cli::ClusterCommand::Status(args)) => {
            tools::cluster_status::main(&args)
        }
        cli::Command::Dev(cli::DevCommand::Cluster(args)) => tools::dev_cluster::main(&args),
        cli::Command::Fuzz(args) => tools::fuzz::main(&args),
        cli::Command::DumpLog(args) => tools::dump_log::main(&args),
    };
    std::process::exit(code);
}

fn start(args: &cli::StartArgs) -> i32 {
    let cpus = chronik_shards::runtime::available_cpus().len();
    let config = match config::BrokerConfig::resolve(args, cpus) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return 2;
        }
    };
    match server::run(config) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default `info`), coloured only on a terminal.
///
/// glommio probes each block device for io_uring polled I/O on the first
/// DmaFile open and logs an error when the device (a virtio disk, say) does
/// not support it; it then simply uses the normal ring. That line is noise,
/// so `glommio::reactor` (which logs nothing else) is silenced unless
/// RUST_LOG names it.
fn init_logging() {
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(if env.is_empty() { "info" } else { env.as_str() })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if !env.contains("glommio::reactor") {
        if let Ok(directive) = "glommio::reactor=off".parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only on a terminal: log files stay plain text for grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(ansi)
        // On a write error the subscriber would report it with eprint!, which panics when
        // stderr cannot be written: the thread that logged (a shard) would die.
        .log_internal_errors(false)
        .init();
}

/// Stderr for the log: a line that cannot be written (stderr's file on a full disk, a closed
/// pipe) is dropped, never an error. Logging must never take a thread down; the broker keeps
/// serving, and the lines come back once the disk has room again.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
