/* Data parallelism for the trainer: the shard plan, bucketed gradient all-reduce that
 * overlaps with backward, and ZeRO stage 1.
 *
 * Shard plan: rank 0 describes the data (shards, token counts, window count, seed, global
 * batch, each rank's slice of a global batch) as a tandem.ShardPlan protobuf message and
 * broadcasts it; every rank checks that it sees the same shards and sets its loader's
 * slice. Ranks together read exactly what one rank with the global batch would.
 *
 * Gradient sync: gradients are cut into buckets of contiguous parameters in the order
 * backward completes them (final norm and lm_head, layer L-1, ..., layer 0, embeddings),
 * each about bucket_bytes. A communication thread all-reduces a bucket as soon as
 * backward's hook reports it complete, while backward goes on; finish() waits for the
 * rest and averages. Only the communication thread calls MPI between arm() and finish().
 *
 * ZeRO-1: gradients are reduce-scattered, each rank updates its 1/N slice of the
 * parameters with its slice of the AdamW moments, and the parameters are all-gathered. */
#ifndef TD_DP_H
#define TD_DP_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "data/loader.h"
#include "worker/comm/comm.h"
#include "worker/model/model.h"
#include "worker/train/adamw.h"

/* Shares rank 0's plan for `l` and sets every rank's slice; fails when the global batch
 * does not divide by the world size or a rank sees other shards. */
td_status td_dp_share_plan(td_comm *c, td_loader *l, uint64_t seed, int seq_len, int global_batch);

typedef struct td_grad_sync td_grad_sync;

/* local_tokens: tokens per rank per micro-step. The batch's embedding rows are exchanged
 * separately only when all ranks' tokens are fewer than the vocabulary (otherwise the dense
 * token-embedding gradient is cheaper, reduced once backward has finished). */
td_status td_grad_sync_new(td_comm *c, td_model *m, size_t bucket_bytes, size_t local_tokens,
                           td_grad_sync **out);
void td_grad_sync_free(td_grad_sync **gs);
/* Installs the backward hook for the next backward (the last micro-step). */
void td_grad_sync_arm(td_grad_sync *gs);
/* Waits until every bucket is reduced, divides by the world size and removes the hook.
 * Reports the time waited after backward (exposed communication), the time spent in
 * all-reduce calls, and the bytes reduced. */
td_status td_grad_sync_finish(td_grad_sync *gs, double *wait_ms, double *comm_ms, size_t *bytes);
int td_grad_sync_num_buckets(const td_grad_sync *gs);
/* What the gradients still need dividing by after finish: 1 on a host backend (averaged in
 * place), the rank count on a device backend (summed by one all-reduce of the whole buffer
 * after backward; the optimizer step divides). */
double td_grad_sync_divisor(const td_grad_sync *gs);

/* ZeRO-1 state: this rank's slice [lo, hi) of the flat parameter vector, padded staging. */
typedef struct {
    td_comm *comm;
    size_t n, padded, lo, hi; /* slice of the padded vector: [rank*padded/N, ...) */
    float *stage;             /* padded floats */
} td_zero1;

td_status td_zero1_init(td_zero1 *z, td_comm *c, size_t num_params);
void td_zero1_deinit(td_zero1 *z);
/* One optimizer step: reduce-scatter and average gradients, global-norm clip, AdamW on the
 * slice (m, v hold the slice: hi - lo floats), all-gather parameters. Returns the norm. */
td_status td_zero1_step(td_zero1 *z, td_model *m, float *adam_m, float *adam_v,
                        const td_adamw_params *hp, double lr, long t, double clip,
                        double *grad_norm, double *comm_ms, size_t *bytes);
/* Gathers the full moments (num_params each) from the slices of every rank. */
td_status td_zero1_gather_moments(td_zero1 *z, const float *m_slice, const float *v_slice,
                                  float *m_full, float *v_full);

#endif
