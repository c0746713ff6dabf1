/* AdamW, clipping and LR schedule (see adamw.h). */
#include "worker/train/adamw.h"

#include "worker/kernels/cpu/bf16.h"

#include <math.h>

double td_grad_norm(const float *g, size_t n) {
    double ss = 0;
#pragma omp parallel for reduction(+ : ss) schedule(static)
    for (size_t i = 0; i < n; i++)
        ss += (double)g[i] * g[i];
    return sqrt(ss);
}

double td_grad_clip(float *g, size_t n, double clip) {
    double norm = td_grad_norm(g, n);
    float s = td_clip_scale(norm, clip);
    if (s != 1.0f) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++)
            g[i] *= s;
    }
    return norm;
}

/* The one AdamW loop: parameters [lo, hi), moments indexed from lo, gradients multiplied
 * by gscale as read and, with zero_grads, cleared as consumed. */
static void adamw_update(td_model *model, float *m, float *v, size_t lo, size_t hi,
                         const td_adamw_params *hp, double lr, long t, float gscale,
                         int zero_grads) {
    int nt;
    const td_param_tensor *tens = td_model_tensors(model, &nt);
    float *p = td_model_params(model), *g = td_model_grads(model);
    float b1 = hp->beta1, b2 = hp->beta2, eps = hp->eps;
    float c1 = (float)(1.0 / (1.0 - pow(b1, (double)t)));
    float c2 = (float)(1.0 / (1.0 - pow(b2, (double)t)));
    float flr = (float)lr;
    /* the fused step also refreshes a bf16 working copy (td_model_set_bf16) */
    uint16_t *pbf = zero_grads ? td_model_bf16_params(model) : NULL;
    for (int k = 0; k < nt; k++) {
        const td_param_tensor *T = &tens[k];
        size_t a = T->offset > lo ? T->offset : lo;
        size_t b = T->offset + T->numel < hi ? T->offset + T->numel : hi;
        if (a >= b) continue;
        float wd = T->decay ? hp->weight_decay : 0.0f;
        float *pp = p + a, *gg = g + a, *mm = m + (a - lo), *vv = v + (a - lo);
        uint16_t *pb = pbf ? pbf + a : NULL;
        size_t n = b - a, nc = (n + 4095) / 4096;
        /* in chunks of 4096, so a bf16 working copy is written while the chunk is in cache */
#pragma omp parallel for schedule(static) if (n > 32768)
        for (size_t ch = 0; ch < nc; ch++) {
            size_t i0 = ch * 4096, i1 = i0 + 4096 < n ? i0 + 4096 : n;
            for (size_t i = i0; i < i1; i++) {
                float gi = gg[i] * gscale;
                if (zero_grads) gg[i] = 0;
                float mi = b1 * mm[i] + (1 - b1) * gi;
                float vi = b2 * vv[i] + (1 - b2) * gi * gi;
                mm[i] = mi;
                vv[i] = vi;
                pp[i] -= flr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * pp[i]);
            }
            if (pb) td_bf16_from_f32_serial(pb + i0, pp + i0, i1 - i0);
        }
    }
}

void td_adamw_step_range(td_model *model, float *m, float *v, size_t lo, size_t hi,
                         const td_adamw_params *hp, double lr, long t) {
    adamw_update(model, m, v, lo, hi, hp, lr, t, 1.0f, 0);
}

void td_adamw_step_fused(td_model *model, float *m, float *v, const td_adamw_params *hp, double lr,
                         long t, float gscale) {
    adamw_update(model, m, v, 0, td_model_num_params(model), hp, lr, t, gscale, 1);
}

void td_adamw_step(td_model *model, float *m, float *v, const td_adamw_params *hp, double lr,
                   long t) {
    adamw_update(model, m, v, 0, td_model_num_params(model), hp, lr, t, 1.0f, 0);
}

double td_lr_schedule(long step, long total, long warmup, double lr, double min_ratio) {
    if (step < warmup) return lr * (double)(step + 1) / (double)warmup;
    if (total <= warmup + 1) return lr;
    double frac = (double)(step - warmup) / (double)(total - warmup - 1);
    if (frac > 1) frac = 1;
    double min_lr = lr * min_ratio;
    return min_lr + 0.5 * (lr - min_lr) * (1 + cos(M_PI * frac));
}
