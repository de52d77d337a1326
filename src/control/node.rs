//! The control node: one thread (pinned to the control core when asked) that owns the raft-rs
//! `RawNode`, ticks it, handles every `Ready` in raft-rs's order (persist entries and hard
//! state, send messages, apply committed entries, advance), applies committed commands to the
//! metadata image, publishes each image, and answers each proposer once its entry is applied.
//!
//! Client requests are planned and proposed only on the controller (the Raft leader); any
//! other node forwards them to the controller over the transport. The controller also runs
//! the cluster's duties from broker heartbeats: registration, fencing a broker whose session
//! expired (which elects new leaders for its partitions), unfencing it when it is back, and
//! restoring preferred leaders.

mod persist;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::Sender;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use raft::prelude::{Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};
use uuid::Uuid;

use super::command::{Command, Envelope, ProposalId};
use super::error::ControlError;
use super::forward::{ClientRequest, ClientResult, Heartbeat, ResultKind, Rpc};
use super::handle::Published;
use super::image::MetadataImage;
use super::isr_change;
use super::producer_ids;
use super::raft_storage::DiskStorage;
use super::state_machine::{self, Outcome};
use super::transport::Transport;
use super::validate;
use super::ControlConfig;

/// How often raft-rs is ticked.
const TICK: Duration = Duration::from_millis(100);
/// Election timeout in ticks (randomized by raft-rs between this and twice this).
const ELECTION_TICKS: usize = 10;
/// Leader heartbeat interval in ticks.
const HEARTBEAT_TICKS: usize = 1;
/// How long a client's proposal may take to commit before it is answered REQUEST_TIMED_OUT.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node's own proposals wait before they may be retried.
const INTERNAL_RETRY: Duration = Duration::from_secs(3);
/// The image is snapshotted, and the Raft log compacted, every this many applied entries.
pub const SNAPSHOT_EVERY: u64 = 1000;
/// How often a broker heartbeats to the controller.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// `broker.session.timeout.ms`: a broker silent for this long is fenced.
const SESSION_TIMEOUT: Duration = Duration::from_secs(9);
/// A fenced broker is unfenced once it heartbeats again within this.
const FRESH_HEARTBEAT: Duration = Duration::from_secs(3);
/// How often the controller looks for partitions whose preferred leader can lead again.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Inputs handled between two looks at the clock and at raft-rs's `Ready`.
const MAX_REQUESTS_PER_ROUND: usize = 256;
/// How long a controlled shutdown waits for leadership to move away.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a failed compaction (a full disk), the next attempt waits this long; the log just grows.
const COMPACT_RETRY: Duration = Duration::from_secs(30);

