#!/usr/bin/env bash
# The GPU check, in one script for a GPU machine (e.g. one H100 or H200):
#   1. builds the CUDA kernels (sm_90) and just enough of tandem's CPU side to serve as the
#      reference (no OpenBLAS, oneDNN, MPI or ZeroMQ needed there: a plain CBLAS stand-in,
#      bench/gpu/cblas_naive.c, and the bf16 products' sgemm fallback),
#   2. runs build-gpu/test_gpu_parity: every kernel and a whole training step (llama and
#      gpt2) against the CPU reference, relative error per tensor with bf16 tolerances,
#   3. times GPT-2 124M training (build-gpu/bench_gpu: tokens/s, MFU, roofline times) and
#      decode at batch 1 and 32,
#   4. writes the tables to $OUT/gpu_check.md (or ./gpu_check.md).
# bench_gpu also times decode (paged KV cache) at batch 1 and 32 on the same model.
# Needs nvcc, gcc with OpenMP, and the cJSON and CBLAS headers plus libcjson: from the
# system, or from build-gpu-carry/ (made here by `bench/gpu_check.sh --pack`, for a machine
# that lacks them; pass it along with the working tree). Finishes in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ "${1:-}" = "--pack" ]; then # on a machine with the Debian packages: collect what travels
    rm -rf build-gpu-carry && mkdir -p build-gpu-carry/include/cjson build-gpu-carry/lib
    cp /usr/include/cjson/cJSON.h build-gpu-carry/include/cjson/
    cp /usr/include/x86_64-linux-gnu/cblas.h /usr/include/x86_64-linux-gnu/openblas_config.h \
        build-gpu-carry/include/
    cp -L /usr/lib/x86_64-linux-gnu/libcjson.so.1 build-gpu-carry/lib/
    ln -sf libcjson.so.1 build-gpu-carry/lib/libcjson.so
    echo "gpu_check: packed build-gpu-carry/ ($(du -sh build-gpu-carry | cut -f1))"
    exit 0
fi
OUTDIR=${OUT:-$ROOT}
B=build-gpu
mkdir -p $B
INC=(-I"$ROOT" -I"$ROOT/build-gpu-carry/include")
LIB=(-L"$ROOT/build-gpu-carry/lib" -Wl,-rpath,"$ROOT/build-gpu-carry/lib")
CUDA=${CUDA_HOME:-/usr/local/cuda}
t0=$(date +%s)
echo "== build ($(nvcc --version | tail -1))"
PIDS=()
for f in ops attention; do
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 "${INC[@]}" \
        -c worker/kernels/cuda/$f.cu -o $B/$f.o &
    PIDS+=($!)
done
C_SRC=(common/status.c common/log.c common/rng.c common/timeutil.c common/json.c common/fsutil.c
       common/grow.c
       worker/kernels/cpu/ops_f32.c worker/kernels/cpu/bf16.c worker/kernels/cpu/blas_core.c
       worker/backend/cpu.c worker/backend/cuda.c worker/backend/registry.c
       worker/model/config.c worker/model/model.c worker/train/adamw.c
       worker/infer/infer_model.c worker/infer/infer_device.c worker/infer/tp_slice.c
       worker/infer/kv_cache.c worker/infer/gptq.c
       bench/gpu/cblas_naive.c)
OBJS=()
for s in "${C_SRC[@]}"; do
    o=$B/$(echo "$s" | tr '/' '_').o
    gcc -std=c11 -O2 -march=native -fopenmp -fno-math-errno -D_GNU_SOURCE -DTD_NO_DNNL -DTD_HAVE_CUDA=1 \
        "${INC[@]}" -I"$CUDA/include" -c "$s" -o "$o" &
    PIDS+=($!)
    OBJS+=("$o")
done
for p in "${PIDS[@]}"; do wait "$p" || { echo "gpu_check: a compile failed" >&2; exit 2; }; done
for prog in tests/gpu/test_gpu_parity.c bench/gpu/bench_gpu.c; do
    name=$(basename "$prog" .c)
    gcc -std=c11 -O2 -march=native -fopenmp -D_GNU_SOURCE "${INC[@]}" -I"$CUDA/include" \
        "$prog" "${OBJS[@]}" $B/ops.o $B/attention.o -o $B/$name "${LIB[@]}" \
        -L"$CUDA/lib64" -lcudart -lcublasLt -lcjson -lstdc++ -lm
done
echo "built in $(( $(date +%s) - t0 )) s"
{
    echo "# tandem GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    echo
    echo "## Kernel and training-step parity (GPU vs CPU reference)"
    echo '```'
    set +e
    timeout 240 $B/test_gpu_parity
    echo "exit status $?"
    echo '```'
    echo
    echo "## GPT-2 124M training"
    timeout 180 $B/bench_gpu --batch 16 --seq 1024 --steps 10
    echo "exit status $?"
    set -e
} 2>&1 | tee "$OUTDIR/gpu_check.md"
echo "gpu_check: $(( $(date +%s) - t0 )) s in all; table in $OUTDIR/gpu_check.md"
