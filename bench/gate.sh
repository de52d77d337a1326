#!/usr/bin/env bash
# Latency-regression gate: a short `chronik bench produce` on an embedded
# cluster, compared with the committed baseline on floor-normalized p99
# (p99 / the fsync+RTT floor measured in the same run), per leader and total.
#
#   bench/gate.sh            run the gate (exit 1 on a regression past the tolerance)
#   bench/gate.sh --refresh  re-measure on purpose and overwrite the baseline
#   bench/gate.sh --noise N  N gate runs, each compared with the first (how the tolerance was chosen)
#
# Environment:
#   CHRONIK_BIN                 chronik executable (default: target/release/chronik, built if missing)
#   CHRONIK_BENCH_TOLERANCE     allowed growth of p99/floor in percent (default below; see bench/RESULTS.md)
#   CHRONIK_BENCH_BROKERS       embedded brokers (default 1 until cluster mode lands; the baseline
#                               must be refreshed when this changes)
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=bench/baseline/gate.json
TOLERANCE=${CHRONIK_BENCH_TOLERANCE:-100}
BROKERS=${CHRONIK_BENCH_BROKERS:-1}
BIN=${CHRONIK_BIN:-target/release/chronik}
if [ ! -x "$BIN" ]; then
    cargo build --release --bin chronik
fi

# Keep these in step with the baseline: compare warns when acks or rate differ.
run() {
    "$BIN" bench produce \
        --brokers "$BROKERS" --partitions 6 --acks all \
        --record-size 1024 --rate 2000 --batch-records 10 \
        --duration 10s --warmup 3s --floor-samples 1000 \
        --quiet --json "$1"
}

if [ "${1:-}" = "--refresh" ]; then
    run "$BASELINE"
    echo "baseline refreshed: $BASELINE (commit it with the reason)"
    exit 0
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [ "${1:-}" = "--noise" ]; then
    n=${2:-10}
    for i in $(seq 1 "$n"); do
        run "$out/run$i.json"
        "$BIN" bench compare "$out/run1.json" "$out/run$i.json" --max-regression 1000000 | grep -E '^(total|leader)' | sed "s/^/run $i: /"
    done
    exit 0
fi

run "$out/current.json"
"$BIN" bench compare "$BASELINE" "$out/current.json" --max-regression "$TOLERANCE"
