#!/usr/bin/env bash
# Logit distillation end to end on throwaway models (ctest labels mpi, e2e):
#   1. alpha 1 (the data's cross-entropy only) trains exactly as `tandem train` does: the
#      teacher's forward changes nothing it should not
#   2. data parallelism: 20 steps at -np 2 match one rank within 1e-5 relative at every step,
#      for a student from a config on token shards (forward KL, top-k teacher) and for one
#      from a checkpoint on conversations (reverse KL); the KD part falls over the run
#   3. lineage: the student's checkpoint names the teacher (with its own lineage) and the
#      method
#   4. bad input, each exit 2 with a message naming the problem and no checkpoint written:
#      vocabularies that differ (by size, and by tokens at the same size), a teacher that is
#      missing or corrupt, tau <= 0, alpha outside [0, 1], a job without a distill block
# Usage: test_distill.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64
# a teacher that has learnt something: 40 more steps of the tiny model's job
sed 's/"steps": 2,/"steps": 40,/; s/"dir": "run", "every": 2/"dir": "teacher", "every": 40/' \
    job.json > teacher.json
"$TANDEM" train teacher.json --quiet 2> /dev/null
TEACHER=$PWD/teacher/step_00000040
python3 "$HERE/../../scripts/skill_data.py" skill --train 120 --val 16 > /dev/null

