/* The serving form of a model (see infer_model.h): inference buffers, quantized weights,
 * GPTQ statistics, tensor-parallel slices, and the forward over a paged KV cache — on the
 * CPU with tandem's loops (quantized products included), on a device backend with the
 * backend's operations. */
#include "worker/infer/infer_model.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common/log.h"
#include "worker/infer/gptq.h"
#include "worker/infer/infer_model_impl.h"
#include "worker/infer/kv_cache.h"
#include "worker/infer/kv_cache_impl.h"
#include "worker/kernels/cpu/bf16.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/vec_f32.h"

td_infer_model *td_infer_view_of(const td_model *wm, td_infer_model *v) {
    memset(v, 0, sizeof *v);
    const td_model_config *c = td_model_config_of(wm);
    v->w = (td_model *)wm;
    v->cfg = *c;
    v->C = c->hidden_size;
    v->F = c->intermediate_size;
    v->L = c->num_hidden_layers;
    v->NH = c->num_attention_heads;
    v->NKV = c->num_key_value_heads;
    v->hd = td_model_config_head_dim(c);
    v->V = c->vocab_size;
    v->QKV = (v->NH + 2 * v->NKV) * v->hd;
    v->FC = c->arch == TD_ARCH_LLAMA ? 2 * v->F : v->F;
    v->num_params = td_model_num_params(wm);
    v->p = *td_model_param_ptrs(wm);
    return v;
}

td_status td_infer_model_new(td_model *w, td_infer_model **out) {
    *out = NULL;
    td_infer_model *m = malloc(sizeof *m);
    if (!m) return td_error_set(TD_ERR_NOMEM, "out of memory");
    td_infer_view_of(w, m);
    m->be = td_model_backend(w);
    *out = m;
    return TD_OK;
}

static void calib_free(td_infer_model *m) {
    if (!m->calH) return;
    for (int i = 0; i <= 4 * m->L; i++)
        free(m->calH[i]);
    free(m->calH);
    m->calH = NULL;
}

void td_infer_model_free(td_infer_model **mp) {
    if (!mp || !*mp) return;
    td_infer_model *m = *mp;
    free(m->inf);
    free(m->q8);
    free(m->q16);
    free(m->qbf);
    free(m->q8s);
    free(m->q8l);
    free(m->q8sum);
    calib_free(m);
    free(m->grid);
    free(m->iq8);
    free(m->iq8s);
    if (m->be) {
        td_backend_release(m->be, m->dinf);
        td_backend_release(m->be, m->didx);
    }
    free(m->hidx);
    for (int k = 0; k < m->n_ad; k++)
        td_infer_adapter_free(&m->ad[k]);
    free(m->ad);
    td_model_free(&m->w);
    free(m);
    *mp = NULL;
}

td_model *td_infer_model_weights(const td_infer_model *m) {
    return m->w;
}
const td_model_config *td_infer_model_config(const td_infer_model *m) {
    return &m->cfg;
}

static void norm_fwd(const td_infer_model *m, float *out, float *mean, float *rstd, const float *x,
                     const float *w, const float *b, int N) {
    if (m->cfg.arch == TD_ARCH_LLAMA)
        td_op_rmsnorm_fwd_f32(out, rstd, x, w, N, m->C, (float)m->cfg.norm_eps);
    else
        td_op_layernorm_fwd_f32(out, mean, rstd, x, w, b, N, m->C, (float)m->cfg.norm_eps);
}

/* ---------------------------------------------------------------------------------------- */
/* inference with a paged KV cache */

