/* Training-throughput benchmark: tandem against PyTorch eager, measured in the same run.
 *
 * For each model shape (GPT-2 L4/H4/C256 and L12/H12/C768, and llama models of similar
 * size; vocab 50257, B=4, T=64), a child process trains on fixed random tokens — forward,
 * backward, clip, AdamW — for `warmup` untimed and `steps` timed steps, and reports the
 * median step time. Its peak RSS comes from wait4(). Then bench/torch_train.py runs the same
 * shape in PyTorch (Debian's python3-torch, fp32, eager, glibc malloc told to keep freed
 * memory) with the same thread count, and the
 * table prints both and the ratio. GFLOP/s counts 6 N + 12 L C T FLOPs per token (N = the
 * parameters in matrix products). --profile adds tandem's per-operation time split.
 *
 * Rows per shape: tandem fp32, tandem bf16 (oneDNN bf16 products, fp32 masters; the bf16
 * copy of the weights after each step is in the step time), PyTorch fp32 eager, PyTorch
 * with torch.autocast(bfloat16).
 * usage: bench_train [--steps N] [--warmup N] [--threads N] [--only NAME]
 *                    [--precision fp32|bf16|both] [--no-torch] [--profile] [--json] */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/rng.h"
#include "common/timeutil.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/model.h"
#include "worker/train/adamw.h"

typedef struct {
    const char *name;
    td_arch arch;
    int L, NH, NKV, C, F;
    int steps_scale; /* the large shapes run fewer steps */
} shape;

static const shape g_shapes[] = {
    {"gpt2-L4-C256", TD_ARCH_GPT2, 4, 4, 4, 256, 1024, 2},
    {"gpt2-L12-C768", TD_ARCH_GPT2, 12, 12, 12, 768, 3072, 1},
    {"llama-L4-C256", TD_ARCH_LLAMA, 4, 4, 4, 256, 688, 2},
    {"llama-L12-C768", TD_ARCH_LLAMA, 12, 12, 12, 768, 2048, 1},
};
enum { B = 4, T = 64, V = 50257, MAXT = 1024 };

typedef struct {
    double tok_s, ms_median, gflops, params;
    double prof[TD_PROF_COUNT + 1]; /* + optimizer; seconds per step */
    int ok;
} result;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static td_model_config config_of(const shape *s) {
    td_model_config c = {0};
    c.arch = s->arch;
    c.hidden_size = s->C;
    c.intermediate_size = s->F;
    c.num_hidden_layers = s->L;
    c.num_attention_heads = s->NH;
    c.num_key_value_heads = s->NKV;
    c.vocab_size = V;
    c.max_position_embeddings = MAXT;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.tie_word_embeddings = s->arch == TD_ARCH_GPT2;
    return c;
}

/* Runs in the child: trains (fp32, or bf16 matrix products with fp32 masters) and fills *r. */
static void run_tandem(const shape *s, int warmup, int steps, int bf16, result *r) {
    memset(r, 0, sizeof *r);
    td_model_config c = config_of(s);
    td_model *m;
    if (td_model_new(&c, &m) != TD_OK || td_model_plan(m, B, T, 1) != TD_OK) return;
    td_model_init_random(m, 1);
    if (bf16 && td_model_set_bf16(m, 1) != TD_OK) return;
    size_t np = td_model_num_params(m);
    float *am = calloc(np, 4), *av = calloc(np, 4);
    int32_t *tok = malloc(sizeof(int32_t) * B * (T + 1));
    td_rng rng;
    td_rng_seed(&rng, 7);
    for (int i = 0; i < B * (T + 1); i++)
        tok[i] = (int32_t)td_rng_below(&rng, V);
    int32_t x[B * T], y[B * T];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            x[b * T + t] = tok[b * (T + 1) + t];
            y[b * T + t] = tok[b * (T + 1) + t + 1];
        }
    td_adamw_params hp = {0.9f, 0.95f, 1e-8f, 0.1f};
    double times[256], opt_time = 0;
    for (int it = 0; it < warmup + steps; it++) {
        if (it == warmup) td_model_profile_enable(m, 1);
        double t0 = td_time_now(), loss;
        td_model_forward(m, x, y, B, T, &loss); /* gradients are zero: the fused step zeroes */
        td_model_backward(m, 1.0);
        double t1 = td_time_now();
        double norm = td_grad_norm(td_model_grads(m), np);
        td_adamw_step_fused(m, am, av, &hp, 3e-4, it + 1, td_clip_scale(norm, 1.0));
        /* bf16: the fused step also writes the bf16 working copy (counted) */
        double t2 = td_time_now();
        if (it >= warmup) {
            times[it - warmup] = t2 - t0;
            opt_time += t2 - t1;
        }
    }
    qsort(times, (size_t)steps, sizeof(double), cmp_d);
    double med = times[steps / 2];
    r->ms_median = med * 1e3;
    r->tok_s = B * T / med;
    r->gflops = td_model_train_flops_per_token(m, T) * r->tok_s / 1e9;
    r->params = (double)np;
    const double *p = td_model_profile(m);
    for (int k = 0; k < TD_PROF_COUNT; k++)
        r->prof[k] = p[k] / steps;
    r->prof[TD_PROF_COUNT] = opt_time / steps;
    r->ok = 1;
    free(am);
    free(av);
    free(tok);
    td_model_free(&m);
}

