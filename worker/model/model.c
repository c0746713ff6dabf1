/* The transformer forward and backward passes for llama and gpt2 (see model.h), on a
 * compute backend (worker/backend): every operation is a backend call, so the same code
 * trains on the CPU and on a GPU.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/grow.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "worker/model/lora.h"

typedef struct {
    float *res;            /* (N, C) residual stream entering the layer */
    float *n1, *n1m, *n1r; /* (N, C), (N), (N): norm1 output, mean (gpt2), rstd */
    float *qkv;            /* (N, QKV), q and k after RoPE */
    float *att;            /* what attention's backward needs (backend's attention_saved) */
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
    /* where the tensors live: the CPU backend the model made for itself (own_be) until
     * td_model_to_backend moves it */
    td_backend *be, *own_be;
    float *hparams;        /* the parameters in host memory (load, save, slicing) */
    float *params, *grads; /* backend memory; params == hparams on a host backend */
    td_param_tensor *tensors;
    int n_tensors;
    td_param_ptrs hp, p, g; /* pointers into hparams, params and grads */
    td_layer_params *hp_layers, *p_layers, *g_layers;
    /* activations (backend memory), planned for (planB, planT) */
    int planB, planT, plan_grads;
    float *acts;
    size_t acts_bytes;
    layer_acts *la;
    float *resf, *nf, *nfm, *nfr, *logits, *lse;
    int32_t *tokens, *targets;    /* backend memory */
    int32_t *tok_host, *tgt_host; /* the same, host memory */
    /* backward scratch */
    float *dres, *dn, *dqkv, *datty, *dfc, *dh;
    /* last forward */
    int lastB, lastT, has_targets, counted;
    /* distillation: the teacher's logits, the options, the loss parts, a gradient buffer */
    const float *kd_teacher;
    td_kd_opts kd;
    double kd_ce, kd_loss;
    float *kd_grad;
    size_t kd_grad_n;
    /* bf16 mixed precision (td_model_set_bf16): bf16 working copy of the parameters (same
     * offsets as params), refreshed from the fp32 masters by td_model_refresh_bf16 */
    int bf16;
    uint16_t *pbf;
    /* td_model_release_range: page ranges of hparams returned to the system (PROT_NONE
     * until td_model_free gives them back to malloc's heap) */
    struct released {
        void *p;
        size_t n;
    } * rel;
    size_t nrel, rel_cap;
    int released_all;
    td_backward_hook hook;
    void *hook_ctx;
    td_lora *lora; /* adapters (borrowed): the base weights are frozen, no gradients */
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

/* the backend of model m */
#define BE (m->be)
#define OP(name, ...) TD_TRY(m->be->ops->name(m->be, __VA_ARGS__))

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
    *tokens = m->tok_host;
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
    m->hp_layers = calloc((size_t)m->L, sizeof *m->hp_layers);
    m->p_layers = calloc((size_t)m->L, sizeof *m->p_layers);
    m->g_layers = calloc((size_t)m->L, sizeof *m->g_layers);
    td_status s = m->tensors && m->hp_layers && m->p_layers && m->g_layers
                      ? td_backend_cpu_new(&m->own_be)
                      : td_error_set(TD_ERR_NOMEM, "out of memory creating the model");
    if (s != TD_OK) {
        td_model_free(&m);
        return s;
    }
    m->be = m->own_be;
    m->num_params = build_layout(m);
    m->hparams = aligned_alloc(64, ((m->num_params * sizeof(float) + 63) / 64) * 64);
    if (!m->hparams) {
        size_t n = m->num_params;
        td_model_free(&m);
        return td_error_set(TD_ERR_NOMEM, "out of memory allocating %zu parameters (%.1f MiB)", n,
                            n * 4.0 / 1048576);
    }
    memset(m->hparams, 0, m->num_params * sizeof(float));
    m->params = m->hparams;
    bind_ptrs(m, m->hparams, &m->hp, m->hp_layers);
    bind_ptrs(m, m->params, &m->p, m->p_layers);
    *out = m;
    return TD_OK;
}

/* Frees what lives in backend memory (activations, gradients, the bf16 copy and, off the
 * host, the parameters). */
