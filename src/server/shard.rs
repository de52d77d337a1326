//! One shard: a pinned executor that accepts Kafka connections, owns a set of
//! partitions, and runs work other shards forward to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_shards::runtime::mesh::JobMeshBuilder;
use chronik_shards::runtime::{owner_shard, ShardMesh, Shutdown};
use futures_lite::FutureExt;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use tracing::{info, warn};

use crate::control::ControlHandle;
use crate::kafka::append_order::AppendOrder;
use crate::partitions::offset_watch::OffsetWatch;
use crate::partitions::{sync, PartitionRegistry};
use crate::server::connection;
use crate::server::limits::{ConnectionSlots, Limits, RequestMemory};

/// Connections refused for `max.connections` are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A shard's state, shared by its tasks (never by other threads).
pub struct Shard {
    pub id: usize,
    pub node_id: i32,
    pub mesh: ShardMesh<Shard>,
    pub control: ControlHandle,
    pub partitions: PartitionRegistry,
    pub shutdown: Shutdown,
    pub replication: crate::replication::ShardReplication,
    /// The version of the newest metadata image this shard has applied to its partitions. A
    /// request is routed by the image its receiving shard read, which the owner shard may not
    /// have applied yet: the owner waits for it (`caught_up_with`) before acting as leader.
    applied_image: OffsetWatch,
    /// Produce appends deferred on this shard, in line per partition (`kafka::append_order`).
    pub append_order: AppendOrder,
    /// What a client connection may hold (frame size, timeouts, fetch size).
    pub limits: Limits,
    /// This shard's share of `queued.max.request.bytes`.
    pub request_memory: RequestMemory,
    /// This shard's share of `max.connections`.
    connection_slots: ConnectionSlots,
}

impl Shard {
    /// The shard that owns a partition (same answer on every shard).
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        owner_shard(topic.as_bytes(), partition, self.mesh.shards())
    }

    /// Records that this shard's partitions are in line with image `version`; wakes the
    /// requests waiting for it.
    pub fn mark_applied(&self, version: u64) {
        self.applied_image.advance(image_version(version));
    }

    /// Whether this shard has applied image `version` to its partitions.
    pub fn has_applied(&self, version: u64) -> bool {
        self.applied_image.get() >= image_version(version)
    }

    /// Waits until this shard has applied image `version` (true), or until `deadline` or
    /// shutdown (false). Every image is applied promptly by `sync::follow_images`, so the wait
    /// is the time one apply takes; the deadline bounds a shard wedged in opening a log.
    pub async fn caught_up_with(&self, version: u64, deadline: Instant) -> bool {
        if self.has_applied(version) {
            return true;
        }
        let shutdown = self.shutdown.clone();
        async {
            self.applied_image
                .wait_at_least(image_version(version))
                .await
        }
        .or(async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            false
        })
        .or(async {
            shutdown.wait().await;
            false
        })
        .await
    }
}

/// Image versions count committed entries: far below `i64::MAX`.
fn image_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// What a shard executor starts from (all `Send`, built on the main thread).
#[derive(Clone)]
pub struct ShardStart {
    pub shards: usize,
    pub listen: SocketAddr,
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub control: ControlHandle,
    pub shutdown: Shutdown,
    pub mesh: Option<JobMeshBuilder<Shard>>,
    /// Shards done serving connections; logs close once all are.
    pub drained: Arc<AtomicUsize>,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: u64,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: std::time::Duration,
    /// Busy-polling O_DIRECT completions is allowed (dedicated cores; off with `--overprovisioned`);
    /// it is used only where the device polls its queues (`io_polling::choose`).
    pub io_polling: bool,
    /// Connection limits, for the whole broker (each shard takes its share).
    pub limits: Limits,
    /// Each shard's log cleaner (`log.cleaner.*`).
    pub cleaner: crate::partitions::cleaner::CleanerSettings,
}

/// Runs shard `id` until shutdown: open its partitions, accept connections,
/// then drain connections, wait for every other shard to drain too (they may
/// still forward work here), and close its logs.
pub async fn run(id: usize, start: ShardStart) -> Result<(), String> {
    // Before any log opens: glommio decides per device at the first DMA open.
    match chronik_shards::runtime::io_polling::choose(&start.data_dir, start.io_polling).await {
        Ok(polls) => tracing::debug!(shard = id, polls, "O_DIRECT completion polling"),
        Err(e) => tracing::warn!(
            shard = id,
            error = %e,
            "could not turn off I/O polling; shards will spin while O_DIRECT I/O is in flight"
        ),
    }
    let mesh = match ShardMesh::join(start.mesh.clone(), id, start.shards).await {
        Ok(mesh) => mesh,
        Err(e) => {
            start.shutdown.trigger();
            start.drained.fetch_add(1, Ordering::SeqCst);
            return Err(format!("shard {id}: {e}"));
        }
    };
    let shard = Rc::new(Shard {
        id,
        node_id: start.node_id,
        mesh,
        control: start.control.clone(),
        partitions: PartitionRegistry::new(start.data_dir.clone(), start.node_id, id),
        shutdown: start.shutdown.clone(),
        replication: crate::replication::ShardReplication::new(start.replica_lag_time_max_ms),
        applied_image: OffsetWatch::new(-1),
        append_order: AppendOrder::new(),
        request_memory: RequestMemory::new(start.limits.shard_request_bytes(start.shards)),
        connection_slots: ConnectionSlots::new(start.limits.shard_connections(start.shards)),
        limits: start.limits.clone(),
    });
    shard.mesh.serve(&shard);

    let result = serve(&shard, &start).await;
    if result.is_err() {
        start.shutdown.trigger();
    }

    start.drained.fetch_add(1, Ordering::SeqCst);
    while start.drained.load(Ordering::SeqCst) < start.shards {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // The high watermarks as they stand at the end, so a restart starts from them.
    shard.partitions.checkpoint_high_watermarks().await;
    shard.partitions.close_all().await;
    shard.mesh.close();
    result
}

async fn serve(shard: &Rc<Shard>, start: &ShardStart) -> Result<(), String> {
    sync::apply_image(shard, &shard.control.image()).await;
    let images = glommio::spawn_local(sync::follow_images(shard.clone()));
    let retention = glommio::spawn_local(sync::run_retention(
        shard.clone(),
        start.retention_check_interval,
    ));
    let checkpoints = glommio::spawn_local(sync::run_hw_checkpoints(shard.clone()));
    let cleaner = glommio::spawn_local(crate::partitions::cleaner::run(
        shard.clone(),
        start.cleaner.clone(),
    ));

    let listener = TcpListener::bind(start.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", start.listen))?;
    if shard.id == 0 {
        info!(
            node_id = shard.node_id,
            shards = start.shards,
            "serving Kafka on {}",
            start.listen
        );
    }
    let connections = Gate::new();
    let shutdown = shard.shutdown.clone();
    let (mut refused, mut refused_logged) = (0u64, None::<Instant>);
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let Some(slot) = shard.connection_slots.take() else {
                    refused += 1;
                    if refused_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                        warn!(
                            shard = shard.id,
                            open = shard.connection_slots.open(),
                            refused,
                            "refusing connections: max.connections reached"
                        );
                        refused_logged = Some(Instant::now());
                        refused = 0;
                    }
                    drop(stream);
                    continue;
                };
                let serve = connection::serve(shard.clone(), stream);
                if let Ok(task) = connections.spawn(async move {
                    serve.await;
                    drop(slot);
                }) {
                    task.detach();
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = connections.close().await;
    images.await;
    retention.await;
    checkpoints.await;
    cleaner.await;
    Ok(())
}
