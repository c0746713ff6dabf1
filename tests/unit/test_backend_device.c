/* The device paths of the model and the serving model, run on this machine: a "pretend
 * device" — the CPU backend's operations with host_memory = 0 and bf16_only = 1 — makes the
 * model take every branch a GPU backend takes (parameters uploaded to backend memory,
 * bf16 forced, tokens and targets uploaded, gradients and moments in backend memory, the
 * host copy synced back; the serving model's backend-generic forward with index arrays and
 * a KV cache in backend memory). The CUDA kernels themselves are tests/gpu's business;
 * this checks the code around them.
 *   1. one training step on the pretend device equals the CPU model's bf16 step bit for bit
 *      (same kernels): loss, logits, gradients, gradient norm, parameters after AdamW;
 *   2. moving back to the CPU gives the parameters back with no plan and no bf16 copy;
 *   3. the device forward over a paged KV cache (chunked prefill of two sequences, then
 *      decodes) matches the CPU serving model's fp32 forward within bf16 rounding, and the
 *      training forward on the same device (the same bf16 products) within 1e-4;
 *   4. a tensor-parallel engine on a device backend is refused. */
#include <math.h>
#include <string.h>

#include "tests/model_fixture.h"
#include "tests/test.h"
#include "worker/backend/backend.h"
#include "worker/comm/comm.h"
#include "worker/infer/engine.h"
#include "worker/infer/kv_cache.h"

enum { V = 300, MAXT = 64 };

static td_backend *pretend_device(void) {
    td_backend *b;
    REQUIRE(td_backend_cpu_new(&b) == TD_OK, "%s", td_error_message());
    b->host_memory = 0;
    b->bf16_only = 1;
    return b;
}

static td_model *copy_of(td_model *m) {
    td_model *c;
    REQUIRE(td_model_new(td_model_config_of(m), &c) == TD_OK, "%s", td_error_message());
    memcpy(td_model_params(c), td_model_params(m), sizeof(float) * td_model_num_params(m));
    return c;
}

