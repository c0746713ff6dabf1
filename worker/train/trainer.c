/* The trainer, one rank or data-parallel (see trainer.h). */
#include "worker/train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "data/bpe.h"
#include "data/chat.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "worker/model/checkpoint.h"
#include "worker/model/lora.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"
#include "worker/train/adamw.h"
#include "worker/train/dp.h"
#include "worker/train/sft_data.h"

typedef struct {
    const td_job *job;
    td_comm *comm, *self;
    int rank, size, local_B;
    td_model *model;
    td_loader *train, *val;
    float *adam_m, *adam_v; /* full moments, or this rank's ZeRO-1 slice */
    float *full_m, *full_v; /* ZeRO-1: gathered moments for checkpoints */
    td_grad_sync *sync;
    td_zero1 zero;
    int32_t *tokens, *targets;
    char *tokenizer_json;
    char parent[1024];
    FILE *metrics, *trace;
    td_backend *be; /* where the model trains (the CPU, or this rank's GPU) */
    td_comm *dev;   /* gradient all-reduce between device memories (NCCL), or NULL */
    int moved;      /* the moments live in backend memory (a device backend) */
    /* fine-tuning: conversations instead of token windows, and what the weights came from */
    td_sft_set sft_set, sft_val_set;
    td_sft_loader *sft, *sft_val;
    td_lora *lora;       /* adapters train; the base is frozen */
    cJSON *base_lineage; /* the entries a fine-tune's lineage lists: its ancestors */
    char data_sha[65];
    int data_prepared; /* fine-tuning data from tandem prep --chat (data_sha: its chat.json) */
    /* distillation: the frozen teacher (forward only) and the loss's options */
    td_model *teacher;
    td_kd_opts kd;
    cJSON *teacher_lineage;
    /* how the data was distilled, for the lineage: a corpus's manifest "selection" block
     * (tandem select), or the "<file>.source.json" beside a JSONL file (tandem synthesize) */
    cJSON *data_origin;
    const char *data_origin_key;
} trainer;

/* The command a run belongs to: train, finetune or distill. */
static const char *command_of(const trainer *t) {
    return t->teacher ? "distill" : t->job->base[0] ? "finetune" : "train";
}

/* The student's forward. With a teacher and kd set (a training step), the teacher's forward
 * on the same tokens comes first and the loss is alpha * CE + (1 - alpha) * KD; otherwise
 * (validation) the loss is the data's cross-entropy alone, comparable across methods. */
static td_status fwd_kd(trainer *t, const int32_t *tok, const int32_t *tgt, int T, double *loss,
                        int kd) {
    if (t->teacher) {
        if (kd) {
            double unused;
            TD_TRY(td_model_forward(t->teacher, tok, NULL, t->local_B, T, &unused));
            TD_TRY(td_model_set_kd(t->model, td_model_logits(t->teacher), &t->kd));
        } else {
            TD_TRY(td_model_set_kd(t->model, NULL, NULL));
        }
    }
    return td_model_forward(t->model, tok, tgt, t->local_B, T, loss);
}

static td_status fwd(trainer *t, const int32_t *tok, const int32_t *tgt, int T, double *loss) {
    return fwd_kd(t, tok, tgt, T, loss, 0);
}

/* The next batch of this rank: token windows (T = seq_len) or padded examples. */
static void data_next(trainer *t, td_loader *l, td_sft_loader *sl, int *T) {
    if (sl) {
        td_sft_loader_next(sl, t->tokens, t->targets, T);
    } else {
        td_loader_next(l, t->tokens, t->targets);
        *T = t->job->seq_len;
    }
}

static long count_targets(const int32_t *tgt, size_t n) {
    long c = 0;
    for (size_t i = 0; i < n; i++)
        c += tgt[i] >= 0;
    return c;
}

/* What the optimizer updates: all parameters, or the adapters' only. */
static size_t n_trained(const trainer *t) {
    return t->lora ? td_lora_num_params(t->lora) : td_model_num_params(t->model);
}

/* Copies n floats of backend memory to a new host buffer (*out NULL: failed, status set). */
static td_status to_host(trainer *t, const float *src, size_t n, float **out) {
    *out = malloc(n * sizeof(float));
    if (!*out) return td_error_set(TD_ERR_NOMEM, "out of memory copying the optimizer state");
    return td_backend_download(t->be, *out, src, n * sizeof(float));
}

/* Mean validation loss over eval_batches global batches (each rank its slice). */
static double evaluate(trainer *t) {
    if (t->sft_val) { /* the mean over every counted token of the first eval_batches batches */
        td_sft_loader_reset(t->sft_val);
        long nb = t->job->eval_batches, avail = td_sft_loader_batches(t->sft_val);
        if (nb > avail) nb = avail;
        double sums[2] = {0, 0};
        for (long b = 0; b < nb; b++) {
            double loss = 0;
            int T;
            data_next(t, NULL, t->sft_val, &T);
            fwd(t, t->tokens, t->targets, T, &loss);
            long c = count_targets(t->targets, (size_t)t->local_B * T);
            sums[0] += loss * (double)c;
            sums[1] += (double)c;
        }
        td_comm_allreduce(t->comm, sums, 2, TD_COMM_F64);
        return sums[1] > 0 ? sums[0] / sums[1] : NAN;
    }
    if (!t->val) return NAN;
    const td_job *j = t->job;
    td_loader_reset(t->val);
    long nb = j->eval_batches;
    size_t avail = td_loader_num_windows(t->val) / (size_t)j->batch_size;
    if ((size_t)nb > avail) nb = (long)avail;
    double sum = 0;
    for (long b = 0; b < nb; b++) {
        double loss = 0;
        td_loader_next(t->val, t->tokens, t->targets);
        fwd(t, t->tokens, t->targets, t->job->seq_len, &loss);
        sum += loss;
    }
    td_comm_allreduce(t->comm, &sum, 1, TD_COMM_F64);
    return nb ? sum / (double)nb / t->size : NAN;
}

