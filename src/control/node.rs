//! The control node: one thread (pinned to the control core when asked) that owns the raft-rs
//! `RawNode`, ticks it, turns client requests into proposals on the controller, handles every
//! `Ready` in raft-rs's order (persist entries and hard state, send messages, apply committed
//! entries, advance), applies committed commands to the metadata image, publishes each image,
//! and answers each proposer once its entry is applied.

use std::collections::HashMap;
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
use super::handle::Published;
use super::image::{MetadataImage, TopicInfo};
use super::raft_storage::DiskStorage;
use super::state_machine::{self, Outcome};
use super::topic_config::ConfigOp;
use super::validate;
use super::{ControlConfig, NewTopic};

/// How often raft-rs is ticked.
const TICK: Duration = Duration::from_millis(100);
/// Election timeout in ticks (randomized by raft-rs between this and twice this).
const ELECTION_TICKS: usize = 10;
/// Leader heartbeat interval in ticks.
const HEARTBEAT_TICKS: usize = 1;
/// How long a client's proposal may take to commit before it is answered REQUEST_TIMED_OUT.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node's own proposals (registration, cluster id) wait before they are retried.
const INTERNAL_RETRY: Duration = Duration::from_secs(3);
/// The image is snapshotted, and the Raft log compacted, every this many applied entries.
pub const SNAPSHOT_EVERY: u64 = 1000;

/// A request to the control thread from a `ControlHandle`.
pub enum Request {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
        reply: Sender<Vec<Result<Arc<TopicInfo>, ControlError>>>,
    },
    DeleteTopics {
        names: Vec<String>,
        reply: Sender<Vec<Result<Uuid, ControlError>>>,
    },
    CreatePartitions {
        requests: Vec<(String, i32)>,
        validate_only: bool,
        reply: Sender<Vec<Result<(), ControlError>>>,
    },
    AlterTopicConfigs {
        topic: String,
        ops: Vec<ConfigOp>,
        validate_only: bool,
        reply: Sender<Result<(), ControlError>>,
    },
    Shutdown {
        reply: Sender<()>,
    },
}

/// Where the results of a request go once every part of it is decided.
enum Reply {
    Topics(Sender<Vec<Result<Arc<TopicInfo>, ControlError>>>),
    Deleted(Sender<Vec<Result<Uuid, ControlError>>>),
    Units(Sender<Vec<Result<(), ControlError>>>),
    Unit(Sender<Result<(), ControlError>>),
    /// The node's own proposal (registration, cluster id): nobody waits on it.
    Internal(&'static str),
}

/// A request whose parts (one proposal each) are being decided.
struct Batch {
    slots: Vec<Option<Result<Outcome, ControlError>>>,
    deadline: Instant,
    reply: Reply,
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
    published: Arc<Published>,
    /// The applied image (its `controller_id` as last published).
    image: Arc<MetadataImage>,
    applied_since_snapshot: u64,
    next_seq: u64,
    next_batch: u64,
    /// Proposal sequence number -> (batch, slot).
    pending: HashMap<u64, (u64, usize)>,
    batches: HashMap<u64, Batch>,
    /// Batches decided by entries applied in this `Ready`, answered once the image is published
    /// (a caller that sees its change committed must also see it in `image()`).
    decided: Vec<Batch>,
    /// Signalled once this broker is registered and the cluster id is set.
    ready: Option<mpsc::Sender<Result<(), ControlError>>>,
}

impl ControlNode {
    pub fn new(
        config: ControlConfig,
        incarnation: u64,
        requests: Receiver<Request>,
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
        let storage = DiskStorage::open(&dir, voters).map_err(|e| {
            ControlError::Internal(format!(
                "opening the raft storage in {}: {e}",
                dir.display()
            ))
        })?;
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
        Ok(ControlNode {
            config,
            incarnation,
            raw,
            requests,
            published,
            image: Arc::new(image),
            applied_since_snapshot: 0,
            next_seq: 1,
            next_batch: 1,
            pending: HashMap::new(),
            batches: HashMap::new(),
            decided: Vec::new(),
            ready: Some(ready),
        })
    }