td_status td_infer_plan(td_infer_model *m, int max_tokens, int max_segs) {
    td_backend *be = td_model_backend(m->w);
    if (be != m->be) { /* the weights moved: device buffers go with them */
        td_backend_release(m->be, m->dinf);
        td_backend_release(m->be, m->didx);
        m->dinf = NULL;
        m->didx = NULL;
        m->didx_n = 0;
        m->be = be;
        free(m->inf);
        m->inf = NULL;
    }
    if (m->inf && max_tokens <= m->inf_tokens && max_segs <= m->inf_segs) return TD_OK;
    if (m->inf) { /* grow, never shrink: an engine may rely on the earlier plan */
        if (max_tokens < m->inf_tokens) max_tokens = m->inf_tokens;
        if (max_segs < m->inf_segs) max_segs = m->inf_segs;
    }
    if (max_segs > max_tokens) max_tokens = max_segs;
    size_t N = (size_t)max_tokens, S = (size_t)max_segs, C = (size_t)m->C;
    size_t total = N * C * 2 + 2 * N + N * (size_t)m->QKV + N * (size_t)m->NH * m->hd +
                   N * (size_t)m->FC + N * (size_t)m->F + S * C * 2 + 2 * S + 3 * N + 16 * 16;
    free(m->inf);
    m->inf = malloc(total * sizeof(float));
    if (!m->inf) return td_error_set(TD_ERR_NOMEM, "out of memory for inference buffers");
    float *cur = m->inf;
#define TAKE(n) (cur += (((n) + 15) / 16) * 16, cur - (((n) + 15) / 16) * 16)
    m->ix = TAKE(N * C);
    m->in = TAKE(N * C);
    m->im = TAKE(N);
    m->ir = TAKE(N);
    m->iqkv = TAKE(N * m->QKV);
    m->iatt = TAKE(N * m->NH * m->hd);
    m->ifc = TAKE(N * m->FC);
    m->ih = TAKE(N * m->F);
    m->ilast = TAKE(S * C * 2 + 2 * S);
    m->itok = (int32_t *)TAKE(N);
    m->ipos = (int32_t *)TAKE(N);
    m->iseg = (int32_t *)TAKE(N);
#undef TAKE
    size_t wmax = C > (size_t)m->F ? C : (size_t)m->F;
    if ((size_t)m->NH * m->hd > wmax) wmax = (size_t)m->NH * m->hd;
    free(m->iq8);
    free(m->iq8s);
    m->iq8 = malloc(N * wmax);
    m->iq8s = malloc(N * sizeof(float));
    if (!m->iq8 || !m->iq8s)
        return td_error_set(TD_ERR_NOMEM, "out of memory for inference buffers");
    m->inf_tokens = max_tokens;
    m->inf_segs = max_segs;
    if (!m->be->host_memory) return td_infer_dev_plan(m, max_tokens, max_segs);
    return TD_OK;
}

/* out (N, OC) = inp (N, C) @ (s * Wq)^T + bias, with Wq int8 or int16 (OC, C): four weight
 * rows at a time are converted to float once (AVX-512: 16 at a time) into an L1-resident
 * buffer and reused for every input row; fp32 accumulation. QTYPE is the weight type,
 * QLOAD16(p) converts 16 of them at p to a __m512. */
#define QTYPE int8_t
#define QLOAD16(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define QMATMUL matmul_int8
#include "worker/infer/matmul_q.inc"
#define QTYPE int16_t
#define QLOAD16(p)                                                                                 \
    _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(p))))
#define QMATMUL matmul_int16
#include "worker/infer/matmul_q.inc"
static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#define QTYPE uint16_t /* bf16: the upper half of a float */
#define QLOAD16(p)                                                                                 \
    _mm512_castsi512_ps(                                                                           \
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define QSCALAR(x) bf16_to_float(x)
#define QMATMUL matmul_bf16
#include "worker/infer/matmul_q.inc"

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
/* out (N, OC) = inp @ (s W8)^T + bias with int8 x int8 products in int32: each input row is
 * quantized to int8 (scale max |x| / 127) and shifted to u8 (x + 128) for vpdpbusd; the
 * shift is undone with the weight row sums: sum (x+128) w = sum x w + 128 sum w. */
static void matmul_int8_vnni(const td_infer_model *m, float *out, const float *inp,
                             const int8_t *W8, const float *sc, const int32_t *wsum,
                             const float *bias, int N, int C, int OC) {
    uint8_t *xq = m->iq8;
    float *xs = m->iq8s;
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float mx = 0;
        for (int k = 0; k < C; k++)
            mx = fmaxf(mx, fabsf(x[k]));
        float s = mx > 0 ? mx / 127.0f : 1.0f, inv = 1.0f / s;
        xs[n] = s;
        for (int k = 0; k < C; k++)
            xq[(size_t)n * C + k] = (uint8_t)(lrintf(x[k] * inv) + 128);
    }
#pragma omp parallel for schedule(static)
    for (int j = 0; j < OC; j++) {
        const int8_t *w = W8 + (size_t)j * C;
        for (int n = 0; n < N; n++) {
            const uint8_t *q = xq + (size_t)n * C;
            __m512i acc = _mm512_setzero_si512();
            for (int k = 0; k < C; k += 64)
                acc =
                    _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(q + k), _mm512_loadu_si512(w + k));
            int32_t dot = _mm512_reduce_add_epi32(acc) - 128 * wsum[j];
            out[(size_t)n * OC + j] = (float)dot * xs[n] * sc[j] + (bias ? bias[j] : 0.0f);
        }
    }
}
#endif

void td_infer_set_int8_vnni(td_infer_model *m, int on) {
    m->int8_vnni = on;
}

