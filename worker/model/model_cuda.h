/* The model on a GPU: a device copy of a td_model's parameters (fp32 masters, a bf16
 * working copy, fp32 gradients and AdamW moments) and activations for batches up to (B, T),
 * with forward, backward and the optimizer step built from the CUDA kernels
 * (worker/kernels/cuda) in the same order as the CPU model (model.c), matrix products in
 * bf16 with fp32 accumulation. Built only with TANDEM_CUDA. */
#ifndef TD_MODEL_CUDA_H
#define TD_MODEL_CUDA_H

#include <stdint.h>

#include "common/status.h"
#include "worker/kernels/cuda/cuda_ops.h"
#include "worker/model/model.h"

typedef struct td_gpu_model td_gpu_model;

/* Copies host's parameters to the device and plans buffers for (B, T). The GPU model
 * borrows cx and host (its tensor table), which must outlive it. */
td_status td_gpu_model_new(td_cuda *cx, const td_model *host, int B, int T, td_gpu_model **out);
void td_gpu_model_free(td_gpu_model **g);

/* tokens and targets (B*T, host memory; targets may be NULL); *loss when targets given */
td_status td_gpu_model_forward(td_gpu_model *g, const int32_t *tokens, const int32_t *targets,
                               int B, int T, double *loss);
/* gradients accumulate (+=) into the device gradients; dscale as td_model_backward */
td_status td_gpu_model_backward(td_gpu_model *g, double dscale);
/* global-norm clip (clip <= 0: off) and AdamW (decay on the tensors the host marks), then
 * the bf16 working copy; gradients are zeroed. *gnorm = the norm before clipping. */
td_status td_gpu_model_step(td_gpu_model *g, float lr, float beta1, float beta2, float eps,
                            float weight_decay, long step, double clip, double grad_div,
                            double *gnorm);
/* The device gradients (for an all-reduce over NCCL): *n floats at *dev. grad_div of the
 * step divides them (the rank count after a sum). */
void td_gpu_model_grad_buffer(td_gpu_model *g, float **dev, size_t *n);
/* Copies the parameters into the host model (and the AdamW moments into m, v when not
 * NULL), e.g. before a checkpoint; and the moments from the host after a resume. */
td_status td_gpu_model_to_host(td_gpu_model *g, td_model *host, float *m, float *v);
td_status td_gpu_model_set_moments(td_gpu_model *g, const float *m, const float *v);
/* Copies back to host buffers: logits (B*T*V) of the last forward, the gradients or the
 * parameters (num_params each). */
td_status td_gpu_model_logits(td_gpu_model *g, float *out);
td_status td_gpu_model_grads(td_gpu_model *g, float *out);
td_status td_gpu_model_params(td_gpu_model *g, float *out);

/* Inference on the GPU with a paged KV cache laid out as the CPU one (model.h): blocks of
 * block_tokens positions, every layer's K and V. td_gpu_model_forward_infer does what
 * td_model_forward_infer does (segments of new tokens per sequence, host block tables),
 * logits (nseg, V) copied to host memory. Needs a model planned for at least the step's
 * tokens (td_gpu_model_new's B*T). */
typedef struct td_gpu_kv td_gpu_kv;
td_status td_gpu_kv_new(td_gpu_model *g, int block_tokens, size_t num_blocks, td_gpu_kv **out);
void td_gpu_kv_free(td_gpu_kv **kv);
td_status td_gpu_model_forward_infer(td_gpu_model *g, td_gpu_kv *kv, const td_infer_seg *segs,
                                     int nseg, float *logits);

#endif