/* Forks a child for one shape; returns its result and peak RSS (bytes). */
static result bench_tandem(const shape *s, int warmup, int steps, int bf16, long *peak_rss) {
    int fd[2];
    result r = {0};
    if (pipe(fd) != 0) return r;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        result cr;
        run_tandem(s, warmup, steps, bf16, &cr);
        ssize_t w = write(fd[1], &cr, sizeof cr);
        _exit(w == (ssize_t)sizeof cr ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], &r, sizeof r);
    close(fd[0]);
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    if (got != (ssize_t)sizeof r || !WIFEXITED(status) || WEXITSTATUS(status) != 0) r.ok = 0;
    *peak_rss = ru.ru_maxrss * 1024L;
    return r;
}

static int bench_torch(const shape *s, int warmup, int steps, int threads, int autocast,
                       double *tok_s, long *peak_rss, char *version, size_t vn) {
    char cmd[1024];
    /* glibc's malloc returns PyTorch's per-step buffers to the kernel and faults them in
     * again every step (measured: ~40 % of its step time in page faults here); these two
     * settings keep the memory, which is PyTorch's best configuration on this machine. */
    snprintf(cmd, sizeof cmd,
             "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 "
             "/usr/bin/python3 bench/torch_train.py --json --arch %s --layers %d --heads %d "
             "--kv-heads %d --embd %d --ffn %d --vocab %d --batch %d --seq %d --steps %d "
             "--warmup %d --threads %d --positions %d%s",
             s->arch == TD_ARCH_GPT2 ? "gpt2" : "llama", s->L, s->NH, s->NKV, s->C, s->F, V, B, T,
             steps, warmup, threads, MAXT, autocast ? " --autocast-bf16" : "");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[8192], last[8192] = "";
    while (fgets(line, sizeof line, p))
        if (line[0] == '{') snprintf(last, sizeof last, "%s", line);
    int rc = pclose(p);
    cJSON *j = cJSON_Parse(last);
    if (rc != 0 || !j) {
        cJSON_Delete(j);
        return -1;
    }
    *tok_s = cJSON_GetObjectItem(j, "tokens_per_s")->valuedouble;
    *peak_rss = (long)cJSON_GetObjectItem(j, "peak_rss_bytes")->valuedouble;
    const cJSON *v = cJSON_GetObjectItem(j, "torch");
    snprintf(version, vn, "%s", cJSON_IsString(v) ? v->valuestring : "?");
    cJSON_Delete(j);
    return 0;
}