static td_status save_checkpoint(trainer *t, long step, double loss, char *out, size_t outn) {
    cJSON *st = cJSON_CreateObject();
    cJSON_AddNumberToObject(st, "step", (double)step);
    cJSON_AddNumberToObject(st, "loss", loss);
    int64_t epoch, cursor;
    if (t->sft)
        td_sft_loader_get_pos(t->sft, &epoch, &cursor);
    else
        td_loader_get_pos(t->train, &epoch, &cursor);
    cJSON *data = cJSON_AddObjectToObject(st, "data");
    cJSON_AddNumberToObject(data, "epoch", (double)epoch);
    cJSON_AddNumberToObject(data, "cursor", (double)cursor);
    cJSON_AddNumberToObject(data, "seed", (double)t->job->seed);
    cJSON_AddNumberToObject(data, "seq_len", t->job->seq_len);
    cJSON_AddNumberToObject(data, "global_batch", t->job->batch_size);
    cJSON_AddNumberToObject(data, "grad_accum", t->job->grad_accum);
    /* The trainer draws no random numbers after initialization (no dropout); the RNG entry
     * records the seed the data order derives from. */
    cJSON *rng = cJSON_AddObjectToObject(st, "rng");
    cJSON_AddStringToObject(rng, "kind", "xoshiro256**");
    cJSON_AddNumberToObject(rng, "seed", (double)t->job->seed);
    cJSON *lin = cJSON_AddObjectToObject(st, "lineage");
    char by[32];
    snprintf(by, sizeof by, "tandem %s", command_of(t));
    cJSON_AddStringToObject(lin, "produced_by", by);
    if (t->job->base[0]) cJSON_AddStringToObject(lin, "method", t->lora ? "lora" : "full");
    if (t->teacher) { /* what taught it: the teacher (with its own lineage) and how */
        const td_job *j = t->job;
        cJSON *d = cJSON_AddObjectToObject(lin, "distill");
        cJSON_AddStringToObject(d, "method", "logits");
        char *abs = realpath(j->teacher, NULL);
        cJSON_AddStringToObject(d, "teacher", abs ? abs : j->teacher);
        free(abs);
        cJSON_AddNumberToObject(d, "teacher_params", (double)td_model_num_params(t->teacher));
        cJSON_AddStringToObject(d, "teacher_precision", j->teacher_bf16 ? "bf16" : "fp32");
        cJSON_AddStringToObject(d, "student", j->base[0] ? j->base : "config");
        cJSON_AddNumberToObject(d, "student_params", (double)td_model_num_params(t->model));
        cJSON_AddNumberToObject(d, "alpha", j->kd_alpha);
        cJSON_AddNumberToObject(d, "tau", j->kd_tau);
        cJSON_AddStringToObject(d, "kl", j->kd_reverse ? "reverse" : "forward");
        cJSON_AddNumberToObject(d, "topk", j->kd_topk);
        if (t->teacher_lineage)
            cJSON_AddItemToObject(d, "teacher_lineage", cJSON_Duplicate(t->teacher_lineage, 1));
    }
    cJSON_AddStringToObject(lin, "kind", t->lora ? "adapter" : "model");
    cJSON *ld = cJSON_AddObjectToObject(lin, "data");
    cJSON_AddStringToObject(ld, "path", t->job->train_data);
    cJSON_AddStringToObject(ld, t->sft && !t->data_prepared ? "sha256" : "manifest_sha256",
                            t->data_sha);
    if (t->data_origin)
        cJSON_AddItemToObject(ld, t->data_origin_key, cJSON_Duplicate(t->data_origin, 1));
    if (t->base_lineage)
        cJSON_AddItemToObject(lin, "ancestors", cJSON_Duplicate(t->base_lineage, 1));
    if (t->parent[0])
        cJSON_AddStringToObject(lin, "parent", t->parent);
    else
        cJSON_AddNullToObject(lin, "parent");
    cJSON_AddStringToObject(lin, "job_file", t->job->path);
    cJSON_AddItemToObject(lin, "job", cJSON_Duplicate(t->job->json, 1));
    td_status s = td_model_sync_host(t->model);
    const float *mm = t->adam_m, *vv = t->adam_v;
    if (s == TD_OK && t->moved) { /* the moments of a device backend, copied for saving */
        s = to_host(t, t->adam_m, n_trained(t), &t->full_m);
        if (s == TD_OK) s = to_host(t, t->adam_v, n_trained(t), &t->full_v);
        mm = t->full_m;
        vv = t->full_v;
    }
    if (t->job->zero) { /* the checkpoint holds full moments, whatever the world size;
                         * the full buffers exist only while saving */
        size_t np = td_model_num_params(t->model);
        t->full_m = malloc(np * sizeof(float));
        t->full_v = malloc(np * sizeof(float));
        s = t->full_m && t->full_v
                ? td_zero1_gather_moments(&t->zero, t->adam_m, t->adam_v, t->full_m, t->full_v)
                : td_error_set(TD_ERR_NOMEM, "out of memory gathering the optimizer state");
        mm = t->full_m;
        vv = t->full_v;
    }
    int ok = s == TD_OK;
    if (t->rank == 0 && ok) {
        td_checkpoint_save_args a = {.root = t->job->ckpt_dir,
                                     .step = step,
                                     .model = t->model,
                                     .adam_m = mm,
                                     .adam_v = vv,
                                     .trainer_state = st,
                                     .tokenizer_json = t->tokenizer_json,
                                     .keep = t->job->ckpt_keep,
                                     .lora = t->lora,
                                     .base = t->job->base};
        s = td_checkpoint_save(&a, out, outn);
        ok = s == TD_OK;
    }
    cJSON_Delete(st);
    /* every rank learns whether rank 0 saved, and where */
    int64_t okv = ok;
    td_comm_bcast(t->comm, &okv, 1, TD_COMM_I64, 0);
    td_comm_bcast(t->comm, out, outn, TD_COMM_BYTE, 0);
    if (!okv && s == TD_OK) s = td_error_set(TD_ERR_IO, "rank 0 failed to save the checkpoint");
    free(t->full_m);
    free(t->full_v);
    t->full_m = t->full_v = NULL;
    if (s == TD_OK) snprintf(t->parent, sizeof t->parent, "%s", out);
    return s;
}

static td_status resume_adapter(trainer *t, const char *dir, long *start_step);
static td_status resume_state(trainer *t, const char *dir, long *start_step);

static td_status resume(trainer *t, int no_verify, long *start_step) {
    char dir[1024] = "", p[1200];
    /* rank 0 chooses the checkpoint; every rank loads that one */
    int64_t found = 0;
    if (t->rank == 0) found = td_checkpoint_latest(t->job->ckpt_dir, dir, sizeof dir) == TD_OK;
    TD_TRY(td_comm_bcast(t->comm, &found, 1, TD_COMM_I64, 0));
    TD_TRY(td_comm_bcast(t->comm, dir, sizeof dir, TD_COMM_BYTE, 0));
    if (!found)
        return t->rank == 0 ? TD_ERR_NOTFOUND
                            : td_error_set(TD_ERR_NOTFOUND, "no complete checkpoint under %s",
                                           t->job->ckpt_dir);
    TD_TRY(td_checkpoint_check(dir, no_verify));
    if (t->lora) return resume_adapter(t, dir, start_step);
    td_model *m;
    TD_TRY(td_checkpoint_load_model(dir, &m));
    const td_model_config *a = td_model_config_of(m), *b = &t->job->model;
    if (memcmp(a, b, sizeof *a) != 0) {
        td_model_free(&m);
        return td_error_set(TD_ERR_INVALID,
                            "cannot resume from %s: its config.json does not match the job's "
                            "model block",
                            dir);
    }
    memcpy(td_model_params(t->model), td_model_params(m), td_model_num_params(m) * sizeof(float));
    td_model_free(&m);
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    /* both moments live in one file under two suffixes */
    const char *suffixes[2] = {".exp_avg", ".exp_avg_sq"};
    size_t np = td_model_num_params(t->model);
    float *fm = t->adam_m, *fv = t->adam_v;
    if (t->job->zero) { /* read the full moments once, keep this rank's slice */
        fm = t->full_m = malloc(np * sizeof(float));
        fv = t->full_v = malloc(np * sizeof(float));
        if (!fm || !fv)
            return td_error_set(TD_ERR_NOMEM, "out of memory reading the optimizer state");
    }
    float *bases[2] = {fm, fv};
    TD_TRY(td_checkpoint_read_tensors(t->model, p, 2, suffixes, bases));
    if (t->job->zero) { /* keep this rank's slice: the checkpoint may come from any N */
        size_t hi = t->zero.hi < np ? t->zero.hi : np;
        if (hi > t->zero.lo) {
            memcpy(t->adam_m, fm + t->zero.lo, (hi - t->zero.lo) * sizeof(float));
            memcpy(t->adam_v, fv + t->zero.lo, (hi - t->zero.lo) * sizeof(float));
        }
        free(t->full_m);
        free(t->full_v);
        t->full_m = t->full_v = NULL;
    }
    return resume_state(t, dir, start_step);
}

