// Fused causal attention, flash style (see cuda_ops.h).
//
// Forward: a block of 4 warps takes 4 consecutive query rows of one (batch, head); key and
// value rows come through shared memory 32 at a time; each lane scores one key of the
// tile, the warp keeps the running max, sum and output (online softmax), and the row's
// log-sum-exp is saved. Backward recomputes the probabilities from that log-sum-exp in two
// passes so that every gradient row is written by exactly one warp, in a fixed order (no
// atomics): pass 1 per query row gives dq, pass 2 per key row gives dk and dv, summing over
// the query heads that share the key head (grouped-query attention).
#include <math.h>

#include "worker/kernels/cuda/common.cuh"

#define ROWS 4    // query (or key) rows per block: one per warp
#define TILE 32   // keys (or queries) per shared-memory tile
#define MAXHD 128 // head sizes up to this, multiples of 32

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__global__ void attn_fwd_kernel(float *out, float *lse, const float *qkv, int T, int NH, int NKV,
                                int hd) {
    extern __shared__ float sm[];
    float *sq = sm;                   // [ROWS][hd]
    float *sk = sq + ROWS * hd;       // [TILE][hd + 1]
    float *sv = sk + TILE * (hd + 1); // [TILE][hd]
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (NH / NKV);
    int S = (NH + 2 * NKV) * hd, dpl = hd / 32;
    int t = blockIdx.x * ROWS + w;
    int tmax = min(T - 1, (int)(blockIdx.x * ROWS + ROWS - 1));
    const float *base = qkv + (size_t)b * T * S;
    float scale = rsqrtf((float)hd);
    if (t < T)
        for (int d = lane; d < hd; d += 32)
            sq[w * hd + d] = base[(size_t)t * S + h * hd + d];
    float m = -INFINITY, l = 0.0f, acc[MAXHD / 32];
    for (int r = 0; r < dpl; r++)
        acc[r] = 0.0f;
    for (int j0 = 0; j0 <= tmax; j0 += TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            float kv = 0.0f, vv = 0.0f;
            if (j < T) {
                kv = base[(size_t)j * S + (NH + kvh) * hd + d];
                vv = base[(size_t)j * S + (NH + NKV + kvh) * hd + d];
            }
            sk[jj * (hd + 1) + d] = kv;
            sv[jj * hd + d] = vv;
        }
        __syncthreads();
        if (t >= T || j0 > t) continue;
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= t) {
            float dot = 0.0f;
            for (int d = 0; d < hd; d++)
                dot += sq[w * hd + d] * sk[lane * (hd + 1) + d];
            s = dot * scale;
        }
        float mn = fmaxf(m, warp_max(s));
        float corr = expf(m - mn); // m = -inf at first: corr 0 multiplies zeros
        float p = j <= t ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(p);
        for (int r = 0; r < dpl; r++)
            acc[r] *= corr;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            for (int r = 0; r < dpl; r++)
                acc[r] += pj * sv[jj * hd + lane + 32 * r];
        }
        m = mn;
    }
    if (t < T) {
        float *o = out + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
        for (int r = 0; r < dpl; r++)
            o[lane + 32 * r] = acc[r] / l;
        if (lane == 0) lse[((size_t)b * NH + h) * T + t] = m + logf(l);
    }
}