/// Input to the control thread: from handles (client requests, shutdown) and from peers.
pub enum Request {
    Client {
        request: ClientRequest,
        reply: Reply,
    },
    Raft(Box<Message>),
    Rpc {
        from: i32,
        rpc: Box<Rpc>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// Tests: stop at once, as a killed process would (no controlled shutdown).
    #[cfg(test)]
    Crash,
}

/// Where a request's answer goes once every part of it is decided.
pub enum Reply {
    /// A local caller.
    Local(Sender<ClientResult>),
    /// A broker that forwarded the request to this controller.
    Remote { to: i32, id: u64 },
    /// The controller's own proposal, keyed so that it is not proposed twice at once.
    Internal(String),
}

/// A request whose parts (one proposal each) are being decided.
struct Batch {
    slots: Vec<Option<Result<Outcome, ControlError>>>,
    kind: ResultKind,
    deadline: Instant,
    reply: Reply,
}

/// A request this node forwarded to the controller.
struct Forwarded {
    reply: Sender<ClientResult>,
    kind: ResultKind,
    parts: usize,
    deadline: Instant,
}

/// What the controller knows of a broker's session.
struct Session {
    heartbeat: Heartbeat,
    last_seen: Instant,
}

/// raft-rs ids must be non-zero; broker ids start at 0.
pub fn raft_id(node_id: i32) -> u64 {
    node_id as u64 + 1
}

fn node_id_of(raft_id: u64) -> Option<i32> {
    (raft_id != 0).then(|| (raft_id - 1) as i32)
}

pub struct ControlNode {
    config: ControlConfig,
    incarnation: u64,
    raw: RawNode<DiskStorage>,
    requests: Receiver<Request>,
    transport: Option<Transport>,
    published: Arc<Published>,
    /// The applied image (its `controller_id` as last published).
    image: Arc<MetadataImage>,
    applied_since_snapshot: u64,
    next_seq: u64,
    next_batch: u64,
    /// Proposal sequence number -> (batch, slot).
    pending: HashMap<u64, (u64, usize)>,
    batches: HashMap<u64, Batch>,
    /// Keys of the controller's own proposals in flight.
    internal: HashSet<String>,
    /// Batches decided by entries applied in this `Ready`, answered once the image is published
    /// (a caller that sees its change committed must also see it in `image()`).
    decided: Vec<Batch>,
    next_forward: u64,
    forwarded: HashMap<u64, Forwarded>,
    /// Controller only: broker sessions from heartbeats.
    sessions: HashMap<i32, Session>,
    /// When this node last became the controller (brokers get a full session from then).
    controller_since: Option<Instant>,
    last_heartbeat: Option<Instant>,
    last_rebalance: Option<Instant>,
    /// A controlled shutdown in progress: its reply and deadline.
    shutting_down: Option<(Sender<()>, Instant)>,
    /// Signalled once this broker is registered and the cluster id is set.
    ready: Option<mpsc::Sender<Result<(), ControlError>>>,
    /// Requests that arrived while a write was being retried (`persist`), handled first.
    deferred: VecDeque<Request>,
    /// A compaction failed: none is tried before this.
    compact_after: Option<Instant>,
    /// Fault injection (`SLOW_FOLLOWER_PUBLISH_ENV`): how late a node that is not the controller
    /// publishes a changed image, and when the pending one is due.
    publish_delay: Option<Duration>,
    publish_due: Option<Instant>,
}

/// Fault injection for tests: a node that is not the controller publishes each changed image this
/// many milliseconds late, so that the controller's answer to a forwarded request reaches this
/// broker before its own image has the change (issue 14 "Also": read-your-writes CreateTopics).
pub const SLOW_FOLLOWER_PUBLISH_ENV: &str = "CHRONIK_FAULT_SLOW_FOLLOWER_PUBLISH_MS";

impl ControlNode {
    pub fn new(
        config: ControlConfig,
        incarnation: u64,
        requests: Receiver<Request>,
        inbox: crossbeam_channel::Sender<Request>,
        published: Arc<Published>,
        ready: mpsc::Sender<Result<(), ControlError>>,
    ) -> Result<ControlNode, ControlError> {
        let dir = config.data_dir.join("meta");
        let mut voters = raft::prelude::ConfState {
            voters: vec![raft_id(config.node_id)],
            ..Default::default()
        };
        voters
            .voters
            .extend(config.peers.iter().map(|(id, _)| raft_id(*id)));
        voters.voters.sort_unstable();
        voters.voters.dedup();
        let configured = voters.voters.clone();
        let storage = DiskStorage::open(&dir, voters).map_err(|e| {
            ControlError::Internal(format!(
                "opening the raft storage in {}: {e}",
                dir.display()
            ))
        })?;
        let stored = &storage.conf_state().voters;
        if *stored != configured {
            // Membership changes are not supported: a node restarted with other peers (or
            // none) could never reach a quorum of the stored voters.
            let ids = |raft_ids: &[u64]| raft_ids.iter().map(|id| id - 1).collect::<Vec<_>>();
            return Err(ControlError::InvalidRequest(format!(
                "the metadata in {} belongs to a cluster of nodes {:?}, but this node was started with nodes {:?}; start it with the same peers",
                dir.display(),
                ids(stored),
                ids(&configured)
            )));
        }
        let mut image = MetadataImage::default();
        let snapshot = storage.latest_snapshot();
        let applied = snapshot.get_metadata().index;
        if applied > 0 {
            image = decode_image(snapshot)?;
        }
        let raft_config = raft::Config {
            id: raft_id(config.node_id),
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| ControlError::Internal(format!("raft config: {e}")))?;
        let raw = RawNode::new(
            &raft_config,
            storage,
            &super::raft_logger::logger(config.node_id),
        )
        .map_err(|e| ControlError::Internal(format!("starting raft: {e}")))?;
        let transport = if config.peers.iter().any(|(id, _)| *id != config.node_id) {
            let listen = config.rpc.ok_or_else(|| {
                ControlError::InvalidRequest("cluster mode needs an rpc address".into())
            })?;
            Some(
                Transport::start(config.node_id, listen, &config.peers, inbox).map_err(|e| {
                    ControlError::Internal(format!(
                        "starting the control transport on {listen}: {e}"
                    ))
                })?,
            )
        } else {
            None
        };
        Ok(ControlNode {
            config,
            incarnation,
            raw,
            requests,
            transport,
            published,
            image: Arc::new(image),
            applied_since_snapshot: 0,
            next_seq: 1,
            next_batch: 1,
            pending: HashMap::new(),
            batches: HashMap::new(),
            internal: HashSet::new(),
            decided: Vec::new(),
            next_forward: 1,
            forwarded: HashMap::new(),
            sessions: HashMap::new(),
            controller_since: None,
            last_heartbeat: None,
            last_rebalance: None,
            shutting_down: None,
            ready: Some(ready),
            deferred: VecDeque::new(),
            compact_after: None,
            publish_delay: std::env::var(SLOW_FOLLOWER_PUBLISH_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            publish_due: None,
        })
    }

    fn is_controller(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn controller_id(&self) -> Option<i32> {
        node_id_of(self.raw.raft.leader_id)
    }

    /// Runs until shutdown or until every handle is gone.
    pub fn run(mut self) {
        if self.transport.is_none() {
            // A single-voter group needs no election timeout: it is the majority.
            if let Err(e) = self.raw.campaign() {
                tracing::error!("raft campaign failed: {e}");
            }
        }
        let mut next_tick = Instant::now() + TICK;
        let mut shutdown_now = None;
        'run: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let next = match self.deferred.pop_front() {
                Some(request) => Ok(request),
                None => self.requests.recv_timeout(wait),
            };
            match next {
                Ok(request) => {
                    // Take what is queued, but a bounded amount, so that ticks stay on time.
                    let mut request = Some(request);
                    let mut handled = 0;
                    while let Some(next) = request.take() {
                        if let Some(reply) = self.handle_request(next) {
                            shutdown_now = Some(reply);
                            break 'run;
                        }
                        handled += 1;
                        if handled < MAX_REQUESTS_PER_ROUND {
                            request = self
                                .deferred
                                .pop_front()
                                .or_else(|| self.requests.try_recv().ok());
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                self.raw.mut_store().maintain_reserve();
                next_tick += TICK;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + TICK;
                }
                self.expire();
            }
            if let Err(e) = self.on_ready() {
                // The storage could not persist: this node must not take part any more.
                tracing::error!("control node stops: {e}");
                self.fail_ready(e);
                break;
            }
            self.heartbeat();
            self.controller_duties();
            if let Err(e) = self.on_ready() {
                tracing::error!("control node stops: {e}");
                self.fail_ready(e);
                break;
            }
            if self.publish_due.is_some() {
                self.publish();
            }
            if self.shutdown_done() {
                shutdown_now = self.shutting_down.take().map(|(reply, _)| reply);
                break;
            }
        }
        self.stop(shutdown_now);
    }

    fn stop(mut self, shutdown_reply: Option<Sender<()>>) {
        for batch in std::mem::take(&mut self.decided) {
            self.answer(batch);
        }
        let not_controller = ControlError::NotController {
            controller_id: None,
        };
        let batches: Vec<u64> = self.batches.keys().copied().collect();
        for id in batches {
            if let Some(mut batch) = self.batches.remove(&id) {
                for slot in batch.slots.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(not_controller.clone()));
                }
                self.answer(batch);
            }
        }
        for (_, forwarded) in self.forwarded.drain() {
            let result =
                ClientResult::all_failed(forwarded.kind, forwarded.parts, not_controller.clone());
            let _ = forwarded.reply.try_send(result);
        }
        self.published.close();
        let node_id = self.config.node_id;
        let shutdown_reply =
            shutdown_reply.or_else(|| self.shutting_down.take().map(|(reply, _)| reply));
        drop(self);
        tracing::info!(node_id, "control node stopped");
        if let Some(reply) = shutdown_reply {
            let _ = reply.try_send(());
        }
    }

