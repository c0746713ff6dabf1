/* Request router (see router.h).
 *
 * State: replicas (identity, models -- a base and the adapters served on it share the
 * replica's slots --, slots, in-flight count, last heard), models (name,
 * FIFO queue of waiting jobs), jobs (one per request: the client's identity and id, the
 * router's id the replica sees, where it runs). Tables are small arrays scanned linearly:
 * a router handles hundreds of requests in flight, not millions. */
#include "coordinator/router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/grow.h"
#include "common/log.h"
#include "proto/keys.h"
#include "proto/wire.h"

#define MAX_IDENT 256

typedef struct {
    uint8_t ident[MAX_IDENT];
    size_t ident_len;
    char *replica_id, *details;
    int *models; /* models[0]: the base; then its adapters */
    int nmodels;
    uint32_t slots, free_blocks, context;
    int in_flight;
    uint64_t last_ns, served, steps, mixed_steps;
    int alive;
    int leaving; /* stopping: it finishes its requests and gets no new ones */
} replica;

typedef struct {
    char *name;
    uint32_t context;
    char *details;
    char *sha256; /* an adapter's: the weights the replicas serving this name hold */
} model;

typedef struct {
    int used;
    uint64_t rid; /* the router's id: what the replica sees */
    uint8_t client[MAX_IDENT];
    size_t client_len;
    uint64_t client_id; /* the client's id for it */
    int model, replica; /* replica -1 while queued */
    uint64_t queued_ns;
    td_env *env; /* the request (kept until dispatched) */
} job;

struct td_router {
    void *ctx, *front, *back;
    int own_ctx;
    td_router_opts o;
    char front_ep[256], back_ep[256];
    replica *rep;
    int nrep;
    size_t caprep;
    model *mod;
    int nmod;
    size_t capmod;
    job *jobs;
    int njobs;
    size_t capjobs;
    uint64_t next_rid;
    uint64_t grace_end_ns; /* until then, requests for models with no replica up wait */
    td_zap *zap;           /* the key check of CURVE clients (NULL: --insecure) */
};

/* ---------------------------------------------------------------------------------------- */

static td_status bind_socket(td_router *r, void *s, const char *ep, char *out, size_t outlen) {
    int one = 1, hwm = 100000, zero = 0;
    zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(s, ep) != 0)
        return td_error_set(TD_ERR_IO, "router: cannot bind %s: %s", ep, zmq_strerror(errno));
    size_t n = outlen;
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, out, &n) != 0) snprintf(out, outlen, "%s", ep);
    (void)r;
    return TD_OK;
}

td_status td_router_new(const td_router_opts *o, td_router **out) {
    *out = NULL;
    td_router *r = calloc(1, sizeof *r);
    if (!r) return td_error_set(TD_ERR_NOMEM, "out of memory");
    r->o = *o;
    if (r->o.queue_max <= 0) r->o.queue_max = 256;
    if (r->o.queue_timeout_s <= 0) r->o.queue_timeout_s = 30;
    if (r->o.heartbeat_ms <= 0) r->o.heartbeat_ms = 1000;
    r->ctx = o->zctx;
    if (!r->ctx) {
        r->ctx = zmq_ctx_new();
        r->own_ctx = 1;
    }
    r->front = zmq_socket(r->ctx, ZMQ_ROUTER);
    r->back = zmq_socket(r->ctx, ZMQ_ROUTER);
    r->next_rid = 1;
    td_status s = !r->front || !r->back
                      ? td_error_set(TD_ERR_IO, "router: zmq_socket: %s", zmq_strerror(errno))
                      : TD_OK;
    if (s == TD_OK && o->insecure) td_keys_warn_insecure("router");
    if (s == TD_OK && !o->insecure && !o->zap_running) s = td_zap_start(r->ctx, &r->zap);
    if (s == TD_OK && !o->insecure) s = td_keys_server(r->front);
    if (s == TD_OK && !o->insecure) s = td_keys_server(r->back);
    if (s == TD_OK) s = bind_socket(r, r->front, o->front, r->front_ep, sizeof r->front_ep);
    if (s == TD_OK) s = bind_socket(r, r->back, o->back, r->back_ep, sizeof r->back_ep);
    if (s == TD_OK && o->back_local && zmq_bind(r->back, o->back_local) != 0)
        s = td_error_set(TD_ERR_IO, "router: cannot bind %s: %s", o->back_local,
                         zmq_strerror(errno));
    if (s != TD_OK) {
        td_router_free(&r);
        return s;
    }
    *out = r;
    return TD_OK;
}

