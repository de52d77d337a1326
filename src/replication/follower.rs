//! The follower side: a replication connection accepted on the Kafka listener. Each frame goes
//! to the shard owning its partition (in arrival order) and its Ack comes back on the same
//! connection once the appended batches are durable here.
//!
//! Bounds: a link is served only from a registered broker in its current epoch, and each frame
//! only where that broker leads the partition in the frame's epoch (`admission`); a shard serves
//! at most [`max_links`] links at once; the bytes of a link's frames not yet acknowledged are
//! capped ([`LINK_UNACKED_BYTES`]), after which reading pauses; frame lengths are capped by the
//! decoder (`wire::MAX_FRAME_BYTES`) and never reserved ahead of their bytes.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use chronik_shards::log::LogError;
use chronik_shards::runtime::mesh::LocalFuture;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::admission::{self, Verdict};
use super::epoch_lookup;
use super::epochs;
use super::wire::{self, Frame, WirePartition};
use crate::partitions::Partition;
use crate::server::shard::Shard;

/// Acks queued for the writer before reading pauses.
const MAX_PENDING_ACKS: usize = 1024;
/// Bytes of a link's frames handed to partitions and not yet acknowledged, before reading pauses.
/// A leader pushes at most 1 MiB per partition at a time, so this throttles only a link carrying
/// very many busy partitions, or a peer that does not wait for acks; a frame larger than this (one
/// batch of up to `wire::MAX_FRAME_BYTES`) takes the whole of it.
pub const LINK_UNACKED_BYTES: usize = 64 << 20;
/// What a frame counts against that bound beyond its records (the task and ack it holds).
const FRAME_OVERHEAD: usize = 256;
/// Links a shard serves at once, per registered broker and per shard of this broker: a leader
/// opens one link per (its shard, follower); the rest is room for reconnects whose old link has
/// not been noticed closed yet, and for leaders with more shards than this broker.
const LINKS_PER_BROKER_SHARD: usize = 4;
/// A connection whose first bytes have not come within this long is not a replication link
/// (the Kafka path takes it, with its own bounds).
const PEEK_WAIT: Duration = Duration::from_secs(10);
/// A Hello seen in part must arrive whole within this long.
const HELLO_READ_WAIT: Duration = Duration::from_secs(10);
/// A Hello from a broker our image does not know in that epoch yet (it registered moments ago)
/// waits this long for the image to catch up before it is refused.
const IMAGE_CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// The replication Hello the connection starts with (peeked, not consumed); None if it does not
/// start with one. A connection that sends nothing for [`PEEK_WAIT`] is not one (the Kafka path
/// then takes it).
pub async fn peek_hello(shard: &Shard, stream: &TcpStream) -> Option<wire::Hello> {
    let mut first = [0u8; wire::HELLO_BYTES];
    let peeked = async { stream.peek(&mut first).await.ok() }
        .or(async {
            shard.shutdown.wait().await;
            None
        })
        .or(async {
            glommio::timer::sleep(PEEK_WAIT).await;
            None
        })
        .await?;
    wire::parse_hello(&first[..peeked])
}

/// The most links `shard` serves at once.
pub fn max_links(shard: &Shard) -> usize {
    let brokers = shard.control.image().brokers.len().max(1);
    LINKS_PER_BROKER_SHARD * brokers * shard.mesh.shards().max(1)
}

