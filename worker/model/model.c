/* The transformer forward and backward passes for llama and gpt2 (see model.h).
 *
 * A training step, for N = B*T rows:
 *   x = embed(tokens)                                     (N, C)
 *   per layer: a = norm1(x); qkv = a Wqkv^T (+b); rope(q,k) [llama];
 *              y = attention(qkv); x = x + y Wo^T (+b);
 *              m = norm2(x); f = m Wfc^T (+b); h = swiglu(f) | gelu(f); x = x + h Wproj^T (+b)
 *   logits = normf(x) Wlm^T;  loss = crossentropy(logits, targets)
 * and backward retraces it, reusing the saved activations. */
#include "worker/model/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include <cblas.h>

#include "worker/kernels/cpu/bf16.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/vec_f32.h"
#include "worker/model/gptq.h"
#include <sys/mman.h>
#include <unistd.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    float *res;            /* (N, C) residual stream entering the layer */
    float *n1, *n1m, *n1r; /* (N, C), (N), (N): norm1 output, mean (gpt2), rstd */
    float *qkv;            /* (N, QKV), q and k after RoPE */
    float *att;            /* (B, NH, T, T) attention probabilities */
    float *atty;           /* (N, NH hd) attention output before Wo */
    float *res2;           /* (N, C) residual after attention */
    float *n2, *n2m, *n2r; /* norm2 output, mean, rstd */
    float *fc;             /* (N, FC): gate+up (2F) or pre-GELU (F) */
    float *h;              /* (N, F) activation output */
} layer_acts;

struct td_model {
    td_model_config cfg;
    int C, F, L, NH, NKV, hd, V, QKV, FC;
    size_t num_params;
    float *params, *grads;
    td_param_tensor *tensors;
    int n_tensors;
    td_param_ptrs p, g; /* pointers into params and grads */
    td_layer_params *p_layers, *g_layers;
    /* activations, planned for (planB, planT) */
    int planB, planT, plan_grads;
    float *acts;
    size_t acts_bytes;
    layer_acts *la;
    float *resf, *nf, *nfm, *nfr, *logits, *lse;
    int32_t *tokens, *targets;
    /* backward scratch */
    float *dres, *dn, *dqkv, *datty, *dfc, *dh;
    /* last forward */
    int lastB, lastT, has_targets;
    td_comm *tp_comm; /* tensor-parallel group: all-reduce after row-parallel products */
    /* bf16 mixed precision (td_model_set_bf16): bf16 working copy of the parameters (same
     * offsets as params), refreshed from the fp32 masters by td_model_refresh_bf16; two
     * scratch buffers for bf16 operands (activations, gradients) */
    int bf16;
    uint16_t *pbf, *sbf[2];
    size_t sbf_n[2];
    /* int8 weights (td_model_quantize_int8): per layer wqkv, wo, wfc, wproj, then lm_head */
    int8_t *q8;
    float *q8s;
    int16_t *q16;  /* lm_head in int16 (unless quantized with head_int8) */
    uint16_t *qbf; /* bf16 serving weights (td_model_quantize_bf16) */
    struct q8mat {
        const int8_t *w;
        const int16_t *w16; /* instead of w: int16 weights (lm_head) */
        const uint16_t *wb; /* instead of w: bf16 weights (td_model_quantize_bf16; s = 1) */
        const float *s;
        const int32_t *wsum; /* row sums, for the u8 x s8 (VNNI) path */
    } * q8l;                 /* 4 per layer + 1 */
    int32_t *q8sum;
    /* GPTQ (td_model_calib_*): per q8l matrix, the sum of x x^T of its inputs while
     * collecting; afterwards the int8 grid, one scale per q8l row (0: none, round to
     * nearest), which td_model_quantize_int8 and td_model_tp_slice follow */
    float **calH;
    float *grid;
    /* td_model_release: page ranges of params returned to the system (PROT_NONE until
     * td_model_free gives them back to malloc's heap) */
    struct released {
        void *p;
        size_t n;
    } * rel;
    int nrel, released_all;
    int int8_vnni; /* 1: int8 x int8 products accumulated in int32 (activations quantized) */
    uint8_t *iq8;  /* activation scratch for the VNNI path: (N, max width) */
    float *iq8s;   /* (N) activation scales */
    /* inference buffers (td_model_plan_infer) */
    int inf_tokens, inf_segs;
    float *inf;
    float *ix, *in, *im, *ir, *iqkv, *iatt, *ifc, *ih, *ilast;
    int32_t *itok, *ipos, *iseg;
    td_backward_hook hook;
    void *hook_ctx;
    int embed_rows_mode, rows_n;
    /* profiling */
    int prof_on;
    double prof[TD_PROF_COUNT];
};

/* Times `stmt` into m->prof[op] when profiling is on. */
#define PROF(op, stmt)                                                                             \
    do {                                                                                           \
        double prof_t0_ = m->prof_on ? td_time_now() : 0;                                          \
        stmt;                                                                                      \
        if (m->prof_on) m->prof[op] += td_time_now() - prof_t0_;                                   \
    } while (0)

void td_model_set_backward_hook(td_model *m, td_backward_hook fn, void *ctx) {
    m->hook = fn;
    m->hook_ctx = ctx;
}

void td_model_stage_range(const td_model *m, int stage, size_t *lo, size_t *hi) {
    /* parameters are laid out: embeddings, layer 0 .. L-1, final norm (+ lm_head) */
    size_t layer0 = (size_t)(m->p.layers[0].norm1_w - m->params);
    size_t per_layer = m->L > 1 ? (size_t)(m->p.layers[1].norm1_w - m->p.layers[0].norm1_w)
                                : (size_t)(m->p.normf_w - m->p.layers[0].norm1_w);
    size_t top = (size_t)(m->p.normf_w - m->params);
    if (stage < 0) {
        *lo = 0;
        *hi = layer0;
    } else if (stage >= m->L) {
        *lo = top;
        *hi = m->num_params;
    } else {
        *lo = layer0 + (size_t)stage * per_layer;
        *hi = *lo + per_layer;
    }
}

void td_model_embed_range(const td_model *m, size_t *lo, size_t *hi) {
    *lo = (size_t)(m->p.wte - m->params);
    *hi = *lo + (size_t)m->V * m->C;
}

void td_model_set_embed_rows_mode(td_model *m, int on) {
    m->embed_rows_mode = on;
}

void td_model_embed_rows(const td_model *m, const int32_t **tokens, const float **rows, int *n) {
    *tokens = m->tokens;
    *rows = m->dres;
    *n = m->rows_n;
}

void td_model_add_embed_rows(td_model *m, const int32_t *tokens, const float *rows, int n,
                             float scale) {
    int C = m->C;
    for (int i = 0; i < n; i++) {
        float *g = m->g.wte + (size_t)tokens[i] * C;
        const float *r = rows + (size_t)i * C;
        for (int k = 0; k < C; k++)
            g[k] += scale * r[k];
    }
}

#define HOOK(stage)                                                                                \
    do {                                                                                           \
        if (m->hook) m->hook(m->hook_ctx, (stage));                                                \
    } while (0)

const char *td_prof_op_name(td_prof_op op) {
    static const char *names[TD_PROF_COUNT] = {
        "embedding",      "norm (fwd+bwd)", "matmul fwd",    "matmul bwd",
        "rope (fwd+bwd)", "attention fwd",  "attention bwd", "swiglu/gelu (fwd+bwd)",
        "residual add",   "lm_head fwd",    "lm_head bwd",   "softmax+cross-entropy"};
    return names[op];
}

void td_model_profile_enable(td_model *m, int on) {
    m->prof_on = on;
    memset(m->prof, 0, sizeof m->prof);
}

const double *td_model_profile(const td_model *m) {
    return m->prof;
}

/* ---------------------------------------------------------------------------------------- */
/* parameter layout */

static void add_tensor(td_model *m, size_t *off, const char *name, int ndim, int64_t s0, int64_t s1,
                       int transposed, int decay) {
    td_param_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = ndim == 2 ? s1 : 1;
    t->numel = (size_t)s0 * (ndim == 2 ? (size_t)s1 : 1);
    t->offset = *off;
    t->transposed = transposed;
    t->decay = decay;
    *off += t->numel;
}

/* Builds the tensor table; offsets are consecutive, so q/k/v (and gate/up) land back to
 * back and form the fused matrices. Returns the total parameter count. */
