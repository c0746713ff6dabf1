#!/usr/bin/env bash
# Slurm for real (ctest label slurm; exits 77, skipped, saying why, where a one-node Slurm
# cannot be started here): scripts/slurm-local.sh brings up slurmctld + slurmd (+ munged)
# from Debian's packages, and
#   1. `sbatch --ntasks=2 deploy/slurm/train.sbatch job.json` trains through
#      `srun --mpi=pmix` and equals `mpirun -np 2` (loss within 1e-5 relative, 20 steps);
#      squeue lists the job while it runs
#   2. scancel of a running training job: the ranks get SIGTERM, finish their step and
#      write its checkpoint (what a preempted or timed-out job relies on)
#   3. deploy/slurm/serve.sbatch is accepted by `sbatch --test-only`; both scripts pass
#      `bash -n`
#   4. serve.sbatch as a 2-task job: a TP 2 replica registers with a coordinator's router,
#      answers a completion through its gateway, and leaves the router on scancel
#   5. the coordinator with --launcher slurm: two 2-rank jobs on 2 slots run one after the
#      other as Slurm jobs (squeue lists them), and `tandem cancel` of a running one goes
#      through scancel: its ranks checkpoint, the job is cancelled, no Slurm job is left
# Usage: test_slurm.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export TANDEM=$(realpath "$1")
for b in slurmctld slurmd munged sbatch; do
    command -v $b > /dev/null || { echo "skipped: $b is not installed"; exit 77; }
done
[ "$(id -u)" -eq 0 ] || { echo "skipped: a local Slurm needs root"; exit 77; }
W=$(mktemp -d)
cleanup() {
    "$ROOT/scripts/slurm-local.sh" down "$W/slurm" || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
if ! out=$("$ROOT/scripts/slurm-local.sh" up "$W/slurm" 2 2>&1); then
    echo "skipped: Slurm cannot run here:"
    echo "$out"
    exit 77
fi
export SLURM_CONF=$W/slurm/slurm.conf
. "$HERE/mpi_env.sh"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64
fail=0
bash -n "$ROOT/deploy/slurm/train.sbatch" && bash -n "$ROOT/deploy/slurm/serve.sbatch" ||
    { echo "FAIL: bash -n"; fail=1; }
job() { # name steps
    cat > "$1.json" << JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 64},
 "data": {"train": "$W/data", "seq_len": 32},
 "train": {"batch_size": 4, "steps": $2, "lr": 3e-3, "seed": 2},
 "checkpoint": {"dir": "$W/$1", "every": 20, "keep": 1}, "device": "cpu"}
JOB
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
wait_gone() { # job id, seconds
    for _ in $(seq $(($2 * 10))); do
        squeue -h -j "$1" 2> /dev/null | grep -q . || return 0
        sleep 0.1
    done
    return 1
}

# 1. sbatch + srun --mpi=pmix vs mpirun
job mp 20 && mpirun -np 2 "$TANDEM" train mp.json --quiet 2> /dev/null
job sl 20
id=$(sbatch --parsable --ntasks=2 "$ROOT/deploy/slurm/train.sbatch" "$W/sl.json" --quiet)
seen=$(squeue -h -j "$id" -o "%i %T %D %C" 2> /dev/null || true)
echo "squeue while it runs: ${seen:-(already finished)}"
wait_gone "$id" 120 || { echo "FAIL: job $id still queued after 120 s"; fail=1; }
state=$(scontrol show job "$id" | grep -o 'JobState=[A-Z]*' || true)
echo "sbatch job $id: $state; its output: $(grep -m1 tandem-train "tandem-train-$id.out")"
echo "srun --mpi=pmix (2 tasks)  vs  mpirun -np 2:"
paste <(losses sl) <(losses mp) | awk 'NR % 5 == 1 { printf "   %4d  %s  %s\n", NR, $1, $2 }'
if ! paste <(losses sl) <(losses mp) |
    awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d; if (d > 1e-5 || NF != 2) bad++ }
         END { printf "   max relative difference %.2e over %d steps\n", m, NR
               exit (bad || NR != 20) ? 1 : 0 }'; then
    echo "FAIL: the Slurm run differs from mpirun (or did not run: $state)"
    cat "tandem-train-$id.out" | tail -5
    fail=1
fi

# 2. scancel: the ranks checkpoint on SIGTERM
job long 100000
id=$(sbatch --parsable --ntasks=2 "$ROOT/deploy/slurm/train.sbatch" "$W/long.json" --quiet)
for _ in $(seq 300); do
    [ "$(grep -c '"loss"' long/metrics.jsonl 2> /dev/null || echo 0)" -ge 3 ] && break
    sleep 0.1
done
scancel "$id"
wait_gone "$id" 60 || { echo "FAIL: job $id still there 60 s after scancel"; fail=1; }
ck=$(ls -d long/step_* 2> /dev/null | tail -1 || true)
if [ -n "$ck" ] && grep -q "stopped by a signal" "tandem-train-$id.out"; then
    echo "scancel: $(grep -m1 'stopped by a signal' "tandem-train-$id.out" | cut -c1-110)"
else
    echo "FAIL: no checkpoint after scancel ($ck)"
    tail -5 "tandem-train-$id.out"
    fail=1
fi

