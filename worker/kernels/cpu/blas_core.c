/* OpenBLAS core-type check and correction, and the line naming the kernels (blas_core.h). */
#include "worker/kernels/cpu/blas_core.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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

/* Where this process's core type came from, read from the environment and the library;
 * the check and the description share it so that they never disagree. */
typedef enum {
    SRC_LIBRARY,  /* OpenBLAS chose (OPENBLAS_CORETYPE unset) */
    SRC_TANDEM,   /* tandem re-executed with OPENBLAS_CORETYPE = the CPU's core */
    SRC_USER,     /* the user set OPENBLAS_CORETYPE and OpenBLAS runs that core */
    SRC_USER_BAD, /* the user set a value OpenBLAS does not run (unknown, misspelt, empty) */
} core_source;

static int env_on(const char *name) { /* "1"; the test hook takes nothing else */
    const char *v = getenv(name);
    return v && !strcmp(v, "1");
}

static core_source core_source_get(const char *want) {
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *core = openblas_get_corename();
    const char *marker = getenv("TANDEM_BLAS_CORRECTED");
    if (!user) return SRC_LIBRARY;
    if (marker && marker[0] && want && !strcasecmp(user, want)) return SRC_TANDEM;
    if (env_on("TANDEM_TEST_BLAS_DETECTED")) return SRC_LIBRARY; /* simulated misdetection */
    return core && !strcasecmp(user, core) ? SRC_USER : SRC_USER_BAD;
}

static int check_disabled(void) {
    const char *v = getenv("TANDEM_BLAS_CHECK");
    return v && (!strcmp(v, "0") || !strcasecmp(v, "off") || !strcasecmp(v, "no") ||
                 !strcasecmp(v, "false"));
}

/* The rank this process will have in an MPI or Slurm job, before MPI starts (-1 if none). */
static int launcher_rank(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return atoi(getenv(vars[i]));
    return -1;
}

/* 1 when /proc/self/exe is the file this code was loaded from: not so when the program
 * was started through the dynamic loader (ld.so prog) or another program that loads it,
 * where re-executing /proc/self/exe would start that program instead. */
static int self_exe_is_this_program(char *exe, size_t n) {
    struct stat st;
    ssize_t len = readlink("/proc/self/exe", exe, n - 1);
    exe[len > 0 ? len : 0] = 0;
    if (stat("/proc/self/exe", &st)) return 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    uintptr_t me = (uintptr_t)&self_exe_is_this_program;
    char line[4096];
    int same = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, ino;
        unsigned maj, mnr;
        /* "start-end perms offset major:minor inode path" */
        if (sscanf(line, "%lx-%lx %*s %*s %x:%x %lu", &lo, &hi, &maj, &mnr, &ino) == 5 &&
            me >= lo && me < hi) {
            same = ino == (unsigned long)st.st_ino && maj == major(st.st_dev) &&
                   mnr == minor(st.st_dev);
            break;
        }
    }
    fclose(f);
    return same;
}

void td_blas_core_check(char **argv) {
    if (check_disabled()) return; /* the user's (or a benchmark's) opt-out */
    td_cpu_features f;
    td_cpu_features_detect(&f);
    const char *want = td_blas_core_for_cpu(&f);
    if (core_source_get(want) != SRC_LIBRARY) return; /* already corrected, or the user's */
    const char *have = openblas_get_corename();
    int have_rank = td_blas_core_rank(have);
    if (!want || have_rank < 0 || have_rank >= td_blas_core_rank(want)) return;
    if (!argv || !argv[0]) return;
    char chose[64], exe[4096], why[4200];
    snprintf(chose, sizeof chose, "%s", have);
    if (self_exe_is_this_program(exe, sizeof exe)) {
        setenv("OPENBLAS_CORETYPE", want, 1);
        setenv("TANDEM_BLAS_CORRECTED", chose, 1);
        unsetenv("TANDEM_TEST_BLAS_DETECTED");
        fflush(NULL);
        execv("/proc/self/exe", argv);
        snprintf(why, sizeof why, "exec %s: %s", exe, strerror(errno));
        unsetenv("TANDEM_BLAS_CORRECTED");
        unsetenv("OPENBLAS_CORETYPE");
    } else {
        snprintf(why, sizeof why, "/proc/self/exe is %s, not this program", exe);
    }
    /* still here: the products run on the slow kernels; say so (once per job) */
    if (launcher_rank() <= 0)
        TD_LOG_WARN("OpenBLAS chose its %s kernels on this CPU, which supports %s's; tandem "
                    "could not re-run itself with OPENBLAS_CORETYPE=%s (%s), so fp32 products "
                    "run several times slower: set OPENBLAS_CORETYPE=%s in the environment",
                    chose, want, want, why, want);
}

