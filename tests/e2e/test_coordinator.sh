#!/usr/bin/env bash
# The coordinator end to end (ctest labels mpi, e2e), on a pool of 2 slots:
#   1. gang: two 2-rank training jobs; the second waits while the first runs (tandem ps shows
#      running + queued), starts when the first ends, both end done
#   2. cancel: a queued job is cancelled at once; a running one is gone (every one of its
#      processes) within 5 s
#   3. restart: the coordinator killed with SIGKILL and started again has the same job table
#      (journal replay) and still sees the job that kept running, to its end
#   4. refusals: more ranks than slots, a file that is no job, a prep job's unknown key, a missing
#      file, a client whose key is not allowed, a cancel of an unknown or ended job
#   5. a start journaled by a coordinator that died before forking: run once, later
# Also: `drain` holds new jobs back until `drain --undo`, `pool` shows slots and holders;
# `logs -f` follows a job to its end; a cancelled job's ranks checkpoint first, a second cancel changes nothing, and a job
# submitted from another directory runs there (the coordinator's --state being relative).
# Usage: test_coordinator.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
. "$HERE/coord_env.sh"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64 # data/ and a job.json to start from
job() { # name steps
    sed -e "s/\"steps\": 2/\"steps\": $2/; s/\"every\": 2/\"every\": 20/; s/\"dir\": \"run\"/\"dir\": \"$1\"/" \
        job.json > "$1.json"
}
start_coord coord.log --cancel-grace 2

# 1. gang
job a 3000 && job b 30
A=$("$TANDEM" submit a.json --ranks 2)
B=$("$TANDEM" submit b.json --ranks 2)
wait_state "$A" running 10
sleep 1
"$TANDEM" ps
[ "$(state "$B")" = queued ] && echo "ok: job $B (2 ranks) waits while job $A holds both slots" ||
    { echo "FAIL: job $B is $(state "$B") while $A runs"; fail=1; }
wait_state "$A" done 120 && wait_state "$B" done 120 &&
    "$TANDEM" ps --json | python3 -c "
import json, sys
j = {x['id']: x for x in json.load(sys.stdin)}
a, b = j[$A], j[$B]
gap = b['started_at'] - a['ended_at']
print('ok: job $B started %.2f s after job $A ended; both done' % gap) if 0 <= gap < 5 else \
    sys.exit('FAIL: job $B started %.2f s after job $A ended' % gap)" || fail=1
grep -q '"step": 30' b/metrics.jsonl 2> /dev/null && echo "ok: job $B trained its 30 steps" ||
    { echo "FAIL: job $B's metrics lack step 30"; fail=1; }

# tandem drain: nothing new starts on a draining host; tandem pool shows it and the holders
"$TANDEM" drain localhost > /dev/null
job dr 30
E=$("$TANDEM" submit dr.json --ranks 1)
sed -i 's/"steps": 30/"steps": 31/' dr.json # after the submit: the job runs what was submitted
sleep 1.5
"$TANDEM" pool
if [ "$(state "$E")" = queued ] && "$TANDEM" pool | grep -q '^localhost .* draining'; then
    echo "ok: job $E waits while localhost drains"
else
    echo "FAIL: job $E is $(state "$E") on a draining host"; fail=1
fi
"$TANDEM" drain localhost --undo > /dev/null
wait_state "$E" done 60 && echo "ok: job $E ran once localhost was open again"
grep -q '"step": 30,' dr/metrics.jsonl && ! grep -q '"step": 31,' dr/metrics.jsonl &&
    echo "ok: job $E ran its file as submitted (30 steps), not as edited afterwards (31)" ||
    { echo "FAIL: job $E did not run its submitted file"; fail=1; }
"$TANDEM" pool --json | python3 -c "
import json, sys
h = json.load(sys.stdin)[0]
assert h['host'] == 'localhost' and h['slots'] == 2 and not h['draining'] and h['free'] == 2, h
print('ok: pool --json:', h)" || fail=1

# 2. cancel a running job and a queued one
job c 100000 && job d 30
C=$("$TANDEM" submit c.json --ranks 2)
D=$("$TANDEM" submit d.json --ranks 2)
wait_state "$C" running 10
for _ in $(seq 300); do # until the ranks train (a step line in the job's log)
    grep -q '^step' "state/jobs/$C/log" 2> /dev/null && break
    sleep 0.1
