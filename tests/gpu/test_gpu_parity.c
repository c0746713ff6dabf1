/* Parity of every CUDA kernel with the CPU reference (ctest label gpu), on random data:
 * for each operation the same inputs go through the CPU kernel (worker/kernels/cpu) and the
 * CUDA kernel (worker/kernels/cuda), and the table gives max|gpu - cpu| / max|cpu| per
 * output against its tolerance: 1e-5 to 1e-4 for fp32 kernels (the summation order
 * differs), 2e-3 for bf16 products against the CPU bf16 products (same rounding of the
 * inputs, different accumulation order), and a second run must give bit-identical results
 * (determinism). Then a whole training step (forward, backward, clip, AdamW) of small llama
 * and gpt2 models on the GPU against the CPU model in bf16 mode: logits, loss, every
 * gradient, the parameters after the step. Exits 77 (ctest: skipped) when no usable GPU is present,
 * saying why. usage: test_gpu_parity [--json] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "worker/backend/backend.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/kernels/cpu/bf16.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cuda/cuda_ops.h"
#include "worker/model/model.h"
#include "worker/train/adamw.h"

static td_cuda *G;
static td_backend *GB; /* the CUDA backend: the model on the GPU */
static int g_fail, g_json;
static td_rng g_rng;

static float *rnd(size_t n, float scale) {
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (float)(2 * td_rng_uniform(&g_rng) - 1);
    return x;
}

static void *dev(const void *host, size_t bytes) {
    void *d = NULL;
    if (td_cuda_alloc(&d, bytes) != TD_OK || (host && td_cuda_upload(G, d, host, bytes) != TD_OK)) {
        fprintf(stderr, "test_gpu_parity: %s\n", td_error_message());
        exit(1);
    }
    if (!host) td_cuda_zero(G, d, bytes);
    return d;
}

static float *back(const float *d, size_t n) {
    float *h = malloc(sizeof(float) * n);
    if (td_cuda_sync(G) != TD_OK || td_cuda_download(G, h, d, sizeof(float) * n) != TD_OK) {
        fprintf(stderr, "test_gpu_parity: %s\n", td_error_message());
        exit(1);
    }
    return h;
}

/* compares and prints one row; frees got */
static void report(const char *name, float *got, const float *ref, size_t n, double tol) {
    double d = 0, r = 0;
    int nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) nonfinite++;
        d = fmax(d, fabs((double)got[i] - ref[i]));
        r = fmax(r, fabs((double)ref[i]));
    }
    double rel = r > 0 ? d / r : d;
    int ok = rel <= tol && !nonfinite;
    g_fail += !ok;
    if (g_json)
        printf("{\"kernel\": \"%s\", \"max_rel\": %.3e, \"tol\": %.0e, \"ok\": %s}\n", name, rel,
               tol, ok ? "true" : "false");
    else
        printf("%-28s %10.3e %8.0e  %s\n", name, rel, tol, ok ? "PASS" : "FAIL");
    free(got);
}

