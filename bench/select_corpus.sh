#!/usr/bin/env bash
# Data selection on the demo corpus (docs/distill.md, "Results"): the demo model pretrained
# for the same number of steps on 25 % of the fortunes corpus chosen by `tandem select`
# (by loss, several rules), on a random 25 %, and on all of it; validation loss on the
# corpus's own validation split (select copies it unchanged) in one table.
# The scoring model is a small proxy (llama, hidden 64, 2 layers) trained for 200 steps on
# the whole corpus.
#
# usage: bench/select_corpus.sh TANDEM OUTDIR [STEPS]
#   STEPS: steps of each pretraining run (default 300; the demo's batch 16 x 128 tokens)
# Runs whose checkpoint exists in OUTDIR are not repeated. About 20 minutes on 2 cores.
set -euo pipefail
TANDEM=$(realpath "$1")
OUT=$2
STEPS=${3:-300}
mkdir -p "$OUT"
cd "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*"; }
[ -d full ] || "$TANDEM" prep --delimiter % --vocab-size 2048 --val-fraction 0.05 --out full \
    --quiet /usr/share/games/fortunes
job() { # dir data steps hidden layers intermediate
    cat > "$1.json" << JOB
{"model": {"arch": "llama", "hidden_size": $4, "num_hidden_layers": $5, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": $6, "vocab_size": 2048,
           "max_position_embeddings": 128},
 "data": {"train": "$2", "seq_len": 128},
 "train": {"batch_size": 16, "steps": $3, "lr": 4e-3, "warmup": 20, "weight_decay": 0.1,
           "seed": 1, "eval_every": $3, "eval_batches": 16},
 "checkpoint": {"dir": "$1", "every": $3, "keep": 1}, "device": "cpu"}
JOB
}
ck() { printf '%s/step_%08d' "$1" "$2"; }
if [ ! -d "$(ck proxy 200)" ]; then
    log "proxy scorer: 200 steps on the whole corpus"
    job proxy full 200 64 2 172 && "$TANDEM" train proxy.json --quiet 2> /dev/null
fi
for rule in middle low high; do
    [ -d "sel_$rule" ] || "$TANDEM" select --data full --model "$(ck proxy 200)" --by "$rule" \
        --keep-fraction 0.25 --out "sel_$rule" 2> /dev/null | head -1
done
# three random quarters: the spread of the baseline
[ -d sel_random ] || "$TANDEM" select --data full --by random --keep-fraction 0.25 \
    --out sel_random --quiet
for sd in 2 3; do
    [ -d "sel_random$sd" ] || "$TANDEM" select --data full --by random --seed "$sd" \
        --keep-fraction 0.25 --out "sel_random$sd" --quiet
done
for d in full sel_middle sel_random sel_random2 sel_random3 sel_low sel_high; do
    [ -d "$(ck "run_$d" "$STEPS")" ] && continue
    log "pretraining the demo model on $d ($STEPS steps)"
    job "run_$d" "$d" "$STEPS" 128 4 344 && "$TANDEM" train "run_$d.json" --quiet 2> /dev/null
done
printf '\n%-34s %9s %9s %10s %10s\n' "train data (25 %: by tandem select)" documents tokens \
    "epochs" "val loss"
for d in full sel_middle sel_random sel_random2 sel_random3 sel_low sel_high; do
    python3 - "$d" "$STEPS" << 'EOF'
import json, sys
d, steps = sys.argv[1], int(sys.argv[2])
m = json.load(open(d + "/manifest.json"))
tokens = m["stats"]["tokens_train"]
docs = m.get("selection", {}).get("documents_kept", m["stats"].get("documents_out", 0)
                                  - m["stats"].get("documents_val", 0))
val = [json.loads(l) for l in open("run_" + d + "/metrics.jsonl") if '"val_loss"' in l][-1]
label = {"full": "100 % of the corpus", "sel_middle": "25 % middle loss (deduplicated)",
         "sel_random": "25 % random (seed 1)", "sel_random2": "25 % random (seed 2)",
         "sel_random3": "25 % random (seed 3)", "sel_low": "25 % lowest loss (deduplicated)",
         "sel_high": "25 % highest loss (deduplicated)"}[d]
print("%-34s %9d %9d %10.2f %10.4f" % (label, docs, tokens, steps * 16 * 128 / tokens,
                                        val["val_loss"]))
EOF
done
