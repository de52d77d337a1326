//! Keeps a shard's open logs in step with the metadata image: opens the
//! partitions assigned to it, applies topic config changes, deletes the logs
//! of deleted topics, closes partitions no longer placed here; and applies
//! retention periodically.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use tracing::{debug, warn};

use crate::control::{topic_config, MetadataImage};
use crate::server::shard::Shard;

/// Brings the shard's partitions in line with `image`.
pub async fn apply_image(shard: &Rc<Shard>, image: &MetadataImage) {
    let defaults = shard.control.defaults();
    let mut wanted = HashSet::new();
    let live_topics: HashSet<_> = image.topics.values().map(|t| t.id).collect();

    // Removals first: a topic deleted and re-created under the same name
    // reuses the directory name.
    for key in shard.partitions.keys() {
        let placed_here = image
            .topic_by_id(key.0)
            .and_then(|topic| topic.partitions.iter().find(|p| p.index == key.1))
            .is_some_and(|p| {
                p.replicas.contains(&shard.node_id)
                    && shard.owner_of(&topic_name_of(image, key.0), key.1) == shard.id
            });
        if !placed_here {
            let delete = !live_topics.contains(&key.0);
            shard.partitions.remove(&key, delete).await;
        }
    }

    for topic in image.topics.values() {
        let config = topic_config::log_config(topic, defaults);
        for info in &topic.partitions {
            if !info.replicas.contains(&shard.node_id)
                || shard.owner_of(&topic.name, info.index) != shard.id
            {
                continue;
            }
            wanted.insert((topic.id, info.index));
            match shard.partitions.get(&(topic.id, info.index)) {
                Some(open) => {
                    open.update_config(&topic.configs, config.clone());
                    open.set_replica_state(info.leader_epoch, &info.isr);
                    crate::replication::apply(shard, &open, topic, info);
                }
                None => {
                    match shard
                        .partitions
                        .get_or_open(topic, info, config.clone())
                        .await
                    {
                        Ok(open) => crate::replication::apply(shard, &open, topic, info),
                        Err(e) => {
                            warn!(topic = %topic.name, partition = info.index, "cannot open partition log: {e}")
                        }
                    }
                }
            }
        }
    }
    shard.mark_applied(image.version);
    debug!(
        shard = shard.id,
        version = image.version,
        partitions = wanted.len(),
        "applied metadata image"
    );
}

fn topic_name_of(image: &MetadataImage, id: uuid::Uuid) -> String {
    image
        .topic_by_id(id)
        .map(|t| t.name.clone())
        .unwrap_or_default()
}

/// Fault injection for tests: every shard applies each new image this many milliseconds late,
/// so requests routed by a newer image reach owners that have not applied it.
pub const SLOW_IMAGE_APPLY_ENV: &str = "CHRONIK_FAULT_SLOW_IMAGE_APPLY_MS";

/// Follows the control plane's images until shutdown.
pub async fn follow_images(shard: Rc<Shard>) {
    let mut subscription = shard.control.subscribe();
    let shutdown = shard.shutdown.clone();
    let delay = std::env::var(SLOW_IMAGE_APPLY_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    if let Some(delay) = delay {
        warn!(
            shard = shard.id,
            "fault injection: metadata images applied {delay:?} late ({SLOW_IMAGE_APPLY_ENV})"
        );
    }
    loop {
        let next = async { subscription.next().await }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        match next {
            Some(image) => {
                if let Some(delay) = delay {
                    glommio::timer::sleep(delay).await;
                }
                apply_image(&shard, &image).await
            }
            None => return,
        }
    }
}

/// Waits `interval`: true, or false once shutdown begins (a periodic duty then ends).
pub(super) async fn tick(shutdown: &chronik_shards::runtime::Shutdown, interval: Duration) -> bool {
    async {
        glommio::timer::sleep(interval).await;
        true
    }
    .or(async {
        shutdown.wait().await;
        false
    })
    .await
}

/// Writes this shard's high watermark checkpoint every `hw_checkpoint::INTERVAL` until shutdown
/// (the shard writes a last one after draining).
pub async fn run_hw_checkpoints(shard: Rc<Shard>) {
    while tick(&shard.shutdown, super::hw_checkpoint::INTERVAL).await {
        shard.partitions.checkpoint_high_watermarks().await;
    }
}

/// Applies retention to every partition of the shard every `interval`
/// (`log.retention.check.interval.ms`), until shutdown.
pub async fn run_retention(shard: Rc<Shard>, interval: Duration) {
    while tick(&shard.shutdown, interval).await {
        // Retention compares record timestamps, which are dates: the wall clock is right here.
        let now_ms = i64::try_from(crate::replication::clock::wall_ms()).unwrap_or(i64::MAX);
        for partition in shard.partitions.all() {
            // Never past the high watermark: what is not committed yet stays.
            let committed = partition.high_watermark();
            match partition.log.apply_retention_below(now_ms, committed).await {
                Ok(0) => {}
                Ok(removed) => debug!(
                    topic = %partition.topic,
                    partition = partition.index,
                    removed,
                    "retention removed segments"
                ),
                Err(e) => {
                    warn!(topic = %partition.topic, partition = partition.index, "retention failed: {e}")
                }
            }
        }
    }
}