int main(int argc, char **argv) {
    td_blas_core_check(argv); /* the right OpenBLAS kernels for this CPU (blas_core.h) */
    int steps = 6, warmup = 2, threads = omp_get_max_threads(), torch = 1, json = 0, prof = 0;
    int precision = 0; /* 0 both, 1 fp32, 2 bf16 */
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
            i++;
            precision = !strcmp(argv[i], "fp32") ? 1 : !strcmp(argv[i], "bf16") ? 2 : 0;
        } else if (!strcmp(argv[i], "--no-torch"))
            torch = 0;
        else if (!strcmp(argv[i], "--profile"))
            prof = 1;
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: bench_train [--steps N] [--warmup N] [--threads N] "
                            "[--only NAME] [--precision fp32|bf16|both] [--no-torch] "
                            "[--profile] [--json]\n");
            return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0;
        }
    }
    if (steps < 1 || steps > 256 || warmup < 0) {
        fprintf(stderr, "bench_train: --steps must be 1..256\n");
        return 2;
    }
    omp_set_num_threads(threads);
    char kernels[512];
    td_cpu_kernels_describe(kernels, sizeof kernels);
    fprintf(json ? stderr : stdout, "kernels: %s\n", kernels);
    if (!json)
        printf("training throughput, B=%d T=%d vocab=%d, %d threads, median of %d/%d "
               "steps after %d warmup; ratios against PyTorch fp32 eager\n\n"
               "%-16s %9s %-11s %10s %9s %10s %9s\n",
               B, T, V, threads, steps, (steps + 1) / 2, warmup, "model", "params", "impl",
               "tokens/s", "GFLOP/s", "peak MiB", "vs torch");
    int failures = 0;
    for (size_t i = 0; i < sizeof g_shapes / sizeof g_shapes[0]; i++) {
        const shape *s = &g_shapes[i];
        if (only && !strstr(s->name, only)) continue;
        int st = s->steps_scale > 1 ? steps : (steps + 1) / 2;
        /* rows: tandem fp32, tandem bf16, PyTorch fp32 eager, PyTorch bf16 autocast; ratios
         * are against PyTorch fp32 eager, measured in this run */
        struct row {
            const char *impl;
            result r;
            long rss;
            int ok;
        } rows[4];
        memset(rows, 0, sizeof rows);
        rows[0].impl = "tandem";
        rows[1].impl = "tandem-bf16";
        rows[2].impl = "pytorch";
        rows[3].impl = "torch-bf16";
        char ver[64] = "";
        for (int k = 0; k < 2; k++) {
            if ((k == 0 && precision == 2) || (k == 1 && precision == 1)) continue;
            rows[k].r = bench_tandem(s, warmup, st, k, &rows[k].rss);
            rows[k].ok = rows[k].r.ok;
            if (!rows[k].ok) {
                fprintf(stderr, "bench_train: tandem %s run of %s failed\n", k ? "bf16" : "fp32",
                        s->name);
                failures++;
            }
        }
        for (int k = 2; k < 4 && torch; k++) {
            if (k == 3 && precision == 1) continue;
            double ptok = 0;
            rows[k].ok = bench_torch(s, warmup, st, threads, k == 3, &ptok, &rows[k].rss, ver,
                                     sizeof ver) == 0;
            rows[k].r.tok_s = ptok;
            if (!rows[k].ok)
                fprintf(stderr,
                        "bench_train: PyTorch %s run of %s failed (is python3-torch "
                        "installed?)\n",
                        k == 3 ? "autocast" : "fp32", s->name);
        }
        const result *any = rows[0].ok ? &rows[0].r : &rows[1].r;
        double flops_tok = any->tok_s > 0 ? any->gflops / any->tok_s : 0;
        double base = rows[2].ok ? rows[2].r.tok_s : 0;
        for (int k = 0; k < 4; k++) {
            if (!rows[k].ok) continue;
            const result *r = &rows[k].r;
            double ratio = base > 0 ? r->tok_s / base : 0;
            if (json) {
                printf("{\"model\": \"%s\", \"impl\": \"%s\", \"params\": %.0f, \"batch\": %d, "
                       "\"seq\": %d, \"threads\": %d, \"tokens_per_s\": %.1f, \"gflops\": %.2f, "
                       "\"peak_rss_bytes\": %ld, \"over_torch_fp32\": %.3f%s%s%s}\n",
                       s->name, rows[k].impl, any->params, B, T, threads, r->tok_s,
                       flops_tok * r->tok_s, rows[k].rss, ratio, k >= 2 ? ", \"torch\": \"" : "",
                       k >= 2 ? ver : "", k >= 2 ? "\"" : "");
            } else {
                printf("%-16s %8.1fM %-11s %10.1f %9.1f %10.0f",
                       k == 0 || (k == 1 && !rows[0].ok) ? s->name : "", any->params / 1e6,
                       rows[k].impl, r->tok_s, flops_tok * r->tok_s, rows[k].rss / 1048576.0);
                if (base > 0) printf(" %8.2fx", ratio);
                printf("\n");
            }
        }
        fflush(stdout);
        for (int k = 0; k < 2 && prof && !json; k++) {
            if (!rows[k].ok) continue;
            const result *r = &rows[k].r;
            double tot = 0;
            for (int q = 0; q <= TD_PROF_COUNT; q++)
                tot += r->prof[q];
            printf("    %s per-op time (ms per step, %% of step):", rows[k].impl);
            for (int q = 0; q <= TD_PROF_COUNT; q++) {
                if (q % 3 == 0) printf("\n    ");
                const char *nm = q < TD_PROF_COUNT ? td_prof_op_name((td_prof_op)q)
                                 : k               ? "clip+AdamW+bf16 copy"
                                                   : "clip+AdamW";
                printf("  %-22s %7.1f %4.1f%%", nm, r->prof[q] * 1e3, 100 * r->prof[q] / tot);
            }
            printf("\n");
        }
    }
    if (!json)
        printf("\nFLOPs per token = 6 N + 12 L C T (N = parameters in matrix products); "
               "reference on this machine: llm.c CPU ~340 and ~44 tokens/s on the two GPT-2 "
               "shapes.\n");
    return failures ? 1 : 0;
}