static size_t build_layout(td_model *m) {
    const td_model_config *c = &m->cfg;
    size_t off = 0;
    char nm[96];
    int C = m->C, F = m->F, hd = m->hd;
    m->n_tensors = 0;
    if (c->arch == TD_ARCH_LLAMA) {
        add_tensor(m, &off, "model.embed_tokens.weight", 2, m->V, C, 0, 1);
        for (int i = 0; i < m->L; i++) {
#define NM(s) (snprintf(nm, sizeof nm, "model.layers.%d.%s", i, s), nm)
            add_tensor(m, &off, NM("input_layernorm.weight"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("self_attn.q_proj.weight"), 2, m->NH * hd, C, 0, 1);
            add_tensor(m, &off, NM("self_attn.k_proj.weight"), 2, m->NKV * hd, C, 0, 1);
            add_tensor(m, &off, NM("self_attn.v_proj.weight"), 2, m->NKV * hd, C, 0, 1);
            add_tensor(m, &off, NM("self_attn.o_proj.weight"), 2, C, m->NH * hd, 0, 1);
            add_tensor(m, &off, NM("post_attention_layernorm.weight"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("mlp.gate_proj.weight"), 2, F, C, 0, 1);
            add_tensor(m, &off, NM("mlp.up_proj.weight"), 2, F, C, 0, 1);
            add_tensor(m, &off, NM("mlp.down_proj.weight"), 2, C, F, 0, 1);
#undef NM
        }
        add_tensor(m, &off, "model.norm.weight", 1, C, 0, 0, 0);
        if (!c->tie_word_embeddings) add_tensor(m, &off, "lm_head.weight", 2, m->V, C, 0, 1);
    } else {
        add_tensor(m, &off, "transformer.wte.weight", 2, m->V, C, 0, 1);
        add_tensor(m, &off, "transformer.wpe.weight", 2, c->max_position_embeddings, C, 0, 1);
        for (int i = 0; i < m->L; i++) {
#define NM(s) (snprintf(nm, sizeof nm, "transformer.h.%d.%s", i, s), nm)
            add_tensor(m, &off, NM("ln_1.weight"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("ln_1.bias"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("attn.c_attn.weight"), 2, C, 3 * C, 1, 1);
            add_tensor(m, &off, NM("attn.c_attn.bias"), 1, 3 * C, 0, 0, 0);
            add_tensor(m, &off, NM("attn.c_proj.weight"), 2, C, C, 1, 1);
            add_tensor(m, &off, NM("attn.c_proj.bias"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("ln_2.weight"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("ln_2.bias"), 1, C, 0, 0, 0);
            add_tensor(m, &off, NM("mlp.c_fc.weight"), 2, C, F, 1, 1);
            add_tensor(m, &off, NM("mlp.c_fc.bias"), 1, F, 0, 0, 0);
            add_tensor(m, &off, NM("mlp.c_proj.weight"), 2, F, C, 1, 1);
            add_tensor(m, &off, NM("mlp.c_proj.bias"), 1, C, 0, 0, 0);
#undef NM
        }
        add_tensor(m, &off, "transformer.ln_f.weight", 1, C, 0, 0, 0);
        add_tensor(m, &off, "transformer.ln_f.bias", 1, C, 0, 0, 0);
    }
    return off;
}

/* Points the td_param_ptrs of `base` (params or grads) at the tensors of the layout. */
static void bind_ptrs(td_model *m, float *base, td_param_ptrs *p, td_layer_params *layers) {
    memset(p, 0, sizeof *p);
    memset(layers, 0, sizeof(td_layer_params) * (size_t)m->L);
    p->layers = layers;
    const td_param_tensor *t = m->tensors;
#define AT(k) (base + t[k].offset)
    int k = 0;
    p->wte = AT(k++);
    if (m->cfg.arch == TD_ARCH_LLAMA) {
        for (int i = 0; i < m->L; i++) {
            td_layer_params *l = &layers[i];
            l->norm1_w = AT(k++);
            l->wqkv = AT(k);
            k += 3;
            l->wo = AT(k++);
            l->norm2_w = AT(k++);
            l->wfc = AT(k);
            k += 2;
            l->wproj = AT(k++);
        }
        p->normf_w = AT(k++);
        p->lm_head = m->cfg.tie_word_embeddings ? p->wte : AT(k++);
    } else {
        p->wpe = AT(k++);
        for (int i = 0; i < m->L; i++) {
            td_layer_params *l = &layers[i];
            l->norm1_w = AT(k++);
            l->norm1_b = AT(k++);
            l->wqkv = AT(k++);
            l->bqkv = AT(k++);
            l->wo = AT(k++);
            l->bo = AT(k++);
            l->norm2_w = AT(k++);
            l->norm2_b = AT(k++);
            l->wfc = AT(k++);
            l->bfc = AT(k++);
            l->wproj = AT(k++);
            l->bproj = AT(k++);
        }
        p->normf_w = AT(k++);
        p->normf_b = AT(k++);
        p->lm_head = p->wte;
    }
#undef AT
    TD_ASSERT(k == m->n_tensors);
}

td_status td_model_new(const td_model_config *cfg, td_model **out) {
    *out = NULL;
    TD_TRY(td_model_config_validate(cfg, "model config"));
    td_model *m = calloc(1, sizeof *m);
    if (!m) return td_error_set(TD_ERR_NOMEM, "out of memory creating the model");
    m->cfg = *cfg;
    m->C = cfg->hidden_size;
    m->F = cfg->intermediate_size;
    m->L = cfg->num_hidden_layers;
    m->NH = cfg->num_attention_heads;
    m->NKV = cfg->num_key_value_heads;
    m->hd = td_model_config_head_dim(cfg);
    m->V = cfg->vocab_size;
    m->QKV = (m->NH + 2 * m->NKV) * m->hd;
    m->FC = cfg->arch == TD_ARCH_LLAMA ? 2 * m->F : m->F;
    m->tensors = calloc((size_t)(16 * m->L + 8), sizeof *m->tensors);
    m->p_layers = calloc((size_t)m->L, sizeof *m->p_layers);
    m->g_layers = calloc((size_t)m->L, sizeof *m->g_layers);
    if (!m->tensors || !m->p_layers || !m->g_layers) {
        td_model_free(&m);
        return td_error_set(TD_ERR_NOMEM, "out of memory creating the model");
    }
    m->num_params = build_layout(m);
    m->params = aligned_alloc(64, ((m->num_params * sizeof(float) + 63) / 64) * 64);
    if (!m->params) {
        size_t n = m->num_params;
        td_model_free(&m);
        return td_error_set(TD_ERR_NOMEM, "out of memory allocating %zu parameters (%.1f MiB)", n,
                            n * 4.0 / 1048576);
    }
    memset(m->params, 0, m->num_params * sizeof(float));
    bind_ptrs(m, m->params, &m->p, m->p_layers);
    *out = m;
    return TD_OK;
}

static void calib_free(td_model *m) {
    if (!m->calH) return;
    for (int i = 0; i <= 4 * m->L; i++)
        free(m->calH[i]);
    free(m->calH);
    m->calH = NULL;
}

void td_model_free(td_model **mp) {
    if (!mp || !*mp) return;
    td_model *m = *mp;
    for (int i = 0; i < m->nrel; i++)
        mprotect(m->rel[i].p, m->rel[i].n, PROT_READ | PROT_WRITE);
    free(m->rel);
    free(m->params);
    free(m->grads);
    free(m->acts);
    free(m->la);
    free(m->inf);
    free(m->pbf);
    free(m->sbf[0]);
    free(m->sbf[1]);
    free(m->q8);
    free(m->q16);
    free(m->qbf);
    free(m->q8s);
    free(m->q8l);
    free(m->q8sum);
    calib_free(m);
    free(m->grid);
    free(m->iq8);
    free(m->iq8s);
    free(m->tensors);
    free(m->p_layers);
    free(m->g_layers);
    free(m);
    *mp = NULL;
}

const td_model_config *td_model_config_of(const td_model *m) {
    return &m->cfg;
}
size_t td_model_num_params(const td_model *m) {
    return m->num_params;
}
float *td_model_params(td_model *m) {
    return m->params;
}
float *td_model_grads(td_model *m) {
    return m->grads;
}
const td_param_tensor *td_model_tensors(const td_model *m, int *count) {
    *count = m->n_tensors;
    return m->tensors;
}
const td_param_ptrs *td_model_param_ptrs(const td_model *m) {
    return &m->p;
}
const float *td_model_logits(const td_model *m) {
    return m->logits;
}
size_t td_model_activation_bytes(const td_model *m) {
    return m->acts_bytes;
}

void td_model_init_random(td_model *m, uint64_t seed) {
    td_rng rng;
    td_rng_seed(&rng, seed);
    float resid_std = 0.02f / sqrtf(2.0f * (float)m->L);
    for (int k = 0; k < m->n_tensors; k++) {
        const td_param_tensor *t = &m->tensors[k];
        float *w = m->params + t->offset;
        const char *nm = t->name;
        int is_norm = strstr(nm, "norm") || strstr(nm, "ln_");
        if (t->ndim == 1) {
            float v = is_norm && strstr(nm, ".weight") ? 1.0f : 0.0f;
            for (size_t i = 0; i < t->numel; i++)
                w[i] = v;
            continue;
        }
        int out_proj =
            strstr(nm, "o_proj") || strstr(nm, "down_proj") || strstr(nm, "c_proj.weight");
        float std = out_proj ? resid_std : 0.02f;
        if (strstr(nm, "wpe")) std = 0.01f;
        for (size_t i = 0; i < t->numel; i++)
            w[i] = (float)(std * td_rng_normal(&rng));
    }
}

double td_model_train_flops_per_token(const td_model *m, int T) {
    double n = 0;
    for (int k = 0; k < m->n_tensors; k++) {
        const td_param_tensor *t = &m->tensors[k];
        if (t->ndim == 2 && !strstr(t->name, "wpe")) n += (double)t->numel;
    }
    /* The input embedding is a lookup, not a product; when untied, lm_head is a product. */
    if (!m->cfg.tie_word_embeddings) n -= (double)m->V * m->C;
    return 6.0 * n + 12.0 * m->L * m->C * (double)T;
}

/* ---------------------------------------------------------------------------------------- */
/* activation planning */

td_status td_model_plan(td_model *m, int B, int T, int with_grads) {
    if (T > m->cfg.max_position_embeddings)
        return td_error_set(TD_ERR_INVALID, "sequence length %d exceeds max_position_embeddings %d",
                            T, m->cfg.max_position_embeddings);
    if (B <= 0 || T <= 0) return td_error_set(TD_ERR_INVALID, "batch %d x %d is empty", B, T);
    if (m->acts && B <= m->planB && T <= m->planT && (!with_grads || m->plan_grads)) return TD_OK;
    if (m->acts) {
        if (B < m->planB) B = m->planB;
        if (T < m->planT) T = m->planT;
        with_grads |= m->plan_grads;
    }
    size_t N = (size_t)B * T, C = m->C, L = m->L;
    size_t per_layer = N * C /*res*/ + N * C + 2 * N /*n1*/ + N * m->QKV +
                       (size_t)B * m->NH * T * T + N * (size_t)m->NH * m->hd + N * C /*res2*/ +
                       N * C + 2 * N /*n2*/ + N * m->FC + N * m->F;
    size_t total = L * per_layer + N * C /*resf*/ + N * C + 2 * N + N * (size_t)m->V + N;
    size_t ints = 2 * N;
    if (with_grads)
        total += N * C * 2 + N * m->QKV + N * (size_t)m->NH * m->hd + N * m->FC + N * m->F;
    /* 16 floats of slack per buffer keeps every buffer 64-byte aligned */
    size_t nbuf = L * 14 + 16;
    size_t bytes = (total + ints + nbuf * 16) * sizeof(float);
    free(m->acts);
    free(m->la);
    m->acts = aligned_alloc(64, ((bytes + 63) / 64) * 64);
    m->la = calloc(L, sizeof *m->la);
    if (!m->acts || !m->la)
        return td_error_set(TD_ERR_NOMEM, "out of memory planning activations (%.1f MiB)",
                            bytes / 1048576.0);
    m->acts_bytes = bytes;
    float *cur = m->acts;
#define TAKE(n) (cur += (((n) + 15) / 16) * 16, cur - (((n) + 15) / 16) * 16)
    for (size_t l = 0; l < L; l++) {
        layer_acts *a = &m->la[l];
        a->res = TAKE(N * C);
        a->n1 = TAKE(N * C);
        a->n1m = TAKE(N);
        a->n1r = TAKE(N);
        a->qkv = TAKE(N * m->QKV);
        a->att = TAKE((size_t)B * m->NH * T * T);
        a->atty = TAKE(N * m->NH * m->hd);
        a->res2 = TAKE(N * C);
        a->n2 = TAKE(N * C);
        a->n2m = TAKE(N);
        a->n2r = TAKE(N);
        a->fc = TAKE(N * m->FC);
        a->h = TAKE(N * m->F);
    }
    m->resf = TAKE(N * C);
    m->nf = TAKE(N * C);
    m->nfm = TAKE(N);
    m->nfr = TAKE(N);
    m->logits = TAKE(N * m->V);
    m->lse = TAKE(N);
    m->tokens = (int32_t *)TAKE(N);
    m->targets = (int32_t *)TAKE(N);
    if (with_grads) {
        m->dres = TAKE(N * C);
        m->dn = TAKE(N * C);
        m->dqkv = TAKE(N * m->QKV);
        m->datty = TAKE(N * m->NH * m->hd);
        m->dfc = TAKE(N * m->FC);
        m->dh = TAKE(N * m->F);
    }
#undef TAKE
    TD_ASSERT((size_t)(cur - m->acts) * sizeof(float) <= bytes);
    m->planB = B;
    m->planT = T;
    m->plan_grads = with_grads;
    if (with_grads && !m->grads) {
        m->grads = aligned_alloc(64, ((m->num_params * sizeof(float) + 63) / 64) * 64);
        if (!m->grads) return td_error_set(TD_ERR_NOMEM, "out of memory allocating gradients");
        memset(m->grads, 0, m->num_params * sizeof(float));
        bind_ptrs(m, m->grads, &m->g, m->g_layers);
    }
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* forward */

static void norm_fwd(const td_model *m, float *out, float *mean, float *rstd, const float *x,
                     const float *w, const float *b, int N) {
    if (m->cfg.arch == TD_ARCH_LLAMA)
        td_op_rmsnorm_fwd_f32(out, rstd, x, w, N, m->C, (float)m->cfg.norm_eps);
    else
        td_op_layernorm_fwd_f32(out, mean, rstd, x, w, b, N, m->C, (float)m->cfg.norm_eps);
}

static void norm_bwd(const td_model *m, float *dx, float *dw, float *db, const float *dout,
                     const float *x, const float *w, const float *mean, const float *rstd, int N) {
    if (m->cfg.arch == TD_ARCH_LLAMA)
        td_op_rmsnorm_bwd_f32(dx, dw, dout, x, w, rstd, N, m->C);
    else
        td_op_layernorm_bwd_f32(dx, dw, db, dout, x, w, mean, rstd, N, m->C);
}

/* ---------------------------------------------------------------------------------------- */
/* matrix products: fp32 (OpenBLAS) or bf16 operands with fp32 accumulation (oneDNN) */

td_status td_model_refresh_bf16(td_model *m) {
    if (!m->bf16) return TD_OK;
    td_bf16_from_f32(m->pbf, m->params, m->num_params);
    return TD_OK;
}

td_status td_model_set_bf16(td_model *m, int on) {
    if (!on) {
        m->bf16 = 0;
        return TD_OK;
    }
    TD_TRY(td_bf16_init());
    if (!m->pbf) {
        m->pbf = malloc(m->num_params * sizeof(uint16_t));
        if (!m->pbf) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 weights");
    }
    m->bf16 = 1;
    return td_model_refresh_bf16(m);
}

int td_model_is_bf16(const td_model *m) {
    return m->bf16;
}

uint16_t *td_model_bf16_params(td_model *m) {
    return m->bf16 ? m->pbf : NULL;
}

static uint16_t *bf_scratch(td_model *m, int which, size_t n) {
    if (n > m->sbf_n[which]) {
        free(m->sbf[which]);
        m->sbf[which] = malloc(n * sizeof(uint16_t));
        m->sbf_n[which] = m->sbf[which] ? n : 0;
    }
    return m->sbf[which];
}

/* out (N,OC) = inp (N,C) @ W^T + bias */
static td_status mm_fwd(td_model *m, float *out, const float *inp, const float *W,
                        const float *bias, int N, int C, int OC) {
    if (!m->bf16) {
        td_op_matmul_fwd_f32(out, inp, W, bias, N, C, OC);
        return TD_OK;
    }
    uint16_t *a = bf_scratch(m, 0, (size_t)N * C);
    if (!a) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 activations");
    td_bf16_from_f32(a, inp, (size_t)N * C);
    /* B = W^T: W is stored (OC, C), i.e. (N, K) of the product */
    return td_bf16_gemm(out, a, m->pbf + (W - m->params), bias, N, OC, C, 0, 1, 0);
}

/* dinp (N,C) (+)= dout @ W; dW (OC,C) += dout^T @ inp; dbias += column sums of dout */
static td_status mm_bwd(td_model *m, float *dinp, float *dW, float *dbias, const float *dout,
                        const float *inp, const float *W, int N, int C, int OC, int overwrite) {
    if (!m->bf16) {
        td_op_matmul_bwd_f32(dinp, dW, dbias, dout, inp, W, N, C, OC, overwrite);
        return TD_OK;
    }
    uint16_t *d = bf_scratch(m, 0, (size_t)N * OC), *x = bf_scratch(m, 1, (size_t)N * C);
    if (!d || !x) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 gradients");
    td_bf16_from_f32(d, dout, (size_t)N * OC);
    td_bf16_from_f32(x, inp, (size_t)N * C);
    if (dinp)
        TD_TRY(td_bf16_gemm(dinp, d, m->pbf + (W - m->params), NULL, N, C, OC, 0, 0, !overwrite));
    TD_TRY(td_bf16_gemm(dW, d, x, NULL, OC, C, N, 1, 0, 1));
    if (dbias) {
#pragma omp parallel
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            int j0 = (int)((long)OC * id / nt), j1 = (int)((long)OC * (id + 1) / nt);
            for (int n = 0; n < N; n++)
                for (int j = j0; j < j1; j++)
                    dbias[j] += dout[(size_t)n * OC + j];
        }
    }
    return TD_OK;
}

#define MM_FWD(...) TD_TRY(mm_fwd(m, __VA_ARGS__))
#define MM_BWD(...) TD_TRY(mm_bwd(m, __VA_ARGS__))

td_status td_model_forward(td_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                           double *loss) {
    if (!m->acts || B > m->planB || T > m->planT)
        return td_error_set(TD_ERR_INVALID, "forward of %d x %d exceeds the planned %d x %d", B, T,
                            m->planB, m->planT);
    int N = B * T, C = m->C, V = m->V;
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V)
            return td_error_set(TD_ERR_INVALID, "token id %d at position %d is outside [0, %d)",
                                tokens[n], n, V);
        if (targets && targets[n] >= V)
            return td_error_set(TD_ERR_INVALID, "target id %d at position %d is outside [0, %d)",
                                targets[n], n, V);
    }
    memcpy(m->tokens, tokens, sizeof(int32_t) * (size_t)N);
    if (targets) memcpy(m->targets, targets, sizeof(int32_t) * (size_t)N);
    m->lastB = B;
    m->lastT = T;
    m->has_targets = targets != NULL;
    int llama = m->cfg.arch == TD_ARCH_LLAMA;

    PROF(TD_PROF_EMBED, td_op_embed_fwd_f32(m->la[0].res, m->tokens, m->p.wte, m->p.wpe, N, T, C));
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &m->la[l];
        const td_layer_params *w = &m->p.layers[l];
        float *res_out = l + 1 < m->L ? m->la[l + 1].res : m->resf;
        PROF(TD_PROF_NORM, norm_fwd(m, a->n1, a->n1m, a->n1r, a->res, w->norm1_w, w->norm1_b, N));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->qkv, a->n1, w->wqkv, w->bqkv, N, C, m->QKV));
        if (llama)
            PROF(TD_PROF_ROPE, td_op_rope_f32(a->qkv, N, T, m->QKV, m->NH + m->NKV, m->hd,
                                              (float)m->cfg.rope_theta, 0));
        PROF(TD_PROF_ATTN_FWD,
             td_op_attention_fwd_f32(a->atty, a->att, a->qkv, B, T, m->NH, m->NKV, m->hd));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->res2, a->atty, w->wo, w->bo, N, m->NH * m->hd, C));
        PROF(TD_PROF_RESIDUAL, td_op_add_f32(a->res2, a->res2, a->res, (size_t)N * C));
        PROF(TD_PROF_NORM, norm_fwd(m, a->n2, a->n2m, a->n2r, a->res2, w->norm2_w, w->norm2_b, N));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->fc, a->n2, w->wfc, w->bfc, N, C, m->FC));
        if (llama)
            PROF(TD_PROF_ACT, td_op_swiglu_fwd_f32(a->h, a->fc, N, m->F));
        else
            PROF(TD_PROF_ACT, td_op_gelu_fwd_f32(a->h, a->fc, (size_t)N * m->F));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(res_out, a->h, w->wproj, w->bproj, N, m->F, C));
        PROF(TD_PROF_RESIDUAL, td_op_add_f32(res_out, res_out, a->res2, (size_t)N * C));
    }
    PROF(TD_PROF_NORM, norm_fwd(m, m->nf, m->nfm, m->nfr, m->resf, m->p.normf_w, m->p.normf_b, N));
    PROF(TD_PROF_LMHEAD_FWD, MM_FWD(m->logits, m->nf, m->p.lm_head, NULL, N, C, V));
    double unused;
    if (!loss) loss = &unused;
    if (targets)
        PROF(TD_PROF_XENT, *loss = td_op_crossentropy_fwd_f32(m->lse, m->logits, m->targets, N, V));
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* backward */

