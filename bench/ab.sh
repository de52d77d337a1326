#!/usr/bin/env bash
# A/B latency comparison of two chronik builds on the gate's workload, alternated in one session
# (A B A B ...) so that machine noise hits both alike. Prints each pair and the medians.
#
#   bench/ab.sh A_BIN B_BIN [PAIRS] [BROKERS]
#
# PAIRS defaults to 6, BROKERS to 1 (3 runs the workload at RF 3 over three embedded brokers).
# AB_A_ARGS / AB_B_ARGS add `chronik bench produce` flags to one side (e.g. the same binary twice,
# AB_B_ARGS=--idempotent, compares idempotence off and on).
# Each run is the gate's `chronik bench produce` (acks=all, 1 KiB records, 1000 rec/s, 10 s).
set -euo pipefail
a=$1 b=$2 pairs=${3:-6} brokers=${4:-1}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
    local bin=$1 json=$2
    shift 2
    "$bin" bench produce --brokers "$brokers" --partitions 6 --acks all \
        --record-size 1024 --rate 1000 --batch-records 10 \
        --duration 10s --warmup 3s --floor-samples 1000 --quiet --json "$json" "$@" >/dev/null
}
for i in $(seq 1 "$pairs"); do
    # shellcheck disable=SC2086 # the extra flags are words
    run "$a" "$out/a$i.json" ${AB_A_ARGS:-}
    # shellcheck disable=SC2086
    run "$b" "$out/b$i.json" ${AB_B_ARGS:-}
done
python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
def load(side, i):
    t = json.load(open(f"{d}/{side}{i}.json"))["total"]
    return t["latency"]["p50_us"] / 1000, t["latency"]["p99_us"] / 1000, t["p99_over_floor"]
rows = [(load("a", i), load("b", i)) for i in range(1, n + 1)]
print("pair  A p50 ms  A p99 ms  A p99/floor   B p50 ms  B p99 ms  B p99/floor   B/A p99")
for i, (a, b) in enumerate(rows, 1):
    print(f"{i:4}  {a[0]:8.2f}  {a[1]:8.2f}  {a[2]:11.2f}   {b[0]:8.2f}  {b[1]:8.2f}  {b[2]:11.2f}   {b[1]/a[1]:7.2f}")
med = lambda xs: statistics.median(xs)
print(f"median A p50 {med([a[0] for a, _ in rows]):.2f} p99 {med([a[1] for a, _ in rows]):.2f} ms;"
      f" B p50 {med([b[0] for _, b in rows]):.2f} p99 {med([b[1] for _, b in rows]):.2f} ms;"
      f" median of paired B/A p99 {med([b[1] / a[1] for a, b in rows]):.2f},"
      f" of paired B/A p50 {med([b[0] / a[0] for a, b in rows]):.2f}")
PY
