#!/usr/bin/env bash
# Fine-tuning end to end on a throwaway model (ctest labels mpi, e2e):
#   1. data-parallel equivalence: 20 steps of full and of LoRA fine-tuning at -np 2 match
#      one rank within 1e-5 relative at every step (examples of different lengths, so the
#      ranks count different numbers of tokens: the loss is the mean over the step's tokens);
#      so does LoRA with dropout 0.2 (and its losses differ from those without)
#   2. resume: a LoRA run stopped at step 10 and resumed matches the uninterrupted one;
#      chat data prepared by `prep --chat` (-np 1 and -np 2 write the same bytes) trains
#      exactly as the JSON Lines it came from
#   3. lineage: pretrain -> LoRA -> merge -> full fine-tune of the merged -> show lists four
#      checkpoints; the unmerged adapter left the base's weights' sha256 unchanged
#   4. bad input, each exit 2 with a message naming the problem and no checkpoint written
# Usage: test_finetune.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64
BASE=$TINY_CK
python3 "$HERE/../../scripts/skill_data.py" skill --train 120 --val 16 > /dev/null

job() { # name method steps [extra finetune json]
    local lora=
    [ "$2" = lora ] && lora=', "lora": {"r": 4, "alpha": 8, "dropout": '${DROPOUT:-0}', "target_modules": ["q_proj", "v_proj", "down_proj"]}'
    cat > "$1.json" <<JOB
{"finetune": {"base": "${BASE_OF:-$BASE}", "method": "$2"$lora},
 "data": {"train": "${TRAIN:-skill/train.jsonl}", "val": "${VAL:-skill/val.jsonl}", "seq_len": 48},
 "train": {"batch_size": 8, "steps": $3, "lr": 3e-3, "warmup": 2, "seed": 5, "eval_every": 10},
 "checkpoint": {"dir": "$1", "every": 10, "keep": 5}, "device": "cpu"}
JOB
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
fail=0
compare() { # label dirA dirB
    echo "$1"
    paste <(losses "$2") <(losses "$3") | awk '{ printf "   %4d  %s  %s\n", NR, $1, $2 }'
    if ! paste <(losses "$2") <(losses "$3") |
        awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > 1e-5 || NF != 2) bad++ }
             END { exit (bad || NR != 20) ? 1 : 0 }'; then
        echo "   FAIL: differs by more than 1e-5 relative (or not 20 steps)"
        fail=1
    fi
}

# 1. equivalence
for m in full lora; do
    job ${m}1 $m 20 && "$TANDEM" finetune ${m}1.json --quiet
    job ${m}2 $m 20 && mpirun -np 2 "$TANDEM" finetune ${m}2.json --quiet
    compare "$m fine-tuning: np=1 batch 8  vs  np=2 batch 4+4" ${m}1 ${m}2
done
# LoRA dropout: the masks follow each example's place in the global batch, so two ranks
# still match one; and they change the run
DROPOUT=0.2 job lorad1 lora 20 && "$TANDEM" finetune lorad1.json --quiet
DROPOUT=0.2 job lorad2 lora 20 && mpirun -np 2 "$TANDEM" finetune lorad2.json --quiet
compare "LoRA dropout 0.2: np=1 batch 8  vs  np=2 batch 4+4" lorad1 lorad2
if [ "$(losses lorad1 | tail -n +2 | head -1)" = "$(losses lora1 | tail -n +2 | head -1)" ]; then
    echo "FAIL: dropout 0.2 left step 2's loss as without dropout"
    fail=1
fi
grep -Eq '"lora_dropout":[[:space:]]*0.2' lorad1/step_00000020/adapter_config.json ||
    { echo "FAIL: adapter_config.json does not record lora_dropout 0.2"; fail=1; }
