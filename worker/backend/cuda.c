/* The CUDA backend (see backend.h): device memory and the kernels of worker/kernels/cuda —
 * cuBLASLt products with bf16 operands and fp32 accumulation, fused flash-style attention,
 * deterministic reductions. Built only with TANDEM_CUDA. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/kernels/cuda/cuda_ops.h"

typedef struct {
    td_cuda *cx;
    uint16_t *s16[2]; /* bf16 operand scratch on the device */
    size_t s16_n[2];
    char desc[160];
} cuda_ctx;

#define CX(b) (((cuda_ctx *)(b)->ctx)->cx)

static td_status g_alloc(td_backend *b, void **p, size_t bytes) {
    TD_TRY(td_cuda_alloc(p, bytes ? bytes : 1));
    td_status s = td_cuda_zero(CX(b), *p, bytes);
    if (s != TD_OK) {
        td_cuda_release(*p);
        *p = NULL;
    }
    return s;
}
static void g_release(td_backend *b, void *p) {
    (void)b;
    td_cuda_release(p);
}
static td_status g_upload(td_backend *b, void *dst, const void *src, size_t bytes) {
    return td_cuda_upload(CX(b), dst, src, bytes);
}
static td_status g_download(td_backend *b, void *dst, const void *src, size_t bytes) {
    return td_cuda_download(CX(b), dst, src, bytes);
}
static td_status g_zero(td_backend *b, void *p, size_t bytes) {
    return td_cuda_zero(CX(b), p, bytes);
}
static td_status g_sync(td_backend *b) {
    return td_cuda_sync(CX(b));
}
static td_status g_bf16_prepare(td_backend *b, const char **how) {
    (void)b;
    *how = "cuBLASLt";
    return TD_OK;
}
static td_status g_to_bf16(td_backend *b, uint16_t *dst, const float *src, size_t n) {
    return td_cuda_to_bf16(CX(b), dst, src, n);
}

static td_status scratch(td_backend *b, int which, size_t n, uint16_t **out) {
    cuda_ctx *x = b->ctx;
    if (n > x->s16_n[which]) {
        TD_TRY(td_cuda_sync(x->cx)); /* queued work may still read the old buffer */
        td_cuda_release(x->s16[which]);
        x->s16[which] = NULL;
        x->s16_n[which] = 0;
        TD_TRY(td_cuda_alloc((void **)&x->s16[which], n * sizeof(uint16_t)));
        x->s16_n[which] = n;
    }
    *out = x->s16[which];
    return TD_OK;
}

static td_status need_bf16(const uint16_t *Wbf) {
    return Wbf ? TD_OK
               : td_error_set(TD_ERR_INVALID, "the CUDA backend multiplies bf16 operands: the "
                                              "model needs its bf16 working copy");
}

static td_status g_matmul_fwd(td_backend *b, float *out, const float *inp, const float *W,
                              const uint16_t *Wbf, const float *bias, int N, int C, int OC) {
    (void)W;
    TD_TRY(need_bf16(Wbf));
    uint16_t *a;
    TD_TRY(scratch(b, 0, (size_t)N * C, &a));
    TD_TRY(td_cuda_to_bf16(CX(b), a, inp, (size_t)N * C));
    return td_cuda_matmul_bf16(CX(b), out, a, Wbf, bias, N, OC, C, 0, 1, 0);
}

static td_status g_matmul_bwd(td_backend *b, float *dinp, float *dW, float *dbias,
                              const float *dout, const float *inp, const float *W,
                              const uint16_t *Wbf, int N, int C, int OC, int overwrite) {
    (void)W;
    TD_TRY(need_bf16(Wbf));
    uint16_t *d, *x;
    TD_TRY(scratch(b, 0, (size_t)N * OC, &d));
    TD_TRY(scratch(b, 1, (size_t)N * C, &x));
    TD_TRY(td_cuda_to_bf16(CX(b), d, dout, (size_t)N * OC));
    TD_TRY(td_cuda_to_bf16(CX(b), x, inp, (size_t)N * C));
    if (dinp) TD_TRY(td_cuda_matmul_bf16(CX(b), dinp, d, Wbf, NULL, N, C, OC, 0, 0, !overwrite));
    TD_TRY(td_cuda_matmul_bf16(CX(b), dW, d, x, NULL, OC, C, N, 1, 0, 1));
    if (dbias) TD_TRY(td_cuda_colsum_acc(CX(b), dbias, dout, N, OC));
    return TD_OK;
}

