#!/usr/bin/env bash
# Router and replicas as separate processes (ctest label e2e):
#   1. two replicas of model "alpha" and one of model "beta" behind `tandem router` and
#      `tandem gateway`: 64 concurrent requests to alpha (and 16 to beta at the same time)
#      all answer exactly what a single replica answers alone; alpha's are spread over its
#      two replicas (counts printed from /metrics)
#      a client that hangs up mid-stream has its request cancelled on the replica
#   2. kill -9 one alpha replica while 16 streaming requests run on alpha: those on it end
#      with an error event within 5 s, the router logs the replica as lost, 16 new requests
#      all succeed on the survivor, and a restarted replica is used again
#   4. a replica whose engine steps take 5 s (longer than 3 heartbeats) is not lost
#   3. a full queue answers 503 at once (a second router with --queue-max 2 and one replica
#      of 8 slots held with SIGSTOP: 8 requests in flight, 2 waiting, the rest 503)
# Replicas run with TANDEM_TEST_STEP_DELAY_MS=40 (a pause after each engine step) so that
# requests are still in flight when the test acts.
# Usage: test_router.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2> /dev/null || true; kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
export OMP_NUM_THREADS=1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CORPUS=/usr/share/games/fortunes/fortunes
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.05 "$CORPUS"
for m in alpha beta; do
    seed=$([ $m = alpha ] && echo 2 || echo 3)
    cat > $m.json <<JOB
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 512,
           "max_position_embeddings": 128},
 "data": {"train": "data", "seq_len": 64},
 "train": {"batch_size": 8, "steps": 120, "lr": 5e-3, "warmup": 10, "seed": $seed},
 "checkpoint": {"dir": "run-$m", "every": 120, "keep": 1}}
JOB
    "$TANDEM" train $m.json --quiet 2> /dev/null
done
awk 'BEGIN { RS = "%\n" } NR > 1 && NR <= 200 { split($0, l, "\n"); if (length(l[1]) > 8 && n < 32) { print substr(l[1], 1, 40); n++ } }' "$CORPUS" | tr -d '\\' > prompts.txt
"$TANDEM" serve --model run-alpha/step_00000120 --prompts-file prompts.txt --max-tokens 24 > ref-alpha.jsonl 2> /dev/null
"$TANDEM" serve --model run-beta/step_00000120 --prompts-file prompts.txt --max-tokens 24 > ref-beta.jsonl 2> /dev/null

PF=$(free_port); PB=$(free_port)
"$TANDEM" router --front tcp://127.0.0.1:$PF --back tcp://127.0.0.1:$PB 2> router.log &
PIDS+=($!)
"$TANDEM" gateway --listen 127.0.0.1:0 --router tcp://127.0.0.1:$PF 2> gateway.log &
PIDS+=($!)
replica() { # name checkpoint log [router back port]
    TANDEM_TEST_STEP_DELAY_MS=40 "$TANDEM" serve --model "$2" --name "$1" --max-seqs 8 \
        --router tcp://127.0.0.1:${4:-$PB} 2> "$3" &
    PIDS+=($!)
    LAST=$!
}
replica alpha run-alpha/step_00000120 a1.log; A1=$LAST
replica alpha run-alpha/step_00000120 a2.log; A2=$LAST
replica beta run-beta/step_00000120 b1.log
for _ in $(seq 100); do grep -q "listening on port" gateway.log && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' gateway.log)
BASE=http://127.0.0.1:$PORT
up() { curl -s $BASE/metrics | awk -v m="$1" '$1 == "tandem_replicas_up{model=\""m"\"}" { print $2 }'; }
wait_up() { for _ in $(seq 100); do [ "$(up $1)" = "$2" ] && return 0; sleep 0.1; done; return 1; }
fail=0
wait_up alpha 2 && wait_up beta 1 || { echo "FAIL: replicas did not register"; cat router.log; exit 1; }
served() { curl -s $BASE/metrics | grep "^tandem_replica_requests_total{model=\"alpha\"" | sed 's/.*replica="\([^"]*\)"} \(.*\)/\1 \2/'; }

# 1. spread and correctness
python3 "$HERE/router_load.py" check --base $BASE --n 64 --model alpha=ref-alpha.jsonl \
    --model beta=ref-beta.jsonl --n-second 16 || fail=1
echo "alpha requests per replica:"; served | sed 's/^/  /'
served | awk '$2 < 16 { bad = 1 } END { exit bad || NR != 2 }' \
    || { echo "FAIL: alpha's 64 requests were not spread over its 2 replicas"; fail=1; }

# a client that goes away cancels its request on the replica: a streaming request of 100
# tokens (about 4 s at 40 ms a step) whose client hangs up after 0.5 s
curl -sN -m 0.5 $BASE/v1/completions -d '{"model": "alpha", "prompt": "A fool", "max_tokens": 100,
    "ignore_eos": true, "stream": true}' > /dev/null 2>&1 || true
