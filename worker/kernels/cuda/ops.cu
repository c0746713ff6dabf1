// CUDA kernels except attention (see cuda_ops.h for the contract of each).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/kernels/cuda/common.cuh"

// ------------------------------------------------------------------------------------------
// context

extern "C" int td_cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why) snprintf(why, why_len, "%s (%s)", cudaGetErrorName(e), cudaGetErrorString(e));
        cudaGetLastError(); // clear
        return 0;
    }
    if (n == 0 && why) snprintf(why, why_len, "no CUDA device");
    return n;
}

td_status td_cuda_scratch(td_cuda *c, size_t bytes) {
    if (bytes <= c->scratch_bytes) return TD_OK;
    TD_CU_TRY(cudaStreamSynchronize(c->stream)); /* kernels queued may still read it */
    if (c->scratch) TD_CU_TRY(cudaFree(c->scratch));
    c->scratch = NULL;
    c->scratch_bytes = 0;
    TD_CU_TRY(cudaMalloc(&c->scratch, bytes));
    c->scratch_bytes = bytes;
    return TD_OK;
}

extern "C" td_status td_cuda_new(int device, td_cuda **out) {
    *out = NULL;
    td_cuda *c = (td_cuda *)calloc(1, sizeof *c);
    if (!c) return td_error_set(TD_ERR_NOMEM, "out of memory");
    c->device = device;
    td_status s = TD_OK;
    cudaDeviceProp p;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&p, device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    c->workspace_bytes = 64u << 20;
    if (e == cudaSuccess) e = cudaMalloc(&c->workspace, c->workspace_bytes);
    if (e != cudaSuccess) {
        s = td_error_set(TD_ERR_RUNTIME, "CUDA device %d: %s (%s)", device, cudaGetErrorString(e),
                         cudaGetErrorName(e));
    } else if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        s = td_error_set(TD_ERR_RUNTIME, "cuBLASLt: cannot create a handle");
    }
    if (s != TD_OK) {
        td_cuda_free(&c);
        return s;
    }
    snprintf(c->name, sizeof c->name, "%s (sm_%d%d)", p.name, p.major, p.minor);
    *out = c;
    return TD_OK;
}

extern "C" void td_cuda_free(td_cuda **cp) {
    if (!cp || !*cp) return;
    td_cuda *c = *cp;
    if (c->lt) cublasLtDestroy(c->lt);
    if (c->workspace) cudaFree(c->workspace);
    if (c->scratch) cudaFree(c->scratch);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    *cp = NULL;
}

extern "C" const char *td_cuda_device_name(const td_cuda *c) {
    return c->name;
}

extern "C" td_status td_cuda_sync(td_cuda *c) {
    TD_CU_TRY(cudaStreamSynchronize(c->stream));
    return TD_OK;
}

extern "C" td_status td_cuda_alloc(void **p, size_t bytes) {
    TD_CU_TRY(cudaMalloc(p, bytes ? bytes : 1));
    return TD_OK;
}

extern "C" void td_cuda_release(void *p) {
    if (p) cudaFree(p);
}

extern "C" td_status td_cuda_upload(td_cuda *c, void *dst, const void *src, size_t bytes) {
    TD_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return td_cuda_sync(c);
}

extern "C" td_status td_cuda_download(td_cuda *c, void *dst, const void *src, size_t bytes) {
    TD_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    return td_cuda_sync(c);
}

extern "C" td_status td_cuda_zero(td_cuda *c, void *p, size_t bytes) {
    TD_CU_TRY(cudaMemsetAsync(p, 0, bytes, c->stream));
    return TD_OK;
}

// ------------------------------------------------------------------------------------------
// bf16 and matrix products

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" td_status td_cuda_to_bf16(td_cuda *c, uint16_t *dst, const float *src, size_t n) {
    if (!n) return TD_OK;
    to_bf16_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>((__nv_bfloat16 *)dst, src, n);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// The largest power of two (at most 256) that divides the address: cuBLASLt assumes 256
// unless told, and our buffers are carved at arbitrary float offsets.
static uint32_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1)))
        al >>= 1;
    return al;
}