static void free_backend_buffers(td_model *m) {
    td_backend_release(m->be, m->kd_grad);
    m->kd_grad = NULL;
    m->kd_grad_n = 0;
    td_backend_release(m->be, m->acts);
    td_backend_release(m->be, m->grads);
    td_backend_release(m->be, m->pbf);
    if (m->params != m->hparams) td_backend_release(m->be, m->params);
    m->acts = NULL;
    m->grads = NULL;
    m->pbf = NULL;
    m->params = m->hparams;
    free(m->la);
    m->la = NULL;
    free(m->tok_host);
    m->tok_host = m->tgt_host = NULL;
    m->bf16 = 0;
    m->planB = m->planT = m->plan_grads = 0;
    m->acts_bytes = 0;
}

void td_model_free(td_model **mp) {
    if (!mp || !*mp) return;
    td_model *m = *mp;
    for (size_t i = 0; i < m->nrel; i++)
        mprotect(m->rel[i].p, m->rel[i].n, PROT_READ | PROT_WRITE);
    free(m->rel);
    if (m->be) free_backend_buffers(m);
    free(m->hparams);
    td_backend_free(&m->own_be);
    free(m->tensors);
    free(m->hp_layers);
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
    return m->hparams;
}
float *td_model_backend_params(td_model *m) {
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
    return &m->hp;
}
const float *td_model_logits(const td_model *m) {
    return m->logits;
}
size_t td_model_activation_bytes(const td_model *m) {
    return m->acts_bytes;
}
td_backend *td_model_backend(const td_model *m) {
    return m->be;
}

