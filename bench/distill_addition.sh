#!/usr/bin/env bash
# Distillation on a reasoning task with exact answers (docs/distill.md, "Results"): 4-digit
# addition, whose worked solution adds digit by digit with the carries written out
# (scripts/arith_data.py). A teacher (llama, hidden 128, 4 layers) is fine-tuned on worked
# solutions; a student of under 1/4 of its parameters (hidden 64, 2 layers; STUDENT="64 3
# 256" in the environment for another shape: hidden, layers, intermediate) is trained
#   (a) on the answers alone,
#   (b) on the teacher's own worked solutions (tandem synthesize, kept when their final
#       answer is right),
#   (c) with logit distillation (tandem distill) on the worked solutions.
# Every model is scored by held-out exact match (greedy, 200 sums never seen in training),
# and the teacher's and a student's decode speed is measured at batch 1 in one run, with
# both memory plans (serve --dry-run) side by side. Prints one table.
#
# usage: bench/distill_addition.sh TANDEM OUTDIR [STEPS]
#   STEPS: optimizer steps of the teacher and of each student (default 1200; batch 32)
# Stages whose checkpoint exists in OUTDIR are not run again. About 30 minutes on 2 cores.
set -euo pipefail
TANDEM=$(realpath "$1")
OUT=$2
STEPS=${3:-1200}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
cd "$OUT"
last() { printf '%s/step_%08d' "$1" "$STEPS"; }
log() { echo "[$(date +%H:%M:%S)] $*"; }

[ -d task ] || python3 "$HERE/../scripts/arith_data.py" task --train 4000 --val 200 --digits 4
# the tokenizer: bytes and the special tokens only (every digit its own token)
[ -d data ] || "$TANDEM" prep --out data --quiet --vocab-size 260 --min-letter-ratio 0 \
    --max-symbol-ratio 1 --max-top-ngram-frac 1 --max-dup-line-frac 1 --near-threshold 0 \
    --delimiter % --val-fraction 0.05 task/corpus.txt
base() { # dir hidden layers intermediate: a randomly initialised model of that tokenizer
    [ -d "$1/step_00000001" ] && return
    cat > "$1.json" << JOB
{"model": {"arch": "llama", "hidden_size": $2, "num_hidden_layers": $3, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": $4, "vocab_size": 260,
           "max_position_embeddings": 128},
 "data": {"train": "data", "seq_len": 96},
 "train": {"batch_size": 8, "steps": 1, "lr": 1e-4, "seed": 1},
 "checkpoint": {"dir": "$1", "every": 1, "keep": 1}, "device": "cpu"}
JOB
    "$TANDEM" train "$1.json" --quiet 2> /dev/null
}
base tbase 128 4 512
read -r SH SL SI <<< "${STUDENT:-64 2 256}"
base sbase "$SH" "$SL" "$SI"
run() { # cmd dir base train-data [distill-json]: a fine-tune of STEPS steps, timed
    local cmd=$1 dir=$2 b=$3 data=$4 extra=${5:-}
    if [ -d "$(last "$dir")" ]; then return; fi
    cat > "$dir.json" << JOB
{"finetune": {"base": "$b/step_00000001", "method": "full"},
 "data": {"train": "$data", "val": "task/val_worked.jsonl", "seq_len": 96},
 "train": {"batch_size": 32, "steps": $STEPS, "lr": 3e-3, "warmup": 50, "seed": 1,
           "eval_every": $STEPS, "log_every": 100},
 $extra
 "checkpoint": {"dir": "$dir", "every": 300, "keep": 1}, "device": "cpu"}
JOB
    log "$cmd $dir ($STEPS steps on $data)"
    "$TANDEM" "$cmd" "$dir.json" 2> "$dir.err" | tee "$dir.log" | grep -E "^train:|^distill:"
}
run finetune teacher tbase task/worked.jsonl
TEACHER=$(last teacher)
score() { # model label: held-out exact match, greedy
    rm -f "score-$2.jsonl" "score-$2.jsonl.source.json"
    "$TANDEM" synthesize --model "$1" --prompts task/val.jsonl --out "score-$2.jsonl" \
        --temperature 0 --max-tokens 80 --answer-key answer --answer-after "answer " \
        --quiet 2> /dev/null || true
    wc -l < "score-$2.jsonl"
}
# (a) answers only
run finetune stu_a sbase task/answers.jsonl
# (b) the teacher's worked solutions for the training prompts, kept when right
if [ ! -s synth.jsonl ]; then
    log "synthesize: the teacher answers the 4000 training prompts"
    "$TANDEM" synthesize --model "$TEACHER" --prompts task/prompts.jsonl --out synth.jsonl \
        --temperature 0 --max-tokens 80 --answer-key answer --answer-after "answer " \
        2> synth.err | tee synth.log | tail -1
