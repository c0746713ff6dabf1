/* Single-process trainer (see trainer.h). */
#include "worker/train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/timeutil.h"
#include "data/bpe.h"
#include "data/loader.h"
#include "worker/model/checkpoint.h"
#include "worker/model/model.h"
#include "worker/train/adamw.h"

typedef struct {
    const td_job *job;
    td_model *model;
    td_loader *train, *val;
    float *adam_m, *adam_v;
    int32_t *tokens, *targets;
    char *tokenizer_json;
    char parent[1024];
    FILE *metrics;
} trainer;

static double evaluate(trainer *t) {
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
        td_model_forward(t->model, t->tokens, t->targets, j->batch_size, j->seq_len, &loss);
        sum += loss;
    }
    return nb ? sum / (double)nb : NAN;
}

static td_status save_checkpoint(trainer *t, long step, double loss, char *out, size_t outn) {
    cJSON *st = cJSON_CreateObject();
    cJSON_AddNumberToObject(st, "step", (double)step);
    cJSON_AddNumberToObject(st, "loss", loss);
    int64_t epoch, cursor;
    td_loader_get_pos(t->train, &epoch, &cursor);
    cJSON *data = cJSON_AddObjectToObject(st, "data");
    cJSON_AddNumberToObject(data, "epoch", (double)epoch);
    cJSON_AddNumberToObject(data, "cursor", (double)cursor);
    cJSON_AddNumberToObject(data, "seed", (double)t->job->seed);
    /* The trainer draws no random numbers after initialization (no dropout); the RNG entry
     * records the seed the data order derives from. */
    cJSON *rng = cJSON_AddObjectToObject(st, "rng");
    cJSON_AddStringToObject(rng, "kind", "xoshiro256**");
    cJSON_AddNumberToObject(rng, "seed", (double)t->job->seed);
    cJSON *lin = cJSON_AddObjectToObject(st, "lineage");
    cJSON_AddStringToObject(lin, "produced_by", "tandem train");
    if (t->parent[0])
        cJSON_AddStringToObject(lin, "parent", t->parent);
    else
        cJSON_AddNullToObject(lin, "parent");
    cJSON_AddStringToObject(lin, "job_file", t->job->path);
    cJSON_AddItemToObject(lin, "job", cJSON_Duplicate(t->job->json, 1));
    td_checkpoint_save_args a = {.root = t->job->ckpt_dir,
                                 .step = step,
                                 .model = t->model,
                                 .adam_m = t->adam_m,
                                 .adam_v = t->adam_v,
                                 .trainer_state = st,
                                 .tokenizer_json = t->tokenizer_json,
                                 .keep = t->job->ckpt_keep};
    td_status s = td_checkpoint_save(&a, out, outn);
    cJSON_Delete(st);
    if (s == TD_OK) snprintf(t->parent, sizeof t->parent, "%s", out);
    return s;
}

static td_status resume(trainer *t, long *start_step) {
    char dir[1024], p[1200];
    TD_TRY(td_checkpoint_latest(t->job->ckpt_dir, dir, sizeof dir));
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
    float *bases[2] = {t->adam_m, t->adam_v};
    TD_TRY(td_checkpoint_read_tensors(t->model, p, 2, suffixes, bases));
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    cJSON *st;
    TD_TRY(td_json_load_file(p, &st));
    int64_t step = 0, epoch = 0, cursor = 0;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(st, "data");
    td_status s = td_json_get_int(st, p, "step", 1, &step);
    if (s == TD_OK) s = td_json_get_int(data, p, "epoch", 1, &epoch);
    if (s == TD_OK) s = td_json_get_int(data, p, "cursor", 1, &cursor);
    cJSON_Delete(st);
    TD_TRY(s);
    td_loader_set_pos(t->train, epoch, cursor);
    *start_step = (long)step;
    snprintf(t->parent, sizeof t->parent, "%s", dir);
    TD_LOG_INFO("resuming from %s (step %ld)", dir, (long)step);
    return TD_OK;
}