__global__ void add_bias_kernel(float *C, const float *bias, int M, int N) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)M * N) C[i] += bias[i % N];
}

// Row-major C (M,N) = op(A) op(B) is column-major C^T (N,M) = op(B)^T op(A)^T: cuBLASLt's
// first operand is our B (as stored), the second our A.
extern "C" td_status td_cuda_matmul_bf16(td_cuda *c, float *C, const uint16_t *A, const uint16_t *B,
                                         const float *bias, int M, int N, int K, int transA,
                                         int transB, int accumulate) {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    td_status s = TD_OK;
    cublasOperation_t ta = transB ? CUBLAS_OP_T : CUBLAS_OP_N; // on our B
    cublasOperation_t tb = transA ? CUBLAS_OP_T : CUBLAS_OP_N; // on our A
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (M == 0 || N == 0) return TD_OK;
    /* the bias epilogue wants a 16-byte aligned vector; otherwise a kernel adds it after */
    const float *late_bias = bias && align_of(bias) < 16 ? bias : NULL;
    if (late_bias) bias = NULL;
#define LT(x)                                                                                      \
    do {                                                                                           \
        cublasStatus_t st_ = (x);                                                                  \
        if (st_ != CUBLAS_STATUS_SUCCESS && s == TD_OK)                                            \
            s = td_error_set(TD_ERR_RUNTIME, "cuBLASLt: %s failed (status %d) for %dx%dx%d", #x,   \
                             (int)st_, M, N, K);                                                   \
    } while (0)
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (s == TD_OK) {
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (bias) {
            cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
            cudaDataType_t bt = CUDA_R_32F;
            LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
            LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof bias));
            LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                              sizeof bt));
        }
        // stored shapes, column-major: our B is (N,K) when not transposed (ld N) else (K,N)
        LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, transB ? K : N, transB ? N : K,
                                      transB ? K : N));
        LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, transA ? M : K, transA ? K : M,
                                      transA ? M : K));
        LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, M, N));
        LT(cublasLtMatmulPreferenceCreate(&pref));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &c->workspace_bytes, sizeof c->workspace_bytes));
        uint32_t aa = align_of(B), ab = align_of(A), ac = align_of(C);
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &aa, sizeof aa));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &ab, sizeof ab));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &ac, sizeof ac));
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &ac, sizeof ac));
    }
    cublasLtMatmulHeuristicResult_t h;
    int found = 0;
    if (s == TD_OK) {
        LT(cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, lc, lc, pref, 1, &h, &found));
        if (s == TD_OK && found == 0)
            s = td_error_set(TD_ERR_RUNTIME, "cuBLASLt: no algorithm for %dx%dx%d bf16", M, N, K);
    }
    if (s == TD_OK)
        LT(cublasLtMatmul(c->lt, op, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &h.algo,
                          c->workspace, c->workspace_bytes, c->stream));
#undef LT
    if (s == TD_OK && late_bias) {
        add_bias_kernel<<<blocks_for((size_t)M * N, 256), 256, 0, c->stream>>>(C, late_bias, M, N);
        if (cudaGetLastError() != cudaSuccess)
            s = td_error_set(TD_ERR_RUNTIME, "CUDA: bias kernel launch failed");
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return s;
}

// ------------------------------------------------------------------------------------------
// embeddings

__global__ void embed_fwd_kernel(float *out, const int32_t *tok, const float *wte, const float *wpe,
                                 int T, int C) {
    int n = blockIdx.x;
    const float *e = wte + (size_t)tok[n] * C;
    const float *p = wpe ? wpe + (size_t)(n % T) * C : NULL;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[(size_t)n * C + i] = e[i] + (p ? p[i] : 0.0f);
}

extern "C" td_status td_cuda_embed_fwd(td_cuda *c, float *out, const int32_t *tok, const float *wte,
                                       const float *wpe, int N, int T, int C) {
    embed_fwd_kernel<<<N, 256, 0, c->stream>>>(out, tok, wte, wpe, T, C);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// one block per distinct token: its positions (in increasing order) summed in that order
__global__ void embed_bwd_wte_kernel(float *dwte, const float *dout, const int32_t *uniq,
                                     const int32_t *start, const int32_t *pos, int C) {
    int u = blockIdx.x;
    float *d = dwte + (size_t)uniq[u] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float acc = 0.0f;
        for (int k = start[u]; k < start[u + 1]; k++)
            acc += dout[(size_t)pos[k] * C + i];
        d[i] += acc;
    }
}

