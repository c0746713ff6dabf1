/* The serving model's state, shared by its files (infer_model.c: the CPU forward, quantized
 * forms, calibration; infer_device.c: the forward on a device backend; tp_slice.c: tensor-
 * parallel slices). Not for other modules: they use infer_model.h. */
#ifndef TD_INFER_MODEL_IMPL_H
#define TD_INFER_MODEL_IMPL_H

#include "worker/infer/infer_model.h"

/* A LoRA adapter served beside the base weights (td_infer_add_adapter): its sites in the
 * model's fused layout -- cut with the matrices in a tensor-parallel slice. */
typedef struct {
    int layer, mat; /* mat: linear_infer's `which` (0 qkv, 1 o, 2 fc / gate+up, 3 proj) */
    int row0, out;  /* rows [row0, row0 + out) of the (sliced) matrix */
    int in;         /* input width (a row-parallel slice's share) */
    float *A;       /* (r, in) */
    float *Bt;      /* (r, out): B transposed, so that a row's update is r axpys */
} td_infer_site;

typedef struct {
    int r;
    float scale; /* alpha / r */
    td_infer_site *sites;
    int n_sites;
    int *first; /* sites of (layer, mat): first[4 * layer + mat] .. first[4 * layer + mat + 1] */
    size_t bytes;
} td_infer_adapter;

struct td_infer_model {
    td_model *w; /* the weights (owned) */
    td_model_config cfg;
    int C, F, L, NH, NKV, hd, V, QKV, FC;
    size_t num_params;
    td_param_ptrs p;  /* host parameters */
    td_comm *tp_comm; /* tensor-parallel group: all-reduce after row-parallel products */
    /* int8 weights (td_infer_quantize_int8): per layer wqkv, wo, wfc, wproj, then lm_head */
    int8_t *q8;
    float *q8s;
    int16_t *q16;  /* lm_head in int16 (unless quantized with head_int8) */
    uint16_t *qbf; /* bf16 serving weights (td_infer_quantize_bf16) */
    struct q8mat {
        const int8_t *w;
        const int16_t *w16; /* instead of w: int16 weights (lm_head) */
        const uint16_t *wb; /* instead of w: bf16 weights (td_infer_quantize_bf16; s = 1) */
        const float *s;
        const int32_t *wsum; /* row sums, for the u8 x s8 (VNNI) path */
    } * q8l;                 /* 4 per layer + 1 */
    int32_t *q8sum;
    /* GPTQ (td_infer_calib_*): per q8l matrix, the sum of x x^T of its inputs while
     * collecting; afterwards the int8 grid, one scale per q8l row (0: none, round to
     * nearest), which td_infer_quantize_int8 and td_infer_tp_slice follow */
    float **calH;
    float *grid;
    int int8_vnni;        /* 1: int8 x int8 products accumulated in int32 (activations quantized) */
    uint8_t *iq8;         /* activation scratch for the VNNI path: (N, max width) */
    float *iq8s;          /* (N) activation scales */
    td_infer_adapter *ad; /* adapters 1 .. n_ad (ad[k - 1]) */
    int n_ad;
    /* inference buffers (td_infer_plan) */
    int inf_tokens, inf_segs;
    float *inf;
    float *ix, *in, *im, *ir, *iqkv, *iatt, *ifc, *ih, *ilast;
    int32_t *itok, *ipos, *iseg;
    /* on a device backend: the same buffers in its memory, index arrays, host staging */
    td_backend *be;
    float *dinf;
    int32_t *didx, *hidx;
    size_t didx_n;
};

/* Fills a's `first` index from its sites (sorted by layer, then matrix) for L layers. */
td_status td_infer_adapter_index(td_infer_adapter *a, int L);
void td_infer_adapter_free(td_infer_adapter *a);
/* out (N, OC) rows += each row's adapter product on matrix `mat` of `layer` (input x (N, in));
 * the rows of segment s start at row0[s]. */
void td_infer_adapters_apply(const td_infer_model *m, const td_infer_seg *segs, int nseg,
                             const int *row0, int layer, int mat, float *out, int OC,
                             const float *x, int in);

/* A read-only view of a model's sizes and weights (v), for the functions that take a
 * td_model. */
td_infer_model *td_infer_view_of(const td_model *wm, td_infer_model *v);
/* The device backend's buffers for a plan, and its forward (infer_device.c). */
td_status td_infer_dev_plan(td_infer_model *m, int max_tokens, int max_segs);
td_status td_infer_dev_forward(td_infer_model *m, td_kv_cache *kv, const td_infer_seg *segs,
                               int nseg, float *logits);

#endif
