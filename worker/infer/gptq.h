/* GPTQ: error-compensating rounding of a weight matrix to a per-row int grid.
 *
 * Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
 * Generative Pre-trained Transformers" (ICLR 2023). Rounding W (rows x cols) to the nearest
 * grid point column by column leaves an error in each column; GPTQ instead quantizes one
 * column at a time and moves that column's error onto the columns not yet quantized, in
 * the proportions that minimise || (W - Q) X ||^2 for the calibration inputs X (the inverse
 * of H = X^T X, through its Cholesky factor). Columns go in descending order of H's
 * diagonal ("act order"), lazily in blocks of 128 (a matrix product per block). */
#ifndef TD_GPTQ_H
#define TD_GPTQ_H

#include <stddef.h>

#include "common/status.h"

/* W (rows, cols), row-major, is replaced by its quantized values s[r] * q with q an
 * integer in [-qmax, qmax]; each value is the float product of s[r] and q, so dividing by
 * s[r] and rounding gives q back exactly. The grid is s[r] = max |W[r]| / qmax (1 for a
 * zero row), written to scale. H (cols, cols): sum of x x^T over the calibration inputs;
 * only its upper triangle (j >= i, row-major) is read. damp: fraction of H's mean diagonal
 * added to the diagonal (0.01 is GPTQ's default). Inputs that were always zero (H[j][j] = 0)
 * are rounded to nearest. Fails (TD_ERR_NOMEM, TD_ERR_RUNTIME when H is not positive
 * definite even damped) without touching W. H NULL: every column rounded to nearest (the
 * same grid, no calibration). */
td_status td_gptq_quantize(float *W, int rows, int cols, const float *H, float qmax, float damp,
                           float *scale);
/* The grid of a row: max |w| / qmax (1 for a zero row); of every row of W (rows, cols). */
float td_gptq_row_scale(const float *row, int cols, float qmax);
void td_gptq_row_scales(const float *W, int rows, int cols, float qmax, float *scale);
/* Working memory td_gptq_quantize allocates for a (rows, cols) matrix. Reentrant. */
size_t td_gptq_work_bytes(int rows, int cols);

#endif
