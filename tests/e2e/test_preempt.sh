#!/usr/bin/env bash
# Preemption of a serving pool (ctest labels mpi, e2e): a coordinator with 2 slots runs a
# serving pool of a tiny model with 2 replicas (minimum 1, maximum 2), one slot each, under a
# steady load of streamed requests through its gateway (the official openai client, 3 at a
# time). A 1-rank training job of higher priority is submitted while no slot is free: one
# replica is stopped (it takes no new requests and finishes those it has), the job runs in
# its slot and ends, and the pool grows back to 2 replicas. Every request either completes
# or ends with an error that says the replica stopped; none hangs.
# Usage: test_preempt.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
. "$HERE/coord_env.sh"
need_openai
export OMP_NUM_THREADS=1
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 256
cat > pool.json << JOB
{"serve": {"model": "$TINY_CK", "name": "tiny", "max_seqs": 4},
 "pool": {"min": 1, "max": 2, "replicas": 2}}
JOB
sed -e 's/"steps": 2/"steps": 3000/; s/"every": 2/"every": 3000/; s/"dir": "run"/"dir": "urgent"/' \
    job.json > urgent.json
# each engine step of the replicas takes 20 ms more: requests stay in flight for a while
TANDEM_TEST_STEP_DELAY_MS=20 start_coord coord.log --http 127.0.0.1:$HTTP
up() { curl -s "http://127.0.0.1:$HTTP/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["replicas"])' 2> /dev/null || echo 0; }
wait_up() { # replicas seconds
    for _ in $(seq $(($2 * 5))); do [ "$(up)" = "$1" ] && return 0; sleep 0.2; done
    echo "FAIL: $(up) replicas up, not $1, after $2 s"; "$TANDEM" ps; tail -n 20 coord.log; return 1
}
P=$("$TANDEM" submit pool.json)
wait_up 2 60 || exit 1
echo "ok: pool job $P serves with 2 replicas"
"$TANDEM" ps

# load: 3 clients, each sending streamed completions one after another until STOPFILE exists
cat > load.py << 'PY'
import os, sys, threading, time
from openai import OpenAI
port, stopfile = sys.argv[1], sys.argv[2]
ok, errors, lock = 0, [], threading.Lock()
def client(k):
    global ok
    c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
    while not os.path.exists(stopfile):
        try:
            n = 0
            for ch in c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=40,
                                           temperature=0, stream=True):
                n += 1
            with lock:
                ok += 1
        except Exception as e:
            with lock:
                errors.append(str(e)[:200])
ts = [threading.Thread(target=client, args=(k,)) for k in range(3)]
[t.start() for t in ts]
[t.join(timeout=120) for t in ts]
print("completed", ok)
print("errors", len(errors))
for e in errors:
    print("error:", e)
print("hung", sum(t.is_alive() for t in ts))
PY
"$PY" load.py "$HTTP" stop-load > load.txt 2>&1 &
LOAD=$!
sleep 3
T=$("$TANDEM" submit urgent.json --priority 10)
echo "submitted training job $T (1 rank, priority 10) with both slots held by the pool"
for _ in $(seq 100); do [ "$(field "$T" state)" = running ] && break; sleep 0.2; done
"$TANDEM" ps
[ "$(field "$T" state)" = running ] && [ "$(field "$P" replicas)" = 1 ] &&
    echo "ok: job $T runs in the slot of a stopped replica; the pool kept $(field "$P" replicas)" ||
    { echo "FAIL: job $T is $(field "$T" state), the pool has $(field "$P" replicas) replicas"; fail=1; }
[ "$(up)" = 1 ] && echo "ok: the gateway sees 1 replica while the job runs" ||
    { echo "FAIL: $(up) replicas up while the job runs"; fail=1; }
for _ in $(seq 600); do [ "$(field "$T" state)" = done ] && break; sleep 0.2; done
[ "$(field "$T" state)" = done ] && echo "ok: job $T done" ||
    { echo "FAIL: job $T is $(field "$T" state)"; cat "state/jobs/$T/log"; fail=1; }
wait_up 2 60 && [ "$(field "$P" replicas)" = 2 ] && echo "ok: the pool grew back to 2 replicas" || fail=1
sleep 2
touch stop-load
wait $LOAD || true
cat load.txt | sort | uniq -c | sort -rn | head -8
grep "job $P:\|job $T:" coord.log | sed 's/^/   coordinator: /'
grep -q "router: replica .* is stopping" coord.log &&
    echo "ok: the stopped replica told the router it was leaving" ||
    { echo "FAIL: the router never heard the replica leave"; fail=1; }
python3 - load.txt << 'PY' || fail=1
import sys
lines = open(sys.argv[1]).read().splitlines()
val = {l.split()[0]: l.split(" ", 1)[1] for l in lines if l.split()[:1] in (["completed"], ["errors"], ["hung"])}
done, errs, hung = int(val["completed"]), int(val["errors"]), int(val["hung"])
bad = [l for l in lines if l.startswith("error:") and "replica stopped" not in l]
print(f"load: {done} completed, {errs} errors ({errs - len(bad)} saying the replica stopped), {hung} hung")
if hung or bad or done < 10:
    sys.exit("FAIL: requests hung, failed without saying why, or too few completed: %s" % bad[:3])
print("ok: every request completed or was told its replica stopped")
PY
"$TANDEM" cancel "$P" > /dev/null
for _ in $(seq 100); do [ "$(field "$P" state)" = cancelled ] && break; sleep 0.2; done
[ "$(field "$P" state)" = cancelled ] && echo "ok: the pool cancelled" || { echo "FAIL: the pool is $(field "$P" state)"; fail=1; }

# a pool grown by its queue keeps its replicas across a restart of the coordinator: the new
# coordinator has no history of the queue, so it shrinks nothing for a window (30 s)
cat > grow.json << JOB
{"serve": {"model": "$TINY_CK", "name": "tiny", "max_seqs": 1},
 "pool": {"min": 1, "max": 2, "replicas": 1, "per_replica_queue": 1}}
JOB
G=$("$TANDEM" submit grow.json)
wait_up 1 60 || exit 1
"$PY" load.py "$HTTP" stop-load2 > load2.txt 2>&1 &
LOAD=$!
for _ in $(seq 150); do [ "$(field "$G" replicas)" = 2 ] && break; sleep 0.2; done
[ "$(field "$G" replicas)" = 2 ] && echo "ok: pool $G grew to 2 replicas under its queue" ||
    { echo "FAIL: pool $G has $(field "$G" replicas) replicas under load"; fail=1; }
kill -9 "$COORD"
wait "$COORD" 2> /dev/null || true
before=$(grep -c '"event":"rstop","id":'"$G"',' state/journal || true)
TANDEM_TEST_STEP_DELAY_MS=20 start_coord coord2.log --http 127.0.0.1:$HTTP
sleep 8
after=$(grep -c '"event":"rstop","id":'"$G"',' state/journal || true)
[ "$after" = "$before" ] && [ "$(field "$G" replicas)" = 2 ] &&
    echo "ok: 8 s after the restart, under load, pool $G still has 2 replicas (no replica stopped)" ||
    { echo "FAIL: the restarted coordinator stopped $((after - before)) replica(s) of pool $G"; fail=1; }
touch stop-load2
wait $LOAD || true
kill "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=
exit $fail