const char *td_router_front_endpoint(const td_router *r) {
    return r->front_ep;
}
const char *td_router_back_endpoint(const td_router *r) {
    return r->back_ep;
}

void td_router_free(td_router **rp) {
    if (!rp || !*rp) return;
    td_router *r = *rp;
    if (r->front) zmq_close(r->front);
    if (r->back) zmq_close(r->back);
    td_zap_stop(&r->zap);
    if (r->own_ctx) zmq_ctx_term(r->ctx);
    for (int i = 0; i < r->nrep; i++) {
        free(r->rep[i].replica_id);
        free(r->rep[i].details);
        free(r->rep[i].models);
    }
    for (int i = 0; i < r->nmod; i++) {
        free(r->mod[i].name);
        free(r->mod[i].details);
        free(r->mod[i].sha256);
    }
    for (int i = 0; i < r->njobs; i++)
        td_wire_free(r->jobs[i].env);
    free(r->rep);
    free(r->mod);
    free(r->jobs);
    free(r);
    *rp = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* tables */

static int find_model(const td_router *r, const char *name) {
    for (int i = 0; i < r->nmod; i++)
        if (!strcmp(r->mod[i].name, name)) return i;
    return -1;
}

/* The index of model `name`, added when new; -1 when out of memory (message set). */
static int add_model(td_router *r, const char *name) {
    int i = find_model(r, name);
    if (i >= 0) return i;
    if (TD_GROW(r->mod, r->capmod, (size_t)r->nmod + 1) != TD_OK) return -1;
    r->mod[r->nmod] = (model){strdup(name), 0, NULL, NULL};
    return r->nmod++;
}

static int find_replica(const td_router *r, const uint8_t *id, size_t n) {
    for (int i = 0; i < r->nrep; i++)
        if (r->rep[i].alive && r->rep[i].ident_len == n && !memcmp(r->rep[i].ident, id, n))
            return i;
    return -1;
}

/* A free job slot; NULL when out of memory (message set). */
static job *new_job(td_router *r) {
    for (int i = 0; i < r->njobs; i++)
        if (!r->jobs[i].used) return &r->jobs[i];
    if (TD_GROW(r->jobs, r->capjobs, (size_t)r->njobs + 1) != TD_OK) return NULL;
    return &r->jobs[r->njobs++];
}

static void end_job(td_router *r, job *j) {
    if (j->replica >= 0) {
        replica *p = &r->rep[j->replica];
        if (p->in_flight > 0) p->in_flight--;
    }
    td_wire_free(j->env);
    memset(j, 0, sizeof *j);
}

static int queue_length(const td_router *r, int m) {
    int n = 0;
    for (int i = 0; i < r->njobs; i++)
        n += r->jobs[i].used && r->jobs[i].model == m && r->jobs[i].replica < 0;
    return n;
}

static int serves(const replica *p, int m) {
    for (int k = 0; k < p->nmodels; k++)
        if (p->models[k] == m) return 1;
    return 0;
}

static int replicas_up(const td_router *r, int m) {
    int n = 0;
    for (int i = 0; i < r->nrep; i++)
        n += r->rep[i].alive && !r->rep[i].leaving && serves(&r->rep[i], m);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* sending */

/* An error answer to a client (the request is over). */
static void client_error(td_router *r, const uint8_t *client, size_t client_len, uint64_t id,
                         uint32_t code, const char *msg) {
    Tandem__GenerateChunk c = td_wire_error_chunk(id, code, msg);
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_CHUNK;
    e.chunk = &c;
    if (td_wire_send(r->front, client, client_len, &e) != TD_OK)
        TD_LOG_DEBUG("router: error answer not delivered: %s", td_error_message());
}

/* A request the router has no memory to take: refused (503), the router itself goes on. */
static void refuse_out_of_memory(td_router *r, const uint8_t *client, size_t client_len,
                                 uint64_t id) {
    char msg[512];
    snprintf(msg, sizeof msg, "router: %s", td_error_message());
    TD_LOG_ERROR("%s", msg);
    client_error(r, client, client_len, id, 503, msg);
}

static void send_cancel(td_router *r, const replica *p, uint64_t rid) {
    Tandem__Cancel c = TANDEM__CANCEL__INIT;
    c.id = rid;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_CANCEL;
    e.cancel = &c;
    if (td_wire_send(r->back, p->ident, p->ident_len, &e) != TD_OK)
        TD_LOG_WARN("router: cancel of request %llu not delivered to replica %s: %s",
                    (unsigned long long)rid, p->replica_id, td_error_message());
}

static void replica_lost(td_router *r, int i, const char *why) {
    replica *p = &r->rep[i];
    if (!p->alive) return;
    p->alive = 0;
    TD_LOG_WARN("router: replica %s (model %s) lost: %s; %d request%s in flight fail",
                p->replica_id, r->mod[p->models[0]].name, why, p->in_flight,
                p->in_flight == 1 ? "" : "s");
    char msg[512];
    snprintf(msg, sizeof msg, "replica %s of model %s was lost (%s) while serving this request",
             p->replica_id, r->mod[p->models[0]].name, why);
    for (int k = 0; k < r->njobs; k++) {
        job *j = &r->jobs[k];
        if (!j->used || j->replica != i) continue;
        client_error(r, j->client, j->client_len, j->client_id, 503, msg);
        end_job(r, j);
    }
    p->in_flight = 0;
    for (int k = 0; k < r->njobs; k++) { /* nothing left to wait for: fail the queue now */
        job *j = &r->jobs[k];
        if (!j->used || j->replica >= 0 || !serves(p, j->model) || replicas_up(r, j->model))
            continue;
        snprintf(msg, sizeof msg, "no replica of model %s is up (the last one was lost)",
                 r->mod[j->model].name);
        client_error(r, j->client, j->client_len, j->client_id, 503, msg);
        end_job(r, j);
    }
}

/* Sends j to replica i; 0 on success. */
static int dispatch(td_router *r, job *j, int i) {
    replica *p = &r->rep[i];
    j->env->request->id = j->rid;
    td_status s = td_wire_send(r->back, p->ident, p->ident_len, j->env);
    if (s != TD_OK) {
        replica_lost(r, i, s == TD_ERR_NOTFOUND ? "its connection closed" : td_error_message());
        return -1;
    }
    j->replica = i;
    p->in_flight++;
    td_wire_free(j->env);
    j->env = NULL;
    return 0;
}

/* The live replica of model m with the most room (in-flight per slot lowest), or -1. */
static int pick_replica(const td_router *r, int m) {
    int best = -1;
    double load = 2;
    for (int i = 0; i < r->nrep; i++) {
        const replica *p = &r->rep[i];
        if (!p->alive || p->leaving || !serves(p, m) || p->in_flight >= (int)p->slots) continue;
        double l = (double)p->in_flight / (double)(p->slots ? p->slots : 1);
        if (l < load) {
            load = l;
            best = i;
        }
    }
    return best;
}

/* Moves waiting jobs to replicas with room, oldest first (of any model: a replica's slots
 * are shared by its base and adapters). */
static void drain_queue(td_router *r) {
    for (;;) {
        job *oldest = NULL;
        int at = -1;
        for (int k = 0; k < r->njobs; k++) {
            job *j = &r->jobs[k];
            if (!j->used || j->replica >= 0 || (oldest && j->queued_ns >= oldest->queued_ns))
                continue;
            int i = pick_replica(r, j->model);
            if (i < 0) continue;
            oldest = j;
            at = i;
        }
        if (!oldest) return;
        dispatch(r, oldest, at);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* front: clients */

static void status_reply(td_router *r, const uint8_t *client, size_t client_len) {
    Tandem__StatusReply st = TANDEM__STATUS_REPLY__INIT;
    Tandem__ModelStatus *ms = calloc((size_t)r->nmod + 1, sizeof *ms);
    Tandem__ModelStatus **mp = calloc((size_t)r->nmod + 1, sizeof *mp);
    /* a replica is listed under each of its models */
    size_t slots = 1;
    for (int i = 0; i < r->nrep; i++)
        slots += r->rep[i].alive ? (size_t)r->rep[i].nmodels : 0;
    char **ids = calloc(slots, sizeof *ids);
    uint64_t *served = calloc(slots, sizeof *served), *steps = calloc(slots, sizeof *steps),
             *mixed = calloc(slots, sizeof *mixed);
    size_t used = 0, nm = 0;
    for (int m = 0; m < r->nmod; m++) {
        if (!r->mod[m].context) continue; /* only asked for (start-up grace), never served */
        Tandem__ModelStatus x = TANDEM__MODEL_STATUS__INIT;
        x.name = r->mod[m].name;
        x.replicas_up = (uint32_t)replicas_up(r, m);
        x.queue_length = (uint32_t)queue_length(r, m);
        for (int k = 0; k < r->njobs; k++)
            x.in_flight += r->jobs[k].used && r->jobs[k].model == m && r->jobs[k].replica >= 0;
        x.has_context_length = 1;
        x.context_length = r->mod[m].context;
        x.details = r->mod[m].details;
        x.replica_ids = ids + used;
        x.served = served + used;
        x.steps = steps + used;
        x.mixed_steps = mixed + used;
        for (int i = 0; i < r->nrep; i++) {
            if (!r->rep[i].alive || !serves(&r->rep[i], m)) continue;
            ids[used] = r->rep[i].replica_id;
            steps[used] = r->rep[i].steps;
            mixed[used] = r->rep[i].mixed_steps;
            served[used++] = r->rep[i].served;
            x.n_replica_ids++;
            x.n_served++;
            x.n_steps++;
            x.n_mixed_steps++;
        }
        ms[nm] = x;
        mp[nm] = &ms[nm];
        nm++;
    }
    st.n_models = nm;
    st.models = mp;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_STATUS;
    e.status = &st;
    if (td_wire_send(r->front, client, client_len, &e) != TD_OK)
        TD_LOG_DEBUG("router: status not delivered: %s", td_error_message());
    free(ms);
    free(mp);
    free(ids);
    free(served);
    free(steps);
    free(mixed);
}

static void on_front(td_router *r, const uint8_t *client, size_t client_len, td_env *env) {
    if (env->body_case == TANDEM__ENVELOPE__BODY_STATUS_REQUEST) {
        status_reply(r, client, client_len);
        td_wire_free(env);
        return;
    }
    if (env->body_case == TANDEM__ENVELOPE__BODY_CANCEL) {
        for (int k = 0; k < r->njobs; k++) {
            job *j = &r->jobs[k];
            if (!j->used || j->client_id != env->cancel->id || j->client_len != client_len ||
                memcmp(j->client, client, client_len))
                continue;
            int ran = j->replica >= 0;
            if (ran) send_cancel(r, &r->rep[j->replica], j->rid);
            end_job(r, j);
            if (ran) drain_queue(r); /* its slot is free again */
        }
        td_wire_free(env);
        return;
    }
    if (env->body_case != TANDEM__ENVELOPE__BODY_REQUEST) {
        TD_LOG_WARN("router: a client sent a message of kind %d; ignored", (int)env->body_case);
        td_wire_free(env);
        return;
    }
    Tandem__GenerateRequest *q = env->request;
    int m = find_model(r, q->model);
    /* just started (a restart, say): replicas are still registering, and requests that
     * waited in clients' sockets during the outage arrive first; they wait for the grace */
    int young = td_wire_now_ns() < r->grace_end_ns;
    if (young && m < 0 && (m = add_model(r, q->model)) < 0) {
        refuse_out_of_memory(r, client, client_len, q->id);
        td_wire_free(env);
        return;
    }
    int known = m >= 0 && r->mod[m].context; /* a replica registered it at some point */
    if (!young && (!known || replicas_up(r, m) == 0)) {
        char msg[512];
        if (!known)
            snprintf(msg, sizeof msg, "model '%.200s' not found (no replica serves it)", q->model);
        else
            snprintf(msg, sizeof msg, "no replica of model '%.200s' is up", q->model);
        client_error(r, client, client_len, q->id, known ? 503 : 404, msg);
        td_wire_free(env);
        return;
    }
    job *j = new_job(r);
    if (!j) {
        refuse_out_of_memory(r, client, client_len, q->id);
        td_wire_free(env);
        return;
    }
    memset(j, 0, sizeof *j);
    j->used = 1;
    j->rid = r->next_rid++;
    memcpy(j->client, client, client_len);
    j->client_len = client_len;
    j->client_id = q->id;
    j->model = m;
    j->replica = -1;
    j->queued_ns = td_wire_now_ns();
    j->env = env;
    int i = pick_replica(r, m);
    if (i >= 0) {
        if (dispatch(r, j, i) != 0) { /* that replica just died: queue or fail */
            i = pick_replica(r, m);
            if (i < 0 || dispatch(r, j, i) != 0) j->replica = -1;
        }
        if (j->replica >= 0 || !j->used) return;
    }
    if (queue_length(r, m) > r->o.queue_max) { /* this job is already counted */
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the queue of model '%.100s' is full (%d waiting; "
                 "--queue-max)",
                 r->mod[m].name, r->o.queue_max);
        client_error(r, client, client_len, j->client_id, 503, msg);
        end_job(r, j);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* back: replicas */

/* A heartbeat to replica i; to a leaving replica it says that its leave was heard (every
 * request sent to it before went out before this, on the same connection). */
static void heartbeat_to(td_router *r, int i) {
    Tandem__Heartbeat h = TANDEM__HEARTBEAT__INIT;
    if (r->rep[i].leaving) h.has_leaving = h.leaving = 1;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &h;
    td_status s = td_wire_send(r->back, r->rep[i].ident, r->rep[i].ident_len, &e);
    if (s != TD_OK)
        replica_lost(r, i, s == TD_ERR_NOTFOUND ? "its connection closed" : td_error_message());
}

static void on_register(td_router *r, const uint8_t *id, size_t n, const Tandem__Register *g) {
    for (int i = 0; i < r->nrep; i++) /* the same replica id again: the old one is gone */
        if (r->rep[i].alive && !strcmp(r->rep[i].replica_id, g->replica_id) &&
            (r->rep[i].ident_len != n || memcmp(r->rep[i].ident, id, n)))
            replica_lost(r, i, "it registered again");
    /* the models first, so that running out of memory leaves the replica table as it was (an
     * unanswered replica registers again when the router stays silent) */
    int nm = 0, ok = 1;
    int *mods = malloc(sizeof *mods * (size_t)(1 + g->n_adapters) * 2), *src = mods;
    if (!mods) ok = td_error_set(TD_ERR_NOMEM, "out of memory") == TD_OK;
    if (mods) src = mods + 1 + g->n_adapters; /* src[j]: 0 the base, k adapter k */
    for (int k = 0; ok && k < 1 + (int)g->n_adapters; k++) {
        const char *name = k ? g->adapters[k - 1] : g->model;
        const char *sha =
            k && (size_t)(k - 1) < g->n_adapter_sha256 ? g->adapter_sha256[k - 1] : "";
        int m = find_model(r, name), others = 0;
        for (int q = 0; k && m >= 0 && q < r->nrep; q++)
            others += r->rep[q].alive && serves(&r->rep[q], m) &&
                      (r->rep[q].ident_len != n || memcmp(r->rep[q].ident, id, n));
        if (others && strcmp(r->mod[m].sha256 ? r->mod[m].sha256 : "", sha)) {
            TD_LOG_WARN("router: replica %s offers adapter %s with other weights (sha256 %.16s) "
                        "than the replica%s already serving that name (%.16s); not routed to it",
                        g->replica_id, name, sha, others == 1 ? "" : "s",
                        r->mod[m].sha256 ? r->mod[m].sha256 : "a base model");
            continue;
        }
        ok = (mods[nm] = add_model(r, name)) >= 0;
        src[nm++] = k;
    }
    int i = find_replica(r, id, n), fresh = i < 0;
    if (ok && fresh) {
        for (i = 0; i < r->nrep && r->rep[i].alive; i++) {
        }
        if (i == r->nrep) {
            if (TD_GROW(r->rep, r->caprep, (size_t)r->nrep + 1) != TD_OK)
                ok = 0;
            else
                memset(&r->rep[r->nrep++], 0, sizeof *r->rep);
        }
    }
    if (!ok) {
        TD_LOG_ERROR("router: replica %s not registered: %s", g->replica_id, td_error_message());
        free(mods);
        return;
    }
    replica *p = &r->rep[i];
    if (fresh) {
        free(p->replica_id);
        free(p->details);
        free(p->models);
        memset(p, 0, sizeof *p);
        memcpy(p->ident, id, n);
        p->ident_len = n;
    }
    free(p->replica_id);
    free(p->details);
    free(p->models);
    p->replica_id = strdup(g->replica_id);
    p->details = g->details ? strdup(g->details) : NULL;
    p->models = mods;
    p->nmodels = nm;
    p->slots = g->slots ? g->slots : 1;
    p->free_blocks = g->free_blocks;
    p->context = g->context_length;
    p->alive = 1;
    p->leaving = 0;
    p->last_ns = td_wire_now_ns();
    for (int j = 0; j < nm; j++) {
        model *m = &r->mod[mods[j]];
        int k = src[j];
        const char *det = k == 0                                   ? g->details
                          : (size_t)(k - 1) < g->n_adapter_details ? g->adapter_details[k - 1]
                                                                   : g->details;
        const char *sha =
            k && (size_t)(k - 1) < g->n_adapter_sha256 ? g->adapter_sha256[k - 1] : NULL;
        m->context = g->context_length;
        if (det) {
            free(m->details);
            m->details = strdup(det);
        }
        free(m->sha256);
        m->sha256 = sha ? strdup(sha) : NULL;
    }
    TD_LOG_INFO("router: replica %s registered (model %s, %d adapter%s, %u slots, %u KV blocks, "
                "context %u)",
                p->replica_id, r->mod[mods[0]].name, nm - 1, nm == 2 ? "" : "s", p->slots,
                p->free_blocks, p->context);
    heartbeat_to(r, i);
    drain_queue(r);
}

static void on_back(td_router *r, const uint8_t *id, size_t n, td_env *env) {
    if (env->body_case == TANDEM__ENVELOPE__BODY_REGISTER) {
        on_register(r, id, n, env->register_);
        td_wire_free(env);
        return;
    }
    int i = find_replica(r, id, n);
    if (i < 0) { /* not registered (e.g. the router restarted): it re-registers on silence */
        td_wire_free(env);
        return;
    }
    replica *p = &r->rep[i];
    p->last_ns = td_wire_now_ns();
    if (env->body_case == TANDEM__ENVELOPE__BODY_HEARTBEAT) {
        if (env->heartbeat->has_free_blocks) p->free_blocks = env->heartbeat->free_blocks;
        if (env->heartbeat->has_steps) p->steps = env->heartbeat->steps;
        if (env->heartbeat->has_mixed_steps) p->mixed_steps = env->heartbeat->mixed_steps;
        if (env->heartbeat->leaving && !p->leaving) {
            p->leaving = 1;
            TD_LOG_INFO("router: replica %s is stopping: it finishes its %d request(s), new ones "
                        "go elsewhere",
                        p->replica_id, p->in_flight);
        }
        heartbeat_to(r, i);
    } else if (env->body_case == TANDEM__ENVELOPE__BODY_CHUNK) {
        Tandem__GenerateChunk *c = env->chunk;
        job *j = NULL;
        for (int k = 0; k < r->njobs && !j; k++)
            if (r->jobs[k].used && r->jobs[k].rid == c->id && r->jobs[k].replica == i)
                j = &r->jobs[k];
        if (j) {
            int last = (c->has_done && c->done) || c->error;
            c->id = j->client_id;
            td_status s = td_wire_send(r->front, j->client, j->client_len, env);
            if (s != TD_OK) { /* the client is gone: stop the work */
                TD_LOG_INFO("router: client of request %llu gone (%s); cancelling it",
                            (unsigned long long)j->rid, td_error_message());
                if (!last) send_cancel(r, p, j->rid);
                last = 1;
            }
            if (last) {
                p->served++;
                end_job(r, j);
                drain_queue(r);
            }
        }
    }
    td_wire_free(env);
}

/* ---------------------------------------------------------------------------------------- */

/* To each client with a request here, queued or running: "still alive, still on it", so
 * that a client notices a dead router within three heartbeats. */
static void heartbeat_clients(td_router *r) {
    for (int k = 0; k < r->njobs; k++) {
        job *j = &r->jobs[k];
        if (!j->used) continue;
        Tandem__Heartbeat h = TANDEM__HEARTBEAT__INIT;
        h.has_request_id = 1;
        h.request_id = j->client_id;
        td_env e = TANDEM__ENVELOPE__INIT;
        e.body_case = TANDEM__ENVELOPE__BODY_HEARTBEAT;
        e.heartbeat = &h;
        if (td_wire_send(r->front, j->client, j->client_len, &e) != TD_OK) {
            td_error_clear(); /* the client is gone: stop its work */
            int ran = j->replica >= 0;
            if (ran) send_cancel(r, &r->rep[j->replica], j->rid);
            end_job(r, j);
            if (ran) drain_queue(r);
        }
    }
}

static void housekeeping(td_router *r, uint64_t now, uint64_t *next_hb) {
    uint64_t hb = (uint64_t)r->o.heartbeat_ms * 1000000ull;
    if (now >= *next_hb) {
        heartbeat_clients(r);
        for (int i = 0; i < r->nrep; i++) {
            if (!r->rep[i].alive) continue;
            if (now - r->rep[i].last_ns > 3 * hb) {
                char why[96];
                snprintf(why, sizeof why, "no heartbeat for %.1f s",
                         (double)(now - r->rep[i].last_ns) / 1e9);
                replica_lost(r, i, why);
            } else {
                heartbeat_to(r, i);
            }
        }
        *next_hb = now + hb;
    }
    uint64_t limit = (uint64_t)(r->o.queue_timeout_s * 1e9);
    for (int k = 0; k < r->njobs; k++) {
        job *j = &r->jobs[k];
        if (!j->used || j->replica >= 0) continue;
        if (now >= r->grace_end_ns && replicas_up(r, j->model) == 0) {
            /* held through the start-up grace for a model no replica has registered */
            char msg[512];
            snprintf(msg, sizeof msg,
                     r->mod[j->model].context ? "no replica of model '%.200s' is up"
                                              : "model '%.200s' not found (no replica serves it)",
                     r->mod[j->model].name);
            client_error(r, j->client, j->client_len, j->client_id,
                         r->mod[j->model].context ? 503 : 404, msg);
            end_job(r, j);
            continue;
        }
        if (now - j->queued_ns < limit) continue;
        char msg[256];
        snprintf(msg, sizeof msg,
                 "waited %.1f s in the queue of model '%.100s' without a free "
                 "replica (--queue-timeout)",
                 (double)(now - j->queued_ns) / 1e9, r->mod[j->model].name);
        client_error(r, j->client, j->client_len, j->client_id, 503, msg);
        end_job(r, j);
    }
}

td_status td_router_run(td_router *r, volatile int *stop) {
    TD_LOG_INFO("router: front %s, back %s", r->front_ep, r->back_ep);
    uint64_t next_hb = td_wire_now_ns();
    /* replicas of a router that restarted register again after three silent heartbeats */
    r->grace_end_ns = next_hb + 5ull * (uint64_t)r->o.heartbeat_ms * 1000000ull;
    uint8_t id[MAX_IDENT];
    while (!*stop) {
        zmq_pollitem_t it[2] = {{r->front, 0, ZMQ_POLLIN, 0}, {r->back, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, 2, 100);
        if (rc < 0 && errno != EINTR)
            return td_error_set(TD_ERR_IO, "router: zmq_poll: %s", zmq_strerror(errno));
        /* a bounded batch from each side per round, so neither starves the other */
        for (int side = 0; rc > 0 && side < 2; side++) {
            if (!(it[side].revents & ZMQ_POLLIN)) continue;
            for (int k = 0; k < 256; k++) {
                size_t n = 0;
                td_env *env = NULL;
                TD_TRY(td_wire_recv(side ? r->back : r->front, id, &n, 0, &env));
                if (!env) {
                    if (n == 0) break;
                    continue; /* an undecodable or empty message, already logged */
                }
                if (side)
                    on_back(r, id, n, env);
                else
                    on_front(r, id, n, env);
            }
        }
        housekeeping(r, td_wire_now_ns(), &next_hb);
    }
    return TD_OK;
}