    fn fail_ready(&mut self, error: ControlError) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
    }

    /// Handles one input; returns the reply channel of a shutdown that should happen now.
    fn handle_request(&mut self, request: Request) -> Option<Sender<()>> {
        match request {
            Request::Client { request, reply } => self.handle_client(request, reply),
            Request::Raft(message) => {
                if let Some(why) = unfit_for_step(&message, self.config.node_id) {
                    tracing::warn!(from = message.from, "raft message dropped: {why}");
                } else if let Err(e) = self.raw.step(*message) {
                    tracing::debug!("raft message rejected: {e}");
                }
            }
            Request::Rpc { from, rpc } => self.handle_rpc(from, *rpc),
            #[cfg(test)]
            Request::Crash => {
                let (reply, _) = async_channel::bounded(1);
                return Some(reply);
            }
            Request::Shutdown { reply } => {
                let others_alive = self
                    .image
                    .live_brokers()
                    .any(|b| b.id != self.config.node_id);
                if self.transport.is_none() || !others_alive || self.shutting_down.is_some() {
                    return Some(reply);
                }
                // Controlled shutdown: tell the controller (the next heartbeat carries it) and
                // wait until our leaderships have moved.
                tracing::info!(node_id = self.config.node_id, "controlled shutdown");
                self.shutting_down = Some((reply, Instant::now() + SHUTDOWN_GRACE));
                self.last_heartbeat = None;
            }
        }
        None
    }

    fn handle_rpc(&mut self, from: i32, rpc: Rpc) {
        match rpc {
            Rpc::Heartbeat(heartbeat) => {
                if self.is_controller() {
                    self.record_heartbeat(heartbeat);
                }
            }
            Rpc::Forward { id, request } => {
                self.handle_client(request, Reply::Remote { to: from, id })
            }
            Rpc::Answer { id, result } => {
                if let Some(forwarded) = self.forwarded.remove(&id) {
                    let _ = forwarded.reply.try_send(result);
                }
            }
        }
    }

