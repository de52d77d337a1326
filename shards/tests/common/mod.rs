//! Code shared by the integration tests of this crate (a directory, so cargo does not build it as a
//! test of its own).

pub mod crash;
