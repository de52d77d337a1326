//! A partition's leader side: the ack tracker and ISR tracker, and one push task per follower
//! that sends the log's stored batches from where that follower's log ends.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use chronik_shards::log::LogError;
use chronik_shards::runtime::oneshot;
use futures_lite::FutureExt;
use tracing::{debug, info, warn};

use super::ack_tracker::{AckFailure, AckTracker, Completion};
use super::clock;
use super::epoch_lookup;
use super::isr::{IsrChange, IsrTracker};
use super::wire::{self, Frame, WirePartition};
use crate::control::PartitionInfo;
use crate::partitions::offset_watch::OffsetWatch;
use crate::partitions::Partition;
use crate::server::shard::Shard;

/// Most bytes of batches in one push.
const MAX_PUSH_BYTES: usize = 1 << 20;
/// A follower with nothing new to receive still hears from its leader this often (high
/// watermark, liveness, position check).
const HEARTBEAT: Duration = Duration::from_millis(250);
/// Pause before probing again after a follower asked to retry or the link failed.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// How often the leader checks timeouts and the ISR.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

type Waiter = oneshot::Sender<Result<(), AckFailure>>;

/// The leader's `now` for ack deadlines and follower lag: monotonic, so a wall-clock step neither
/// times out every acks=all waiter nor makes every follower look an hour behind.
pub fn now_ms() -> u64 {
    clock::monotonic_ms()
}

/// The deadline, on the `now_ms` clock, of a wait of `timeout` starting now.
pub fn deadline_ms(timeout: Duration) -> u64 {
    clock::monotonic_deadline_ms(timeout)
}

/// Where the leader stands with one follower.
pub struct FollowerCursor {
    pub broker: i32,
    /// The follower's log end as the next push expects it; None until a probe told us.
    next: Cell<Option<i64>>,
    /// The follower asked for the end of this epoch before appending (divergence check).
    check_epoch: Cell<Option<i32>>,
    /// Wait before the next probe.
    back_off: Cell<bool>,
    /// The leader's log start the follower was last told of (LogStart), 0 if none.
    told_log_start: Cell<i64>,
    /// The high watermark the last frame to the follower carried.
    sent_hw: Cell<i64>,
    /// Bumped to wake the push task.
    kick: OffsetWatch,
    /// The follower's incarnation in the last image housekeeping saw (None: not registered
    /// yet): its acknowledgements are credited to it (issue 14 item 3). Cached here so that an
    /// ack does not lock the broker-wide image.
    incarnation: Cell<Option<u64>>,
}

impl FollowerCursor {
    fn kick(&self) {
        self.kick.advance(self.kick.get() + 1);
    }

    /// The link to the follower broke: start over with a probe.
    pub fn reset(&self) {
        self.next.set(None);
        self.back_off.set(true);
        self.told_log_start.set(0);
        self.kick();
    }
}

/// The state of a partition this broker leads in `epoch`.
pub struct LeaderState {
    pub me: i32,
    pub epoch: i32,
    pub part: WirePartition,
    topic: String,
    tracker: RefCell<AckTracker<Waiter>>,
    isr: RefCell<IsrTracker>,
    pub followers: Vec<Rc<FollowerCursor>>,
    /// Advanced on every append, so push tasks wake for new data.
    pub appended: OffsetWatch,
    stopped: Cell<bool>,
    min_insync: Cell<usize>,
}

