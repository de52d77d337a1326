//! chronik's per-core side: the partition log every replica writes to, and
//! the thread-per-core runtime that owns partitions.
//!
//! Everything here runs on glommio executors: a `PartitionLog` belongs to
//! exactly one shard and is never shared across threads.

pub mod log;
pub mod runtime;