#define CK(x)                                                                                      \
    do {                                                                                           \
        if ((x) != TD_OK) {                                                                        \
            fprintf(stderr, "test_gpu_parity: %s: %s\n", #x, td_error_message());                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void test_matmul(void) {
    int M = 96, K = 160, N = 72;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                float *A = rnd((size_t)M * K, 1), *Bm = rnd((size_t)K * N, 1), *bias = rnd(N, 1);
                float *C0 = rnd((size_t)M * N, 1);
                uint16_t *a16 = malloc(2 * (size_t)M * K), *b16 = malloc(2 * (size_t)K * N);
                td_bf16_from_f32(a16, A, (size_t)M * K);
                td_bf16_from_f32(b16, Bm, (size_t)K * N);
                float *ref = malloc(sizeof(float) * (size_t)M * N);
                memcpy(ref, C0, sizeof(float) * (size_t)M * N);
                CK(td_bf16_gemm(ref, a16, b16, acc ? NULL : bias, M, N, K, ta, tb, acc));
                uint16_t *da = dev(a16, 2 * (size_t)M * K), *db = dev(b16, 2 * (size_t)K * N);
                float *dc = dev(C0, sizeof(float) * (size_t)M * N),
                      *dbias = dev(bias, 4 * (size_t)N);
                CK(td_cuda_matmul_bf16(G, dc, da, db, acc ? NULL : dbias, M, N, K, ta, tb, acc));
                char name[64];
                snprintf(name, sizeof name, "matmul bf16 %c%c%s", ta ? 'T' : 'N', tb ? 'T' : 'N',
                         acc ? " +=" : " +bias");
                report(name, back(dc, (size_t)M * N), ref, (size_t)M * N, 2e-3);
                td_cuda_release(da);
                td_cuda_release(db);
                td_cuda_release(dc);
                td_cuda_release(dbias);
                free(A), free(Bm), free(bias), free(C0), free(a16), free(b16), free(ref);
            }
}

/* odd sizes and operands one element off a 256-byte boundary (as carved activations are) */
static void test_matmul_odd(void) {
    int M = 33, K = 67, N = 45;
    float *A = rnd((size_t)M * K, 1), *Bm = rnd((size_t)K * N, 1), *bias = rnd(N, 1);
    uint16_t *a16 = malloc(2 * (size_t)M * K), *b16 = malloc(2 * (size_t)K * N);
    td_bf16_from_f32(a16, A, (size_t)M * K);
    td_bf16_from_f32(b16, Bm, (size_t)K * N);
    float *ref = malloc(sizeof(float) * (size_t)M * N);
    CK(td_bf16_gemm(ref, a16, b16, bias, M, N, K, 0, 1, 0));
    uint16_t *da = dev(NULL, 2 * ((size_t)M * K + 1)), *db = dev(NULL, 2 * ((size_t)K * N + 1));
    float *dc = dev(NULL, 4 * ((size_t)M * N + 1)), *dbias = dev(NULL, 4 * ((size_t)N + 1));
    CK(td_cuda_upload(G, da + 1, a16, 2 * (size_t)M * K));
    CK(td_cuda_upload(G, db + 1, b16, 2 * (size_t)K * N));
    CK(td_cuda_upload(G, dbias + 1, bias, 4 * (size_t)N));
    CK(td_cuda_matmul_bf16(G, dc + 1, da + 1, db + 1, dbias + 1, M, N, K, 0, 1, 0));
    report("matmul bf16 odd, unaligned", back(dc + 1, (size_t)M * N), ref, (size_t)M * N, 2e-3);
    td_cuda_release(da), td_cuda_release(db), td_cuda_release(dc), td_cuda_release(dbias);
    free(A), free(Bm), free(bias), free(a16), free(b16), free(ref);
}

static void test_norms_acts(void) {
    int N = 64, C = 200, F = 136;
    size_t nc = (size_t)N * C;
    float *x = rnd(nc, 2), *w = rnd(C, 1), *b = rnd(C, 1), *dy = rnd(nc, 1);
    float *out = malloc(4 * nc), *rstd = malloc(4 * N), *mean = malloc(4 * N);
    float *dx = calloc(nc, 4), *dw = calloc(C, 4), *dbb = calloc(C, 4);
    float *dX = dev(x, 4 * nc), *dW = dev(w, 4 * C), *dB = dev(b, 4 * C), *dDY = dev(dy, 4 * nc);
    float *dO = dev(NULL, 4 * nc), *dR = dev(NULL, 4 * N), *dM = dev(NULL, 4 * N);
    float *dDX = dev(NULL, 4 * nc), *dDW = dev(NULL, 4 * C), *dDB = dev(NULL, 4 * C);
    td_op_rmsnorm_fwd_f32(out, rstd, x, w, N, C, 1e-5f);
    td_op_rmsnorm_bwd_f32(dx, dw, dy, x, w, rstd, N, C);
    CK(td_cuda_rmsnorm_fwd(G, dO, dR, dX, dW, N, C, 1e-5f));
    CK(td_cuda_rmsnorm_bwd(G, dDX, dDW, dDY, dX, dW, dR, N, C));
    report("rmsnorm fwd", back(dO, nc), out, nc, 1e-5);
    report("rmsnorm bwd dx", back(dDX, nc), dx, nc, 1e-4);
    report("rmsnorm bwd dw", back(dDW, C), dw, C, 1e-4);
    memset(dx, 0, 4 * nc);
    memset(dw, 0, 4 * C);
    td_cuda_zero(G, dDX, 4 * nc);
    td_cuda_zero(G, dDW, 4 * C);
    td_op_layernorm_fwd_f32(out, mean, rstd, x, w, b, N, C, 1e-5f);
    td_op_layernorm_bwd_f32(dx, dw, dbb, dy, x, w, mean, rstd, N, C);
    CK(td_cuda_layernorm_fwd(G, dO, dM, dR, dX, dW, dB, N, C, 1e-5f));
    CK(td_cuda_layernorm_bwd(G, dDX, dDW, dDB, dDY, dX, dW, dM, dR, N, C));
    report("layernorm fwd", back(dO, nc), out, nc, 1e-5);
    report("layernorm bwd dx", back(dDX, nc), dx, nc, 1e-4);
    report("layernorm bwd dw", back(dDW, C), dw, C, 1e-4);
    report("layernorm bwd db", back(dDB, C), dbb, C, 1e-4);
    /* gelu, add */
    td_op_gelu_fwd_f32(out, x, nc);
    CK(td_cuda_gelu_fwd(G, dO, dX, nc));
    report("gelu fwd", back(dO, nc), out, nc, 1e-5);
    td_op_gelu_bwd_f32(dx, dy, x, nc);
    CK(td_cuda_gelu_bwd(G, dDX, dDY, dX, nc));
    report("gelu bwd", back(dDX, nc), dx, nc, 1e-5);
    td_op_add_f32(out, x, dy, nc);
    CK(td_cuda_add(G, dO, dX, dDY, nc));
    report("residual add", back(dO, nc), out, nc, 0);
    /* swiglu: gu (N, 2F) */
    size_t ng = (size_t)N * 2 * F, nf = (size_t)N * F;
    float *gu = rnd(ng, 3), *dh = rnd(nf, 1), *h = malloc(4 * nf), *dgu = malloc(4 * ng);
    float *dGU = dev(gu, 4 * ng), *dDH = dev(dh, 4 * nf), *dH = dev(NULL, 4 * nf),
          *dDGU = dev(NULL, 4 * ng);
    td_op_swiglu_fwd_f32(h, gu, N, F);
    td_op_swiglu_bwd_f32(dgu, dh, gu, N, F);
    CK(td_cuda_swiglu_fwd(G, dH, dGU, N, F));
    CK(td_cuda_swiglu_bwd(G, dDGU, dDH, dGU, N, F));
    report("swiglu fwd", back(dH, nf), h, nf, 1e-5);
    report("swiglu bwd", back(dDGU, ng), dgu, ng, 1e-5);
    free(x), free(w), free(b), free(dy), free(out), free(rstd), free(mean), free(dx), free(dw);
    free(dbb), free(gu), free(dh), free(h), free(dgu);
    void *ds[] = {dX, dW, dB, dDY, dO, dR, dM, dDX, dDW, dDB, dGU, dDH, dH, dDGU};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        td_cuda_release(ds[i]);
}

static void test_embed_rope_xent(void) {
    int B = 3, T = 24, C = 96, V = 211, N = B * T;
    size_t nc = (size_t)N * C;
    int32_t *tok = malloc(4 * (size_t)N), *tgt = malloc(4 * (size_t)N);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)td_rng_below(&g_rng, 40); /* repeats: the backward groups them */
        tgt[i] = i % 7 == 3 ? -1 : (int32_t)td_rng_below(&g_rng, V);
    }
    float *wte = rnd((size_t)V * C, 1), *wpe = rnd((size_t)T * C, 1), *dy = rnd(nc, 1);
    float *out = malloc(4 * nc), *dwte = calloc((size_t)V * C, 4), *dwpe = calloc((size_t)T * C, 4);
    int32_t *dTok = dev(tok, 4 * (size_t)N), *dTgt = dev(tgt, 4 * (size_t)N);
    float *dWte = dev(wte, 4 * (size_t)V * C), *dWpe = dev(wpe, 4 * (size_t)T * C);
    float *dDY = dev(dy, 4 * nc), *dO = dev(NULL, 4 * nc);
    float *dDWte = dev(NULL, 4 * (size_t)V * C), *dDWpe = dev(NULL, 4 * (size_t)T * C);
    td_op_embed_fwd_f32(out, tok, wte, wpe, N, T, C);
    td_op_embed_bwd_f32(dwte, dwpe, dy, tok, N, T, C);
    CK(td_cuda_embed_fwd(G, dO, dTok, dWte, dWpe, N, T, C));
    CK(td_cuda_embed_bwd(G, dDWte, dDWpe, dDY, tok, N, T, C));
    report("embedding fwd", back(dO, nc), out, nc, 0);
    report("embedding bwd wte", back(dDWte, (size_t)V * C), dwte, (size_t)V * C, 1e-5);
    report("embedding bwd wpe", back(dDWpe, (size_t)T * C), dwpe, (size_t)T * C, 1e-5);
    /* rope on q and k heads: NH 4, NKV 2, hd 32 */
    int NH = 4, NKV = 2, hd = 32, S = (NH + 2 * NKV) * hd;
    size_t ns = (size_t)N * S;
    float *qkv = rnd(ns, 1), *qr = malloc(4 * ns);
    memcpy(qr, qkv, 4 * ns);
    float *dQ = dev(qkv, 4 * ns);
    for (int inv = 0; inv < 2; inv++) {
        td_op_rope_f32(qr, N, T, S, NH + NKV, hd, 10000.0f, inv);
        CK(td_cuda_rope(G, dQ, N, T, S, NH + NKV, hd, 10000.0f, inv));
        report(inv ? "rope inverse" : "rope", back(dQ, ns), qr, ns, 1e-5);
    }
    /* cross-entropy */
    size_t nv = (size_t)N * V;
    float *logits = rnd(nv, 4), *lse = malloc(4 * (size_t)N), *dl = malloc(4 * nv);
    float *dL = dev(logits, 4 * nv), *dLse = dev(NULL, 4 * (size_t)N), *dDL = dev(NULL, 4 * nv);
    double loss_ref = td_op_crossentropy_fwd_f32(lse, logits, tgt, N, V), loss = 0;
    int counted = 0;
    td_op_crossentropy_bwd_f32(dl, logits, lse, tgt, N, V, 0.5);
    CK(td_cuda_crossentropy_fwd(G, dLse, dL, dTgt, N, V, &loss, &counted));
    CK(td_cuda_crossentropy_bwd(G, dDL, dL, dLse, dTgt, N, V, 0.5, counted));
    float lf = (float)loss, lr = (float)loss_ref;
    report("cross-entropy loss", memcpy(malloc(4), &lf, 4), &lr, 1, 1e-5);
    report("cross-entropy lse", back(dLse, (size_t)N), lse, (size_t)N, 1e-5);
    report("cross-entropy bwd", back(dDL, nv), dl, nv, 1e-5);
    free(tok), free(tgt), free(wte), free(wpe), free(dy), free(out), free(dwte), free(dwpe);
    free(qkv), free(qr), free(logits), free(lse), free(dl);
    void *ds[] = {dTok, dTgt, dWte, dWpe, dDY, dO, dDWte, dDWpe, dQ, dL, dLse, dDL};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        td_cuda_release(ds[i]);
}

