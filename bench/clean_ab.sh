#!/usr/bin/env bash
# Produce latency on one partition while the log cleaner compacts another topic on the same broker,
# against the same load with the cleaner idle, alternated in one session (on off on off ...) so that
# machine noise hits both alike. Prints each pair and the medians.
#
#   bench/clean_ab.sh [CHRONIK_BIN] [PAIRS] [DATA_DIR]
#
# Each run: a fresh one-broker chronik (`--log-cleaner-enable true|false`) in DATA_DIR (default: the
# system temp dir; put it on the disk under test), a compacted topic (segment.bytes 1 MiB,
# min.cleanable.dirty.ratio 0.01, min.compaction.lag.ms 0) that a keyed background producer
# (confluent-kafka from ./.venv, acks=1, DIRTY_RATE records/s of 1 KiB over DIRTY_KEYS keys) keeps
# dirtying, and the gate's `chronik bench produce` (acks=all, 1 KiB records, 1000 rec/s, batches of
# 10) on a one-partition topic of the same broker. The background load is the same on both sides:
# only the cleaner differs. The compacted partition's size at the end of each run shows whether the
# cleaner kept up. BROKER_ARGS adds `chronik start` flags to both sides (e.g. the cleaner's I/O budget;
# default `--log-cleaner-backoff-ms 1000`: with the default 15 s a fresh broker's cleaner first looks
# 15 s in, most of a run);
# DURATION and WARMUP (seconds) size each run. Run it under `flock /tmp/chronik-test.lock`.
set -euo pipefail
bin=${1:-target/release/chronik} pairs=${2:-5} base=${3:-${TMPDIR:-/tmp}}
py=${PYTHON:-.venv/bin/python}
dirty_rate=${DIRTY_RATE:-4000} dirty_keys=${DIRTY_KEYS:-10000}
duration=${DURATION:-20} warmup=${WARMUP:-5}
broker_args=${BROKER_ARGS---log-cleaner-backoff-ms 1000}
out=$(mktemp -d "$base/chronik-clean-ab.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$out"
}
trap cleanup EXIT

cat >"$out/dirty.py" <<'PY'
"""create BOOTSTRAP | produce BOOTSTRAP RATE SECONDS KEYS: the compacted topic and its keyed load."""
import os, random, sys, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
mode, bootstrap = sys.argv[1], sys.argv[2]
if mode == "create":
    config = {"cleanup.policy": "compact", "segment.bytes": str(1 << 20),
              "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic, fut in admin.create_topics([NewTopic("compacted", 1, 1, config=config),
                                           NewTopic("latency", 1, 1)]).items():
        fut.result(30)
    sys.exit(0)
rate, seconds, keys = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
p = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5})
value, failed, sent = os.urandom(1024), [], 0
start = time.monotonic()
while (now := time.monotonic() - start) < seconds:
    while sent < int(now * rate):
        try:
            p.produce("compacted", key=b"key-%08d" % random.randrange(keys), value=value,
                      partition=0, on_delivery=lambda err, _m: err and failed.append(err))
            sent += 1
        except BufferError:
            break
        p.poll(0)
    p.poll(0.002)
p.flush(30)
print(f"dirtier: {sent} records, {len(failed)} failed {failed[:3]}", file=sys.stderr)
PY

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
    local cleaner=$1 json=$2 data port
    data=$(mktemp -d "$out/data.XXXXXX")
    port=$(free_port)
    # shellcheck disable=SC2086 # broker_args are words
    "$bin" start --node-id 1 --listen "127.0.0.1:$port" --data-dir "$data" \
        --log-cleaner-enable "$cleaner" $broker_args >"$data.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    "$py" "$out/dirty.py" create "127.0.0.1:$port"
    "$py" "$out/dirty.py" produce "127.0.0.1:$port" "$dirty_rate" $((duration + warmup + 2)) "$dirty_keys" &
    local dirtier=$!
    sleep 1
    "$bin" bench produce --bootstrap "127.0.0.1:$port" --topic latency --partitions 1 \
        --replication-factor 1 --acks all --record-size 1024 --rate 1000 --batch-records 10 \
        --duration "${duration}s" --warmup "${warmup}s" --floor-samples 1000 --data-dir "$base" \
        --quiet --json "$json" >/dev/null
    wait "$dirtier"
    local size
    size=$(du -sm "$(find "$data" -type d -name 'compacted-0' | head -1)" | cut -f1)
    kill "$broker_pid"
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    echo "$size" >"$json.size"
    echo "cleaner $cleaner: compacted partition ${size} MiB at the end; load $(cut -d' ' -f1-3 /proc/loadavg), rustc running: $(pgrep -c rustc || true)" >&2
    rm -rf "$data" "$data.log"
}

for i in $(seq 1 "$pairs"); do
    run true "$out/on$i.json"
    run false "$out/off$i.json"
done
"$py" - "$out" "$pairs" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
def load(side, i):
    t = json.load(open(f"{d}/{side}{i}.json"))["total"]
    size = int(open(f"{d}/{side}{i}.json.size").read())
    return t["latency"]["p50_us"] / 1000, t["latency"]["p99_us"] / 1000, t["p99_over_floor"], size
rows = [(load("on", i), load("off", i)) for i in range(1, n + 1)]
print("pair  on p50 ms  on p99 ms  on p99/floor  on MiB   off p50 ms  off p99 ms  off p99/floor  off MiB   on/off p99")
for i, (a, b) in enumerate(rows, 1):
    print(f"{i:4}  {a[0]:9.2f}  {a[1]:9.2f}  {a[2]:12.2f}  {a[3]:6}   {b[0]:10.2f}  {b[1]:10.2f}  {b[2]:13.2f}  {b[3]:7}   {a[1]/b[1]:10.2f}")
med = statistics.median
print(f"median cleaner on: p50 {med([a[0] for a, _ in rows]):.2f} p99 {med([a[1] for a, _ in rows]):.2f} ms;"
      f" idle: p50 {med([b[0] for _, b in rows]):.2f} p99 {med([b[1] for _, b in rows]):.2f} ms;"
      f" median of paired on/idle p99 {med([a[1] / b[1] for a, b in rows]):.2f},"
      f" p50 {med([a[0] / b[0] for a, b in rows]):.2f}")
PY
