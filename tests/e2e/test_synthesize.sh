#!/usr/bin/env bash
# tandem synthesize end to end on a throwaway model (ctest label e2e):
#   1. n answers per prompt, written as conversations that tandem finetune trains on; the
#      same seed writes the same bytes
#   2. --answer-key keeps exactly the answers equal to the key (the keys made from a first
#      run's greedy answers: one right, one wrong), --answer-after compares the text after it
#   3. --checker: exit 0 keeps, 1 rejects (a checker keeping even prompt indexes keeps
#      exactly those); a checker that fails (exit 3) or hangs (past --check-timeout) stops
#      the run with exit 2, a message naming it, no output file and no process left
#   4. bad prompts files and a missing model: exit 2, nothing written
# Usage: test_synthesize.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 128
# a teacher that ends its turns: the tiny model fine-tuned on the list-reversal chats
python3 "$HERE/../../scripts/skill_data.py" skill --train 200 --val 8 > /dev/null
cat > teach.json << JOB
{"finetune": {"base": "$TINY_CK", "method": "full"},
 "data": {"train": "skill/train.jsonl", "seq_len": 48},
 "train": {"batch_size": 8, "steps": 60, "lr": 1e-2, "warmup": 5},
 "checkpoint": {"dir": "teacher"}, "device": "cpu"}
JOB
"$TANDEM" finetune teach.json --quiet 2> /dev/null
TINY_CK=$PWD/teacher/step_00000060
fail=0
check() { # label condition...
    local label=$1
    shift
    if "$@"; then echo "ok: $label"; else
        echo "FAIL: $label"
        fail=1
    fi
}
# answers end at the first comma (--stop) or the end of the turn
syn() { "$TANDEM" synthesize --model "$TINY_CK" --max-tokens 24 --stop , "$@"; }
printf '%s\n' '{"prompt": "Reverse:\na,b,c"}' '{"prompt": "Reverse:\nq,w,e,r"}' \
    '{"messages": [{"role": "system", "content": "Lists."}, {"role": "user", "content": "Reverse:\nx,y,z"}]}' \
    '{"prompt": "Reverse:\nm,n,o,p"}' > p.jsonl

# 1. n answers, as conversations; deterministic
syn --prompts p.jsonl --out a.jsonl --n 3 --seed 7 --quiet
syn --prompts p.jsonl --out b.jsonl --n 3 --seed 7 --quiet
python3 - << 'EOF' || fail=1
import json
rows = [json.loads(l) for l in open("a.jsonl")]
roles = [[m["role"] for m in r["messages"]] for r in rows]
print("answers written: %d of 12 samples (those not cut at --max-tokens)" % len(rows))
assert len(rows) >= 1
assert all(r[-1] == "assistant" for r in roles), roles
assert all(r[:-1] in (["user"], ["system", "user"]) for r in roles), roles
EOF
check "same seed, same bytes" cmp -s a.jsonl b.jsonl
# the answers train: a 2-step fine-tune on them (when any were kept)
syn --prompts p.jsonl --out g.jsonl --n 4 --max-tokens 24 --temperature 0 --quiet
if [ -s g.jsonl ]; then
    cat > ft.json << JOB
{"finetune": {"base": "$TINY_CK", "method": "full"},
 "data": {"train": "g.jsonl", "seq_len": 63, "overlong": "truncate"},
 "train": {"batch_size": 2, "steps": 2, "lr": 1e-3},
 "checkpoint": {"dir": "ft"}, "device": "cpu"}
JOB
    check "tandem finetune trains on the output" "$TANDEM" finetune ft.json --quiet
    check "the student's lineage names the teacher that wrote its data" python3 -c "
import json, sys
d = json.load(open('ft/step_00000002/trainer_state.json'))['lineage']['data']['synthesized']
assert d['produced_by'] == 'tandem synthesize' and d['teacher'] == '$TINY_CK', d
assert d['n'] == 4 and d['kept'] + d['rejected'] + d['cut'] == 16, d"
fi