void td_model_zero_grad(td_model *m) {
    if (m->grads) memset(m->grads, 0, m->num_params * sizeof(float));
}

td_status td_model_backward(td_model *m, double dscale) {
    if (!m->grads || !m->dres)
        return td_error_set(TD_ERR_INVALID, "backward needs td_model_plan(..., with_grads=1)");
    if (!m->has_targets)
        return td_error_set(TD_ERR_INVALID, "backward needs a forward pass with targets");
    int B = m->lastB, T = m->lastT, N = B * T, C = m->C, V = m->V;
    int llama = m->cfg.arch == TD_ARCH_LLAMA;
    const td_param_ptrs *P = &m->p, *G = &m->g;

    /* dlogits overwrite the logits in place */
    PROF(TD_PROF_XENT,
         td_op_crossentropy_bwd_f32(m->logits, m->logits, m->lse, m->targets, N, V, dscale));
    PROF(TD_PROF_LMHEAD_BWD,
         MM_BWD(m->dn, G->lm_head, NULL, m->logits, m->nf, P->lm_head, N, C, V, 1));
    memset(m->dres, 0, sizeof(float) * (size_t)N * C);
    PROF(TD_PROF_NORM, norm_bwd(m, m->dres, G->normf_w, G->normf_b, m->dn, m->resf, P->normf_w,
                                m->nfm, m->nfr, N));
    HOOK(m->L);

    for (int l = m->L - 1; l >= 0; l--) {
        layer_acts *a = &m->la[l];
        const td_layer_params *w = &P->layers[l];
        const td_layer_params *g = &G->layers[l];
        /* dres holds d(residual leaving the layer); the residual add passes it through */
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dh, g->wproj, g->bproj, m->dres, a->h, w->wproj, N, m->F, C, 1));
        if (llama)
            PROF(TD_PROF_ACT, td_op_swiglu_bwd_f32(m->dfc, m->dh, a->fc, N, m->F));
        else
            PROF(TD_PROF_ACT, td_op_gelu_bwd_f32(m->dfc, m->dh, a->fc, (size_t)N * m->F));
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dn, g->wfc, g->bfc, m->dfc, a->n2, w->wfc, N, C, m->FC, 1));
        PROF(TD_PROF_NORM, norm_bwd(m, m->dres, g->norm2_w, g->norm2_b, m->dn, a->res2, w->norm2_w,
                                    a->n2m, a->n2r, N));
        /* dres is now d(res2) */
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->datty, g->wo, g->bo, m->dres, a->atty, w->wo, N, m->NH * m->hd, C, 1));
        PROF(TD_PROF_ATTN_BWD, td_op_attention_bwd_f32(m->dqkv, m->datty, a->att, a->qkv, B, T,
                                                       m->NH, m->NKV, m->hd));
        if (llama)
            PROF(TD_PROF_ROPE, td_op_rope_f32(m->dqkv, N, T, m->QKV, m->NH + m->NKV, m->hd,
                                              (float)m->cfg.rope_theta, 1));
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dn, g->wqkv, g->bqkv, m->dqkv, a->n1, w->wqkv, N, C, m->QKV, 1));
        PROF(TD_PROF_NORM, norm_bwd(m, m->dres, g->norm1_w, g->norm1_b, m->dn, a->res, w->norm1_w,
                                    a->n1m, a->n1r, N));
        HOOK(l);
    }
    PROF(TD_PROF_EMBED, td_op_embed_bwd_f32(m->embed_rows_mode ? NULL : G->wte, G->wpe, m->dres,
                                            m->tokens, N, T, C));
    m->rows_n = m->embed_rows_mode ? N : 0;
    m->embed_rows_mode = 0;
    HOOK(-1);
    m->has_targets = 0; /* the logits now hold gradients */
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* inference with a paged KV cache */

