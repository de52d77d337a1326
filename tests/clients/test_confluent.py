"""confluent-kafka (librdkafka 2.16): produce with acks=all, every codec, keys and headers; consume by assign."""

import pytest
from confluent_kafka import Consumer, TopicPartition

from clients import consume_partitions, create_topic, produce_all
from records import CODECS, make_records, seq_of

PARTITIONS = 4


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_acks_all_roundtrip_per_codec(broker, codec):
    topic = f"confluent-{codec}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = make_records(4000, seed=CODECS.index(codec))
    delivered = produce_all(broker.bootstrap, topic, records, lambda i: i % PARTITIONS,
                            **{"compression.type": codec})

    msgs = consume_partitions(broker.bootstrap, topic, range(PARTITIONS), len(records))
    by_index = {}
    for m in msgs:
        i = _index_of(m, delivered)
        assert i not in by_index, f"record {i} read twice"
        by_index[i] = m
    assert len(by_index) == len(records)
    for i, r in enumerate(records):
        m = by_index[i]
        assert (m.partition(), m.offset()) == delivered[i]
        assert m.key() == r.key
        assert m.value() == r.value
        assert tuple(m.headers() or ()) == r.headers

    # Offsets per partition are dense and start at 0: nothing lost, nothing invented.
    for p in range(PARTITIONS):
        offsets = sorted(m.offset() for m in msgs if m.partition() == p)
        assert offsets == list(range(len(offsets)))


def _index_of(msg, delivered):
    seq = seq_of(msg.headers())
    if seq is not None:
        return seq
    # Records without headers: find the index by the delivery report's (partition, offset).
    for i, where in delivered.items():
        if where == (msg.partition(), msg.offset()):
            return i
    raise AssertionError(f"unexpected message at {msg.partition()}/{msg.offset()}")


def test_confluent_watermarks_and_offsets_for_times(broker):
    topic = "watermarks"
    create_topic(broker.bootstrap, topic, 1)
    records = make_records(300, seed=3)
    produce_all(broker.bootstrap, topic, records, lambda i: 0)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "chronik-tests-unused"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 300)
        # A timestamp far in the past resolves to the first offset; one in the future to none (-1).
        (early,) = consumer.offsets_for_times([TopicPartition(topic, 0, 1)], timeout=10)
        assert early.offset == 0
        (late,) = consumer.offsets_for_times([TopicPartition(topic, 0, 2**62)], timeout=10)
        assert late.offset == -1
    finally:
        consumer.close()


def test_fetch_respects_byte_limits(broker):
    """A fetch response must honour fetch.max.bytes / max.partition.fetch.bytes: librdkafka rejects
    responses above receive.message.max.bytes ("Invalid response size")."""
    topic = "limits"
    create_topic(broker.bootstrap, topic, 2)
    value = b"x" * 100_000
    records = [type("R", (), {"key": None, "value": value, "headers": ()})() for _ in range(200)]  # ~20 MB
    produce_all(broker.bootstrap, topic, records, lambda i: i % 2, **{"compression.type": "none"})
    msgs = consume_partitions(broker.bootstrap, topic, range(2), len(records),
                              **{"fetch.max.bytes": 1_000_000, "max.partition.fetch.bytes": 300_000,
                                 "receive.message.max.bytes": 2_000_000})
    assert all(m.value() == value for m in msgs)
