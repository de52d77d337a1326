//! The `chronik` binary: the broker (`chronik start`) and its tools.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Bench(command) => chronik_bench::run(command),
    };
    std::process::exit(code);
}
