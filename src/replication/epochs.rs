//! Leader epochs: the follower's truncation rule after a leader change (KIP-101/279), and the
//! OffsetForLeaderEpoch semantics it relies on.

/// No epoch / no offset, as OffsetForLeaderEpoch says it.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// Kafka's leader epoch cache, (epoch, start offset) entries, both strictly increasing: the
/// reference model the tests check the truncation rule (and `epoch_lookup`, which answers the
/// same questions from the log itself) against.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

#[cfg(test)]
impl EpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The newest epoch, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// A batch of `epoch` was appended at `offset`. Records the epoch when it is new; an older
    /// epoch is ignored (the log refuses such appends anyway).
    pub fn assign(&mut self, epoch: i32, offset: i64) {
        match self.entries.last() {
            Some(&(last, _)) if epoch <= last => {}
            Some(&(_, start)) if offset < start => {}
            _ => self.entries.push((epoch, offset)),
        }
    }

    /// The log was cut to end at `end_offset`: epochs that started at or after it are gone.
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        self.entries.retain(|e| e.1 < end_offset);
    }

    /// Retention removed everything below `start_offset`: the epoch covering it now starts there.
    pub fn truncate_from_start(&mut self, start_offset: i64) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|e| e.1 <= start_offset)
            .unwrap_or(0);
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.max(start_offset);
        }
    }

    /// OffsetForLeaderEpoch: (the largest epoch <= `requested` this replica has, the offset where
    /// it ended: the start of the next epoch, or `log_end` for the newest). Undefined when
    /// `requested` is newer than anything here or nothing is here.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH || self.entries.is_empty() {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end);
        }
        let Some(higher) = self.entries.iter().position(|e| e.0 > requested) else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        let next_start = self.entries[higher].1;
        if higher == 0 {
            // Older than anything left here: it ended before the oldest epoch we know began.
            (requested, next_start)
        } else {
            (self.entries[higher - 1].0, next_start)
        }
    }
}

/// Where a follower cuts its log after asking the new leader about its newest epoch.
///
/// `leader_answer` is the leader's end offset for `my_latest_epoch`; `mine_for_answered` is this
/// replica's own end offset for the epoch the leader answered with (the same lookup on its own
/// log). The follower keeps only what the leader also has: up to the leader's end of that epoch,
/// and where the leader answered with an older epoch, no further than where that epoch ends here
/// either. Never beyond `my_end`; an undefined answer (the leader has nothing) keeps nothing.
pub fn truncation_offset(
    leader_answer: (i32, i64),
    my_latest_epoch: i32,
    my_end: i64,
    mine_for_answered: (i32, i64),
) -> i64 {
    let (epoch, leader_end) = leader_answer;
    if epoch == UNDEFINED_EPOCH || leader_end == UNDEFINED_OFFSET {
        return 0;
    }
    let bound = if my_latest_epoch == epoch {
        leader_end
    } else {
        let (my_epoch, my_epoch_end) = mine_for_answered;
        if my_epoch == UNDEFINED_EPOCH {
            0
        } else {
            leader_end.min(my_epoch_end)
        }
    };
    bound.clamp(0, my_end.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncate(answer: (i32, i64), mine: &EpochCache, my_end: i64) -> i64 {
        truncation_offset(
            answer,
            mine.latest_epoch().unwrap_or(UNDEFINED_EPOCH),
            my_end,
            mine.end_offset_for(answer.0, my_end),
        )
    }

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for (e, o) in entries {
            c.assign(*e, *o);
        }
        c
    }

    #[test]
    fn assign_keeps_only_new_epochs() {
        let c = cache(&[(0, 0), (0, 5), (2, 10), (1, 12), (3, 20)]);
        assert_eq!(c.entries(), &[(0, 0), (2, 10), (3, 20)]);
        assert_eq!(c.latest_epoch(), Some(3));
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for(4, 40), (4, 40));
        assert_eq!(c.end_offset_for(3, 40), (3, 25));
        assert_eq!(
            c.end_offset_for(2, 40),
            (1, 10),
            "2 never led here: 1 ended at 10"
        );
        assert_eq!(c.end_offset_for(0, 40), (0, 0));
        assert_eq!(c.end_offset_for(5, 40), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
        assert_eq!(
            c.end_offset_for(-1, 40),
            (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        );
        assert_eq!(
            EpochCache::default().end_offset_for(0, 0),
            (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        );
    }

    #[test]
    fn truncation_drops_epochs() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        c.truncate_from_end(25);
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.truncate_from_end(11);
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.truncate_from_start(12);
        assert_eq!(c.entries(), &[(3, 12)]);
        let mut d = cache(&[(1, 0), (3, 10)]);
        d.truncate_from_start(10);
        assert_eq!(d.entries(), &[(3, 10)]);
    }

    #[test]
    fn follower_truncates_what_the_new_leader_never_had() {
        // Old leader wrote epoch 1 up to 15; the new leader only got up to 12, then led epoch 2.
        let old = cache(&[(0, 0), (1, 5)]);
        let new_leader = cache(&[(0, 0), (1, 5), (2, 12)]);
        let answer = new_leader.end_offset_for(old.latest_epoch().unwrap(), 30);
        assert_eq!(answer, (1, 12));
        assert_eq!(truncate(answer, &old, 15), 12);
    }

    #[test]
    fn follower_behind_keeps_everything() {
        let follower = cache(&[(0, 0), (1, 5)]);
        let leader = cache(&[(0, 0), (1, 5), (2, 12)]);
        let answer = leader.end_offset_for(1, 30);
        assert_eq!(truncate(answer, &follower, 9), 9);
    }

    #[test]
    fn follower_with_an_epoch_the_leader_never_saw() {
        // The follower (old leader) wrote epoch 2 that no one else got; the new leader is in
        // epoch 3 and had epoch 1 until 20.
        let follower = cache(&[(1, 0), (2, 18)]);
        let leader = cache(&[(1, 0), (3, 20)]);
        let answer = leader.end_offset_for(2, 50);
        assert_eq!(answer, (1, 20));
        // Epoch 1 ended at 18 here: everything from 18 on diverges.
        assert_eq!(truncate(answer, &follower, 30), 18);
    }

    #[test]
    fn empty_leader_means_keep_nothing() {
        let follower = cache(&[(0, 0)]);
        let answer = EpochCache::default().end_offset_for(0, 0);
        assert_eq!(truncate(answer, &follower, 10), 0);
        assert_eq!(truncate((0, 10), &EpochCache::default(), 0), 0);
    }
}