impl LeaderState {
    /// Becomes leader of `partition` as `info` says and starts pushing to its followers.
    pub fn start(
        shard: &Rc<Shard>,
        partition: &Rc<Partition>,
        info: &PartitionInfo,
        min_insync: i32,
        lag_max_ms: u64,
    ) -> Rc<LeaderState> {
        let me = shard.node_id;
        let durable = partition.log.durable_end_offset();
        // What this replica knew to be replicated, never more than it has itself.
        let start_hw = partition.high_watermark().min(durable);
        let mut tracker = AckTracker::new(me, &info.isr, min_insync, start_hw);
        tracker.on_ack(me, durable);
        let now = now_ms();
        let followers: Vec<Rc<FollowerCursor>> = info
            .replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                Rc::new(FollowerCursor {
                    broker: *r,
                    next: Cell::new(None),
                    check_epoch: Cell::new(None),
                    back_off: Cell::new(false),
                    told_log_start: Cell::new(0),
                    sent_hw: Cell::new(-1),
                    incarnation: Cell::new(None),
                    kick: OffsetWatch::new(0),
                })
            })
            .collect();
        let state = Rc::new(LeaderState {
            me,
            epoch: info.leader_epoch,
            part: WirePartition {
                topic_id: partition.key.0,
                partition: partition.index,
            },
            topic: partition.topic.clone(),
            tracker: RefCell::new(tracker),
            isr: RefCell::new(IsrTracker::new(
                me,
                &info.replicas,
                &info.isr,
                lag_max_ms,
                now,
            )),
            followers,
            appended: OffsetWatch::new(partition.log.log_end_offset()),
            stopped: Cell::new(false),
            min_insync: Cell::new(usize::try_from(min_insync).unwrap_or(0)),
        });
        info!(
            topic = %partition.topic,
            partition = partition.index,
            epoch = info.leader_epoch,
            isr = ?info.isr,
            high_watermark = state.high_watermark(),
            "leading partition"
        );
        for cursor in &state.followers {
            glommio::spawn_local(push_loop(
                shard.clone(),
                partition.clone(),
                state.clone(),
                cursor.clone(),
            ))
            .detach();
        }
        glommio::spawn_local(housekeeping(
            shard.clone(),
            partition.clone(),
            state.clone(),
        ))
        .detach();
        state
    }

    pub fn high_watermark(&self) -> i64 {
        self.tracker.borrow().high_watermark()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Leadership ended (new epoch elsewhere, partition closed): fail the waiters, stop pushing.
    pub fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let failed = self.tracker.borrow_mut().fail_all(AckFailure::NotLeader);
        complete(failed);
        self.appended.close();
        for cursor in &self.followers {
            cursor.kick.close();
        }
    }

    /// A replica (this broker included) acknowledged `durable_end`; returns the high watermark.
    pub fn on_ack(&self, replica: i32, durable_end: i64) -> i64 {
        let done = self.tracker.borrow_mut().on_ack(replica, durable_end);
        complete(done);
        self.high_watermark()
    }

    /// The committed ISR and min.insync.replicas from a new image of the same epoch.
    pub fn update(&self, isr: &[i32], min_insync: i32, lag_max_ms: u64) -> i64 {
        let mut done = self.tracker.borrow_mut().set_isr(isr);
        done.extend(self.tracker.borrow_mut().set_min_insync(min_insync));
        self.min_insync
            .set(usize::try_from(min_insync).unwrap_or(0));
        complete(done);
        let mut tracker = self.isr.borrow_mut();
        tracker.set_isr(isr);
        tracker.set_lag_max_ms(lag_max_ms);
        self.high_watermark()
    }

    /// Whether enough ISR members are caught up for an acks=all append (min.insync.replicas),
    /// judged by lag before the controller has removed the laggards.
    pub fn enough_in_sync(&self) -> bool {
        let min = self.min_insync.get();
        self.isr.borrow().in_sync_count(now_ms()) >= min
    }

    /// acks=all: resolves once the high watermark reaches `end_offset`, or with why not.
    pub async fn wait(&self, end_offset: i64, timeout: Duration) -> Result<(), AckFailure> {
        let (tx, rx) = oneshot::channel();
        let deadline = deadline_ms(timeout);
        let immediate = self.tracker.borrow_mut().wait(end_offset, deadline, tx);
        if let Some(c) = immediate {
            return c.result;
        }
        rx.await.unwrap_or(Err(AckFailure::NotLeader))
    }
}

fn complete(done: Vec<Completion<Waiter>>) {
    for c in done {
        c.waiter.send(c.result);
    }
}

