//! The `chronik` binary: the broker (`chronik start`) and its tools.

mod cli;
// The Kafka front end (another branch) is the control plane's user; until it is merged, most of
// the API is only exercised by the module's own tests.
#[allow(dead_code, unused_imports)]
mod control;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Bench(command) => chronik_bench::run(command),
    };
    std::process::exit(code);
}
