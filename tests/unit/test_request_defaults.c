/* A request's defaults come from one place (proto/request.h) for the gateway, the replica
 * and generate: unset max_tokens is 16 for an OpenAI completion and the whole context
 * (TD_MAX_TOKENS_CONTEXT) for chat and for Ollama; unset temperature is 1.0 (OpenAI) or
 * 0.8 (Ollama); fields the request set are kept; the engine's sampling (td_sampling_of)
 * carries exactly those values, and an unset seed takes the caller's. */
#include <string.h>

#include "proto/request.h"
#include "tests/test.h"
#include "worker/infer/replica.h"

int main(void) {
    Tandem__Sampling s = TANDEM__SAMPLING__INIT;
    td_request_defaults(&s, TD_API_OPENAI, 0);
    CHECK(s.has_max_tokens && s.max_tokens == 16, "completion max_tokens %d", s.max_tokens);
    CHECK(s.has_temperature && s.temperature == 1.0f, "completion temperature %g",
          (double)s.temperature);
    CHECK(s.top_k == 0 && s.top_p == 1.0f && !s.ignore_eot, "completion top_k/top_p");

    Tandem__Sampling c = TANDEM__SAMPLING__INIT;
    td_request_defaults(&c, TD_API_OPENAI, 1);
    CHECK(c.max_tokens == TD_MAX_TOKENS_CONTEXT, "chat max_tokens %d", c.max_tokens);

    Tandem__Sampling o = TANDEM__SAMPLING__INIT;
    td_request_defaults(&o, TD_API_OLLAMA, 0);
    CHECK(o.max_tokens == TD_MAX_TOKENS_CONTEXT && o.temperature == 0.8f,
          "ollama: max_tokens %d, temperature %g", o.max_tokens, (double)o.temperature);

    Tandem__Sampling k = TANDEM__SAMPLING__INIT; /* set fields survive */
    k.has_max_tokens = k.has_temperature = k.has_top_k = 1;
    k.max_tokens = 7;
    k.temperature = 0.0f;
    k.top_k = 3;
    td_request_defaults(&k, TD_API_OLLAMA, 1);
    CHECK(k.max_tokens == 7 && k.temperature == 0.0f && k.top_k == 3, "set fields changed");

    /* the replica's conversion: a chat that came without sampling fields runs to the end of
     * the context (it once got the completion default of 16) */
    const char *stop[] = {"<|im_end|>", NULL};
    td_sampling e = td_sampling_of(NULL, TD_API_OPENAI, 1, stop, 42);
    CHECK(e.max_tokens == TD_MAX_TOKENS_CONTEXT && e.temperature == 1.0f && e.seed == 42 &&
              e.stop == stop,
          "chat without fields: max_tokens %d, seed %llu", e.max_tokens,
          (unsigned long long)e.seed);
    k.has_seed = 1;
    k.seed = 9;
    e = td_sampling_of(&k, TD_API_OPENAI, 0, NULL, 42);
    CHECK(e.max_tokens == 7 && e.top_k == 3 && e.seed == 9 && !e.stop, "set fields lost");
    return test_done("test_request_defaults");
}
