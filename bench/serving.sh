#!/usr/bin/env bash
# Serving load benchmark (docs/bench.md): serves a checkpoint over HTTP with
# `tandem serve --http` (router and gateway in-process) and drives it with
# build/bench_serving: all requests at once (16 in flight), then Poisson arrivals at
# 20 requests/s. Each load runs twice: the replica with its default OpenMP threads (with
# --http, one core fewer than the rank has, left to the gateway and router), and with
# OMP_NUM_THREADS set to all the cores (whose spinning OpenMP workers then compete with the
# gateway's and router's threads, which shows in the overhead).
# Usage: bench/serving.sh [CHECKPOINT] [BUILD]   (default runs/demo/step_00000600, build)
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${1:-runs/demo/step_00000600}
BUILD=${2:-build}
[ -f "$CK/config.json" ] || { echo "bench/serving.sh: no checkpoint at $CK (run make demo)" >&2; exit 2; }
LOG=$(mktemp)
SRV=
trap '[ -n "$SRV" ] && kill $SRV 2> /dev/null; rm -f $LOG' EXIT
ALL=$(nproc)
for threads in default $ALL; do
    if [ $threads = default ]; then
        "$BUILD/tandem" serve --model "$CK" --name bench --http 127.0.0.1:0 2> "$LOG" &
    else
        OMP_NUM_THREADS=$threads "$BUILD/tandem" serve --model "$CK" --name bench --http 127.0.0.1:0 2> "$LOG" &
    fi
    SRV=$!
    for _ in $(seq 100); do grep -q "listening on http" "$LOG" && break; sleep 0.1; done
    BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$LOG")
    for _ in $(seq 100); do curl -s "$BASE/health" | grep -q '"replicas":1' && break; sleep 0.1; done
    echo "=== replica OpenMP threads: $threads"
    "$BUILD/bench_serving" --url "$BASE" --model bench --num-prompts 200 --concurrency 16 --max-tokens 32
    "$BUILD/bench_serving" --url "$BASE" --model bench --num-prompts 200 --rate 20 --concurrency 64 --max-tokens 32
    kill $SRV
    wait $SRV 2> /dev/null || true
    SRV=
done
