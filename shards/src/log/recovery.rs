//! Opening a log directory: find the segments, trust sealed segments' index files only when their
//! checksums and sizes match (else rebuild them from the batch headers), and scan the tail segment batch
//! by batch verifying CRC32C, cutting the file at the first torn, corrupt, stale or out-of-sequence frame.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use super::epochs::EpochHistory;
use super::index::SegmentIndex;
use super::producer_state::{self, SegmentView};
use super::producers::ProducerTable;
use super::segment::{self, ActiveFile, Cursor, ScanStep, Segment, Source, Storage};
use super::{compaction, log_start, now_ms, LogConfig, LogError};

pub(super) struct Recovered {
    pub segments: BTreeMap<i64, Segment>,
    pub log_start: i64,
    pub log_end: i64,
    pub last_epoch: i32,
    pub epochs: EpochHistory,
    pub producers: ProducerTable,
    /// The cleaner checkpoint (the log start without one).
    pub clean_end: i64,
}

pub(super) async fn recover(dir: &Path, cfg: &LogConfig) -> Result<Recovered, LogError> {
    std::fs::create_dir_all(dir)?;
    log_start::finish_interrupted_restart(dir)?;
    compaction::swap::finish_interrupted(dir)?;
    let mut bases = Vec::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_file_name(name) {
            bases.push(base);
        } else if let Some(stem) = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"))
        {
            if !dir.join(format!("{stem}.log")).exists() {
                strays.push(entry.path());
            }
        }
    }
    for p in strays {
        tracing::info!(file = ?p, "removing index file without a segment");
        std::fs::remove_file(&p)?;
    }
    bases.sort_unstable();
    let now = now_ms();
    let mut segments = BTreeMap::new();
    let Some((&last_base, sealed_bases)) = bases.split_last() else {
        return Ok(Recovered {
            segments,
            log_start: 0,
            log_end: 0,
            last_epoch: -1,
            epochs: EpochHistory::default(),
            producers: ProducerTable::default(),
            clean_end: 0,
        });
    };
    for (i, &base) in sealed_bases.iter().enumerate() {
        let path = dir.join(segment::log_file_name(base));
        let size = std::fs::metadata(&path)?.len();
        let map = segment::map_sealed(&path, size)?;
        let index = match SegmentIndex::load(&path, base, size) {
            Some(idx) => idx,
            None => {
                let src = map.clone().map_or(Source::Empty, Source::Mapped);
                let scan =
                    segment::scan_segment(src, size, base, cfg.index_interval_bytes, false).await?;
                match &scan.stopped {
                    None => {
                        tracing::info!(segment = ?path, "rebuilt index of sealed segment");
                        scan.index.write_files(&path)?;
                    }
                    Some(why) => tracing::error!(
                        segment = ?path, reason = %why,
                        "sealed segment is damaged; reads past the damage will fail"
                    ),
                }
                scan.index
            }
        };
        // A compacted segment may end below the next one's base (its last batches were removed).
        let expected_next = bases[i + 1];
        if index.next_offset > expected_next {
            tracing::error!(
                segment = ?path, next_offset = index.next_offset, next_segment = expected_next,
                "sealed segment runs past where the next one begins"
            );
        }
        segments.insert(
            base,
            Segment {
                path,
                index,
                storage: Storage::Sealed(map),
                created_ms: now,
            },
        );
    }

    let path = dir.join(segment::log_file_name(last_base));
    let file = Rc::new(segment::open_dma(&path, false).await?);
    let dsync = Rc::new(segment::open_dsync(&path).await?);
    let reader = Rc::new(segment::open_reader(&path).await?);
    let file_len = file.file_size().await?;
    let scan = segment::scan_segment(
        Source::File(reader.clone()),
        file_len,
        last_base,
        cfg.index_interval_bytes,
        true,
    )
    .await?;
    let size = scan.index.size;
    if size != file_len {
        match &scan.stopped {
            Some(why) if !is_zero_fill(&reader, size, file_len).await? => {
                tracing::warn!(segment = ?path, valid_bytes = size, reason = %why, "truncating the log tail")
            }
            _ => tracing::debug!(segment = ?path, valid_bytes = size, "cutting preallocated space"),
        }
        file.truncate(size).await?;
        file.fdatasync().await?;
    }
    SegmentIndex::remove_files(&path)?;
    let block_start = segment::align_down(size);
    let tail_block = if size > block_start {
        let r = reader
            .read_at(block_start, (size - block_start) as usize)
            .await?;
        r.to_vec()
    } else {
        Vec::new()
    };
    let mut last_epoch = scan.last_epoch;
    if last_epoch.is_none() {
        if let Some(prev) = segments.values().next_back() {
            last_epoch = last_epoch_of(EpochProbe::of(prev)).await?;
        }
    }
    let log_end = scan.index.next_offset;
    let scan_epochs = scan.epoch_starts;
    segments.insert(
        last_base,
        Segment {
            path,
            index: scan.index,
            storage: Storage::Active(ActiveFile::new(file, dsync, reader, size, tail_block, size)),
            created_ms: now,
        },
    );
    let log_start = segments.keys().next().copied().unwrap_or(last_base);

    // Leader epochs: the checkpoint (or, without a sound one, the sealed segments' headers) up to the
    // newest segment, then what its scan found.
    let saved = EpochHistory::load(dir);
    let mut entries = match saved.clone() {
        Some(entries) => entries,
        None => {
            let mut entries = Vec::new();
            for seg in segments.values().filter(|s| s.is_sealed()) {
                let scan = segment::scan_segment(
                    seg.source(),
                    seg.readable_bytes(),
                    seg.base_offset(),
                    cfg.index_interval_bytes,
                    false,
                )
                .await?;
                entries.extend(scan.epoch_starts);
            }
            if !entries.is_empty() {
                tracing::info!(dir = ?dir, "rebuilt the leader epoch history from the segments");
            }
            entries
        }
    };
    // The newest segment's epochs come from its scan. An empty one has none, and the epoch in force
    // at its base when it is the whole log (the log start advanced to the log end) would be lost:
    // keep that one. Below it, an empty newest segment's base is only where a batch that never became
    // durable would have started (the checkpoint saved when the segment before it was sealed may name
    // that batch's epoch): its epoch goes with it, as Kafka truncates its epoch cache to the log end.
    let floor_only = scan_epochs.is_empty() && log_start == last_base;
    entries.retain(|&(_, start)| start < last_base || (floor_only && start == last_base));
    let mut epochs = EpochHistory::from_entries(Vec::new());
    for (epoch, start) in entries.into_iter().chain(scan_epochs) {
        epochs.note(epoch, start);
    }
    epochs.trim_start(log_start);
    if saved.as_deref() == Some(epochs.entries()) {
        epochs.mark_saved();
    } else {
        epochs.save(dir)?;
    }
    let views: Vec<SegmentView> = segments.values().map(SegmentView::of).collect();
    let producers = producer_state::rebuild(dir, &views, log_start, log_end).await?;
    Ok(Recovered {
        segments,
        log_start,
        log_end,
        last_epoch: last_epoch.unwrap_or(-1),
        epochs,
        producers,
        clean_end: compaction::checkpoint_load(dir)
            .unwrap_or(log_start)
            .clamp(log_start, log_end),
    })
}