first=$(losses lora1 | head -1) last=$(losses lora1 | tail -1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' ||
    { echo "FAIL: LoRA loss did not fall ($first -> $last)"; fail=1; }

# prepared chat data (tandem prep --chat, one process and two ranks): the same bytes, and
# the same training as from the JSON Lines
"$TANDEM" prep --chat --tokenizer "$BASE" --out chat1 skill/train.jsonl --chat-val skill/val.jsonl --quiet
mpirun -np 2 "$TANDEM" prep --chat --tokenizer "$BASE/tokenizer.json" --out chat2 skill/train.jsonl \
    --chat-val skill/val.jsonl --quiet
for f in chat.json train.safetensors val.safetensors; do
    cmp -s chat1/$f chat2/$f || { echo "FAIL: prep --chat -np 2 wrote another $f"; fail=1; }
done
echo "prep --chat: one process and -np 2 wrote the same chat.json, train and val files"
TRAIN=chat1 VAL=chat1 job prepped lora 20 && "$TANDEM" finetune prepped.json --quiet
compare "LoRA: data from JSON Lines  vs  prepared by prep --chat" lora1 prepped

# 2. resume
job res lora 20
"$TANDEM" finetune res.json --quiet --stop-at 10
"$TANDEM" finetune res.json --quiet --resume
compare "LoRA: uninterrupted  vs  stopped at 10 and resumed" lora1 res
# resuming with another alpha would train another function from the checkpoint: refused
job resa lora 20
"$TANDEM" finetune resa.json --quiet --stop-at 10
sed -i 's/"alpha": 8/"alpha": 64/' resa.json
rc=0
"$TANDEM" finetune resa.json --quiet --resume > resa.txt 2>&1 || rc=$?
if [ $rc -eq 2 ] && grep -q "its adapter has alpha 8, the job's 64" resa.txt && [ ! -e resa/step_00000020 ]; then
    echo "ok: resume with another alpha: $(grep -m1 alpha resa.txt)"
else
    echo "FAIL: resume with another alpha: rc $rc: $(cat resa.txt)"
    fail=1
fi

# 3. lineage
before=$(sha256sum "$BASE/model.safetensors" | cut -c1-64)
"$TANDEM" merge lora1/step_00000020 --out merged > /dev/null
# the adapter unmerged on its base computes what the merged checkpoint does
"$TANDEM" eval --model "$BASE" --adapter lora1/step_00000020 --data data --seq-len 32 \
    --batches 4 2> /dev/null > e1.txt
"$TANDEM" eval --model merged --data data --seq-len 32 --batches 4 2> /dev/null > e2.txt
l1=$(sed 's/.*loss \([0-9.]*\).*/\1/' e1.txt) l2=$(sed 's/.*loss \([0-9.]*\).*/\1/' e2.txt)
echo "pretraining val loss: base + adapter $l1, merged $l2"
awk -v a="$l1" -v b="$l2" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(a != "" && d < 1e-5) }' ||
    { echo "FAIL: base + adapter and merged differ"; fail=1; }
BASE_OF=$W/merged job ft2 full 5
"$TANDEM" finetune ft2.json --quiet
"$TANDEM" show ft2/step_00000005 | tee show.txt
grep -q "lineage (oldest first, 4 entries)" show.txt || { echo "FAIL: expected 4 lineage entries"; fail=1; }
for want in "tandem train" "tandem finetune (lora)" "tandem merge" "tandem finetune (full)"; do
    grep -q "$want" show.txt || { echo "FAIL: lineage lacks $want"; fail=1; }
done
after=$(sha256sum "$BASE/model.safetensors" | cut -c1-64)
[ "$before" = "$after" ] && echo "base weights' sha256 unchanged by LoRA: $after" ||
    { echo "FAIL: the base's weights changed"; fail=1; }