void td_model_init_random(td_model *m, uint64_t seed) {
    td_rng rng;
    td_rng_seed(&rng, seed);
    float resid_std = 0.02f / sqrtf(2.0f * (float)m->L);
    for (int k = 0; k < m->n_tensors; k++) {
        const td_param_tensor *t = &m->tensors[k];
        float *w = m->hparams + t->offset;
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
/* backends */

td_status td_model_to_backend(td_model *m, td_backend *be) {
    if (!be) be = m->own_be;
    if (be == m->be) return TD_OK;
    if (be->host_memory && m->be->host_memory) { /* host memory either way: nothing moves */
        m->be = be;
        if (be->bf16_only && !m->bf16) return td_model_set_bf16(m, 1);
        return TD_OK;
    }
    if (m->released_all)
        return td_error_set(TD_ERR_INVALID, "the model's weights were released: load it again");
    int B = m->planB, T = m->planT, grads = m->plan_grads, bf16 = m->bf16;
    if (!m->be->host_memory && be->host_memory) /* leaving a device: back as loaded */
        B = T = grads = bf16 = 0;
    TD_TRY(td_model_sync_host(m)); /* the parameters, as the old backend left them */
    free_backend_buffers(m);
    m->be = be;
    if (!be->host_memory) {
        void *p = NULL;
        TD_TRY(td_backend_alloc(be, &p, m->num_params * sizeof(float)));
        m->params = p;
        TD_TRY(td_backend_upload(be, m->params, m->hparams, m->num_params * sizeof(float)));
    }
    bind_ptrs(m, m->params, &m->p, m->p_layers);
    if (bf16 || be->bf16_only) TD_TRY(td_model_set_bf16(m, 1));
    if (B > 0) TD_TRY(td_model_plan(m, B, T, grads));
    return TD_OK;
}

td_status td_model_sync_host(td_model *m) {
    if (m->params == m->hparams) return TD_OK;
    return td_backend_download(m->be, m->hparams, m->params, m->num_params * sizeof(float));
}

/* ---------------------------------------------------------------------------------------- */
/* activation planning */

td_status td_model_plan(td_model *m, int B, int T, int with_grads) {
    if (T > m->cfg.max_position_embeddings)
        return td_error_set(TD_ERR_INVALID, "sequence length %d exceeds max_position_embeddings %d",
                            T, m->cfg.max_position_embeddings);
    if (B <= 0 || T <= 0) return td_error_set(TD_ERR_INVALID, "batch %d x %d is empty", B, T);
    if (m->released_all)
        return td_error_set(TD_ERR_INVALID, "the model's weights were released: load it again");
    if (m->acts && B <= m->planB && T <= m->planT && (!with_grads || m->plan_grads)) return TD_OK;
    if (m->acts) {
        if (B < m->planB) B = m->planB;
        if (T < m->planT) T = m->planT;
        with_grads |= m->plan_grads;
    }
    size_t N = (size_t)B * T, C = m->C, L = m->L;
    size_t att = m->be->ops->attention_saved(B, T, m->NH);
    size_t per_layer = N * C /*res*/ + N * C + 2 * N /*n1*/ + N * m->QKV + att +
                       N * (size_t)m->NH * m->hd + N * C /*res2*/ + N * C + 2 * N /*n2*/ +
                       N * m->FC + N * m->F;
    size_t total = L * per_layer + N * C /*resf*/ + N * C + 2 * N + N * (size_t)m->V + N;
    size_t ints = 2 * N;
    if (with_grads)
        total += N * C * 2 + N * m->QKV + N * (size_t)m->NH * m->hd + N * m->FC + N * m->F;
    /* 64 floats of slack per buffer keeps every buffer 256-byte aligned (cuBLASLt's
     * preference; 64 bytes is the CPU's) */
    size_t nbuf = L * 14 + 16;
    size_t bytes = (total + ints + nbuf * 64) * sizeof(float);
    td_backend_release(m->be, m->acts);
    m->acts = NULL;
    free(m->la);
    free(m->tok_host);
    m->la = calloc(L, sizeof *m->la);
    m->tok_host = malloc(2 * N * sizeof(int32_t));
    m->tgt_host = m->tok_host ? m->tok_host + N : NULL;
    void *acts = NULL;
    td_status s = m->la && m->tok_host ? td_backend_alloc(m->be, &acts, bytes)
                                       : td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s != TD_OK) {
        m->acts_bytes = 0;
        m->planB = m->planT = 0;
        return td_error_set(s, "out of memory planning activations (%.1f MiB)", bytes / 1048576.0);
    }
    m->acts = acts;
    m->acts_bytes = bytes;
    float *cur = m->acts;
#define TAKE(n) (cur += (((n) + 63) / 64) * 64, cur - (((n) + 63) / 64) * 64)
    for (size_t l = 0; l < L; l++) {
        layer_acts *a = &m->la[l];
        a->res = TAKE(N * C);
        a->n1 = TAKE(N * C);
        a->n1m = TAKE(N);
        a->n1r = TAKE(N);
        a->qkv = TAKE(N * m->QKV);
        a->att = TAKE(att);
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
    } else {
        m->dres = m->dn = m->dqkv = m->datty = m->dfc = m->dh = NULL;
    }
#undef TAKE
    TD_ASSERT((size_t)(cur - m->acts) * sizeof(float) <= bytes);
    m->planB = B;
    m->planT = T;
    m->plan_grads = with_grads;
    if (m->lora) TD_TRY(td_lora_plan(m->lora, m->be, B * T));
    if (with_grads && m->lora) return TD_OK; /* the base is frozen: no gradient buffer */
    if (with_grads && !m->grads) {
        void *g = NULL;
        TD_TRY(td_backend_alloc(m->be, &g, m->num_params * sizeof(float)));
        m->grads = g;
        TD_TRY(m->be->ops->zero(m->be, m->grads, m->num_params * sizeof(float)));
        bind_ptrs(m, m->grads, &m->g, m->g_layers);
    }
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* forward */

static td_status norm_fwd(td_model *m, float *out, float *mean, float *rstd, const float *x,
                          const float *w, const float *b, int N) {
    if (m->cfg.arch == TD_ARCH_LLAMA)
        return BE->ops->rmsnorm_fwd(BE, out, rstd, x, w, N, m->C, (float)m->cfg.norm_eps);
    return BE->ops->layernorm_fwd(BE, out, mean, rstd, x, w, b, N, m->C, (float)m->cfg.norm_eps);
}

static td_status norm_bwd(td_model *m, float *dx, float *dw, float *db, const float *dout,
                          const float *x, const float *w, const float *mean, const float *rstd,
                          int N) {
    if (m->cfg.arch == TD_ARCH_LLAMA)
        return BE->ops->rmsnorm_bwd(BE, dx, dw, dout, x, w, rstd, N, m->C);
    return BE->ops->layernorm_bwd(BE, dx, dw, db, dout, x, w, mean, rstd, N, m->C);
}

/* ---------------------------------------------------------------------------------------- */
/* matrix products: fp32, or bf16 operands with fp32 accumulation */

td_status td_model_refresh_bf16(td_model *m) {
    if (!m->bf16) return TD_OK;
    return BE->ops->to_bf16(BE, m->pbf, m->params, m->num_params);
}

td_status td_model_set_bf16(td_model *m, int on) {
    if (!on) {
        if (BE->bf16_only)
            return td_error_set(TD_ERR_INVALID, "the %s backend multiplies in bf16 only",
                                BE->ops->name);
        m->bf16 = 0;
        return TD_OK;
    }
    const char *how;
    TD_TRY(BE->ops->bf16_prepare(BE, &how));
    if (!m->pbf) {
        void *p = NULL;
        TD_TRY(td_backend_alloc(BE, &p, m->num_params * sizeof(uint16_t)));
        m->pbf = p;
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

/* the bf16 working copy of weight W (a pointer into params), or NULL in fp32 */
#define WBF(W) (m->bf16 ? m->pbf + ((W)-m->params) : NULL)
#define MM_FWD(out, inp, W, bias, N, C, OC) OP(matmul_fwd, out, inp, W, WBF(W), bias, N, C, OC)
#define MM_BWD(dinp, dW, dbias, dout, inp, W, N, C, OC, ow)                                        \
    OP(matmul_bwd, dinp, dW, dbias, dout, inp, W, WBF(W), N, C, OC, ow)
/* the adapters' part of a product (a model without adapters skips it) */
#define LORA_FWD(l, mat, out, S, x)                                                                \
    if (m->lora) PROF(TD_PROF_MATMUL_FWD, TD_TRY(td_lora_fwd(m->lora, l, mat, out, S, x, N)))
#define LORA_BWD(l, mat, dx, dout, S, x)                                                           \
    if (m->lora) PROF(TD_PROF_MATMUL_BWD, TD_TRY(td_lora_bwd(m->lora, l, mat, dx, dout, S, x, N)))

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
    memcpy(m->tok_host, tokens, sizeof(int32_t) * (size_t)N);
    TD_TRY(td_backend_upload(BE, m->tokens, tokens, sizeof(int32_t) * (size_t)N));
    if (targets) {
        memcpy(m->tgt_host, targets, sizeof(int32_t) * (size_t)N);
        TD_TRY(td_backend_upload(BE, m->targets, targets, sizeof(int32_t) * (size_t)N));
    }
    m->lastB = B;
    m->lastT = T;
    m->has_targets = targets != NULL;
    int llama = m->cfg.arch == TD_ARCH_LLAMA;
    const td_param_ptrs *P = &m->p;

    PROF(TD_PROF_EMBED, OP(embed_fwd, m->la[0].res, m->tokens, P->wte, P->wpe, N, T, C));
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &m->la[l];
        const td_layer_params *w = &P->layers[l];
        float *res_out = l + 1 < m->L ? m->la[l + 1].res : m->resf;
        PROF(TD_PROF_NORM,
             TD_TRY(norm_fwd(m, a->n1, a->n1m, a->n1r, a->res, w->norm1_w, w->norm1_b, N)));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->qkv, a->n1, w->wqkv, w->bqkv, N, C, m->QKV));
        LORA_FWD(l, TD_LORA_QKV, a->qkv, m->QKV, a->n1);
        if (llama)
            PROF(TD_PROF_ROPE, OP(rope, a->qkv, N, T, m->QKV, m->NH + m->NKV, m->hd,
                                  (float)m->cfg.rope_theta, 0));
        PROF(TD_PROF_ATTN_FWD,
             OP(attention_fwd, a->atty, a->att, a->qkv, B, T, m->NH, m->NKV, m->hd));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->res2, a->atty, w->wo, w->bo, N, m->NH * m->hd, C));
        LORA_FWD(l, TD_LORA_O, a->res2, C, a->atty);
        PROF(TD_PROF_RESIDUAL, OP(add, a->res2, a->res2, a->res, (size_t)N * C));
        PROF(TD_PROF_NORM,
             TD_TRY(norm_fwd(m, a->n2, a->n2m, a->n2r, a->res2, w->norm2_w, w->norm2_b, N)));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(a->fc, a->n2, w->wfc, w->bfc, N, C, m->FC));
        LORA_FWD(l, TD_LORA_FC, a->fc, m->FC, a->n2);
        if (llama)
            PROF(TD_PROF_ACT, OP(swiglu_fwd, a->h, a->fc, N, m->F));
        else
            PROF(TD_PROF_ACT, OP(gelu_fwd, a->h, a->fc, (size_t)N * m->F));
        PROF(TD_PROF_MATMUL_FWD, MM_FWD(res_out, a->h, w->wproj, w->bproj, N, m->F, C));
        LORA_FWD(l, TD_LORA_PROJ, res_out, C, a->h);
        PROF(TD_PROF_RESIDUAL, OP(add, res_out, res_out, a->res2, (size_t)N * C));
    }
    PROF(TD_PROF_NORM,
         TD_TRY(norm_fwd(m, m->nf, m->nfm, m->nfr, m->resf, P->normf_w, P->normf_b, N)));
    PROF(TD_PROF_LMHEAD_FWD, MM_FWD(m->logits, m->nf, P->lm_head, NULL, N, C, V));
    double unused;
    if (!loss) loss = &unused;
    if (targets)
        PROF(TD_PROF_XENT,
             OP(xent_fwd, m->lse, m->logits, m->targets, m->tgt_host, N, V, loss, &m->counted));
    if (targets && m->kd_teacher) {
        /* the KD loss and its gradient (for d loss = 1) in one pass; backward scales it in */
        size_t nv = (size_t)N * V;
        if (m->kd_grad_n < nv) {
            td_backend_release(BE, m->kd_grad);
            m->kd_grad = NULL;
            m->kd_grad_n = 0;
            TD_TRY(td_backend_alloc(BE, (void **)&m->kd_grad, nv * sizeof(float)));
            m->kd_grad_n = nv;
        }
        TD_TRY(td_backend_sync(BE));
        m->kd_ce = *loss;
        PROF(TD_PROF_XENT, OP(kd, m->kd_grad, m->logits, m->kd_teacher, m->tgt_host, N, V,
                              m->kd.tau, m->kd.reverse, m->kd.topk, 1.0, &m->kd_loss));
        *loss = m->kd.alpha * m->kd_ce + (1 - m->kd.alpha) * m->kd_loss;
    }
    return td_backend_sync(BE);
}