// pass 1: dq of one query row per warp; also D = rowsum(dout * out) for pass 2
__global__ void attn_bwd_dq_kernel(float *dqkv, float *Dbuf, const float *dout, const float *out,
                                   const float *lse, const float *qkv, int T, int NH, int NKV,
                                   int hd) {
    extern __shared__ float sm[];
    float *sq = sm;                   // [ROWS][hd]
    float *sdo = sq + ROWS * hd;      // [ROWS][hd]
    float *sk = sdo + ROWS * hd;      // [TILE][hd + 1]
    float *sv = sk + TILE * (hd + 1); // [TILE][hd + 1]
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (NH / NKV);
    int S = (NH + 2 * NKV) * hd, dpl = hd / 32;
    int t = blockIdx.x * ROWS + w;
    int tmax = min(T - 1, (int)(blockIdx.x * ROWS + ROWS - 1));
    const float *base = qkv + (size_t)b * T * S;
    float scale = rsqrtf((float)hd), D = 0.0f, z = 0.0f;
    if (t < T) {
        const float *dor = dout + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
        const float *orow = out + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
        float part = 0.0f;
        for (int d = lane; d < hd; d += 32) {
            sq[w * hd + d] = base[(size_t)t * S + h * hd + d];
            sdo[w * hd + d] = dor[d];
            part += dor[d] * orow[d];
        }
        D = warp_sum(part);
        z = lse[((size_t)b * NH + h) * T + t];
        if (lane == 0) Dbuf[((size_t)b * NH + h) * T + t] = D;
    }
    float dq[MAXHD / 32];
    for (int r = 0; r < dpl; r++)
        dq[r] = 0.0f;
    for (int j0 = 0; j0 <= tmax; j0 += TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            sk[jj * (hd + 1) + d] = j < T ? base[(size_t)j * S + (NH + kvh) * hd + d] : 0.0f;
            sv[jj * (hd + 1) + d] = j < T ? base[(size_t)j * S + (NH + NKV + kvh) * hd + d] : 0.0f;
        }
        __syncthreads();
        if (t >= T || j0 > t) continue;
        int j = j0 + lane;
        float ds = 0.0f;
        if (j <= t) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < hd; d++) {
                s += sq[w * hd + d] * sk[lane * (hd + 1) + d];
                dp += sdo[w * hd + d] * sv[lane * (hd + 1) + d];
            }
            float p = expf(s * scale - z);
            ds = p * (dp - D);
        }
        for (int jj = 0; jj < TILE; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            for (int r = 0; r < dpl; r++)
                dq[r] += dsj * sk[jj * (hd + 1) + lane + 32 * r];
        }
    }
    if (t < T) {
        float *o = dqkv + ((size_t)b * T + t) * S + (size_t)h * hd;
        for (int r = 0; r < dpl; r++)
            o[lane + 32 * r] = dq[r] * scale;
    }
}

// pass 2: dk and dv of one key row per warp, over the query heads of its group
__global__ void attn_bwd_dkv_kernel(float *dqkv, const float *Dbuf, const float *dout,
                                    const float *lse, const float *qkv, int T, int NH, int NKV,
                                    int hd) {
    extern __shared__ float sm[];
    float *skr = sm;                   // [ROWS][hd] this block's key rows
    float *svr = skr + ROWS * hd;      // [ROWS][hd] value rows
    float *sq = svr + ROWS * hd;       // [TILE][hd + 1] query tile
    float *sdo = sq + TILE * (hd + 1); // [TILE][hd + 1] dout tile
    __shared__ float sz[TILE], sD[TILE];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kvh = blockIdx.y, b = blockIdx.z, group = NH / NKV;
    int S = (NH + 2 * NKV) * hd, dpl = hd / 32;
    int j = blockIdx.x * ROWS + w;
    int jmin = blockIdx.x * ROWS;
    const float *base = qkv + (size_t)b * T * S;
    float scale = rsqrtf((float)hd);
    if (j < T)
        for (int d = lane; d < hd; d += 32) {
            skr[w * hd + d] = base[(size_t)j * S + (NH + kvh) * hd + d];
            svr[w * hd + d] = base[(size_t)j * S + (NH + NKV + kvh) * hd + d];
        }
    float dk[MAXHD / 32], dv[MAXHD / 32];
    for (int r = 0; r < dpl; r++)
        dk[r] = dv[r] = 0.0f;
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int t0 = jmin; t0 < T; t0 += TILE) {
            __syncthreads();
            for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
                int tt = e / hd, d = e % hd, t = t0 + tt;
                sq[tt * (hd + 1) + d] = t < T ? base[(size_t)t * S + h * hd + d] : 0.0f;
                sdo[tt * (hd + 1) + d] =
                    t < T ? dout[((size_t)b * T + t) * NH * hd + (size_t)h * hd + d] : 0.0f;
            }
            if (threadIdx.x < TILE) {
                int t = t0 + threadIdx.x;
                sz[threadIdx.x] = t < T ? lse[((size_t)b * NH + h) * T + t] : 0.0f;
                sD[threadIdx.x] = t < T ? Dbuf[((size_t)b * NH + h) * T + t] : 0.0f;
            }
            __syncthreads();
            if (j >= T) continue;
            int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t < T && t >= j) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < hd; d++) {
                    s += sq[lane * (hd + 1) + d] * skr[w * hd + d];
                    dp += sdo[lane * (hd + 1) + d] * svr[w * hd + d];
                }
                p = expf(s * scale - sz[lane]);
                ds = p * (dp - sD[lane]);
            }
            for (int tt = 0; tt < TILE; tt++) {
                float pt = __shfl_sync(0xffffffffu, p, tt), dst = __shfl_sync(0xffffffffu, ds, tt);
                for (int r = 0; r < dpl; r++) {
                    dv[r] += pt * sdo[tt * (hd + 1) + lane + 32 * r];
                    dk[r] += dst * sq[tt * (hd + 1) + lane + 32 * r];
                }
            }
        }
    }
    if (j < T) {
        float *row = dqkv + ((size_t)b * T + j) * S;
        for (int r = 0; r < dpl; r++) {
            row[(NH + kvh) * hd + lane + 32 * r] = dk[r] * scale;
            row[(NH + NKV + kvh) * hd + lane + 32 * r] = dv[r];
        }
    }
}

