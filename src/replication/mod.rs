//! Partition replication (DESIGN.md, "Produce path and acks" and "Replication").
//!
//! The decision-making parts are pure state machines, tested without I/O:
//! - `ack_tracker`: per partition on its leader, the acknowledged durable ends, the high
//!   watermark and the acks=all requests waiting on it;
//! - `isr`: when the leader asks the controller to shrink or expand the ISR;
//! - `epochs`: the leader epoch cache, OffsetForLeaderEpoch answers and the follower's
//!   truncation rule after a leader change;
//! - `wire`: the framing of the leader-to-follower connection.

pub mod ack_tracker;
pub mod epochs;
pub mod isr;
pub mod wire;