for _ in $(seq 30); do grep -q "cancelled after" a1.log a2.log && break; sleep 0.1; done
if grep -h "cancelled after" a1.log a2.log | head -1 | sed 's/^/client gone: /' | grep .; then :; else
    echo "FAIL: the replica did not cancel the request of a client that hung up"; fail=1
fi

# 2. kill -9 a replica under streaming load
python3 "$HERE/router_load.py" stream --base $BASE --n 16 --model alpha --prompts ref-alpha.jsonl \
    --out stream.json &
LOAD=$!
sleep 0.5
kill -9 $A1
KILLED=$(date +%s.%N)
wait $LOAD
python3 - "$KILLED" stream.json <<'PY' || fail=1
import json, sys
killed, recs = float(sys.argv[1]), json.load(open(sys.argv[2]))
ok = [r for r in recs if r["done"]]
err = [r for r in recs if not r["done"]]
late = [r for r in err if r["ended"] - killed > 5 or not r["error"]]
print(f"streams under kill -9: {len(ok)} completed, {len(err)} ended with an error "
      f"(latest {max([r['ended'] - killed for r in err], default=0):.2f} s after the kill)")
for r in err[:2]:
    print("  error:", r["error"])
sys.exit(1 if not err or late or len(ok) + len(err) != len(recs) else 0)
PY
grep -q "lost" router.log && grep "lost" router.log | head -1 | sed 's/^/router log: /' \
    || { echo "FAIL: the router did not log the replica as lost"; fail=1; }
wait_up alpha 1 || { echo "FAIL: alpha does not show 1 replica up"; fail=1; }
python3 "$HERE/router_load.py" check --base $BASE --n 16 --model alpha=ref-alpha.jsonl \
    | sed 's/^/after the kill: /' || fail=1
replica alpha run-alpha/step_00000120 a3.log; A3=$LAST
wait_up alpha 2 || { echo "FAIL: the restarted replica did not register"; fail=1; }
NEW=$(sed -n 's/.*replica \([^ ]*\) (model alpha): registering.*/\1/p' a3.log)
python3 "$HERE/router_load.py" check --base $BASE --n 32 --model alpha=ref-alpha.jsonl \
    | sed 's/^/after the restart: /' || fail=1
n3=$(served | awk -v id="$NEW" '$1 == id { print $2 }')
echo "restarted replica $NEW served ${n3:-0} of 32"
[ "${n3:-0}" -gt 0 ] || { echo "FAIL: the restarted replica was not used"; fail=1; }

# 3. queue full, on a second router with a short queue and one replica held by SIGSTOP
QF=$(free_port); QB=$(free_port)
"$TANDEM" router --front tcp://127.0.0.1:$QF --back tcp://127.0.0.1:$QB --queue-max 2 2> router2.log &
PIDS+=($!)
"$TANDEM" gateway --listen 127.0.0.1:0 --router tcp://127.0.0.1:$QF 2> gateway2.log &
PIDS+=($!)
replica alpha run-alpha/step_00000120 q1.log $QB; Q1=$LAST
for _ in $(seq 100); do grep -q "listening on port" gateway2.log && break; sleep 0.1; done
BASE2=http://127.0.0.1:$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' gateway2.log)
for _ in $(seq 100); do curl -s $BASE2/health | grep -q '"replicas":1' && break; sleep 0.1; done
kill -STOP $Q1
codes=$(python3 "$HERE/router_load.py" codes --base $BASE2 --n 16 --model alpha --prompts ref-alpha.jsonl &
        sleep 1.5; kill -CONT $Q1; wait)
n503=$(echo "$codes" | tr ' ' '\n' | grep -c '^503$' || true)
n200=$(echo "$codes" | tr ' ' '\n' | grep -c '^200$' || true)
echo "queue full: $n200 answered 200, $n503 answered 503 (8 slots + 2 queued of 16)"
[ "$n503" -eq 6 ] && [ "$n200" -eq 10 ] || { echo "FAIL: queue-full codes: $codes"; fail=1; }
# 4. an engine step longer than three heartbeats (a big model's prefill on a CPU) does not
#    make the router lose the replica: heartbeats come from their own thread
TANDEM_TEST_STEP_DELAY_MS=5000 "$TANDEM" serve --model run-beta/step_00000120 --name gamma \
    --router tcp://127.0.0.1:$PB 2> g1.log &
PIDS+=($!)
wait_up gamma 1 || { echo "FAIL: gamma did not register"; fail=1; }
t0=$(date +%s.%N)
code=$(curl -s -o slow.json -w '%{http_code}' $BASE/v1/completions \
    -d '{"model": "gamma", "prompt": "A fool", "max_tokens": 2, "temperature": 0}' || true)
dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "slow replica (5 s steps): HTTP $code after $dt s; router log lines about gamma lost: $(grep -c 'model gamma) lost' router.log || true)"
[ "$code" = 200 ] && ! grep -q 'model gamma) lost' router.log || { echo "FAIL: slow replica lost: $(cat slow.json)"; fail=1; }
[ $fail -eq 0 ] && echo "test_router: passed"
exit $fail