    fn is_controller(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn controller_id(&self) -> Option<i32> {
        node_id_of(self.raw.raft.leader_id)
    }

    /// Runs until a shutdown request or until every handle is gone.
    pub fn run(mut self) {
        let sole_voter = self.raw.store().conf_state().voters == vec![raft_id(self.config.node_id)];
        if sole_voter {
            // A single-voter group needs no election timeout: it is the majority.
            if let Err(e) = self.raw.campaign() {
                tracing::error!("raft campaign failed: {e}");
            }
        }
        let mut next_tick = Instant::now() + TICK;
        let mut shutdown_reply = None;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(wait) {
                Ok(request) => {
                    if let Some(reply) = self.handle_request(request) {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    while let Ok(request) = self.requests.try_recv() {
                        if let Some(reply) = self.handle_request(request) {
                            shutdown_reply = Some(reply);
                            break;
                        }
                    }
                    if shutdown_reply.is_some() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += TICK;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + TICK;
                }
                self.expire_batches();
            }
            if let Err(e) = self.on_ready() {
                // The storage could not persist: this node must not take part any more.
                tracing::error!("control node stops: {e}");
                self.fail_ready(e);
                break;
            }
            self.propose_own_changes();
        }
        self.stop(shutdown_reply);
    }

    fn stop(mut self, shutdown_reply: Option<Sender<()>>) {
        for batch in std::mem::take(&mut self.decided) {
            respond(batch);
        }
        let batches: Vec<u64> = self.batches.keys().copied().collect();
        for id in batches {
            if let Some(mut batch) = self.batches.remove(&id) {
                for slot in batch.slots.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(ControlError::NotController {
                        controller_id: None,
                    }));
                }
                respond(batch);
            }
        }
        self.published.close();
        let node_id = self.config.node_id;
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

    /// Handles one request; returns the reply channel of a shutdown request.
    fn handle_request(&mut self, request: Request) -> Option<Sender<()>> {
        match request {
            Request::CreateTopics {
                topics,
                validate_only,
                reply,
            } => {
                let duplicates = validate::duplicate_names(&topics);
                let plans = topics
                    .iter()
                    .map(|topic| {
                        if duplicates.contains(&topic.name) {
                            return Err(ControlError::InvalidRequest(format!(
                                "topic {:?} appears more than once in the request",
                                topic.name
                            )));
                        }
                        validate::create_topic(
                            &self.image,
                            topic,
                            &self.config.defaults,
                            Uuid::new_v4(),
                        )
                    })
                    .collect();
                self.submit(plans, validate_only, Reply::Topics(reply));
            }
            Request::DeleteTopics { names, reply } => {
                let plans = names
                    .iter()
                    .map(|name| validate::delete_topic(&self.image, name))
                    .collect();
                self.submit(plans, false, Reply::Deleted(reply));
            }
            Request::CreatePartitions {
                requests,
                validate_only,
                reply,
            } => {
                let plans = requests
                    .iter()
                    .map(|(topic, total)| validate::create_partitions(&self.image, topic, *total))
                    .collect();
                self.submit(plans, validate_only, Reply::Units(reply));
            }
            Request::AlterTopicConfigs {
                topic,
                ops,
                validate_only,
                reply,
            } => {
                let plan = validate::alter_topic_configs(&self.image, &topic, ops);
                self.submit(vec![plan], validate_only, Reply::Unit(reply));
            }
            Request::Shutdown { reply } => return Some(reply),
        }
        None
    }

    /// Proposes each planned command (or, for `validate_only`, works out what it would do) and
    /// answers once every part is decided. Only the controller proposes.
    fn submit(
        &mut self,
        plans: Vec<Result<Command, ControlError>>,
        validate_only: bool,
        reply: Reply,
    ) {
        let controller = self.is_controller();
        let not_controller = ControlError::NotController {
            controller_id: self.controller_id(),
        };
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let timeout = match reply {
            Reply::Internal(_) => INTERNAL_RETRY,
            _ => PROPOSAL_TIMEOUT,
        };
        let mut batch = Batch {
            slots: Vec::with_capacity(plans.len()),
            deadline: Instant::now() + timeout,
            reply,
        };
        for (slot, plan) in plans.into_iter().enumerate() {
            let decided = match plan {
                Err(error) => Some(Err(error)),
                Ok(_) if !controller => Some(Err(not_controller.clone())),
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
            respond(batch);
        } else {
            self.batches.insert(batch_id, batch);
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
                tracing::debug!(seq, command = ?envelope.command, "proposed");
                Ok(seq)
            }
            Err(raft::Error::ProposalDropped) => Err(ControlError::NotController {
                controller_id: self.controller_id(),
            }),
            Err(e) => Err(ControlError::Internal(format!("proposing: {e}"))),
        }
    }

