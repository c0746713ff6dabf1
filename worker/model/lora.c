/* LoRA adapters (see lora.h). */
#include "worker/model/lora.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/rng.h"
#include "worker/model/safetensors.h"

/* One adapter: rows [row0, row0 + out) of matrix `mat` of `layer`, input width `in`. */
typedef struct {
    int layer;
    td_lora_matrix mat;
    int row0, out, in;
    char module[96]; /* PEFT's module path, e.g. "model.layers.0.self_attn.q_proj" */
    int code;        /* dropout masks: layer * 8 + the target's index in its table */
    size_t a_off, b_off;
    float *u; /* saved x A^T (N, r), backend memory */
} site;

struct td_lora {
    td_lora_config cfg;
    td_arch arch;
    int L;
    site *sites;
    int n_sites;
    int *first; /* first site of (layer, mat): first[l * NMAT + mat] .. first[... + 1] */
    size_t num_params;
    float *params;
    td_lora_tensor *tensors;
    /* training */
    td_backend *be;
    float *grads, *tmp, *du, *bufs;
    int planN, max_out, max_in;
    /* dropout: on for the batch td_lora_dropout_batch described; xd (and dxd in backward)
     * hold a site's dropped input, N x max_in */
    int drop_on, drop_T;
    uint32_t drop_thr;
    uint64_t drop_key;
    long drop_e0;
    float *xd, *dxd;
};

typedef struct {
    const char *name;
    td_lora_matrix mat;
    const char *module; /* printf format with the layer */
} target_def;

static const target_def k_llama[] = {{"q_proj", TD_LORA_QKV, "model.layers.%d.self_attn.q_proj"},
                                     {"k_proj", TD_LORA_QKV, "model.layers.%d.self_attn.k_proj"},
                                     {"v_proj", TD_LORA_QKV, "model.layers.%d.self_attn.v_proj"},
                                     {"o_proj", TD_LORA_O, "model.layers.%d.self_attn.o_proj"},
                                     {"gate_proj", TD_LORA_FC, "model.layers.%d.mlp.gate_proj"},
                                     {"up_proj", TD_LORA_FC, "model.layers.%d.mlp.up_proj"},
                                     {"down_proj", TD_LORA_PROJ, "model.layers.%d.mlp.down_proj"},
                                     {NULL, 0, NULL}};
static const target_def k_gpt2[] = {{"c_attn", TD_LORA_QKV, "transformer.h.%d.attn.c_attn"},
                                    {"c_proj", TD_LORA_O, "transformer.h.%d.attn.c_proj"},
                                    {"c_fc", TD_LORA_FC, "transformer.h.%d.mlp.c_fc"},
                                    {"c_proj", TD_LORA_PROJ, "transformer.h.%d.mlp.c_proj"},
                                    {NULL, 0, NULL}};

/* Rows and input width of target k of the table for cfg. */
static void geometry(const td_model_config *c, const target_def *t, int *row0, int *out, int *in) {
    int C = c->hidden_size, hd = C / c->num_attention_heads, NH = c->num_attention_heads,
        NKV = c->num_key_value_heads, F = c->intermediate_size;
    *row0 = 0;
    *in = C;
    if (c->arch == TD_ARCH_LLAMA) {
        if (!strcmp(t->name, "q_proj")) *out = NH * hd;
        if (!strcmp(t->name, "k_proj")) *row0 = NH * hd, *out = NKV * hd;
        if (!strcmp(t->name, "v_proj")) *row0 = (NH + NKV) * hd, *out = NKV * hd;
        if (!strcmp(t->name, "o_proj")) *out = C, *in = NH * hd;
        if (!strcmp(t->name, "gate_proj")) *out = F;
        if (!strcmp(t->name, "up_proj")) *row0 = F, *out = F;
        if (!strcmp(t->name, "down_proj")) *out = C, *in = F;
    } else {
        if (t->mat == TD_LORA_QKV) *out = 3 * C;
        if (t->mat == TD_LORA_O) *out = C;
        if (t->mat == TD_LORA_FC) *out = F;
        if (t->mat == TD_LORA_PROJ) *out = C, *in = F;
    }
}

static int cmp_site(const void *a, const void *b) {
    const site *x = a, *y = b;
    if (x->layer != y->layer) return x->layer - y->layer;
    if (x->mat != y->mat) return (int)x->mat - (int)y->mat;
    return x->row0 - y->row0;
}

