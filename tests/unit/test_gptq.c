/* GPTQ (worker/model/gptq.h) and the int8 calibration around it (worker/infer/calib.h):
 *   1. against the peer: tests/reference/fixtures/gptq (make_gptq_fixture.py: AutoGPTQ
 *      0.7.1's GPTQ.fasterquant, act order, on tandem's grid): the same rounded values, and
 *      the same output error ||(W - Q) X||^2 = tr((W - Q) H (W - Q)^T), well under rounding
 *      to nearest's;
 *   2. every result lies on the grid exactly (value / scale is an integer in [-127, 127]);
 *   3. with H a multiple of the identity (uncorrelated inputs) nothing moves between columns:
 *      GPTQ equals rounding to nearest, bit for bit; an always-zero input is rounded to
 *      nearest; H NULL is rounding to nearest; an indefinite H is refused, W untouched;
 *   4. a calibrated model, for llama and gpt2 (tied): td_infer_quantize_int8 stores exactly
 *      the grid values GPTQ left in the fp32 weights (its int8 logits equal the fp32 path's on
 *      those weights); a tensor-parallel slice carries the matching rows of the grid (its
 *      heads' q/k/v rows, every output row of wo); the calibration is deterministic for a
 *      seed, and (at the demo's shapes) gives the same weights on 1 thread as on all of them
 *      -- tandem serve under mpirun calibrates with fewer threads than alone; with a memory budget
 * of one layer's statistics the layers go in one pass each (same exactness), and a budget under one
 *      layer is refused with the size it needs;
 *   5. td_infer_release_quantized: logits unchanged after the fp32 copies of quantized matrices are
 *      released; a wholly released model refuses to be sliced or run. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/model_fixture.h"
#include "tests/test.h"
#include "worker/infer/calib.h"
#include "worker/infer/gptq.h"
#include "worker/infer/kv_cache.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"

/* tr((W - Q) H (W - Q)^T) with H symmetric (full) */
static double out_err(const float *W, const float *Q, const float *H, int R, int C) {
    double tot = 0;
    double *d = malloc(sizeof(double) * (size_t)C);
    for (int r = 0; r < R; r++) {
        for (int k = 0; k < C; k++)
            d[k] = (double)W[(size_t)r * C + k] - Q[(size_t)r * C + k];
        for (int i = 0; i < C; i++)
            for (int j = 0; j < C; j++)
                tot += d[i] * H[(size_t)i * C + j] * d[j];
    }
    free(d);
    return tot;
}

/* 1 if every value of Q (R, C) is s[r] times an integer in [-qmax, qmax], exactly */
static int on_grid(const float *Q, const float *s, int R, int C, float qmax) {
    for (int r = 0; r < R; r++)
        for (int k = 0; k < C; k++) {
            float v = Q[(size_t)r * C + k], q = rintf(v / s[r]);
            if (fabsf(q) > qmax || q * s[r] != v) return 0;
        }
    return 1;
}

static void against_peer(void) {
    td_st_file *f;
    REQUIRE(td_st_open("tests/reference/fixtures/gptq/gptq.safetensors", &f) == TD_OK, "%s",
            td_error_message());
    const td_st_entry *ew = td_st_find(f, "W"), *eh = td_st_find(f, "H"), *eq = td_st_find(f, "Q"),
                      *er = td_st_find(f, "rtn");
    REQUIRE(ew && eh && eq && er, "fixture tensors missing");
    int R = (int)ew->shape[0], C = (int)ew->shape[1];
    size_t n = (size_t)R * C;
    float *W = malloc(sizeof(float) * n), *Q = malloc(sizeof(float) * n);
    float *peer = malloc(sizeof(float) * n), *rtn = malloc(sizeof(float) * n);
    float *H = malloc(sizeof(float) * (size_t)C * C), *s = malloc(sizeof(float) * (size_t)R);
    REQUIRE(td_st_read_f32(f, ew, W, 0) == TD_OK && td_st_read_f32(f, eh, H, 0) == TD_OK &&
                td_st_read_f32(f, eq, peer, 0) == TD_OK && td_st_read_f32(f, er, rtn, 0) == TD_OK,
            "%s", td_error_message());
    memcpy(Q, W, sizeof(float) * n);
    REQUIRE(td_gptq_quantize(Q, R, C, H, 127.0f, 0.01f, s) == TD_OK, "%s", td_error_message());
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += Q[i] == peer[i];
    double e_ours = out_err(W, Q, H, R, C), e_peer = out_err(W, peer, H, R, C),
           e_rtn = out_err(W, rtn, H, R, C);
    printf("GPTQ vs AutoGPTQ (%d x %d, act order): %zu of %zu values identical (%.2f %%); "
           "output error ours %.5g, AutoGPTQ %.5g (ratio %.4f), round to nearest %.5g\n",
           R, C, same, n, 100.0 * (double)same / (double)n, e_ours, e_peer, e_ours / e_peer, e_rtn);
    CHECK(same >= n * 99 / 100, "only %zu of %zu values equal the peer's", same, n);
    CHECK(fabs(e_ours / e_peer - 1) < 0.01, "output error %.5g vs the peer's %.5g", e_ours, e_peer);
    CHECK(e_ours < 0.5 * e_rtn, "GPTQ's error %.5g is not well under rounding's %.5g", e_ours,
          e_rtn);
    CHECK(on_grid(Q, s, R, C, 127.0f), "values off the grid");
    free(W);
    free(Q);
    free(peer);
    free(rtn);
    free(H);
    free(s);
    td_st_close(&f);
}

