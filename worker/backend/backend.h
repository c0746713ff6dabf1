/* The compute backend: where a model's tensors live and what computes on them.
 *
 * In the manner of a ggml backend, a td_backend is a table of function pointers plus the
 * backend's context. The model (worker/model), the trainer and the serving engine call
 * only these operations, so one model runs on the CPU backend (cpu.c: OpenBLAS, oneDNN,
 * AVX-512 kernels of worker/kernels/cpu) or the CUDA backend (cuda.c: the kernels of
 * worker/kernels/cuda) without a device branch of its own.
 *
 * Conventions (those of the kernels): row-major; N rows; a linear weight W is (OC, C);
 * backward operations ACCUMULATE into parameter gradients, and into input gradients unless
 * `overwrite` says otherwise or the comment says "overwrites". Every pointer an operation
 * takes is backend memory (from td_backend_alloc) unless its name ends in _host. Work may be
 * queued: td_backend_sync waits for it, and a download waits by itself.
 *
 * Every operation returns TD_OK or a status with a message. */
#ifndef TD_BACKEND_H
#define TD_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct td_backend td_backend;

typedef struct {
    const char *name; /* "cpu", "cuda" */
    /* memory: contents undefined (zero it where it matters: untouched pages of a big
     * plan then stay virtual), aligned for the backend's kernels (64 bytes on the CPU) */
    td_status (*alloc)(td_backend *b, void **p, size_t bytes);
    void (*release)(td_backend *b, void *p);
    td_status (*upload)(td_backend *b, void *dst, const void *src_host, size_t bytes);
    td_status (*download)(td_backend *b, void *dst_host, const void *src, size_t bytes);
    td_status (*zero)(td_backend *b, void *p, size_t bytes);
    td_status (*sync)(td_backend *b);
    /* prepares bf16 products (fails with a message where this machine cannot run them);
     * *how names what runs them, e.g. "oneDNN on avx512_core_amx" */
    td_status (*bf16_prepare)(td_backend *b, const char **how);
    /* dst (bf16) = round-to-nearest-even(src) */
    td_status (*to_bf16)(td_backend *b, uint16_t *dst, const float *src, size_t n);

    /* ---- products: out (N,OC) = inp (N,C) @ W^T + bias. With Wbf (the bf16 working copy
     * of W) the operands are rounded to bf16 and accumulate in fp32; without it, fp32. */
    td_status (*matmul_fwd)(td_backend *b, float *out, const float *inp, const float *W,
                            const uint16_t *Wbf, const float *bias, int N, int C, int OC);
    /* dinp (N,C) += dout @ W (overwrites with overwrite; dinp may be NULL);
     * dW += dout^T @ inp (dW may be NULL: frozen weights); dbias += column sums of dout
     * (dbias may be NULL) */
    td_status (*matmul_bwd)(td_backend *b, float *dinp, float *dW, float *dbias, const float *dout,
                            const float *inp, const float *W, const uint16_t *Wbf, int N, int C,
                            int OC, int overwrite);
    /* column blocks (adapters on fused matrices): out[n S + c0 + j] += scale src[n W + j],
     * and cols_get: dst[n W + j] = scale src[n S + c0 + j] (overwrites), for n < N, j < W.
     * NULL where a backend has not built them. */
    td_status (*cols_add)(td_backend *b, float *out, int S, int c0, const float *src, int W, int N,
                          float scale);
    td_status (*cols_get)(td_backend *b, float *dst, int W, const float *src, int S, int c0, int N,
                          float scale);

    /* ---- the layers' operations (training: position of row n is n % T) */
    /* out (N,C) = wte[tok[n]] (+ wpe[n % T]) */
    td_status (*embed_fwd)(td_backend *b, float *out, const int32_t *tok, const float *wte,
                           const float *wpe, int N, int T, int C);
    /* dwte[tok] += rows of dout (dwte may be NULL), dwpe[n % T] += rows; tok_host: the same
     * tokens in host memory */
    td_status (*embed_bwd)(td_backend *b, float *dwte, float *dwpe, const float *dout,
                           const int32_t *tok, const int32_t *tok_host, int N, int T, int C);
    td_status (*rmsnorm_fwd)(td_backend *b, float *out, float *rstd, const float *x, const float *w,
                             int N, int C, float eps);
    td_status (*rmsnorm_bwd)(td_backend *b, float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int N, int C);
    td_status (*layernorm_fwd)(td_backend *b, float *out, float *mean, float *rstd, const float *x,
                               const float *w, const float *bias, int N, int C, float eps);
    td_status (*layernorm_bwd)(td_backend *b, float *dx, float *dw, float *db, const float *dout,
                               const float *x, const float *w, const float *mean, const float *rstd,
                               int N, int C);
    /* rotary embedding in place on heads [0, nheads) of each row (row stride S) */
    td_status (*rope)(td_backend *b, float *qkv, int N, int T, int S, int nheads, int hd,
                      float theta, int inverse);
    /* Causal attention over qkv (B,T,S) (q heads at 0, k at NH*hd, v at (NH+NKV)*hd); out
     * (B,T,NH*hd) overwritten. `saved` (attention_saved floats) keeps what backward needs:
     * the probabilities on the CPU, each row's log-sum-exp on the GPU. */
    size_t (*attention_saved)(int B, int T, int NH);
    td_status (*attention_fwd)(td_backend *b, float *out, float *saved, const float *qkv, int B,
                               int T, int NH, int NKV, int hd);
    /* dqkv (B,T,S) overwritten, from the forward's out, saved and qkv */
    td_status (*attention_bwd)(td_backend *b, float *dqkv, const float *dout, const float *out,
                               const float *saved, const float *qkv, int B, int T, int NH, int NKV,
                               int hd);
    /* h (N,F) = silu(gate) * up, gu (N,2F) = [gate | up]; backward overwrites dgu */
    td_status (*swiglu_fwd)(td_backend *b, float *h, const float *gu, int N, int F);
    td_status (*swiglu_bwd)(td_backend *b, float *dgu, const float *dh, const float *gu, int N,
                            int F);
    /* GELU (tanh); backward overwrites dx */
    td_status (*gelu_fwd)(td_backend *b, float *out, const float *x, size_t n);
    td_status (*gelu_bwd)(td_backend *b, float *dx, const float *dout, const float *x, size_t n);
    /* out = a + b (out may alias a) */
    td_status (*add)(td_backend *b, float *out, const float *x, const float *y, size_t n);
    /* Cross-entropy of logits (N,V) with targets (targets_host: the same in host memory;
     * < 0 ignored): lse (N) written, *loss = mean over counted rows, *counted */
    td_status (*xent_fwd)(td_backend *b, float *lse, const float *logits, const int32_t *targets,
                          const int32_t *targets_host, int N, int V, double *loss, int *counted);
    /* dlogits (N,V) = (softmax - onehot) * dscale / counted; may alias logits */
    td_status (*xent_bwd)(td_backend *b, float *dlogits, const float *logits, const float *lse,
                          const int32_t *targets, const int32_t *targets_host, int N, int V,
                          double dscale, int counted);
    /* Knowledge distillation of student logits s against teacher logits t (N,V), over the
     * rows whose target is >= 0 (docs/distill.md): *loss = mean tau^2 KL; with dlogits (not
     * aliasing s), its gradient times dscale. NULL in a backend without it. */
    td_status (*kd)(td_backend *b, float *dlogits, const float *s, const float *t,
                    const int32_t *targets_host, int N, int V, double tau, int reverse, int topk,
                    double dscale, double *loss);

    /* ---- optimizer */
    /* the L2 norm of x (n), summed in a fixed order */
    td_status (*norm2)(td_backend *b, const float *x, size_t n, double *out);
    /* AdamW on n parameters of one tensor (weight decay wd): gradients scaled by gscale as
     * read and, with zero_grads, cleared; pbf (may be NULL) receives the bf16 copy */
    td_status (*adamw)(td_backend *b, float *p, uint16_t *pbf, float *g, float *m, float *v,
                       size_t n, float lr, float b1, float b2, float eps, float wd, long step,
                       float gscale, int zero_grads);

    /* ---- inference with a paged KV cache (per layer, cache row b * bt + s of block b, slot
     * s, each row NKV*hd wide); index arrays are backend memory */
    /* out (N,C) = wte[tok[n]] (+ wpe[pos[n]]) */
    td_status (*embed_pos)(td_backend *b, float *out, const int32_t *tok, const int32_t *pos,
                           const float *wte, const float *wpe, int N, int C);
    /* rotary embedding at an explicit position per row */
    td_status (*rope_pos)(td_backend *b, float *qkv, const int32_t *pos, int N, int S, int nheads,
                          int hd, float theta);
    /* K and V of each row of qkv (N,S) into cache rows slot[n] */
    td_status (*kv_write)(td_backend *b, float *kc, float *vc, const float *qkv,
                          const int32_t *slot, int N, int NH, int NKV, int hd);
    /* out (N,NH*hd): row n's query over its cached positions [0, len[n]); position p of row n
     * is cache row table[first[n] + p / bt] * bt + p % bt */
    td_status (*paged_attention)(td_backend *b, float *out, const float *qkv, const float *kc,
                                 const float *vc, const int32_t *len, const int32_t *first,
                                 const int32_t *table, int bt, int N, int NH, int NKV, int hd);
    /* dst (n,C) = rows idx[i] of src */
    td_status (*gather_rows)(td_backend *b, float *dst, const float *src, const int32_t *idx, int n,
                             int C);

    /* e.g. "CPU: AVX-512 (bf16: oneDNN avx512_core_amx)" or "NVIDIA H200 (sm_90)" */
    const char *(*describe)(td_backend *b);
    void (*free)(td_backend *b);
} td_backend_ops;