__global__ void embed_bwd_wpe_kernel(float *dwpe, const float *dout, int N, int T, int C) {
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float acc = 0.0f;
        for (int n = t; n < N; n += T)
            acc += dout[(size_t)n * C + i];
        dwpe[(size_t)t * C + i] += acc;
    }
}

extern "C" td_status td_cuda_embed_bwd(td_cuda *c, float *dwte, float *dwpe, const float *dout,
                                       const int32_t *tok_host, int N, int T, int C) {
    if (N <= 0) return TD_OK;
    if (dwte) { // group positions by token on the host (counting sort keeps position order)
        int maxtok = 0;
        for (int n = 0; n < N; n++) {
            if (tok_host[n] < 0)
                return td_error_set(TD_ERR_INVALID, "negative token id at position %d", n);
            maxtok = tok_host[n] > maxtok ? tok_host[n] : maxtok;
        }
        int32_t *count = (int32_t *)calloc((size_t)maxtok + 2, sizeof(int32_t));
        int32_t *host = (int32_t *)malloc(sizeof(int32_t) * (size_t)(3 * N + 1));
        if (!count || !host) {
            free(count);
            free(host);
            return td_error_set(TD_ERR_NOMEM, "out of memory");
        }
        for (int n = 0; n < N; n++)
            count[tok_host[n] + 1]++;
        for (int t = 0; t <= maxtok; t++)
            count[t + 1] += count[t];
        int32_t *uniq = host, *start = host + N, *pos = host + 2 * N + 1;
        int U = 0;
        for (int t = 0; t <= maxtok; t++)
            if (count[t + 1] > count[t]) {
                uniq[U] = t;
                start[U++] = count[t];
            }
        start[U] = N;
        for (int n = 0; n < N; n++)
            pos[count[tok_host[n]]++] = n;
        free(count);
        size_t bytes = sizeof(int32_t) * (size_t)(3 * N + 1);
        td_status s = td_cuda_scratch(c, bytes);
        if (s == TD_OK) {
            int32_t *d = (int32_t *)c->scratch;
            // start follows uniq's U entries; copy uniq, start and pos as one block
            int32_t *packed = (int32_t *)malloc(bytes);
            if (!packed) {
                free(host);
                return td_error_set(TD_ERR_NOMEM, "out of memory");
            }
            memcpy(packed, uniq, sizeof(int32_t) * (size_t)U);
            memcpy(packed + U, start, sizeof(int32_t) * (size_t)(U + 1));
            memcpy(packed + 2 * U + 1, pos, sizeof(int32_t) * (size_t)N);
            s = td_cuda_upload(c, d, packed, sizeof(int32_t) * (size_t)(2 * U + 1 + N));
            free(packed);
            if (s == TD_OK) {
                embed_bwd_wte_kernel<<<U, 256, 0, c->stream>>>(dwte, dout, d, d + U, d + 2 * U + 1,
                                                               C);
                if (cudaGetLastError() != cudaSuccess)
                    s = td_error_set(TD_ERR_RUNTIME, "CUDA: embedding backward launch failed");
            }
        }
        free(host);
        TD_TRY(s);
    }
    if (dwpe) {
        embed_bwd_wpe_kernel<<<T, 256, 0, c->stream>>>(dwpe, dout, N, T, C);
        TD_CU_LAUNCHED();
    }
    return td_cuda_sync(c); // the scratch is reused by the next call
}

// ------------------------------------------------------------------------------------------
// norms: one block per row; parameter gradients by a column kernel (rows in order)

