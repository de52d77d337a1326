//! Topic configs: which ones chronik knows, how their values are checked, their defaults (the
//! broker's `BrokerDefaults`), and the `LogConfig` a partition log runs with.
//!
//! Supported topic configs (Kafka names where Kafka has one):
//!
//! | name | type | meaning in chronik |
//! |---|---|---|
//! | `cleanup.policy` | list of `delete`, `compact` | `delete`: retention removes old segments; `compact`: the cleaner keeps the latest record of every key (records without a key are refused); both: both |
//! | `retention.ms` | long >= -1 | delete whole segments older than this; -1 keeps forever (only with `delete` in `cleanup.policy`) |
//! | `retention.bytes` | long >= -1 | delete oldest segments beyond this size per partition; -1 unlimited (only with `delete`) |
//! | `min.cleanable.dirty.ratio` | double 0..1 | compact a log once its uncleaned bytes are this share of its cleanable bytes |
//! | `min.compaction.lag.ms` | long >= 0 | a record stays uncompacted at least this long |
//! | `max.compaction.lag.ms` | long >= 1 | a record is compacted within about this long, whatever the dirty ratio (the active segment of a compacted topic rolls by then) |
//! | `delete.retention.ms` | long >= 0 | a tombstone (null value) is kept this long after its segment was cleaned, for consumers to see it |
//! | `segment.bytes` | int >= 4096 | roll the segment before it grows past this (at least one disk block) |
//! | `segment.ms` | long >= 1 | roll a segment this long after its first append (on a compacted topic at most `max.compaction.lag.ms`) |
//! | `flush.ms` | long >= 0 | 0: fdatasync before acknowledging (group commit); N: fdatasync every N ms; Long.MAX: the broker default |
//! | `chronik.flush.policy` | always, interval, never | overrides `flush.ms`: `always` fdatasyncs before acknowledging, `interval` every `flush.ms` (or the broker's interval, else 1000 ms), `never` leaves it to the page cache |
//! | `max.message.bytes` | int >= 0 | largest record batch accepted |
//! | `index.interval.bytes` | int >= 0 | bytes between two sparse offset index entries |
//! | `min.insync.replicas` | int >= 1 | acks=all needs at least this many in-sync replicas |
//! | `unclean.leader.election.enable` | boolean | elect an out-of-sync replica when no in-sync one is alive |
//! | `message.timestamp.type` | `CreateTime` | the producer's timestamps are kept (LogAppendTime is not implemented) |
//! | `compression.type` | `producer` | batches are stored as the producer compressed them (no recompression) |
//!
//! `flush.messages` and every other Kafka topic config are rejected with INVALID_CONFIG, and so is
//! `min.compaction.lag.ms` above `max.compaction.lag.ms` (Kafka's `LogConfig.validateValues`).

use std::collections::BTreeMap;

use chronik_shards::log::{CompactionConfig, FlushPolicy, LogConfig};

use super::error::ControlError;
use super::image::TopicInfo;
use super::BrokerDefaults;

/// Kafka's "no limit" for long configs.
const LONG_MAX: i64 = i64::MAX;
/// The fsync interval `chronik.flush.policy=interval` uses when neither the topic nor the
/// broker names one.
const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;

/// What DescribeConfigs reports for one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    /// True when the value is the broker's default (not set on the topic).
    pub is_default: bool,
    pub source: ConfigSource,
    pub read_only: bool,
    pub sensitive: bool,
    pub config_type: ConfigType,
    pub documentation: &'static str,
}

/// Kafka's DescribeConfigs `config_source` values chronik reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigSource {
    DynamicTopic = 1,
    Default = 5,
}

/// Kafka's DescribeConfigs `config_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// How a value is checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Long {
        min: i64,
    },
    Int {
        min: i32,
    },
    /// A finite double within `min..=max`.
    Double {
        min: f64,
        max: f64,
    },
    Bool,
    /// One of the listed values (case-sensitive, as Kafka).
    OneOf(&'static [&'static str]),
    /// A comma-separated list whose items are among the listed values.
    ListOf(&'static [&'static str]),
}

struct Definition {
    name: &'static str,
    kind: Kind,
    documentation: &'static str,
}

