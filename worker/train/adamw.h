/* AdamW with decoupled weight decay (Loshchilov & Hutter), global-norm gradient clipping,
 * and the warmup + cosine learning-rate schedule. Moments are fp32, one value per
 * parameter, laid out like the parameters. */
#ifndef TD_ADAMW_H
#define TD_ADAMW_H

#include <stddef.h>

#include "worker/model/model.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
} td_adamw_params;

/* Global L2 norm of the gradients; when clip > 0 and the norm exceeds it, scales them by
 * clip / norm. Returns the norm before clipping. */
double td_grad_clip(float *grads, size_t n, double clip);

/* One AdamW step t (1-based) with learning rate lr: for each parameter,
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd p), wd only where the tensor's
 * `decay` flag is set. */
td_status td_adamw_step(td_model *model, float *m, float *v, const td_adamw_params *hp, double lr,
                        long t);

/* The same update restricted to parameters [lo, hi) of the flat vector; m and v hold only
 * that range (hi - lo floats, m[0] belongs to parameter lo). For ZeRO-1 slices. */
td_status td_adamw_step_range(td_model *model, float *m, float *v, size_t lo, size_t hi,
                              const td_adamw_params *hp, double lr, long t);

/* The training step's fused form: the gradients are multiplied by gscale (clipping) as
 * they are read, and set to zero as they are consumed, so one pass over p, g, m, v replaces
 * the clip pass, the update and the next step's zeroing. */
td_status td_adamw_step_fused(td_model *model, float *m, float *v, const td_adamw_params *hp,
                              double lr, long t, float gscale);
/* Global L2 norm of the gradients (no change to them). */
double td_grad_norm(const float *grads, size_t n);
/* The factor that brings a gradient of norm `norm` down to `clip` (1 when under it). */
static inline float td_clip_scale(double norm, double clip) {
    return clip > 0 && norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0f;
}

/* Learning rate at 0-based `step` of `total`: linear warmup over `warmup` steps to `lr`, then
 * cosine decay to lr * min_ratio at the last step. */
double td_lr_schedule(long step, long total, long warmup, double lr, double min_ratio);

#endif
