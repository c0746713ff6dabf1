/* CPU kernels for the transformer layers, forward and backward, in two precisions.
 *
 * Every kernel exists as name_f32 (the training and inference path) and name_f64 (used by
 * the finite-difference tests, which need float64 to resolve gradients). Both come from
 * one source, ops_impl.inc, compiled twice, so the tested code is the code that runs.
 * Matrix products go to OpenBLAS (cblas_sgemm / cblas_dgemm); the rest is OpenMP loops.
 *
 * Conventions: row-major; N = B*T rows; a weight W of a linear layer is (OC, C) as in
 * torch.nn.Linear (out = inp @ W^T + b). Backward kernels ACCUMULATE (+=) into parameter
 * gradients and into input gradients unless the comment says "overwrites". Nothing here
 * allocates memory. */
#ifndef TD_OPS_H
#define TD_OPS_H

#include <stddef.h>
#include <stdint.h>

#define TD_OPS_DECLARE(T, S)                                                                       \
    /* out (N,C) = wte[tok[n]] (+ wpe[n % Tlen] when wpe != NULL); tok (N) */                      \
    void td_op_embed_fwd##S(T *out, const int32_t *tok, const T *wte, const T *wpe, int N,         \
                            int Tlen, int C);                                                      \
    void td_op_embed_bwd##S(T *dwte, T *dwpe, const T *dout, const int32_t *tok, int N, int Tlen,  \
                            int C);                                                                \
    /* RMSNorm: out = x / sqrt(mean(x^2) + eps) * w; rstd (N) saved for backward */                \
    void td_op_rmsnorm_fwd##S(T *out, T *rstd, const T *x, const T *w, int N, int C, float eps);   \
    void td_op_rmsnorm_bwd##S(T *dx, T *dw, const T *dout, const T *x, const T *w, const T *rstd,  \
                              int N, int C);                                                       \
    /* LayerNorm: out = (x - mean) * rstd * w + b; mean, rstd (N) */                               \
    void td_op_layernorm_fwd##S(T *out, T *mean, T *rstd, const T *x, const T *w, const T *b,      \
                                int N, int C, float eps);                                          \
    void td_op_layernorm_bwd##S(T *dx, T *dw, T *db, const T *dout, const T *x, const T *w,        \
                                const T *mean, const T *rstd, int N, int C);                       \
    /* out (N,OC) = inp (N,C) @ W^T + bias; W (OC,C); bias (OC) or NULL. Overwrites out. */        \
    void td_op_matmul_fwd##S(T *out, const T *inp, const T *W, const T *bias, int N, int C,        \
                             int OC);                                                              \
    /* dinp (N,C) += dout @ W (overwrites when dinp_overwrite); dW += dout^T @ inp;                \
     * dbias += column sums of dout (when dbias != NULL); dinp may be NULL. */                     \
    void td_op_matmul_bwd##S(T *dinp, T *dW, T *dbias, const T *dout, const T *inp, const T *W,    \
                             int N, int C, int OC, int dinp_overwrite);                            \
    /* Rotary embedding (Hugging Face "rotate_half" layout) applied in place to the q and k        \
     * heads of qkv (N, row stride S): heads [0, NH+NKV) of size hd start at column 0.             \
     * Position of row n is n % Tlen. inverse != 0 applies the transpose (for backward). */        \
    void td_op_rope##S(T *qkv, int N, int Tlen, int S, int nheads, int hd, float theta,            \
                       int inverse);                                                               \
    /* Causal attention. qkv (B,T,S): q heads at column 0, k at NH*hd, v at (NH+NKV)*hd;           \
     * out (B,T,NH*hd) overwritten; att (B,NH,T,T) softmax probabilities saved. */                 \
    void td_op_attention_fwd##S(T *out, T *att, const T *qkv, int B, int Tlen, int NH, int NKV,    \
                                int hd);                                                           \
    /* dqkv (B,T,S) overwritten; needs the saved att and (post-rope) qkv. */                       \
    void td_op_attention_bwd##S(T *dqkv, const T *dout, const T *att, const T *qkv, int B,         \
                                int Tlen, int NH, int NKV, int hd);                                \
    /* SwiGLU: gu (N, 2F) holds gate then up; h (N,F) = silu(gate) * up. */                        \
    void td_op_swiglu_fwd##S(T *h, const T *gu, int N, int F);                                     \
    /* dgu (N,2F) overwritten. */                                                                  \
    void td_op_swiglu_bwd##S(T *dgu, const T *dh, const T *gu, int N, int F);                      \
    /* GELU, tanh approximation (GPT-2's "gelu_new"); dx overwritten. */                           \
    void td_op_gelu_fwd##S(T *out, const T *x, size_t n);                                          \
    void td_op_gelu_bwd##S(T *dx, const T *dout, const T *x, size_t n);                            \
    /* out = a + b, n elements (out may alias a). */                                               \
    void td_op_add##S(T *out, const T *a, const T *b, size_t n);                                   \
    /* Cross-entropy over logits (N,V) with targets (N); a target < 0 is ignored. Writes           \
     * each row's log-sum-exp to lse (N) and returns the mean loss over counted rows. */           \
    double td_op_crossentropy_fwd##S(T *lse, const T *logits, const int32_t *targets, int N,       \
                                     int V);                                                       \
    /* dlogits (N,V) = d(mean loss)/d logits * dscale, from the lse of the forward; it may         \
     * alias logits (the training path overwrites the logits in place). */                         \
    void td_op_crossentropy_bwd##S(T *dlogits, const T *logits, const T *lse,                      \
                                   const int32_t *targets, int N, int V, double dscale);           \
    /* Knowledge distillation, student logits s and teacher logits t (N,V), over the rows whose    \
     * target is >= 0: the mean over those rows of tau^2 * KL(teacher_tau || student_tau)          \
     * (forward) or tau^2 * KL(student_tau || teacher_tau) (reverse), softmax(x / tau) each.       \
     * With 0 < topk < V the teacher keeps its topk largest logits, renormalized over them;        \
     * forward KL then weighs the full student distribution at those entries, reverse KL           \
     * renormalizes the student over them too (docs/distill.md). Returns -1 when memory runs       \
     * out. With dlogits (not aliasing s), writes d(mean loss)/d s * dscale (0 on rows not         \
     * counted). */                                                                                \
    double td_op_kd##S(T *dlogits, const T *s, const T *t, const int32_t *targets, int N, int V,   \
                       double tau, int reverse, int topk, double dscale);

TD_OPS_DECLARE(float, _f32)
TD_OPS_DECLARE(double, _f64)

#endif
