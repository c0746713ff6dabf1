/* Decode benchmark: tokens/s of the inference forward (paged KV cache) at batch 1 and 16,
 * fp32 and int8 weight-only, and batch 1 against the memory-bandwidth roofline:
 * roofline time per token = bytes of weights one decode step reads / triad bandwidth
 * (measured here, STREAM convention: 3 arrays x 4 bytes per element of a[i] = b[i] + s c[i]).
 * Model: llama, hidden 768, 8 layers, 12 heads, intermediate 2048, vocab 8192 (69 M
 * parameters, 277 MB in fp32: far beyond the caches), random weights.
 * Rows: fp32; bf16 = weights rounded to bf16, widened in registers (fp32 accumulation);
 * int8 = int8 weights, lm_head too (tandem serve --int8; GPTQ changes which integers, not
 *        the speed, so the weights here are rounded to nearest), converted to float in the
 *        product (fp32 accumulation);
 * int8v = activations quantized too, int8 x int8 products accumulated in int32 (VNNI).
 * Then multi-adapter serving at batch 16: the fp32 base alone vs the same base serving three
 * LoRA adapters (r 16 on all seven matrices, 2.7 % of the parameters each) with the 16
 * sequences spread over them -- the base products once for all rows, each row's low-rank
 * product added (worker/infer/adapters.c) -- alternated, best of 3 rounds each.
 * usage: bench_decode [--steps N] [--json] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/timeutil.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/lora.h"
#include "worker/model/model.h"

static double triad_gbs(void) {
    size_t n = 32u << 20;
    float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        a[i] = 0;
        b[i] = 1;
        c[i] = 2;
    }
    double best = 1e9;
    for (int r = 0; r < 10; r++) { /* best of 10 */
        double t0 = td_time_now();
#pragma omp parallel for
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + 3.0f * c[i];
        double dt = td_time_now() - t0;
        if (dt < best) best = dt;
    }
    double gbs = 12.0 * (double)n / best / 1e9; /* 3 float arrays: 12 bytes an element */
    free(a);
    free(b);
    free(c);
    return gbs;
}

/* Prefill 16 tokens per sequence, then time `steps` decode steps; returns tokens/s. With nad
 * adapters, sequence b asks for adapter 1 + b % nad. */
static double decode(td_infer_model *m, int B, int steps, int nad) {
    int bt = 16, per = (16 + steps + bt) / bt;
    td_kv_cache *kv;
    if (td_kv_cache_new(m, bt, (size_t)(per * B), &kv) != TD_OK) return 0;
    td_infer_plan(m, 16 * B, B);
    const td_model_config *c = td_infer_model_config(m);
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)(per * B));
    for (int i = 0; i < per * B; i++)
        blocks[i] = i;
    int32_t *tok = malloc(sizeof(int32_t) * 16 * (size_t)B);
    td_rng r;
    td_rng_seed(&r, 1);
    for (int i = 0; i < 16 * B; i++)
        tok[i] = (int32_t)td_rng_below(&r, (uint64_t)c->vocab_size);
    td_infer_seg *sg = malloc(sizeof *sg * (size_t)B);
    float *logits = malloc(sizeof(float) * (size_t)B * c->vocab_size);
    for (int b = 0; b < B; b++)
        sg[b] = (td_infer_seg){tok + 16 * b, 16, 0, blocks + per * b, nad ? 1 + b % nad : 0};
    td_infer_forward(m, kv, sg, B, logits);
    double t0 = td_time_now();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++)
            sg[b] = (td_infer_seg){tok + 16 * b + s % 16, 1, 16 + s, blocks + per * b,
                                   nad ? 1 + b % nad : 0};
        td_infer_forward(m, kv, sg, B, logits);
    }
    double dt = td_time_now() - t0;
    free(blocks);
    free(tok);
    free(sg);
    free(logits);
    td_kv_cache_free(&kv);
    return (double)B * steps / dt;
}