__global__ void rmsnorm_fwd_kernel(float *out, float *rstd, const float *x, const float *w, int C,
                                   float eps) {
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float r = rsqrtf(ss / C + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[(size_t)n * C + i] = xr[i] * r * w[i];
}

__global__ void rmsnorm_bwd_dx_kernel(float *dx, const float *dout, const float *x, const float *w,
                                      const float *rstd, int C) {
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float r = rstd[n], s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        s += dy[i] * w[i] * xr[i];
    s = block_sum(s);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        dx[(size_t)n * C + i] += r * w[i] * dy[i] - r * r * r * xr[i] * s / C;
}

// dw[i] += sum_n dout*x*rstd (and db[i] += sum_n dout with mean != NULL: layernorm)
__global__ void norm_bwd_params_kernel(float *dw, float *db, const float *dout, const float *x,
                                       const float *mean, const float *rstd, int N, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C) return;
    float aw = 0.0f, ab = 0.0f;
    for (int n = 0; n < N; n++) {
        float dy = dout[(size_t)n * C + i];
        float xh = (x[(size_t)n * C + i] - (mean ? mean[n] : 0.0f)) * rstd[n];
        aw += dy * xh;
        ab += dy;
    }
    dw[i] += aw;
    if (db) db[i] += ab;
}

extern "C" td_status td_cuda_rmsnorm_fwd(td_cuda *c, float *out, float *rstd, const float *x,
                                         const float *w, int N, int C, float eps) {
    rmsnorm_fwd_kernel<<<N, 256, 0, c->stream>>>(out, rstd, x, w, C, eps);
    TD_CU_LAUNCHED();
    return TD_OK;
}

extern "C" td_status td_cuda_rmsnorm_bwd(td_cuda *c, float *dx, float *dw, const float *dout,
                                         const float *x, const float *w, const float *rstd, int N,
                                         int C) {
    rmsnorm_bwd_dx_kernel<<<N, 256, 0, c->stream>>>(dx, dout, x, w, rstd, C);
    norm_bwd_params_kernel<<<blocks_for((size_t)C, 128), 128, 0, c->stream>>>(dw, NULL, dout, x,
                                                                              NULL, rstd, N, C);
    TD_CU_LAUNCHED();
    return TD_OK;
}

__global__ void layernorm_fwd_kernel(float *out, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int C, float eps) {
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        s += xr[i];
    float mu = block_sum(s) / C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        v += (xr[i] - mu) * (xr[i] - mu);
    float r = rsqrtf(block_sum(v) / C + eps);
    if (threadIdx.x == 0) {
        mean[n] = mu;
        rstd[n] = r;
    }
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[(size_t)n * C + i] = (xr[i] - mu) * r * w[i] + (b ? b[i] : 0.0f);
}

__global__ void layernorm_bwd_dx_kernel(float *dx, const float *dout, const float *x,
                                        const float *w, const float *mean, const float *rstd,
                                        int C) {
    int n = blockIdx.x;
    const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
    float mu = mean[n], r = rstd[n], s1 = 0.0f, s2 = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float g = dy[i] * w[i], xh = (xr[i] - mu) * r;
        s1 += g;
        s2 += g * xh;
    }
    s1 = block_sum(s1) / C;
    s2 = block_sum(s2) / C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float g = dy[i] * w[i], xh = (xr[i] - mu) * r;
        dx[(size_t)n * C + i] += r * (g - s1 - xh * s2);
    }
}

extern "C" td_status td_cuda_layernorm_fwd(td_cuda *c, float *out, float *mean, float *rstd,
                                           const float *x, const float *w, const float *b, int N,
                                           int C, float eps) {
    layernorm_fwd_kernel<<<N, 256, 0, c->stream>>>(out, mean, rstd, x, w, b, C, eps);
    TD_CU_LAUNCHED();
    return TD_OK;
}

