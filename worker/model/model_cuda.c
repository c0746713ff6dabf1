/* The model on a GPU (see model_cuda.h): the CPU model's forward and backward (model.c),
 * step for step, on the CUDA kernels. Parameters live in one device allocation with the
 * host model's layout, so a tensor's device address is the device base plus its offset. */
#include "worker/model/model_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *res, *n1, *n1m, *n1r, *qkv, *atty, *lse, *res2, *n2, *n2m, *n2r, *fc, *h;
} gpu_layer;

struct td_gpu_model {
    td_cuda *cx;
    const td_model *host;
    td_model_config cfg;
    int C, L, NH, NKV, hd, V, QKV, F, FC, llama, maxN;
    size_t np;
    const float *hbase; /* host parameters: offsets come from the host pointers */
    float *params, *grads, *m, *v;
    uint16_t *pbf;
    gpu_layer *la;
    float *acts; /* one allocation for every activation and backward buffer */
    float *resf, *nf, *nfm, *nfr, *logits, *xlse;
    float *dres, *dn, *dqkv, *datty, *dfc, *dh;
    uint16_t *s16[2]; /* bf16 operands */
    int32_t *tok, *tgt;
    int32_t *tok_host;
    int B, T, has_targets, counted;
};

#define DP(x) ((x) ? g->params + ((x)-g->hbase) : NULL)
#define DG(x) ((x) ? g->grads + ((x)-g->hbase) : NULL)
#define DB(x) ((x) ? g->pbf + ((x)-g->hbase) : NULL)

td_status td_gpu_model_new(td_cuda *cx, const td_model *host, int B, int T, td_gpu_model **out) {
    *out = NULL;
    const td_model_config *c = td_model_config_of(host);
    if (c->tp_size > 1)
        return td_error_set(TD_ERR_INVALID, "the GPU model takes a whole model, not a slice");
    td_gpu_model *g = calloc(1, sizeof *g);
    if (!g) return td_error_set(TD_ERR_NOMEM, "out of memory");
    g->cx = cx;
    g->host = host;
    g->cfg = *c;
    g->C = c->hidden_size;
    g->L = c->num_hidden_layers;
    g->NH = c->num_attention_heads;
    g->NKV = c->num_key_value_heads;
    g->hd = g->C / g->NH;
    g->V = c->vocab_size;
    g->F = c->intermediate_size;
    g->llama = c->arch == TD_ARCH_LLAMA;
    g->FC = g->llama ? 2 * g->F : g->F;
    g->QKV = (g->NH + 2 * g->NKV) * g->hd;
    g->np = td_model_num_params(host);
    g->hbase = td_model_params((td_model *)host);
    g->maxN = B * T;
    size_t N = (size_t)B * T, C = (size_t)g->C, np = g->np;
    td_status s = TD_OK;
#define ALLOC(p, bytes)                                                                            \
    if (s == TD_OK) s = td_cuda_alloc((void **)&(p), (bytes))
    ALLOC(g->params, np * 4);
    ALLOC(g->grads, np * 4);
    ALLOC(g->m, np * 4);
    ALLOC(g->v, np * 4);
    ALLOC(g->pbf, np * 2);
#define PAD(n) ((((size_t)(n)) + 63) & ~(size_t)63)
    size_t per = PAD(N * C) * 3 + PAD(N) * 4 + PAD(N * g->QKV) + PAD(N * (size_t)g->NH * g->hd) +
                 PAD((size_t)B * g->NH * T) + PAD(N * C) * 2 + PAD(N * g->FC) + PAD(N * g->F);
    size_t widest = (size_t)(g->V > g->FC ? g->V : g->FC);
    if ((size_t)g->QKV > widest) widest = (size_t)g->QKV;
    size_t total = per * g->L + PAD(N * C) * 2 + PAD(N) * 2 + PAD(N * g->V) +
                   PAD(N) /* resf nf nfm nfr logits xlse */
                   + PAD(N * C) * 2 + PAD(N * g->QKV) + PAD(N * (size_t)g->NH * g->hd) +
                   PAD(N * g->FC) + PAD(N * g->F);
    ALLOC(g->acts, total * 4);
    ALLOC(g->s16[0], N * widest * 2);
    ALLOC(g->s16[1], N * widest * 2);
    ALLOC(g->tok, N * 4);
    ALLOC(g->tgt, N * 4);
#undef ALLOC
    g->la = calloc((size_t)g->L, sizeof *g->la);
    g->tok_host = malloc(N * 4);
    if (s == TD_OK && (!g->la || !g->tok_host)) s = td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s != TD_OK) {
        td_gpu_model_free(&g);
        return s;
    }
    float *p = g->acts;
