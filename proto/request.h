/* A request's defaults, in one place. Every path that makes a generation request fills its
 * unset sampling fields here: the gateway (per API), the replica (for a request that came
 * without them) and `tandem generate`; the engine then takes the values as they are.
 *
 * max_tokens: a positive count, or TD_MAX_TOKENS_CONTEXT (0): until the context is full
 * (the engine clips any count to the room the prompt leaves). Unset, it is the API's
 * default: 16 for OpenAI completions, the context for chat and for Ollama. temperature
 * unset: 1.0 (OpenAI), 0.8 (Ollama); top_k 0 (all), top_p 1 (off). */
#ifndef TD_PROTO_REQUEST_H
#define TD_PROTO_REQUEST_H

#include "tandem.pb-c.h"

enum { TD_MAX_TOKENS_CONTEXT = 0, TD_MAX_TOKENS_COMPLETION = 16 };

typedef enum { TD_API_OPENAI, TD_API_OLLAMA } td_request_api;

/* Fills the unset fields of s (every has_* ends up set). chat: the request is a chat. */
void td_request_defaults(Tandem__Sampling *s, td_request_api api, int chat);

#endif
