#!/usr/bin/env bash
# The OpenBLAS core-type correction (worker/kernels/cpu/blas_core.h), on a simulated CPU that
# OpenBLAS does not know: the test hook TANDEM_TEST_BLAS_DETECTED=1 makes tandem treat
# OPENBLAS_CORETYPE=Prescott as OpenBLAS's own choice, which is what Debian's OpenBLAS
# 0.3.21 does on CPUs newer than itself. Checks, on the tandem binary:
#   1. the simulated misdetection is corrected to the core this CPU's flags support
#      (/proc/cpuinfo: AVX-512 F/CD/BW/DQ/VL -> SkylakeX, AVX2+FMA -> Haswell or Zen,
#      AVX -> SandyBridge), and `tandem version` says so;
#   2. an OPENBLAS_CORETYPE the user set is kept and named as the user's; one OpenBLAS does
#      not run (misspelt) is named as such; a stray TANDEM_BLAS_CORRECTED claims nothing;
#   3. TANDEM_BLAS_CHECK=0 leaves OpenBLAS's choice alone; started through the dynamic
#      loader (where /proc/self/exe is ld.so) it cannot re-run itself and says so, and works;
#   4. under `mpirun -np 2 tandem train` every rank is corrected (re-executed before MPI
#      starts; rank 0 gathers each rank's core) and the job logs its kernels once; a rank
#      left on other kernels is named in a warning.
# Usage: test_blas_core.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
fail=0
check() { # description, then a command that must succeed
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
want=""
if has avx512f && has avx512cd && has avx512bw && has avx512dq && has avx512vl; then
    want=SkylakeX
elif has avx2 && has fma; then
    grep -q AuthenticAMD /proc/cpuinfo && want=Zen || want=Haswell
elif has avx; then
    want=SandyBridge
fi
echo "this CPU supports OpenBLAS core: ${want:-(no AVX: nothing to correct)}"
echo "as shipped: $(TANDEM_BLAS_CHECK=0 "$TANDEM" version | sed -n 's/^kernels: //p')"

# 1. simulated unknown CPU
out=$(TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott "$TANDEM" version)
echo "simulated unknown CPU: $(echo "$out" | sed -n 's/^kernels: //p')"
if [ -n "$want" ]; then
    check "Prescott corrected to $want" grep -q "core $want (set by tandem: OpenBLAS chose Prescott" <<< "$out"
else
    check "no AVX: Prescott kept" grep -q "core Prescott" <<< "$out"
fi
check "the line names oneDNN's instruction set" grep -Eq "bf16: oneDNN [a-z0-9_]+" <<< "$out"

# 2. the user's core type is kept
out=$(OPENBLAS_CORETYPE=Prescott "$TANDEM" version)
echo "user's OPENBLAS_CORETYPE=Prescott: $(echo "$out" | sed -n 's/^kernels: //p')"
check "the user's Prescott kept and named" grep -q "core Prescott (OPENBLAS_CORETYPE=Prescott set by the user" <<< "$out"

out=$(OPENBLAS_CORETYPE=Skylakx "$TANDEM" version)
check "a misspelt OPENBLAS_CORETYPE is named as not run" \
    grep -q 'OPENBLAS_CORETYPE="Skylakx" set by the user is not a core this OpenBLAS runs' <<< "$out"
out=$(TANDEM_BLAS_CORRECTED=Haswell OPENBLAS_CORETYPE=Prescott "$TANDEM" version)
check "a stray TANDEM_BLAS_CORRECTED: the user's Prescott still the user's" \
    grep -q "core Prescott (OPENBLAS_CORETYPE=Prescott set by the user" <<< "$out"
out=$(TANDEM_TEST_BLAS_DETECTED=0 OPENBLAS_CORETYPE=Prescott "$TANDEM" version)
check "the test hook takes only 1" grep -q "core Prescott (OPENBLAS_CORETYPE=Prescott set by the user" <<< "$out"

# 3. the check turned off; started through the dynamic loader
out=$(TANDEM_BLAS_CHECK=0 TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott "$TANDEM" version)
check "TANDEM_BLAS_CHECK=0: no correction" grep -q "core Prescott" <<< "$out"
LDSO=$(ldd "$TANDEM" | grep -o '/[^ ]*ld-linux[^ ]*' | head -1 || true)
if [ -n "$want" ] && [ -x "$LDSO" ]; then
    out=$(TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott "$LDSO" "$TANDEM" version 2>&1)
    echo "through $LDSO: $(echo "$out" | grep -o 'could not re-run itself.*')"
    check "through the dynamic loader: runs, and says it could not re-run itself" \
        grep -q "could not re-run itself with OPENBLAS_CORETYPE=$want (/proc/self/exe is" <<< "$out"
    check "through the dynamic loader: version still printed" grep -q '^tandem ' <<< "$out"
fi

# 4. a data-parallel job: corrected on every rank, logged once
CORPUS=/usr/share/games/fortunes/fortunes
"$TANDEM" prep --out data --quiet --vocab-size 300 --delimiter % --val-fraction 0.05 "$CORPUS"
cat > job.json <<'JOB'
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 32},
 "data": {"train": "data", "seq_len": 16},
 "train": {"batch_size": 4, "steps": 2, "lr": 1e-3, "seed": 1},
 "checkpoint": {"dir": "run", "every": 2, "keep": 1}, "device": "cpu"}
JOB
TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott mpirun -np 2 \
    "$TANDEM" train job.json 2> train.err > train.out
grep 'kernels' train.err
check "the job logs its kernels once" test "$(grep -c 'INFO: kernels: fp32' train.err)" = 1
if [ -n "$want" ]; then
    check "rank 0 trained on $want" grep -q "core $want (set by tandem" train.err
    check "every rank's train process runs $want" grep -q "the same core ($want) on all 2 ranks" train.err
    # rank 1 left on the library's choice: named in a warning
    rm -rf run
    mpirun -np 1 env TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott "$TANDEM" train job.json : \
        -np 1 env TANDEM_BLAS_CHECK=0 TANDEM_TEST_BLAS_DETECTED=1 OPENBLAS_CORETYPE=Prescott \
        "$TANDEM" train job.json 2> mixed.err > mixed.out
    grep 'different' mixed.err || true
    check "a rank on other kernels is named" \
        grep -q "ranks run different OpenBLAS kernels: rank 0 $want, rank 1 Prescott" mixed.err
fi
exit $fail
