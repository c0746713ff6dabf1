/* The transformer: parameters, activations, forward, backward.
 *
 * One allocation holds every parameter (and one the gradients), split into named tensors
 * as llm.c does; another holds every activation, planned once for the largest batch
 * (B, T) by td_model_plan, so a training or decode step allocates nothing.
 *
 * Two architectures share the code path:
 *   llama: RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases, optional tied
 *          embeddings
 *   gpt2:  LayerNorm, learned positions, GELU (tanh), biases, tied embeddings
 * Internally every linear weight is (out, in) like torch.nn.Linear; q/k/v projections of a
 * layer are stored back to back as one (NH+2*NKV)*hd x C matrix, and llama's gate and up
 * projections as one 2F x C matrix, so each takes one matrix product. The checkpoint code
 * maps these to Hugging Face names and layouts through td_model_tensors(). */
#ifndef TD_MODEL_H
#define TD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/comm/comm.h"
#include "worker/model/config.h"

/* A parameter tensor as Hugging Face names and shapes it. */
typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2]; /* Hugging Face shape */
    size_t offset;    /* first element in td_model.params / grads */
    size_t numel;
    int transposed; /* 1: stored (shape[1], shape[0]) here; HF stores (in, out) (GPT-2 Conv1D) */
    int decay;      /* 1: AdamW applies weight decay (matrices and embeddings) */
} td_param_tensor;

/* Pointers to one layer's parameters (or gradients) inside the big allocation. A pointer
 * is NULL where the architecture has no such tensor. */
typedef struct {
    float *norm1_w, *norm1_b; /* (C) */
    float *wqkv, *bqkv;       /* (QKV, C), (QKV) with QKV = (NH + 2 NKV) hd */
    float *wo, *bo;           /* (C, NH hd), (C) */
    float *norm2_w, *norm2_b; /* (C) */
    float *wfc, *bfc;         /* llama: gate+up (2F, C); gpt2: c_fc (F, C), (F) */
    float *wproj, *bproj;     /* (C, F), (C) */
} td_layer_params;

typedef struct {
    float *wte;               /* (V, C) */
    float *wpe;               /* (maxT, C), gpt2 only */
    float *normf_w, *normf_b; /* (C) */
    float *lm_head;           /* (V, C); equals wte when tied */
    td_layer_params *layers;  /* L entries */
} td_param_ptrs;

typedef struct td_model td_model;

/* Creates a model with zeroed parameters (use td_model_init_random or load weights).
 * *out is owned by the caller; free with td_model_free. */
td_status td_model_new(const td_model_config *cfg, td_model **out);
void td_model_free(td_model **m);

const td_model_config *td_model_config_of(const td_model *m);
size_t td_model_num_params(const td_model *m);
float *td_model_params(td_model *m);
/* NULL until td_model_plan(..., with_grads=1). */
float *td_model_grads(td_model *m);
const td_param_tensor *td_model_tensors(const td_model *m, int *count);
const td_param_ptrs *td_model_param_ptrs(const td_model *m);

/* GPT-2 style initialization: normal(0, 0.02), output projections scaled by 1/sqrt(2L),
 * norm weights 1, biases 0. Deterministic for a seed. */
void td_model_init_random(td_model *m, uint64_t seed);

/* Plans activation buffers for batches up to B x T (T <= max_position_embeddings) and,
 * with with_grads, gradient and backward buffers. May be called again to grow. */
td_status td_model_plan(td_model *m, int B, int T, int with_grads);

/* Forward pass over tokens (B, T) (T may be less than planned). With targets (B, T)
 * (entries < 0 are ignored) it computes the mean cross-entropy into *loss. Logits stay
 * available through td_model_logits until the next call. */
td_status td_model_forward(td_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                           double *loss);
/* (B*T, V) logits of the last forward (overwritten by backward with their gradient). */
const float *td_model_logits(const td_model *m);

/* Backward pass of the last forward (which must have had targets); ACCUMULATES into the
 * gradients, scaling d loss by `dscale` (1/grad_accum for gradient accumulation). */
td_status td_model_backward(td_model *m, double dscale);
void td_model_zero_grad(td_model *m);

/* Backward progress hook, for overlapping gradient communication with backward: called
 * with stage = num_hidden_layers once the final norm's (and an untied lm_head's) gradients
 * are complete, then stage = l for each layer l = L-1 .. 0 once that layer's are, then
 * stage = -1 once the embeddings' are. fn NULL disables it. */
typedef void (*td_backward_hook)(void *ctx, int stage);
void td_model_set_backward_hook(td_model *m, td_backward_hook fn, void *ctx);
/* The gradient (and parameter) index range [lo, hi) that completes at `stage`. For
 * stage -1 (embeddings) this is everything before layer 0; see also embed rows mode. */
