"""Replication and acks=all on real 3-broker clusters (issue 5's scenarios)."""

import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from broker import chronik_bin, recv_exact
from cluster import Cluster


def make_cluster(tmp_path, nodes=3, extra_args=()) -> Cluster:
    c = Cluster(tmp_path, nodes=nodes, extra_args=extra_args)
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


def read_all(bootstrap: str, topic: str, partition: int, expect: int, timeout=60.0, until_offset=-1,
             start=0):
    """Reads the partition from `start` (0, or OFFSET_BEGINNING for the log start) until `expect`
    messages and `until_offset` are read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, start)])
    out = []
    deadline = time.monotonic() + timeout
    while (len(out) < expect or (out[-1][0] if out else -1) < until_offset) \
            and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        out.append((msg.offset(), msg.value()))
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
        got = [(o, int(v)) for o, v in read_all(cluster.bootstrap(), topic, p, len(acked[p]))]
        assert sorted(got) == sorted(acked[p]), f"partition {p}"
    # Stop cleanly (logs flushed and cut to size), then compare the files of the replicas.
    cluster.stop_all()
    for p in range(6):
        logs = {n: log_bytes(cluster, n, topic, p) for n in cluster.brokers}
        assert len(set(logs.values())) == 1, f"partition {p}: replicas differ in size " + \
            str({n: len(b) for n, b in logs.items()})
        assert len(logs[1]) > 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_cluster_stays_idle(cluster):
    """With nothing to replicate, leaders send their followers a heartbeat per interval, not one
    per ack: a heartbeat answered by the next one ping-ponged at network speed (~7,000 frames/s
    per broker, most of a CPU) and starved the brokers that share the machine."""
    topic = "idle"
    create_topic(cluster, topic, 6)
    acked, errors = produce_numbered(cluster.bootstrap(1), topic, 6, 60)
    assert errors == []
    cluster.wait_for(lambda: isr_full(cluster, topic, 1), 30, "a full ISR")
    time.sleep(1)
    before = {n: cpu_seconds(b.proc.pid) for n, b in cluster.brokers.items()}
    time.sleep(5)
    used = {n: cpu_seconds(b.proc.pid) - before[n] for n, b in cluster.brokers.items()}
    print("idle CPU seconds per broker:", used)
    # An idle broker's periodic duties (Raft ticks, heartbeats, ISR checks) take milliseconds.
    assert all(u < 0.5 for u in used.values()), f"CPU seconds used in 5 idle seconds: {used}"


def leaders(c: Cluster, topic: str, via: int):
    view = c.topic_view(via, topic)
    return {p: v[0] for p, v in view.items()} if view else {}


def isr_full(c: Cluster, topic: str, via: int, size: int = 3) -> bool:
    view = c.topic_view(via, topic)
    return view is not None and all(len(v[2]) == size and v[0] >= 0 for v in view.values())


def send_one(bootstrap: str, topic: str, partition: int, acks, value=b"x", timeout_ms=5000):
    """One message with no retries: returns the delivery error (None on success)."""
    result = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "retries": 0,
                  "enable.idempotence": False, "message.timeout.ms": timeout_ms,
                  "request.timeout.ms": timeout_ms})
    p.produce(topic, value=value, partition=partition, on_delivery=lambda err, msg: result.append(err))
    p.flush(timeout_ms / 1000 + 5)
    assert result, "no delivery report"
    return result[0]


def test_min_insync_two_brokers_down(tmp_path):
    """min.insync.replicas=2 with two of three brokers killed: acks=all is refused with
    NOT_ENOUGH_REPLICAS (no controller can shrink the ISR: the leader judges the lag itself),
    acks=1 works where the leader lives, but what only the leader has stays above the high
    watermark: no consumer reads it and ListOffsets latest does not count it; once they return the
    ISR fills, acks=all works and the acks=1 message is served."""
    c = make_cluster(tmp_path, extra_args=["--replica-lag-time-max-ms", "2000"]).start()
    try:
        topic = "minisr"
        create_topic(c, topic, 3, config={"min.insync.replicas": "2"})
        assert send_one(c.bootstrap(), topic, 0, "all") is None
        lead = leaders(c, topic, 1)
        survivor = lead[0]
        for n in c.brokers:
            if n != survivor:
                c.brokers[n].kill()
        time.sleep(3)  # past replica.lag.time.max.ms
        err = send_one(c.brokers[survivor].bootstrap, topic, 0, "all")
        assert err is not None and err.code() == 19, f"expected NOT_ENOUGH_REPLICAS, got {err}"
        assert send_one(c.brokers[survivor].bootstrap, topic, 0, 1, value=b"leader-only") is None
        # Only the leader has it: the high watermark stays below it, so consumers neither see it
        # nor get it as the latest offset.
        only_leader = c.brokers[survivor].bootstrap
        assert watermarks(only_leader, topic, 0) == (0, 1)
        assert [v for _, v in read_all(only_leader, topic, 0, 2, timeout=3)] == [b"x"]
        for n in c.brokers:
            if n != survivor:
                c.brokers[n].start_process()
        for n in c.brokers:
            c.brokers[n].wait_ready(60)
        c.wait_for(lambda: isr_full(c, topic, survivor), 60, "ISR full again")
        c.wait_for(lambda: send_one(c.bootstrap(), topic, 0, "all") is None, 30, "acks=all works again")
        # Replicated now: below the high watermark, and served.
        assert [v for _, v in read_all(c.bootstrap(), topic, 0, 3)][:2] == [b"x", b"leader-only"]
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


def test_divergent_tail_is_truncated(tmp_path):
    """A leader appends a tail its followers never get (they are stopped, their socket buffers
    fill, acks=1), then dies; a new leader takes writes; the old leader returns, cuts what the
    new leader does not have and ends with an identical log."""
    c = make_cluster(tmp_path).start()
    topic = "diverge"
    try:
        create_topic(c, topic, 1)
        acked, errors = produce_numbered(c.bootstrap(), topic, 1, 200)
        assert errors == []
        old = leaders(c, topic, 1)[0]
        others = [n for n in c.brokers if n != old]
        for n in others:
            c.brokers[n].proc.send_signal(signal.SIGSTOP)
        try:
            p = Producer({"bootstrap.servers": c.brokers[old].bootstrap, "acks": 1,
                          "linger.ms": 5, "enable.idempotence": False})
            blob = b"t" * 1000
            for n in range(30000):
                p.produce(topic, value=blob, partition=0)
                p.poll(0)
            assert p.flush(30) == 0
            c.brokers[old].kill()
        finally:
            for n in others:
                c.brokers[n].proc.send_signal(signal.SIGCONT)
        c.wait_for(lambda: leaders(c, topic, others[0]).get(0) in others, 60, "a new leader")
        new_acked, errors = produce_numbered(c.bootstrap(*others), topic, 1, 300)
        assert errors == []
        c.brokers[old].start_process()
        c.brokers[old].wait_ready(60)
        c.wait_for(lambda: isr_full(c, topic, others[0]), 60, "the old leader back in the ISR")
        c.stop_all()
        logs = {n: log_bytes(c, n, topic, 0) for n in c.brokers}
        assert len(set(logs.values())) == 1, {n: len(b) for n, b in logs.items()}
        truncated = "truncating what the new leader does not have" in c.brokers[old].log_text()
        assert truncated, "the old leader had no divergent tail to cut"
        # Everything acknowledged by all replicas is there, in order.
        c.start()
        got = read_all(c.bootstrap(), topic, 0, 10**6, timeout=20)
        numbers = [int(v) for _, v in sorted(got) if not v.startswith(b"t")]
        assert numbers == list(range(200)) + list(range(300))
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


def test_follower_catches_up_from_disk(tmp_path):
    """A follower down while thousands of batches are written (segments rolled to disk) comes
    back, catches up from the leader's files and rejoins the ISR with an identical log.

    A follower that crashes and comes back before its session expires stays in the ISR (it
    fsynced everything it acknowledged: issue 14 item 7), so a full ISR alone does not say it has
    caught up; the high watermark at the log end does (every ISR member acknowledged it all)."""
    c = make_cluster(tmp_path).start()
    topic = "catchup"
    try:
        create_topic(c, topic, 1, config={"segment.bytes": "1048576"})
        lead = leaders(c, topic, 1)[0]
        follower = next(n for n in c.brokers if n != lead and n != c.controller_id(lead))
        c.brokers[follower].kill()
        p = Producer({"bootstrap.servers": c.brokers[lead].bootstrap, "acks": 1, "linger.ms": 0,
                      "enable.idempotence": False})
        # About 3000 batches, 9 MB: more than the leader's 4 MiB in-memory tail.
        for n in range(6000):
            p.produce(topic, value=str(n).encode().ljust(1500, b"."), partition=0)
            if n % 2 == 1:
                p.flush(30)
        assert p.flush(60) == 0
        c.brokers[follower].start_process()
        c.brokers[follower].wait_ready(60)
        c.wait_for(lambda: isr_full(c, topic, lead), 90, "the follower back in the ISR")
        c.wait_for(lambda: watermarks(c.brokers[lead].bootstrap, topic, 0)[1] == 6000, 90,
                   "every replica caught up (the high watermark at the log end)")
        c.stop_all()
        logs = {n: log_bytes(c, n, topic, 0) for n in c.brokers}
        assert len(set(logs.values())) == 1, {n: len(b) for n, b in logs.items()}
        assert len(logs[lead]) > 8_000_000
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


class _ImplicitAcks(logging.Handler):
    """Counts the messages librdkafka's idempotent producer reports delivered without an offset
    (its `eos` debug log says so): those of a request that failed with an uncertain outcome
    (a timeout, a lost connection) once a later request of the partition succeeded, and those
    the broker answered with DUPLICATE_SEQUENCE_NUMBER."""

    PATTERNS = (re.compile(r"(\d+) message\(s\) implicitly acked"),
                re.compile(r"with (\d+) message\(s\) failed due to duplicate sequence number"))

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = 0

    def emit(self, record):
        text = record.getMessage()
        for pattern in self.PATTERNS:
            found = pattern.search(text)
            if found:
                self.messages += int(found.group(1))


class NumberedProducer:
    """A thread sending numbered messages round robin over the partitions with acks=all (retries
    on, idempotence off unless asked for) until `finish`; `acked` collects (partition, offset,
    number), `acked_without_offset` (partition, number) of deliveries reported without an offset,
    and `errors` the failed deliveries (and a fatal producer error, which ends it)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, retries: int,
                 message_timeout_ms: int, request_timeout_ms: int, flush_timeout: float,
                 idempotence: bool = False):
        self.acked, self.acked_without_offset, self.errors = [], [], []
        self.unflushed = None
        self.idempotence = idempotence
        self.implicit_acks = _ImplicitAcks()
        self._stop = threading.Event()
        config = {"bootstrap.servers": bootstrap, "acks": "all", "retries": retries,
                  "enable.idempotence": idempotence, "linger.ms": 2,
                  "message.timeout.ms": message_timeout_ms, "request.timeout.ms": request_timeout_ms}
        if idempotence:
            config["debug"] = "eos"
        self._thread = threading.Thread(target=self._run,
                                        args=(config, topic, partitions, flush_timeout))
        self._thread.start()

    def _on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(err)
        elif msg.offset() is None or msg.offset() < 0:
            self.acked_without_offset.append((msg.partition(), int(msg.value())))
        else:
            self.acked.append((msg.partition(), msg.offset(), int(msg.value())))

    def _run(self, config, topic, partitions, flush_timeout):
        logger = logging.getLogger(f"librdkafka-{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.implicit_acks)
        p = Producer(config, logger=logger)
        n = 0
        while not self._stop.is_set():
            try:
                p.produce(topic, value=str(n).encode(), partition=n % partitions,
                          on_delivery=self._on_delivery)
                n += 1
            except BufferError:
                pass  # the queue is full while a partition has no leader: wait for room
            except KafkaException as e:  # an idempotent producer's fatal error: it cannot go on
                self.errors.append(e.args[0])
                break
            p.poll(0.002)
        self.unflushed = p.flush(flush_timeout)

    def finish(self):
        """Stops sending and waits until everything sent is delivered or failed."""
        self._stop.set()
        self._thread.join(200)
        assert not self._thread.is_alive()
        assert self.unflushed == 0, f"{self.unflushed} messages still in flight"
        assert self.acked, "nothing acknowledged"
        # Only librdkafka's idempotent producer reports a delivery without its offset (and only
        # when it infers it); the broker's acknowledgements always carry the offset.
        assert self.idempotence or not self.acked_without_offset, \
            f"acknowledged without an offset: {self.acked_without_offset[:5]}"


def read_back_acknowledged(c: Cluster, topic: str, partitions: int, acked, without_offset=()):
    """Reads every partition up to its last acknowledged offset. Returns {partition: {offset:
    number}}, the acknowledged messages not at their acknowledged offset (or, for those
    acknowledged without an offset, nowhere in their partition), and how many numbers the logs
    hold more than once."""
    stored = {}
    for p in range(partitions):
        mine = [a for a in acked if a[0] == p]
        last = max((a[1] for a in mine), default=-1)
        expect = len(mine) + sum(1 for q, _ in without_offset if q == p)
        got = read_all(c.bootstrap(), topic, p, expect, timeout=60, until_offset=last)
        stored[p] = {o: int(v) for o, v in got}
    lost = [a for a in acked if stored[a[0]].get(a[1]) != a[2]]
    numbers = {p: set(per.values()) for p, per in stored.items()}
    lost += [(p, None, n) for p, n in without_offset if n not in numbers[p]]
    values = [v for per in stored.values() for v in per.values()]
    return stored, lost, len(values) - len(set(values))


def test_failover_under_load_loses_nothing(tmp_path):
    """acks=all producer (retries on, idempotence off) for over 60 s while partition leaders are
    SIGKILLed and restarted: every acknowledged message is in the log at its acknowledged offset;
    duplicates are counted and reported."""
    c = make_cluster(tmp_path).start()
    topic = "failover"
    partitions = 3
    try:
        create_topic(c, topic, partitions)
        producer = NumberedProducer(c.bootstrap(), topic, partitions, retries=1000,
                                    message_timeout_ms=120000, request_timeout_ms=15000,
                                    flush_timeout=150)
        started = time.monotonic()
        time.sleep(5)
        first = leaders(c, topic, 1)[0]
        c.brokers[first].kill()
        time.sleep(15)
        c.brokers[first].start_process()
        c.brokers[first].wait_ready(60)
        time.sleep(10)
        survivor = next(iter(n for n in c.brokers if n != first))
        second = leaders(c, topic, survivor).get(1, -1)
        if second in (-1, first):
            second = next(n for n in c.brokers if n != first)
        c.brokers[second].kill()
        time.sleep(15)
        c.brokers[second].start_process()
        c.brokers[second].wait_ready(60)
        time.sleep(max(0.0, 62 - (time.monotonic() - started)))
        producer.finish()
        acked, errors = producer.acked, producer.errors

        c.wait_for(lambda: isr_full(c, topic, first), 60, "every ISR full again")
        _, lost, duplicates = read_back_acknowledged(c, topic, partitions, acked)
        print(f"acknowledged {len(acked)}, errors {len(errors)}, lost {len(lost)}, duplicates {duplicates}")
        assert lost == [], f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
        # In order per partition: acknowledged numbers increase with their offsets.
        for p in range(partitions):
            numbers = [v for _, v in sorted((o, n) for q, o, n in acked if q == p)]
            assert len(numbers) == len(set(numbers))
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


def test_silent_connection_does_not_hold_up_shutdown(make_broker):
    """The listener peeks at each connection's first bytes for a replication Hello: a connection
    that never sends anything must not keep the broker from stopping."""
    import socket

    b = make_broker().start()
    silent = socket.create_connection(("127.0.0.1", b.port))
    try:
        started = time.monotonic()
        assert b.stop(timeout=15) == 0
        assert time.monotonic() - started < 15
    finally:
        silent.close()


def _uvarint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def _read_uvarint(buf: bytes, at: int):
    n, shift = 0, 0
    while True:
        byte = buf[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, at
        shift += 7


def offset_for_leader_epoch(bootstrap: str, topic: str, partitions, version: int = 2):
    """A raw OffsetForLeaderEpoch request (v2: librdkafka's, v4: flexible) for `partitions`
    [(partition, current_leader_epoch, leader_epoch)]; returns
    [(partition, error_code, leader_epoch, end_offset)]."""
    flexible = version >= 4
    client_id = b"chronik-tests"
    header = struct.pack(">hhih", 23, version, 7, len(client_id)) + client_id
    if flexible:
        header += b"\0"
    name = topic.encode()
    body = struct.pack(">i", -1) if version >= 3 else b""
    if flexible:
        body += _uvarint(2) + _uvarint(len(name) + 1) + name + _uvarint(len(partitions) + 1)
    else:
        body += struct.pack(">ih", 1, len(name)) + name + struct.pack(">i", len(partitions))
    for p in partitions:
        body += struct.pack(">iii", *p) + (b"\0" if flexible else b"")
    if flexible:
        body += b"\0\0"
    host, port = bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        frame = header + body
        s.sendall(struct.pack(">i", len(frame)) + frame)
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        buf = recv_exact(s, size)
    (correlation,) = struct.unpack_from(">i", buf, 0)
    assert correlation == 7
    at = 4 + (1 if flexible else 0)  # response header (v1 adds empty tagged fields)
    at += 4  # throttle_time_ms
    if flexible:
        topics, at = _read_uvarint(buf, at)
        topics -= 1
    else:
        (topics,), at = struct.unpack_from(">i", buf, at), at + 4
    out = []
    for _ in range(topics):
        if flexible:
            length, at = _read_uvarint(buf, at)
            length -= 1
            count_at = at + length
            count, at = _read_uvarint(buf, count_at)
            count -= 1
        else:
            (length,) = struct.unpack_from(">h", buf, at)
            at += 2 + length
            (count,) = struct.unpack_from(">i", buf, at)
            at += 4
        for _ in range(count):
            error, partition, epoch, end = struct.unpack_from(">hiiq", buf, at)
            at += 18 + (1 if flexible else 0)
            out.append((partition, error, epoch, end))
        at += 1 if flexible else 0
    at += 1 if flexible else 0
    assert at == len(buf), f"v{version}: {len(buf) - at} stray bytes in the response"
    return out


def partition_status(bootstrap: str, topic: str, partition: int):
    """(leader, leader_epoch, isr) as `chronik cluster status` reports them."""
    run = subprocess.run([chronik_bin(), "cluster", "status", "--json", "--bootstrap", bootstrap],
                         capture_output=True, timeout=30)
    if run.returncode != 0:
        return None
    for t in json.loads(run.stdout)["topics"]:
        if t["name"] == topic:
            for p in t["partitions"]:
                if p["partition"] == partition:
                    return p["leader"], p["leader_epoch"], sorted(p["isr"])
    return None


def test_offset_for_leader_epoch_after_failover(tmp_path):
    """After the leader is killed, the new leader answers OffsetForLeaderEpoch for the old epoch
    with the offset where its own epoch began; consumers reading across the failover validate
    their position with it (KIP-320: librdkafka with v2, kafka-python with v4) and read on
    without a gap, a repeat or a reset."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaPythonPartition

    c = make_cluster(tmp_path).start()
    topic = "epoch-ends"
    consumer = kp_consumer = None
    try:
        create_topic(c, topic, 1)
        acked, errors = produce_numbered(c.bootstrap(), topic, 1, 100)
        assert errors == [] and len(acked[0]) == 100
        old = leaders(c, topic, 1)[0]
        survivors = [n for n in c.brokers if n != old]

        consumer = Consumer({"bootstrap.servers": c.bootstrap(), "group.id": "epoch-ends",
                             "enable.auto.commit": False, "auto.offset.reset": "error",
                             "topic.metadata.refresh.interval.ms": 1000})
        consumer.assign([TopicPartition(topic, 0, 0)])
        seen, consumer_errors = [], []

        def consume(until: int, timeout: float):
            deadline = time.monotonic() + timeout
            while len(seen) < until and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    consumer_errors.append(msg.error())
                    continue
                seen.append((msg.offset(), msg.leader_epoch()))

        kp_consumer = KafkaConsumer(bootstrap_servers=c.bootstrap(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="none",
                                    metadata_max_age_ms=1000)
        kp_partition = KafkaPythonPartition(topic, 0)
        kp_consumer.assign([kp_partition])
        kp_consumer.seek(kp_partition, 0)
        kp_seen = []

        def kp_consume(until: int, timeout: float):
            deadline = time.monotonic() + timeout
            while len(kp_seen) < until and time.monotonic() < deadline:
                for records in kp_consumer.poll(200).values():
                    kp_seen.extend(r.offset for r in records)

        consume(100, 30)
        assert [o for o, _ in seen] == list(range(100))
        kp_consume(100, 30)
        assert kp_seen == list(range(100))

        c.brokers[old].kill()
        c.wait_for(lambda: (partition_status(c.brokers[survivors[0]].bootstrap, topic, 0) or (-1,))[0]
                   in survivors, 60, "a new leader")
        new = partition_status(c.brokers[survivors[0]].bootstrap, topic, 0)[0]
        follower = next(n for n in survivors if n != new)
        more, errors = produce_numbered(c.brokers[new].bootstrap, topic, 1, 50)
        assert errors == [] and sorted(o for o, _ in more[0]) == list(range(100, 150))

        consume(150, 60)
        assert [o for o, _ in seen] == list(range(150)), "the consumer skipped or repeated"
        # kafka-python raises on a failed validation with auto_offset_reset="none".
        kp_consume(150, 60)
        assert kp_seen == list(range(150)), "kafka-python skipped or repeated"
        bad = [e for e in consumer_errors
               if e.code() in (KafkaError._LOG_TRUNCATION, KafkaError._AUTO_OFFSET_RESET)]
        assert bad == [], f"the consumer's position was not validated: {bad}"
        old_epoch = seen[0][1]
        new_epoch = seen[100][1]
        assert {e for _, e in seen[:100]} == {old_epoch}
        assert {e for _, e in seen[100:]} == {new_epoch} and new_epoch > old_epoch

        # Wait for the ISR to settle (the dead broker out) so the epoch stays put while we ask.
        def settled():
            status = partition_status(c.brokers[new].bootstrap, topic, 0)
            return status is not None and status[0] == new and status[2] == sorted(survivors)

        c.wait_for(settled, 60, "the ISR without the killed broker")
        current = partition_status(c.brokers[new].bootstrap, topic, 0)[1]
        assert current >= new_epoch
        for version in (2, 3, 4):
            got = offset_for_leader_epoch(c.brokers[new].bootstrap, topic, [
                (0, -1, old_epoch),            # ended where the new leader's epoch began
                (0, current, old_epoch),
                (0, current, current),          # the current epoch ends at the log end
                (0, -1, new_epoch),
                (0, -1, current + 1),           # newer than any: undefined
                (0, old_epoch, old_epoch),      # the caller's leader epoch is stale
                (0, current + 1, current),      # the caller knows a newer one
                (3, -1, current),               # no such partition
            ], version)
            assert got == [
                (0, 0, old_epoch, 100),
                (0, 0, old_epoch, 100),
                (0, 0, current, 150),
                (0, 0, new_epoch, 150),
                (0, 0, -1, -1),
                (0, 74, -1, -1),
                (0, 75, -1, -1),
                (3, 3, -1, -1),
            ], f"v{version}"
            # Only the leader answers.
            assert offset_for_leader_epoch(c.brokers[follower].bootstrap, topic,
                                           [(0, -1, old_epoch)], version) == [(0, 6, -1, -1)]
            assert offset_for_leader_epoch(c.brokers[new].bootstrap, "no-such-topic",
                                           [(0, -1, 0)], version) == [(0, 3, -1, -1)]
    finally:
        if consumer is not None:
            consumer.close()
        if kp_consumer is not None:
            kp_consumer.close()
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


def segment_files(c: Cluster, node: int, topic: str, partition: int):
    d = Path(c.brokers[node].data_dir) / f"{topic}-{partition}"
    return {f.name: f.read_bytes() for f in sorted(d.glob("*.log"))}


def watermarks(bootstrap: str, topic: str, partition: int):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{time.monotonic_ns()}"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
    finally:
        consumer.close()


def test_follower_below_leader_log_start_catches_up(tmp_path):
    """A follower down while retention deletes the leader's oldest segments comes back with a log
    that ends below the leader's log start: it empties its log, restarts it at the leader's log
    start, catches up and rejoins the ISR. When retention moves the leader's log start again, the
    follower (whose own retention is held off) deletes its segments below it too: every replica
    ends with the same segments, byte for byte. After the leader dies, the new leader's log starts
    at the same offset and serves everything from there."""
    c = make_cluster(tmp_path, extra_args=["--replica-lag-time-max-ms", "3000",
                                           "--log-retention-check-interval-ms", "300"]).start()
    topic = "logstart"
    try:
        create_topic(c, topic, 1, config={"segment.bytes": "65536", "retention.bytes": "200000"})
        lead = leaders(c, topic, 1)[0]
        follower = next(n for n in c.brokers if n != lead and n != c.controller_id(lead))
        first, errors = produce_numbered(c.brokers[lead].bootstrap, topic, 1, 50)
        assert errors == []
        c.brokers[follower].kill()
        acked = {o: n for o, n in first[0]}

        def produce(numbers, acks):
            p = Producer({"bootstrap.servers": c.brokers[lead].bootstrap, "acks": acks,
                          "linger.ms": 5, "enable.idempotence": False})

            def on_delivery(err, msg):
                assert err is None, err
                acked[msg.offset()] = int(msg.value()[:8])

            for n in numbers:
                p.produce(topic, value=str(n).encode().ljust(8) + b"." * 1000, partition=0,
                          on_delivery=on_delivery)
                p.poll(0)
            assert p.flush(60) == 0

        produce(range(50, 3050), 1)
        c.wait_for(lambda: watermarks(c.brokers[lead].bootstrap, topic, 0)[0] > 50, 20,
                   "retention moved the leader's log start past the follower's log end")

        # The follower's own retention is held off: only the leader's log start moves its start.
        quick = list(c.brokers[follower].extra_args)
        c.brokers[follower].extra_args = [
            "3600000" if a == "300" and quick[i - 1] == "--log-retention-check-interval-ms" else a
            for i, a in enumerate(quick)]
        c.brokers[follower].start_process()
        c.brokers[follower].extra_args = quick
        c.brokers[follower].wait_ready(60)
        c.wait_for(lambda: isr_full(c, topic, lead), 30, "the follower back in the ISR")
        assert "emptying it to start there" in c.brokers[follower].log_text()
        restarted_at = watermarks(c.brokers[lead].bootstrap, topic, 0)[0]
        assert min(segment_files(c, follower, topic, 0)) == f"{restarted_at:020}.log"

        produce(range(3050, 4050), "all")
        c.wait_for(lambda: watermarks(c.brokers[lead].bootstrap, topic, 0)[0] > restarted_at, 20,
                   "retention moved the leader's log start again")
        low, high = watermarks(c.brokers[lead].bootstrap, topic, 0)
        assert high == 4050
        c.wait_for(lambda: min(segment_files(c, follower, topic, 0)) == f"{low:020}.log", 20,
                   "the follower's log start following the leader's")

        # Stopped cleanly (files cut to size), every replica holds the same segments, byte for
        # byte, starting at the leader's log start.
        c.stop_all()
        segments = {n: segment_files(c, n, topic, 0) for n in c.brokers}
        assert min(segments[lead]) == f"{low:020}.log", (low, sorted(segments[lead]))
        for n in c.brokers:
            assert sorted(segments[n]) == sorted(segments[lead]), (n, sorted(segments[n]))
            assert segments[n] == segments[lead], f"broker {n}'s segments differ from the leader's"

        # Without the old leader, the new one starts where it did and serves all of it.
        c.start()
        # A sequential clean stop moved leadership along and shrank the ISR: wait until it is full.
        c.wait_for(lambda: isr_full(c, topic, follower), 30, "every replica in the ISR after a restart")
        old = leaders(c, topic, follower)[0]
        c.brokers[old].kill()
        others = [n for n in c.brokers if n != old]
        c.wait_for(lambda: leaders(c, topic, others[0]).get(0) in others, 30, "a new leader")
        new = leaders(c, topic, others[0])[0]
        assert watermarks(c.brokers[new].bootstrap, topic, 0) == (low, high)
        got = read_all(c.bootstrap(*others), topic, 0, high - low, timeout=30, start=OFFSET_BEGINNING)
        assert [o for o, _ in got] == list(range(low, high))
        assert {o: int(v[:8]) for o, v in got} == {o: n for o, n in acked.items() if o >= low}
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()


@pytest.mark.parametrize("idempotence", [False, True], ids=["plain", "idempotent"])
def test_chaos_random_crashes_lose_no_acknowledged_write(tmp_path, long_mode, idempotence):
    """Brokers (the controller among them) crash at random, SIGKILL or SIGTERM, or freeze (SIGSTOP,
    then SIGCONT), one at a time but without waiting for the ISR to fill again, while an acks=all
    producer (min.insync.replicas=2, retries on) writes to 6 partitions: 45 s of it, 5 minutes
    with --long. Every acknowledged message must be in the log at its acknowledged offset, in
    order per partition, and once the cluster is whole again every replica holds the same bytes.
    Idempotence off, a retry may store a message twice; with idempotence on (issue 17, 60 s of
    chaos) nothing is stored twice and each partition holds its numbers in the order they were
    sent. CHAOS_SEED replays a run's choices."""
    import random

    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"CHAOS_SEED={seed}")
    chaos_seconds = 300 if long_mode else 60 if idempotence else 45
    c = make_cluster(tmp_path, extra_args=["--replica-lag-time-max-ms", "3000"]).start()
    topic = "chaos"
    partitions = 6
    try:
        create_topic(c, topic, partitions, config={"min.insync.replicas": "2"})
        producer = NumberedProducer(c.bootstrap(), topic, partitions, retries=1000000,
                                    message_timeout_ms=60000, request_timeout_ms=10000,
                                    flush_timeout=120, idempotence=idempotence)
        events = []
        deadline = time.monotonic() + chaos_seconds
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2, 8))
            live = c.live_ids()
            controller = -1
            if rng.random() < 0.3:
                try:
                    controller = c.controller_id(live[0])
                except Exception:  # a broker just restarted may not answer yet: pick at random
                    pass
            victim = controller if controller in live else rng.choice(live)
            how = rng.choice(["SIGKILL", "SIGKILL", "SIGTERM", "SIGSTOP"])
            events.append(f"{time.monotonic() - deadline + chaos_seconds:6.1f}s {how} broker {victim}")
            if how == "SIGSTOP":
                # Frozen past the 9 s session timeout or not: it is fenced and loses its
                # leaderships, then wakes up believing it still leads. Its epoch is stale, so
                # nothing may be acknowledged through it.
                c.brokers[victim].proc.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(2, 14))
                c.brokers[victim].proc.send_signal(signal.SIGCONT)
                continue
            if how == "SIGKILL":
                c.brokers[victim].kill()
            else:
                c.brokers[victim].stop()
            time.sleep(rng.uniform(1, 8))
            c.brokers[victim].start_process()
            c.brokers[victim].wait_ready(60)
        producer.finish()
        acked, errors = producer.acked, producer.errors
        without_offset = producer.acked_without_offset
        print("\n".join(events))

        def whole():
            try:
                return isr_full(c, topic, c.live_ids()[0])
            except Exception:
                return False

        c.wait_for(whole, 90, "every ISR full again")
        stored, lost, duplicates = read_back_acknowledged(c, topic, partitions, acked,
                                                          without_offset)
        print(f"seed {seed}: {len(events)} crashes and freezes, acknowledged {len(acked)} "
              f"(+{len(without_offset)} without an offset), errors {len(errors)}, "
              f"lost {len(lost)}, duplicates {duplicates}")
        assert lost == [], f"seed {seed}: {len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
        # An acknowledgement carries the record's offset, but for the idempotent producer's
        # deliveries that librdkafka itself infers (see _ImplicitAcks).
        implicit = producer.implicit_acks.messages
        assert len(without_offset) <= implicit, \
            f"seed {seed}: {len(without_offset)} acknowledged without an offset, " \
            f"{implicit} of them inferred by the client, e.g. {without_offset[:5]}"
        for p in range(partitions):
            numbers = [v for _, v in sorted((o, n) for q, o, n in acked if q == p)]
            assert len(numbers) == len(set(numbers)), f"partition {p}: an offset acknowledged twice"
            offsets = sorted(stored[p])
            assert offsets == list(range(len(offsets))), f"partition {p}: offsets not dense"
        if idempotence:
            fatal = [e for e in errors if e.fatal()]
            assert fatal == [], f"seed {seed}: the idempotent producer failed: {fatal[:3]}"
            assert duplicates == 0, f"seed {seed}: {duplicates} messages stored twice"
            for p in range(partitions):
                numbers = [stored[p][o] for o in sorted(stored[p])]
                backwards = [(a, b) for a, b in zip(numbers, numbers[1:]) if a >= b]
                assert backwards == [], \
                    f"seed {seed}, partition {p}: not in the order sent, e.g. {backwards[:5]}"

        # Whole again and idle: stopped cleanly, every replica holds the same bytes.
        c.stop_all()
        for p in range(partitions):
            logs = {n: log_bytes(c, n, topic, p) for n in c.brokers}
            assert len(set(logs.values())) == 1, f"seed {seed}, partition {p}: replicas differ: " + \
                str({n: len(b) for n, b in logs.items()})
    finally:
        c.stop_all()
        for b in c.brokers.values():
            b.assert_no_panic()
