/* The single-process training loop: data → forward/backward (with gradient accumulation)
 * → clip → AdamW → metrics, with periodic validation and checkpoints, and exact resume.
 *
 * Output: a JSONL line per step in CKPT_DIR/metrics.jsonl (step, loss, lr, grad_norm,
 * tokens_per_s, compute_ms, comm_ms, rss_bytes; val_loss on evaluation steps); on a
 * terminal a progress line per step; on stdout a line per evaluation and a summary. */
#ifndef TD_TRAINER_H
#define TD_TRAINER_H

#include "common/status.h"
#include "worker/train/jobfile.h"

typedef struct {
    int resume;   /* continue from the newest complete checkpoint in ckpt_dir */
    long stop_at; /* stop after this step (with a checkpoint); 0 = run to train.steps */
    int quiet;    /* no per-evaluation lines on stdout */
} td_train_opts;

typedef struct {
    long steps_done;
    double first_loss, last_loss;
    double first_val_loss, last_val_loss; /* NAN when there is no validation data */
    double tokens_per_s;                  /* over the whole run */
    char last_checkpoint[1024];
} td_train_result;

td_status td_train_run(const td_job *job, const td_train_opts *opts, td_train_result *res);

#endif