/* ---------------------------------------------------------------------------------------- */
/* backward */

td_status td_model_set_kd(td_model *m, const float *teacher_logits, const td_kd_opts *o) {
    if (!teacher_logits) {
        m->kd_teacher = NULL;
        return TD_OK;
    }
    if (!BE || !BE->ops->kd || !BE->ops->cols_add)
        return td_error_set(TD_ERR_INVALID,
                            "distillation needs the cpu backend (the %s "
                            "backend has no distillation loss yet)",
                            BE ? BE->ops->name : "model's");
    if (!(o->alpha >= 0 && o->alpha <= 1))
        return td_error_set(TD_ERR_INVALID, "distillation alpha %g is outside [0, 1]", o->alpha);
    if (!(o->tau > 0) || !isfinite(o->tau))
        return td_error_set(TD_ERR_INVALID, "distillation temperature %g must be > 0", o->tau);
    if (o->topk < 0)
        return td_error_set(TD_ERR_INVALID, "distillation top-k %d must be >= 0", o->topk);
    m->kd_teacher = teacher_logits;
    m->kd = *o;
    return TD_OK;
}

void td_model_kd_parts(const td_model *m, double *ce, double *kd) {
    *ce = m->kd_ce;
    *kd = m->kd_loss;
}

void td_model_zero_grad(td_model *m) {
    if (m->grads) BE->ops->zero(BE, m->grads, m->num_params * sizeof(float));
}