static td_status setup(trainer *t, const td_job *j) {
    memset(t, 0, sizeof *t);
    t->job = j;
    TD_TRY(td_loader_open(j->train_data, "train", j->batch_size, j->seq_len, (uint64_t)j->seed, 1,
                          &t->train));
    if (td_loader_max_token(t->train) >= j->model.vocab_size)
        return td_error_set(TD_ERR_INVALID,
                            "%s: the training shards hold token id %d, but model.vocab_size is "
                            "%d",
                            j->path, td_loader_max_token(t->train), j->model.vocab_size);
    const char *vsrc = j->val_data[0] ? j->val_data : j->train_data;
    /* validation: a fixed shuffled subset of windows, spread over the whole split */
    td_status s = td_loader_open(vsrc, "val", j->batch_size, j->seq_len, 0, 1, &t->val);
    if (s != TD_OK) {
        if (j->val_data[0]) return s;
        TD_LOG_WARN("no validation shards (*val*.bin) in %s: val_loss will not be reported", vsrc);
        td_error_clear();
    }
    TD_TRY(td_model_new(&j->model, &t->model));
    td_model_init_random(t->model, (uint64_t)j->seed);
    TD_TRY(td_model_plan(t->model, j->batch_size, j->seq_len, 1));
    size_t np = td_model_num_params(t->model);
    t->adam_m = calloc(np, sizeof(float));
    t->adam_v = calloc(np, sizeof(float));
    t->tokens = malloc(sizeof(int32_t) * (size_t)j->batch_size * j->seq_len);
    t->targets = malloc(sizeof(int32_t) * (size_t)j->batch_size * j->seq_len);
    if (!t->adam_m || !t->adam_v || !t->tokens || !t->targets)
        return td_error_set(TD_ERR_NOMEM, "out of memory for optimizer state (%zu params)", np);
    /* The tokenizer travels with the data (tandem prep writes tokenizer.json beside the
     * shards) and is copied into every checkpoint. */
    char p[1200];
    snprintf(p, sizeof p, "%s/tokenizer.json", td_fs_is_dir(j->train_data) ? j->train_data : ".");
    if (td_fs_is_dir(j->train_data) && td_fs_exists(p)) {
        TD_TRY(td_fs_read_file(p, &t->tokenizer_json, NULL));
    } else {
        TD_LOG_WARN("no tokenizer.json beside the training shards; checkpoints will carry the "
                    "byte-level tokenizer (bytes + special tokens, no merges)");
        td_bpe *bytes = NULL;
        TD_TRY(td_bpe_new_bytes(NULL, &bytes));
        t->tokenizer_json = td_bpe_to_json(bytes);
        td_bpe_free(&bytes);
    }
    return TD_OK;
}

static void teardown(trainer *t) {
    td_model_free(&t->model);
    td_loader_free(&t->train);
    td_loader_free(&t->val);
    free(t->adam_m);
    free(t->adam_v);
    free(t->tokens);
    free(t->targets);
    free(t->tokenizer_json);
    if (t->metrics) fclose(t->metrics);
}

