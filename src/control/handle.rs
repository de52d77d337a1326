//! `ControlHandle`: how shards and the Kafka front end use the control plane. Cheap to clone,
//! `Send + Sync`, and every async method is runtime-agnostic (async-channel), so it can be
//! awaited from any glommio executor. Requests go to the control thread over a crossbeam
//! channel; applied images come back through `Published`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_listener::Event;
use uuid::Uuid;

use super::command::ChangeBasis;
use super::error::ControlError;
use super::forward::{ClientRequest, ClientResult};
use super::image::{MetadataImage, TopicInfo};
use super::node::{ControlNode, Reply, Request};
use super::producer_ids::{ProducerIdBlock, ProducerIdCache};
use super::topic_config::ConfigOp;
use super::{BrokerDefaults, ControlConfig, NewTopic};

/// How long `start` waits for the node to recover, elect a controller and register the broker.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The same in cluster mode, where the other brokers may start later.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The latest applied image, shared between the control thread and every handle.
pub struct Published {
    image: Mutex<Arc<MetadataImage>>,
    /// Bumped on every publish; subscribers remember the last one they saw.
    generation: AtomicU64,
    closed: AtomicBool,
    changed: Event,
    /// Raft proposals this node made (only a controller proposes).
    proposals: AtomicU64,
}

