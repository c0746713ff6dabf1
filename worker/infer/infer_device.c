/* The serving model's forward on a device backend (see infer_model.h): dense bf16 products
 * and the backend's paged attention, every operation a backend call. */
#include <stdlib.h>
#include <string.h>

#include "worker/infer/infer_model_impl.h"
#include "worker/infer/kv_cache_impl.h"

/* ---------------------------------------------------------------------------------------- */
/* the forward on a device backend: dense bf16 products, the backend's paged attention */

/* offsets of the device buffers in dinf, for N tokens and S sequences */
typedef struct {
    size_t x, n, mean, rstd, qkv, att, res2, fc, h, rows, out, total;
} dev_layout;

static dev_layout dev_layout_of(const td_infer_model *m, size_t N, size_t S) {
    dev_layout d;
    size_t at = 0, C = (size_t)m->C;
#define PUT(f, n) (d.f = at, at += (((n) + 63) / 64) * 64)
    PUT(x, N * C);
    PUT(n, N * C);
    PUT(mean, N);
    PUT(rstd, N);
    PUT(qkv, N * m->QKV);
    PUT(att, N * (size_t)m->NH * m->hd);
    PUT(res2, N * C);
    PUT(fc, N * m->FC);
    PUT(h, N * m->F);
    PUT(rows, S * C);
    PUT(out, S * (size_t)m->V);
#undef PUT
    d.total = at;
    return d;
}

td_status td_infer_dev_plan(td_infer_model *m, int max_tokens, int max_segs) {
    dev_layout d = dev_layout_of(m, (size_t)max_tokens, (size_t)max_segs);
    td_backend_release(m->be, m->dinf);
    m->dinf = NULL;
    void *p = NULL;
    TD_TRY(td_backend_alloc(m->be, &p, d.total * sizeof(float)));
    m->dinf = p;
    if (!td_model_bf16_params(m->w)) TD_TRY(td_model_set_bf16(m->w, 1));
    return TD_OK;
}

static td_status dev_norm(td_infer_model *m, float *out, float *mean, float *rstd, const float *x,
                          const float *w, const float *b, int N) {
    td_backend *be = m->be;
    if (m->cfg.arch == TD_ARCH_LLAMA)
        return be->ops->rmsnorm_fwd(be, out, rstd, x, w, N, m->C, (float)m->cfg.norm_eps);
    return be->ops->layernorm_fwd(be, out, mean, rstd, x, w, b, N, m->C, (float)m->cfg.norm_eps);
}

/* the backend address of host parameter x (NULL stays NULL) */
static inline const float *dev_addr(const float *dbase, const float *hbase, const float *x) {
    return x ? dbase + (x - hbase) : NULL;
}