/* every buffer starts on a 256-byte boundary (cuBLASLt's preferred alignment) */
#define TAKE(n) (p += PAD(n), p - PAD(n))
    for (int l = 0; l < g->L; l++) {
        gpu_layer *a = &g->la[l];
        a->res = TAKE(N * C);
        a->n1 = TAKE(N * C);
        a->n1m = TAKE(N);
        a->n1r = TAKE(N);
        a->qkv = TAKE(N * g->QKV);
        a->atty = TAKE(N * (size_t)g->NH * g->hd);
        a->lse = TAKE((size_t)B * g->NH * T);
        a->res2 = TAKE(N * C);
        a->n2 = TAKE(N * C);
        a->n2m = TAKE(N);
        a->n2r = TAKE(N);
        a->fc = TAKE(N * g->FC);
        a->h = TAKE(N * g->F);
        p += PAD(N * C); /* spare: keeps the per-layer size as counted above */
    }
    g->resf = TAKE(N * C);
    g->nf = TAKE(N * C);
    g->nfm = TAKE(N);
    g->nfr = TAKE(N);
    g->logits = TAKE(N * g->V);
    g->xlse = TAKE(N);
    g->dres = TAKE(N * C);
    g->dn = TAKE(N * C);
    g->dqkv = TAKE(N * g->QKV);
    g->datty = TAKE(N * (size_t)g->NH * g->hd);
    g->dfc = TAKE(N * g->FC);
    g->dh = TAKE(N * g->F);
#undef TAKE
    s = td_cuda_upload(cx, g->params, g->hbase, np * 4);
    if (s == TD_OK) s = td_cuda_zero(cx, g->grads, np * 4);
    if (s == TD_OK) s = td_cuda_zero(cx, g->m, np * 4);
    if (s == TD_OK) s = td_cuda_zero(cx, g->v, np * 4);
    if (s == TD_OK) s = td_cuda_to_bf16(cx, g->pbf, g->params, np);
    if (s == TD_OK) s = td_cuda_sync(cx);
    if (s != TD_OK) {
        td_gpu_model_free(&g);
        return s;
    }
    *out = g;
    return TD_OK;
}

void td_gpu_model_free(td_gpu_model **gp) {
    if (!gp || !*gp) return;
    td_gpu_model *g = *gp;
    void *d[] = {g->params, g->grads,  g->m,      g->v,   g->pbf,
                 g->acts,   g->s16[0], g->s16[1], g->tok, g->tgt};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        td_cuda_release(d[i]);
    free(g->la);
    free(g->tok_host);
    free(g);
    *gp = NULL;
}

/* ---------------------------------------------------------------------------------------- */

static td_status mm_fwd(td_gpu_model *g, float *out, const float *inp, const float *W,
                        const float *bias, int N, int C, int OC) {
    TD_TRY(td_cuda_to_bf16(g->cx, g->s16[0], inp, (size_t)N * C));
    return td_cuda_matmul_bf16(g->cx, out, g->s16[0], DB(W), DP(bias), N, OC, C, 0, 1, 0);
}