static td_status check_shape(int NH, int NKV, int hd) {
    if (hd % 32 || hd > MAXHD || NKV <= 0 || NH % NKV)
        return td_error_set(TD_ERR_INVALID,
                            "CUDA attention needs a head size that is a multiple "
                            "of 32 up to %d and heads divisible by kv heads (got hd %d, %d/%d)",
                            MAXHD, hd, NH, NKV);
    return TD_OK;
}

extern "C" td_status td_cuda_attention_fwd(td_cuda *c, float *out, float *lse, const float *qkv,
                                           int B, int T, int NH, int NKV, int hd) {
    TD_TRY(check_shape(NH, NKV, hd));
    size_t smem = sizeof(float) * (size_t)(ROWS * hd + TILE * (hd + 1) + TILE * hd);
    dim3 grid((T + ROWS - 1) / ROWS, NH, B);
    attn_fwd_kernel<<<grid, 32 * ROWS, smem, c->stream>>>(out, lse, qkv, T, NH, NKV, hd);
    TD_CU_LAUNCHED();
    return TD_OK;
}

extern "C" td_status td_cuda_attention_bwd(td_cuda *c, float *dqkv, const float *dout,
                                           const float *out, const float *lse, const float *qkv,
                                           int B, int T, int NH, int NKV, int hd) {
    TD_TRY(check_shape(NH, NKV, hd));
    TD_TRY(td_cuda_scratch(c, sizeof(float) * (size_t)B * NH * T));
    float *D = (float *)c->scratch;
    size_t smem1 = sizeof(float) * (size_t)(2 * ROWS * hd + 2 * TILE * (hd + 1));
    dim3 g1((T + ROWS - 1) / ROWS, NH, B);
    attn_bwd_dq_kernel<<<g1, 32 * ROWS, smem1, c->stream>>>(dqkv, D, dout, out, lse, qkv, T, NH,
                                                            NKV, hd);
    TD_CU_LAUNCHED();
    size_t smem2 = sizeof(float) * (size_t)(2 * ROWS * hd + 2 * TILE * (hd + 1));
    dim3 g2((T + ROWS - 1) / ROWS, NKV, B);
    attn_bwd_dkv_kernel<<<g2, 32 * ROWS, smem2, c->stream>>>(dqkv, D, dout, lse, qkv, T, NH, NKV,
                                                             hd);
    TD_CU_LAUNCHED();
    return TD_OK;
}
