#!/usr/bin/env bash
# The demo's training throughput by OpenBLAS kernel choice, side by side: `make demo`'s job
# (scripts/demo-job.json, mpirun -np 2) for STEPS steps under
#   shipped  OpenBLAS's own core choice (TANDEM_BLAS_CHECK=0)
#   default  what tandem runs (the core checked against the CPU and corrected)
#   forced   OPENBLAS_CORETYPE set by hand to the core the CPU supports (SkylakeX on AVX-512)
# in turn, ROUNDS rounds, so that a neighbour's load falls on all alike. Prints tokens/s
# (the trainer's own figure, metrics.jsonl's last line) per run and the median per
# configuration with its ratio to forced.
# Usage: bench/demo_kernels.sh [BUILD] [STEPS (100)] [ROUNDS (3)] [FORCED_CORE (SkylakeX)]
# Needs the demo's data (demo-data/fortunes, written by `make demo`; made here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
STEPS=${2:-100}
ROUNDS=${3:-3}
FORCED=${4:-SkylakeX}
TANDEM=$(realpath "$BUILD/tandem")
. tests/e2e/mpi_env.sh
if [ ! -f demo-data/fortunes/manifest.json ]; then
    "$TANDEM" prep --quiet --delimiter % --vocab-size 2048 --val-fraction 0.05 \
        --out demo-data/fortunes /usr/share/games/fortunes
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo "demo training throughput by kernels ($STEPS steps of $(grep -o '"batch_size": [0-9]*' \
    scripts/demo-job.json) x 128 tokens, mpirun -np 2; $ROUNDS rounds)"
echo "kernels as shipped: $(TANDEM_BLAS_CHECK=0 "$TANDEM" version | sed -n 's/^kernels: //p')"
run() { # label env...
    local label=$1
    shift
    sed "s#\"dir\": \"runs/demo\"#\"dir\": \"$W/$label\"#; s#\"eval_every\": 50#\"eval_every\": 100000#" \
        scripts/demo-job.json > "$W/job.json"
    rm -rf "$W/$label"
    env "$@" mpirun -np 2 "$TANDEM" train "$W/job.json" --stop-at "$STEPS" --quiet 2> "$W/$label.err"
    local core
    core=$(sed -n 's/.*kernels: fp32: OpenBLAS [^ ]* core \([A-Za-z0-9]*\).*/\1/p' "$W/$label.err")
    local tps
    tps=$(tail -1 "$W/$label/metrics.jsonl" | sed 's/.*"tokens_per_s": \([0-9.]*\).*/\1/')
    printf '  %-8s core %-10s %9.0f tokens/s\n' "$label" "$core" "$tps"
    echo "$tps" >> "$W/$label.tps"
}
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    run shipped -u OPENBLAS_CORETYPE TANDEM_BLAS_CHECK=0
    run default -u OPENBLAS_CORETYPE -u TANDEM_BLAS_CHECK
    run forced -u TANDEM_BLAS_CHECK OPENBLAS_CORETYPE="$FORCED"
done
median() { sort -g "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
f=$(median "$W/forced.tps")
echo
printf '%-10s %14s %10s\n' config "median tok/s" "vs forced"
for c in shipped default forced; do
    m=$(median "$W/$c.tps")
    printf '%-10s %14.0f %9.2fx\n' "$c" "$m" "$(awk -v a="$m" -v b="$f" 'BEGIN { print a / b }')"
done