static void training_step(td_arch arch, td_backend *dev) {
    const char *an = arch == TD_ARCH_LLAMA ? "llama" : "gpt2";
    int B = 2, T = 33, N = B * T;
    td_model *a = test_random_model(arch, 64, 128, V, MAXT), *b = copy_of(a);
    size_t np = td_model_num_params(a);
    REQUIRE(td_model_set_bf16(a, 1) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_plan(a, B, T, 1) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_plan(b, B, T, 1) == TD_OK && td_model_to_backend(b, dev) == TD_OK, "%s",
            td_error_message());
    CHECK(td_model_is_bf16(b), "%s: a bf16-only backend did not turn bf16 on", an);
    CHECK(td_model_backend_params(b) != td_model_params(b),
          "%s: the parameters did not move to backend memory", an);
    int32_t tok[66], tgt[66];
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)((i * 37 + 5) % V);
        tgt[i] = i % 11 == 0 ? -1 : (int32_t)((i * 53 + 1) % V);
    }
    double la = 0, lb = 0, na = 0, nb = 0;
    REQUIRE(td_model_forward(a, tok, tgt, B, T, &la) == TD_OK, "%s", td_error_message());
    REQUIRE(td_model_forward(b, tok, tgt, B, T, &lb) == TD_OK, "%s", td_error_message());
    float *lg = malloc(sizeof(float) * (size_t)N * V), *g = malloc(sizeof(float) * np);
    REQUIRE(lg && g, "memory");
    REQUIRE(td_backend_download(dev, lg, td_model_logits(b), sizeof(float) * (size_t)N * V) ==
                TD_OK,
            "download");
    CHECK(la == lb, "%s: loss %.9g on the device, %.9g on the CPU", an, lb, la);
    CHECK(!memcmp(lg, td_model_logits(a), sizeof(float) * (size_t)N * V),
          "%s: the device's logits differ", an);
    td_model_zero_grad(a);
    td_model_zero_grad(b);
    REQUIRE(td_model_backward(a, 1.0) == TD_OK && td_model_backward(b, 1.0) == TD_OK, "%s",
            td_error_message());
    REQUIRE(td_backend_download(dev, g, td_model_grads(b), sizeof(float) * np) == TD_OK, "dl");
    CHECK(!memcmp(g, td_model_grads(a), sizeof(float) * np), "%s: the device's gradients differ",
          an);
    REQUIRE(td_model_grad_norm(a, &na) == TD_OK && td_model_grad_norm(b, &nb) == TD_OK, "norm");
    CHECK(na == nb && na > 0, "%s: gradient norm %.9g vs %.9g", an, nb, na);
    float *am = calloc(np, sizeof(float)), *av = calloc(np, sizeof(float));
    void *bm = NULL, *bv = NULL;
    REQUIRE(am && av && td_backend_alloc(dev, &bm, np * 4) == TD_OK &&
                td_backend_alloc(dev, &bv, np * 4) == TD_OK &&
                dev->ops->zero(dev, bm, np * 4) == TD_OK &&
                dev->ops->zero(dev, bv, np * 4) == TD_OK,
            "moments");
    float gs = na > 1.0 ? (float)(1.0 / (na + 1e-6)) : 1.0f;
    REQUIRE(td_model_adamw(a, am, av, 0, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, gs, 1) == TD_OK &&
                td_model_adamw(b, bm, bv, 0, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, gs, 1) ==
                    TD_OK,
            "%s", td_error_message());
    REQUIRE(td_model_sync_host(b) == TD_OK, "%s", td_error_message());
    CHECK(!memcmp(td_model_params(b), td_model_params(a), sizeof(float) * np),
          "%s: parameters after AdamW differ", an);
    printf("%s: one bf16 training step on the pretend device = the CPU's, bit for bit (loss "
           "%.6f, gradient norm %.6f)\n",
           an, lb, nb);
    /* back to the CPU: the parameters as trained, no plan, no bf16 copy */
    REQUIRE(td_model_to_backend(b, NULL) == TD_OK, "%s", td_error_message());
    CHECK(td_model_backend_params(b) == td_model_params(b) && !td_model_is_bf16(b) &&
              td_model_activation_bytes(b) == 0 && !td_model_grads(b),
          "%s: the model came back with device-era buffers", an);
    CHECK(!memcmp(td_model_params(b), td_model_params(a), sizeof(float) * np),
          "%s: parameters changed on the way back", an);
    td_backend_release(dev, bm);
    td_backend_release(dev, bv);
    free(am), free(av), free(lg), free(g);
    td_model_free(&a);
    td_model_free(&b);
}

