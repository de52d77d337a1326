//! Cluster mode for tests: `n` real `chronik start` processes on loopback forming one cluster
//! (each with a Kafka port, an rpc port and `--peers` listing all), started, killed and restarted
//! one by one; and the raw-protocol helpers every cluster test needs (topics with a replication
//! factor and configs, waiting for leaders).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Client;

/// One broker of a test cluster; SIGKILLed on drop.
pub struct Node {
    pub addr: SocketAddr,
    pub child: Child,
    /// How it was started (arguments, environment, log file), to restart it the same way.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Node {
    pub fn spawn(args: &[String], env: &[(String, String)], log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL (a crash) and wait for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again the way it was started (same ports, data, log).
    pub fn respawn(&mut self) {
        self.child = Node::spawn(&self.args, &self.env, &self.log);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` brokers forming one cluster and waits until each lists all of them.
pub fn start_cluster(dir: &Path, n: usize) -> Vec<Node> {
    start_cluster_with(dir, n, 1, &[])
}

/// `start_cluster` with `cores` shards per broker and `extra` arguments for every `chronik start`.
pub fn start_cluster_with(dir: &Path, n: usize, cores: usize, extra: &[&str]) -> Vec<Node> {
    start_cluster_env(dir, n, cores, extra, &[])
}

/// `start_cluster_with` and `env` for every broker process (fault injection).
pub fn start_cluster_env(
    dir: &Path,
    n: usize,
    cores: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<Node> {
    let kafka: Vec<u16> = (0..n).map(|_| super::free_port()).collect();
    let rpc: Vec<u16> = (0..n).map(|_| super::free_port()).collect();
    let peers = (0..n)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, rpc[i]))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let mut args: Vec<String> = vec![
                "start".into(),
                "--node-id".into(),
                (i + 1).to_string(),
                "--cores".into(),
                cores.to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", kafka[i]),
                "--rpc".into(),
                format!("127.0.0.1:{}", rpc[i]),
                "--peers".into(),
                peers.clone(),
                "--data-dir".into(),
                dir.join(format!("node{}", i + 1)).display().to_string(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let log = dir.join(format!("node{}.log", i + 1));
            Node {
                addr: format!("127.0.0.1:{}", kafka[i]).parse().unwrap(),
                child: Node::spawn(&args, &env, &log),
                args,
                env,
                log,
            }
        })
        .collect();
    wait_until_formed(&nodes);
    nodes
}

/// Waits until every node lists all of them.
pub fn wait_until_formed(nodes: &[Node]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for node in nodes {
        loop {
            assert!(Instant::now() < deadline, "the cluster did not form");
            let listed = Client::try_connect(node.addr)
                .ok()
                .map(|mut c| c.metadata(&[]).brokers.len());
            if listed == Some(nodes.len()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn create_topic(client: &mut Client, name: &str, partitions: i32, replication: i16) {
    create_topic_with(client, name, partitions, replication, &[]);
}

/// `create_topic` with topic configs.
pub fn create_topic_with(
    client: &mut Client,
    name: &str,
    partitions: i32,
    replication: i16,
    configs: &[(&str, &str)],
) {
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = replication;
    topic.configs = configs
        .iter()
        .map(|(key, value)| {
            let mut config = create_topics_request::CreatableTopicConfig::default();
            config.name = StrBytes::from_string(key.to_string());
            config.value = Some(StrBytes::from_string(value.to_string()));
            config
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request);
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

/// Metadata for `topic` from the broker at `addr`, once it names a leader for every partition.
pub fn wait_for_leaders(addr: SocketAddr, topic: &str, timeout: Duration) -> MetadataResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let metadata = Client::connect(addr).metadata(&[topic]);
        let t = &metadata.topics[0];
        if t.error_code == 0 && t.partitions.iter().all(|p| p.leader_id.0 > 0) {
            return metadata;
        }
        assert!(Instant::now() < deadline, "no leaders: {metadata:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node leading partition 0 of `topic`, and the others (the controller last).
pub fn leader_and_followers(nodes: &[Node], topic: &str) -> (usize, Vec<usize>) {
    let metadata = wait_for_leaders(nodes[0].addr, topic, Duration::from_secs(20));
    let leader = (metadata.topics[0].partitions[0].leader_id.0 - 1) as usize;
    let controller = (metadata.controller_id.0 - 1) as usize;
    let mut followers: Vec<usize> = (0..nodes.len()).filter(|&i| i != leader).collect();
    followers.sort_by_key(|&i| i == controller);
    (leader, followers)
}