    /// A client request: planned and proposed here if this node is the controller, else
    /// forwarded to the controller (a forwarded request is never forwarded again).
    fn handle_client(&mut self, request: ClientRequest, reply: Reply) {
        let kind = request.kind();
        if !self.is_controller() {
            let controller = self.controller_id();
            if let (Reply::Local(sender), Some(controller), Some(transport)) =
                (&reply, controller, &self.transport)
            {
                let id = self.next_forward;
                self.next_forward += 1;
                transport.send_rpc(
                    controller,
                    &Rpc::Forward {
                        id,
                        request: request.clone(),
                    },
                );
                tracing::debug!(id, controller, "request forwarded to the controller");
                self.forwarded.insert(
                    id,
                    Forwarded {
                        reply: sender.clone(),
                        kind,
                        parts: request.parts(),
                        deadline: Instant::now() + PROPOSAL_TIMEOUT,
                    },
                );
                return;
            }
            let error = ControlError::NotController {
                controller_id: controller,
            };
            let parts = request.parts();
            self.deliver(reply, ClientResult::all_failed(kind, parts, error));
            return;
        }
        let validate_only = request.validate_only();
        let plans = self.plan(request);
        self.submit(plans, kind, validate_only, reply);
    }

    /// Turns a client request into one command (or error) per part, against the current image.
    fn plan(&self, request: ClientRequest) -> Vec<Result<Command, ControlError>> {
        let image = &self.image;
        match request {
            ClientRequest::CreateTopics { topics, .. } => {
                let duplicates = validate::duplicate_names(&topics);
                topics
                    .iter()
                    .map(|topic| {
                        if duplicates.contains(&topic.name) {
                            return Err(ControlError::InvalidRequest(format!(
                                "topic {:?} appears more than once in the request",
                                topic.name
                            )));
                        }
                        validate::create_topic(image, topic, &self.config.defaults, Uuid::new_v4())
                    })
                    .collect()
            }
            ClientRequest::DeleteTopics { names } => names
                .iter()
                .map(|name| validate::delete_topic(image, name))
                .collect(),
            ClientRequest::CreatePartitions { requests, .. } => requests
                .iter()
                .map(|(topic, total)| validate::create_partitions(image, topic, *total))
                .collect(),
            ClientRequest::AlterTopicConfigs { topic, ops, .. } => {
                vec![validate::alter_topic_configs(image, &topic, ops)]
            }
            ClientRequest::AlterPartitionIsr {
                topic,
                partition,
                leader_epoch,
                isr,
                basis,
            } => {
                vec![validate::alter_partition_isr(
                    image,
                    &topic,
                    partition,
                    leader_epoch,
                    isr,
                    basis,
                )]
            }
            ClientRequest::AllocateProducerIds {
                broker_id,
                incarnation,
            } => vec![producer_ids::plan(image, broker_id, incarnation)],
        }
    }

    /// Proposes each planned command (or, for `validate_only`, works out what it would do) and
    /// answers once every part is decided. Only the controller proposes.
    fn submit(
        &mut self,
        plans: Vec<Result<Command, ControlError>>,
        kind: ResultKind,
        validate_only: bool,
        reply: Reply,
    ) {
        let controller = self.is_controller();
        let not_controller = ControlError::NotController {
            controller_id: self.controller_id(),
        };
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let timeout = match &reply {
            Reply::Internal(key) => {
                self.internal.insert(key.clone());
                INTERNAL_RETRY
            }
            _ => PROPOSAL_TIMEOUT,
        };
        let mut batch = Batch {
            slots: Vec::with_capacity(plans.len()),
            kind,
            deadline: Instant::now() + timeout,
            reply,
        };
        for (slot, plan) in plans.into_iter().enumerate() {
            let decided = match plan {
                _ if !controller => Some(Err(not_controller.clone())),
                Err(error) => Some(Err(error)),
                Ok(command) if validate_only => {
                    Some(state_machine::apply(&self.image, self.image.version, &command).1)
                }
                Ok(command) => match self.propose(command) {
                    Ok(seq) => {
                        self.pending.insert(seq, (batch_id, slot));
                        None
                    }
                    Err(error) => Some(Err(error)),
                },
            };
            batch.slots.push(decided);
        }
        if batch.slots.iter().all(Option::is_some) {
            self.answer(batch);
        } else {
            self.batches.insert(batch_id, batch);
        }
    }

    /// Proposes one of the controller's own commands unless the same key is in flight.
    fn propose_internal(&mut self, key: String, command: Command) {
        if !self.internal.contains(&key) {
            tracing::debug!(%key, "controller proposes");
            self.submit(
                vec![Ok(command)],
                ResultKind::Unit,
                false,
                Reply::Internal(key),
            );
        }
    }