static void test_attention(int NH, int NKV, int hd, int T) {
    int B = 2, N = B * T, S = (NH + 2 * NKV) * hd;
    size_t ns = (size_t)N * S, no = (size_t)N * NH * hd;
    float *qkv = rnd(ns, 1), *dout = rnd(no, 1), *out = malloc(4 * no);
    float *att = malloc(sizeof(float) * (size_t)B * NH * T * T), *dqkv = malloc(4 * ns);
    td_op_attention_fwd_f32(out, att, qkv, B, T, NH, NKV, hd);
    td_op_attention_bwd_f32(dqkv, dout, att, qkv, B, T, NH, NKV, hd);
    float *dQKV = dev(qkv, 4 * ns), *dDO = dev(dout, 4 * no), *dO = dev(NULL, 4 * no);
    float *dLse = dev(NULL, 4 * (size_t)B * NH * T), *dDQ = dev(NULL, 4 * ns);
    CK(td_cuda_attention_fwd(G, dO, dLse, dQKV, B, T, NH, NKV, hd));
    CK(td_cuda_attention_bwd(G, dDQ, dDO, dO, dLse, dQKV, B, T, NH, NKV, hd));
    char name[64];
    snprintf(name, sizeof name, "attention fwd %d/%d hd%d T%d", NH, NKV, hd, T);
    report(name, back(dO, no), out, no, 1e-4);
    snprintf(name, sizeof name, "attention bwd %d/%d hd%d T%d", NH, NKV, hd, T);
    float *g1 = back(dDQ, ns);
    /* determinism: the backward again gives the same bits */
    CK(td_cuda_attention_bwd(G, dDQ, dDO, dO, dLse, dQKV, B, T, NH, NKV, hd));
    float *g2 = back(dDQ, ns);
    if (memcmp(g1, g2, 4 * ns)) {
        printf("%-28s not deterministic  FAIL\n", name);
        g_fail++;
    }
    free(g2);
    report(name, g1, dqkv, ns, 1e-4);
    free(qkv), free(dout), free(out), free(att), free(dqkv);
    td_cuda_release(dQKV), td_cuda_release(dDO), td_cuda_release(dO), td_cuda_release(dLse);
    td_cuda_release(dDQ);
}

