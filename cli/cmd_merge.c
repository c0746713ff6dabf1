/* `tandem merge ADAPTER --out DIR`, `tandem show CKPT` and `tandem eval`: folding a LoRA
 * adapter into a full checkpoint, describing a checkpoint with its lineage, and a
 * checkpoint's loss on token shards. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/json.h"
#include "data/loader.h"
#include "worker/model/checkpoint.h"
#include "worker/model/lora.h"
#include "worker/model/model.h"

static void merge_help(FILE *f) {
    fprintf(f,
            "usage: tandem merge ADAPTER_DIR --out DIR [--base CKPT] [--no-verify]\n"
            "\n"
            "Folds a LoRA adapter (a tandem finetune checkpoint, or any PEFT LoRA adapter of a\n"
            "tandem model) into its base's weights, W += (alpha/r) B A, and writes a full\n"
            "checkpoint to DIR (which must not exist): config.json, model.safetensors, the\n"
            "base's tokenizer, a trainer_state.json whose lineage adds the adapter, SHA256SUMS.\n"
            "The merged checkpoint can be served, fine-tuned again (full or LoRA) or merged\n"
            "into again. See docs/finetune.md.\n"
            "\n"
            "  --out DIR      the new checkpoint directory\n"
            "  --base CKPT    the base checkpoint (default: the adapter's\n"
            "                 base_model_name_or_path)\n"
            "  --no-verify    do not check the base's and the adapter's SHA256SUMS\n"
            "  -h, --help     this text\n");
}

/* trainer_state.json of dir, or an empty object where it has none. */
static cJSON *load_state(const char *dir) {
    char p[1200];
    cJSON *st = NULL;
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    if (!td_fs_exists(p) || td_json_load_file(p, &st) != TD_OK) {
        td_error_clear();
        st = cJSON_CreateObject();
    }
    return st;
}

int td_cmd_merge(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"base", required_argument, 0, 'b'},
                                         {"no-verify", no_argument, 0, 'V'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = NULL, *base = NULL;
    int no_verify = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 'b')
            base = optarg;
        else if (c == 'V')
            no_verify = 1;
        else if (c == 'h') {
            merge_help(stdout);
            return 0;
        } else {
            merge_help(stderr);
            return 2;
        }
    }
    if (optind != argc - 1 || !out) {
        fprintf(stderr, "tandem merge: expected one adapter directory and --out DIR\n");
        merge_help(stderr);
        return 2;
    }
    const char *adir = argv[optind];
    char p[1200], basebuf[1024];
    td_status s = TD_OK;
    cJSON *acfg = NULL;
    snprintf(p, sizeof p, "%s/adapter_config.json", adir);
    if (!td_fs_exists(p))
        s = td_error_set(TD_ERR_NOTFOUND,
                         "%s has no adapter_config.json: is it a LoRA checkpoint (finetune "
                         "method \"lora\")?",
                         adir);
    if (s == TD_OK && !base) {
        const char *b = NULL;
        s = td_json_load_file(p, &acfg);
        if (s == TD_OK) s = td_json_get_string(acfg, p, "base_model_name_or_path", 1, &b);
        if (s == TD_OK) snprintf(basebuf, sizeof basebuf, "%s", b);
        base = basebuf;
        cJSON_Delete(acfg);
    }
    if (s == TD_OK) s = td_checkpoint_check(base, no_verify);
    if (s == TD_OK) s = td_checkpoint_check(adir, no_verify);
    td_model *m = NULL;
    td_lora *lo = NULL;
    char *tok = NULL;
    size_t len = 0;
    if (s == TD_OK) s = td_checkpoint_load_model(base, &m);
    if (s == TD_OK) s = td_lora_load(adir, td_model_config_of(m), &lo);
    if (s == TD_OK) {
        snprintf(p, sizeof p, "%s/tokenizer.json", base);
        if (td_fs_exists(p)) s = td_fs_read_file(p, &tok, &len);
    }
    if (s == TD_OK) s = td_model_merge_lora(m, lo);
    /* (only now: reading it clears the error of a failed load) */
    cJSON *ast = s == TD_OK ? load_state(adir) : NULL, *st = cJSON_CreateObject();
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(ast, "step");
    long step = cJSON_IsNumber(v) ? (long)v->valuedouble : 0;
    if (s == TD_OK) {
        cJSON_AddNumberToObject(st, "step", (double)step);
        cJSON *lin = cJSON_AddObjectToObject(st, "lineage");
        cJSON_AddStringToObject(lin, "produced_by", "tandem merge");
        cJSON_AddStringToObject(lin, "method", "lora merged");
        cJSON_AddStringToObject(lin, "kind", "model");
        const cJSON *alin = cJSON_GetObjectItemCaseSensitive(ast, "lineage");
        cJSON *list = td_checkpoint_lineage(adir);
        if (!cJSON_GetObjectItemCaseSensitive(alin, "ancestors")) {
            /* a PEFT adapter from elsewhere: the base's lineage, then the adapter */
            cJSON *self = cJSON_DetachItemFromArray(list, cJSON_GetArraySize(list) - 1);
            cJSON_Delete(list);
            list = td_checkpoint_lineage(base);
            cJSON_AddItemToArray(list, self);
        }
        cJSON_AddItemToObject(lin, "ancestors", list);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(alin, "data");
        if (d) cJSON_AddItemToObject(lin, "data", cJSON_Duplicate(d, 1));
        td_checkpoint_save_args a = {
            .step = step, .model = m, .trainer_state = st, .tokenizer_json = tok, .dir = out};
        char done[4096];
        s = td_checkpoint_save(&a, done, sizeof done);
        if (s == TD_OK) {
            const td_lora_config *lc = td_lora_config_of(lo);
            printf("merge: %s (r %d, alpha %g, %zu parameters) into %s -> %s\n", adir, lc->r,
                   lc->alpha, td_lora_num_params(lo), base, done);
        }
    }
    cJSON_Delete(ast);
    cJSON_Delete(st);
    free(tok);
    td_lora_free(&lo);
    td_model_free(&m);
    return s == TD_OK ? 0 : td_cli_fail("merge", s);
}