/// Counts a link served by a shard while it lives.
struct Served<'a>(&'a std::cell::Cell<usize>);

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Whether `hello` opens a link here, waiting a little for an image that knows its broker's
/// current epoch.
async fn admit(shard: &Shard, hello: &wire::Hello) -> Result<(), admission::Refusal> {
    let deadline = std::time::Instant::now() + IMAGE_CATCH_UP_WAIT;
    loop {
        let verdict = admission::check_hello(&shard.control.image(), shard.node_id, hello);
        match verdict {
            Err(admission::Refusal::NotRegistered(_) | admission::Refusal::StaleEpoch { .. })
                if std::time::Instant::now() < deadline && !shard.shutdown.is_triggered() =>
            {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Serves a replication connection on the shard its Hello names (see `wire::hello`), handing it
/// over there if it was accepted elsewhere; frames for partitions of other shards still reach them
/// through the mesh.
pub async fn accept(shard: Rc<Shard>, stream: TcpStream, hello: wire::Hello) {
    let target = hello
        .shard
        .filter(|&s| s != shard.id && s < shard.mesh.shards());
    let Some(target) = target else {
        return serve(shard, stream, hello).await;
    };
    // The socket moves as a duplicate descriptor; this shard's handle closes, the connection stays.
    // SAFETY: the descriptor is open for as long as `stream` lives, which outlives the borrow.
    let fd =
        unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            debug!("replication link stays on shard {}: dup: {e}", shard.id);
            return serve(shard, stream, hello).await;
        }
    };
    drop(stream);
    debug!(
        shard = shard.id,
        leader = hello.leader,
        "handing a replication link to shard {target}"
    );
    let handed = shard
        .mesh
        .send(target, move |owner: &Rc<Shard>| {
            // SAFETY: `fd` is an open TCP socket this closure owns.
            let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
            glommio::spawn_local(serve(owner.clone(), stream, hello)).detach();
            Box::pin(async {}) as LocalFuture<()>
        })
        .await;
    if let Err(e) = handed {
        // The closure, and with it the descriptor, was dropped: the leader reconnects.
        warn!(
            leader = hello.leader,
            "handing a replication link to shard {target}: {e}"
        );
    }
}

/// Serves a replication connection, whose `hello` was peeked, until the leader closes it or the
/// broker stops.
async fn serve(shard: Rc<Shard>, stream: TcpStream, hello: wire::Hello) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut consumed = [0u8; wire::HELLO_BYTES];
    let Some(consumed) = consumed.get_mut(..hello.frame_len) else {
        return;
    };
    let read = async { reader.read_exact(consumed).await.ok() }
        .or(async {
            glommio::timer::sleep(HELLO_READ_WAIT).await;
            None
        })
        .await;
    let Some(hello) = read.and_then(|()| wire::parse_hello(consumed)) else {
        debug!(%peer, "replication Hello cut short");
        return;
    };
    if let Err(refusal) = admit(&shard, &hello).await {
        warn!(%peer, claimed_leader = hello.leader, "refusing a replication link: {refusal}");
        return;
    }
    let leader = hello.leader;
    let Some(epoch) = hello.broker_epoch else {
        return;
    };
    let served = &shard.replication.inbound_links;
    if served.get() >= max_links(&shard) {
        warn!(
            %peer,
            leader,
            links = served.get(),
            "refusing a replication link: this shard serves its most links already"
        );
        return;
    }
    served.set(served.get() + 1);
    let _served = Served(served);
    info!(
        shard = shard.id,
        leader,
        leader_shard = hello.shard.map_or(-1, |s| s as i64),
        "replication link from leader accepted"
    );
    let (ack_tx, ack_rx) = local_channel::new_bounded::<Bytes>(MAX_PENDING_ACKS);
    let writer_task = glommio::spawn_local(async move {
        while let Some(ack) = ack_rx.recv().await {
            if writer.write_all(&ack).await.is_err() {
                return;
            }
        }
        let _ = writer.close().await;
    });
    let ack_tx = Rc::new(ack_tx);
    if send_ack(&ack_tx, wire::version_announcement())
        .await
        .is_err()
    {
        return;
    }
    let unacked = Rc::new(Semaphore::new(LINK_UNACKED_BYTES as u64));
    let mut frames = wire::FrameReader::new(reader);
    'read: loop {
        let frame = match frames.next(&shard.shutdown).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                warn!(leader, "closing replication link: {e}");
                break 'read;
            }
        };
        let part = match &frame {
            Frame::Push { part, .. }
            | Frame::EpochEnd { part, .. }
            | Frame::LogStart { part, .. } => *part,
            Frame::Ack { .. } => {
                warn!(leader, "closing replication link: an ack from the leader");
                break 'read;
            }
        };
        let image = shard.control.image();
        if let Err(refusal) = admission::check_broker(&image, leader, epoch) {
            warn!(%peer, leader, "closing replication link: {refusal}");
            break 'read;
        }
        let verdict = admission::check_frame(&image, leader, &part, frame.leader_epoch());
        let owner = image
            .topic_by_id(part.topic_id)
            .map(|topic| shard.owner_of(&topic.name, part.partition));
        drop(image);
        let owner = match (verdict, owner) {
            (Verdict::Forward, Some(owner)) => owner,
            (Verdict::Close(refusal), _) => {
                warn!(%peer, leader, "closing replication link: {refusal}");
                break 'read;
            }
            (Verdict::Answer(status), _) => {
                if send_ack(&ack_tx, status_ack(&part, &frame, status))
                    .await
                    .is_err()
                {
                    break 'read;
                }
                continue;
            }
            (Verdict::Forward, None) => {
                if send_ack(&ack_tx, status_ack(&part, &frame, wire::ACK_RETRY))
                    .await
                    .is_err()
                {
                    break 'read;
                }
                continue;
            }
        };
        let cost = match &frame {
            Frame::Push { records, .. } => records.len(),
            _ => 0,
        } + FRAME_OVERHEAD;
        let Ok(permit) = unacked
            .acquire_static_permit(cost.min(LINK_UNACKED_BYTES) as u64)
            .await
        else {
            break 'read;
        };
        let sent = shard
            .mesh
            .send(owner, move |owner: &Rc<Shard>| handle(owner, frame))
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                warn!("forwarding replication to shard {owner}: {e}");
                break 'read;
            }
        };
        let ack_tx = ack_tx.clone();
        glommio::spawn_local(async move {
            if let Ok(ack) = reply.await {
                let _ = send_ack(&ack_tx, ack).await;
            }
            drop(permit);
        })
        .detach();
    }
    drop(ack_tx);
    let _ = writer_task.await;
    debug!(leader, "replication link from leader closed");
}

