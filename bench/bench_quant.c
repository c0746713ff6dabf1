/* Quantization quality: how far int8 greedy decoding follows fp32 on a checkpoint.
 * For each prompt (one per line) the fp32 model decodes greedily; the quantized model then
 *   - decodes on its own (free-running): tokens equal to fp32's up to the first
 *     difference ("prefix") and at the same positions ("position"), and
 *   - is fed fp32's tokens (teacher-forced): the share of steps where its next-token
 *     choice equals fp32's, and the relative L2 error of its logits.
 * Decoding ends at <|endoftext|> (as in serving) or after --max-tokens. Flips are listed
 * with fp32's margin between its top two logits at that step.
 * Variants, one row each, named by the `tandem serve` options that select them: int8 with
 * GPTQ calibration (all int8, and with lm_head int16), int8 rounded to nearest (the same
 * two), int8 x int8 products accumulated in int32, and bf16 weights. GPTQ calibrates on
 * sequences sampled from the model (worker/infer/calib.h), as serve does by default.
 * usage: bench_quant --model DIR --prompts-file F [--max-tokens N] [--calib-seqs N]
 *                    [--calib-seed S] [--only K] [--verbose] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "data/bpe.h"
#include "worker/infer/calib.h"
#include "worker/infer/kv_cache.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/checkpoint.h"
#include "worker/model/model.h"

typedef struct {
    td_infer_model *m;
    td_kv_cache *kv;
    int32_t *blocks;
    float *logits;
    int V;
} runner;

typedef struct {
    const char *name;
    int q8, head8, int32, bf16, gptq;
} variant;

static const variant variants[] = {
    {"int8, GPTQ (--int8)", 1, 1, 0, 0, 1},
    {"int8, GPTQ, lm_head int16 (--int8 --lm-head-int16)", 1, 0, 0, 0, 1},
    {"int8, round to nearest (--int8 --int8-rtn)", 1, 1, 0, 0, 0},
    {"int8, round to nearest, lm_head int16 (--int8 --int8-rtn --lm-head-int16)", 1, 0, 0, 0, 0},
    {"int8 x int8, int32 sums, GPTQ (--int8-int32)", 1, 1, 1, 0, 1},
    {"bf16 (--bf16)", 0, 0, 0, 1, 0},
};
enum { NVARIANTS = sizeof variants / sizeof variants[0] };

static int runner_init(runner *r, const char *dir, const variant *v, const td_calib_opts *co) {
    memset(r, 0, sizeof *r);
    td_model *w;
    if (td_checkpoint_load_model(dir, &w) != TD_OK) return -1;
    if (td_infer_model_new(w, &r->m) != TD_OK) {
        td_model_free(&w);
        return -1;
    }
    const td_model_config *c = td_model_config_of(w);
    int T = c->max_position_embeddings, bt = 16, nb = (T + bt - 1) / bt;
    if (v && v->bf16 && td_infer_quantize_bf16(r->m) != TD_OK) return -1;
    if (v && v->gptq) {
        td_calib_opts o = *co;
        o.skip_head = !v->head8;
        if (td_int8_calibrate(r->m, &o) != TD_OK) return -1;
    }
    if (v && v->q8 && td_infer_quantize_int8(r->m, v->head8) != TD_OK) return -1;
    if (v && v->int32) td_infer_set_int8_vnni(r->m, 1);
    if (td_kv_cache_new(r->m, bt, (size_t)nb, &r->kv) != TD_OK) return -1;
    if (td_infer_plan(r->m, T, 1) != TD_OK) return -1;
    r->blocks = malloc(sizeof(int32_t) * (size_t)nb);
    for (int i = 0; i < nb; i++)
        r->blocks[i] = i;
    r->V = c->vocab_size;
    r->logits = malloc(sizeof(float) * (size_t)r->V);
    return 0;
}

static int feed(runner *r, const int32_t *t, int n, int pos) {
    td_infer_seg sg = {t, n, pos, r->blocks, 0};
    return td_infer_forward(r->m, r->kv, &sg, 1, r->logits) == TD_OK ? 0 : -1;
}

static int argmax(const float *x, int n, float *margin) {
    int a = 0, b = -1;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[a]) {
            b = a;
            a = i;
        } else if (b < 0 || x[i] > x[b]) {
            b = i;
        }
    }
    if (margin) *margin = x[a] - x[b];
    return a;
}

static void runner_free(runner *r) {
    td_kv_cache_free(&r->kv);
    td_infer_model_free(&r->m);
    free(r->blocks);
    free(r->logits);
}

typedef struct {
    long tot, prefix, position, whole, np, tf_same, tf_tot;
    double err2, ref2;
} agreement;

/* Runs every prompt of `prompts` (n of them) through fp32 (a) and the quantized model (b). */
static int measure(runner *a, runner *b, td_bpe *tok, char **prompts, int np, int maxt, int verbose,
                   agreement *g) {
    int T = td_infer_model_config(a->m)->max_position_embeddings, V = a->V;
    int eot = td_bpe_special_id(tok, "<|endoftext|>");
    int32_t *ids = NULL, *seq = malloc(sizeof(int32_t) * (size_t)T);
    size_t cap = 0;
    memset(g, 0, sizeof *g);
    for (int p = 0; p < np; p++) {
        size_t n = td_bpe_encode(tok, prompts[p], strlen(prompts[p]), &ids, &cap);
        if (n == 0 || (int)n >= T) continue;
        int gen = maxt < T - (int)n ? maxt : T - (int)n;
        memcpy(seq, ids, n * sizeof(int32_t));
        /* fp32 greedy, and the quantized model teacher-forced along the same tokens */
        if (feed(a, seq, (int)n, 0) || feed(b, seq, (int)n, 0)) goto fail;
        int flips = 0;
        for (int i = 0; i < gen; i++) {
            float margin;
            int ta = argmax(a->logits, V, &margin), tb = argmax(b->logits, V, NULL);
            for (int v = 0; v < V; v++) {
                double d = (double)b->logits[v] - a->logits[v];
                g->err2 += d * d;
                g->ref2 += (double)a->logits[v] * a->logits[v];
            }
            g->tf_tot++;
            if (ta == tb)
                g->tf_same++;
            else if (verbose && flips++ < 3)
                printf("  prompt %d step %d: fp32 %d, quantized %d, fp32 margin %.4f\n", p, i, ta,
                       tb, margin);
            seq[n + (size_t)i] = ta;
            if (ta == eot) {
                gen = i + 1;
                break;
            }
            if (i + 1 < gen &&
                (feed(a, &seq[n + i], 1, (int)n + i) || feed(b, &seq[n + i], 1, (int)n + i)))
                goto fail;
        }
        /* the quantized model free-running */
        if (feed(b, seq, (int)n, 0)) goto fail;
        int pre = 1, same = 0, pref = 0;
        for (int i = 0; i < gen; i++) {
            int32_t t = argmax(b->logits, V, NULL);
            if (t == seq[n + i]) {
                same++;
                if (pre) pref++;
            } else {
                pre = 0;
            }
            if (t == eot) break;
            if (i + 1 < gen && feed(b, &t, 1, (int)n + i)) goto fail;
        }
        g->tot += gen;
        g->prefix += pref;
        g->position += same;
        g->whole += pref == gen;
        g->np++;
    }
    free(ids);
    free(seq);
    return 0;
fail:
    free(ids);
    free(seq);
    return -1;
}

