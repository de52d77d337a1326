//! Tests of the codecs: round trips, interoperability with kafka-protocol's compressors (what
//! Kafka's clients write), bounded decompression of compression bombs, and garbage input.

use super::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

const CODECS: [Codec; 5] = [
    Codec::None,
    Codec::Gzip,
    Codec::Snappy,
    Codec::Lz4,
    Codec::Zstd,
];
const MIB: usize = 1 << 20;

/// Counts the bytes allocated by the current thread while a test asks it to, so a test can
/// check the peak memory one call held (other tests' threads are not counted).
struct Counting;

thread_local! {
    /// (counting, live bytes since counting started, peak of live bytes)
    static COUNT: Cell<(bool, isize, isize)> = const { Cell::new((false, 0, 0)) };
}

fn count(delta: isize) {
    let _ = COUNT.try_with(|c| {
        let (on, live, peak) = c.get();
        if on {
            let live = live + delta;
            c.set((on, live, peak.max(live)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The result of `f` and the peak bytes this thread held while it ran (Rust allocations only:
/// liblz4's and libzstd's C allocations go through malloc and are not counted; see
/// `zstd_window_is_capped` for zstd's window).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    COUNT.with(|c| c.set((true, 0, 0)));
    let out = f();
    let peak = COUNT.with(|c| {
        let (_, _, peak) = c.get();
        c.set((false, 0, 0));
        peak
    });
    (out, usize::try_from(peak).unwrap_or(0))
}

/// Records-like input: keys and values that repeat (compressible) with some varying bytes.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 7 == 0 {
                x as u8
            } else {
                b"key-value-"[i % 10]
            }
        })
        .collect()
}

#[test]
fn round_trip_each_codec() {
    for codec in CODECS {
        for len in [1, 100, 32 * 1024, 32 * 1024 + 1, 200_000] {
            let raw = sample(len);
            let packed = compress(codec, &raw).expect("compress");
            let back = decompress(codec, &packed, len).expect("decompress at exactly the limit");
            assert_eq!(back, raw, "{codec:?} {len}");
            assert_eq!(
                decompress(codec, &packed, len - 1),
                Err(CodecError::TooLarge { limit: len - 1 }),
                "{codec:?} {len}: one byte under the limit"
            );
        }
    }
}

/// What kafka-protocol's compressor (the format Kafka's clients write) makes of `raw`.
fn theirs_compress(codec: Codec, raw: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let fill = |buf: &mut BytesMut| {
        buf.extend_from_slice(raw);
        Ok(())
    };
    match codec {
        Codec::Gzip => Gzip::compress(&mut out, fill),
        Codec::Snappy => Snappy::compress(&mut out, fill),
        Codec::Lz4 => Lz4::compress(&mut out, fill),
        Codec::Zstd => Zstd::compress(&mut out, fill),
        Codec::None => fill(&mut out),
    }
    .expect("kafka-protocol compress");
    out.to_vec()
}

fn theirs_decompress(codec: Codec, packed: &[u8]) -> Vec<u8> {
    let mut input = Bytes::copy_from_slice(packed);
    let take = |buf: &mut Bytes| Ok(buf.to_vec());
    match codec {
        Codec::Gzip => Gzip::decompress(&mut input, take),
        Codec::Snappy => Snappy::decompress(&mut input, take),
        Codec::Lz4 => Lz4::decompress(&mut input, take),
        Codec::Zstd => Zstd::decompress(&mut input, take),
        Codec::None => take(&mut input),
    }
    .expect("kafka-protocol decompress")
}

#[test]
fn interoperates_with_kafka_protocol_both_ways() {
    for codec in CODECS {
        for len in [1, 5_000, 100_000] {
            let raw = sample(len);
            let theirs = theirs_compress(codec, &raw);
            assert_eq!(
                decompress(codec, &theirs, len),
                Ok(raw.clone()),
                "{codec:?} {len}"
            );
            let ours = compress(codec, &raw).expect("compress");
            assert_eq!(theirs_decompress(codec, &ours), raw, "{codec:?} {len}");
        }
    }
}

#[test]
fn snappy_framing_is_xerials_and_raw_snappy_is_accepted() {
    let raw = sample(70_000);
    let ours = compress(Codec::Snappy, &raw).expect("compress");
    assert_eq!(&ours[..16], SNAPPY_HEADER);
    // kafka-protocol writes the same framing with the same 32 KiB blocks: byte-identical.
    assert_eq!(ours, theirs_compress(Codec::Snappy, &raw));
    let plain = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("raw snappy");
    assert_eq!(decompress(Codec::Snappy, &plain, raw.len()), Ok(raw));
}

#[test]
fn lz4_frame_is_kafkas() {
    let ours = compress(Codec::Lz4, &sample(1000)).expect("compress");
    assert_eq!(&ours[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
    // FLG: version 01, block independence, no block checksum, no content size, content checksum.
    assert_eq!(ours[4], 0b0110_0100);
    // BD: 64 KiB maximum block size, as KafkaLZ4BlockOutputStream writes.
    assert_eq!(ours[5], 0b0100_0000);
}

/// Inputs that expand past 64 MiB, each as small as its format allows: snappy declares its
/// length (a 1 KiB input can claim 4 GiB), zstd reaches 128 KiB per 4-byte block, lz4 and
/// deflate top out near 255:1 and 1032:1.
fn bombs() -> Vec<(Codec, Vec<u8>)> {
    let zeros = vec![0u8; 64 * MIB + 1];
    let mut snappy_claim = vec![0xff, 0xff, 0xff, 0xff, 0x0f]; // varint 2^32 - 1
    snappy_claim.resize(1024, 0);
    let mut framed_claim = SNAPPY_HEADER.to_vec();
    framed_claim.extend_from_slice(&1000u32.to_be_bytes());
    framed_claim.extend_from_slice(&snappy_claim[..1000]);
    vec![
        (Codec::Snappy, snappy_claim),
        (Codec::Snappy, framed_claim),
        (Codec::Zstd, zstd::bulk::compress(&zeros, 19).expect("zstd")),
        (Codec::Zstd, compress(Codec::Zstd, &zeros).expect("zstd")),
        (Codec::Lz4, compress(Codec::Lz4, &zeros).expect("lz4")),
        (Codec::Gzip, compress(Codec::Gzip, &zeros).expect("gzip")),
        (Codec::None, zeros),
    ]
}

#[test]
fn compression_bombs_fail_too_large_without_allocating_the_output() {
    for (codec, bomb) in bombs() {
        let (res, peak) = peak_of(|| decompress(codec, &bomb, MIB));
        eprintln!("{codec:?}: {} bytes in, peak {peak} bytes held", bomb.len());
        assert_eq!(res, Err(CodecError::TooLarge { limit: MIB }), "{codec:?}");
        assert!(
            peak <= 3 * MIB,
            "{codec:?} held {peak} bytes with a 1 MiB limit"
        );
    }
    let zstd = zstd::bulk::compress(&vec![0u8; 64 * MIB + 1], 19).expect("zstd");
    assert!(zstd.len() <= 4096, "zstd bomb of {} bytes", zstd.len());
}

#[test]
fn zstd_window_is_capped() {
    // A frame that declares it holds 1 GiB in one segment asks the decoder for a 1 GiB window:
    // refused (zstd: "Frame requires too much memory") before zstd allocates it.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd]; // magic
    frame.push(0b1110_0000); // FCS 8 bytes, single segment
    frame.extend_from_slice(&(1u64 << 30).to_le_bytes());
    frame.extend_from_slice(&[0x01, 0x00, 0x00]); // last raw block, 0 bytes
    assert!(matches!(
        decompress(Codec::Zstd, &frame, MIB),
        Err(CodecError::Invalid(_))
    ));
    assert_eq!(zstd_window_log_max(MIB), 23);
    assert_eq!(zstd_window_log_max(100 * MIB), 27);
    assert_eq!(zstd_window_log_max(usize::MAX), 27);
    assert_eq!(zstd_window_log_max(0), 23);
}

#[test]
fn garbage_and_truncated_input_is_an_error_never_a_panic() {
    let raw = sample(100_000);
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let packed = compress(codec, &raw).expect("compress");
        // Every prefix shorter than the whole (truncated in transit or by a bad length).
        for cut in (0..packed.len()).step_by(97).chain([packed.len() - 1]) {
            let res = decompress(codec, &packed[..cut], raw.len());
            // xerial's framing has no end marker: a cut between blocks reads as fewer whole
            // blocks (the batch's record count then fails to parse, as in Kafka).
            let whole_blocks =
                |out: &Vec<u8>| out.len() % SNAPPY_BLOCK == 0 && raw.starts_with(out);
            let ok = match &res {
                Err(_) => true,
                Ok(out) => codec == Codec::Snappy && whole_blocks(out),
            };
            assert!(ok, "{codec:?} cut at {cut} of {}", packed.len());
        }
        // Flipped bytes: an error or (where the format has no checksum) other bytes, never a panic.
        for at in (0..packed.len()).step_by(61) {
            let mut bad = packed.clone();
            bad[at] ^= 0x5a;
            let _ = decompress(codec, &bad, raw.len());
        }
        // Pseudo-random garbage of many lengths.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decompress(codec, &junk, MIB);
        }
        assert!(
            decompress(codec, b"definitely not compressed data", MIB).is_err(),
            "{codec:?}"
        );
    }
}

#[test]
fn codec_from_attributes() {
    assert_eq!(Codec::from_attributes(0x10), Some(Codec::None));
    assert_eq!(Codec::from_attributes(0x24), Some(Codec::Zstd));
    assert_eq!(Codec::from_attributes(5), None);
    assert_eq!(Codec::from_attributes(7), None);
}
