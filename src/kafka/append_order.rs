//! Keeps appends to one partition in the order their requests reached the owner shard.
//!
//! The guarantee, end to end: requests from one connection to one partition are appended in the
//! order they were sent, as Kafka does (it handles a connection's requests one at a time).
//! - The connection runs each request's ordered part to its end before it reads the next frame
//!   (`server::connection`); `Reply::Later` only lets the *waits* (durability, replication)
//!   overlap.
//! - Produce's ordered part sends each owner its parts and awaits the send (`mesh.send` resolves
//!   once the work is queued on the owner); one connection lives on one shard, and the mesh runs
//!   the synchronous part of the work one shard sends another in send order (`runtime::mesh`).
//! - On the owner, that synchronous part appends at once when it can. When it cannot (the owner
//!   has not applied the image the request was routed by, or the log is not open yet), the append
//!   is deferred to a task, and it takes a [`Ticket`] for its partition right there, in arrival
//!   order. While a partition has a ticket outstanding, every later append to it takes a ticket
//!   too instead of appending at once, and each appends only in its turn. So an append that
//!   arrives after the image is applied cannot overtake one still catching up.
//!
//! A ticket that gives up (its request timed out waiting, the partition is gone) passes its turn
//! without appending: the later ones go on, as Kafka goes on with the next request after failing
//! one. An earlier append never lands after a later one.
//!
//! Cost on the common path (log open, image applied, no line): one check that a map is empty.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use uuid::Uuid;

use crate::partitions::offset_watch::OffsetWatch;

/// A partition, as the owner shard keys it.
pub type PartitionKey = (Uuid, i32);

/// The per-shard lines of deferred appends, one per partition that has any.
#[derive(Default)]
pub struct AppendOrder {
    lines: Rc<RefCell<HashMap<PartitionKey, Line>>>,
}

/// The appends in line for one partition. Exists exactly while some ticket for it is outstanding.
struct Line {
    /// The number the next ticket gets.
    next: i64,
    /// The ticket whose turn it is (all below it are done); waiters watch it.
    serving: Rc<OffsetWatch>,
    /// Tickets above `serving` that are done already (gave up before their turn).
    done_early: BTreeSet<i64>,
}

impl AppendOrder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether appends to `key` are in line: a new append must then take a ticket too.
    pub fn is_waiting(&self, key: &PartitionKey) -> bool {
        let lines = self.lines.borrow();
        !lines.is_empty() && lines.contains_key(key)
    }

    /// Puts an append to `key` in line behind every earlier ticket for it.
    pub fn join(&self, key: PartitionKey) -> Ticket {
        let mut lines = self.lines.borrow_mut();
        let line = lines.entry(key).or_insert_with(|| Line {
            next: 0,
            serving: Rc::new(OffsetWatch::new(0)),
            done_early: BTreeSet::new(),
        });
        let number = line.next;
        line.next += 1;
        Ticket {
            lines: self.lines.clone(),
            key,
            number,
            serving: line.serving.clone(),
        }
    }

    /// Partitions with appends in line.
    #[cfg(test)]
    pub fn lines(&self) -> usize {
        self.lines.borrow().len()
    }
}

/// One deferred append's place in its partition's line. Dropping it passes the turn on (or, before
/// its turn, lets the line skip it once its turn comes).
pub struct Ticket {
    lines: Rc<RefCell<HashMap<PartitionKey, Line>>>,
    key: PartitionKey,
    number: i64,
    serving: Rc<OffsetWatch>,
}

impl Ticket {
    /// Resolves once every earlier ticket for the partition is done: the holder may append now,
    /// and must drop the ticket right after (appending is synchronous).
    pub async fn turn(&self) {
        // The watch is closed by nobody: the line outlives every ticket in it.
        self.serving.wait_at_least(self.number).await;
    }

    /// Whether every earlier ticket is done.
    #[cfg(test)]
    pub fn is_turn(&self) -> bool {
        self.serving.get() >= self.number
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut lines = self.lines.borrow_mut();
        let Some(line) = lines.get_mut(&self.key) else {
            // Cannot happen: a line lives while any of its tickets does.
            tracing::error!(partition = self.key.1, "an append ticket outlived its line");
            return;
        };
        let mut serving = line.serving.get();
        if self.number != serving {
            // Gave up before its turn: skipped once the earlier ones are done.
            line.done_early.insert(self.number);
            return;
        }
        serving += 1;
        while line.done_early.remove(&serving) {
            serving += 1;
        }
        let watch = line.serving.clone();
        if serving == line.next {
            // Nobody left in line: the partition goes back to appending at once.
            lines.remove(&self.key);
        }
        drop(lines);
        watch.advance(serving);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn run<F, T>(test: F)
    where
        F: FnOnce() -> T + Send + 'static,
        T: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(test)
            .unwrap()
            .join()
            .unwrap();
    }

    fn key(partition: i32) -> PartitionKey {
        (Uuid::nil(), partition)
    }

    /// Tickets are served in the order they were taken, whatever order their holders wake in;
    /// once the last is done the partition has no line and appends go straight in again.
    #[test]
    fn appends_take_their_turns_in_arrival_order() {
        run(|| async {
            let order = AppendOrder::new();
            assert!(!order.is_waiting(&key(0)));
            let tickets: Vec<Ticket> = (0..4).map(|_| order.join(key(0))).collect();
            assert!(order.is_waiting(&key(0)));
            assert!(!order.is_waiting(&key(1)), "lines are per partition");
            let appended = Rc::new(RefCell::new(Vec::new()));
            // Holders spawned last first: they wake in the wrong order and must wait.
            let tasks: Vec<_> = tickets
                .into_iter()
                .enumerate()
                .rev()
                .map(|(n, ticket)| {
                    let appended = appended.clone();
                    glommio::spawn_local(async move {
                        ticket.turn().await;
                        appended.borrow_mut().push(n);
                        drop(ticket);
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            assert_eq!(*appended.borrow(), vec![0, 1, 2, 3]);
            assert!(!order.is_waiting(&key(0)));
            assert_eq!(order.lines(), 0);
        });
    }

    /// A ticket given up before its turn is skipped, but only once every earlier one is done: a
    /// later append never overtakes an earlier one that is still catching up.
    #[test]
    fn a_ticket_given_up_is_skipped_in_its_turn() {
        run(|| async {
            let order = AppendOrder::new();
            let first = order.join(key(0));
            let second = order.join(key(0));
            let third = order.join(key(0));
            assert!(first.is_turn());
            drop(second);
            assert!(!third.is_turn(), "the first still holds its turn");
            assert!(order.is_waiting(&key(0)));
            drop(first);
            assert!(third.is_turn());
            // A newcomer lines up behind the third.
            let fourth = order.join(key(0));
            assert!(!fourth.is_turn());
            drop(third);
            assert!(fourth.is_turn());
            drop(fourth);
            assert_eq!(order.lines(), 0);
            // A fresh line starts over.
            let again = order.join(key(0));
            assert!(again.is_turn());
        });
    }

    /// Dropping the tickets in any order leaves no line behind.
    #[test]
    fn lines_are_removed_whatever_the_drop_order() {
        run(|| async {
            let order = AppendOrder::new();
            for pattern in [[2usize, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]] {
                let mut tickets: Vec<Option<Ticket>> =
                    (0..3).map(|_| Some(order.join(key(7)))).collect();
                for n in pattern {
                    assert!(order.is_waiting(&key(7)));
                    tickets[n] = None;
                }
                assert_eq!(order.lines(), 0, "{pattern:?}");
            }
        });
    }
}
