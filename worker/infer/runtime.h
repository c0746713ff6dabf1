/* The serving runtime: a model from memory served by tensor-parallel groups over the job's
 * ranks, each group one replica running the inference engine — the memory plan, int8
 * calibration and quantization, slicing, the device, and either a prompts file (results to
 * stdout as JSON lines) or online serving, each replica registered with a router. The CLI
 * parses options and calls td_serve (`tandem serve`, `tandem generate --prompts-file`,
 * `tandem train --serve`); where the router and gateway run in the same process (--http),
 * the caller supplies them (td_serve_control), so that workers never link the
 * coordinator. */
#ifndef TD_INFER_RUNTIME_H
#define TD_INFER_RUNTIME_H

#include <stdint.h>

#include "common/status.h"
#include "data/bpe.h"
#include "worker/comm/comm.h"
#include "worker/model/model.h"

/* What the caller provides for online serving. catch_stop (may be NULL) is called when
 * online serving begins, on every rank: it makes the stop signals set the flag it returns,
 * which ends serving. For --http, start runs on rank 0 before the replicas register and
 * fills `back` (the router's back end, for every rank) and `local` plus *zctx (an inproc
 * endpoint and the ZeroMQ context for this process's replica); stop ends it. */
typedef struct {
    volatile int *(*catch_stop)(void *ctx);
    td_status (*start)(void *ctx, volatile int *stop, char *back, size_t back_len, char *local,
                       size_t local_len, void **zctx);
    void (*stop)(void *ctx);
    void *ctx;
} td_serve_control;

typedef struct {
    const char *prompts_file; /* one prompt per line ("\n" and "\\" escapes) */
    int tp;                   /* tensor-parallel degree (divides the world size) */
    int max_tokens;
    float temperature, top_p;
    int top_k;
    uint64_t seed;
    const char *const *stop; /* NULL-terminated */
    int max_seqs;
    double kv_mb;              /* KV cache per rank; 0 = room for max_seqs full contexts */
    int dry_run;               /* print the memory plan only */
    int int8;                  /* int8 weight-only quantization */
    int int8_int32;            /* int8 products accumulated in int32 (activations quantized) */
    int lm_head_int16;         /* with int8: lm_head in int16, rounded to nearest */
    int int8_rtn;              /* with int8: round to nearest (no GPTQ calibration) */
    const char *calib_file;    /* GPTQ calibration text; NULL: sampled by the model */
    int calib_seqs, calib_len; /* 0: defaults (worker/infer/calib.h) */
    double calib_mb;           /* GPTQ statistics at a time, MiB (0: default) */
    int bf16;                  /* bf16 weights (half of fp32's bytes) */
    const char *device;        /* "cpu" (default), "cuda", "auto" */
    /* online serving instead of a prompts file */
    const char *router; /* each replica's leader registers with this router back end */
    const char *http;   /* HOST:PORT: router and gateway in-process on rank 0 */
    const char *name;   /* model name clients ask for */
    /* LoRA adapters served on the base, each its own model name (online serving):
     * adapter_names[i] from the PEFT directory adapter_dirs[i] */
    const char *const *adapter_names;
    const char *const *adapter_dirs;
    int n_adapters;
    const char *const *api_keys;     /* with http: NULL-terminated, or NULL */
    const char *no_chat;             /* non-NULL: why chat requests are refused */
    int heartbeat_ms;                /* replica <-> router heartbeats (router too with http) */
    int public_metrics;              /* with http: /metrics without a key */
    double tp_timeout_s;             /* a TP group's collective that takes longer fails the
                                      * replica (default 3) */
    int insecure;                    /* control plane without CURVE (router and replicas) */
    double drain_s;                  /* online: on SIGINT/SIGTERM, the longest a replica
                                      * finishes its running requests (default 10) */
    const td_serve_control *control; /* online serving (required with http) */
} td_serve_opts;

void td_serve_opts_default(td_serve_opts *o);
/* Runs on every rank of world (collective). full: the whole model (every rank has it),
 * taken (freed by td_serve; its weights are released as soon as the slices are cut). */
td_status td_serve(td_model *full, td_bpe *tok, td_comm *world, const td_serve_opts *o);

#endif