const char *td_blas_core_name(void) {
    return openblas_get_corename();
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
    const char *user = getenv("OPENBLAS_CORETYPE");
    int below =
        best && td_blas_core_rank(core) >= 0 && td_blas_core_rank(core) < td_blas_core_rank(best);
    char why[200];
    switch (core_source_get(best)) {
    case SRC_TANDEM:
        if (!strcasecmp(core, best))
            snprintf(why, sizeof why, "set by tandem: OpenBLAS chose %.40s on this CPU",
                     getenv("TANDEM_BLAS_CORRECTED"));
        else
            snprintf(why, sizeof why,
                     "tandem set OPENBLAS_CORETYPE=%s, but this OpenBLAS runs %s: a build "
                     "without DYNAMIC_ARCH?",
                     best, core);
        break;
    case SRC_USER:
        snprintf(why, sizeof why, "OPENBLAS_CORETYPE=%.40s set by the user%s%s", user,
                 below ? "; this CPU supports " : "", below ? best : "");
        break;
    case SRC_USER_BAD:
        snprintf(why, sizeof why,
                 "OPENBLAS_CORETYPE=\"%.40s\" set by the user is not a core this OpenBLAS "
                 "runs; it fell back to %s",
                 user, core);
        break;
    default:
        snprintf(why, sizeof why, "chosen by OpenBLAS%s%s", below ? "; this CPU supports " : "",
                 below ? best : "");
    }
    snprintf(buf, n, "fp32: %s core %s (%s); bf16: oneDNN %s; CPU: %s%s%s", version, core, why,
             td_bf16_dnnl_isa(),
             f.avx512 ? "AVX-512"
             : f.avx2 ? "AVX2"
             : f.avx  ? "AVX"
                      : "SSE",
             f.avx512_bf16 ? ", AVX-512 bf16" : "", f.amx ? ", AMX" : "");
    return buf;
}

void td_cpu_kernels_log(const char *rank_cores, size_t stride, int nranks, int quiet) {
    static int said;
    if (said || td_log_rank() != 0) return;
    said = 1;
    if (!quiet) {
        char line[512];
        td_cpu_kernels_describe(line, sizeof line);
        TD_LOG_INFO("kernels: %s", line);
    }
    /* warnings, even when quiet: kernels slower than the CPU allows, or differing ranks */
    td_cpu_features f;
    td_cpu_features_detect(&f);
    const char *best = td_blas_core_for_cpu(&f);
    const char *core = openblas_get_corename();
    const char *user = getenv("OPENBLAS_CORETYPE");
    core_source src = core_source_get(best);
    if (src == SRC_USER_BAD)
        TD_LOG_WARN("OPENBLAS_CORETYPE=\"%s\" is not a core type this OpenBLAS runs (it fell "
                    "back to %s): check its spelling, e.g. SkylakeX, Haswell, Zen",
                    user, core);
    else if (src == SRC_USER && best && td_blas_core_rank(core) >= 0 &&
             td_blas_core_rank(core) < td_blas_core_rank(best))
        TD_LOG_WARN("OPENBLAS_CORETYPE=%s runs fp32 products on kernels older than this CPU "
                    "supports (%s): unset it unless it is set on purpose",
                    user, best);
    int differ = 0;
    for (int r = 1; r < nranks; r++)
        if (strcmp(rank_cores + (size_t)r * stride, rank_cores)) differ++;
    if (differ) {
        char list[512] = "";
        size_t len = 0;
        for (int r = 0; r < nranks && len < sizeof list - 64; r++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s rank %d %s", r ? "," : "", r,
                                    rank_cores + (size_t)r * stride);
        TD_LOG_WARN("ranks run different OpenBLAS kernels:%s (hosts with different CPUs or "
                    "environments); the slowest sets the pace",
                    list);
    } else if (nranks > 1 && !quiet) {
        TD_LOG_INFO("kernels: the same core (%s) on all %d ranks", rank_cores, nranks);
    }
}
