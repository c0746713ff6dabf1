/* Replica side of the serving control plane (see replica.h). */
#include "worker/infer/replica.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/grow.h"
#include "common/log.h"
#include "proto/keys.h"
#include "proto/wire.h"

typedef struct {
    int used;
    uint64_t rid; /* the router's id */
    int eid;      /* the engine's id */
    size_t sent;  /* text bytes already sent */
    uint64_t t0, t_first;
} live;

typedef struct {
    td_engine *e;
    td_bpe *tok;
    const td_replica_opts *o;
    void *ctx, *sock;
    live *l;
    int nl;
    size_t capl;
    uint64_t last_heard;
    int leave_heard; /* stopping: the router has said it sends nothing new */
    int32_t *ids;
    size_t ids_cap;
    /* the socket is shared with the heartbeat thread, every use under this (recursive)
     * mutex, held only for calls that do not block: the main loop waits for messages on
     * the socket's file descriptor (ZMQ_FD) without it, so the heartbeat thread always gets
     * its turn. The engine is the main thread's alone (the thread reads a cached count). */
    pthread_mutex_t mu;
    int sock_fd;
    atomic_int hb_stop;
    _Atomic uint32_t free_blocks;
    _Atomic uint64_t steps, mixed_steps;
    _Atomic uint64_t loop_ns; /* the main loop's last pass: a stuck loop stops heartbeats */
    uint64_t hb_ns;
} rep;

/* Appends one id to (*ids, *cap) at position *k. */
/* ---------------------------------------------------------------------------------------- */

