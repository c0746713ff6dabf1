/* float64 instantiation of the kernels in ops_impl.inc (for finite-difference tests). */
#include <omp.h>
#define real double
#define S(name) name##_f64
#define GEMM cblas_dgemm
#define EXP exp
#define SQRT sqrt
#define TANH tanh
#include "worker/kernels/cpu/ops_impl.inc"
