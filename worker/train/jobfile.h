/* The job file shared by train, finetune, distill and serve (docs/train.md, "Job file"):
 * parsed and validated into td_job, with a located message for each bad field. */
#ifndef TD_JOBFILE_H
#define TD_JOBFILE_H

#include <cjson/cJSON.h>

#include "common/status.h"
#include "worker/model/config.h"
#include "worker/model/lora.h"

typedef struct {
    char path[1024];
    td_model_config model;
    /* data */
    char train_data[1024];
    char val_data[1024]; /* "" = look for *val*.bin beside the train shards */
    int seq_len;
    /* train */
    int batch_size, grad_accum;
    long steps, warmup;
    double lr, lr_min_ratio, weight_decay, clip, beta1, beta2, eps;
    long seed;
    int zero;
    long eval_every, eval_batches, log_every;
    /* checkpoint */
    char ckpt_dir[1024];
    long ckpt_every;
    int ckpt_keep;
    char device[32];
    int bf16; /* "precision": "bf16": bf16 matrix products, fp32 master weights */
    /* fine-tuning (a "finetune" block): the model is base's, the data conversations */
    char base[1024]; /* checkpoint directory of the starting weights; "" = pretraining */
    int lora;        /* method "lora": adapters train, the base is frozen */
    td_lora_config lora_cfg;
    int overlong_truncate; /* data.overlong "truncate" (default "drop") */
    /* distillation (a "distill" block): the loss mixes the data's CE with the KL to a teacher */
    char teacher[1024]; /* teacher checkpoint directory; "" = no distillation */
    double kd_alpha, kd_tau;
    int kd_reverse, kd_topk;
    int teacher_bf16; /* distill.teacher_precision "bf16": the teacher's products in bf16 */
    cJSON *json;      /* the parsed file, kept for lineage; owned */
} td_job;

/* Loads and validates a job file. Relative data and checkpoint paths are taken as given
 * (relative to the working directory). On success free with td_job_deinit. */
td_status td_job_load(const char *path, td_job *job);
void td_job_deinit(td_job *job);

#endif
