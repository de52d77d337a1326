//! `chronik dev cluster`: N brokers on loopback as child processes of this
//! executable, for trying chronik out. Prints the bootstrap address and where
//! the logs go; SIGINT (Ctrl-C) or SIGTERM stops them all (SIGTERM each, then
//! SIGKILL after a grace period).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use super::kafka_client::KafkaClient;

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
}

/// One broker of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub id: i32,
    pub listen: String,
    pub rpc: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Ports, directories and arguments of every broker.
pub fn plan(nodes: u16, base_dir: &Path, base_port: u16) -> Result<Vec<NodePlan>> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let top = u32::from(base_port) + 100 + u32::from(nodes) - 1;
    if base_port == 0 || top > u32::from(u16::MAX) {
        bail!("--base-port {base_port} leaves no room for {nodes} Kafka and rpc ports");
    }
    Ok((0..nodes)
        .map(|i| NodePlan {
            id: i32::from(i) + 1,
            listen: format!("127.0.0.1:{}", base_port + i),
            rpc: format!("127.0.0.1:{}", base_port + 100 + i),
            data_dir: base_dir.join(format!("node{}", i + 1)),
            log: base_dir.join(format!("node{}.log", i + 1)),
        })
        .collect())
}

/// `--peers` for the plan: every node's rpc address as ID@HOST:PORT.
pub fn peers(plan: &[NodePlan]) -> String {
    plan.iter()
        .map(|n| format!("{}@{}", n.id, n.rpc))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `chronik start` arguments of one node.
pub fn start_args(node: &NodePlan, peers: &str, cores: usize) -> Vec<String> {
    vec![
        "start".into(),
        "--node-id".into(),
        node.id.to_string(),
        "--listen".into(),
        node.listen.clone(),
        "--rpc".into(),
        node.rpc.clone(),
        "--peers".into(),
        peers.into(),
        "--data-dir".into(),
        node.data_dir.display().to_string(),
        "--cores".into(),
        cores.to_string(),
    ]
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
    let peers = peers(&nodes);
    let mut children = Children(Vec::new());
    for node in &nodes {
        std::fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("creating {}", node.data_dir.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let mut command = Command::new(&binary);
        command
            .args(start_args(node, &peers, args.cores))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // Own process group: Ctrl-C in the terminal reaches only this
        // process, which then stops the brokers in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
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
            node.rpc,
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
fn wait_ready(nodes: &[NodePlan], children: &mut Children, stop: &AtomicBool) -> Result<()> {
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
struct Children(Vec<(NodePlan, Child)>);

impl Children {
    /// SIGTERM to each, wait up to the grace period, then SIGKILL.
    fn stop(&mut self) {
        for (_, child) in &self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a child we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (node, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            eprintln!("broker {} exited with {status}", node.id);
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("broker {} did not stop in time; killing it", node.id);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
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
        assert_eq!(nodes[2].rpc, "127.0.0.1:19194");
        assert_eq!(nodes[0].data_dir, PathBuf::from("/tmp/dev/node1"));
        assert_eq!(nodes[0].log, PathBuf::from("/tmp/dev/node1.log"));
        assert_eq!(
            peers(&nodes),
            "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
        );
        let args = start_args(&nodes[1], &peers(&nodes), 1);
        assert_eq!(&args[..3], &["start", "--node-id", "2"]);
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--rpc" && w[1] == "127.0.0.1:19193"));
        assert!(plan(0, Path::new("/tmp"), 19092).is_err());
        assert!(plan(3, Path::new("/tmp"), 65500).is_err());
    }
}