/* W and the gradient pointers are host addresses (mapped here) */
static td_status mm_bwd(td_gpu_model *g, float *dinp, const float *dW_host, const float *db_host,
                        const float *dout, const float *inp, const float *W, int N, int C, int OC,
                        int overwrite) {
    TD_TRY(td_cuda_to_bf16(g->cx, g->s16[0], dout, (size_t)N * OC));
    TD_TRY(td_cuda_to_bf16(g->cx, g->s16[1], inp, (size_t)N * C));
    if (dinp)
        TD_TRY(
            td_cuda_matmul_bf16(g->cx, dinp, g->s16[0], DB(W), NULL, N, C, OC, 0, 0, !overwrite));
    TD_TRY(td_cuda_matmul_bf16(g->cx, DG(dW_host), g->s16[0], g->s16[1], NULL, OC, C, N, 1, 0, 1));
    if (db_host) TD_TRY(td_cuda_colsum_acc(g->cx, DG(db_host), dout, N, OC));
    return TD_OK;
}

static td_status norm_fwd(td_gpu_model *g, float *out, float *mean, float *rstd, const float *x,
                          const float *w_host, const float *b_host, int N) {
    if (g->llama)
        return td_cuda_rmsnorm_fwd(g->cx, out, rstd, x, DP(w_host), N, g->C,
                                   (float)g->cfg.norm_eps);
    return td_cuda_layernorm_fwd(g->cx, out, mean, rstd, x, DP(w_host), DP(b_host), N, g->C,
                                 (float)g->cfg.norm_eps);
}

static td_status norm_bwd(td_gpu_model *g, float *dx, const float *dw_host, const float *db_host,
                          const float *dout, const float *x, const float *w_host, const float *mean,
                          const float *rstd, int N) {
    if (g->llama)
        return td_cuda_rmsnorm_bwd(g->cx, dx, DG(dw_host), dout, x, DP(w_host), rstd, N, g->C);
    return td_cuda_layernorm_bwd(g->cx, dx, DG(dw_host), DG(db_host), dout, x, DP(w_host), mean,
                                 rstd, N, g->C);
}

/* The second half of a layer, shared by training and inference: out = res2 + MLP(norm(res2)),
 * with a->res2 holding the residual after attention. */
static td_status mlp_half(td_gpu_model *g, gpu_layer *a, const td_layer_params *w, float *out,
                          int N) {
    int C = g->C;
    TD_TRY(norm_fwd(g, a->n2, a->n2m, a->n2r, a->res2, w->norm2_w, w->norm2_b, N));
    TD_TRY(mm_fwd(g, a->fc, a->n2, w->wfc, w->bfc, N, C, g->FC));
    if (g->llama)
        TD_TRY(td_cuda_swiglu_fwd(g->cx, a->h, a->fc, N, g->F));
    else
        TD_TRY(td_cuda_gelu_fwd(g->cx, a->h, a->fc, (size_t)N * g->F));
    TD_TRY(mm_fwd(g, out, a->h, w->wproj, w->bproj, N, g->F, C));
    return td_cuda_add(g->cx, out, out, a->res2, (size_t)N * C);
}

