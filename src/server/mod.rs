//! `chronik start`: the broker process. Starts the control plane, one pinned
//! shard executor per core, and runs until SIGTERM/SIGINT.

pub mod connection;
pub mod disk_space;
pub mod limits;
pub mod shard;
mod shard_exit;
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
    disk_space::start(
        &config.data_dir,
        config.storage_min_free_bytes,
        shutdown.clone(),
    )
    .map_err(|e| {
        format!(
            "cannot watch the free space of {}: {e}",
            config.data_dir.display()
        )
    })?;

    let control = control::start(ControlConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        kafka_endpoint: config.advertised.clone(),
        rack: None,
        rpc: config.rpc,
        peers: config.peers.clone(),
        control_core: config.control_core,
        defaults: {
            let mut defaults = BrokerDefaults::default();
            defaults.log.producer_id_expiration_ms =
                i64::try_from(config.producer_id_expiration_ms).unwrap_or(i64::MAX);
            defaults
        },
    })
    .map_err(|e| format!("cannot start the control plane: {e}"))?;

    // A broker whose control plane died must not serve from an image that no longer moves.
    let control_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (shutdown, died) = (shutdown.clone(), control_died.clone());
        control.on_death(move |why| {
            error!("stopping the broker: its control plane died ({why})");
            died.store(true, std::sync::atomic::Ordering::SeqCst);
            shutdown.trigger();
        });
    }

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
        limits: config.limits.clone(),
        cleaner: config.cleaner.clone(),
    };
    let spec = ShardSpec {
        cpus,
        pin: !config.overprovisioned,
        io_memory: chronik_shards::log::SHARD_IO_MEMORY,
        name: "chronik-shard".into(),
    };
    // Each shard reports how it ended, a panic included: the first failure stops every shard.
    let (exits, exited) = std::sync::mpsc::channel();
    let spawned = {
        let shutdown = shutdown.clone();
        runtime::spawn_shards(&spec, move |id| {
            // On the shard's thread: its end is reported even if it unwinds from a panic.
            shard_exit::arm(shard_exit::ExitGuard::new(
                id,
                exits.clone(),
                shutdown.clone(),
                start.drained.clone(),
            ));
            let start = start.clone();
            async move {
                shard_exit::inject_panic(id, start.shards);
                shard_exit::finish(shard::run(id, start).await);
            }
        })
    };
    let handles = match spawned {
        Ok(handles) => handles,
        Err(e) => {
            shutdown.trigger();
            return Err(e.to_string());
        }
    };
    let ended = shard_exit::wait_for_shards(exited, shards, &shutdown);
    if !ended.all_stopped {
        // Some shard did not stop in time: do not wait on it (nor on the control plane).
        return ended.result;
    }
    let mut result = ended.result;
    for handle in handles {
        if let Err(e) = handle.join() {
            let e = format!("shard executor failed: {e}");
            error!("{e}");
            result = Err(e);
        }
    }
    futures_lite::future::block_on(control.shutdown());
    if control_died.load(std::sync::atomic::Ordering::SeqCst) && result.is_ok() {
        result = Err("the control plane died".to_string());
    }
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