td_status td_infer_dev_forward(td_infer_model *m, td_kv_cache *kv, const td_infer_seg *segs,
                               int nseg, float *logits) {
    td_backend *be = m->be;
    int N = 0, C = m->C, V = m->V, bt = kv->bt, ntab = 0;
    for (int s = 0; s < nseg; s++) {
        if (segs[s].n <= 0 || segs[s].pos + segs[s].n > m->cfg.max_position_embeddings)
            return td_error_set(TD_ERR_INVALID,
                                "sequence segment at position %d + %d exceeds "
                                "max_position_embeddings %d",
                                segs[s].pos, segs[s].n, m->cfg.max_position_embeddings);
        N += segs[s].n;
        ntab += (segs[s].pos + segs[s].n + bt - 1) / bt;
    }
    if (!m->dinf || N > m->inf_tokens || nseg > m->inf_segs)
        return td_error_set(TD_ERR_INVALID,
                            "inference step of %d tokens / %d sequences exceeds "
                            "the plan (%d / %d)",
                            N, nseg, m->inf_tokens, m->inf_segs);
    /* host index arrays: tok, pos, slot, len, first (N each), last (nseg), tables */
    size_t need = 5 * (size_t)N + (size_t)nseg + (size_t)ntab;
    if (need > m->didx_n) {
        TD_TRY(td_backend_sync(be)); /* queued work may still read the old arrays */
        td_backend_release(be, m->didx);
        m->didx = NULL;
        free(m->hidx);
        m->hidx = malloc(need * sizeof(int32_t));
        void *p = NULL;
        td_status s = m->hidx ? td_backend_alloc(be, &p, need * sizeof(int32_t))
                              : td_error_set(TD_ERR_NOMEM, "out of memory");
        m->didx = p;
        m->didx_n = s == TD_OK ? need : 0;
        TD_TRY(s);
    }
    int32_t *tok = m->hidx, *pos = tok + N, *slot = pos + N, *len = slot + N, *first = len + N;
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
    TD_TRY(td_backend_upload(be, m->didx, m->hidx, need * sizeof(int32_t)));
    int32_t *dtok = m->didx, *dpos = dtok + N, *dslot = dpos + N, *dlen = dslot + N;
    int32_t *dfirst = dlen + N, *dlast = dfirst + N, *dtab = dlast + nseg;
    dev_layout d = dev_layout_of(m, (size_t)m->inf_tokens, (size_t)m->inf_segs);
    float *x = m->dinf + d.x, *nrm = m->dinf + d.n, *mean = m->dinf + d.mean;
    float *rstd = m->dinf + d.rstd, *qkv = m->dinf + d.qkv, *att = m->dinf + d.att;
    float *res2 = m->dinf + d.res2, *fc = m->dinf + d.fc, *h = m->dinf + d.h;
    float *rows = m->dinf + d.rows, *out = m->dinf + d.out;
    /* device addresses of the weights: same offsets as the host parameters */
    const float *hbase = td_model_params(m->w), *dbase = td_model_backend_params(m->w);
    const uint16_t *bbase = td_model_bf16_params(m->w);
#define DP(x) dev_addr(dbase, hbase, x)
#define DB(x) (bbase + ((x)-hbase))
#define MM(out, inp, W, bias, n, c, oc)                                                            \
    TD_TRY(be->ops->matmul_fwd(be, out, inp, DP(W), DB(W), DP(bias), n, c, oc))
    const td_param_ptrs *P = &m->p;
    int llama = m->cfg.arch == TD_ARCH_LLAMA;
    size_t layer_rows = kv->nblocks * (size_t)bt * kv->kvdim;
    TD_TRY(be->ops->embed_pos(be, x, dtok, dpos, DP(P->wte), DP(P->wpe), N, C));
    for (int l = 0; l < m->L; l++) {
        const td_layer_params *w = &P->layers[l];
        float *K = kv->k + (size_t)l * layer_rows, *Vc = kv->v + (size_t)l * layer_rows;
        TD_TRY(dev_norm(m, nrm, mean, rstd, x, DP(w->norm1_w), DP(w->norm1_b), N));
        MM(qkv, nrm, w->wqkv, w->bqkv, N, C, m->QKV);
        if (llama)
            TD_TRY(be->ops->rope_pos(be, qkv, dpos, N, m->QKV, m->NH + m->NKV, m->hd,
                                     (float)m->cfg.rope_theta));
        TD_TRY(be->ops->kv_write(be, K, Vc, qkv, dslot, N, m->NH, m->NKV, m->hd));
        TD_TRY(be->ops->paged_attention(be, att, qkv, K, Vc, dlen, dfirst, dtab, bt, N, m->NH,
                                        m->NKV, m->hd));
        MM(res2, att, w->wo, w->bo, N, m->NH * m->hd, C);
        if (m->tp_comm && m->tp_comm->size > 1) {
            TD_TRY(td_backend_sync(be));
            TD_TRY(td_comm_allreduce(m->tp_comm, res2, (size_t)N * C, TD_COMM_F32));
        }
        TD_TRY(be->ops->add(be, res2, res2, x, (size_t)N * C));
        TD_TRY(dev_norm(m, nrm, mean, rstd, res2, DP(w->norm2_w), DP(w->norm2_b), N));
        MM(fc, nrm, w->wfc, w->bfc, N, C, m->FC);
        if (llama)
            TD_TRY(be->ops->swiglu_fwd(be, h, fc, N, m->F));
        else
            TD_TRY(be->ops->gelu_fwd(be, h, fc, (size_t)N * m->F));
        MM(x, h, w->wproj, w->bproj, N, m->F, C);
        if (m->tp_comm && m->tp_comm->size > 1) {
            TD_TRY(td_backend_sync(be));
            TD_TRY(td_comm_allreduce(m->tp_comm, x, (size_t)N * C, TD_COMM_F32));
        }
        TD_TRY(be->ops->add(be, x, x, res2, (size_t)N * C));
    }
    if (!logits) return td_backend_sync(be);
    TD_TRY(be->ops->gather_rows(be, rows, x, dlast, nseg, C));
    TD_TRY(dev_norm(m, nrm, mean, rstd, rows, DP(P->normf_w), DP(P->normf_b), nseg));
    MM(out, nrm, P->lm_head, NULL, nseg, C, V);
#undef MM
#undef DB
#undef DP
    return td_backend_download(be, logits, out, sizeof(float) * (size_t)nseg * V);
}
