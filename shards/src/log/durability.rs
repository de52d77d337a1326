//! What the group commit may call durable (`synced_end`), as a rule apart from the I/O so that it
//! can be checked against a model of the device.
//!
//! The rule: an offset is durable once a flush (fdatasync) issued after its write completed has
//! completed, or when the O_DSYNC write that carried it has completed. An O_DSYNC write proves
//! nothing about earlier writes: on a drive with a volatile write cache and FUA, an O_DSYNC direct
//! write that overwrites allocated blocks is sent as one FUA write, with no cache flush, and makes
//! only its own blocks durable (on this project's virtio disks the kernel emulates FUA with a full
//! flush, which hid the difference). So a group written with O_DSYNC moves `synced_end` only when
//! everything before it was already durable; otherwise its waiters get a flush of their own.

/// `synced_end` once a group of writes covering `[group_start, group_end)` completed; `fua`: it
/// went through the O_DSYNC handle (one write).
pub(super) fn after_group(synced_end: i64, group_start: i64, group_end: i64, fua: bool) -> i64 {
    if fua && synced_end >= group_start {
        synced_end.max(group_end)
    } else {
        synced_end
    }
}

/// `synced_end` once a flush completed that was issued when every offset below `written_at_issue`
/// had been written (its writes completed).
pub(super) fn after_flush(synced_end: i64, written_at_issue: i64) -> i64 {
    synced_end.max(written_at_issue)
}

#[cfg(test)]
mod tests {
    //! A device with a volatile write cache under the commit pipeline's decisions: a plain write
    //! lands in the cache, a FUA write is durable on completion, a flush makes durable every write
    //! that had completed when it was issued, and a power cut drops the rest. At every step, no
    //! offset the log calls durable may be one the device would lose.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Append(i64),
        /// Stage every pending offset as one group (if none is in flight).
        IssueGroup {
            fua: bool,
        },
        CompleteGroup,
        /// Issue a flush (if none is in flight: the sync lock).
        IssueFlush,
        CompleteFlush,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1i64..20).prop_map(Step::Append),
            any::<bool>().prop_map(|fua| Step::IssueGroup { fua }),
            Just(Step::CompleteGroup),
            Just(Step::IssueFlush),
            Just(Step::CompleteFlush),
        ]
    }

    #[derive(Default)]
    struct Model {
        log_end: i64,
        /// Offsets below were handed to a group (in flight or written).
        staged_end: i64,
        in_flight: Option<(i64, i64, bool)>,
        /// The pipeline's view.
        written_end: i64,
        synced_end: i64,
        flush_in_flight: Option<i64>,
        /// The device: per offset, durable or only in the cache (completed writes).
        durable: Vec<bool>,
        /// Completed writes in the volatile cache, as offset ranges, and, per in-flight flush,
        /// the ones it will make durable.
        cached: Vec<(i64, i64)>,
        flush_covers: Vec<(i64, i64)>,
    }

    impl Model {
        fn apply(&mut self, step: &Step) {
            match *step {
                Step::Append(n) => {
                    self.log_end += n;
                    self.durable.resize(self.log_end as usize, false);
                }
                Step::IssueGroup { fua } => {
                    if self.in_flight.is_none() && self.staged_end < self.log_end {
                        self.in_flight = Some((self.staged_end, self.log_end, fua));
                        self.staged_end = self.log_end;
                    }
                }
                Step::CompleteGroup => {
                    if let Some((start, end, fua)) = self.in_flight.take() {
                        if fua {
                            self.durable[start as usize..end as usize].fill(true);
                        } else {
                            self.cached.push((start, end));
                        }
                        self.synced_end = after_group(self.synced_end, start, end, fua);
                        self.written_end = end;
                    }
                }
                Step::IssueFlush => {
                    if self.flush_in_flight.is_none() {
                        self.flush_in_flight = Some(self.written_end);
                        self.flush_covers = std::mem::take(&mut self.cached);
                    }
                }
                Step::CompleteFlush => {
                    if let Some(written_at_issue) = self.flush_in_flight.take() {
                        for (start, end) in self.flush_covers.drain(..) {
                            self.durable[start as usize..end as usize].fill(true);
                        }
                        self.synced_end = after_flush(self.synced_end, written_at_issue);
                    }
                }
            }
        }

        /// A power cut now: what the log acknowledged as durable must all survive.
        fn check(&self) -> Result<(), TestCaseError> {
            let lost = (0..self.synced_end).find(|&o| !self.durable[o as usize]);
            prop_assert!(
                lost.is_none(),
                "offset {lost:?} acknowledged (synced_end {}) but only in the cache",
                self.synced_end
            );
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn no_acknowledged_offset_is_lost_at_any_power_cut(steps in prop::collection::vec(step(), 1..200)) {
            let mut model = Model::default();
            for step in &steps {
                model.apply(step);
                model.check()?;
            }
        }
    }

    /// The sequence the old rule got wrong: a plain group waiting for its flush, then a FUA group
    /// completing first, must not make the plain group count as durable.
    #[test]
    fn a_fua_write_does_not_cover_an_earlier_unflushed_group() {
        let mut model = Model::default();
        for step in [
            Step::Append(5),
            Step::IssueGroup { fua: false },
            Step::CompleteGroup,
            Step::IssueFlush,
            Step::Append(3),
            Step::IssueGroup { fua: true },
            Step::CompleteGroup,
        ] {
            model.apply(&step);
        }
        assert_eq!(model.synced_end, 0);
        model.check().unwrap();
        model.apply(&Step::CompleteFlush);
        assert_eq!(model.synced_end, 5);
        // [5, 8) was counted by no flush (it completed after the flush was issued) and the next
        // FUA group follows it: the log keeps waiting for a flush rather than guess.
        model.apply(&Step::Append(2));
        model.apply(&Step::IssueGroup { fua: true });
        model.apply(&Step::CompleteGroup);
        assert_eq!(model.synced_end, 5);
    }
}
