/* Job file parsing and validation (see jobfile.h). */
#include "worker/train/jobfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/json.h"

static td_status get_long(const cJSON *o, const char *where, const char *key, int req, long lo,
                          long *out) {
    int64_t v = *out;
    TD_TRY(td_json_get_int(o, where, key, req, &v));
    if (v < lo)
        return td_error_set(TD_ERR_INVALID, "%s.%s: must be at least %ld, got %lld", where, key, lo,
                            (long long)v);
    *out = (long)v;
    return TD_OK;
}

static td_status get_num(const cJSON *o, const char *where, const char *key, double lo, double hi,
                         double *out) {
    TD_TRY(td_json_get_double(o, where, key, 0, out));
    if (*out < lo || *out > hi)
        return td_error_set(TD_ERR_INVALID, "%s.%s: %g is outside [%g, %g]", where, key, *out, lo,
                            hi);
    return TD_OK;
}

static td_status copy_str(const cJSON *o, const char *where, const char *key, int req, char *dst,
                          size_t n) {
    const char *s = NULL;
    TD_TRY(td_json_get_string(o, where, key, req, &s));
    if (s) {
        if (strlen(s) >= n)
            return td_error_set(TD_ERR_INVALID, "%s.%s: value is too long", where, key);
        snprintf(dst, n, "%s", s);
    }
    return TD_OK;
}

/* The keys each block may hold. A key tandem does not know is an error, not ignored: a
 * typo ("stpes") would otherwise train with a default the user did not choose. */
static const char *const k_root[] = {"model",     "data",     "train",   "checkpoint", "device",
                                     "precision", "finetune", "distill", NULL};
static const char *const k_data[] = {"train", "val", "seq_len", "overlong", NULL};
static const char *const k_ft[] = {"base", "method", "lora", NULL};
static const char *const k_distill[] = {"teacher",           "alpha", "tau", "kl", "topk",
                                        "teacher_precision", NULL};
static const char *const k_lora[] = {"r", "alpha", "dropout", "target_modules", NULL};
static const char *const k_train[] = {
    "batch_size",   "grad_accum", "steps",        "warmup",    "lr",  "lr_min_ratio",
    "weight_decay", "clip",       "beta1",        "beta2",     "eps", "seed",
    "zero",         "eval_every", "eval_batches", "log_every", NULL};
static const char *const k_ckpt[] = {"dir", "every", "keep", NULL};
/* the model block: the Hugging Face config.json keys tandem reads, and those of a
 * config.json that describe nothing tandem computes differently (ids, versions, dtype) */
static const char *const k_model[] = {"arch",
                                      "architectures",
                                      "model_type",
                                      "hidden_size",
                                      "intermediate_size",
                                      "num_hidden_layers",
                                      "num_attention_heads",
                                      "num_key_value_heads",
                                      "vocab_size",
                                      "max_position_embeddings",
                                      "rms_norm_eps",
                                      "rope_theta",
                                      "tie_word_embeddings",
                                      "hidden_act",
                                      "activation_function",
                                      "layer_norm_epsilon",
                                      "n_embd",
                                      "n_head",
                                      "n_inner",
                                      "n_layer",
                                      "n_positions",
                                      "torch_dtype",
                                      "transformers_version",
                                      "bos_token_id",
                                      "eos_token_id",
                                      "pad_token_id",
                                      "use_cache",
                                      "initializer_range",
                                      "_name_or_path",
                                      NULL};
static const char *const k_all[] = {"distill.teacher",
                                    "distill.alpha",
                                    "distill.tau",
                                    "distill.kl",
                                    "distill.topk",
                                    "distill.teacher_precision",
                                    "finetune.base",
                                    "finetune.method",
                                    "finetune.lora",
                                    "lora.r",
                                    "lora.alpha",
                                    "lora.dropout",
                                    "lora.target_modules",
                                    "data.overlong",
                                    "data.train",
                                    "data.val",
                                    "data.seq_len",
                                    "train.batch_size",
                                    "train.grad_accum",
                                    "train.steps",
                                    "train.warmup",
                                    "train.lr",
                                    "train.lr_min_ratio",
                                    "train.weight_decay",
                                    "train.clip",
                                    "train.beta1",
                                    "train.beta2",
                                    "train.eps",
                                    "train.seed",
                                    "train.zero",
                                    "train.eval_every",
                                    "train.eval_batches",
                                    "train.log_every",
                                    "checkpoint.dir",
                                    "checkpoint.every",
                                    "checkpoint.keep",
                                    NULL};