td_status td_model_backward(td_model *m, double dscale) {
    if ((!m->grads && !m->lora) || !m->dres)
        return td_error_set(TD_ERR_INVALID, "backward needs td_model_plan(..., with_grads=1)");
    if (!m->has_targets)
        return td_error_set(TD_ERR_INVALID, "backward needs a forward pass with targets");
    int B = m->lastB, T = m->lastT, N = B * T, C = m->C, V = m->V;
    int llama = m->cfg.arch == TD_ARCH_LLAMA;
    const td_param_ptrs *P = &m->p, *G = &m->g;
    /* frozen base weights (adapters): no gradient for any of them */
    td_layer_params none = {0};
    td_param_ptrs frozen = {.layers = NULL};
    if (!m->grads) G = &frozen;
    /* a hook hands ranges of gradients to another thread: they must be complete in memory */
    int hook = m->hook != NULL;

    /* dlogits overwrite the logits in place; with distillation, alpha of the cross-entropy's
     * and 1 - alpha of KD's (its gradient from the forward, scaled in) */
    if (m->kd_teacher) {
        PROF(TD_PROF_XENT, OP(xent_bwd, m->logits, m->logits, m->lse, m->targets, m->tgt_host, N, V,
                              dscale * m->kd.alpha, m->counted));
        if (m->kd.alpha < 1)
            PROF(TD_PROF_XENT, OP(cols_add, m->logits, V, 0, m->kd_grad, V, N,
                                  (float)(dscale * (1 - m->kd.alpha))));
    } else {
        PROF(TD_PROF_XENT, OP(xent_bwd, m->logits, m->logits, m->lse, m->targets, m->tgt_host, N, V,
                              dscale, m->counted));
    }
    PROF(TD_PROF_LMHEAD_BWD,
         MM_BWD(m->dn, G->lm_head, NULL, m->logits, m->nf, P->lm_head, N, C, V, 1));
    OP(zero, m->dres, sizeof(float) * (size_t)N * C);
    PROF(TD_PROF_NORM, TD_TRY(norm_bwd(m, m->dres, G->normf_w, G->normf_b, m->dn, m->resf,
                                       P->normf_w, m->nfm, m->nfr, N)));
    if (hook) {
        TD_TRY(td_backend_sync(BE));
        m->hook(m->hook_ctx, m->L);
    }

    for (int l = m->L - 1; l >= 0; l--) {
        layer_acts *a = &m->la[l];
        const td_layer_params *w = &P->layers[l];
        const td_layer_params *g = G->layers ? &G->layers[l] : &none;
        /* dres holds d(residual leaving the layer); the residual add passes it through */
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dh, g->wproj, g->bproj, m->dres, a->h, w->wproj, N, m->F, C, 1));
        LORA_BWD(l, TD_LORA_PROJ, m->dh, m->dres, C, a->h);
        if (llama)
            PROF(TD_PROF_ACT, OP(swiglu_bwd, m->dfc, m->dh, a->fc, N, m->F));
        else
            PROF(TD_PROF_ACT, OP(gelu_bwd, m->dfc, m->dh, a->fc, (size_t)N * m->F));
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dn, g->wfc, g->bfc, m->dfc, a->n2, w->wfc, N, C, m->FC, 1));
        LORA_BWD(l, TD_LORA_FC, m->dn, m->dfc, m->FC, a->n2);
        PROF(TD_PROF_NORM, TD_TRY(norm_bwd(m, m->dres, g->norm2_w, g->norm2_b, m->dn, a->res2,
                                           w->norm2_w, a->n2m, a->n2r, N)));
        /* dres is now d(res2) */
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->datty, g->wo, g->bo, m->dres, a->atty, w->wo, N, m->NH * m->hd, C, 1));
        LORA_BWD(l, TD_LORA_O, m->datty, m->dres, C, a->atty);
        PROF(TD_PROF_ATTN_BWD, OP(attention_bwd, m->dqkv, m->datty, a->atty, a->att, a->qkv, B, T,
                                  m->NH, m->NKV, m->hd));
        if (llama)
            PROF(TD_PROF_ROPE, OP(rope, m->dqkv, N, T, m->QKV, m->NH + m->NKV, m->hd,
                                  (float)m->cfg.rope_theta, 1));
        PROF(TD_PROF_MATMUL_BWD,
             MM_BWD(m->dn, g->wqkv, g->bqkv, m->dqkv, a->n1, w->wqkv, N, C, m->QKV, 1));
        LORA_BWD(l, TD_LORA_QKV, m->dn, m->dqkv, m->QKV, a->n1);
        PROF(TD_PROF_NORM, TD_TRY(norm_bwd(m, m->dres, g->norm1_w, g->norm1_b, m->dn, a->res,
                                           w->norm1_w, a->n1m, a->n1r, N)));
        if (hook) {
            TD_TRY(td_backend_sync(BE));
            m->hook(m->hook_ctx, l);
        }
    }
    /* embed rows mode (host backends): the batch's rows stay in dres for the caller */
    int rows = m->embed_rows_mode && BE->host_memory;
    PROF(TD_PROF_EMBED,
         OP(embed_bwd, rows ? NULL : G->wte, G->wpe, m->dres, m->tokens, m->tok_host, N, T, C));
    m->rows_n = rows ? N : 0;
    m->embed_rows_mode = 0;
    TD_TRY(td_backend_sync(BE));
    if (hook) m->hook(m->hook_ctx, -1);
    m->has_targets = 0; /* the logits now hold gradients */
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* the optimizer step on the backend */

