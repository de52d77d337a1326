//! The frames of issue 13's first test, byte for byte: the 30-byte Metadata v1 request whose topic
//! count is 0x7fffffff (it made kafka-protocol 0.18 allocate 154 GB and abort the broker), and one
//! frame for each length kind (array, compact array, string, compact string, bytes, compact bytes,
//! records, tagged-field counts and sizes) in a non-flexible and a flexible version. Each goes on a
//! fresh connection; the broker must answer it with an error or close the connection, stay up, and
//! serve the next client.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::generate::{record_batch, CLIENT_ID};
use super::mutate::{uvarint, zigzag};
use super::rng::Rng;

/// The correlation id of every known frame.
const CORRELATION: i32 = 0x1313;

fn header(key: i16, version: i16, flexible: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(key.to_be_bytes());
    out.extend(version.to_be_bytes());
    out.extend(CORRELATION.to_be_bytes());
    out.extend((CLIENT_ID.len() as i16).to_be_bytes());
    out.extend(CLIENT_ID.as_bytes());
    if flexible {
        out.push(0); // no tagged fields
    }
    out
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Produce v3 (non-flexible) or v9 (flexible) of one partition, with `records` as the records
/// field's bytes after a length of `records_len`.
fn produce(flexible: bool, records_len: &[u8], records: &[u8]) -> Vec<u8> {
    let mut b = header(0, if flexible { 9 } else { 3 }, flexible);
    if flexible {
        b.push(0); // transactional id: null
        b.extend(1i16.to_be_bytes()); // acks
        b.extend(1000i32.to_be_bytes()); // timeout
        b.push(2); // one topic
        b.push(3);
        b.extend(b"fz");
        b.push(2); // one partition
        b.extend(0i32.to_be_bytes());
    } else {
        b.extend((-1i16).to_be_bytes());
        b.extend(1i16.to_be_bytes());
        b.extend(1000i32.to_be_bytes());
        b.extend(1i32.to_be_bytes());
        b.extend(2i16.to_be_bytes());
        b.extend(b"fz");
        b.extend(1i32.to_be_bytes());
        b.extend(0i32.to_be_bytes());
    }
    b.extend(records_len);
    b.extend(records);
    if flexible {
        b.extend([0, 0, 0]); // tagged fields of partition, topic, request
    }
    b
}

/// The records length field of Produce v3 or v9 for `n` bytes.
fn records_len(flexible: bool, n: usize) -> Vec<u8> {
    if flexible {
        uvarint(n as u64 + 1)
    } else {
        (n as i32).to_be_bytes().to_vec()
    }
}

/// A valid RecordBatch with one field inside made hostile, its CRC32C fixed so it passes.
fn hostile_batch(which: &str) -> Vec<u8> {
    let mut batch = record_batch(&mut Rng::new(13)).map_or_else(|_| Vec::new(), |b| b.to_vec());
    if batch.len() < 62 {
        return batch;
    }
    match which {
        "count" => batch[57..61].copy_from_slice(&i32::MAX.to_be_bytes()),
        _ => {
            // The first record's length varint (at 61) and everything after it: one record whose
            // key length is 2^31 - 1.
            let mut record = vec![0u8]; // attributes
            record.extend(zigzag(0)); // timestamp delta
            record.extend(zigzag(0)); // offset delta
            record.extend(zigzag(i64::from(i32::MAX))); // key length
            record.extend(b"key");
            let mut records = zigzag(record.len() as i64);
            records.extend(record);
            batch.truncate(61);
            batch[57..61].copy_from_slice(&1i32.to_be_bytes());
            batch.extend(records);
            let len = (batch.len() - 12) as i32;
            batch[8..12].copy_from_slice(&len.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// Every known frame with its name.
pub fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Metadata v1: topics = array of 0x7fffffff (30 bytes on the wire).
    let mut b = header(3, 1, false);
    b.extend(i32::MAX.to_be_bytes());
    out.push(("Metadata v1 array count 0x7fffffff (30 bytes)", framed(b)));
    // Metadata v9: topics = compact array of 0xffffffff - 1.
    let mut b = header(3, 9, true);
    b.extend(uvarint(0xffff_ffff));
    out.push(("Metadata v9 compact array count 0xffffffff", framed(b)));
    // Metadata v1: one topic whose name claims 0x7fff bytes.
    let mut b = header(3, 1, false);
    b.extend(1i32.to_be_bytes());
    b.extend(i16::MAX.to_be_bytes());
    b.extend(b"ab");
    out.push(("Metadata v1 string length 0x7fff", framed(b)));
    // Metadata v9: one topic whose compact name claims 0xfffffffe bytes.
    let mut b = header(3, 9, true);
    b.push(2);
    b.extend(uvarint(0xffff_ffff));
    b.extend(b"ab");
    out.push(("Metadata v9 compact string length 0xffffffff", framed(b)));
    // The request header's client id (a non-compact string in every header version).
    let mut b = header(3, 1, false);
    b[8..10].copy_from_slice(&i16::MAX.to_be_bytes());
    out.push(("Metadata v1 header client id length 0x7fff", framed(b)));
    // CreateTopics v4 / v5: topic arrays.
    let mut b = header(19, 4, false);
    b.extend(i32::MAX.to_be_bytes());
    out.push(("CreateTopics v4 array count 0x7fffffff", framed(b)));
    let mut b = header(19, 5, true);
    b.extend(uvarint(0x7fff_ffff));
    out.push(("CreateTopics v5 compact array count 0x7fffffff", framed(b)));
    // DescribeConfigs v4: one resource whose configuration keys are a compact array of 2^28.
    let mut b = header(32, 4, true);
    b.push(2);
    b.push(2); // resource type: topic
    b.push(3);
    b.extend(b"fz");
    b.extend(uvarint(1 << 28));
    out.push((
        "DescribeConfigs v4 nested compact array count 2^28",
        framed(b),
    ));
    // Produce: the records bytes.
    let body = produce(false, &i32::MAX.to_be_bytes(), b"abcd");
    out.push(("Produce v3 bytes length 0x7fffffff", framed(body)));
    let body = produce(true, &uvarint(0xffff_ffff), b"abcd");
    out.push(("Produce v9 compact bytes length 0xffffffff", framed(body)));
    let body = produce(false, &(-2i32).to_be_bytes(), b"abcd");
    out.push(("Produce v3 bytes length -2", framed(body)));
    // Records inside a RecordBatch whose CRC is right.
    for flexible in [false, true] {
        for which in ["count", "key"] {
            let batch = hostile_batch(which);
            let body = produce(flexible, &records_len(flexible, batch.len()), &batch);
            let name = match (flexible, which) {
                (false, "count") => "Produce v3 records: record count 0x7fffffff",
                (true, "count") => "Produce v9 records: record count 0x7fffffff",
                (false, _) => "Produce v3 records: key length 0x7fffffff",
                (true, _) => "Produce v9 records: key length 0x7fffffff",
            };
            out.push((name, framed(body)));
        }
    }
    // Tagged fields: the header's count, and one field's size.
    let mut b = header(3, 9, false);
    b.extend([1, 0]);
    b.extend(uvarint(0xffff_ffff));
    b.extend([1, 0, 0, 0]);
    out.push(("Metadata v9 header tagged field size 0xffffffff", framed(b)));
    let mut b = header(3, 9, true);
    b.extend([1, 0, 0]); // no topics, two booleans
    b.extend(uvarint(0xffff_ffff));
    out.push(("Metadata v9 tagged field count 0xffffffff", framed(b)));
    out
}

/// How the broker took a known frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Closed,
    /// Neither within the timeout, or the broker could not be reached.
    Failed(String),
}

/// Sends `frame` on a fresh connection and waits for an answer or a close.
pub fn send(address: &str, frame: &[u8], timeout: Duration) -> Outcome {
    let mut stream = match TcpStream::connect(address) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("connecting: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if stream.write_all(frame).is_err() {
        return Outcome::Closed;
    }
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= 8 {
                    let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
                    let correlation = i32::from_be_bytes([got[4], got[5], got[6], got[7]]);
                    if correlation != CORRELATION {
                        return Outcome::Failed(format!(
                            "answered with correlation id {correlation}"
                        ));
                    }
                    if got.len() >= 4 + len {
                        return Outcome::Answered;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Outcome::Closed,
        }
    }
    Outcome::Failed(format!("no answer and no close within {timeout:?}"))
}