const DEFINITIONS: &[Definition] = &[
    Definition {
        name: "cleanup.policy",
        kind: Kind::ListOf(&["compact", "delete"]),
        documentation: "delete: whole segments are removed by retention.ms/retention.bytes; compact: the latest record of every key is kept; compact,delete: both.",
    },
    Definition {
        name: "compression.type",
        kind: Kind::OneOf(&["producer"]),
        documentation: "Batches are stored as the producer compressed them.",
    },
    Definition {
        name: "chronik.flush.policy",
        kind: Kind::OneOf(&["always", "interval", "never"]),
        documentation: "always: fdatasync before acknowledging; interval: every flush.ms; never: page cache only.",
    },
    Definition {
        name: "delete.retention.ms",
        kind: Kind::Long { min: 0 },
        documentation: "How long a tombstone is kept after its segment was cleaned, for consumers to see it.",
    },
    Definition {
        name: "flush.ms",
        kind: Kind::Long { min: 0 },
        documentation: "0: fdatasync before acknowledging; N: fdatasync every N ms; Long.MAX: broker default.",
    },
    Definition {
        name: "index.interval.bytes",
        kind: Kind::Int { min: 0 },
        documentation: "Bytes of batches between two sparse offset index entries.",
    },
    Definition {
        name: "max.message.bytes",
        kind: Kind::Int { min: 0 },
        documentation: "The largest record batch accepted.",
    },
    Definition {
        name: "max.compaction.lag.ms",
        kind: Kind::Long { min: 1 },
        documentation: "A record is compacted within about this long, whatever the dirty ratio.",
    },
    Definition {
        name: "message.timestamp.type",
        kind: Kind::OneOf(&["CreateTime"]),
        documentation: "Only CreateTime: the producer's timestamps are kept.",
    },
    Definition {
        name: "min.cleanable.dirty.ratio",
        kind: Kind::Double { min: 0.0, max: 1.0 },
        documentation: "A log is compacted once its uncleaned bytes are this share of its cleanable bytes.",
    },
    Definition {
        name: "min.compaction.lag.ms",
        kind: Kind::Long { min: 0 },
        documentation: "A record stays uncompacted at least this long.",
    },
    Definition {
        name: "min.insync.replicas",
        kind: Kind::Int { min: 1 },
        documentation: "acks=all needs at least this many in-sync replicas.",
    },
    Definition {
        name: "retention.bytes",
        kind: Kind::Long { min: -1 },
        documentation: "Oldest segments beyond this size per partition are deleted; -1: unlimited.",
    },
    Definition {
        name: "retention.ms",
        kind: Kind::Long { min: -1 },
        documentation: "Segments older than this are deleted; -1: kept forever.",
    },
    Definition {
        name: "segment.bytes",
        kind: Kind::Int { min: 4096 },
        documentation: "A segment is rolled before it grows past this size.",
    },
    Definition {
        name: "segment.ms",
        kind: Kind::Long { min: 1 },
        documentation: "A segment is rolled this long after its first append.",
    },
    Definition {
        name: "unclean.leader.election.enable",
        kind: Kind::Bool,
        documentation: "Elect an out-of-sync replica when no in-sync replica is alive (may lose data).",
    },
];

fn definition(name: &str) -> Result<&'static Definition, ControlError> {
    DEFINITIONS.iter().find(|d| d.name == name).ok_or_else(|| {
        ControlError::InvalidConfig(format!("unknown or unsupported topic config {name:?}"))
    })
}

/// Checks one config name and value; returns the value as it is stored (trimmed).
pub fn validate(name: &str, value: &str) -> Result<String, ControlError> {
    let def = definition(name)?;
    let value = value.trim();
    let invalid = |why: String| {
        ControlError::InvalidConfig(format!("invalid value {value:?} for config {name}: {why}"))
    };
    match def.kind {
        Kind::Long { min } => {
            let parsed: i64 = value.parse().map_err(|_| invalid("not a long".into()))?;
            if parsed < min {
                return Err(invalid(format!("must be at least {min}")));
            }
        }
        Kind::Int { min } => {
            let parsed: i32 = value.parse().map_err(|_| invalid("not an int".into()))?;
            if parsed < min {
                return Err(invalid(format!("must be at least {min}")));
            }
        }
        Kind::Double { min, max } => {
            let parsed: f64 = value.parse().map_err(|_| invalid("not a double".into()))?;
            // `!(..)` also refuses NaN, which Rust parses and no range contains.
            if !(min..=max).contains(&parsed) {
                return Err(invalid(format!("must be between {min} and {max}")));
            }
        }
        Kind::Bool => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(invalid("expected true or false".into()));
            }
            return Ok(value.to_ascii_lowercase());
        }
        Kind::OneOf(allowed) => {
            if !allowed.contains(&value) {
                return Err(invalid(format!("supported: {}", allowed.join(", "))));
            }
        }
        Kind::ListOf(allowed) => {
            let items = list_items(value);
            if items.is_empty() {
                return Err(invalid("empty list".into()));
            }
            if let Some(bad) = items.iter().find(|item| !allowed.contains(item)) {
                return Err(invalid(format!(
                    "{bad:?} not supported; supported: {}",
                    allowed.join(", ")
                )));
            }
            return Ok(items.join(","));
        }
    }
    Ok(value.to_string())
}

