#!/usr/bin/env bash
# The chaos test (ctest label slow; not part of `make test`): tests/e2e/chaos.py for
# CHAOS_MINUTES (default 2) against a tiny model — router, gateway, a replica and a
# tensor-parallel replica, killed, stopped and restarted at random under mixed load; every
# request must be answered or end with a clear error, none may hang.
# Run it: cd build && ctest -L slow --output-on-failure   (CHAOS_MINUTES=10 for longer)
# Usage: test_chaos.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
export OMP_NUM_THREADS=1
"$TANDEM" prep --out data --quiet --vocab-size 300 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes
cat > job.json <<JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 128},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 4, "steps": 2, "lr": 1e-3, "seed": 1},
 "checkpoint": {"dir": "$W/run", "every": 2, "keep": 1}, "device": "cpu"}
JOB
"$TANDEM" train job.json --quiet 2> /dev/null
python3 "$HERE/chaos.py" "$TANDEM" "$W/run/step_00000002" --minutes "${CHAOS_MINUTES:-2}"
