//! Truncation (a follower dropping what the new leader never had): removes every batch at or above an
//! offset. The cut file is shrunk with ftruncate and synced, so bytes past the new end are zeros on disk
//! and can never be taken for batches later. Unlinks, directory syncs and the epoch checkpoint run
//! off the reactor (`offload`), each awaited before the next step.

use std::rc::Rc;

use super::index::SegmentIndex;
use super::offload;
use super::producer_state::{self, SegmentView};
use super::recovery::{last_epoch_of, EpochProbe};
use super::segment::{self, ActiveFile, Cursor, ScanStep, Storage};
use super::{LogError, PartitionLog};

/// Recent truncations remembered for waiters (see `LogState::truncated_since`).
pub(super) const TRUNCATIONS_KEPT: usize = 32;

impl PartitionLog {
    /// Removes every batch at or above `offset` (rounded down to the start of the batch containing it);
    /// durable on return. An offset at or below log_start empties the log (log_end = log_start).
    pub async fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        self.detached(move |log| async move { log.truncate_now(offset).await })
            .await
    }

    async fn truncate_now(&self, offset: i64) -> Result<(), LogError> {
        self.check_open()?;
        let _exclusive = self.lock_exclusive().await?;
        self.check_open()?;
        let end = self.state.borrow().log_end;
        if offset >= end {
            return Ok(());
        }
        // From here until the cut is in place, appends are refused (their offsets would be about to
        // vanish) and the state the cut is computed from cannot move.
        self.state.borrow_mut().truncating = true;
        let r = match self.flush_locked(true, end).await {
            Ok(()) => self.truncate_locked(offset).await,
            Err(e) => Err(e),
        };
        self.state.borrow_mut().truncating = false;
        if let Err(e) = &r {
            tracing::error!(dir = ?self.dir, error = %e, "truncation failed; closing the log");
            self.closed.set(true);
        }
        r
    }

    async fn truncate_locked(&self, offset: i64) -> Result<(), LogError> {
        let cfg = self.config.borrow().clone();
        // Find the segment and the batch that contains `offset`.
        let (target_base, source, path, start_pos, end_pos, log_start) = {
            let st = self.state.borrow();
            let offset = offset.max(st.log_start);
            let Some((&base, seg)) = st.segments.range(..=offset).next_back() else {
                return Ok(());
            };
            (
                base,
                seg.source(),
                seg.path.clone(),
                seg.index.lookup(offset),
                seg.readable_bytes(),
                st.log_start,
            )
        };
        let offset = offset.max(log_start);
        let mut cursor = Cursor::new(source, end_pos);
        let mut pos = start_pos;
        let mut cut = None;
        while cut.is_none() {
            match cursor.next(pos).await? {
                ScanStep::End => break,
                ScanStep::Fault(f) => {
                    return Err(LogError::Corruption {
                        segment: path,
                        position: pos,
                        reason: f.to_string(),
                    })
                }
                ScanStep::Batch { header, .. } => {
                    if header.last_offset() >= offset {
                        cut = Some((pos, header.base_offset));
                    } else {
                        pos += header.total_len() as u64;
                    }
                }
            }
        }
        let (cut_pos, point) = cut.unwrap_or((end_pos, offset));
        drop(cursor);

        // Drop later segments, newest first, so what remains on disk is always a prefix of the log.
        let later: Vec<_> = {
            let mut st = self.state.borrow_mut();
            let keys: Vec<i64> = st
                .segments
                .range(target_base + 1..)
                .map(|(&b, _)| b)
                .collect();
            keys.into_iter()
                .rev()
                .filter_map(|b| st.segments.remove(&b))
                .collect()
        };
        for seg in later {
            let path = seg.path.clone();
            drop(seg);
            tracing::debug!(segment = ?path, "truncation removes segment");
            // One at a time, durably (the directory synced before the next deletion starts; off
            // the reactor, awaited): a crash must leave a prefix of the segments, never a gap.
            offload::delete_segment(&self.dir, &path, true).await?;
        }

        // Re-open the target segment for writing if it was sealed.
        let files = {
            let mut st = self.state.borrow_mut();
            let seg = st.segments.get_mut(&target_base).ok_or(LogError::Closed)?;
            match &seg.storage {
                Storage::Active(a) => Some((a.file.clone(), a.dsync.clone(), a.reader.clone())),
                _ => {
                    // Drop the map before the file shrinks under it.
                    seg.storage = Storage::Pending;
                    None
                }
            }
        };
        let (file, dsync, reader) = match files {
            Some(f) => f,
            None => {
                let index_of = path.clone();
                offload::run(move || SegmentIndex::remove_files(&index_of)).await?;
                (
                    Rc::new(segment::open_dma(&path, false).await?),
                    Rc::new(segment::open_dsync(&path).await?),
                    Rc::new(segment::open_reader(&path).await?),
                )
            }
        };
        file.truncate(cut_pos).await?;
        file.fdatasync().await?;
        offload::sync_dir(&self.dir).await?;
        let scan = segment::scan_segment(
            segment::Source::File(reader.clone()),
            cut_pos,
            target_base,
            cfg.index_interval_bytes,
            false,
        )
        .await?;
        if scan.index.size != cut_pos || scan.index.next_offset != point {
            return Err(LogError::Corruption {
                segment: path,
                position: scan.index.size,
                reason: scan
                    .stopped
                    .unwrap_or_else(|| "segment does not end at the cut".into()),
            });
        }
        let block_start = segment::align_down(cut_pos);
        let tail_block = if cut_pos > block_start {
            reader
                .read_at(block_start, (cut_pos - block_start) as usize)
                .await?
                .to_vec()
        } else {
            Vec::new()
        };
        let mut last_epoch = scan.last_epoch;
        if last_epoch.is_none() {
            let probe = {
                let st = self.state.borrow();
                st.segments
                    .range(..target_base)
                    .next_back()
                    .map(|(_, prev)| EpochProbe::of(prev))
            };
            if let Some(probe) = probe {
                last_epoch = last_epoch_of(probe).await?;
            }
        }
        // The producer state as of the cut: the newest snapshot below it and the batches after.
        let views: Vec<SegmentView> = {
            let st = self.state.borrow();
            st.segments
                .range(..target_base)
                .map(|(_, s)| SegmentView::of(s))
                .chain(std::iter::once(SegmentView {
                    base_offset: target_base,
                    source: segment::Source::File(reader.clone()),
                    bytes: cut_pos,
                    next_offset: point,
                }))
                .collect()
        };
        let producers = producer_state::rebuild(&self.dir, &views, log_start, point).await?;
        // The leader epoch checkpoint without the cut epochs, on disk before the cut is in force
        // (appends are refused meanwhile, so nothing notes an epoch in between).
        let mut epochs = self.state.borrow().epochs.clone();
        epochs.truncate(point);
        epochs.save_off_reactor(&self.dir).await?;
        let mut st = self.state.borrow_mut();
        st.producers = producers;
        st.snapshots_due.retain(|(offset, _)| *offset <= point);
        if let Some(seg) = st.segments.get_mut(&target_base) {
            seg.index = scan.index;
            seg.storage = Storage::Active(ActiveFile::new(
                file, dsync, reader, cut_pos, tail_block, cut_pos,
            ));
        }
        st.log_end = point;
        st.written_end = point;
        st.synced_end = point;
        st.last_epoch = last_epoch.unwrap_or(-1);
        st.tail.truncate(point);
        // What comes again above the cut is dirty (the checkpoint file is rewritten by the next pass).
        st.clean_end = st.clean_end.min(point);
        st.epochs = epochs;
        st.generation += 1;
        let generation = st.generation;
        st.truncations.push_back((generation, point));
        if st.truncations.len() > TRUNCATIONS_KEPT {
            st.truncations.pop_front();
        }
        tracing::debug!(dir = ?self.dir, offset = point, "truncated log");
        Ok(())
    }
}
