/* The CPU backend (see backend.h): host memory, the kernels of worker/kernels/cpu —
 * OpenBLAS for fp32 products, oneDNN for bf16 products (AMX or AVX-512 bf16 where the CPU
 * has them), AVX-512 loops for the rest. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"
#include "worker/kernels/cpu/bf16.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/vec_f32.h"

typedef struct {
    uint16_t *sbf[2]; /* bf16 operand scratch (activations, gradients) */
    size_t sbf_n[2];
    int bf16_ready;
    char desc[256], how[96];
} cpu_ctx;

#define CX(b) ((cpu_ctx *)(b)->ctx)

static td_status c_alloc(td_backend *b, void **p, size_t bytes) {
    (void)b;
    *p = aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64);
    if (!*p)
        return td_error_set(TD_ERR_NOMEM, "out of memory allocating %.1f MiB",
                            (double)bytes / 1048576.0);
    return TD_OK;
}
static void c_release(td_backend *b, void *p) {
    (void)b;
    free(p);
}
static td_status c_copy(td_backend *b, void *dst, const void *src, size_t bytes) {
    (void)b;
    if (dst != src && bytes) memcpy(dst, src, bytes);
    return TD_OK;
}
static td_status c_zero(td_backend *b, void *p, size_t bytes) {
    (void)b;
    memset(p, 0, bytes);
    return TD_OK;
}
static td_status c_sync(td_backend *b) {
    (void)b;
    return TD_OK;
}
static td_status c_to_bf16(td_backend *b, uint16_t *dst, const float *src, size_t n) {
    (void)b;
    td_bf16_from_f32(dst, src, n);
    return TD_OK;
}

static td_status bf16_ready(td_backend *b) {
    if (CX(b)->bf16_ready) return TD_OK;
    TD_TRY(td_bf16_init());
    CX(b)->bf16_ready = 1;
    return TD_OK;
}

static td_status c_bf16_prepare(td_backend *b, const char **how) {
    TD_TRY(bf16_ready(b));
    snprintf(CX(b)->how, sizeof CX(b)->how, "oneDNN on %s", td_bf16_isa());
    *how = CX(b)->how;
    return TD_OK;
}

static uint16_t *scratch(td_backend *b, int which, size_t n) {
    cpu_ctx *x = CX(b);
    if (n > x->sbf_n[which]) {
        free(x->sbf[which]);
        x->sbf[which] = malloc(n * sizeof(uint16_t));
        x->sbf_n[which] = x->sbf[which] ? n : 0;
    }
    return x->sbf[which];
}

static td_status c_matmul_fwd(td_backend *b, float *out, const float *inp, const float *W,
                              const uint16_t *Wbf, const float *bias, int N, int C, int OC) {
    if (!Wbf) {
        td_op_matmul_fwd_f32(out, inp, W, bias, N, C, OC);
        return TD_OK;
    }
    TD_TRY(bf16_ready(b));
    uint16_t *a = scratch(b, 0, (size_t)N * C);
    if (!a) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 activations");
    td_bf16_from_f32(a, inp, (size_t)N * C);
    /* B = W^T: W is stored (OC, C), i.e. (N, K) of the product */
    return td_bf16_gemm(out, a, Wbf, bias, N, OC, C, 0, 1, 0);
}

static td_status c_matmul_bwd(td_backend *b, float *dinp, float *dW, float *dbias,
                              const float *dout, const float *inp, const float *W,
                              const uint16_t *Wbf, int N, int C, int OC, int overwrite) {
    if (!Wbf) {
        td_op_matmul_bwd_f32(dinp, dW, dbias, dout, inp, W, N, C, OC, overwrite);
        return TD_OK;
    }
    TD_TRY(bf16_ready(b));
    uint16_t *d = scratch(b, 0, (size_t)N * OC), *x = scratch(b, 1, (size_t)N * C);
    if (!d || !x) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 gradients");
    td_bf16_from_f32(d, dout, (size_t)N * OC);
    td_bf16_from_f32(x, inp, (size_t)N * C);
    if (dinp) TD_TRY(td_bf16_gemm(dinp, d, Wbf, NULL, N, C, OC, 0, 0, !overwrite));
    if (dW) TD_TRY(td_bf16_gemm(dW, d, x, NULL, OC, C, N, 1, 0, 1));
    if (dbias) {
#pragma omp parallel
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            int j0 = (int)((long)OC * id / nt), j1 = (int)((long)OC * (id + 1) / nt);
            for (int n = 0; n < N; n++)
                for (int j = j0; j < j1; j++)
                    dbias[j] += dout[(size_t)n * OC + j];
        }
    }
    return TD_OK;
}