extern "C" td_status td_cuda_layernorm_bwd(td_cuda *c, float *dx, float *dw, float *db,
                                           const float *dout, const float *x, const float *w,
                                           const float *mean, const float *rstd, int N, int C) {
    layernorm_bwd_dx_kernel<<<N, 256, 0, c->stream>>>(dx, dout, x, w, mean, rstd, C);
    norm_bwd_params_kernel<<<blocks_for((size_t)C, 128), 128, 0, c->stream>>>(dw, db, dout, x, mean,
                                                                              rstd, N, C);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// ------------------------------------------------------------------------------------------
// rotary embedding (Hugging Face rotate-half layout; the angle formed in fp32 as HF does)

__global__ void rope_kernel(float *qkv, int N, int T, int S, int nheads, int hd, float theta,
                            int inverse) {
    int half = hd / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)N * nheads * half;
    if (idx >= total) return;
    int i = (int)(idx % half), h = (int)((idx / half) % nheads), n = (int)(idx / half / nheads);
    double inv_freq = 1.0 / pow((double)theta, (double)(2 * i) / (double)hd);
    float a = (float)(n % T) * (float)inv_freq;
    float cs = (float)cos((double)a), sn = (float)sin((double)a);
    if (inverse) sn = -sn;
    float *x = qkv + (size_t)n * S + (size_t)h * hd;
    float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cs - x2 * sn;
    x[i + half] = x2 * cs + x1 * sn;
}

extern "C" td_status td_cuda_rope(td_cuda *c, float *qkv, int N, int T, int S, int nheads, int hd,
                                  float theta, int inverse) {
    size_t total = (size_t)N * nheads * (hd / 2);
    if (total == 0) return TD_OK;
    rope_kernel<<<blocks_for(total, 256), 256, 0, c->stream>>>(qkv, N, T, S, nheads, hd, theta,
                                                               inverse);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// ------------------------------------------------------------------------------------------
// activations, residual

__global__ void swiglu_fwd_kernel(float *h, const float *gu, int N, int F) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * F) return;
    size_t n = idx / F, j = idx % F;
    float g = gu[n * 2 * F + j], u = gu[n * 2 * F + F + j];
    h[idx] = g / (1.0f + expf(-g)) * u;
}

__global__ void swiglu_bwd_kernel(float *dgu, const float *dh, const float *gu, int N, int F) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * F) return;
    size_t n = idx / F, j = idx % F;
    float g = gu[n * 2 * F + j], u = gu[n * 2 * F + F + j];
    float sg = 1.0f / (1.0f + expf(-g)), silu = g * sg;
    dgu[n * 2 * F + j] = dh[idx] * u * sg * (1.0f + g * (1.0f - sg));
    dgu[n * 2 * F + F + j] = dh[idx] * silu;
}

#define GELU_K 0.7978845608028654f // sqrt(2/pi)

__global__ void gelu_fwd_kernel(float *out, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    out[i] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + 0.044715f * v * v * v)));
}

