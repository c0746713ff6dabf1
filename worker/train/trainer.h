/* The training loop: data → forward/backward (with gradient accumulation) → gradient
 * sync → clip → AdamW → metrics, with periodic validation and checkpoints, and exact
 * resume. With a communicator of N ranks it is data-parallel (dp.h): train.batch_size is
 * the global batch, each rank takes batch_size / N of it, gradients are averaged in buckets
 * overlapping backward (or reduce-scattered with ZeRO-1), and rank 0 alone writes
 * checkpoints and metrics. Checkpoints do not depend on N: a run resumes at any N.
 *
 * Output: a JSONL line per step in CKPT_DIR/metrics.jsonl (step, loss, lr, grad_norm,
 * tokens_per_s, compute_ms, comm_ms, rss_bytes; val_loss on evaluation steps); on a
 * terminal a progress line per step; on stdout a line per evaluation and a summary. */
#ifndef TD_TRAINER_H
#define TD_TRAINER_H

#include "common/status.h"
#include "worker/comm/comm.h"
#include "worker/train/jobfile.h"

typedef struct {
    int resume;          /* continue from the newest complete checkpoint in ckpt_dir */
    long stop_at;        /* stop after this step (with a checkpoint); 0 = run to train.steps */
    int quiet;           /* no per-evaluation lines on stdout */
    int no_verify;       /* resume without checking the checkpoint's SHA256SUMS */
    int verify_data;     /* check every shard's sha256 against manifest.json (not sizes only) */
    td_comm *comm;       /* NULL: one process */
    size_t bucket_bytes; /* gradient all-reduce bucket size (0: 25 MiB) */
    /* train → serve: when not NULL, the trained model and the tokenizer.json text are
     * handed over (caller frees with td_model_free / free) instead of freed */
    struct td_model **keep_model;
    char **keep_tokenizer;
    const char *device; /* compute backend: "cpu" (NULL) or "cuda" (this node-local rank's
                         * GPU; the caller checked one is usable) */
    /* set non-zero by a signal handler: the ranks agree on it after each step, finish that
     * step, write its checkpoint and return TD_OK (res->stopped); NULL: not watched */
    volatile int *stop;
} td_train_opts;

typedef struct {
    long steps_done;
    double first_loss, last_loss;
    double first_val_loss, last_val_loss; /* NAN when there is no validation data */
    double tokens_per_s;                  /* over the whole run */
    char last_checkpoint[1024];
    int stopped; /* a stop signal ended training early (after steps_done, saved) */
} td_train_result;

td_status td_train_run(const td_job *job, const td_train_opts *opts, td_train_result *res);

#endif
