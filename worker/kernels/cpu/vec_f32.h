/* Row helpers for the float32 kernels: exp-based element-wise work written with AVX-512
 * intrinsics (GCC does not vectorize a polynomial exp with clamps and rounding: measured
 * 61 ms scalar vs 2.7 ms AVX-512 for 12.9 M exps), with a scalar path for other CPUs and
 * for loop tails. exp is Cephes' expf: range reduction by ln 2 in two parts, a degree-6
 * polynomial, scaling by 2^n; relative error about 2e-7 on the clamped range
 * [-87.3, 88.7] (below it returns ~1e-38 instead of 0, invisible to softmax/sigmoid).
 * ops_f64.c defines the same helpers in plain float64 for the finite-difference tests. */
#ifndef TD_VEC_F32_H
#define TD_VEC_F32_H

#include <stddef.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define TD_EXP_P0 1.9875691500e-4f
#define TD_EXP_P1 1.3981999507e-3f
#define TD_EXP_P2 8.3334519073e-3f
#define TD_EXP_P3 4.1665795894e-2f
#define TD_EXP_P4 1.6666665459e-1f
#define TD_EXP_P5 5.0000001201e-1f

static inline float td_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float t = x * 1.44269504088896341f;
    int32_t ni = (int32_t)(t + (t >= 0 ? 0.5f : -0.5f));
    float n = (float)ni;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = TD_EXP_P0;
    p = p * r + TD_EXP_P1;
    p = p * r + TD_EXP_P2;
    p = p * r + TD_EXP_P3;
    p = p * r + TD_EXP_P4;
    p = p * r + TD_EXP_P5;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = (ni + 127) << 23};
    return p * scale.f;
}

#ifdef __AVX512F__
static inline __m512 td_exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(TD_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TD_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TD_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TD_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TD_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TD_EXP_P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

/* Returns sum_j exp(x[j] - shift). */
static inline float exp_sum_f32(const float *x, int n, float shift) {
    int j = 0;
    float s = 0;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps(), sh = _mm512_set1_ps(shift);
    for (; j + 16 <= n; j += 16)
        acc = _mm512_add_ps(acc, td_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), sh)));
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; j < n; j++)
        s += td_expf(x[j] - shift);
    return s;
}

/* d[j] = exp(x[j] - shift) * scale (d may alias x). */
static inline void exp_scale_f32(float *d, const float *x, int n, float shift, float scale) {
    int j = 0;
#ifdef __AVX512F__
    __m512 sh = _mm512_set1_ps(shift), sc = _mm512_set1_ps(scale);
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(d + j,
                         _mm512_mul_ps(td_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), sh)), sc));
#endif
    for (; j < n; j++)
        d[j] = td_expf(x[j] - shift) * scale;
}

#define TD_GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define TD_GELU_C 0.044715f

/* GELU (tanh form), with tanh(u) = 1 - 2 / (exp(2u) + 1). */
static inline void gelu_fwd_row_f32(float *out, const float *x, size_t n) {
    size_t i = 0;
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f),
                 half = _mm512_set1_ps(0.5f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(TD_GELU_K),
                                 _mm512_fmadd_ps(_mm512_set1_ps(TD_GELU_C), v3, v));
        __m512 th = _mm512_sub_ps(
            one, _mm512_div_ps(two, _mm512_add_ps(td_exp512(_mm512_mul_ps(two, u)), one)));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, th)));
    }
#endif
    for (; i < n; i++) {
        float v = x[i], u = TD_GELU_K * (v + TD_GELU_C * v * v * v);
        float th = 1.0f - 2.0f / (td_expf(2.0f * u) + 1.0f);
        out[i] = 0.5f * v * (1.0f + th);
    }
}

static inline void gelu_bwd_row_f32(float *dx, const float *dout, const float *x, size_t n) {
    size_t i = 0;
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f),
                 half = _mm512_set1_ps(0.5f);
    const __m512 k = _mm512_set1_ps(TD_GELU_K), c = _mm512_set1_ps(TD_GELU_C),
                 c3 = _mm512_set1_ps(3.0f * TD_GELU_C);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i), v2 = _mm512_mul_ps(v, v);
        __m512 u = _mm512_mul_ps(k, _mm512_fmadd_ps(_mm512_mul_ps(c, v2), v, v));
        __m512 th = _mm512_sub_ps(
            one, _mm512_div_ps(two, _mm512_add_ps(td_exp512(_mm512_mul_ps(two, u)), one)));
        __m512 du = _mm512_mul_ps(k, _mm512_fmadd_ps(c3, v2, one));
        __m512 sech2 = _mm512_fnmadd_ps(th, th, one);
        __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(half, v), sech2), du,
                                   _mm512_mul_ps(half, _mm512_add_ps(one, th)));
        _mm512_storeu_ps(dx + i, _mm512_mul_ps(g, _mm512_loadu_ps(dout + i)));
    }
#endif
    for (; i < n; i++) {
        float v = x[i], u = TD_GELU_K * (v + TD_GELU_C * v * v * v);
        float th = 1.0f - 2.0f / (td_expf(2.0f * u) + 1.0f);
        float du = TD_GELU_K * (1.0f + 3.0f * TD_GELU_C * v * v);
        float g = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du;
        dx[i] = g * dout[i];
    }
}

/* h = silu(g) * u over one row of F. */
static inline void swiglu_fwd_row_f32(float *h, const float *g, const float *u, int F) {
    int i = 0;
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= F; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i);
        __m512 sig = _mm512_div_ps(
            one, _mm512_add_ps(one, td_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_mul_ps(gv, sig), _mm512_loadu_ps(u + i)));
    }
#endif
    for (; i < F; i++)
        h[i] = g[i] / (1.0f + td_expf(-g[i])) * u[i];
}

static inline void swiglu_bwd_row_f32(float *dg, float *du, const float *dh, const float *g,
                                      const float *u, int F) {
    int i = 0;
#ifdef __AVX512F__
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= F; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i), d = _mm512_loadu_ps(dh + i);
        __m512 sig = _mm512_div_ps(
            one, _mm512_add_ps(one, td_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        __m512 silu = _mm512_mul_ps(gv, sig);
        _mm512_storeu_ps(du + i, _mm512_mul_ps(d, silu));
        /* d silu / dg = sig (1 + g (1 - sig)) */
        __m512 ds = _mm512_mul_ps(sig, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, sig), one));
        _mm512_storeu_ps(dg + i, _mm512_mul_ps(_mm512_mul_ps(d, _mm512_loadu_ps(u + i)), ds));
    }
#endif
    for (; i < F; i++) {
        float sig = 1.0f / (1.0f + td_expf(-g[i]));
        du[i] = dh[i] * g[i] * sig;
        dg[i] = dh[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    }
}

#endif