/* The "finetune" block: base checkpoint (its config.json is the model), method, LoRA. */
static td_status parse_finetune(td_job *j, const cJSON *ft) {
    char where[1100], p[1200];
    snprintf(where, sizeof where, "%s: finetune", j->path);
    TD_TRY(td_json_check_keys(ft, where, k_ft, k_all));
    TD_TRY(copy_str(ft, where, "base", 1, j->base, sizeof j->base));
    char method[16] = "full";
    TD_TRY(copy_str(ft, where, "method", 0, method, sizeof method));
    if (strcmp(method, "full") && strcmp(method, "lora"))
        return td_error_set(TD_ERR_INVALID, "%s.method: \"%s\" is not one of full, lora", where,
                            method);
    j->lora = !strcmp(method, "lora");
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(ft, "lora");
    if (lo && !j->lora)
        return td_error_set(TD_ERR_INVALID, "%s.lora: goes with \"method\": \"lora\"", where);
    snprintf(p, sizeof p, "%s/config.json", j->base);
    cJSON *cfg;
    td_status s = td_json_load_file(p, &cfg);
    if (s != TD_OK)
        return td_error_wrap(s, "%s.base: %s is not a checkpoint directory: ", where, j->base);
    s = td_model_config_from_json(cfg, p, &j->model);
    cJSON_Delete(cfg);
    TD_TRY(s);
    if (!j->lora) return TD_OK;
    td_lora_config *c = &j->lora_cfg;
    c->r = 8;
    c->alpha = 16;
    c->dropout = 0;
    snprintf(where, sizeof where, "%s: finetune.lora", j->path);
    if (lo) TD_TRY(td_json_check_keys(lo, where, k_lora, k_all));
    long r = c->r;
    if (lo) {
        TD_TRY(get_long(lo, where, "r", 0, 0, &r));
        TD_TRY(get_num(lo, where, "alpha", 1e-9, 1e9, &c->alpha));
        TD_TRY(get_num(lo, where, "dropout", 0, 0.99, &c->dropout));
    }
    c->r = (int)r;
    const cJSON *tm = lo ? cJSON_GetObjectItemCaseSensitive(lo, "target_modules") : NULL;
    if (tm && !cJSON_IsArray(tm))
        return td_error_set(TD_ERR_INVALID, "%s.target_modules: expected a list of names", where);
    if (tm) {
        for (int i = 0; i < cJSON_GetArraySize(tm); i++) {
            const cJSON *e = cJSON_GetArrayItem(tm, i);
            if (!cJSON_IsString(e) || strlen(e->valuestring) >= sizeof c->targets[0] ||
                c->n_targets == TD_LORA_MAX_TARGETS)
                return td_error_set(TD_ERR_INVALID,
                                    "%s.target_modules: entry %d is not a module name", where,
                                    i + 1);
            snprintf(c->targets[c->n_targets++], sizeof c->targets[0], "%s", e->valuestring);
        }
    } else { /* PEFT's usual choice: the attention's query and value projections */
        int llama = j->model.arch == TD_ARCH_LLAMA;
        snprintf(c->targets[c->n_targets++], sizeof c->targets[0], llama ? "q_proj" : "c_attn");
        if (llama) snprintf(c->targets[c->n_targets++], sizeof c->targets[0], "v_proj");
    }
    /* checked against the model now, so a bad target or rank fails before any work */
    td_lora *probe = NULL;
    TD_TRY(td_lora_new(&j->model, c, where, 0, &probe));
    td_lora_free(&probe);
    return TD_OK;
}

/* The "distill" block: the teacher checkpoint and the loss's options. The teacher's
 * vocabulary must be the student's (its tokenizer is compared when training starts). */