async fn send_ack(tx: &local_channel::LocalSender<Bytes>, ack: Frame) -> Result<(), ()> {
    let bytes = wire::encode(&ack).map_err(|_| ())?;
    tx.send(bytes).await.map_err(|_| ())
}

fn status_ack(part: &WirePartition, frame: &Frame, status: i16) -> Frame {
    Frame::Ack {
        part: *part,
        leader_epoch: frame.leader_epoch(),
        status,
        log_end: -1,
        durable_end: -1,
        last_epoch: -1,
    }
}

fn ack_of(partition: &Partition, part: WirePartition, leader_epoch: i32, status: i16) -> Frame {
    Frame::Ack {
        part,
        leader_epoch,
        status,
        log_end: partition.log.log_end_offset(),
        durable_end: partition.log.durable_end_offset(),
        last_epoch: partition.log.last_leader_epoch(),
    }
}

/// Whether this replica follows the sender in `leader_epoch`; the status to answer if not.
fn check_leader(partition: &Partition, leader_epoch: i32) -> Result<(), i16> {
    let known = partition.leader_epoch();
    if leader_epoch < known {
        Err(wire::ACK_FENCED)
    } else if leader_epoch > known || partition.leader_state().is_some() {
        // Our metadata has not caught up with this leader yet.
        Err(wire::ACK_RETRY)
    } else {
        Ok(())
    }
}

/// Runs on the owning shard: the synchronous part (checks, append) now, in arrival order; the
/// returned future resolves to the Ack.
fn handle(shard: &Rc<Shard>, frame: Frame) -> LocalFuture<Frame> {
    let part = frame.part();
    let Some(partition) = shard.partitions.get(&(part.topic_id, part.partition)) else {
        let ack = status_ack(&part, &frame, wire::ACK_RETRY);
        return Box::pin(async move { ack });
    };
    match frame {
        Frame::Push {
            leader_epoch,
            high_watermark,
            base_offset,
            records,
            ..
        } => on_push(
            partition,
            part,
            leader_epoch,
            high_watermark,
            base_offset,
            records,
        ),
        Frame::EpochEnd {
            leader_epoch,
            epoch,
            end_offset,
            ..
        } => Box::pin(on_epoch_end(
            partition,
            part,
            leader_epoch,
            epoch,
            end_offset,
        )),
        Frame::LogStart {
            leader_epoch,
            log_start,
            ..
        } => Box::pin(on_log_start(partition, part, leader_epoch, log_start)),
        Frame::Ack { leader_epoch, .. } => {
            let ack = ack_of(&partition, part, leader_epoch, wire::ACK_RETRY);
            Box::pin(async move { ack })
        }
    }
}

fn on_push(
    partition: Rc<Partition>,
    part: WirePartition,
    leader_epoch: i32,
    high_watermark: i64,
    base_offset: i64,
    records: Bytes,
) -> LocalFuture<Frame> {
    let ready = |partition: &Partition, status| {
        let ack = ack_of(partition, part, leader_epoch, status);
        Box::pin(async move { ack }) as LocalFuture<Frame>
    };
    if let Err(status) = check_leader(&partition, leader_epoch) {
        return ready(&partition, status);
    }
    if partition.validated_epoch() != Some(leader_epoch) {
        return ready(&partition, wire::ACK_CHECK_EPOCH);
    }
    let log_end = partition.log.log_end_offset();
    if base_offset == -1 && records.is_empty() {
        partition.follow_high_watermark(high_watermark);
        return ready(&partition, wire::ACK_OK);
    }
    if base_offset != log_end {
        debug!(topic = %partition.topic, partition = partition.index, base_offset, log_end, "push does not start at the log end");
        return ready(&partition, wire::ACK_OUT_OF_ORDER);
    }
    if records.is_empty() {
        partition.follow_high_watermark(high_watermark);
        return ready(&partition, wire::ACK_OK);
    }
    let info = match partition.log.append_replica(records) {
        Ok(info) => info,
        Err(LogError::Truncating) => return ready(&partition, wire::ACK_RETRY),
        Err(e @ LogError::InvalidBatch(_)) => {
            debug!(topic = %partition.topic, partition = partition.index, "replica append refused: {e}");
            return ready(&partition, wire::ACK_OUT_OF_ORDER);
        }
        Err(e) => {
            warn!(topic = %partition.topic, partition = partition.index, "replica append failed: {e}");
            return ready(&partition, wire::ACK_STORAGE_ERROR);
        }
    };
    partition.follow_high_watermark(high_watermark);
    let end = info.last_offset + 1;
    Box::pin(async move {
        let status = match partition.log.wait_durable(end).await {
            Ok(()) => wire::ACK_OK,
            Err(LogError::OffsetOutOfRange { .. }) => wire::ACK_OUT_OF_ORDER,
            Err(e) => {
                warn!(topic = %partition.topic, partition = partition.index, "replica flush failed: {e}");
                wire::ACK_STORAGE_ERROR
            }
        };
        ack_of(&partition, part, leader_epoch, status)
    })
}