# prompts holding bytes that are not UTF-8: the output is valid UTF-8 all the same
printf '{"prompt": "Reverse:\\na,\xff,\xc3"}\n' > bin.jsonl
syn --prompts bin.jsonl --out bin-out.jsonl --temperature 0 --quiet
check "output is valid UTF-8 for a prompt that is not" python3 -c "
open('bin-out.jsonl', 'rb').read().decode('utf-8')"

# 2. exact match: greedy answers of a first run become the keys
syn --prompts p.jsonl --out all.jsonl --temperature 0 --max-tokens 30 --quiet
python3 - << 'EOF'
import json
rows = [json.loads(l) for l in open("all.jsonl")]
prompts = [json.loads(l) for l in open("p.jsonl")]
ans = {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in rows}
with open("keyed.jsonl", "w") as f:
    for i, p in enumerate(prompts):
        q = p.get("prompt") or p["messages"][-1]["content"]
        a = ans.get(q, "")
        # the first prompt's key is its answer, the others' a wrong one
        p["answer"] = a if i == 0 else a + "x"
        p["tail"] = a[-3:] if i == 0 else "zzz"
        f.write(json.dumps(p) + "\n")
print("keys from greedy answers: %d prompts answered" % len(rows))
EOF
syn --prompts keyed.jsonl --out k.jsonl --temperature 0 --max-tokens 30 --answer-key answer --quiet
check "--answer-key keeps the one right answer" [ "$(wc -l < k.jsonl)" = 1 ]
# with --answer-after only the text after its last occurrence counts: the first prompt's
# answer A followed by nothing matches the key "" after the marker A; a marker that does
# not occur rejects
python3 - << 'EOF'
import json
rows = [json.loads(l) for l in open("keyed.jsonl")]
open("marker.txt", "w").write(rows[0]["answer"])
with open("after.jsonl", "w") as f:
    for i, r in enumerate(rows):
        r["rest"] = "" if i == 0 else "zzz"
        f.write(json.dumps(r) + "\n")
EOF
syn --prompts after.jsonl --out t.jsonl --temperature 0 --answer-key rest \
    --answer-after "$(cat marker.txt)" --quiet
check "--answer-after compares the text after the marker" [ "$(wc -l < t.jsonl)" = 1 ]
syn --prompts after.jsonl --out t2.jsonl --temperature 0 --answer-key rest \
    --answer-after "no such marker" --quiet 2> /dev/null
check "--answer-after: a marker that does not occur rejects" [ ! -s t2.jsonl ]

# 3. checker scripts
cat > even.sh << 'EOF'
#!/bin/sh
python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["index"] % 2 == 0 else 1)'
EOF
cat > broken.sh << 'EOF'
#!/bin/sh
echo "cannot parse the answer" >&2
exit 3
EOF
cat > hang.sh << 'EOF'
#!/bin/sh
sleep 4242
EOF
chmod +x even.sh broken.sh hang.sh
syn --prompts p.jsonl --out c.jsonl --n 2 --temperature 0 --max-tokens 30 --checker ./even.sh > c.txt
grep synthesize: c.txt | tail -1
check "checker keeps the even prompts' answers only" python3 -c "
import json
rows = [json.loads(l) for l in open('c.jsonl')]
qs = [r['messages'][-2]['content'] for r in rows]
assert set(qs) <= {'Reverse:\\na,b,c', 'Reverse:\\nx,y,z'} and len(rows) >= 1, qs"
for c in "broken.sh|exit 3: cannot parse the answer|10" "hang.sh|did not finish within 1 s|1"; do
    IFS='|' read -r script msg timeout <<< "$c"
    rc=0
    rm -f bad.jsonl
    start=$(date +%s)
    syn --prompts p.jsonl --out bad.jsonl --checker "./$script" --check-timeout "$timeout" \
        --quiet 2> err.txt || rc=$?
    took=$(($(date +%s) - start))
    echo "checker $script: exit $rc in ${took} s: $(cut -c1-140 err.txt)"
    check "checker $script: exit 2, message, nothing written" \
        test $rc -eq 2 -a ! -e bad.jsonl -a "$(grep -c -- "$msg" err.txt)" -ge 1
