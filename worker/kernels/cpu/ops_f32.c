/* float32 instantiation of the kernels in ops_impl.inc (the training path), with the
 * AVX-512 row helpers of vec_f32.h. */
#include <math.h>
#include <omp.h>

#include "worker/kernels/cpu/vec_f32.h"

#define real float
#define S(name) name##_f32
#define GEMM cblas_sgemm
#define SQRT sqrtf
#include "worker/kernels/cpu/ops_impl.inc"