/// The leader's end of our last epoch: cut what it never had, then accept its pushes.
async fn on_epoch_end(
    partition: Rc<Partition>,
    part: WirePartition,
    leader_epoch: i32,
    epoch: i32,
    end_offset: i64,
) -> Frame {
    if let Err(status) = check_leader(&partition, leader_epoch) {
        return ack_of(&partition, part, leader_epoch, status);
    }
    let log = &partition.log;
    let my_end = log.log_end_offset();
    let mine = epoch_lookup::end_offset_for(log, epoch);
    let cut = epochs::truncation_offset((epoch, end_offset), log.last_leader_epoch(), my_end, mine);
    if cut < my_end {
        info!(
            topic = %partition.topic,
            partition = partition.index,
            leader_epoch,
            from = cut,
            to = my_end,
            "truncating what the new leader does not have"
        );
        if let Err(e) = log.truncate_to(cut).await {
            warn!(topic = %partition.topic, partition = partition.index, "truncation failed: {e}");
            return ack_of(&partition, part, leader_epoch, wire::ACK_STORAGE_ERROR);
        }
        // Nothing above the cut may count as replicated here any more.
        partition
            .high_watermark_watch()
            .lower_to(log.log_end_offset());
    }
    if let Err(status) = check_leader(&partition, leader_epoch) {
        return ack_of(&partition, part, leader_epoch, status);
    }
    partition.set_validated_epoch(leader_epoch);
    ack_of(&partition, part, leader_epoch, wire::ACK_OK)
}

/// The leader's log start offset. A log that ends below it can never be caught up by appending (the
/// leader no longer has those offsets): empty it and restart it there, like Kafka's
/// `truncateFullyAndStartAt`. A log that reaches it drops its segments wholly below it, so
/// ListOffsets earliest agrees across replicas after a failover.
async fn on_log_start(
    partition: Rc<Partition>,
    part: WirePartition,
    leader_epoch: i32,
    log_start: i64,
) -> Frame {
    if let Err(status) = check_leader(&partition, leader_epoch) {
        return ack_of(&partition, part, leader_epoch, status);
    }
    let log = &partition.log;
    let (my_start, my_end) = (log.log_start_offset(), log.log_end_offset());
    if log_start > my_end {
        info!(
            topic = %partition.topic,
            partition = partition.index,
            leader_epoch,
            log_end = my_end,
            leader_log_start = log_start,
            "log ends below the leader's log start: emptying it to start there"
        );
        if let Err(e) = log.truncate_fully_and_start_at(log_start).await {
            warn!(topic = %partition.topic, partition = partition.index, "log restart failed: {e}");
            return ack_of(&partition, part, leader_epoch, wire::ACK_STORAGE_ERROR);
        }
        // Nothing is left below the leader's log start, here or there.
        partition.high_watermark_watch().advance(log_start);
        if let Err(status) = check_leader(&partition, leader_epoch) {
            return ack_of(&partition, part, leader_epoch, status);
        }
        // An empty log cannot diverge from the leader's.
        partition.set_validated_epoch(leader_epoch);
    } else if log_start > my_start {
        match log.advance_log_start(log_start).await {
            Ok(0) => {}
            Ok(removed) => debug!(
                topic = %partition.topic,
                partition = partition.index,
                removed,
                leader_log_start = log_start,
                "deleted segments below the leader's log start"
            ),
            Err(e) => {
                warn!(topic = %partition.topic, partition = partition.index, "deleting segments below the leader's log start failed: {e}");
                return ack_of(&partition, part, leader_epoch, wire::ACK_STORAGE_ERROR);
            }
        }
    } else if log_start < my_start {
        // Only retention here running ahead of the leader's does this; nothing to do.
        debug!(
            topic = %partition.topic,
            partition = partition.index,
            log_start = my_start,
            leader_log_start = log_start,
            "log starts above the leader's log start"
        );
    }
    ack_of(&partition, part, leader_epoch, wire::ACK_OK)
}