static td_status g_embed_fwd(td_backend *b, float *out, const int32_t *tok, const float *wte,
                             const float *wpe, int N, int T, int C) {
    return td_cuda_embed_fwd(CX(b), out, tok, wte, wpe, N, T, C);
}
static td_status g_embed_bwd(td_backend *b, float *dwte, float *dwpe, const float *dout,
                             const int32_t *tok, const int32_t *tok_host, int N, int T, int C) {
    (void)tok;
    return td_cuda_embed_bwd(CX(b), dwte, dwpe, dout, tok_host, N, T, C);
}
static td_status g_rmsnorm_fwd(td_backend *b, float *out, float *rstd, const float *x,
                               const float *w, int N, int C, float eps) {
    return td_cuda_rmsnorm_fwd(CX(b), out, rstd, x, w, N, C, eps);
}
static td_status g_rmsnorm_bwd(td_backend *b, float *dx, float *dw, const float *dout,
                               const float *x, const float *w, const float *rstd, int N, int C) {
    return td_cuda_rmsnorm_bwd(CX(b), dx, dw, dout, x, w, rstd, N, C);
}
static td_status g_layernorm_fwd(td_backend *b, float *out, float *mean, float *rstd,
                                 const float *x, const float *w, const float *bias, int N, int C,
                                 float eps) {
    return td_cuda_layernorm_fwd(CX(b), out, mean, rstd, x, w, bias, N, C, eps);
}
static td_status g_layernorm_bwd(td_backend *b, float *dx, float *dw, float *db, const float *dout,
                                 const float *x, const float *w, const float *mean,
                                 const float *rstd, int N, int C) {
    return td_cuda_layernorm_bwd(CX(b), dx, dw, db, dout, x, w, mean, rstd, N, C);
}
static td_status g_rope(td_backend *b, float *qkv, int N, int T, int S, int nheads, int hd,
                        float theta, int inverse) {
    return td_cuda_rope(CX(b), qkv, N, T, S, nheads, hd, theta, inverse);
}
static size_t g_attention_saved(int B, int T, int NH) {
    return (size_t)B * NH * T; /* each row's log-sum-exp */
}
static td_status g_attention_fwd(td_backend *b, float *out, float *saved, const float *qkv, int B,
                                 int T, int NH, int NKV, int hd) {
    return td_cuda_attention_fwd(CX(b), out, saved, qkv, B, T, NH, NKV, hd);
}
static td_status g_attention_bwd(td_backend *b, float *dqkv, const float *dout, const float *out,
                                 const float *saved, const float *qkv, int B, int T, int NH,
                                 int NKV, int hd) {
    return td_cuda_attention_bwd(CX(b), dqkv, dout, out, saved, qkv, B, T, NH, NKV, hd);
}
static td_status g_swiglu_fwd(td_backend *b, float *h, const float *gu, int N, int F) {
    return td_cuda_swiglu_fwd(CX(b), h, gu, N, F);
}
static td_status g_swiglu_bwd(td_backend *b, float *dgu, const float *dh, const float *gu, int N,
                              int F) {
    return td_cuda_swiglu_bwd(CX(b), dgu, dh, gu, N, F);
}
static td_status g_gelu_fwd(td_backend *b, float *out, const float *x, size_t n) {
    return td_cuda_gelu_fwd(CX(b), out, x, n);
}
static td_status g_gelu_bwd(td_backend *b, float *dx, const float *dout, const float *x, size_t n) {
    return td_cuda_gelu_bwd(CX(b), dx, dout, x, n);
}
static td_status g_add(td_backend *b, float *out, const float *x, const float *y, size_t n) {
    return td_cuda_add(CX(b), out, x, y, n);
}
static td_status g_xent_fwd(td_backend *b, float *lse, const float *logits, const int32_t *targets,
                            const int32_t *targets_host, int N, int V, double *loss, int *counted) {
    (void)targets_host;
    return td_cuda_crossentropy_fwd(CX(b), lse, logits, targets, N, V, loss, counted);
}
static td_status g_xent_bwd(td_backend *b, float *dlogits, const float *logits, const float *lse,
                            const int32_t *targets, const int32_t *targets_host, int N, int V,
                            double dscale, int counted) {
    (void)targets_host;
    return td_cuda_crossentropy_bwd(CX(b), dlogits, logits, lse, targets, N, V, dscale, counted);
}
static td_status g_norm2(td_backend *b, const float *x, size_t n, double *out) {
    double ss = 0;
    TD_TRY(td_cuda_sumsq(CX(b), x, n, &ss));
    *out = sqrt(ss);
    return TD_OK;
}
static td_status g_adamw(td_backend *b, float *p, uint16_t *pbf, float *g, float *m, float *v,
                         size_t n, float lr, float b1, float b2, float eps, float wd, long step,
                         float gscale, int zero_grads) {
    if (!zero_grads)
        return td_error_set(TD_ERR_INVALID, "the CUDA AdamW clears the gradients it reads");
    return td_cuda_adamw(CX(b), p, pbf, g, m, v, n, lr, b1, b2, eps, wd, step, gscale);
}
static td_status g_embed_pos(td_backend *b, float *out, const int32_t *tok, const int32_t *pos,
                             const float *wte, const float *wpe, int N, int C) {
    return td_cuda_embed_pos(CX(b), out, tok, pos, wte, wpe, N, C);
}
static td_status g_rope_pos(td_backend *b, float *qkv, const int32_t *pos, int N, int S, int nheads,
                            int hd, float theta) {
    return td_cuda_rope_pos(CX(b), qkv, pos, N, S, nheads, hd, theta);
}
static td_status g_kv_write(td_backend *b, float *kc, float *vc, const float *qkv,
                            const int32_t *slot, int N, int NH, int NKV, int hd) {
    return td_cuda_kv_write(CX(b), kc, vc, qkv, slot, N, NH, NKV, hd);
}
static td_status g_paged_attention(td_backend *b, float *out, const float *qkv, const float *kc,
                                   const float *vc, const int32_t *len, const int32_t *first,
                                   const int32_t *table, int bt, int N, int NH, int NKV, int hd) {
    return td_cuda_paged_attention(CX(b), out, qkv, kc, vc, len, first, table, bt, N, NH, NKV, hd);
}
static td_status g_gather_rows(td_backend *b, float *dst, const float *src, const int32_t *idx,
                               int n, int C) {
    return td_cuda_gather_rows(CX(b), dst, src, idx, n, C);
}
static const char *g_describe(td_backend *b) {
    cuda_ctx *x = b->ctx;
    snprintf(x->desc, sizeof x->desc, "%s", td_cuda_device_name(x->cx));
    return x->desc;
}
static void g_free(td_backend *b) {
    cuda_ctx *x = b->ctx;
    td_cuda_release(x->s16[0]);
    td_cuda_release(x->s16[1]);
    td_cuda_free(&x->cx);
    free(x);
}

