//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (its info level
//! as debug), with the record's key-value pairs appended to the message.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

/// An `slog` drain that writes to `tracing` under the target `chronik::raft`.
pub struct TracingDrain;

struct Pairs(String);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "chronik::raft", "{message}{}", pairs.0)
            }
            Level::Warning => tracing::warn!(target: "chronik::raft", "{message}{}", pairs.0),
            // raft-rs logs every vote and term change at info; chronik reports controller
            // changes itself, so these are detail.
            Level::Info | Level::Debug => {
                tracing::debug!(target: "chronik::raft", "{message}{}", pairs.0)
            }
            Level::Trace => tracing::trace!(target: "chronik::raft", "{message}{}", pairs.0),
        }
        Ok(())
    }
}

/// The logger to hand to raft-rs, tagged with this node's id.
pub fn logger(node_id: i32) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("node" => node_id))
}