fn list_items(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks every config of a CreateTopics request; a `None` value means "use the default".
pub fn validate_all(
    configs: &[(String, Option<String>)],
) -> Result<BTreeMap<String, String>, ControlError> {
    let mut result = BTreeMap::new();
    for (name, value) in configs {
        match value {
            Some(value) => {
                if result
                    .insert(name.clone(), validate(name, value)?)
                    .is_some()
                {
                    return Err(ControlError::InvalidConfig(format!(
                        "config {name} given twice"
                    )));
                }
            }
            None => {
                definition(name)?;
            }
        }
    }
    validate_combination(&result)?;
    Ok(result)
}

/// Checks what single values cannot: `min.compaction.lag.ms` must not exceed
/// `max.compaction.lag.ms`, an unset one counting as its default (Kafka's
/// `LogConfig.validateValues`, with its message). The defaults are the static ones: the broker
/// has no flag for them, and the state machine, which runs this through `apply_ops`, has no
/// broker defaults.
pub fn validate_combination(configs: &BTreeMap<String, String>) -> Result<(), ControlError> {
    let defaults = CompactionConfig::default();
    let lag = |name: &str, default: i64| {
        configs
            .get(name)
            .and_then(|value| value.parse::<i64>().ok())
            .unwrap_or(default)
    };
    let min = lag("min.compaction.lag.ms", defaults.min_compaction_lag_ms);
    let max = lag("max.compaction.lag.ms", defaults.max_compaction_lag_ms);
    if min > max {
        return Err(ControlError::InvalidConfig(format!(
            "conflict topic config setting min.compaction.lag.ms ({min}) > max.compaction.lag.ms ({max})"
        )));
    }
    Ok(())
}

/// One IncrementalAlterConfigs operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigOp {
    Set(String, String),
    /// Revert to the default.
    Delete(String),
    /// Add items to a list config.
    Append(String, String),
    /// Remove items from a list config.
    Subtract(String, String),
}

/// Applies IncrementalAlterConfigs operations to a topic's explicit configs. Pure and
/// deterministic: the state machine runs it on every node. List operations start from the
/// current value, or from the config's static default when it is not set.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[ConfigOp],
) -> Result<BTreeMap<String, String>, ControlError> {
    let mut configs = current.clone();
    for op in ops {
        match op {
            ConfigOp::Set(name, value) => {
                let value = validate(name, value)?;
                configs.insert(name.clone(), value);
            }
            ConfigOp::Delete(name) => {
                definition(name)?;
                configs.remove(name);
            }
            ConfigOp::Append(name, value) | ConfigOp::Subtract(name, value) => {
                let def = definition(name)?;
                if !matches!(def.kind, Kind::ListOf(_)) {
                    return Err(ControlError::InvalidConfig(format!(
                        "config {name} is not a list: APPEND and SUBTRACT are not allowed"
                    )));
                }
                let base = configs
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| static_default(name));
                let mut items: Vec<String> =
                    list_items(&base).into_iter().map(str::to_string).collect();
                let given: Vec<&str> = list_items(value);
                if matches!(op, ConfigOp::Append(..)) {
                    for item in given {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    }
                } else {
                    items.retain(|i| !given.contains(&i.as_str()));
                }
                let value = validate(name, &items.join(","))?;
                configs.insert(name.clone(), value);
            }
        }
    }
    validate_combination(&configs)?;
    Ok(configs)
}

