#!/usr/bin/env bash
# A rank killed mid-run (kill -9) ends the job non-zero within seconds with a message naming
# the lost rank; the newest complete checkpoint still loads and --resume continues from it;
# a half-written checkpoint (a leftover .tmp-step_* directory) is never picked up.
# Usage: test_train_kill.sh TANDEM_BINARY
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'kill -9 $MPIRUN 2>/dev/null; rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes || exit 1
cat > job.json <<'JOB'
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512,
           "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 8, "steps": 1000000, "lr": 1e-3, "warmup": 2, "seed": 3},
 "checkpoint": {"dir": "run", "every": 20, "keep": 3}}
JOB
mpirun -np 2 "$TANDEM" train job.json --quiet > out.txt 2>&1 &
MPIRUN=$!
# wait for two complete checkpoints, then kill rank 1
for i in $(seq 1 600); do
    [ "$(ls -d run/step_* 2>/dev/null | wc -l)" -ge 2 ] && break
    sleep 0.1
done
victim=""
for p in $(pgrep -f "tandem train job.json"); do
    if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then victim=$p; fi
done
[ -n "$victim" ] || { echo "FAIL: rank 1 not found"; cat out.txt; exit 1; }
t0=$(date +%s.%N)
kill -9 "$victim"
wait $MPIRUN
rc=$?
MPIRUN=""
dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
fail=0
echo "killed rank 1 (pid $victim): mpirun exited $rc after ${dt}s"
grep -iE "rank 1|signal 9|killed" out.txt | head -3 | sed 's/^/   /'
[ "$rc" -ne 0 ] || { echo "FAIL: exit code 0"; fail=1; }
awk -v d="$dt" 'BEGIN { exit !(d < 10) }' || { echo "FAIL: took ${dt}s"; fail=1; }
grep -qiE "rank 1" out.txt || { echo "FAIL: no message names rank 1"; fail=1; }
# a half-written checkpoint must be ignored by --resume
newest=$(ls -d run/step_* | sort | tail -1)
mkdir -p run/.tmp-step_99999999-1 && echo partial > run/.tmp-step_99999999-1/config.json
sed -i 's/"steps": 1000000/"steps": '"$(( 10#${newest##*_} + 5 ))"'/' job.json
"$TANDEM" train job.json --quiet --resume 2> resume.txt
rc2=$?
echo "resume: exit $rc2, $(grep -o 'resuming from [^ ]*' resume.txt)"
grep -q "resuming from $newest" resume.txt || { echo "FAIL: did not resume from $newest"; fail=1; }
ls -d run/.tmp-step_* > /dev/null 2>&1 && { echo "FAIL: interrupted-save directories left"; fail=1; }
[ $rc2 -eq 0 ] || { echo "FAIL: resume failed"; cat resume.txt; fail=1; }
[ $fail -eq 0 ] && echo "test_train_kill: passed"
exit $fail