static td_status c_cols_add(td_backend *b, float *out, int S, int c0, const float *src, int W,
                            int N, float scale) {
    (void)b;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * S + c0;
        const float *x = src + (size_t)n * W;
        for (int j = 0; j < W; j++)
            o[j] += scale * x[j];
    }
    return TD_OK;
}
static td_status c_cols_get(td_backend *b, float *dst, int W, const float *src, int S, int c0,
                            int N, float scale) {
    (void)b;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = dst + (size_t)n * W;
        const float *x = src + (size_t)n * S + c0;
        for (int j = 0; j < W; j++)
            o[j] = scale * x[j];
    }
    return TD_OK;
}

static td_status c_embed_fwd(td_backend *b, float *out, const int32_t *tok, const float *wte,
                             const float *wpe, int N, int T, int C) {
    (void)b;
    td_op_embed_fwd_f32(out, tok, wte, wpe, N, T, C);
    return TD_OK;
}
static td_status c_embed_bwd(td_backend *b, float *dwte, float *dwpe, const float *dout,
                             const int32_t *tok, const int32_t *tok_host, int N, int T, int C) {
    (void)b, (void)tok_host;
    td_op_embed_bwd_f32(dwte, dwpe, dout, tok, N, T, C);
    return TD_OK;
}
static td_status c_rmsnorm_fwd(td_backend *b, float *out, float *rstd, const float *x,
                               const float *w, int N, int C, float eps) {
    (void)b;
    td_op_rmsnorm_fwd_f32(out, rstd, x, w, N, C, eps);
    return TD_OK;
}
static td_status c_rmsnorm_bwd(td_backend *b, float *dx, float *dw, const float *dout,
                               const float *x, const float *w, const float *rstd, int N, int C) {
    (void)b;
    td_op_rmsnorm_bwd_f32(dx, dw, dout, x, w, rstd, N, C);
    return TD_OK;
}
static td_status c_layernorm_fwd(td_backend *b, float *out, float *mean, float *rstd,
                                 const float *x, const float *w, const float *bias, int N, int C,
                                 float eps) {
    (void)b;
    td_op_layernorm_fwd_f32(out, mean, rstd, x, w, bias, N, C, eps);
    return TD_OK;
}
static td_status c_layernorm_bwd(td_backend *b, float *dx, float *dw, float *db, const float *dout,
                                 const float *x, const float *w, const float *mean,
                                 const float *rstd, int N, int C) {
    (void)b;
    td_op_layernorm_bwd_f32(dx, dw, db, dout, x, w, mean, rstd, N, C);
    return TD_OK;
}
static td_status c_rope(td_backend *b, float *qkv, int N, int T, int S, int nheads, int hd,
                        float theta, int inverse) {
    (void)b;
    td_op_rope_f32(qkv, N, T, S, nheads, hd, theta, inverse);
    return TD_OK;
}
static size_t c_attention_saved(int B, int T, int NH) {
    return (size_t)B * NH * T * T; /* the softmax probabilities */
}
static td_status c_attention_fwd(td_backend *b, float *out, float *saved, const float *qkv, int B,
                                 int T, int NH, int NKV, int hd) {
    (void)b;
    td_op_attention_fwd_f32(out, saved, qkv, B, T, NH, NKV, hd);
    return TD_OK;
}
static td_status c_attention_bwd(td_backend *b, float *dqkv, const float *dout, const float *out,
                                 const float *saved, const float *qkv, int B, int T, int NH,
                                 int NKV, int hd) {
    (void)b, (void)out;
    td_op_attention_bwd_f32(dqkv, dout, saved, qkv, B, T, NH, NKV, hd);
    return TD_OK;
}
static td_status c_swiglu_fwd(td_backend *b, float *h, const float *gu, int N, int F) {
    (void)b;
    td_op_swiglu_fwd_f32(h, gu, N, F);
    return TD_OK;
}
static td_status c_swiglu_bwd(td_backend *b, float *dgu, const float *dh, const float *gu, int N,
                              int F) {
    (void)b;
    td_op_swiglu_bwd_f32(dgu, dh, gu, N, F);
    return TD_OK;
}
static td_status c_gelu_fwd(td_backend *b, float *out, const float *x, size_t n) {
    (void)b;
    td_op_gelu_fwd_f32(out, x, n);
    return TD_OK;
}
static td_status c_gelu_bwd(td_backend *b, float *dx, const float *dout, const float *x, size_t n) {
    (void)b;
    td_op_gelu_bwd_f32(dx, dout, x, n);
    return TD_OK;
}
static td_status c_add(td_backend *b, float *out, const float *x, const float *y, size_t n) {
    (void)b;
    td_op_add_f32(out, x, y, n);
    return TD_OK;
}
static td_status c_xent_fwd(td_backend *b, float *lse, const float *logits, const int32_t *targets,
                            const int32_t *targets_host, int N, int V, double *loss, int *counted) {
    (void)b;
    int k = 0;
    for (int n = 0; n < N; n++)
        k += targets_host[n] >= 0;
    *counted = k;
    *loss = td_op_crossentropy_fwd_f32(lse, logits, targets, N, V);
    return TD_OK;
}
static td_status c_xent_bwd(td_backend *b, float *dlogits, const float *logits, const float *lse,
                            const int32_t *targets, const int32_t *targets_host, int N, int V,
                            double dscale, int counted) {
    (void)b, (void)targets_host, (void)counted;
    td_op_crossentropy_bwd_f32(dlogits, logits, lse, targets, N, V, dscale);
    return TD_OK;
}