int main(int argc, char **argv) {
    td_blas_core_check(argv); /* the right OpenBLAS kernels for this CPU (blas_core.h) */
    const char *dir = NULL, *pf = NULL;
    int maxt = 64, verbose = 0, only = -1;
    const char *calib_file = NULL;
    td_calib_opts co;
    td_calib_opts_default(&co);
    co.quiet = !getenv("BENCH_QUANT_LOG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--prompts-file") && i + 1 < argc)
            pf = argv[++i];
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc)
            maxt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--calib-seqs") && i + 1 < argc)
            co.seqs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--calib-seed") && i + 1 < argc)
            co.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--calib-file") && i + 1 < argc)
            calib_file = argv[++i];
        else if (!strcmp(argv[i], "--verbose"))
            verbose = 1;
        else {
            fprintf(stderr, "usage: bench_quant --model DIR --prompts-file F [--max-tokens N] "
                            "[--calib-seqs N] [--calib-seed S] [--only K (row, from 0)] "
                            "[--verbose]\n");
            return 2;
        }
    }
    if (!dir || !pf || maxt < 1 || only >= NVARIANTS) {
        fprintf(stderr, "bench_quant: --model and --prompts-file are required (--only < %d)\n",
                NVARIANTS);
        return 2;
    }
    FILE *f = fopen(pf, "r");
    if (!f) {
        perror(pf);
        return 1;
    }
    char line[8192], **prompts = NULL;
    int np = 0;
    size_t prompts_cap = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        if (TD_GROW(prompts, prompts_cap, (size_t)np + 1) != TD_OK) {
            fprintf(stderr, "bench_quant: %s\n", td_error_message());
            fclose(f);
            return 1;
        }
        prompts[np++] = strdup(line);
    }
    fclose(f);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    td_bpe *tok;
    runner a;
    if (td_bpe_load(path, &tok) != TD_OK || runner_init(&a, dir, NULL, &co)) {
        fprintf(stderr, "bench_quant: %s\n", td_error_message());
        return 1;
    }
    co.start = td_calib_start_token(tok);
    int32_t *calib_ids = NULL;
    if (calib_file) { /* calibration text instead of sampling */
        if (td_calib_read_text(tok, calib_file, &calib_ids, &co.ntokens) != TD_OK) {
            fprintf(stderr, "bench_quant: %s\n", td_error_message());
            return 1;
        }
        co.tokens = calib_ids;
    }
    agreement g[NVARIANTS];
    for (int v = 0; v < NVARIANTS; v++) {
        if (only >= 0 && v != only) continue;
        runner b;
        if (verbose) printf("%s:\n", variants[v].name);
        if (runner_init(&b, dir, &variants[v], &co) ||
            measure(&a, &b, tok, prompts, np, maxt, verbose, &g[v])) {
            fprintf(stderr, "bench_quant: %s\n", td_error_message());
            return 1;
        }
        runner_free(&b);
    }
    int first = only >= 0 ? only : 0;
    printf("\nbench_quant: %s, %ld prompts, %ld fp32 greedy tokens (up to %d a prompt, ending "
           "at <|endoftext|>); GPTQ calibration: %d sequences %s, seed %llu\n\n",
           dir, g[first].np, g[first].tot, maxt, co.seqs,
           calib_file ? calib_file : "sampled from the model", (unsigned long long)co.seed);
    char kernels[512];
    printf("kernels: %s\n\n", td_cpu_kernels_describe(kernels, sizeof kernels));
    printf("| quantization | free-running: equal up to first difference | same position | "
           "prompts identical | teacher-forced: same choice | logits rel. L2 error |\n"
           "|---|---|---|---|---|---|\n");
    for (int v = 0; v < NVARIANTS; v++) {
        if (only >= 0 && v != only) continue;
        printf("| %s | %.1f %% | %.1f %% | %ld / %ld | %.2f %% (%ld / %ld) | %.2e |\n",
               variants[v].name, 100.0 * (double)g[v].prefix / (double)g[v].tot,
               100.0 * (double)g[v].position / (double)g[v].tot, g[v].whole, g[v].np,
               100.0 * (double)g[v].tf_same / (double)g[v].tf_tot, g[v].tf_same, g[v].tf_tot,
               sqrt(g[v].err2 / g[v].ref2));
    }
    for (int i = 0; i < np; i++)
        free(prompts[i]);
    free(prompts);
    runner_free(&a);
    td_bpe_free(&tok);
    free(calib_ids);
    return 0;
}
