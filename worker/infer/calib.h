/* int8 calibration: GPTQ statistics from text the model reads, then GPTQ rounding.
 *
 * The text is either a tokenized file (cut into windows of len tokens) or, by default,
 * sampled from the fp32 model itself at temperature 1 starting from `start` -- no data
 * needed, the statistics then follow what the model itself writes. Each position of every
 * sequence is fed one decode step at a time (all sequences batched), so every matrix,
 * lm_head included, sees every position. Deterministic for a seed and memory budget (the
 * kernels never split one sum across threads, so the thread count does not matter).
 *
 * Passes: the layers first, on the fp32 model's activations, in as few passes as the
 * memory budget allows (the statistics of a layer are C^2 + A^2 + C^2 + F^2 floats; a later
 * pass reads the earlier layers already rounded, as GPTQ's paper does layer by layer); then
 * lm_head, on the rounded layers' outputs. The text is sampled once, in the first pass. */
#ifndef TD_INFER_CALIB_H
#define TD_INFER_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "data/bpe.h"
#include "worker/infer/infer_model.h"

/* A fixed default, not one read from free memory: the passes change the result, which must
 * not depend on what else the machine holds (or on how many ranks loaded the model). */
#define TD_CALIB_DEFAULT_BYTES ((size_t)4 << 30)

typedef struct {
    int seqs;              /* sequences (<= 0: 32) */
    int len;               /* tokens per sequence (<= 0: min(context, 128)) */
    const int32_t *tokens; /* calibration text, tokenized; NULL: sample from the model */
    size_t ntokens;
    int32_t start; /* first token of each sampled sequence */
    uint64_t seed;
    int skip_head;    /* lm_head not calibrated (it stays round-to-nearest) */
    float damp;       /* <= 0: 0.01 */
    size_t max_bytes; /* statistics at a time (0: TD_CALIB_DEFAULT_BYTES); layers
                       * whose statistics do not fit at once go in several passes */
    int quiet;        /* no progress lines */
} td_calib_opts;

void td_calib_opts_default(td_calib_opts *o);
/* The token sampled sequences start from: the first of <|endoftext|>, <|begin_of_text|>,
 * <s>, <|end_of_text|>, </s> that tok has, or -1. */
int32_t td_calib_start_token(const td_bpe *tok);
/* path's text, tokenized: *ids (n of them, the caller frees) for td_calib_opts.tokens. */
td_status td_calib_read_text(td_bpe *tok, const char *path, int32_t **ids, size_t *n);
/* Layers whose statistics fit max_bytes at once (0: TD_CALIB_DEFAULT_BYTES), at most all
 * of them; 0 when not even one does. */
int td_calib_layers_per_pass(const td_model *m, size_t max_bytes);
/* Runs the calibration text through m (the whole fp32 model; its inference buffers are
 * planned here) and replaces its weights by their GPTQ int8-grid values
 * (td_infer_calib_gptq); td_infer_quantize_int8 afterwards stores them. */
td_status td_int8_calibrate(td_infer_model *m, const td_calib_opts *o);

#endif