struct td_kv_cache {
    int L, bt, kvdim;
    size_t nblocks;
    float *k, *v; /* L * nblocks * bt * kvdim each */
};

td_status td_kv_cache_new(const td_model *m, int block_tokens, size_t num_blocks,
                          td_kv_cache **out) {
    if (block_tokens <= 0 || num_blocks == 0)
        return td_error_set(TD_ERR_INVALID, "KV cache needs blocks (got %zu of %d tokens)",
                            num_blocks, block_tokens);
    td_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return td_error_set(TD_ERR_NOMEM, "out of memory");
    kv->L = m->L;
    kv->bt = block_tokens;
    kv->kvdim = m->NKV * m->hd;
    kv->nblocks = num_blocks;
    size_t n = (size_t)m->L * num_blocks * (size_t)block_tokens * (size_t)kv->kvdim;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
        td_kv_cache_free(&kv);
        return td_error_set(TD_ERR_NOMEM, "out of memory for a KV cache of %.1f MiB",
                            2.0 * (double)n * 4 / 1048576);
    }
    *out = kv;
    return TD_OK;
}

void td_kv_cache_free(td_kv_cache **kvp) {
    if (!kvp || !*kvp) return;
    free((*kvp)->k);
    free((*kvp)->v);
    free(*kvp);
    *kvp = NULL;
}

