/* `tandem generate --model DIR --prompt TEXT`: sampling from a checkpoint.
 *
 * Each new token re-runs the forward pass over the context (no KV cache yet; the serving
 * engine brings one). Sampling: temperature 0 is greedy; otherwise softmax(logits / temp)
 * restricted to the top-k ids and then to the smallest set whose mass reaches top-p. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/rng.h"
#include "data/bpe.h"
#include "worker/model/checkpoint.h"
#include "worker/model/safetensors.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: tandem generate --model DIR (--prompt TEXT | --tokens IDS) [options]\n"
            "       tandem generate --model DIR --prompts-file F [serve options]  (batched,\n"
            "       JSON lines out; see tandem serve --help)\n"
            "\n"
            "Continues a prompt with a checkpoint's model and prints the text. See\n"
            "docs/generate.md.\n"
            "\n"
            "  --model DIR           checkpoint directory (config.json, model.safetensors,\n"
            "                        tokenizer.json)\n"
            "  --prompt TEXT         prompt text, encoded with the checkpoint's tokenizer.json\n"
            "  --tokens IDS          prompt as comma-separated token ids instead\n"
            "  --max-new-tokens N    tokens to generate (default 200; 0 = only score the prompt)\n"
            "  --temperature T       0 = greedy (default 0.8)\n"
            "  --top-k K             keep the K most likely tokens (default 0 = all)\n"
            "  --top-p P             nucleus sampling mass (default 1.0 = off)\n"
            "  --seed N              sampling seed (default 1)\n"
            "  --logits-out FILE     write the prompt's tokens and logits (T x V) as safetensors\n"
            "  -h, --help            this text\n");
}

typedef struct {
    int id;
    float p;
} cand;

static int cmp_cand(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    return (x < y) - (x > y);
}

static int sample(const float *logits, int V, double temp, int top_k, double top_p, td_rng *rng,
                  cand *buf) {
    int best = 0;
    for (int j = 1; j < V; j++)
        if (logits[j] > logits[best]) best = j;
    if (temp <= 0) return best;
    double sum = 0;
    for (int j = 0; j < V; j++) {
        buf[j].id = j;
        buf[j].p = (float)exp((logits[j] - logits[best]) / temp);
        sum += buf[j].p;
    }
    for (int j = 0; j < V; j++)
        buf[j].p = (float)(buf[j].p / sum);
    qsort(buf, (size_t)V, sizeof *buf, cmp_cand);
    int n = V;
    if (top_k > 0 && top_k < n) n = top_k;
    double mass = 0;
    for (int j = 0; j < n; j++) {
        mass += buf[j].p;
        if (mass >= top_p) {
            n = j + 1;
            break;
        }
    }
    double tot = 0;
    for (int j = 0; j < n; j++)
        tot += buf[j].p;
    double r = td_rng_uniform_f64(rng) * tot, acc = 0;
    for (int j = 0; j < n; j++) {
        acc += buf[j].p;
        if (r < acc) return buf[j].id;
    }
    return buf[n - 1].id;
}

static int parse_tokens(const char *s, int32_t **out, int *n) {
    int cap = 16, k = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (k == cap) ids = realloc(ids, sizeof *ids * (size_t)(cap *= 2));
        ids[k++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ')
            p++;
    }
    *out = ids;
    *n = k;
    return 0;
}

int td_cmd_generate(int argc, char **argv) {
    /* many prompts from a file: the batched engine of `tandem serve` */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--prompts-file") || !strncmp(argv[i], "--prompts-file=", 15)) {
            for (int k = 1; k < argc; k++)
                if (!strcmp(argv[k], "--max-new-tokens")) argv[k] = "--max-tokens";
            return td_serve_main(argc, argv, "generate", NULL, NULL);
        }
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"max-new-tokens", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"top-k", required_argument, 0, 'k'},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"seed", required_argument, 0, 's'},
                                         {"logits-out", required_argument, 0, 'l'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model_dir = NULL, *prompt = NULL, *tok_arg = NULL, *logits_out = NULL;
    long max_new = 200, top_k = 0, seed = 1;
    double temp = 0.8, top_p = 1.0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'm':
            model_dir = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 't':
            tok_arg = optarg;
            break;
        case 'l':
            logits_out = optarg;
            break;
        case 'n':
            max_new = strtol(optarg, &end, 10);
            break;
        case 'k':
            top_k = strtol(optarg, &end, 10);
            break;
        case 's':
            seed = strtol(optarg, &end, 10);
            break;
        case 'T':
            temp = strtod(optarg, &end);
            break;
        case 'P':
            top_p = strtod(optarg, &end);
            break;
        case 'h':
            help(stdout);
            return 0;
        default:
            help(stderr);
            return 2;
        }
        if (end && (*end || max_new < 0 || top_k < 0 || temp < 0 || top_p <= 0 || top_p > 1)) {
            fprintf(stderr, "tandem generate: bad option value '%s' (see --help)\n", optarg);
            return 2;
        }
    }
    if (!model_dir || (!prompt && !tok_arg) || (prompt && tok_arg) || optind != argc) {
        fprintf(stderr, "tandem generate: need --model and exactly one of --prompt/--tokens\n");
        help(stderr);
        return 2;
    }
    td_model *m;
    td_status s = td_checkpoint_load_model(model_dir, &m);
    if (s != TD_OK) return td_cli_fail("generate", s);
    const td_model_config *cfg = td_model_config_of(m);
    int V = cfg->vocab_size, maxT = cfg->max_position_embeddings;

    int32_t *ctx = NULL;
    int n = 0;
    td_bpe *tok = NULL;
    char *text = NULL;
    size_t text_cap = 0, printed = 0;
    if (tok_arg) {
        if (parse_tokens(tok_arg, &ctx, &n) != 0 || n == 0) {
            fprintf(stderr, "tandem generate: --tokens wants comma-separated ids, got '%s'\n",
                    tok_arg);
            td_model_free(&m);
            return 2;
        }
    } else {
        char p[4200];
        snprintf(p, sizeof p, "%s/tokenizer.json", model_dir);
        s = td_bpe_load(p, &tok);
        if (s != TD_OK) {
            td_model_free(&m);
            return td_cli_fail("generate", s);
        }
        size_t cap = 0;
        n = (int)td_bpe_encode(tok, prompt, strlen(prompt), &ctx, &cap);
        if (n == 0) {
            int eot = td_bpe_special_id(tok, "<|endoftext|>");
            ctx = realloc(ctx, sizeof *ctx);
            ctx[n++] = eot >= 0 && eot < V ? eot : 0;
        }
    }
    for (int i = 0; i < n; i++)
        if (ctx[i] >= V) {
            fprintf(stderr, "tandem generate: token %d is outside the vocabulary (%d)\n", ctx[i],
                    V);
            td_model_free(&m);
            free(ctx);
            return 2;
        }
    int total = n + (int)max_new;
    ctx = realloc(ctx, sizeof *ctx * (size_t)total);
    int win = n < maxT ? (total < maxT ? total : maxT) : maxT;
    s = td_model_plan(m, 1, win, 0);
    if (s != TD_OK) goto out;

    if (logits_out) {
        int T = n < maxT ? n : maxT;
        s = td_model_forward(m, ctx + (n - T), NULL, 1, T, NULL);
        if (s != TD_OK) goto out;
        td_st_writer *w = td_st_writer_new();
        int64_t tshape[1] = {T}, lshape[2] = {T, V};
        td_st_writer_add(w, "tokens", TD_DT_I32, 1, tshape, ctx + (n - T), 0);
        td_st_writer_add(w, "logits", TD_DT_F32, 2, lshape, td_model_logits(m), 0);
        s = td_st_writer_save(w, logits_out);
        td_st_writer_free(&w);
        if (s != TD_OK) goto out;
    }
    if (prompt) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    td_rng rng;
    td_rng_seed(&rng, (uint64_t)seed);
    cand *buf = malloc(sizeof *buf * (size_t)V);
    for (int k = 0; k < max_new && s == TD_OK; k++) {
        int T = n < maxT ? n : maxT;
        s = td_model_forward(m, ctx + (n - T), NULL, 1, T, NULL);
        if (s != TD_OK) break;
        const float *last = td_model_logits(m) + (size_t)(T - 1) * V;
        int next = sample(last, V, temp, (int)top_k, top_p, &rng, buf);
        ctx[n++] = next;
        if (prompt) {
            /* print the new bytes of the decoded continuation; a token may end inside a
             * multi-byte character, so decode from the prompt's end each time */
            size_t len = td_bpe_decode(tok, ctx + (n - k - 1), (size_t)k + 1, &text, &text_cap);
            fwrite(text + printed, 1, len - printed, stdout);
            printed = len;
            fflush(stdout);
        } else {
            printf("%s%d", k ? "," : "", next);
        }
    }
    free(buf);
    if (max_new > 0) printf("\n");
out:
    td_model_free(&m);
    td_bpe_free(&tok);
    free(text);
    free(ctx);
    if (s != TD_OK) return td_cli_fail("generate", s);
    return 0;
}
