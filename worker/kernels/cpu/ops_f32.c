/* float32 instantiation of the kernels in ops_impl.inc (the training path). */
#include <omp.h>
#define real float
#define S(name) name##_f32
#define GEMM cblas_sgemm
#define EXP expf
#define SQRT sqrtf
#define TANH tanhf
#include "worker/kernels/cpu/ops_impl.inc"
