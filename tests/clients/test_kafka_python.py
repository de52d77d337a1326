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
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type=None if codec == "none" else codec, linger_ms=5,
                             # kafka-python 3 defaults to idempotence; InitProducerId is not implemented yet
                             enable_idempotence=False)
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