int td_kv_cache_block_tokens(const td_kv_cache *kv) {
    return kv->bt;
}
size_t td_kv_cache_num_blocks(const td_kv_cache *kv) {
    return kv->nblocks;
}

size_t td_model_kv_bytes_per_token(const td_model *m) {
    return 2 * (size_t)m->L * (size_t)m->NKV * (size_t)m->hd * sizeof(float);
}

td_status td_model_plan_infer(td_model *m, int max_tokens, int max_segs) {
    if (m->inf && max_tokens <= m->inf_tokens && max_segs <= m->inf_segs) return TD_OK;
    if (m->inf) { /* grow, never shrink: an engine may rely on the earlier plan */
        if (max_tokens < m->inf_tokens) max_tokens = m->inf_tokens;
        if (max_segs < m->inf_segs) max_segs = m->inf_segs;
    }
    if (max_segs > max_tokens) max_tokens = max_segs;
    size_t N = (size_t)max_tokens, S = (size_t)max_segs, C = (size_t)m->C;
    size_t total = N * C * 2 + 2 * N + N * (size_t)m->QKV + N * (size_t)m->NH * m->hd +
                   N * (size_t)m->FC + N * (size_t)m->F + S * C * 2 + 2 * S + 3 * N + 16 * 16;
    free(m->inf);
    m->inf = malloc(total * sizeof(float));
    if (!m->inf) return td_error_set(TD_ERR_NOMEM, "out of memory for inference buffers");
    float *cur = m->inf;
#define TAKE(n) (cur += (((n) + 15) / 16) * 16, cur - (((n) + 15) / 16) * 16)
    m->ix = TAKE(N * C);
    m->in = TAKE(N * C);
    m->im = TAKE(N);
    m->ir = TAKE(N);
    m->iqkv = TAKE(N * m->QKV);
    m->iatt = TAKE(N * m->NH * m->hd);
    m->ifc = TAKE(N * m->FC);
    m->ih = TAKE(N * m->F);
    m->ilast = TAKE(S * C * 2 + 2 * S);
    m->itok = (int32_t *)TAKE(N);
    m->ipos = (int32_t *)TAKE(N);
    m->iseg = (int32_t *)TAKE(N);
#undef TAKE
    size_t wmax = C > (size_t)m->F ? C : (size_t)m->F;
    if ((size_t)m->NH * m->hd > wmax) wmax = (size_t)m->NH * m->hd;
    free(m->iq8);
    free(m->iq8s);
    m->iq8 = malloc(N * wmax);
    m->iq8s = malloc(N * sizeof(float));
    if (!m->iq8 || !m->iq8s)
        return td_error_set(TD_ERR_NOMEM, "out of memory for inference buffers");
    m->inf_tokens = max_tokens;
    m->inf_segs = max_segs;
    return TD_OK;
}

/* out (N, OC) = inp (N, C) @ (s * Wq)^T + bias, with Wq int8 or int16 (OC, C): four weight
 * rows at a time are converted to float once (AVX-512: 16 at a time) into an L1-resident
 * buffer and reused for every input row; fp32 accumulation. QTYPE is the weight type,
 * QLOAD16(p) converts 16 of them at p to a __m512. */
#define QTYPE int8_t
#define QLOAD16(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define QMATMUL matmul_int8
#include "worker/model/matmul_q.inc"
#define QTYPE int16_t
#define QLOAD16(p)                                                                                 \
    _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(p))))
#define QMATMUL matmul_int16
#include "worker/model/matmul_q.inc"
static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#define QTYPE uint16_t /* bf16: the upper half of a float */
#define QLOAD16(p)                                                                                 \
    _mm512_castsi512_ps(                                                                           \
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define QSCALAR(x) bf16_to_float(x)
#define QMATMUL matmul_bf16
#include "worker/model/matmul_q.inc"

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
/* out (N, OC) = inp @ (s W8)^T + bias with int8 x int8 products in int32: each input row is
 * quantized to int8 (scale max |x| / 127) and shifted to u8 (x + 128) for vpdpbusd; the
 * shift is undone with the weight row sums: sum (x+128) w = sum x w + 128 sum w. */
static void matmul_int8_vnni(const td_model *m, float *out, const float *inp, const int8_t *W8,
                             const float *sc, const int32_t *wsum, const float *bias, int N, int C,
                             int OC) {
    uint8_t *xq = m->iq8;
    float *xs = m->iq8s;
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float mx = 0;
        for (int k = 0; k < C; k++)
            mx = fmaxf(mx, fabsf(x[k]));
        float s = mx > 0 ? mx / 127.0f : 1.0f, inv = 1.0f / s;
        xs[n] = s;
        for (int k = 0; k < C; k++)
            xq[(size_t)n * C + k] = (uint8_t)(lrintf(x[k] * inv) + 128);
    }
#pragma omp parallel for schedule(static)
    for (int j = 0; j < OC; j++) {
        const int8_t *w = W8 + (size_t)j * C;
        for (int n = 0; n < N; n++) {
            const uint8_t *q = xq + (size_t)n * C;
            __m512i acc = _mm512_setzero_si512();
            for (int k = 0; k < C; k += 64)
                acc =
                    _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(q + k), _mm512_loadu_si512(w + k));
            int32_t dot = _mm512_reduce_add_epi32(acc) - 128 * wsum[j];
            out[(size_t)n * OC + j] = (float)dot * xs[n] * sc[j] + (bias ? bias[j] : 0.0f);
        }
    }
}
#endif

void td_model_set_int8_vnni(td_model *m, int on) {
    m->int8_vnni = on;
}

/* Fixed-shape blocks for calibration: each block is one single-threaded OpenBLAS call
 * (OpenBLAS does not thread inside an OpenMP parallel region), so every sum is formed the
 * same way whatever the thread count -- OpenBLAS's own threading picks kernels by it, which
 * moved the logits of a 32-row step by an ulp and, through sampling, the whole text. */
enum { FIXED_BLOCK = 64 };

/* out (N, OC) = inp (N, C) W^T + bias */
static void matmul_fixed_blocks(float *out, const float *inp, const float *W, const float *bias,
                                int N, int C, int OC) {
    int nb = (OC + FIXED_BLOCK - 1) / FIXED_BLOCK;
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < nb; b++) {
        int j0 = b * FIXED_BLOCK, n = OC - j0 < FIXED_BLOCK ? OC - j0 : FIXED_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, C, 1.0f, inp, C,
                    W + (size_t)j0 * C, C, 0.0f, out + j0, OC);
        if (bias)
            for (int r = 0; r < N; r++)
                for (int j = j0; j < j0 + n; j++)
                    out[(size_t)r * OC + j] += bias[j];
    }
}

/* H (C, C) += X^T X for X (N, C): the upper triangle (and the diagonal blocks whole) */
static void gram_fixed_blocks(float *H, const float *X, int N, int C) {
    int nb = (C + FIXED_BLOCK - 1) / FIXED_BLOCK;
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < nb; b++) {
        int c0 = b * FIXED_BLOCK, n = C - c0 < FIXED_BLOCK ? C - c0 : FIXED_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c0 + n, n, N, 1.0f, X, C, X + c0, C,
                    1.0f, H + c0, C);
    }
}