/* Fixed-shape blocks for calibration: each block is one single-threaded OpenBLAS call
 * (OpenBLAS does not thread inside an OpenMP parallel region), so every sum is formed the
 * same way whatever the thread count -- OpenBLAS's own threading picks kernels by it, which
 * moved the logits of a 32-row step by an ulp and, through sampling, the whole text. */
enum { FIXED_BLOCK = 64 };

/* out (N, OC) = inp (N, C) W^T + bias */
static void matmul_fixed_blocks(float *out, const float *inp, const float *W, const float *bias,
                                int N, int C, int OC) {
    int nb = (OC + FIXED_BLOCK - 1) / FIXED_BLOCK;
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < nb; b++) {
        int j0 = b * FIXED_BLOCK, n = OC - j0 < FIXED_BLOCK ? OC - j0 : FIXED_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, C, 1.0f, inp, C,
                    W + (size_t)j0 * C, C, 0.0f, out + j0, OC);
        if (bias)
            for (int r = 0; r < N; r++)
                for (int j = j0; j < j0 + n; j++)
                    out[(size_t)r * OC + j] += bias[j];
    }
}

/* H (C, C) += X^T X for X (N, C): the upper triangle (and the diagonal blocks whole) */
static void gram_fixed_blocks(float *H, const float *X, int N, int C) {
    int nb = (C + FIXED_BLOCK - 1) / FIXED_BLOCK;
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < nb; b++) {
        int c0 = b * FIXED_BLOCK, n = C - c0 < FIXED_BLOCK ? C - c0 : FIXED_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c0 + n, n, N, 1.0f, X, C, X + c0, C,
                    1.0f, H + c0, C);
    }
}

static void linear_infer(const td_infer_model *m, int which, int layer, float *out,
                         const float *inp, const float *W, const float *bias, int N, int C,
                         int OC) {
    if (m->calH) { /* calibrating (the fp32 model): the same sums whatever the thread count */
        float *H = m->calH[layer < 0 ? 4 * m->L : 4 * layer + which];
        if (H) gram_fixed_blocks(H, inp, N, C); /* GPTQ's statistic: H += inp^T inp */
        matmul_fixed_blocks(out, inp, W, bias, N, C, OC);
        return;
    }
    if (m->q8l) {
        const struct q8mat *q = &m->q8l[layer < 0 ? 4 * m->L : 4 * layer + which];
        if (q->wb) {
            matmul_bf16(out, inp, q->wb, q->s, bias, N, C, OC);
            return;
        }
        if (q->w16) {
            matmul_int16(out, inp, q->w16, q->s, bias, N, C, OC);
            return;
        }
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
        if (m->int8_vnni && C % 64 == 0) {
            matmul_int8_vnni(m, out, inp, q->w, q->s, q->wsum, bias, N, C, OC);
            return;
        }
#endif
        matmul_int8(out, inp, q->w, q->s, bias, N, C, OC);
    } else if (N == 1) { /* a matrix-vector product: OpenBLAS's sgemv is ~2x its M=1 sgemm */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, W, C, inp, 1, 0.0f, out, 1);
        if (bias)
            for (int j = 0; j < OC; j++)
                out[j] += bias[j];
    } else {
        td_op_matmul_fwd_f32(out, inp, W, bias, N, C, OC);
    }
}

typedef struct {
    const float *w;
    int rows, cols;
} qmat;

/* The matrices inference multiplies with, in q8l order; returns the count. */
static int infer_mats(const td_infer_model *m, qmat *mats) {
    int nm = 0;
    for (int l = 0; l < m->L; l++) {
        const td_layer_params *w = &m->p.layers[l];
        mats[nm++] = (qmat){w->wqkv, m->QKV, m->C};
        mats[nm++] = (qmat){w->wo, m->C, m->NH * m->hd};
        mats[nm++] = (qmat){w->wfc, m->FC, m->C};
        mats[nm++] = (qmat){w->wproj, m->C, m->F};
    }
    mats[nm++] = (qmat){m->p.lm_head, m->V, m->C};
    /* an untied input embedding is quantized too (a lookup converts one row) */
    if (!m->cfg.tie_word_embeddings) mats[nm++] = (qmat){m->p.wte, m->V, m->C};
    return nm;
}

/* Per-output-channel symmetric quantization of the (R, C) matrix W to qmax levels either
 * side: scale max |w| / qmax, round to nearest. Writes int8 (w8) or int16 (w16) values,
 * the scales and (int8) the row sums the VNNI path needs. */