/// Defaults that do not depend on the broker's configuration.
fn static_default(name: &str) -> String {
    match name {
        "cleanup.policy" => "delete",
        "compression.type" => "producer",
        "message.timestamp.type" => "CreateTime",
        _ => "",
    }
    .to_string()
}

fn flush_policy_name(flush: &FlushPolicy) -> &'static str {
    match flush {
        FlushPolicy::Always => "always",
        FlushPolicy::IntervalMs(_) => "interval",
        FlushPolicy::Never => "never",
    }
}

fn optional_long(value: Option<u64>) -> String {
    value
        .map_or(LONG_MAX, |v| i64::try_from(v).unwrap_or(LONG_MAX))
        .to_string()
}

/// The broker's default for a known config.
fn broker_default(name: &str, defaults: &BrokerDefaults) -> String {
    let log = &defaults.log;
    let compaction = &log.compaction;
    match name {
        "chronik.flush.policy" => flush_policy_name(&log.flush).to_string(),
        "flush.ms" => match log.flush {
            FlushPolicy::Always => "0".to_string(),
            FlushPolicy::IntervalMs(ms) => ms.to_string(),
            FlushPolicy::Never => LONG_MAX.to_string(),
        },
        "delete.retention.ms" => compaction.delete_retention_ms.to_string(),
        "index.interval.bytes" => log.index_interval_bytes.to_string(),
        "max.compaction.lag.ms" => compaction.max_compaction_lag_ms.to_string(),
        "min.cleanable.dirty.ratio" => compaction.min_cleanable_dirty_ratio.to_string(),
        "min.compaction.lag.ms" => compaction.min_compaction_lag_ms.to_string(),
        "max.message.bytes" => log.max_batch_bytes.to_string(),
        "min.insync.replicas" => defaults.min_insync_replicas.to_string(),
        "retention.bytes" => log
            .retention_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(LONG_MAX))
            .to_string(),
        "retention.ms" => log.retention_ms.unwrap_or(-1).to_string(),
        "segment.bytes" => log.segment_bytes.to_string(),
        "segment.ms" => optional_long(log.segment_ms),
        "unclean.leader.election.enable" => "false".to_string(),
        other => static_default(other),
    }
}

/// Every known config of `topic` with its effective value, for DescribeConfigs.
pub fn describe(topic: &TopicInfo, defaults: &BrokerDefaults) -> Vec<ConfigEntry> {
    DEFINITIONS
        .iter()
        .map(|def| {
            let explicit = topic.configs.get(def.name);
            ConfigEntry {
                name: def.name.to_string(),
                value: Some(
                    explicit
                        .cloned()
                        .unwrap_or_else(|| broker_default(def.name, defaults)),
                ),
                is_default: explicit.is_none(),
                source: if explicit.is_some() {
                    ConfigSource::DynamicTopic
                } else {
                    ConfigSource::Default
                },
                read_only: false,
                sensitive: false,
                config_type: match def.kind {
                    Kind::Long { .. } => ConfigType::Long,
                    Kind::Int { .. } => ConfigType::Int,
                    Kind::Double { .. } => ConfigType::Double,
                    Kind::Bool => ConfigType::Boolean,
                    Kind::OneOf(_) => ConfigType::String,
                    Kind::ListOf(_) => ConfigType::List,
                },
                documentation: def.documentation,
            }
        })
        .collect()
}

fn explicit<T: std::str::FromStr>(topic: &TopicInfo, name: &str) -> Option<T> {
    topic.configs.get(name).and_then(|value| value.parse().ok())
}

/// The flush policy of a topic: `chronik.flush.policy` if set, else `flush.ms`, else the broker's.
fn flush_policy(topic: &TopicInfo, defaults: &BrokerDefaults) -> FlushPolicy {
    let flush_ms: Option<i64> = explicit(topic, "flush.ms");
    match topic
        .configs
        .get("chronik.flush.policy")
        .map(String::as_str)
    {
        Some("always") => FlushPolicy::Always,
        Some("never") => FlushPolicy::Never,
        Some("interval") => match (flush_ms, &defaults.log.flush) {
            (Some(ms), _) if ms > 0 && ms < LONG_MAX => FlushPolicy::IntervalMs(ms as u64),
            (_, FlushPolicy::IntervalMs(ms)) => FlushPolicy::IntervalMs(*ms),
            _ => FlushPolicy::IntervalMs(DEFAULT_FLUSH_INTERVAL_MS),
        },
        _ => match flush_ms {
            Some(0) => FlushPolicy::Always,
            Some(ms) if ms > 0 && ms < LONG_MAX => FlushPolicy::IntervalMs(ms as u64),
            _ => defaults.log.flush,
        },
    }
}

