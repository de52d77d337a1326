//! When a partition's leader asks the controller to shrink or expand the ISR.
//!
//! Pure state machine, Kafka's rule: a follower is caught up at time T when it acknowledged at
//! least the log end the leader had at T. Each acknowledgement records the leader's end at that
//! moment; the next one that reaches it proves the follower was caught up then. A follower in the
//! ISR not caught up for `replica.lag.time.max.ms` is removed; one outside that has acknowledged
//! up to the high watermark is added back. One change is in flight at a time (the controller
//! commits it, the shard sees it in the next image and calls [`IsrTracker::set_isr`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::control::command::ChangeBasis;

#[derive(Clone, Copy, Debug)]
struct FollowerState {
    /// Last time the follower was caught up to the leader.
    caught_up_ms: u64,
    /// Log end the leader had at the previous acknowledgement, and when.
    leader_end_then: i64,
    then_ms: u64,
    /// What the follower last acknowledged durable: its latest report, not the highest. A
    /// follower that restarted and lost what it had not flushed reports less than before, and
    /// only what it has now counts (issue 14 item 3).
    acked: i64,
    /// The follower's incarnation (broker epoch) when it sent that report, as this leader's
    /// image had it; an expansion names it, and the controller refuses the expansion if the
    /// follower has restarted since (KIP-903).
    incarnation: Option<u64>,
}

/// A proposed ISR for the controller (Kafka's AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub isr: Vec<i32>,
    /// The ISR it was decided on, and the incarnation each added follower acknowledged in.
    pub basis: ChangeBasis,
}

pub struct IsrTracker {
    leader: i32,
    lag_max_ms: u64,
    isr: BTreeSet<i32>,
    followers: BTreeMap<i32, FollowerState>,
    in_flight: bool,
}

impl IsrTracker {
    /// A new leader gives every follower a full lag period from `now_ms` before judging it.
    pub fn new(leader: i32, replicas: &[i32], isr: &[i32], lag_max_ms: u64, now_ms: u64) -> Self {
        let followers = replicas
            .iter()
            .filter(|r| **r != leader)
            .map(|r| {
                (
                    *r,
                    FollowerState {
                        caught_up_ms: now_ms,
                        leader_end_then: i64::MAX,
                        then_ms: now_ms,
                        acked: -1,
                        incarnation: None,
                    },
                )
            })
            .collect();
        IsrTracker {
            leader,
            lag_max_ms,
            isr: isr.iter().copied().collect(),
            followers,
            in_flight: false,
        }
    }

    pub fn set_lag_max_ms(&mut self, lag_max_ms: u64) {
        self.lag_max_ms = lag_max_ms;
    }

    /// The committed ISR from a new metadata image; a change in flight is settled by it.
    pub fn set_isr(&mut self, isr: &[i32]) {
        self.isr = isr.iter().copied().collect();
        self.in_flight = false;
    }

    /// The proposal failed (stale epoch, controller unavailable): a later poll may try again.
    pub fn proposal_failed(&mut self) {
        self.in_flight = false;
    }

    /// `follower`, registered as `incarnation` in the leader's image (None: not registered),
    /// acknowledged `acked` durable while the leader's log ended at `leader_end`.
    pub fn on_ack(
        &mut self,
        follower: i32,
        acked: i64,
        leader_end: i64,
        now_ms: u64,
        incarnation: Option<u64>,
    ) {
        let Some(state) = self.followers.get_mut(&follower) else {
            return;
        };
        if acked >= leader_end {
            state.caught_up_ms = now_ms;
        } else if acked >= state.leader_end_then {
            state.caught_up_ms = state.caught_up_ms.max(state.then_ms);
        }
        state.leader_end_then = leader_end;
        state.then_ms = now_ms;
        state.acked = acked;
        state.incarnation = incarnation;
    }

    /// Nothing new on the leader: followers that acknowledged its whole log are caught up now.
    pub fn on_idle(&mut self, leader_end: i64, now_ms: u64) {
        for state in self.followers.values_mut() {
            if state.acked >= leader_end {
                state.caught_up_ms = now_ms;
            }
        }
    }

