/* Many LoRA adapters on one base (multi-adapter serving) against merged models.
 *
 * For the fixtures llama (GQA), llama_tied and gpt2 (fused c_attn, biases): three adapters
 * with different targets and ranks and random A and B are added to one serving model;
 * the reference for adapter k is the base with k merged into its weights
 * (td_model_merge_lora), served alone.
 *   (a) one batched forward holds four sequences -- the base and each adapter -- prefilled
 *       in chunks, then decoded: each sequence's logits match its reference model's (run on
 *       that sequence alone) within 1e-5 relative (max |diff| / max |ref|), and differ from
 *       the base's by more than 1e-3 (the adapters are not ignored);
 *   (b) a tensor-parallel slice of degree 1 carries the adapters (same logits);
 *   (c) the engine: 48 greedy requests spread over the four models, all submitted at once,
 *       give exactly the tokens each merged model's own engine gives, and steps held
 *       requests of different adapters (td_engine_counters);
 *   (d) refusals: an adapter index past the served ones (forward and submit), and an adapter
 *       added to a slice of degree 2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "tests/test.h"
#include "worker/infer/engine.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/model/checkpoint.h"
#include "worker/model/lora.h"

#define NA 3    /* adapters */
#define NS 4    /* sequences: the base, then adapters 1..3 */
#define PLEN 7  /* prompt tokens of each sequence */
#define STEPS 3 /* decode steps after the prompt */
#define NREQ 48

static double max_rel(const float *a, const float *b, int n) {
    double d = 0, r = 0;
    for (int i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        r = fmax(r, fabs((double)b[i]));
    }
    return d / r;
}

static td_infer_model *load(const char *dir) {
    td_model *w;
    REQUIRE(td_checkpoint_load_model(dir, &w) == TD_OK, "%s", td_error_message());
    td_infer_model *m;
    REQUIRE(td_infer_model_new(w, &m) == TD_OK, "%s", td_error_message());
    return m;
}

static td_lora *make_adapter(const td_model_config *cfg, int k) {
    int llama = cfg->arch == TD_ARCH_LLAMA;
    static const char *llama_t[NA][7] = {
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        {"q_proj", "v_proj"},
        {"o_proj", "up_proj", "down_proj"}};
    static const char *gpt2_t[NA][4] = {
        {"c_attn", "c_proj", "c_fc"}, {"c_attn"}, {"c_proj", "c_fc"}};
    td_lora_config lc = {.r = 2 + k, .alpha = 4.0 + 2 * k};
    for (int i = 0; i < 7; i++) {
        const char *t = llama ? llama_t[k][i] : (i < 4 ? gpt2_t[k][i] : NULL);
        if (!t) break;
        snprintf(lc.targets[lc.n_targets++], sizeof lc.targets[0], "%s", t);
    }
    td_lora *lo;
    REQUIRE(td_lora_new(cfg, &lc, "test", 11 + (uint64_t)k, &lo) == TD_OK, "%s",
            td_error_message());
    td_rng r;
    td_rng_seed(&r, 100 + (uint64_t)k);
    float *p = td_lora_params(lo);
    for (size_t i = 0; i < td_lora_num_params(lo); i++) /* B too: a trained adapter */
        p[i] = (2 * td_rng_uniform(&r) - 1) * 0.3f;
    return lo;
}

/* Runs the sequences' prompts in two chunks, then STEPS decode tokens, all sequences in
 * one forward per step; logits[step][seg][V]. */
static void run(td_infer_model *m, int nseg, const int *segs_of,
                const int32_t (*toks)[PLEN + STEPS], const int *adapter, float *logits, int V) {
    td_kv_cache *kv;
    REQUIRE(td_kv_cache_new(m, 4, 4 * nseg, &kv) == TD_OK, "%s", td_error_message());
    REQUIRE(td_infer_plan(m, nseg * 4, nseg) == TD_OK, "%s", td_error_message());
    int32_t blocks[NS][4];
    for (int s = 0; s < nseg; s++)
        for (int b = 0; b < 4; b++)
            blocks[s][b] = (int32_t)(4 * nseg - 1 - (b * nseg + s)); /* interleaved */
    int chunks[2 + STEPS][2] = {{0, 4}, {4, 3}};
    for (int t = 0; t < STEPS; t++)
        chunks[2 + t][0] = PLEN + t, chunks[2 + t][1] = 1;
    for (int st = 0; st < 2 + STEPS; st++) {
        td_infer_seg sg[NS];
        for (int s = 0; s < nseg; s++)
            sg[s] = (td_infer_seg){toks[segs_of[s]] + chunks[st][0], chunks[st][1], chunks[st][0],
                                   blocks[s], adapter[s]};
        REQUIRE(td_infer_forward(m, kv, sg, nseg, logits + (size_t)st * NS * V) == TD_OK, "%s",
                td_error_message());
    }
    td_kv_cache_free(&kv);
}

