#!/usr/bin/env bash
# Many LoRA adapters on one base through the gateway (ctest labels mpi, e2e):
#   1. three adapters (different targets and ranks) fine-tuned on one small base, and each
#      merged into a full checkpoint;
#   2. `serve --model BASE --adapter a=.. --adapter b=.. --adapter c=..`: /v1/models and
#      /api/tags list the four names, /api/show gives an adapter's details; 48 concurrent
#      greedy chat requests spread over the four names answer exactly what the base and each
#      merged checkpoint answer when served alone; /metrics counts engine steps that mixed
#      requests of different adapters (> 0); the dry run lists the adapters' bytes;
#   3. the same 48 on a tensor-parallel replica (mpirun -np 2 serve --tp 2): the same answers;
#      `generate --adapter` continues a prompt as the merged checkpoint does;
#   4. bad input, each exit 2 naming the problem: --adapter without NAME=, a name taken by
#      the base, a directory that holds no adapter or does not exist, a name with a quote,
#      an adapter trained on other weights (sha256 of its parent), --adapter with
#      --prompts-file, adapters the loader refuses (DoRA, a rank the tensors do not have)
#      with --dry-run and online (no server starts);
#   5. two replicas offer adapter "a" with different weights: the router keeps the name on
#      the first (logged), and every request for "a" gets the first one's answers.
# Usage: test_serve_adapters.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
PIDS=
trap 'kill $PIDS 2> /dev/null || true; rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
"$TANDEM" prep --out data --quiet --vocab-size 300 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes
cat > job.json <<JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 8, "steps": 120, "lr": 5e-3, "warmup": 10, "seed": 1},
 "checkpoint": {"dir": "run", "every": 120, "keep": 1}, "device": "cpu"}
JOB
"$TANDEM" train job.json --quiet 2> /dev/null
BASE=$W/run/step_00000120
python3 "$HERE/../../scripts/skill_data.py" skill --train 200 --val 16 > /dev/null
fail=0

# 1. three adapters and their merged checkpoints
lora() { # name r targets seed
    cat > $1.json <<JOB
{"finetune": {"base": "$BASE", "method": "lora",
              "lora": {"r": $2, "alpha": $((2 * $2)), "target_modules": [$3]}},
 "data": {"train": "skill/train.jsonl", "seq_len": 48},
 "train": {"batch_size": 8, "steps": 40, "lr": 1e-2, "warmup": 4, "seed": $4},
 "checkpoint": {"dir": "$1", "every": 40, "keep": 1}, "device": "cpu"}
JOB
    "$TANDEM" finetune $1.json --quiet 2> /dev/null
    "$TANDEM" merge $1/step_00000040 --out $1-merged > /dev/null 2>&1
}
lora a 4 '"q_proj", "v_proj", "down_proj"' 1
lora b 2 '"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"' 2
lora c 3 '"o_proj", "gate_proj", "up_proj"' 3
ADAPTERS=(--adapter a=a/step_00000040 --adapter b=b/step_00000040 --adapter c=c/step_00000040)

