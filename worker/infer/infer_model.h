/* The serving form of a model: what inference adds to the weights (worker/model) —
 * inference buffers, quantized weights (int8 with GPTQ or round to nearest, int16 lm_head,
 * bf16), calibration statistics, tensor-parallel slices and the all-reduce a slice needs —
 * and the forward over a paged KV cache (kv_cache.h).
 *
 * A td_infer_model owns its td_model. On a host backend the forward runs tandem's CPU
 * loops (quantized products included); on a device backend (a GPU) it runs the backend's
 * operations on bf16 weights. */
#ifndef TD_INFER_MODEL_H
#define TD_INFER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/comm/comm.h"
#include "worker/model/lora.h"
#include "worker/model/model.h"

typedef struct td_infer_model td_infer_model;
typedef struct td_kv_cache td_kv_cache;

/* Takes m (freed with the serving model; on failure m stays the caller's). */
td_status td_infer_model_new(td_model *m, td_infer_model **out);
void td_infer_model_free(td_infer_model **im);
/* The weights (borrowed). */
td_model *td_infer_model_weights(const td_infer_model *im);
const td_model_config *td_infer_model_config(const td_infer_model *im);

/* One sequence's share of an inference step: n new tokens at positions pos .. pos+n-1;
 * blocks covers positions [0, pos + n). */
typedef struct {
    const int32_t *tokens;
    int n, pos;
    const int32_t *blocks;
    int adapter; /* 0: the base model; k: adapter k (td_infer_add_adapter) */
} td_infer_seg;

/* Plans inference buffers for up to max_tokens new tokens and max_segs sequences a step. */
td_status td_infer_plan(td_infer_model *im, int max_tokens, int max_segs);
/* Runs the new tokens of every segment through the model, writing their K and V into the
 * cache and attending over each sequence's cached positions; logits (host memory) receives
 * (nseg, V): the next-token logits after each segment's last token (NULL: skip lm_head). */
td_status td_infer_forward(td_infer_model *im, td_kv_cache *kv, const td_infer_seg *segs, int nseg,
                           float *logits);

/* Many adapters on one base (multi-LoRA serving): adapter k adds (alpha / r) (x A^T) B^T to
 * its matrices' outputs for the rows of the segments that ask for it, after the base product
 * that all rows of a step share. The adapter's sites are copied (lo may be freed); *index
 * receives k (1, 2, ...). The whole model (not a slice: td_infer_tp_slice cuts the adapters
 * with the matrices), on a host backend; quantized base weights keep fp32 adapters. */
td_status td_infer_add_adapter(td_infer_model *im, const td_lora *lo, int *index);
int td_infer_num_adapters(const td_infer_model *im);
/* Bytes of adapter k's serving copy. */
size_t td_infer_adapter_bytes(const td_infer_model *im, int k);

/* Tensor parallelism (Megatron): this rank's slice of a full model for a group of T —
 * attention heads and KV heads split (q/k/v column-parallel, output projection
 * row-parallel), MLP gate/up (c_fc) column-parallel and down (c_proj) row-parallel;
 * embeddings, norms and lm_head replicated; row-parallel biases kept on rank 0 only; each
 * adapter's B rows follow their matrix's rows, its A columns a row-parallel input. *out
 * is a new serving model with the slice's dims (config.tp_size = T), carrying the int8
 * grid. Host memory. */
td_status td_infer_tp_slice(const td_infer_model *full, int rank, int T, td_infer_model **out);
/* The slice's group: td_infer_forward all-reduces after each row-parallel product. The
 * serving model borrows c. Refused (TD_ERR_INVALID) for a group of several ranks on a device
 * backend: the all-reduce works on host memory. */
td_status td_infer_set_tp_comm(td_infer_model *im, td_comm *c);