td_status td_model_grad_norm(td_model *m, double *norm) {
    if (!m->grads) return td_error_set(TD_ERR_INVALID, "the model has no gradients");
    return BE->ops->norm2(BE, m->grads, m->num_params, norm);
}

td_status td_model_adamw(td_model *m, float *adam_m, float *adam_v, size_t lo, size_t hi, float lr,
                         float b1, float b2, float eps, float weight_decay, long step, float gscale,
                         int zero_grads) {
    if (!m->grads) return td_error_set(TD_ERR_INVALID, "the model has no gradients");
    /* the working copy follows the masters in the same pass (a range: the caller's job) */
    uint16_t *pbf = zero_grads && m->bf16 ? m->pbf : NULL;
    for (int k = 0; k < m->n_tensors; k++) {
        const td_param_tensor *t = &m->tensors[k];
        size_t a = t->offset > lo ? t->offset : lo;
        size_t b = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        if (a >= b) continue;
        OP(adamw, m->params + a, pbf ? pbf + a : NULL, m->grads + a, adam_m + (a - lo),
           adam_v + (a - lo), b - a, lr, b1, b2, eps, t->decay ? weight_decay : 0.0f, step, gscale,
           zero_grads);
    }
    return td_backend_sync(BE);
}

/* ---------------------------------------------------------------------------------------- */
/* released memory (serving) */