start() { # log, then the serve command line; sets URL and PIDS
    local log=$1
    shift
    "$@" 2> "$log" &
    PIDS="$PIDS $!"
    for _ in $(seq 200); do grep -q "listening on http" "$log" && break; sleep 0.1; done
    URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log")
    [ -n "$URL" ] || URL=$(sed -n 's|.*listening on port \([0-9]*\).*|http://127.0.0.1:\1|p' "$log")
    [ -n "$URL" ] || { cat "$log"; echo "FAIL: no server"; exit 1; }
}
stop() {
    kill $PIDS 2> /dev/null || true
    wait $PIDS 2> /dev/null || true
    PIDS=
}
ask() { # URL out.json model... : of 48 greedy chat requests over base a b c (i % 4), those
        # for the models given, all at once
    python3 - "$@" <<'PY'
import json, sys, threading, time, urllib.request
url, out, served = sys.argv[1], sys.argv[2], sys.argv[3:]
names = ["base", "a", "b", "c"]
val = [json.loads(l) for l in open("skill/val.jsonl")]
for _ in range(100):  # every name registered
    listed = {m["id"] for m in json.load(urllib.request.urlopen(url + "/v1/models", timeout=30))["data"]}
    if set(served) <= listed:
        break
    time.sleep(0.1)
res = {}
def one(i):
    model = names[i % 4]
    conv = val[(i // 4) % len(val)]["messages"]
    body = {"model": model, "messages": [m for m in conv if m["role"] != "assistant"],
            "temperature": 0, "max_tokens": 12}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    r = json.load(urllib.request.urlopen(req, timeout=120))
    res[str(i)] = [model, r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]]
threads = [threading.Thread(target=one, args=(i,)) for i in range(48) if names[i % 4] in served]
for t in threads: t.start()
for t in threads: t.join()
json.dump(res, open(out, "w"), indent=1)
PY
}

# 2. one replica: the base and three adapters
"$TANDEM" serve --model "$BASE" --name base "${ADAPTERS[@]}" --dry-run > plan.txt 2> /dev/null
grep "adapters" plan.txt | sed 's/^ */dry run: /'
grep -q "3 LoRA adapters on the one base" plan.txt || { echo "FAIL: the dry run lists no adapters"; fail=1; }
start serve.log "$TANDEM" serve --model "$BASE" --name base "${ADAPTERS[@]}" --http 127.0.0.1:0
ask "$URL" multi.json base a b c
curl -s "$URL/v1/models" > models.json
curl -s "$URL/api/tags" > tags.json
curl -s "$URL/api/show" -d '{"model": "b"}' > show.json
for _ in $(seq 50); do # the counters come with the replica's heartbeats (every second)
    curl -s "$URL/metrics" > metrics.txt
    grep -q '^tandem_engine_steps_total{.*} [1-9]' metrics.txt && break
    sleep 0.1
done
stop
python3 - <<'PY' || fail=1
import json
ids = sorted(m["id"] for m in json.load(open("models.json"))["data"])
tags = sorted(m["name"] for m in json.load(open("tags.json"))["models"])
print("/v1/models:", ids, " /api/tags:", tags)
show = json.load(open("show.json"))
print("/api/show b: parent_model", show["details"]["parent_model"], " adapter",
      json.dumps(show["model_info"]["adapter"]))
ok = ids == ["a", "b", "base", "c"] and [t.split(":")[0] for t in tags] == ["a", "b", "base", "c"]
ok = ok and show["details"]["parent_model"] == "base" and show["model_info"]["adapter"]["r"] == 2
raise SystemExit(0 if ok else 1)
PY
mixed=$(sed -n 's/^tandem_engine_mixed_steps_total{[^}]*} \([0-9]*\)/\1/p' metrics.txt)
steps=$(sed -n 's/^tandem_engine_steps_total{[^}]*} \([0-9]*\)/\1/p' metrics.txt)
echo "/metrics: $steps engine steps, ${mixed:-none} of them held requests of different models"
[ "${mixed:-0}" -gt 0 ] || { echo "FAIL: no step mixed adapters"; fail=1; }
grep -q "held requests of different models" serve.log || { echo "FAIL: no summary log line"; fail=1; }
# each model alone: the base, and each merged checkpoint under its adapter's name
for m in base a b c; do
    ck=$BASE
    [ $m = base ] || ck=$m-merged
    start alone-$m.log "$TANDEM" serve --model "$ck" --name $m --http 127.0.0.1:0
    ask "$URL" alone-$m.json $m
    stop
done
compare() { # label file
    python3 - "$1" "$2" <<'PY'
import json, sys
label, got = sys.argv[1], json.load(open(sys.argv[2]))
want = {}
for m in ["base", "a", "b", "c"]:
    want.update(json.load(open(f"alone-{m}.json")))
same = sum(got[k] == want[k] for k in want)
per = {}
for k, (m, _, _) in want.items():
    per.setdefault(m, [0, 0])
    per[m][0] += got[k] == want[k]
    per[m][1] += 1
print(f"{label}: {same}/{len(want)} answers identical to the model served alone "
      + ", ".join(f"{m} {a}/{b}" for m, (a, b) in sorted(per.items())))
for k in want:
    if got[k] != want[k]:
        print("  differs:", k, got[k], "vs", want[k])
distinct = len({tuple(v[1] for k, v in sorted(want.items()) if v[0] == m) for m in per})
print(f"  the four models answer differently: {distinct} distinct answer sets")
raise SystemExit(0 if same == len(want) == 48 and distinct == 4 else 1)
PY
}
compare "base + 3 adapters in one replica (48 concurrent)" multi.json || fail=1

# 3. a tensor-parallel replica cuts the adapters with its matrices
start tp.log mpirun -np 2 "$TANDEM" serve --model "$BASE" --name base --tp 2 "${ADAPTERS[@]}" \
    --http 127.0.0.1:0
ask "$URL" tp.json base a b c
stop
compare "the same on a --tp 2 replica" tp.json || fail=1

# generate --adapter: the adapter unmerged gives the merged checkpoint's tokens
g1=$("$TANDEM" generate --model "$BASE" --adapter b/step_00000040 --prompt "Reverse: a b c" \
    --temperature 0 --max-new-tokens 16 2> /dev/null)
g2=$("$TANDEM" generate --model b-merged --prompt "Reverse: a b c" --temperature 0 \
    --max-new-tokens 16 2> /dev/null)
g0=$("$TANDEM" generate --model "$BASE" --prompt "Reverse: a b c" --temperature 0 \
    --max-new-tokens 16 2> /dev/null)
echo "generate --adapter: $(printf %q "$g1")"
[ "$g1" = "$g2" ] && [ "$g1" != "$g0" ] ||
    { echo "FAIL: generate --adapter differs from the merged checkpoint (or equals the base)"; fail=1; }

# 4. bad input
bad() { # label expected-text args...
    local label=$1 want=$2
    shift 2
    set +e
    "$TANDEM" serve "$@" > bad.out 2> bad.err
    local rc=$?
    set -e
    if [ $rc -eq 2 ] && grep -q -- "$want" bad.err; then
        echo "PASS $label: $(grep -m1 -- "$want" bad.err | cut -c1-150)"
    else
        echo "FAIL $label: exit $rc"
        cat bad.err
        fail=1
    fi
}
bad no_name "NAME=DIR" --model "$BASE" --adapter a/step_00000040 --dry-run
bad name_taken "is taken" --model "$BASE" --name base --adapter base=a/step_00000040 --dry-run
bad name_twice "is taken" --model "$BASE" --adapter x=a/step_00000040 --adapter x=b/step_00000040 --dry-run
bad not_adapter "no adapter_config.json" --model "$BASE" --adapter x=run --dry-run
bad other_base "made for another base" --model a-merged --adapter b=b/step_00000040 --dry-run
bad prompts_file "prompts file" --model "$BASE" --adapter a=a/step_00000040 --prompts-file job.json
bad missing_dir "no such directory" --model "$BASE" --adapter x=nowhere --dry-run
bad odd_name "the name must be" --model "$BASE" --adapter 'q"x=a/step_00000040' --dry-run
# adapters the loader refuses: each is exit 2 with its reason, before serving anything
mkdir -p broken
for kind in dora rank; do
    cp -r a/step_00000040 broken/$kind
    python3 - broken/$kind/adapter_config.json $kind <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
if sys.argv[2] == "dora": c["use_dora"] = True
else: c["r"] = 3  # the tensors were trained with r 4
json.dump(c, open(sys.argv[1], "w"))
PY
    (cd broken/$kind && sha256sum adapter_config.json adapter_model.safetensors trainer_state.json \
        > SHA256SUMS 2> /dev/null || true)
done
bad dora_dry "use_dora adapters are not supported" --model "$BASE" --adapter x=broken/dora --no-verify --dry-run
bad dora_http "use_dora adapters are not supported" --model "$BASE" --adapter a=a/step_00000040 --adapter x=broken/dora \
    --no-verify --http 127.0.0.1:0
bad rank_http "lora_A" --model "$BASE" --adapter x=broken/rank --no-verify --http 127.0.0.1:0
grep -q "listening" bad.err && { echo "FAIL: the server listened with a broken adapter"; fail=1; }

# 5. two replicas offering one adapter name with different weights: the router routes the
#    name only to the first (and says so); the second still serves its base
# ports below Linux's ephemeral range (32768-60999), where an outgoing connection may hold one
PORT=$((20000 + RANDOM % 12000))
FRONT=tcp://127.0.0.1:$PORT
BACK=tcp://127.0.0.1:$((PORT + 1))
"$TANDEM" router --front $FRONT --back $BACK 2> router.log &
PIDS="$PIDS $!"
"$TANDEM" serve --model "$BASE" --name base --adapter a=a/step_00000040 --router $BACK 2> r1.log &
PIDS="$PIDS $!"
for _ in $(seq 300); do grep -q "registered" router.log && break; sleep 0.1; done
grep -q "registered" router.log || { echo "FAIL: no replica registered"; cat router.log r1.log; fail=1; }
"$TANDEM" serve --model "$BASE" --name base --adapter a=c/step_00000040 --router $BACK 2> r2.log &
PIDS="$PIDS $!"
start gw.log "$TANDEM" gateway --listen 127.0.0.1:0 --router $FRONT
for _ in $(seq 300); do [ "$(grep -c registered router.log)" -ge 2 ] && break; sleep 0.1; done
grep "other weights" router.log | sed 's/^/router log: /' | cut -c1-200 || true
grep -q "other weights" router.log ||
    { echo "FAIL: the router took a different adapter a"; cat router.log r2.log; fail=1; }
ask "$URL" two.json base a
python3 - <<'PY' || fail=1
import json
got, want = json.load(open("two.json")), json.load(open("alone-a.json"))
same = sum(got[k] == want[k] for k in want)
print(f"adapter a on two replicas, one with other weights: {same}/{len(want)} answers from the right one")
raise SystemExit(0 if same == len(want) == 12 else 1)
PY
stop
exit $fail
