//! Tests of `topic_config`: validation, IncrementalAlterConfigs operations, DescribeConfigs and
//! the `LogConfig` a topic's configs give.

use super::*;
use uuid::Uuid;

fn topic(configs: &[(&str, &str)]) -> TopicInfo {
    TopicInfo {
        id: Uuid::from_u128(1),
        name: "t".into(),
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        partitions: vec![],
    }
}

fn defaults() -> BrokerDefaults {
    BrokerDefaults::default()
}

#[test]
fn validates_values() {
    assert_eq!(validate("retention.ms", " 1000 ").unwrap(), "1000");
    assert_eq!(validate("retention.ms", "-1").unwrap(), "-1");
    assert_eq!(
        validate("unclean.leader.election.enable", "TRUE").unwrap(),
        "true"
    );
    assert_eq!(validate("cleanup.policy", "delete").unwrap(), "delete");
    for (name, value) in [
        ("retention.ms", "-2"),
        ("retention.ms", "abc"),
        ("segment.bytes", "100"),
        ("segment.bytes", "99999999999"),
        ("cleanup.policy", "compact,bogus"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("min.cleanable.dirty.ratio", "-0.1"),
        ("min.cleanable.dirty.ratio", "NaN"),
        ("min.cleanable.dirty.ratio", "half"),
        ("min.compaction.lag.ms", "-1"),
        ("max.compaction.lag.ms", "0"),
        ("delete.retention.ms", "-1"),
        ("cleanup.policy", ""),
        ("compression.type", "gzip"),
        ("message.timestamp.type", "LogAppendTime"),
        ("min.insync.replicas", "0"),
        ("unclean.leader.election.enable", "yes"),
        ("chronik.flush.policy", "sometimes"),
        ("flush.messages", "1"),
        ("no.such.config", "1"),
    ] {
        let err = validate(name, value).unwrap_err();
        assert!(
            matches!(err, ControlError::InvalidConfig(_)),
            "{name}={value}"
        );
        assert_eq!(err.code().code(), 40);
    }
}

#[test]
fn validate_all_rejects_duplicates_and_unknown_null() {
    let ok = validate_all(&[
        ("retention.ms".into(), Some("5".into())),
        ("segment.ms".into(), None),
    ])
    .unwrap();
    assert_eq!(ok.len(), 1);
    assert!(validate_all(&[
        ("retention.ms".into(), Some("5".into())),
        ("retention.ms".into(), Some("6".into()))
    ])
    .is_err());
    assert!(validate_all(&[("bogus".into(), None)]).is_err());
}

#[test]
fn incremental_ops() {
    let current: BTreeMap<String, String> = [("retention.ms".to_string(), "5".to_string())].into();
    let next = apply_ops(
        &current,
        &[
            ConfigOp::Set("segment.ms".into(), "100".into()),
            ConfigOp::Delete("retention.ms".into()),
            ConfigOp::Append("cleanup.policy".into(), "delete".into()),
        ],
    )
    .unwrap();
    assert_eq!(next.get("segment.ms").map(String::as_str), Some("100"));
    assert!(!next.contains_key("retention.ms"));
    assert_eq!(
        next.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    // Subtracting the only item leaves an empty list: invalid.
    assert!(apply_ops(
        &next,
        &[ConfigOp::Subtract("cleanup.policy".into(), "delete".into())]
    )
    .is_err());
    assert!(apply_ops(
        &next,
        &[ConfigOp::Append("retention.ms".into(), "1".into())]
    )
    .is_err());
    assert!(apply_ops(&next, &[ConfigOp::Set("retention.ms".into(), "x".into())]).is_err());
    assert!(apply_ops(&next, &[ConfigOp::Delete("nope".into())]).is_err());
}

#[test]
fn describe_reports_defaults_and_overrides() {
    let entries = describe(&topic(&[("retention.ms", "1000")]), &defaults());
    assert_eq!(entries.len(), DEFINITIONS.len());
    let retention = entries.iter().find(|e| e.name == "retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("1000"));
    assert!(!retention.is_default);
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = entries.iter().find(|e| e.name == "segment.bytes").unwrap();
    assert!(segment.is_default);
    assert_eq!(
        segment.value,
        Some(defaults().log.segment_bytes.to_string())
    );
    assert_eq!(segment.source, ConfigSource::Default);
    // Every default value is itself valid.
    for entry in entries {
        validate(&entry.name, entry.value.as_deref().unwrap()).unwrap();
    }
}

#[test]
fn log_config_follows_topic_configs() {
    let d = defaults();
    let config = log_config(
        &topic(&[
            ("segment.bytes", "1048576"),
            ("segment.ms", "60000"),
            ("retention.ms", "-1"),
            ("retention.bytes", "4096"),
            ("index.interval.bytes", "100"),
            ("max.message.bytes", "2000"),
        ]),
        &d,
    );
    assert_eq!(config.segment_bytes, 1048576);
    assert_eq!(config.segment_ms, Some(60000));
    assert_eq!(config.retention_ms, None);
    assert_eq!(config.retention_bytes, Some(4096));
    assert_eq!(config.index_interval_bytes, 100);
    assert_eq!(config.max_batch_bytes, 2000);
    let unset = log_config(&topic(&[]), &d);
    assert_eq!(unset.segment_bytes, d.log.segment_bytes);
    assert_eq!(unset.retention_ms, d.log.retention_ms);
}

#[test]
fn flush_policy_rules() {
    let d = defaults();
    let flush = |configs: &[(&str, &str)]| log_config(&topic(configs), &d).flush;
    assert!(matches!(flush(&[]), FlushPolicy::Always));
    assert!(matches!(flush(&[("flush.ms", "0")]), FlushPolicy::Always));
    assert!(matches!(
        flush(&[("flush.ms", "250")]),
        FlushPolicy::IntervalMs(250)
    ));
    assert!(matches!(
        flush(&[("flush.ms", "9223372036854775807")]),
        FlushPolicy::Always
    ));
    assert!(matches!(
        flush(&[("chronik.flush.policy", "never")]),
        FlushPolicy::Never
    ));
    assert!(matches!(
        flush(&[("chronik.flush.policy", "always"), ("flush.ms", "5")]),
        FlushPolicy::Always
    ));
    assert!(matches!(
        flush(&[("chronik.flush.policy", "interval"), ("flush.ms", "5")]),
        FlushPolicy::IntervalMs(5)
    ));
    assert!(matches!(
        flush(&[("chronik.flush.policy", "interval")]),
        FlushPolicy::IntervalMs(DEFAULT_FLUSH_INTERVAL_MS)
    ));
}

#[test]
fn min_insync_and_unclean() {
    let d = defaults();
    assert_eq!(min_insync_replicas(&topic(&[]), &d), 1);
    assert_eq!(
        min_insync_replicas(&topic(&[("min.insync.replicas", "2")]), &d),
        2
    );
    assert!(!unclean_leader_election(&topic(&[])));
    assert!(unclean_leader_election(&topic(&[(
        "unclean.leader.election.enable",
        "true"
    )])));
}

#[test]
fn cleanup_policies_and_compaction_values() {
    for policy in ["delete", "compact", "compact,delete", "delete,compact"] {
        assert_eq!(validate("cleanup.policy", policy).unwrap(), policy);
    }
    assert_eq!(
        validate("cleanup.policy", " compact , delete ").unwrap(),
        "compact,delete"
    );
    for ratio in ["0", "0.5", "1", "1.0", "0.01"] {
        assert_eq!(validate("min.cleanable.dirty.ratio", ratio).unwrap(), ratio);
    }
    assert!(validate("min.compaction.lag.ms", "0").is_ok());
    assert!(validate("max.compaction.lag.ms", "1").is_ok());
    assert!(validate("delete.retention.ms", "0").is_ok());
}

#[test]
fn min_compaction_lag_above_max_is_refused_as_kafka_does() {
    let err = validate_all(&[
        ("min.compaction.lag.ms".into(), Some("60000".into())),
        ("max.compaction.lag.ms".into(), Some("1000".into())),
    ])
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "conflict topic config setting min.compaction.lag.ms (60000) > max.compaction.lag.ms (1000)"
        ),
        "{err}"
    );
    assert_eq!(err.code().code(), 40);
    // Equal is fine; an unset max is Long.MAX.
    assert!(validate_all(&[
        ("min.compaction.lag.ms".into(), Some("1000".into())),
        ("max.compaction.lag.ms".into(), Some("1000".into())),
    ])
    .is_ok());
    assert!(validate_all(&[("min.compaction.lag.ms".into(), Some(i64::MAX.to_string()))]).is_ok());
    // An alter that sets only one of them is checked against the other's current value.
    let current: BTreeMap<String, String> =
        [("max.compaction.lag.ms".to_string(), "1000".to_string())].into();
    assert!(apply_ops(
        &current,
        &[ConfigOp::Set("min.compaction.lag.ms".into(), "1001".into())]
    )
    .is_err());
    let current: BTreeMap<String, String> =
        [("min.compaction.lag.ms".to_string(), "5000".to_string())].into();
    assert!(apply_ops(
        &current,
        &[ConfigOp::Set("max.compaction.lag.ms".into(), "4999".into())]
    )
    .is_err());
    // ... and deleting the max goes back to Long.MAX, which any min fits under.
    let both: BTreeMap<String, String> = [
        ("min.compaction.lag.ms".to_string(), "5000".to_string()),
        ("max.compaction.lag.ms".to_string(), "6000".to_string()),
    ]
    .into();
    assert!(apply_ops(&both, &[ConfigOp::Delete("max.compaction.lag.ms".into())]).is_ok());
}

#[test]
fn cleanup_policy_list_operations() {
    let none = BTreeMap::new();
    // APPEND starts from the default, delete.
    let both = apply_ops(
        &none,
        &[ConfigOp::Append("cleanup.policy".into(), "compact".into())],
    )
    .unwrap();
    assert_eq!(both["cleanup.policy"], "delete,compact");
    let compact = apply_ops(
        &both,
        &[ConfigOp::Subtract("cleanup.policy".into(), "delete".into())],
    )
    .unwrap();
    assert_eq!(compact["cleanup.policy"], "compact");
}

#[test]
fn describe_reports_the_compaction_configs_with_kafkas_types_and_defaults() {
    let entries = describe(&topic(&[]), &defaults());
    let entry = |name: &str| entries.iter().find(|e| e.name == name).unwrap().clone();
    for (name, value, config_type) in [
        ("cleanup.policy", "delete", ConfigType::List),
        ("min.cleanable.dirty.ratio", "0.5", ConfigType::Double),
        ("min.compaction.lag.ms", "0", ConfigType::Long),
        (
            "max.compaction.lag.ms",
            "9223372036854775807",
            ConfigType::Long,
        ),
        ("delete.retention.ms", "86400000", ConfigType::Long),
    ] {
        let e = entry(name);
        assert_eq!(e.value.as_deref(), Some(value), "{name}");
        assert_eq!(e.config_type, config_type, "{name}");
        assert!(e.is_default, "{name}");
    }
    assert_eq!(ConfigType::Double as i8, 6);
    let entries = describe(
        &topic(&[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ]),
        &defaults(),
    );
    let policy = entries.iter().find(|e| e.name == "cleanup.policy").unwrap();
    assert_eq!(policy.value.as_deref(), Some("compact"));
    assert_eq!(policy.source, ConfigSource::DynamicTopic);
    let ratio = entries
        .iter()
        .find(|e| e.name == "min.cleanable.dirty.ratio")
        .unwrap();
    assert_eq!(ratio.value.as_deref(), Some("0.01"));
}

#[test]
fn log_config_follows_the_cleanup_policy() {
    let d = defaults();
    let retention = Some(7 * 24 * 3600 * 1000);
    // delete (default): retention applies, no compaction.
    let plain = log_config(&topic(&[("retention.bytes", "4096")]), &d);
    assert!(!plain.compact);
    assert_eq!(plain.retention_ms, retention);
    assert_eq!(plain.retention_bytes, Some(4096));
    assert_eq!(plain.compaction, CompactionConfig::default());
    // compact alone: nothing deleted by age or size, whatever retention says.
    let compact = log_config(
        &topic(&[
            ("cleanup.policy", "compact"),
            ("retention.ms", "1000"),
            ("retention.bytes", "4096"),
        ]),
        &d,
    );
    assert!(compact.compact);
    assert_eq!(compact.retention_ms, None);
    assert_eq!(compact.retention_bytes, None);
    // compact,delete (either order): both.
    for policy in ["compact,delete", "delete,compact"] {
        let both = log_config(
            &topic(&[("cleanup.policy", policy), ("retention.ms", "1000")]),
            &d,
        );
        assert!(both.compact, "{policy}");
        assert_eq!(both.retention_ms, Some(1000), "{policy}");
    }
    // The compaction configs.
    let tuned = log_config(
        &topic(&[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "100"),
            ("max.compaction.lag.ms", "200000"),
            ("delete.retention.ms", "300"),
        ]),
        &d,
    );
    assert_eq!(
        tuned.compaction,
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.25,
            min_compaction_lag_ms: 100,
            max_compaction_lag_ms: 200000,
            delete_retention_ms: 300,
        }
    );
}

