/* A request's defaults (see request.h). */
#include "proto/request.h"

void td_request_defaults(Tandem__Sampling *s, td_request_api api, int chat) {
    if (!s->has_temperature) s->temperature = api == TD_API_OLLAMA ? 0.8f : 1.0f;
    if (!s->has_top_k) s->top_k = 0;
    if (!s->has_top_p) s->top_p = 1.0f;
    if (!s->has_max_tokens)
        s->max_tokens =
            api == TD_API_OPENAI && !chat ? TD_MAX_TOKENS_COMPLETION : TD_MAX_TOKENS_CONTEXT;
    if (!s->has_ignore_eot) s->ignore_eot = 0;
    s->has_temperature = s->has_top_k = s->has_top_p = s->has_max_tokens = 1;
    s->has_ignore_eot = 1;
}