static void linear_infer(const td_model *m, int which, int layer, float *out, const float *inp,
                         const float *W, const float *bias, int N, int C, int OC) {
    if (m->calH) { /* calibrating (the fp32 model): the same sums whatever the thread count */
        float *H = m->calH[layer < 0 ? 4 * m->L : 4 * layer + which];
        if (H) gram_fixed_blocks(H, inp, N, C); /* GPTQ's statistic: H += inp^T inp */
        matmul_fixed_blocks(out, inp, W, bias, N, C, OC);
        return;
    }
    if (m->q8l) {
        const struct q8mat *q = &m->q8l[layer < 0 ? 4 * m->L : 4 * layer + which];
        if (q->wb) {
            matmul_bf16(out, inp, q->wb, q->s, bias, N, C, OC);
            return;
        }
        if (q->w16) {
            matmul_int16(out, inp, q->w16, q->s, bias, N, C, OC);
            return;
        }
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
        if (m->int8_vnni && C % 64 == 0) {
            matmul_int8_vnni(m, out, inp, q->w, q->s, q->wsum, bias, N, C, OC);
            return;
        }
#endif
        matmul_int8(out, inp, q->w, q->s, bias, N, C, OC);
    } else if (N == 1) { /* a matrix-vector product: OpenBLAS's sgemv is ~2x its M=1 sgemm */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, W, C, inp, 1, 0.0f, out, 1);
        if (bias)
            for (int j = 0; j < OC; j++)
                out[j] += bias[j];
    } else {
        td_op_matmul_fwd_f32(out, inp, W, bias, N, C, OC);
    }
}

typedef struct {
    const float *w;
    int rows, cols;
} qmat;

/* The matrices inference multiplies with, in q8l order; returns the count. */
static int infer_mats(const td_model *m, qmat *mats) {
    int nm = 0;
    for (int l = 0; l < m->L; l++) {
        const td_layer_params *w = &m->p.layers[l];
        mats[nm++] = (qmat){w->wqkv, m->QKV, m->C};
        mats[nm++] = (qmat){w->wo, m->C, m->NH * m->hd};
        mats[nm++] = (qmat){w->wfc, m->FC, m->C};
        mats[nm++] = (qmat){w->wproj, m->C, m->F};
    }
    mats[nm++] = (qmat){m->p.lm_head, m->V, m->C};
    /* an untied input embedding is quantized too (a lookup converts one row) */
    if (!m->cfg.tie_word_embeddings) mats[nm++] = (qmat){m->p.wte, m->V, m->C};
    return nm;
}

/* Per-output-channel symmetric quantization of the (R, C) matrix W to qmax levels either
 * side: scale max |w| / qmax, round to nearest. Writes int8 (w8) or int16 (w16) values,
 * the scales and (int8) the row sums the VNNI path needs. */
static void quantize_rows(const float *W, int R, int Cc, float qmax, const float *grid, int8_t *w8,
                          int16_t *w16, float *sp, int32_t *ws) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *row = W + (size_t)r * Cc;
        /* the given grid (GPTQ's, or the whole model's): w / sc is an integer there */
        float sc = grid && grid[r] > 0 ? grid[r] : td_gptq_row_scale(row, Cc, qmax);
        sp[r] = sc;
        int32_t sum = 0;
        for (int k = 0; k < Cc; k++) {
            long v = lrintf(row[k] / sc);
            v = v > (long)qmax ? (long)qmax : v < -(long)qmax ? -(long)qmax : v;
            if (w16)
                w16[(size_t)r * Cc + k] = (int16_t)v;
            else
                w8[(size_t)r * Cc + k] = (int8_t)v;
            sum += (int32_t)v;
        }
        ws[r] = sum;
    }
}

td_status td_model_quantize_bf16(td_model *m) {
    if (m->q8l) return TD_OK;
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats);
    size_t nw = 0, ns = 0;
    for (int i = 0; i < nm; i++) {
        nw += (size_t)mats[i].rows * mats[i].cols;
        ns += (size_t)mats[i].rows;
    }
    m->qbf = malloc(nw * sizeof(uint16_t));
    m->q8s = malloc(ns * sizeof(float));
    m->q8l = malloc(sizeof *m->q8l * (size_t)nm);
    if (!m->qbf || !m->q8s || !m->q8l) {
        free(mats);
        free(m->qbf);
        free(m->q8s);
        free(m->q8l);
        m->qbf = NULL;
        m->q8s = NULL;
        m->q8l = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 weights");
    }
    for (size_t i = 0; i < ns; i++)
        m->q8s[i] = 1.0f;
    uint16_t *wp = m->qbf;
    float *sp = m->q8s;
    for (int i = 0; i < nm; i++) {
        size_t n = (size_t)mats[i].rows * mats[i].cols;
        td_bf16_from_f32(wp, mats[i].w, n);
        m->q8l[i] = (struct q8mat){NULL, NULL, wp, sp, NULL};
        wp += n;
        sp += mats[i].rows;
    }
    free(mats);
    return TD_OK;
}

td_status td_model_quantize_int8(td_model *m, int head_int8) {
    if (m->q8l) return TD_OK;
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats), head = 4 * m->L;
    size_t nw = 0, ns = 0, nh = head_int8 ? 0 : (size_t)mats[head].rows * mats[head].cols;
    for (int i = 0; i < nm; i++) {
        nw += (size_t)mats[i].rows * mats[i].cols;
        ns += (size_t)mats[i].rows;
    }
    nw -= nh;
    m->q8 = malloc(nw ? nw : 1);
    m->q16 = nh ? malloc(nh * sizeof(int16_t)) : NULL;
    m->q8s = malloc(ns * sizeof(float));
    m->q8sum = malloc(ns * sizeof(int32_t));
    m->q8l = malloc(sizeof *m->q8l * (size_t)nm);
    if (!m->q8 || (nh && !m->q16) || !m->q8s || !m->q8l || !m->q8sum) {
        free(mats);
        free(m->q8);
        free(m->q16);
        free(m->q8s);
        free(m->q8l);
        free(m->q8sum);
        m->q8 = NULL;
        m->q16 = NULL;
        m->q8s = NULL;
        m->q8l = NULL;
        m->q8sum = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for int8 weights");
    }
    int8_t *wp = m->q8;
    float *sp = m->q8s;
    int32_t *ws = m->q8sum;
    for (int i = 0; i < nm; i++) {
        int R = mats[i].rows, Cc = mats[i].cols, wide = i == head && nh;
        m->q8l[i] = (struct q8mat){wide ? NULL : wp, wide ? m->q16 : NULL, NULL, sp, ws};
        /* the int8 grid (GPTQ's, or a whole model's before slicing) is for int8 rows only */
        quantize_rows(mats[i].w, R, Cc, wide ? 32767.0f : 127.0f,
                      m->grid && !wide ? m->grid + (sp - m->q8s) : NULL, wp, wide ? m->q16 : NULL,
                      sp, ws);
        if (!wide) wp += (size_t)R * Cc;
        sp += R;
        ws += R;
    }
    free(mats);
    return TD_OK;
}

/* Element counts behind the memory plan: lin = weights of the matrix products (and an
 * untied input embedding), rows = their output rows (one scale each when quantized),
 * kept = what stays fp32 (norms, biases, learned positions); *_read: what one decode step
 * reads of each (an untied input embedding: one row, not counted; positions: one row). */
typedef struct {
    size_t lin, rows, kept, lin_read, rows_read, small_read;
} weight_parts;

static weight_parts weight_parts_of(const td_model *m) {
    weight_parts w = {0};
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return w;
    int nm = infer_mats(m, mats);
    for (int i = 0; i < nm; i++) {
        w.lin += (size_t)mats[i].rows * mats[i].cols;
        w.rows += (size_t)mats[i].rows;
    }
    free(mats);
    w.kept = m->num_params - w.lin; /* tied: wte is counted once, as lm_head, inside lin */
    w.lin_read = w.lin;
    w.rows_read = w.rows;
    if (!m->cfg.tie_word_embeddings) {
        w.lin_read -= (size_t)m->V * m->C;
        w.rows_read -= (size_t)m->V;
    }
    w.small_read = w.kept;
    if (m->p.wpe) w.small_read -= (size_t)m->cfg.max_position_embeddings * m->C;
    return w;
}

/* ---------------------------------------------------------------------------------------- */
/* GPTQ calibration */

td_status td_model_calib_start(td_model *m, int what, int layer_lo, int layer_hi) {
    if (m->q8l)
        return td_error_set(TD_ERR_INVALID, "calibration needs the fp32 model: this one is "
                                            "already quantized");
    if (m->cfg.tp_size > 1)
        return td_error_set(TD_ERR_INVALID, "calibrate the whole model, then slice it for "
                                            "tensor parallelism");
    calib_free(m);
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    m->calH = calloc((size_t)(4 * m->L + 1), sizeof *m->calH);
    if (!mats || !m->calH) {
        free(mats);
        free(m->calH);
        m->calH = NULL;
        return td_error_set(TD_ERR_NOMEM, "out of memory for calibration");
    }
    infer_mats(m, mats);
    size_t bytes = 0;
    for (int i = 0; i <= 4 * m->L; i++) {
        int head = i == 4 * m->L, l = i / 4;
        if (head ? !(what & TD_CALIB_HEAD)
                 : !(what & TD_CALIB_LAYERS) || l < layer_lo || l >= layer_hi)
            continue;
        size_t c = (size_t)mats[i].cols;
        bytes += c * c * sizeof(float);
        m->calH[i] = calloc(c * c, sizeof(float));
        if (!m->calH[i]) {
            free(mats);
            calib_free(m);
            return td_error_set(TD_ERR_NOMEM,
                                "out of memory for calibration statistics "
                                "(%.1f MiB so far)",
                                bytes / 1048576.0);
        }
    }
    free(mats);
    return TD_OK;
}