static void quantize_rows(const float *W, int R, int Cc, float qmax, const float *grid, int8_t *w8,
                          int16_t *w16, float *sp, int32_t *ws) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *row = W + (size_t)r * Cc;
        /* the given grid (GPTQ's, or the whole model's): w / sc is an integer there */
        float sc = grid && grid[r] > 0 ? grid[r] : td_gptq_row_scale(row, Cc, qmax);
        sp[r] = sc;
        int32_t sum = 0;
        for (int k = 0; k < Cc; k++) {
            long v = lrintf(row[k] / sc);
            v = v > (long)qmax ? (long)qmax : v < -(long)qmax ? -(long)qmax : v;
            if (w16)
                w16[(size_t)r * Cc + k] = (int16_t)v;
            else
                w8[(size_t)r * Cc + k] = (int8_t)v;
            sum += (int32_t)v;
        }
        ws[r] = sum;
    }
}

td_status td_infer_quantize_bf16(td_infer_model *m) {
    if (m->q8l) return TD_OK;
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats);
    size_t nw = 0, ns = 0;
    for (int i = 0; i < nm; i++) {
        nw += (size_t)mats[i].rows * mats[i].cols;
        ns += (size_t)mats[i].rows;
    }
    m->qbf = malloc(nw * sizeof(uint16_t));
    m->q8s = malloc(ns * sizeof(float));
    m->q8l = malloc(sizeof *m->q8l * (size_t)nm);
    if (!m->qbf || !m->q8s || !m->q8l) {
        free(mats);
        free(m->qbf);
        free(m->q8s);
        free(m->q8l);
        m->qbf = NULL;
        m->q8s = NULL;
        m->q8l = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 weights");
    }
    for (size_t i = 0; i < ns; i++)
        m->q8s[i] = 1.0f;
    uint16_t *wp = m->qbf;
    float *sp = m->q8s;
    for (int i = 0; i < nm; i++) {
        size_t n = (size_t)mats[i].rows * mats[i].cols;
        td_bf16_from_f32(wp, mats[i].w, n);
        m->q8l[i] = (struct q8mat){NULL, NULL, wp, sp, NULL};
        wp += n;
        sp += mats[i].rows;
    }
    free(mats);
    return TD_OK;
}

td_status td_infer_quantize_int8(td_infer_model *m, int head_int8) {
    if (m->q8l) return TD_OK;
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats), head = 4 * m->L;
    size_t nw = 0, ns = 0, nh = head_int8 ? 0 : (size_t)mats[head].rows * mats[head].cols;
    for (int i = 0; i < nm; i++) {
        nw += (size_t)mats[i].rows * mats[i].cols;
        ns += (size_t)mats[i].rows;
    }
    nw -= nh;
    m->q8 = malloc(nw ? nw : 1);
    m->q16 = nh ? malloc(nh * sizeof(int16_t)) : NULL;
    m->q8s = malloc(ns * sizeof(float));
    m->q8sum = malloc(ns * sizeof(int32_t));
    m->q8l = malloc(sizeof *m->q8l * (size_t)nm);
    if (!m->q8 || (nh && !m->q16) || !m->q8s || !m->q8l || !m->q8sum) {
        free(mats);
        free(m->q8);
        free(m->q16);
        free(m->q8s);
        free(m->q8l);
        free(m->q8sum);
        m->q8 = NULL;
        m->q16 = NULL;
        m->q8s = NULL;
        m->q8l = NULL;
        m->q8sum = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for int8 weights");
    }
    int8_t *wp = m->q8;
    float *sp = m->q8s;
    int32_t *ws = m->q8sum;
    for (int i = 0; i < nm; i++) {
        int R = mats[i].rows, Cc = mats[i].cols, wide = i == head && nh;
        m->q8l[i] = (struct q8mat){wide ? NULL : wp, wide ? m->q16 : NULL, NULL, sp, ws};
        /* the int8 grid (GPTQ's, or a whole model's before slicing) is for int8 rows only */
        quantize_rows(mats[i].w, R, Cc, wide ? 32767.0f : 127.0f,
                      m->grid && !wide ? m->grid + (sp - m->q8s) : NULL, wp, wide ? m->q16 : NULL,
                      sp, ws);
        if (!wide) wp += (size_t)R * Cc;
        sp += R;
        ws += R;
    }
    free(mats);
    return TD_OK;
}

/* Element counts behind the memory plan: lin = weights of the matrix products (and an
 * untied input embedding), rows = their output rows (one scale each when quantized),
 * kept = what stays fp32 (norms, biases, learned positions); *_read: what one decode step
 * reads of each (an untied input embedding: one row, not counted; positions: one row). */
typedef struct {
    size_t lin, rows, kept, lin_read, rows_read, small_read;
} weight_parts;