    fn propose(&mut self, command: Command) -> Result<u64, ControlError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let envelope = Envelope {
            proposal: Some(ProposalId {
                node: self.config.node_id,
                incarnation: self.incarnation,
                seq,
            }),
            command,
        };
        let data = envelope.encode()?;
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                self.published.count_proposal();
                tracing::debug!(seq, command = ?envelope.command, "proposed");
                Ok(seq)
            }
            Err(raft::Error::ProposalDropped) => Err(ControlError::NotController {
                controller_id: self.controller_id(),
            }),
            Err(e) => Err(ControlError::Internal(format!("proposing: {e}"))),
        }
    }

    /// Answers a decided batch.
    fn answer(&mut self, batch: Batch) {
        let outcomes = batch
            .slots
            .into_iter()
            .map(|slot| slot.unwrap_or(Err(ControlError::Timeout)))
            .collect();
        let result = ClientResult::from_outcomes(batch.kind, outcomes);
        self.deliver(batch.reply, result);
    }

    fn deliver(&mut self, reply: Reply, result: ClientResult) {
        match reply {
            Reply::Local(sender) => {
                let _ = sender.try_send(result);
            }
            Reply::Remote { to, id } => {
                if let Some(transport) = &self.transport {
                    transport.send_rpc(to, &Rpc::Answer { id, result });
                }
            }
            Reply::Internal(key) => {
                self.internal.remove(&key);
                match result {
                    // Leadership moved on while it was in flight; the next controller decides.
                    ClientResult::Unit(Err(e @ ControlError::NotController { .. })) => {
                        tracing::debug!(%key, "controller's own proposal dropped: {e}")
                    }
                    ClientResult::Unit(Err(e)) => {
                        tracing::warn!(%key, "controller's own proposal failed: {e}")
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends this broker's heartbeat to the controller (or records it, on the controller).
    fn heartbeat(&mut self) {
        if self
            .last_heartbeat
            .is_some_and(|at| at.elapsed() < HEARTBEAT_INTERVAL)
        {
            return;
        }
        let Some(controller) = self.controller_id() else {
            return;
        };
        let heartbeat = Heartbeat {
            id: self.config.node_id,
            incarnation: self.incarnation,
            host: self.config.kafka_endpoint.0.clone(),
            port: self.config.kafka_endpoint.1,
            rack: self.config.rack.clone(),
            rpc: self.config.rpc,
            shutting_down: self.shutting_down.is_some(),
        };
        self.last_heartbeat = Some(Instant::now());
        if self.is_controller() {
            self.record_heartbeat(heartbeat);
        } else if let Some(transport) = &self.transport {
            transport.send_rpc(controller, &Rpc::Heartbeat(heartbeat));
        }
    }

    fn record_heartbeat(&mut self, heartbeat: Heartbeat) {
        let id = heartbeat.id;
        self.sessions.insert(
            id,
            Session {
                heartbeat,
                last_seen: Instant::now(),
            },
        );
    }

    /// The controller's duties: the cluster id, registrations, fencing and unfencing, and
    /// preferred leaders.
    fn controller_duties(&mut self) {
        if !self.is_controller() {
            self.controller_since = None;
            self.sessions.clear();
            return;
        }
        let since = *self.controller_since.get_or_insert_with(Instant::now);
        let image = Arc::clone(&self.image);
        if image.cluster_id.is_empty() && !self.internal.contains("cluster-id") {
            let cluster_id = new_cluster_id();
            tracing::info!(%cluster_id, "initializing the cluster");
            self.propose_internal("cluster-id".into(), Command::InitCluster { cluster_id });
        }
        let mut commands = Vec::new();
        for session in self.sessions.values() {
            let hb = &session.heartbeat;
            let fresh = session.last_seen.elapsed() < FRESH_HEARTBEAT;
            match image.brokers.get(&hb.id) {
                Some(broker) if broker.incarnation == hb.incarnation => {
                    if broker.fenced && fresh && !hb.shutting_down {
                        let command = Command::UnfenceBroker {
                            id: hb.id,
                            incarnation: hb.incarnation,
                        };
                        commands.push((format!("unfence-{}", hb.id), command));
                    } else if !broker.fenced && hb.shutting_down {
                        let command = Command::FenceBroker {
                            id: hb.id,
                            incarnation: hb.incarnation,
                        };
                        commands.push((format!("fence-{}", hb.id), command));
                    }
                }
                _ if !hb.shutting_down => {
                    let command = Command::RegisterBroker {
                        id: hb.id,
                        host: hb.host.clone(),
                        port: hb.port,
                        rack: hb.rack.clone(),
                        rpc: hb.rpc,
                        incarnation: hb.incarnation,
                    };
                    commands.push((format!("register-{}-{}", hb.id, hb.incarnation), command));
                }
                _ => {}
            }
        }
        for broker in image.live_brokers() {
            let last_seen = self
                .sessions
                .get(&broker.id)
                .filter(|s| s.heartbeat.incarnation == broker.incarnation)
                .map_or(since, |s| s.last_seen.max(since));
            let key = format!("fence-{}", broker.id);
            if last_seen.elapsed() > SESSION_TIMEOUT && !self.internal.contains(&key) {
                tracing::warn!(broker = broker.id, "broker session expired; fencing it");
                let command = Command::FenceBroker {
                    id: broker.id,
                    incarnation: broker.incarnation,
                };
                commands.push((key, command));
            }
        }
        // Preferred leaders: a scan of every partition, so at most once per interval.
        let rebalance_due = self
            .last_rebalance
            .is_none_or(|at| at.elapsed() >= REBALANCE_INTERVAL);
        if rebalance_due {
            self.last_rebalance = Some(Instant::now());
        }
        let leaving: HashSet<i32> = self
            .sessions
            .values()
            .filter(|s| s.heartbeat.shutting_down)
            .map(|s| s.heartbeat.id)
            .collect();
        for topic in image.topics.values().filter(|_| rebalance_due) {
            for partition in &topic.partitions {
                let Some(&preferred) = partition.replicas.first() else {
                    continue;
                };
                if partition.leader != preferred
                    && image.is_live(preferred)
                    && !leaving.contains(&preferred)
                    && partition.isr.contains(&preferred)
                {
                    let command = Command::ChangePartition {
                        topic: topic.name.clone(),
                        partition: partition.index,
                        leader_epoch: partition.leader_epoch,
                        leader: Some(preferred),
                        isr: None,
                        // Checked again at apply: a restart or fence of `preferred` first makes
                        // it stale (issue 14 item 3).
                        basis: Some(isr_change::basis_from_image(
                            &image,
                            partition,
                            None,
                            Some(preferred),
                        )),
                    };
                    commands.push((
                        format!(
                            "leader-{}-{}-{}",
                            topic.name, partition.index, partition.leader_epoch
                        ),
                        command,
                    ));
                }
            }
        }
        for (key, command) in commands {
            self.propose_internal(key, command);
        }
    }

    /// Whether a controlled shutdown may finish: our leaderships moved (we are fenced) and, if
    /// we were the controller, leadership of the metadata group moved too; or time is up.
    fn shutdown_done(&mut self) -> bool {
        let Some((_, deadline)) = &self.shutting_down else {
            return false;
        };
        if Instant::now() >= *deadline {
            tracing::warn!("controlled shutdown timed out; stopping anyway");
            return true;
        }
        if self.controller_id().is_none() {
            // No controller (the others are gone too, or an election): nobody can move our
            // leaderships now; the next controller treats us as a broker whose session ended.
            tracing::info!("controlled shutdown: no controller to hand leadership to");
            return true;
        }
        let fenced = self
            .image
            .brokers
            .get(&self.config.node_id)
            .is_none_or(|b| b.fenced);
        if !fenced {
            return false;
        }
        if !self.is_controller() {
            return true;
        }
        let me = self.config.node_id;
        let target = self
            .image
            .live_brokers()
            .map(|b| b.id)
            .find(|id| *id != me && self.config.peers.iter().any(|(p, _)| p == id));
        match target {
            Some(target) => {
                if self.raw.raft.lead_transferee != Some(raft_id(target)) {
                    tracing::info!(target, "handing the controller role over");
                    self.raw.transfer_leader(raft_id(target));
                }
                false
            }
            None => true,
        }
    }

    /// Answers REQUEST_TIMED_OUT for parts that did not commit in time (they may still commit
    /// later; a retry then finds the change made), and for forwarded requests left unanswered.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.pending.retain(|_, (batch, _)| *batch != id);
            if let Some(mut batch) = self.batches.remove(&id) {
                for slot in batch.slots.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(ControlError::Timeout));
                }
                self.answer(batch);
            }
        }
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(forwarded) = self.forwarded.remove(&id) {
                let result = ClientResult::all_failed(
                    forwarded.kind,
                    forwarded.parts,
                    ControlError::Timeout,
                );
                let _ = forwarded.reply.try_send(result);
            }
        }
    }

    /// Handles a raft-rs `Ready`: persist, send, apply, advance.
    fn on_ready(&mut self) -> Result<(), ControlError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        let leadership_changed = ready.ss().is_some();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.raw
                .mut_store()
                .apply_snapshot(&snapshot)
                .map_err(|e| ControlError::Internal(format!("installing a snapshot: {e}")))?;
            let mut image = decode_image(&snapshot)?;
            image.controller_id = self.controller_id();
            self.image = Arc::new(image);
            self.applied_since_snapshot = 0;
        }
        if !ready.entries().is_empty() {
            let entries = ready.entries();
            let raw = &mut self.raw;
            persist::retry("raft entries", &self.requests, &mut self.deferred, || {
                raw.mut_store().append(entries)
            })
            .map_err(|stop| self.interrupted(stop))?;
        }
        if let Some(hard_state) = ready.hs() {
            let hard_state = hard_state.clone();
            let raw = &mut self.raw;
            persist::retry(
                "the raft hard state",
                &self.requests,
                &mut self.deferred,
                || raw.mut_store().set_hard_state(&hard_state),
            )
            .map_err(|stop| self.interrupted(stop))?;
        }
        self.send(ready.take_messages());
        self.send(ready.take_persisted_messages());
        let committed = ready.take_committed_entries();
        self.apply(committed);
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw
                .mut_store()
                .set_commit(commit)
                .map_err(|e| ControlError::Internal(format!("persisting the commit index: {e}")))?;
        }
        self.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed);
        self.raw.advance_apply();
        self.maybe_compact()?;
        if leadership_changed && self.image.controller_id != self.controller_id() {
            tracing::info!(
                controller = ?self.controller_id(),
                term = self.raw.raft.term,
                is_controller = self.is_controller(),
                "controller changed"
            );
        }
        self.publish();
        // After publishing: callers (and `start`) must see their change in `image()`.
        for batch in std::mem::take(&mut self.decided) {
            self.answer(batch);
        }
        self.check_ready();
        Ok(())
    }

    /// Sends raft messages to peers (a single-node group has none).
    fn send(&mut self, messages: Vec<Message>) {
        match &self.transport {
            Some(transport) => {
                for message in &messages {
                    transport.send_raft(message);
                }
            }
            None => {
                for message in messages {
                    tracing::debug!(to = message.to, kind = ?message.get_msg_type(), "no transport; message dropped");
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut image = Arc::clone(&self.image);
        for entry in entries {
            self.applied_since_snapshot += 1;
            if entry.get_entry_type() != EntryType::EntryNormal {
                tracing::error!(
                    index = entry.index,
                    "membership changes are not supported; entry skipped"
                );
                Arc::make_mut(&mut image).version = entry.index;
                continue;
            }
            if entry.data.is_empty() {
                // A new leader's empty entry.
                Arc::make_mut(&mut image).version = entry.index;
                continue;
            }
            let envelope = match Envelope::decode(&entry.data) {
                Ok(envelope) => envelope,
                Err(e) => {
                    tracing::error!(index = entry.index, "undecodable raft entry skipped: {e}");
                    Arc::make_mut(&mut image).version = entry.index;
                    continue;
                }
            };
            let (next, result) = state_machine::apply(&image, entry.index, &envelope.command);
            image = Arc::new(next);
            match &result {
                Ok(Outcome::TopicCreated(topic)) if self.proposed_here(envelope.proposal) => {
                    // Once per topic, on the controller that proposed it: tests and operators
                    // count these lines.
                    tracing::info!(
                        index = entry.index,
                        topic = %topic.name,
                        id = %topic.id,
                        partitions = topic.partitions.len(),
                        "topic created"
                    )
                }
                Ok(_) => {
                    tracing::debug!(index = entry.index, command = ?envelope.command, "applied")
                }
                Err(e) => {
                    tracing::info!(index = entry.index, command = ?envelope.command, "command rejected: {e}")
                }
            }
            self.resolve(envelope.proposal, result);
        }
        self.image = image;
    }

    /// Whether this node, in this incarnation, proposed the entry.
    fn proposed_here(&self, proposal: Option<ProposalId>) -> bool {
        proposal.is_some_and(|p| p.node == self.config.node_id && p.incarnation == self.incarnation)
    }

    /// Decides the part of a batch an applied entry answers, if this node (this incarnation)
    /// proposed it.
    fn resolve(&mut self, proposal: Option<ProposalId>, result: Result<Outcome, ControlError>) {
        let Some(proposal) = proposal else { return };
        if proposal.node != self.config.node_id || proposal.incarnation != self.incarnation {
            return;
        }
        let Some((batch_id, slot)) = self.pending.remove(&proposal.seq) else {
            return;
        };
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return;
        };
        batch.slots[slot] = Some(result);
        if batch.slots.iter().all(Option::is_some) {
            if let Some(batch) = self.batches.remove(&batch_id) {
                self.decided.push(batch);
            }
        }
    }

    fn check_ready(&mut self) {
        let registered = self
            .image
            .brokers
            .get(&self.config.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced);
        if registered && !self.image.cluster_id.is_empty() {
            if let Some(ready) = self.ready.take() {
                tracing::info!(
                    node_id = self.config.node_id,
                    cluster_id = %self.image.cluster_id,
                    version = self.image.version,
                    "broker registered"
                );
                let _ = ready.send(Ok(()));
            }
        }
    }

    /// A retried write gave up because a shutdown was asked for: the node stops, and `stop`
    /// answers the shutdown.
    fn interrupted(&mut self, stop: persist::Interrupted) -> ControlError {
        self.shutting_down = Some((stop.shutdown, Instant::now()));
        ControlError::Internal(format!("{} (shutting down)", stop.error))
    }

    /// Compacts the raft log into a snapshot every `SNAPSHOT_EVERY` entries. A failure (a full
    /// disk) is not fatal: the storage is unchanged, and the log grows until a later attempt.
    fn maybe_compact(&mut self) -> Result<(), ControlError> {
        if self.applied_since_snapshot < SNAPSHOT_EVERY
            || self.compact_after.is_some_and(|at| Instant::now() < at)
        {
            return Ok(());
        }
        let data = serde_json::to_vec(&*self.image)
            .map_err(|e| ControlError::Internal(format!("encoding the image snapshot: {e}")))?;
        let applied = self.image.version;
        match self.raw.mut_store().compact(applied, data) {
            Ok(()) => {
                self.applied_since_snapshot = 0;
                self.compact_after = None;
            }
            Err(e) => {
                tracing::warn!(
                    "compacting the raft log failed, retrying in {COMPACT_RETRY:?}: {e}"
                );
                self.compact_after = Some(Instant::now() + COMPACT_RETRY);
            }
        }
        Ok(())
    }

    /// Publishes the image if it changed (new entries applied, or a new controller).
    fn publish(&mut self) {
        let controller_id = self.controller_id();
        if self.image.controller_id != controller_id {
            Arc::make_mut(&mut self.image).controller_id = controller_id;
        }
        if !Arc::ptr_eq(&self.published.image(), &self.image) {
            if let (Some(delay), false) = (self.publish_delay, self.is_controller()) {
                let due = *self
                    .publish_due
                    .get_or_insert_with(|| Instant::now() + delay);
                if Instant::now() < due {
                    return; // the run loop calls again every tick
                }
            }
            self.publish_due = None;
            self.published.publish(Arc::clone(&self.image));
        }
    }
}

fn decode_image(snapshot: &Snapshot) -> Result<MetadataImage, ControlError> {
    let mut image: MetadataImage = serde_json::from_slice(&snapshot.data)
        .map_err(|e| ControlError::Internal(format!("decoding the image snapshot: {e}")))?;
    image.version = snapshot.get_metadata().index;
    Ok(image)
}

/// A Kafka-style cluster id: 16 random bytes in URL-safe base64 without padding (22 chars).
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let a = new_cluster_id();
        let b = new_cluster_id();
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn raft_ids_are_non_zero() {
        assert_eq!(raft_id(0), 1);
        assert_eq!(node_id_of(raft_id(7)), Some(7));
        assert_eq!(node_id_of(0), None);
    }
}