impl Published {
    fn new() -> Published {
        Published {
            image: Mutex::new(Arc::new(MetadataImage::default())),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            changed: Event::new(),
            proposals: AtomicU64::new(0),
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn publish(&self, image: Arc<MetadataImage>) {
        *self.image.lock().unwrap_or_else(|e| e.into_inner()) = image;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify(usize::MAX);
    }

    pub fn count_proposal(&self) {
        self.proposals.fetch_add(1, Ordering::Relaxed);
    }

    /// The control thread stopped: subscriptions end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
    }
}

/// A stream of applied images: `next()` returns the current image the first time, then each
/// newer one (images published while the subscriber was busy are skipped: it always gets the
/// latest). Ends (None) when the control plane stops.
pub struct ImageSubscription {
    published: Arc<Published>,
    seen: u64,
}

impl ImageSubscription {
    pub async fn next(&mut self) -> Option<Arc<MetadataImage>> {
        loop {
            let generation = self.published.generation.load(Ordering::Acquire);
            if generation > self.seen {
                self.seen = generation;
                return Some(self.published.image());
            }
            if self.published.closed.load(Ordering::Acquire) {
                return None;
            }
            let listener = self.published.changed.listen();
            // Re-check after registering, so a publish in between is not missed.
            if self.published.generation.load(Ordering::Acquire) > self.seen
                || self.published.closed.load(Ordering::Acquire)
            {
                continue;
            }
            listener.await;
        }
    }
}

/// The control plane as the rest of the broker sees it.
#[derive(Clone)]
pub struct ControlHandle {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: i32,
    /// This process's broker epoch (see `BrokerInfo::incarnation`).
    incarnation: u64,
    defaults: BrokerDefaults,
    requests: crossbeam_channel::Sender<Request>,
    published: Arc<Published>,
    thread: Mutex<Option<JoinHandle<()>>>,
    death: Arc<super::death::DeathWatch>,
    /// This broker's producer ids, shared by all its shards.
    producer_ids: ProducerIdCache,
}

/// Starts the control core (its own thread, pinned to `control_core` when given, running the
/// Raft node and the metadata state machine), recovers durable state from `<data_dir>/meta`,
/// and registers this broker. Returns once this broker's registration is applied.
pub fn start(config: ControlConfig) -> Result<ControlHandle, ControlError> {
    if config.node_id < 0 {
        return Err(ControlError::InvalidRequest(format!(
            "node id {} must be >= 0",
            config.node_id
        )));
    }
    let cluster = config.peers.iter().any(|(id, _)| *id != config.node_id);
    if cluster && config.rpc.is_none() {
        return Err(ControlError::InvalidRequest(
            "cluster mode (peers) needs this node's rpc address".into(),
        ));
    }
    if cluster && !config.peers.iter().any(|(id, _)| *id == config.node_id) {
        return Err(ControlError::InvalidRequest(format!(
            "the peers must list this node ({}) too",
            config.node_id
        )));
    }
    let start_timeout = if cluster {
        CLUSTER_START_TIMEOUT
    } else {
        START_TIMEOUT
    };
    let incarnation = new_incarnation();
    let published = Arc::new(Published::new());
    let (requests, receiver) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = mpsc::channel();
    let node_id = config.node_id;
    let defaults = config.defaults.clone();
    let control_core = config.control_core;
    let thread_published = Arc::clone(&published);
    let inbox = requests.clone();
    let death = Arc::new(super::death::DeathWatch::default());
    let thread_death = Arc::clone(&death);
    let thread = std::thread::Builder::new()
        .name("chronik-control".into())
        .spawn(move || {
            if let Some(core) = control_core {
                pin_to_core(core);
            }
            thread_death.guard(|| {
                match ControlNode::new(
                    config,
                    incarnation,
                    receiver,
                    inbox,
                    thread_published,
                    ready_tx.clone(),
                ) {
                    Ok(node) => node.run(),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        })
        .map_err(|e| ControlError::Internal(format!("spawning the control thread: {e}")))?;
    let handle = ControlHandle {
        inner: Arc::new(Inner {
            node_id,
            incarnation,
            defaults,
            requests,
            published,
            thread: Mutex::new(Some(thread)),
            death,
            producer_ids: ProducerIdCache::default(),
        }),
    };
    match ready_rx.recv_timeout(start_timeout) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            tracing::error!("control plane failed to start: {e}");
            handle.join();
            Err(e)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::error!("control plane did not start within {start_timeout:?}");
            Err(ControlError::Timeout)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            handle.join();
            Err(ControlError::Internal(
                "the control thread ended while starting".into(),
            ))
        }
    }
}

fn new_incarnation() -> u64 {
    let (high, low) = Uuid::new_v4().as_u64_pair();
    (high ^ low).max(1)
}

/// Pins the calling thread to `core`; a failure is logged, not fatal.
fn pin_to_core(core: usize) {
    if core >= libc::CPU_SETSIZE as usize {
        tracing::warn!(core, "control core out of range; not pinned");
        return;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (core < CPU_SETSIZE), and
    // sched_setaffinity only reads it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::warn!(
            core,
            "pinning the control thread failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl ControlHandle {
    /// The latest applied metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.inner.published.image()
    }

    /// Applied images as they come (see `ImageSubscription`).
    pub fn subscribe(&self) -> ImageSubscription {
        ImageSubscription {
            published: Arc::clone(&self.inner.published),
            seen: 0,
        }
    }

    /// Whether this node is the controller (the Raft leader) now.
    pub fn is_controller(&self) -> bool {
        self.controller_id() == Some(self.inner.node_id)
    }

    /// The controller as this node knows it; None while there is none (an election).
    pub fn controller_id(&self) -> Option<i32> {
        self.image().controller_id
    }

    /// How many Raft proposals this node has made since it started. Only the controller
    /// proposes, so on a broker that never was the controller this stays 0.
    pub fn proposals_made(&self) -> u64 {
        self.inner.published.proposals.load(Ordering::Relaxed)
    }

    pub fn node_id(&self) -> i32 {
        self.inner.node_id
    }

    /// This broker's epoch: the incarnation it registered with, new at every start. Replication
    /// links carry it so that followers serve only the current life of a registered broker.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    pub fn defaults(&self) -> &BrokerDefaults {
        &self.inner.defaults
    }

    /// Creates topics (the one code path for CreateTopics and auto-creation): validated on the
    /// controller as Kafka does (forwarded to it from any other broker), replicas assigned over
    /// live brokers, answered once applied. One result per requested topic, in order.
    pub async fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<Arc<TopicInfo>, ControlError>> {
        match self
            .call(ClientRequest::CreateTopics {
                topics,
                validate_only,
            })
            .await
        {
            ClientResult::Topics(results) => results,
            other => unexpected(other),
        }
    }

    /// Deletes topics by name; one result (the deleted topic's id) per name, in order.
    pub async fn delete_topics(&self, names: Vec<String>) -> Vec<Result<Uuid, ControlError>> {
        match self.call(ClientRequest::DeleteTopics { names }).await {
            ClientResult::Deleted(results) => results,
            other => unexpected(other),
        }
    }

    /// Grows topics to a new total partition count; one result per request, in order.
    pub async fn create_partitions(
        &self,
        requests: Vec<(String, i32)>,
        validate_only: bool,
    ) -> Vec<Result<(), ControlError>> {
        match self
            .call(ClientRequest::CreatePartitions {
                requests,
                validate_only,
            })
            .await
        {
            ClientResult::Units(results) => results,
            other => unexpected(other),
        }
    }

    /// IncrementalAlterConfigs on one topic.
    pub async fn alter_topic_configs(
        &self,
        topic: String,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<(), ControlError> {
        match self
            .call(ClientRequest::AlterTopicConfigs {
                topic,
                ops,
                validate_only,
            })
            .await
        {
            ClientResult::Unit(result) => result,
            other => unexpected::<()>(other).pop().unwrap_or(Err(stopped())),
        }
    }

    /// The ISR of a partition this broker leads changes (a follower fell behind or caught up):
    /// Kafka's AlterPartition, committed through the controller. `leader_epoch` is the epoch the
    /// leader works in; a stale one is STALE_LEADER_EPOCH (FENCED_LEADER_EPOCH), and the ISR
    /// may hold only live replicas and must hold the leader. `basis`: the ISR the leader decided
    /// on and the incarnations of the followers it adds (KIP-903), checked again when the change
    /// is applied (`isr_change`); None lets the controller's image stand in for it.
    pub async fn alter_partition_isr(
        &self,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
        basis: Option<ChangeBasis>,
    ) -> Result<(), ControlError> {
        let request = ClientRequest::AlterPartitionIsr {
            topic,
            partition,
            leader_epoch,
            isr,
            basis,
        };
        match self.call(request).await {
            ClientResult::Unit(result) => result,
            other => unexpected::<()>(other).pop().unwrap_or(Err(stopped())),
        }
    }

    /// A producer id no broker of the cluster has handed out before (InitProducerId), from this
    /// broker's block cache (`producer_ids`): waits for the controller only when the cache is
    /// empty, and then fails with its error (NOT_CONTROLLER during an election, REQUEST_TIMED_OUT
    /// after the proposal timeout). Callers bound the wait.
    pub async fn new_producer_id(&self) -> Result<i64, ControlError> {
        self.inner.producer_ids.next_id(self).await
    }

    /// Asks the controller for a block of producer ids for this broker, in this incarnation
    /// (Kafka's AllocateProducerIds). `new_producer_id` is what handlers use.
    pub async fn allocate_producer_ids(&self) -> Result<ProducerIdBlock, ControlError> {
        let request = ClientRequest::AllocateProducerIds {
            broker_id: self.node_id(),
            incarnation: self.incarnation(),
        };
        match self.call(request).await {
            ClientResult::ProducerIds(result) => result,
            other => unexpected::<ProducerIdBlock>(other)
                .pop()
                .unwrap_or(Err(stopped())),
        }
    }

    async fn call(&self, request: ClientRequest) -> ClientResult {
        let (kind, parts) = (request.kind(), request.parts());
        if parts == 0 {
            return ClientResult::from_outcomes(kind, Vec::new());
        }
        match self.send(request).recv().await {
            Ok(result) => result,
            Err(_) => ClientResult::all_failed(kind, parts, stopped()),
        }
    }

    /// Hands `request` to the control thread; its answer arrives on the returned channel, which
    /// closes without one if the control thread has stopped.
    pub(super) fn send(&self, request: ClientRequest) -> async_channel::Receiver<ClientResult> {
        let (reply, answer) = async_channel::bounded(1);
        let request = Request::Client {
            request,
            reply: Reply::Local(reply),
        };
        // A failed send drops the request and its reply sender: `answer` is then closed.
        let _ = self.inner.requests.send(request);
        answer
    }

    /// Calls `watcher` with the cause if the control thread dies (at once if it has): the broker
    /// must not go on serving from an image that no longer moves.
    pub fn on_death(&self, watcher: impl FnOnce(&str) + Send + 'static) {
        self.inner.death.watch(watcher);
    }

    /// Stops the control thread (pending requests are answered NOT_CONTROLLER) and waits for it.
    pub async fn shutdown(&self) {
        let (reply, done) = async_channel::bounded(1);
        if self
            .inner
            .requests
            .send(Request::Shutdown { reply })
            .is_ok()
        {
            let _ = done.recv().await;
        }
        self.join();
    }

    /// Tests: stops the control thread as a killed process would (no controlled shutdown).
    #[cfg(test)]
    pub fn crash(&self) {
        let _ = self.inner.requests.send(Request::Crash);
        self.join();
    }

    fn join(&self) {
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the control thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: stop the control thread and wait for it, so that its files are
    /// released when the drop returns.
    fn drop(&mut self) {
        let (reply, _done) = async_channel::bounded(1);
        let _ = self.requests.send(Request::Shutdown { reply });
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the control thread panicked");
            }
        }
    }
}

/// A peer answered with the wrong shape (it cannot happen between brokers of one version).
fn unexpected<T>(result: ClientResult) -> Vec<Result<T, ControlError>> {
    tracing::error!(?result, "answer of an unexpected kind");
    vec![Err(ControlError::Internal(
        "answer of an unexpected kind".into(),
    ))]
}

fn stopped() -> ControlError {
    ControlError::Internal("the control plane has stopped".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_lite::future::block_on;

    use super::*;
    use crate::control::topic_config;

    fn config(dir: &Path) -> ControlConfig {
        ControlConfig {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            kafka_endpoint: ("127.0.0.1".into(), 9092),
            rack: None,
            rpc: None,
            peers: Vec::new(),
            control_core: Some(0),
            defaults: BrokerDefaults::default(),
        }
    }

    fn topic(name: &str, partitions: i32) -> NewTopic {
        NewTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: 1,
            assignments: Vec::new(),
            configs: vec![("retention.ms".into(), Some("60000".into()))],
        }
    }

    #[test]
    fn single_node_starts_as_controller_and_registers() {
        let dir = tempfile::tempdir().unwrap();
        let control = start(config(dir.path())).unwrap();
        assert!(control.is_controller());
        assert_eq!(control.controller_id(), Some(1));
        assert_eq!(control.node_id(), 1);
        let image = control.image();
        assert_eq!(image.cluster_id.len(), 22);
        let broker = &image.brokers[&1];
        assert_eq!(
            (broker.host.as_str(), broker.port, broker.fenced),
            ("127.0.0.1", 9092, false)
        );
        block_on(control.shutdown());
    }

    #[test]
    fn restart_recovers_the_identical_image() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let control = start(config(dir.path())).unwrap();
            let results =
                block_on(control.create_topics(vec![topic("a", 3), topic("b.c", 1)], false));
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let created = results[0].as_ref().unwrap();
            assert_eq!(created.partitions.len(), 3);
            assert_eq!(created.configs["retention.ms"], "60000");
            block_on(control.create_partitions(vec![("b.c".into(), 2)], false))
                .into_iter()
                .for_each(|r| r.unwrap());
            block_on(control.alter_topic_configs(
                "a".into(),
                vec![ConfigOp::Set("segment.ms".into(), "1000".into())],
                false,
            ))
            .unwrap();
            let image = control.image();
            assert_eq!(image.topics["a"].id, created.id);
            block_on(control.shutdown());
            image
        };
        let control = start(config(dir.path())).unwrap();
        let after = control.image();
        assert_eq!(after.cluster_id, before.cluster_id);
        assert_eq!(after.brokers.keys().collect::<Vec<_>>(), vec![&1]);
        assert_ne!(
            after.brokers[&1].incarnation,
            before.brokers[&1].incarnation
        );
        assert_eq!(after.topics.len(), 2);
        for (name, topic) in &before.topics {
            let recovered = &after.topics[name];
            assert_eq!(recovered.id, topic.id);
            assert_eq!(recovered.configs, topic.configs);
            assert_eq!(recovered.partitions.len(), topic.partitions.len());
            for (p, q) in topic.partitions.iter().zip(&recovered.partitions) {
                assert_eq!(
                    (p.index, &p.replicas, &p.isr, p.leader),
                    (q.index, &q.replicas, &q.isr, q.leader)
                );
                // The restarted broker leads again, in a new leader epoch.
                assert_eq!(q.leader_epoch, p.leader_epoch + 1);
            }
        }
        block_on(control.shutdown());
    }

    #[test]
    fn crash_without_shutdown_keeps_committed_topics() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let control = start(config(dir.path())).unwrap();
            let results = block_on(control.create_topics(vec![topic("kept", 2)], false));
            let id = results[0].as_ref().unwrap().id;
            // Dropped without shutdown: nothing but the committed log survives.
            drop(control);
            id
        };
        let control = start(config(dir.path())).unwrap();
        assert_eq!(control.image().topics["kept"].id, id);
        block_on(control.shutdown());
    }

    #[test]
    fn validate_only_creates_nothing_and_errors_carry_codes() {
        let dir = tempfile::tempdir().unwrap();
        let control = start(config(dir.path())).unwrap();
        let version = control.image().version;
        let results = block_on(control.create_topics(vec![topic("dry", 4)], true));
        assert_eq!(results[0].as_ref().unwrap().partitions.len(), 4);
        assert!(control.image().topics.is_empty());
        assert_eq!(control.image().version, version);

        block_on(control.create_topics(vec![topic("t", 1)], false))[0]
            .as_ref()
            .unwrap();
        let mut bad_config = topic("c", 1);
        bad_config.configs = vec![("cleanup.policy".into(), Some("archive".into()))];
        let mut too_many_replicas = topic("r", 1);
        too_many_replicas.replication_factor = 2;
        let results = block_on(control.create_topics(
            vec![
                topic("t", 1),
                topic("bad/name", 1),
                topic("z", 0),
                too_many_replicas,
                bad_config,
                topic("dup", 1),
                topic("dup", 1),
                NewTopic::with_defaults("auto"),
            ],
            false,
        ));
        let codes: Vec<i16> = results
            .iter()
            .map(|r| r.as_ref().err().map_or(0, |e| e.code().code()))
            .collect();
        assert_eq!(codes, vec![36, 17, 37, 38, 40, 42, 42, 0]);
        assert_eq!(results[7].as_ref().unwrap().partitions.len(), 1);

        let deleted = block_on(control.delete_topics(vec!["t".into(), "missing".into()]));
        assert!(deleted[0].is_ok());
        assert_eq!(deleted[1].as_ref().unwrap_err().code().code(), 3);
        assert!(!control.image().topics.contains_key("t"));

        let grown =
            block_on(control.create_partitions(vec![("auto".into(), 3), ("auto".into(), 1)], true));
        assert!(grown[0].is_ok());
        assert_eq!(grown[1].as_ref().unwrap_err().code().code(), 37);
        assert_eq!(control.image().topics["auto"].partitions.len(), 1);

        let err = block_on(control.alter_topic_configs(
            "auto".into(),
            vec![ConfigOp::Set("retention.ms".into(), "x".into())],
            false,
        ))
        .unwrap_err();
        assert_eq!(err.code().code(), 40);
        block_on(control.alter_topic_configs(
            "auto".into(),
            vec![ConfigOp::Set("retention.ms".into(), "5".into())],
            true,
        ))
        .unwrap();
        assert!(control.image().topics["auto"].configs.is_empty());
        let entries = topic_config::describe(&control.image().topics["auto"], control.defaults());
        assert!(entries
            .iter()
            .any(|e| e.name == "retention.ms" && e.is_default));
        block_on(control.shutdown());
        let after = block_on(control.create_topics(vec![topic("late", 1)], false));
        assert!(after[0].is_err());
    }

    #[test]
    fn restart_after_compaction_recovers_from_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let count = crate::control::node::SNAPSHOT_EVERY as usize + 50;
        let before = {
            let control = start(config(dir.path())).unwrap();
            let topics = (0..count).map(|i| topic(&format!("t{i}"), 1)).collect();
            let results = block_on(control.create_topics(topics, false));
            assert!(results.iter().all(Result::is_ok));
            let image = control.image();
            block_on(control.shutdown());
            image
        };
        assert!(dir.path().join("meta/snapshot").exists());
        let control = start(config(dir.path())).unwrap();
        let after = control.image();
        assert_eq!(after.topics.len(), count);
        assert_eq!(after.cluster_id, before.cluster_id);
        for (name, topic) in &before.topics {
            assert_eq!(after.topics[name].id, topic.id);
            assert_eq!(
                after.topics[name].partitions[0].replicas,
                topic.partitions[0].replicas
            );
        }
        block_on(control.shutdown());
    }

    #[test]
    fn a_second_control_plane_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let control = start(config(dir.path())).unwrap();
        let second = start(config(dir.path()));
        assert!(matches!(second, Err(ControlError::Internal(_))));
        block_on(control.shutdown());
    }

    #[test]
    fn subscribers_see_each_newer_image_from_glommio() {
        let dir = tempfile::tempdir().unwrap();
        let control = start(config(dir.path())).unwrap();
        let mut subscription = control.subscribe();
        let for_shard = control.clone();
        let seen = glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || async move {
                let first = subscription.next().await.unwrap();
                let created = for_shard.create_topics(vec![topic("s", 2)], false).await;
                assert!(created[0].is_ok());
                let mut latest = first.clone();
                while !latest.topics.contains_key("s") {
                    let next = subscription.next().await.unwrap();
                    assert!(next.version > latest.version);
                    latest = next;
                }
                for_shard.shutdown().await;
                assert!(subscription.next().await.is_none());
                (first.version, latest.version)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(seen.1 > seen.0);
    }
}