static void special_cases(void) {
    enum { R = 8, C = 40 };
    float W[R * C], Q[R * C], RT[R * C], H[C * C], s[R], s2[R];
    srand(3);
    for (int i = 0; i < R * C; i++)
        W[i] = (float)rand() / RAND_MAX - 0.5f;
    /* H = 3 I: GPTQ is rounding to nearest */
    memset(H, 0, sizeof H);
    for (int j = 0; j < C; j++)
        H[j * C + j] = 3.0f;
    memcpy(Q, W, sizeof W);
    memcpy(RT, W, sizeof W);
    CHECK(td_gptq_quantize(Q, R, C, H, 127.0f, 0.01f, s) == TD_OK, "%s", td_error_message());
    CHECK(td_gptq_quantize(RT, R, C, NULL, 127.0f, 0.01f, s2) == TD_OK, "%s", td_error_message());
    CHECK(!memcmp(Q, RT, sizeof Q) && !memcmp(s, s2, sizeof s), "H = 3 I differs from rounding");
    CHECK(on_grid(RT, s2, R, C, 127.0f), "rounding to nearest off the grid");
    /* correlated H with input 5 always zero: finite, column 5 rounded to nearest */
    for (int i = 0; i < C; i++)
        for (int j = 0; j < C; j++)
            H[i * C + j] = (i == 5 || j == 5) ? 0.0f : (i == j ? 2.0f : 0.9f);
    memcpy(Q, W, sizeof W);
    CHECK(td_gptq_quantize(Q, R, C, H, 127.0f, 0.01f, s) == TD_OK, "%s", td_error_message());
    int finite = 1, col5 = 1, moved = 0;
    for (int i = 0; i < R * C; i++)
        finite &= isfinite(Q[i]);
    for (int r = 0; r < R; r++)
        col5 &= Q[r * C + 5] == RT[r * C + 5];
    for (int i = 0; i < R * C; i++)
        moved += Q[i] != RT[i];
    CHECK(finite && col5, "dead input: finite %d, rounded to nearest %d", finite, col5);
    CHECK(moved > 0, "correlated inputs moved nothing");
    /* indefinite H: refused, W untouched */
    memset(H, 0, sizeof H);
    for (int j = 0; j < C; j++)
        H[j * C + j] = 1.0f;
    H[0 * C + 1] = H[1 * C + 0] = 5.0f;
    memcpy(Q, W, sizeof W);
    CHECK(td_gptq_quantize(Q, R, C, H, 127.0f, 0.01f, s) == TD_ERR_RUNTIME, "indefinite H taken");
    CHECK(!memcmp(Q, W, sizeof W), "W changed by a refused GPTQ");
}

static td_model *make_model(td_arch arch) {
    return test_random_model(arch, 64, 128, 300, 64);
}

/* The demo's shapes (hidden 128, MLP 344, vocab 2048) and 32 sequences: calibrated on 1
 * thread and on all of them, the weights must be the same bit for bit (OpenBLAS, left to
 * thread a 32-row product itself, picks other kernels by thread count; the calibration's
 * fixed blocks keep its sums the same). */
