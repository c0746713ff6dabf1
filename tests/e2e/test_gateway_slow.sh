#!/usr/bin/env bash
# Slow and silent clients (ctest labels e2e, slow-ish: about 40 s):
#   1. 1,000 connections that send nothing or half a request line, held open while 16
#      normal clients make completions: every normal request answered 200 (median and p95
#      latency with and without them printed: a figure, not a check); the server closes the
#      silent ones after its 10 s header timeout (tests/e2e/slow_clients.py)
#   2. a request whose generation takes longer than the header timeout (13.5 s here, by a
#      test pause after each engine step) is still answered
# Usage: test_gateway_slow.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2> /dev/null; wait 2> /dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
. "$HERE/tiny_model.sh"
export OMP_NUM_THREADS=1
tiny_model "$TANDEM" 64
start() { # LOG [env...]: serve --http on a free port; sets SRV and BASE
    local log=$1
    shift
    env "$@" "$TANDEM" serve --model "$TINY_CK" --name tiny --http 127.0.0.1:0 2> "$log" &
    SRV=$!
    for _ in $(seq 100); do grep -q "listening on http" "$log" && break; sleep 0.1; done
    BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log")
    for _ in $(seq 100); do curl -s "$BASE/health" | grep -q '"replicas":1' && break; sleep 0.1; done
}
fail=0
echo "== 1. 1,000 silent connections and 16 normal clients"
start serve.log
python3 "$HERE/slow_clients.py" "$BASE" tiny --silent 1000 --clients 16 --requests 6 || fail=1
kill $SRV; wait $SRV 2> /dev/null || true

echo "== 2. a generation longer than the header timeout"
start slow.log TANDEM_TEST_STEP_DELAY_MS=1500
t0=$(date +%s.%N)
code=$(curl -s -o answer.json -w '%{http_code}' "$BASE/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "prompt": "A fool", "max_tokens": 9, "temperature": 0, "ignore_eos": true}')
dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$code" = 200 ] && awk -v d="$dt" 'BEGIN { exit !(d > 11) }' && grep -q '"completion_tokens":9' answer.json; then
    echo "PASS answered 200 after $dt s (header timeout 10 s): $(head -c 100 answer.json)"
else
    echo "FAIL: $code after $dt s: $(head -c 300 answer.json)"
    fail=1
fi
exit $fail
