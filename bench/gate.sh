#!/usr/bin/env bash
# Latency-regression gate: a short `chronik bench produce` on an embedded
# cluster, compared with the committed baseline on floor-normalized p99
# (p99 / the fsync+RTT floor sampled during the same run), per leader and total.
#
#   bench/gate.sh              run the gate: 3 runs, the median one is judged (5 if that fails)
#   bench/gate.sh --refresh [N] re-measure on purpose: N runs (default 5), the
#                              median run by p99/floor becomes bench/baseline/gate.json
#   bench/gate.sh --noise [N]  N runs (default 10), each compared with the first
#                              (how the tolerance was chosen: bench/RESULTS.md)
#
# Environment:
#   CHRONIK_BIN               chronik executable (default: target/release/chronik, built if missing)
#   CHRONIK_BENCH_TOLERANCE   allowed growth of p99/floor in percent (default 200, see bench/RESULTS.md)
#   CHRONIK_BENCH_RUNS        gate runs whose median is judged (default 3)
#   CHRONIK_BENCH_BROKERS     embedded brokers (default 1 until cluster mode lands; refresh the
#                             baseline when this changes)
#   CHRONIK_BENCH_NOISE_DIR   keep the --noise reports there
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=bench/baseline/gate.json
TOLERANCE=${CHRONIK_BENCH_TOLERANCE:-200}
RUNS=${CHRONIK_BENCH_RUNS:-3}
BROKERS=${CHRONIK_BENCH_BROKERS:-1}
BIN=${CHRONIK_BIN:-target/release/chronik}
if [ ! -x "$BIN" ]; then
    cargo build --release --bin chronik
fi

# The gate's workload. Changing it means refreshing the baseline.
run() {
    "$BIN" bench produce \
        --brokers "$BROKERS" --partitions 6 --acks all \
        --record-size 1024 --rate 1000 --batch-records 10 \
        --duration 10s --warmup 3s --floor-samples 1000 \
        --quiet --json "$1" >/dev/null
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

case "${1:-}" in
--refresh)
    n=${2:-5}
    for i in $(seq 1 "$n"); do
        run "$out/run$i.json"
    done
    median=$(python3 - "$out" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
runs = sorted((json.load(open(f"{d}/run{i}.json"))["total"]["p99_over_floor"], i) for i in range(1, n + 1))
print(f"{d}/run{runs[len(runs) // 2][1]}.json")
PY
)
    cp "$median" "$BASELINE"
    echo "baseline refreshed from the median of $n runs: $BASELINE (commit it with the reason)"
    ;;
--noise)
    n=${2:-10}
    dir=${CHRONIK_BENCH_NOISE_DIR:-$out}
    mkdir -p "$dir"
    for i in $(seq 1 "$n"); do
        run "$dir/run$i.json"
        "$BIN" bench compare "$dir/run1.json" "$dir/run$i.json" --max-regression 1000000 |
            grep -E '^(total|leader)' | sed "s/^/run $i: /"
    done
    ;;
"")
    for i in $(seq 1 "$RUNS"); do
        run "$out/run$i.json"
    done
    if "$BIN" bench compare "$BASELINE" "$out"/run*.json --max-regression="$TOLERANCE"; then
        exit 0
    fi
    # A host stall can push one run of three over; a regression pushes every run.
    echo "two more runs; the median of $((RUNS + 2)) is judged"
    for i in $(seq $((RUNS + 1)) $((RUNS + 2))); do
        run "$out/run$i.json"
    done
    "$BIN" bench compare "$BASELINE" "$out"/run*.json --max-regression="$TOLERANCE"
    ;;
*)
    echo "usage: bench/gate.sh [--refresh [N] | --noise [N]]" >&2
    exit 2
    ;;
esac
