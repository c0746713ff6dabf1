/* LoRA: low-rank adapters on a model's linear layers (docs/finetune.md, "LoRA").
 *
 * For each targeted matrix W (out, in) of each layer the adapter holds A (r, in) and B (out, r)
 * and the layer computes y = x W^T + (alpha / r) (x A^T) B^T. The base weights are frozen:
 * the model computes no gradient for them and the optimizer keeps no state for them; only
 * A and B train. A starts uniform in +-1/sqrt(in), B at zero, as PEFT initializes them, so
 * a new adapter leaves the model's output unchanged.
 *
 * Targets are the module names PEFT's target_modules uses: for llama q_proj, k_proj,
 * v_proj, o_proj, gate_proj, up_proj, down_proj; for gpt2 c_attn, c_proj (the attention's
 * and the MLP's output projections, as PEFT's suffix match takes both) and c_fc. Where the
 * model fuses matrices (q, k, v in one; gate and up in one), an adapter adds its product to
 * its rows of the fused output.
 *
 * Saved in PEFT's format: adapter_config.json and adapter_model.safetensors with tensors
 * "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight" (out, r). */
#ifndef TD_LORA_H
#define TD_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/model/config.h"

#define TD_LORA_MAX_TARGETS 8

typedef struct {
    int r;
    double alpha;
    double dropout; /* p in [0, 1): training drops adapter inputs (td_lora_dropout_batch) */
    int n_targets;
    char targets[TD_LORA_MAX_TARGETS][16];
} td_lora_config;

/* The matrices of a layer an adapter can sit on (the model's fused layout). */
typedef enum { TD_LORA_QKV, TD_LORA_O, TD_LORA_FC, TD_LORA_PROJ, TD_LORA_NMAT } td_lora_matrix;

/* One adapter tensor as PEFT names it. */
typedef struct {
    char name[128];
    int64_t shape[2];
    size_t offset, numel; /* in the adapter's parameters */
} td_lora_tensor;

typedef struct td_lora td_lora;

/* Checks the configuration against the model (`where` prefixes messages: "JOB: finetune.lora")
 * -- an unknown target names the valid ones; r must be in [1, the smallest targeted side] --
 * and makes an adapter with A uniform (seeded) and B zero. */
td_status td_lora_new(const td_model_config *cfg, const td_lora_config *lc, const char *where,
                      uint64_t seed, td_lora **out);
void td_lora_free(td_lora **lo);
const td_lora_config *td_lora_config_of(const td_lora *lo);
float td_lora_scale(const td_lora *lo); /* alpha / r */
size_t td_lora_num_params(const td_lora *lo);
/* The parameters (host memory: adapters train on host backends). */
float *td_lora_params(td_lora *lo);
const td_lora_tensor *td_lora_tensors(const td_lora *lo, int *count);

/* One site of an adapter, read-only (serving copies them, tensor-parallel slices cut them):
 * rows [row0, row0 + out) of matrix `mat` of `layer`, input width `in`, A (r, in) and
 * B (out, r) in the adapter's parameters. */
typedef struct {
    int layer;
    td_lora_matrix mat;
    int row0, out, in;
    const float *A, *B;
} td_lora_site;
int td_lora_num_sites(const td_lora *lo);
td_lora_site td_lora_site_at(const td_lora *lo, int i);

/* An adapter planned for training holds buffers of its model's backend: free it before the
 * model (td_lora_free, then td_model_free). */

/* Training buffers for up to N rows on backend be (a host backend with the column
 * operations): gradients and the saved products x A^T. */
td_status td_lora_plan(td_lora *lo, td_backend *be, int N);
float *td_lora_grads(td_lora *lo);
void td_lora_zero_grad(td_lora *lo);
/* out (N, S) rows += the adapters' products on matrix `mat` of `layer` (input x (N, in)). */
td_status td_lora_fwd(td_lora *lo, int layer, td_lora_matrix mat, float *out, int S, const float *x,
                      int N);
/* Backward of td_lora_fwd: dx (N, in) += the adapters' part, their gradients accumulate. */
td_status td_lora_bwd(td_lora *lo, int layer, td_lora_matrix mat, float *dx, const float *dout,
                      int S, const float *x, int N);

/* LoRA dropout (PEFT's lora_dropout): while training, each site's input x is replaced by
 * x * keep / (1 - p) before the A product, keep drawn per element; the base product sees x
 * unchanged. The masks are counter-based (docs/finetune.md, "LoRA dropout"): element j of
 * position t of example e at site c (layer * 8 + the target's index in its architecture's
 * list) is kept when 16 bits of td_mix64(row + j / 4) are >= floor(p * 65536), where
 * row = mix(mix(mix(key ^ c) ^ e) ^ t); so they depend on the example's place in the global
 * batch, not on the rank that computes it, and backward regenerates them instead of
 * storing them. td_lora_set_dropout changes p (a loaded adapter keeps its file's p; only a
 * trainer's td_lora_dropout_batch makes it drop). */
td_status td_lora_set_dropout(td_lora *lo, double p);
/* The next forward and backward drop with these masks: rows are T positions of examples
 * e0, e0 + 1, ... (row n is position n % T of example e0 + n / T). Off until called, and
 * again after td_lora_dropout_off (evaluation, serving). */
void td_lora_dropout_batch(td_lora *lo, uint64_t key, int T, long e0);
void td_lora_dropout_off(td_lora *lo);

/* Folds the adapter into weights: W += (alpha / r) B A for every site. `rows_of` gives the
 * model matrix (out_total, in) of (layer, mat), in the model's internal layout. */
typedef float *(*td_lora_matrix_fn)(void *ctx, int layer, td_lora_matrix mat);
td_status td_lora_merge(const td_lora *lo, td_lora_matrix_fn rows_of, void *ctx);

/* PEFT files: dir/adapter_config.json and dir/adapter_model.safetensors. base_path is
 * recorded as base_model_name_or_path. */
td_status td_lora_save(const td_lora *lo, const char *dir, const char *base_path);
/* Loads an adapter saved by td_lora_save (or PEFT) for a model of configuration cfg: every
 * tensor's presence and shape is checked, naming the first that does not fit (an adapter
 * made for another base). */
td_status td_lora_load(const char *dir, const td_model_config *cfg, td_lora **out);

#endif