/// Why a raft message from the network must not reach `RawNode::step`, if it must not. raft-rs
/// takes a message of term 0 for a local one: a vote request of term 0 from a peer makes it answer
/// with term 0, which it asserts never happens (the fuzzer's control-thread panic). Only proposals
/// and read-index requests travel with term 0; local message types never travel.
fn unfit_for_step(message: &raft::eraftpb::Message, me: i32) -> Option<&'static str> {
    // `me` is this broker's node id; raft ids are node ids + 1 (`raft_id`).
    use raft::eraftpb::MessageType;
    if message.to != raft_id(me) {
        return Some("addressed to another node");
    }
    if raft::raw_node::is_local_msg(message.get_msg_type()) {
        return Some("a local message type");
    }
    let term_zero_allowed = matches!(
        message.get_msg_type(),
        MessageType::MsgPropose | MessageType::MsgReadIndex
    );
    if message.term == 0 && !term_zero_allowed {
        return Some("term 0");
    }
    None
}

#[cfg(test)]
mod step_filter_tests {
    use super::*;
    use raft::eraftpb::{Message, MessageType};

    fn message(kind: MessageType, term: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.term = term;
        m.to = to;
        m.from = 2;
        m
    }

    #[test]
    fn only_network_messages_with_a_term_reach_the_raft_node() {
        // Node 1 is raft id 2.
        let me = raft_id(1);
        assert!(unfit_for_step(&message(MessageType::MsgRequestPreVote, 0, me), 1).is_some());
        assert!(unfit_for_step(&message(MessageType::MsgRequestVote, 0, me), 1).is_some());
        assert!(unfit_for_step(&message(MessageType::MsgAppend, 3, 1), 1).is_some());
        assert!(unfit_for_step(&message(MessageType::MsgHup, 3, me), 1).is_some());
        assert!(unfit_for_step(&message(MessageType::MsgRequestPreVote, 3, me), 1).is_none());
        assert!(unfit_for_step(&message(MessageType::MsgPropose, 0, me), 1).is_none());
        assert!(unfit_for_step(&message(MessageType::MsgHeartbeat, 2, me), 1).is_none());
    }
}
