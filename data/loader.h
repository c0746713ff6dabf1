/* Batches of (B, T) token windows from a set of shards, deterministic for a seed.
 *
 * The shards of a split are the files in a directory whose names contain the split name
 * ("train", "val") and end in ".bin", in name order (or a single file). Each shard is cut
 * into windows of T+1 tokens at stride T; an epoch visits every window once in an order
 * shuffled by (seed, epoch) (or in order when shuffle is off, as for validation). The
 * position (epoch, cursor) is the loader's whole state, saved in checkpoints. */
#ifndef TD_LOADER_H
#define TD_LOADER_H

#include <stdint.h>

#include "common/status.h"
#include "data/shard.h"

typedef struct td_loader td_loader;

/* `source` is a directory or one .bin file; `split` filters file names in a directory
 * ("train", "val"). Fails when no shard is found or a shard is invalid, or when the
 * shards hold fewer than one batch of windows. */
td_status td_loader_open(const char *source, const char *split, int B, int T, uint64_t seed,
                         int shuffle, td_loader **out);
void td_loader_free(td_loader **l);

/* Fills tokens and targets (B*T each; targets are tokens shifted by one). */
void td_loader_next(td_loader *l, int32_t *tokens, int32_t *targets);
/* Largest token id seen in the shards (for a vocabulary check). */
int32_t td_loader_max_token(const td_loader *l);
size_t td_loader_num_windows(const td_loader *l);
size_t td_loader_num_tokens(const td_loader *l);
void td_loader_get_pos(const td_loader *l, int64_t *epoch, int64_t *cursor);
void td_loader_set_pos(td_loader *l, int64_t epoch, int64_t cursor);
/* Back to epoch 0, cursor 0. */
void td_loader_reset(td_loader *l);

/* Data parallelism: each td_loader_next consumes `global_batch` windows of the epoch order
 * and keeps positions [begin, end) of them (end - begin must equal the loader's B). The
 * position stays global, so it means the same at any world size. */
void td_loader_set_slice(td_loader *l, int global_batch, int begin, int end);
/* Global window indices of the sequences the last td_loader_next returned (B entries). */
const uint64_t *td_loader_last_windows(const td_loader *l);
int td_loader_num_shards(const td_loader *l);
const td_shard *td_loader_shard(const td_loader *l, int i);

#endif
