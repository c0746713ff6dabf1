#!/usr/bin/env bash
# Sparse traffic keeps being served (ctest label e2e): `tandem serve --http` with heartbeats
# every 250 ms (a replica silent for 750 ms is lost), then 30 completions one second apart
# — longer than three heartbeats of idleness between them — while /health is polled every
# 100 ms. Every request must be answered 200 and /health must never say 503: an idle
# replica has to keep its heartbeats going (it once starved its heartbeat thread of the
# socket's lock while waiting for requests, and was dropped and re-registered over and over).
# Usage: test_serve_idle.sh TANDEM_BINARY [REQUESTS (30)] [GAP_S (1.0)] [HEARTBEAT_MS (250)]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
N=${2:-30}
GAP=${3:-1.0}
HB=${4:-250}
W=$(mktemp -d)
SRV= POLL=
cleanup() {
    [ -n "$POLL" ] && kill "$POLL" 2> /dev/null
    [ -n "$SRV" ] && kill "$SRV" 2> /dev/null
    wait 2> /dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
. "$HERE/tiny_model.sh"
export OMP_NUM_THREADS=1
tiny_model "$TANDEM" 64
"$TANDEM" serve --model "$TINY_CK" --name tiny --http 127.0.0.1:0 --heartbeat-ms "$HB" \
    2> serve.log &
SRV=$!
for _ in $(seq 100); do grep -q "listening on http" serve.log && break; sleep 0.1; done
BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' serve.log)
for _ in $(seq 100); do curl -s "$BASE/health" | grep -q '"replicas":1' && break; sleep 0.1; done

(while :; do curl -s -o /dev/null -w '%{http_code}\n' "$BASE/health" >> health.codes; sleep 0.1; done) &
POLL=$!
REQ='{"model": "tiny", "prompt": "A fool", "max_tokens": 4, "temperature": 0}'
t0=$(date +%s.%N)
for i in $(seq "$N"); do
    sleep "$GAP"
    curl -s -o "answer.$i" -w '%{http_code}\n' "$BASE/v1/completions" \
        -H 'Content-Type: application/json' -d "$REQ" >> request.codes
done
t1=$(date +%s.%N)
kill "$POLL" 2> /dev/null
POLL=
ok=$(grep -c '^200$' request.codes || true)
r503=$(grep -c '^503$' request.codes || true)
h200=$(grep -c '^200$' health.codes || true)
h503=$(grep -c '^503$' health.codes || true)
lost=$(grep -c 'lost' serve.log || true)
printf '%d requests %.1f s apart over %.0f s (heartbeat %d ms): %d answered 200, %d answered 503\n' \
    "$N" "$GAP" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$HB" "$ok" "$r503"
echo "/health polled $(wc -l < health.codes) times: $h200 x 200, $h503 x 503; replica lost $lost time(s) in the log"
fail=0
[ "$ok" = "$N" ] || { echo "FAIL: $((N - ok)) of $N sparse requests were not answered 200"; fail=1; }
[ "$h503" = 0 ] || { echo "FAIL: /health said 503 while the replica sat idle"; fail=1; }
[ "$lost" = 0 ] || { grep 'lost' serve.log | head -3; echo "FAIL: the idle replica was lost"; fail=1; }
exit $fail