/* Greedy tokens of requests `which` (adapter ids, or all on adapter 0 with base_only) on
 * engine over m; tokens[i][0..n) for each request i with adapter[i] in the set. */
static void engine_run(td_infer_model *m, const int32_t (*prompts)[6], const int *plen,
                       const int *adapter, int only, int32_t (*out)[8], int *nout,
                       uint64_t *mixed) {
    td_engine_opts eo = {.max_seqs = 16, .prefill_chunk = 4};
    td_engine *e;
    REQUIRE(td_engine_new(m, NULL, &eo, &e) == TD_OK, "%s", td_error_message());
    int id[NREQ];
    for (int i = 0; i < NREQ; i++) {
        id[i] = -1;
        if (only >= 0 && adapter[i] != only) continue;
        td_sampling s = {.max_tokens = 8, .ignore_eot = 1};
        REQUIRE(td_engine_submit_adapter(e, only >= 0 ? 0 : adapter[i], prompts[i], plen[i], &s,
                                         &id[i]) == TD_OK,
                "%s", td_error_message());
    }
    int active = 1;
    while (active)
        REQUIRE(td_engine_step(e, &active) == TD_OK, "%s", td_error_message());
    for (int i = 0; i < NREQ; i++) {
        if (id[i] < 0) continue;
        const int32_t *t = td_engine_tokens(e, id[i], &nout[i]);
        memcpy(out[i], t, sizeof(int32_t) * (size_t)nout[i]);
    }
    uint64_t steps;
    td_engine_counters(e, &steps, mixed);
    td_engine_free(&e);
}