static td_status parse_distill(td_job *j, const cJSON *d) {
    char where[1100], p[1200];
    snprintf(where, sizeof where, "%s: distill", j->path);
    if (!cJSON_IsObject(d)) return td_error_set(TD_ERR_INVALID, "%s: expected an object", where);
    TD_TRY(td_json_check_keys(d, where, k_distill, k_all));
    TD_TRY(copy_str(d, where, "teacher", 1, j->teacher, sizeof j->teacher));
    if (!j->teacher[0])
        return td_error_set(TD_ERR_INVALID,
                            "%s.teacher: empty; name the teacher's checkpoint "
                            "directory",
                            where);
    j->kd_alpha = 0.5;
    j->kd_tau = 2.0;
    TD_TRY(td_json_get_double(d, where, "alpha", 0, &j->kd_alpha));
    if (!(j->kd_alpha >= 0 && j->kd_alpha <= 1))
        return td_error_set(TD_ERR_INVALID,
                            "%s.alpha: %g is outside [0, 1] (the weight of the data's "
                            "cross-entropy; 1 - alpha weighs the teacher)",
                            where, j->kd_alpha);
    TD_TRY(td_json_get_double(d, where, "tau", 0, &j->kd_tau));
    if (!(j->kd_tau > 0 && j->kd_tau <= 1e4))
        return td_error_set(TD_ERR_INVALID,
                            "%s.tau: the temperature must be above 0 (and at most 1e4), got %g",
                            where, j->kd_tau);
    if (j->kd_tau < 0.01)
        return td_error_set(TD_ERR_INVALID,
                            "%s.tau: %g is too small to compute (softmax(x / tau) underflows); "
                            "use 0.01 or more (1 to 4 is usual)",
                            where, j->kd_tau);
    char kl[16] = "forward";
    TD_TRY(copy_str(d, where, "kl", 0, kl, sizeof kl));
    if (strcmp(kl, "forward") && strcmp(kl, "reverse"))
        return td_error_set(TD_ERR_INVALID, "%s.kl: \"%s\" is not one of forward, reverse", where,
                            kl);
    j->kd_reverse = !strcmp(kl, "reverse");
    long topk = 0;
    TD_TRY(get_long(d, where, "topk", 0, 0, &topk));
    if (topk > j->model.vocab_size)
        return td_error_set(TD_ERR_INVALID, "%s.topk: %ld exceeds the vocabulary (%d)", where, topk,
                            j->model.vocab_size);
    j->kd_topk = (int)topk;
    if (j->kd_reverse && topk == 1)
        return td_error_set(TD_ERR_INVALID,
                            "%s.topk: reverse KL over the teacher's top 1 logit is always 0 (the "
                            "student is renormalized over that one entry); use topk 0 or >= 2",
                            where);
    char prec[16] = "fp32";
    TD_TRY(copy_str(d, where, "teacher_precision", 0, prec, sizeof prec));
    if (!strcmp(prec, "int8"))
        return td_error_set(TD_ERR_INVALID,
                            "%s.teacher_precision: int8 teachers are not built yet (int8 "
                            "weights serve through tandem serve only); use fp32 or bf16",
                            where);
    if (strcmp(prec, "fp32") && strcmp(prec, "bf16"))
        return td_error_set(TD_ERR_INVALID, "%s.teacher_precision: \"%s\" is not one of fp32, bf16",
                            where, prec);
    j->teacher_bf16 = !strcmp(prec, "bf16");
    /* the teacher's config now, so a wrong path or vocabulary fails before any work */
    snprintf(p, sizeof p, "%s/adapter_config.json", j->teacher);
    if (td_fs_exists(p))
        return td_error_set(TD_ERR_INVALID,
                            "%s.teacher: %s is a LoRA adapter, not a model: fold it into its base "
                            "with tandem merge and name the merged checkpoint",
                            where, j->teacher);
    snprintf(p, sizeof p, "%s/config.json", j->teacher);
    cJSON *cfg;
    td_status s = td_json_load_file(p, &cfg);
    if (s != TD_OK)
        return td_error_wrap(s, "%s.teacher: %s is not a checkpoint directory: ", where,
                             j->teacher);
    td_model_config tc;
    s = td_model_config_from_json(cfg, p, &tc);
    cJSON_Delete(cfg);
    TD_TRY(s);
    if (tc.vocab_size != j->model.vocab_size)
        return td_error_set(TD_ERR_INVALID,
                            "%s.teacher: the teacher's vocabulary has %d entries, the student's "
                            "%d: distillation compares their distributions token by token, so "
                            "both need the same tokenizer and vocab_size",
                            where, tc.vocab_size, j->model.vocab_size);
    if (j->seq_len > tc.max_position_embeddings)
        return td_error_set(TD_ERR_INVALID,
                            "%s.teacher: data.seq_len %d exceeds the teacher's "
                            "max_position_embeddings %d",
                            where, j->seq_len, tc.max_position_embeddings);
    return TD_OK;
}

