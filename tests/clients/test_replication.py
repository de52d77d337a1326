"""Replication and acks=all on real 3-broker clusters (issue 5's scenarios)."""

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import Cluster


def make_cluster(tmp_path, nodes=3) -> Cluster:
    c = Cluster(tmp_path, nodes=nodes)
    # The broker reads --peers as ID=HOST:PORT.
    for b in c.brokers.values():
        b.extra_args = [a.replace("@", "=") if "@127." in a else a for a in b.extra_args]
    return c


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(tmp_path).start()
    yield c
    c.stop_all()
    for b in c.brokers.values():
        b.assert_no_panic()


def create_topic(c: Cluster, name: str, partitions: int, rf: int = 3, config=None):
    admin = AdminClient({"bootstrap.servers": c.bootstrap()})
    futures = admin.create_topics([NewTopic(name, partitions, rf, config=config or {})])
    futures[name].result(15)
    c.wait_for(lambda: all(_topic_ready(c, i, name, partitions) for i in c.live_ids()), 15,
               f"{name} visible with leaders on every broker")


def _topic_ready(c: Cluster, node: int, name: str, partitions: int) -> bool:
    view = c.topic_view(node, name)
    return view is not None and len(view) == partitions and all(v[0] >= 0 for v in view.values())


def produce_numbered(bootstrap: str, topic: str, partitions: int, count: int, acks="all"):
    """Sends `count` numbered messages round robin over the partitions; returns
    {partition: [(offset, number)]} of the acknowledged ones and the errors seen."""
    acked, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))

    p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                  "enable.idempotence": False, "message.timeout.ms": 60000})
    for n in range(count):
        p.produce(topic, value=str(n).encode(), partition=n % partitions, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(90) == 0, "messages still in flight"
    return acked, errors


def log_bytes(c: Cluster, node: int, topic: str, partition: int) -> bytes:
    d = Path(c.brokers[node].data_dir) / f"{topic}-{partition}"
    return b"".join(f.read_bytes() for f in sorted(d.glob("*.log")))


def read_all(bootstrap: str, topic: str, partition: int, expect: int, timeout=60.0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        out.append((msg.offset(), int(msg.value())))
    consumer.close()
    return out


def test_multi_partition_acks_all_replicas_identical(cluster):
    """6 partitions, RF 3, acks=all through one bootstrap broker: everything is acknowledged
    and every replica's log is byte-identical."""
    topic = "repl-six"
    create_topic(cluster, topic, 6)
    acked, errors = produce_numbered(cluster.bootstrap(1), topic, 6, 6000)
    assert errors == []
    assert sum(len(v) for v in acked.values()) == 6000
    for p, entries in acked.items():
        offsets = sorted(o for o, _ in entries)
        assert offsets == list(range(len(offsets))), f"partition {p}: offsets not dense"
    # Every message acknowledged is readable from the leader.
    for p in range(6):
        got = read_all(cluster.bootstrap(), topic, p, len(acked[p]))
        assert sorted(got) == sorted(acked[p]), f"partition {p}"
    # Stop cleanly (logs flushed and cut to size), then compare the files of the replicas.
    cluster.stop_all()
    for p in range(6):
        logs = {n: log_bytes(cluster, n, topic, p) for n in cluster.brokers}
        assert len(set(logs.values())) == 1, f"partition {p}: replicas differ in size " + \
            str({n: len(b) for n, b in logs.items()})
        assert len(logs[1]) > 0