void td_model_stage_range(const td_model *m, int stage, size_t *lo, size_t *hi);
/* Index range of the token embedding matrix (wte / embed_tokens). */
void td_model_embed_range(const td_model *m, size_t *lo, size_t *hi);
/* Embed rows mode, for data parallelism: the next backward leaves the token-embedding
 * gradient of its batch out of the gradient buffer; td_model_embed_rows then gives the
 * tokens (N) and their gradient rows (N x C), to be added (after an exchange between
 * ranks) with td_model_add_embed_rows. With tied embeddings this makes the big matrix's
 * gradient complete as soon as lm_head's backward is done. Reset by each backward. */
void td_model_set_embed_rows_mode(td_model *m, int on);
void td_model_embed_rows(const td_model *m, const int32_t **tokens, const float **rows, int *n);
/* grads[wte][tokens[i]] += scale * rows[i] for i < n. */
void td_model_add_embed_rows(td_model *m, const int32_t *tokens, const float *rows, int n,
                             float scale);

/* FLOPs per token for one training step (forward + backward): 6 N + 12 L C T, with N the
 * parameters that take part in matrix products (PaLM's convention). */
double td_model_train_flops_per_token(const td_model *m, int T);

/* Per-operation time of forward and backward, accumulated while profiling is on. */
typedef enum {
    TD_PROF_EMBED,
    TD_PROF_NORM,
    TD_PROF_MATMUL_FWD,
    TD_PROF_MATMUL_BWD,
    TD_PROF_ROPE,
    TD_PROF_ATTN_FWD,
    TD_PROF_ATTN_BWD,
    TD_PROF_ACT,
    TD_PROF_RESIDUAL,
    TD_PROF_LMHEAD_FWD,
    TD_PROF_LMHEAD_BWD,
    TD_PROF_XENT,
    TD_PROF_COUNT
} td_prof_op;
const char *td_prof_op_name(td_prof_op op);
/* Turns timing on (and resets it) or off. */
void td_model_profile_enable(td_model *m, int on);
/* Seconds spent per td_prof_op since profiling was enabled (TD_PROF_COUNT entries). */
const double *td_model_profile(const td_model *m);

/* ---------------------------------------------------------------------------------------- */
/* Inference with a paged KV cache (worker/infer/ builds the engine on this).
 *
 * The cache holds K and V for every layer in fixed blocks of block_tokens positions:
 * layer l, block b, slot s, kv head h is at ((l * nblocks + b) * block_tokens + s) * kv_dim.
 * A sequence owns a block table: position p lives in block table[p / block_tokens]. */
typedef struct td_kv_cache td_kv_cache;

td_status td_kv_cache_new(const td_model *m, int block_tokens, size_t num_blocks,
                          td_kv_cache **out);
void td_kv_cache_free(td_kv_cache **kv);
int td_kv_cache_block_tokens(const td_kv_cache *kv);
size_t td_kv_cache_num_blocks(const td_kv_cache *kv);
/* Bytes of K and V per token position, all layers (float32). */
size_t td_model_kv_bytes_per_token(const td_model *m);

/* One sequence's share of an inference step: n new tokens at positions pos .. pos+n-1;
 * blocks covers positions [0, pos + n). */
typedef struct {
    const int32_t *tokens;
    int n, pos;
    const int32_t *blocks;
} td_infer_seg;

/* Plans inference buffers for up to max_tokens new tokens and max_segs sequences a step. */
td_status td_model_plan_infer(td_model *m, int max_tokens, int max_segs);
/* Runs the new tokens of every segment through the model, writing their K and V into the
 * cache and attending over each sequence's cached positions; logits receives (nseg, V):
 * the next-token logits after each segment's last token (NULL: skip lm_head). */
td_status td_model_forward_infer(td_model *m, td_kv_cache *kv, const td_infer_seg *segs, int nseg,
                                 float *logits);

/* Tensor parallelism (Megatron): this rank's slice of a full model for a group of T —
 * attention heads and KV heads split (q/k/v column-parallel, output projection
 * row-parallel), MLP gate/up (c_fc) column-parallel and down (c_proj) row-parallel;
 * embeddings, norms and lm_head replicated; row-parallel biases kept on rank 0 only.
 * *out is a new model with the slice's dims (config.tp_size = T). */
td_status td_model_tp_slice(const td_model *full, int rank, int T, td_model **out);
/* With a communicator of the group, td_model_forward_infer all-reduces after each
 * row-parallel product. The model borrows c. */
void td_model_set_tp_comm(td_model *m, td_comm *c);

/* int8 weight-only quantization for inference: every linear weight of the layers and an
 * untied input embedding get an int8 copy with one fp32 scale per output channel
 * (max |w| / 127, round to nearest -- or the grid GPTQ left, below); lm_head gets int16
 * (max |w| / 32767), or int8 too with head_int8. td_model_forward_infer then multiplies with those,
 * converting to float on the fly (fp32 accumulation). Norms and biases stay fp32. lm_head is kept
 * wider because its rounding decides near-tied greedy choices (docs/serve.md gives the
 * measurement). */
td_status td_model_quantize_int8(td_model *m, int head_int8);

