/* Knowledge distillation's loss and gradient (td_op_kd, worker/kernels/cpu/ops.h) against
 * PyTorch (tests/reference/make_kd_fixture.py: F.kl_div of log_softmax(s / tau) and
 * log_softmax(t / tau), log_target=True, times tau^2, mixed with the cross-entropy, the
 * gradient by autograd in float64): forward and reverse KL, several tau, top-k truncated
 * teachers, alpha mixes, a row left out. float32 within 1e-5 (the bar), float64
 * within 1e-10 (the formulas themselves). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/model/safetensors.h"

#define FIX "tests/reference/fixtures/kd/reference.safetensors"

static const struct {
    const char *name;
    double tau;
    int reverse, topk;
    double alpha;
} k_cases[] = {
    {"fwd", 2.0, 0, 0, 0.0},          {"rev", 2.0, 1, 0, 0.0},      {"fwd_top5", 1.5, 0, 5, 0.0},
    {"rev_top5", 1.5, 1, 5, 0.0},     {"fwd_tau1", 1.0, 0, 0, 0.0}, {"mix_fwd", 2.0, 0, 0, 0.3},
    {"mix_rev_top8", 3.0, 1, 8, 0.6},
};

static double *read_f64(const td_st_file *f, const char *name, size_t n) {
    const td_st_entry *e = td_st_find(f, name);
    REQUIRE(e && e->dtype == TD_DT_F64, "%s: missing or not F64", name);
    double *x = malloc(n * sizeof *x);
    memcpy(x, td_st_data(f, e), n * sizeof *x);
    return x;
}

int main(void) {
    td_st_file *f;
    REQUIRE(td_st_open(FIX, &f) == TD_OK, "%s", td_error_message());
    const td_st_entry *es = td_st_find(f, "s"), *et = td_st_find(f, "t"),
                      *eg = td_st_find(f, "targets");
    REQUIRE(es && et && eg && es->ndim == 2, "the fixture lacks s, t or targets");
    int N = (int)es->shape[0], V = (int)es->shape[1];
    size_t NV = (size_t)N * V;
    float *s = malloc(NV * sizeof *s), *t = malloc(NV * sizeof *t);
    REQUIRE(td_st_read_f32(f, es, s, 0) == TD_OK && td_st_read_f32(f, et, t, 0) == TD_OK, "read");
    const int32_t *tg = td_st_data(f, eg);
    double *s64 = malloc(NV * sizeof *s64), *t64 = malloc(NV * sizeof *t64);
    for (size_t i = 0; i < NV; i++)
        s64[i] = s[i], t64[i] = t[i];
    float *g = malloc(NV * sizeof *g), *gce = malloc(NV * sizeof *gce), lse[64];
    double *g64 = malloc(NV * sizeof *g64), *gce64 = malloc(NV * sizeof *gce64), lse64[64];
    REQUIRE(N <= 64, "N %d", N);

    printf("%-13s %5s %-7s %5s %5s  %14s %14s %9s %9s %9s\n", "case", "tau", "KL", "top-k", "alpha",
           "loss (torch)", "loss (tandem)", "|dloss|", "max|dg|32", "max|dg|64");
    for (size_t c = 0; c < sizeof k_cases / sizeof *k_cases; c++) {
        char n1[64], n2[64];
        snprintf(n1, sizeof n1, "loss.%s", k_cases[c].name);
        snprintf(n2, sizeof n2, "grad.%s", k_cases[c].name);
        double *rl = read_f64(f, n1, 1), *rg = read_f64(f, n2, NV);
        double a = k_cases[c].alpha, kdw = a > 0 ? 1 - a : 1;
        /* float32 */
        double loss = td_op_kd_f32(g, s, t, tg, N, V, k_cases[c].tau, k_cases[c].reverse,
                                   k_cases[c].topk, kdw);
        double loss64 = td_op_kd_f64(g64, s64, t64, tg, N, V, k_cases[c].tau, k_cases[c].reverse,
                                     k_cases[c].topk, kdw);
        loss *= kdw, loss64 *= kdw;
        if (a > 0) {
            loss += a * td_op_crossentropy_fwd_f32(lse, s, tg, N, V);
            td_op_crossentropy_bwd_f32(gce, s, lse, tg, N, V, a);
            loss64 += a * td_op_crossentropy_fwd_f64(lse64, s64, tg, N, V);
            td_op_crossentropy_bwd_f64(gce64, s64, lse64, tg, N, V, a);
            for (size_t i = 0; i < NV; i++)
                g[i] += gce[i], g64[i] += gce64[i];
        }
        double dg = 0, dg64 = 0;
        for (size_t i = 0; i < NV; i++) {
            dg = fmax(dg, fabs((double)g[i] - rg[i]));
            dg64 = fmax(dg64, fabs(g64[i] - rg[i]));
        }
        double dl = fabs(loss - rl[0]);
        printf("%-13s %5.1f %-7s %5d %5.1f  %14.10f %14.10f %9.2e %9.2e %9.2e\n", k_cases[c].name,
               k_cases[c].tau, k_cases[c].reverse ? "reverse" : "forward", k_cases[c].topk, a,
               rl[0], loss, dl, dg, dg64);
        CHECK(dl <= 1e-5 * fmax(1, fabs(rl[0])), "%s: loss %.10f, torch %.10f", k_cases[c].name,
              loss, rl[0]);
        CHECK(dg <= 1e-5, "%s: float32 gradient off by %.3g", k_cases[c].name, dg);
        CHECK(fabs(loss64 - rl[0]) <= 1e-10 * fmax(1, fabs(rl[0])) && dg64 <= 1e-10,
              "%s: float64 loss %.15f (torch %.15f), gradient off by %.3g", k_cases[c].name, loss64,
              rl[0], dg64);
        /* the row left out has a zero gradient */
        for (int n = 0; n < N; n++)
            if (tg[n] < 0)
                for (int j = 0; j < V; j++)
                    CHECK(g[(size_t)n * V + j] == 0, "%s: row %d not counted but has a gradient",
                          k_cases[c].name, n);
        free(rl);
        free(rg);
    }
    /* no rows counted: loss 0, gradient 0 */
    int32_t none[64];
    for (int n = 0; n < N; n++)
        none[n] = -1;
    double l0 = td_op_kd_f32(g, s, t, none, N, V, 2.0, 0, 0, 1.0);
    int nz = 0;
    for (size_t i = 0; i < NV; i++)
        nz += g[i] != 0;
    CHECK(l0 == 0 && nz == 0, "no rows counted: loss %g, %d nonzero gradients", l0, nz);
    td_st_close(&f);
    free(s), free(t), free(s64), free(t64), free(g), free(gce), free(g64), free(gce64);
    return test_done("test_kd_reference");
}