size_t td_model_calib_work_bytes(const td_model *m, int skip_head) {
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return 0;
    int nm = infer_mats(m, mats);
    size_t work = 0;
    for (int i = 0; i < nm; i++) {
        if (i == 4 * m->L && skip_head) continue;
        size_t w = td_gptq_work_bytes(mats[i].rows, mats[i].cols);
        if (i > 4 * m->L) /* an untied embedding, and its H from layer 0 (embedding_gptq) */
            w += ((size_t)m->QKV * m->C + (size_t)m->C * m->C) * sizeof(float);
        work = w > work ? w : work;
    }
    free(mats);
    return work;
}

void td_model_calib_cancel(td_model *m) {
    calib_free(m);
}

size_t td_model_calib_bytes(const td_model *m, int what) {
    size_t C = (size_t)m->C, A = (size_t)m->NH * m->hd, F = (size_t)m->F;
    size_t layers = (2 * C * C + A * A + F * F) * (size_t)m->L;
    return ((what & TD_CALIB_LAYERS ? layers : 0) + (what & TD_CALIB_HEAD ? C * C : 0)) *
           sizeof(float);
}

/* An untied input embedding is a lookup, with no inputs to calibrate on. Its rows go
 * (normalised) into layer 0's q/k/v product, so GPTQ weighs their errors by how much they
 * move its output: H = (W_qkv diag(g))^T (W_qkv diag(g)), g = layer 0's norm weights. Done
 * with the layers, so that what reads the model next (the head's calibration) sees the
 * quantized model. */
static td_status embedding_gptq(td_model *m, float *wte, float damp, float *grid) {
    size_t C = (size_t)m->C, QKV = (size_t)m->QKV;
    float *A = malloc(sizeof(float) * QKV * C), *H = calloc(C * C, sizeof(float));
    const td_layer_params *l0 = &m->p.layers[0];
    td_status s = A && H ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s == TD_OK) {
        for (size_t r = 0; r < QKV; r++)
            for (size_t k = 0; k < C; k++)
                A[r * C + k] = l0->wqkv[r * C + k] * l0->norm1_w[k];
        gram_fixed_blocks(H, A, m->QKV, m->C);
        s = td_gptq_quantize(wte, m->V, m->C, H, 127.0f, damp, grid);
    }
    free(A);
    free(H);
    return s;
}

td_status td_model_calib_gptq(td_model *m, float damp,
                              void (*progress)(void *ctx, int done, int total), void *ctx) {
    if (!m->calH)
        return td_error_set(TD_ERR_INVALID, "GPTQ without calibration statistics "
                                            "(td_model_calib_start, then forward steps)");
    if (!td_model_int8_grid(m, 1)) return td_error_set(TD_ERR_NOMEM, "out of memory");
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    /* statistics of layer 0 mean this pass is the first of the layers' */
    int nm = infer_mats(m, mats), total = 0, done = 0, first_layers = m->calH[0] != NULL;
    for (int i = 0; i <= 4 * m->L; i++)
        total += m->calH[i] != NULL;
    td_status s = TD_OK;
    float *grid = m->grid;
    for (int i = 0; i < nm && s == TD_OK; i++) {
        if (i <= 4 * m->L && m->calH[i]) {
            s = td_gptq_quantize((float *)mats[i].w, mats[i].rows, mats[i].cols, m->calH[i], 127.0f,
                                 damp, grid);
            if (s == TD_OK && progress) progress(ctx, ++done, total);
        } else if (i > 4 * m->L && first_layers) {
            s = embedding_gptq(m, (float *)mats[i].w, damp, grid);
        }
        grid += mats[i].rows;
    }
    free(mats);
    calib_free(m);
    return s;
}

size_t td_model_int8_grid_len(const td_model *m) {
    weight_parts w = weight_parts_of(m);
    return w.rows;
}

float *td_model_int8_grid(td_model *m, int create) {
    size_t n = td_model_int8_grid_len(m);
    if (!m->grid && create && n) m->grid = calloc(n, sizeof(float));
    return m->grid;
}

/* Returns the whole pages inside [from, from + count) to the system and makes them
 * inaccessible, so that a read of a released weight faults instead of reading zeros. */
static void release_range(td_model *m, const float *from, size_t count) {
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)from + pg - 1) & ~(pg - 1);
    uintptr_t b = (uintptr_t)(from + count) & ~(pg - 1);
    if (b <= a) return;
    struct released *r = realloc(m->rel, sizeof *r * (size_t)(m->nrel + 1));
    if (!r) return; /* kept resident: nothing lost but memory */
    m->rel = r;
    if (madvise((void *)a, b - a, MADV_DONTNEED) != 0) {
        TD_LOG_WARN("could not release %.1f MiB of weights (kept)", (b - a) / 1048576.0);
        return;
    }
    if (mprotect((void *)a, b - a, PROT_NONE) != 0) { /* released but readable: as before */
        mprotect((void *)a, b - a, PROT_READ | PROT_WRITE);
        TD_LOG_WARN("released %.1f MiB of weights but could not protect them", (b - a) / 1048576.0);
        return;
    }
    m->rel[m->nrel++] = (struct released){(void *)a, b - a};
}

td_status td_model_release(td_model *m, int what) {
    if (what != TD_RELEASE_QUANTIZED && what != TD_RELEASE_ALL)
        return td_error_set(TD_ERR_INVALID, "td_model_release: what %d", what);
    if (what == TD_RELEASE_QUANTIZED) {
        if (!m->q8l) return td_error_set(TD_ERR_INVALID, "no int8/bf16 copies: nothing to release");
        qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
        if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
        int nm = infer_mats(m, mats);
        for (int i = 0; i < nm; i++)
            release_range(m, mats[i].w, (size_t)mats[i].rows * (size_t)mats[i].cols);
        free(mats);
        return TD_OK;
    }
    /* everything but the configuration: parameters, gradients, training buffers */
    release_range(m, m->params, m->num_params);
    free(m->grads);
    free(m->acts);
    free(m->la);
    free(m->pbf);
    free(m->sbf[0]);
    free(m->sbf[1]);
    m->grads = NULL;
    m->acts = NULL;
    m->la = NULL;
    m->pbf = NULL;
    m->sbf[0] = m->sbf[1] = NULL;
    m->sbf_n[0] = m->sbf_n[1] = 0;
    m->bf16 = 0;
    m->planB = m->planT = m->plan_grads = 0;
    m->acts_bytes = 0;
    m->released_all = 1;
    return TD_OK;
}

td_status td_model_int8_grid_rtn(td_model *m, int head_int8) {
    if (!td_model_int8_grid(m, 1)) return td_error_set(TD_ERR_NOMEM, "out of memory");
    qmat *mats = malloc(sizeof *mats * (size_t)(4 * m->L + 2));
    if (!mats) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int nm = infer_mats(m, mats);
    float *g = m->grid;
    for (int i = 0; i < nm; i++) {
        if (i == 4 * m->L && !head_int8) /* lm_head stays int16, rounded on its own */
            memset(g, 0, sizeof(float) * (size_t)mats[i].rows);
        else
            td_gptq_row_scales(mats[i].w, mats[i].rows, mats[i].cols, 127.0f, g);
        g += mats[i].rows;
    }
    free(mats);
    return TD_OK;
}

void td_model_weight_bytes(const td_model *m, int head_int8, size_t *fp32, size_t *int8,
                           size_t *read_fp32, size_t *read_int8) {
    weight_parts w = weight_parts_of(m);
    /* int8 keeps fp32 only for norms, biases and learned positions; embeddings are read as
     * int8 rows (tied: the lm_head copy, int16 unless head_int8; untied: their own) */
    size_t wide = head_int8 ? 0 : (size_t)m->V * m->C; /* lm_head's second byte per weight */
    *fp32 = m->num_params * 4;
    *int8 = w.kept * 4 + w.lin + wide + w.rows * 4;
    *read_fp32 = (w.lin_read + w.small_read) * 4;
    *read_int8 = w.lin_read + wide + w.rows_read * 4 + w.small_read * 4;
}

size_t td_model_read_bytes_bf16(const td_model *m) {
    weight_parts w = weight_parts_of(m); /* products' weights at 2 bytes, the rest at 4 */
    return w.lin_read * 2 + w.small_read * 4;
}

/* RoPE on q and k heads of each row at its own position (the training kernel assumes
 * position = row % T). */
