#!/usr/bin/env bash
# Produce latency of one partition while another partition of the same shard rolls a segment every
# MiB (issue 14 item 6: blocking file work on the shard's reactor stalls every partition of it).
# Two broker builds, alternated in one session (A B A B ...) so that machine noise hits both alike.
#
#   bench/roll_ab.sh A_BIN B_BIN [PAIRS] [ROLLER_RATE]
#
# Each run: one broker with one shard (`--cores 1`, so both partitions live on it), retention checked
# every second. Topic `roller` (1 partition, segment.bytes 1 MiB, retention.bytes 8 MiB) gets
# ROLLER_RATE (default 4000) 1 KiB records/s from a background `chronik bench produce`: a segment roll
# (seal: fdatasync, index files, epoch checkpoint; new file: directory fsync) about every
# 1024/ROLLER_RATE s, and a retention deletion (unlink, directory fsync) per roll. Topic `measured`
# (1 partition) gets the gate's load (acks=all, 1 KiB records, 1000 rec/s, batches of 10), measured for
# 20 s after 3 s of warm-up, with the disk floor sampled meanwhile. The clients are B's `bench`
# (the same client code for both sides). Needs .venv (confluent-kafka) to create the topics.
set -euo pipefail
a=$1 b=$2 pairs=${3:-6} roll_rate=${4:-4000}
py=${PYTHON:-.venv/bin/python}
out=$(mktemp -d /var/tmp/roll-ab.XXXXXX)
broker=
roller=
cleanup() {
    [ -n "$roller" ] && kill "$roller" 2>/dev/null || true
    [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))

create_topics() {
    "$py" - "127.0.0.1:$port" <<'PY'
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
topics = [
    NewTopic("roller", 1, 1, config={"segment.bytes": str(1 << 20), "retention.bytes": str(8 << 20)}),
    NewTopic("measured", 1, 1),
]
for name, f in admin.create_topics(topics, operation_timeout=10).items():
    f.result(timeout=15)
PY
}

run() {
    local bin=$1 json=$2
    rm -rf "$out/data"
    mkdir -p "$out/data"
    "$bin" start --node-id 1 --listen "127.0.0.1:$port" --data-dir "$out/data" --cores 1 \
        --log-retention-check-interval-ms 1000 >"$out/broker.log" 2>&1 &
    broker=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    create_topics
    "$b" bench produce --bootstrap "127.0.0.1:$port" --topic roller --partitions 1 --acks all \
        --record-size 1024 --rate "$roll_rate" --batch-records 32 --duration 60s --warmup 0s \
        --floor-samples 0 --quiet >/dev/null 2>&1 &
    roller=$!
    sleep 3
    "$b" bench produce --bootstrap "127.0.0.1:$port" --topic measured --partitions 1 --acks all \
        --record-size 1024 --rate 1000 --batch-records 10 --duration 20s --warmup 3s \
        --floor-samples 1000 --quiet --json "$json" >/dev/null
    kill "$roller" 2>/dev/null || true
    wait "$roller" 2>/dev/null || true
    roller=
    segments=$(find "$out/data" -name '*.log' -path '*roller*' | wc -l)
    kill "$broker"
    wait "$broker" 2>/dev/null || true
    broker=
    echo "$(basename "$json" .json): load $(cut -d' ' -f1-3 /proc/loadavg), roller segments left $segments, rustc $(pgrep -c rustc || true)" >&2
}

for i in $(seq 1 "$pairs"); do
    run "$a" "$out/a$i.json"
    run "$b" "$out/b$i.json"
done
"$py" - "$out" "$pairs" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
def load(side, i):
    t = json.load(open(f"{d}/{side}{i}.json"))["total"]
    l = t["latency"]
    return l["p50_us"] / 1000, l["p99_us"] / 1000, l["p999_us"] / 1000, t["p99_over_floor"] or 0.0
rows = [(load("a", i), load("b", i)) for i in range(1, n + 1)]
print("pair  A p50   A p99  A p99.9  A p99/floor    B p50   B p99  B p99.9  B p99/floor   B/A p99")
for i, (a, b) in enumerate(rows, 1):
    print(f"{i:4}  {a[0]:5.2f}  {a[1]:6.2f}  {a[2]:7.2f}  {a[3]:11.2f}    {b[0]:5.2f}  {b[1]:6.2f}  {b[2]:7.2f}  {b[3]:11.2f}   {b[1]/a[1]:7.2f}")
med = statistics.median
print(f"median A p50 {med([a[0] for a, _ in rows]):.2f} p99 {med([a[1] for a, _ in rows]):.2f}"
      f" p99.9 {med([a[2] for a, _ in rows]):.2f} ms; B p50 {med([b[0] for _, b in rows]):.2f}"
      f" p99 {med([b[1] for _, b in rows]):.2f} p99.9 {med([b[2] for _, b in rows]):.2f} ms;"
      f" median of paired B/A p99 {med([b[1] / a[1] for a, b in rows]):.2f}")
PY
