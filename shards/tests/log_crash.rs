//! Crash test: a child process (this test binary re-executed with `CHRONIK_CRASH_CHILD` set) appends
//! batches from several tasks sharing group commit and prints each batch once `wait_durable` says it is
//! durable; the parent SIGKILLs it at random moments, reopens the log (running recovery) and checks that
//! every batch reported durable is intact and readable at its offsets, and that everything the log
//! returns is a whole, correct batch. `CHRONIK_CRASH_KILLS` sets the number of kills (default 200).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronik_shards::log::batch::build_test_batch;
use chronik_shards::log::{LogConfig, PartitionLog};

const CHILD_ENV: &str = "CHRONIK_CRASH_CHILD";
const APPENDERS: usize = 4;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        tail_cache_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// The batch the child writes at `base`: its shape and bytes depend only on the offset, so the parent
/// can check any batch it reads back.
fn expected_batch(base: i64) -> Vec<u8> {
    let records = 1 + (base.unsigned_abs() % 4) as i32;
    let len = 20 + (base.unsigned_abs().wrapping_mul(7919) % 3000) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|i| (base as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    let mut b = build_test_batch(0, records, 1_000_000 + base, &payload);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b
}

fn next_offset_after(batch: &[u8]) -> i64 {
    let base = i64::from_be_bytes(batch[0..8].try_into().unwrap());
    base + i32::from_be_bytes(batch[23..27].try_into().unwrap()) as i64 + 1
}

fn run_on_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Child mode: append and report durable batches until killed.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(PathBuf::from(dir), config())
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for _ in 0..APPENDERS {
                let log = log.clone();
                tasks.push(glommio::spawn_local(async move {
                    loop {
                        let base = log.log_end_offset();
                        let batch = expected_batch(base);
                        // epoch 0 is patched in; the expected bytes carry it already
                        let info = log.append(&batch, 0).unwrap();
                        assert_eq!(info.base_offset, base);
                        log.wait_durable(info.last_offset + 1).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "DURABLE {} {}", info.base_offset, info.last_offset).unwrap();
                        out.flush().unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
        })
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs one child and kills it; returns the (base, last) pairs it reported durable.
fn run_child_and_kill(dir: &Path, rng: &mut Rng) -> Vec<(i64, i64)> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut durable = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("DURABLE ") {
                let mut it = rest.split(' ').map(|v| v.parse::<i64>().unwrap());
                durable.push((it.next().unwrap(), it.next().unwrap()));
                let _ = tx.send(());
            }
        }
        durable
    });
    // Kill at a random moment: mostly while batches are flowing, sometimes during startup/recovery.
    if rng.below(10) == 0 {
        std::thread::sleep(Duration::from_millis(rng.below(30)));
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        let _ = rx.recv_timeout(deadline - Instant::now());
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "child exited on its own: {status:?}");
    reader.join().unwrap()
}

/// Reopens the log and checks it: reported batches intact, everything returned well-formed.
fn verify(dir: &Path, reported: Vec<(i64, i64)>, check_from: i64) -> i64 {
    let dir = dir.to_path_buf();
    run_on_executor(move || {
        Box::pin(async move {
            let log = PartitionLog::open(dir, config()).await.unwrap();
            let end = log.log_end_offset();
            for &(base, last) in &reported {
                assert!(
                    last < end,
                    "durable batch {base}..={last} lost: log end is {end}"
                );
                let got = log.read(base, 1, i64::MAX).await.unwrap();
                assert_eq!(
                    got[0].as_ref(),
                    expected_batch(base).as_slice(),
                    "batch {base} damaged"
                );
                assert_eq!(next_offset_after(&got[0]), last + 1);
            }
            // Everything from check_from to the end: contiguous, whole, exactly what was written.
            let mut cur = check_from.max(log.log_start_offset());
            while cur < end {
                let got = log.read(cur, 256 << 10, i64::MAX).await.unwrap();
                assert!(!got.is_empty());
                for b in got {
                    let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
                    assert!(base <= cur && cur < next_offset_after(&b) || base == cur);
                    assert_eq!(
                        b.as_ref(),
                        expected_batch(base).as_slice(),
                        "batch at {base} is not what was written"
                    );
                    cur = next_offset_after(&b);
                }
            }
            assert_eq!(cur, end);
            log.close().await.unwrap();
            end
        })
    })
}

#[test]
fn sigkill_never_loses_durable_batches() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let kills: usize = std::env::var("CHRONIK_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("crash-0");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let mut checked_to = 0i64;
    let mut durable_end = 0i64;
    let mut total_reported = 0usize;
    for _ in 0..kills {
        let reported = run_child_and_kill(&dir, &mut rng);
        total_reported += reported.len();
        durable_end = reported
            .iter()
            .map(|&(_, last)| last + 1)
            .fold(durable_end, i64::max);
        let end = verify(&dir, reported, checked_to.saturating_sub(64));
        assert!(
            end >= durable_end,
            "log end {end} below the durable end {durable_end} reported before"
        );
        checked_to = end;
    }
    // Final pass over the whole log.
    let end = verify(&dir, Vec::new(), 0);
    assert!(
        total_reported > 0,
        "the child never reported a durable batch"
    );
    eprintln!("crash test: {total_reported} durable batches reported, log end {end}");
}