/* int8 weight-only quantization: every linear weight of the layers and an untied input
 * embedding get an int8 copy with one fp32 scale per output channel (max |w| / 127, round
 * to nearest -- or the grid GPTQ left); lm_head gets int16 (max |w| / 32767), or int8 too
 * with head_int8. The forward then multiplies with those, converting to float on the fly
 * (fp32 accumulation). Norms and biases stay fp32. lm_head is kept wider because its
 * rounding decides near-tied greedy choices (docs/serve.md gives the measurement). */
td_status td_infer_quantize_int8(td_infer_model *im, int head_int8);
/* bf16 weights: every matrix product's weight (and an untied input embedding) rounded to
 * bf16, converted to float on the fly, fp32 accumulation. Exclusive with int8 (the first
 * one applied stays). */
td_status td_infer_quantize_bf16(td_infer_model *im);
/* Alternative int8 path (AVX-512 VNNI): activations are quantized per row too and the
 * products accumulate int8 x int8 in int32 (matrices whose width is a multiple of 64). */
void td_infer_set_int8_vnni(td_infer_model *im, int on);
/* Gives back the fp32 copies of the matrices that have int8/bf16 copies (the forward reads
 * only those; norms and biases stay). */
td_status td_infer_release_quantized(td_infer_model *im);

/* GPTQ calibration for int8 (gptq.h; calib.h drives it). td_infer_calib_start makes every
 * td_infer_forward from then on add x x^T of each matrix product's input rows into a
 * statistic per matrix: with TD_CALIB_LAYERS those of layers [layer_lo, layer_hi) (per
 * layer: q/k/v, output projection, gate/up or c_fc, down), with TD_CALIB_HEAD lm_head's.
 * The whole fp32 model only (no slice, not quantized). */
enum { TD_CALIB_LAYERS = 1, TD_CALIB_HEAD = 2 };
td_status td_infer_calib_start(td_infer_model *im, int what, int layer_lo, int layer_hi);
/* The statistics' size for all layers (a layer's share is 1/num_hidden_layers of it). */
size_t td_infer_calib_bytes(const td_model *m, int what);
/* The most working memory GPTQ takes for one matrix of this model (an untied embedding with
 * its H), lm_head left out with skip_head. */
size_t td_infer_calib_work_bytes(const td_model *m, int skip_head);
void td_infer_calib_cancel(td_infer_model *im);
/* Ends the collection and rounds each matrix that has statistics with GPTQ (damp: see
 * td_gptq_quantize) -- with layer 0, an untied input embedding too: the fp32 weights are
 * REPLACED by their int8-grid values, so that a later calibration (of lm_head, on the
 * layers' outputs) sees the quantized model, and the grid (one scale per row) is kept, so
 * td_infer_quantize_int8 of this model or of its slices stores exactly those int8 values.
 * progress (may be NULL) after each matrix. On failure discard the model. */
td_status td_infer_calib_gptq(td_infer_model *im, float damp,
                              void (*progress)(void *ctx, int done, int total), void *ctx);
/* The int8 grid: one scale per output row of the quantized matrices, in quantization order
 * (td_infer_int8_grid_len of them; 0 = none, round to nearest). NULL when there is none
 * unless create (then zeros) -- to receive a grid broadcast with the replaced weights. */
size_t td_infer_int8_grid_len(const td_model *m);
float *td_infer_int8_grid(td_infer_model *im, int create);
/* The round-to-nearest grid of the whole model (max |w| / 127 per row; lm_head's rows left
 * out unless head_int8), weights untouched: slices cut afterwards share one scale per row,
 * so int8 outputs do not depend on the tensor-parallel degree. */
td_status td_infer_int8_grid_rtn(td_infer_model *im, int head_int8);

/* Weight memory in fp32 and with int8 quantization (int8 + scales + what stays fp32), and
 * the bytes one decode step reads (batch 1) in each form. */
void td_infer_weight_bytes(const td_model *m, int head_int8, size_t *fp32, size_t *int8,
                           size_t *read_fp32, size_t *read_int8);
/* Bytes one decode step reads (batch 1) with bf16 weights. */
size_t td_infer_read_bytes_bf16(const td_model *m);

#endif
