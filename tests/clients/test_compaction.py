"""Log compaction with real clients (issue 15, test 3): kcat and confluent-kafka write keyed records
and tombstones to a compacted topic on a 3-broker RF 3 cluster; once the cleaner has run, a
consumer from the beginning sees exactly one record per live key, carrying its latest value, and
no deleted key; the three replicas' logs (read offline with `chronik dump-log --latest`) agree on
every key's latest value. A record without a key is refused with INVALID_RECORD.

What makes "exactly one record per key" reachable: the cleaner never touches the active segment,
so the test ends its writes with unique filler keys (one record each) that push every real key's
last record into sealed segments; a tombstone goes once its segment's newest timestamp is older
than `delete.retention.ms` (1 s here) at a pass, so the test waits that long after the last
tombstone, and keeps adding fillers (dirty bytes, so the cleaner has a reason to pass again)
until the log converges.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition, OFFSET_BEGINNING

from broker import chronik_bin
from clients import admin
from cluster import Cluster
from confluent_kafka.admin import NewTopic

TOPIC = "compacted"
KEYS = 120
DELETE_RETENTION_MS = 1000
CONVERGE_S = 60


# A short cleaner backoff: a pass follows the writes within a fraction of a second.
CLEANER_ARGS = ["--log-cleaner-backoff-ms", "100"]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, nodes=3, extra_args=CLEANER_ARGS).start()
    yield c
    c.kill_all()
    for b in c.brokers.values():
        b.assert_no_panic()


def create_compacted(bootstrap: str):
    client = admin(bootstrap)
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": str(DELETE_RETENTION_MS),
    }
    client.create_topics([NewTopic(TOPIC, 1, 3, config=config)], request_timeout=30)[TOPIC].result(30)


def kcat_produce(bootstrap: str, lines: list[str], tmp_path: Path):
    """Keyed records `key:value` through kcat; an empty value is a tombstone (-Z: empty is NULL)."""
    src = tmp_path / f"kcat-{time.monotonic_ns()}.txt"
    src.write_text("".join(line + "\n" for line in lines))
    done = subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", TOPIC, "-p", "0", "-K", ":", "-Z",
                           "-X", "acks=all", "-l", str(src)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def confluent_produce(bootstrap: str, records: list[tuple[bytes, bytes | None]]):
    """Keyed records through confluent-kafka, acks=all; every delivery must succeed."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors = []
    for key, value in records:
        producer.produce(TOPIC, key=key, value=value, partition=0,
                         on_delivery=lambda err, msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == [], errors[:5]


def read_all(bootstrap: str) -> list[tuple[int, bytes, bytes | None]]:
    """(offset, key, value) of every record from the beginning up to the high watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-tests-unused",
                         "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
        consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        out, deadline = [], time.monotonic() + 30
        while (not out or out[-1][0] < high - 1) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consume error: {msg.error()}")
                out.append((msg.offset(), msg.key(), msg.value()))
        assert not out or out[-1][0] == high - 1, f"read up to {out[-1][0]}, high watermark {high}"
        return out
    finally:
        consumer.close()


def dump_log(partition_dir: Path, *flags) -> subprocess.CompletedProcess:
    done = subprocess.run([chronik_bin(), "dump-log", *flags, str(partition_dir)], capture_output=True, timeout=60)
    assert done.returncode == 0, f"dump-log {partition_dir}: {done.stderr.decode(errors='replace')}"
    return done


def dump_latest(partition_dir: Path) -> dict[bytes, tuple[int, bytes | None]]:
    """`chronik dump-log --latest`: key -> (offset, value or None for a tombstone)."""
    done = dump_log(partition_dir, "--latest")
    out = {}
    for line in done.stdout.decode().splitlines():
        rec = json.loads(line)
        out[rec["key"].encode()] = (rec["offset"], None if rec["tombstone"] else rec["value"].encode())
    return out


def test_kcat_and_confluent_tombstones_compact_to_one_record_per_live_key_on_every_replica(cluster, tmp_path):
    bootstrap = cluster.bootstrap()
    create_compacted(bootstrap)
    expected: dict[bytes, bytes | None] = {}

    # kcat (librdkafka 2.0.2): three rounds of every key, then tombstones for every fifth key.
    for rnd in range(3):
        kcat_produce(bootstrap, [f"k{i:03d}:kcat-{rnd}-{i}-" + "x" * 40 for i in range(KEYS)], tmp_path)
        expected.update({f"k{i:03d}".encode(): f"kcat-{rnd}-{i}-".encode() + b"x" * 40 for i in range(KEYS)})
    kcat_produce(bootstrap, [f"k{i:03d}:" for i in range(0, KEYS, 5)], tmp_path)
    expected.update({f"k{i:03d}".encode(): None for i in range(0, KEYS, 5)})

    # confluent-kafka (librdkafka 2.16): updates, tombstones for every seventh key, and some keys
    # deleted by kcat come back.
    recs = [(f"k{i:03d}".encode(), f"confluent-{i}".encode()) for i in range(1, KEYS, 2)]
    recs += [(f"k{i:03d}".encode(), None) for i in range(0, KEYS, 7)]
    recs += [(f"k{i:03d}".encode(), f"revived-{i}".encode()) for i in range(0, KEYS, 10)]
    confluent_produce(bootstrap, recs)
    for k, v in recs:
        expected[k] = v

    # A record without a key: refused, as Kafka refuses it (INVALID_RECORD, not retried).
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0})
    refused = []
    producer.produce(TOPIC, value=b"no key", partition=0, on_delivery=lambda err, msg: refused.append(err))
    assert producer.flush(30) == 0
    assert len(refused) == 1 and refused[0] is not None, refused
    assert refused[0].code() == KafkaError.INVALID_RECORD, refused[0]
    del producer  # no reconnect attempts to the brokers once they stop

    deleted = {k for k, v in expected.items() if v is None}
    assert deleted, "the workload deletes keys"
    time.sleep(DELETE_RETENTION_MS / 1000 * 1.5)

    # Fillers: unique keys, one record each, until the log is one record per live key.
    fillers = 0
    deadline = time.monotonic() + CONVERGE_S
    got = []
    while True:
        confluent_produce(bootstrap, [(f"filler-{fillers + j:05d}".encode(), b"f" * 1500) for j in range(3)])
        for j in range(3):
            expected[f"filler-{fillers + j:05d}".encode()] = b"f" * 1500
        fillers += 3
        live = {k: v for k, v in expected.items() if v is not None}
        got = read_all(bootstrap)
        if len(got) == len(live):
            break
        assert time.monotonic() < deadline, (
            f"after {CONVERGE_S}s: {len(got)} records for {len(live)} live keys "
            f"({sum(1 for _, k, _ in got if k in deleted)} of deleted keys)")
        time.sleep(0.3)

    offsets = [o for o, _, _ in got]
    assert offsets == sorted(set(offsets)), "offsets go strictly up"
    assert {k: v for _, k, v in got} == live, "one record per live key, its latest value"
    assert not any(k in deleted for _, k, _ in got), "no deleted key (tombstones past retention gone)"
    print(f"converged: {len(got)} records, {len(live)} live keys, {len(deleted)} deleted, "
          f"{fillers} fillers, high watermark {offsets[-1] + 1}")

    # The replicas, offline: the same latest value (and offset) for every key.
    cluster.stop_all()
    maps = {i: dump_latest(b.data_dir / f"{TOPIC}-0") for i, b in cluster.brokers.items()}
    # Replicas compact independently: how far each got (information, not a requirement).
    stored = {i: len(dump_log(b.data_dir / f"{TOPIC}-0").stdout.splitlines()) for i, b in cluster.brokers.items()}
    print(f"records stored per replica: {stored}")
    for i, m in maps.items():
        live_here = {k: v for k, (_, v) in m.items() if v is not None}
        assert live_here == live, f"node {i}: latest values differ from what was written"
        for k, (_, v) in m.items():
            assert v is not None or k in deleted, f"node {i}: tombstone for a live key {k!r}"
    first = maps[1]
    for i, m in maps.items():
        for k in live:
            assert m[k][0] == first[k][0], f"node {i}: key {k!r} at offset {m[k][0]}, node 1: {first[k][0]}"
