//! What a client can make a broker hold is bounded: memory for announced frames, answers a client
//! never reads, connections. Real broker processes, raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::*;

/// The broker's resident memory (VmRSS) in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Issue 13, test 2: 300 connections each announce a 100 MiB Produce frame and send it at about
/// 1 KB/s. The broker takes memory only for the bytes that arrive (never 300 x 100 MiB: the old code
/// allocated and zero-filled every announced frame, and the OOM killer ended it), and a real
/// client's produce and fetch keep working meanwhile.
#[test]
fn announced_frames_that_trickle_in_hold_only_what_arrived() {
    const BUDGET: u64 = 256 << 20;
    let mut broker = Broker::start_with_args(&[
        "--queued-max-request-bytes",
        &BUDGET.to_string(),
        "--max-connections",
        "1000",
    ]);
    let mut client = broker.client();
    assert_eq!(client.create_topic("t", 1).topics[0].error_code, 0);
    assert_eq!(
        client.produce("t", 1, &[(0, batch(&[b"before"], 0))])[0].1,
        0
    );
    let base = rss_bytes(broker.pid());
    // The stated base: the broker's RSS before the attack, plus what each connection costs
    // (socket buffers, read-ahead) and the first 64 KiB step of each frame, all within the budget.
    let limit = base + BUDGET;

    let mut senders: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(broker.addr).unwrap();
            stream.write_all(&(100u32 << 20).to_be_bytes()).unwrap();
            // The start of a Produce v9 request header, then filler.
            stream.write_all(&[0, 0, 0, 9, 0, 0, 0, 1]).unwrap();
            stream
        })
        .collect();
    let mut peak = base;
    let mut produced = 1;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        for stream in &mut senders {
            // 100 bytes every 100 ms: 1 KB/s each.
            let _ = stream.write_all(&[0x55; 100]);
        }
        peak = peak.max(rss_bytes(broker.pid()));
        // Stop early rather than let the machine's OOM killer pick a victim.
        assert!(
            peak < limit,
            "broker RSS {} MiB over the budget plus base ({} MiB)",
            peak >> 20,
            limit >> 20
        );
        let results = client.produce("t", 1, &[(0, batch(&[b"during"], 0))]);
        assert_eq!(results[0].1, 0, "produce while the frames trickle in");
        produced += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.read_all("t", 0, 0).len(), produced);
    assert!(broker.is_running());
    eprintln!(
        "RSS: base {} MiB, peak {} MiB with 300 trickling 100 MiB frames",
        base >> 20,
        peak >> 20
    );
    drop(senders);
    assert!(broker.stop().success());
}

/// A connection that sends Fetch requests and never reads the answers.
fn fetch_without_reading(broker: &Broker, requests: usize) -> Client {
    let mut reader = broker.client();
    let request = fetch_request(&[("t", 0, 0, 1 << 20)], 0, 1, 1 << 20);
    for _ in 0..requests {
        let frame = reader.encode(ApiKey::Fetch, 12, &request);
        // The broker stops reading once its answers back up: do not block the test on that.
        reader
            .stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if reader.stream.write_all(&frame).is_err() {
            break;
        }
    }
    reader
}

fn topic_with_a_mebibyte(broker: &Broker) {
    let mut client = broker.client();
    assert_eq!(client.create_topic("t", 1).topics[0].error_code, 0);
    let value = vec![b'v'; 256 << 10];
    for _ in 0..4 {
        assert_eq!(client.produce("t", 1, &[(0, batch(&[&value], 0))])[0].1, 0);
    }
}

/// Issue 13, test 3: a client that sends requests and never reads its answers is disconnected once
/// it has taken no answer bytes for the write timeout, and the broker serves others meanwhile.
#[test]
fn a_client_that_never_reads_is_disconnected() {
    let mut broker = Broker::start_with_args(&["--response-write-timeout-ms", "1000"]);
    topic_with_a_mebibyte(&broker);
    let mut stuck = fetch_without_reading(&broker, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !broker.log().contains("took no answer bytes") {
        assert!(
            Instant::now() < deadline,
            "not disconnected\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its socket is closed: reading drains what was sent, then ends.
    stuck
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match stuck.stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let mut client = broker.client();
    assert_eq!(client.read_all("t", 0, 0).len(), 4);
    assert!(broker.stop().success());
}

/// Issue 13, test 3: SIGTERM while a client that never reads is connected (its write timeout far
/// away) exits within the shutdown bound: answers in flight get a short grace, not for ever. The old
/// code did not exit within 30 s.
#[test]
fn sigterm_is_not_held_up_by_a_client_that_never_reads() {
    let mut broker = Broker::start_with_args(&["--response-write-timeout-ms", "600000"]);
    topic_with_a_mebibyte(&broker);
    let _stuck = fetch_without_reading(&broker, 200);
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let status = broker.stop();
    let took = asked.elapsed();
    assert!(status.success(), "{status}\n{}", broker.log());
    // The grace for answers in flight is 5 s; everything else is quick.
    assert!(
        took < Duration::from_secs(15),
        "stopped after {took:?}\n{}",
        broker.log()
    );
}

/// max.connections: connections beyond it are closed at once, and the broker keeps serving the
/// ones it has.
#[test]
fn connections_beyond_max_connections_are_refused() {
    let mut broker = Broker::start_with_args(&["--max-connections", "40"]);
    let mut held: Vec<Client> = (0..6).map(|_| broker.client()).collect();
    for client in &mut held {
        let _: ApiVersionsResponse =
            client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    }
    // 40 across the shards (each takes its share): of 60 more, at most 34 are served.
    let mut refused = 0;
    let mut extra = Vec::new();
    for _ in 0..60 {
        let mut client = broker.client();
        let frame = client.encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let answered = client.stream.write_all(&frame).is_ok() && client.read_frame().is_ok();
        if answered {
            extra.push(client);
        } else {
            refused += 1;
        }
    }
    assert!(refused >= 26, "only {refused} of 60 refused");
    assert!(broker.log().contains("max.connections reached"));
    drop(extra);
    for client in &mut held {
        let _: ApiVersionsResponse =
            client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    }
    assert!(broker.stop().success());
}

/// fetch.max.bytes: a broker-side cap on every fetch response, whatever the request asks for
/// (whole batches; the first one is served even if larger, as Kafka does).
#[test]
fn fetch_responses_are_capped_by_fetch_max_bytes() {
    let mut broker = Broker::start_with_args(&["--fetch-max-bytes", "100000"]);
    let mut client = broker.client();
    assert_eq!(client.create_topic("t", 1).topics[0].error_code, 0);
    let value = vec![b'v'; 30_000];
    for _ in 0..10 {
        assert_eq!(client.produce("t", 1, &[(0, batch(&[&value], 0))])[0].1, 0);
    }
    // The request allows 50 MiB.
    let data = client.fetch("t", 0, 0, 50 << 20);
    let records = data.records.unwrap_or_default();
    assert!(
        !records.is_empty() && records.len() <= 100_000,
        "{} bytes",
        records.len()
    );
    assert_eq!(client.read_all("t", 0, 0).len(), 10);
    assert!(broker.stop().success());
}