static weight_parts weight_parts_of(const td_infer_model *m) {
    weight_parts w = {0};
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return w;
    int nm = infer_mats(m, mats);
    for (int i = 0; i < nm; i++) {
        w.lin += (size_t)mats[i].rows * mats[i].cols;
        w.rows += (size_t)mats[i].rows;
    }
    free(mats);
    w.kept = m->num_params - w.lin; /* tied: wte is counted once, as lm_head, inside lin */
    w.lin_read = w.lin;
    w.rows_read = w.rows;
    if (!m->cfg.tie_word_embeddings) {
        w.lin_read -= (size_t)m->V * m->C;
        w.rows_read -= (size_t)m->V;
    }
    w.small_read = w.kept;
    if (m->p.wpe) w.small_read -= (size_t)m->cfg.max_position_embeddings * m->C;
    return w;
}

/* ---------------------------------------------------------------------------------------- */
/* GPTQ calibration */

td_status td_infer_calib_start(td_infer_model *m, int what, int layer_lo, int layer_hi) {
    if (m->q8l)
        return td_error_set(TD_ERR_INVALID, "calibration needs the fp32 model: this one is "
                                            "already quantized");
    if (m->cfg.tp_size > 1)
        return td_error_set(TD_ERR_INVALID, "calibrate the whole model, then slice it for "
                                            "tensor parallelism");
    calib_free(m);
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    m->calH = calloc((size_t)(4 * m->L + 1), sizeof *m->calH);
    if (!mats || !m->calH) {
        free(mats);
        free(m->calH);
        m->calH = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for calibration");
    }
    infer_mats(m, mats);
    size_t bytes = 0;
    for (int i = 0; i <= 4 * m->L; i++) {
        int head = i == 4 * m->L, l = i / 4;
        if (head ? !(what & TD_CALIB_HEAD)
                 : !(what & TD_CALIB_LAYERS) || l < layer_lo || l >= layer_hi)
            continue;
        size_t c = (size_t)mats[i].cols;
        bytes += c * c * sizeof(float);
        m->calH[i] = calloc(c * c, sizeof(float));
        if (!m->calH[i]) {
            free(mats);
            calib_free(m);
            return td_error_set(TD_ERR_NOMEM,
                                "out of memory for calibration statistics "
                                "(%.1f MiB so far)",
                                bytes / 1048576.0);
        }
    }
    free(mats);
    return TD_OK;
}

size_t td_infer_calib_work_bytes(const td_model *wm, int skip_head) {
    td_infer_model v, *m = td_infer_view_of(wm, &v);
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return 0;
    int nm = infer_mats(m, mats);
    size_t work = 0;
    for (int i = 0; i < nm; i++) {
        if (i == 4 * m->L && skip_head) continue;
        size_t w = td_gptq_work_bytes(mats[i].rows, mats[i].cols);
        if (i > 4 * m->L) /* an untied embedding, and its H from layer 0 (embedding_gptq) */
            w += ((size_t)m->QKV * m->C + (size_t)m->C * m->C) * sizeof(float);
        work = w > work ? w : work;
    }
    free(mats);
    return work;
}

void td_infer_calib_cancel(td_infer_model *m) {
    calib_free(m);
}

size_t td_infer_calib_bytes(const td_model *wm, int what) {
    td_infer_model v, *m = td_infer_view_of(wm, &v);
    size_t C = (size_t)m->C, A = (size_t)m->NH * m->hd, F = (size_t)m->F;
    size_t layers = (2 * C * C + A * A + F * F) * (size_t)m->L;
    return ((what & TD_CALIB_LAYERS ? layers : 0) + (what & TD_CALIB_HEAD ? C * C : 0)) *
           sizeof(float);
}

/* An untied input embedding is a lookup, with no inputs to calibrate on. Its rows go
 * (normalised) into layer 0's q/k/v product, so GPTQ weighs their errors by how much they
 * move its output: H = (W_qkv diag(g))^T (W_qkv diag(g)), g = layer 0's norm weights. Done
 * with the layers, so that what reads the model next (the head's calibration) sees the
 * quantized model. */
static td_status embedding_gptq(td_infer_model *m, float *wte, float damp, float *grid) {
    size_t C = (size_t)m->C, QKV = (size_t)m->QKV;
    float *A = malloc(sizeof(float) * QKV * C), *H = calloc(C * C, sizeof(float));
    const td_layer_params *l0 = &m->p.layers[0];
    td_status s = A && H ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s == TD_OK) {
        for (size_t r = 0; r < QKV; r++)
            for (size_t k = 0; k < C; k++)
                A[r * C + k] = l0->wqkv[r * C + k] * l0->norm1_w[k];
        gram_fixed_blocks(H, A, m->QKV, m->C);
        s = td_gptq_quantize(wte, m->V, m->C, H, 127.0f, damp, grid);
    }
    free(A);
    free(H);
    return s;
}

