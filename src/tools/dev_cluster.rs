//! `chronik dev cluster`: N brokers on loopback as child processes of this
//! executable, for trying chronik out. Prints the bootstrap address and where
//! the logs go; SIGINT (Ctrl-C) or SIGTERM stops them all (SIGTERM each, then
//! SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use super::kafka_client::KafkaClient;
use chronik_bench::local_cluster::{self, BrokerSpec, Stopped};

/// How long a broker gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long the brokers get to form the cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `chronik dev cluster` flags.
#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where each broker's data (`nodeN/`) and log (`nodeN.log`) go.
    #[arg(long, default_value = "./chronik-dev")]
    pub base_dir: PathBuf,
    /// Kafka port of broker 1; broker N listens on BASE+N-1 and its control
    /// plane (--rpc) on BASE+100+N-1.
    #[arg(long, default_value_t = 19092)]
    pub base_port: u16,
    /// Shard cores per broker (they share this machine).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Each broker's --replica-lag-time-max-ms [default: the broker's, 30000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<u64>,
}

/// Ports and directories of every broker: broker N listens on BASE+N-1, its
/// control plane on BASE+100+N-1.
pub fn plan(nodes: u16, base_dir: &Path, base_port: u16) -> Result<Vec<BrokerSpec>> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let top = u32::from(base_port) + 100 + u32::from(nodes) - 1;
    if base_port == 0 || top > u32::from(u16::MAX) {
        bail!("--base-port {base_port} leaves no room for {nodes} Kafka and rpc ports");
    }
    Ok((0..nodes)
        .map(|i| BrokerSpec {
            id: i32::from(i) + 1,
            listen: format!("127.0.0.1:{}", base_port + i),
            rpc: Some(format!("127.0.0.1:{}", base_port + 100 + i)),
            data_dir: base_dir.join(format!("node{}", i + 1)),
            log: base_dir.join(format!("node{}.log", i + 1)),
        })
        .collect())
}

/// Runs the command; returns the process exit code.
pub fn main(args: &DevClusterArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chronik dev cluster: {e:#}");
            1
        }
    }
}

fn run(args: &DevClusterArgs) -> Result<()> {
    let cpus = chronik_shards::runtime::available_cpus().len();
    if args.cores == 0 || args.cores > cpus {
        bail!("--cores {} (this machine has {cpus} CPUs)", args.cores);
    }
    let nodes = plan(args.nodes, &args.base_dir, args.base_port)?;
    std::fs::create_dir_all(&args.base_dir)
        .with_context(|| format!("creating {}", args.base_dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let binary = std::env::current_exe().context("finding this executable")?;
    let peers = local_cluster::peers(&nodes, '@');
    let mut extra = vec!["--cores".to_string(), args.cores.to_string()];
    if let Some(lag) = args.replica_lag_time_max_ms {
        extra.extend(["--replica-lag-time-max-ms".to_string(), lag.to_string()]);
    }
    let mut children = Children(Vec::new());
    for node in &nodes {
        let child = local_cluster::spawn(&binary, node, Some(&peers), &extra)
            .with_context(|| format!("starting broker {}", node.id))?;
        children.0.push((node.clone(), child));
    }

    let bootstrap = nodes
        .iter()
        .map(|n| n.listen.as_str())
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "starting {} brokers on 127.0.0.1 (data and logs in {})",
        nodes.len(),
        args.base_dir.display()
    );
    wait_ready(&nodes, &mut children, &stop)?;
    println!("chronik dev cluster is up: {} brokers", nodes.len());
    println!("  bootstrap: {bootstrap}");
    for node in &nodes {
        println!(
            "  broker {}: kafka {}  rpc {}  log {}",
            node.id,
            node.listen,
            node.rpc.as_deref().unwrap_or("-"),
            node.log.display()
        );
    }
    println!(
        "  status:    chronik cluster status --bootstrap {}",
        nodes[0].listen
    );
    println!("Ctrl-C stops the cluster.");

    while !stop.load(Ordering::Relaxed) {
        for (node, child) in children.0.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "broker {} exited ({status}); see {}; stopping the cluster",
                    node.id,
                    node.log.display()
                );
                stop.store(true, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping {} brokers", nodes.len());
    children.stop();
    Ok(())
}

/// Waits until the first broker's Metadata lists every broker.
fn wait_ready(nodes: &[BrokerSpec], children: &mut Children, stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            children.stop();
            bail!("interrupted while starting");
        }
        for (node, child) in children.0.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let node = node.clone();
                children.stop();
                bail!(
                    "broker {} exited ({status}) while starting; its log:\n{}",
                    node.id,
                    tail(&node.log, 20)
                );
            }
        }
        match broker_count(&nodes[0].listen) {
            Ok(n) if n >= nodes.len() => return Ok(()),
            Ok(n) => last = format!("Metadata lists {n} of {} brokers", nodes.len()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    children.stop();
    bail!("the cluster did not form within {READY_TIMEOUT:?}: {last}")
}

fn broker_count(address: &str) -> Result<usize> {
    let mut client = KafkaClient::connect(address, Duration::from_secs(2))?;
    let mut request = MetadataRequest::default();
    request.topics = Some(Vec::new());
    let response: MetadataResponse = client.call(ApiKey::Metadata, 12, &request)?;
    Ok(response.brokers.len())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The running brokers; stopped on drop too (an error path, a panic).
struct Children(Vec<(BrokerSpec, Child)>);

impl Children {
    /// SIGTERM to each, wait up to the grace period, then SIGKILL.
    fn stop(&mut self) {
        let mut children: Vec<(i32, Child)> = self
            .0
            .drain(..)
            .map(|(node, child)| (node.id, child))
            .collect();
        for (id, outcome) in local_cluster::stop_all(&mut children, STOP_GRACE) {
            match outcome {
                Stopped::Exited(status) if !status.success() => {
                    eprintln!("broker {id} exited with {status}")
                }
                Stopped::Exited(_) => {}
                Stopped::Killed => eprintln!("broker {id} did not stop in time; killed it"),
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_ports_and_directories() {
        let nodes = plan(3, Path::new("/tmp/dev"), 19092).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].id, 3);
        assert_eq!(nodes[2].listen, "127.0.0.1:19094");
        assert_eq!(nodes[2].rpc.as_deref(), Some("127.0.0.1:19194"));
        assert_eq!(nodes[0].data_dir, PathBuf::from("/tmp/dev/node1"));
        assert_eq!(nodes[0].log, PathBuf::from("/tmp/dev/node1.log"));
        assert_eq!(
            local_cluster::peers(&nodes, '@'),
            "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
        );
        assert!(plan(0, Path::new("/tmp"), 19092).is_err());
        assert!(plan(3, Path::new("/tmp"), 65500).is_err());
    }
}