/* An adapter run's checkpoint: the adapter, its moments (by PEFT's tensor names). */
static td_status resume_adapter(trainer *t, const char *dir, long *start_step) {
    td_lora *lo;
    TD_TRY(td_lora_load(dir, &t->job->model, &lo));
    /* the adapter's function must be the job's: rank, alpha and targets */
    const td_lora_config *had = td_lora_config_of(lo), *want = td_lora_config_of(t->lora);
    char what[64] = "";
    if (had->r != want->r)
        snprintf(what, sizeof what, "r %d, the job's %d", had->r, want->r);
    else if (had->alpha != want->alpha)
        snprintf(what, sizeof what, "alpha %g, the job's %g", had->alpha, want->alpha);
    else if (td_lora_num_params(lo) != td_lora_num_params(t->lora))
        snprintf(what, sizeof what, "other target_modules");
    for (int i = 0; !what[0] && i < want->n_targets; i++) {
        int found = 0;
        for (int k = 0; k < had->n_targets; k++)
            found |= !strcmp(had->targets[k], want->targets[i]);
        if (!found || had->n_targets != want->n_targets)
            snprintf(what, sizeof what, "other target_modules");
    }
    if (what[0]) {
        td_lora_free(&lo);
        return td_error_set(TD_ERR_INVALID,
                            "cannot resume from %s: its adapter has %s (finetune.lora must stay "
                            "as the run began)",
                            dir, what);
    }
    if (had->dropout != want->dropout && t->rank == 0)
        TD_LOG_INFO("resuming %s with LoRA dropout %g (it trained with %g)", dir, want->dropout,
                    had->dropout);
    memcpy(td_lora_params(t->lora), td_lora_params(lo), td_lora_num_params(lo) * sizeof(float));
    td_lora_free(&lo);
    char p[1200];
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    td_st_file *f = NULL;
    TD_TRY(td_st_open(p, &f));
    int nt;
    const td_lora_tensor *tt = td_lora_tensors(t->lora, &nt);
    td_status s = TD_OK;
    for (int i = 0; s == TD_OK && i < 2 * nt; i++) {
        const td_lora_tensor *x = &tt[i / 2];
        char name[200];
        snprintf(name, sizeof name, "%s%s", x->name, i % 2 ? ".exp_avg_sq" : ".exp_avg");
        const td_st_entry *e = td_st_find(f, name);
        if (!e || e->numel != x->numel)
            s = td_error_set(TD_ERR_FORMAT, "%s: %s is missing or mis-shaped", p, name);
        else
            s = td_st_read_f32(f, e, (i % 2 ? t->adam_v : t->adam_m) + x->offset, 0);
    }
    td_st_close(&f);
    TD_TRY(s);
    return resume_state(t, dir, start_step);
}

/* A run continues as it began: a distilled run with the same teacher and loss, a plain run
 * without one (its lineage would otherwise describe steps it did not take). */
static td_status resume_same_method(trainer *t, const char *dir, const cJSON *st) {
    const cJSON *lin = cJSON_GetObjectItemCaseSensitive(st, "lineage");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(lin, "distill");
    const td_job *j = t->job;
    if (!d && !t->teacher) return TD_OK;
    if (!d || !t->teacher)
        return td_error_set(TD_ERR_INVALID,
                            "cannot resume from %s: it was %s, and %s has %s \"distill\" block; "
                            "resume a run with the command and job it began with",
                            dir, d ? "trained by tandem distill" : "trained without a teacher",
                            j->path, d ? "no" : "a");
    const cJSON *te = cJSON_GetObjectItemCaseSensitive(d, "teacher");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(d, "alpha");
    const cJSON *ta = cJSON_GetObjectItemCaseSensitive(d, "tau");
    const cJSON *kl = cJSON_GetObjectItemCaseSensitive(d, "kl");
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(d, "topk");
    char *abs = realpath(j->teacher, NULL);
    char what[1400] = "";
    if (!cJSON_IsString(te) || !abs || strcmp(te->valuestring, abs))
        snprintf(what, sizeof what, "the teacher %s (the job now names %s)",
                 cJSON_IsString(te) ? te->valuestring : "?", abs ? abs : j->teacher);
    else if (!cJSON_IsNumber(al) || al->valuedouble != j->kd_alpha)
        snprintf(what, sizeof what, "alpha %g (the job now says %g)",
                 cJSON_IsNumber(al) ? al->valuedouble : NAN, j->kd_alpha);
    else if (!cJSON_IsNumber(ta) || ta->valuedouble != j->kd_tau)
        snprintf(what, sizeof what, "tau %g (the job now says %g)",
                 cJSON_IsNumber(ta) ? ta->valuedouble : NAN, j->kd_tau);
    else if (!cJSON_IsString(kl) || strcmp(kl->valuestring, j->kd_reverse ? "reverse" : "forward"))
        snprintf(what, sizeof what, "kl %s (the job now says %s)",
                 cJSON_IsString(kl) ? kl->valuestring : "?", j->kd_reverse ? "reverse" : "forward");
    else if (!cJSON_IsNumber(tk) || tk->valueint != j->kd_topk)
        snprintf(what, sizeof what, "topk %d (the job now says %d)",
                 cJSON_IsNumber(tk) ? tk->valueint : -1, j->kd_topk);
    free(abs);
    if (what[0])
        return td_error_set(TD_ERR_INVALID,
                            "cannot resume from %s: it was distilled with %s; the distill block "
                            "must stay as the run began (start a new checkpoint.dir to change it)",
                            dir, what);
    return TD_OK;
}

/* trainer_state.json: the step and data position, checked against the job. */
static td_status resume_state(trainer *t, const char *dir, long *start_step) {
    char p[1200];
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    cJSON *st;
    TD_TRY(td_json_load_file(p, &st));
    int64_t step = 0, epoch = 0, cursor = 0, seed = t->job->seed, seq = t->job->seq_len,
            gb = t->job->batch_size, acc = t->job->grad_accum;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(st, "data");
    td_status s = td_json_get_int(st, p, "step", 1, &step);
    if (s == TD_OK) s = td_json_get_int(data, p, "epoch", 1, &epoch);
    if (s == TD_OK) s = td_json_get_int(data, p, "cursor", 1, &cursor);
    if (s == TD_OK) s = td_json_get_int(data, p, "seed", 0, &seed);
    if (s == TD_OK) s = td_json_get_int(data, p, "seq_len", 0, &seq);
    if (s == TD_OK) s = td_json_get_int(data, p, "global_batch", 0, &gb);
    if (s == TD_OK) s = td_json_get_int(data, p, "grad_accum", 0, &acc);
    if (s == TD_OK && (seed != t->job->seed || seq != t->job->seq_len || gb != t->job->batch_size ||
                       acc != t->job->grad_accum))
        s = td_error_set(TD_ERR_INVALID,
                         "cannot resume from %s: it was trained with seed %lld, seq_len %lld, "
                         "batch_size %lld, grad_accum %lld, and the job now says %ld, %d, %d, "
                         "%d (the sample sequence would change)",
                         dir, (long long)seed, (long long)seq, (long long)gb, (long long)acc,
                         t->job->seed, t->job->seq_len, t->job->batch_size, t->job->grad_accum);
    if (s == TD_OK) s = resume_same_method(t, dir, st);
    cJSON_Delete(st);
    TD_TRY(s);
    if (t->sft)
        td_sft_loader_set_pos(t->sft, epoch, cursor);
    else
        td_loader_set_pos(t->train, epoch, cursor);
    *start_step = (long)step;
    snprintf(t->parent, sizeof t->parent, "%s", dir);
    if (t->rank == 0) TD_LOG_INFO("resuming from %s (step %ld)", dir, (long)step);
    return TD_OK;
}

