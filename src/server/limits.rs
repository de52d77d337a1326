//! What a client can make the broker hold, and for how long: the bounds every Kafka connection
//! lives within. Each has a Kafka (or Redpanda) name where one exists.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use glommio::sync::{Semaphore, StaticPermit};

/// Kafka's `socket.request.max.bytes` default: a larger length prefix closes the connection.
pub const DEFAULT_SOCKET_REQUEST_MAX_BYTES: usize = 100 * 1024 * 1024;
/// Request bytes the broker holds at once, all shards together (Kafka's `queued.max.request.bytes`,
/// unbounded there by default). Each shard gets its share, never less than one largest frame.
pub const DEFAULT_QUEUED_MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;
/// Kafka's `max.connections` (unbounded there by default): Kafka connections per broker.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Kafka's `fetch.max.bytes` broker default (55 MiB): no fetch response is larger, whatever the
/// request asks for.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 55 * 1024 * 1024;
/// How long a client may take to accept a response's bytes before it is disconnected.
pub const DEFAULT_RESPONSE_WRITE_TIMEOUT_MS: u64 = 30_000;
/// How long a request frame may take to arrive once its length prefix is read (plus one second
/// per MiB it announces), so a peer that trickles a frame cannot hold its memory for ever.
pub const DEFAULT_REQUEST_READ_TIMEOUT_MS: u64 = 30_000;
/// Kafka's `connections.max.idle.ms`: a connection with nothing in flight and nothing received for
/// this long is closed.
pub const DEFAULT_CONNECTIONS_MAX_IDLE_MS: u64 = 600_000;
/// After shutdown begins, answers already in flight get this long to reach their clients.
pub const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// The connection limits of one broker, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `socket.request.max.bytes`: the largest request frame.
    pub socket_request_max_bytes: usize,
    /// `queued.max.request.bytes`: request bytes held at once (all shards).
    pub queued_max_request_bytes: usize,
    /// `max.connections`: Kafka connections at once (all shards).
    pub max_connections: usize,
    /// `fetch.max.bytes`: the largest fetch response.
    pub fetch_max_bytes: usize,
    pub response_write_timeout: Duration,
    pub request_read_timeout: Duration,
    /// `connections.max.idle.ms`.
    pub connections_max_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            socket_request_max_bytes: DEFAULT_SOCKET_REQUEST_MAX_BYTES,
            queued_max_request_bytes: DEFAULT_QUEUED_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            response_write_timeout: Duration::from_millis(DEFAULT_RESPONSE_WRITE_TIMEOUT_MS),
            request_read_timeout: Duration::from_millis(DEFAULT_REQUEST_READ_TIMEOUT_MS),
            connections_max_idle: Duration::from_millis(DEFAULT_CONNECTIONS_MAX_IDLE_MS),
        }
    }
}

impl Limits {
    /// One shard's share of the request memory: at least one largest frame, so that any frame
    /// that may be sent can be read.
    pub fn shard_request_bytes(&self, shards: usize) -> usize {
        (self.queued_max_request_bytes / shards.max(1)).max(self.socket_request_max_bytes)
    }

    /// One shard's share of the connections (at least one).
    pub fn shard_connections(&self, shards: usize) -> usize {
        self.max_connections.div_ceil(shards.max(1)).max(1)
    }

    /// How long a frame of `len` bytes may take to arrive.
    pub fn frame_read_deadline(&self, len: usize) -> Duration {
        self.request_read_timeout + Duration::from_secs((len >> 20) as u64)
    }
}

/// A shard's budget of request bytes (Kafka's `queued.max.request.bytes`, Redpanda's per-shard
/// memory semaphore). A connection takes bytes from it before it reads them and gives them back
/// once the request is answered; when it is spent, connections wait instead of allocating.
#[derive(Clone)]
pub struct RequestMemory {
    semaphore: Rc<Semaphore>,
    capacity: usize,
}

impl RequestMemory {
    pub fn new(capacity: usize) -> Self {
        RequestMemory {
            semaphore: Rc::new(Semaphore::new(capacity as u64)),
            capacity,
        }
    }

    /// Waits for `bytes` (at most the whole budget); `None` only if the semaphore was closed.
    pub async fn acquire(&self, bytes: usize) -> Option<MemoryPermit> {
        let units = bytes.min(self.capacity) as u64;
        let permit = self.semaphore.acquire_static_permit(units).await.ok()?;
        Some(MemoryPermit {
            permits: vec![permit],
            bytes: units as usize,
        })
    }

    /// Bytes not taken right now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.semaphore.available() as usize
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Bytes taken from a [`RequestMemory`] (in one or more steps), given back on drop.
#[derive(Default)]
pub struct MemoryPermit {
    permits: Vec<StaticPermit>,
    bytes: usize,
}

impl MemoryPermit {
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `other`'s bytes too.
    pub fn merge(&mut self, mut other: MemoryPermit) {
        self.bytes += other.bytes;
        self.permits.append(&mut other.permits);
    }
}

/// Kafka connections a shard serves at once, against its share of `max.connections`.
pub struct ConnectionSlots {
    open: Rc<Cell<usize>>,
    max: usize,
}

/// One open connection's slot; freed on drop.
pub struct ConnectionSlot {
    open: Rc<Cell<usize>>,
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        ConnectionSlots {
            open: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// A slot, or `None` when the shard serves its maximum already.
    pub fn take(&self) -> Option<ConnectionSlot> {
        if self.open.get() >= self.max {
            return None;
        }
        self.open.set(self.open.get() + 1);
        Some(ConnectionSlot {
            open: self.open.clone(),
        })
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_can_always_read_the_largest_frame() {
        let limits = Limits {
            queued_max_request_bytes: 64 << 20,
            ..Limits::default()
        };
        assert_eq!(limits.shard_request_bytes(4), 100 << 20);
        let limits = Limits::default();
        assert_eq!(limits.shard_request_bytes(2), 256 << 20);
        assert_eq!(limits.shard_connections(3), 3334);
        assert_eq!(
            limits.frame_read_deadline(100 << 20),
            Duration::from_secs(130)
        );
    }

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.take().is_some());
    }

    #[test]
    fn memory_is_given_back_when_the_permit_drops() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let memory = RequestMemory::new(100);
                let a = memory.acquire(60).await.unwrap();
                assert_eq!(memory.available(), 40);
                // More than the whole budget takes the whole budget, once it is free.
                let done = Rc::new(Cell::new(false));
                let waiter = {
                    let (memory, done) = (memory.clone(), done.clone());
                    glommio::spawn_local(async move {
                        let bytes = memory.acquire(1000).await.map(|p| p.bytes());
                        done.set(true);
                        bytes
                    })
                };
                glommio::timer::sleep(Duration::from_millis(10)).await;
                assert!(!done.get());
                drop(a);
                assert_eq!(waiter.await, Some(100));
                assert_eq!(memory.available(), 100);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
