//! `chronik dev cluster` and `chronik cluster status` as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A base port below the kernel's ephemeral range, different per run.
fn base_port(attempt: u32) -> u16 {
    let seed = std::process::id() as u64 + u64::from(attempt) * 7919;
    20_000 + (seed % 9_000) as u16
}

#[test]
fn dev_cluster_starts_reports_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut attempt = 0;
    let (mut child, port, lines, mut stdout) = loop {
        let port = base_port(attempt);
        let dir = tmp.path().join(format!("try{attempt}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args([
                "dev",
                "cluster",
                "--nodes",
                "3",
                "--base-port",
                &port.to_string(),
                "--replica-lag-time-max-ms",
                "10000",
            ])
            .arg("--base-dir")
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            let done = line.starts_with("Ctrl-C");
            lines.push(std::mem::take(&mut line));
            if done {
                break;
            }
        }
        if lines.iter().any(|l| l.starts_with("Ctrl-C")) {
            break (child, port, lines, stdout);
        }
        // Did not come up (a port in use, say): try other ports.
        let _ = child.wait();
        attempt += 1;
        assert!(attempt < 3, "dev cluster did not start: {lines:?}");
    };
    let text = lines.concat();
    let bootstrap = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        port,
        port + 1,
        port + 2
    );
    assert!(text.contains(&format!("bootstrap: {bootstrap}")), "{text}");
    assert!(text.contains("node3.log"), "{text}");

    // Every broker answers; status lists all three and one controller.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(["cluster", "status", "--json", "--bootstrap"])
            .arg(format!("127.0.0.1:{}", port + 2))
            .output()
            .unwrap();
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if status["controller_id"].as_i64().unwrap_or(-1) > 0 {
                break status;
            }
        }
        assert!(Instant::now() < deadline, "no status: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let brokers = status["brokers"].as_array().unwrap();
    let ids: Vec<i64> = brokers.iter().map(|b| b["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(brokers.iter().all(|b| b["fenced"] == false));
    assert_eq!(brokers[0]["endpoint"], format!("127.0.0.1:{port}"));

    // Ctrl-C stops every broker cleanly, and the command exits 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Keep reading what it prints while it stops (a closed pipe would fail its writes).
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(rest.contains("stopping 3 brokers"), "{rest}");
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev cluster did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(code.success(), "{code}");
    let dir = tmp.path().join(format!("try{attempt}"));
    for n in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("node{n}.log"))).unwrap();
        assert!(log.contains("chronik stopped cleanly"), "node {n}:\n{log}");
        assert!(
            log.contains("replica_lag_time_max_ms=10000"),
            "node {n}:\n{log}"
        );
    }
}
