#!/usr/bin/env bash
# A tensor-parallel replica with a stuck member (ctest labels mpi, e2e):
#   1. idle: `mpirun -np 2 tandem serve --tp 2 --http` waiting for requests; the CPU time of
#      each rank over 10 s is printed, and the member (rank 1) must use under 5 % of a core
#      (it waits for the leader's next step with sleeps, not by spinning in MPI_Bcast)
#   2. under load (8 streams), SIGSTOP of the member: every stream ends with an error event
#      within 5 s (the leader's collective gives up after --tp-timeout, 3 s), and mpirun
#      exits instead of hanging
# Usage: test_serve_tp_faults.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
MPI=
cleanup() {
    [ -n "$MPI" ] && { pkill -CONT -P "$MPI" 2> /dev/null; kill "$MPI" 2> /dev/null; }
    for p in $(pgrep -f "$W/run" || true); do kill -CONT "$p" 2> /dev/null; kill -9 "$p" 2> /dev/null; done
    wait 2> /dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
. "$HERE/tiny_model.sh"
. "$HERE/mpi_env.sh"
export OMP_NUM_THREADS=1
tiny_model "$TANDEM" 256
TANDEM_TEST_STEP_DELAY_MS=50 mpirun -np 2 "$TANDEM" serve --model "$TINY_CK" --name tiny \
    --tp 2 --http 127.0.0.1:0 2> serve.log &
MPI=$!
for _ in $(seq 150); do grep -q "listening on http" serve.log && break; sleep 0.1; done
BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' serve.log)
for _ in $(seq 100); do curl -s "$BASE/health" | grep -q '"replicas":1' && break; sleep 0.1; done
rank_pid() { # the tandem process of MPI rank $1
    for p in $(pgrep -f "serve --model $W/run"); do
        tr '\0' '\n' < /proc/$p/environ 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo $p; return; }
    done
}
R0=$(rank_pid 0)
R1=$(rank_pid 1)
cpu() { awk '{ print $14 + $15 }' /proc/$1/stat; } # utime + stime, clock ticks
fail=0

echo "== 1. idle for 10 s"
a0=$(cpu $R0) a1=$(cpu $R1)
sleep 10
b0=$(cpu $R0) b1=$(cpu $R1)
hz=$(getconf CLK_TCK)
p0=$(awk -v a=$a0 -v b=$b0 -v h=$hz 'BEGIN { printf "%.1f", 100 * (b - a) / h / 10 }')
p1=$(awk -v a=$a1 -v b=$b1 -v h=$hz 'BEGIN { printf "%.1f", 100 * (b - a) / h / 10 }')
echo "CPU over 10 s idle: leader (rank 0, with the router and gateway threads) $p0 % of a core, member (rank 1) $p1 %"
awk -v p=$p1 'BEGIN { exit !(p < 5) }' || { echo "FAIL: the idle member uses $p1 % of a core"; fail=1; }

echo "== 2. SIGSTOP of the member under 8 streams"
STREAM='{"model": "tiny", "prompt": "A fool", "max_tokens": 150, "ignore_eos": true, "stream": true}'
CURLS=()
for i in $(seq 8); do
    (curl -sN --max-time 60 "$BASE/v1/completions" -H 'Content-Type: application/json' \
        -d "$STREAM" > stream.$i; date +%s.%N > end.$i) &
    CURLS+=($!)
done
for _ in $(seq 100); do
    n=0
    for i in $(seq 8); do grep -q '"text"' stream.$i 2> /dev/null && n=$((n + 1)); done
    [ $n = 8 ] && break
    sleep 0.1
done
kill -STOP $R1
t_stop=$(date +%s.%N)
for p in "${CURLS[@]}"; do wait "$p" || true; done
worst=0 errors=0
for i in $(seq 8); do
    grep -q '"error"' stream.$i && errors=$((errors + 1))
    dt=$(awk -v a="$t_stop" -v b="$(cat end.$i)" 'BEGIN { printf "%.2f", b - a }')
    worst=$(awk -v a="$worst" -v b="$dt" 'BEGIN { print (b > a) ? b : a }')
done
echo "8 streams: $errors ended with an error event, the last $worst s after the SIGSTOP: $(grep -oh '"message":"[^"]*"' stream.1 | head -1 | cut -c1-150)"
[ $errors = 8 ] || { echo "FAIL: not every stream ended with an error"; tail -c 300 stream.1; fail=1; }
awk -v w="$worst" 'BEGIN { exit !(w <= 5) }' || { echo "FAIL: a stream ended more than 5 s after the SIGSTOP"; fail=1; }
rc=0
for _ in $(seq 100); do kill -0 $MPI 2> /dev/null || break; sleep 0.1; done
if kill -0 $MPI 2> /dev/null; then
    echo "FAIL: mpirun still running 10 s after the streams ended"
    fail=1
else
    wait $MPI || rc=$?
    echo "mpirun exited (status $rc) $(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after the SIGSTOP"
fi
MPI=
exit $fail
