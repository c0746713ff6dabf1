/* CUDA kernels of the transformer layers — the same operations, conventions and argument
 * order as the CPU kernels (worker/kernels/cpu/ops.h), on device pointers: row-major;
 * N = B*T rows; a linear weight W is (OC, C); backward kernels accumulate into parameter
 * gradients and into input gradients unless a comment says "overwrites". Activations are
 * fp32; matrix products take bf16 operands and accumulate in fp32 (cuBLASLt). Every
 * reduction runs in a fixed order, so results are bit-identical from run to run (no float
 * atomics). Kernels are queued on the context's stream; td_cuda_sync waits.
 *
 * Attention is fused and flash-style: K/V tiles in shared memory, online softmax, the
 * per-row log-sum-exp saved for backward — no T x T matrix in global memory. */
#ifndef TD_CUDA_OPS_H
#define TD_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_cuda td_cuda;

/* How many usable GPUs there are (0 with *why saying why, e.g. the CUDA error of
 * cudaGetDeviceCount such as cudaErrorInsufficientDriver); never fails. */
int td_cuda_device_count(char *why, size_t why_len);

/* A context on `device`: stream, cuBLASLt handle and workspace, scratch. */
td_status td_cuda_new(int device, td_cuda **out);
void td_cuda_free(td_cuda **c);
/* The device's name and compute capability, e.g. "NVIDIA H200 (sm_90)". */
const char *td_cuda_device_name(const td_cuda *c);
td_status td_cuda_sync(td_cuda *c);

td_status td_cuda_alloc(void **p, size_t bytes);
void td_cuda_release(void *p);
td_status td_cuda_upload(td_cuda *c, void *dst, const void *src, size_t bytes);
td_status td_cuda_download(td_cuda *c, void *dst, const void *src, size_t bytes);
td_status td_cuda_zero(td_cuda *c, void *p, size_t bytes);

/* dst (bf16) = round-to-nearest-even(src) */
td_status td_cuda_to_bf16(td_cuda *c, uint16_t *dst, const float *src, size_t n);

/* C (M,N) = op(A) (M,K) @ op(B) (K,N) [+ C when accumulate] [+ bias (N), added to every row,
 * i.e. one value per column]; A, B bf16,
 * C and bias fp32; transA: A stored (K,M); transB: B stored (N,K) (cuBLASLt, fp32 compute). */
td_status td_cuda_matmul_bf16(td_cuda *c, float *C, const uint16_t *A, const uint16_t *B,
                              const float *bias, int M, int N, int K, int transA, int transB,
                              int accumulate);

/* out (N,C) = wte[tok[n]] (+ wpe[n % T]); tok on the device */
td_status td_cuda_embed_fwd(td_cuda *c, float *out, const int32_t *tok, const float *wte,
                            const float *wpe, int N, int T, int C);
/* dwte[tok] += rows of dout, dwpe[t] += rows, deterministic: positions are grouped by token
 * on the host (tok_host: the same N tokens in host memory). */
td_status td_cuda_embed_bwd(td_cuda *c, float *dwte, float *dwpe, const float *dout,
                            const int32_t *tok_host, int N, int T, int C);
td_status td_cuda_rmsnorm_fwd(td_cuda *c, float *out, float *rstd, const float *x, const float *w,
                              int N, int C, float eps);
td_status td_cuda_rmsnorm_bwd(td_cuda *c, float *dx, float *dw, const float *dout, const float *x,
                              const float *w, const float *rstd, int N, int C);
td_status td_cuda_layernorm_fwd(td_cuda *c, float *out, float *mean, float *rstd, const float *x,
                                const float *w, const float *b, int N, int C, float eps);
td_status td_cuda_layernorm_bwd(td_cuda *c, float *dx, float *dw, float *db, const float *dout,
                                const float *x, const float *w, const float *mean,
                                const float *rstd, int N, int C);
/* rotary embedding in place on heads [0, nheads) of each row (row stride S); pos = n % T */
td_status td_cuda_rope(td_cuda *c, float *qkv, int N, int T, int S, int nheads, int hd, float theta,
                       int inverse);
