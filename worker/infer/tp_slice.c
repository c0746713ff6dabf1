/* Tensor-parallel slices of a serving model (see infer_model.h). */
#include <stdlib.h>
#include <string.h>

#include "worker/infer/infer_model_impl.h"

/* ---------------------------------------------------------------------------------------- */
/* tensor parallelism (Megatron layout) */

td_status td_infer_set_tp_comm(td_infer_model *m, td_comm *c) {
    if (c && c->size > 1 && !td_model_backend(m->w)->host_memory)
        return td_error_set(TD_ERR_INVALID, "a tensor-parallel group on a device backend is not "
                                            "built yet (its all-reduce is on host memory)");
    m->tp_comm = c;
    return TD_OK;
}

/* Copies rows [r0, r0 + nr) of a (rows, cols) matrix to dst. */
static void copy_rows(float *dst, const float *src, size_t r0, size_t nr, size_t cols) {
    memcpy(dst, src + r0 * cols, sizeof(float) * nr * cols);
}

/* Copies columns [c0, c0 + nc) of a (rows, cols) matrix to dst (rows, nc). */
static void copy_cols(float *dst, const float *src, size_t rows, size_t cols, size_t c0,
                      size_t nc) {
    for (size_t i = 0; i < rows; i++)
        memcpy(dst + i * nc, src + i * cols + c0, sizeof(float) * nc);
}

/* Rows of a column-parallel matrix that a slice keeps: full rows [from, from + len) become
 * the slice's rows [to, to + len). */
typedef struct {
    int from, to, len;
} row_block;

/* Adapter a of the full model f cut for rank r of T (slice m) into b: a site on a column-
 * parallel matrix (q/k/v, gate/up, c_fc) keeps the B rows of the slice's rows -- one site
 * per block it meets (gpt2's c_attn site spans q, k and v) -- and all of A; a site on a
 * row-parallel matrix (o_proj, down_proj / c_proj) keeps all of B and A's columns of the
 * slice's inputs, so that the all-reduce that sums the base's partial products sums the
 * adapter's too. */
static td_status slice_adapter(const td_infer_model *f, const td_infer_model *m, int r,
                               const td_infer_adapter *a, td_infer_adapter *b) {
    int hd = f->hd, NHl = m->NH, NKVl = m->NKV, Fl = m->F, R = a->r;
    row_block qkv[3] = {{r * NHl * hd, 0, NHl * hd},
                        {f->NH * hd + r * NKVl * hd, NHl * hd, NKVl * hd},
                        {(f->NH + f->NKV) * hd + r * NKVl * hd, (NHl + NKVl) * hd, NKVl * hd}};
    row_block fc[2] = {{r * Fl, 0, Fl}, {f->F + r * Fl, Fl, Fl}};
    int nfc = f->cfg.arch == TD_ARCH_LLAMA ? 2 : 1;
    *b = (td_infer_adapter){.r = R, .scale = a->scale};
    b->sites = calloc((size_t)a->n_sites * 3, sizeof *b->sites);
    if (!b->sites) return td_error_set(TD_ERR_NOMEM, "out of memory for an adapter slice");
    for (int i = 0; i < a->n_sites; i++) {
        const td_infer_site *s = &a->sites[i];
        if (s->mat == 1 || s->mat == 3) { /* row-parallel: the slice's input columns */
            int c0 = s->mat == 1 ? r * NHl * hd : r * Fl, nc = s->mat == 1 ? NHl * hd : Fl;
            td_infer_site *d = &b->sites[b->n_sites++];
            *d = (td_infer_site){s->layer, s->mat, s->row0, s->out, nc, NULL, NULL};
            d->A = malloc(sizeof(float) * (size_t)R * nc);
            d->Bt = malloc(sizeof(float) * (size_t)R * s->out);
            if (!d->A || !d->Bt) return td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
            copy_cols(d->A, s->A, (size_t)R, (size_t)s->in, (size_t)c0, (size_t)nc);
            memcpy(d->Bt, s->Bt, sizeof(float) * (size_t)R * s->out);
            continue;
        }
        const row_block *blk = s->mat == 0 ? qkv : fc;
        int nblk = s->mat == 0 ? 3 : nfc;
        for (int k = 0; k < nblk; k++) { /* the site's rows that fall in block k */
            int lo = s->row0 > blk[k].from ? s->row0 : blk[k].from;
            int hi = s->row0 + s->out < blk[k].from + blk[k].len ? s->row0 + s->out
                                                                 : blk[k].from + blk[k].len;
            if (hi <= lo) continue;
            td_infer_site *d = &b->sites[b->n_sites++];
            *d = (td_infer_site){s->layer, s->mat, blk[k].to + (lo - blk[k].from), hi - lo, s->in,
                                 NULL,     NULL};
            d->A = malloc(sizeof(float) * (size_t)R * s->in);
            d->Bt = malloc(sizeof(float) * (size_t)R * (hi - lo));
            if (!d->A || !d->Bt) return td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
            memcpy(d->A, s->A, sizeof(float) * (size_t)R * s->in);
            copy_cols(d->Bt, s->Bt, (size_t)R, (size_t)s->out, (size_t)(lo - s->row0),
                      (size_t)(hi - lo));
        }
    }
    return td_infer_adapter_index(b, m->L);
}