    /// ISR members (the leader included) caught up within the lag time as of `now_ms`.
    pub fn in_sync_count(&self, now_ms: u64) -> usize {
        let mut members = self.isr.clone();
        members.insert(self.leader);
        members
            .iter()
            .filter(|r| {
                **r == self.leader
                    || self
                        .followers
                        .get(r)
                        .is_some_and(|s| now_ms.saturating_sub(s.caught_up_ms) <= self.lag_max_ms)
            })
            .count()
    }

    /// The ISR change to propose now, if any: removals of laggards first, else additions of
    /// followers caught up to `high_watermark` that may join: `live` gives a live broker's
    /// incarnation, and a follower joins only in the incarnation its acknowledgements came from.
    pub fn poll(
        &mut self,
        high_watermark: i64,
        now_ms: u64,
        live: impl Fn(i32) -> Option<u64>,
    ) -> Option<IsrChange> {
        if self.in_flight {
            return None;
        }
        let lagging: Vec<i32> = self
            .isr
            .iter()
            .filter(|r| **r != self.leader)
            .filter(|r| {
                self.followers
                    .get(r)
                    .is_some_and(|s| now_ms.saturating_sub(s.caught_up_ms) > self.lag_max_ms)
            })
            .copied()
            .collect();
        let mut next = self.isr.clone();
        next.insert(self.leader);
        let mut incarnations = BTreeMap::new();
        if !lagging.is_empty() {
            for r in &lagging {
                next.remove(r);
            }
        } else {
            for (r, s) in &self.followers {
                let Some(incarnation) = s.incarnation.filter(|i| live(*r) == Some(*i)) else {
                    continue;
                };
                if !self.isr.contains(r)
                    && s.acked >= high_watermark
                    && now_ms.saturating_sub(s.caught_up_ms) <= self.lag_max_ms
                {
                    next.insert(*r);
                    incarnations.insert(*r, incarnation);
                }
            }
        }
        if next == self.isr {
            return None;
        }
        self.in_flight = true;
        // The leader first, like the controller lists it.
        let mut isr = vec![self.leader];
        isr.extend(next.into_iter().filter(|r| *r != self.leader));
        let basis = ChangeBasis {
            isr: self.isr.iter().copied().collect(),
            incarnations,
        };
        Some(IsrChange { isr, basis })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_follower_is_removed_after_the_lag_time() {
        let mut t = IsrTracker::new(1, &[1, 2, 3], &[1, 2, 3], 1000, 0);
        t.on_ack(2, 10, 10, 500, Some(1));
        assert_eq!(t.poll(10, 1000, |_| Some(1)).map(|c| c.isr), None);
        t.on_ack(2, 10, 10, 1000, Some(1));
        assert_eq!(t.in_sync_count(1000), 3);
        assert_eq!(t.in_sync_count(1001), 2);
        assert_eq!(
            t.poll(10, 1001, |_| Some(1)).map(|c| c.isr),
            Some(vec![1, 2]),
            "3 never acknowledged"
        );
        assert_eq!(
            t.poll(10, 1002, |_| Some(1)).map(|c| c.isr),
            None,
            "one change in flight"
        );
        t.set_isr(&[1, 2]);
        assert_eq!(t.poll(10, 1500, |_| Some(1)).map(|c| c.isr), None);
    }

    #[test]
    fn a_follower_always_slightly_behind_stays_in_sync() {
        let mut t = IsrTracker::new(1, &[1, 2], &[1, 2], 1000, 0);
        // Each ack reaches the end the leader had at the previous ack.
        let mut end = 0;
        for step in 1..50u64 {
            let acked = end;
            end += 100;
            t.on_ack(2, acked, end, step * 100, Some(1));
            assert_eq!(
                t.poll(acked, step * 100, |_| Some(1)).map(|c| c.isr),
                None,
                "step {step}"
            );
        }
    }

    #[test]
    fn a_follower_falling_further_behind_is_removed() {
        let mut t = IsrTracker::new(1, &[1, 2], &[1, 2], 1000, 0);
        t.on_ack(2, 100, 100, 100, Some(1));
        // From here it acknowledges less than the leader had at its previous ack.
        let mut end = 100;
        for step in 2..30u64 {
            end += 1000;
            t.on_ack(2, 100 + step as i64, end, step * 100, Some(1));
        }
        assert_eq!(t.poll(100, 2900, |_| Some(1)).map(|c| c.isr), Some(vec![1]));
    }

    #[test]
    fn idle_followers_that_have_everything_stay() {
        let mut t = IsrTracker::new(1, &[1, 2], &[1, 2], 1000, 0);
        t.on_ack(2, 50, 50, 10, Some(1));
        t.on_idle(50, 5000);
        assert_eq!(t.poll(50, 5500, |_| Some(1)).map(|c| c.isr), None);
        t.on_idle(60, 9000);
        assert_eq!(t.poll(50, 9000, |_| Some(1)).map(|c| c.isr), Some(vec![1]));
    }

    #[test]
    fn a_caught_up_follower_is_added_back() {
        let mut t = IsrTracker::new(1, &[1, 2, 3], &[1, 2], 1000, 0);
        t.on_ack(3, 40, 100, 100, Some(1));
        assert_eq!(
            t.poll(80, 100, |_| Some(1)).map(|c| c.isr),
            None,
            "below the high watermark"
        );
        t.on_ack(3, 100, 100, 150, Some(1));
        assert_eq!(
            t.poll(100, 150, |r| (r != 3).then_some(1)).map(|c| c.isr),
            None,
            "not eligible (fenced)"
        );
        t.on_ack(3, 100, 100, 200, Some(1));
        assert_eq!(
            t.poll(100, 200, |_| Some(1)).map(|c| c.isr),
            Some(vec![1, 2, 3])
        );
        t.proposal_failed();
        assert_eq!(
            t.poll(100, 210, |_| Some(1)).map(|c| c.isr),
            Some(vec![1, 2, 3])
        );
        t.set_isr(&[1, 2, 3]);
        assert_eq!(t.poll(100, 300, |_| Some(1)).map(|c| c.isr), None);
    }

    /// Issue 14 item 3: a follower that acknowledged 150, then restarted and lost what it had
    /// not flushed, acknowledges 80: it is not caught up, whatever it said before.
    #[test]
    fn a_follower_that_lost_data_is_not_added_back_on_its_old_acknowledgement() {
        let mut t = IsrTracker::new(1, &[1, 2, 3], &[1, 2], 1000, 0);
        t.on_ack(3, 150, 150, 100, Some(1));
        t.on_ack(3, 80, 150, 200, Some(2));
        assert_eq!(t.poll(150, 200, |_| Some(2)).map(|c| c.isr), None);
    }

    /// An expansion names the incarnation the follower's acknowledgements came from (KIP-903),
    /// and none is proposed while the leader's image says the follower has restarted since.
    #[test]
    fn an_expansion_names_the_incarnation_the_follower_acknowledged_in() {
        let mut t = IsrTracker::new(1, &[1, 2, 3], &[1, 2], 1000, 0);
        t.on_ack(3, 100, 100, 100, Some(1));
        assert_eq!(t.poll(100, 100, |_| Some(2)), None, "restarted since");
        t.on_ack(3, 100, 100, 150, Some(2));
        let change = t.poll(100, 150, |_| Some(2)).unwrap();
        assert_eq!(change.isr, vec![1, 2, 3]);
        assert_eq!(change.basis.isr, vec![1, 2]);
        assert_eq!(change.basis.incarnations, [(3, 2)].into());
    }

    #[test]
    fn unknown_replicas_are_ignored() {
        let mut t = IsrTracker::new(1, &[1, 2], &[1, 2], 1000, 0);
        t.on_ack(9, 100, 100, 10, Some(1));
        t.on_ack(2, 100, 100, 10, Some(1));
        assert_eq!(t.poll(100, 20, |_| Some(1)).map(|c| c.isr), None);
    }
}
