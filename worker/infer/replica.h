/* A serving replica's link to the request router: the leader rank of a tensor-parallel
 * group connects one ZeroMQ DEALER socket to the router's back endpoint, registers (model
 * name and its adapters' names, replica id, slots, free KV blocks, context length), and then
 * loops: requests from
 * the router are tokenized (chat messages through the ChatML template) and submitted to the
 * engine, the engine steps while anything is pending, and each request's new text goes back
 * as a chunk after every step (whole UTF-8 characters only), then a final chunk with the
 * finish reason, token counts and durations. Heartbeats every heartbeat_ms both ways; a
 * router silent for three heartbeats is presumed restarted: running requests are dropped
 * and the replica registers again. Cancels from the router end requests at once. */
#ifndef TD_REPLICA_H
#define TD_REPLICA_H

#include "common/status.h"
#include "data/bpe.h"
#include "data/chat.h"
#include "proto/request.h"
#include "worker/infer/engine.h"

typedef struct {
    const char *router;     /* the router's back endpoint, e.g. tcp://127.0.0.1:5556 */
    const char *model_name; /* what clients ask for */
    const char *replica_id; /* unique per replica, e.g. host:pid:group */
    const char *details;    /* JSON object for /api/show (architecture, parameters, ...) */
    /* further model names on the same engine: adapters[k - 1] is the engine's adapter k
     * (td_engine_submit_adapter), with adapter_details[k - 1]; n_adapters of them */
    const char *const *adapters;
    const char *const *adapter_details;
    const char *const *adapter_sha256; /* of each adapter's weights file (may be NULL) */
    int n_adapters;
    int slots; /* sequences decoded together (the engine's max_seqs) */
    int context_length;
    int heartbeat_ms;    /* default 1000 */
    const char *no_chat; /* non-NULL: chat requests are refused with this reason */
    void *zctx;          /* ZeroMQ context (NULL: the replica makes its own) */
    int insecure;        /* plain text to the router (no CURVE; proto/keys.h) */
    double drain_s;      /* once *stop is set: the longest it finishes its running requests
                          * (the router sends it nothing new meanwhile); what is left then
                          * ends with an error. 0: stop at once, ending them with an error */
} td_replica_opts;

/* Serves requests from the router with engine e (the group leader's) until *stop becomes
 * non-zero and its requests are drained (drain_s); tok must be the model's tokenizer. */
/* The engine's sampling for a request: s's fields after td_request_defaults (seed unset:
 * seed_default), with stop (NULL-terminated, borrowed) as the stop strings. */
td_sampling td_sampling_of(const Tandem__Sampling *s, td_request_api api, int chat,
                           const char *const *stop, uint64_t seed_default);

td_status td_replica_run(td_engine *e, td_bpe *tok, const td_replica_opts *o, volatile int *stop);

#endif