static void test_adamw(void) {
    size_t n = 100003;
    float *p = rnd(n, 1), *g = rnd(n, 0.1f), *m = rnd(n, 0.01f), *v = rnd(n, 0.001f);
    for (size_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    float *dP = dev(p, 4 * n), *dG = dev(g, 4 * n), *dM = dev(m, 4 * n), *dV = dev(v, 4 * n);
    uint16_t *dPB = dev(NULL, 2 * n);
    float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    long step = 5;
    float c1 = (float)(1.0 / (1.0 - pow(b1, (double)step))),
          c2 = (float)(1.0 / (1.0 - pow(b2, (double)step)));
    for (size_t i = 0; i < n; i++) { /* the CPU optimizer's update (worker/train/adamw.c) */
        float gi = g[i] * gs, mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * p[i]);
    }
    CK(td_cuda_adamw(G, dP, dPB, dG, dM, dV, n, lr, b1, b2, eps, wd, step, gs));
    report("adamw params", back(dP, n), p, n, 1e-6);
    report("adamw m", back(dM, n), m, n, 1e-6);
    report("adamw v", back(dV, n), v, n, 1e-6);
    float *gz = back(dG, n), zero = 0;
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(gz[i]));
    report("adamw zeroes gradients", memcpy(malloc(4), &(float){(float)gmax}, 4), &zero, 1, 0);
    free(gz);
    uint16_t *pb = malloc(2 * n), *pref = malloc(2 * n);
    if (td_cuda_download(G, pb, dPB, 2 * n) != TD_OK) exit(1);
    td_bf16_from_f32(pref, p, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += pb[i] != pref[i];
    printf("%-28s %10zu differ    %s\n", "adamw bf16 copy", diff,
           diff <= n / 1000 ? "PASS" : "FAIL");
    g_fail += diff > n / 1000; /* a last-bit fp32 difference may flip a rounding */
    double ss = 0, ref = 0;
    for (size_t i = 0; i < n; i++)
        ref += (double)p[i] * p[i];
    CK(td_cuda_sumsq(G, dP, n, &ss));
    float a = (float)ss, r = (float)ref;
    report("sum of squares", memcpy(malloc(4), &a, 4), &r, 1, 1e-5);
    free(p), free(g), free(m), free(v), free(pb), free(pref);
    td_cuda_release(dP), td_cuda_release(dG), td_cuda_release(dM), td_cuda_release(dV);
    td_cuda_release(dPB);
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

static void row(const char *name, double rel, double tol) {
    int ok = rel <= tol && isfinite(rel);
    g_fail += !ok;
    printf("%-28s %10.3e %8.0e  %s\n", name, rel, tol, ok ? "PASS" : "FAIL");
}

/* one training step of a small model on the GPU vs the CPU model in bf16 mode */
static void test_step(td_arch arch) {
    td_model_config c = {.arch = arch,
                         .hidden_size = 128,
                         .intermediate_size = 352,
                         .num_hidden_layers = 2,
                         .num_attention_heads = 4,
                         .num_key_value_heads = arch == TD_ARCH_LLAMA ? 2 : 4,
                         .vocab_size = 300,
                         .max_position_embeddings = 64,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000,
                         .tie_word_embeddings = arch == TD_ARCH_GPT2};
    int B = 2, T = 33, N = B * T, V = c.vocab_size;
    td_model *m;
    CK(td_model_new(&c, &m));
    td_model_init_random(m, 3);
    size_t np = td_model_num_params(m);
    int32_t *tok = malloc(4 * (size_t)N), *tgt = malloc(4 * (size_t)N);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)td_rng_below(&g_rng, (uint64_t)V);
        tgt[i] = (int32_t)td_rng_below(&g_rng, (uint64_t)V);
    }
    float *p0 = malloc(4 * np);
    memcpy(p0, td_model_params(m), 4 * np);
    /* the same model on the CUDA backend (before the CPU step changes the weights) */
    td_model *g;
    CK(td_model_new(&c, &g));
    memcpy(td_model_params(g), p0, 4 * np);
    CK(td_model_plan(g, B, T, 1));
    CK(td_model_to_backend(g, GB));
    CK(td_model_set_bf16(m, 1));
    CK(td_model_plan(m, B, T, 1));
    double loss = 0, gloss = 0, gnorm = 0, ggnorm = 0;
    CK(td_model_forward(m, tok, tgt, B, T, &loss));
    float *logits = malloc(sizeof(float) * (size_t)N * V),
          *glogits = malloc(sizeof(float) * (size_t)N * V);
    memcpy(logits, td_model_logits(m), sizeof(float) * (size_t)N * V);
    td_model_zero_grad(m);
    CK(td_model_backward(m, 1.0));
    float *grads = malloc(4 * np), *ggrads = malloc(4 * np), *gparams = malloc(4 * np);
    memcpy(grads, td_model_grads(m), 4 * np);
    float *am = calloc(np, 4), *av = calloc(np, 4);
    td_adamw_params hp = {0.9f, 0.95f, 1e-8f, 0.1f};
    gnorm = td_grad_norm(td_model_grads(m), np);
    td_adamw_step_fused(m, am, av, &hp, 1e-3, 1, td_clip_scale(gnorm, 1.0));
    CK(td_model_forward(g, tok, tgt, B, T, &gloss));
    CK(td_backend_download(GB, glogits, td_model_logits(g), sizeof(float) * (size_t)N * V));
    td_model_zero_grad(g);
    CK(td_model_backward(g, 1.0));
    CK(td_backend_download(GB, ggrads, td_model_grads(g), 4 * np));
    CK(td_model_grad_norm(g, &ggnorm));
    void *gm = NULL, *gv = NULL;
    CK(td_backend_alloc(GB, &gm, 4 * np));
    CK(td_backend_alloc(GB, &gv, 4 * np));
    CK(GB->ops->zero(GB, gm, 4 * np)); /* backend memory comes uninitialised */
    CK(GB->ops->zero(GB, gv, 4 * np));
    CK(td_model_adamw(g, gm, gv, 0, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1,
                      td_clip_scale(ggnorm, 1.0), 1));
    CK(td_model_sync_host(g));
    memcpy(gparams, td_model_params(g), 4 * np);
    td_backend_release(GB, gm);
    td_backend_release(GB, gv);
    const char *an = arch == TD_ARCH_LLAMA ? "llama" : "gpt2";
    char name[64];
    snprintf(name, sizeof name, "step %s: logits", an);
    row(name, rel_l2(glogits, logits, (size_t)N * V), 1e-2);
    snprintf(name, sizeof name, "step %s: loss", an);
    row(name, fabs(gloss - loss) / loss, 1e-3);
    snprintf(name, sizeof name, "step %s: gradients", an);
    row(name, rel_l2(ggrads, grads, np), 2e-2);
    snprintf(name, sizeof name, "step %s: grad norm", an);
    row(name, fabs(ggnorm - gnorm) / gnorm, 2e-2);
    /* the optimizer alone: the CPU AdamW applied to the GPU's own gradients must give the
     * GPU's parameters (end to end, a gradient whose sign differs moves a weight by 2 lr
     * on the first step, so the parameters are not compared across devices) */
    td_model *m2;
    CK(td_model_new(&c, &m2));
    CK(td_model_plan(m2, 1, 1, 1));
    memcpy(td_model_params(m2), p0, 4 * np);
    memcpy(td_model_grads(m2), ggrads, 4 * np);
    memset(am, 0, 4 * np);
    memset(av, 0, 4 * np);
    td_adamw_step_fused(m2, am, av, &hp, 1e-3, 1, td_clip_scale(ggnorm, 1.0));
    snprintf(name, sizeof name, "step %s: AdamW params", an);
    row(name, rel_l2(gparams, td_model_params(m2), np), 1e-6);
    td_model_free(&m2);
    free(p0);
    free(tok), free(tgt), free(logits), free(glogits), free(grads), free(ggrads), free(gparams);
    free(am), free(av);
    td_model_free(&g);
    td_model_free(&m);
}