static td_status send_env(rep *r, const td_env *env) {
    pthread_mutex_lock(&r->mu);
    td_status s = td_wire_send(r->sock, NULL, 0, env);
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* Heartbeats from their own thread, so a long engine step (a big model's prefill) does not
 * silence the replica; a failed send is left to the main loop's checks. */
static void *heartbeat_thread(void *p) {
    rep *r = p;
    while (!r->hb_stop) {
        for (uint64_t slept = 0; slept < r->hb_ns && !r->hb_stop; slept += 10000000ull)
            usleep(10000);
        if (r->hb_stop) break;
        /* a main loop stuck for far longer than any step (a hang, a lost collective) must
         * not be kept alive by this thread */
        uint64_t limit = 30 * r->hb_ns > 60000000000ull ? 30 * r->hb_ns : 60000000000ull;
        if (td_wire_now_ns() - r->loop_ns > limit) continue;
        Tandem__Heartbeat h = TANDEM__HEARTBEAT__INIT;
        h.has_free_blocks = 1;
        h.free_blocks = r->free_blocks;
        h.has_steps = h.has_mixed_steps = 1;
        h.steps = r->steps;
        h.mixed_steps = r->mixed_steps;
        td_env env = TANDEM__ENVELOPE__INIT;
        env.body_case = TANDEM__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &h;
        if (send_env(r, &env) != TD_OK) td_error_clear();
    }
    return NULL;
}

static td_status send_chunk(rep *r, Tandem__GenerateChunk *c) {
    td_env env = TANDEM__ENVELOPE__INIT;
    env.body_case = TANDEM__ENVELOPE__BODY_CHUNK;
    env.chunk = c;
    c->replica = (char *)r->o->replica_id;
    return send_env(r, &env);
}

static td_status send_error(rep *r, uint64_t rid, uint32_t code, const char *msg) {
    Tandem__GenerateChunk c = td_wire_error_chunk(rid, code, msg);
    return send_chunk(r, &c);
}

static td_status send_register(rep *r) {
    Tandem__Register g = TANDEM__REGISTER__INIT;
    g.model = (char *)r->o->model_name;
    g.replica_id = (char *)r->o->replica_id;
    g.slots = (uint32_t)r->o->slots;
    g.free_blocks = (uint32_t)td_engine_free_blocks(r->e);
    g.context_length = (uint32_t)r->o->context_length;
    g.details = (char *)r->o->details;
    g.n_adapters = g.n_adapter_details = (size_t)r->o->n_adapters;
    g.adapters = (char **)r->o->adapters;
    g.adapter_details = (char **)r->o->adapter_details;
    if (r->o->adapter_sha256) {
        g.n_adapter_sha256 = (size_t)r->o->n_adapters;
        g.adapter_sha256 = (char **)r->o->adapter_sha256;
    }
    td_env env = TANDEM__ENVELOPE__INIT;
    env.body_case = TANDEM__ENVELOPE__BODY_REGISTER;
    env.register_ = &g;
    return send_env(r, &env);
}

static td_status connect_router(rep *r) {
    pthread_mutex_lock(&r->mu);
    td_status s = TD_OK;
    if (r->sock) zmq_close(r->sock);
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    if (!r->sock) {
        s = td_error_set(TD_ERR_IO, "replica: zmq_socket: %s", zmq_strerror(errno));
    } else {
        int zero = 0, hwm = 100000;
        zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(r->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
        if (r->o->insecure)
            td_keys_warn_insecure("replica");
        else if (strncmp(r->o->router, "inproc://", 9))
            s = td_keys_client(r->sock);
        if (s == TD_OK && zmq_connect(r->sock, r->o->router) != 0)
            s = td_error_set(TD_ERR_IO, "replica: cannot connect to the router at %s: %s",
                             r->o->router, zmq_strerror(errno));
        size_t fl = sizeof r->sock_fd;
        if (s == TD_OK && zmq_getsockopt(r->sock, ZMQ_FD, &r->sock_fd, &fl) != 0)
            s = td_error_set(TD_ERR_IO, "replica: zmq_getsockopt(ZMQ_FD): %s", zmq_strerror(errno));
    }
    r->last_heard = td_wire_now_ns();
    if (s == TD_OK) s = send_register(r); /* the mutex is recursive */
    pthread_mutex_unlock(&r->mu);
    return s;
}

static live *find_live(rep *r, uint64_t rid) {
    for (int i = 0; i < r->nl; i++)
        if (r->l[i].used && r->l[i].rid == rid) return &r->l[i];
    return NULL;
}

/* A free slot for a live request (NULL: out of memory, message set). */
static live *new_live(rep *r) {
    for (int i = 0; i < r->nl; i++)
        if (!r->l[i].used) return &r->l[i];
    if (TD_GROW(r->l, r->capl, (size_t)r->nl + 1) != TD_OK) return NULL;
    return &r->l[r->nl++];
}

static void drop_all(rep *r) {
    for (int i = 0; i < r->nl; i++) {
        if (!r->l[i].used) continue;
        td_engine_cancel(r->e, r->l[i].eid);
        td_engine_release(r->e, r->l[i].eid);
        r->l[i].used = 0;
    }
}

/* A request from the router: tokenize, submit; refusals answer at once. */
static td_status on_request(rep *r, const Tandem__GenerateRequest *q) {
    uint64_t t0 = td_wire_now_ns();
    int adapter = -1; /* which of this replica's models: 0 the base, k adapter k */
    if (!strcmp(q->model, r->o->model_name)) adapter = 0;
    for (int k = 0; k < r->o->n_adapters && adapter < 0; k++)
        if (!strcmp(q->model, r->o->adapters[k])) adapter = k + 1;
    if (adapter < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "model '%.200s' is not served by replica %s", q->model,
                 r->o->replica_id);
        return send_error(r, q->id, 404, msg);
    }
    int chat = q->n_messages > 0;
    if (chat && r->o->no_chat) return send_error(r, q->id, 400, r->o->no_chat);
    size_t n = 0;
    if (chat) {
        const char **roles = malloc(sizeof *roles * q->n_messages);
        const char **contents = malloc(sizeof *contents * q->n_messages);
        td_status st = roles && contents ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; st == TD_OK && i < q->n_messages; i++) {
            roles[i] = q->messages[i]->role;
            contents[i] = q->messages[i]->content;
        }
        if (st == TD_OK)
            st = td_chatml_encode(r->tok, roles, contents, (int)q->n_messages, &r->ids, &r->ids_cap,
                                  &n);
        free(roles);
        free(contents);
        if (st != TD_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", td_error_message());
            td_error_clear();
            return send_error(r, q->id, 400, msg);
        }
    } else {
        /* a raw prompt is the client's text too: special-token text in it stays text */
        const char *text = q->prompt ? q->prompt : "";
        n = td_bpe_encode_append(r->tok, text, strlen(text), 0, &r->ids, &r->ids_cap, 0);
    }
    const Tandem__Sampling *sp = q->sampling;
    if (n == 0) return send_error(r, q->id, 400, "the prompt is empty");
    if ((int)n >= r->o->context_length) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the prompt is %zu tokens; this model's context is %d tokens "
                 "(prompt + max_tokens must fit; the prompt must leave room for at least one)",
                 n, r->o->context_length);
        return send_error(r, q->id, 400, msg);
    }
    /* stop strings: the request's, and for chat the end of the assistant's turn */
    size_t ns = sp ? sp->n_stop : 0;
    const char **stop = calloc(ns + 2, sizeof *stop);
    for (size_t i = 0; i < ns; i++)
        stop[i] = sp->stop[i];
    if (chat) stop[ns++] = "<|im_end|>";
    /* a request that came without sampling fields (another client of the router) gets the
     * OpenAI defaults; the gateway sends them filled */
    td_sampling s = td_sampling_of(sp, TD_API_OPENAI, chat, ns ? stop : NULL, t0);
    int eid = -1;
    td_status st = td_engine_submit_adapter(r->e, adapter, r->ids, (int)n, &s, &eid);
    free(stop);
    if (st != TD_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", td_error_message());
        td_error_clear();
        return send_error(r, q->id, 400, msg);
    }
    live *l = new_live(r);
    if (!l) { /* the engine has it: take it back, and refuse the request */
        td_engine_cancel(r->e, eid);
        return send_error(r, q->id, 503, "the replica is out of memory");
    }
    *l = (live){1, q->id, eid, 0, t0, 0};
    Tandem__GenerateChunk c = TANDEM__GENERATE_CHUNK__INIT;
    c.id = q->id;
    c.has_accepted = c.accepted = 1;
    c.has_prompt_tokens = 1;
    c.prompt_tokens = (uint32_t)n;
    return send_chunk(r, &c);
}

