/* float64 instantiation of the kernels in ops_impl.inc, for the finite-difference tests:
 * the row helpers that vec_f32.h vectorizes are plain loops over libm here. */
#include <math.h>
#include <omp.h>
#include <stddef.h>

static double exp_sum_f64(const double *x, int n, double shift) {
    double s = 0;
    for (int j = 0; j < n; j++)
        s += exp(x[j] - shift);
    return s;
}

static void exp_scale_f64(double *d, const double *x, int n, double shift, double scale) {
    for (int j = 0; j < n; j++)
        d[j] = exp(x[j] - shift) * scale;
}

#define K_GELU 0.7978845608028654
#define C_GELU 0.044715

static void gelu_fwd_row_f64(double *out, const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        out[i] = 0.5 * v * (1 + tanh(K_GELU * (v + C_GELU * v * v * v)));
    }
}

static void gelu_bwd_row_f64(double *dx, const double *dout, const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v = x[i], th = tanh(K_GELU * (v + C_GELU * v * v * v));
        double du = K_GELU * (1 + 3 * C_GELU * v * v);
        dx[i] = (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * du) * dout[i];
    }
}

static void swiglu_fwd_row_f64(double *h, const double *g, const double *u, int F) {
    for (int i = 0; i < F; i++)
        h[i] = g[i] / (1 + exp(-g[i])) * u[i];
}

static void swiglu_bwd_row_f64(double *dg, double *du, const double *dh, const double *g,
                               const double *u, int F) {
    for (int i = 0; i < F; i++) {
        double sig = 1 / (1 + exp(-g[i]));
        du[i] = dh[i] * g[i] * sig;
        dg[i] = dh[i] * u[i] * sig * (1 + g[i] * (1 - sig));
    }
}

#define real double
#define S(name) name##_f64
#define GEMM cblas_dgemm
#define SQRT sqrt
#include "worker/kernels/cpu/ops_impl.inc"