/* inference with the paged KV cache: two sequences, chunked prefill then decode steps, on
 * the GPU (bf16 products) against td_infer_forward on the CPU (fp32) */
static void test_infer(td_arch arch) {
    td_model_config c = {.arch = arch,
                         .hidden_size = 128,
                         .intermediate_size = 352,
                         .num_hidden_layers = 2,
                         .num_attention_heads = 4,
                         .num_key_value_heads = arch == TD_ARCH_LLAMA ? 2 : 4,
                         .vocab_size = 300,
                         .max_position_embeddings = 64,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000,
                         .tie_word_embeddings = arch == TD_ARCH_GPT2};
    int V = c.vocab_size, bt = 16;
    td_model *w, *gw;
    CK(td_model_new(&c, &w));
    td_model_init_random(w, 9);
    CK(td_model_new(&c, &gw));
    memcpy(td_model_params(gw), td_model_params(w), 4 * td_model_num_params(w));
    CK(td_model_to_backend(gw, GB));
    td_infer_model *m, *g;
    CK(td_infer_model_new(w, &m));
    CK(td_infer_model_new(gw, &g));
    td_kv_cache *ckv, *gkv;
    CK(td_kv_cache_new(m, bt, 8, &ckv));
    CK(td_infer_plan(m, 32, 2));
    CK(td_kv_cache_new(g, bt, 8, &gkv));
    CK(td_infer_plan(g, 32, 2));
    int32_t toks[2][40], blocks[2][4] = {{0, 2, 4, 6}, {1, 3, 5, 7}};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 40; i++)
            toks[s][i] = (int32_t)td_rng_below(&g_rng, (uint64_t)V);
    float *cl = malloc(sizeof(float) * 2 * V), *gl = malloc(sizeof(float) * 2 * V);
    /* steps: (sequence 0 n, sequence 1 n): prefill chunks, then decodes */
    int plan[6][2] = {{12, 9}, {8, 9}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
    int done[2] = {0, 0};
    double worst = 0;
    for (int st = 0; st < 6; st++) {
        td_infer_seg sg[2];
        for (int s = 0; s < 2; s++)
            sg[s] = (td_infer_seg){toks[s] + done[s], plan[st][s], done[s], blocks[s], 0};
        CK(td_infer_forward(m, ckv, sg, 2, cl));
        CK(td_infer_forward(g, gkv, sg, 2, gl));
        double d = 0, rr = 0;
        for (int i = 0; i < 2 * V; i++) {
            d = fmax(d, fabs((double)gl[i] - cl[i]));
            rr = fmax(rr, fabs((double)cl[i]));
        }
        worst = fmax(worst, d / rr);
        for (int s = 0; s < 2; s++)
            done[s] += plan[st][s];
    }
    char name[64];
    snprintf(name, sizeof name, "paged decode %s (6 steps)",
             arch == TD_ARCH_LLAMA ? "llama" : "gpt2");
    row(name, worst, 2e-2);
    free(cl);
    free(gl);
    td_kv_cache_free(&gkv);
    td_kv_cache_free(&ckv);
    td_infer_model_free(&g);
    td_infer_model_free(&m);
}