done
pids=$(pgrep -f "state/jobs/$C/job.json" | tr '\n' ' ')
[ -n "$pids" ] || { echo "FAIL: no process of job $C"; fail=1; }
"$TANDEM" cancel "$D" > /dev/null && wait_state "$D" cancelled 2 &&
    echo "ok: queued job $D cancelled at once"
t0=$(date +%s.%N)
"$TANDEM" cancel "$C" > /dev/null
gone=0
for _ in $(seq 50); do
    alive=0
    for p in $pids; do # a zombie waiting for its reaper is not running
        st=$(ps -o stat= -p "$p" 2> /dev/null || true)
        [ -n "$st" ] && [ "${st#Z}" = "$st" ] && alive=1
    done
    [ $alive = 0 ] && { gone=1; break; }
    sleep 0.1
done
t=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
[ $gone = 1 ] && echo "ok: running job $C cancelled: its processes ($pids) gone in $t s" ||
    { echo "FAIL: job $C's processes still alive 5 s after the cancel"; fail=1; }
wait_state "$C" cancelled 5 || true
ls -d c/step_* > /dev/null 2>&1 && echo "ok: the cancelled job's ranks wrote a checkpoint first ($(ls -d c/step_* | tail -1))" ||
    { echo "FAIL: job $C left no checkpoint"; fail=1; }
"$TANDEM" cancel "$C" > /dev/null 2>&1 || true # a second cancel changes nothing
[ "$(grep -c "\"event\":\"cancel\",\"id\":$C," state/journal)" = 1 ] &&
    echo "ok: one cancel event in the journal for job $C" ||
    { echo "FAIL: $(grep -c "\"cancel\",\"id\":$C," state/journal) cancel events for job $C"; fail=1; }
grep "job $C:" coord.log | sed 's/^/   coordinator: /' 

# a job submitted from another directory (the coordinator's --state is relative to its own)
mkdir -p sub && ln -sf ../data sub/data
(cd sub && sed 's/"dir": "run"/"dir": "subrun"/' ../job.json > s.json && "$TANDEM" submit s.json > ../s.id)
S=$(cat s.id)
# tandem logs -f follows the job's output and returns when it ends
if timeout 60 "$TANDEM" logs -f "$S" > s.log && grep -q '^== attempt 1' s.log && grep -q '^train: [0-9]* steps in ' s.log; then
    echo "ok: logs -f followed job $S to its end ($(grep -c '^step' s.log) step lines, last: $(grep '^train: [0-9]* steps in ' s.log | cut -c1-48)...)"
else
    echo "FAIL: logs -f of job $S: $(tail -3 s.log)"; fail=1
fi
wait_state "$S" done 60 && [ -d sub/subrun ] &&
    echo "ok: job $S, submitted from sub/, ran there (sub/subrun) with the coordinator's relative --state"

# 3. the coordinator killed and started again
job e 2000
E=$("$TANDEM" submit e.json --ranks 1)
wait_state "$E" running 10
"$TANDEM" ps --json > before.json
kill -9 "$COORD"
wait "$COORD" 2> /dev/null || true
sleep 1
start_coord coord.log --cancel-grace 2
"$TANDEM" ps --json > after.json
python3 - before.json after.json <<'EOF' && echo "ok: the restarted coordinator has the same job table" || fail=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda j: (j['id'], j['state'], j['kind'], j['ranks'], j['attempt'], j['file'], j['dir'],
                 j['max_restarts'], j['restarts'], j['limit_s'], j['priority'])
if [key(j) for j in a] != [key(j) for j in b]:
    print("FAIL: job tables differ:\n", a, "\n", b)
    sys.exit(1)
EOF
wait_state "$E" done 120 && echo "ok: job $E, left running by the killed coordinator, seen to its end" &&
    grep -q "exit code 0 (read from its launcher's file: an earlier coordinator started it)" <("$TANDEM" ps --json) &&
    echo "ok: its exit code came from the file its launcher wrote"

