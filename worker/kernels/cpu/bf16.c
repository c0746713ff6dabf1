/* bf16 products through oneDNN (see bf16.h). */
#include "worker/kernels/cpu/bf16.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef TD_NO_DNNL /* bench/gpu_check.sh builds the CPU reference without oneDNN */
#include <oneapi/dnnl/dnnl.h>
#endif

#include "common/grow.h"
#include "common/log.h"

/* ---------------------------------------------------------------------------------------- */
/* conversions */

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    if ((u & 0x7f800000u) == 0)
        return (uint16_t)((u >> 16) & 0x8000); /* denormal: signed 0,
                                                * as vcvtneps2bf16 does */
    u += 0x7fffu + ((u >> 16) & 1u);           /* RNE */
    return (uint16_t)(u >> 16);
}

void td_bf16_from_f32_serial(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512BF16__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
#endif
    for (; i < n; i++)
        dst[i] = f32_to_bf16(src[i]);
}

void td_bf16_from_f32(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < (n + 4095) / 4096; b++) {
        size_t i = b * 4096, end = i + 4096 < n ? i + 4096 : n;
        td_bf16_from_f32_serial(dst + i, src + i, end - i);
    }
}

void td_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

#ifndef TD_NO_DNNL
/* ---------------------------------------------------------------------------------------- */
/* oneDNN */

typedef struct {
    int M, N, K, ta, tb, acc, bias;
    dnnl_primitive_t prim; /* NULL: oneDNN has none for this CPU; use the fallback */
    dnnl_memory_t a, b, c, bi;
} entry;

static struct {
    int ready, native;
    dnnl_engine_t eng;
    dnnl_stream_t st;
    entry *e;
    int n;
    size_t cap;
    char isa[64];
    float *wa, *wb; /* fallback scratch */
    size_t wa_n, wb_n;
} g;

#define DNNL_TRY(x, what)                                                                          \
    do {                                                                                           \
        dnnl_status_t s_ = (x);                                                                    \
        if (s_ != dnnl_success)                                                                    \
            return td_error_set(TD_ERR_RUNTIME, "oneDNN %s failed (status %d) at %s:%d", what,     \
                                (int)s_, __FILE__, __LINE__);                                      \
    } while (0)

static const char *isa_name(dnnl_cpu_isa_t i) {
    switch ((int)i) {
    case dnnl_cpu_isa_avx512_core_amx:
        return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16:
        return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni:
        return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core:
        return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni:
        return "avx2_vnni";
    case dnnl_cpu_isa_avx2:
        return "avx2";
    case dnnl_cpu_isa_avx:
        return "avx";
    case dnnl_cpu_isa_sse41:
        return "sse41";
    default:
        return "unknown";
    }
}

static td_status create(entry *x) {
    dnnl_memory_desc_t a, b, c, bias;
    dnnl_dims_t ad = {x->M, x->K}, bd = {x->K, x->N}, cd = {x->M, x->N}, bid = {1, x->N};
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&a, 2, ad, dnnl_bf16, x->ta ? dnnl_ba : dnnl_ab), "md");
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&b, 2, bd, dnnl_bf16, x->tb ? dnnl_ba : dnnl_ab), "md");
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&c, 2, cd, dnnl_f32, dnnl_ab), "md");
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&bias, 2, bid, dnnl_f32, dnnl_ab), "md");
    dnnl_matmul_desc_t md;
    DNNL_TRY(dnnl_matmul_desc_init(&md, &a, &b, x->bias ? &bias : NULL, &c), "matmul desc");
    dnnl_primitive_attr_t attr = NULL;
    if (x->acc) { /* C += A B: a sum post-op */
        dnnl_post_ops_t po;
        DNNL_TRY(dnnl_primitive_attr_create(&attr), "attr");
        DNNL_TRY(dnnl_post_ops_create(&po), "post ops");
        DNNL_TRY(dnnl_post_ops_append_sum(po, 1.0f), "sum post op");
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po), "post ops");
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &md, attr, g.eng, NULL);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (st == dnnl_unimplemented) {
        x->prim = NULL;
        return TD_OK;
    }
    DNNL_TRY(st, "matmul primitive desc");
    DNNL_TRY(dnnl_primitive_create(&x->prim, pd), "matmul primitive");
    dnnl_primitive_desc_destroy(pd);
    DNNL_TRY(dnnl_memory_create(&x->a, &a, g.eng, DNNL_MEMORY_NONE), "memory");
    DNNL_TRY(dnnl_memory_create(&x->b, &b, g.eng, DNNL_MEMORY_NONE), "memory");
    DNNL_TRY(dnnl_memory_create(&x->c, &c, g.eng, DNNL_MEMORY_NONE), "memory");
    DNNL_TRY(dnnl_memory_create(&x->bi, &bias, g.eng, DNNL_MEMORY_NONE), "memory");
    return TD_OK;
}

