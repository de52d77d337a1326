//! One replication connection per (shard, follower broker), opened by the leader's shard to the
//! follower's Kafka listener. Pushes for every partition this shard leads with that follower
//! share it; a reader task hands the follower's acks to the partitions.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IoSlice;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use tracing::{debug, info};

use super::leader;
use super::wire::{self, Frame};
use crate::server::shard::Shard;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Link {
    broker: i32,
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    write_lock: Semaphore,
    alive: Cell<bool>,
    /// The wire version the follower announced; 0 until it does.
    peer_version: Cell<i64>,
}

impl Link {
    /// Writes one frame made of `buffers` (header, then stored batches) without copying them.
    /// False once the link is broken.
    pub async fn send(&self, buffers: &[Bytes]) -> bool {
        let Ok(_permit) = self.write_lock.acquire_permit(1).await else {
            return false;
        };
        let Some(mut writer) = self.writer.borrow_mut().take() else {
            return false;
        };
        let ok = write_all_vectored(&mut writer, buffers).await;
        if ok {
            *self.writer.borrow_mut() = Some(writer);
        } else {
            self.alive.set(false);
        }
        ok
    }

    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Whether the follower understands LogStart frames.
    pub fn knows_log_start(&self) -> bool {
        self.peer_version.get() >= wire::LOG_START_VERSION
    }
}

async fn write_all_vectored(writer: &mut WriteHalf<TcpStream>, buffers: &[Bytes]) -> bool {
    let mut index = 0;
    let mut offset = 0;
    while index < buffers.len() {
        let slices: Vec<IoSlice<'_>> = buffers[index..]
            .iter()
            .enumerate()
            .map(|(i, b)| IoSlice::new(if i == 0 { &b[offset..] } else { &b[..] }))
            .collect();
        let mut written = match writer.write_vectored(&slices).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        while index < buffers.len() && written > 0 {
            let left = buffers[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        while index < buffers.len() && buffers[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    true
}

/// The links of one shard, by follower broker.
#[derive(Default)]
pub struct Links {
    links: RefCell<HashMap<i32, Rc<Link>>>,
    connecting: RefCell<HashMap<i32, Rc<Semaphore>>>,
}

impl Links {
    /// The live link to `broker`, connecting first if needed; None if it cannot be reached now.
    pub async fn get(&self, shard: &Rc<Shard>, broker: i32) -> Option<Rc<Link>> {
        if let Some(link) = self.live(broker) {
            return Some(link);
        }
        let gate = self
            .connecting
            .borrow_mut()
            .entry(broker)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        let _permit = gate.acquire_permit(1).await.ok()?;
        if let Some(link) = self.live(broker) {
            return Some(link);
        }
        let image = shard.control.image();
        let info = image.brokers.get(&broker)?;
        let address = format!("{}:{}", info.host, info.port);
        let stream = async { TcpStream::connect(address.as_str()).await.ok() }
            .or(async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                None
            })
            .await?;
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = futures_lite::io::split(stream);
        // The follower serves the link only with this broker's current epoch (its incarnation).
        let hello = wire::hello(shard.node_id, shard.id, shard.control.incarnation());
        writer.write_all(&hello).await.ok()?;
        let link = Rc::new(Link {
            broker,
            writer: RefCell::new(Some(writer)),
            write_lock: Semaphore::new(1),
            alive: Cell::new(true),
            peer_version: Cell::new(0),
        });
        info!(
            shard = shard.id,
            follower = broker,
            "replication link to {address} open"
        );
        self.links.borrow_mut().insert(broker, link.clone());
        glommio::spawn_local(read_acks(shard.clone(), link.clone(), reader)).detach();
        Some(link)
    }

    fn live(&self, broker: i32) -> Option<Rc<Link>> {
        self.links
            .borrow()
            .get(&broker)
            .filter(|l| l.is_alive())
            .cloned()
    }
}

async fn read_acks(shard: Rc<Shard>, link: Rc<Link>, reader: ReadHalf<TcpStream>) {
    let mut frames = wire::FrameReader::new(reader);
    loop {
        match frames.next(&shard.shutdown).await {
            Ok(Some(frame @ Frame::Ack { .. })) => match wire::announced_version(&frame) {
                Some(version) => {
                    debug!(
                        follower = link.broker,
                        version, "follower's replication wire version"
                    );
                    link.peer_version.set(version);
                }
                None => leader::on_ack_frame(&shard, link.broker, frame),
            },
            Ok(Some(_)) => {
                debug!(follower = link.broker, "unexpected frame from a follower");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                debug!(follower = link.broker, "replication link: {e}");
                break;
            }
        }
    }
    link.alive.set(false);
    debug!(follower = link.broker, "replication link closed");
    // Every partition pushing over it starts over with a probe on a new link.
    for partition in shard.partitions.all() {
        if let Some(leader) = partition.leader_state() {
            for cursor in leader.followers.iter().filter(|c| c.broker == link.broker) {
                cursor.reset();
            }
        }
    }
}
