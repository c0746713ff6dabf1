/* `tandem generate --model DIR --prompt TEXT`: sampling from a checkpoint with the
 * inference engine (worker/infer/engine.h: KV cache, the serving sampler — temperature 0
 * is greedy; otherwise softmax(logits / temp) restricted to the top-k ids and then to the
 * smallest set whose mass reaches top-p). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/grow.h"
#include "data/bpe.h"
#include "worker/infer/engine.h"
#include "worker/infer/replica.h"
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
            "  --adapter DIR         apply the LoRA adapter in DIR (tandem finetune's, or PEFT's)\n"
            "                        unmerged, to generation and to --logits-out\n"
            "  --logits-out FILE     write the prompt's tokens and logits (T x V) as safetensors\n"
            "  --no-verify           load the checkpoint without checking its SHA256SUMS\n"
            "  -h, --help            this text\n");
}

/* TD_ERR_INVALID (no message: the caller explains the form) when s is not comma-separated
 * ids; TD_ERR_NOMEM with its message. */
static td_status parse_tokens(const char *s, int32_t **out, int *n) {
    int k = 0;
    size_t cap = 0;
    int32_t *ids = NULL;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            free(ids);
            return TD_ERR_INVALID;
        }
        td_status st = TD_GROW(ids, cap, (size_t)k + 1);
        if (st != TD_OK) {
            free(ids);
            return st;
        }
        ids[k++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ')
            p++;
    }
    *out = ids;
    *n = k;
    return TD_OK;
}

int td_cmd_generate(int argc, char **argv) {
    /* many prompts from a file: the serving runtime's batched engine, with serve's options
     * (which take --max-new-tokens as --max-tokens) */
    int files = 0, single = 0;
    for (int i = 1; i < argc; i++) {
        files += !strcmp(argv[i], "--prompts-file") || !strncmp(argv[i], "--prompts-file=", 15);
        single += !strcmp(argv[i], "--prompt") || !strncmp(argv[i], "--prompt=", 9) ||
                  !strcmp(argv[i], "--tokens") || !strncmp(argv[i], "--tokens=", 9);
    }
    if (files && single) {
        fprintf(stderr, "tandem generate: --prompts-file and --prompt/--tokens exclude each "
                        "other\n");
        return 2;
    }
    if (files) return td_serve_main(argc, argv, "generate", NULL, NULL);
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"max-new-tokens", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"top-k", required_argument, 0, 'k'},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"seed", required_argument, 0, 's'},
                                         {"logits-out", required_argument, 0, 'l'},
                                         {"adapter", required_argument, 0, 'a'},
                                         {"no-verify", no_argument, 0, 'V'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model_dir = NULL, *prompt = NULL, *tok_arg = NULL, *logits_out = NULL;
    const char *adapter = NULL;
    long max_new = 200, top_k = 0, seed = 1;
    double temp = 0.8, top_p = 1.0;
    int c, no_verify = 0;
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
        case 'a':
            adapter = optarg;
            break;
        case 'V':
            no_verify = 1;
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
    td_model *m = NULL;
    td_lora *lo = NULL; /* freed before the model: it holds buffers of the model's backend */
    td_status s = td_checkpoint_check(model_dir, no_verify);
    if (s == TD_OK && adapter) s = td_checkpoint_check(adapter, no_verify);
    if (s == TD_OK) s = td_checkpoint_load_model(model_dir, &m);
    if (s == TD_OK && adapter) s = td_lora_load(adapter, td_model_config_of(m), &lo);
    if (s == TD_OK && lo) s = td_model_set_lora(m, lo);
    if (s != TD_OK) {
        td_lora_free(&lo);
        td_model_free(&m);
        return td_cli_fail("generate", s);
    }
    const td_model_config *cfg = td_model_config_of(m);
    int V = cfg->vocab_size, maxT = cfg->max_position_embeddings;

    int32_t *ctx = NULL;
    int n = 0;
    td_bpe *tok = NULL;
    size_t printed = 0;

    if (tok_arg) {
        s = parse_tokens(tok_arg, &ctx, &n);
        if (s == TD_ERR_NOMEM) {
            td_model_free(&m);
            return td_cli_fail("generate", s);
        }
        if (s != TD_OK || n == 0) {
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
            s = TD_GROW(ctx, cap, 1);
            if (s != TD_OK) goto out;
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
    int win = n < maxT ? n : maxT; /* the forward of --logits-out; generation uses the engine */
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
    if (max_new > 0) { /* the inference engine: KV cache, the serving sampler */
        td_engine *e = NULL;
        td_engine_opts eo = {.max_seqs = 1};
        /* the options as a request, through the defaults every request takes */
        Tandem__Sampling rq = TANDEM__SAMPLING__INIT;
        rq.has_temperature = rq.has_top_k = rq.has_top_p = rq.has_seed = 1;
        rq.temperature = (float)temp;
        rq.top_k = (int32_t)top_k;
        rq.top_p = (float)top_p;
        rq.seed = (uint64_t)seed;
        rq.has_max_tokens = 1;
        rq.max_tokens = max_new > maxT ? maxT : (int32_t)max_new;
        td_sampling sp = td_sampling_of(&rq, TD_API_OPENAI, 0, NULL, (uint64_t)seed);
        int id, active = 1, k = 0;
        int start = n < maxT ? 0 : n - maxT + 1; /* keep the newest tokens of a long prompt */
        td_infer_model *im = NULL;
        s = td_infer_model_new(m, &im);
        if (s == TD_OK) m = NULL; /* the serving model has it */
        int aid = 0;
        if (s == TD_OK && lo) s = td_infer_add_adapter(im, lo, &aid);
        if (s == TD_OK) s = td_engine_new(im, tok, &eo, &e);
        if (s == TD_OK) s = td_engine_submit_adapter(e, aid, ctx + start, n - start, &sp, &id);
        while (s == TD_OK && active) {
            s = td_engine_step(e, &active);
            if (prompt) { /* whole characters as they complete */
                size_t len;
                const char *t = td_engine_text(e, id, &len);
                fwrite(t + printed, 1, len - printed, stdout);
                printed = len;
            } else {
                int cnt;
                const int32_t *t = td_engine_tokens(e, id, &cnt);
                for (; k < cnt; k++)
                    printf("%s%d", k ? "," : "", t[k]);
            }
            fflush(stdout);
        }
        td_engine_free(&e);
        td_lora_free(&lo);
        td_infer_model_free(&im);
    }
    if (max_new > 0) printf("\n");
out:
    td_lora_free(&lo);
    td_model_free(&m);
    td_bpe_free(&tok);

    free(ctx);
    if (s != TD_OK) return td_cli_fail("generate", s);
    return 0;
}