    /// The controller's own duties: the cluster id, and this broker's registration.
    fn propose_own_changes(&mut self) {
        if !self.is_controller() || self.ready.is_none() {
            return;
        }
        let in_flight = |name| {
            self.batches
                .values()
                .any(|b| matches!(b.reply, Reply::Internal(n) if n == name))
        };
        if self.image.cluster_id.is_empty() && !in_flight("cluster id") {
            let cluster_id = new_cluster_id();
            tracing::info!(%cluster_id, "initializing the cluster");
            self.submit(
                vec![Ok(Command::InitCluster { cluster_id })],
                false,
                Reply::Internal("cluster id"),
            );
        }
        let registered = self
            .image
            .brokers
            .get(&self.config.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation);
        let in_flight = |name| {
            self.batches
                .values()
                .any(|b| matches!(b.reply, Reply::Internal(n) if n == name))
        };
        if !registered && !in_flight("registration") {
            let command = Command::RegisterBroker {
                id: self.config.node_id,
                host: self.config.kafka_endpoint.0.clone(),
                port: self.config.kafka_endpoint.1,
                rack: self.config.rack.clone(),
                rpc: self.config.rpc,
                incarnation: self.incarnation,
            };
            self.submit(vec![Ok(command)], false, Reply::Internal("registration"));
        }
    }

    /// Answers REQUEST_TIMED_OUT for parts that did not commit in time (they may still commit
    /// later; a retry then finds the change made).
    fn expire_batches(&mut self) {
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
                if let Reply::Internal(what) = batch.reply {
                    tracing::warn!(what, "own proposal did not commit in time; retrying");
                }
                respond(batch);
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
            self.raw
                .mut_store()
                .append(ready.entries())
                .map_err(|e| ControlError::Internal(format!("persisting raft entries: {e}")))?;
        }
        if let Some(hard_state) = ready.hs() {
            let hard_state = hard_state.clone();
            self.raw
                .mut_store()
                .set_hard_state(&hard_state)
                .map_err(|e| {
                    ControlError::Internal(format!("persisting the raft hard state: {e}"))
                })?;
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
        if leadership_changed || self.image.controller_id != self.controller_id() {
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
            respond(batch);
        }
        self.check_ready();
        Ok(())
    }

    /// Sends raft messages to peers. Single-node groups have none; the TCP transport between
    /// control cores is cluster mode's.
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            tracing::debug!(to = message.to, kind = ?message.get_msg_type(), "no transport to a peer; message dropped");
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

    /// Answers the proposer of an applied entry, if it is this node (this incarnation).
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

    fn maybe_compact(&mut self) -> Result<(), ControlError> {
        if self.applied_since_snapshot < SNAPSHOT_EVERY {
            return Ok(());
        }
        let data = serde_json::to_vec(&*self.image)
            .map_err(|e| ControlError::Internal(format!("encoding the image snapshot: {e}")))?;
        let applied = self.image.version;
        self.raw
            .mut_store()
            .compact(applied, data)
            .map_err(|e| ControlError::Internal(format!("compacting the raft log: {e}")))?;
        self.applied_since_snapshot = 0;
        Ok(())
    }

    /// Publishes the image if it changed (new entries applied, or a new controller).
    fn publish(&mut self) {
        let controller_id = self.controller_id();
        if self.image.controller_id != controller_id {
            Arc::make_mut(&mut self.image).controller_id = controller_id;
        }
        if !Arc::ptr_eq(&self.published.image(), &self.image) {
            self.published.publish(Arc::clone(&self.image));
        }
    }
}

fn respond(batch: Batch) {
    let results = batch
        .slots
        .into_iter()
        .map(|slot| slot.unwrap_or(Err(ControlError::Timeout)));
    let unexpected =
        |outcome: Outcome| ControlError::Internal(format!("unexpected outcome {outcome:?}"));
    match batch.reply {
        Reply::Topics(reply) => {
            let results = results
                .map(|r| match r {
                    Ok(Outcome::TopicCreated(topic)) => Ok(topic),
                    Ok(other) => Err(unexpected(other)),
                    Err(e) => Err(e),
                })
                .collect();
            let _ = reply.try_send(results);
        }
        Reply::Deleted(reply) => {
            let results = results
                .map(|r| match r {
                    Ok(Outcome::TopicDeleted(id)) => Ok(id),
                    Ok(other) => Err(unexpected(other)),
                    Err(e) => Err(e),
                })
                .collect();
            let _ = reply.try_send(results);
        }
        Reply::Units(reply) => {
            let _ = reply.try_send(results.map(|r| r.map(|_| ())).collect());
        }
        Reply::Unit(reply) => {
            let result = results.map(|r| r.map(|_| ())).next().unwrap_or(Ok(()));
            let _ = reply.try_send(result);
        }
        Reply::Internal(what) => {
            for result in results {
                if let Err(e) = result {
                    tracing::warn!(what, "own proposal failed: {e}");
                }
            }
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
