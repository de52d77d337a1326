//! Leader epochs of one partition replica: which epoch starts at which offset, the answer to
//! OffsetForLeaderEpoch, and the follower's truncation rule after a leader change (KIP-101/279).
//!
//! Pure: the cache is kept in step with the log by its owner (`assign` on append, `truncate_*`
//! when the log is cut) and saved in Kafka's `leader-epoch-checkpoint` text format.

/// No epoch / no offset, as OffsetForLeaderEpoch says it.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// Checkpoint format version (first line of the file).
const CHECKPOINT_VERSION: u32 = 0;

/// (epoch, start offset) entries, both strictly increasing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckpointError(pub String);

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad leader epoch checkpoint: {}", self.0)
    }
}

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

    /// Kafka's `leader-epoch-checkpoint`: version, entry count, then "epoch offset" lines.
    pub fn to_checkpoint(&self) -> String {
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            out.push_str(&format!("{epoch} {offset}\n"));
        }
        out
    }

    pub fn from_checkpoint(text: &str) -> Result<EpochCache, CheckpointError> {
        let mut lines = text.lines();
        let mut next = |what: &str| {
            lines
                .next()
                .ok_or_else(|| CheckpointError(format!("missing {what}")))
        };
        let version: u32 = next("version")?
            .trim()
            .parse()
            .map_err(|_| CheckpointError("version is not a number".into()))?;
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError(format!("unknown version {version}")));
        }
        let count: usize = next("count")?
            .trim()
            .parse()
            .map_err(|_| CheckpointError("count is not a number".into()))?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let line = next("entry")?;
            let mut parts = line.split_whitespace();
            let (Some(epoch), Some(offset), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(CheckpointError(format!("bad entry {line:?}")));
            };
            let epoch: i32 = epoch
                .parse()
                .map_err(|_| CheckpointError(format!("bad epoch in {line:?}")))?;
            let offset: i64 = offset
                .parse()
                .map_err(|_| CheckpointError(format!("bad offset in {line:?}")))?;
            if cache
                .entries
                .last()
                .is_some_and(|&(e, o)| epoch <= e || offset < o)
            {
                return Err(CheckpointError(format!("entry {line:?} out of order")));
            }
            cache.entries.push((epoch, offset));
        }
        Ok(cache)
    }
}

/// Where a follower cuts its log after asking the new leader about its newest epoch.
///
/// `leader_answer` is the leader's `end_offset_for(my latest epoch)`. The follower keeps only
/// what the leader also has: up to the leader's end of that epoch, and where the leader answered
/// with an older epoch, no further than where that epoch ends here either. The result never
/// exceeds `my_end`; an undefined answer (the leader has nothing of it) keeps nothing.
pub fn truncation_offset(leader_answer: (i32, i64), mine: &EpochCache, my_end: i64) -> i64 {
    let (epoch, leader_end) = leader_answer;
    if epoch == UNDEFINED_EPOCH || leader_end == UNDEFINED_OFFSET {
        return 0;
    }
    let bound = if mine.latest_epoch() == Some(epoch) {
        leader_end
    } else {
        let (my_epoch, my_epoch_end) = mine.end_offset_for(epoch, my_end);
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
    fn checkpoint_round_trip_and_rejects_garbage() {
        let c = cache(&[(0, 0), (2, 17), (5, 900)]);
        let text = c.to_checkpoint();
        assert_eq!(text, "0\n3\n0 0\n2 17\n5 900\n");
        assert_eq!(EpochCache::from_checkpoint(&text), Ok(c));
        assert_eq!(
            EpochCache::from_checkpoint("0\n0\n"),
            Ok(EpochCache::default())
        );
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n1 0\n",
            "0\n1\nx 0\n",
            "0\n1\n1 0 3\n",
            "0\n2\n2 5\n1 9\n",
            "0\nlots\n",
        ] {
            assert!(EpochCache::from_checkpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn follower_truncates_what_the_new_leader_never_had() {
        // Old leader wrote epoch 1 up to 15; the new leader only got up to 12, then led epoch 2.
        let old = cache(&[(0, 0), (1, 5)]);
        let new_leader = cache(&[(0, 0), (1, 5), (2, 12)]);
        let answer = new_leader.end_offset_for(old.latest_epoch().unwrap(), 30);
        assert_eq!(answer, (1, 12));
        assert_eq!(truncation_offset(answer, &old, 15), 12);
    }

    #[test]
    fn follower_behind_keeps_everything() {
        let follower = cache(&[(0, 0), (1, 5)]);
        let leader = cache(&[(0, 0), (1, 5), (2, 12)]);
        let answer = leader.end_offset_for(1, 30);
        assert_eq!(truncation_offset(answer, &follower, 9), 9);
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
        assert_eq!(truncation_offset(answer, &follower, 30), 18);
    }

    #[test]
    fn empty_leader_means_keep_nothing() {
        let follower = cache(&[(0, 0)]);
        let answer = EpochCache::default().end_offset_for(0, 0);
        assert_eq!(truncation_offset(answer, &follower, 10), 0);
        assert_eq!(truncation_offset((0, 10), &EpochCache::default(), 0), 0);
    }
}
