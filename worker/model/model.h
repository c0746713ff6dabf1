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
 * maps these to Hugging Face names and layouts through td_model_tensors().
 *
 * The model owns weights, configuration, forward and backward, and nothing about serving
 * (worker/infer keeps the KV cache, quantized forms and tensor-parallel slices) or
 * networking (data parallelism's all-reduce is the trainer's, through the backward hook).
 * Its tensors live on a compute backend (worker/backend): a new model is on the CPU;
 * td_model_to_backend moves it (e.g. to a GPU). The parameters also stay in host memory
 * (td_model_params) for loading, saving and slicing; td_model_sync_host copies the trained
 * parameters back where the two differ. */
#ifndef TD_MODEL_H
#define TD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/backend/backend.h"
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
/* The parameters in host memory (load them before td_model_to_backend moves the model). */
float *td_model_params(td_model *m);
/* The parameters and gradients in backend memory (the same as host memory on the CPU); the
 * gradients are NULL until td_model_plan(..., with_grads=1). */
float *td_model_backend_params(td_model *m);
float *td_model_grads(td_model *m);
td_backend *td_model_backend(const td_model *m);
/* Moves the model's tensors to backend be (borrowed; it must outlive the model or the next
 * move; NULL: back to the model's own CPU backend), keeping its plan and bf16 setting; a
 * backend that multiplies only in bf16 turns bf16 on. Leaving a device for the host, the
 * model comes back as loaded: parameters only, no plan, no bf16 copy. */
td_status td_model_to_backend(td_model *m, td_backend *be);
/* Host parameters <- backend parameters (before saving). No copy on a host backend. */
td_status td_model_sync_host(td_model *m);
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
/* (B*T, V) logits of the last forward, backend memory (overwritten by backward with their
 * gradient). */
const float *td_model_logits(const td_model *m);

/* Distillation (docs/distill.md): with teacher logits set ((B*T, V), backend memory, for the
 * tokens of the next forward), a forward with targets computes alpha * CE + (1 - alpha) * KD
 * into *loss (and KD's gradient, in one pass) and its backward the gradient of that mix.
 * teacher NULL turns it off. The forward alone reads the teacher's logits. Needs a backend
 * with the kd and cols_add ops (the CPU's). */
typedef struct {
    double alpha; /* weight of the data's cross-entropy, [0, 1] */
    double tau;   /* temperature, > 0 */
    int reverse;  /* 1: KL(student || teacher) */
    int topk;     /* > 0: the teacher's top-k logits only */
} td_kd_opts;
td_status td_model_set_kd(td_model *m, const float *teacher_logits, const td_kd_opts *o);
/* The parts of the last forward's loss with distillation on: cross-entropy and KD. */
void td_model_kd_parts(const td_model *m, double *ce, double *kd);

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

/* The optimizer's operations on the backend: the gradients' global L2 norm; and AdamW
 * (decoupled weight decay where the tensor's `decay` flag is set) on parameters [lo, hi),
 * with moments adam_m, adam_v in backend memory holding that range (m[0] is parameter lo),
 * gradients multiplied by gscale as read and, with zero_grads, cleared -- which also
 * refreshes the bf16 working copy in the same pass. */
td_status td_model_grad_norm(td_model *m, double *norm);
td_status td_model_adamw(td_model *m, float *adam_m, float *adam_v, size_t lo, size_t hi, float lr,
                         float b1, float b2, float eps, float weight_decay, long step, float gscale,
                         int zero_grads);

/* Memory given back for serving: the whole pages of host parameters in [from, from + count)
 * are returned to the system and made inaccessible, so that a stray read faults instead of
 * reading zeros (td_model_free restores them). td_model_release_all: every parameter,
 * gradient and training buffer; the configuration and sizes stay readable (to slice it
 * again, load it again). */
void td_model_release_range(td_model *m, const float *from, size_t count);
td_status td_model_release_all(td_model *m);
int td_model_is_released(const td_model *m);

/* Adapters (worker/model/lora.h): with lo set (borrowed; it must outlive its use), the
 * forward adds the adapters' products and the backward computes gradients for the adapters
 * only: the base weights are frozen and get no gradient buffer (set adapters before planning
 * with gradients). NULL removes them. */
struct td_lora;
td_status td_model_set_lora(td_model *m, struct td_lora *lo);
struct td_lora *td_model_lora(const td_model *m);
/* Folds adapter lo into the host parameters: W += (alpha / r) B A. */
td_status td_model_merge_lora(td_model *m, const struct td_lora *lo);

#endif