td_status td_bf16_init(void) {
    if (g.ready) return TD_OK;
    DNNL_TRY(dnnl_engine_create(&g.eng, dnnl_cpu, 0), "engine");
    DNNL_TRY(dnnl_stream_create(&g.st, g.eng, dnnl_stream_default_flags), "stream");
    /* a probe shape tells whether this CPU has a bf16 matrix product in oneDNN */
    entry probe = {64, 64, 64, 0, 1, 0, 0, NULL, NULL, NULL, NULL, NULL};
    TD_TRY(create(&probe));
    g.native = probe.prim != NULL;
    if (probe.prim) {
        dnnl_primitive_destroy(probe.prim);
        dnnl_memory_destroy(probe.a);
        dnnl_memory_destroy(probe.b);
        dnnl_memory_destroy(probe.c);
        dnnl_memory_destroy(probe.bi);
    }
    const char *isa = isa_name(dnnl_get_effective_cpu_isa());
    snprintf(g.isa, sizeof g.isa, "%s", isa);
    if (g.native)
        TD_LOG_INFO("bf16: oneDNN matrix products on %s", isa);
    else
        TD_LOG_WARN("bf16: oneDNN has no bf16 matrix product on %s (no AVX-512 bf16 or AMX, or "
                    "ONEDNN_MAX_CPU_ISA); bf16 runs as fp32 sgemm on bf16-rounded inputs: the "
                    "same numbers, no speedup",
                    isa);
    g.ready = 1;
    return TD_OK;
}

const char *td_bf16_isa(void) {
    return g.isa;
}

const char *td_bf16_dnnl_isa(void) {
    return isa_name(dnnl_get_effective_cpu_isa());
}

#else
static struct {
    int ready, native;
    char isa[64];
    float *wa, *wb;
    size_t wa_n, wb_n;
} g;

td_status td_bf16_init(void) {
    if (!g.ready) {
        snprintf(g.isa, sizeof g.isa, "none (built without oneDNN)");
        g.ready = 1;
    }
    return TD_OK;
}

const char *td_bf16_isa(void) {
    return g.isa;
}

const char *td_bf16_dnnl_isa(void) {
    return "none (built without oneDNN)";
}
#endif

static float *grow(float **p, size_t *have, size_t need) {
    if (need > *have) {
        free(*p);
        *p = malloc(need * sizeof(float));
        *have = *p ? need : 0;
    }
    return *p;
}

td_status td_bf16_gemm(float *C, const uint16_t *A, const uint16_t *B, const float *bias, int M,
                       int N, int K, int transA, int transB, int accumulate) {
    TD_TRY(td_bf16_init());
    int hb = bias != NULL;
#ifndef TD_NO_DNNL
    entry *x = NULL;
    for (int i = 0; i < g.n && !x; i++) {
        entry *e = &g.e[i];
        if (e->M == M && e->N == N && e->K == K && e->ta == transA && e->tb == transB &&
            e->acc == accumulate && e->bias == hb)
            x = e;
    }
    if (!x) {
        TD_TRY(TD_GROW(g.e, g.cap, (size_t)g.n + 1));
        x = &g.e[g.n];
        memset(x, 0, sizeof *x);
        *x = (entry){M, N, K, transA, transB, accumulate, hb, NULL, NULL, NULL, NULL, NULL};
        TD_TRY(g.native ? create(x) : TD_OK);
        g.n++;
    }
    if (x->prim) {
        DNNL_TRY(dnnl_memory_set_data_handle(x->a, (void *)A), "set handle");
        DNNL_TRY(dnnl_memory_set_data_handle(x->b, (void *)B), "set handle");
        DNNL_TRY(dnnl_memory_set_data_handle(x->c, C), "set handle");
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, x->a},
                                   {DNNL_ARG_WEIGHTS, x->b},
                                   {DNNL_ARG_DST, x->c},
                                   {DNNL_ARG_BIAS, x->bi}};
        if (hb) DNNL_TRY(dnnl_memory_set_data_handle(x->bi, (void *)bias), "set handle");
        DNNL_TRY(dnnl_primitive_execute(x->prim, g.st, hb ? 4 : 3, args), "matmul");
        DNNL_TRY(dnnl_stream_wait(g.st), "stream wait");
        return TD_OK;
    }
#endif
    /* fallback: widen the bf16 operands and use sgemm (identical rounding of the inputs) */
    float *a = grow(&g.wa, &g.wa_n, (size_t)M * K), *b = grow(&g.wb, &g.wb_n, (size_t)K * N);
    if (!a || !b) return td_error_set(TD_ERR_NOMEM, "out of memory for bf16 fallback scratch");
    td_bf16_to_f32(a, A, (size_t)M * K);
    td_bf16_to_f32(b, B, (size_t)K * N);
    if (hb && !accumulate)
        for (int i = 0; i < M; i++)
            memcpy(C + (size_t)i * N, bias, sizeof(float) * (size_t)N);
    else if (hb)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * N + j] += bias[j];
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, a, transA ? M : K, b,
                transB ? K : N, hb || accumulate ? 1.0f : 0.0f, C, N);
    return TD_OK;
}
