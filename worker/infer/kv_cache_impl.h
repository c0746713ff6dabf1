/* The KV cache's layout, for the serving model's forward (infer_model.c) only. */
#ifndef TD_KV_CACHE_IMPL_H
#define TD_KV_CACHE_IMPL_H

#include "worker/backend/backend.h"

struct td_kv_cache {
    td_backend *be; /* where k and v live (the serving model's backend) */
    int L, bt, kvdim;
    size_t nblocks;
    float *k, *v; /* L * nblocks * bt * kvdim each */
};

#endif