done
check "the hung checker was killed" bash -c '! pgrep -f "slee[p] 4242" > /dev/null'
# a checker that leaves a child running: the child goes with it
cat > bg.sh << 'EOF'
#!/bin/sh
sleep 4343 &
exit 0
EOF
chmod +x bg.sh
syn --prompts p.jsonl --out bg.jsonl --checker ./bg.sh --quiet
check "a checker's background child does not outlive it" bash -c '! pgrep -f "slee[p] 4343" > /dev/null'
# SIGTERM while a checker runs: no checker left, no output
cat > slow.sh << 'EOF'
#!/bin/sh
cat > /dev/null
sleep 4444
EOF
chmod +x slow.sh
"$TANDEM" synthesize --model "$TINY_CK" --max-tokens 24 --stop , --prompts p.jsonl \
    --out term.jsonl --checker ./slow.sh --check-timeout 60 --quiet 2> /dev/null &
pid=$!
for _ in $(seq 100); do pgrep -f "slee[p] 4444" > /dev/null && break; sleep 0.1; done
kill -TERM $pid
rc=0
wait $pid || rc=$?
check "SIGTERM during a check: exit $rc, no checker left, no output" \
    bash -c "[ $rc -eq 143 ] && ! pgrep -f 'slee[p] 4444' > /dev/null && [ ! -e term.jsonl ]"

# 4. bad input
badrun() { # label message args...
    local label=$1 msg=$2 rc=0
    shift 2
    rm -f bad.jsonl
    "$TANDEM" synthesize --out bad.jsonl "$@" 2> err.txt > /dev/null || rc=$?
    echo "bad input ($label): exit $rc: $(head -1 err.txt | cut -c1-140)"
    check "$label: exit 2, nothing written" \
        test $rc -eq 2 -a ! -e bad.jsonl -a "$(grep -c -- "$msg" err.txt)" -ge 1
}
printf '%s\n' '{"prompt": "ok"}' 'not json' > p1.jsonl
badrun "malformed line" "p1.jsonl:2: not valid JSON" --model "$TINY_CK" --prompts p1.jsonl
printf '%s\n' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' > p2.jsonl
badrun "ends with the assistant" "must end with a user turn" --model "$TINY_CK" --prompts p2.jsonl
badrun "no key field" "answer-key answer: the line has no such" --model "$TINY_CK" \
    --prompts p.jsonl --answer-key answer
badrun "missing model" "nothere" --model nothere --prompts p.jsonl
cp p.jsonl same.jsonl
badrun "--out is the prompts file" "is the prompts file" --model "$TINY_CK" --prompts same.jsonl \
    --out same.jsonl
check "the prompts file is intact" cmp -s p.jsonl same.jsonl
badrun "--out exists" "already exists" --model "$TINY_CK" --prompts p.jsonl --out a.jsonl
badrun "--out in a missing directory" "does not exist" --model "$TINY_CK" --prompts p.jsonl \
    --out nodir/x.jsonl
mkdir -p adir
badrun "checker is a directory" "is a directory" --model "$TINY_CK" --prompts p.jsonl \
    --checker adir
printf '%s\n' '{"prompt": "a \u0000 b"}' > nul.jsonl
badrun "NUL in a prompt" "NUL character" --model "$TINY_CK" --prompts nul.jsonl
badrun "bad --n" "expected an integer from 1 to 1000" --model "$TINY_CK" --prompts p.jsonl --n 0
cat > lora.json << JOB
{"finetune": {"base": "$TINY_CK", "method": "lora", "lora": {"r": 2}},
 "data": {"train": "skill/train.jsonl", "seq_len": 48},
 "train": {"batch_size": 4, "steps": 1}, "checkpoint": {"dir": "lora"}, "device": "cpu"}
JOB
"$TANDEM" finetune lora.json --quiet 2> /dev/null
badrun "a LoRA adapter as the model" "is a LoRA adapter, not a model" \
    --model "$PWD/lora/step_00000001" --prompts p.jsonl
badrun "checker not executable" "not executable" --model "$TINY_CK" --prompts p.jsonl \
    --checker p.jsonl
exit $fail
