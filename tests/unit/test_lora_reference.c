/* LoRA against Hugging Face peft: tests/reference/fixtures/lora (make_lora_fixture.py) holds
 * a tiny llama base, a peft adapter on all seven llama matrices (r 4, alpha 8, random
 * lora_B) and float64 references for one SFT-style batch (some targets -1). This loads the
 * base and the adapter with tandem's API, runs forward and backward, and checks
 *   (a) loss:                |ours - ref| / |ref|                              <= 1e-4
 *       logits:              max|ours - ref| / max|ref|                        <= 1e-4
 *   (b) each lora_A/lora_B gradient, a max-norm relative error per tensor:
 *                            max|g - ref| / max(max|ref|, 1e-6 * max over all tensors of
 *                            max|ref|)                                         <= 1e-4
 *       and every adapter tensor has exactly one reference gradient, and vice versa;
 *   (c) td_model_merge_lora on a freshly loaded base: every targeted weight equals
 *       merge_and_unload()'s within 1e-6 absolute, every other weight is bit-identical
 *       to the base;
 *   (d) the merged model with no adapter: logits equal the adapter model's logits
 *       (max|a - b| / max|b| <= 1e-4), and the loss the reference's;
 *   (e) LoRA dropout 0.25 with the fixture's key: loss and every gradient as (a), (b) against
 *       PEFT with its lora_dropout modules given tandem's masks; off again, the loss exact;
 * plus: td_lora_save writes PEFT's tensor names, shapes and values back. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test.h"
#include "worker/model/checkpoint.h"
#include "worker/model/lora.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"

#define DIR "tests/reference/fixtures/lora"

static const char *k_targets[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                  "gate_proj", "up_proj", "down_proj"};

/* max|a - b| / max|b| over n values */
static double max_rel(const float *a, const float *b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        r = fmax(r, fabs((double)b[i]));
    }
    return d / r;
}

static int targeted(const char *hf_name) {
    for (size_t i = 0; i < sizeof k_targets / sizeof *k_targets; i++) {
        char suffix[48];
        snprintf(suffix, sizeof suffix, ".%s.weight", k_targets[i]);
        size_t n = strlen(hf_name), s = strlen(suffix);
        if (n > s && !strcmp(hf_name + n - s, suffix)) return 1;
    }
    return 0;
}

static float *read_entry(const td_st_file *f, const td_st_entry *e, int transpose) {
    float *x = malloc(sizeof(float) * e->numel);
    REQUIRE(x && td_st_read_f32(f, e, x, transpose) == TD_OK, "%s: %s", e->name,
            td_error_message());
    return x;
}

/* Every adapter gradient against the reference's PREFIX<name>, a max-norm relative error per
 * tensor (floor: the smallest denominator) <= 1e-4. */
static void compare_grads(const td_st_file *ref, td_lora *lo, const char *prefix, double floor,
                          const char *what) {
    int nt;
    const td_lora_tensor *lt = td_lora_tensors(lo, &nt);
    const float *g = td_lora_grads(lo);
    double worst = 0;
    const char *worst_name = "";
    for (int k = 0; k < nt; k++) {
        char gn[200];
        snprintf(gn, sizeof gn, "%s%s", prefix, lt[k].name);
        const td_st_entry *e = td_st_find(ref, gn);
        CHECK(e != NULL, "no reference gradient %s", gn);
        if (!e) continue;
        CHECK(e->ndim == 2 && e->shape[0] == lt[k].shape[0] && e->shape[1] == lt[k].shape[1],
              "%s: shape %lldx%lld, ours %lldx%lld", lt[k].name, (long long)e->shape[0],
              (long long)e->shape[1], (long long)lt[k].shape[0], (long long)lt[k].shape[1]);
        if (e->numel != lt[k].numel) continue;
        float *r = read_entry(ref, e, 0);
        double d = 0, rm = 0;
        for (size_t i = 0; i < e->numel; i++) {
            d = fmax(d, fabs((double)g[lt[k].offset + i] - r[i]));
            rm = fmax(rm, fabs((double)r[i]));
        }
        double rel = d / fmax(rm, floor);
        if (rel > worst) worst = rel, worst_name = lt[k].name;
        CHECK(rel <= 1e-4, "%s%s max rel diff %.3e", prefix, lt[k].name, rel);
        free(r);
    }
    printf("%s: %d tensors, worst max rel diff %.2e (%s)\n", what, nt, worst, worst_name);
}