/// Handles a follower's Ack arriving on a link.
pub fn on_ack_frame(shard: &Rc<Shard>, follower: i32, frame: Frame) {
    let Frame::Ack {
        part,
        leader_epoch,
        status,
        log_end,
        durable_end,
        last_epoch,
    } = frame
    else {
        return;
    };
    let Some(partition) = shard.partitions.get(&(part.topic_id, part.partition)) else {
        return;
    };
    let Some(leader) = partition.leader_state() else {
        return;
    };
    if leader.epoch != leader_epoch {
        return;
    }
    let Some(cursor) = leader.followers.iter().find(|c| c.broker == follower) else {
        return;
    };
    match status {
        wire::ACK_OK => {
            let before = partition.high_watermark();
            let hw = leader.on_ack(follower, durable_end);
            partition.high_watermark_watch().advance(hw);
            if hw > before {
                // The other followers learn it now (a heartbeat if they have nothing to fetch), as
                // Kafka completes followers' waiting fetches when the high watermark moves: a
                // follower elected next starts from the high watermark it knows.
                for other in leader.followers.iter().filter(|c| c.broker != follower) {
                    other.kick();
                }
            }
            // Credited to the incarnation the follower is registered as: an expansion names it,
            // and the controller refuses it if the follower restarts first (issue 14 item 3). A
            // stale cache only delays an expansion: the ISR tracker proposes one only when the
            // credited incarnation is the one the current image has.
            let incarnation = cursor.incarnation.get();
            leader.isr.borrow_mut().on_ack(
                follower,
                durable_end,
                partition.log.log_end_offset(),
                now_ms(),
                incarnation,
            );
            if cursor.next.get().is_none() {
                cursor.next.set(Some(log_end));
            }
        }
        wire::ACK_OUT_OF_ORDER => {
            debug!(topic = %leader.topic, partition = part.partition, follower, log_end, "follower refused a push out of order");
            cursor.next.set(Some(log_end));
        }
        wire::ACK_CHECK_EPOCH => {
            cursor.next.set(None);
            cursor.check_epoch.set(Some(last_epoch));
        }
        wire::ACK_FENCED => {
            warn!(
                topic = %leader.topic,
                partition = part.partition,
                follower,
                epoch = leader_epoch,
                "follower knows a newer leader epoch"
            );
            cursor.next.set(None);
            cursor.back_off.set(true);
        }
        _ => {
            debug!(topic = %leader.topic, partition = part.partition, follower, status, "follower asked to retry");
            cursor.next.set(None);
            cursor.back_off.set(true);
        }
    }
    cursor.kick();
}

/// Why `wait_for_work` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// An ack (or a reset) moved or poked the cursor.
    Kicked,
    /// The log grew beyond the offset waited on.
    Data,
    /// Nothing happened for the whole timeout.
    Idle,
    /// The leadership ended.
    Stopped,
}

/// Waits for the cursor's kick, new data, or `timeout`.
async fn wait_for_work(
    leader: &LeaderState,
    cursor: &FollowerCursor,
    data_beyond: Option<i64>,
    timeout: Duration,
) -> Wake {
    let kick = cursor.kick.get() + 1;
    let data = async {
        match data_beyond {
            Some(next) => {
                leader.appended.wait_at_least(next + 1).await;
                Wake::Data
            }
            None => futures_lite::future::pending::<Wake>().await,
        }
    };
    let wake = async {
        cursor.kick.wait_at_least(kick).await;
        Wake::Kicked
    }
    .or(data)
    .or(async {
        glommio::timer::sleep(timeout).await;
        Wake::Idle
    })
    .await;
    if leader.is_stopped() {
        Wake::Stopped
    } else {
        wake
    }
}