/* 1 when checkpoint directory `ck` lies inside `dir` (both existing; compared resolved). */
static int inside(const char *ck, const char *dir) {
    char *a = realpath(ck, NULL), *b = realpath(dir, NULL);
    size_t n = b ? strlen(b) : 0;
    int in = a && b && !strncmp(a, b, n) && (a[n] == '/' || a[n] == '\0');
    free(a);
    free(b);
    return in;
}

static td_status parse(td_job *j) {
    const char *p = j->path;
    char where[1100];
    const cJSON *root = j->json;
    if (!cJSON_IsObject(root)) return td_error_set(TD_ERR_INVALID, "%s: expected a JSON object", p);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(root, "train");
    const cJSON *ckpt = cJSON_GetObjectItemCaseSensitive(root, "checkpoint");
    TD_TRY(td_json_check_keys(root, p, k_root, k_all));
    snprintf(where, sizeof where, "%s: model", p);
    TD_TRY(td_json_check_keys(model, where, k_model, k_all));
    snprintf(where, sizeof where, "%s: data", p);
    TD_TRY(td_json_check_keys(data, where, k_data, k_all));
    snprintf(where, sizeof where, "%s: train", p);
    TD_TRY(td_json_check_keys(train, where, k_train, k_all));
    snprintf(where, sizeof where, "%s: checkpoint", p);
    TD_TRY(td_json_check_keys(ckpt, where, k_ckpt, k_all));
    const cJSON *ft = cJSON_GetObjectItemCaseSensitive(root, "finetune");
    if (ft) {
        TD_TRY(parse_finetune(j, ft));
        if (model)
            return td_error_set(TD_ERR_INVALID,
                                "%s: a fine-tune's model is its base's (%s/config.json): remove "
                                "the \"model\" block",
                                p, j->base);
    } else {
        if (!model) return td_error_set(TD_ERR_INVALID, "%s: missing the \"model\" block", p);
        snprintf(where, sizeof where, "%s: model", p);
        TD_TRY(td_model_config_from_json(model, where, &j->model));
    }
    if (!data) return td_error_set(TD_ERR_INVALID, "%s: missing the \"data\" block", p);

    snprintf(where, sizeof where, "%s: data", p);
    TD_TRY(copy_str(data, where, "train", 1, j->train_data, sizeof j->train_data));
    TD_TRY(copy_str(data, where, "val", 0, j->val_data, sizeof j->val_data));
    long seq = 0;
    TD_TRY(get_long(data, where, "seq_len", 1, 1, &seq));
    if (seq > j->model.max_position_embeddings)
        return td_error_set(TD_ERR_INVALID,
                            "%s.seq_len: %ld exceeds model.max_position_embeddings %d", where, seq,
                            j->model.max_position_embeddings);
    j->seq_len = (int)seq;
    const cJSON *dist = cJSON_GetObjectItemCaseSensitive(root, "distill");
    if (dist) TD_TRY(parse_distill(j, dist));
    char overlong[16] = "drop";
    TD_TRY(copy_str(data, where, "overlong", 0, overlong, sizeof overlong));
    if (strcmp(overlong, "drop") && strcmp(overlong, "truncate"))
        return td_error_set(TD_ERR_INVALID, "%s.overlong: \"%s\" is not one of drop, truncate",
                            where, overlong);
    j->overlong_truncate = !strcmp(overlong, "truncate");
    if (!ft && cJSON_GetObjectItemCaseSensitive(data, "overlong"))
        return td_error_set(TD_ERR_INVALID,
                            "%s.overlong: applies to fine-tuning data (conversations), not to "
                            "pretraining shards",
                            where);

    long bs = 8, ga = 1;
    j->steps = 100;
    j->warmup = 0;
    j->lr = 3e-4;
    j->lr_min_ratio = 0.1;
    j->weight_decay = 0.0;
    j->clip = 1.0;
    j->beta1 = 0.9;
    j->beta2 = 0.95;
    j->eps = 1e-8;
    j->seed = 1;
    j->eval_every = 0;
    j->eval_batches = 8;
    j->log_every = 10;
    long zero = 0;
    if (train) {
        snprintf(where, sizeof where, "%s: train", p);
        TD_TRY(get_long(train, where, "batch_size", 0, 1, &bs));
        TD_TRY(get_long(train, where, "grad_accum", 0, 1, &ga));
        TD_TRY(get_long(train, where, "steps", 0, 1, &j->steps));
        TD_TRY(get_long(train, where, "warmup", 0, 0, &j->warmup));
        TD_TRY(get_num(train, where, "lr", 0, 10, &j->lr));
        TD_TRY(get_num(train, where, "lr_min_ratio", 0, 1, &j->lr_min_ratio));
        TD_TRY(get_num(train, where, "weight_decay", 0, 10, &j->weight_decay));
        TD_TRY(get_num(train, where, "clip", 0, 1e9, &j->clip));
        TD_TRY(get_num(train, where, "beta1", 0, 0.99999, &j->beta1));
        TD_TRY(get_num(train, where, "beta2", 0, 0.99999999, &j->beta2));
        TD_TRY(get_num(train, where, "eps", 0, 1, &j->eps));
        TD_TRY(get_long(train, where, "seed", 0, 0, &j->seed));
        TD_TRY(get_long(train, where, "zero", 0, 0, &zero));
        TD_TRY(get_long(train, where, "eval_every", 0, 0, &j->eval_every));
        TD_TRY(get_long(train, where, "eval_batches", 0, 1, &j->eval_batches));
        TD_TRY(get_long(train, where, "log_every", 0, 1, &j->log_every));
        if (zero > 1)
            return td_error_set(TD_ERR_INVALID, "%s.zero: only 0 and 1 are defined", where);
    }
    j->batch_size = (int)bs;
    j->grad_accum = (int)ga;
    j->zero = (int)zero;

    snprintf(j->ckpt_dir, sizeof j->ckpt_dir, "runs/default");
    j->ckpt_every = 0;
    j->ckpt_keep = 3;
    if (ckpt) {
        snprintf(where, sizeof where, "%s: checkpoint", p);
        TD_TRY(copy_str(ckpt, where, "dir", 0, j->ckpt_dir, sizeof j->ckpt_dir));
        TD_TRY(get_long(ckpt, where, "every", 0, 0, &j->ckpt_every));
        long keep = j->ckpt_keep;
        TD_TRY(get_long(ckpt, where, "keep", 0, 0, &keep));
        j->ckpt_keep = (int)keep;
    }
    /* checkpoint.dir's rotation (keep) deletes old step directories: never the teacher's
     * or the base's */
    const char *used[2] = {j->teacher, j->base}, *role[2] = {"distill.teacher", "finetune.base"};
    for (int k = 0; k < 2; k++)
        if (used[k][0] && inside(used[k], j->ckpt_dir))
            return td_error_set(TD_ERR_INVALID,
                                "%s: %s %s lies inside checkpoint.dir %s, whose old checkpoints "
                                "are deleted as new ones are written: copy it elsewhere or "
                                "choose another checkpoint.dir",
                                p, role[k], used[k], j->ckpt_dir);
    snprintf(j->device, sizeof j->device, "auto");
    TD_TRY(copy_str(root, p, "device", 0, j->device, sizeof j->device));
    if (strcmp(j->device, "auto") && strcmp(j->device, "cpu") && strcmp(j->device, "cuda"))
        return td_error_set(TD_ERR_INVALID, "%s.device: \"%s\" is not one of auto, cpu, cuda", p,
                            j->device);
    char prec[16] = "fp32";
    TD_TRY(copy_str(root, p, "precision", 0, prec, sizeof prec));
    if (strcmp(prec, "fp32") && strcmp(prec, "bf16"))
        return td_error_set(TD_ERR_INVALID, "%s.precision: \"%s\" is not one of fp32, bf16", p,
                            prec);
    j->bf16 = !strcmp(prec, "bf16");
    return TD_OK;
}

td_status td_job_load(const char *path, td_job *job) {
    memset(job, 0, sizeof *job);
    snprintf(job->path, sizeof job->path, "%s", path);
    TD_TRY(td_json_load_file(path, &job->json));
    td_status s = parse(job);
    if (s != TD_OK) td_job_deinit(job);
    return s;
}

void td_job_deinit(td_job *job) {
    cJSON_Delete(job->json);
    job->json = NULL;
}
