/* The paged KV cache (see kv_cache.h). */
#include "worker/infer/kv_cache.h"

#include <stdlib.h>

#include "worker/infer/kv_cache_impl.h"

td_status td_kv_cache_new(const td_infer_model *im, int block_tokens, size_t num_blocks,
                          td_kv_cache **out) {
    *out = NULL;
    if (block_tokens <= 0 || num_blocks == 0)
        return td_error_set(TD_ERR_INVALID, "KV cache needs blocks (got %zu of %d tokens)",
                            num_blocks, block_tokens);
    const td_model_config *c = td_infer_model_config(im);
    td_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return td_error_set(TD_ERR_NOMEM, "out of memory");
    kv->be = td_model_backend(td_infer_model_weights(im));
    kv->L = c->num_hidden_layers;
    kv->bt = block_tokens;
    kv->kvdim = c->num_key_value_heads * td_model_config_head_dim(c);
    kv->nblocks = num_blocks;
    size_t n = (size_t)kv->L * num_blocks * (size_t)block_tokens * (size_t)kv->kvdim;
    void *k = NULL, *v = NULL;
    td_status s = td_backend_alloc(kv->be, &k, n * sizeof(float));
    kv->k = k;
    if (s == TD_OK) s = td_backend_alloc(kv->be, &v, n * sizeof(float));
    kv->v = v;
    if (s != TD_OK) {
        td_kv_cache_free(&kv);
        return td_error_set(TD_ERR_NOMEM, "out of memory for a KV cache of %.1f MiB",
                            2.0 * (double)n * 4 / 1048576);
    }
    *out = kv;
    return TD_OK;
}

void td_kv_cache_free(td_kv_cache **kvp) {
    if (!kvp || !*kvp) return;
    td_backend_release((*kvp)->be, (*kvp)->k);
    td_backend_release((*kvp)->be, (*kvp)->v);
    free(*kvp);
    *kvp = NULL;
}

int td_kv_cache_block_tokens(const td_kv_cache *kv) {
    return kv->bt;
}
size_t td_kv_cache_num_blocks(const td_kv_cache *kv) {
    return kv->nblocks;
}

size_t td_kv_bytes_per_token(const td_model *m) {
    const td_model_config *c = td_model_config_of(m);
    return 2 * (size_t)c->num_hidden_layers * (size_t)c->num_key_value_heads *
           (size_t)td_model_config_head_dim(c) * sizeof(float);
}