/// Pushes the partition's log to one follower for as long as this leadership lasts.
async fn push_loop(
    shard: Rc<Shard>,
    partition: Rc<Partition>,
    leader: Rc<LeaderState>,
    cursor: Rc<FollowerCursor>,
) {
    while !leader.is_stopped() {
        if cursor.back_off.replace(false) {
            glommio::timer::sleep(RETRY_DELAY).await;
            continue;
        }
        let Some(link) = shard.replication.link(&shard, cursor.broker).await else {
            glommio::timer::sleep(RETRY_DELAY * 5).await;
            continue;
        };
        if let Some(epoch) = cursor.check_epoch.take() {
            let (end_epoch, end_offset) = epoch_lookup::end_offset_for(&partition.log, epoch);
            let frame = Frame::EpochEnd {
                part: leader.part,
                leader_epoch: leader.epoch,
                epoch: end_epoch,
                end_offset,
            };
            if send_frame(&link, &frame).await {
                wait_for_work(&leader, &cursor, None, HEARTBEAT * 4).await;
            } else {
                cursor.reset();
            }
            continue;
        }
        let hw = leader.high_watermark();
        let Some(next) = cursor.next.get() else {
            // Probe: the follower answers with its log end (or asks for the epoch check).
            let probe = wire::push_header(&leader.part, leader.epoch, hw, -1, 0);
            let sent = match probe {
                Ok(header) => link.send(&[header]).await,
                Err(_) => false,
            };
            if !sent {
                cursor.reset();
                continue;
            }
            wait_for_work(&leader, &cursor, None, HEARTBEAT).await;
            continue;
        };
        let log_start = partition.log.log_start_offset();
        if next < log_start {
            // Those offsets are gone here (retention): the follower restarts its log at our log
            // start, acks, and the pushes go on from there.
            if !link.knows_log_start() {
                debug!(
                    topic = %leader.topic,
                    partition = partition.index,
                    follower = cursor.broker,
                    next,
                    log_start,
                    "follower is below the log start and has not announced LogStart support"
                );
                cursor.next.set(None);
                cursor.back_off.set(true);
                continue;
            }
            info!(
                topic = %leader.topic,
                partition = partition.index,
                follower = cursor.broker,
                follower_log_end = next,
                log_start,
                "follower is below the log start: it restarts its log there"
            );
            cursor.next.set(None);
            cursor.told_log_start.set(log_start);
            if send_log_start(&link, &leader, log_start).await {
                wait_for_work(&leader, &cursor, None, HEARTBEAT * 4).await;
            } else {
                cursor.reset();
            }
            continue;
        }
        if log_start > cursor.told_log_start.get() && link.knows_log_start() {
            // Retention moved the log start: the follower drops its segments below it too.
            cursor.told_log_start.set(log_start);
            if !send_log_start(&link, &leader, log_start).await {
                cursor.reset();
                continue;
            }
        }
        let end = partition.log.log_end_offset();
        if next >= end {
            let wake = wait_for_work(&leader, &cursor, Some(end.max(next)), HEARTBEAT).await;
            if wake == Wake::Stopped {
                break;
            }
            // Only a whole quiet interval or a high watermark the follower has not seen earns a
            // heartbeat: the ack of one kicks the cursor, and answering every kick with the next
            // heartbeat ping-ponged as fast as the network allows (~7,000 frames/s per broker with
            // nothing to replicate).
            let hw = leader.high_watermark();
            if (wake == Wake::Idle || hw > cursor.sent_hw.get())
                && cursor.next.get() == Some(next)
                && partition.log.log_end_offset() == end
            {
                // Nothing new: a heartbeat that also checks the follower's position and carries
                // the high watermark.
                leader.isr.borrow_mut().on_idle(end, now_ms());
                cursor.sent_hw.set(hw);
                let ok = match wire::push_header(&leader.part, leader.epoch, hw, next, 0) {
                    Ok(header) => link.send(&[header]).await,
                    Err(_) => false,
                };
                if !ok {
                    cursor.reset();
                }
            }
            continue;
        }
        let batches = match partition.log.read(next, MAX_PUSH_BYTES, end).await {
            Ok(batches) => batches,
            Err(LogError::Closed) => break,
            Err(e) => {
                debug!(topic = %leader.topic, partition = partition.index, next, "read for follower failed: {e}");
                cursor.reset();
                continue;
            }
        };
        let Some(last) = batches.last() else {
            cursor.reset();
            continue;
        };
        let next_after = match chronik_shards::log::batch::BatchHeader::parse(last) {
            Ok(h) => h.next_offset(),
            Err(_) => {
                cursor.reset();
                continue;
            }
        };
        // The push starts at the follower's position `next`; its first batch may start later
        // (a compacted log has gaps where whole batches were removed).
        let len: usize = batches.iter().map(Bytes::len).sum();
        let header = match wire::push_header(&leader.part, leader.epoch, hw, next, len) {
            Ok(header) => header,
            Err(e) => {
                warn!(topic = %leader.topic, partition = partition.index, "push too large: {e}");
                cursor.reset();
                continue;
            }
        };
        let mut buffers = Vec::with_capacity(batches.len() + 1);
        buffers.push(header);
        buffers.extend(batches);
        if cursor.next.get() != Some(next) {
            continue; // an ack moved the cursor while reading
        }
        cursor.next.set(Some(next_after));
        cursor.sent_hw.set(hw);
        if !link.send(&buffers).await {
            cursor.reset();
        }
    }
}

