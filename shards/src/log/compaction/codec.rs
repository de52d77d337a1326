//! Batch compression codecs (attributes bits 0-2): decompression bounded by a limit the caller
//! sets (a peer's compressed batch must not expand into unbounded memory), and recompression of a
//! rewritten batch with the codec it had.

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

/// The records section of a batch compressed with `codec`, decompressed; at most `limit` bytes.
pub fn decompress(codec: Codec, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        Codec::None if data.len() > limit => Err(CodecError::TooLarge { limit }),
        Codec::None => Ok(data.to_vec()),
        other => Err(CodecError::Invalid(format!(
            "{other:?} is not supported yet"
        ))),
    }
}

/// `raw` records compressed with `codec`, as Kafka's clients would write them.
pub fn compress(codec: Codec, raw: &[u8]) -> Result<Vec<u8>, CodecError> {
    match codec {
        Codec::None => Ok(raw.to_vec()),
        other => Err(CodecError::Invalid(format!(
            "{other:?} is not supported yet"
        ))),
    }
}