static void thread_count(void) {
    /* the plain initialisation and 4 KV heads: 78 weights moved here without fixed blocks,
     * 2 with the 8x weights of test_random_model */
    td_model_config c = {.arch = TD_ARCH_LLAMA,
                         .hidden_size = 128,
                         .intermediate_size = 344,
                         .num_hidden_layers = 2,
                         .num_attention_heads = 4,
                         .num_key_value_heads = 4,
                         .vocab_size = 2048,
                         .max_position_embeddings = 64,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000};
    td_model *a, *b;
    REQUIRE(td_model_new(&c, &a) == TD_OK && td_model_new(&c, &b) == TD_OK, "%s",
            td_error_message());
    td_model_init_random(a, 5);
    td_model_init_random(b, 5);
    td_infer_model *ia = test_serving(a), *ib = test_serving(b);
    td_calib_opts co;
    td_calib_opts_default(&co);
    co.seqs = 32;
    co.len = 48;
    co.start = 0;
    co.quiet = 1;
    int threads = omp_get_max_threads();
    REQUIRE(td_int8_calibrate(ia, &co) == TD_OK, "%s", td_error_message());
    omp_set_num_threads(1);
    REQUIRE(td_int8_calibrate(ib, &co) == TD_OK, "%s", td_error_message());
    omp_set_num_threads(threads);
    size_t n = td_model_num_params(a), diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += td_model_params(a)[i] != td_model_params(b)[i];
    printf("calibration on %d threads vs 1: %zu of %zu weights differ\n", threads, diff, n);
    CHECK(threads < 2 || diff == 0, "calibration depends on the thread count (%zu weights)", diff);
    td_infer_model_free(&ia);
    td_infer_model_free(&ib);
}

/* logits (V) after feeding toks (n) to m */
static void logits_of(td_infer_model *m, const int32_t *toks, int n, float *out) {
    td_kv_cache *kv;
    int32_t blocks[4] = {0, 1, 2, 3};
    REQUIRE(td_kv_cache_new(m, 16, 4, &kv) == TD_OK, "%s", td_error_message());
    REQUIRE(td_infer_plan(m, n, 1) == TD_OK, "%s", td_error_message());
    td_infer_seg sg = {toks, n, 0, blocks, 0};
    REQUIRE(td_infer_forward(m, kv, &sg, 1, out) == TD_OK, "%s", td_error_message());
    td_kv_cache_free(&kv);
}

static void calibrated_model(td_arch arch, int layer_passes) {
    char name[64];
    snprintf(name, sizeof name, "%s, %s", arch == TD_ARCH_LLAMA ? "llama" : "gpt2 (tied)",
             layer_passes ? "a pass per layer" : "one pass");
    td_model *mw = make_model(arch), *aw = make_model(arch);
    td_infer_model *m = test_serving(mw), *again = test_serving(aw);
    td_calib_opts co;
    td_calib_opts_default(&co);
    co.seqs = 8;
    co.len = 32;
    co.start = 1;
    co.quiet = 1;
    if (layer_passes) {
        co.max_bytes = td_infer_calib_bytes(mw, TD_CALIB_LAYERS) / 2; /* 2 layers */
        td_calib_opts small = co;
        small.max_bytes = co.max_bytes - 1;
        CHECK(td_int8_calibrate(again, &small) == TD_ERR_NOMEM && strstr(td_error_message(), "MiB"),
              "%s: a budget under one layer: %s", name, td_error_message());
        td_error_clear();
    }
    REQUIRE(td_int8_calibrate(m, &co) == TD_OK, "%s", td_error_message());
    REQUIRE(td_int8_calibrate(again, &co) == TD_OK, "%s", td_error_message());
    CHECK(
        !memcmp(td_model_params(mw), td_model_params(aw), sizeof(float) * td_model_num_params(mw)),
        "%s: calibration not deterministic for a seed", name);
    CHECK(td_infer_int8_grid(m, 0) != NULL, "%s: no grid after calibration", name);
    td_infer_model *q = NULL, *slice = NULL;
    REQUIRE(td_infer_tp_slice(m, 0, 1, &q) == TD_OK, "%s", td_error_message());
    REQUIRE(td_infer_tp_slice(m, 1, 2, &slice) == TD_OK, "%s", td_error_message());
    REQUIRE(td_infer_quantize_int8(q, 1) == TD_OK, "%s", td_error_message());
    REQUIRE(td_infer_quantize_int8(slice, 1) == TD_OK, "%s", td_error_message());
    int32_t toks[40];
    for (int i = 0; i < 40; i++)
        toks[i] = (int32_t)((i * 37 + 11) % 300);
    float a[300], b[300];
    logits_of(m, toks, 40, a); /* fp32 path, grid-valued weights */
    logits_of(q, toks, 40, b); /* int8 path */
    double mx = 0, ref = 0;
    for (int v = 0; v < 300; v++) {
        mx = fmax(mx, fabs((double)a[v] - b[v]));
        ref = fmax(ref, fabs((double)a[v]));
    }
    printf("%s: calibrated, int8 logits vs the fp32 path on the same grid values: max rel "
           "diff %.2e\n",
           name, mx / ref);
    CHECK(mx / ref < 1e-5, "%s: int8 weights are not the grid values (%.2e)", name, mx / ref);
    /* the slice's rows carry the same grid: its int8 values are the full model's */
    const float *gs = td_infer_int8_grid(slice, 0), *gf = td_infer_int8_grid(m, 0);
    REQUIRE(gs != NULL, "%s: slice lost the grid", name);
    /* layer 0 of rank 1 of 2: its q heads, k and v heads, then every row of wo */
    const td_model_config *c = td_model_config_of(mw);
    int hd = c->hidden_size / c->num_attention_heads, NH = c->num_attention_heads;
    int NKV = c->num_key_value_heads, qn = NH / 2 * hd, kn = NKV / 2 * hd;
    int same =
        !memcmp(gs, gf + qn, sizeof(float) * (size_t)qn) &&
        !memcmp(gs + qn, gf + NH * hd + kn, sizeof(float) * (size_t)kn) &&
        !memcmp(gs + qn + kn, gf + (NH + NKV) * hd + kn, sizeof(float) * (size_t)kn) &&
        !memcmp(gs + qn + 2 * kn, gf + (NH + 2 * NKV) * hd, sizeof(float) * (size_t)c->hidden_size);
    CHECK(same, "%s: the slice's grid rows are not the full model's", name);
    td_infer_model_free(&q);
    td_infer_model_free(&slice);
    td_infer_model_free(&m);
    td_infer_model_free(&again);
}

