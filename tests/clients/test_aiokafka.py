"""aiokafka 0.14: never uses flexible versions and starts with ApiVersions v0 (PLATFORM-NOTES)."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clients import create_topic
from records import make_records


def test_aiokafka_roundtrip_on_non_flexible_versions(broker):
    create_topic(broker.bootstrap, "aiokafka", 2)
    asyncio.run(_roundtrip(broker.bootstrap))


async def _roundtrip(bootstrap: str):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
    await producer.start()
    try:
        sent = {}
        for i in range(500):
            meta = await producer.send_and_wait("aiokafka", key=f"k{i}".encode(), value=f"v{i}".encode(),
                                                partition=i % 2, headers=[("i", str(i).encode())])
            sent[(meta.partition, meta.offset)] = i
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition("aiokafka", p) for p in range(2)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = {}
        while len(got) < len(sent):
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for records in batches.values():
                for r in records:
                    got[(r.partition, r.offset)] = r
    finally:
        await consumer.stop()
    for where, i in sent.items():
        r = got[where]
        assert (r.key, r.value, list(r.headers)) == (f"k{i}".encode(), f"v{i}".encode(), [("i", str(i).encode())])


def test_aiokafka_idempotent_producer_stores_each_record_once(broker):
    """aiokafka with enable_idempotence=True (InitProducerId v0, Produce v7): every record stored
    exactly once, in the order it was sent to its partition."""
    create_topic(broker.bootstrap, "aiokafka-idempotent", 2)
    asyncio.run(_idempotent(broker.bootstrap, "aiokafka-idempotent", 2))


async def _idempotent(bootstrap: str, topic: str, partitions: int):
    records = make_records(2000, seed=19)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=r.key, value=r.value, headers=list(r.headers),
                                       partition=i % partitions) for i, r in enumerate(records)]
        metas = await asyncio.wait_for(asyncio.gather(*futures), 60)
        producer_id = producer._txn_manager.producer_id
    finally:
        await producer.stop()
    assert producer_id >= 0, "the producer never got a producer id"
    for i, meta in enumerate(metas):
        assert (meta.partition, meta.offset) == (i % partitions, i // partitions)

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got = {p: [] for p in range(partitions)}
        left = sum(ends.values())
        deadline = asyncio.get_running_loop().time() + 60
        while left > 0:
            assert asyncio.get_running_loop().time() < deadline, f"{left} records never read"
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for rs in batches.values():
                for r in rs:
                    got[r.partition].append((r.offset, (r.key, r.value, tuple(r.headers))))
                    left -= 1
    finally:
        await consumer.stop()
    for p in range(partitions):
        assert [o for o, _ in got[p]] == list(range(ends[TopicPartition(topic, p)]))
        sent = [(r.key, r.value, r.headers) for i, r in enumerate(records) if i % partitions == p]
        assert [rec for _, rec in got[p]] == sent, f"partition {p}: not exactly the records sent"
