//! The harness the crash tests share: a child process (the test binary re-executed with an
//! environment variable naming the log directory) writes to a log and reports on stdout, one line at
//! a time, what it made durable; the parent kills it at a random moment and collects the reports,
//! then reopens the log and checks it against them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronik_shards::log::PartitionLog;

/// xorshift64: enough randomness for kill moments, reproducible from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from the clock (odd, so never the xorshift fixed point 0); the tests print it.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// The number of kills: `CHRONIK_CRASH_KILLS` (default 200) divided by `divisor`, at least 1.
pub fn kills(divisor: usize) -> usize {
    std::env::var("CHRONIK_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(200 / divisor, |k: usize| (k / divisor).max(1))
}

pub fn run_on_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Prints one report line and flushes it, so that the parent has it before any kill.
pub fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

pub fn base_of(batch: &[u8]) -> i64 {
    i64::from_be_bytes(batch[0..8].try_into().unwrap())
}

pub fn epoch_of(batch: &[u8]) -> i32 {
    i32::from_be_bytes(batch[12..16].try_into().unwrap())
}

pub fn next_offset_after(batch: &[u8]) -> i64 {
    base_of(batch) + i32::from_be_bytes(batch[23..27].try_into().unwrap()) as i64 + 1
}

/// Whether `got` is `want` but for the leader epoch field (the children change epochs).
pub fn same_but_epoch(got: &[u8], want: &[u8]) -> bool {
    got.len() == want.len() && got[..12] == want[..12] && got[16..] == want[16..]
}

/// Records the batch at `base` of `epoch` in the epoch history seen so far while scanning a log in
/// offset order; epochs must only go up.
pub fn note_epoch(epoch_starts: &mut Vec<(i32, i64)>, epoch: i32, base: i64) {
    match epoch_starts.last() {
        Some(&(e, _)) if e == epoch => {}
        Some(&(e, _)) => {
            assert!(epoch > e, "epoch {epoch} after {e} at {base}");
            epoch_starts.push((epoch, base));
        }
        None => epoch_starts.push((epoch, base)),
    }
}

/// Checks the log's leader epoch answers against the history found in its batches (a whole scan of
/// the log, which ends at `end`).
pub fn check_epoch_history(log: &PartitionLog, epoch_starts: &[(i32, i64)], end: i64) {
    let latest = epoch_starts.last().map_or(0, |&(e, _)| e);
    for asked in 0..=latest + 1 {
        let want = match epoch_starts.iter().position(|&(e, _)| e > asked) {
            _ if epoch_starts.is_empty() => (-1, -1),
            _ if asked == latest => (asked, end),
            None => (-1, -1),
            Some(0) => (asked, epoch_starts[0].1),
            Some(i) => (epoch_starts[i - 1].0, epoch_starts[i].1),
        };
        assert_eq!(log.end_offset_for_epoch(asked), want, "epoch {asked}");
    }
}

/// Runs one child (the test named `entry`, told the directory through `env`) and SIGKILLs it at a
/// random moment: mostly while reports are flowing (up to `max_delay_us` after the first), sometimes
/// during startup and recovery. Returns its reports in order: each line is a word and numbers, turned
/// into a report by `parse` (lines it refuses, like the test harness's own, are skipped).
pub fn run_child_and_kill<E: Send + 'static>(
    dir: &Path,
    rng: &mut Rng,
    entry: &str,
    env: &str,
    max_delay_us: u64,
    parse: fn(&str, &[i64]) -> Option<E>,
) -> Vec<E> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.split(' ');
            let kind = words.next().unwrap_or_default();
            let Ok(args) = words
                .map(|v| v.parse::<i64>())
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let Some(event) = parse(kind, &args) else {
                continue;
            };
            events.push(event);
            let _ = tx.send(());
        }
        events
    });
    if rng.below(10) == 0 {
        std::thread::sleep(Duration::from_millis(rng.below(30)));
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        let _ = rx.recv_timeout(deadline - Instant::now());
        std::thread::sleep(Duration::from_micros(rng.below(max_delay_us)));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child.wait().unwrap();
    // Anything but our SIGKILL (a panic, an error exit) is a failure of the child.
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child exited on its own: {status:?}"
    );
    reader.join().unwrap()
}