fi
run finetune stu_b sbase synth.jsonl
# (c) logit distillation on the worked solutions
run distill stu_c sbase task/worked.jsonl \
    "\"distill\": {\"teacher\": \"$TEACHER\", \"alpha\": 0.5, \"tau\": 2.0, \"kl\": \"forward\"},"

log "scoring (200 held-out sums, greedy, exact match of the final answer)"
# parameters: from the checkpoint's safetensors header; tokens and seconds: the steps of
# metrics.jsonl (tokens counted are the examples', not the padding; evaluation excluded)
params() {
    python3 -c 'import json,struct,sys
f = open(sys.argv[1] + "/model.safetensors", "rb")
h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
n = 0
for k, v in h.items():
    if k != "__metadata__":
        c = 1
        for d in v["shape"]:
            c *= d
        n += c
print(n)' "$(last "$1")"
}
secs() { python3 -c 'import json,sys
r = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if "\"loss\"" in l]
print("%.1f" % (sum(x["step_ms"] for x in r) / 1e3))' "$1"; }
toks() { python3 -c 'import json,sys
r = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if "\"loss\"" in l]
print("%.0f" % sum(x["tokens_per_s"] * x["step_ms"] / 1e3 for x in r))' "$1"; }
TP=$(params teacher)
printf '\n%-34s %9s %6s %12s %8s %12s\n' model params ratio "tokens seen" "train s" "exact match"
for r in "teacher|teacher: worked solutions" "stu_a|(a) answers only" \
    "stu_b|(b) teacher's worked solutions" "stu_c|(c) logit KD (alpha .5, tau 2)"; do
    d=${r%%|*}
    em=$(score "$(last "$d")" "$d")
    p=$(params "$d")
    printf '%-34s %9s %6.3f %12s %8s %8s/200 (%.1f%%)\n' "${r#*|}" "$p" "$(awk -v a="$p" -v b="$TP" 'BEGIN { print a / b }')" \
        "$(toks "$d")" "$(secs "$d")" "$em" "$(awk -v a="$em" 'BEGIN { print a / 2 }')"
done
[ -f synth.log ] && echo "(b)'s data: $(tail -1 synth.log | sed 's/^synthesize: //')"

log "decode speed at batch 1 (serve --prompts-file, --max-seqs 1, 32 prompts x 100 tokens)"
for i in $(seq 1 32); do echo "12$i+345$i"; done > speed.txt
for d in teacher stu_b teacher stu_b teacher stu_b; do # alternated, three times
    printf '%-8s ' "$d"
    "$TANDEM" serve --model "$(last $d)" --prompts-file speed.txt --max-tokens 100 \
        --max-seqs 1 --temperature 0 2>&1 > /dev/null | grep -o 'replica 0: .*'
done
echo
"$TANDEM" serve --model "$TEACHER" --dry-run --max-seqs 1 2>&1 | grep -v '^checkpoint' > plan-t.txt
"$TANDEM" serve --model "$(last stu_b)" --dry-run --max-seqs 1 2>&1 | grep -v '^checkpoint' > plan-s.txt
paste -d'|' plan-t.txt plan-s.txt | awk -F'|' '{ printf "%-60s | %s\n", $1, $2 }'