static const td_backend_ops g_cuda_ops = {
    .name = "cuda",
    .alloc = g_alloc,
    .release = g_release,
    .upload = g_upload,
    .download = g_download,
    .zero = g_zero,
    .sync = g_sync,
    .bf16_prepare = g_bf16_prepare,
    .to_bf16 = g_to_bf16,
    .matmul_fwd = g_matmul_fwd,
    .matmul_bwd = g_matmul_bwd,
    .embed_fwd = g_embed_fwd,
    .embed_bwd = g_embed_bwd,
    .rmsnorm_fwd = g_rmsnorm_fwd,
    .rmsnorm_bwd = g_rmsnorm_bwd,
    .layernorm_fwd = g_layernorm_fwd,
    .layernorm_bwd = g_layernorm_bwd,
    .rope = g_rope,
    .attention_saved = g_attention_saved,
    .attention_fwd = g_attention_fwd,
    .attention_bwd = g_attention_bwd,
    .swiglu_fwd = g_swiglu_fwd,
    .swiglu_bwd = g_swiglu_bwd,
    .gelu_fwd = g_gelu_fwd,
    .gelu_bwd = g_gelu_bwd,
    .add = g_add,
    .xent_fwd = g_xent_fwd,
    .xent_bwd = g_xent_bwd,
    .norm2 = g_norm2,
    .adamw = g_adamw,
    .embed_pos = g_embed_pos,
    .rope_pos = g_rope_pos,
    .kv_write = g_kv_write,
    .paged_attention = g_paged_attention,
    .gather_rows = g_gather_rows,
    .describe = g_describe,
    .free = g_free,
};

/* Used by the registry (registry.c). */
td_status td_backend_cuda_new(int device, td_backend **out);
int td_backend_cuda_count(char *why, size_t why_len);

int td_backend_cuda_count(char *why, size_t why_len) {
    return td_cuda_device_count(why, why_len);
}

td_status td_backend_cuda_new(int device, td_backend **out) {
    td_backend *b = calloc(1, sizeof *b);
    cuda_ctx *x = calloc(1, sizeof *x);
    td_status s = b && x ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s == TD_OK) s = td_cuda_new(device, &x->cx);
    if (s != TD_OK) {
        free(b);
        free(x);
        return s;
    }
    b->ops = &g_cuda_ops;
    b->ctx = x;
    b->bf16_only = 1;
    *out = b;
    return TD_OK;
}
