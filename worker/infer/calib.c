/* int8 calibration driver (calib.h). */
#include "worker/infer/calib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "worker/infer/kv_cache.h"

void td_calib_opts_default(td_calib_opts *o) {
    memset(o, 0, sizeof *o);
    o->seqs = 32;
    o->seed = 1234;
    o->damp = 0.01f;
}

int32_t td_calib_start_token(const td_bpe *tok) {
    static const char *starts[] = {"<|endoftext|>", "<|begin_of_text|>", "<s>", "<|end_of_text|>",
                                   "</s>"};
    int32_t id = -1;
    for (size_t i = 0; i < sizeof starts / sizeof *starts && id < 0; i++)
        id = td_bpe_special_id(tok, starts[i]);
    return id;
}

td_status td_calib_read_text(td_bpe *tok, const char *path, int32_t **ids, size_t *n) {
    char *text = NULL;
    size_t len = 0, cap = 0;
    *ids = NULL;
    *n = 0;
    TD_TRY(td_fs_read_file(path, &text, &len));
    *n = td_bpe_encode(tok, text, len, ids, &cap);
    free(text);
    return TD_OK;
}

int td_calib_layers_per_pass(const td_model *m, size_t max_bytes) {
    int L = td_model_config_of(m)->num_hidden_layers;
    size_t layer = td_infer_calib_bytes(m, TD_CALIB_LAYERS) / (size_t)L;
    size_t budget = max_bytes ? max_bytes : TD_CALIB_DEFAULT_BYTES;
    return budget / layer > (size_t)L ? L : (int)(budget / layer);
}

/* A token drawn from softmax(logits) (temperature 1). */
static int32_t sample(const float *x, int V, td_rng *rng) {
    float mx = x[0];
    for (int i = 1; i < V; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)(x[i] - mx));
    double u = td_rng_uniform_f64(rng) * sum, c = 0;
    for (int i = 0; i < V; i++) {
        c += exp((double)(x[i] - mx));
        if (u < c) return i;
    }
    return V - 1;
}

static void gptq_progress(void *ctx, int done, int total) {
    const td_calib_opts *o = ctx;
    if (!o->quiet && (done == total || done % 8 == 0))
        TD_LOG_INFO("int8 calibration: GPTQ %d of %d matrices", done, total);
}

td_status td_int8_calibrate(td_infer_model *im, const td_calib_opts *o) {
    td_model *m = td_infer_model_weights(im);
    const td_model_config *c = td_model_config_of(m);
    int T = c->max_position_embeddings, V = c->vocab_size;
    int len = o->len > 0 ? o->len : (T < 128 ? T : 128), S = o->seqs > 0 ? o->seqs : 32;
    if (len > T)
        return td_error_set(TD_ERR_INVALID,
                            "calibration sequences of %d tokens exceed the "
                            "model's context (%d)",
                            len, T);
    if (o->tokens) {
        size_t windows = o->ntokens / (size_t)len;
        if (windows == 0)
            return td_error_set(TD_ERR_INVALID,
                                "the calibration text has %zu tokens: fewer "
                                "than one sequence of %d (--calib-len sets it)",
                                o->ntokens, len);
        if ((size_t)S > windows) S = (int)windows;
    } else if (o->start < 0 || o->start >= V) {
        return td_error_set(TD_ERR_INVALID, "calibration start token %d outside [0, %d)", o->start,
                            V);
    }
    const int bt = 16, nbs = (len + bt - 1) / bt;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)S * (size_t)len);
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)S * (size_t)nbs);
    float *logits = malloc(sizeof(float) * (size_t)S * (size_t)V);
    td_infer_seg *segs = malloc(sizeof *segs * (size_t)S);
    td_kv_cache *kv = NULL;
    td_status s =
        seq && blocks && logits && segs ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s == TD_OK) s = td_kv_cache_new(im, bt, (size_t)S * (size_t)nbs, &kv);
    if (s == TD_OK) s = td_infer_plan(im, S, S);
    if (s != TD_OK) goto out;
    for (int i = 0; i < S * nbs; i++)
        blocks[i] = i;
    if (o->tokens)
        memcpy(seq, o->tokens, sizeof(int32_t) * (size_t)S * (size_t)len);
    else
        for (int i = 0; i < S; i++)
            seq[(size_t)i * len] = o->start;
    td_rng rng;
    td_rng_seed(&rng, o->seed);
    double t0 = td_time_now();
    /* the layers in groups that fit the budget, then lm_head (calib.h) */
    int L = c->num_hidden_layers;
    size_t layer_bytes = td_infer_calib_bytes(m, TD_CALIB_LAYERS) / (size_t)L;
    int per = td_calib_layers_per_pass(m, o->max_bytes);
    if (per < 1) {
        s = td_error_set(TD_ERR_NOMEM,
                         "GPTQ statistics of one layer take %.1f MiB, over the "
                         "%.1f MiB allowed (--calib-mb)",
                         layer_bytes / 1048576.0,
                         (o->max_bytes ? o->max_bytes : TD_CALIB_DEFAULT_BYTES) / 1048576.0);
        goto out;
    }
    int groups = (L + per - 1) / per, passes = groups + (o->skip_head ? 0 : 1);
    for (int pass = 0; pass < passes && s == TD_OK; pass++) {
        int head = pass == groups, lo = pass * per, hi = lo + per < L ? lo + per : L;
        int what = head ? TD_CALIB_HEAD : TD_CALIB_LAYERS, sampling = !o->tokens && !pass;
        char part[64];
        if (head)
            snprintf(part, sizeof part, "lm_head");
        else if (groups == 1)
            snprintf(part, sizeof part, "layers");
        else
            snprintf(part, sizeof part, "layers %d-%d of %d", lo, hi - 1, L);
        if (!o->quiet)
            TD_LOG_INFO(
                "int8 calibration, %s (pass %d of %d): %d sequences of %d tokens %s "
                "(statistics %.1f MiB)",
                part, pass + 1, passes, S, len,
                o->tokens  ? "of the calibration text"
                : sampling ? "sampled from the model"
                           : "again",
                (head ? td_infer_calib_bytes(m, TD_CALIB_HEAD) : layer_bytes * (size_t)(hi - lo)) /
                    1048576.0);
        s = td_infer_calib_start(im, what, lo, hi);
        for (int t = 0; t < len && s == TD_OK; t++) {
            for (int i = 0; i < S; i++)
                segs[i] =
                    (td_infer_seg){&seq[(size_t)i * len + t], 1, t, &blocks[(size_t)i * nbs], 0};
            s = td_infer_forward(im, kv, segs, S, logits);
            if (s == TD_OK && sampling && t + 1 < len)
                for (int i = 0; i < S; i++)
                    seq[(size_t)i * len + t + 1] = sample(logits + (size_t)i * V, V, &rng);
            if (s == TD_OK && !o->quiet && (t + 1) % 32 == 0 && t + 1 < len)
                TD_LOG_INFO("int8 calibration: %d of %d positions (%.1f s)", t + 1, len,
                            td_time_now() - t0);
        }
        if (s == TD_OK)
            s = td_infer_calib_gptq(im, o->damp > 0 ? o->damp : 0.01f, gptq_progress, (void *)o);
    }
    if (s == TD_OK && !o->quiet)
        TD_LOG_INFO("int8 calibration: done in %.1f s (%d tokens)", td_time_now() - t0, S * len);
out:
    if (s != TD_OK) td_infer_calib_cancel(im); /* no statistics left behind */
    td_kv_cache_free(&kv);
    free(seq);
    free(blocks);
    free(logits);
    free(segs);
    return s;
}