td_status td_gpu_model_forward(td_gpu_model *g, const int32_t *tokens, const int32_t *targets,
                               int B, int T, double *loss) {
    int N = B * T, C = g->C, V = g->V;
    if (T > g->cfg.max_position_embeddings)
        return td_error_set(TD_ERR_INVALID, "sequence of %d exceeds max_position_embeddings %d", T,
                            g->cfg.max_position_embeddings);
    if (N > g->maxN)
        return td_error_set(TD_ERR_INVALID, "batch of %d x %d exceeds the GPU plan of %d rows", B,
                            T, g->maxN);
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V || (targets && targets[n] >= V))
            return td_error_set(TD_ERR_INVALID, "token id outside [0, %d) at position %d", V, n);
    const td_param_ptrs *P = td_model_param_ptrs(g->host);
    memcpy(g->tok_host, tokens, sizeof(int32_t) * (size_t)N);
    TD_TRY(td_cuda_upload(g->cx, g->tok, tokens, sizeof(int32_t) * (size_t)N));
    if (targets) TD_TRY(td_cuda_upload(g->cx, g->tgt, targets, sizeof(int32_t) * (size_t)N));
    g->B = B;
    g->T = T;
    g->has_targets = targets != NULL;
    TD_TRY(td_cuda_embed_fwd(g->cx, g->la[0].res, g->tok, DP(P->wte), DP(P->wpe), N, T, C));
    for (int l = 0; l < g->L; l++) {
        gpu_layer *a = &g->la[l];
        const td_layer_params *w = &P->layers[l];
        float *res_out = l + 1 < g->L ? g->la[l + 1].res : g->resf;
        TD_TRY(norm_fwd(g, a->n1, a->n1m, a->n1r, a->res, w->norm1_w, w->norm1_b, N));
        TD_TRY(mm_fwd(g, a->qkv, a->n1, w->wqkv, w->bqkv, N, C, g->QKV));
        if (g->llama)
            TD_TRY(td_cuda_rope(g->cx, a->qkv, N, T, g->QKV, g->NH + g->NKV, g->hd,
                                (float)g->cfg.rope_theta, 0));
        TD_TRY(td_cuda_attention_fwd(g->cx, a->atty, a->lse, a->qkv, B, T, g->NH, g->NKV, g->hd));
        TD_TRY(mm_fwd(g, a->res2, a->atty, w->wo, w->bo, N, g->NH * g->hd, C));
        TD_TRY(td_cuda_add(g->cx, a->res2, a->res2, a->res, (size_t)N * C));
        TD_TRY(mlp_half(g, a, w, res_out, N));
    }
    TD_TRY(norm_fwd(g, g->nf, g->nfm, g->nfr, g->resf, P->normf_w, P->normf_b, N));
    TD_TRY(mm_fwd(g, g->logits, g->nf, P->lm_head, NULL, N, C, V));
    if (targets) {
        double l = 0;
        TD_TRY(td_cuda_crossentropy_fwd(g->cx, g->xlse, g->logits, g->tgt, N, V, &l, &g->counted));
        if (loss) *loss = l;
    }
    return td_cuda_sync(g->cx);
}

td_status td_gpu_model_backward(td_gpu_model *g, double dscale) {
    if (!g->has_targets)
        return td_error_set(TD_ERR_INVALID, "backward needs a forward pass with targets");
    int B = g->B, T = g->T, N = B * T, C = g->C, V = g->V;
    const td_param_ptrs *P = td_model_param_ptrs(g->host);
    /* gradient addresses: the host model's parameter pointers mapped into the gradients */
    TD_TRY(td_cuda_crossentropy_bwd(g->cx, g->logits, g->logits, g->xlse, g->tgt, N, V, dscale,
                                    g->counted));
    TD_TRY(mm_bwd(g, g->dn, P->lm_head, NULL, g->logits, g->nf, P->lm_head, N, C, V, 1));
    TD_TRY(td_cuda_zero(g->cx, g->dres, sizeof(float) * (size_t)N * C));
    TD_TRY(norm_bwd(g, g->dres, P->normf_w, P->normf_b, g->dn, g->resf, P->normf_w, g->nfm, g->nfr,
                    N));
    for (int l = g->L - 1; l >= 0; l--) {
        gpu_layer *a = &g->la[l];
        const td_layer_params *w = &P->layers[l];
        TD_TRY(mm_bwd(g, g->dh, w->wproj, w->bproj, g->dres, a->h, w->wproj, N, g->F, C, 1));
        if (g->llama)
            TD_TRY(td_cuda_swiglu_bwd(g->cx, g->dfc, g->dh, a->fc, N, g->F));
        else
            TD_TRY(td_cuda_gelu_bwd(g->cx, g->dfc, g->dh, a->fc, (size_t)N * g->F));
        TD_TRY(mm_bwd(g, g->dn, w->wfc, w->bfc, g->dfc, a->n2, w->wfc, N, C, g->FC, 1));
        TD_TRY(norm_bwd(g, g->dres, w->norm2_w, w->norm2_b, g->dn, a->res2, w->norm2_w, a->n2m,
                        a->n2r, N));
        TD_TRY(mm_bwd(g, g->datty, w->wo, w->bo, g->dres, a->atty, w->wo, N, g->NH * g->hd, C, 1));
        TD_TRY(td_cuda_attention_bwd(g->cx, g->dqkv, g->datty, a->atty, a->lse, a->qkv, B, T, g->NH,
                                     g->NKV, g->hd));
        if (g->llama)
            TD_TRY(td_cuda_rope(g->cx, g->dqkv, N, T, g->QKV, g->NH + g->NKV, g->hd,
                                (float)g->cfg.rope_theta, 1));
        TD_TRY(mm_bwd(g, g->dn, w->wqkv, w->bqkv, g->dqkv, a->n1, w->wqkv, N, C, g->QKV, 1));
        TD_TRY(norm_bwd(g, g->dres, w->norm1_w, w->norm1_b, g->dn, a->res, w->norm1_w, a->n1m,
                        a->n1r, N));
    }
    TD_TRY(td_cuda_embed_bwd(g->cx, DG(P->wte), DG(P->wpe), g->dres, g->tok_host, N, T, C));
    g->has_targets = 0; /* the logits now hold gradients */
    return td_cuda_sync(g->cx);
}