#[test]
fn a_compacted_topic_rolls_its_active_segment_by_max_compaction_lag() {
    let d = defaults();
    let segment_ms = |configs: &[(&str, &str)]| log_config(&topic(configs), &d).segment_ms;
    // Compacted: min(segment.ms, max.compaction.lag.ms).
    assert_eq!(
        segment_ms(&[
            ("cleanup.policy", "compact"),
            ("max.compaction.lag.ms", "5000")
        ]),
        Some(5000)
    );
    assert_eq!(
        segment_ms(&[
            ("cleanup.policy", "compact,delete"),
            ("max.compaction.lag.ms", "5000"),
            ("segment.ms", "2000"),
        ]),
        Some(2000)
    );
    assert_eq!(
        segment_ms(&[
            ("cleanup.policy", "compact"),
            ("max.compaction.lag.ms", "5000"),
            ("segment.ms", "9223372036854775807"),
        ]),
        Some(5000)
    );
    // The default max lag (Long.MAX) leaves segment.ms alone.
    assert_eq!(
        segment_ms(&[("cleanup.policy", "compact")]),
        d.log.segment_ms
    );
    // Not compacted: max.compaction.lag.ms does not roll anything.
    assert_eq!(
        segment_ms(&[("max.compaction.lag.ms", "5000")]),
        d.log.segment_ms
    );
}