struct td_backend {
    const td_backend_ops *ops;
    void *ctx;
    int host_memory; /* 1: backend memory is host memory (the CPU reads it directly) */
    int bf16_only;   /* 1: products take bf16 operands only (a bf16 working copy is needed) */
};

/* The backends this build has, by name: "cpu" (always), "cuda" (built with TANDEM_CUDA),
 * "auto" (cuda when a GPU is usable, else cpu). device picks the GPU (e.g. the node-local
 * rank modulo their count); *out owned by the caller. Fails with a message saying why a
 * backend is unavailable. */
td_status td_backend_new(const char *name, int device, td_backend **out);
/* How many devices backend `name` can use on this machine ("cpu": 1; "cuda": the usable
 * GPUs, 0 with *why saying why, e.g. a build without CUDA or no driver). */
int td_backend_devices(const char *name, char *why, size_t why_len);
/* The CPU backend (never fails but for memory). */
td_status td_backend_cpu_new(td_backend **out);
void td_backend_free(td_backend **b);

/* Shorthands for the memory functions. */
static inline td_status td_backend_alloc(td_backend *b, void **p, size_t bytes) {
    return b->ops->alloc(b, p, bytes);
}
static inline void td_backend_release(td_backend *b, void *p) {
    if (p) b->ops->release(b, p);
}
static inline td_status td_backend_upload(td_backend *b, void *dst, const void *src, size_t n) {
    return b->ops->upload(b, dst, src, n);
}
static inline td_status td_backend_download(td_backend *b, void *dst, const void *src, size_t n) {
    return b->ops->download(b, dst, src, n);
}
static inline td_status td_backend_sync(td_backend *b) {
    return b->ops->sync(b);
}

#endif