td_status td_gpu_model_step(td_gpu_model *g, float lr, float beta1, float beta2, float eps,
                            float weight_decay, long step, double clip, double grad_div,
                            double *gnorm) {
    double ss = 0;
    TD_TRY(td_cuda_sumsq(g->cx, g->grads, g->np, &ss));
    if (grad_div <= 0) grad_div = 1;
    double norm = sqrt(ss) / grad_div;
    if (gnorm) *gnorm = norm;
    float scale =
        (clip > 0 && norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0f) / (float)grad_div;
    int nt;
    const td_param_tensor *t = td_model_tensors(g->host, &nt);
    for (int k = 0; k < nt; k++)
        TD_TRY(td_cuda_adamw(g->cx, g->params + t[k].offset, g->pbf + t[k].offset,
                             g->grads + t[k].offset, g->m + t[k].offset, g->v + t[k].offset,
                             t[k].numel, lr, beta1, beta2, eps, t[k].decay ? weight_decay : 0.0f,
                             step, scale));
    return td_cuda_sync(g->cx);
}

td_status td_gpu_model_logits(td_gpu_model *g, float *out) {
    return td_cuda_download(g->cx, out, g->logits, sizeof(float) * (size_t)g->B * g->T * g->V);
}
td_status td_gpu_model_grads(td_gpu_model *g, float *out) {
    return td_cuda_download(g->cx, out, g->grads, sizeof(float) * g->np);
}
td_status td_gpu_model_params(td_gpu_model *g, float *out) {
    return td_cuda_download(g->cx, out, g->params, sizeof(float) * g->np);
}

void td_gpu_model_grad_buffer(td_gpu_model *g, float **dev, size_t *n) {
    *dev = g->grads;
    *n = g->np;
}

td_status td_gpu_model_to_host(td_gpu_model *g, td_model *host, float *m, float *v) {
    TD_TRY(td_cuda_download(g->cx, td_model_params(host), g->params, sizeof(float) * g->np));
    if (m) TD_TRY(td_cuda_download(g->cx, m, g->m, sizeof(float) * g->np));
    if (v) TD_TRY(td_cuda_download(g->cx, v, g->v, sizeof(float) * g->np));
    return TD_OK;
}

td_status td_gpu_model_set_moments(td_gpu_model *g, const float *m, const float *v) {
    TD_TRY(td_cuda_upload(g->cx, g->m, m, sizeof(float) * g->np));
    return td_cuda_upload(g->cx, g->v, v, sizeof(float) * g->np);
}