/* GPTQ calibration for int8 (worker/model/gptq.h; worker/infer/calib.h drives it).
 * td_model_calib_start makes every td_model_forward_infer from then on add x x^T of each
 * matrix product's input rows into a statistic per matrix: with TD_CALIB_LAYERS those of
 * layers [layer_lo, layer_hi) (per layer: q/k/v, output projection, gate/up or c_fc,
 * down), with TD_CALIB_HEAD lm_head's. td_model_calib_bytes: their size for all layers
 * (a layer's share is 1/num_hidden_layers of it). The whole fp32 model only (no slice, not
 * quantized). */
enum { TD_CALIB_LAYERS = 1, TD_CALIB_HEAD = 2 };
td_status td_model_calib_start(td_model *m, int what, int layer_lo, int layer_hi);
size_t td_model_calib_bytes(const td_model *m, int what);
/* The most working memory GPTQ takes for one matrix of this model (td_gptq_work_bytes; an
 * untied embedding with its H), lm_head left out with skip_head. */
size_t td_model_calib_work_bytes(const td_model *m, int skip_head);
/* Drops the statistics (the weights are untouched). */
void td_model_calib_cancel(td_model *m);
/* Ends the collection and rounds each matrix that has statistics with GPTQ (damp: see
 * td_gptq_quantize) -- with layer 0, an untied input embedding too, to nearest: the
 * fp32 weights are REPLACED by their int8-grid values, so that a later calibration (of
 * lm_head, on the layers' outputs) sees the quantized model, and the grid (one scale per
 * row) is kept, so td_model_quantize_int8 of this model or of its tensor-parallel slices
 * (td_model_tp_slice carries the grid) stores exactly those int8 values. progress (may be
 * NULL) after each matrix. On failure some matrices may already be replaced: discard the
 * model. */
td_status td_model_calib_gptq(td_model *m, float damp,
                              void (*progress)(void *ctx, int done, int total), void *ctx);
/* The int8 grid: one scale per output row of the quantized matrices, in quantization order
 * (td_model_int8_grid_len of them; 0 = none, round to nearest). NULL when there is none
 * unless create (then zeros) -- to receive a grid broadcast with the replaced weights. */
size_t td_model_int8_grid_len(const td_model *m);
float *td_model_int8_grid(td_model *m, int create);
/* The round-to-nearest grid of the whole model (max |w| / 127 per row; lm_head's rows left
 * out unless head_int8), weights untouched: slices cut afterwards share one scale per row,
 * so int8 outputs do not depend on the tensor-parallel degree. */
td_status td_model_int8_grid_rtn(td_model *m, int head_int8);

/* Gives memory back for serving. TD_RELEASE_QUANTIZED: the fp32 copies of the matrices
 * that have int8/bf16 copies (forward_infer reads only those; norms and biases stay).
 * TD_RELEASE_ALL: every parameter, gradient and training buffer; the model's configuration
 * and sizes stay readable (to slice it again, load it again). Released pages are made
 * inaccessible, so a stray read faults instead of reading zeros; td_model_free restores
 * them. */
enum { TD_RELEASE_QUANTIZED = 1, TD_RELEASE_ALL = 2 };
td_status td_model_release(td_model *m, int what);
/* bf16 weights for inference: every matrix product's weight (and an untied input
 * embedding) rounded to bf16 (half of fp32's bytes), converted to float on the fly, fp32
 * accumulation. Exclusive with td_model_quantize_int8 (the first one applied stays). */
td_status td_model_quantize_bf16(td_model *m);
/* Bytes one decode step reads (batch 1) with bf16 weights. */
size_t td_model_read_bytes_bf16(const td_model *m);
/* Alternative int8 path (AVX-512 VNNI): activations are quantized per row too and the
 * products accumulate int8 x int8 in int32 (matrices whose width is a multiple of 64). */
void td_model_set_int8_vnni(td_model *m, int on);
/* Weight memory in fp32 and with int8 quantization (int8 + scales + what stays fp32), and
 * the bytes one decode step reads (batch 1) in each form. */
void td_model_weight_bytes(const td_model *m, int head_int8, size_t *fp32, size_t *int8,
                           size_t *read_fp32, size_t *read_int8);

/* bf16 mixed precision for training: matrix products take bf16 operands (a bf16 working copy
 * of the weights, activations and gradients rounded on the way in) and accumulate in fp32
 * (oneDNN; worker/kernels/cpu/bf16.h); parameters, gradients, optimizer state and every
 * other operation stay fp32. td_model_refresh_bf16 copies the fp32 masters into the
 * working copy: call it after every change of the parameters (optimizer step, load). */
td_status td_model_set_bf16(td_model *m, int on);
td_status td_model_refresh_bf16(td_model *m);
int td_model_is_bf16(const td_model *m);
/* The bf16 working copy (num_params, the parameters' layout), or NULL without bf16. */
uint16_t *td_model_bf16_params(td_model *m);

/* Bytes of activation and gradient buffers planned. */
size_t td_model_activation_bytes(const td_model *m);

#endif
