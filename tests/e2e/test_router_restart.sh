#!/usr/bin/env bash
# The router dies and comes back (ctest label e2e): `tandem router`, `tandem gateway` and one
# replica (`serve --router`, slowed by a test pause after each engine step so streams last),
#   1. 16 streaming completions in flight when the router is killed with SIGKILL: every
#      stream ends with an error event (the gateway misses three router heartbeats) within
#      5 s of the kill, none hangs
#   2. 4 requests sent while the router is down wait in the gateway's sockets; the router is
#      restarted on the same ports; the replica registers again and the 4 are answered 200
#      (the restarted router holds requests for models not yet registered through its
#      start-up grace instead of answering 404)
# Usage: test_router_restart.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
. "$HERE/tiny_model.sh"
export OMP_NUM_THREADS=1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tiny_model "$TANDEM" 256
PF=$(free_port)
PB=$(free_port)
router() {
    "$TANDEM" router --front tcp://127.0.0.1:$PF --back tcp://127.0.0.1:$PB 2>> router.log &
    ROUTER=$!
    PIDS+=($ROUTER)
}
router
"$TANDEM" gateway --listen 127.0.0.1:0 --router tcp://127.0.0.1:$PF 2> gateway.log &
PIDS+=($!)
TANDEM_TEST_STEP_DELAY_MS=100 "$TANDEM" serve --model "$TINY_CK" --name tiny \
    --max-seqs 16 --router tcp://127.0.0.1:$PB 2> replica.log &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening on port" gateway.log && break; sleep 0.1; done
BASE=http://127.0.0.1:$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' gateway.log)
for _ in $(seq 100); do curl -s "$BASE/health" | grep -q '"replicas":1' && break; sleep 0.1; done
fail=0

echo "== 1. SIGKILL of the router under 16 streams"
STREAM='{"model": "tiny", "prompt": "A fool", "max_tokens": 200, "ignore_eos": true, "stream": true}'
CURLS=()
for i in $(seq 16); do
    (curl -sN --max-time 60 "$BASE/v1/completions" -H 'Content-Type: application/json' \
        -d "$STREAM" > stream.$i; date +%s.%N > end.$i) &
    CURLS+=($!)
done
for _ in $(seq 100); do # every stream has text
    n=0
    for i in $(seq 16); do grep -q '"text"' stream.$i 2> /dev/null && n=$((n + 1)); done
    [ $n = 16 ] && break
    sleep 0.1
done
kill -9 $ROUTER
t_kill=$(date +%s.%N)
# 2. requests sent during the outage
for i in 1 2 3 4; do
    (curl -s --max-time 60 -o outage.$i -w '%{http_code}' "$BASE/v1/completions" \
        -H 'Content-Type: application/json' \
        -d '{"model": "tiny", "prompt": "A fool", "max_tokens": 4}' > code.$i) &
    CURLS+=($!)
done
for p in "${CURLS[@]:0:16}"; do wait "$p" || true; done
worst=0 ended=0 errors=0
for i in $(seq 16); do
    [ -f end.$i ] && ended=$((ended + 1))
    grep -q 'lost the router' stream.$i && errors=$((errors + 1))
    dt=$(awk -v a="$t_kill" -v b="$(cat end.$i 2> /dev/null || echo 1e12)" 'BEGIN { printf "%.2f", b - a }')
    worst=$(awk -v a="$worst" -v b="$dt" 'BEGIN { print (b > a) ? b : a }')
done
echo "16 streams: $ended ended, $errors with the error event 'lost the router'; the last $worst s after the kill"
[ $ended = 16 ] && [ $errors = 16 ] || { echo "FAIL: not every stream ended with the error"; tail -c 300 stream.1; fail=1; }
awk -v w="$worst" 'BEGIN { exit !(w <= 5) }' || { echo "FAIL: a stream ended more than 5 s after the kill"; fail=1; }

echo "== 2. restart; the requests sent during the outage"
sleep 0.5
router
for p in "${CURLS[@]:16}"; do wait "$p" || true; done
codes=$(for i in 1 2 3 4; do printf '%s ' "$(cat code.$i)"; done)
echo "the 4 requests sent while the router was down: HTTP $codes($(grep -c 'registered' router.log) registrations in the router's log)"
[ "$codes" = "200 200 200 200 " ] || { echo "FAIL: not all served"; head -c 300 outage.1; fail=1; }
exit $fail
