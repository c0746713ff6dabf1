#!/usr/bin/env bash
# Resume is exact: 20 steps straight, and 10 steps + --resume + 10 steps, give the same
# losses. With one thread (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1) they must be identical
# to the printed 7 decimals; with the default threads within 1e-6. Prints both columns.
# Usage: test_train_resume.sh TANDEM_BINARY
set -euo pipefail
TANDEM=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
# corpus: the project's own sources (real text, always present)
"$TANDEM" prep --out data --quiet --vocab-size 260 --val-fraction 0.2 --min-letter-ratio 0 \
    --max-symbol-ratio 1 --max-dup-line-frac 1 --max-top-ngram-frac 1 \
    "$ROOT"/common "$ROOT"/worker/model "$ROOT"/worker/train

make_job() { # dir
cat > "job_$1.json" <<JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 260,
           "max_position_embeddings": 32},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 4, "steps": 20, "lr": 1e-2, "warmup": 3, "weight_decay": 0.1, "seed": 5},
 "checkpoint": {"dir": "$1", "every": 10, "keep": 5}}
JOB
}

losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }

run_case() { # label tolerance
    rm -rf straight split
    make_job straight
    make_job split
    "$TANDEM" train job_straight.json --quiet
    "$TANDEM" train job_split.json --quiet --stop-at 10
    test -d split/step_00000010 || { echo "no checkpoint at step 10"; exit 1; }
    "$TANDEM" train job_split.json --quiet --resume
    paste <(losses straight) <(losses split) > cols.txt
    echo "$1: step  straight   10+resume+10"
    awk '{ printf "      %4d  %s  %s\n", NR, $1, $2 }' cols.txt
    test "$(wc -l < cols.txt)" -eq 20 || { echo "expected 20 steps"; exit 1; }
    awk -v tol="$2" '{ d = $1 - $2; if (d < 0) d = -d; if (d > tol) bad++ }
        END { if (bad) { print bad " steps differ by more than " tol; exit 1 } }' cols.txt
    # the resumed run is really a continuation: its parent is the step-10 checkpoint
    grep -Eq '"parent":[[:space:]]*"split/step_00000010"' split/step_00000020/trainer_state.json
}

OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 run_case "1 thread" 0
run_case "default threads" 1e-6
echo "test_train_resume: 2 cases passed"