/* h (N,F) = silu(gate) * up with gu (N,2F) = [gate | up]; backward overwrites dgu */
td_status td_cuda_swiglu_fwd(td_cuda *c, float *h, const float *gu, int N, int F);
td_status td_cuda_swiglu_bwd(td_cuda *c, float *dgu, const float *dh, const float *gu, int N,
                             int F);
/* GELU (tanh); backward overwrites dx */
td_status td_cuda_gelu_fwd(td_cuda *c, float *out, const float *x, size_t n);
td_status td_cuda_gelu_bwd(td_cuda *c, float *dx, const float *dout, const float *x, size_t n);
td_status td_cuda_add(td_cuda *c, float *out, const float *a, const float *b, size_t n);
/* Causal attention, qkv (B,T,S) with q heads at 0, k at NH*hd, v at (NH+NKV)*hd; out
 * (B,T,NH*hd) and lse (B,NH,T) overwritten. hd <= 128 and a multiple of 32. */
td_status td_cuda_attention_fwd(td_cuda *c, float *out, float *lse, const float *qkv, int B, int T,
                                int NH, int NKV, int hd);
/* dqkv (B,T,S) overwritten, from out, lse and qkv of the forward */
td_status td_cuda_attention_bwd(td_cuda *c, float *dqkv, const float *dout, const float *out,
                                const float *lse, const float *qkv, int B, int T, int NH, int NKV,
                                int hd);
/* Cross-entropy of logits (N,V) with targets (N, on the device; < 0 ignored): lse (N)
 * written; *loss = mean over counted rows (summed on the host in row order); *counted. */
td_status td_cuda_crossentropy_fwd(td_cuda *c, float *lse, const float *logits,
                                   const int32_t *targets, int N, int V, double *loss,
                                   int *counted);
/* dlogits (N,V) = (softmax - onehot) * dscale / counted; may alias logits */
td_status td_cuda_crossentropy_bwd(td_cuda *c, float *dlogits, const float *logits,
                                   const float *lse, const int32_t *targets, int N, int V,
                                   double dscale, int counted);
/* AdamW on n parameters (one tensor: its weight decay wd), gradients scaled by gscale (the
 * clip factor) and zeroed as read; pbf (nullable) receives the bf16 working copy. */
td_status td_cuda_adamw(td_cuda *c, float *p, uint16_t *pbf, float *g, float *m, float *v, size_t n,
                        float lr, float b1, float b2, float eps, float wd, long step, float gscale);
/* ---- inference with a paged KV cache (the CPU layout of model.h: per layer, block b,
 * slot s at row b * bt + s of K and of V, each row NKV*hd wide) ---- */
/* out (N,C) = wte[tok[n]] (+ wpe[pos[n]]); tok and pos on the device */
td_status td_cuda_embed_pos(td_cuda *c, float *out, const int32_t *tok, const int32_t *pos,
                            const float *wte, const float *wpe, int N, int C);
/* rotary embedding with an explicit position per row */
td_status td_cuda_rope_pos(td_cuda *c, float *qkv, const int32_t *pos, int N, int S, int nheads,
                           int hd, float theta);
/* K and V of each row of qkv (N,S) into the cache rows slot[n] (= block * bt + offset) */
td_status td_cuda_kv_write(td_cuda *c, float *kc, float *vc, const float *qkv, const int32_t *slot,
                           int N, int NH, int NKV, int hd);
/* out (N, NH*hd): each row's query attends over its sequence's cached positions
 * [0, len[n]); position p of row n is cache row table[first[n] + p / bt] * bt + p % bt */
td_status td_cuda_paged_attention(td_cuda *c, float *out, const float *qkv, const float *kc,
                                  const float *vc, const int32_t *len, const int32_t *first,
                                  const int32_t *table, int bt, int N, int NH, int NKV, int hd);
/* dst (n, C) = rows idx[i] of src (·, C) */
td_status td_cuda_gather_rows(td_cuda *c, float *dst, const float *src, const int32_t *idx, int n,
                              int C);

/* dbias (OC) += column sums of dout (N,OC), rows in order */
td_status td_cuda_colsum_acc(td_cuda *c, float *dbias, const float *dout, int N, int OC);
/* sum of squares of x (n), for the global gradient norm; summed in a fixed order */
td_status td_cuda_sumsq(td_cuda *c, const float *x, size_t n, double *out);

#ifdef __cplusplus
}
#endif

#endif
