/* GPTQ (see gptq.h). Follows Algorithm 1 of the paper: H^-1 through its upper Cholesky
 * factor U (H^-1 = U^T U), columns in act order, errors of a block of columns applied to
 * the block at once and to the rest of the matrix with one sgemm. Rows are independent
 * inside a block, so threads take rows. */
#include "worker/infer/gptq.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK, from OpenBLAS (LP64). Column-major, with gfortran's hidden length argument of
 * the character argument (size_t, last). Our matrices are symmetric, so the layout only
 * matters for the last factor: its column-major upper triangle is read into U row by row. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info,
                    size_t uplo_len);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info,
                    size_t uplo_len);

enum { GPTQ_BLOCK = 128 };

typedef struct {
    double key;
    int index;
} keyed;

static int by_key_desc(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? 1 : -1;
    return (x->index > y->index) - (x->index < y->index); /* equal keys keep their order */
}

/* U (n, n) row-major upper with H^-1 = U^T U, for H (damped, permuted) in a (n, n). */
static td_status inverse_cholesky(double *a, int n, float *U) {
    int info = 0, info2 = 0, threads = omp_get_max_threads();
    omp_set_num_threads(1); /* LAPACK's threaded factorisation sums in another order */
    dpotrf_("U", &n, a, &n, &info, 1);
    if (info == 0) dpotri_("U", &n, a, &n, &info, 1);
    if (info == 0) dpotrf_("U", &n, a, &n, &info2, 1);
    omp_set_num_threads(threads);
    if (info != 0)
        return td_error_set(TD_ERR_RUNTIME,
                            "GPTQ: the calibration matrix is not positive "
                            "definite (LAPACK info %d); use more calibration tokens",
                            info);
    if (info2 != 0)
        return td_error_set(TD_ERR_RUNTIME,
                            "GPTQ: the inverse calibration matrix is not "
                            "positive definite (LAPACK info %d)",
                            info2);
    for (int j = 0; j < n; j++)
        for (int k = 0; k < n; k++)
            U[(size_t)j * n + k] = k >= j ? (float)a[(size_t)j + (size_t)k * n] : 0.0f;
    return TD_OK;
}

float td_gptq_row_scale(const float *row, int cols, float qmax) {
    float mx = 0;
    for (int k = 0; k < cols; k++)
        mx = fmaxf(mx, fabsf(row[k]));
    return mx > 0 ? mx / qmax : 1.0f;
}

void td_gptq_row_scales(const float *W, int rows, int cols, float qmax, float *scale) {
    for (int r = 0; r < rows; r++)
        scale[r] = td_gptq_row_scale(W + (size_t)r * cols, cols, qmax);
}

size_t td_gptq_work_bytes(int rows, int cols) {
    size_t R = (size_t)rows, C = (size_t)cols;
    return C * C * (sizeof(double) + sizeof(float)) + R * C * sizeof(float) +
           R * GPTQ_BLOCK * sizeof(float) + C * (sizeof(double) + sizeof(int) + sizeof(keyed));
}

td_status td_gptq_quantize(float *W, int rows, int cols, const float *H, float qmax, float damp,
                           float *scale) {
    size_t R = (size_t)rows, C = (size_t)cols;
    td_gptq_row_scales(W, rows, cols, qmax, scale);
    if (!H) { /* round to nearest */
        for (size_t r = 0; r < R; r++)
            for (size_t k = 0; k < C; k++) {
                float q = rintf(W[r * C + k] / scale[r]);
                W[r * C + k] = (q > qmax ? qmax : q < -qmax ? -qmax : q) * scale[r];
            }
        return TD_OK;
    }
    double *a = malloc(sizeof(double) * C * C), *diag = malloc(sizeof(double) * C);
    float *U = malloc(sizeof(float) * C * C), *Wp = malloc(sizeof(float) * R * C);
    float *E = malloc(sizeof(float) * R * GPTQ_BLOCK);
    int *perm = malloc(sizeof(int) * C);
    keyed *order = malloc(sizeof(keyed) * C);
    td_status s = TD_OK;
    if (!a || !diag || !U || !Wp || !E || !perm || !order) {
        s = td_error_set(TD_ERR_NOMEM, "GPTQ: out of memory for a %d x %d matrix", rows, cols);
        goto out;
    }
    /* H: dead inputs get 1 on the diagonal (their error then moves nowhere), then damping */
    double mean = 0;
    for (size_t j = 0; j < C; j++) {
        diag[j] = H[j * C + j] > 0 ? H[j * C + j] : 1.0;
        mean += diag[j];
    }
    mean /= (double)C;
    for (size_t j = 0; j < C; j++)
        diag[j] += damp * mean;
    for (size_t j = 0; j < C; j++)
        order[j] = (keyed){diag[j], (int)j};
    qsort(order, C, sizeof *order, by_key_desc);
    for (size_t j = 0; j < C; j++)
        perm[j] = order[j].index;
    for (size_t i = 0; i < C; i++)
        for (size_t j = 0; j < C; j++) {
            size_t pi = (size_t)perm[i], pj = (size_t)perm[j];
            if (i == j)
                a[i * C + j] = diag[pi];
            else if (H[pi * C + pi] <= 0 || H[pj * C + pj] <= 0)
                a[i * C + j] = 0;
            else
                a[i * C + j] = pi < pj ? H[pi * C + pj] : H[pj * C + pi];
        }
    if ((s = inverse_cholesky(a, cols, U)) != TD_OK) goto out;
    for (size_t r = 0; r < R; r++)
        for (size_t j = 0; j < C; j++)
            Wp[r * C + j] = W[r * C + (size_t)perm[j]];
    for (size_t i1 = 0; i1 < C; i1 += GPTQ_BLOCK) {
        size_t i2 = i1 + GPTQ_BLOCK < C ? i1 + GPTQ_BLOCK : C, nb = i2 - i1;
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < R; r++) {
            float *w = Wp + r * C, sc = scale[r], *e = E + r * GPTQ_BLOCK;
            for (size_t j = i1; j < i2; j++) {
                float q = rintf(w[j] / sc);
                q = q > qmax ? qmax : q < -qmax ? -qmax : q;
                float deq = q * sc, err = (w[j] - deq) / U[j * C + j];
                w[j] = deq;
                const float *u = U + j * C;
                for (size_t k = j + 1; k < i2; k++)
                    w[k] -= err * u[k];
                e[j - i1] = err;
            }
        }
        if (i2 < C) { /* the rest of the matrix: W[:, i2:] -= E U[i1:i2, i2:], in blocks of
                       * rows of a fixed size, one single-threaded call each: the same sums
                       * whatever the thread count */
            size_t nrb = (R + GPTQ_BLOCK - 1) / GPTQ_BLOCK;
#pragma omp parallel for schedule(dynamic)
            for (size_t b = 0; b < nrb; b++) {
                size_t r0 = b * GPTQ_BLOCK, nr = R - r0 < GPTQ_BLOCK ? R - r0 : GPTQ_BLOCK;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)(C - i2),
                            (int)nb, -1.0f, E + r0 * GPTQ_BLOCK, GPTQ_BLOCK, U + i1 * C + i2, cols,
                            1.0f, Wp + r0 * C + i2, cols);
            }
        }
    }
    for (size_t r = 0; r < R; r++)
        for (size_t j = 0; j < C; j++)
            W[r * C + (size_t)perm[j]] = Wp[r * C + j];
out:
    free(a);
    free(diag);
    free(U);
    free(Wp);
    free(E);
    free(perm);
    free(order);
    return s;
}