/* Pretraining: token shards as `tandem prep` wrote them, a randomly initialized model. */
static td_status setup_pretrain(trainer *t, const td_job *j, const td_train_opts *opts) {
    if (t->rank == 0) { /* the data as `tandem prep` left it (rank 0 speaks for the job) */
        td_manifest_report mr;
        TD_TRY(td_manifest_check(j->train_data, opts->verify_data, &mr));
        if (mr.has_manifest && mr.hashed)
            TD_LOG_INFO("data %s: %d shards (%.1f MB) match manifest.json, sha256 too (%.1f s)",
                        j->train_data, mr.shards, mr.bytes / 1e6, mr.hash_s);
        else if (mr.has_manifest)
            TD_LOG_INFO("data %s: %d shards (%.1f MB) and the tokenizer match manifest.json "
                        "(sizes; --verify-data checks every shard's sha256)",
                        j->train_data, mr.shards, mr.bytes / 1e6);
    }
    TD_TRY(td_loader_open(j->train_data, "train", t->local_B, j->seq_len, (uint64_t)j->seed, 1,
                          &t->train));
    TD_TRY(td_dp_share_plan(t->comm, t->train, (uint64_t)j->seed, j->seq_len, j->batch_size));
    if (td_loader_max_token(t->train) >= j->model.vocab_size)
        return td_error_set(TD_ERR_INVALID,
                            "%s: the training shards hold token id %d, but model.vocab_size is "
                            "%d",
                            j->path, td_loader_max_token(t->train), j->model.vocab_size);
    const char *vsrc = j->val_data[0] ? j->val_data : j->train_data;
    /* validation: a fixed shuffled subset of windows, spread over the whole split. Every
     * rank must take the same decision, or their collectives would no longer match. */
    td_status s = td_loader_open(vsrc, "val", t->local_B, j->seq_len, 0, 1, &t->val);
    int fatal = j->val_data[0] != 0; /* named explicitly: it must work */
    if (s == TD_OK && td_loader_max_token(t->val) >= j->model.vocab_size && (fatal = 1))
        s = td_error_set(TD_ERR_INVALID,
                         "%s: the validation shards hold token id %d, but model.vocab_size is %d",
                         j->path, td_loader_max_token(t->val), j->model.vocab_size);
    int64_t failed = s != TD_OK, any_fatal = s != TD_OK && fatal;
    TD_TRY(td_comm_allreduce(t->comm, &failed, 1, TD_COMM_I64));
    TD_TRY(td_comm_allreduce(t->comm, &any_fatal, 1, TD_COMM_I64));
    if (!failed) {
        s = td_dp_share_plan(t->comm, t->val, 0, j->seq_len, j->batch_size);
        failed = s != TD_OK;
        TD_TRY(td_comm_allreduce(t->comm, &failed, 1, TD_COMM_I64));
    }
    if (failed) {
        if (fatal || any_fatal) {
            if (s == TD_OK)
                s = td_error_set(TD_ERR_INVALID,
                                 "another rank could not use the validation "
                                 "data %s (see its message)",
                                 vsrc);
            return s;
        }
        if (t->rank == 0)
            TD_LOG_WARN("no usable validation shards (*val*.bin) in %s (%s): val_loss will not "
                        "be reported",
                        vsrc, s != TD_OK ? td_error_message() : "another rank failed");
        td_loader_free(&t->val);
        td_error_clear();
    }
    TD_TRY(td_model_new(&j->model, &t->model));
    td_model_init_random(t->model, (uint64_t)j->seed);
    char p[1200];
    snprintf(p, sizeof p, "%s/manifest.json", j->train_data);
    if (td_fs_exists(p) && td_sha256_file(p, t->data_sha) != TD_OK) td_error_clear();
    return TD_OK;
}

/* Fine-tuning: the base checkpoint's weights and tokenizer, conversations (JSONL) as data. */
static td_status setup_finetune(trainer *t, const td_job *j, const td_train_opts *opts) {
    char p[1200];
    TD_TRY(td_checkpoint_check(j->base, opts->no_verify));
    snprintf(p, sizeof p, "%s/tokenizer.json", j->base);
    size_t len = 0;
    TD_TRY(td_fs_read_file(p, &t->tokenizer_json, &len));
    td_bpe *tok = NULL;
    TD_TRY(td_bpe_from_json(t->tokenizer_json, len, p, &tok));
    td_sft_overlong pol = j->overlong_truncate ? TD_SFT_TRUNCATE : TD_SFT_DROP;
    /* every rank reads the same files the same way: the same examples everywhere; JSON Lines
     * are tokenized here, a directory of tandem prep --chat was tokenized already (with the
     * base's tokenizer: its sha256 must match) */
    char tok_sha[65];
    td_sha256_hex(t->tokenizer_json, len, tok_sha);
    int prepared = td_sft_is_prepared(j->train_data);
    td_status s = prepared
                      ? td_sft_prepared_load(j->train_data, "train", tok_sha, j->seq_len + 1, pol,
                                             &t->sft_set)
                      : td_sft_load_jsonl(j->train_data, tok, j->seq_len + 1, pol, &t->sft_set);
    if (s == TD_OK && j->val_data[0])
        s = td_sft_is_prepared(j->val_data)
                ? td_sft_prepared_load(j->val_data, "val", tok_sha, j->seq_len + 1, pol,
                                       &t->sft_val_set)
                : td_sft_load_jsonl(j->val_data, tok, j->seq_len + 1, pol, &t->sft_val_set);
    td_bpe_free(&tok);
    TD_TRY(s);
    const td_sft_set *sets[2] = {&t->sft_set, &t->sft_val_set};
    for (int k = 0; k < 2; k++) {
        const td_sft_set *st = sets[k];
        const char *path = k ? j->val_data : j->train_data;
        if (k && !path[0]) break;
        if (t->rank == 0 && (st->dropped_long || st->truncated))
            TD_LOG_WARN("%s: %ld conversation%s longer than data.seq_len + 1 = %d tokens %s "
                        "(data.overlong \"%s\")",
                        path, st->dropped_long + st->truncated,
                        st->dropped_long + st->truncated == 1 ? "" : "s", j->seq_len + 1,
                        j->overlong_truncate ? "truncated" : "dropped",
                        j->overlong_truncate ? "truncate" : "drop");
        if (st->n > 0 && st->max_id >= j->model.vocab_size)
            return td_error_set(TD_ERR_INVALID,
                                "%s: token id %d is outside the base's vocabulary (%d)", path,
                                st->max_id, j->model.vocab_size);
        if (t->rank == 0)
            TD_LOG_INFO("%s: %d examples, %ld tokens, %ld of them trained on (%.0f%%), longest %d",
                        path, st->n, st->tokens, st->counted,
                        st->tokens ? 100.0 * st->counted / st->tokens : 0.0, st->max_tokens);
    }
    int b0 = t->rank * t->local_B;
    TD_TRY(td_sft_loader_new(&t->sft_set, j->batch_size, b0, b0 + t->local_B, (uint64_t)j->seed, 1,
                             &t->sft));
    if (j->val_data[0])
        TD_TRY(td_sft_loader_new(&t->sft_val_set, j->batch_size, b0, b0 + t->local_B, 0, 0,
                                 &t->sft_val));
    if (prepared) { /* the data's identity: its chat.json (which holds its sources' sha256) */
        snprintf(p, sizeof p, "%s/chat.json", j->train_data);
        TD_TRY(td_sha256_file(p, t->data_sha));
    } else {
        TD_TRY(td_sha256_file(j->train_data, t->data_sha));
    }
    t->data_prepared = prepared;
    TD_TRY(td_checkpoint_load_model(j->base, &t->model));
    if (j->lora) {
        char where[1100];
        snprintf(where, sizeof where, "%s: finetune.lora", j->path);
        TD_TRY(td_lora_new(&j->model, &j->lora_cfg, where, (uint64_t)j->seed, &t->lora));
        TD_TRY(td_model_set_lora(t->model, t->lora));
    }
    /* lineage: the base's ancestors, then the base itself */
    t->base_lineage = td_checkpoint_lineage(j->base);
    return TD_OK;
}

