//! A full disk, an unwritable log and a dying shard against real broker processes: produce is
//! refused with KAFKA_STORAGE_ERROR (56) instead of hanging, acknowledged records stay readable,
//! the broker restarts on a full disk, recovers once space is freed, and never wedges.
//!
//! The disk-full tests mount a small ext4 filesystem on a loop device (root only). Where that is
//! impossible they print why and are skipped; with CHRONIK_REQUIRE_LOOP_MOUNT=1 they fail instead.
//! `CHRONIK_BIN` runs them against another build of the broker.

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch, Client};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const KAFKA_STORAGE_ERROR: i16 = 56;

/// A small ext4 filesystem on a loop device, unmounted and removed when dropped.
struct LoopFs {
    mount: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoopFs {
    fn mount(size_mib: u64) -> Result<LoopFs, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = tmp.path().join("disk.img");
        let mount = tmp.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        File::create(&image)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(|e| format!("creating the image: {e}"))?;
        run(
            "mkfs.ext4",
            &["-q", "-F", image.to_str().unwrap_or_default()],
        )?;
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap_or_default(),
                mount.to_str().unwrap_or_default(),
            ],
        )?;
        Ok(LoopFs { mount, _tmp: tmp })
    }

    /// Mounted, or None after saying why not (a panic instead when the mount is required).
    fn mount_or_skip(test: &str, size_mib: u64) -> Option<LoopFs> {
        match LoopFs::mount(size_mib) {
            Ok(fs) => Some(fs),
            Err(why) if std::env::var_os("CHRONIK_REQUIRE_LOOP_MOUNT").is_some() => {
                panic!("{test}: cannot mount a loop filesystem: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot mount a loop filesystem ({why}); needs root");
                None
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let target = self.mount.to_str().unwrap_or_default().to_string();
        if run("umount", &[&target]).is_err() {
            let _ = run("umount", &["-l", &target]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Allocates real blocks in `path` until the filesystem refuses, down to single blocks, leaving
/// `leave` bytes available (as `df` counts them; root may still use the reserved blocks).
fn fill(path: &Path, leave: u64) {
    let file = File::create(path).unwrap();
    let mut size = 0i64;
    let mut step = 1i64 << 30;
    while step >= 4096 {
        if available(path.parent().unwrap()) < leave + step as u64 && leave > 0 {
            step /= 2;
            continue;
        }
        // SAFETY: fallocate on a file we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, size, step) };
        if rc == 0 {
            size += step;
        } else {
            step /= 2;
        }
    }
    file.sync_all().unwrap();
}

fn available(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// A broker process with its log outside the filesystem under test.
struct Proc {
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(data: &Path, log: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Proc::start_with_stderr(data, log, port, args, env, stderr.into())
    }

    fn start_with_stderr(
        data: &Path,
        log: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Proc {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let binary =
            std::env::var("CHRONIK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chronik").into());
        let child = Command::new(binary)
            .arg("start")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut proc = Proc {
            addr,
            child: Some(child),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("broker exited at start: {status}\n{}", proc.log());
            }
            if Client::try_connect(addr).is_ok() {
                return proc;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not start\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Waits up to `bound` for the process to exit by itself.
    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the exit status, or a panic if it does not exit within 60 s.
    fn stop(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match self.wait_exit(Duration::from_secs(60)) {
            Some(status) => status,
            None => panic!("broker did not stop on SIGTERM\n{}", self.log()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

/// ListOffsets latest (the high watermark) of `topic`'s partitions 0..count.
fn latest_offsets(client: &mut Client, topic: &str, count: i32) -> Vec<i64> {
    let mut t = ListOffsetsTopic::default();
    t.name = name(topic);
    t.partitions = (0..count)
        .map(|p| {
            let mut partition = ListOffsetsPartition::default();
            partition.partition_index = p;
            partition.timestamp = -1;
            partition
        })
        .collect();
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![t];
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 6, &request);
    let mut offsets = vec![-1; count as usize];
    for p in &response.topics[0].partitions {
        assert_eq!(p.error_code, 0, "ListOffsets {topic}-{}", p.partition_index);
        offsets[p.partition_index as usize] = p.offset;
    }
    offsets
}

fn delete_topic(client: &mut Client, topic: &str) -> i16 {
    let mut request = DeleteTopicsRequest::default();
    request.topic_names = vec![name(topic)];
    request.timeout_ms = 10_000;
    let response: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &request);
    response.responses[0].error_code
}

/// Every record of each partition reads back as acknowledged, and ListOffsets latest counts
/// exactly them.
fn assert_readable(client: &mut Client, topic: &str, acked: &[Vec<Bytes>]) {
    let latest = latest_offsets(client, topic, acked.len() as i32);
    for (p, values) in acked.iter().enumerate() {
        assert_eq!(
            latest[p],
            values.len() as i64,
            "ListOffsets latest of {topic}-{p}"
        );
        let read: Vec<Bytes> = client
            .read_all(topic, p as i32, 0)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert!(read == *values, "records of {topic}-{p} differ");
    }
}

/// `count` records of 1000 bytes, unique per (partition, round).
fn records(partition: usize, round: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut value = format!("p{partition}-r{round}-i{i}-").into_bytes();
            value.resize(1000, b'x');
            value
        })
        .collect()
}

fn batch_of(values: &[Vec<u8>]) -> Bytes {
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    batch(&refs, 1_700_000_000_000)
}

/// One produce round (acks=1) of one batch per partition; acknowledged records are added to
/// `acked`. Returns the error codes seen.
fn produce_round(
    client: &mut Client,
    topic: &str,
    round: usize,
    per_batch: usize,
    acked: &mut [Vec<Bytes>],
) -> Vec<i16> {
    produce_round_acks(client, topic, 1, round, per_batch, acked)
}

fn produce_round_acks(
    client: &mut Client,
    topic: &str,
    acks: i16,
    round: usize,
    per_batch: usize,
    acked: &mut [Vec<Bytes>],
) -> Vec<i16> {
    let sent: Vec<Vec<Vec<u8>>> = (0..acked.len())
        .map(|p| records(p, round, per_batch))
        .collect();
    let parts: Vec<(i32, Bytes)> = sent
        .iter()
        .enumerate()
        .map(|(p, values)| (p as i32, batch_of(values)))
        .collect();
    let mut errors = Vec::new();
    for (p, code, _) in client.produce(topic, acks, &parts) {
        if code == 0 {
            acked[p as usize].extend(sent[p as usize].iter().map(|v| Bytes::from(v.clone())));
        } else {
            errors.push(code);
        }
    }
    errors
}

/// The scenario: a 30-partition topic fills a small disk by producing. Produce is then
/// refused at once with KAFKA_STORAGE_ERROR; every acknowledged record stays readable (fetch and
/// ListOffsets); the broker restarts on the completely full disk and serves them; DeleteTopics
/// works on the full disk; produce resumes once space is freed.
#[test]
fn a_full_disk_refuses_produce_keeps_acknowledged_records_and_recovers() {
    let Some(fs) = LoopFs::mount_or_skip("full disk", 300) else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("broker.log");
    let data = fs.mount.join("data");
    let port = free_port();
    // 40 MB: with root's reserved blocks (5%) beyond it, the broker refuses produce well before a
    // write could fail, even though it looks at the disk only every 250 ms. (The default, 5% of
    // this filesystem, is what the restart below runs with.)
    let threshold = ["--storage-min-free-bytes", "40000000"];
    let mut broker = Proc::start(&data, &log, port, &threshold, &[]);
    let mut client = broker.client();
    const PARTITIONS: usize = 30;
    assert_eq!(
        client.create_topic("full", PARTITIONS as i32).topics[0].error_code,
        0
    );
    // Leave 80 MiB; producing (at most 480 KB every 20 ms) takes it down to the threshold.
    fill(&fs.mount.join("filler-1"), 80 << 20);
    let mut acked = vec![Vec::new(); PARTITIONS];
    let mut refused = Vec::new();
    for round in 0..400 {
        refused = produce_round(&mut client, "full", round, 16, &mut acked);
        if !refused.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    eprintln!("{total} records acknowledged before produce was refused with {refused:?}");
    assert!(
        !refused.is_empty(),
        "the disk never filled ({total} records acknowledged)"
    );
    assert!(
        refused.iter().all(|&code| code == KAFKA_STORAGE_ERROR),
        "produce on a full disk answered {refused:?}, expected KAFKA_STORAGE_ERROR (56)\n{}",
        broker.log()
    );
    assert!(total > 0);
    // Still refused, at once, while full.
    let again = produce_round(&mut client, "full", 1000, 1, &mut acked);
    assert_eq!(again, vec![KAFKA_STORAGE_ERROR; PARTITIONS]);
    assert_readable(&mut client, "full", &acked);
    assert!(broker.log().contains("disk space low"), "{}", broker.log());

    // Fill the disk to the last block, restart on it: the control plane and every log open.
    // (After the stop, which gives back the segments' preallocated space.)
    assert!(broker.stop().success(), "{}", broker.log());
    fill(&fs.mount.join("filler-2"), 0);
    let mut broker = Proc::start(&data, &log, port, &[], &[]);
    let mut client = broker.client();
    assert_readable(&mut client, "full", &acked);
    let again = produce_round(&mut client, "full", 1001, 1, &mut acked);
    assert_eq!(again, vec![KAFKA_STORAGE_ERROR; PARTITIONS]);

    // Metadata changes still commit on the full disk (the control plane's reserve).
    assert_eq!(delete_topic(&mut client, "full"), 0, "{}", broker.log());
    assert!(
        broker
            .log()
            .contains("released the control plane's reserve"),
        "{}",
        broker.log()
    );
    std::fs::remove_file(fs.mount.join("filler-2")).unwrap();
    assert_eq!(client.create_topic("after", 1).topics[0].error_code, 0);
    // Produce resumes by itself once the broker sees the space (within its next checks).
    let mut after = vec![Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while after[0].is_empty() {
        assert!(
            Instant::now() < deadline,
            "produce did not resume\n{}",
            broker.log()
        );
        let errors = produce_round(&mut client, "after", round, 4, &mut after);
        assert!(
            errors.iter().all(|&c| c == KAFKA_STORAGE_ERROR),
            "{errors:?}"
        );
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_readable(&mut client, "after", &after);
    assert!(broker.stop().success(), "{}", broker.log());
}

/// With no free-space threshold, a write that fails with ENOSPC answers its waiting produce at
/// once with KAFKA_STORAGE_ERROR (not a timeout, not NOT_LEADER_OR_FOLLOWER), hides nothing
/// acknowledged, and the partition writes again once space is freed. The first failure meets an
/// acks=all wait, the next acks=1.
#[test]
fn enospc_fails_waiting_produce_with_an_error_and_the_log_continues() {
    let Some(fs) = LoopFs::mount_or_skip("enospc", 100) else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("broker.log");
    let data = fs.mount.join("data");
    let mut broker = Proc::start(
        &data,
        &log,
        free_port(),
        &std::env::var("OLD_ARGS")
            .map(|_| vec![])
            .unwrap_or(vec!["--storage-min-free-bytes", "0"]),
        &[],
    );
    let mut client = broker.client();
    assert_eq!(client.create_topic("nospace", 1).topics[0].error_code, 0);
    let mut acked = vec![Vec::new()];
    assert!(produce_round(&mut client, "nospace", 0, 4, &mut acked).is_empty());
    fill(&fs.mount.join("filler"), 0);
    // 256 KB batches: each soon needs more of the segment file than is preallocated.
    let mut refused = Vec::new();
    for round in 1..400 {
        refused = produce_round_acks(&mut client, "nospace", -1, round, 256, &mut acked);
        if !refused.is_empty() {
            break;
        }
    }
    assert_eq!(
        refused,
        vec![KAFKA_STORAGE_ERROR],
        "produce after ENOSPC\n{}",
        broker.log()
    );
    // Refused at once while the disk stays full; nothing acknowledged is hidden.
    let again = produce_round(&mut client, "nospace", 500, 256, &mut acked);
    assert_eq!(again, vec![KAFKA_STORAGE_ERROR]);
    assert_readable(&mut client, "nospace", &acked);

    std::fs::remove_file(fs.mount.join("filler")).unwrap();
    // The log retries what it holds and takes appends again (the records refused while it could
    // not write may be written too: KAFKA_STORAGE_ERROR, like a timeout, does not say they were
    // not). What this test acknowledges reads back after what was acknowledged before.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = vec![Vec::new()];
    let mut round = 600;
    loop {
        assert!(
            Instant::now() < deadline,
            "the log did not write again\n{}",
            broker.log()
        );
        let errors = produce_round(&mut client, "nospace", round, 4, &mut resumed);
        assert!(
            errors.iter().all(|&c| c == KAFKA_STORAGE_ERROR),
            "{errors:?}"
        );
        if errors.is_empty() {
            break;
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let read: Vec<Bytes> = client
        .read_all("nospace", 0, 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(read.starts_with(&acked[0]), "acknowledged records lost");
    assert!(
        read.ends_with(&resumed[0][..4]),
        "records acknowledged after the refusal"
    );
    assert!(broker.stop().success(), "{}", broker.log());
}

/// stderr on a full device (/dev/full): every log line fails to be written. The broker serves
/// and stops cleanly anyway.
#[test]
fn a_full_stderr_never_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut broker = Proc::start_with_stderr(
        &dir.path().join("data"),
        &dir.path().join("unused.log"),
        free_port(),
        &[],
        &[("RUST_LOG", "debug")],
        full.into(),
    );
    let mut client = broker.client();
    assert_eq!(client.create_topic("quiet", 2).topics[0].error_code, 0);
    for p in 0..2 {
        let results = client.produce("quiet", 1, &[(p, batch(&[b"one", b"two"], 0))]);
        assert_eq!(results, vec![(p, 0, 0)]);
        let read = client.read_all("quiet", p, 0);
        assert_eq!(read.len(), 2);
    }
    let status = broker.stop();
    assert!(status.success(), "exit status {status}");
}

/// A shard executor that panics takes the whole broker down, promptly and with a failure status
/// (not a broker that stays up accepting nothing).
#[test]
fn a_panicking_shard_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let mut broker = Proc::start(
        &dir.path().join("data"),
        &log,
        free_port(),
        &[],
        &[("CHRONIK_FAULT_PANIC_SHARD_AFTER_MS", "1000")],
    );
    let status = broker.wait_exit(Duration::from_secs(60));
    let Some(status) = status else {
        panic!(
            "the broker is still running 60 s after a shard panicked\n{}",
            broker.log()
        );
    };
    assert!(
        !status.success(),
        "a shard died but the broker exited 0\n{}",
        broker.log()
    );
    assert!(broker.log().contains("fault injection"), "{}", broker.log());
}
