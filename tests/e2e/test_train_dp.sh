#!/usr/bin/env bash
# Data-parallel training over MPI (ctest label mpi). Prints loss columns side by side.
#   1. equivalence: 20 steps at -np 2 (per-rank batch B/2) = 1 rank with batch B, within
#      1e-5 relative at every step; the same with ZeRO-1; -np 4 with grad_accum 2 = 1 rank
#      with grad_accum 2; gpt2 (tied embeddings) at -np 2
#   2. shard plan: over one epoch at -np 1, 2, 3 every window is read exactly once, and a
#      repeated run reads the same windows on the same ranks in the same order
#   3. elastic resume: a run saved at -np 2 (step 10) resumes at -np 1 and at -np 4 (also
#      with ZeRO-1 at -np 4); steps 11-20 match the uninterrupted -np 2 run within 1e-5
# Usage: test_train_dp.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
CORPUS=/usr/share/games/fortunes/fortunes
[ -f "$CORPUS" ] || { echo "missing $CORPUS (scripts/install-deps.sh installs fortunes)"; exit 1; }
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.05 "$CORPUS"

LLAMA='"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "intermediate_size": 128'
GPT2='"arch": "gpt2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4'
ARCH=$LLAMA
job() { # name batch accum zero steps
cat > "$1.json" <<JOB
{"model": {$ARCH, "vocab_size": 512, "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": $2, "grad_accum": $3, "zero": $4, "steps": $5, "lr": 3e-3, "warmup": 2,
           "weight_decay": 0.1, "seed": 3},
 "checkpoint": {"dir": "$1", "every": 10, "keep": 5}}
JOB
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
fail=0
compare() { # label dirA dirB [first_step]
    local from=${4:-1}
    echo "$1"
    echo "   step  $2  $3"
    paste <(losses "$2" | tail -n +"$from") <(losses "$3" | tail -n +"$from") |
        awk -v from="$from" '{ printf "   %4d  %s  %s\n", NR + from - 1, $1, $2 }'
    if ! paste <(losses "$2" | tail -n +"$from") <(losses "$3" | tail -n +"$from") |
        awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > 1e-5 || NF != 2) bad++ }
             END { exit bad ? 1 : 0 }'; then
        echo "   FAIL: differs by more than 1e-5 relative"; fail=1
    fi
}

# 1. equivalence
job one 8 1 0 20 && "$TANDEM" train one.json --quiet
job two 8 1 0 20 && mpirun -np 2 "$TANDEM" train two.json --quiet
compare "np=1 batch 8  vs  np=2 batch 4+4" one two
job tiny 8 1 0 20 && mpirun -np 2 "$TANDEM" train tiny.json --quiet --bucket-mb 0.01
compare "np=1  vs  np=2 with 10 KiB buckets (one per layer stage)" one tiny
job big1 32 1 0 10 && "$TANDEM" train big1.json --quiet
job big2 32 1 0 10 && mpirun -np 2 "$TANDEM" train big2.json --quiet
compare "batch 32 (more tokens than vocabulary: dense embedding gradient): np=1  vs  np=2" big1 big2
job zero2 8 1 1 20 && mpirun -np 2 "$TANDEM" train zero2.json --quiet
compare "np=1  vs  np=2 with ZeRO-1" one zero2
job acc1 8 2 0 20 && "$TANDEM" train acc1.json --quiet
job acc4 8 2 0 20 && mpirun -np 4 "$TANDEM" train acc4.json --quiet
compare "np=1 grad_accum 2  vs  np=4 grad_accum 2" acc1 acc4
ARCH=$GPT2 # tied embeddings: the lm_head part of wte is reduced early, lookup rows exchanged
job g1 8 1 0 20 && "$TANDEM" train g1.json --quiet
job g2 8 1 0 20 && mpirun -np 2 "$TANDEM" train g2.json --quiet
compare "gpt2 (tied): np=1  vs  np=2" g1 g2
ARCH=$LLAMA

# 2. shard plan over one epoch (windows: see the count in data)
nwin=$(( ( $(od -An -t d4 -j 8 -N 4 data/train_000000.bin) - 1 ) / 32 ))
steps=$(( nwin / 12 ))
for np in 1 2 3; do
    for rep in a b; do
        job plan$np$rep 12 1 0 $steps
        TD_TRACE_WINDOWS="$W/trace$np$rep" mpirun -np $np "$TANDEM" train plan$np$rep.json --quiet
    done
    cat trace${np}a.rank* | awk '{ print $3 }' | sort -n > seen$np
    total=$(wc -l < seen$np); uniq=$(sort -u seen$np | wc -l)
    same=yes
    for r in $(seq 0 $((np - 1))); do cmp -s trace${np}a.rank$r trace${np}b.rank$r || same=no; done
    echo "shard plan np=$np: $nwin windows, $steps steps x 12: read $total, distinct $uniq; repeat identical: $same"
    [ "$total" -eq $((steps * 12)) ] && [ "$uniq" -eq "$total" ] && [ $same = yes ] || { echo "   FAIL"; fail=1; }
done
# the same windows at every world size (the plan is the single-rank order, split)
for np in 2 3; do cmp -s seen1 seen$np || { echo "np=$np reads other windows than np=1"; fail=1; }; done

# 3. elastic resume from a checkpoint saved at np=2
for np in 1 4; do
    job el$np 8 1 0 20
    mpirun -np 2 "$TANDEM" train el$np.json --quiet --stop-at 10
    mpirun -np $np "$TANDEM" train el$np.json --quiet --resume
    compare "saved at np=2, resumed at np=$np (steps 11-20)  vs  np=2 uninterrupted" two el$np 11
done
job elz 8 1 1 20
mpirun -np 2 "$TANDEM" train elz.json --quiet --stop-at 10
mpirun -np 4 "$TANDEM" train elz.json --quiet --resume
compare "ZeRO-1 saved at np=2, resumed at np=4 (steps 11-20)  vs  np=2 uninterrupted" two elz 11
[ $fail -eq 0 ] && echo "test_train_dp: passed"
exit $fail
