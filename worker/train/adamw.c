/* AdamW, clipping and LR schedule (see adamw.h). */
#include "worker/train/adamw.h"

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

/* The update itself runs on the model's backend (td_model_adamw). */
td_status td_adamw_step_range(td_model *model, float *m, float *v, size_t lo, size_t hi,
                              const td_adamw_params *hp, double lr, long t) {
    return td_model_adamw(model, m, v, lo, hi, (float)lr, hp->beta1, hp->beta2, hp->eps,
                          hp->weight_decay, t, 1.0f, 0);
}

td_status td_adamw_step_fused(td_model *model, float *m, float *v, const td_adamw_params *hp,
                              double lr, long t, float gscale) {
    return td_model_adamw(model, m, v, 0, td_model_num_params(model), (float)lr, hp->beta1,
                          hp->beta2, hp->eps, hp->weight_decay, t, gscale, 1);
}

td_status td_adamw_step(td_model *model, float *m, float *v, const td_adamw_params *hp, double lr,
                        long t) {
    return td_model_adamw(model, m, v, 0, td_model_num_params(model), (float)lr, hp->beta1,
                          hp->beta2, hp->eps, hp->weight_decay, t, 1.0f, 0);
}

double td_lr_schedule(long step, long total, long warmup, double lr, double min_ratio) {
    if (step < warmup) return lr * (double)(step + 1) / (double)warmup;
    if (total <= warmup + 1) return lr;
    double frac = (double)(step - warmup) / (double)(total - warmup - 1);
    if (frac > 1) frac = 1;
    double min_lr = lr * min_ratio;
    return min_lr + 0.5 * (lr - min_lr) * (1 + cos(M_PI * frac));
}
