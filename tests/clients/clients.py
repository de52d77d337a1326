"""Small helpers over confluent-kafka shared by the tests."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, name: str, partitions: int, config=None, timeout=30) -> None:
    client = admin(bootstrap)  # must outlive the future: dropping it cancels the request
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout)


def produce_all(bootstrap: str, topic: str, records, partition_of, **conf) -> dict:
    """Produces every record; returns {index: (partition, offset)} from the delivery reports.

    Fails the test if any delivery reports an error or anything is left undelivered.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **conf})
    delivered, errors = {}, []

    def report(index):
        def cb(err, msg):
            if err is not None:
                errors.append((index, err))
            else:
                delivered[index] = (msg.partition(), msg.offset())
        return cb

    for i, r in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, headers=list(r.headers) or None,
                                 partition=partition_of(i), on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    assert left == 0, f"{left} messages undelivered"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(delivered) == len(records)
    for partition, offset in delivered.values():
        assert offset >= 0, "an acknowledgement must carry the record's real offset"
    return delivered


def consume_partitions(bootstrap: str, topic: str, partitions, expected: int, timeout=120, **conf) -> list:
    """Reads `expected` messages from the beginning of the given partitions by assign (no group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chronik-tests-unused",
                         "enable.auto.commit": False, "auto.offset.reset": "error", **conf})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consume error: {msg.error()}")
                out.append(msg)
    finally:
        consumer.close()
    assert len(out) == expected, f"read {len(out)} of {expected} messages within {timeout}s"
    return out
