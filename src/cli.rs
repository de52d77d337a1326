//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// chronik: a Kafka-wire-compatible streaming broker.
#[derive(Debug, Parser)]
#[command(name = "chronik", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the broker: serves Kafka clients until SIGTERM or Ctrl-C.
    Start(StartArgs),
    /// Benchmarks: load generation against a broker, storage latency.
    #[command(subcommand)]
    Bench(chronik_bench::BenchCommand),
    /// Inspects a running cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Local tools for trying chronik out.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Structured fuzzing of a real broker: mutated requests of every advertised API and version,
    /// and of the replication and control ports; fails on a crash, a hang, RSS over a limit or
    /// damaged data.
    Fuzz(crate::tools::fuzz::FuzzArgs),
    /// Prints the records of a partition directory's segment files as JSON lines (or, with
    /// --latest, the latest record of every key), read offline: no recovery, no writes.
    DumpLog(crate::tools::dump_log::DumpLogArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, controller, and per topic the partition leaders, epochs, replicas and ISR.
    Status(crate::tools::cluster_status::StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Starts N brokers on loopback as one cluster; Ctrl-C stops them all.
    Cluster(crate::tools::dev_cluster::DevClusterArgs),
}

/// `chronik start` flags. Each may also be given in the `--config` TOML file
/// under the same name; a flag wins over the file, the file over the default.
#[derive(Debug, Args, Default)]
pub struct StartArgs {
    /// This broker's id in the cluster [default: 1].
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Where partition logs and control state live [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the Kafka listener binds [default: 127.0.0.1:9092].
    #[arg(long)]
    pub listen: Option<String>,
    /// HOST:PORT given to clients in Metadata [default: the listen address].
    #[arg(long)]
    pub advertised: Option<String>,
    /// Number of shard executors (one pinned per CPU) [default: all available CPUs].
    #[arg(long)]
    pub cores: Option<usize>,
    /// Control-plane (Raft) address of this broker, cluster mode.
    #[arg(long)]
    pub rpc: Option<String>,
    /// Control-plane peers, cluster mode: every node's --rpc address as ID@HOST:PORT,ID@HOST:PORT,...
    #[arg(long)]
    pub peers: Option<String>,
    /// CPU the control thread is pinned to [default: unpinned].
    #[arg(long)]
    pub control_core: Option<usize>,
    /// How long a follower may go without catching up to the leader's log end before the
    /// leader asks the controller to drop it from the ISR (Kafka's replica.lag.time.max.ms)
    /// [default: 30000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<u64>,
    /// How often each shard applies retention.ms / retention.bytes to its partitions (Kafka's
    /// log.retention.check.interval.ms) [default: 30000].
    #[arg(long)]
    pub log_retention_check_interval_ms: Option<u64>,
    /// How long the state of an idempotent producer that writes nothing is kept, by its last
    /// batch's timestamp (Kafka's producer.id.expiration.ms) [default: 86400000, one day].
    #[arg(long)]
    pub producer_id_expiration_ms: Option<u64>,
    /// Several brokers (or other busy processes) share this machine's CPUs: run the shard
    /// executors unpinned so the kernel can balance them (Redpanda's --overprovisioned). Pinned
    /// shards of several brokers on the same cores wait on each other, and the io_uring worker
    /// that runs a shard's fdatasync inherits the pin and waits behind a busy shard. Also rules
    /// out busy-polling for O_DIRECT completions (as Redpanda's flag turns off polling), which
    /// would spin a shard's CPU whenever a write is in flight.
    #[arg(long)]
    pub overprovisioned: bool,
    /// Largest request frame a client may send (Kafka's socket.request.max.bytes); a larger
    /// length prefix closes the connection [default: 104857600].
    #[arg(long)]
    pub socket_request_max_bytes: Option<usize>,
    /// Request bytes the broker holds at once, all shards together (Kafka's
    /// queued.max.request.bytes); connections wait for memory rather than allocate. Each shard
    /// gets its share, at least socket-request-max-bytes [default: 536870912].
    #[arg(long)]
    pub queued_max_request_bytes: Option<usize>,
    /// Kafka connections at once (Kafka's max.connections); more are closed at accept
    /// [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest fetch response, whatever the request asks (Kafka's fetch.max.bytes)
    /// [default: 57671680].
    #[arg(long)]
    pub fetch_max_bytes: Option<usize>,
    /// A client that takes no bytes of its answers for this long is disconnected
    /// [default: 30000].
    #[arg(long)]
    pub response_write_timeout_ms: Option<u64>,
    /// How long a request frame may take to arrive once its length is read, plus one second per
    /// MiB it announces [default: 30000].
    #[arg(long)]
    pub request_read_timeout_ms: Option<u64>,
    /// A connection that sends nothing for this long is closed (Kafka's
    /// connections.max.idle.ms) [default: 600000].
    #[arg(long)]
    pub connections_max_idle_ms: Option<u64>,
    /// Produce is refused with KAFKA_STORAGE_ERROR while the data directory's filesystem has less
    /// than this many bytes available (Redpanda's storage_min_free_bytes); reads, replication and
    /// deletes go on [default: 1 GiB, but at most 5% of the filesystem's size; 0 turns it off].
    #[arg(long)]
    pub storage_min_free_bytes: Option<u64>,
    /// Run the log cleaner that compacts topics with cleanup.policy=compact, one per shard
    /// (Kafka's log.cleaner.enable); false leaves compacted topics to grow [default: true].
    #[arg(long)]
    pub log_cleaner_enable: Option<bool>,
    /// Bytes per second each shard's cleaner may read plus write (Kafka's
    /// log.cleaner.io.max.bytes.per.second, there for all cleaner threads together)
    /// [default: 67108864, 64 MiB/s per shard].
    #[arg(long)]
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// Memory for the key map of each shard's cleaner (Kafka's log.cleaner.dedupe.buffer.size,
    /// 128 MiB there for all cleaner threads together); a log with more keys than fit is cleaned
    /// in several passes [default: 33554432, 32 MiB per shard].
    #[arg(long)]
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    /// How long a shard's cleaner sleeps when no log needs cleaning (Kafka's
    /// log.cleaner.backoff.ms) [default: 15000].
    #[arg(long)]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// TOML file with any of the keys above (node-id, data-dir, listen, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
}