td_status td_train_run(const td_job *j, const td_train_opts *opts, td_train_result *res) {
    trainer t;
    memset(res, 0, sizeof *res);
    res->first_val_loss = res->last_val_loss = NAN;
    td_status s = setup(&t, j);
    long step0 = 0;
    if (s == TD_OK && opts->resume) s = resume(&t, &step0);
    if (s == TD_OK) s = td_fs_mkdirs(j->ckpt_dir);
    if (s != TD_OK) {
        teardown(&t);
        return s;
    }
    char mpath[1200];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", j->ckpt_dir);
    t.metrics = fopen(mpath, opts->resume ? "a" : "w");
    if (!t.metrics) {
        teardown(&t);
        return td_error_set(TD_ERR_IO, "cannot open %s for writing", mpath);
    }
    long last = opts->stop_at > 0 && opts->stop_at < j->steps ? opts->stop_at : j->steps;
    size_t np = td_model_num_params(t.model);
    double tok_per_step = (double)j->batch_size * j->seq_len * j->grad_accum;
    if (!opts->quiet)
        printf("train: %s %zu parameters (%.2f M), %ld steps of %.0f tokens, data %zu tokens\n",
               td_arch_name(j->model.arch), np, np / 1e6, j->steps, tok_per_step,
               td_loader_num_tokens(t.train));
    td_adamw_params hp = {(float)j->beta1, (float)j->beta2, (float)j->eps, (float)j->weight_decay};
    if (step0 == 0 && t.val) {
        res->first_val_loss = evaluate(&t);
        fprintf(t.metrics, "{\"step\": 0, \"val_loss\": %.6f}\n", res->first_val_loss);
        if (!opts->quiet) printf("step %6d  val_loss %.4f (initial)\n", 0, res->first_val_loss);
    }
    double t_start = td_time_now(), train_time = 0;
    long steps_run = 0;
    double loss = NAN;
    for (long step = step0; step < last; step++) {
        double t0 = td_time_now();
        td_model_zero_grad(t.model);
        loss = 0;
        for (int micro = 0; micro < j->grad_accum; micro++) {
            double l = 0;
            td_loader_next(t.train, t.tokens, t.targets);
            s = td_model_forward(t.model, t.tokens, t.targets, j->batch_size, j->seq_len, &l);
            if (s == TD_OK) s = td_model_backward(t.model, 1.0 / j->grad_accum);
            if (s != TD_OK) break;
            loss += l / j->grad_accum;
        }
        if (s != TD_OK) break;
        if (!isfinite(loss)) {
            s = td_error_set(TD_ERR_RUNTIME,
                             "loss became %f at step %ld; lower train.lr or raise train.warmup",
                             loss, step + 1);
            break;
        }
        double gnorm = td_grad_clip(td_model_grads(t.model), np, j->clip);
        double lr = td_lr_schedule(step, j->steps, j->warmup, j->lr, j->lr_min_ratio);
        td_adamw_step(t.model, t.adam_m, t.adam_v, &hp, lr, step + 1);
        double dt = td_time_now() - t0;
        train_time += dt;
        steps_run++;
        if (step == step0) res->first_loss = loss;
        res->last_loss = loss;
        double tps = tok_per_step / dt;
        fprintf(t.metrics,
                "{\"step\": %ld, \"loss\": %.7f, \"lr\": %.6g, \"grad_norm\": %.6f, "
                "\"tokens_per_s\": %.1f, \"compute_ms\": %.2f, \"comm_ms\": 0, \"rss_bytes\": "
                "%lld",
                step + 1, loss, lr, gnorm, tps, dt * 1e3, (long long)td_rss_bytes());
        int do_eval = t.val && ((j->eval_every > 0 && (step + 1) % j->eval_every == 0) ||
                                step + 1 == j->steps);
        if (do_eval) {
            double vl = evaluate(&t);
            res->last_val_loss = vl;
            fprintf(t.metrics, ", \"val_loss\": %.6f", vl);
        }
        fprintf(t.metrics, "}\n");
        fflush(t.metrics);
        char eta[32], line[256];
        td_progress_fmt_eta((double)(last - step - 1) * train_time / (double)steps_run, eta,
                            sizeof eta);
        snprintf(line, sizeof line, "step %6ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                 step + 1, j->steps, loss, lr, tps, eta);
        td_progress_line(line);
        if (!opts->quiet && (do_eval || !td_progress_is_tty())) {
            if (do_eval || (step + 1) % j->log_every == 0 || step == step0) {
                td_progress_done();
                printf("step %6ld/%ld  loss %.4f  lr %.2e  %.0f tok/s", step + 1, j->steps, loss,
                       lr, tps);
                if (do_eval) printf("  val_loss %.4f", res->last_val_loss);
                printf("\n");
                fflush(stdout);
            }
        }
        int save = (j->ckpt_every > 0 && (step + 1) % j->ckpt_every == 0) || step + 1 == last;
        if (save) {
            s = save_checkpoint(&t, step + 1, loss, res->last_checkpoint,
                                sizeof res->last_checkpoint);
            if (s != TD_OK) break;
        }
        res->steps_done = step + 1;
    }
    td_progress_done();
    double wall = td_time_now() - t_start;
    res->tokens_per_s = steps_run ? tok_per_step * steps_run / train_time : 0;
    if (s == TD_OK && !opts->quiet)
        printf("train: %ld steps in %.1f s (%.0f tokens/s), last loss %.4f, checkpoint %s\n",
               steps_run, wall, res->tokens_per_s, res->last_loss, res->last_checkpoint);
    teardown(&t);
    return s;
}