/// Whether the file holds only zeros from `from` to `to` (preallocated space, not a torn write); reads
/// at most the first block after `from`.
async fn is_zero_fill(
    file: &glommio::io::BufferedFile,
    from: u64,
    to: u64,
) -> Result<bool, LogError> {
    let len = (to - from).min(segment::BLOCK) as usize;
    let r = file.read_at(from, len).await?;
    Ok(r.iter().all(|&b| b == 0))
}

/// What `last_epoch_of` needs from a segment, taken without holding a borrow across I/O.
pub(super) struct EpochProbe {
    source: Source,
    end: u64,
    start: u64,
    path: std::path::PathBuf,
}

impl EpochProbe {
    pub fn of(seg: &Segment) -> Self {
        EpochProbe {
            source: seg.source(),
            end: seg.readable_bytes(),
            start: seg.index.entries.last().map_or(0, |e| e.position as u64),
            path: seg.path.clone(),
        }
    }
}

/// Leader epoch of the last batch of a segment (scans from its last index entry).
pub(super) async fn last_epoch_of(probe: EpochProbe) -> Result<Option<i32>, LogError> {
    let EpochProbe {
        source,
        end,
        start,
        path,
    } = probe;
    let mut pos = start;
    let mut cursor = Cursor::new(source, end);
    let mut epoch = None;
    loop {
        match cursor.next(pos).await? {
            ScanStep::Batch { header, .. } => {
                epoch = Some(header.leader_epoch);
                pos += header.total_len() as u64;
            }
            ScanStep::End => return Ok(epoch),
            ScanStep::Fault(f) => {
                return Err(LogError::Corruption {
                    segment: path,
                    position: pos,
                    reason: f.to_string(),
                })
            }
        }
    }
}
