/* The paged KV cache. It holds K and V for every layer in fixed blocks of block_tokens
 * positions: layer l, block b, slot s, kv head h is at
 * ((l * nblocks + b) * block_tokens + s) * kv_dim. A sequence owns a block table: position p
 * lives in block table[p / block_tokens]. The cache lives where its serving model's
 * tensors do (host memory, or a GPU's). */
#ifndef TD_KV_CACHE_H
#define TD_KV_CACHE_H

#include <stddef.h>

#include "common/status.h"
#include "worker/infer/infer_model.h"

td_status td_kv_cache_new(const td_infer_model *im, int block_tokens, size_t num_blocks,
                          td_kv_cache **out);
void td_kv_cache_free(td_kv_cache **kv);
int td_kv_cache_block_tokens(const td_kv_cache *kv);
size_t td_kv_cache_num_blocks(const td_kv_cache *kv);
/* Bytes of K and V per token position, all layers (float32). */
size_t td_kv_bytes_per_token(const td_model *m);

#endif