/// Whether `topic`'s replicas acknowledge only fsynced records (flush policy `always`). The broker
/// default is `always` and not configurable, so this depends on the topic's own configs alone, as
/// the metadata state machine (which has no broker defaults) needs it to; were the default made
/// configurable, the commands that depend on it would have to carry it.
pub fn acknowledges_only_durable(topic: &TopicInfo) -> bool {
    matches!(
        flush_policy(topic, &BrokerDefaults::default()),
        FlushPolicy::Always
    )
}

/// The `LogConfig` every partition log of `topic` runs with.
pub fn log_config(topic: &TopicInfo, defaults: &BrokerDefaults) -> LogConfig {
    let mut config = defaults.log.clone();
    if let Some(bytes) = explicit::<u64>(topic, "segment.bytes") {
        config.segment_bytes = bytes;
    }
    if let Some(ms) = explicit::<i64>(topic, "segment.ms") {
        config.segment_ms = (ms < LONG_MAX).then_some(ms as u64);
    }
    config.flush = flush_policy(topic, defaults);
    if let Some(ms) = explicit::<i64>(topic, "retention.ms") {
        config.retention_ms = (ms >= 0).then_some(ms);
    }
    if let Some(bytes) = explicit::<i64>(topic, "retention.bytes") {
        config.retention_bytes = u64::try_from(bytes).ok();
    }
    if let Some(bytes) = explicit::<u32>(topic, "index.interval.bytes") {
        config.index_interval_bytes = bytes;
    }
    if let Some(bytes) = explicit::<usize>(topic, "max.message.bytes") {
        config.max_batch_bytes = bytes;
    }
    apply_cleanup_policy(topic, &mut config);
    config
}

/// `cleanup.policy` and the compaction configs. Without `delete` nothing is removed by age or
/// size (a compacted-only topic keeps every key's latest record forever, as in Kafka). With
/// `compact`, the active segment rolls by `max.compaction.lag.ms` (Kafka's
/// `LogConfig.maxSegmentMs`): the cleaner never touches the active segment, so without the roll
/// a quiet topic's records would stay uncompacted past that lag.
fn apply_cleanup_policy(topic: &TopicInfo, config: &mut LogConfig) {
    if let Some(policy) = topic.configs.get("cleanup.policy") {
        let items = list_items(policy);
        config.compact = items.contains(&"compact");
        if !items.contains(&"delete") {
            config.retention_ms = None;
            config.retention_bytes = None;
        }
    }
    let compaction = &mut config.compaction;
    if let Some(ratio) = explicit::<f64>(topic, "min.cleanable.dirty.ratio") {
        compaction.min_cleanable_dirty_ratio = ratio;
    }
    if let Some(ms) = explicit::<i64>(topic, "min.compaction.lag.ms") {
        compaction.min_compaction_lag_ms = ms;
    }
    if let Some(ms) = explicit::<i64>(topic, "max.compaction.lag.ms") {
        compaction.max_compaction_lag_ms = ms;
    }
    if let Some(ms) = explicit::<i64>(topic, "delete.retention.ms") {
        compaction.delete_retention_ms = ms;
    }
    if config.compact {
        if let Ok(max_lag) = u64::try_from(compaction.max_compaction_lag_ms) {
            if max_lag > 0 && max_lag < LONG_MAX as u64 {
                config.segment_ms = Some(config.segment_ms.map_or(max_lag, |ms| ms.min(max_lag)));
            }
        }
    }
}

/// The topic's `min.insync.replicas`.
pub fn min_insync_replicas(topic: &TopicInfo, defaults: &BrokerDefaults) -> i32 {
    explicit(topic, "min.insync.replicas").unwrap_or(defaults.min_insync_replicas)
}

/// Whether the topic allows electing an out-of-sync replica.
pub fn unclean_leader_election(topic: &TopicInfo) -> bool {
    topic
        .configs
        .get("unclean.leader.election.enable")
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
#[path = "topic_config_tests.rs"]
mod tests;
