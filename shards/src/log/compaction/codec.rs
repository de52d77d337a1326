//! Batch compression codecs (attributes bits 0-2): decompression bounded by a limit the caller
//! sets (a peer's compressed batch must not expand into unbounded memory), and recompression of a
//! rewritten batch with the codec it had.
//!
//! The formats are those Kafka's clients write into a magic-2 batch's records section:
//! - gzip: a gzip stream (Java's `GZIPOutputStream`); concatenated members are read too, as
//!   Java's `GZIPInputStream` does.
//! - snappy: xerial's framing (`SnappyOutputStream`): a 16-byte header (`\x82SNAPPY\x00`, version
//!   1, compatible version 1), then blocks of at most 32 KiB, each a big-endian u32 length and a raw
//!   snappy block. Raw snappy without the header is accepted on decompression, as xerial's
//!   `SnappyInputStream`, librdkafka and kafka-protocol accept it.
//! - lz4: the LZ4 frame format (Kafka's `KafkaLZ4BlockOutputStream` since magic 1): 64 KiB
//!   independent blocks, a content checksum, level 9 (Kafka's `compression.lz4.level` default).
//! - zstd: zstd frames, level 3 (Kafka's `compression.zstd.level` default).
//!
//! Bound: decompression streams through `Read::take(limit + 1)`, so at most `limit + 1` output
//! bytes (plus the codec's own fixed buffers) exist at once, whatever the compressed data claims.
//! Snappy's blocks declare their decompressed length up front, so that length is checked before
//! anything is allocated. A zstd frame declares its window, which the decoder allocates whole:
//! the window is capped at the limit rounded up to a power of two, but never below 8 MiB (what
//! producers at levels up to 19 write when they do not pledge the size) nor above 128 MiB (zstd's
//! own default cap). A frame whose window exceeds that cap is refused as invalid.

use std::io::{Read, Write};

/// A batch's compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec named by a batch's attributes; None for the undefined values 5-7.
    pub fn from_attributes(attributes: i16) -> Option<Codec> {
        match attributes & 0x7 {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("decompressed records exceed {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Invalid(String),
}

/// xerial's stream header: magic, version 1, minimum compatible version 1.
const SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// The part of the header xerial checks to tell framed from raw snappy.
const SNAPPY_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// xerial's `SnappyOutputStream` default block size (what Kafka's Java producer writes).
const SNAPPY_BLOCK: usize = 32 * 1024;
/// Kafka's default `compression.lz4.level`.
const LZ4_LEVEL: u32 = 9;
/// Kafka's default `compression.zstd.level`.
const ZSTD_LEVEL: i32 = 3;
/// 8 MiB: the window zstd levels up to 19 use when the input size is not known up front.
const ZSTD_MIN_WINDOW_LOG_MAX: u32 = 23;
/// 128 MiB: zstd's `ZSTD_WINDOWLOG_LIMIT_DEFAULT`, what its decoder allows by default.
const ZSTD_MAX_WINDOW_LOG_MAX: u32 = 27;
/// Kafka's default (and `GZIPOutputStream`'s) deflate level.
const GZIP_LEVEL: u32 = 6;

/// The records section of a batch compressed with `codec`, decompressed; at most `limit` bytes.
pub fn decompress(codec: Codec, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        Codec::None if data.len() > limit => Err(CodecError::TooLarge { limit }),
        Codec::None => Ok(data.to_vec()),
        // Some decoders read an empty input as an empty stream; no client writes one.
        _ if data.is_empty() => Err(CodecError::Invalid(format!("{codec:?}: empty input"))),
        Codec::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(data), limit, "gzip"),
        Codec::Snappy => snappy_decompress(data, limit),
        Codec::Lz4 => lz4_decompress(data, limit),
        Codec::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(data).map_err(invalid("zstd"))?;
            decoder
                .window_log_max(zstd_window_log_max(limit))
                .map_err(invalid("zstd"))?;
            read_bounded(decoder, limit, "zstd")
        }
    }
}

/// `raw` records compressed with `codec`, as Kafka's clients would write them.
pub fn compress(codec: Codec, raw: &[u8]) -> Result<Vec<u8>, CodecError> {
    match codec {
        Codec::None => Ok(raw.to_vec()),
        Codec::Gzip => {
            let out = Vec::with_capacity(raw.len() / 2 + 64);
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            e.write_all(raw).map_err(invalid("gzip"))?;
            e.finish().map_err(invalid("gzip"))
        }
        Codec::Snappy => snappy_compress(raw),
        Codec::Lz4 => {
            let mut e = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::ChecksumEnabled)
                .level(LZ4_LEVEL)
                .build(Vec::with_capacity(raw.len() / 2 + 64))
                .map_err(invalid("lz4"))?;
            e.write_all(raw).map_err(invalid("lz4"))?;
            let (out, res) = e.finish();
            res.map_err(invalid("lz4"))?;
            Ok(out)
        }
        Codec::Zstd => zstd::stream::encode_all(raw, ZSTD_LEVEL).map_err(invalid("zstd")),
    }
}