int main(int argc, char **argv) {
    td_blas_core_check(argv); /* the right OpenBLAS kernels for this CPU (blas_core.h) */
    int steps = 32, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: bench_decode [--steps N] [--json]\n");
            return 2;
        }
    }
    td_model_config c = {.arch = TD_ARCH_LLAMA,
                         .hidden_size = 768,
                         .intermediate_size = 2048,
                         .num_hidden_layers = 8,
                         .num_attention_heads = 12,
                         .num_key_value_heads = 12,
                         .vocab_size = 8192,
                         .max_position_embeddings = 512,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000};
    td_model *w;
    td_infer_model *m;
    if (td_model_new(&c, &w) != TD_OK) return 1;
    td_model_init_random(w, 1);
    if (td_infer_model_new(w, &m) != TD_OK) return 1;
    double bw = triad_gbs();
    size_t f32, i8, rf, ri;
    td_infer_weight_bytes(w, 1, &f32, &i8, &rf, &ri);
    char kernels[512];
    td_cpu_kernels_describe(kernels, sizeof kernels);
    fprintf(json ? stderr : stdout, "kernels: %s\n", kernels);
    if (!json)
        printf("decode, llama 768x8 (%.1f M params, %.0f MB fp32), %d threads, %d steps after a "
               "16-token prefill\ntriad bandwidth %.1f GB/s\n\n%-6s %6s %12s %14s %10s\n",
               td_model_num_params(w) / 1e6, f32 / 1e6, omp_get_max_threads(), steps, bw, "weights",
               "batch", "tokens/s", "MB read/token", "roofline");
    static const char *names[4] = {"fp32", "bf16", "int8", "int8v"};
    td_model *wb;
    td_infer_model *mb; /* bf16 weights: a second copy of the same model */
    if (td_model_new(&c, &wb) != TD_OK) return 1;
    td_model_init_random(wb, 1);
    if (td_infer_model_new(wb, &mb) != TD_OK) return 1;
    if (td_infer_quantize_bf16(mb) != TD_OK) return 1;
    size_t rb = td_infer_read_bytes_bf16(wb);
    /* multi-adapter rows first, while m is fp32 (its int8 rows come below) */
    size_t lora_params = 0;
    for (int k = 0; k < 3; k++) {
        td_lora_config lc = {.r = 16, .alpha = 32, .n_targets = 7};
        static const char *t[7] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                   "gate_proj", "up_proj", "down_proj"};
        for (int i = 0; i < 7; i++)
            snprintf(lc.targets[i], sizeof lc.targets[i], "%s", t[i]);
        td_lora *lo;
        int idx;
        if (td_lora_new(&c, &lc, "bench", 1 + (uint64_t)k, &lo) != TD_OK) return 1;
        td_rng r;
        td_rng_seed(&r, 7 + (uint64_t)k);
        float *p = td_lora_params(lo);
        for (size_t i = 0; i < td_lora_num_params(lo); i++)
            p[i] = (2 * td_rng_uniform(&r) - 1) * 0.01f;
        lora_params = td_lora_num_params(lo);
        if (td_infer_add_adapter(m, lo, &idx) != TD_OK) return 1;
        td_lora_free(&lo);
    }
    double base16 = 0, lora16 = 0;
    for (int round = 0; round < 3; round++) {
        double a = decode(m, 16, steps, 0), b = decode(m, 16, steps, 3);
        base16 = a > base16 ? a : base16;
        lora16 = b > lora16 ? b : lora16;
    }
    double fp32_b1 = 0;
    for (int q = 0; q < 4; q++) {
        td_infer_model *mm = q == 1 ? mb : m;
        if (q == 2) td_infer_quantize_int8(m, 1);
        if (q == 3) td_infer_set_int8_vnni(m, 1);
        size_t rd = q == 0 ? rf : q == 1 ? rb : ri;
        for (int B = 1; B <= 16; B *= 16) {
            double tps = decode(mm, B, steps, 0);
            if (q == 0 && B == 1) fp32_b1 = tps;
            double roof = B == 1 ? (rd / (bw * 1e9)) * tps : 0; /* ideal s/token over actual */
            if (json)
                printf("{\"bench\": \"decode\", \"weights\": \"%s\", \"batch\": %d, "
                       "\"tokens_per_s\": %.2f, \"bytes_per_token\": %zu, \"triad_gbs\": %.2f, "
                       "\"roofline\": %.3f}\n",
                       names[q], B, tps, rd, bw, roof);
            else if (B == 1)
                printf("%-6s %6d %12.1f %14.1f %9.0f%%   %.2fx fp32\n", names[q], B, tps, rd / 1e6,
                       100 * roof, tps / fp32_b1);
            else
                printf("%-6s %6d %12.1f %14s %10s\n", names[q], B, tps, "", "");
        }
    }
    if (json) {
        printf("{\"bench\": \"decode\", \"weights\": \"fp32 base\", \"batch\": 16, "
               "\"tokens_per_s\": %.2f}\n",
               base16);
        printf("{\"bench\": \"decode\", \"weights\": \"fp32 + 3 LoRA\", \"batch\": 16, "
               "\"tokens_per_s\": %.2f, \"vs_base\": %.3f}\n",
               lora16, lora16 / base16);
    } else {
        printf("\nmulti-adapter serving, batch 16 (alternated, best of 3 each; adapters r 16 on "
               "all seven matrices, %zu parameters = %.1f %% of the base each)\n",
               lora_params, 100.0 * (double)lora_params / (double)td_model_num_params(w));
        printf("%-22s %6d %12.1f\n", "fp32 base alone", 16, base16);
        printf("%-22s %6d %12.1f   %.2fx the base alone\n", "fp32 + 3 adapters", 16, lora16,
               lora16 / base16);
    }
    td_infer_model_free(&m);
    td_infer_model_free(&mb);
    return 0;
}
