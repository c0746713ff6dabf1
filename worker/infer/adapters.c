/* LoRA adapters served beside the base weights (see td_infer_add_adapter in infer_model.h).
 *
 * A step's base products run once for all its rows (linear_infer); then each row whose
 * segment asks for an adapter gets that adapter's low-rank product added to its outputs:
 * u = A x (r dot products), out[row0 ..] += (alpha / r) sum_j u_j Bt_j (r axpys). Rows of
 * different adapters share the step; only their O(r (in + out)) share differs. */
#include <stdlib.h>
#include <string.h>

#include "worker/infer/infer_model_impl.h"

void td_infer_adapter_free(td_infer_adapter *a) {
    for (int i = 0; i < a->n_sites; i++) {
        free(a->sites[i].A);
        free(a->sites[i].Bt);
    }
    free(a->sites);
    free(a->first);
    memset(a, 0, sizeof *a);
}

td_status td_infer_adapter_index(td_infer_adapter *a, int L) {
    free(a->first);
    a->first = malloc(sizeof *a->first * ((size_t)L * 4 + 1));
    if (!a->first) return td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
    a->bytes = 0;
    for (int i = 0, key = 0; key <= L * 4; key++) {
        while (i < a->n_sites && a->sites[i].layer * 4 + a->sites[i].mat < key)
            i++;
        a->first[key] = i;
    }
    for (int i = 0; i < a->n_sites; i++)
        a->bytes += sizeof(float) * (size_t)a->r * (size_t)(a->sites[i].in + a->sites[i].out);
    return TD_OK;
}

td_status td_infer_add_adapter(td_infer_model *m, const td_lora *lo, int *index) {
    if (!td_model_backend(m->w)->host_memory)
        return td_error_set(TD_ERR_INVALID, "adapters are served on the CPU; on a device backend "
                                            "they are not built yet");
    if (m->cfg.tp_size > 1)
        return td_error_set(TD_ERR_INVALID, "add adapters to the whole model: its tensor-parallel "
                                            "slices cut them");
    td_infer_adapter a = {0};
    a.r = td_lora_config_of(lo)->r;
    a.scale = td_lora_scale(lo);
    int n = td_lora_num_sites(lo);
    a.sites = calloc((size_t)n, sizeof *a.sites);
    td_status s = a.sites ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
    for (int i = 0; i < n && s == TD_OK; i++) {
        td_lora_site ls = td_lora_site_at(lo, i);
        td_infer_site *d = &a.sites[a.n_sites++];
        *d = (td_infer_site){ls.layer, (int)ls.mat, ls.row0, ls.out, ls.in, NULL, NULL};
        d->A = malloc(sizeof(float) * (size_t)a.r * ls.in);
        d->Bt = malloc(sizeof(float) * (size_t)a.r * ls.out);
        if (!d->A || !d->Bt) {
            s = td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
            break;
        }
        memcpy(d->A, ls.A, sizeof(float) * (size_t)a.r * ls.in);
        for (int o = 0; o < ls.out; o++)
            for (int j = 0; j < a.r; j++)
                d->Bt[(size_t)j * ls.out + o] = ls.B[(size_t)o * a.r + j];
    }
    if (s == TD_OK) s = td_infer_adapter_index(&a, m->L);
    td_infer_adapter *grown =
        s == TD_OK ? realloc(m->ad, sizeof *m->ad * (size_t)(m->n_ad + 1)) : NULL;
    if (s == TD_OK && !grown) s = td_error_set(TD_ERR_NOMEM, "out of memory for an adapter");
    if (s != TD_OK) {
        td_infer_adapter_free(&a);
        return s;
    }
    m->ad = grown;
    m->ad[m->n_ad++] = a;
    *index = m->n_ad;
    return TD_OK;
}

int td_infer_num_adapters(const td_infer_model *m) {
    return m->n_ad;
}

size_t td_infer_adapter_bytes(const td_infer_model *m, int k) {
    return k >= 1 && k <= m->n_ad ? m->ad[k - 1].bytes : 0;
}

void td_infer_adapters_apply(const td_infer_model *m, const td_infer_seg *segs, int nseg,
                             const int *row0, int layer, int mat, float *out, int OC,
                             const float *x, int in) {
    size_t work = 0; /* multiply-adds of this product's adapter rows */
    for (int s = 0; s < nseg; s++) {
        if (segs[s].adapter <= 0) continue;
        const td_infer_adapter *a = &m->ad[segs[s].adapter - 1];
        for (int k = a->first[4 * layer + mat]; k < a->first[4 * layer + mat + 1]; k++)
            work += (size_t)segs[s].n * a->r * (size_t)(a->sites[k].in + a->sites[k].out);
    }
    if (!work) return;
    int N = row0[nseg - 1] + segs[nseg - 1].n;
    /* rows, not segments, share the threads (a long prefill chunk of one sequence too); small
     * products stay on one thread, where a parallel region would cost more than it saves */
#pragma omp parallel for schedule(static) if (work >= 1 << 17)
    for (int i = 0; i < N; i++) {
        int ad = segs[m->iseg[i]].adapter;
        if (ad <= 0) continue;
        const td_infer_adapter *a = &m->ad[ad - 1];
        int r = a->r;
        float u[r];
        const float *xr = x + (size_t)i * in;
        for (int k = a->first[4 * layer + mat]; k < a->first[4 * layer + mat + 1]; k++) {
            const td_infer_site *st = &a->sites[k];
            float *orow = out + (size_t)i * OC + st->row0;
            for (int j = 0; j < r; j++) {
                const float *aj = st->A + (size_t)j * st->in;
                float d = 0;
#pragma omp simd reduction(+ : d)
                for (int c = 0; c < st->in; c++)
                    d += xr[c] * aj[c];
                u[j] = d * a->scale;
            }
            for (int j = 0; j < r; j++) {
                const float *bj = st->Bt + (size_t)j * st->out;
                float uj = u[j];
#pragma omp simd
                for (int o = 0; o < st->out; o++)
                    orow[o] += uj * bj[o];
            }
        }
    }
}
