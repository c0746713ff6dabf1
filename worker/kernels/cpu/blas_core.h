/* Which kernels the CPU's matrix products run on, and the correction of OpenBLAS's choice.
 *
 * OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernels ("core type") from the CPU
 * model when the library loads. A version older than the CPU does not know the model and
 * falls back to its SSE3 "Prescott" kernels: Debian 12's OpenBLAS 0.3.21 does this on Intel
 * CPUs of family 6 model 207 (AMX, AVX-512 bf16), where sgemm then runs 4-5x slower. The
 * choice is read from OPENBLAS_CORETYPE once, before main(), so it cannot be changed in
 * place: td_blas_core_check() re-executes the program with OPENBLAS_CORETYPE set to the
 * core this CPU's instruction sets support. An OPENBLAS_CORETYPE the user set is respected
 * (some machines set one on purpose to avoid kernels that fail there) and reported.
 *
 * Environment, read by td_blas_core_check():
 *   OPENBLAS_CORETYPE          the user's choice (kept; set, even empty, means chosen) or
 *                              tandem's correction
 *   TANDEM_BLAS_CHECK=0        no check, no correction: OpenBLAS's own choice stands (also
 *                              "off", "no", "false")
 *   TANDEM_BLAS_CORRECTED=X    set by tandem on re-execution: the core OpenBLAS chose itself;
 *                              counts only beside OPENBLAS_CORETYPE = the CPU's core
 *   TANDEM_TEST_BLAS_DETECTED=1  test hook: treat OPENBLAS_CORETYPE as the library's own
 *                              choice, as on a CPU it does not know (tests force "Prescott") */
#ifndef TD_BLAS_CORE_H
#define TD_BLAS_CORE_H

#include <stddef.h>

/* The instruction sets that decide the core type, as the CPU and the OS report them. */
typedef struct {
    int amd;              /* vendor AMD (OpenBLAS names its AVX2 kernels "Zen" there) */
    int avx, avx2, fma;   /* AVX, AVX2, FMA3 */
    int avx512;           /* AVX-512 F, CD, BW, DQ and VL together (SkylakeX's kernels) */
    int avx512_bf16, amx; /* reported only: OpenBLAS does not use them for sgemm */
} td_cpu_features;

/* Reads this CPU's features (cpuid, with the OS's register-state support). */
void td_cpu_features_detect(td_cpu_features *f);

/* The OpenBLAS core type whose sgemm kernels a CPU with features f should run: "SkylakeX",
 * "Haswell", "Zen", "SandyBridge", or NULL when nothing better than OpenBLAS's own choice
 * is known (no AVX). */
const char *td_blas_core_for_cpu(const td_cpu_features *f);

/* A core type's rank by the instruction sets its kernels use (case-insensitive name):
 * 0 SSE-only cores (Prescott, Core2, Nehalem, ...), 1 AVX (SandyBridge, Bulldozer, ...),
 * 2 AVX2 + FMA (Haswell, Zen, Excavator), 3 AVX-512 (SkylakeX, Cooperlake,
 * SapphireRapids); -1 for a name not known here (never corrected). */
int td_blas_core_rank(const char *name);

/* Call first in main(), before any thread, MPI or file is opened. When OpenBLAS chose a core
 * ranked below what the CPU supports and the user did not set OPENBLAS_CORETYPE, re-executes
 * the program (/proc/self/exe, same argv, same pid) with OPENBLAS_CORETYPE set; returns when
 * nothing needs correcting, or, after a warning (rank 0's only), when it cannot re-execute:
 * exec failed, or /proc/self/exe is another program (started as `ld.so tandem ...`). */
void td_blas_core_check(char **argv);

/* The core type OpenBLAS runs in this process ("SkylakeX", "Prescott", ...). */
const char *td_blas_core_name(void);

/* One line naming the kernels of this process's products, e.g. "fp32: OpenBLAS 0.3.21 core
 * SkylakeX (set by tandem: OpenBLAS chose Prescott on this CPU); bf16: oneDNN
 * avx512_core_amx". Written into buf (n bytes); returns buf. */
const char *td_cpu_kernels_describe(char *buf, size_t n);

/* Logs td_cpu_kernels_describe() as an INFO line, once per process, on rank 0 only (the
 * rank td_log_set_rank() was given; a process without one counts as rank 0), and warns when
 * the user's OPENBLAS_CORETYPE is unknown to OpenBLAS or below the CPU's core, or when ranks
 * run different cores. rank_cores: nranks NUL-terminated core names (td_blas_core_name() of
 * each rank, rank 0 first), stride bytes apart. quiet: warnings only. */
void td_cpu_kernels_log(const char *rank_cores, size_t stride, int nranks, int quiet);

#endif
