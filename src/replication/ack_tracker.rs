//! The leader's view of a partition's replicas: what each has acknowledged as durable, the high
//! watermark that follows from it, and the acks=all requests waiting on it.
//!
//! Pure state machine: inputs are acknowledgements, ISR changes and the current time; outputs are
//! the completions of waiting requests. The shard that owns the partition does the I/O and turns
//! each completion into a Produce answer.
//!
//! Rules (DESIGN.md, "Produce path and acks"):
//! - high watermark = the lowest acknowledged durable log end over the ISR, the leader's own
//!   durable end included; it never moves backwards on the leader;
//! - waiters complete in offset order once the high watermark reaches their end offset;
//! - an ISR smaller than `min.insync.replicas` fails every waiter with
//!   NOT_ENOUGH_REPLICAS_AFTER_APPEND (produce refuses to append with NOT_ENOUGH_REPLICAS
//!   before that, from the metadata's ISR);
//! - a waiter past its deadline fails with REQUEST_TIMED_OUT, so no wait hangs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Why an acks=all request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckFailure {
    /// The ISR fell below `min.insync.replicas` while the request waited.
    NotEnoughReplicasAfterAppend,
    /// The request timeout passed first.
    TimedOut,
    /// This broker stopped leading the partition while the request waited.
    NotLeader,
}

impl AckFailure {
    /// The Kafka error code for it.
    pub fn code(self) -> i16 {
        use kafka_protocol::ResponseError;
        match self {
            AckFailure::NotEnoughReplicasAfterAppend => {
                ResponseError::NotEnoughReplicasAfterAppend.code()
            }
            AckFailure::TimedOut => ResponseError::RequestTimedOut.code(),
            AckFailure::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        }
    }
}

/// What became of a waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<W> {
    pub waiter: W,
    pub result: Result<(), AckFailure>,
}

struct Waiter<W> {
    end_offset: i64,
    deadline_ms: u64,
    waiter: W,
}

/// One partition's acknowledgements on its leader. `W` names a waiting request (a channel to
/// answer it, or a number in tests).
pub struct AckTracker<W> {
    leader: i32,
    min_insync: usize,
    isr: BTreeSet<i32>,
    /// Acknowledged durable log end per replica, the leader included.
    acked: BTreeMap<i32, i64>,
    high_watermark: i64,
    /// In append order, which is offset order.
    waiters: VecDeque<Waiter<W>>,
}