/* Canonical text of a tokenizer.json (as tandem re-writes it), to compare two tokenizers by
 * what they do rather than by their files' bytes. NULL: not readable (status set). */
static char *tokenizer_canon(const char *json, const char *where, int *nvocab) {
    td_bpe *tok = NULL;
    if (td_bpe_from_json(json, strlen(json), where, &tok) != TD_OK) return NULL;
    *nvocab = td_bpe_vocab_size(tok);
    char *c = td_bpe_to_json(tok);
    td_bpe_free(&tok);
    if (!c) td_error_set(TD_ERR_NOMEM, "out of memory comparing tokenizers");
    return c;
}

/* Where distilled data came from (kept for the lineage; absent or unreadable: nothing). */
static void load_data_origin(trainer *t, const td_job *j) {
    char p[1200];
    cJSON *o = NULL;
    if (td_fs_is_dir(j->train_data)) {
        snprintf(p, sizeof p, "%s/manifest.json", j->train_data);
        cJSON *m = NULL;
        if (td_fs_exists(p) && td_json_load_file(p, &m) == TD_OK) {
            cJSON *sel = cJSON_DetachItemFromObjectCaseSensitive(m, "selection");
            cJSON_Delete(m);
            o = sel;
            t->data_origin_key = "selection";
        }
    } else {
        snprintf(p, sizeof p, "%s.source.json", j->train_data);
        if (td_fs_exists(p) && td_json_load_file(p, &o) == TD_OK)
            t->data_origin_key = "synthesized";
    }
    td_error_clear();
    t->data_origin = o;
}

/* Distillation: the teacher checkpoint, checked and loaded frozen (forward only, no
 * gradient buffers), with the student's tokenizer. */
static td_status setup_teacher(trainer *t, const td_job *j, const td_train_opts *opts) {
    char p[1200];
    TD_TRY(td_checkpoint_check(j->teacher, opts->no_verify));
    snprintf(p, sizeof p, "%s/tokenizer.json", j->teacher);
    char *tj = NULL;
    size_t len = 0;
    TD_TRY(td_fs_read_file(p, &tj, &len));
    int nt = 0, ns = 0;
    char *ct = tokenizer_canon(tj, p, &nt);
    free(tj);
    if (!ct) return td_error_wrap(TD_ERR_FORMAT, "distill.teacher: ");
    char *cs = tokenizer_canon(t->tokenizer_json, "the student's tokenizer", &ns);
    int same = cs && !strcmp(ct, cs);
    free(ct);
    free(cs);
    if (!same)
        return td_error_set(TD_ERR_INVALID,
                            "%s: distill.teacher %s has another tokenizer than the student "
                            "(%d tokens, the student's %d%s): the KL compares distributions "
                            "token id by token id, so teacher and student need the same "
                            "tokenizer.json",
                            j->path, j->teacher, nt, ns,
                            nt == ns ? ", but other tokens or merges" : "");
    /* its vocab_size and context were checked with the job file (its config.json) */
    TD_TRY(td_checkpoint_load_model(j->teacher, &t->teacher));
    TD_TRY(td_model_plan(t->teacher, t->local_B, j->seq_len, 0));
    if (j->teacher_bf16) TD_TRY(td_model_set_bf16(t->teacher, 1));
    t->kd = (td_kd_opts){j->kd_alpha, j->kd_tau, j->kd_reverse, j->kd_topk};
    t->teacher_lineage = td_checkpoint_lineage(j->teacher);
    return TD_OK;
}

static td_status setup(trainer *t, const td_job *j, const td_train_opts *opts) {
    memset(t, 0, sizeof *t);
    t->job = j;
    if (opts->comm) {
        t->comm = opts->comm;
    } else {
        TD_TRY(td_comm_self_new(&t->self));
        t->comm = t->self;
    }
    t->rank = t->comm->rank;
    t->size = t->comm->size;
    if (j->batch_size % t->size != 0)
        return td_error_set(TD_ERR_INVALID,
                            "%s: train.batch_size %d is the global batch and must divide by the "
                            "%d ranks",
                            j->path, j->batch_size, t->size);
    t->local_B = j->batch_size / t->size;
    if (j->base[0])
        TD_TRY(setup_finetune(t, j, opts));
    else
        TD_TRY(setup_pretrain(t, j, opts));
    /* a device run plans after the move (to_backend): no host plan it would not use */
    if (!opts->device || !strcmp(opts->device, "cpu"))
        TD_TRY(td_model_plan(t->model, t->local_B, j->seq_len, 1));
    size_t np = td_model_num_params(t->model), nm = n_trained(t);
    if (t->lora && j->zero)
        return td_error_set(TD_ERR_INVALID,
                            "%s: train.zero 1 shards the optimizer state of all parameters; a "
                            "LoRA fine-tune's is small: use zero 0",
                            j->path);
    if (t->lora) {
        /* adapters: one all-reduce of their gradients after backward (no buckets) */
    } else if (j->zero) {
        TD_TRY(td_zero1_init(&t->zero, t->comm, np));
        nm = t->zero.hi - t->zero.lo;
    } else {
        TD_TRY(td_grad_sync_new(t->comm, t->model,
                                opts->bucket_bytes ? opts->bucket_bytes : 25u << 20,
                                (size_t)t->local_B * j->seq_len, &t->sync));
    }
    t->adam_m = calloc(nm, sizeof(float));
    t->adam_v = calloc(nm, sizeof(float));
    t->tokens = malloc(sizeof(int32_t) * (size_t)t->local_B * j->seq_len);
    t->targets = malloc(sizeof(int32_t) * (size_t)t->local_B * j->seq_len);
    if (!t->adam_m || !t->adam_v || !t->tokens || !t->targets)
        return td_error_set(TD_ERR_NOMEM, "out of memory for optimizer state (%zu params)", np);
    /* The tokenizer travels with the data (tandem prep writes tokenizer.json beside the
     * shards; a fine-tune's is its base's) and is copied into every checkpoint. */
    char p[1200];
    snprintf(p, sizeof p, "%s/tokenizer.json", td_fs_is_dir(j->train_data) ? j->train_data : ".");
    if (t->tokenizer_json) {
        /* read with the base */
    } else if (td_fs_is_dir(j->train_data) && td_fs_exists(p)) {
        size_t len = 0;
        TD_TRY(td_fs_read_file(p, &t->tokenizer_json, &len));
        /* checked now, not when the checkpoint is first served: it must be a tokenizer
         * tandem reads (byte-level BPE) whose ids fit the model */
        td_bpe *tok = NULL;
        td_status s = td_bpe_from_json(t->tokenizer_json, len, p, &tok);
        if (s != TD_OK) {
            char why[1024];
            snprintf(why, sizeof why, "%s", td_error_message());
            return td_error_set(TD_ERR_FORMAT,
                                "%s: the tokenizer beside the training shards cannot be used "
                                "(%s); tandem reads byte-level BPE tokenizer.json files as "
                                "`tandem prep` writes them",
                                p, why);
        }
        int nv = td_bpe_vocab_size(tok);
        td_bpe_free(&tok);
        if (nv > j->model.vocab_size)
            return td_error_set(TD_ERR_INVALID,
                                "%s: the tokenizer has %d tokens, but model.vocab_size in %s is "
                                "%d: raise vocab_size to at least %d",
                                p, nv, j->path, j->model.vocab_size, nv);
    } else {
        if (t->rank == 0)
            TD_LOG_WARN("no tokenizer.json beside the training shards; checkpoints will carry "
                        "the byte-level tokenizer (bytes + special tokens, no merges)");
        td_bpe *bytes = NULL;
        TD_TRY(td_bpe_new_bytes(NULL, &bytes));
        t->tokenizer_json = td_bpe_to_json(bytes);
        td_bpe_free(&bytes);
    }
    if (j->teacher[0]) TD_TRY(setup_teacher(t, j, opts));
    load_data_origin(t, j);
    const char *trace = getenv("TD_TRACE_WINDOWS");
    if (trace) { /* test hook: every rank records the windows it reads */
        snprintf(p, sizeof p, "%s.rank%d", trace, t->rank);
        t->trace = fopen(p, "a");
    }
    return TD_OK;
}