td_status td_infer_calib_gptq(td_infer_model *m, float damp,
                              void (*progress)(void *ctx, int done, int total), void *ctx) {
    if (!m->calH)
        return td_error_set(TD_ERR_INVALID, "GPTQ without calibration statistics "
                                            "(td_infer_calib_start, then forward steps)");
    if (!td_infer_int8_grid(m, 1)) return td_error_set(TD_ERR_NOMEM, "out of memory");
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    /* statistics of layer 0 mean this pass is the first of the layers' */
    int nm = infer_mats(m, mats), total = 0, done = 0, first_layers = m->calH[0] != NULL;
    for (int i = 0; i <= 4 * m->L; i++)
        total += m->calH[i] != NULL;
    td_status s = TD_OK;
    float *grid = m->grid;
    for (int i = 0; i < nm && s == TD_OK; i++) {
        if (i <= 4 * m->L && m->calH[i]) {
            s = td_gptq_quantize((float *)mats[i].w, mats[i].rows, mats[i].cols, m->calH[i], 127.0f,
                                 damp, grid);
            if (s == TD_OK && progress) progress(ctx, ++done, total);
        } else if (i > 4 * m->L && first_layers) {
            s = embedding_gptq(m, (float *)mats[i].w, damp, grid);
        }
        grid += mats[i].rows;
    }
    free(mats);
    calib_free(m);
    return s;
}

size_t td_infer_int8_grid_len(const td_model *wm) {
    td_infer_model v, *m = td_infer_view_of(wm, &v);
    weight_parts w = weight_parts_of(m);
    return w.rows;
}

float *td_infer_int8_grid(td_infer_model *m, int create) {
    size_t n = td_infer_int8_grid_len(m->w);
    if (!m->grid && create && n) m->grid = calloc(n, sizeof(float));
    return m->grid;
}

td_status td_infer_release_quantized(td_infer_model *m) {
    if (!m->q8l) return td_error_set(TD_ERR_INVALID, "no int8/bf16 copies: nothing to release");
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats);
    for (int i = 0; i < nm; i++)
        td_model_release_range(m->w, mats[i].w, (size_t)mats[i].rows * (size_t)mats[i].cols);
    free(mats);
    return TD_OK;
}

td_status td_infer_int8_grid_rtn(td_infer_model *m, int head_int8) {
    if (!td_infer_int8_grid(m, 1)) return td_error_set(TD_ERR_NOMEM, "out of memory");
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats);
    float *g = m->grid;
    for (int i = 0; i < nm; i++) {
        if (i == 4 * m->L && !head_int8) /* lm_head stays int16, rounded on its own */
            memset(g, 0, sizeof(float) * (size_t)mats[i].rows);
        else
            td_gptq_row_scales(mats[i].w, mats[i].rows, mats[i].cols, 127.0f, g);
        g += mats[i].rows;
    }
    free(mats);
    return TD_OK;
}

void td_infer_weight_bytes(const td_model *wm, int head_int8, size_t *fp32, size_t *int8,
                           size_t *read_fp32, size_t *read_int8) {
    td_infer_model v, *m = td_infer_view_of(wm, &v);
    weight_parts w = weight_parts_of(m);
    /* int8 keeps fp32 only for norms, biases and learned positions; embeddings are read as
     * int8 rows (tied: the lm_head copy, int16 unless head_int8; untied: their own) */
    size_t wide = head_int8 ? 0 : (size_t)m->V * m->C; /* lm_head's second byte per weight */
    *fp32 = m->num_params * 4;
    *int8 = w.kept * 4 + w.lin + wide + w.rows * 4;
    *read_fp32 = (w.lin_read + w.small_read) * 4;
    *read_int8 = w.lin_read + wide + w.rows_read * 4 + w.small_read * 4;
}

size_t td_infer_read_bytes_bf16(const td_model *wm) {
    td_infer_model v, *m = td_infer_view_of(wm, &v);
    weight_parts w = weight_parts_of(m); /* products' weights at 2 bytes, the rest at 4 */
    return w.lin_read * 2 + w.small_read * 4;
}

/* RoPE on q and k heads of each row at its own position (the training kernel assumes
 * position = row % T). */
