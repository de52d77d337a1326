//! The embedded cluster: `chronik start` child processes on loopback in a
//! temporary directory, for a benchmark run without `--bootstrap`. Dropping
//! it stops the brokers (SIGTERM, then SIGKILL after a grace period) and
//! removes the directory, also when the run fails or is interrupted.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{ClientError, ClusterMap, Connection};
use crate::local_cluster::{self, BrokerSpec, Stopped};

/// How long a broker gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the cluster to answer Metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The `chronik` executable.
    pub binary: PathBuf,
    pub brokers: usize,
    /// Parent directory of the temporary data directory.
    pub parent: PathBuf,
    /// Extra arguments for every `chronik start`.
    pub extra_args: Vec<String>,
}

struct Broker {
    id: i32,
    child: Child,
    log: PathBuf,
}

/// A running embedded cluster.
pub struct EmbeddedCluster {
    dir: tempfile::TempDir,
    brokers: Vec<Broker>,
    /// `host:port` of every broker, for `--bootstrap`-style use.
    pub bootstrap: String,
    /// Why fewer brokers run than asked, if so.
    pub note: Option<String>,
}

impl EmbeddedCluster {
    /// Starts the brokers and waits until they answer Metadata as one
    /// cluster. Asking for more than one broker from a `chronik` without
    /// cluster mode (`start --help` lacks `--peers`), or one whose brokers do
    /// not form a cluster, falls back to a single broker with a note.
    pub fn start(options: &EmbeddedOptions) -> Result<EmbeddedCluster, ClientError> {
        if options.brokers > 1 {
            let Some(separator) = cluster_mode_separator(&options.binary) else {
                let note = format!(
                    "{} has no cluster mode yet (`start --help` lacks --peers): running 1 broker instead of {}",
                    options.binary.display(),
                    options.brokers
                );
                return Self::start_n(options, 1, separator_none(), Some(note));
            };
            match Self::start_n(options, options.brokers, separator, None) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // The last line says why (e.g. the broker's own error).
                    let text = e.to_string();
                    let why = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or_default();
                    let note = format!(
                        "{} brokers did not form a cluster ({}): running 1 broker instead",
                        options.brokers,
                        why.trim()
                    );
                    return Self::start_n(options, 1, separator_none(), Some(note));
                }
            }
        }
        Self::start_n(options, 1, separator_none(), None)
    }

    fn start_n(
        options: &EmbeddedOptions,
        n: usize,
        separator: char,
        note: Option<String>,
    ) -> Result<EmbeddedCluster, ClientError> {
        let dir = tempfile::Builder::new()
            .prefix("chronik-bench-")
            .tempdir_in(&options.parent)?;
        let kafka: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let rpc: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let peers = (0..n)
            .map(|i| format!("{}{separator}127.0.0.1:{}", i + 1, rpc[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EmbeddedCluster {
            bootstrap: kafka
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            dir,
            brokers: Vec::new(),
            note,
        };
        for i in 0..n {
            let id = (i + 1) as i32;
            let spec = BrokerSpec {
                id,
                listen: format!("127.0.0.1:{}", kafka[i]),
                rpc: (n > 1).then(|| format!("127.0.0.1:{}", rpc[i])),
                data_dir: cluster.dir.path().join(format!("n{id}")),
                log: cluster.dir.path().join(format!("n{id}.log")),
            };
            // Own process group: a terminal's Ctrl-C reaches only the bench,
            // which then stops the brokers in order.
            let child =
                local_cluster::spawn(&options.binary, &spec, Some(&peers), &options.extra_args)?;
            cluster.brokers.push(Broker {
                id,
                child,
                log: spec.log,
            });
        }
        cluster.wait_ready(n)?;
        Ok(cluster)
    }

    /// The temporary directory holding every broker's data.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many brokers run.
    pub fn broker_count(&self) -> usize {
        self.brokers.len()
    }

    fn wait_ready(&mut self, n: usize) -> Result<(), ClientError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let first = self
            .bootstrap
            .split(',')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut last_error = String::from("no answer yet");
        while Instant::now() < deadline {
            if crate::interrupt::interrupted() {
                return Err(ClientError::Other("interrupted".into()));
            }
            for b in &mut self.brokers {
                if let Ok(Some(status)) = b.child.try_wait() {
                    return Err(ClientError::Other(format!(
                        "broker {} exited with {status} before answering; its log:\n{}",
                        b.id,
                        tail(&b.log, 30)
                    )));
                }
            }
            match Connection::connect(&first, Duration::from_secs(2))
                .and_then(|mut c| c.metadata(Some(&[])))
            {
                Ok(md) => {
                    let map = ClusterMap::from_metadata(&md, "");
                    if map.brokers.len() >= n {
                        return Ok(());
                    }
                    last_error = format!("Metadata lists {} of {n} brokers", map.brokers.len());
                }
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ClientError::Other(format!(
            "the embedded cluster was not ready within {READY_TIMEOUT:?}: {last_error}"
        )))
    }

    /// The last lines of every broker's log, for error reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.brokers
            .iter()
            .map(|b| {
                format!(
                    "--- broker {} ({})\n{}",
                    b.id,
                    b.log.display(),
                    tail(&b.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn stop(&mut self) {
        let mut children: Vec<(i32, Child)> =
            self.brokers.drain(..).map(|b| (b.id, b.child)).collect();
        for (id, outcome) in local_cluster::stop_all(&mut children, GRACE) {
            if outcome == Stopped::Killed {
                tracing::warn!(broker = id, "broker ignored SIGTERM; killing it");
            }
        }
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.stop();
        // TempDir removes the directory after this.
    }
}

/// Whether `chronik start` of this binary knows cluster flags, and if so
/// how `--peers` separates a node id from its address (`ID=HOST:PORT` or
/// `ID@HOST:PORT`, as its help says).
pub fn cluster_mode_separator(binary: &Path) -> Option<char> {
    let help = Command::new(binary)
        .args(["start", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    peers_separator(&String::from_utf8_lossy(&help.stdout))
}

fn peers_separator(help: &str) -> Option<char> {
    if !help.contains("--peers") {
        return None;
    }
    Some(if help.contains("ID@HOST") { '@' } else { '=' })
}

/// The separator when no peers are passed.
fn separator_none() -> char {
    '='
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, std::io::Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let text = strip_ansi(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Drops terminal colour sequences (`ESC [ ... letter`) from log text.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_from_broker_logs() {
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m boom"), "ERROR boom");
    }

    #[test]
    fn peers_syntax_comes_from_the_help_text() {
        assert_eq!(peers_separator("--listen <LISTEN>"), None);
        assert_eq!(
            peers_separator("--peers <PEERS>  peers: ID=HOST:PORT,..."),
            Some('=')
        );
        assert_eq!(
            peers_separator("--peers <PEERS>  1@HOST:PORT or ID@HOST:PORT"),
            Some('@')
        );
    }

    #[test]
    fn a_binary_without_cluster_mode_falls_back_to_one_broker() {
        // `true` prints no help at all: no cluster mode.
        assert_eq!(cluster_mode_separator(Path::new("true")), None);
    }
}