int main(void) {
    const char *fx[] = {"tests/reference/fixtures/llama", "tests/reference/fixtures/llama_tied",
                        "tests/reference/fixtures/gpt2"};
    for (int f = 0; f < 3; f++) {
        const char *name = strrchr(fx[f], '/') + 1;
        td_infer_model *full = load(fx[f]), *ref[NS];
        const td_model_config *cfg = td_infer_model_config(full);
        int V = cfg->vocab_size;
        ref[0] = load(fx[f]);
        for (int k = 1; k <= NA; k++) {
            td_lora *lo = make_adapter(cfg, k - 1);
            int idx = -1;
            REQUIRE(td_infer_add_adapter(full, lo, &idx) == TD_OK, "%s", td_error_message());
            CHECK(idx == k, "adapter index %d, expected %d", idx, k);
            CHECK(td_infer_adapter_bytes(full, k) == sizeof(float) * td_lora_num_params(lo),
                  "%s adapter %d: %zu bytes served, %zu parameters", name, k,
                  td_infer_adapter_bytes(full, k), td_lora_num_params(lo));
            ref[k] = load(fx[f]);
            REQUIRE(td_model_merge_lora(td_infer_model_weights(ref[k]), lo) == TD_OK, "%s",
                    td_error_message());
            td_lora_free(&lo);
        }
        CHECK(td_infer_num_adapters(full) == NA, "%d adapters", td_infer_num_adapters(full));
        int32_t toks[NS][PLEN + STEPS];
        td_rng r;
        td_rng_seed(&r, 5);
        for (int s = 0; s < NS; s++)
            for (int i = 0; i < PLEN + STEPS; i++)
                toks[s][i] = (int32_t)td_rng_below(&r, (uint64_t)V);
        /* (a) one batch, four models */
        size_t per = (size_t)(2 + STEPS) * NS * V;
        float *got = malloc(sizeof(float) * per), *want = malloc(sizeof(float) * per);
        float *base = malloc(sizeof(float) * per);
        int all[NS] = {0, 1, 2, 3}, zero[NS] = {0};
        run(full, NS, all, toks, all, got, V);
        double worst = 0, least_effect = 1e9;
        for (int s = 0; s < NS; s++) {
            int one[1] = {s};
            run(ref[s], 1, one, toks, zero, want, V);
            run(ref[0], 1, one, toks, zero, base, V);
            for (int st = 2 - 1; st < 2 + STEPS; st++) { /* after the whole prompt, and on */
                const float *g = got + ((size_t)st * NS + s) * V;
                const float *w = want + (size_t)st * NS * V;
                double rel = max_rel(g, w, V);
                worst = fmax(worst, rel);
                CHECK(rel <= 1e-5,
                      "%s: sequence %d (adapter %d) step %d: logits vs the merged "
                      "model's, max rel diff %.3e",
                      name, s, s, st, rel);
                if (s) least_effect = fmin(least_effect, max_rel(w, base + (size_t)st * NS * V, V));
            }
        }
        printf("%-10s batch of base + %d adapters vs merged models: max rel diff %.2e; adapters "
               "move the logits by >= %.2e\n",
               name, NA, worst, least_effect);
        CHECK(least_effect > 1e-3, "%s: an adapter changes the logits by only %.3e", name,
              least_effect);
        /* (b) a slice of degree 1 carries the adapters */
        td_infer_model *slice;
        REQUIRE(td_infer_tp_slice(full, 0, 1, &slice) == TD_OK, "%s", td_error_message());
        CHECK(td_infer_num_adapters(slice) == NA, "slice: %d adapters",
              td_infer_num_adapters(slice));
        run(slice, NS, all, toks, all, want, V);
        double rs = max_rel(got, want, (int)per);
        CHECK(rs <= 1e-6, "%s: TP-1 slice with adapters vs the whole: %.3e", name, rs);
        td_infer_model_free(&slice);
        /* (d) refusals */
        {
            td_kv_cache *kv;
            REQUIRE(td_kv_cache_new(full, 4, 4, &kv) == TD_OK, "kv");
            int32_t blocks[4] = {0, 1, 2, 3};
            td_infer_seg sg = {toks[0], 2, 0, blocks, NA + 1};
            CHECK(td_infer_forward(full, kv, &sg, 1, got) == TD_ERR_INVALID,
                  "adapter %d of %d accepted", NA + 1, NA);
            td_error_clear();
            td_kv_cache_free(&kv);
            if (cfg->num_key_value_heads % 2 == 0) {
                td_infer_model *half;
                REQUIRE(td_infer_tp_slice(full, 1, 2, &half) == TD_OK, "%s", td_error_message());
                CHECK(td_infer_num_adapters(half) == NA, "TP-2 slice: %d adapters",
                      td_infer_num_adapters(half));
                td_lora *lo = make_adapter(cfg, 0);
                int idx;
                CHECK(td_infer_add_adapter(half, lo, &idx) == TD_ERR_INVALID,
                      "an adapter added to a slice");
                td_error_clear();
                td_lora_free(&lo);
                td_infer_model_free(&half);
            }
        }
        /* (c) the engine: 48 requests over four models vs each merged model alone */
        static int32_t prompts[NREQ][6], out[NREQ][8], out_ref[NREQ][8];
        int plen[NREQ], ad[NREQ], nout[NREQ], nref[NREQ];
        for (int i = 0; i < NREQ; i++) {
            plen[i] = 3 + (int)td_rng_below(&r, 4);
            ad[i] = i % NS;
            for (int t = 0; t < plen[i]; t++)
                prompts[i][t] = (int32_t)td_rng_below(&r, (uint64_t)V);
        }
        uint64_t mixed = 0, unused;
        engine_run(full, prompts, plen, ad, -1, out, nout, &mixed);
        int same = 0;
        for (int k = 0; k < NS; k++)
            engine_run(ref[k], prompts, plen, ad, k, out_ref, nref, &unused);
        for (int i = 0; i < NREQ; i++) {
            int eq = nout[i] == nref[i] && !memcmp(out[i], out_ref[i], sizeof(int32_t) * nout[i]);
            same += eq;
            CHECK(eq, "%s: request %d (adapter %d): tokens differ from the merged model's", name, i,
                  ad[i]);
        }
        printf("%-10s engine: %d/%d requests over 4 models give the merged models' tokens; %llu "
               "steps mixed adapters\n",
               name, same, NREQ, (unsigned long long)mixed);
        CHECK(mixed > 0, "%s: no engine step held requests of different adapters", name);
        int32_t p1[2] = {1, 2};
        td_engine_opts eo = {.max_seqs = 2};
        td_engine *e;
        REQUIRE(td_engine_new(full, NULL, &eo, &e) == TD_OK, "%s", td_error_message());
        td_sampling s = {.max_tokens = 2};
        int id;
        CHECK(td_engine_submit_adapter(e, NA + 1, p1, 2, &s, &id) == TD_ERR_INVALID,
              "submit to adapter %d of %d", NA + 1, NA);
        td_error_clear();
        td_engine_free(&e);
        free(got);
        free(want);
        free(base);
        for (int k = 0; k < NS; k++)
            td_infer_model_free(&ref[k]);
        td_infer_model_free(&full);
    }
    return test_done("test_infer_adapters");
}
