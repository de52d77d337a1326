//! The broker under attack: started here (a `chronik start` child in cluster mode, one node, in a
//! temporary directory) or found by address, and watched: alive, its peak RSS from
//! /proc/PID/status (VmHWM, and VmRSS sampled), and its log free of panics and failed allocations.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chronik_bench::client::Connection;
use chronik_bench::local_cluster::{self, BrokerSpec};

/// Log lines that mean the process broke: a panic (even one caught), or an allocation failure
/// (an abort).
pub const FATAL_LOG_PATTERNS: &[&str] = &["panicked", "memory allocation"];

/// The brokers this tool started: broker 1 is the one attacked; the others make it a cluster, so
/// that its control-plane port is open (a lone node runs no transport). Stopped (SIGTERM, then
/// SIGKILL) on drop.
pub struct OwnBroker {
    children: Vec<(i32, Child)>,
    /// Kafka listener of broker 1.
    pub kafka: String,
    /// Control-plane port of broker 1.
    pub rpc: String,
    /// Log of each broker, broker 1 first.
    pub logs: Vec<PathBuf>,
    dir: PathBuf,
    /// Keep the data directories and logs after the run (set when the run failed).
    pub keep: bool,
}

impl OwnBroker {
    /// Starts `nodes` brokers of `binary` as one cluster in a temporary directory and waits until
    /// broker 1 lists them all in Metadata.
    pub fn start(binary: &Path, nodes: usize, extra: &[String]) -> Result<OwnBroker> {
        let dir = std::env::temp_dir().join(format!(
            "chronik-fuzz-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut specs = Vec::new();
        for id in 1..=nodes.max(1) as i32 {
            specs.push(BrokerSpec {
                id,
                listen: format!("127.0.0.1:{}", chronik_bench::embedded::free_port()?),
                rpc: Some(format!(
                    "127.0.0.1:{}",
                    chronik_bench::embedded::free_port()?
                )),
                data_dir: dir.join(format!("n{id}")),
                log: dir.join(format!("n{id}.log")),
            });
        }
        let peers = local_cluster::peers(&specs, '@');
        let mut broker = OwnBroker {
            children: Vec::new(),
            kafka: specs[0].listen.clone(),
            rpc: specs[0].rpc.clone().unwrap_or_default(),
            logs: specs.iter().map(|s| s.log.clone()).collect(),
            dir,
            keep: false,
        };
        for spec in &specs {
            let child = local_cluster::spawn(binary, spec, Some(&peers), extra)
                .with_context(|| format!("starting {}", binary.display()))?;
            broker.children.push((spec.id, child));
        }
        let listeners: Vec<String> = specs.iter().map(|s| s.listen.clone()).collect();
        broker.wait_ready(&listeners)?;
        Ok(broker)
    }

    /// Waits until broker 1 lists every broker and a controller, and every listener answers
    /// (a broker is registered a moment before it serves Kafka).
    fn wait_ready(&mut self, listeners: &[String]) -> Result<()> {
        let nodes = listeners.len();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                bail!(
                    "a broker exited with {status} before answering:\n{}",
                    self.log_tail(30)
                );
            }
            let all_serve = || {
                listeners
                    .iter()
                    .all(|l| Connection::connect(l, Duration::from_secs(2)).is_ok())
            };
            match Connection::connect(&self.kafka, Duration::from_secs(2))
                .and_then(|mut c| c.metadata(Some(&[])))
            {
                Ok(md) if md.brokers.len() >= nodes && md.controller_id.0 >= 0 && all_serve() => {
                    return Ok(())
                }
                Ok(md) => last = format!("Metadata lists {} of {nodes} brokers", md.brokers.len()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "the brokers did not form a cluster within 90 s: {last}\n{}",
            self.log_tail(30)
        )
    }

    /// Broker 1's process id.
    pub fn pid(&self) -> Option<u32> {
        self.children.first().map(|(_, c)| c.id())
    }

    /// How a broker ended, if one has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find_map(|(_, c)| c.try_wait().ok().flatten())
    }

    /// The last lines of broker 1's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self
            .logs
            .first()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        local_cluster::stop_all(&mut self.children, Duration::from_secs(10));
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Lines of the log at `path` that match [`FATAL_LOG_PATTERNS`] (at most `max`).
pub fn fatal_lines(path: &Path, max: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| FATAL_LOG_PATTERNS.iter().any(|p| l.contains(p)))
        .take(max)
        .map(str::to_string)
        .collect()
}

/// Samples a process's memory from /proc every 100 ms until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = peak_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            stop,
            peak_kib,
            thread: Some(thread),
        }
    }

    /// The highest resident set seen so far, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// max(VmHWM, VmRSS) of `pid` in KiB: the kernel's own high-water mark catches peaks between
/// samples.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    match (field("VmHWM:"), field("VmRSS:")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Whether process `pid` (not our child) still exists.
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        let kib = peak_rss_kib(std::process::id()).unwrap();
        assert!(kib > 0);
        assert!(process_alive(std::process::id()));
    }
}
