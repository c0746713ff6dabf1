/* The choice of OpenBLAS core type (worker/kernels/cpu/blas_core.h): the core each
 * instruction-set combination should run, the ranking that decides whether OpenBLAS's own
 * choice is corrected, and the kernels line naming what this process runs. The correction
 * itself (re-execution) is checked end to end by tests/e2e/test_blas_core.sh. */
#include <string.h>

#include "tests/test.h"
#include "worker/kernels/cpu/blas_core.h"

char *openblas_get_corename(void);

int main(void) {
    td_cpu_features f;
    memset(&f, 0, sizeof f);
    CHECK(td_blas_core_for_cpu(&f) == NULL, "SSE only: nothing better than OpenBLAS's own");
    f.avx = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "SandyBridge"), "AVX");
    f.avx2 = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "SandyBridge"), "AVX2 without FMA");
    f.fma = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "Haswell"), "AVX2 + FMA, Intel");
    f.amd = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "Zen"), "AVX2 + FMA, AMD");
    f.avx512 = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "SkylakeX"), "AVX-512 (AMD Zen 4 too)");
    f.amd = 0;
    f.avx512_bf16 = f.amx = 1;
    CHECK(!strcmp(td_blas_core_for_cpu(&f), "SkylakeX"), "AMX: sgemm still SkylakeX's");

    /* the misdetection this exists for, and the names OpenBLAS reports */
    CHECK(td_blas_core_rank("Prescott") < td_blas_core_rank("SkylakeX"), "Prescott below");
    CHECK(td_blas_core_rank("prescott") == td_blas_core_rank("Prescott"), "case-insensitive");
    CHECK(td_blas_core_rank("Haswell") < td_blas_core_rank("SkylakeX"), "Haswell below");
    CHECK(td_blas_core_rank("Zen") == td_blas_core_rank("Haswell"), "Zen = Haswell");
    CHECK(td_blas_core_rank("Cooperlake") == td_blas_core_rank("SkylakeX"),
          "Cooperlake is never 'corrected' to SkylakeX");
    CHECK(td_blas_core_rank("SandyBridge") > td_blas_core_rank("Nehalem"), "AVX above SSE");
    CHECK(td_blas_core_rank("NeoverseN1") == -1 && td_blas_core_rank(NULL) == -1,
          "unknown names are never corrected");

    /* this process: the line names the core OpenBLAS really runs */
    char line[512];
    td_cpu_kernels_describe(line, sizeof line);
    printf("kernels: %s\n", line);
    char core[80];
    snprintf(core, sizeof core, " core %s (", openblas_get_corename());
    CHECK(strstr(line, core) != NULL, "the line names the running core: %s", line);
    CHECK(strstr(line, "bf16: oneDNN ") != NULL, "the line names oneDNN's ISA: %s", line);
    return test_done("test_blas_select");
}
