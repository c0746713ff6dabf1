/* The control plane in the serving process (--http): the router in a thread and the HTTP
 * gateway, started on rank 0 for the serving runtime (worker/infer/runtime.h), which does
 * not link the coordinator itself. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cli/cli.h"
#include "common/log.h"
#include "coordinator/gateway.h"
#include "coordinator/router.h"

typedef struct {
    const td_serve_opts *o;
    volatile int *stop;
    void *zctx;
    td_router *r;
    td_gateway *g;
    pthread_t th;
    int have_thread;
    td_status s;
} control;

static void *run_router(void *p) {
    control *c = p;
    c->s = td_router_run(c->r, c->stop);
    if (c->s != TD_OK) { /* without its router the server is useless: stop everything */
        TD_LOG_ERROR("router stopped: %s; shutting down", td_error_message());
        *c->stop = 1;
    }
    return NULL;
}

static void control_stop(void *ctx) {
    control *c = ctx;
    *c->stop = 1;
    td_gateway_free(&c->g);
    if (c->have_thread) pthread_join(c->th, NULL);
    c->have_thread = 0;
    td_router_free(&c->r);
    if (c->zctx) zmq_ctx_term(c->zctx);
    c->zctx = NULL;
}

static volatile int *control_catch_stop(void *ctx) {
    control *c = ctx;
    td_cli_catch_stop_signals(&c->stop);
    return c->stop;
}

static td_status control_start(void *ctx, volatile int *stop, char *back, size_t back_len,
                               char *local, size_t local_len, void **zctx) {
    control *c = ctx;
    c->stop = stop;
    const td_serve_opts *o = c->o;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) return td_error_set(TD_ERR_RUNTIME, "cannot create a ZeroMQ context");
    td_router_opts ro = {.front = "inproc://tandem-front",
                         .back = "tcp://127.0.0.1:*",
                         .queue_max = 256,
                         .queue_timeout_s = 30,
                         .heartbeat_ms = o->heartbeat_ms,
                         .zctx = c->zctx,
                         .back_local = "inproc://tandem-back",
                         .insecure = o->insecure};
    td_status s = td_router_new(&ro, &c->r);
    if (s == TD_OK) {
        snprintf(back, back_len, "%s", td_router_back_endpoint(c->r));
        snprintf(local, local_len, "inproc://tandem-back");
        c->have_thread = pthread_create(&c->th, NULL, run_router, c) == 0;
        if (!c->have_thread) s = td_error_set(TD_ERR_RUNTIME, "cannot start the router thread");
    }
    if (s == TD_OK) {
        td_gateway_opts go = {.listen = o->http,
                              .router = "inproc://tandem-front",
                              .api_keys = o->api_keys,
                              .max_body = 1u << 20,
                              .timeout_s = 120,
                              .zctx = c->zctx,
                              .public_metrics = o->public_metrics,
                              .router_heartbeat_ms = o->heartbeat_ms};
        s = td_gateway_new(&go, &c->g);
    }
    if (s != TD_OK) {
        control_stop(c);
        return s;
    }
    /* the gateway's and router's threads answer fastest with a core of their own: the
     * replica on this rank leaves one (unless OMP_NUM_THREADS says otherwise) */
    if (!getenv("OMP_NUM_THREADS") && omp_get_max_threads() > 1) {
        omp_set_num_threads(omp_get_max_threads() - 1);
        TD_LOG_INFO("serve: the replica on rank 0 computes with %d OpenMP thread%s, leaving "
                    "a core to the gateway and router (set OMP_NUM_THREADS to override)",
                    omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s");
    }
    fprintf(stderr, "tandem serve: listening on http://%.*s:%d (model %s)\n",
            (int)(strrchr(o->http, ':') - o->http), o->http, td_gateway_port(c->g), o->name);
    *zctx = c->zctx;
    return TD_OK;
}

td_status td_cli_serve(td_model *full, td_bpe *tok, td_comm *world, td_serve_opts *o) {
    control c = {.o = o};
    /* online, a signal ends serving cleanly (caught once serving begins: while loading and
     * calibrating, it still ends the process) */
    td_serve_control sc = {control_catch_stop, control_start, control_stop, &c};
    o->control = &sc;
    td_status s = td_serve(full, tok, world, o);
    o->control = NULL;
    return s;
}