td_status td_infer_tp_slice(const td_infer_model *f, int r, int T, td_infer_model **out) {
    *out = NULL;
    if (td_model_is_released(f->w))
        return td_error_set(TD_ERR_INVALID, "the model's weights were released: load it again");
    const td_model_config *fc = &f->cfg;
    if (T < 1 || r < 0 || r >= T)
        return td_error_set(TD_ERR_INVALID, "tensor-parallel rank %d of %d", r, T);
    if (fc->num_attention_heads % T || fc->num_key_value_heads % T || fc->intermediate_size % T)
        return td_error_set(TD_ERR_INVALID,
                            "--tp %d must divide num_attention_heads (%d), num_key_value_heads "
                            "(%d) and intermediate_size (%d)",
                            T, fc->num_attention_heads, fc->num_key_value_heads,
                            fc->intermediate_size);
    td_model_config c = *fc;
    c.num_attention_heads /= T;
    c.num_key_value_heads /= T;
    c.intermediate_size /= T;
    c.tp_size = T;
    td_model *wm;
    TD_TRY(td_model_new(&c, &wm));
    td_infer_model *m;
    td_status st = td_infer_model_new(wm, &m);
    if (st != TD_OK) {
        td_model_free(&wm);
        return st;
    }
    size_t C = (size_t)f->C, hd = (size_t)f->hd, NHl = (size_t)m->NH, NKVl = (size_t)m->NKV;
    size_t Fl = (size_t)m->F;
    memcpy(m->p.wte, f->p.wte, sizeof(float) * (size_t)f->V * C);
    if (f->p.wpe)
        memcpy(m->p.wpe, f->p.wpe, sizeof(float) * (size_t)fc->max_position_embeddings * C);
    memcpy(m->p.normf_w, f->p.normf_w, sizeof(float) * C);
    if (f->p.normf_b) memcpy(m->p.normf_b, f->p.normf_b, sizeof(float) * C);
    if (!fc->tie_word_embeddings)
        memcpy(m->p.lm_head, f->p.lm_head, sizeof(float) * (size_t)f->V * C);
    for (int l = 0; l < f->L; l++) {
        const td_layer_params *a = &f->p.layers[l];
        td_layer_params *b = &m->p.layers[l];
        memcpy(b->norm1_w, a->norm1_w, sizeof(float) * C);
        memcpy(b->norm2_w, a->norm2_w, sizeof(float) * C);
        if (a->norm1_b) memcpy(b->norm1_b, a->norm1_b, sizeof(float) * C);
        if (a->norm2_b) memcpy(b->norm2_b, a->norm2_b, sizeof(float) * C);
        /* q, k, v: this rank's heads (column-parallel) */
        size_t qo = (size_t)r * NHl * hd, ko = (size_t)f->NH * hd + (size_t)r * NKVl * hd,
               vo = (size_t)(f->NH + f->NKV) * hd + (size_t)r * NKVl * hd;
        copy_rows(b->wqkv, a->wqkv, qo, NHl * hd, C);
        copy_rows(b->wqkv + NHl * hd * C, a->wqkv, ko, NKVl * hd, C);
        copy_rows(b->wqkv + (NHl + NKVl) * hd * C, a->wqkv, vo, NKVl * hd, C);
        if (a->bqkv) {
            memcpy(b->bqkv, a->bqkv + qo, sizeof(float) * NHl * hd);
            memcpy(b->bqkv + NHl * hd, a->bqkv + ko, sizeof(float) * NKVl * hd);
            memcpy(b->bqkv + (NHl + NKVl) * hd, a->bqkv + vo, sizeof(float) * NKVl * hd);
        }
        /* output projection: row-parallel (this rank's input columns); bias once */
        copy_cols(b->wo, a->wo, C, (size_t)f->NH * hd, qo, NHl * hd);
        if (a->bo) {
            if (r == 0)
                memcpy(b->bo, a->bo, sizeof(float) * C);
            else
                memset(b->bo, 0, sizeof(float) * C);
        }
        /* MLP: gate/up (or c_fc) column-parallel, down (c_proj) row-parallel */
        if (fc->arch == TD_ARCH_LLAMA) {
            copy_rows(b->wfc, a->wfc, (size_t)r * Fl, Fl, C);
            copy_rows(b->wfc + Fl * C, a->wfc, (size_t)f->F + (size_t)r * Fl, Fl, C);
        } else {
            copy_rows(b->wfc, a->wfc, (size_t)r * Fl, Fl, C);
            memcpy(b->bfc, a->bfc + (size_t)r * Fl, sizeof(float) * Fl);
        }
        copy_cols(b->wproj, a->wproj, C, (size_t)f->F, (size_t)r * Fl, Fl);
        if (a->bproj) {
            if (r == 0)
                memcpy(b->bproj, a->bproj, sizeof(float) * C);
            else
                memset(b->bproj, 0, sizeof(float) * C);
        }
    }
    if (f->grid && !td_infer_int8_grid(m, 1)) {
        td_infer_model_free(&m);
        return td_error_set(TD_ERR_NOMEM, "out of memory for the int8 grid");
    }
    if (f->grid) { /* the same rows of the grid (q8l order) */
        size_t QKVf = (size_t)f->QKV, FCf = (size_t)f->FC, QKVl = (size_t)m->QKV;
        size_t FCl = (size_t)m->FC, hdn = (size_t)f->hd;
        const float *a = f->grid;
        float *b = m->grid;
        for (int l = 0; l < f->L; l++) {
            size_t qo = (size_t)r * NHl * hdn, ko = (size_t)f->NH * hdn + (size_t)r * NKVl * hdn,
                   vo = (size_t)(f->NH + f->NKV) * hdn + (size_t)r * NKVl * hdn;
            memcpy(b, a + qo, sizeof(float) * NHl * hdn);
            memcpy(b + NHl * hdn, a + ko, sizeof(float) * NKVl * hdn);
            memcpy(b + (NHl + NKVl) * hdn, a + vo, sizeof(float) * NKVl * hdn);
            a += QKVf;
            b += QKVl;
            memcpy(b, a, sizeof(float) * C); /* wo: every output row */
            a += C;
            b += C;
            memcpy(b, a + (size_t)r * Fl, sizeof(float) * Fl);
            if (fc->arch == TD_ARCH_LLAMA)
                memcpy(b + Fl, a + (size_t)f->F + (size_t)r * Fl, sizeof(float) * Fl);
            a += FCf;
            b += FCl;
            memcpy(b, a, sizeof(float) * C); /* wproj: every output row */
            a += C;
            b += C;
        }
        size_t rest = td_infer_int8_grid_len(f->w) - (size_t)(a - f->grid); /* lm_head, wte */
        memcpy(b, a, sizeof(float) * rest);
    }
    if (f->n_ad) {
        m->ad = calloc((size_t)f->n_ad, sizeof *m->ad);
        if (!m->ad) {
            td_infer_model_free(&m);
            return td_error_set(TD_ERR_NOMEM, "out of memory for adapter slices");
        }
        for (int k = 0; k < f->n_ad; k++) {
            td_status sa = slice_adapter(f, m, r, &f->ad[k], &m->ad[k]);
            m->n_ad = k + 1; /* freed with the model, the failed one too */
            if (sa != TD_OK) {
                td_infer_model_free(&m);
                return sa;
            }
        }
    }
    *out = m;
    return TD_OK;
}
