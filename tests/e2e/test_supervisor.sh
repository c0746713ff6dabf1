#!/usr/bin/env bash
# The coordinator's supervisor (ctest labels mpi, e2e): a 2-rank training job with
# max_restarts 2 has one of its ranks killed with SIGKILL after its second checkpoint; the
# coordinator sees the attempt fail, waits its back-off, starts it again with --resume, and
# the job ends done with the same final loss as the same job run without the kill (one
# thread per rank: resuming is exact, so the losses must agree within 1e-5). ps shows the
# restart (attempt 2, restarts 1) and the log both attempts.
# Usage: test_supervisor.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
. "$HERE/coord_env.sh"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes
job() { # name
    cat > "$1.json" << JOB
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512,
           "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 8, "steps": 600, "lr": 1e-3, "warmup": 2, "seed": 3, "log_every": 50},
 "checkpoint": {"dir": "$1", "every": 100, "keep": 2}, "device": "cpu"}
JOB
}
job straight && job killed
start_coord coord.log
S=$("$TANDEM" submit straight.json --ranks 2)
wait_state "$S" done 300 || exit 1
K=$("$TANDEM" submit killed.json --ranks 2 --max-restarts 2)
wait_state "$K" running 20
for _ in $(seq 600); do # two checkpoints written
    [ "$(ls -d killed/step_* 2> /dev/null | wc -l)" -ge 2 ] && break
    sleep 0.1
done
victim=
for p in $(pgrep -f "state/jobs/$K/job.json"); do
    tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' && victim=$p
done
[ -n "$victim" ] || { echo "FAIL: rank 1 of job $K not found"; cat "state/jobs/$K/log"; exit 1; }
at=$(ls -d killed/step_* | tail -1)
kill -9 "$victim"
echo "killed rank 1 (pid $victim) of job $K; its newest checkpoint: $at"
wait_state "$K" done 300 || exit 1
"$TANDEM" ps
[ "$(field "$K" attempt)" = 2 ] && [ "$(field "$K" restarts)" = 1 ] &&
    echo "ok: job $K restarted once (attempt 2, restarts 1)" ||
    { echo "FAIL: attempt $(field "$K" attempt), restarts $(field "$K" restarts)"; fail=1; }
grep '^== attempt 2' "state/jobs/$K/log" | grep -q -- '--resume' &&
    grep -q "resuming from" "state/jobs/$K/log" &&
    echo "ok: attempt 2 resumed: $(grep -o 'resuming from [^ ]*' "state/jobs/$K/log" | head -1)" ||
    { echo "FAIL: attempt 2 did not resume"; fail=1; }
grep "job $K:" coord.log | sed 's/^/   coordinator: /'
loss() { grep '"loss"' "$1/metrics.jsonl" | grep '"step": 600,' | tail -1 | sed 's/.*"loss": \([0-9.e-]*\).*/\1/'; }
a=$(loss straight) b=$(loss killed)
python3 -c "
a, b = float('$a'), float('$b')
print('final loss (step 600): uninterrupted %.6f, killed and restarted %.6f, |diff| %.2e' % (a, b, abs(a - b)))
raise SystemExit(0 if abs(a - b) <= 1e-5 else 1)" && echo "ok: the same final loss" ||
    { echo "FAIL: the final losses differ ($a, $b)"; fail=1; }
kill "$COORD"
wait "$COORD" 2> /dev/null || true
COORD=
exit $fail