static void paged_forward(td_arch arch, td_backend *dev) {
    td_model *w = test_random_model(arch, 64, 128, V, MAXT), *dw = copy_of(w);
    /* the 0.02 scale: logits that bf16 rounding moves by a little, not chaotically */
    for (size_t i = 0; i < td_model_num_params(w); i++) {
        td_model_params(w)[i] /= 8.0f;
        td_model_params(dw)[i] /= 8.0f;
    }
    REQUIRE(td_model_to_backend(dw, dev) == TD_OK, "%s", td_error_message());
    td_infer_model *c = test_serving(w), *d = test_serving(dw);
    td_kv_cache *ckv, *dkv;
    REQUIRE(td_kv_cache_new(c, 16, 8, &ckv) == TD_OK && td_infer_plan(c, 32, 2) == TD_OK &&
                td_kv_cache_new(d, 16, 8, &dkv) == TD_OK && td_infer_plan(d, 32, 2) == TD_OK,
            "%s", td_error_message());
    int32_t toks[2][40], blocks[2][4] = {{0, 2, 4, 6}, {1, 3, 5, 7}};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 40; i++)
            toks[s][i] = (int32_t)((i * 31 + s * 7 + 3) % V);
    float cl[2 * V], dl[2 * V];
    int plan[6][2] = {{12, 9}, {8, 9}, {1, 1}, {1, 1}, {1, 1}, {1, 1}}, done[2] = {0, 0};
    double worst = 0;
    for (int st = 0; st < 6; st++) {
        td_infer_seg sg[2];
        for (int s = 0; s < 2; s++)
            sg[s] = (td_infer_seg){toks[s] + done[s], plan[st][s], done[s], blocks[s], 0};
        REQUIRE(td_infer_forward(c, ckv, sg, 2, cl) == TD_OK, "%s", td_error_message());
        REQUIRE(td_infer_forward(d, dkv, sg, 2, dl) == TD_OK, "%s", td_error_message());
        double md = 0, mr = 0;
        for (int i = 0; i < 2 * V; i++) {
            md = fmax(md, fabs((double)dl[i] - cl[i]));
            mr = fmax(mr, fabs((double)cl[i]));
        }
        worst = fmax(worst, md / mr);
        for (int s = 0; s < 2; s++)
            done[s] += plan[st][s];
    }
    const char *an = arch == TD_ARCH_LLAMA ? "llama" : "gpt2";
    printf("%s: device forward (bf16 products, backend paged attention) vs the CPU's fp32, "
           "6 steps: max rel diff %.2e\n",
           an, worst);
    CHECK(worst < 2e-2 && worst > 0, "%s: device forward off by %.3e", an, worst);
    /* tight: the same sequences through the training forward on the same device (the same
     * bf16 products; only attention and RoPE are other kernels), last position's logits */
    double tight = 0;
    float *tl = malloc(sizeof(float) * (size_t)MAXT * V);
    REQUIRE(tl && td_model_plan(dw, 1, 32, 0) == TD_OK, "%s", td_error_message());
    for (int s = 0; s < 2; s++) {
        REQUIRE(td_model_forward(dw, toks[s], NULL, 1, done[s], NULL) == TD_OK, "%s",
                td_error_message());
        REQUIRE(td_backend_download(dev, tl, td_model_logits(dw),
                                    sizeof(float) * (size_t)done[s] * V) == TD_OK,
                "download");
        const float *want = tl + (size_t)(done[s] - 1) * V;
        double md = 0, mr = 0;
        for (int i = 0; i < V; i++) {
            md = fmax(md, fabs((double)dl[(size_t)s * V + i] - want[i]));
            mr = fmax(mr, fabs((double)want[i]));
        }
        tight = fmax(tight, md / mr);
    }
    free(tl);
    printf("%s: device paged forward vs the training forward on the same device: max rel diff "
           "%.2e\n",
           an, tight);
    CHECK(tight < 1e-4, "%s: the paged forward differs from the training forward by %.3e", an,
          tight);
    /* a tensor-parallel group on a device backend is refused, not run on device pointers */
    td_comm *self, *fake;
    REQUIRE(td_comm_self_new(&self) == TD_OK && td_comm_self_new(&fake) == TD_OK, "comm");
    fake->size = 2;
    td_engine_opts eo = {.max_seqs = 2, .tp = fake};
    td_engine *e = NULL;
    CHECK(td_engine_new(d, NULL, &eo, &e) == TD_ERR_INVALID && !e &&
              strstr(td_error_message(), "device backend"),
          "%s: a TP engine on a device was accepted: %s", an, td_error_message());
    td_error_clear();
    fake->size = 1;
    td_comm_free(&fake);
    td_comm_free(&self);
    td_kv_cache_free(&ckv);
    td_kv_cache_free(&dkv);
    td_infer_model_free(&c);
    td_infer_model_free(&d);
}

int main(void) {
    td_backend *dev = pretend_device();
    training_step(TD_ARCH_LLAMA, dev);
    training_step(TD_ARCH_GPT2, dev);
    paged_forward(TD_ARCH_LLAMA, dev);
    paged_forward(TD_ARCH_GPT2, dev);
    td_backend_free(&dev);
    return test_done("test_backend_device");
}