impl<W> AckTracker<W> {
    /// A tracker for a leader starting at `high_watermark` (what it knew as leader or follower).
    /// ISR followers count as acknowledged up to it until they say more: nothing is known of them
    /// yet, and the high watermark must not move back.
    pub fn new(leader: i32, isr: &[i32], min_insync: i32, high_watermark: i64) -> Self {
        let mut tracker = AckTracker {
            leader,
            min_insync: usize::try_from(min_insync).unwrap_or(0),
            isr: BTreeSet::new(),
            acked: BTreeMap::new(),
            high_watermark,
            waiters: VecDeque::new(),
        };
        tracker.acked.insert(leader, high_watermark);
        tracker.set_isr_members(isr);
        tracker
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// What `replica` acknowledged last, if anything.
    #[cfg(test)]
    pub fn acked(&self, replica: i32) -> Option<i64> {
        self.acked.get(&replica).copied()
    }

    /// Waiting requests.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// A request waits for the high watermark to reach `end_offset` (one past its last offset).
    /// Completes at once when it already has.
    pub fn wait(&mut self, end_offset: i64, deadline_ms: u64, waiter: W) -> Option<Completion<W>> {
        if end_offset <= self.high_watermark {
            return Some(Completion {
                waiter,
                result: Ok(()),
            });
        }
        if self.isr.len() < self.min_insync {
            return Some(Completion {
                waiter,
                result: Err(AckFailure::NotEnoughReplicasAfterAppend),
            });
        }
        // Appends come in offset order; keep the queue sorted even if a caller does not.
        let at = self
            .waiters
            .iter()
            .rposition(|w| w.end_offset <= end_offset)
            .map_or(0, |i| i + 1);
        self.waiters.insert(
            at,
            Waiter {
                end_offset,
                deadline_ms,
                waiter,
            },
        );
        None
    }

    /// `replica` (the leader itself for its own flushes) reports every offset below `durable_end`
    /// durable. The report replaces the replica's previous one, even when lower: a follower that
    /// restarted and lost what it had not flushed (flush.ms/never) has only what it says now
    /// (issue 14 item 3). The high watermark does not move back for it.
    pub fn on_ack(&mut self, replica: i32, durable_end: i64) -> Vec<Completion<W>> {
        self.acked.insert(replica, durable_end);
        self.advance()
    }

    /// The ISR as committed in the metadata (the leader is always in it).
    pub fn set_isr(&mut self, isr: &[i32]) -> Vec<Completion<W>> {
        self.set_isr_members(isr);
        if self.isr.len() < self.min_insync {
            return self.fail_all(AckFailure::NotEnoughReplicasAfterAppend);
        }
        self.advance()
    }

    /// `min.insync.replicas` changed.
    pub fn set_min_insync(&mut self, min_insync: i32) -> Vec<Completion<W>> {
        self.min_insync = usize::try_from(min_insync).unwrap_or(0);
        if self.isr.len() < self.min_insync {
            return self.fail_all(AckFailure::NotEnoughReplicasAfterAppend);
        }
        Vec::new()
    }

    /// Fails the waiters whose deadline passed.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Completion<W>> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            if w.deadline_ms <= now_ms {
                out.push(Completion {
                    waiter: w.waiter,
                    result: Err(AckFailure::TimedOut),
                });
            } else {
                kept.push_back(w);
            }
        }
        self.waiters = kept;
        out
    }

    /// Ends every wait with `failure` (the partition is no longer led here, or it closes).
    pub fn fail_all(&mut self, failure: AckFailure) -> Vec<Completion<W>> {
        self.waiters
            .drain(..)
            .map(|w| Completion {
                waiter: w.waiter,
                result: Err(failure),
            })
            .collect()
    }

    /// A replica that joins the ISR has no acknowledgement credit (it counts as having the high
    /// watermark, which holds the high watermark where it is) until it acknowledges again: what
    /// it reported before it joined may predate a restart that lost it (Kafka resets a replica's
    /// state when it rejoins in a new broker epoch, KIP-903).
    fn set_isr_members(&mut self, isr: &[i32]) {
        let mut next: BTreeSet<i32> = isr.iter().copied().collect();
        next.insert(self.leader);
        for member in &next {
            if !self.isr.contains(member) && *member != self.leader {
                self.acked.insert(*member, self.high_watermark);
            }
        }
        self.isr = next;
    }

    fn advance(&mut self) -> Vec<Completion<W>> {
        let lowest = self
            .isr
            .iter()
            .map(|r| self.acked.get(r).copied().unwrap_or(self.high_watermark))
            .min()
            .unwrap_or(self.high_watermark);
        self.high_watermark = self.high_watermark.max(lowest);
        let mut out = Vec::new();
        while self
            .waiters
            .front()
            .is_some_and(|w| w.end_offset <= self.high_watermark)
        {
            if let Some(w) = self.waiters.pop_front() {
                out.push(Completion {
                    waiter: w.waiter,
                    result: Ok(()),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(waiters: &[u32]) -> Vec<Completion<u32>> {
        waiters
            .iter()
            .map(|w| Completion {
                waiter: *w,
                result: Ok(()),
            })
            .collect()
    }

    #[test]
    fn high_watermark_is_the_lowest_ack_over_the_isr() {
        let mut t: AckTracker<u32> = AckTracker::new(1, &[1, 2, 3], 2, 0);
        assert!(t.on_ack(1, 10).is_empty());
        assert_eq!(t.high_watermark(), 0);
        t.on_ack(2, 7);
        assert_eq!(t.high_watermark(), 0, "replica 3 has acknowledged nothing");
        t.on_ack(3, 5);
        assert_eq!(t.high_watermark(), 5);
        t.on_ack(3, 12);
        assert_eq!(t.high_watermark(), 7);
        t.on_ack(2, 12);
        assert_eq!(
            t.high_watermark(),
            10,
            "bounded by the leader's own durable end"
        );
    }

    #[test]
    fn waiters_complete_in_offset_order() {
        let mut t = AckTracker::new(1, &[1, 2], 2, 0);
        assert!(t.wait(3, 1000, 1).is_none());
        assert!(t.wait(6, 1000, 2).is_none());
        assert!(t.wait(9, 1000, 3).is_none());
        t.on_ack(1, 9);
        assert_eq!(t.on_ack(2, 7), ok(&[1, 2]));
        assert_eq!(t.waiting(), 1);
        assert_eq!(t.on_ack(2, 9), ok(&[3]));
        assert_eq!(t.wait(4, 1000, 4), Some(ok(&[4]).remove(0)));
    }

    #[test]
    fn never_moves_backwards() {
        let mut t: AckTracker<u32> = AckTracker::new(1, &[1, 2], 1, 5);
        t.on_ack(1, 8);
        t.on_ack(2, 8);
        assert_eq!(t.high_watermark(), 8);
        t.on_ack(2, 3);
        assert_eq!(
            t.acked(2),
            Some(3),
            "a lower report replaces the higher one"
        );
        assert_eq!(t.high_watermark(), 8);
        // A replica joining the ISR with a lower ack does not pull it back.
        t.set_isr(&[1, 2, 3]);
        t.on_ack(3, 2);
        assert_eq!(t.high_watermark(), 8);
    }

    /// Issue 14 item 3: a follower leaves the ISR, restarts having lost what it had not flushed
    /// (flush=never), and is added back. Its acknowledgement from before the restart must not
    /// count: the high watermark would cover records it no longer has, and it could be elected.
    #[test]
    fn a_replica_rejoining_the_isr_has_no_credit_until_it_acknowledges_again() {
        let mut t: AckTracker<u32> = AckTracker::new(1, &[1, 2, 3], 1, 0);
        for replica in [1, 2, 3] {
            t.on_ack(replica, 100);
        }
        assert_eq!(t.high_watermark(), 100);
        t.on_ack(1, 150);
        t.on_ack(3, 150);
        t.set_isr(&[1, 2]);
        // Broker 3 restarts with 80 and is added back before it acknowledges anything more.
        t.set_isr(&[1, 2, 3]);
        t.on_ack(2, 150);
        assert_eq!(
            t.high_watermark(),
            100,
            "counted 3's acknowledgement from before"
        );
        // A report after the restart counts for what it says, even below the earlier one.
        t.on_ack(3, 80);
        assert_eq!(t.acked(3), Some(80));
        assert_eq!(
            t.high_watermark(),
            100,
            "the high watermark never moves back"
        );
        t.on_ack(3, 150);
        assert_eq!(t.high_watermark(), 150);
    }

    #[test]
    fn shrinking_isr_advances_or_fails_waiters() {
        let mut t = AckTracker::new(1, &[1, 2, 3], 2, 0);
        t.wait(5, 1000, 1);
        t.on_ack(1, 5);
        t.on_ack(2, 5);
        assert_eq!(t.high_watermark(), 0);
        // Replica 3 leaves the ISR: 2 remain, enough, and the waiter completes.
        assert_eq!(t.set_isr(&[1, 2]), ok(&[1]));
        t.wait(9, 1000, 2);
        let failed = t.set_isr(&[1]);
        assert_eq!(
            failed,
            vec![Completion {
                waiter: 2,
                result: Err(AckFailure::NotEnoughReplicasAfterAppend)
            }]
        );
        assert_eq!(
            t.wait(9, 1000, 3).map(|c| c.result),
            Some(Err(AckFailure::NotEnoughReplicasAfterAppend))
        );
        t.set_isr(&[1, 2]);
        assert_eq!(t.wait(9, 1000, 4), None);
    }

    #[test]
    fn isr_without_the_leader_still_counts_it() {
        let mut t: AckTracker<u32> = AckTracker::new(1, &[2], 1, 0);
        t.on_ack(2, 4);
        assert_eq!(t.high_watermark(), 0);
        t.on_ack(1, 3);
        assert_eq!(t.high_watermark(), 3);
    }

    #[test]
    fn deadlines_time_out_only_the_late() {
        let mut t = AckTracker::new(1, &[1, 2], 1, 0);
        t.wait(5, 100, 1);
        t.wait(6, 300, 2);
        assert!(t.on_tick(99).is_empty());
        assert_eq!(
            t.on_tick(100),
            vec![Completion {
                waiter: 1,
                result: Err(AckFailure::TimedOut)
            }]
        );
        t.on_ack(1, 6);
        assert_eq!(t.on_ack(2, 6), ok(&[2]));
        assert!(t.on_tick(1000).is_empty());
    }

    #[test]
    fn raising_min_insync_fails_waiters() {
        let mut t = AckTracker::new(1, &[1, 2], 1, 0);
        t.wait(5, 100, 1);
        assert_eq!(
            t.set_min_insync(3).pop().map(|c| c.result),
            Some(Err(AckFailure::NotEnoughReplicasAfterAppend))
        );
        assert_eq!(AckFailure::NotEnoughReplicasAfterAppend.code(), 20);
        assert_eq!(AckFailure::TimedOut.code(), 7);
    }

    #[test]
    fn out_of_order_waits_stay_sorted() {
        let mut t = AckTracker::new(1, &[1], 1, 0);
        t.wait(9, 100, 3);
        t.wait(2, 100, 1);
        t.wait(5, 100, 2);
        assert_eq!(t.on_ack(1, 6), ok(&[1, 2]));
    }
}