void td_model_release_range(td_model *m, const float *from, size_t count) {
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)from + pg - 1) & ~(pg - 1);
    uintptr_t b = (uintptr_t)(from + count) & ~(pg - 1);
    if (b <= a) return;
    if ((const float *)a < m->hparams || (const float *)b > m->hparams + m->num_params) return;
    if (TD_GROW(m->rel, m->rel_cap, m->nrel + 1) != TD_OK) { /* kept resident */
        td_error_clear();
        return;
    }
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

td_status td_model_release_all(td_model *m) {
    /* everything but the configuration: parameters, gradients, training buffers */
    free_backend_buffers(m);
    td_model_release_range(m, m->hparams, m->num_params);
    m->released_all = 1;
    return TD_OK;
}

int td_model_is_released(const td_model *m) {
    return m->released_all;
}

/* ---------------------------------------------------------------------------------------- */
/* adapters */

td_status td_model_set_lora(td_model *m, td_lora *lo) {
    if (m->grads)
        return td_error_set(TD_ERR_INVALID,
                            "adapters go on a model before it is planned for training");
    m->lora = lo;
    if (lo && m->acts) return td_lora_plan(lo, m->be, m->planB * m->planT);
    return TD_OK;
}

td_lora *td_model_lora(const td_model *m) {
    return m->lora;
}

static float *host_matrix(void *ctx, int layer, td_lora_matrix mat) {
    td_layer_params *w = &((td_model *)ctx)->hp.layers[layer];
    return mat == TD_LORA_QKV  ? w->wqkv
           : mat == TD_LORA_O  ? w->wo
           : mat == TD_LORA_FC ? w->wfc
                               : w->wproj;
}

td_status td_model_merge_lora(td_model *m, const td_lora *lo) {
    if (!m->be->host_memory)
        return td_error_set(TD_ERR_INVALID, "merging an adapter runs on a model in host memory");
    TD_TRY(td_lora_merge(lo, host_matrix, m));
    return td_model_refresh_bf16(m);
}
