/* GPU training throughput: GPT-2 124M (L12, C768, 12 heads, vocab 50257, 1024 positions)
 * trained on one GPU with tandem's CUDA kernels (worker/model/model_cuda.c): forward,
 * backward, global-norm clip, AdamW, bf16 products with fp32 masters. Prints tokens/s,
 * ms per step, MFU = (6 N + 6 L C T) tokens/s / peak, and the step's two roofline times:
 * FLOP-bound (FLOPs / peak) and byte-bound (an estimate of the bytes a step must move /
 * memory bandwidth: per parameter 4 B bf16-weight reads x 3, 8 B gradient read+write,
 * 32 B AdamW (p, m, v, g read and written), 2 B bf16 copy; activations written once and
 * read twice). Peak and bandwidth default to the H200's data-sheet figures.
 * usage: bench_gpu [--batch B] [--seq T] [--steps N] [--peak-tflops F] [--hbm-tbs F] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rng.h"
#include "worker/backend/backend.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/kernels/cuda/cuda_ops.h"
#include "worker/model/model.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int B = 16, T = 1024, steps = 10;
    double peak = 989.0, hbm = 4.8;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc)
            T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--peak-tflops") && i + 1 < argc)
            peak = atof(argv[++i]);
        else if (!strcmp(argv[i], "--hbm-tbs") && i + 1 < argc)
            hbm = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_gpu [--batch B] [--seq T] [--steps N] "
                            "[--peak-tflops F] [--hbm-tbs F]\n");
            return 2;
        }
    }
    char why[256] = "";
    if (td_backend_devices("cuda", why, sizeof why) == 0) {
        fprintf(stderr, "bench_gpu: no usable GPU (%s)\n", why);
        return 77;
    }
    td_backend *be;
    td_model *m;
    td_model_config c = {.arch = TD_ARCH_GPT2,
                         .hidden_size = 768,
                         .intermediate_size = 3072,
                         .num_hidden_layers = 12,
                         .num_attention_heads = 12,
                         .num_key_value_heads = 12,
                         .vocab_size = 50257,
                         .max_position_embeddings = 1024,
                         .norm_eps = 1e-5,
                         .tie_word_embeddings = 1};
    if (T > c.max_position_embeddings) T = c.max_position_embeddings;
    if (td_backend_new("cuda", 0, &be) != TD_OK || td_model_new(&c, &m) != TD_OK) {
        fprintf(stderr, "bench_gpu: %s\n", td_error_message());
        return 1;
    }
    td_model_init_random(m, 1);
    size_t np = td_model_num_params(m);
    void *am = NULL, *av = NULL;
    if (td_model_plan(m, B, T, 1) != TD_OK || td_model_to_backend(m, be) != TD_OK ||
        td_backend_alloc(be, &am, np * 4) != TD_OK || td_backend_alloc(be, &av, np * 4) != TD_OK ||
        be->ops->zero(be, am, np * 4) != TD_OK || be->ops->zero(be, av, np * 4) != TD_OK) {
        fprintf(stderr, "bench_gpu: %s\n", td_error_message());
        return 1;
    }
    int N = B * T;
    int32_t *tok = malloc(4 * (size_t)N), *tgt = malloc(4 * (size_t)N);
    td_rng r;
    td_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)td_rng_below(&r, 50257);
        tgt[i] = (int32_t)td_rng_below(&r, 50257);
    }
    double *ms = malloc(sizeof(double) * (size_t)(steps + 2)), loss = 0, first = 0, gn = 0;
    for (int s = 0; s < steps + 2; s++) { /* 2 warmup steps */
        double t0 = now();
        if (td_model_forward(m, tok, tgt, B, T, &loss) != TD_OK ||
            td_model_backward(m, 1.0) != TD_OK || td_model_grad_norm(m, &gn) != TD_OK ||
            td_model_adamw(m, am, av, 0, np, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1,
                           gn > 1.0 ? (float)(1.0 / (gn + 1e-6)) : 1.0f, 1) != TD_OK) {
            fprintf(stderr, "bench_gpu: step %d: %s\n", s, td_error_message());
            return 1;
        }
        ms[s] = (now() - t0) * 1e3;
        if (s == 0) first = loss;
    }
    double sum = 0;
    for (int s = 2; s < steps + 2; s++)
        sum += ms[s];
    double step_ms = sum / steps, tps = N / (step_ms / 1e3);
    size_t nmat = np - (size_t)1024 * 768; /* wpe is a lookup, not a product */
    double flops_tok = 6.0 * (double)nmat + 6.0 * 12 * 768 * (double)T;
    double flops_step = flops_tok * N;
    double act_bytes = (double)N * 4 * (12 * (768 * 6.0 + 3 * 768 + 12 * 64 + 3072 * 2) + 50257);
    double bytes_step = (double)np * (12 + 8 + 32 + 2) + act_bytes * 3;
    printf("GPU %s, GPT-2 124M (%zu parameters), B=%d T=%d, %d timed steps after 2\n",
           be->ops->describe(be), np, B, T, steps);
    printf("| measure | value |\n|---|---|\n");
    printf("| tokens/s | %.0f |\n| ms per step | %.2f |\n", tps, step_ms);
    printf("| MFU (peak %.0f TFLOP/s bf16) | %.1f %% |\n", peak,
           100 * flops_tok * tps / (peak * 1e12));
    printf("| FLOP-bound step time | %.2f ms (%.2f TFLOP a step) |\n",
           flops_step / (peak * 1e12) * 1e3, flops_step / 1e12);
    printf("| byte-bound step time (estimate) | %.2f ms (%.1f GB a step at %.1f TB/s) |\n",
           bytes_step / (hbm * 1e12) * 1e3, bytes_step / 1e9, hbm);
    printf("| loss, first -> last step (same batch) | %.4f -> %.4f |\n", first, loss);
    /* decode: 16-token prompts, then 64 timed steps of one token per sequence, with the
     * serving model (which takes m) on the same backend */
    td_backend_release(be, am);
    td_backend_release(be, av);
    td_infer_model *im;
    if (td_infer_model_new(m, &im) != TD_OK) {
        fprintf(stderr, "bench_gpu: %s\n", td_error_message());
        return 1;
    }
    for (int nb = 1; nb <= 32; nb *= 32) {
        int bt = 16, per = (16 + 64 + bt) / bt;
        td_kv_cache *kv;
        if (td_kv_cache_new(im, bt, (size_t)per * nb, &kv) != TD_OK ||
            td_infer_plan(im, 16 * nb, nb) != TD_OK) {
            fprintf(stderr, "bench_gpu: %s\n", td_error_message());
            return 1;
        }
        int32_t *blocks = malloc(sizeof(int32_t) * (size_t)per * nb);
        for (int i = 0; i < per * nb; i++)
            blocks[i] = i;
        td_infer_seg *sg = malloc(sizeof *sg * (size_t)nb);
        float *lg = malloc(sizeof(float) * (size_t)nb * 50257);
        int32_t *next = malloc(sizeof(int32_t) * (size_t)nb);
        for (int s = 0; s < nb; s++)
            sg[s] = (td_infer_seg){tok + 16 * s, 16, 0, blocks + per * s, 0};
        td_status st = td_infer_forward(im, kv, sg, nb, lg);
        double t0 = now();
        for (int k = 0; st == TD_OK && k < 64; k++) {
            for (int s = 0; s < nb; s++) {
                next[s] = (int32_t)((k * 31 + s) % 50257);
                sg[s] = (td_infer_seg){&next[s], 1, 16 + k, blocks + per * s, 0};
            }
            st = td_infer_forward(im, kv, sg, nb, lg);
        }
        double dt = now() - t0;
        if (st != TD_OK) {
            fprintf(stderr, "bench_gpu: decode: %s\n", td_error_message());
            return 1;
        }
        printf("| decode batch %d | %.0f tokens/s (%.2f ms a step) |\n", nb, 64.0 * nb / dt,
               dt / 64 * 1e3);
        td_kv_cache_free(&kv);
        free(blocks);
        free(sg);
        free(lg);
        free(next);
    }
    td_infer_model_free(&im);
    td_backend_free(&be);
    free(tok);
    free(tgt);
    free(ms);
    return 0;
}
