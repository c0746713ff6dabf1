/* Distillation inside the model (td_model_set_kd): a small random llama student and a teacher
 * (another random llama, its logits from a forward without gradients) on one batch with some
 * positions not counted.
 *   - alpha 1 gives exactly the cross-entropy's loss and gradient (bit for bit);
 *   - the forward's loss is alpha * CE + (1 - alpha) * KD, KD recomputed from the logits by
 *     td_op_kd_f32 (checked against PyTorch in test_kd_reference);
 *   - the parameters' gradient matches central differences of that loss (forward KL mixed
 *     with CE, reverse KL with a top-5 teacher alone, and CE alone to show the method holds),
 *     float32, within 3 % (it gets within 1e-3);
 *   - alpha outside [0, 1], tau <= 0 and a negative top-k are refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/model_fixture.h"
#include "tests/test.h"
#include "worker/kernels/cpu/ops.h"

enum { B = 2, T = 8, V = 50, N = B * T };

static double loss_of(td_model *m, const int32_t *tok, const int32_t *tgt) {
    double l = 0;
    REQUIRE(td_model_forward(m, tok, tgt, B, T, &l) == TD_OK, "%s", td_error_message());
    return l;
}

int main(void) {
    td_model *s = test_random_model(TD_ARCH_LLAMA, 32, 64, V, 16);
    td_model *t = test_random_model(TD_ARCH_LLAMA, 32, 64, V, 16);
    td_model_init_random(t, 11); /* another teacher than the student, sure of itself */
    for (size_t i = 0; i < td_model_num_params(t); i++)
        td_model_params(t)[i] *= 6.0f;
    td_model_init_random(s, 7); /* the usual scale: a loss smooth enough for differences */
    REQUIRE(td_model_plan(s, B, T, 1) == TD_OK && td_model_plan(t, B, T, 0) == TD_OK, "%s",
            td_error_message());
    int32_t tok[N], tgt[N];
    for (int i = 0; i < N; i++) {
        tok[i] = (i * 7 + 3) % V;
        tgt[i] = i % 5 == 4 ? -1 : (i * 11 + 1) % V;
    }
    double tl;
    REQUIRE(td_model_forward(t, tok, NULL, B, T, &tl) == TD_OK, "%s", td_error_message());
    float *teacher = malloc(sizeof(float) * N * V);
    memcpy(teacher, td_model_logits(t), sizeof(float) * N * V);
    size_t P = td_model_num_params(s);
    float *g_ce = malloc(P * sizeof(float)), *g = malloc(P * sizeof(float));

    /* 1. alpha 1 is the cross-entropy, bit for bit */
    td_model_zero_grad(s);
    double ce = loss_of(s, tok, tgt);
    REQUIRE(td_model_backward(s, 1.0) == TD_OK, "%s", td_error_message());
    memcpy(g_ce, td_model_grads(s), P * sizeof(float));
    td_kd_opts one = {.alpha = 1, .tau = 2};
    REQUIRE(td_model_set_kd(s, teacher, &one) == TD_OK, "%s", td_error_message());
    td_model_zero_grad(s);
    double l1 = loss_of(s, tok, tgt);
    REQUIRE(td_model_backward(s, 1.0) == TD_OK, "%s", td_error_message());
    CHECK(l1 == ce && !memcmp(g_ce, td_model_grads(s), P * sizeof(float)),
          "alpha 1: loss %.9g vs %.9g, gradients %s", l1, ce,
          memcmp(g_ce, td_model_grads(s), P * sizeof(float)) ? "differ" : "equal");
    printf("alpha 1: loss %.6f, gradient identical to the cross-entropy's\n", l1);

    static const struct {
        const char *name;
        td_kd_opts o;
    } cases[] = {{"forward KL, tau 2, alpha 0.3", {0.3, 2.0, 0, 0}},
                 {"reverse KL, tau 1.5, top-5, alpha 0", {0.0, 1.5, 1, 5}},
                 {"the cross-entropy alone (the method)", {1.0, 1.5, 1, 5}}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const td_kd_opts *o = &cases[c].o;
        REQUIRE(td_model_set_kd(s, teacher, o) == TD_OK, "%s", td_error_message());
        /* 2. the loss is the mix */
        td_model_zero_grad(s);
        double l = loss_of(s, tok, tgt), pce, pkd;
        td_model_kd_parts(s, &pce, &pkd);
        double kd = td_op_kd_f32(NULL, td_model_logits(s), teacher, tgt, N, V, o->tau, o->reverse,
                                 o->topk, 1.0);
        CHECK(fabs(pce - ce) < 1e-9 && fabs(pkd - kd) < 1e-9 &&
                  fabs(l - (o->alpha * ce + (1 - o->alpha) * kd)) < 1e-9,
              "%s: loss %.9g, CE %.9g (%.9g), KD %.9g (%.9g)", cases[c].name, l, pce, ce, pkd, kd);
        REQUIRE(td_model_backward(s, 1.0) == TD_OK, "%s", td_error_message());
        memcpy(g, td_model_grads(s), P * sizeof(float));
        /* 3. central differences on the parameters with the largest gradients */
        float *p = td_model_params(s);
        int checked = 0, bad = 0;
        double worst = 0;
        for (int pick = 0; pick < 8; pick++) {
            size_t best = 0;
            for (size_t i = 0; i < P; i++) /* the pick-th largest |g| not taken yet */
                if (fabsf(g[i]) > fabsf(g[best])) best = i;
            double an = g[best];
            float keep = p[best], h = 1e-3f;
            p[best] = keep + h;
            double up = loss_of(s, tok, tgt);
            p[best] = keep - h;
            double down = loss_of(s, tok, tgt);
            p[best] = keep;
            double num = (up - down) / (2.0 * h);
            double rel = fabs(num - an) / fmax(fabs(an), 1e-6);
            worst = fmax(worst, rel);
            checked++;
            bad += rel > 0.03;
            g[best] = 0; /* next pick */
        }
        CHECK(!bad, "%s: %d of %d gradients off by more than 3 %% (worst %.3g)", cases[c].name, bad,
              checked, worst);
        printf("%-36s loss %.6f (CE %.6f, KD %.6f): %d gradients vs central differences, worst "
               "relative difference %.2e\n",
               cases[c].name, l, pce, pkd, checked, worst);
    }

    /* 4. refusals */
    td_kd_opts badv[] = {{1.5, 2, 0, 0}, {0.5, 0, 0, 0}, {0.5, 2, 0, -1}};
    for (int i = 0; i < 3; i++) {
        CHECK(td_model_set_kd(s, teacher, &badv[i]) == TD_ERR_INVALID, "bad options %d accepted",
              i);
        printf("refused: %s\n", td_error_message());
        td_error_clear();
    }
    td_model_set_kd(s, NULL, NULL);
    CHECK(loss_of(s, tok, tgt) == ce, "teacher NULL: the cross-entropy again");
    free(teacher), free(g_ce), free(g);
    td_model_free(&s);
    td_model_free(&t);
    return test_done("test_kd_model");
}
