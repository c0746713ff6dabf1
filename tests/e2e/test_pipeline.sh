#!/usr/bin/env bash
# A pipeline from raw text to a served model on one command (ctest labels mpi, e2e): a
# coordinator with 2 slots hosting the router and the gateway gets `tandem submit` of
#   prep (the fortunes file) -> pretrain (mpirun -np 2, a tiny llama) -> LoRA fine-tune
#   (the reverse-the-letters skill) -> serve (the pretrained base and the adapter, one replica)
# and each stage takes the previous one's output by reference. The coordinator is killed with
# SIGKILL while pretrain runs and started again: pretrain goes on. When the serve stage is
# "serving", the official openai client asks the coordinator's gateway for a completion of
# the base and a chat completion of the fine-tune. Then the coordinator is killed with
# SIGKILL and started again: its job table is the same, the serve job is still the one
# process (no stage ran twice), its replica registers again and the gateway answers again.
# Finally a cancel of the serve stage stops the replica. Prints each stage's time.
# Usage: test_pipeline.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
. "$HERE/coord_env.sh"
need_openai

python3 "$HERE/../../scripts/skill_data.py" skill --train 300 --val 16 > /dev/null
cat > prep.json << 'JOB'
{"prep": {"inputs": ["/usr/share/games/fortunes/fortunes"], "out": "data", "delimiter": "%",
          "vocab_size": 400, "val_fraction": 0.05}}
JOB
cat > pretrain.json << 'JOB'
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 400,
           "max_position_embeddings": 64},
 "data": {"train": "FROM PREP", "seq_len": 64},
 "train": {"batch_size": 8, "steps": 300, "lr": 3e-3, "seed": 1, "eval_every": 100},
 "checkpoint": {"dir": "runs/base", "every": 100, "keep": 1}, "device": "cpu"}
JOB
cat > finetune.json << 'JOB'
{"finetune": {"base": "FROM PRETRAIN", "method": "lora",
              "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
 "data": {"train": "skill/train.jsonl", "val": "skill/val.jsonl", "seq_len": 48},
 "train": {"batch_size": 8, "steps": 20, "lr": 3e-3, "seed": 1, "eval_every": 20},
 "checkpoint": {"dir": "runs/lora", "every": 20, "keep": 1}, "device": "cpu"}
JOB
cat > serve.json << 'JOB'
{"serve": {"model": "FROM PRETRAIN", "name": "fortunes", "adapters": {"reverse": "FROM FINETUNE"},
           "max_seqs": 4}}
JOB
cat > pipeline.json << 'JOB'
{"pipeline": {"name": "fortunes", "stages": [
  {"name": "prep", "job": "prep.json"},
  {"name": "pretrain", "job": "pretrain.json", "ranks": 2, "inputs": {"data.train": "prep"}},
  {"name": "finetune", "job": "finetune.json", "inputs": {"finetune.base": "pretrain"}},
  {"name": "serve", "job": "serve.json",
   "inputs": {"serve.model": "pretrain", "serve.adapters.reverse": "finetune"}}]}}
JOB

ask() { # model kind(completion|chat) -> prints the answer, fails without one
    "$PY" - "$HTTP" "$1" "$2" << 'PY'
import sys
from openai import OpenAI
port, model, kind = sys.argv[1], sys.argv[2], sys.argv[3]
c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
if kind == "completion":
    r = c.completions.create(model=model, prompt="The meaning of life is", max_tokens=8,
                             temperature=0)
    text, got = r.choices[0].text, r.model
else:
    r = c.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                  messages=[{"role": "user", "content": "Reverse:\na,b,c"}])
    text, got = r.choices[0].message.content, r.model
assert got == model, f"answered as {got!r}, asked {model!r}"
assert r.usage.completion_tokens > 0, "no tokens"
print(f"{model} ({kind}): {r.usage.completion_tokens} tokens {text!r}")
PY
}

start_coord coord.log --http 127.0.0.1:$HTTP
t0=$(date +%s.%N)
IDS=$("$TANDEM" submit pipeline.json)
read -r P_PREP P_TRAIN P_FT P_SERVE <<< "$IDS"
echo "submitted pipeline fortunes: jobs $IDS"
[ -n "$P_SERVE" ] || { echo "FAIL: submit printed '$IDS', not four job ids"; exit 1; }
# the coordinator killed with SIGKILL while the pretrain stage runs, and started again: the
# stage goes on (the same attempt) and the pipeline with it
wait_state "$P_TRAIN" running 60 || exit 1
table() { "$TANDEM" ps --json | python3 -c "import json,sys; print([(j['id'], j['state'].replace('serving', 'running'), j['attempt'], j.get('pid')) for j in json.load(sys.stdin)])"; }
"$TANDEM" ps --json > before.json
kill -9 "$COORD"
wait "$COORD" 2> /dev/null || true
start_coord coord1.log --http 127.0.0.1:$HTTP
"$TANDEM" ps --json > after.json
# the same jobs; each where it was or further on (pretrain may end meanwhile), none started
# a second time
python3 - before.json after.json << 'PY' || fail=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
order = ["queued", "running", "serving", "done"]
same = [(j["id"], j["kind"], j["file"]) for j in a] == [(j["id"], j["kind"], j["file"]) for j in b]
forward = all(order.index(y["state"]) >= order.index(x["state"]) and y["attempt"] <= 1 and
              (x["state"] != "running" or y["state"] != "running" or x["pid"] == y["pid"])
              for x, y in zip(a, b))