static void rope_rows(const td_model *m, float *qkv, const int32_t *pos, int N) {
    int hd = m->hd, half = hd / 2, heads = m->NH + m->NKV;
    double theta = m->cfg.rope_theta;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float cs[half], sn[half];
        for (int i = 0; i < half; i++) {
            float inv = (float)(1.0 / pow(theta, (double)(2 * i) / (double)hd));
            float a = (float)pos[n] * inv;
            cs[i] = (float)cos((double)a);
            sn[i] = (float)sin((double)a);
        }
        float *row = qkv + (size_t)n * m->QKV;
        for (int h = 0; h < heads; h++) {
            float *x = row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cs[i] - x2 * sn[i];
                x[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

td_status td_model_forward_infer(td_model *m, td_kv_cache *kv, const td_infer_seg *segs, int nseg,
                                 float *logits) {
    if (m->released_all)
        return td_error_set(TD_ERR_INVALID, "the model's weights were released: load it again");
    int N = 0, C = m->C, V = m->V, hd = m->hd, kvdim = m->NKV * hd, bt = kv->bt;
    for (int s = 0; s < nseg; s++)
        N += segs[s].n;
    if (!m->inf || N > m->inf_tokens || nseg > m->inf_segs)
        return td_error_set(TD_ERR_INVALID,
                            "inference step of %d tokens / %d sequences exceeds "
                            "the plan (%d / %d)",
                            N, nseg, m->inf_tokens, m->inf_segs);
    int r = 0;
    for (int s = 0; s < nseg; s++) {
        if (segs[s].n <= 0 || segs[s].pos + segs[s].n > m->cfg.max_position_embeddings)
            return td_error_set(TD_ERR_INVALID,
                                "sequence segment at position %d + %d exceeds "
                                "max_position_embeddings %d",
                                segs[s].pos, segs[s].n, m->cfg.max_position_embeddings);
        for (int i = 0; i < segs[s].n; i++, r++) {
            int32_t t = segs[s].tokens[i];
            if (t < 0 || t >= V)
                return td_error_set(TD_ERR_INVALID, "token id %d is outside [0, %d)", t, V);
            m->itok[r] = t;
            m->ipos[r] = segs[s].pos + i;
            m->iseg[r] = s;
        }
    }
    int llama = m->cfg.arch == TD_ARCH_LLAMA, group = m->NH / m->NKV;
    float scale = 1.0f / sqrtf((float)hd);
    /* embeddings */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = m->ix + (size_t)n * C;
        if (m->q8l) { /* the quantized embedding row (lm_head's when tied) */
            const struct q8mat *q = &m->q8l[4 * m->L + (m->cfg.tie_word_embeddings ? 0 : 1)];
            size_t at = (size_t)m->itok[n] * C;
            float sc = q->s[m->itok[n]];
            for (int i = 0; i < C; i++) {
                float v;
                if (q->wb) {
                    uint32_t u = (uint32_t)q->wb[at + i] << 16;
                    memcpy(&v, &u, 4);
                } else {
                    v = q->w16 ? (float)q->w16[at + i] : (float)q->w[at + i];
                }
                o[i] = v * sc + (m->p.wpe ? m->p.wpe[(size_t)m->ipos[n] * C + i] : 0.0f);
            }
            continue;
        }
        const float *e = m->p.wte + (size_t)m->itok[n] * C;
        if (m->p.wpe) {
            const float *pe = m->p.wpe + (size_t)m->ipos[n] * C;
            for (int i = 0; i < C; i++)
                o[i] = e[i] + pe[i];
        } else {
            memcpy(o, e, sizeof(float) * (size_t)C);
        }
    }
    for (int l = 0; l < m->L; l++) {
        const td_layer_params *w = &m->p.layers[l];
        norm_fwd(m, m->in, m->im, m->ir, m->ix, w->norm1_w, w->norm1_b, N);
        linear_infer(m, 0, l, m->iqkv, m->in, w->wqkv, w->bqkv, N, C, m->QKV);
        if (llama) rope_rows(m, m->iqkv, m->ipos, N);
        float *K = kv->k + (size_t)l * kv->nblocks * (size_t)bt * kvdim;
        float *Vc = kv->v + (size_t)l * kv->nblocks * (size_t)bt * kvdim;
        /* write this step's K and V into the sequences' blocks */
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const td_infer_seg *sg = &segs[m->iseg[n]];
            int p = m->ipos[n];
            size_t slot = ((size_t)sg->blocks[p / bt] * bt + (size_t)(p % bt)) * kvdim;
            const float *row = m->iqkv + (size_t)n * m->QKV;
            memcpy(K + slot, row + (size_t)m->NH * hd, sizeof(float) * (size_t)kvdim);
            memcpy(Vc + slot, row + (size_t)(m->NH + m->NKV) * hd, sizeof(float) * (size_t)kvdim);
        }
        /* attention of each new token over its sequence's positions 0..p */
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < m->NH; h++) {
                const td_infer_seg *sg = &segs[m->iseg[n]];
                int p = m->ipos[n], kh = h / group;
                const float *q = m->iqkv + (size_t)n * m->QKV + (size_t)h * hd;
                float sc[p + 1];
                float mx = -INFINITY;
                for (int t = 0; t <= p; t++) {
                    const float *k = K +
                                     ((size_t)sg->blocks[t / bt] * bt + (size_t)(t % bt)) * kvdim +
                                     (size_t)kh * hd;
                    float d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[i] * k[i];
                    sc[t] = d * scale;
                    if (sc[t] > mx) mx = sc[t];
                }
                float sum = exp_sum_f32(sc, p + 1, mx);
                exp_scale_f32(sc, sc, p + 1, mx, 1.0f / sum);
                float *o = m->iatt + (size_t)n * m->NH * hd + (size_t)h * hd;
                for (int i = 0; i < hd; i++)
                    o[i] = 0;
                for (int t = 0; t <= p; t++) {
                    const float *v = Vc +
                                     ((size_t)sg->blocks[t / bt] * bt + (size_t)(t % bt)) * kvdim +
                                     (size_t)kh * hd;
                    float a = sc[t];
                    for (int i = 0; i < hd; i++)
                        o[i] += a * v[i];
                }
            }
        linear_infer(m, 1, l, m->in, m->iatt, w->wo, w->bo, N, m->NH * hd, C);
        if (m->tp_comm && m->tp_comm->size > 1)
            TD_TRY(td_comm_allreduce(m->tp_comm, m->in, (size_t)N * C, TD_COMM_F32));
        td_op_add_f32(m->ix, m->ix, m->in, (size_t)N * C);
        norm_fwd(m, m->in, m->im, m->ir, m->ix, w->norm2_w, w->norm2_b, N);
        linear_infer(m, 2, l, m->ifc, m->in, w->wfc, w->bfc, N, C, m->FC);
        if (llama)
            td_op_swiglu_fwd_f32(m->ih, m->ifc, N, m->F);
        else
            td_op_gelu_fwd_f32(m->ih, m->ifc, (size_t)N * m->F);
        linear_infer(m, 3, l, m->in, m->ih, w->wproj, w->bproj, N, m->F, C);
        if (m->tp_comm && m->tp_comm->size > 1)
            TD_TRY(td_comm_allreduce(m->tp_comm, m->in, (size_t)N * C, TD_COMM_F32));
        td_op_add_f32(m->ix, m->ix, m->in, (size_t)N * C);
    }
    if (!logits) return TD_OK; /* tensor-parallel members: the leader samples */
    /* final norm and lm_head on each segment's last token only */
    float *last = m->ilast, *lastn = m->ilast + (size_t)nseg * C, *lm = lastn + (size_t)nseg * C;
    r = 0;
    for (int s = 0; s < nseg; s++) {
        r += segs[s].n;
        memcpy(last + (size_t)s * C, m->ix + (size_t)(r - 1) * C, sizeof(float) * (size_t)C);
    }
    norm_fwd(m, lastn, lm, lm + nseg, last, m->p.normf_w, m->p.normf_b, nseg);
    linear_infer(m, 0, -1, logits, lastn, m->p.lm_head, NULL, nseg, C, V);
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* tensor parallelism (Megatron layout) */

void td_model_set_tp_comm(td_model *m, td_comm *c) {
    m->tp_comm = c;
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

td_status td_model_tp_slice(const td_model *f, int r, int T, td_model **out) {
    *out = NULL;
    if (f->released_all)
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
    td_model *m;
    TD_TRY(td_model_new(&c, &m));
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
    if (f->grid && !td_model_int8_grid(m, 1)) {
        td_model_free(&m);
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
        size_t rest = td_model_int8_grid_len(f) - (size_t)(a - f->grid); /* lm_head, wte */
        memcpy(b, a, sizeof(float) * rest);
    }
    *out = m;
    return TD_OK;
}
