/* bf16 matrix products with fp32 accumulation, through oneDNN (Debian's libdnnl 2.6, the
 * 2.x C API). A primitive is created once per shape and reused. Where oneDNN has no bf16
 * matrix product for the CPU (no AVX-512 bf16 and no AMX, or ONEDNN_MAX_CPU_ISA lower),
 * the same numbers come from OpenBLAS's sgemm on the bf16 operands widened back to fp32
 * (inputs rounded to bf16, fp32 accumulation), slower; the log says so once. */
#ifndef TD_BF16_H
#define TD_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Round-to-nearest-even fp32 -> bf16 (NaN kept a NaN); OpenMP-parallel for large n. */
void td_bf16_from_f32(uint16_t *dst, const float *src, size_t n);
/* The same on the calling thread only (for use inside a parallel loop). */
void td_bf16_from_f32_serial(uint16_t *dst, const float *src, size_t n);
void td_bf16_to_f32(float *dst, const uint16_t *src, size_t n);

/* Creates oneDNN's engine and stream (once) and logs the instruction set it uses. */
td_status td_bf16_init(void);
/* "avx512_core_bf16", "avx512_core_amx", ... and whether products run on oneDNN (1) or
 * the widened-sgemm fallback (0); valid after td_bf16_init. */
const char *td_bf16_isa(void);
/* The instruction set oneDNN would use (it honours ONEDNN_MAX_CPU_ISA); needs no init. */
const char *td_bf16_dnnl_isa(void);

/* C (M,N) = op(A) (M,K) @ op(B) (K,N) [+ C when accumulate] [+ bias (N) broadcast over
 * rows], all row-major; A and B bf16, C and bias fp32. transA: A is stored (K,M);
 * transB: B is stored (N,K). */
td_status td_bf16_gemm(float *C, const uint16_t *A, const uint16_t *B, const float *bias, int M,
                       int N, int K, int transA, int transB, int accumulate);

#endif
