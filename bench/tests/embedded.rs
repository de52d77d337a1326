//! The embedded-cluster path of `chronik bench produce` (no --bootstrap):
//! this test binary stands in for `chronik` (`--broker-bin` = itself; run
//! as `start --listen ...` it serves as a fake broker), so the test checks
//! spawning, readiness, the one-broker fallback without cluster mode, and
//! that the brokers are stopped and the temporary directory removed.

mod common;

use std::net::TcpListener;

use chronik_bench::args::LoadArgs;
use chronik_bench::load::{self, Mode};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("start") {
        fake_broker(&argv[2..]);
        return;
    }
    let parent = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    embedded_run_falls_back_to_one_broker_and_cleans_up(parent.path());
    println!("test embedded_run_falls_back_to_one_broker_and_cleans_up ... ok");
}

/// `start --help` prints no `--peers`: this "chronik" has no cluster mode.
fn fake_broker(args: &[String]) {
    if args.iter().any(|a| a == "--help") {
        println!("Usage: start --node-id <ID> --listen <ADDR> --data-dir <DIR>");
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("fake broker: {flag} missing"))
    };
    let id: i32 = value("--node-id").parse().unwrap();
    assert!(std::path::Path::new(&value("--data-dir")).is_dir());
    let listener = TcpListener::bind(value("--listen")).unwrap();
    common::FakeCluster::serve_alone(id, listener);
}

fn embedded_run_falls_back_to_one_broker_and_cleans_up(parent: &std::path::Path) {
    let exe = std::env::current_exe().unwrap();
    let args = Cli::parse_from([
        "bench",
        "--broker-bin",
        exe.to_str().unwrap(),
        "--data-dir",
        parent.to_str().unwrap(),
        "--brokers",
        "3",
        "--quiet",
        "--floor-samples",
        "0",
        "--partitions",
        "2",
        "--rate",
        "200",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
    ])
    .args;
    let report = load::run(&args, Mode::Produce).unwrap();
    assert!(report.config.embedded);
    assert_eq!(report.config.brokers_requested, 3);
    assert_eq!(report.cluster.brokers, vec![1]);
    let note = report.cluster.note.clone().unwrap();
    assert!(note.contains("no cluster mode"), "{note}");
    assert_eq!(
        report.config.replication_factor, 1,
        "RF capped to the broker count"
    );
    assert_eq!(report.records.failed, 0);
    assert_eq!(
        report.records.warmup + report.records.measured,
        report.records.issued
    );
    // The brokers were stopped and their directory removed.
    let left: Vec<_> = std::fs::read_dir(parent).unwrap().collect();
    assert!(left.is_empty(), "temporary directory left behind: {left:?}");
}
