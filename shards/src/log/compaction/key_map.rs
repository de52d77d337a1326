//! The cleaner's key map: every key of the dirty part of a log -> the offset of its latest record.
//! Keys are kept whole (no hash: a collision would make the cleaner drop a key's latest value), and
//! the map's memory is bounded: a dirty part with more key bytes than the budget is cleaned in
//! several passes, each up to where its map filled.

use std::collections::HashMap;

/// Bytes an entry costs on top of its key: the table slot (key box pointer and length, offset,
/// control byte, load-factor slack) and the allocation's own header.
pub const ENTRY_OVERHEAD: usize = 64;

pub struct KeyMap {
    latest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    limit: usize,
}

impl KeyMap {
    /// An empty map that may hold `limit` bytes of keys and entries.
    pub fn new(limit: usize) -> Self {
        KeyMap {
            latest: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Whether keys of these lengths still fit, all of them (a batch is mapped whole or not at all).
    pub fn fits<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> bool {
        let more: usize = keys
            .filter(|k| !self.latest.contains_key(*k))
            .map(|k| k.len() + ENTRY_OVERHEAD)
            .sum();
        self.bytes + more <= self.limit
    }

    /// Records that `key`'s latest record is at `offset` (offsets arrive in increasing order).
    pub fn put(&mut self, key: &[u8], offset: i64) {
        match self.latest.get_mut(key) {
            Some(at) => *at = offset,
            None => {
                self.bytes += key.len() + ENTRY_OVERHEAD;
                self.latest.insert(key.into(), offset);
            }
        }
    }

    /// The offset of `key`'s latest record in the mapped range, if the key occurs there.
    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_and_counts_new_keys_only() {
        let mut m = KeyMap::new(2 * (ENTRY_OVERHEAD + 1));
        assert!(m.fits([&b"a"[..], b"b"].into_iter()));
        m.put(b"a", 1);
        m.put(b"b", 2);
        m.put(b"a", 3);
        assert_eq!(m.latest(b"a"), Some(3));
        assert_eq!(m.latest(b"c"), None);
        // Known keys cost nothing more; a new one does not fit.
        assert!(m.fits([&b"a"[..], b"b"].into_iter()));
        assert!(!m.fits([&b"c"[..]].into_iter()));
    }
}
