//! `chronik dump-log <partition directory>`: the records of a partition's segment files, read
//! offline.
//!
//! Reads the `<20-digit base offset>.log` files of one partition directory in offset order with
//! plain reads: no recovery, no index, no writes, so it can look at the directory of a stopped (or
//! crashed) broker without changing what a later recovery will find. Every batch is validated
//! (length, magic, offsets, CRC32C) and its records parsed; the records print as JSON lines
//! `{"offset", "timestamp", "key", "value", "tombstone"}` (a key or value that is not UTF-8 prints as
//! `{"hex": "..."}`, a null one as null). With `--latest` it prints instead, per key, the latest
//! record (`{"key", "offset", "value", "tombstone"}`, sorted by key): what a consumer of a
//! compacted topic ends up with, and what the replicas of a partition must agree on.
//!
//! The zeros after the last batch of a segment (preallocated space) end the segment. Anything else
//! that is not a valid batch (a torn tail, damage, offsets that go backwards, records that do not
//! parse) is reported on stderr with its file and position, and the exit code is 1.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chronik_shards::log::batch::{self, BatchHeader, LOG_OVERHEAD};
use chronik_shards::log::compaction::records;
use serde_json::{json, Value};

/// Largest batch the tool reads (a corrupt length must not make it allocate gigabytes).
const MAX_FRAME: usize = 256 << 20;
/// Largest records section once decompressed.
const MAX_DECOMPRESSED: usize = 256 << 20;
/// Attribute bit 5: a control batch (transaction markers), not user records.
const CONTROL_BIT: i16 = 0x20;

/// `chronik dump-log` flags.
#[derive(Debug, clap::Args)]
pub struct DumpLogArgs {
    /// A partition directory (`<data-dir>/<topic>-<partition>`).
    pub dir: PathBuf,
    /// Print the latest record of every key (sorted by key) instead of every record.
    #[arg(long)]
    pub latest: bool,
}

/// One record as the tool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Part of a control batch (a transaction marker).
    pub control: bool,
}

/// Something in the directory that is not a valid log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub file: PathBuf,
    /// Byte position in the file.
    pub position: u64,
    pub what: String,
}

/// Everything read from a partition directory.
#[derive(Debug, Default)]
pub struct Dump {
    pub records: Vec<DumpedRecord>,
    pub faults: Vec<Fault>,
}

pub fn main(args: &DumpLogArgs) -> i32 {
    let dump = match read_dir(&args.dir) {
        Ok(dump) => dump,
        Err(e) => {
            eprintln!("chronik dump-log: {}: {e}", args.dir.display());
            return 2;
        }
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let lines: Box<dyn Iterator<Item = Value>> = if args.latest {
        Box::new(latest(&dump.records).into_iter().map(|(key, r)| {
            json!({
                "key": bytes_json(Some(&key)),
                "offset": r.offset,
                "value": bytes_json(r.value.as_deref()),
                "tombstone": r.value.is_none(),
            })
        }))
    } else {
        Box::new(dump.records.iter().map(record_json))
    };
    for line in lines {
        // A closed pipe (`| head`) ends the output; nothing else to do about it.
        if writeln!(out, "{line}").is_err() {
            return 0;
        }
    }
    let _ = out.flush();
    for f in &dump.faults {
        eprintln!(
            "{}",
            json!({"file": f.file.display().to_string(), "position": f.position, "error": f.what})
        );
    }
    i32::from(!dump.faults.is_empty())
}

fn record_json(r: &DumpedRecord) -> Value {
    let mut v = json!({
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": bytes_json(r.key.as_deref()),
        "value": bytes_json(r.value.as_deref()),
        "tombstone": r.value.is_none(),
    });
    if r.control {
        v["control"] = Value::Bool(true);
    }
    v
}

/// A string when the bytes are UTF-8, else `{"hex": ...}`; null for null.
fn bytes_json(b: Option<&[u8]>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
        },
    }
}

/// The latest record of every key (control records and keyless records left out).
pub fn latest(records: &[DumpedRecord]) -> BTreeMap<Vec<u8>, &DumpedRecord> {
    let mut map = BTreeMap::new();
    for r in records.iter().filter(|r| !r.control) {
        if let Some(key) = &r.key {
            map.insert(key.clone(), r);
        }
    }
    map
}