# 3. the serving script as Slurm reads it
if out=$(sbatch --test-only --ntasks=2 "$ROOT/deploy/slurm/serve.sbatch" "$TINY_CK" tiny \
    tcp://127.0.0.1:5581 2>&1); then
    echo "serve.sbatch --test-only: $out"
else
    echo "FAIL: sbatch --test-only serve.sbatch: $out"
    fail=1
fi

# 4. serve.sbatch for real: a TP 2 replica as a Slurm job, registering with a coordinator's
#    router; a completion through the coordinator's gateway; scancel: it leaves the router
export TANDEM_KEYS=$W/keys
PORT=$((20000 + RANDOM % 12000))
"$TANDEM" coordinator --state "$W/state" --slots 1 --control "tcp://127.0.0.1:$PORT" \
    --replicas "tcp://127.0.0.1:$((PORT + 1))" --http "127.0.0.1:$((PORT + 2))" 2> coord.err &
COORD=$!
id=$(sbatch --parsable --ntasks=2 "$ROOT/deploy/slurm/serve.sbatch" "$TINY_CK" tiny \
    "tcp://127.0.0.1:$((PORT + 1))")
health() { curl -s -m 2 "http://127.0.0.1:$((PORT + 2))/health" 2> /dev/null || true; }
for _ in $(seq 300); do health | grep -q '"replicas":1' && break; sleep 0.1; done
out=$(curl -s -m 20 "http://127.0.0.1:$((PORT + 2))/v1/completions" \
    -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "prompt": "The", "max_tokens": 8, "temperature": 0}' || true)
if grep -q '"text"' <<< "$out"; then
    echo "serve.sbatch (TP 2, job $id): $(cut -c1-100 <<< "$out")"
else
    echo "FAIL: no completion from the Slurm replica: $out"
    tail -5 "tandem-serve-$id.out" coord.err
    fail=1
fi
scancel "$id"
gone=0
for _ in $(seq 300); do health | grep -q '"replicas":0' && gone=1 && break; sleep 0.1; done
wait_gone "$id" 60 || true
if [ $gone -eq 1 ]; then
    echo "scancel: the replica left the router ($(health | cut -c1-60))"
else
    echo "FAIL: the replica did not leave after scancel: $(health)"
    fail=1
fi
kill $COORD 2> /dev/null || true
wait $COORD 2> /dev/null || true

# 5. the coordinator's Slurm launcher: two 2-rank jobs on 2 slots run one after the other
#    as Slurm jobs (squeue shows them), and `tandem cancel` of a third becomes scancel
export TANDEM_COORDINATOR=tcp://127.0.0.1:$((PORT + 3))
"$TANDEM" coordinator --state "$W/state5" --slots 2 --launcher slurm \
    --replicas "tcp://127.0.0.1:$((PORT + 4))" 2> coord5.err &
COORD=$!
for _ in $(seq 100); do "$TANDEM" ps > /dev/null 2>&1 && break; sleep 0.1; done
job q1 60 && job q2 60 && job q3 100000
a=$("$TANDEM" submit q1.json --ranks 2)
b=$("$TANDEM" submit q2.json --ranks 2)
seen=""
st() { "$TANDEM" ps --json | python3 -c "import json,sys; print(next(j['state'] for j in json.load(sys.stdin) if j['id']==$1))"; }
for _ in $(seq 600); do
    q=$(squeue -h -o "%j %T" 2> /dev/null | grep tandem- || true)
    [ -n "$q" ] && [ -z "$seen" ] && seen=$q && echo "squeue while job $a runs: $q; job $b is $(st "$b")"
    [ "$(st "$a")" = done ] && [ "$(st "$b")" = done ] && break
    sleep 0.1
done
if [ "$(st "$a")" = done ] && [ "$(st "$b")" = done ] && [ -n "$seen" ] &&
    [ -d q1/step_00000060 ] && [ -d q2/step_00000060 ]; then
    echo "coordinator --launcher slurm: jobs $a and $b done, one after the other, through Slurm"
else
    echo "FAIL: the queue through Slurm: $a $(st "$a"), $b $(st "$b"), squeue saw: $seen"
    tail -5 coord5.err state5/jobs/*/log
    fail=1
fi
c=$("$TANDEM" submit q3.json --ranks 2)
for _ in $(seq 300); do
    [ "$(grep -c '"loss"' q3/metrics.jsonl 2> /dev/null || echo 0)" -ge 3 ] && break
    sleep 0.1
done
"$TANDEM" cancel "$c" > /dev/null
for _ in $(seq 300); do [ "$(st "$c")" = cancelled ] && break; sleep 0.1; done
for _ in $(seq 150); do # a cancelled Slurm job is COMPLETING for a moment
    left=$(squeue -h -o %j 2> /dev/null | grep -c tandem- || true)
    [ "$left" -eq 0 ] && break
    sleep 0.1
done
if [ "$(st "$c")" = cancelled ] && [ "$left" -eq 0 ] && ls -d q3/step_* > /dev/null 2>&1; then
    echo "tandem cancel $c -> scancel: cancelled, no Slurm job left, checkpoint $(ls -d q3/step_* | tail -1)"
else
    echo "FAIL: cancel through scancel: $(st "$c"), $left Slurm jobs left"
    squeue
    tail -5 "state5/jobs/$c/log"
    fail=1
fi
kill $COORD 2> /dev/null || true
wait $COORD 2> /dev/null || true
exit $fail
