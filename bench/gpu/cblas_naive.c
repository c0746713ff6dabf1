/* The two CBLAS routines tandem's CPU reference calls (sgemm, sgemv), written plainly with
 * OpenMP, for bench/gpu_check.sh on a GPU machine that has no OpenBLAS: the CPU side there
 * only serves as the reference for small parity shapes. Row-major only, as tandem uses. The
 * two OpenBLAS queries the kernels line makes answer "naive". */
#include <cblas.h>
#include <stddef.h>

void cblas_sgemm(const CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE ta, const CBLAS_TRANSPOSE tb,
                 const blasint M, const blasint N, const blasint K, const float alpha,
                 const float *A, const blasint lda, const float *B, const blasint ldb,
                 const float beta, float *C, const blasint ldc) {
    (void)layout; /* CblasRowMajor */
#pragma omp parallel for schedule(static)
    for (blasint i = 0; i < M; i++)
        for (blasint j = 0; j < N; j++) {
            double acc = 0;
            for (blasint k = 0; k < K; k++) {
                float a = ta == CblasNoTrans ? A[(size_t)i * lda + k] : A[(size_t)k * lda + i];
                float b = tb == CblasNoTrans ? B[(size_t)k * ldb + j] : B[(size_t)j * ldb + k];
                acc += (double)a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta != 0 ? beta * *c : 0));
        }
}

void cblas_sgemv(const CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE ta, const blasint M,
                 const blasint N, const float alpha, const float *A, const blasint lda,
                 const float *x, const blasint incx, const float beta, float *y,
                 const blasint incy) {
    (void)layout;
    blasint rows = ta == CblasNoTrans ? M : N, cols = ta == CblasNoTrans ? N : M;
    for (blasint i = 0; i < rows; i++) {
        double acc = 0;
        for (blasint k = 0; k < cols; k++)
            acc += (double)(ta == CblasNoTrans ? A[(size_t)i * lda + k] : A[(size_t)k * lda + i]) *
                   x[(size_t)k * incx];
        y[(size_t)i * incy] = (float)(alpha * acc + (beta != 0 ? beta * y[(size_t)i * incy] : 0));
    }
}

char *openblas_get_corename(void) {
    return "naive";
}

char *openblas_get_config(void) {
    return "naive-cblas (gpu_check)";
}
