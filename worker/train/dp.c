/* Data parallelism: shard plan, overlapped bucketed all-reduce, ZeRO-1 (see dp.h). */
#include "worker/train/dp.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "tandem.pb-c.h"

/* ---------------------------------------------------------------------------------------- */
/* shard plan */

td_status td_dp_share_plan(td_comm *c, td_loader *l, uint64_t seed, int seq_len, int global_batch) {
    if (global_batch % c->size != 0)
        return td_error_set(TD_ERR_INVALID,
                            "train.batch_size %d is the global batch and must divide by the %d "
                            "ranks",
                            global_batch, c->size);
    if (td_loader_num_windows(l) < (size_t)global_batch)
        return td_error_set(TD_ERR_INVALID,
                            "the data holds %zu windows, fewer than one global "
                            "batch of %d",
                            td_loader_num_windows(l), global_batch);
    uint8_t *buf = NULL;
    uint64_t len = 0;
    if (c->rank == 0) {
        Tandem__ShardPlan plan = TANDEM__SHARD_PLAN__INIT;
        plan.seed = seed;
        plan.seq_len = (uint32_t)seq_len;
        plan.global_batch = (uint32_t)global_batch;
        plan.world_size = (uint32_t)c->size;
        plan.num_windows = td_loader_num_windows(l);
        int nf = td_loader_num_shards(l);
        Tandem__ShardFile *files = calloc((size_t)nf, sizeof *files);
        Tandem__ShardFile **fp = calloc((size_t)nf, sizeof *fp);
        for (int i = 0; i < nf; i++) {
            tandem__shard_file__init(&files[i]);
            files[i].path = (char *)td_loader_shard(l, i)->path;
            files[i].tokens = td_loader_shard(l, i)->count;
            fp[i] = &files[i];
        }
        plan.n_files = (size_t)nf;
        plan.files = fp;
        uint32_t *rb = calloc((size_t)c->size + 1, sizeof *rb);
        for (int r = 0; r <= c->size; r++)
            rb[r] = (uint32_t)(r * (global_batch / c->size));
        plan.n_rank_begin = (size_t)c->size + 1;
        plan.rank_begin = rb;
        len = tandem__shard_plan__get_packed_size(&plan);
        buf = malloc(len ? len : 1);
        tandem__shard_plan__pack(&plan, buf);
        free(files);
        free(fp);
        free(rb);
    }
    TD_TRY(td_comm_bcast(c, &len, 1, TD_COMM_I64, 0));
    if (c->rank != 0) buf = malloc(len ? len : 1);
    td_status s = td_comm_bcast(c, buf, len, TD_COMM_BYTE, 0);
    if (s != TD_OK) {
        free(buf);
        return s;
    }
    Tandem__ShardPlan *p = tandem__shard_plan__unpack(NULL, len, buf);
    free(buf);
    if (!p) return td_error_set(TD_ERR_RUNTIME, "rank %d: cannot decode the shard plan", c->rank);
    if ((int)p->world_size != c->size || p->n_rank_begin != (size_t)c->size + 1 ||
        p->seed != seed || (int)p->seq_len != seq_len)
        s = td_error_set(TD_ERR_RUNTIME, "rank %d: the shard plan does not fit this job", c->rank);
    if (s == TD_OK && (p->num_windows != td_loader_num_windows(l) ||
                       p->n_files != (size_t)td_loader_num_shards(l)))
        s = td_error_set(TD_ERR_INVALID,
                         "rank %d sees %d shards / %zu windows, rank 0 sees %zu / %llu: every "
                         "rank must read the same data directory",
                         c->rank, td_loader_num_shards(l), td_loader_num_windows(l), p->n_files,
                         (unsigned long long)p->num_windows);
    for (size_t i = 0; s == TD_OK && i < p->n_files; i++)
        if (p->files[i]->tokens != td_loader_shard(l, (int)i)->count)
            s = td_error_set(TD_ERR_INVALID, "rank %d: shard %s has %zu tokens, rank 0 saw %llu",
                             c->rank, td_loader_shard(l, (int)i)->path,
                             td_loader_shard(l, (int)i)->count,
                             (unsigned long long)p->files[i]->tokens);
    if (s == TD_OK)
        td_loader_set_slice(l, (int)p->global_batch, (int)p->rank_begin[c->rank],
                            (int)p->rank_begin[c->rank + 1]);
    tandem__shard_plan__free_unpacked(p, NULL);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* bucketed all-reduce on a communication thread */

typedef struct {
    size_t lo, hi;  /* parameter index range */
    int last_stage; /* the backward stage that completes it */
} bucket;

struct td_grad_sync {
    td_comm *c;
    td_model *m;
    bucket *b;
    int nb;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, sent, quit;
    td_status err;
    double comm_s;
    int started, rows_mode;
    int device; /* the gradients are in device memory: one sum after backward, no thread */
    /* embedding rows of all ranks (finish) */
    int32_t *rows_tok;
    float *rows;
    size_t rows_cap;
};

static void *comm_main(void *arg) {
    td_grad_sync *g = arg;
    float *grads = td_model_grads(g->m);
    float inv = 1.0f / (float)g->c->size;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->quit && g->sent >= g->ready)
            pthread_cond_wait(&g->cv, &g->mu);
        if (g->quit) break;
        int k = g->sent;
        pthread_mutex_unlock(&g->mu);
        double t0 = td_time_now();
        bucket *b = &g->b[k];
        td_status s = td_comm_allreduce(g->c, grads + b->lo, b->hi - b->lo, TD_COMM_F32);
        for (size_t i = b->lo; i < b->hi; i++)
            grads[i] *= inv;
        double dt = td_time_now() - t0;
        pthread_mutex_lock(&g->mu);
        if (s != TD_OK && g->err == TD_OK) g->err = s;
        g->comm_s += dt;
        g->sent++;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void on_stage(void *ctx, int stage) {
    td_grad_sync *g = ctx;
    pthread_mutex_lock(&g->mu);
    while (g->ready < g->nb && g->b[g->ready].last_stage == stage)
        g->ready++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

td_status td_grad_sync_new(td_comm *c, td_model *m, size_t bucket_bytes, size_t local_tokens,
                           td_grad_sync **out) {
    td_grad_sync *g = calloc(1, sizeof *g);
    if (!g) return td_error_set(TD_ERR_NOMEM, "out of memory");
    g->c = c;
    g->m = m;
    g->device = !td_model_backend(m)->host_memory;
    g->rows_mode =
        !g->device && local_tokens * (size_t)c->size < (size_t)td_model_config_of(m)->vocab_size;
    int L = td_model_config_of(m)->num_hidden_layers;
    g->b = calloc((size_t)L + 4, sizeof *g->b);
    size_t per = bucket_bytes / sizeof(float);
    /* Ranges in the order backward completes them. The token-embedding matrix comes first:
     * in embed rows mode (armed steps) the last writer to its gradient buffer is lm_head's
     * backward (tied) or nothing (untied), so it is complete at stage L; the batch's
     * embedding rows are exchanged separately in finish(). */
    size_t wlo, whi, lo, hi;
    td_model_embed_range(m, &wlo, &whi);
    struct entry {
        size_t lo, hi;
        int stage;
    } *e = calloc((size_t)L + 3, sizeof *e);
    int ne = 0;
    if (g->rows_mode) e[ne++] = (struct entry){wlo, whi, L};
    for (int st = L; st >= 0; st--) {
        td_model_stage_range(m, st, &lo, &hi);
        e[ne++] = (struct entry){lo, hi, st};
    }
    td_model_stage_range(m, -1, &lo, &hi); /* embeddings (without wte in rows mode) */
    if (g->rows_mode) lo = whi;
    if (hi > lo) e[ne++] = (struct entry){lo, hi, -1};
    for (int i = 0; i < ne; i++) {
        if (e[i].hi == e[i].lo) continue;
        bucket *cur = g->nb ? &g->b[g->nb - 1] : NULL;
        if (cur && cur->lo == e[i].hi && cur->hi - cur->lo < per) {
            cur->lo = e[i].lo; /* extends the open bucket downwards */
            cur->last_stage = e[i].stage;
        } else {
            g->b[g->nb++] = (bucket){e[i].lo, e[i].hi, e[i].stage};
        }
    }
    free(e);
    g->rows_tok = NULL;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    if (c->size > 1 && c->threads_ok && !g->device) {
        if (pthread_create(&g->thread, NULL, comm_main, g) != 0) {
            free(g->b);
            free(g);
            return td_error_set(TD_ERR_RUNTIME, "cannot start the communication thread");
        }
        g->started = 1;
    }
    *out = g;
    return TD_OK;
}

int td_grad_sync_num_buckets(const td_grad_sync *gs) {
    return gs->nb;
}

double td_grad_sync_divisor(const td_grad_sync *gs) {
    return gs->device ? (double)gs->c->size : 1.0;
}

void td_grad_sync_arm(td_grad_sync *g) {
    if (g->c->size == 1) return;
    if (g->started) td_model_set_backward_hook(g->m, on_stage, g);
    td_model_set_embed_rows_mode(g->m, g->rows_mode);
}

td_status td_grad_sync_finish(td_grad_sync *g, double *wait_ms, double *comm_ms, size_t *bytes) {
    td_model_set_backward_hook(g->m, NULL, NULL);
    *wait_ms = *comm_ms = 0;
    *bytes = 0;
    if (g->c->size == 1) return TD_OK;
    double t0 = td_time_now();
    if (g->device) { /* one sum over the whole buffer, on the device's communicator */
        TD_TRY(
            td_comm_allreduce(g->c, td_model_grads(g->m), td_model_num_params(g->m), TD_COMM_F32));
        *comm_ms = *wait_ms = (td_time_now() - t0) * 1e3;
        *bytes = td_model_num_params(g->m) * sizeof(float);
        return TD_OK;
    }
    if (!g->started) { /* no communication thread allowed: reduce here, after backward */
        float *grads = td_model_grads(g->m), inv = 1.0f / (float)g->c->size;
        for (int k = 0; k < g->nb; k++) {
            bucket *b = &g->b[k];
            TD_TRY(td_comm_allreduce(g->c, grads + b->lo, b->hi - b->lo, TD_COMM_F32));
            for (size_t i = b->lo; i < b->hi; i++)
                grads[i] *= inv;
        }
        g->comm_s = td_time_now() - t0;
    }
    pthread_mutex_lock(&g->mu);
    g->ready = g->nb; /* safety: anything the hook did not report */
    pthread_cond_broadcast(&g->cv);
    while (g->started && g->sent < g->nb)
        pthread_cond_wait(&g->cv, &g->mu);
    td_status s = g->err;
    *comm_ms = g->comm_s * 1e3;
    g->ready = g->sent = 0;
    g->comm_s = 0;
    g->err = TD_OK;
    pthread_mutex_unlock(&g->mu);
    /* the batch's token-embedding gradient rows: gather every rank's, add their mean */
    const int32_t *tok;
    const float *rows;
    int n;
    td_model_embed_rows(g->m, &tok, &rows, &n);
    size_t bytes_rows = 0;
    if (s == TD_OK && n > 0) {
        int C = td_model_config_of(g->m)->hidden_size, N = g->c->size;
        size_t need = (size_t)n * N;
        if (need > g->rows_cap) {
            free(g->rows_tok);
            free(g->rows);
            g->rows_tok = malloc(need * sizeof *g->rows_tok);
            g->rows = malloc(need * (size_t)C * sizeof *g->rows);
            g->rows_cap = need;
        }
        double t1 = td_time_now();
        memcpy(g->rows_tok + (size_t)g->c->rank * n, tok, (size_t)n * sizeof *tok);
        memcpy(g->rows + (size_t)g->c->rank * n * C, rows, (size_t)n * C * sizeof *rows);
        s = td_comm_allgather(g->c, g->rows_tok, (size_t)n * sizeof *tok, TD_COMM_BYTE);
        if (s == TD_OK) s = td_comm_allgather(g->c, g->rows, (size_t)n * C, TD_COMM_F32);
        *comm_ms += (td_time_now() - t1) * 1e3;
        if (s == TD_OK) td_model_add_embed_rows(g->m, g->rows_tok, g->rows, (int)need, 1.0f / N);
        bytes_rows = need * ((size_t)C * 4 + 4);
    }
    *wait_ms = (td_time_now() - t0) * 1e3;
    size_t wlo, whi;
    td_model_embed_range(g->m, &wlo, &whi);
    *bytes = td_model_num_params(g->m) * sizeof(float) + bytes_rows;
    return s;
}

void td_grad_sync_free(td_grad_sync **gp) {
    if (!gp || !*gp) return;
    td_grad_sync *g = *gp;
    if (g->started) {
        pthread_mutex_lock(&g->mu);
        g->quit = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->rows_tok);
    free(g->rows);
    free(g->b);
    free(g);
    *gp = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* ZeRO-1 */

td_status td_zero1_init(td_zero1 *z, td_comm *c, size_t n) {
    memset(z, 0, sizeof *z);
    z->comm = c;
    z->n = n;
    z->padded = (n + (size_t)c->size - 1) / (size_t)c->size * (size_t)c->size;
    size_t per = z->padded / (size_t)c->size;
    z->lo = (size_t)c->rank * per;
    z->hi = z->lo + per;
    z->stage = calloc(z->padded, sizeof(float));
    if (!z->stage) return td_error_set(TD_ERR_NOMEM, "out of memory for ZeRO staging");
    return TD_OK;
}

void td_zero1_deinit(td_zero1 *z) {
    free(z->stage);
    memset(z, 0, sizeof *z);
}

td_status td_zero1_step(td_zero1 *z, td_model *m, float *adam_m, float *adam_v,
                        const td_adamw_params *hp, double lr, long t, double clip,
                        double *grad_norm, double *comm_ms, size_t *bytes) {
    td_comm *c = z->comm;
    size_t per = z->padded / (size_t)c->size;
    float *g = td_model_grads(m), *p = td_model_params(m);
    double t0 = td_time_now();
    memcpy(z->stage, g, z->n * sizeof(float));
    memset(z->stage + z->n, 0, (z->padded - z->n) * sizeof(float));
    TD_TRY(td_comm_reduce_scatter(c, z->stage, per, TD_COMM_F32));
    double tc = td_time_now() - t0;
    float *gs = z->stage + z->lo;
    float inv = 1.0f / (float)c->size;
    double ss = 0;
    for (size_t i = 0; i < per; i++) {
        gs[i] *= inv;
        ss += (double)gs[i] * gs[i];
    }
    double t1 = td_time_now();
    TD_TRY(td_comm_allreduce(c, &ss, 1, TD_COMM_F64));
    tc += td_time_now() - t1;
    double norm = sqrt(ss);
    if (clip > 0 && norm > clip) {
        float sc = (float)(clip / (norm + 1e-6));
        for (size_t i = 0; i < per; i++)
            gs[i] *= sc;
    }
    /* the slice's gradients go back into the model's gradient buffer for AdamW */
    size_t hi = z->hi < z->n ? z->hi : z->n;
    if (hi > z->lo) memcpy(g + z->lo, gs, (hi - z->lo) * sizeof(float));
    TD_TRY(td_adamw_step_range(m, adam_m, adam_v, z->lo, hi, hp, lr, t));
    memcpy(z->stage + z->lo, p + z->lo, (hi > z->lo ? hi - z->lo : 0) * sizeof(float));
    double t2 = td_time_now();
    TD_TRY(td_comm_allgather(c, z->stage, per, TD_COMM_F32));
    tc += td_time_now() - t2;
    memcpy(p, z->stage, z->n * sizeof(float));
    *grad_norm = norm;
    *comm_ms = tc * 1e3;
    *bytes = 2 * z->padded * sizeof(float);
    return TD_OK;
}

td_status td_zero1_gather_moments(td_zero1 *z, const float *m_slice, const float *v_slice,
                                  float *m_full, float *v_full) {
    td_comm *c = z->comm;
    size_t per = z->padded / (size_t)c->size;
    const float *src[2] = {m_slice, v_slice};
    float *dst[2] = {m_full, v_full};
    for (int k = 0; k < 2; k++) {
        memset(z->stage, 0, z->padded * sizeof(float));
        size_t hi = z->hi < z->n ? z->hi : z->n;
        if (hi > z->lo) memcpy(z->stage + z->lo, src[k], (hi - z->lo) * sizeof(float));
        TD_TRY(td_comm_allgather(c, z->stage, per, TD_COMM_F32));
        memcpy(dst[k], z->stage, z->n * sizeof(float));
    }
    return TD_OK;
}
