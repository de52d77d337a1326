"""acks=all produce latency and throughput on a 3-broker RF 3 cluster on loopback (issue 5's
measurement), next to the disk's raw floor measured in the same run by `chronik bench log`.

Not a test (no assertions on timings): run it by hand with a release build,
    CHRONIK_BIN=target/release/chronik .venv/bin/python tests/clients/bench_acks_all.py
and copy the figures into bench/RESULTS.md.

Latency: open loop, one message every 1/rate seconds to one partition, linger.ms=0, each
message's latency = delivery report time - intended send time (so a stall is not hidden).
Throughput: 1 KiB messages with batching (linger.ms=5) to 6 partitions, as fast as the
producer goes, acks=all.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).parent))
from broker import chronik_bin  # noqa: E402
from test_replication import make_cluster  # noqa: E402


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency(bootstrap, topic, rate, seconds, acks="all"):
    lat = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0,
                  "enable.idempotence": False})
    interval = 1.0 / rate
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        intended = start + i * interval
        # Sleep, not spin: the brokers share this machine's cores.
        while (left := intended - time.perf_counter()) > 0:
            p.poll(min(left, 0.001))
        p.produce(topic, value=b"x" * 100, partition=0,
                  on_delivery=lambda err, msg, t=intended: lat.append(
                      (time.perf_counter() - t) if err is None else None))
        p.poll(0)
    p.flush(60)
    failed = sum(1 for v in lat if v is None)
    ok = sorted(v * 1e3 for v in lat if v is not None)
    return ok, failed


def throughput(bootstrap, topic, total_bytes):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20,
                  "enable.idempotence": False})
    value = b"y" * 1024
    n = total_bytes // len(value)
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=value, partition=i % 6)
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    p.flush(300)
    elapsed = time.perf_counter() - start
    return total_bytes / elapsed / (1 << 20)


def main():
    rate = float(os.environ.get("RATE", "200"))
    seconds = float(os.environ.get("SECONDS", "20"))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "target")) as tmp:
        floor = subprocess.run([chronik_bin(), "bench", "log", "--dir", tmp, "--samples", "2000",
                                "--throughput-bytes", str(256 << 20)],
                               capture_output=True, text=True)
        print("== raw disk floor (chronik bench log)")
        print(floor.stdout[-3000:])
        c = make_cluster(Path(tmp)).start()
        try:
            admin = AdminClient({"bootstrap.servers": c.bootstrap()})
            for name, parts, rf in (("lat", 1, 3), ("thr", 6, 3), ("lat1", 1, 1)):
                admin.create_topics([NewTopic(name, parts, rf)])[name].result(15)
            time.sleep(2)
            latency(c.bootstrap(), "lat", rate, 2)  # warm-up
            ok, failed = latency(c.bootstrap(), "lat", rate, seconds)
            print(f"== acks=all, RF 3, 3 brokers, {rate:.0f} msg/s x {seconds:.0f} s, 100 B, linger 0")
            print(f"samples {len(ok)} failed {failed} p50 {pct(ok, .5):.2f} ms p99 {pct(ok, .99):.2f} ms "
                  f"p99.9 {pct(ok, .999):.2f} ms max {ok[-1]:.2f} ms")
            for label, topic, acks in (("acks=1, RF 3", "lat", 1), ("acks=all, RF 1", "lat1", "all")):
                ok, failed = latency(c.bootstrap(), topic, rate, seconds / 2, acks)
                print(f"== for comparison, {label}: samples {len(ok)} failed {failed} "
                      f"p50 {pct(ok, .5):.2f} ms p99 {pct(ok, .99):.2f} ms p99.9 {pct(ok, .999):.2f} ms")
            mib = throughput(c.bootstrap(), "thr", 256 << 20)
            print(f"== acks=all throughput, 6 partitions, 1 KiB messages, linger 5 ms: {mib:.1f} MiB/s")
        finally:
            c.stop_all()


if __name__ == "__main__":
    main()