/* ---------------------------------------------------------------------------------------- */
/* inference with a paged KV cache */

struct td_gpu_kv {
    int bt, L;
    size_t nblocks;
    float **k, **v; /* per layer (nblocks * bt, NKV * hd) */
    int32_t *idx;   /* device: tok, pos, slot, len, first, last rows, tables */
    size_t idx_cap; /* ints */
    int32_t *host;
    size_t host_cap;
    float *last; /* (max segments, C) rows before lm_head, then logits */
    size_t last_cap;
};

td_status td_gpu_kv_new(td_gpu_model *g, int block_tokens, size_t num_blocks, td_gpu_kv **out) {
    *out = NULL;
    td_gpu_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return td_error_set(TD_ERR_NOMEM, "out of memory");
    kv->bt = block_tokens;
    kv->L = g->L;
    kv->nblocks = num_blocks;
    kv->k = calloc((size_t)g->L, sizeof *kv->k);
    kv->v = calloc((size_t)g->L, sizeof *kv->v);
    td_status s = kv->k && kv->v ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
    size_t bytes = num_blocks * (size_t)block_tokens * g->NKV * g->hd * sizeof(float);
    for (int l = 0; s == TD_OK && l < g->L; l++) {
        s = td_cuda_alloc((void **)&kv->k[l], bytes);
        if (s == TD_OK) s = td_cuda_alloc((void **)&kv->v[l], bytes);
    }
    if (s != TD_OK) {
        td_gpu_kv_free(&kv);
        return s;
    }
    kv->bt = block_tokens;
    *out = kv;
    return TD_OK;
}