/* ---------------------------------------------------------------------------------------- */

static void show_help(FILE *f) {
    fprintf(f,
            "usage: tandem show CKPT [--json]\n"
            "\n"
            "Describes a checkpoint (a full model or a LoRA adapter): its model, step and loss,\n"
            "what made it, its data, and its lineage -- every checkpoint it descends from, with\n"
            "step, weights' sha256 and data, oldest first, ending with itself.\n"
            "\n"
            "  --json       print the lineage as JSON (a list, oldest first)\n"
            "  -h, --help   this text\n");
}

static void print_entry(int i, const cJSON *e) {
    const cJSON *v;
    printf("  %d. %s", i, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "path")));
    if ((v = cJSON_GetObjectItemCaseSensitive(e, "produced_by")) && cJSON_IsString(v))
        printf("  %s", v->valuestring);
    if ((v = cJSON_GetObjectItemCaseSensitive(e, "method")) && cJSON_IsString(v))
        printf(" (%s)", v->valuestring);
    if ((v = cJSON_GetObjectItemCaseSensitive(e, "step")) && cJSON_IsNumber(v))
        printf("  step %ld", (long)v->valuedouble);
    printf("\n");
    if ((v = cJSON_GetObjectItemCaseSensitive(e, "weights_sha256")) && cJSON_IsString(v))
        printf("     weights sha256 %s\n", v->valuestring);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "data");
    if (cJSON_IsObject(d)) {
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "path"));
        const char *sha = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "sha256"));
        const char *man =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "manifest_sha256"));
        printf("     data %s", path ? path : "?");
        if (sha && *sha) printf("  sha256 %s", sha);
        if (man && *man) printf("  manifest sha256 %s", man); /* manifest.json, chat.json */
        printf("\n");
    }
}