int main(void) {
    td_st_file *ref;
    REQUIRE(td_st_open(DIR "/reference.safetensors", &ref) == TD_OK, "%s", td_error_message());
    const td_st_entry *et = td_st_find(ref, "tokens"), *eg = td_st_find(ref, "targets"),
                      *el = td_st_find(ref, "logits"), *eL = td_st_find(ref, "loss");
    REQUIRE(et && eg && el && eL, "reference tensors missing");
    int B = (int)et->shape[0], T = (int)et->shape[1];
    const int32_t *tok = td_st_data(ref, et), *tgt = td_st_data(ref, eg);
    float ref_loss, *ref_logits = read_entry(ref, el, 0);
    memcpy(&ref_loss, td_st_data(ref, eL), 4);
    int counted = 0;
    for (int i = 0; i < B * T; i++)
        counted += tgt[i] >= 0;
    REQUIRE(counted > 0 && counted < B * T, "the fixture's batch should mask some targets");

    /* ---- the base with the adapter ---- */
    td_model *m;
    REQUIRE(td_checkpoint_load_model(DIR, &m) == TD_OK, "%s", td_error_message());
    const td_model_config *cfg = td_model_config_of(m);
    int V = cfg->vocab_size;
    REQUIRE((size_t)B * T * V == el->numel, "logits shape");
    td_lora *lo;
    REQUIRE(td_lora_load(DIR "/adapter", cfg, &lo) == TD_OK, "%s", td_error_message());
    CHECK(td_lora_config_of(lo)->r == 4, "r %d", td_lora_config_of(lo)->r);
    CHECK(fabsf(td_lora_scale(lo) - 2.0f) < 1e-7f, "scale %g, want alpha/r = 8/4",
          (double)td_lora_scale(lo));
    REQUIRE(td_model_set_lora(m, lo) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_plan(m, B, T, 1) == TD_OK, "%s", td_error_message());
    CHECK(td_model_grads(m) == NULL, "the frozen base has a gradient buffer");

    double loss = 0;
    REQUIRE(td_model_forward(m, tok, tgt, B, T, &loss) == TD_OK, "%s", td_error_message());
    size_t nlog = (size_t)B * T * V;
    float *lora_logits = malloc(sizeof(float) * nlog);
    REQUIRE(lora_logits, "out of memory");
    memcpy(lora_logits, td_model_logits(m), sizeof(float) * nlog);
    double loss_rel = fabs(loss - ref_loss) / fabs(ref_loss);
    double logit_rel = max_rel(lora_logits, ref_logits, nlog);
    printf("adapter model: loss %.7f vs peft %.7f (rel %.2e), logits max rel diff %.2e\n", loss,
           (double)ref_loss, loss_rel, logit_rel);
    CHECK(loss_rel <= 1e-4, "loss rel diff %.3e", loss_rel);
    CHECK(logit_rel <= 1e-4, "logits rel diff %.3e", logit_rel);

    /* ---- (b) gradients ---- */
    td_lora_zero_grad(lo);
    REQUIRE(td_model_backward(m, 1.0) == TD_OK, "%s", td_error_message());
    const float *g = td_lora_grads(lo);
    REQUIRE(g, "no adapter gradients");
    int nt;
    const td_lora_tensor *lt = td_lora_tensors(lo, &nt);
    size_t nparams = 0;
    double floor = 0;
    for (int k = 0; k < nt; k++) {
        nparams += lt[k].numel;
        char gn[200];
        snprintf(gn, sizeof gn, "grad.%s", lt[k].name);
        const td_st_entry *e = td_st_find(ref, gn);
        if (!e) continue;
        float *r = read_entry(ref, e, 0);
        for (size_t i = 0; i < e->numel; i++)
            floor = fmax(floor, fabs((double)r[i]));
        free(r);
    }
    floor *= 1e-6;
    CHECK(nparams == td_lora_num_params(lo), "tensors cover %zu of %zu params", nparams,
          td_lora_num_params(lo));
    int nref = 0;
    for (int i = 0; i < td_st_count(ref); i++)
        nref += !strncmp(td_st_entry_at(ref, i)->name, "grad.", 5);
    CHECK(nt == 2 * 7 * cfg->num_hidden_layers, "%d adapter tensors", nt);
    CHECK(nref == nt, "%d reference gradients for %d adapter tensors", nref, nt);
    compare_grads(ref, lo, "grad.", floor, "adapter gradients");

    /* ---- (e) LoRA dropout: the reference's PEFT lora_dropout modules were given tandem's
     * masks for this key (tests/reference/make_lora_fixture.py); loss and gradients ---- */
    {
        const td_st_entry *eD = td_st_find(ref, "dropout.loss");
        REQUIRE(eD, "reference has no dropout.loss (regenerate the fixture)");
        float ref_dloss;
        memcpy(&ref_dloss, td_st_data(ref, eD), 4);
        REQUIRE(td_lora_set_dropout(lo, 0.25) == TD_OK, "%s", td_error_message());
        td_lora_dropout_batch(lo, 0x5EED1234ABCDull, T, 0);
        double dloss = 0;
        REQUIRE(td_model_forward(m, tok, tgt, B, T, &dloss) == TD_OK, "%s", td_error_message());
        td_lora_zero_grad(lo);
        REQUIRE(td_model_backward(m, 1.0) == TD_OK, "%s", td_error_message());
        double rel = fabs(dloss - ref_dloss) / fabs(ref_dloss);
        printf("dropout 0.25: loss %.7f vs peft %.7f (rel %.2e; without dropout %.7f)\n", dloss,
               (double)ref_dloss, rel, loss);
        CHECK(rel <= 1e-4, "dropout loss rel diff %.3e", rel);
        CHECK(fabs(dloss - loss) > 1e-4, "dropout left the loss at %.7f", dloss);
        compare_grads(ref, lo, "dropout.grad.", floor, "dropout gradients");
        /* off again (evaluation): the loss without dropout, exactly */
        td_lora_dropout_off(lo);
        double oloss = 0;
        REQUIRE(td_model_forward(m, tok, tgt, B, T, &oloss) == TD_OK, "%s", td_error_message());
        CHECK(oloss == loss, "dropout off: loss %.9f, before %.9f", oloss, loss);
        REQUIRE(td_lora_set_dropout(lo, 0) == TD_OK, "%s", td_error_message());
        CHECK(td_lora_set_dropout(lo, 1.0) != TD_OK, "dropout 1 accepted");
        CHECK(td_lora_set_dropout(lo, -0.1) != TD_OK, "dropout -0.1 accepted");
    }

    /* ---- td_lora_save writes PEFT's file back ---- */
    char tmp[] = "/tmp/test_lora_reference.XXXXXX";
    REQUIRE(mkdtemp(tmp), "mkdtemp");
    REQUIRE(td_lora_save(lo, tmp, "..") == TD_OK, "%s", td_error_message());
    char p[300];
    td_st_file *ours, *peft;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmp);
    REQUIRE(td_st_open(p, &ours) == TD_OK, "%s", td_error_message());
    REQUIRE(td_st_open(DIR "/adapter/adapter_model.safetensors", &peft) == TD_OK, "%s",
            td_error_message());
    CHECK(td_st_count(ours) == td_st_count(peft), "saved %d tensors, peft %d", td_st_count(ours),
          td_st_count(peft));
    int same = 0;
    for (int i = 0; i < td_st_count(peft); i++) {
        const td_st_entry *a = td_st_entry_at(peft, i), *b = td_st_find(ours, a->name);
        CHECK(b != NULL, "td_lora_save wrote no %s", a->name);
        if (!b) continue;
        same += b->dtype == a->dtype && b->ndim == a->ndim && b->numel == a->numel &&
                !memcmp(b->shape, a->shape, sizeof(int64_t) * (size_t)a->ndim) &&
                !memcmp(td_st_data(ours, b), td_st_data(peft, a), a->end - a->begin);
    }
    CHECK(same == td_st_count(peft), "%d of %d saved tensors equal peft's", same,
          td_st_count(peft));
    td_st_close(&ours);
    td_st_close(&peft);
    unlink(p);
    snprintf(p, sizeof p, "%s/adapter_config.json", tmp);
    unlink(p);
    rmdir(tmp);

    /* ---- (c) merge into a freshly loaded base ---- */
    td_model *mm;
    REQUIRE(td_checkpoint_load_model(DIR, &mm) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_merge_lora(mm, lo) == TD_OK, "%s", td_error_message());
    td_st_file *base;
    REQUIRE(td_st_open(DIR "/model.safetensors", &base) == TD_OK, "%s", td_error_message());
    int np;
    const td_param_tensor *pt = td_model_tensors(mm, &np);
    const float *w = td_model_params(mm);
    double merge_worst = 0;
    int n_merged = 0, n_kept = 0;
    for (int k = 0; k < np; k++) {
        char mn[200];
        snprintf(mn, sizeof mn, "merged.%s", pt[k].name);
        if (targeted(pt[k].name)) {
            const td_st_entry *e = td_st_find(ref, mn);
            CHECK(e != NULL && e->numel == pt[k].numel, "no reference %s", mn);
            if (!e || e->numel != pt[k].numel) continue;
            float *r = read_entry(ref, e, pt[k].transposed);
            double d = 0;
            for (size_t i = 0; i < e->numel; i++)
                d = fmax(d, fabs((double)w[pt[k].offset + i] - r[i]));
            merge_worst = fmax(merge_worst, d);
            CHECK(d <= 1e-6, "merged %s max abs diff %.3e", pt[k].name, d);
            n_merged++;
            free(r);
        } else {
            CHECK(td_st_find(ref, mn) == NULL, "%s is merged but not targeted", pt[k].name);
            const td_st_entry *e = td_st_find(base, pt[k].name);
            CHECK(e != NULL && e->numel == pt[k].numel, "base has no %s", pt[k].name);
            if (!e || e->numel != pt[k].numel) continue;
            float *r = read_entry(base, e, pt[k].transposed);
            int eq = !memcmp(r, w + pt[k].offset, sizeof(float) * e->numel);
            CHECK(eq, "the merge changed %s, which no adapter targets", pt[k].name);
            n_kept += eq;
            free(r);
        }
    }
    CHECK(n_merged == 7 * cfg->num_hidden_layers, "%d merged matrices", n_merged);
    printf("merge: %d matrices, max abs diff %.2e vs merge_and_unload; %d others unchanged\n",
           n_merged, merge_worst, n_kept);
    td_st_close(&base);

    /* ---- (d) the merged model alone ---- */
    CHECK(td_model_lora(mm) == NULL, "merged model has an adapter set");
    REQUIRE(td_model_plan(mm, B, T, 0) == TD_OK, "%s", td_error_message());
    double mloss = 0;
    REQUIRE(td_model_forward(mm, tok, tgt, B, T, &mloss) == TD_OK, "%s", td_error_message());
    const float *ml = td_model_logits(mm);
    double m_vs_lora = max_rel(ml, lora_logits, nlog), m_vs_ref = max_rel(ml, ref_logits, nlog);
    double mloss_rel = fabs(mloss - ref_loss) / fabs(ref_loss);
    printf("merged model: logits max rel diff %.2e vs adapter model, %.2e vs peft; loss rel "
           "%.2e\n",
           m_vs_lora, m_vs_ref, mloss_rel);
    CHECK(m_vs_lora <= 1e-4, "merged vs adapter logits rel diff %.3e", m_vs_lora);
    CHECK(m_vs_ref <= 1e-4, "merged vs peft logits rel diff %.3e", m_vs_ref);
    CHECK(mloss_rel <= 1e-4, "merged loss rel diff %.3e", mloss_rel);

    td_model_free(&mm);
    td_lora_free(&lo); /* before the model: its buffers are on the model's backend */
    td_model_free(&m);
    free(lora_logits);
    free(ref_logits);
    td_st_close(&ref);
    return test_done("test_lora_reference");
}
