//! `chronik start`: the broker process. Starts the control plane, one pinned
//! shard executor per core, and runs until SIGTERM/SIGINT.

pub mod connection;
pub mod shard;
pub mod signals;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use chronik_shards::runtime::{self, ShardSpec, Shutdown};
use tracing::{error, info};

use crate::config::BrokerConfig;
use crate::control::{self, BrokerDefaults, ControlConfig};
use shard::ShardStart;

/// Connection attempts (200 ms apart) that must all succeed before the
/// listen address is considered taken by another process.
const PORT_PROBES: usize = 10;
/// Work items queued from one shard to another before the sender waits.
const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Runs the broker until it is told to stop. Ok once everything acknowledged
/// is flushed and the control plane stopped.
pub fn run(config: BrokerConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    refuse_if_listened_on(config.listen)?;

    let shutdown = Shutdown::new();
    signals::install(shutdown.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let control = control::start(ControlConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        kafka_endpoint: config.advertised.clone(),
        rack: None,
        rpc: config.rpc,
        peers: config.peers.clone(),
        control_core: config.control_core,
        defaults: BrokerDefaults::default(),
    })
    .map_err(|e| format!("cannot start the control plane: {e}"))?;

    // Before any shard opens a log: directories of deleted topics must not be
    // mistaken for a new topic's.
    crate::partitions::orphans::set_aside(&config.data_dir, &control.image());

    let cpus: Vec<usize> = runtime::available_cpus()
        .into_iter()
        .take(config.cores)
        .collect();
    let shards = cpus.len();
    info!(
        node_id = config.node_id,
        data_dir = %config.data_dir.display(),
        advertised = %format!("{}:{}", config.advertised.0, config.advertised.1),
        ?cpus,
        replica_lag_time_max_ms = config.replica_lag_time_max_ms,
        overprovisioned = config.overprovisioned,
        "starting chronik"
    );
    let start = ShardStart {
        shards,
        listen: config.listen,
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        control: control.clone(),
        shutdown: shutdown.clone(),
        mesh: runtime::mesh::builder(shards, MESH_CHANNEL_CAPACITY),
        drained: Arc::new(AtomicUsize::new(0)),
        replica_lag_time_max_ms: config.replica_lag_time_max_ms,
        retention_check_interval: std::time::Duration::from_millis(
            config.log_retention_check_interval_ms,
        ),
        io_polling: !config.overprovisioned,
    };
    let spec = ShardSpec {
        cpus,
        pin: !config.overprovisioned,
        io_memory: chronik_shards::log::SHARD_IO_MEMORY,
        name: "chronik-shard".into(),
    };
    let handles =
        runtime::spawn_shards(&spec, move |id| shard::run(id, start.clone())).map_err(|e| {
            shutdown.trigger();
            e.to_string()
        })?;

    let mut result = Ok(());
    for handle in handles {
        let outcome = match handle.join() {
            Ok(outcome) => outcome,
            Err(e) => Err(format!("shard executor failed: {e}")),
        };
        if let Err(e) = outcome {
            // Each failure is logged once here; the last one is also returned.
            if result.is_err() {
                error!("{e}");
            }
            shutdown.trigger();
            result = Err(e);
        }
    }
    futures_lite::future::block_on(control.shutdown());
    // Only a controller proposes: this count shows which brokers ever were one.
    let proposals_made = control.proposals_made();
    if result.is_ok() {
        info!(proposals_made, "chronik stopped cleanly");
    } else {
        info!(proposals_made, "chronik stopped after a failure");
    }
    result
}

/// Shards bind with SO_REUSEPORT, which would let them share the port with
/// another broker already serving there (splitting its clients): refuse to
/// start when something keeps accepting connections on the address. (A plain
/// bind probe would trip over the closing sockets of a broker just killed;
/// and a killed broker's listening socket outlives it briefly while the
/// kernel tears down its io_uring, hence the retries.)
fn refuse_if_listened_on(listen: SocketAddr) -> Result<(), String> {
    let mut probe = listen;
    if probe.ip().is_unspecified() {
        probe.set_ip(match probe {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    for _ in 0..PORT_PROBES {
        if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "cannot listen on {listen}: another process is already serving there"
    ))
}