static void rope_rows(const td_infer_model *m, float *qkv, const int32_t *pos, int N) {
    int hd = m->hd, half = hd / 2, heads = m->NH + m->NKV;
    double theta = m->cfg.rope_theta;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float cs[half], sn[half];
        for (int i = 0; i < half; i++) {
            float inv = (float)(1.0 / pow(theta, (double)(2 * i) / (double)hd));
            float a = (float)pos[n] * inv;
            cs[i] = (float)cos((double)a);
            sn[i] = (float)sin((double)a);
        }
        float *row = qkv + (size_t)n * m->QKV;
        for (int h = 0; h < heads; h++) {
            float *x = row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cs[i] - x2 * sn[i];
                x[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

td_status td_infer_forward(td_infer_model *m, td_kv_cache *kv, const td_infer_seg *segs, int nseg,
                           float *logits) {
    if (td_model_is_released(m->w))
        return td_error_set(TD_ERR_INVALID, "the model's weights were released: load it again");
    if (m->be != td_model_backend(m->w))
        return td_error_set(TD_ERR_INVALID, "the weights moved to another backend since "
                                            "td_infer_plan: plan again");
    for (int s = 0; s < nseg; s++)
        if (segs[s].adapter < 0 || segs[s].adapter > m->n_ad)
            return td_error_set(TD_ERR_INVALID, "adapter %d: the model serves %d", segs[s].adapter,
                                m->n_ad);
    if (!m->be->host_memory) {
        for (int s = 0; s < nseg; s++)
            if (segs[s].adapter)
                return td_error_set(TD_ERR_INVALID, "adapters on a device backend are not built "
                                                    "yet");
        return td_infer_dev_forward(m, kv, segs, nseg, logits);
    }
    int N = 0, C = m->C, V = m->V, hd = m->hd, kvdim = m->NKV * hd, bt = kv->bt;
    for (int s = 0; s < nseg; s++)
        N += segs[s].n;
    if (!m->inf || N > m->inf_tokens || nseg > m->inf_segs)
        return td_error_set(TD_ERR_INVALID,
                            "inference step of %d tokens / %d sequences exceeds "
                            "the plan (%d / %d)",
                            N, nseg, m->inf_tokens, m->inf_segs);
    int r = 0, row0[nseg > 0 ? nseg : 1];
    for (int s = 0; s < nseg; s++) {
        row0[s] = r;
        if (segs[s].n <= 0 || segs[s].pos + segs[s].n > m->cfg.max_position_embeddings)
            return td_error_set(TD_ERR_INVALID,
                                "sequence segment at position %d + %d exceeds "
                                "max_position_embeddings %d",
                                segs[s].pos, segs[s].n, m->cfg.max_position_embeddings);
        for (int i = 0; i < segs[s].n; i++, r++) {
            int32_t t = segs[s].tokens[i];
            if (t < 0 || t >= V)
                return td_error_set(TD_ERR_INVALID, "token id %d is outside [0, %d)", t, V);
            m->itok[r] = t;
            m->ipos[r] = segs[s].pos + i;
            m->iseg[r] = s;
        }
    }
    int llama = m->cfg.arch == TD_ARCH_LLAMA, group = m->NH / m->NKV;
    float scale = 1.0f / sqrtf((float)hd);
    /* embeddings */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = m->ix + (size_t)n * C;
        if (m->q8l) { /* the quantized embedding row (lm_head's when tied) */
            const struct q8mat *q = &m->q8l[4 * m->L + (m->cfg.tie_word_embeddings ? 0 : 1)];
            size_t at = (size_t)m->itok[n] * C;
            float sc = q->s[m->itok[n]];
            for (int i = 0; i < C; i++) {
                float v;
                if (q->wb) {
                    uint32_t u = (uint32_t)q->wb[at + i] << 16;
                    memcpy(&v, &u, 4);
                } else {
                    v = q->w16 ? (float)q->w16[at + i] : (float)q->w[at + i];
                }
                o[i] = v * sc + (m->p.wpe ? m->p.wpe[(size_t)m->ipos[n] * C + i] : 0.0f);
            }
            continue;
        }
        const float *e = m->p.wte + (size_t)m->itok[n] * C;
        if (m->p.wpe) {
            const float *pe = m->p.wpe + (size_t)m->ipos[n] * C;
            for (int i = 0; i < C; i++)
                o[i] = e[i] + pe[i];
        } else {
            memcpy(o, e, sizeof(float) * (size_t)C);
        }
    }
    for (int l = 0; l < m->L; l++) {
        const td_layer_params *w = &m->p.layers[l];
        norm_fwd(m, m->in, m->im, m->ir, m->ix, w->norm1_w, w->norm1_b, N);
        linear_infer(m, 0, l, m->iqkv, m->in, w->wqkv, w->bqkv, N, C, m->QKV);
        if (m->n_ad) td_infer_adapters_apply(m, segs, nseg, row0, l, 0, m->iqkv, m->QKV, m->in, C);
        if (llama) rope_rows(m, m->iqkv, m->ipos, N);
        float *K = kv->k + (size_t)l * kv->nblocks * (size_t)bt * kvdim;
        float *Vc = kv->v + (size_t)l * kv->nblocks * (size_t)bt * kvdim;
        /* write this step's K and V into the sequences' blocks */
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const td_infer_seg *sg = &segs[m->iseg[n]];
            int p = m->ipos[n];
            size_t slot = ((size_t)sg->blocks[p / bt] * bt + (size_t)(p % bt)) * kvdim;
            const float *row = m->iqkv + (size_t)n * m->QKV;
            memcpy(K + slot, row + (size_t)m->NH * hd, sizeof(float) * (size_t)kvdim);
            memcpy(Vc + slot, row + (size_t)(m->NH + m->NKV) * hd, sizeof(float) * (size_t)kvdim);
        }
        /* attention of each new token over its sequence's positions 0..p */
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < m->NH; h++) {
                const td_infer_seg *sg = &segs[m->iseg[n]];
                int p = m->ipos[n], kh = h / group;
                const float *q = m->iqkv + (size_t)n * m->QKV + (size_t)h * hd;
                float sc[p + 1];
                float mx = -INFINITY;
                for (int t = 0; t <= p; t++) {
                    const float *k = K +
                                     ((size_t)sg->blocks[t / bt] * bt + (size_t)(t % bt)) * kvdim +
                                     (size_t)kh * hd;
                    float d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[i] * k[i];
                    sc[t] = d * scale;
                    if (sc[t] > mx) mx = sc[t];
                }
                float sum = exp_sum_f32(sc, p + 1, mx);
                exp_scale_f32(sc, sc, p + 1, mx, 1.0f / sum);
                float *o = m->iatt + (size_t)n * m->NH * hd + (size_t)h * hd;
                for (int i = 0; i < hd; i++)
                    o[i] = 0;
                for (int t = 0; t <= p; t++) {
                    const float *v = Vc +
                                     ((size_t)sg->blocks[t / bt] * bt + (size_t)(t % bt)) * kvdim +
                                     (size_t)kh * hd;
                    float a = sc[t];
                    for (int i = 0; i < hd; i++)
                        o[i] += a * v[i];
                }
            }
        linear_infer(m, 1, l, m->in, m->iatt, w->wo, w->bo, N, m->NH * hd, C);
        if (m->n_ad)
            td_infer_adapters_apply(m, segs, nseg, row0, l, 1, m->in, C, m->iatt, m->NH * hd);
        if (m->tp_comm && m->tp_comm->size > 1)
            TD_TRY(td_comm_allreduce(m->tp_comm, m->in, (size_t)N * C, TD_COMM_F32));
        td_op_add_f32(m->ix, m->ix, m->in, (size_t)N * C);
        norm_fwd(m, m->in, m->im, m->ir, m->ix, w->norm2_w, w->norm2_b, N);
        linear_infer(m, 2, l, m->ifc, m->in, w->wfc, w->bfc, N, C, m->FC);
        if (m->n_ad) td_infer_adapters_apply(m, segs, nseg, row0, l, 2, m->ifc, m->FC, m->in, C);
        if (llama)
            td_op_swiglu_fwd_f32(m->ih, m->ifc, N, m->F);
        else
            td_op_gelu_fwd_f32(m->ih, m->ifc, (size_t)N * m->F);
        linear_infer(m, 3, l, m->in, m->ih, w->wproj, w->bproj, N, m->F, C);
        if (m->n_ad) td_infer_adapters_apply(m, segs, nseg, row0, l, 3, m->in, C, m->ih, m->F);
        if (m->tp_comm && m->tp_comm->size > 1)
            TD_TRY(td_comm_allreduce(m->tp_comm, m->in, (size_t)N * C, TD_COMM_F32));
        td_op_add_f32(m->ix, m->ix, m->in, (size_t)N * C);
    }
    if (!logits) return TD_OK; /* tensor-parallel members: the leader samples */
    /* final norm and lm_head on each segment's last token only */
    float *last = m->ilast, *lastn = m->ilast + (size_t)nseg * C, *lm = lastn + (size_t)nseg * C;
    r = 0;
    for (int s = 0; s < nseg; s++) {
        r += segs[s].n;
        memcpy(last + (size_t)s * C, m->ix + (size_t)(r - 1) * C, sizeof(float) * (size_t)C);
    }
    norm_fwd(m, lastn, lm, lm + nseg, last, m->p.normf_w, m->p.normf_b, nseg);
    linear_infer(m, 0, -1, logits, lastn, m->p.lm_head, NULL, nseg, C, V);
    return TD_OK;
}