student() { # name: a student from a config (hidden 16), on the shards
    cat > "$1.json" <<JOB
{"model": {"arch": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 32, "vocab_size": ${VOCAB:-300},
           "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 8, "steps": ${STEPS:-20}, "lr": 3e-3, "seed": 3, "eval_every": 10},
 ${DISTILL-\"distill\": {\"teacher\": \"$TEACHER\", \"alpha\": ${ALPHA:-0.3}, \"tau\": ${TAU:-2}, \"topk\": 16\},}
 "checkpoint": {"dir": "$1", "every": 10, "keep": 2}, "device": "cpu"}
JOB
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
kds() { grep '"kd"' "$1/metrics.jsonl" | sed 's/.*"kd": \([0-9.]*\).*/\1/'; }
fail=0
compare() { # label dirA dirB tolerance
    echo "$1"
    paste <(losses "$2") <(losses "$3") | awk 'NR % 5 == 1 { printf "   %4d  %s  %s\n", NR, $1, $2 }'
    if ! paste <(losses "$2") <(losses "$3") |
        awk -v tol="$4" '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d;
                           if (d > tol || NF != 2) bad++ }
             END { printf "   max relative difference %.2e over %d steps\n", m, NR;
                   exit (bad || NR != 20) ? 1 : 0 }'; then
        echo "   FAIL: differs by more than $4 relative (or not 20 steps)"
        fail=1
    fi
}

# 1. alpha 1: plain training, step for step
ALPHA=1 student a1 && "$TANDEM" distill a1.json --quiet
DISTILL= student plain && "$TANDEM" train plain.json --quiet 2> /dev/null
compare "alpha 1 distill vs train (must be equal)" a1 plain 0

# 2. data parallelism, student from a config
student kd1 && "$TANDEM" distill kd1.json --quiet
student kd2 && mpirun -np 2 "$TANDEM" distill kd2.json --quiet
compare "distill from a config, forward KL, top-16: np=1 vs np=2 (4+4)" kd1 kd2 1e-5
echo "   KD part: step 1 $(kds kd1 | head -1), step 20 $(kds kd1 | tail -1)"
if ! awk -v a="$(kds kd1 | head -1)" -v b="$(kds kd1 | tail -1)" 'BEGIN { exit !(b < a) }'; then
    echo "   FAIL: the KD part did not fall"
    fail=1
fi
# a student from a checkpoint (a one-step hidden-16 model of the same tokenizer) on chats
DISTILL= STEPS=1 student sbase && "$TANDEM" train sbase.json --quiet 2> /dev/null
ftstudent() {
    cat > "$1.json" <<JOB
{"finetune": {"base": "$PWD/sbase/step_00000001", "method": "full"},
 "data": {"train": "skill/train.jsonl", "val": "skill/val.jsonl", "seq_len": 48},
 "train": {"batch_size": 8, "steps": 20, "lr": 3e-3, "seed": 5, "eval_every": 10},
 "distill": {"teacher": "$TEACHER", "alpha": 0.5, "tau": 1.5, "kl": "reverse"},
 "checkpoint": {"dir": "$1", "every": 10, "keep": 2}, "device": "cpu"}
JOB
}
ftstudent ft1 && "$TANDEM" distill ft1.json --quiet
ftstudent ft2 && mpirun -np 2 "$TANDEM" distill ft2.json --quiet
compare "distill from a checkpoint on conversations, reverse KL: np=1 vs np=2 (4+4)" ft1 ft2 1e-5

# 3. lineage
python3 - "$TEACHER" << 'EOF' || fail=1
import json, sys
st = json.load(open("kd2/step_00000020/trainer_state.json"))["lineage"]
d = st.get("distill", {})
ok = (st["produced_by"] == "tandem distill" and d.get("teacher") == sys.argv[1]
      and d.get("method") == "logits" and d.get("kl") == "forward" and d.get("topk") == 16
      and d.get("teacher_lineage", [{}])[0].get("produced_by") == "tandem train")
print("lineage: produced_by %s, teacher %s, kl %s, top-k %s: %s"
      % (st["produced_by"], d.get("teacher"), d.get("kl"), d.get("topk"), "ok" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF

# 4. bad input
bad() { # label expected-message-part job-file
    local out rc=0
    out=$("$TANDEM" distill "$3" 2>&1) || rc=$?
    if [ $rc -ne 2 ] || ! grep -q -- "$2" <<< "$out" || [ -n "$(ls bad 2> /dev/null)" ]; then
        echo "FAIL: $1: exit $rc, output: $out"
        fail=1
    else
        echo "bad input ($1): exit 2: $(grep -m1 -- "$2" <<< "$out" | cut -c1-150)"
    fi
    rm -rf bad
}
VOCAB=310 student bad && mv bad.json b1.json
bad "vocabulary sizes differ" "the teacher's vocabulary has 300 entries, the student's 310" b1.json
# the same corpus with another tokenizer (vocab 280) but model vocab_size 300 in both
"$TANDEM" prep --out data280 --quiet --vocab-size 280 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes
sed 's/"train": "data"/"train": "data280"/; s/"dir": "run", "every": 2/"dir": "t280", "every": 2/' \
    job.json > t280.json
"$TANDEM" train t280.json --quiet 2> /dev/null
TEACHER=$PWD/t280/step_00000002 student bad && mv bad.json b2.json
bad "other tokenizer, same vocab_size" "has another tokenizer than the student" b2.json
TEACHER=$PWD/nothere student bad && mv bad.json b3.json
bad "teacher missing" "nothere is not a checkpoint directory" b3.json
cp -r "$TEACHER" corrupt
printf 'X' | dd of=corrupt/model.safetensors bs=1 seek=200 conv=notrunc 2> /dev/null
TEACHER=$PWD/corrupt student bad && mv bad.json b4.json
bad "teacher corrupt" "model.safetensors" b4.json
TAU=0 student bad && mv bad.json b5.json
bad "tau 0" "the temperature must be above 0" b5.json
TAU=-1 student bad && mv bad.json b6.json
bad "tau -1" "the temperature must be above 0" b6.json
ALPHA=1.5 student bad && mv bad.json b7.json
bad "alpha 1.5" "alpha: 1.5 is outside \[0, 1\]" b7.json
ALPHA=-0.1 student bad && mv bad.json b8.json
bad "alpha -0.1" "alpha: -0.1 is outside \[0, 1\]" b8.json
DISTILL= student bad && mv bad.json b9.json
bad "no distill block" 'has no "distill" block' b9.json
TEACHER=$PWD/teacher/step_00000040
# a teacher inside checkpoint.dir (whose rotation would delete it)
sed 's/"dir": "bad"/"dir": "teacher"/' b5.json | sed 's/"tau": 0/"tau": 2/' > b10.json
bad "teacher inside checkpoint.dir" "lies inside checkpoint.dir" b10.json
# a LoRA adapter as the teacher
cat > lora.json << JOB
{"finetune": {"base": "$TINY_CK", "method": "lora", "lora": {"r": 2}},
 "data": {"train": "skill/train.jsonl", "seq_len": 48},
 "train": {"batch_size": 4, "steps": 1}, "checkpoint": {"dir": "lora"}, "device": "cpu"}
JOB
"$TANDEM" finetune lora.json --quiet 2> /dev/null
TEACHER=$PWD/lora/step_00000001 student bad && mv bad.json b11.json
TEACHER=$PWD/teacher/step_00000040
bad "a LoRA adapter as the teacher" "is a LoRA adapter, not a model" b11.json
TAU=0.001 student bad && mv bad.json b12.json
bad "tau 0.001" "too small to compute" b12.json
# resume: the distill block must stay as the run began, and a plain train cannot continue it
sed 's/"alpha": 0.3/"alpha": 0.4/' kd1.json > kd1b.json
rc=0
"$TANDEM" distill kd1b.json --resume > rs.txt 2>&1 || rc=$?
echo "resume with another alpha: exit $rc: $(grep -o 'cannot resume.*' rs.txt | cut -c1-120)"
[ $rc -eq 2 ] && grep -q "distilled with alpha 0.3 (the job now says 0.4)" rs.txt || {
    echo "FAIL: resume with another alpha"
    fail=1
}
DISTILL= student kd1 && mv kd1.json kd1plain.json
rc=0
"$TANDEM" train kd1plain.json --resume > rs.txt 2>&1 || rc=$?
echo "train --resume of a distilled run: exit $rc: $(grep -o 'cannot resume.*' rs.txt | cut -c1-120)"
[ $rc -eq 2 ] && grep -q "it was trained by tandem distill" rs.txt || {
    echo "FAIL: train --resume of a distilled run"
    fail=1
}
# and tandem train refuses a distill job instead of ignoring the block
rc=0
"$TANDEM" train kd2.json > tr.txt 2>&1 || rc=$?
if [ $rc -ne 2 ] || ! grep -q "run it with tandem distill" tr.txt; then
    echo "FAIL: train accepted a distill job (exit $rc)"
    fail=1
fi
exit $fail
