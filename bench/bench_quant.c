/* Quantization quality: how far int8 greedy decoding follows fp32 on a checkpoint.
 * For each prompt (one per line) the fp32 model decodes greedily; the int8 model then
 *   - decodes on its own (free-running): tokens equal to fp32's up to the first
 *     difference ("prefix") and at the same positions ("position"), and
 *   - is fed fp32's tokens (teacher-forced): the share of steps where its next-token
 *     choice equals fp32's, and the relative L2 error of its logits.
 * Decoding ends at <|endoftext|> (as in serving) or after --max-tokens. Flips are listed
 * with fp32's margin between its top two logits at that step.
 * Variants, one row each: int8 weights with lm_head int16 (tandem serve --int8), all int8
 * (--int8 --int8-lm-head), int8 x int8 products accumulated in int32 (--int8-int32), and
 * bf16 weights (--bf16).
 * usage: bench_quant --model DIR --prompts-file F [--max-tokens N] [--verbose] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/bpe.h"
#include "worker/model/checkpoint.h"
#include "worker/model/model.h"

typedef struct {
    td_model *m;
    td_kv_cache *kv;
    int32_t *blocks;
    float *logits;
    int V;
} runner;

static int runner_init(runner *r, const char *dir, int q8, int head8, int int32, int bf16) {
    memset(r, 0, sizeof *r);
    if (td_checkpoint_load_model(dir, &r->m) != TD_OK) return -1;
    const td_model_config *c = td_model_config_of(r->m);
    int T = c->max_position_embeddings, bt = 16, nb = (T + bt - 1) / bt;
    if (bf16 && td_model_quantize_bf16(r->m) != TD_OK) return -1;
    if (q8 && td_model_quantize_int8(r->m, head8) != TD_OK) return -1;
    if (int32) td_model_set_int8_vnni(r->m, 1);
    if (td_kv_cache_new(r->m, bt, (size_t)nb, &r->kv) != TD_OK) return -1;
    if (td_model_plan_infer(r->m, T, 1) != TD_OK) return -1;
    r->blocks = malloc(sizeof(int32_t) * (size_t)nb);
    for (int i = 0; i < nb; i++) r->blocks[i] = i;
    r->V = c->vocab_size;
    r->logits = malloc(sizeof(float) * (size_t)r->V);
    return 0;
}

static int feed(runner *r, const int32_t *t, int n, int pos) {
    td_infer_seg sg = {t, n, pos, r->blocks};
    return td_model_forward_infer(r->m, r->kv, &sg, 1, r->logits) == TD_OK ? 0 : -1;
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
    td_model_free(&r->m);
    free(r->blocks);
    free(r->logits);
}

typedef struct {
    long tot, prefix, position, whole, np, tf_same, tf_tot;
    double err2, ref2;
} agreement;

/* Runs every prompt of `prompts` (n of them) through fp32 (a) and the quantized model (b). */
static int measure(runner *a, runner *b, td_bpe *tok, char **prompts, int np, int maxt,
                   int verbose, agreement *g) {
    int T = td_model_config_of(a->m)->max_position_embeddings, V = a->V;
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
            if (ta == tb) g->tf_same++;
            else if (verbose && flips++ < 3)
                printf("  prompt %d step %d: fp32 %d, quantized %d, fp32 margin %.4f\n", p, i,
                       ta, tb, margin);
            seq[n + (size_t)i] = ta;
            if (ta == eot) {
                gen = i + 1;
                break;
            }
            if (i + 1 < gen && (feed(a, &seq[n + i], 1, (int)n + i) ||
                                feed(b, &seq[n + i], 1, (int)n + i)))
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
    const char *dir = NULL, *pf = NULL;
    int maxt = 64, verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--prompts-file") && i + 1 < argc) pf = argv[++i];
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) maxt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--verbose")) verbose = 1;
        else {
            fprintf(stderr, "usage: bench_quant --model DIR --prompts-file F [--max-tokens N] "
                            "[--verbose]\n");
            return 2;
        }
    }
    if (!dir || !pf || maxt < 1) {
        fprintf(stderr, "bench_quant: --model and --prompts-file are required\n");
        return 2;
    }
    FILE *f = fopen(pf, "r");
    if (!f) {
        perror(pf);
        return 1;
    }
    char line[8192], **prompts = NULL;
    int np = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        prompts = realloc(prompts, sizeof *prompts * (size_t)(np + 1));
        prompts[np++] = strdup(line);
    }
    fclose(f);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    td_bpe *tok;
    runner a;
    if (td_bpe_load(path, &tok) != TD_OK || runner_init(&a, dir, 0, 0, 0, 0)) {
        fprintf(stderr, "bench_quant: %s\n", td_error_message());
        return 1;
    }
    static const char *names[4] = {"int8, lm_head int16 (--int8)",
                                   "all int8 (--int8 --int8-lm-head)",
                                   "int8 x int8, int32 sums (--int8-int32)", "bf16 (--bf16)"};
    agreement g[4];
    for (int v = 0; v < 4; v++) {
        runner b;
        if (verbose) printf("%s:\n", names[v]);
        if (runner_init(&b, dir, v < 3, v == 1, v == 2, v == 3) ||
            measure(&a, &b, tok, prompts, np, maxt, verbose, &g[v])) {
            fprintf(stderr, "bench_quant: %s\n", td_error_message());
            return 1;
        }
        runner_free(&b);
    }
    printf("\nbench_quant: %s, %ld prompts, %ld fp32 greedy tokens (up to %d a prompt, ending "
           "at <|endoftext|>)\n\n", dir, g[0].np, g[0].tot, maxt);
    printf("| quantization | free-running: equal up to first difference | same position | "
           "prompts identical | teacher-forced: same choice | logits rel. L2 error |\n"
           "|---|---|---|---|---|---|\n");
    for (int v = 0; v < 4; v++)
        printf("| %s | %.1f %% | %.1f %% | %ld / %ld | %.2f %% (%ld / %ld) | %.2e |\n", names[v],
               100.0 * (double)g[v].prefix / (double)g[v].tot,
               100.0 * (double)g[v].position / (double)g[v].tot, g[v].whole, g[v].np,
               100.0 * (double)g[v].tf_same / (double)g[v].tf_tot, g[v].tf_same, g[v].tf_tot,
               sqrt(g[v].err2 / g[v].ref2));
    for (int i = 0; i < np; i++) free(prompts[i]);
    free(prompts);
    runner_free(&a);
    td_bpe_free(&tok);
    return 0;
}
