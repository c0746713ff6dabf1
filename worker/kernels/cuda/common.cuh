// Shared by the CUDA sources: the context, error checks, block reductions.
#ifndef TD_CUDA_COMMON_CUH
#define TD_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "worker/kernels/cuda/cuda_ops.h"

struct td_cuda {
    int device;
    char name[300];
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace; // cuBLASLt workspace
    size_t workspace_bytes;
    void *scratch; // small per-call buffers (embedding groups, loss rows, reductions)
    size_t scratch_bytes;
};

// Returns from the calling function with a td_status naming the call and the CUDA error.
#define TD_CU_TRY(x)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess)                                                                     \
            return td_error_set(TD_ERR_RUNTIME, "CUDA: %s failed at %s:%d: %s (%s)", #x, __FILE__, \
                                __LINE__, cudaGetErrorString(e_), cudaGetErrorName(e_));           \
    } while (0)
#define TD_CU_LAUNCHED() TD_CU_TRY(cudaGetLastError())
#define TD_LT_TRY(x)                                                                               \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return td_error_set(TD_ERR_RUNTIME, "cuBLASLt: %s failed at %s:%d (status %d)", #x,    \
                                __FILE__, __LINE__, (int)s_);                                      \
    } while (0)

// Grows the context's scratch to at least `bytes`.
td_status td_cuda_scratch(td_cuda *c, size_t bytes);

// Sum over a block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ inline float block_sum(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ inline float block_max(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

inline unsigned blocks_for(size_t n, unsigned threads) {
    return (unsigned)((n + threads - 1) / threads);
}

#endif