__global__ void gelu_bwd_kernel(float *dx, const float *dout, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i], t = tanhf(GELU_K * (v + 0.044715f * v * v * v));
    float d =
        0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
    dx[i] = dout[i] * d;
}

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" td_status td_cuda_swiglu_fwd(td_cuda *c, float *h, const float *gu, int N, int F) {
    swiglu_fwd_kernel<<<blocks_for((size_t)N * F, 256), 256, 0, c->stream>>>(h, gu, N, F);
    TD_CU_LAUNCHED();
    return TD_OK;
}
extern "C" td_status td_cuda_swiglu_bwd(td_cuda *c, float *dgu, const float *dh, const float *gu,
                                        int N, int F) {
    swiglu_bwd_kernel<<<blocks_for((size_t)N * F, 256), 256, 0, c->stream>>>(dgu, dh, gu, N, F);
    TD_CU_LAUNCHED();
    return TD_OK;
}
extern "C" td_status td_cuda_gelu_fwd(td_cuda *c, float *out, const float *x, size_t n) {
    gelu_fwd_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(out, x, n);
    TD_CU_LAUNCHED();
    return TD_OK;
}
extern "C" td_status td_cuda_gelu_bwd(td_cuda *c, float *dx, const float *dout, const float *x,
                                      size_t n) {
    gelu_bwd_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(dx, dout, x, n);
    TD_CU_LAUNCHED();
    return TD_OK;
}
extern "C" td_status td_cuda_add(td_cuda *c, float *out, const float *a, const float *b, size_t n) {
    add_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(out, a, b, n);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// ------------------------------------------------------------------------------------------
// softmax + cross-entropy: one block per row

__global__ void xent_fwd_kernel(float *lse, float *row_loss, const float *logits,
                                const int32_t *targets, int V) {
    int n = blockIdx.x;
    const float *l = logits + (size_t)n * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        mx = fmaxf(mx, l[i]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        s += expf(l[i] - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        float z = mx + logf(s);
        lse[n] = z;
        int t = targets[n];
        row_loss[n] = t >= 0 ? z - l[t] : 0.0f;
    }
}

__global__ void xent_bwd_kernel(float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int V, float scale) {
    int n = blockIdx.x, t = targets[n];
    float z = lse[n];
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        size_t k = (size_t)n * V + i;
        float p = t >= 0 ? expf(logits[k] - z) : 0.0f;
        dlogits[k] = (p - (i == t ? 1.0f : 0.0f)) * scale;
    }
}

extern "C" td_status td_cuda_crossentropy_fwd(td_cuda *c, float *lse, const float *logits,
                                              const int32_t *targets, int N, int V, double *loss,
                                              int *counted) {
    TD_TRY(td_cuda_scratch(c, sizeof(float) * (size_t)N));
    float *rows = (float *)c->scratch;
    xent_fwd_kernel<<<N, 256, 0, c->stream>>>(lse, rows, logits, targets, V);
    TD_CU_LAUNCHED();
    float *h = (float *)malloc(sizeof(float) * (size_t)N);
    int32_t *t = (int32_t *)malloc(sizeof(int32_t) * (size_t)N);
    if (!h || !t) {
        free(h);
        free(t);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    td_status s = td_cuda_download(c, h, rows, sizeof(float) * (size_t)N);
    if (s == TD_OK) s = td_cuda_download(c, t, targets, sizeof(int32_t) * (size_t)N);
    double sum = 0;
    int k = 0;
    for (int n = 0; s == TD_OK && n < N; n++)
        if (t[n] >= 0) {
            sum += h[n];
            k++;
        }
    free(h);
    free(t);
    *loss = k ? sum / k : 0.0;
    *counted = k;
    return s;
}

extern "C" td_status td_cuda_crossentropy_bwd(td_cuda *c, float *dlogits, const float *logits,
                                              const float *lse, const int32_t *targets, int N,
                                              int V, double dscale, int counted) {
    float scale = counted ? (float)(dscale / counted) : 0.0f;
    xent_bwd_kernel<<<N, 256, 0, c->stream>>>(dlogits, logits, lse, targets, V, scale);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// ------------------------------------------------------------------------------------------
// optimizer

__global__ void adamw_kernel(float *p, __nv_bfloat16 *pbf, float *g, float *m, float *v, size_t n,
                             float lr, float b1, float b2, float eps, float wd, float c1, float c2,
                             float gscale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * gscale;
    g[i] = 0.0f;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i];
    pi -= lr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * pi);
    p[i] = pi;
    if (pbf) pbf[i] = __float2bfloat16_rn(pi);
}

extern "C" td_status td_cuda_adamw(td_cuda *c, float *p, uint16_t *pbf, float *g, float *m,
                                   float *v, size_t n, float lr, float b1, float b2, float eps,
                                   float wd, long step, float gscale) {
    float c1 = (float)(1.0 / (1.0 - pow(b1, (double)step)));
    float c2 = (float)(1.0 / (1.0 - pow(b2, (double)step)));
    adamw_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(p, (__nv_bfloat16 *)pbf, g, m, v, n, lr,
                                                            b1, b2, eps, wd, c1, c2, gscale);
    TD_CU_LAUNCHED();
    return TD_OK;
}

__global__ void colsum_kernel(float *dbias, const float *dout, int N, int OC) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= OC) return;
    float acc = 0.0f;
    for (int n = 0; n < N; n++)
        acc += dout[(size_t)n * OC + j];
    dbias[j] += acc;
}