/// The largest zstd window (log2) a frame may ask for when at most `limit` bytes may come out.
fn zstd_window_log_max(limit: usize) -> u32 {
    let needed = limit
        .max(1)
        .checked_next_power_of_two()
        .map_or(usize::BITS, usize::trailing_zeros);
    needed.clamp(ZSTD_MIN_WINDOW_LOG_MAX, ZSTD_MAX_WINDOW_LOG_MAX)
}

fn invalid(codec: &'static str) -> impl Fn(std::io::Error) -> CodecError {
    move |e| CodecError::Invalid(format!("{codec}: {e}"))
}

/// Reads `reader` to its end, holding at most `limit + 1` bytes: one byte past the limit proves
/// the output too large without reading (or allocating) the rest.
fn read_bounded<R: Read>(
    reader: R,
    limit: usize,
    codec: &'static str,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    read_bounded_into(reader, limit, codec, &mut out)?;
    Ok(out)
}

fn read_bounded_into<R: Read>(
    reader: R,
    limit: usize,
    codec: &'static str,
    out: &mut Vec<u8>,
) -> Result<R, CodecError> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut taken = reader.take(cap);
    taken.read_to_end(out).map_err(invalid(codec))?;
    if out.len() > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(taken.into_inner())
}

fn lz4_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let decoder = lz4::Decoder::new(data).map_err(invalid("lz4"))?;
    let mut out = Vec::new();
    let decoder = read_bounded_into(decoder, limit, "lz4", &mut out)?;
    // The lz4 crate's reader ends quietly when its input runs out mid-frame: `finish` is what
    // tells a truncated frame from a whole one.
    decoder
        .finish()
        .1
        .map_err(|_| CodecError::Invalid("lz4: truncated frame".into()))?;
    Ok(out)
}

/// One raw snappy block appended to `out`, after checking its declared length against what the
/// limit leaves.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let bad = |e: snap::Error| CodecError::Invalid(format!("snappy: {e}"));
    let len = snap::raw::decompress_len(block).map_err(bad)?;
    let start = out.len();
    let end = start.checked_add(len).filter(|&end| end <= limit);
    let Some(end) = end else {
        return Err(CodecError::TooLarge { limit });
    };
    out.resize(end, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(bad)?;
    if written != len {
        return Err(CodecError::Invalid(format!(
            "snappy: block declared {len} bytes, held {written}"
        )));
    }
    Ok(())
}

fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    // xerial's rule: without the full header and its magic, the whole input is one raw block.
    let framed = data.len() >= SNAPPY_HEADER.len() && data.starts_with(SNAPPY_MAGIC);
    if !framed {
        snappy_block(data, limit, &mut out)?;
        return Ok(out);
    }
    let mut rest = &data[SNAPPY_HEADER.len()..];
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(CodecError::Invalid("snappy: truncated block length".into()));
        };
        let len = usize::try_from(u32::from_be_bytes(*len))
            .map_err(|_| CodecError::Invalid("snappy: block length".into()))?;
        if len > tail.len() {
            return Err(CodecError::Invalid(format!(
                "snappy: block of {len} bytes, {} left",
                tail.len()
            )));
        }
        let (block, tail) = tail.split_at(len);
        snappy_block(block, limit, &mut out)?;
        rest = tail;
    }
    Ok(out)
}

fn snappy_compress(raw: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(SNAPPY_HEADER.len() + snap::raw::max_compress_len(raw.len()));
    out.extend_from_slice(SNAPPY_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    for chunk in raw.chunks(SNAPPY_BLOCK) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let body = out.len();
        out.resize(body + snap::raw::max_compress_len(chunk.len()), 0);
        let n = encoder
            .compress(chunk, &mut out[body..])
            .map_err(|e| CodecError::Invalid(format!("snappy: {e}")))?;
        out.truncate(body + n);
        // A 32 KiB block compresses to well under 4 GiB: the length always fits.
        let n = u32::try_from(n).map_err(|_| CodecError::Invalid("snappy: block size".into()))?;
        out[at..body].copy_from_slice(&n.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