td_status td_lora_new(const td_model_config *cfg, const td_lora_config *lc, const char *where,
                      uint64_t seed, td_lora **out) {
    const target_def *defs = cfg->arch == TD_ARCH_LLAMA ? k_llama : k_gpt2;
    if (lc->n_targets < 1)
        return td_error_set(TD_ERR_INVALID, "%s.target_modules: name at least one matrix", where);
    if (!(lc->dropout >= 0 && lc->dropout < 1))
        return td_error_set(TD_ERR_INVALID, "%s.dropout: %g; must be at least 0 and below 1", where,
                            lc->dropout);
    if (!(lc->alpha > 0))
        return td_error_set(TD_ERR_INVALID, "%s.alpha: must be positive, got %g", where, lc->alpha);
    int per_layer = 0, min_side = 1 << 30;
    for (int i = 0; i < lc->n_targets; i++) {
        int found = 0;
        for (int k = 0; defs[k].name; k++) {
            if (strcmp(defs[k].name, lc->targets[i])) continue;
            found = 1;
            int r0, o, in;
            geometry(cfg, &defs[k], &r0, &o, &in);
            per_layer++;
            if (o < min_side) min_side = o;
            if (in < min_side) min_side = in;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(lc->targets[j], lc->targets[i]))
                return td_error_set(TD_ERR_INVALID, "%s.target_modules: \"%s\" is named twice",
                                    where, lc->targets[i]);
        if (!found) {
            char valid[160] = "";
            for (int k = 0; defs[k].name; k++)
                if (!strstr(valid, defs[k].name))
                    snprintf(valid + strlen(valid), sizeof valid - strlen(valid), "%s%s",
                             valid[0] ? ", " : "", defs[k].name);
            return td_error_set(TD_ERR_INVALID,
                                "%s.target_modules: \"%s\" is not a matrix of a %s model; the "
                                "targets are %s",
                                where, lc->targets[i], td_arch_name(cfg->arch), valid);
        }
    }
    if (lc->r < 1 || lc->r > min_side)
        return td_error_set(TD_ERR_INVALID,
                            "%s.r: %d; the rank must be at least 1 and at most %d (the smallest "
                            "side of a targeted matrix)",
                            where, lc->r, min_side);
    td_lora *lo = calloc(1, sizeof *lo);
    if (!lo) return td_error_set(TD_ERR_NOMEM, "out of memory");
    lo->cfg = *lc;
    lo->cfg.dropout = lc->dropout > 0 ? lc->dropout : 0; /* not -0 in adapter_config.json */
    lo->arch = cfg->arch;
    lo->L = cfg->num_hidden_layers;
    lo->n_sites = per_layer * lo->L;
    lo->sites = calloc((size_t)lo->n_sites, sizeof *lo->sites);
    lo->first = calloc((size_t)lo->L * TD_LORA_NMAT + 1, sizeof *lo->first);
    lo->tensors = calloc((size_t)lo->n_sites * 2, sizeof *lo->tensors);
    if (!lo->sites || !lo->first || !lo->tensors) {
        td_lora_free(&lo);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    int n = 0;
    for (int l = 0; l < lo->L; l++)
        for (int i = 0; i < lc->n_targets; i++)
            for (int k = 0; defs[k].name; k++) {
                if (strcmp(defs[k].name, lc->targets[i])) continue;
                site *s = &lo->sites[n++];
                s->layer = l;
                s->mat = defs[k].mat;
                geometry(cfg, &defs[k], &s->row0, &s->out, &s->in);
                snprintf(s->module, sizeof s->module, defs[k].module, l);
                s->code = l * 8 + k;
            }
    qsort(lo->sites, (size_t)n, sizeof *lo->sites, cmp_site);
    int r = lc->r;
    for (int i = 0, k = 0; i < n; i++) { /* A then B of each site, in site order */
        site *s = &lo->sites[i];
        s->a_off = lo->num_params;
        lo->num_params += (size_t)r * s->in;
        s->b_off = lo->num_params;
        lo->num_params += (size_t)s->out * r;
        td_lora_tensor *ta = &lo->tensors[k++], *tb = &lo->tensors[k++];
        snprintf(ta->name, sizeof ta->name, "base_model.model.%s.lora_A.weight", s->module);
        ta->shape[0] = r, ta->shape[1] = s->in, ta->offset = s->a_off,
        ta->numel = (size_t)r * s->in;
        snprintf(tb->name, sizeof tb->name, "base_model.model.%s.lora_B.weight", s->module);
        tb->shape[0] = s->out, tb->shape[1] = r, tb->offset = s->b_off,
        tb->numel = (size_t)s->out * r;
        if (s->out > lo->max_out) lo->max_out = s->out;
        if (s->in > lo->max_in) lo->max_in = s->in;
    }
    for (int i = 0, key = 0; key <= lo->L * TD_LORA_NMAT; key++) {
        while (i < n && lo->sites[i].layer * TD_LORA_NMAT + (int)lo->sites[i].mat < key)
            i++;
        lo->first[key] = i;
    }
    lo->params = calloc(lo->num_params, sizeof(float));
    if (!lo->params) {
        td_lora_free(&lo);
        return td_error_set(TD_ERR_NOMEM, "out of memory for %zu adapter parameters",
                            lo->num_params);
    }
    td_rng rng;
    td_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) { /* A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
        site *s = &lo->sites[i];
        float bound = 1.0f / sqrtf((float)s->in);
        for (size_t j = 0; j < (size_t)r * s->in; j++)
            lo->params[s->a_off + j] = (2 * td_rng_uniform(&rng) - 1) * bound;
    }
    lo->drop_thr = (uint32_t)(lc->dropout * 65536.0);
    *out = lo;
    return TD_OK;
}

void td_lora_free(td_lora **lp) {
    td_lora *lo = *lp;
    if (!lo) return;
    if (lo->be) {
        td_backend_release(lo->be, lo->grads);
        td_backend_release(lo->be, lo->bufs);
    }
    free(lo->xd);
    free(lo->sites);
    free(lo->first);
    free(lo->tensors);
    free(lo->params);
    free(lo);
    *lp = NULL;
}

const td_lora_config *td_lora_config_of(const td_lora *lo) {
    return &lo->cfg;
}
float td_lora_scale(const td_lora *lo) {
    return (float)(lo->cfg.alpha / lo->cfg.r);
}
size_t td_lora_num_params(const td_lora *lo) {
    return lo->num_params;
}
float *td_lora_params(td_lora *lo) {
    return lo->params;
}
const td_lora_tensor *td_lora_tensors(const td_lora *lo, int *count) {
    *count = lo->n_sites * 2;
    return lo->tensors;
}
int td_lora_num_sites(const td_lora *lo) {
    return lo->n_sites;
}
td_lora_site td_lora_site_at(const td_lora *lo, int i) {
    const site *s = &lo->sites[i];
    return (td_lora_site){
        s->layer, s->mat, s->row0, s->out, s->in, lo->params + s->a_off, lo->params + s->b_off};
}
float *td_lora_grads(td_lora *lo) {
    return lo->grads;
}

/* The dropped-input buffers (host memory: adapters train on host backends), N x max_in each,
 * when p > 0. */
static td_status plan_dropout(td_lora *lo) {
    free(lo->xd);
    lo->xd = lo->dxd = NULL;
    if (lo->cfg.dropout == 0 || !lo->be) return TD_OK;
    size_t n = (size_t)lo->planN * lo->max_in;
    lo->xd = malloc(2 * n * sizeof(float));
    if (!lo->xd)
        return td_error_set(TD_ERR_NOMEM, "out of memory for LoRA dropout (%zu floats)", 2 * n);
    lo->dxd = lo->xd + n;
    return TD_OK;
}

td_status td_lora_set_dropout(td_lora *lo, double p) {
    if (!(p >= 0 && p < 1))
        return td_error_set(TD_ERR_INVALID, "LoRA dropout %g: must be at least 0 and below 1", p);
    lo->cfg.dropout = p;
    lo->drop_thr = (uint32_t)(p * 65536.0);
    return plan_dropout(lo);
}

void td_lora_dropout_batch(td_lora *lo, uint64_t key, int T, long e0) {
    lo->drop_on = lo->cfg.dropout > 0;
    lo->drop_key = key;
    lo->drop_T = T > 0 ? T : 1;
    lo->drop_e0 = e0;
}

void td_lora_dropout_off(td_lora *lo) {
    lo->drop_on = 0;
}

/* dst (N, in) = src * keep / (1 - p) with site s's masks of the current batch; with acc,
 * dst += instead (backward: the input gradient through the mask). */
static void drop_apply(const td_lora *lo, const site *s, float *dst, const float *src, int N,
                       int acc) {
    int in = s->in;
    uint32_t thr = lo->drop_thr;
    float keep_scale = (float)(1.0 / (1.0 - lo->cfg.dropout));
    uint64_t sk = td_mix64(lo->drop_key ^ (uint64_t)s->code);
#pragma omp parallel for schedule(static) if ((size_t)N * in >= 1 << 16)
    for (int n = 0; n < N; n++) {
        uint64_t e = (uint64_t)(lo->drop_e0 + n / lo->drop_T), t = (uint64_t)(n % lo->drop_T);
        uint64_t row = td_mix64(td_mix64(sk ^ e) ^ t);
        const float *x = src + (size_t)n * in;
        float *y = dst + (size_t)n * in;
        for (int j0 = 0; j0 < in; j0 += 4) {
            uint64_t w = td_mix64(row + (uint64_t)(j0 / 4));
            for (int j = j0; j < j0 + 4 && j < in; j++, w >>= 16) {
                float v = (uint32_t)(w & 0xffff) >= thr ? x[j] * keep_scale : 0.0f;
                if (acc)
                    y[j] += v;
                else
                    y[j] = v;
            }
        }
    }
}

td_status td_lora_plan(td_lora *lo, td_backend *be, int N) {
    if (!be->host_memory || !be->ops->cols_add || !be->ops->cols_get)
        return td_error_set(TD_ERR_INVALID,
                            "LoRA training runs on the CPU backend; on %s it is not built yet",
                            be->ops->name);
    if (lo->be && N <= lo->planN) return TD_OK;
    if (lo->be) {
        td_backend_release(lo->be, lo->grads);
        td_backend_release(lo->be, lo->bufs);
        lo->grads = lo->bufs = NULL;
    }
    lo->be = be;
    int r = lo->cfg.r;
    size_t per = (size_t)N * r, nb = per * (size_t)lo->n_sites + (size_t)N * lo->max_out + per;
    TD_TRY(td_backend_alloc(be, (void **)&lo->grads, lo->num_params * sizeof(float)));
    TD_TRY(be->ops->zero(be, lo->grads, lo->num_params * sizeof(float)));
    TD_TRY(td_backend_alloc(be, (void **)&lo->bufs, nb * sizeof(float)));
    for (int i = 0; i < lo->n_sites; i++)
        lo->sites[i].u = lo->bufs + per * (size_t)i;
    lo->tmp = lo->bufs + per * (size_t)lo->n_sites;
    lo->du = lo->tmp + (size_t)N * lo->max_out;
    lo->planN = N;
    return plan_dropout(lo);
}

void td_lora_zero_grad(td_lora *lo) {
    if (lo->grads) lo->be->ops->zero(lo->be, lo->grads, lo->num_params * sizeof(float));
}

#define LOP(name, ...) TD_TRY(be->ops->name(be, __VA_ARGS__))

td_status td_lora_fwd(td_lora *lo, int layer, td_lora_matrix mat, float *out, int S, const float *x,
                      int N) {
    int key = layer * TD_LORA_NMAT + (int)mat, r = lo->cfg.r;
    if (lo->first[key] == lo->first[key + 1]) return TD_OK;
    td_backend *be = lo->be;
    if (!be || N > lo->planN)
        return td_error_set(TD_ERR_INVALID, "LoRA forward of %d rows exceeds the planned %d", N,
                            lo->planN);
    for (int i = lo->first[key]; i < lo->first[key + 1]; i++) {
        site *s = &lo->sites[i];
        const float *xs = x;
        if (lo->drop_on) {
            drop_apply(lo, s, lo->xd, x, N, 0);
            xs = lo->xd;
        }
        LOP(matmul_fwd, s->u, xs, lo->params + s->a_off, NULL, NULL, N, s->in, r);
        LOP(matmul_fwd, lo->tmp, s->u, lo->params + s->b_off, NULL, NULL, N, r, s->out);
        LOP(cols_add, out, S, s->row0, lo->tmp, s->out, N, td_lora_scale(lo));
    }
    return TD_OK;
}

td_status td_lora_bwd(td_lora *lo, int layer, td_lora_matrix mat, float *dx, const float *dout,
                      int S, const float *x, int N) {
    int key = layer * TD_LORA_NMAT + (int)mat, r = lo->cfg.r;
    td_backend *be = lo->be;
    for (int i = lo->first[key]; i < lo->first[key + 1]; i++) {
        site *s = &lo->sites[i];
        /* t = scale * dout[:, rows]; du = t B; dB += t^T u; dx += du A; dA += du^T x */
        LOP(cols_get, lo->tmp, s->out, dout, S, s->row0, N, td_lora_scale(lo));
        LOP(matmul_bwd, lo->du, lo->grads + s->b_off, NULL, lo->tmp, s->u, lo->params + s->b_off,
            NULL, N, r, s->out, 1);
        if (!lo->drop_on) {
            LOP(matmul_bwd, dx, lo->grads + s->a_off, NULL, lo->du, x, lo->params + s->a_off, NULL,
                N, s->in, r, 0);
            continue;
        }
        /* dropped: dA += du^T xd, dxd = du A, dx += dxd through the same masks */
        drop_apply(lo, s, lo->xd, x, N, 0);
        LOP(matmul_bwd, lo->dxd, lo->grads + s->a_off, NULL, lo->du, lo->xd, lo->params + s->a_off,
            NULL, N, s->in, r, 1);
        if (dx) drop_apply(lo, s, dx, lo->dxd, N, 1);
    }
    return TD_OK;
}

td_status td_lora_merge(const td_lora *lo, td_lora_matrix_fn rows_of, void *ctx) {
    int r = lo->cfg.r;
    float sc = td_lora_scale(lo);
    for (int i = 0; i < lo->n_sites; i++) {
        const site *s = &lo->sites[i];
        float *W = rows_of(ctx, s->layer, s->mat);
        const float *A = lo->params + s->a_off, *B = lo->params + s->b_off;
        for (int o = 0; o < s->out; o++) {
            float *w = W + (size_t)(s->row0 + o) * s->in;
            for (int k = 0; k < r; k++) {
                double bk = (double)sc * B[(size_t)o * r + k];
                const float *a = A + (size_t)k * s->in;
                for (int j = 0; j < s->in; j++)
                    w[j] += (float)(bk * a[j]);
            }
        }
    }
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* PEFT files */

td_status td_lora_save(const td_lora *lo, const char *dir, const char *base_path) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(c, "base_model_name_or_path", base_path ? base_path : "");
    cJSON_AddNumberToObject(c, "r", lo->cfg.r);
    cJSON_AddNumberToObject(c, "lora_alpha", lo->cfg.alpha);
    cJSON_AddNumberToObject(c, "lora_dropout", lo->cfg.dropout);
    cJSON *targets = cJSON_AddArrayToObject(c, "target_modules");
    for (int i = 0; i < lo->cfg.n_targets; i++)
        cJSON_AddItemToArray(targets, cJSON_CreateString(lo->cfg.targets[i]));
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", lo->arch == TD_ARCH_GPT2);
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    cJSON_AddBoolToObject(c, "use_rslora", 0);
    cJSON_AddBoolToObject(c, "use_dora", 0);
    cJSON_AddBoolToObject(c, "init_lora_weights", 1);
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddObjectToObject(c, "rank_pattern");
    cJSON_AddObjectToObject(c, "alpha_pattern");
    char p[4200];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    td_status s = td_json_save_file(p, c);
    cJSON_Delete(c);
    TD_TRY(s);
    td_st_writer *w = td_st_writer_new();
    if (!w) return td_error_set(TD_ERR_NOMEM, "out of memory");
    s = td_st_writer_meta(w, "format", "pt");
    for (int i = 0; i < lo->n_sites * 2 && s == TD_OK; i++) {
        const td_lora_tensor *t = &lo->tensors[i];
        s = td_st_writer_add(w, t->name, TD_DT_F32, 2, t->shape, lo->params + t->offset, 0);
    }
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    if (s == TD_OK) s = td_st_writer_save(w, p);
    td_st_writer_free(&w);
    return s;
}

td_status td_lora_load(const char *dir, const td_model_config *cfg, td_lora **out) {
    char p[4200];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    cJSON *c;
    TD_TRY(td_json_load_file(p, &c));
    td_lora_config lc = {0};
    int64_t r = 0;
    double alpha = 0, dropout = 0;
    const char *type = NULL;
    td_status s = td_json_get_string(c, p, "peft_type", 1, &type);
    if (s == TD_OK && strcmp(type, "LORA"))
        s = td_error_set(TD_ERR_FORMAT, "%s: peft_type is \"%s\"; tandem reads LORA adapters", p,
                         type);
    if (s == TD_OK) s = td_json_get_int(c, p, "r", 1, &r);
    if (s == TD_OK) s = td_json_get_double(c, p, "lora_alpha", 1, &alpha);
    if (s == TD_OK) s = td_json_get_double(c, p, "lora_dropout", 0, &dropout);
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(c, "target_modules");
    if (s == TD_OK && !cJSON_IsArray(tm))
        s = td_error_set(TD_ERR_FORMAT, "%s: target_modules must be a list of module names", p);
    for (int i = 0; s == TD_OK && i < cJSON_GetArraySize(tm); i++) {
        const cJSON *e = cJSON_GetArrayItem(tm, i);
        if (!cJSON_IsString(e) || strlen(e->valuestring) >= sizeof lc.targets[0] ||
            lc.n_targets == TD_LORA_MAX_TARGETS)
            s = td_error_set(TD_ERR_FORMAT, "%s: target_modules entry %d is not usable", p, i + 1);
        else
            snprintf(lc.targets[lc.n_targets++], sizeof lc.targets[0], "%s", e->valuestring);
    }
    /* settings that change the product: refused rather than served wrong */
    static const char *const flags[] = {"use_dora", "use_rslora", NULL};
    for (int i = 0; s == TD_OK && flags[i]; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, flags[i])))
            s = td_error_set(TD_ERR_FORMAT, "%s: %s adapters are not supported", p, flags[i]);
    static const char *const per_module[] = {"rank_pattern", "alpha_pattern", NULL};
    for (int i = 0; s == TD_OK && per_module[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, per_module[i]);
        if (v && !cJSON_IsNull(v) && cJSON_GetArraySize(v) > 0)
            s = td_error_set(TD_ERR_FORMAT, "%s: %s (per-module ranks) is not supported", p,
                             per_module[i]);
    }
    static const char *const layer_sel[] = {"layers_to_transform", "layers_pattern", NULL};
    for (int i = 0; s == TD_OK && layer_sel[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, layer_sel[i]);
        if (v && !cJSON_IsNull(v))
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: %s (adapters on some layers only) is not supported", p,
                             layer_sel[i]);
    }
    const char *bias = NULL;
    if (s == TD_OK && td_json_get_string(c, p, "bias", 0, &bias) == TD_OK && bias &&
        strcmp(bias, "none"))
        s = td_error_set(TD_ERR_FORMAT, "%s: bias \"%s\" is not supported (only \"none\")", p,
                         bias);
    cJSON_Delete(c);
    TD_TRY(s);
    lc.r = (int)r;
    lc.alpha = alpha;
    /* dropout is a training setting: kept for a resumed run to compare and for `show`;
     * inference never drops (td_lora_dropout_batch is a trainer's call) */
    lc.dropout = dropout > 0 && dropout < 1 ? dropout : 0;
    td_lora *lo;
    TD_TRY(td_lora_new(cfg, &lc, p, 0, &lo));
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    td_st_file *f = NULL;
    s = td_st_open(p, &f);
    for (int i = 0; s == TD_OK && i < lo->n_sites * 2; i++) {
        const td_lora_tensor *t = &lo->tensors[i];
        const td_st_entry *e = td_st_find(f, t->name);
        if (!e)
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: no tensor %s; the adapter was made for another model", p,
                             t->name);
        else if (e->ndim != 2 || e->shape[0] != t->shape[0] || e->shape[1] != t->shape[1])
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: %s is %lldx%lld, this base needs %lldx%lld: the adapter was "
                             "made for another base model",
                             p, t->name, (long long)e->shape[0],
                             (long long)(e->ndim > 1 ? e->shape[1] : 0), (long long)t->shape[0],
                             (long long)t->shape[1]);
        else
            s = td_st_read_f32(f, e, lo->params + t->offset, 0);
    }
    if (s == TD_OK && td_st_count(f) != lo->n_sites * 2)
        s = td_error_set(TD_ERR_FORMAT,
                         "%s: %d tensors, but the configuration implies %d: the adapter was made "
                         "for another base model",
                         p, td_st_count(f), lo->n_sites * 2);
    if (f) td_st_close(&f);
    if (s != TD_OK) {
        td_lora_free(&lo);
        return s;
    }
    *out = lo;
    return TD_OK;
}