static void teardown(trainer *t) {
    td_grad_sync_free(&t->sync);
    if (t->job && t->job->zero) td_zero1_deinit(&t->zero);
    free(t->full_m);
    free(t->full_v);
    if (t->trace) fclose(t->trace);
    td_comm_free(&t->self);
    td_lora_free(&t->lora); /* before the model: it uses the model's backend */
    td_model_free(&t->model);
    td_model_free(&t->teacher);
    cJSON_Delete(t->teacher_lineage);
    cJSON_Delete(t->data_origin);
    td_loader_free(&t->train);
    td_loader_free(&t->val);
    td_sft_loader_free(&t->sft);
    td_sft_loader_free(&t->sft_val);
    td_sft_set_free(&t->sft_set);
    td_sft_set_free(&t->sft_val_set);
    cJSON_Delete(t->base_lineage);
    if (t->moved) {
        td_backend_release(t->be, t->adam_m);
        td_backend_release(t->be, t->adam_v);
    } else {
        free(t->adam_m);
        free(t->adam_v);
    }
    td_comm_free(&t->dev);
    td_backend_free(&t->be);
    free(t->tokens);
    free(t->targets);
    free(t->tokenizer_json);
    if (t->metrics) fclose(t->metrics);
}

/* Moves the model (and the optimizer's moments) to the job's backend, sets up the device
 * all-reduce and bf16 products. */
static td_status to_backend(trainer *t, const td_train_opts *opts, int quiet) {
    const td_job *j = t->job;
    const char *device = opts->device ? opts->device : "cpu";
    TD_TRY(td_backend_new(device, t->comm->local_rank, &t->be));
    int host = t->be->host_memory;
    if (!host && j->zero)
        return td_error_set(TD_ERR_INVALID,
                            "train.zero with device %s is not built yet; use "
                            "zero 0",
                            device);
    TD_TRY(td_model_to_backend(t->model, t->be));
    if (!host) { /* the moments move too (from a resumed checkpoint, or zeros) */
        TD_TRY(td_model_plan(t->model, t->local_B, j->seq_len, 1));
        size_t np = td_model_num_params(t->model);
        void *dm = NULL, *dv = NULL;
        td_status s = td_backend_alloc(t->be, &dm, np * sizeof(float));
        if (s == TD_OK) s = td_backend_alloc(t->be, &dv, np * sizeof(float));
        /* the host moments: the resumed ones, or calloc's zeros */
        if (s == TD_OK) s = td_backend_upload(t->be, dm, t->adam_m, np * sizeof(float));
        if (s == TD_OK) s = td_backend_upload(t->be, dv, t->adam_v, np * sizeof(float));
        if (s != TD_OK) {
            td_backend_release(t->be, dm);
            td_backend_release(t->be, dv);
            return s;
        }
        free(t->adam_m);
        free(t->adam_v);
        t->adam_m = dm;
        t->adam_v = dv;
        t->moved = 1;
        if (t->size > 1) TD_TRY(td_comm_device_new(t->comm, &t->dev));
        td_grad_sync_free(&t->sync); /* again, on the device's communicator */
        TD_TRY(td_grad_sync_new(t->dev ? t->dev : t->comm, t->model,
                                opts->bucket_bytes ? opts->bucket_bytes : 25u << 20,
                                (size_t)t->local_B * j->seq_len, &t->sync));
        if (!quiet)
            printf("train: on %s%s\n", t->be->ops->describe(t->be),
                   t->dev ? " (gradients all-reduced over NCCL)" : "");
    }
    if (j->bf16) {
        const char *how = "";
        TD_TRY(t->be->ops->bf16_prepare(t->be, &how));
        TD_TRY(td_model_set_bf16(t->model, 1));
        if (!quiet) printf("train: bf16 matrix products (%s), fp32 master weights\n", how);
    }
    return TD_OK;
}

/* The adapters' optimizer step: their gradients summed over ranks (one all-reduce; they are
 * small), clipped by the global norm, AdamW. */
static td_status lora_step(trainer *t, double lr, long step, double *gnorm, double *comm_ms,
                           size_t *bytes) {
    const td_job *j = t->job;
    size_t n = td_lora_num_params(t->lora);
    float *g = td_lora_grads(t->lora);
    double t0 = td_time_now();
    if (t->size > 1) TD_TRY(td_comm_allreduce(t->comm, g, n, TD_COMM_F32));
    *comm_ms = (td_time_now() - t0) * 1e3;
    *bytes = t->size > 1 ? n * sizeof(float) : 0;
    TD_TRY(t->be->ops->norm2(t->be, g, n, gnorm));
    *gnorm /= t->size;
    float gs = td_clip_scale(*gnorm, j->clip) / (float)t->size;
    TD_TRY(t->be->ops->adamw(t->be, td_lora_params(t->lora), NULL, g, t->adam_m, t->adam_v, n,
                             (float)lr, (float)j->beta1, (float)j->beta2, (float)j->eps,
                             (float)j->weight_decay, step, gs, 1));
    return td_backend_sync(t->be);
}