int main(int argc, char **argv) {
    g_json = argc > 1 && !strcmp(argv[1], "--json");
    char why[256] = "";
    int n = td_cuda_device_count(why, sizeof why);
    if (n == 0) {
        printf("test_gpu_parity: skipped: no usable GPU (%s)\n", why);
        return 77;
    }
    if (td_cuda_new(0, &G) != TD_OK || td_backend_new("cuda", 0, &GB) != TD_OK) {
        fprintf(stderr, "test_gpu_parity: %s\n", td_error_message());
        return 1;
    }
    td_rng_seed(&g_rng, 11);
    if (!g_json)
        printf("GPU %s; CPU reference: tandem's CPU kernels (bf16 products through oneDNN on "
               "%s)\n\n%-28s %10s %8s\n",
               td_cuda_device_name(G), td_bf16_init() == TD_OK ? td_bf16_isa() : "?", "kernel",
               "max rel", "tol");
    test_matmul();
    test_matmul_odd();
    test_norms_acts();
    test_embed_rope_xent();
    test_attention(4, 4, 32, 40);
    test_attention(4, 2, 64, 77);
    test_attention(8, 1, 128, 130);
    test_adamw();
    test_step(TD_ARCH_LLAMA);
    test_step(TD_ARCH_GPT2);
    test_infer(TD_ARCH_LLAMA);
    test_infer(TD_ARCH_GPT2);
    td_backend_free(&GB);
    td_cuda_free(&G);
    printf("test_gpu_parity: %s (%d failed)\n", g_fail ? "FAILED" : "passed", g_fail);
    return g_fail ? 1 : 0;
}