static td_status on_message(rep *r, td_env *env) {
    r->last_heard = td_wire_now_ns();
    td_status s = TD_OK;
    switch (env->body_case) {
    case TANDEM__ENVELOPE__BODY_REQUEST:
        s = on_request(r, env->request);
        break;
    case TANDEM__ENVELOPE__BODY_CANCEL: {
        live *l = find_live(r, env->cancel->id);
        if (l) {
            int ntok;
            td_engine_tokens(r->e, l->eid, &ntok);
            TD_LOG_INFO("replica %s: request %llu cancelled after %d tokens", r->o->replica_id,
                        (unsigned long long)l->rid, ntok);
            td_engine_cancel(r->e, l->eid);
            td_engine_release(r->e, l->eid);
            l->used = 0;
        }
        break;
    }
    case TANDEM__ENVELOPE__BODY_HEARTBEAT:
        if (env->heartbeat->leaving) r->leave_heard = 1;
        break;
    default:
        TD_LOG_WARN("replica: unexpected message kind %d", (int)env->body_case);
    }
    td_wire_free(env);
    return s;
}

/* After a step: new text of every request, and the end of those that finished. */
static td_status report(rep *r) {
    static const char *why[] = {"stop", "stop", "length", "stop", "cancel"};
    for (int i = 0; i < r->nl; i++) {
        live *l = &r->l[i];
        if (!l->used) continue;
        size_t len;
        const char *text = td_engine_text(r->e, l->eid, &len);
        int ntok;
        td_engine_tokens(r->e, l->eid, &ntok);
        int done = td_engine_state(r->e, l->eid) == TD_REQ_DONE;
        uint64_t now = td_wire_now_ns();
        if (ntok > 0 && !l->t_first) l->t_first = now;
        if (len <= l->sent && !done) continue;
        Tandem__GenerateChunk c = TANDEM__GENERATE_CHUNK__INIT;
        c.id = l->rid;
        char *delta = NULL;
        if (len > l->sent) {
            delta = malloc(len - l->sent + 1);
            memcpy(delta, text + l->sent, len - l->sent);
            delta[len - l->sent] = 0;
            c.text = delta;
            l->sent = len;
        }
        c.has_replica_ns = 1;
        c.replica_ns = now - l->t0;
        if (done) {
            c.has_done = c.done = 1;
            c.finish_reason = (char *)why[td_engine_finish_reason(r->e, l->eid)];
            c.has_prompt_tokens = 1;
            c.prompt_tokens = (uint32_t)td_engine_prompt_tokens(r->e, l->eid);
            c.has_completion_tokens = 1;
            c.completion_tokens = (uint32_t)ntok;
            c.has_prompt_eval_ns = 1;
            c.prompt_eval_ns = (l->t_first ? l->t_first : now) - l->t0;
        }
        td_status s = send_chunk(r, &c);
        free(delta);
        if (done) {
            td_engine_release(r->e, l->eid);
            l->used = 0;
        }
        if (s != TD_OK) return s;
    }
    return TD_OK;
}