/* td_infer_release_quantized: int8 and bf16 logits are the same after the fp32 copies of their
 * matrices are released (forward_infer reads none of them), the model frees cleanly, and a
 * wholly released model refuses to be sliced or run instead of reading released pages. */
static void release(void) {
    td_infer_model *m = test_serving(make_model(TD_ARCH_LLAMA));
    int32_t toks[40];
    for (int i = 0; i < 40; i++)
        toks[i] = (int32_t)((i * 29 + 5) % 300);
    float before[300], after[300];
    for (int bf = 0; bf < 2; bf++) {
        td_infer_model *q = NULL;
        REQUIRE(td_infer_tp_slice(m, 0, 1, &q) == TD_OK, "%s", td_error_message());
        REQUIRE((bf ? td_infer_quantize_bf16(q) : td_infer_quantize_int8(q, 1)) == TD_OK, "%s",
                td_error_message());
        logits_of(q, toks, 40, before);
        CHECK(td_infer_release_quantized(q) == TD_OK, "%s", td_error_message());
        logits_of(q, toks, 40, after);
        CHECK(!memcmp(before, after, sizeof before), "%s logits changed by the release",
              bf ? "bf16" : "int8");
        td_infer_model_free(&q);
    }
    CHECK(td_infer_release_quantized(m) == TD_ERR_INVALID,
          "an unquantized model released its matrices");
    td_error_clear();
    CHECK(td_model_release_all(td_infer_model_weights(m)) == TD_OK, "%s", td_error_message());
    td_infer_model *s = NULL;
    CHECK(td_infer_tp_slice(m, 0, 1, &s) == TD_ERR_INVALID && !s, "a released model was sliced");
    td_error_clear();
    td_kv_cache *kv;
    int32_t blocks[4] = {0, 1, 2, 3};
    REQUIRE(td_kv_cache_new(m, 16, 4, &kv) == TD_OK, "%s", td_error_message());
    td_infer_seg sg = {toks, 4, 0, blocks, 0};
    CHECK(td_infer_forward(m, kv, &sg, 1, after) == TD_ERR_INVALID, "a released model ran");
    td_error_clear();
    td_kv_cache_free(&kv);
    td_infer_model_free(&m);
    printf("release: int8 and bf16 logits unchanged after releasing their fp32 matrices\n");
}

int main(void) {
    against_peer();
    special_cases();
    calibrated_model(TD_ARCH_LLAMA, 0);
    calibrated_model(TD_ARCH_GPT2, 0);
    calibrated_model(TD_ARCH_LLAMA, 1);
    thread_count();
    release();
    return test_done("test_gptq");
}
