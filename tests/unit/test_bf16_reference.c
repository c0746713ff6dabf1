/* bf16 mixed precision against fp32 and against PyTorch: each fixture of
 * tests/reference/fixtures (make_fixtures.py; autocast_bf16.safetensors from
 * make_bf16_fixture.py) runs one forward and backward with bf16 matrix products; compared:
 *   logits, loss vs the float64 reference and vs PyTorch's CPU autocast to bfloat16:
 *       max|ours - ref| / max|ref| <= 2e-2
 *   gradients vs the float64 reference: ||ours - ref||_2 / ||all ref grads||_2 <= 2e-2
 *   and bf16 must differ from fp32 (the bf16 path really ran).
 * The log names the instruction set oneDNN used; with ONEDNN_MAX_CPU_ISA=AVX2 the products
 * take the widened-sgemm fallback and the same bounds hold. */
#include <math.h>
#include <string.h>

#include "tests/test.h"
#include "worker/kernels/cpu/bf16.h"
#include "worker/model/checkpoint.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"
#include "worker/train/adamw.h"

static double rel_max(const float *a, const float *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - ref[i]));
        r = fmax(r, fabs((double)ref[i]));
    }
    return d / r;
}

static void run_fixture(const char *name) {
    char dir[256], ref[300], ac[300];
    snprintf(dir, sizeof dir, "tests/reference/fixtures/%s", name);
    snprintf(ref, sizeof ref, "%s/reference.safetensors", dir);
    snprintf(ac, sizeof ac, "%s/autocast_bf16.safetensors", dir);
    td_model *m, *m32;
    REQUIRE(td_checkpoint_load_model(dir, &m) == TD_OK, "%s", td_error_message());
    REQUIRE(td_checkpoint_load_model(dir, &m32) == TD_OK, "%s", td_error_message());
    td_st_file *f, *fa;
    REQUIRE(td_st_open(ref, &f) == TD_OK, "%s", td_error_message());
    REQUIRE(td_st_open(ac, &fa) == TD_OK, "%s", td_error_message());
    const td_st_entry *et = td_st_find(f, "tokens"), *eg = td_st_find(f, "targets"),
                      *el = td_st_find(f, "logits"), *eL = td_st_find(f, "loss"),
                      *al = td_st_find(fa, "logits"), *aL = td_st_find(fa, "loss");
    REQUIRE(et && eg && el && eL && al && aL, "reference tensors missing");
    int B = (int)et->shape[0], T = (int)et->shape[1];
    size_t nl = el->numel;
    const int32_t *tok = td_st_data(f, et), *tgt = td_st_data(f, eg);
    float ref_loss, ac_loss;
    memcpy(&ref_loss, td_st_data(f, eL), 4);
    memcpy(&ac_loss, td_st_data(fa, aL), 4);
    float *rl = malloc(sizeof(float) * nl), *ra = malloc(sizeof(float) * nl);
    td_st_read_f32(f, el, rl, 0);
    td_st_read_f32(fa, al, ra, 0);

    REQUIRE(td_model_set_bf16(m, 1) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_plan(m, B, T, 1) == TD_OK && td_model_plan(m32, B, T, 0) == TD_OK, "plan");
    double loss = 0, loss32 = 0;
    REQUIRE(td_model_forward(m32, tok, tgt, B, T, &loss32) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_forward(m, tok, tgt, B, T, &loss) == TD_OK, "%s", td_error_message());
    const float *ol = td_model_logits(m);
    double r64 = rel_max(ol, rl, nl), rac = rel_max(ol, ra, nl);
    double d32 = rel_max(ol, td_model_logits(m32), nl);
    double lr64 = fabs(loss - ref_loss) / fabs(ref_loss), lrac = fabs(loss - ac_loss) / ac_loss;
    printf("%-10s bf16 logits vs float64 %.2e, vs torch autocast bf16 %.2e, vs our fp32 %.2e; "
           "loss %.6f (float64 %.6f, autocast %.6f)\n",
           name, r64, rac, d32, loss, ref_loss, ac_loss);
    CHECK(r64 <= 2e-2 && lr64 <= 2e-2, "%s: bf16 vs float64: logits %.3e loss %.3e", name, r64,
          lr64);
    CHECK(rac <= 2e-2 && lrac <= 2e-2, "%s: bf16 vs autocast: logits %.3e loss %.3e", name, rac,
          lrac);
    CHECK(d32 > 1e-5, "%s: bf16 logits equal fp32 (%.2e): the bf16 path did not run", name, d32);

    td_model_zero_grad(m);
    REQUIRE(td_model_backward(m, 1.0) == TD_OK, "%s", td_error_message());
    int nt;
    const td_param_tensor *t = td_model_tensors(m, &nt);
    const float *g = td_model_grads(m);
    double e2 = 0, r2 = 0;
    for (int k = 0; k < nt; k++) {
        char gn[200];
        snprintf(gn, sizeof gn, "grad.%s", t[k].name);
        const td_st_entry *e = td_st_find(f, gn);
        if (!e) continue;
        float *r = malloc(sizeof(float) * e->numel);
        td_st_read_f32(f, e, r, t[k].transposed);
        for (size_t i = 0; i < e->numel; i++) {
            double d = (double)g[t[k].offset + i] - r[i];
            e2 += d * d;
            r2 += (double)r[i] * r[i];
        }
        free(r);
    }
    double grel = sqrt(e2 / r2);
    printf("%-10s bf16 gradients vs float64: relative L2 %.2e\n", name, grel);
    CHECK(grel <= 2e-2, "%s: bf16 gradients off by %.3e", name, grel);
    /* the fused AdamW step leaves the bf16 working copy equal to the rounded masters */
    size_t np = td_model_num_params(m);
    float *am = calloc(np, sizeof(float)), *av = calloc(np, sizeof(float));
    uint16_t *want = malloc(np * sizeof(uint16_t));
    td_adamw_params hp = {0.9f, 0.95f, 1e-8f, 0.1f};
    td_adamw_step_fused(m, am, av, &hp, 1e-2, 1, 1.0f);
    td_bf16_from_f32(want, td_model_params(m), np);
    CHECK(!memcmp(want, td_model_bf16_params(m), np * sizeof(uint16_t)),
          "%s: bf16 working copy stale after the fused AdamW step", name);
    free(am);
    free(av);
    free(want);
    free(rl);
    free(ra);
    td_st_close(&f);
    td_st_close(&fa);
    td_model_free(&m);
    td_model_free(&m32);
}

int main(void) {
    run_fixture("llama");
    run_fixture("llama_tied");
    run_fixture("gpt2");
    printf("oneDNN instruction set: %s\n", td_bf16_isa());
    return test_done("test_bf16_reference");
}