static td_status c_kd(td_backend *b, float *dlogits, const float *s, const float *t,
                      const int32_t *targets_host, int N, int V, double tau, int reverse, int topk,
                      double dscale, double *loss) {
    (void)b;
    *loss = td_op_kd_f32(dlogits, s, t, targets_host, N, V, tau, reverse, topk, dscale);
    if (*loss < 0) return td_error_set(TD_ERR_NOMEM, "distillation: out of memory");
    return TD_OK;
}

static td_status c_norm2(td_backend *b, const float *x, size_t n, double *out) {
    (void)b;
    double ss = 0;
#pragma omp parallel for reduction(+ : ss) schedule(static)
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    *out = sqrt(ss);
    return TD_OK;
}

static td_status c_adamw(td_backend *b, float *pp, uint16_t *pb, float *gg, float *mm, float *vv,
                         size_t n, float flr, float b1, float b2, float eps, float wd, long t,
                         float gscale, int zero_grads) {
    (void)b;
    float c1 = (float)(1.0 / (1.0 - pow(b1, (double)t)));
    float c2 = (float)(1.0 / (1.0 - pow(b2, (double)t)));
    size_t nc = (n + 4095) / 4096;
    /* in chunks of 4096, so a bf16 working copy is written while the chunk is in cache */
#pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t ch = 0; ch < nc; ch++) {
        size_t i0 = ch * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
        for (size_t i = i0; i < i1; i++) {
            float gi = gg[i] * gscale;
            if (zero_grads) gg[i] = 0;
            float mi = b1 * mm[i] + (1 - b1) * gi;
            float vi = b2 * vv[i] + (1 - b2) * gi * gi;
            mm[i] = mi;
            vv[i] = vi;
            pp[i] -= flr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * pp[i]);
        }
        if (pb) td_bf16_from_f32_serial(pb + i0, pp + i0, i1 - i0);
    }
    return TD_OK;
}

/* ---- inference on backend operations (the serving engine's CPU path has its own loops
 * for quantized weights; these serve the backend-generic path and its tests) */

static td_status c_embed_pos(td_backend *b, float *out, const int32_t *tok, const int32_t *pos,
                             const float *wte, const float *wpe, int N, int C) {
    (void)b;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *e = wte + (size_t)tok[n] * C;
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++)
            o[i] = e[i] + (wpe ? wpe[(size_t)pos[n] * C + i] : 0.0f);
    }
    return TD_OK;
}