int td_cmd_show(int argc, char **argv) {
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'h') {
            show_help(stdout);
            return 0;
        } else {
            show_help(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tandem show: expected one checkpoint directory\n");
        show_help(stderr);
        return 2;
    }
    const char *dir = argv[optind];
    char p[1200];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    int adapter = td_fs_exists(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!adapter && !td_fs_exists(p)) {
        td_status s = td_error_set(TD_ERR_NOTFOUND,
                                   "%s is not a checkpoint: it has neither config.json nor "
                                   "adapter_config.json",
                                   dir);
        return td_cli_fail("show", s);
    }
    cJSON *st = load_state(dir);
    cJSON *list = td_checkpoint_lineage(dir);
    if (json) {
        char *text = cJSON_Print(list);
        printf("%s\n", text);
        free(text);
    } else {
        printf("checkpoint %s\n", dir);
        cJSON *cfg = NULL;
        if (adapter) {
            snprintf(p, sizeof p, "%s/adapter_config.json", dir);
            if (td_json_load_file(p, &cfg) == TD_OK) {
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(cfg, "r");
                const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, "lora_alpha");
                char *t =
                    cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(cfg, "target_modules"));
                const cJSON *dp = cJSON_GetObjectItemCaseSensitive(cfg, "lora_dropout");
                printf("  kind      LoRA adapter: r %d, alpha %g, dropout %g, targets %s\n",
                       cJSON_IsNumber(r) ? r->valueint : 0, cJSON_IsNumber(a) ? a->valuedouble : 0,
                       cJSON_IsNumber(dp) ? dp->valuedouble : 0, t ? t : "?");
                printf("  base      %s\n", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                                               cfg, "base_model_name_or_path")));
                free(t);
            }
        } else {
            td_model_config mc;
            if (td_json_load_file(p, &cfg) == TD_OK &&
                td_model_config_from_json(cfg, p, &mc) == TD_OK)
                printf("  kind      model: %s, %d layers, hidden %d, %d heads (%d kv), vocab %d, "
                       "context %d\n",
                       td_arch_name(mc.arch), mc.num_hidden_layers, mc.hidden_size,
                       mc.num_attention_heads, mc.num_key_value_heads, mc.vocab_size,
                       mc.max_position_embeddings);
        }
        td_error_clear();
        cJSON_Delete(cfg);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(st, "step");
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(st, "loss");
        if (cJSON_IsNumber(v))
            printf("  step      %ld%s", (long)v->valuedouble, cJSON_IsNumber(l) ? "" : "\n");
        if (cJSON_IsNumber(v) && cJSON_IsNumber(l)) printf(", loss %.4f\n", l->valuedouble);
        printf("lineage (oldest first, %d entr%s):\n", cJSON_GetArraySize(list),
               cJSON_GetArraySize(list) == 1 ? "y" : "ies");
        for (int i = 0; i < cJSON_GetArraySize(list); i++)
            print_entry(i + 1, cJSON_GetArrayItem(list, i));
    }
    cJSON_Delete(list);
    cJSON_Delete(st);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static void eval_help(FILE *f) {
    fprintf(f, "usage: tandem eval --model CKPT --data DIR [--split val] [--seq-len T]\n"
               "                  [--batch B] [--batches N] [--adapter DIR] [--no-verify]\n"
               "\n"
               "The mean next-token loss of a checkpoint on token shards (tandem prep's output):\n"
               "the first N batches of B windows of T+1 tokens of the split, in order, the way\n"
               "training's validation reads them. Compare a base before and after fine-tuning\n"
               "(forgetting), or checkpoints of one run.\n"
               "\n"
               "  --model CKPT   checkpoint directory\n"
               "  --adapter DIR  a LoRA adapter on the model (not merged)\n"
               "  --data DIR     shards directory (or one .bin file)\n"
               "  --split NAME   shards whose names contain NAME (default val)\n"
               "  --seq-len T    window length (default 128, at most the model's context)\n"
               "  --batch B      windows per batch (default 8)\n"
               "  --batches N    batches (default 16; fewer if the split is smaller)\n"
               "  --no-verify    do not check the checkpoint's SHA256SUMS\n"
               "  -h, --help     this text\n");
}

