/* Finite-difference check of every layer's backward, in float64 (the _f64 kernels come
 * from the same source as the float32 ones; see ops_impl.inc). For each kernel: random
 * inputs x, a random projection R, scalar f(x) = sum(R * forward(x)); the analytic
 * gradient from the backward kernel (fed dout = R) must match the central difference
 * (f(x + h e_i) - f(x - h e_i)) / 2h, h = 1e-6, within 1e-6 relative to max |grad|. */
#include <math.h>
#include <string.h>

#include "common/rng.h"
#include "tests/test.h"
#include "worker/kernels/cpu/ops.h"

static td_rng g_rng;

static double *randv(size_t n, double scale) {
    double *v = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        v[i] = scale * td_rng_normal(&g_rng);
    return v;
}

static double dotv(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* A forward function: reads the inputs held in the closure, writes `out`. */
typedef void (*fwd_fn)(void *ctx, double *out);

/* Compares analytic gradient `g` of the scalar sum(R*out) w.r.t. `x` (n entries) with
 * central differences; returns the max error relative to max |g|. */
static double fd_check(const char *what, fwd_fn f, void *ctx, double *x, size_t n, const double *g,
                       const double *R, double *out, size_t nout) {
    const double h = 1e-6;
    double maxg = 0, maxerr = 0;
    for (size_t i = 0; i < n; i++)
        maxg = fmax(maxg, fabs(g[i]));
    for (size_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        f(ctx, out);
        double fp = dotv(out, R, nout);
        x[i] = keep - h;
        f(ctx, out);
        double fm = dotv(out, R, nout);
        x[i] = keep;
        double num = (fp - fm) / (2 * h);
        maxerr = fmax(maxerr, fabs(num - g[i]));
    }
    double rel = maxerr / fmax(maxg, 1e-12);
    printf("  %-34s max|g| %.3e  rel err %.2e\n", what, maxg, rel);
    CHECK(rel < 1e-6, "%s: finite-difference rel err %.3e", what, rel);
    CHECK(maxg > 1e-6, "%s: gradient is (near) zero, the check would be vacuous", what);
    return rel;
}

/* ---------------------------------------------------------------------------------------- */
enum { N = 6, C = 8, OC = 5, Tl = 3, Bb = 2, F = 5, V = 7 };

typedef struct {
    double *x, *w, *b, *mean, *rstd;
    int n, c, oc;
} norm_ctx;

static void rms_f(void *p, double *out) {
    norm_ctx *c = p;
    td_op_rmsnorm_fwd_f64(out, c->rstd, c->x, c->w, c->n, c->c, 1e-5f);
}
static void ln_f(void *p, double *out) {
    norm_ctx *c = p;
    td_op_layernorm_fwd_f64(out, c->mean, c->rstd, c->x, c->w, c->b, c->n, c->c, 1e-5f);
}
static void mm_f(void *p, double *out) {
    norm_ctx *c = p;
    td_op_matmul_fwd_f64(out, c->x, c->w, c->b, c->n, c->c, c->oc);
}

static void test_norms_and_matmul(void) {
    norm_ctx c = {randv(N * C, 1), randv(C, 1), randv(C, 0.5), randv(N, 1), randv(N, 1), N, C, OC};
    for (int i = 0; i < C; i++)
        c.w[i] += 1;
    double *R = randv(N * C, 1), *out = randv(N * C, 1);
    double *dx = calloc(N * C, 8), *dw = calloc(C, 8), *db = calloc(C, 8);
    /* rmsnorm */
    rms_f(&c, out);
    td_op_rmsnorm_bwd_f64(dx, dw, R, c.x, c.w, c.rstd, N, C);
    fd_check("rmsnorm d/dx", rms_f, &c, c.x, N * C, dx, R, out, N * C);
    rms_f(&c, out);
    fd_check("rmsnorm d/dw", rms_f, &c, c.w, C, dw, R, out, N * C);
    /* layernorm */
    memset(dx, 0, N * C * 8);
    memset(dw, 0, C * 8);
    ln_f(&c, out);
    td_op_layernorm_bwd_f64(dx, dw, db, R, c.x, c.w, c.mean, c.rstd, N, C);
    fd_check("layernorm d/dx", ln_f, &c, c.x, N * C, dx, R, out, N * C);
    fd_check("layernorm d/dw", ln_f, &c, c.w, C, dw, R, out, N * C);
    fd_check("layernorm d/db", ln_f, &c, c.b, C, db, R, out, N * C);
    /* matmul with bias */
    norm_ctx m = {randv(N * C, 1), randv(OC * C, 1), randv(OC, 1), NULL, NULL, N, C, OC};
    double *Rm = randv(N * OC, 1), *om = randv(N * OC, 1);
    double *dxm = randv(N * C, 1), *dW = calloc(OC * C, 8), *dbm = calloc(OC, 8);
    td_op_matmul_bwd_f64(dxm, dW, dbm, Rm, m.x, m.w, N, C, OC, 1); /* overwrite mode */
    fd_check("matmul d/dinp", mm_f, &m, m.x, N * C, dxm, Rm, om, N * OC);
    fd_check("matmul d/dW", mm_f, &m, m.w, OC * C, dW, Rm, om, N * OC);
    fd_check("matmul d/dbias", mm_f, &m, m.b, OC, dbm, Rm, om, N * OC);
}

/* ---------------------------------------------------------------------------------------- */
typedef struct {
    double *qkv, *att, *work;
    int B, T, NH, NKV, hd, rope;
} attn_ctx;

/* rope (optional) then attention; the kernel's qkv is modified in place by rope, so the
 * forward copies it to a work buffer first. */
static void attn_f(void *p, double *out) {
    attn_ctx *c = p;
    size_t n = (size_t)c->B * c->T * (c->NH + 2 * c->NKV) * c->hd;
    memcpy(c->work, c->qkv, n * 8);
    if (c->rope)
        td_op_rope_f64(c->work, c->B * c->T, c->T, (c->NH + 2 * c->NKV) * c->hd, c->NH + c->NKV,
                       c->hd, 10000.0f, 0);
    td_op_attention_fwd_f64(out, c->att, c->work, c->B, c->T, c->NH, c->NKV, c->hd);
}

static void test_attention(int NH, int NKV, int rope) {
    int hd = 4, T = 5, B = 2, S = (NH + 2 * NKV) * hd;
    size_t nq = (size_t)B * T * S, no = (size_t)B * T * NH * hd;
    attn_ctx c = {randv(nq, 1), randv((size_t)B * NH * T * T, 1), randv(nq, 1), B, T, NH, NKV, hd,
                  rope};
    double *R = randv(no, 1), *out = randv(no, 1), *dqkv = randv(nq, 1);
    attn_f(&c, out);
    td_op_attention_bwd_f64(dqkv, R, c.att, c.work, B, T, NH, NKV, hd);
    if (rope) td_op_rope_f64(dqkv, B * T, T, S, NH + NKV, hd, 10000.0f, 1);
    char what[64];
    snprintf(what, sizeof what, "%sattention NH=%d NKV=%d d/dqkv", rope ? "rope+" : "", NH, NKV);
    fd_check(what, attn_f, &c, c.qkv, nq, dqkv, R, out, no);
}

/* ---------------------------------------------------------------------------------------- */
typedef struct {
    double *x;
    int n, f;
} act_ctx;
static void swiglu_f(void *p, double *out) {
    act_ctx *c = p;
    td_op_swiglu_fwd_f64(out, c->x, c->n, c->f);
}
static void gelu_f(void *p, double *out) {
    act_ctx *c = p;
    td_op_gelu_fwd_f64(out, c->x, (size_t)c->n * c->f);
}

static void test_activations(void) {
    act_ctx s = {randv(N * 2 * F, 1.5), N, F};
    double *R = randv(N * F, 1), *out = randv(N * F, 1), *dx = randv(N * 2 * F, 1);
    td_op_swiglu_bwd_f64(dx, R, s.x, N, F);
    fd_check("swiglu d/d(gate,up)", swiglu_f, &s, s.x, N * 2 * F, dx, R, out, N * F);
    act_ctx g = {randv(N * F, 1.5), N, F};
    td_op_gelu_bwd_f64(dx, R, g.x, N * F);
    fd_check("gelu(tanh) d/dx", gelu_f, &g, g.x, N * F, dx, R, out, N * F);
}

/* ---------------------------------------------------------------------------------------- */
typedef struct {
    double *wte, *wpe;
    int32_t *tok;
} emb_ctx;
static void emb_f(void *p, double *out) {
    emb_ctx *c = p;
    td_op_embed_fwd_f64(out, c->tok, c->wte, c->wpe, Bb * Tl, Tl, C);
}

typedef struct {
    double *logits;
    int32_t *tgt;
} ce_ctx;
static void ce_f(void *p, double *out) {
    ce_ctx *c = p;
    double lse[N];
    out[0] = td_op_crossentropy_fwd_f64(lse, c->logits, c->tgt, N, V);
}

static void test_embed_and_loss(void) {
    int32_t tok[Bb * Tl] = {3, 1, 3, 0, 6, 1};
    emb_ctx e = {randv(V * C, 1), randv(Tl * C, 1), tok};
    double *R = randv(Bb * Tl * C, 1), *out = randv(Bb * Tl * C, 1);
    double *dwte = calloc(V * C, 8), *dwpe = calloc(Tl * C, 8);
    td_op_embed_bwd_f64(dwte, dwpe, R, tok, Bb * Tl, Tl, C);
    fd_check("embedding d/dwte", emb_f, &e, e.wte, V * C, dwte, R, out, Bb * Tl * C);
    fd_check("embedding d/dwpe", emb_f, &e, e.wpe, Tl * C, dwpe, R, out, Bb * Tl * C);
    int32_t tgt[N] = {0, 6, 2, -1, 4, 4}; /* one ignored position */
    ce_ctx c = {randv(N * V, 2), tgt};
    double *dl = calloc(N * V, 8), one = 1, o, lse[N];
    td_op_crossentropy_fwd_f64(lse, c.logits, tgt, N, V);
    td_op_crossentropy_bwd_f64(dl, c.logits, lse, tgt, N, V, 1.0);
    fd_check("cross-entropy d/dlogits", ce_f, &c, c.logits, N * V, dl, &one, &o, 1);
}

int main(void) {
    td_rng_seed(&g_rng, 42);
    test_norms_and_matmul();
    test_attention(4, 4, 0);
    test_attention(4, 2, 0);
    test_attention(4, 1, 1);
    test_attention(2, 2, 1);
    test_activations();
    test_embed_and_loss();
    return test_done("test_ops_gradcheck");
}
