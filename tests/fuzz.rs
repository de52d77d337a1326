//! `chronik fuzz` against real broker processes: a short run (5,000 Kafka frames, the replication
//! and control ports, issue 13's exact frames first) must pass. Issue 13's frames are the 30-byte
//! Metadata v1 request with a topic count of 0x7fffffff and one frame per length kind (array,
//! compact array, string, compact string, bytes, compact bytes, records, tagged-field counts and
//! sizes) in a non-flexible and a flexible version: each is answered with an error or its
//! connection closed, the broker stays up and serves the next client. On a broker built with
//! kafka-protocol 0.18 as published, the first of them aborts the process
//! ("memory allocation of 154618822584 bytes failed").

use std::process::Command;

/// The known frames every run starts with (src/tools/fuzz/known.rs), by the name it prints.
const KNOWN: &[&str] = &[
    "Metadata v1 array count 0x7fffffff (30 bytes)",
    "Metadata v9 compact array count 0xffffffff",
    "Metadata v1 string length 0x7fff",
    "Metadata v9 compact string length 0xffffffff",
    "Metadata v1 header client id length 0x7fff",
    "CreateTopics v4 array count 0x7fffffff",
    "CreateTopics v5 compact array count 0x7fffffff",
    "DescribeConfigs v4 nested compact array count 2^28",
    "Produce v3 bytes length 0x7fffffff",
    "Produce v9 compact bytes length 0xffffffff",
    "Produce v3 bytes length -2",
    "Produce v3 records: record count 0x7fffffff",
    "Produce v9 records: record count 0x7fffffff",
    "Produce v3 records: key length 0x7fffffff",
    "Produce v9 records: key length 0x7fffffff",
    "Metadata v9 header tagged field size 0xffffffff",
    "Metadata v9 tagged field count 0xffffffff",
];

#[test]
fn a_short_fuzz_run_with_issue_13s_frames_passes() {
    let output = Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["fuzz", "--frames", "5000", "--peer-frames", "300"])
        .args(["--records", "1000", "--duration", "300", "--seed", "1313"])
        .env("RUST_LOG", "info")
        .output()
        .expect("running chronik fuzz");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in KNOWN {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("known frame: {name}: ")))
            .unwrap_or_else(|| panic!("no result for the known frame {name}\n{report}"));
        assert!(
            line.ends_with("answered; next client served")
                || line.ends_with("closed; next client served"),
            "{line}\n{report}"
        );
    }
    assert!(
        stdout.contains("data: 1000 records stored before the run read back intact"),
        "{report}"
    );
    assert!(
        stdout.contains("Control port: "),
        "the control port was not fuzzed\n{report}"
    );
    assert!(output.status.success(), "{report}");
    assert!(stdout.lines().any(|l| l == "result: PASS"), "{report}");
}
