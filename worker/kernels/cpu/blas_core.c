/* OpenBLAS core-type check and correction, and the line naming the kernels (blas_core.h). */
#include "worker/kernels/cpu/blas_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/kernels/cpu/bf16.h"

/* OpenBLAS's own API (cblas.h declares them; declared here so this file needs no BLAS
 * header): the core type in use and the build line ("OpenBLAS 0.3.21 DYNAMIC_ARCH ..."). */
char *openblas_get_corename(void);
char *openblas_get_config(void);

void td_cpu_features_detect(td_cpu_features *f) {
    memset(f, 0, sizeof *f);
#if defined(__x86_64__) && defined(__GNUC__)
    /* __builtin_cpu_supports checks the OS saves the AVX/AVX-512 registers (XGETBV) too */
    __builtin_cpu_init();
    f->amd = __builtin_cpu_is("amd");
    f->avx = __builtin_cpu_supports("avx");
    f->avx2 = __builtin_cpu_supports("avx2");
    f->fma = __builtin_cpu_supports("fma");
    f->avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vl");
    f->avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    f->amx = __builtin_cpu_supports("amx-tile");
#endif
}

const char *td_blas_core_for_cpu(const td_cpu_features *f) {
    if (f->avx512) return "SkylakeX";
    if (f->avx2 && f->fma) return f->amd ? "Zen" : "Haswell";
    if (f->avx) return "SandyBridge";
    return NULL;
}

int td_blas_core_rank(const char *name) {
    /* OpenBLAS 0.3.x's x86-64 DYNAMIC_ARCH cores, by the widest vectors their sgemm uses */
    static const struct {
        const char *name;
        int rank;
    } cores[] = {
        {"Katmai", 0},       {"Coppermine", 0},     {"Northwood", 0},  {"Prescott", 0},
        {"Banias", 0},       {"Atom", 0},           {"Core2", 0},      {"Penryn", 0},
        {"Dunnington", 0},   {"Nehalem", 0},        {"Athlon", 0},     {"Opteron", 0},
        {"Opteron_SSE3", 0}, {"Barcelona", 0},      {"Nano", 0},       {"Bobcat", 0},
        {"SandyBridge", 1},  {"Bulldozer", 1},      {"Piledriver", 1}, {"Steamroller", 2},
        {"Excavator", 2},    {"Haswell", 2},        {"Zen", 2},        {"SkylakeX", 3},
        {"Cooperlake", 3},   {"SapphireRapids", 3},
    };
    if (!name) return -1;
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        if (!strcasecmp(name, cores[i].name)) return cores[i].rank;
    return -1;
}

void td_blas_core_check(char **argv) {
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (getenv("TANDEM_BLAS_CORRECTED")) return; /* already re-executed: never loop */
    const char *off = getenv("TANDEM_BLAS_CHECK");
    if (off && !strcmp(off, "0")) return; /* the user's (or a benchmark's) opt-out */
    if (user && user[0] && !getenv("TANDEM_TEST_BLAS_DETECTED")) return; /* the user's */
    td_cpu_features f;
    td_cpu_features_detect(&f);
    const char *want = td_blas_core_for_cpu(&f);
    const char *have = openblas_get_corename();
    int have_rank = td_blas_core_rank(have);
    if (!want || have_rank < 0 || have_rank >= td_blas_core_rank(want)) return;
    if (!argv || !argv[0]) return;
    char chose[64];
    snprintf(chose, sizeof chose, "%s", have);
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("TANDEM_BLAS_CORRECTED", chose, 1);
    unsetenv("TANDEM_TEST_BLAS_DETECTED");
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* still here: the products run on the slow kernels; say so rather than hide it */
    TD_LOG_WARN("OpenBLAS chose its %s kernels on this CPU, which supports %s's; re-running "
                "with OPENBLAS_CORETYPE=%s failed, so fp32 products run several times slower: "
                "set OPENBLAS_CORETYPE=%s in the environment",
                chose, want, want, want);
    unsetenv("TANDEM_BLAS_CORRECTED");
    unsetenv("OPENBLAS_CORETYPE");
}

const char *td_cpu_kernels_describe(char *buf, size_t n) {
    char version[64] = "OpenBLAS";
    const char *cfg = openblas_get_config();
    const char *sp = cfg ? strchr(cfg, ' ') : NULL;
    if (sp) { /* "OpenBLAS 0.3.21 NO_LAPACKE ..." -> "OpenBLAS 0.3.21" */
        const char *end = strchr(sp + 1, ' ');
        int len = end ? (int)(end - cfg) : (int)strlen(cfg);
        snprintf(version, sizeof version, "%.*s", len, cfg);
    }
    const char *core = openblas_get_corename();
    td_cpu_features f;
    td_cpu_features_detect(&f);
    const char *best = td_blas_core_for_cpu(&f);
    const char *corrected = getenv("TANDEM_BLAS_CORRECTED");
    const char *user = getenv("OPENBLAS_CORETYPE");
    char why[160];
    if (corrected)
        snprintf(why, sizeof why, "set by tandem: OpenBLAS chose %s on this CPU", corrected);
    else if (user && user[0] && best && td_blas_core_rank(core) < td_blas_core_rank(best))
        snprintf(why, sizeof why, "OPENBLAS_CORETYPE=%s set by the user; this CPU supports %s",
                 user, best);
    else if (user && user[0])
        snprintf(why, sizeof why, "OPENBLAS_CORETYPE=%s set by the user", user);
    else
        snprintf(why, sizeof why, "chosen by OpenBLAS");
    snprintf(buf, n, "fp32: %s core %s (%s); bf16: oneDNN %s; CPU: %s%s%s", version, core, why,
             td_bf16_dnnl_isa(),
             f.avx512 ? "AVX-512"
             : f.avx2 ? "AVX2"
             : f.avx  ? "AVX"
                      : "SSE",
             f.avx512_bf16 ? ", AVX-512 bf16" : "", f.amx ? ", AMX" : "");
    return buf;
}

void td_cpu_kernels_log(void) {
    static int said;
    if (said || td_log_rank() != 0) return;
    said = 1;
    char line[512];
    td_cpu_kernels_describe(line, sizeof line);
    TD_LOG_INFO("kernels: %s", line);
    const char *user = getenv("OPENBLAS_CORETYPE");
    td_cpu_features f;
    td_cpu_features_detect(&f);
    const char *best = td_blas_core_for_cpu(&f);
    if (user && user[0] && !getenv("TANDEM_BLAS_CORRECTED") && best &&
        td_blas_core_rank(openblas_get_corename()) >= 0 &&
        td_blas_core_rank(openblas_get_corename()) < td_blas_core_rank(best))
        TD_LOG_WARN("OPENBLAS_CORETYPE=%s runs fp32 products on kernels older than this CPU "
                    "supports (%s): unset it unless it is set on purpose",
                    user, best);
}