/// The segment files of `dir`, by base offset.
pub fn segment_files(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(base) = stem.parse::<i64>() {
            out.push((base, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment of a partition directory. I/O errors on the directory itself are errors;
/// what is wrong inside a file is a `Fault`.
pub fn read_dir(dir: &Path) -> std::io::Result<Dump> {
    let mut dump = Dump::default();
    // The offset after the last batch read: batches must go strictly up, across segments too.
    let mut next = i64::MIN;
    for (base, path) in segment_files(dir)? {
        if next != i64::MIN && base < next {
            dump.faults.push(Fault {
                file: path.clone(),
                position: 0,
                what: format!("segment base {base} is below the previous segment's end {next}"),
            });
        }
        read_segment(&path, &mut next, &mut dump);
    }
    Ok(dump)
}

fn read_segment(path: &Path, next: &mut i64, dump: &mut Dump) {
    let fault = |position: u64, what: String| Fault {
        file: path.to_path_buf(),
        position,
        what,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            dump.faults.push(fault(0, format!("open: {e}")));
            return;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut position = 0u64;
    loop {
        let mut prefix = [0u8; LOG_OVERHEAD];
        match read_full(&mut reader, &mut prefix) {
            Ok(0) => return,
            Ok(n) if n < LOG_OVERHEAD => {
                if !prefix[..n].iter().all(|&b| b == 0) {
                    dump.faults
                        .push(fault(position, format!("{n} stray bytes at the end")));
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                dump.faults.push(fault(position, format!("read: {e}")));
                return;
            }
        }
        let length = batch::parse_prefix(&prefix).map(|(_, len)| len as usize);
        let frame = match length {
            Ok(len) if LOG_OVERHEAD + len <= MAX_FRAME => {
                let mut frame = vec![0u8; LOG_OVERHEAD + len];
                frame[..LOG_OVERHEAD].copy_from_slice(&prefix);
                match read_full(&mut reader, &mut frame[LOG_OVERHEAD..]) {
                    Ok(n) if n == len => Ok(frame),
                    Ok(n) => Err(format!("truncated batch: {len} bytes declared, {n} left")),
                    Err(e) => Err(format!("read: {e}")),
                }
            }
            Ok(len) => Err(format!("batch of {len} bytes is larger than {MAX_FRAME}")),
            Err(e) => Err(e.to_string()),
        };
        let checked = frame.and_then(|f| {
            batch::validate_frame(&f)
                .map(|h| (f, h))
                .map_err(|e| e.to_string())
        });
        let (frame, header) = match checked {
            Ok(ok) => ok,
            Err(what) => {
                // Preallocated space: zeros from here to the end of the file end the segment.
                let zeros = prefix.iter().all(|&b| b == 0) && rest_is_zero(&mut reader);
                if !zeros {
                    dump.faults.push(fault(position, what));
                }
                return;
            }
        };
        if header.base_offset < *next {
            dump.faults.push(fault(
                position,
                format!(
                    "batch at offset {} does not follow the previous batch's end {}",
                    header.base_offset, *next
                ),
            ));
        }
        *next = header.next_offset();
        if let Err(what) = push_records(&frame, &header, &mut dump.records) {
            dump.faults.push(fault(
                position,
                format!("batch at offset {}: {what}", header.base_offset),
            ));
        }
        position += frame.len() as u64;
    }
}

/// The records of one validated batch, appended to `out`.
fn push_records(
    frame: &[u8],
    header: &BatchHeader,
    out: &mut Vec<DumpedRecord>,
) -> Result<(), String> {
    let section = records::section(frame, header, MAX_DECOMPRESSED).map_err(|e| e.to_string())?;
    let parsed = records::parse(&section, header.record_count).map_err(|e| e.to_string())?;
    let control = header.attributes & CONTROL_BIT != 0;
    let mut last = -1i64;
    for r in parsed {
        let delta = i64::from(r.offset_delta);
        if delta <= last || delta > i64::from(header.last_offset_delta) {
            return Err(format!(
                "offset delta {delta} after {last} (last offset delta {})",
                header.last_offset_delta
            ));
        }
        last = delta;
        out.push(DumpedRecord {
            offset: header.base_offset + delta,
            timestamp: header.first_timestamp.saturating_add(r.timestamp_delta),
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            control,
        });
    }
    Ok(())
}

/// Fills `buf` as far as the file goes; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether everything left in the file is zero bytes (an I/O error counts as not zero).
fn rest_is_zero(reader: &mut impl Read) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match read_full(reader, &mut buf) {
            Ok(0) => return true,
            Ok(n) if buf[..n].iter().all(|&b| b == 0) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
#[path = "dump_log_tests.rs"]
mod tests;