if not (same and forward):
    sys.exit("FAIL: job table before %s, after %s" % (a, b))
print("ok: killed while pretrain ran, started again: the same jobs, each where it was or on: " +
      ", ".join("%d %s->%s" % (x["id"], x["state"], y["state"]) for x, y in zip(a, b)))
PY
wait_state "$P_SERVE" serving 300 || exit 1
t1=$(date +%s.%N)
"$TANDEM" ps
"$TANDEM" ps --json > ps.json
python3 - "$t0" "$t1" ps.json << 'PY' || fail=1
import json, sys
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
jobs = json.load(open(sys.argv[3]))
print("wall time, submit to serving: %.1f s" % (t1 - t0))
for j in jobs:
    end = j.get("ended_at", t1)
    print("  stage %-9s %-8s %5.1f s (%d ranks)" % (j["stage"], j["state"], end - j["started_at"],
                                                  j["ranks"]))
# each stage started after the stages it waits for had ended
by = {j["id"]: j for j in jobs}
for j in jobs:
    for a in j["after"]:
        if not j["started_at"] >= by[a]["ended_at"]:
            sys.exit("FAIL: stage %s started before stage %s ended" % (j["stage"], by[a]["stage"]))
print("ok: every stage started after the ones it waits for ended (%s)" %
      ", ".join("%s after %s" % (j["stage"], "+".join(by[a]["stage"] for a in j["after"]))
                for j in jobs if j["after"]))
PY
[ "$(field "$P_TRAIN" attempt)" = 1 ] && echo "ok: pretrain ran once, to its end, across the restart" ||
    { echo "FAIL: pretrain attempt $(field "$P_TRAIN" attempt)"; fail=1; }
grep -q "$W/data" "state/jobs/$P_TRAIN/job.json" && grep -q "$W/runs/base/step_00000300" \
    "state/jobs/$P_FT/job.json" && grep -q "$W/runs/lora/step_00000020" \
    "state/jobs/$P_SERVE/job.json" && echo "ok: each stage ran on the previous one's output" ||
    { echo "FAIL: the run files lack the inputs"; cat state/jobs/*/job.json; fail=1; }
ask fortunes completion && ask reverse chat && echo "ok: the coordinator's gateway answers the base and the fine-tune" || fail=1

# the coordinator killed with SIGKILL during the pipeline's serving, and started again
before=$(table)
serve_pid=$(pgrep -f "state/jobs/$P_SERVE/" | head -1)
kill -9 "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=
sleep 1
kill -0 "$serve_pid" && echo "ok: the serve job outlives its coordinator" ||
    { echo "FAIL: the serve job died with the coordinator"; fail=1; }
start_coord coord2.log --http 127.0.0.1:$HTTP
after=$(table)
[ "$before" = "$after" ] && echo "ok: the restarted coordinator has the same job table: $after" ||
    { echo "FAIL: job table before $before, after $after"; fail=1; }
wait_state "$P_SERVE" serving 30 && echo "ok: the serve job's replica registered again" || true
ask fortunes completion && echo "ok: the gateway answers after the restart" || fail=1
runs=$(cat state/jobs/[1-4]/log | grep -c '^== attempt')
[ "$runs" = 4 ] && echo "ok: no stage ran twice (4 attempts for 4 stages)" ||
    { echo "FAIL: $runs attempts for 4 stages"; fail=1; }
# a stage that cannot take its input says why, once, in its reason (the message of the
# failed input, not a garbled copy of it); the stages after it never start
echo '{"model": {}, "data": "not an object"}' > badtrain.json
cat > broken.json << 'JOB'
{"pipeline": {"name": "broken", "stages": [
  {"name": "prep", "job": "prep.json"},
  {"name": "train", "job": "badtrain.json", "inputs": {"data.train": "prep"}},
  {"name": "serve", "job": "serve.json", "inputs": {"serve.model": "train"}}]}}
JOB
read -r B_PREP B_TRAIN B_SERVE <<< "$("$TANDEM" submit broken.json)"
if wait_state "$B_TRAIN" failed 60 && wait_state "$B_SERVE" cancelled 10; then
    why=$(field "$B_TRAIN" reason)
    [ "$why" = "could not start: input data.train (from job $B_PREP): input data.train: data is not an object" ] &&
        echo "ok: the stage that could not take its input: $why; the next: $(field "$B_SERVE" reason)" ||
        { echo "FAIL: reason '$why'"; fail=1; }
fi
"$TANDEM" cancel "$P_SERVE" > /dev/null
running() { # pid -> 0 while it runs (a zombie waiting for its reaper does not)
    local st
    st=$(ps -o stat= -p "$1" 2> /dev/null || true)
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
if wait_state "$P_SERVE" cancelled 10; then
    left=$(pgrep -f "state/jobs/$P_SERVE/" | while read -r p; do running "$p" && echo "$p"; done || true)
    [ -z "$left" ] && echo "ok: the serve stage cancelled, its processes gone" ||
        { echo "FAIL: the cancelled serve stage still runs: $left"; ps -fp $left; fail=1; }
fi
kill "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=
exit $fail