static int positive(const char *opt, const char *v, long *out) {
    char *end;
    *out = strtol(v, &end, 10);
    if (*end || end == v || *out < 1 || *out > 1 << 20) {
        fprintf(stderr, "tandem eval: %s needs a positive number, got '%s'\n", opt, v);
        return 0;
    }
    return 1;
}

int td_cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"adapter", required_argument, 0, 'a'},
        {"data", required_argument, 0, 'd'},    {"split", required_argument, 0, 's'},
        {"seq-len", required_argument, 0, 'T'}, {"batch", required_argument, 0, 'B'},
        {"batches", required_argument, 0, 'n'}, {"no-verify", no_argument, 0, 'V'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *model = NULL, *adapter = NULL, *data = NULL, *split = "val";
    long T = 128, B = 8, nb = 16;
    int no_verify = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'a':
            adapter = optarg;
            break;
        case 'd':
            data = optarg;
            break;
        case 's':
            split = optarg;
            break;
        case 'T':
            if (!positive("--seq-len", optarg, &T)) return 2;
            break;
        case 'B':
            if (!positive("--batch", optarg, &B)) return 2;
            break;
        case 'n':
            if (!positive("--batches", optarg, &nb)) return 2;
            break;
        case 'V':
            no_verify = 1;
            break;
        case 'h':
            eval_help(stdout);
            return 0;
        default:
            eval_help(stderr);
            return 2;
        }
    }
    if (optind != argc || !model || !data) {
        fprintf(stderr, "tandem eval: --model and --data are required\n");
        eval_help(stderr);
        return 2;
    }
    td_model *m = NULL;
    td_lora *lo = NULL;
    td_loader *l = NULL;
    int32_t *tok = NULL, *tgt = NULL;
    td_status s = td_checkpoint_check(model, no_verify);
    if (s == TD_OK && adapter) s = td_checkpoint_check(adapter, no_verify);
    if (s == TD_OK) s = td_checkpoint_load_model(model, &m);
    if (s == TD_OK && T > td_model_config_of(m)->max_position_embeddings)
        s = td_error_set(TD_ERR_INVALID, "--seq-len %ld exceeds the model's context (%d)", T,
                         td_model_config_of(m)->max_position_embeddings);
    if (s == TD_OK && adapter) s = td_lora_load(adapter, td_model_config_of(m), &lo);
    if (s == TD_OK && lo) s = td_model_set_lora(m, lo);
    if (s == TD_OK) s = td_loader_open(data, split, (int)B, (int)T, 0, 0, &l);
    if (s == TD_OK && td_loader_max_token(l) >= td_model_config_of(m)->vocab_size)
        s = td_error_set(TD_ERR_INVALID,
                         "%s holds token id %d, outside the model's vocabulary (%d)", data,
                         td_loader_max_token(l), td_model_config_of(m)->vocab_size);
    if (s == TD_OK) s = td_model_plan(m, (int)B, (int)T, 0);
    tok = malloc(sizeof(int32_t) * (size_t)(B * T));
    tgt = malloc(sizeof(int32_t) * (size_t)(B * T));
    if (s == TD_OK && (!tok || !tgt)) s = td_error_set(TD_ERR_NOMEM, "out of memory");
    double sum = 0;
    long done = 0, avail = s == TD_OK ? (long)(td_loader_num_windows(l) / (size_t)B) : 0;
    if (nb > avail) nb = avail;
    for (long b = 0; s == TD_OK && b < nb; b++, done++) {
        double loss = 0;
        td_loader_next(l, tok, tgt);
        s = td_model_forward(m, tok, tgt, (int)B, (int)T, &loss);
        sum += loss;
    }
    if (s == TD_OK)
        printf("eval: %s%s%s on %s (%s): loss %.6f over %ld batches of %ld x %ld tokens\n", model,
               adapter ? " + " : "", adapter ? adapter : "", data, split,
               done ? sum / (double)done : NAN, done, B, T);
    free(tok);
    free(tgt);
    td_loader_free(&l);
    td_lora_free(&lo); /* before the model: it holds buffers of the model's backend */
    td_model_free(&m);
    return s == TD_OK ? 0 : td_cli_fail("eval", s);
}