extern "C" td_status td_cuda_colsum_acc(td_cuda *c, float *dbias, const float *dout, int N,
                                        int OC) {
    colsum_kernel<<<blocks_for((size_t)OC, 128), 128, 0, c->stream>>>(dbias, dout, N, OC);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// partial sums per block of a fixed size, then summed on the host in block order
__global__ void sumsq_kernel(double *part, const float *x, size_t n, size_t per) {
    size_t lo = (size_t)blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    float acc = 0.0f;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
        acc += x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

extern "C" td_status td_cuda_sumsq(td_cuda *c, const float *x, size_t n, double *out) {
    size_t per = 1u << 16, nb = (n + per - 1) / per;
    if (nb == 0) {
        *out = 0;
        return TD_OK;
    }
    TD_TRY(td_cuda_scratch(c, sizeof(double) * nb));
    sumsq_kernel<<<(unsigned)nb, 256, 0, c->stream>>>((double *)c->scratch, x, n, per);
    TD_CU_LAUNCHED();
    double *h = (double *)malloc(sizeof(double) * nb);
    if (!h) return td_error_set(TD_ERR_NOMEM, "out of memory");
    td_status s = td_cuda_download(c, h, c->scratch, sizeof(double) * nb);
    double sum = 0;
    for (size_t i = 0; i < nb; i++)
        sum += h[i];
    free(h);
    *out = sum;
    return s;
}

// ------------------------------------------------------------------------------------------
// inference with a paged KV cache

__global__ void embed_pos_kernel(float *out, const int32_t *tok, const int32_t *pos,
                                 const float *wte, const float *wpe, int C) {
    int n = blockIdx.x;
    const float *e = wte + (size_t)tok[n] * C;
    const float *p = wpe ? wpe + (size_t)pos[n] * C : NULL;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[(size_t)n * C + i] = e[i] + (p ? p[i] : 0.0f);
}

extern "C" td_status td_cuda_embed_pos(td_cuda *c, float *out, const int32_t *tok,
                                       const int32_t *pos, const float *wte, const float *wpe,
                                       int N, int C) {
    if (N <= 0) return TD_OK;
    embed_pos_kernel<<<N, 256, 0, c->stream>>>(out, tok, pos, wte, wpe, C);
    TD_CU_LAUNCHED();
    return TD_OK;
}

__global__ void rope_pos_kernel(float *qkv, const int32_t *pos, int N, int S, int nheads, int hd,
                                float theta) {
    int half = hd / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * nheads * half) return;
    int i = (int)(idx % half), h = (int)((idx / half) % nheads), n = (int)(idx / half / nheads);
    double inv_freq = 1.0 / pow((double)theta, (double)(2 * i) / (double)hd);
    float a = (float)pos[n] * (float)inv_freq;
    float cs = (float)cos((double)a), sn = (float)sin((double)a);
    float *x = qkv + (size_t)n * S + (size_t)h * hd;
    float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cs - x2 * sn;
    x[i + half] = x2 * cs + x1 * sn;
}

extern "C" td_status td_cuda_rope_pos(td_cuda *c, float *qkv, const int32_t *pos, int N, int S,
                                      int nheads, int hd, float theta) {
    size_t total = (size_t)N * nheads * (hd / 2);
    if (total == 0) return TD_OK;
    rope_pos_kernel<<<blocks_for(total, 256), 256, 0, c->stream>>>(qkv, pos, N, S, nheads, hd,
                                                                   theta);
    TD_CU_LAUNCHED();
    return TD_OK;
}

__global__ void kv_write_kernel(float *kc, float *vc, const float *qkv, const int32_t *slot, int NH,
                                int NKV, int hd) {
    int n = blockIdx.x, S = (NH + 2 * NKV) * hd, kvd = NKV * hd;
    const float *row = qkv + (size_t)n * S;
    float *kd = kc + (size_t)slot[n] * kvd, *vd = vc + (size_t)slot[n] * kvd;
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        kd[i] = row[NH * hd + i];
        vd[i] = row[(NH + NKV) * hd + i];
    }
}

extern "C" td_status td_cuda_kv_write(td_cuda *c, float *kc, float *vc, const float *qkv,
                                      const int32_t *slot, int N, int NH, int NKV, int hd) {
    if (N <= 0) return TD_OK;
    kv_write_kernel<<<N, 128, 0, c->stream>>>(kc, vc, qkv, slot, NH, NKV, hd);
    TD_CU_LAUNCHED();
    return TD_OK;
}