static td_status c_rope_pos(td_backend *b, float *qkv, const int32_t *pos, int N, int S, int nheads,
                            int hd, float theta) {
    (void)b;
    int half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float cs[half], sn[half];
        for (int i = 0; i < half; i++) {
            float inv = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)hd));
            float a = (float)pos[n] * inv;
            cs[i] = (float)cos((double)a);
            sn[i] = (float)sin((double)a);
        }
        float *row = qkv + (size_t)n * S;
        for (int h = 0; h < nheads; h++) {
            float *x = row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cs[i] - x2 * sn[i];
                x[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
    return TD_OK;
}

static td_status c_kv_write(td_backend *b, float *kc, float *vc, const float *qkv,
                            const int32_t *slot, int N, int NH, int NKV, int hd) {
    (void)b;
    size_t kvdim = (size_t)NKV * hd, S = (size_t)(NH + 2 * NKV) * hd;
    for (int n = 0; n < N; n++) {
        const float *row = qkv + (size_t)n * S;
        memcpy(kc + (size_t)slot[n] * kvdim, row + (size_t)NH * hd, sizeof(float) * kvdim);
        memcpy(vc + (size_t)slot[n] * kvdim, row + (size_t)(NH + NKV) * hd, sizeof(float) * kvdim);
    }
    return TD_OK;
}

static td_status c_paged_attention(td_backend *b, float *out, const float *qkv, const float *kc,
                                   const float *vc, const int32_t *len, const int32_t *first,
                                   const int32_t *table, int bt, int N, int NH, int NKV, int hd) {
    (void)b;
    size_t kvdim = (size_t)NKV * hd, S = (size_t)(NH + 2 * NKV) * hd;
    int group = NH / NKV;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
    for (int n = 0; n < N; n++)
        for (int h = 0; h < NH; h++) {
            int P = len[n], kh = h / group;
            const int32_t *tab = table + first[n];
            const float *q = qkv + (size_t)n * S + (size_t)h * hd;
            float sc[P];
            float mx = -INFINITY;
            for (int t = 0; t < P; t++) {
                const float *k =
                    kc + ((size_t)tab[t / bt] * bt + (size_t)(t % bt)) * kvdim + (size_t)kh * hd;
                float d = 0;
                for (int i = 0; i < hd; i++)
                    d += q[i] * k[i];
                sc[t] = d * scale;
                if (sc[t] > mx) mx = sc[t];
            }
            float sum = exp_sum_f32(sc, P, mx);
            exp_scale_f32(sc, sc, P, mx, 1.0f / sum);
            float *o = out + (size_t)n * NH * hd + (size_t)h * hd;
            for (int i = 0; i < hd; i++)
                o[i] = 0;
            for (int t = 0; t < P; t++) {
                const float *v =
                    vc + ((size_t)tab[t / bt] * bt + (size_t)(t % bt)) * kvdim + (size_t)kh * hd;
                for (int i = 0; i < hd; i++)
                    o[i] += sc[t] * v[i];
            }
        }
    return TD_OK;
}

static td_status c_gather_rows(td_backend *b, float *dst, const float *src, const int32_t *idx,
                               int n, int C) {
    (void)b;
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * C, src + (size_t)idx[i] * C, sizeof(float) * (size_t)C);
    return TD_OK;
}

static const char *c_describe(td_backend *b) {
    cpu_ctx *x = CX(b);
    char k[160];
    snprintf(x->desc, sizeof x->desc, "CPU: %s", td_cpu_kernels_describe(k, sizeof k));
    return x->desc;
}

static void c_free(td_backend *b) {
    cpu_ctx *x = CX(b);
    free(x->sbf[0]);
    free(x->sbf[1]);
    free(x);
}

static const td_backend_ops g_cpu_ops = {
    .name = "cpu",
    .alloc = c_alloc,
    .release = c_release,
    .upload = c_copy,
    .download = c_copy,
    .zero = c_zero,
    .sync = c_sync,
    .bf16_prepare = c_bf16_prepare,
    .to_bf16 = c_to_bf16,
    .matmul_fwd = c_matmul_fwd,
    .matmul_bwd = c_matmul_bwd,
    .cols_add = c_cols_add,
    .cols_get = c_cols_get,
    .embed_fwd = c_embed_fwd,
    .embed_bwd = c_embed_bwd,
    .rmsnorm_fwd = c_rmsnorm_fwd,
    .rmsnorm_bwd = c_rmsnorm_bwd,
    .layernorm_fwd = c_layernorm_fwd,
    .layernorm_bwd = c_layernorm_bwd,
    .rope = c_rope,
    .attention_saved = c_attention_saved,
    .attention_fwd = c_attention_fwd,
    .attention_bwd = c_attention_bwd,
    .swiglu_fwd = c_swiglu_fwd,
    .swiglu_bwd = c_swiglu_bwd,
    .gelu_fwd = c_gelu_fwd,
    .gelu_bwd = c_gelu_bwd,
    .add = c_add,
    .xent_fwd = c_xent_fwd,
    .xent_bwd = c_xent_bwd,
    .kd = c_kd,
    .norm2 = c_norm2,
    .adamw = c_adamw,
    .embed_pos = c_embed_pos,
    .rope_pos = c_rope_pos,
    .kv_write = c_kv_write,
    .paged_attention = c_paged_attention,
    .gather_rows = c_gather_rows,
    .describe = c_describe,
    .free = c_free,
};

td_status td_backend_cpu_new(td_backend **out) {
    td_backend *b = calloc(1, sizeof *b);
    cpu_ctx *x = calloc(1, sizeof *x);
    if (!b || !x) {
        free(b);
        free(x);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    b->ops = &g_cpu_ops;
    b->ctx = x;
    b->host_memory = 1;
    *out = b;
    return TD_OK;
}
