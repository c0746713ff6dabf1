/* A small random model for tests, deterministic: 2 layers, 4 heads (llama: 2 KV heads,
 * untied embeddings; gpt2: tied), weights 8x the 0.02 initialisation so that logits are
 * not all alike. REQUIREs success (tests/test.h). */
#ifndef TD_TESTS_MODEL_FIXTURE_H
#define TD_TESTS_MODEL_FIXTURE_H

#include "tests/test.h"
#include "worker/infer/infer_model.h"
#include "worker/model/model.h"

static inline td_model *test_random_model(td_arch arch, int hidden, int inter, int vocab,
                                          int max_t) {
    td_model_config c = {.arch = arch,
                         .hidden_size = hidden,
                         .intermediate_size = inter,
                         .num_hidden_layers = 2,
                         .num_attention_heads = 4,
                         .num_key_value_heads = arch == TD_ARCH_LLAMA ? 2 : 4,
                         .vocab_size = vocab,
                         .max_position_embeddings = max_t,
                         .norm_eps = 1e-5,
                         .rope_theta = 10000,
                         .tie_word_embeddings = arch == TD_ARCH_GPT2};
    td_model *m;
    REQUIRE(td_model_new(&c, &m) == TD_OK, "%s", td_error_message());
    td_model_init_random(m, 7);
    float *p = td_model_params(m);
    for (size_t i = 0; i < td_model_num_params(m); i++)
        p[i] *= 8.0f;
    return m;
}

/* The serving form of m, which takes m: m stays usable as the serving model's weights
 * until the serving model is freed. */
static inline td_infer_model *test_serving(td_model *m) {
    td_infer_model *im = NULL;
    REQUIRE(td_infer_model_new(m, &im) == TD_OK, "%s", td_error_message());
    return im;
}

#endif