async fn send_log_start(link: &super::link::Link, leader: &LeaderState, log_start: i64) -> bool {
    let frame = Frame::LogStart {
        part: leader.part,
        leader_epoch: leader.epoch,
        log_start,
    };
    send_frame(link, &frame).await
}

async fn send_frame(link: &super::link::Link, frame: &Frame) -> bool {
    match wire::encode(frame) {
        Ok(bytes) => link.send(&[bytes]).await,
        Err(_) => false,
    }
}

/// Timeouts of waiting requests and ISR changes, while the leadership lasts.
async fn housekeeping(shard: Rc<Shard>, partition: Rc<Partition>, leader: Rc<LeaderState>) {
    while !leader.is_stopped() {
        glommio::timer::sleep(HOUSEKEEPING).await;
        if leader.is_stopped() {
            break;
        }
        let now = now_ms();
        let timed_out = leader.tracker.borrow_mut().on_tick(now);
        complete(timed_out);
        let hw = leader.high_watermark();
        let image = shard.control.image();
        for cursor in &leader.followers {
            let registered = image.brokers.get(&cursor.broker).map(|b| b.incarnation);
            cursor.incarnation.set(registered);
        }
        let change = leader.isr.borrow_mut().poll(hw, now, |broker| {
            image
                .brokers
                .get(&broker)
                .filter(|b| !b.fenced)
                .map(|b| b.incarnation)
        });
        let Some(change) = change else {
            continue;
        };
        info!(
            topic = %leader.topic,
            partition = partition.index,
            epoch = leader.epoch,
            isr = ?change.isr,
            "proposing an ISR change"
        );
        // In its own task: without a controller the proposal waits, timeouts must not.
        let (shard, partition, leader) = (shard.clone(), partition.clone(), leader.clone());
        let delay = slow_isr_expansion(&change);
        glommio::spawn_local(async move {
            if let Some(delay) = delay {
                warn!(
                    topic = %leader.topic,
                    partition = partition.index,
                    isr = ?change.isr,
                    "fault injection: ISR expansion decided, sent {delay:?} late ({SLOW_ISR_EXPANSION_ENV})"
                );
                glommio::timer::sleep(delay).await;
            }
            let expansion = delay.is_some();
            let result = shard
                .control
                .alter_partition_isr(
                    leader.topic.clone(),
                    partition.index,
                    leader.epoch,
                    change.isr,
                    Some(change.basis),
                )
                .await;
            if expansion {
                warn!(
                    topic = %leader.topic,
                    partition = partition.index,
                    "fault injection: late ISR expansion answered: {result:?}"
                );
            }
            if let Err(e) = result {
                debug!(topic = %leader.topic, partition = partition.index, "ISR change refused: {e}");
                glommio::timer::sleep(HOUSEKEEPING * 5).await;
                leader.isr.borrow_mut().proposal_failed();
            }
        })
        .detach();
    }
}

/// Fault injection for tests: an ISR expansion is sent to the controller this many milliseconds
/// after the leader decided it, so that a test can restart or fence the follower in between
/// (issue 14 item 3: the controller must refuse it then).
pub const SLOW_ISR_EXPANSION_ENV: &str = "CHRONIK_FAULT_SLOW_ISR_EXPANSION_MS";

/// How late to send `change`, if it adds followers and the fault is injected.
fn slow_isr_expansion(change: &IsrChange) -> Option<Duration> {
    if change.basis.incarnations.is_empty() {
        return None;
    }
    std::env::var(SLOW_ISR_EXPANSION_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}
