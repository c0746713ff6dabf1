/* The inference engine of one replica: many sequences at once over a paged KV cache.
 *
 * - KV cache in fixed blocks (block_tokens positions each) from a free list; a request
 *   is admitted when the blocks for its prompt plus max_tokens can be reserved, otherwise
 *   it waits (first come, first served) — it never fails for lack of memory, and a request
 *   that could never fit the whole cache is refused at submit.
 * - Continuous batching: every step runs one forward over the decodes of all running
 *   sequences plus prefill chunks (at most prefill_chunk tokens of one prompt per step, and
 *   max_step_tokens in all), so long prompts do not stall running decodes; sequences join
 *   and leave between steps.
 * - Sampling per request: temperature (0 = greedy), top-k, top-p, seed, max tokens, stop
 *   sequences, <|endoftext|>.
 * - Detokenisation that never emits a partial UTF-8 character. */
#ifndef TD_ENGINE_H
#define TD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "data/bpe.h"
#include "worker/comm/comm.h"
#include "worker/infer/infer_model.h"

typedef struct {
    int block_tokens;    /* default 16 */
    size_t kv_bytes;     /* KV cache budget; default: room for max_seqs full contexts */
    int max_seqs;        /* running sequences at most (default 16) */
    int prefill_chunk;   /* prompt tokens of one sequence per step (default 64) */
    int max_step_tokens; /* tokens per step in all (default max_seqs + prefill_chunk) */
    td_comm *tp;         /* tensor-parallel group (the model is this rank's slice), or NULL;
                          * rank 0 of the group leads, the others run
                          * td_engine_member_loop */
} td_engine_opts;

typedef struct {
    float temperature; /* 0 = greedy */
    int top_k;         /* 0 = all */
    float top_p;       /* 1 = off */
    uint64_t seed;
    int max_tokens;
    const char *const *stop; /* stop strings, NULL-terminated, or NULL */
    int ignore_eot;          /* 1: <|endoftext|> does not end the request (benchmarks) */
} td_sampling;

typedef enum { TD_REQ_WAITING, TD_REQ_RUNNING, TD_REQ_DONE, TD_REQ_FREE } td_req_state;
typedef enum {
    TD_FINISH_NONE,
    TD_FINISH_EOT,
    TD_FINISH_LENGTH,
    TD_FINISH_STOP,
    TD_FINISH_CANCEL
} td_finish;

typedef struct td_engine td_engine;

/* tok may be NULL (no stop strings or text then). The engine borrows model and tok. With
 * a tensor-parallel group every rank of it calls td_engine_new (collective). */
td_status td_engine_new(td_infer_model *m, td_bpe *tok, const td_engine_opts *o, td_engine **out);
void td_engine_free(td_engine **e);

/* Queues a request; *id identifies it (ids of released requests are reused). Waiting
 * requests are admitted in submission order. Fails when it could never fit. */
td_status td_engine_submit(td_engine *e, const int32_t *prompt, int n, const td_sampling *s,
                           int *id);
/* One scheduling step + forward + sampling. *active = requests not yet done. */
td_status td_engine_step(td_engine *e, int *active);
/* The same for adapter `adapter` of the serving model (0: the base; td_infer_add_adapter):
 * requests of different adapters share steps, each row with its own adapter. */
td_status td_engine_submit_adapter(td_engine *e, int adapter, const int32_t *prompt, int n,
                                   const td_sampling *s, int *id);
/* Forward steps run so far, and those among them whose rows asked for different adapters
 * (the base counting as one). */
void td_engine_counters(const td_engine *e, uint64_t *steps, uint64_t *mixed_steps);
td_req_state td_engine_state(const td_engine *e, int id);
/* Tensor-parallel members: run the leader's steps until it calls td_engine_stop_members. */
td_status td_engine_member_loop(td_engine *e);
/* Leader: releases the members from td_engine_member_loop. */
td_status td_engine_stop_members(td_engine *e);
td_finish td_engine_finish_reason(const td_engine *e, int id);
/* Ends a request now (finish reason TD_FINISH_CANCEL), returning its KV blocks; no-op when
 * it is already done. */
void td_engine_cancel(td_engine *e, int id);
/* Forgets a finished request: its memory is freed and its id may be handed out again. */
void td_engine_release(td_engine *e, int id);
/* Requests submitted and not yet released. */
int td_engine_pending(const td_engine *e);
/* Prompt tokens of a request. */
int td_engine_prompt_tokens(const td_engine *e, int id);
/* Generated token ids so far. */
const int32_t *td_engine_tokens(const td_engine *e, int id, int *n);
/* Text that is safe to show so far (whole UTF-8 characters; stop string excluded). */
const char *td_engine_text(const td_engine *e, int id, size_t *len);
size_t td_engine_free_blocks(const td_engine *e);
/* The streaming rule for text: s[0..n) less a trailing incomplete UTF-8 character. */
size_t td_utf8_stream_len(const char *s, size_t n);
size_t td_engine_total_blocks(const td_engine *e);

#endif
