/* The HTTP gateway: OpenAI (/v1/completions, /v1/chat/completions, /v1/models) and Ollama
 * (/api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version) routes, /health
 * and /metrics, served by libmicrohttpd with a thread per connection. Each generation
 * request becomes a GenerateRequest to the router over a DEALER socket owned by the
 * connection's thread; streamed answers go out as SSE (OpenAI) or NDJSON (Ollama) as the
 * chunks arrive. docs/gateway.md is the reference for routes, fields and status codes. */
#ifndef TD_GATEWAY_H
#define TD_GATEWAY_H

#include <stddef.h>

#include "common/status.h"

typedef struct {
    const char *listen;          /* HOST:PORT (port 0: any free port) */
    const char *router;          /* the router's front endpoint */
    const char *const *api_keys; /* NULL-terminated; NULL or empty: no key needed */
    size_t max_body;             /* request bodies larger than this answer 413 (1 MiB) */
    double timeout_s;            /* longest wait for a request's next answer (default 120) */
    void *zctx;                  /* ZeroMQ context (NULL: the gateway makes its own) */
    int public_metrics;          /* /metrics without a key (default: a key like every route
                                  * but /health) */
    double header_timeout_s;     /* a connection silent this long while its request is
                                  * incomplete (headers, body) or between requests is closed
                                  * (default 10) */
    unsigned max_connections;    /* open connections at most, one thread each (4096) */
    int router_heartbeat_ms;     /* the router's heartbeats (1000): three missed while a
                                  * request is in its hands end the request with an error */
    int insecure;                /* talk to the router in plain text (no CURVE) */
} td_gateway_opts;

typedef struct td_gateway td_gateway;

/* Starts serving (threads of its own). *out is owned by the caller. */
td_status td_gateway_new(const td_gateway_opts *o, td_gateway **out);
/* The TCP port it listens on. */
int td_gateway_port(const td_gateway *g);
/* Stops accepting, waits for the connection threads, frees everything. */
void td_gateway_free(td_gateway **g);

/* Request parsing, exposed for tests and the fuzz target: checks a request body for the
 * route ("/v1/completions", "/v1/chat/completions", "/api/generate", "/api/chat") and
 * returns 0 when it is valid, else the HTTP status (400) with msg (a sentence) filled. */
int td_gateway_check_request(const char *route, const char *body, size_t len, char *msg,
                             size_t msg_len);

#endif
