"""kafka-python 3.0: the same acks=all round trip with every codec, keys and headers."""

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from records import CODECS, make_records

PARTITIONS = 3


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_acks_all_roundtrip_per_codec(broker, codec):
    topic = f"kafka-python-{codec}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()

    records = make_records(2000, seed=11)
    # kafka-python 3's defaults: idempotence on.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type=None if codec == "none" else codec, linger_ms=5)
    futures = [producer.send(topic, key=r.key, value=r.value, headers=list(r.headers),
                             partition=i % PARTITIONS) for i, r in enumerate(records)]
    producer.flush(60)
    metas = [f.get(timeout=60) for f in futures]
    producer.close()
    assert all(m.offset >= 0 for m in metas)

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=20_000)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = {}
    for msg in consumer:
        got[(msg.partition, msg.offset)] = msg
        if len(got) == len(records):
            break
    consumer.close()
    assert len(got) == len(records)
    for r, meta in zip(records, metas):
        msg = got[(meta.partition, meta.offset)]
        assert msg.key == r.key
        assert msg.value == r.value
        assert tuple((k, v) for k, v in msg.headers) == r.headers


def test_kafka_python_admin_create_and_delete(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("kp-admin", num_partitions=5, replication_factor=1)])
    assert "kp-admin" in admin.list_topics()
    (described,) = admin.describe_topics(["kp-admin"])
    assert len(described["partitions"]) == 5
    admin.delete_topics(["kp-admin"])
    assert "kp-admin" not in admin.list_topics()
    admin.close()


def read_partitions_to_end(bootstrap: str, topic: str, partitions: int) -> dict:
    """{partition: [(key, value, headers)]} of everything each partition holds, from its first
    offset to its end offset, in offset order (so a record stored twice is seen twice)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=20_000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    got = {p: [] for p in range(partitions)}
    left = sum(ends.values())
    for msg in consumer:
        headers = tuple((k, v) for k, v in msg.headers)
        got[msg.partition].append((msg.offset, (msg.key, msg.value, headers)))
        left -= 1
        if left == 0:
            break
    consumer.close()
    for tp in tps:
        offsets = [o for o, _ in got[tp.partition]]
        assert offsets == list(range(ends[tp])), f"partition {tp.partition}: offsets {offsets[:5]}..."
    return {p: [r for _, r in rs] for p, rs in got.items()}


def test_kafka_python_default_producer_is_idempotent_and_stored_exactly_once(broker):
    """kafka-python 3's default producer (KIP-679: idempotence on, acks=all) gets a producer id
    through InitProducerId, and every record is stored exactly once, in the order it was sent to
    its partition."""
    topic = "kafka-python-idempotent"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()

    records = make_records(3000, seed=17)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    futures = [producer.send(topic, key=r.key, value=r.value, headers=list(r.headers),
                             partition=i % PARTITIONS) for i, r in enumerate(records)]
    producer.flush(60)
    metas = [f.get(timeout=60) for f in futures]
    # The default must really be idempotent: kafka-python silently turns it off on a conflict.
    manager = producer._transaction_manager
    producer_id = manager.producer_id_and_epoch.producer_id if manager is not None else -1
    producer.close()
    assert producer_id >= 0, "the producer never got a producer id: idempotence was off"

    stored = read_partitions_to_end(broker.bootstrap, topic, PARTITIONS)
    for p in range(PARTITIONS):
        sent = [(r.key, r.value, r.headers) for i, r in enumerate(records) if i % PARTITIONS == p]
        assert stored[p] == sent, f"partition {p}: not exactly the records sent, in order"
    for i, meta in enumerate(metas):
        assert (meta.partition, meta.offset) == (i % PARTITIONS, i // PARTITIONS)