/* Sums a double over ranks. */
static double sum_ranks(trainer *t, double v) {
    td_comm_allreduce(t->comm, &v, 1, TD_COMM_F64);
    return v;
}

td_status td_train_run(const td_job *j, const td_train_opts *opts, td_train_result *res) {
    trainer t;
    int quiet = 1;
    memset(res, 0, sizeof *res);
    res->first_val_loss = res->last_val_loss = NAN;
    td_status s = setup(&t, j, opts);
    long step0 = 0;
    if (s == TD_OK && opts->resume) s = resume(&t, opts->no_verify, &step0);
    /* one set of weights everywhere: rank 0's (initialised or resumed) */
    if (s == TD_OK)
        s = td_comm_bcast(t.comm, td_model_params(t.model), td_model_num_params(t.model),
                          TD_COMM_F32, 0);
    if (s == TD_OK && t.lora)
        s = td_comm_bcast(t.comm, td_lora_params(t.lora), td_lora_num_params(t.lora), TD_COMM_F32,
                          0);
    if (s == TD_OK && !opts->resume) { /* never mix two runs in one checkpoint directory */
        char latest[1200];
        int64_t taken =
            t.rank == 0 && td_checkpoint_latest(j->ckpt_dir, latest, sizeof latest) == TD_OK;
        td_error_clear();
        td_comm_bcast(t.comm, &taken, 1, TD_COMM_I64, 0);
        if (taken)
            s = td_error_set(TD_ERR_INVALID,
                             "%s: checkpoint.dir %s already holds checkpoints of a run; pass "
                             "--resume to continue it, or use another directory",
                             j->path, j->ckpt_dir);
    }
    if (s == TD_OK && t.rank == 0) s = td_fs_mkdirs(j->ckpt_dir);
    char mpath[1200];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", j->ckpt_dir);
    if (s == TD_OK && t.rank == 0 && opts->resume) {
        /* drop lines past the checkpoint (steps of a crashed run that will be redone) */
        char *old = NULL;
        size_t len = 0;
        if (td_fs_read_file(mpath, &old, &len) == TD_OK) {
            FILE *f = fopen(mpath, "w");
            for (char *line = old; f && line && *line;) {
                char *nl = strchr(line, '\n');
                long st = -1;
                if (sscanf(line, "{\"step\": %ld", &st) == 1 && st <= step0)
                    fwrite(line, 1, nl ? (size_t)(nl - line + 1) : strlen(line), f);
                line = nl ? nl + 1 : NULL;
            }
            if (f) fclose(f);
            free(old);
        }
        td_error_clear();
    }
    if (s == TD_OK && t.rank == 0) {
        t.metrics = fopen(mpath, opts->resume ? "a" : "w");
        if (!t.metrics) s = td_error_set(TD_ERR_IO, "cannot open %s for writing", mpath);
    }
    if (s != TD_OK) {
        teardown(&t);
        return s;
    }
    quiet = opts->quiet || t.rank != 0;
    long last = opts->stop_at > 0 && opts->stop_at < j->steps ? opts->stop_at : j->steps;
    size_t np = td_model_num_params(t.model);
    double tok_per_step = (double)j->batch_size * j->seq_len * j->grad_accum;
    if (!quiet && !t.sft)
        printf("train: %s %zu parameters (%.2f M), %ld steps of %.0f tokens on %d rank%s%s, "
               "data %zu tokens\n",
               td_arch_name(j->model.arch), np, np / 1e6, j->steps, tok_per_step, t.size,
               t.size > 1 ? "s" : "", j->zero ? " (ZeRO-1)" : "", td_loader_num_tokens(t.train));
    if (!quiet && t.sft)
        printf("finetune: %s %zu parameters (%.2f M), %s: %zu trained (%.2f%%), %ld steps of %d "
               "examples on %d rank%s, data %d examples\n",
               td_arch_name(j->model.arch), np, np / 1e6, t.lora ? "LoRA" : "full", n_trained(&t),
               100.0 * n_trained(&t) / np, j->steps, j->batch_size * j->grad_accum, t.size,
               t.size > 1 ? "s" : "", t.sft_set.n);
    char topk_s[48] = "all logits";
    if (j->kd_topk) snprintf(topk_s, sizeof topk_s, "the teacher's top %d logits", j->kd_topk);
    if (!quiet && t.teacher)
        printf("distill: teacher %s (%zu parameters, %s), %s KL at tau %g, %s, loss %g * CE + "
               "%g * KD\n",
               j->teacher, td_model_num_params(t.teacher), j->teacher_bf16 ? "bf16" : "fp32",
               j->kd_reverse ? "reverse" : "forward", j->kd_tau, topk_s, j->kd_alpha,
               1 - j->kd_alpha);
    td_adamw_params hp = {(float)j->beta1, (float)j->beta2, (float)j->eps, (float)j->weight_decay};
    if (s == TD_OK) s = to_backend(&t, opts, quiet);
    if (s != TD_OK) {
        teardown(&t);
        return s;
    }
    if (step0 == 0 && (t.val || t.sft_val)) {
        res->first_val_loss = evaluate(&t);
        if (t.metrics)
            fprintf(t.metrics, "{\"step\": 0, \"val_loss\": %.6f}\n", res->first_val_loss);
        if (!quiet) printf("step %6d  val_loss %.4f (initial)\n", 0, res->first_val_loss);
    }
    /* examples: tokens/s counts the examples' tokens, not the padding */
    double real_sum = 0, computed_sum = 0, tokens_run = 0;
    double t_start = td_time_now(), train_time = 0;
    long steps_run = 0;
    double loss = NAN;
    for (long step = step0; step < last; step++) {
        double t0 = td_time_now();
        /* the fused optimizer step leaves the gradients zeroed; ZeRO-1 does not */
        if (j->zero) td_model_zero_grad(t.model);
        double local = 0, real_local = 0, computed_local = 0, ce_local = 0, kd_local = 0;
        /* examples: the step's loss is the mean over all its counted tokens, on any number
         * of ranks (each micro-batch weighs by its share of them) */
        long step_counted = t.sft ? td_sft_loader_peek_counted(t.sft, j->grad_accum) : 0;
        if (t.lora) td_lora_zero_grad(t.lora);
        for (int micro = 0; micro < j->grad_accum; micro++) {
            double l = 0, w = 1.0 / j->grad_accum;
            int T;
            data_next(&t, t.train, t.sft, &T);
            if (t.sft) {
                w = (double)count_targets(t.targets, (size_t)t.local_B * T) * t.size /
                    (double)step_counted;
                real_local += (double)td_sft_loader_last_real(t.sft);
                computed_local += (double)t.local_B * T;
            }
            if (t.trace && !t.sft) {
                const uint64_t *w = td_loader_last_windows(t.train);
                for (int b = 0; b < t.local_B; b++)
                    fprintf(t.trace, "%ld %d %llu\n", step + 1, micro, (unsigned long long)w[b]);
            }
            if (t.lora) /* dropout masks: by the step and each example's place in it */
                td_lora_dropout_batch(t.lora,
                                      td_mix64((uint64_t)j->seed ^ td_mix64((uint64_t)step)), T,
                                      (long)micro * j->batch_size + (long)t.rank * t.local_B);
            s = fwd_kd(&t, t.tokens, t.targets, T, &l, 1);
            if (s == TD_OK && t.teacher) {
                double ce, kd;
                td_model_kd_parts(t.model, &ce, &kd);
                ce_local += ce * w;
                kd_local += kd * w;
            }
            /* gradients are synchronised on the last micro-step only */
            if (s == TD_OK && t.sync && micro == j->grad_accum - 1) td_grad_sync_arm(t.sync);
            if (s == TD_OK) s = td_model_backward(t.model, w);
            if (s != TD_OK) break;
            local += l * w;
        }
        if (t.lora) td_lora_dropout_off(t.lora);
        if (s != TD_OK) break;
        double t_bwd = td_time_now();
        double wait_ms = 0, comm_ms = 0, gnorm = 0;
        size_t bytes = 0;
        double lr = td_lr_schedule(step, j->steps, j->warmup, j->lr, j->lr_min_ratio);
        if (t.lora) {
            s = lora_step(&t, lr, step + 1, &gnorm, &comm_ms, &bytes);
            wait_ms = comm_ms;
        } else if (j->zero) {
            s = td_zero1_step(&t.zero, t.model, t.adam_m, t.adam_v, &hp, lr, step + 1, j->clip,
                              &gnorm, &comm_ms, &bytes);
            wait_ms = comm_ms;
        } else {
            s = td_grad_sync_finish(t.sync, &wait_ms, &comm_ms, &bytes);
            /* a device's gradients are summed, not averaged, by the sync: the step divides */
            double div = td_grad_sync_divisor(t.sync);
            if (s == TD_OK) s = td_model_grad_norm(t.model, &gnorm);
            gnorm /= div;
            if (s == TD_OK)
                s = td_model_adamw(t.model, t.adam_m, t.adam_v, 0, np, (float)lr, hp.beta1,
                                   hp.beta2, hp.eps, hp.weight_decay, step + 1,
                                   td_clip_scale(gnorm, j->clip) / (float)div, 1);
        }
        if (s != TD_OK) break;
        /* the fused AdamW step refreshed the bf16 working copy; ZeRO-1 gathers parameters
         * after its step, so the copy is made again from the gathered masters */
        if (j->bf16 && j->zero) td_model_refresh_bf16(t.model);
        /* one all-reduce: the loss and (examples) the step's real and computed positions */
        double sums[5] = {local, real_local, computed_local, ce_local, kd_local};
        td_comm_allreduce(t.comm, sums, t.teacher ? 5 : t.sft ? 3 : 1, TD_COMM_F64);
        loss = sums[0] / t.size;
        if (!isfinite(loss)) {
            s = td_error_set(TD_ERR_RUNTIME,
                             "loss became %f at step %ld; lower train.lr or raise train.warmup",
                             loss, step + 1);
            break;
        }
        double dt = td_time_now() - t0;
        train_time += dt;
        steps_run++;
        if (step == step0) res->first_loss = loss;
        res->last_loss = loss;
        double step_tokens = t.sft ? sums[1] : tok_per_step;
        real_sum += sums[1];
        computed_sum += sums[2];
        tokens_run += step_tokens;
        double tps = step_tokens / dt;
        if (t.metrics)
            fprintf(t.metrics,
                    "{\"step\": %ld, \"loss\": %.7f, \"lr\": %.6g, \"grad_norm\": %.6f, "
                    "\"tokens_per_s\": %.1f, \"step_ms\": %.2f, \"compute_ms\": %.2f, "
                    "\"comm_ms\": %.2f, \"comm_total_ms\": %.2f, \"bytes_reduced\": %zu, "
                    "\"ranks\": %d, \"rss_bytes\": %lld",
                    step + 1, loss, lr, gnorm, tps, dt * 1e3, (t_bwd - t0) * 1e3, wait_ms, comm_ms,
                    bytes, t.size, (long long)td_rss_bytes());
        if (t.metrics && t.teacher)
            fprintf(t.metrics, ", \"ce\": %.7f, \"kd\": %.7f", sums[3] / t.size, sums[4] / t.size);
        int do_eval =
            (t.val || t.sft_val) &&
            ((j->eval_every > 0 && (step + 1) % j->eval_every == 0) || step + 1 == j->steps);
        if (do_eval) {
            double vl = evaluate(&t);
            res->last_val_loss = vl;
            if (t.metrics) fprintf(t.metrics, ", \"val_loss\": %.6f", vl);
        }
        if (t.metrics) {
            fprintf(t.metrics, "}\n");
            fflush(t.metrics);
        }
        char eta[32], line[256];
        td_progress_fmt_eta((double)(last - step - 1) * train_time / (double)steps_run, eta,
                            sizeof eta);
        snprintf(line, sizeof line, "step %6ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                 step + 1, j->steps, loss, lr, tps, eta);
        if (!quiet) td_progress_line(line);
        if (!quiet && (do_eval || !td_progress_is_tty())) {
            if (do_eval || (step + 1) % j->log_every == 0 || step == step0) {
                td_progress_done();
                printf("step %6ld/%ld  loss %.4f  lr %.2e  %.0f tok/s", step + 1, j->steps, loss,
                       lr, tps);
                if (do_eval) printf("  val_loss %.4f", res->last_val_loss);
                printf("\n");
                fflush(stdout);
            }
        }
        /* a stop signal (SIGTERM from a scheduler, SIGUSR1 before a time limit): every rank
         * stops after the same step, which is saved so that --resume continues exactly */
        int stop_sig = opts->stop && *opts->stop;
        if (opts->stop && t.size > 1) stop_sig = sum_ranks(&t, stop_sig) > 0;
        int save =
            (j->ckpt_every > 0 && (step + 1) % j->ckpt_every == 0) || step + 1 == last || stop_sig;
        if (save) {
            s = save_checkpoint(&t, step + 1, loss, res->last_checkpoint,
                                sizeof res->last_checkpoint);
            if (s != TD_OK) break;
        }
        res->steps_done = step + 1;
        if (stop_sig) {
            res->stopped = 1;
            break;
        }
    }
    if (!quiet) td_progress_done();
    double wall = td_time_now() - t_start;
    res->tokens_per_s = steps_run ? tokens_run / train_time : 0;
    if (s == TD_OK && !quiet && t.sft && computed_sum > 0)
        printf("finetune: examples padded to their batch's longest: %.1f %% of the computed "
               "positions are examples' tokens\n",
               100.0 * real_sum / computed_sum);
    if (s == TD_OK && !quiet)
        printf("train: %ld steps in %.1f s (%.0f tokens/s), last loss %.4f, checkpoint %s\n",
               steps_run, wall, res->tokens_per_s, res->last_loss, res->last_checkpoint);
    if (s == TD_OK && res->stopped && t.rank == 0) /* said even when quiet */
        fprintf(stderr,
                "tandem %s: stopped by a signal after step %ld; checkpoint %s written; "
                "continue with --resume\n",
                command_of(&t), res->steps_done, res->last_checkpoint);
    if (s == TD_OK) s = td_model_sync_host(t.model);
    /* the weights stay in memory for serving, on the CPU (the trainer's backend goes) */
    if (s == TD_OK && opts->keep_model) s = td_model_to_backend(t.model, NULL);
    if (s == TD_OK && opts->keep_model) {
        *opts->keep_model = t.model;
        t.model = NULL;
        *opts->keep_tokenizer = t.tokenizer_json;
        t.tokenizer_json = NULL;
    }
    teardown(&t);
    return s;
}
