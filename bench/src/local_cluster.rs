//! `chronik start` child processes on loopback, started and stopped the same
//! way for the bench's embedded cluster and for `chronik dev cluster`.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One broker to start.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSpec {
    pub id: i32,
    /// Kafka listener, HOST:PORT.
    pub listen: String,
    /// Control-plane address (cluster mode); None for a lone broker.
    pub rpc: Option<String>,
    pub data_dir: PathBuf,
    /// stdout and stderr of the broker, appended.
    pub log: PathBuf,
}

/// `--peers` for these brokers: every rpc address as ID{separator}HOST:PORT.
pub fn peers(specs: &[BrokerSpec], separator: char) -> String {
    specs
        .iter()
        .filter_map(|s| {
            s.rpc
                .as_ref()
                .map(|rpc| format!("{}{separator}{rpc}", s.id))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `chronik start` arguments of one broker (`--rpc`/`--peers` when both are given).
pub fn start_args(spec: &BrokerSpec, peers: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "start".to_string(),
        "--node-id".to_string(),
        spec.id.to_string(),
        "--listen".to_string(),
        spec.listen.clone(),
        "--data-dir".to_string(),
        spec.data_dir.display().to_string(),
    ];
    if let (Some(rpc), Some(peers)) = (&spec.rpc, peers) {
        args.extend(["--rpc".to_string(), rpc.clone()]);
        args.extend(["--peers".to_string(), peers.to_string()]);
        // Several brokers on this machine share its CPUs.
        args.push("--overprovisioned".to_string());
    }
    args
}

/// Starts one broker of `binary` with its data directory created and its
/// output appended to its log. It runs in its own process group, so a
/// terminal's Ctrl-C reaches only the parent, which then stops it in order.
pub fn spawn(
    binary: &Path,
    spec: &BrokerSpec,
    peers: Option<&str>,
    extra_args: &[String],
) -> io::Result<Child> {
    std::fs::create_dir_all(&spec.data_dir)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let mut command = Command::new(binary);
    command
        .args(start_args(spec, peers))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.spawn()
}

/// How a broker ended when stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Exited(ExitStatus),
    /// It ignored SIGTERM for the whole grace period: SIGKILLed.
    Killed,
}

/// SIGTERM to every broker at once, then up to `grace` for each to exit
/// before SIGKILL. One outcome per broker, in order.
pub fn stop_all(children: &mut [(i32, Child)], grace: Duration) -> Vec<(i32, Stopped)> {
    for (_, child) in children.iter() {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    let mut outcomes = Vec::with_capacity(children.len());
    for (id, child) in children.iter_mut() {
        let outcome = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Stopped::Exited(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Stopped::Killed;
                }
            }
        };
        outcomes.push((*id, outcome));
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: i32, rpc: Option<&str>) -> BrokerSpec {
        BrokerSpec {
            id,
            listen: format!("127.0.0.1:{}", 9091 + id),
            rpc: rpc.map(String::from),
            data_dir: PathBuf::from(format!("/d/n{id}")),
            log: PathBuf::from(format!("/d/n{id}.log")),
        }
    }

    #[test]
    fn arguments_and_peers() {
        let specs = [
            spec(1, Some("127.0.0.1:9101")),
            spec(2, Some("127.0.0.1:9102")),
        ];
        let peers = peers(&specs, '@');
        assert_eq!(peers, "1@127.0.0.1:9101,2@127.0.0.1:9102");
        let args = start_args(&specs[1], Some(&peers));
        assert_eq!(
            args,
            [
                "start",
                "--node-id",
                "2",
                "--listen",
                "127.0.0.1:9093",
                "--data-dir",
                "/d/n2",
                "--rpc",
                "127.0.0.1:9102",
                "--peers",
                "1@127.0.0.1:9101,2@127.0.0.1:9102",
                "--overprovisioned"
            ]
        );
        let lone = start_args(&spec(1, None), None);
        assert!(!lone.contains(&"--peers".to_string()));
        assert!(!lone.contains(&"--overprovisioned".to_string()));
    }

    #[test]
    fn stop_all_ends_every_child() {
        let mut children: Vec<(i32, Child)> = (1..=2)
            .map(|id| (id, Command::new("sleep").arg("30").spawn().unwrap()))
            .collect();
        let outcomes = stop_all(&mut children, Duration::from_secs(5));
        assert_eq!(outcomes.len(), 2);
        for (_, outcome) in outcomes {
            // sleep dies of SIGTERM: exited, not killed after the grace period.
            assert!(matches!(outcome, Stopped::Exited(s) if !s.success()));
        }
    }
}
