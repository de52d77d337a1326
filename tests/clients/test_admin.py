"""confluent-kafka AdminClient: create, describe, alter and delete topics (CreateTopics v4 and friends)."""

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic,
                                   ResourceType)

from clients import admin


def _describe_config(client, topic) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    return client.describe_configs([res])[res].result(30)


def test_admin_client_topic_lifecycle(broker):
    client = admin(broker.bootstrap)
    fs = client.create_topics([NewTopic("admin-life", num_partitions=3, replication_factor=1,
                                        config={"retention.ms": "3600000"})], request_timeout=30)
    fs["admin-life"].result(30)

    meta = client.list_topics(timeout=30)
    assert "admin-life" in meta.topics
    topic = meta.topics["admin-life"]
    assert sorted(topic.partitions) == [0, 1, 2]
    for p in topic.partitions.values():
        assert p.leader == 1 and p.replicas == [1] and p.isrs == [1]

    configs = _describe_config(client, "admin-life")
    assert configs["retention.ms"].value == "3600000"
    assert not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "delete"

    res = ConfigResource(ResourceType.TOPIC, "admin-life", incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
    client.incremental_alter_configs([res])[res].result(30)
    configs = _describe_config(client, "admin-life")
    assert configs["retention.ms"].value == "7200000"
    assert configs["segment.bytes"].value == "1048576"

    client.create_partitions([NewPartitions("admin-life", 5)])["admin-life"].result(30)
    assert sorted(client.list_topics(timeout=30).topics["admin-life"].partitions) == [0, 1, 2, 3, 4]

    client.delete_topics(["admin-life"], operation_timeout=30)["admin-life"].result(30)
    assert "admin-life" not in client.list_topics(timeout=30).topics


def test_admin_client_compaction_configs(broker):
    """cleanup.policy=compact and the compaction configs at CreateTopics, in DescribeConfigs (with
    Kafka's types) and through IncrementalAlterConfigs, which turns a live topic compacted."""
    client = admin(broker.bootstrap)
    client.create_topics([NewTopic("admin-compacted", 1, 1, config={
        "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.bytes": "65536"})])[
        "admin-compacted"].result(30)
    configs = _describe_config(client, "admin-compacted")
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.cleanable.dirty.ratio"].value == "0.1"
    assert configs["min.compaction.lag.ms"].value == "0"
    assert configs["max.compaction.lag.ms"].value == "9223372036854775807"
    assert configs["delete.retention.ms"].value == "86400000"
    assert configs["delete.retention.ms"].is_default

    client.create_topics([NewTopic("admin-to-compact", 1, 1)])["admin-to-compact"].result(30)
    res = ConfigResource(ResourceType.TOPIC, "admin-to-compact", incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
        ConfigEntry("delete.retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    client.incremental_alter_configs([res])[res].result(30)
    configs = _describe_config(client, "admin-to-compact")
    assert configs["cleanup.policy"].value == "delete,compact"
    assert configs["delete.retention.ms"].value == "1000"

    # Kafka's LogConfig.validateValues: min.compaction.lag.ms above max.compaction.lag.ms.
    res = ConfigResource(ResourceType.TOPIC, "admin-to-compact", incremental_configs=[
        ConfigEntry("min.compaction.lag.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("max.compaction.lag.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as err:
        client.incremental_alter_configs([res])[res].result(30)
    assert err.value.args[0].name() == "INVALID_CONFIG"
    with pytest.raises(KafkaException) as err:
        client.create_topics([NewTopic("bad-ratio", 1, 1, config={"min.cleanable.dirty.ratio": "2"})])[
            "bad-ratio"].result(30)
    assert err.value.args[0].name() == "INVALID_CONFIG"


def test_admin_client_reports_kafka_errors(broker):
    client = admin(broker.bootstrap)
    client.create_topics([NewTopic("dupe", 1, 1)])["dupe"].result(30)
    with pytest.raises(KafkaException) as err:
        client.create_topics([NewTopic("dupe", 1, 1)])["dupe"].result(30)
    assert err.value.args[0].name() == "TOPIC_ALREADY_EXISTS"

    with pytest.raises(KafkaException) as err:
        client.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"].result(30)
    assert err.value.args[0].code() == 17  # INVALID_TOPIC_EXCEPTION (librdkafka: TOPIC_EXCEPTION)

    with pytest.raises(KafkaException) as err:
        client.create_topics([NewTopic("too-many-replicas", 1, 3)])["too-many-replicas"].result(30)
    assert err.value.args[0].name() == "INVALID_REPLICATION_FACTOR"

    with pytest.raises(KafkaException) as err:
        client.delete_topics(["never-existed"])["never-existed"].result(30)
    assert err.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"


def test_admin_validate_only_creates_nothing(broker):
    client = admin(broker.bootstrap)
    client.create_topics([NewTopic("dry-run", 2, 1)], validate_only=True)["dry-run"].result(30)
    assert "dry-run" not in client.list_topics(timeout=30).topics


def test_admin_delete_then_recreate_serves_only_new_data(broker):
    from clients import consume_partitions, produce_all
    from records import make_records

    client = admin(broker.bootstrap)
    client.create_topics([NewTopic("reborn", 2, 1)])["reborn"].result(30)
    produce_all(broker.bootstrap, "reborn", make_records(200, seed=1), lambda i: i % 2)
    client.delete_topics(["reborn"], operation_timeout=30)["reborn"].result(30)
    client.create_topics([NewTopic("reborn", 1, 1)])["reborn"].result(30)
    fresh = make_records(10, seed=2)
    delivered = produce_all(broker.bootstrap, "reborn", fresh, lambda i: 0)
    assert sorted(off for _, off in delivered.values()) == list(range(10))
    msgs = consume_partitions(broker.bootstrap, "reborn", [0], 10)
    assert [m.value() for m in msgs] == [r.value for r in fresh]