void td_gpu_kv_free(td_gpu_kv **kvp) {
    if (!kvp || !*kvp) return;
    td_gpu_kv *kv = *kvp;
    for (int l = 0; l < kv->L; l++) {
        if (kv->k) td_cuda_release(kv->k[l]);
        if (kv->v) td_cuda_release(kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    td_cuda_release(kv->idx);
    td_cuda_release(kv->last);
    free(kv->host);
    free(kv);
    *kvp = NULL;
}

td_status td_gpu_model_forward_infer(td_gpu_model *g, td_gpu_kv *kv, const td_infer_seg *segs,
                                     int nseg, float *logits) {
    int N = 0, C = g->C, V = g->V, bt = kv->bt, ntab = 0;
    for (int s = 0; s < nseg; s++) {
        if (segs[s].n <= 0 || segs[s].pos + segs[s].n > g->cfg.max_position_embeddings)
            return td_error_set(TD_ERR_INVALID,
                                "segment at position %d + %d exceeds "
                                "max_position_embeddings %d",
                                segs[s].pos, segs[s].n, g->cfg.max_position_embeddings);
        N += segs[s].n;
        ntab += (segs[s].pos + segs[s].n + bt - 1) / bt;
    }
    if (N > g->maxN)
        return td_error_set(TD_ERR_INVALID,
                            "inference step of %d tokens exceeds the GPU plan "
                            "of %d",
                            N, g->maxN);
    /* host index arrays: tok, pos, slot, len, first (N each), last (nseg), tables */
    size_t need = 5 * (size_t)N + (size_t)nseg + (size_t)ntab;
    if (need > kv->host_cap) {
        free(kv->host);
        kv->host = malloc(need * sizeof(int32_t));
        kv->host_cap = kv->host ? need : 0;
        if (!kv->host) return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    int32_t *tok = kv->host, *pos = tok + N, *slot = pos + N, *len = slot + N, *first = len + N;
    int32_t *last = first + N, *tab = last + nseg;
    int r = 0, t0 = 0;
    for (int s = 0; s < nseg; s++) {
        int nb = (segs[s].pos + segs[s].n + bt - 1) / bt;
        for (int b = 0; b < nb; b++) {
            if (segs[s].blocks[b] < 0 || (size_t)segs[s].blocks[b] >= kv->nblocks)
                return td_error_set(TD_ERR_INVALID, "KV block %d outside the cache of %zu",
                                    segs[s].blocks[b], kv->nblocks);
            tab[t0 + b] = segs[s].blocks[b];
        }
        for (int i = 0; i < segs[s].n; i++, r++) {
            int p = segs[s].pos + i;
            if (segs[s].tokens[i] < 0 || segs[s].tokens[i] >= V)
                return td_error_set(TD_ERR_INVALID, "token id %d is outside [0, %d)",
                                    segs[s].tokens[i], V);
            tok[r] = segs[s].tokens[i];
            pos[r] = p;
            slot[r] = segs[s].blocks[p / bt] * bt + p % bt;
            len[r] = p + 1;
            first[r] = t0;
        }
        last[s] = r - 1;
        t0 += nb;
    }
    if (need > kv->idx_cap) {
        td_cuda_release(kv->idx);
        kv->idx = NULL;
        TD_TRY(td_cuda_alloc((void **)&kv->idx, need * sizeof(int32_t)));
        kv->idx_cap = need;
    }
    size_t lastn = (size_t)nseg * (size_t)(C > V ? C : V) + (size_t)nseg * V;
    if (lastn > kv->last_cap) {
        td_cuda_release(kv->last);
        kv->last = NULL;
        TD_TRY(td_cuda_alloc((void **)&kv->last, lastn * sizeof(float)));
        kv->last_cap = lastn;
    }
    TD_TRY(td_cuda_upload(g->cx, kv->idx, kv->host, need * sizeof(int32_t)));
    int32_t *dtok = kv->idx, *dpos = dtok + N, *dslot = dpos + N, *dlen = dslot + N;
    int32_t *dfirst = dlen + N, *dlast = dfirst + N, *dtab = dlast + nseg;
    const td_param_ptrs *P = td_model_param_ptrs(g->host);
    gpu_layer *a = &g->la[0]; /* one layer's buffers serve every layer in inference */
    float *x = a->res;
    TD_TRY(td_cuda_embed_pos(g->cx, x, dtok, dpos, DP(P->wte), DP(P->wpe), N, C));
    for (int l = 0; l < g->L; l++) {
        const td_layer_params *w = &P->layers[l];
        TD_TRY(norm_fwd(g, a->n1, a->n1m, a->n1r, x, w->norm1_w, w->norm1_b, N));
        TD_TRY(mm_fwd(g, a->qkv, a->n1, w->wqkv, w->bqkv, N, C, g->QKV));
        if (g->llama)
            TD_TRY(td_cuda_rope_pos(g->cx, a->qkv, dpos, N, g->QKV, g->NH + g->NKV, g->hd,
                                    (float)g->cfg.rope_theta));
        TD_TRY(td_cuda_kv_write(g->cx, kv->k[l], kv->v[l], a->qkv, dslot, N, g->NH, g->NKV, g->hd));
        TD_TRY(td_cuda_paged_attention(g->cx, a->atty, a->qkv, kv->k[l], kv->v[l], dlen, dfirst,
                                       dtab, bt, N, g->NH, g->NKV, g->hd));
        TD_TRY(mm_fwd(g, a->res2, a->atty, w->wo, w->bo, N, g->NH * g->hd, C));
        TD_TRY(td_cuda_add(g->cx, a->res2, a->res2, x, (size_t)N * C));
        TD_TRY(mlp_half(g, a, w, x, N));
    }
    TD_TRY(norm_fwd(g, g->nf, g->nfm, g->nfr, x, P->normf_w, P->normf_b, N));
    float *rows = kv->last, *out = kv->last + (size_t)nseg * (C > V ? C : V);
    TD_TRY(td_cuda_gather_rows(g->cx, rows, g->nf, dlast, nseg, C));
    TD_TRY(mm_fwd(g, out, rows, P->lm_head, NULL, nseg, C, V));
    return td_cuda_download(g->cx, logits, out, sizeof(float) * (size_t)nseg * V);
}