# 4. bad input
bad() { # label expected-message-part job-file
    local out rc=0
    out=$("$TANDEM" finetune "$3" --quiet 2>&1) || rc=$?
    if [ $rc -ne 2 ] || ! grep -q -- "$2" <<< "$out" || [ -n "$(ls bad 2> /dev/null)" ]; then
        echo "FAIL: $1: rc $rc, wanted 2 and \"$2\"; got: $out"
        fail=1
    else
        echo "ok: $1: $(grep -m1 -- "$2" <<< "$out")"
    fi
    rm -rf bad
}
badjob() { # file data-file [lora-json]
    cat > "$1" <<JOB
{"finetune": {"base": "$BASE", "method": "lora", "lora": ${3:-{\}}},
 "data": {"train": "$2", "seq_len": 32}, "train": {"batch_size": 2, "steps": 2},
 "checkpoint": {"dir": "bad"}, "device": "cpu"}
JOB
}
{ head -3 skill/train.jsonl; echo '{"messages": [{"role": "user", "content": "x"}'; } > broken.jsonl
badjob b1.json broken.jsonl && bad "malformed JSONL" "broken.jsonl:4: not valid JSON" b1.json
{ head -2 skill/train.jsonl; echo '{"messages": [{"role": "user", "content": "hi"}]}'; } > noasst.jsonl
badjob b2.json noasst.jsonl && bad "no assistant turn" "noasst.jsonl:3: the conversation has no assistant turn" b2.json
badjob b3.json skill/train.jsonl '{"target_modules": ["qq_proj"]}'
bad "unknown target" '"qq_proj" is not a matrix of a llama model' b3.json
badjob b4.json skill/train.jsonl '{"r": 0}' && bad "rank 0" "the rank must be at least 1" b4.json
badjob b5.json skill/train.jsonl '{"r": 4096}' && bad "rank too large" "at most 32" b5.json
sed 's/"hidden_size": 32/"hidden_size": 48/; s/"dir": "run"/"dir": "run48"/' job.json > job48.json
"$TANDEM" train job48.json --quiet 2> /dev/null
if "$TANDEM" merge lora1/step_00000020 --out bad --base run48/step_00000002 > m.txt 2>&1; then
    echo "FAIL: merging an adapter into another base succeeded"; fail=1
else
    grep -q "made for another base" m.txt && echo "ok: adapter for another base: $(grep -m1 'another base' m.txt)" ||
        { echo "FAIL: adapter for another base: $(cat m.txt)"; fail=1; }
    [ ! -e bad ] || { echo "FAIL: merge wrote bad/"; fail=1; }
fi
mkdir -p notadapter
if "$TANDEM" merge notadapter --out bad > m.txt 2>&1 ||
    ! grep -q "notadapter has no adapter_config.json" m.txt || [ -e bad ]; then
    echo "FAIL: merge of a directory that is no adapter: $(cat m.txt)"
    fail=1
else
    echo "ok: merge of a directory that is no adapter: $(grep -m1 adapter_config m.txt)"
fi
badjob b6.json skill/train.jsonl '{"dropout": 1}' && bad "dropout 1" "dropout: 1 is outside" b6.json
# prep --chat refuses what it cannot read, exit 2, writing nothing
for c in "missing.jsonl|no such file" "broken.jsonl|broken.jsonl:4: not valid JSON"; do
    rc=0
    "$TANDEM" prep --chat --tokenizer "$BASE" --out chat-bad "${c%%|*}" 2> pc.err || rc=$?
    if [ $rc -eq 2 ] && grep -q "${c#*|}" pc.err && [ ! -e chat-bad ]; then
        echo "ok: prep --chat ${c%%|*}: $(head -1 pc.err)"
    else
        echo "FAIL: prep --chat ${c%%|*}: rc $rc, $(cat pc.err)"; fail=1
    fi
done
# chat data prepared with another tokenizer
"$TANDEM" prep --out other --quiet --vocab-size 270 --delimiter % /usr/share/games/fortunes/fortunes
"$TANDEM" prep --chat --tokenizer other/tokenizer.json --out chat-other skill/train.jsonl --quiet
badjob b7.json chat-other && bad "prepared with another tokenizer" "tokenized with another tokenizer" b7.json
# overlong conversations are counted and said, not an error
python3 - > long.jsonl <<'EOF'
import json
for i in range(8):
    n = 3 if i % 2 else 60
    print(json.dumps({"messages": [{"role": "user", "content": "Reverse: " + " ".join("ab" * n)},
                                   {"role": "assistant", "content": "x"}]}))
EOF
badjob b6.json long.jsonl
"$TANDEM" finetune b6.json 2> long.err > /dev/null || true
grep -q "4 conversations longer than data.seq_len + 1 = 33 tokens dropped" long.err &&
    echo "ok: overlong: $(grep -m1 'longer than' long.err)" ||
    { echo "FAIL: overlong conversations: $(cat long.err)"; fail=1; }
exit $fail
