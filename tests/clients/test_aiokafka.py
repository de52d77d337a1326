"""aiokafka 0.14: never uses flexible versions and starts with ApiVersions v0 (PLATFORM-NOTES)."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clients import create_topic


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