// one warp per (row, head): online softmax over the row's cached positions, 32 at a time
// (each lane scores one position), the output dims spread over the lanes
__global__ void paged_attn_kernel(float *out, const float *qkv, const float *kc, const float *vc,
                                  const int32_t *len, const int32_t *first, const int32_t *table,
                                  int bt, int N, int NH, int NKV, int hd) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= N * NH) return;
    int n = warp / NH, h = warp % NH, kvh = h / (NH / NKV), dpl = hd / 32;
    int S = (NH + 2 * NKV) * hd, kvd = NKV * hd, L = len[n];
    const float *q = qkv + (size_t)n * S + (size_t)h * hd;
    const int32_t *tab = table + first[n];
    float scale = rsqrtf((float)hd), m = -INFINITY, l = 0.0f, acc[4] = {0, 0, 0, 0};
    for (int p0 = 0; p0 < L; p0 += 32) {
        int p = p0 + lane;
        float s = -INFINITY;
        size_t row = 0;
        if (p < L) {
            row = (size_t)tab[p / bt] * bt + p % bt;
            const float *k = kc + row * kvd + (size_t)kvh * hd;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++)
                dot += q[d] * k[d];
            s = dot * scale;
        }
        float mt = s;
        for (int o = 16; o > 0; o >>= 1)
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        float mn = fmaxf(m, mt), corr = expf(m - mn);
        float pr = p < L ? expf(s - mn) : 0.0f, ps = pr;
        for (int o = 16; o > 0; o >>= 1)
            ps += __shfl_xor_sync(0xffffffffu, ps, o);
        l = l * corr + ps;
        for (int r = 0; r < dpl; r++)
            acc[r] *= corr;
        int cnt = L - p0 < 32 ? L - p0 : 32;
        for (int jj = 0; jj < cnt; jj++) {
            float pj = __shfl_sync(0xffffffffu, pr, jj);
            int pp = p0 + jj;
            const float *v = vc + ((size_t)tab[pp / bt] * bt + pp % bt) * kvd + (size_t)kvh * hd;
            for (int r = 0; r < dpl; r++)
                acc[r] += pj * v[lane + 32 * r];
        }
        m = mn;
    }
    float *o = out + (size_t)n * NH * hd + (size_t)h * hd;
    for (int r = 0; r < dpl; r++)
        o[lane + 32 * r] = acc[r] / l;
}

extern "C" td_status td_cuda_paged_attention(td_cuda *c, float *out, const float *qkv,
                                             const float *kc, const float *vc, const int32_t *len,
                                             const int32_t *first, const int32_t *table, int bt,
                                             int N, int NH, int NKV, int hd) {
    if (hd % 32 || hd > 128 || NKV <= 0 || NH % NKV)
        return td_error_set(TD_ERR_INVALID,
                            "paged attention needs hd a multiple of 32 up to 128 "
                            "(got %d) and heads divisible by kv heads",
                            hd);
    if (N <= 0) return TD_OK;
    size_t threads = (size_t)N * NH * 32;
    paged_attn_kernel<<<blocks_for(threads, 128), 128, 0, c->stream>>>(out, qkv, kc, vc, len, first,
                                                                       table, bt, N, NH, NKV, hd);
    TD_CU_LAUNCHED();
    return TD_OK;
}

__global__ void gather_rows_kernel(float *dst, const float *src, const int32_t *idx, int C) {
    int i = blockIdx.x;
    for (int k = threadIdx.x; k < C; k += blockDim.x)
        dst[(size_t)i * C + k] = src[(size_t)idx[i] * C + k];
}

extern "C" td_status td_cuda_gather_rows(td_cuda *c, float *dst, const float *src,
                                         const int32_t *idx, int n, int C) {
    if (n <= 0) return TD_OK;
    gather_rows_kernel<<<n, 256, 0, c->stream>>>(dst, src, idx, C);
    TD_CU_LAUNCHED();
    return TD_OK;
}