# 4. refusals
bad() { # label expected-message command...
    local out rc=0
    out=$("${@:3}" 2>&1) || rc=$?
    if [ $rc -eq 2 ] && grep -q -- "$2" <<< "$out"; then echo "ok: $1: $out"; else
        echo "FAIL: $1: rc $rc: $out"; fail=1; fi
}
bad "more ranks than slots" "needs 3 ranks; the pool has 2 slots" "$TANDEM" submit a.json --ranks 3
bad "missing job file" "no-such.json" "$TANDEM" submit no-such.json
bad "unknown job" "no job 99" "$TANDEM" cancel 99
bad "logs of an unknown job" "no job 99" "$TANDEM" logs 99
echo '{"tokenizer": {}}' > notjob.json
bad "not a job file" "not a job file" "$TANDEM" submit notjob.json
echo '{"prep": {"out": "p", "vocab": 512}}' > badprep.json
bad "a prep job with an unknown key" "prep.vocab is not an option of tandem prep" "$TANDEM" submit badprep.json
bad "a job that has ended" "has ended (done)" "$TANDEM" cancel "$A"
bad "drain of a host not in the pool" 'no host "elsewhere" in the pool' "$TANDEM" drain elsewhere
echo "{\"serve\": {\"model\": \"$TINY_CK\"}, \"pool\": {\"min\": 3, \"max\": 4}}" > bigpool.json
bad "a pool whose minimum exceeds the slots" "min 3 replicas of 1 ranks need 3 slots; the pool has 2" \
    "$TANDEM" submit bigpool.json
echo '{"distill": {}}' > distill.json
bad "a distill job" "does not run distill jobs yet" "$TANDEM" submit distill.json
echo '{"prep": {"out": "p", "inputs": ["x"]}, "serve": {"model": "m"}}' > twosec.json
bad "a job file with two command sections" "more than one command section" "$TANDEM" submit twosec.json

# a coordinator started again with fewer slots: a queued job that no longer fits is cancelled
# with the reason, and the rest of the queue runs
"$TANDEM" drain localhost > /dev/null
job big 30 && job small 30
BIG=$("$TANDEM" submit big.json --ranks 2)
SMALL=$("$TANDEM" submit small.json --ranks 1)
kill -9 "$COORD"
wait "$COORD" 2> /dev/null || true
start_coord coord.log --slots 1
"$TANDEM" drain localhost --undo > /dev/null
if wait_state "$BIG" cancelled 10 && wait_state "$SMALL" done 60; then
    echo "ok: on 1 slot, job $BIG: $(field "$BIG" reason); job $SMALL ran"
fi
rm -rf otherkeys && mkdir -m 700 otherkeys && cp keys/router.public otherkeys/
out=$(TANDEM_KEYS=$W/otherkeys "$TANDEM" ps 2>&1) && { echo "FAIL: a client with an unknown key was answered"; fail=1; } ||
    echo "ok: a client whose key is not allowed gets no answer: $out"
kill "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=

# 5. a coordinator that died between journaling a start and forking it: the journal holds a
#    start without a pid and no process exists; the next coordinator queues the job again
#    (without spending a restart) and runs it once
job g 20
python3 - "$W/state3" "$W/g.json" "$W" <<'EOF'
import json, os, sys, time, zlib
state, f, d = sys.argv[1:4]
os.makedirs(state)
now = time.time()
evs = [{"event": "submit", "id": 1, "at": now - 30, "kind": "train", "file": f, "dir": d,
        "ranks": 1, "priority": 0, "limit_s": 0, "max_restarts": 0},
       {"event": "start", "id": 1, "at": now - 20, "attempt": 1, "pid": 0, "hosts": "localhost:1"}]
with open(os.path.join(state, "journal"), "w") as j:
    for e in evs:
        t = json.dumps(e, separators=(",", ":"))
        j.write("%08x %s\n" % (zlib.crc32(t.encode()), t))
EOF
"$TANDEM" coordinator --state state3 --slots 2 --replicas "$REPLICAS" 2>> coord3.log &
COORD=$!
for _ in $(seq 100); do "$TANDEM" ps > /dev/null 2>&1 && break; sleep 0.1; done
wait_state 1 done 60 && [ "$(grep -c '== attempt' state3/jobs/1/log)" = 1 ] &&
    echo "ok: a start journaled without its process: queued again, ran once ($("$TANDEM" ps --json | python3 -c 'import json,sys; j=json.load(sys.stdin)[0]; print("attempt", j["attempt"], j["state"])'))"
grep -q "never ran" coord3.log || { echo "FAIL: coord3.log does not say the attempt never ran"; fail=1; }
kill "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=
exit $fail