td_sampling td_sampling_of(const Tandem__Sampling *s, td_request_api api, int chat,
                           const char *const *stop, uint64_t seed_default) {
    Tandem__Sampling d = TANDEM__SAMPLING__INIT;
    if (s) d = *s;
    td_request_defaults(&d, api, chat);
    return (td_sampling){.temperature = d.temperature,
                         .top_k = d.top_k,
                         .top_p = d.top_p,
                         .seed = d.has_seed ? d.seed : seed_default,
                         .max_tokens = d.max_tokens,
                         .stop = stop,
                         .ignore_eot = d.ignore_eot};
}

td_status td_replica_run(td_engine *e, td_bpe *tok, const td_replica_opts *o, volatile int *stop) {
    rep r = {.e = e, .tok = tok, .o = o};
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&r.mu, &ma);
    pthread_mutexattr_destroy(&ma);
    int own = !o->zctx;
    r.ctx = own ? zmq_ctx_new() : o->zctx;
    uint64_t hb = (uint64_t)(o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000) * 1000000ull;
    r.hb_ns = hb;
    r.free_blocks = (uint32_t)td_engine_free_blocks(e);
    r.loop_ns = td_wire_now_ns();
    td_status s = connect_router(&r);
    if (s == TD_OK) {
        char with[64] = "";
        if (o->n_adapters)
            snprintf(with, sizeof with, " (with %d adapter%s)", o->n_adapters,
                     o->n_adapters == 1 ? "" : "s");
        TD_LOG_INFO("replica %s (model %s): registering with the router at %s%s", o->replica_id,
                    o->model_name, o->router, with);
    }
    pthread_t hbt;
    int have_hbt = s == TD_OK && pthread_create(&hbt, NULL, heartbeat_thread, &r) == 0;
    if (s == TD_OK && !have_hbt)
        s = td_error_set(TD_ERR_RUNTIME, "cannot start the heartbeat thread");
    /* test hook: a pause after every engine step makes a tiny model as slow as a big one,
     * so tests can act while requests are in flight (tests/e2e/test_router.sh) */
    const char *delay_env = getenv("TANDEM_TEST_STEP_DELAY_MS");
    int step_delay_ms = delay_env ? atoi(delay_env) : 0;
    uint64_t drain_end = 0; /* stopping: when the requests still running get an error */
    while (s == TD_OK) {
        if (*stop && !drain_end) { /* tell the router, then finish what runs */
            Tandem__Heartbeat h = TANDEM__HEARTBEAT__INIT;
            h.has_leaving = h.leaving = 1;
            td_env he = TANDEM__ENVELOPE__INIT;
            he.body_case = TANDEM__ENVELOPE__BODY_HEARTBEAT;
            he.heartbeat = &h;
            if (send_env(&r, &he) != TD_OK) td_error_clear();
            drain_end = td_wire_now_ns() + (uint64_t)(o->drain_s > 0 ? o->drain_s * 1e9 : 0) + 1;
            TD_LOG_INFO("replica %s: stopping; finishing %d running request(s) (at most %.0f s)",
                        o->replica_id, td_engine_pending(e), o->drain_s);
        }
        /* drained: nothing runs and the router has heard the leave (a request it sent before
         * that arrives before its answer), or the time is up */
        if (drain_end && ((td_engine_pending(e) == 0 && (r.leave_heard || o->drain_s <= 0)) ||
                          td_wire_now_ns() >= drain_end)) {
            int left = 0;
            for (int i = 0; i < r.nl; i++)
                if (r.l[i].used) {
                    send_error(&r, r.l[i].rid, 503,
                               "the replica stopped before this request finished (its slots "
                               "were taken back or its job was cancelled); send it again");
                    left++;
                }
            if (left)
                TD_LOG_WARN("replica %s: %d request(s) ended unfinished", o->replica_id, left);
            break;
        }
        r.loop_ns = td_wire_now_ns();
        int busy = td_engine_pending(e) > 0;
        td_env *env = NULL;
        /* everything that arrived; wait a little only when there is nothing to compute */
        for (int k = 0; s == TD_OK && k < 1024; k++) {
            pthread_mutex_lock(&r.mu);
            s = td_wire_recv(r.sock, NULL, NULL, 0, &env);
            pthread_mutex_unlock(&r.mu);
            if (!env && k == 0 && !busy && s == TD_OK) {
                /* idle: sleep on the socket's descriptor, not holding the lock. It is
                 * edge-triggered and the heartbeat thread's sends may consume its edge, so
                 * the wait is short and the socket is read again after it either way. */
                struct pollfd pfd = {r.sock_fd, POLLIN, 0};
                poll(&pfd, 1, 20);
                pthread_mutex_lock(&r.mu);
                s = td_wire_recv(r.sock, NULL, NULL, 0, &env);
                pthread_mutex_unlock(&r.mu);
            }
            if (!env) break;
            s = on_message(&r, env);
        }
        if (s != TD_OK) break;
        r.free_blocks = (uint32_t)td_engine_free_blocks(e); /* cancels free blocks too */
        /* judged right after reading, so heartbeats that queued during a long step count */
        uint64_t now0 = td_wire_now_ns();
        if (now0 - r.last_heard > 3 * hb) {
            TD_LOG_WARN("replica %s: no word from the router for %.1f s; dropping %d request(s) "
                        "and registering again",
                        o->replica_id, (double)(now0 - r.last_heard) / 1e9, td_engine_pending(e));
            drop_all(&r);
            r.free_blocks = (uint32_t)td_engine_free_blocks(e);
            s = connect_router(&r);
            continue;
        }
        if (td_engine_pending(e) > 0) {
            int active;
            s = td_engine_step(e, &active);
            if (s == TD_OK) s = report(&r);
            uint64_t steps, mixed;
            td_engine_counters(e, &steps, &mixed);
            r.steps = steps;
            r.mixed_steps = mixed;
            r.free_blocks = (uint32_t)td_engine_free_blocks(e);
            if (step_delay_ms > 0) usleep((useconds_t)step_delay_ms * 1000);
            if (s != TD_OK) break;
        }
    }
    if (s != TD_OK && r.sock) { /* this replica fails: its requests end now, saying why */
        char why[600];
        snprintf(why, sizeof why, "the replica failed: %s", td_error_message());
        for (int i = 0; i < r.nl; i++)
            if (r.l[i].used) send_error(&r, r.l[i].rid, 503, why);
        td_error_set(s, "%s", why + strlen("the replica failed: "));
    }
    if (have_hbt) {
        r.hb_stop = 1;
        pthread_join(hbt, NULL);
    }
    if (o->n_adapters)
        TD_LOG_INFO("replica %s: %llu engine steps, %llu of them held requests of different "
                    "models (base and adapters)",
                    o->replica_id, (unsigned long long)r.steps, (unsigned long long)r.mixed_steps);
    drop_all(&r);
    if (r.sock) zmq_close(r.sock);
    pthread_mutex_destroy(&r.mu);
    if (own) zmq_ctx_term(r.ctx);
    free(r.l);
    free(r.ids);
    return s;
}
