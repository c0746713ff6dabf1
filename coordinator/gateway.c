/* HTTP gateway (see gateway.h and docs/gateway.md).
 *
 * Threads: libmicrohttpd runs one thread per connection; everything a request needs lives
 * on that thread: its parsed body, its DEALER socket to the router (kept for the
 * connection's later requests, closed by a thread-key destructor), and, while streaming,
 * the reader that turns chunks into SSE or NDJSON. Shared state is only the metrics,
 * under a mutex. A wait for the router polls the client's socket too, so a client that
 * hangs up cancels its request within 100 ms.
 *
 * Why one file of this length: the routes (OpenAI and Ollama, streaming and not) share the
 * per-connection state, the request validation and the error shapes above them, and split
 * apart they would need that state in a header of its own for no reader's benefit. */
#include "coordinator/gateway.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/grow.h"
#include "common/log.h"
#include "common/utf8.h"
#include "proto/keys.h"
#include "proto/request.h"
#include "proto/wire.h"

#define TD_GATEWAY_VERSION "0.1.0"

/* ---------------------------------------------------------------------------------------- */
/* metrics */

#define NBUCKET 14
/* A body over the limit but at most this large is read and dropped before the 413. */
static const unsigned long long k_drain_max = 64ull << 20;

static const double bucket_le[NBUCKET] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};
typedef struct {
    uint64_t n[NBUCKET + 1];
    double sum;
    uint64_t count;
} histogram;

enum {
    R_COMPLETIONS,
    R_CHAT,
    R_MODELS,
    R_GENERATE,
    R_OCHAT,
    R_TAGS,
    R_PS,
    R_SHOW,
    R_VERSION,
    R_HEALTH,
    R_METRICS,
    R_UNKNOWN,
    R_COUNT
};
static const char *route_name[R_COUNT] = {"/v1/completions", "/v1/chat/completions",
                                          "/v1/models",      "/api/generate",
                                          "/api/chat",       "/api/tags",
                                          "/api/ps",         "/api/show",
                                          "/api/version",    "/health",
                                          "/metrics",        "other"};
static const int codes[] = {200, 400, 401, 404, 405, 413, 500, 503};
#define NCODES (int)(sizeof codes / sizeof codes[0])

typedef struct {
    pthread_mutex_t mu;
    uint64_t requests[R_COUNT][NCODES];
    uint64_t prompt_tokens, generated_tokens;
    histogram ttft, tpot, overhead;
} metrics;

static void hist_add(histogram *h, double v) {
    int i = 0;
    while (i < NBUCKET && v > bucket_le[i])
        i++;
    h->n[i]++;
    h->sum += v;
    h->count++;
}

/* ---------------------------------------------------------------------------------------- */

struct td_gateway {
    td_gateway_opts o;
    struct MHD_Daemon *d;
    void *ctx;
    int own_ctx;
    int port;
    char **keys;
    int nkeys;
    metrics m;
    pthread_key_t sock_key;
    uint64_t next_id;
    int curve;                 /* connect to the router with CURVE (not inproc, not --insecure) */
    td_client_keys keys_curve; /* this host's client pair and the router's public key */
};

typedef struct { /* a thread's socket to the router */
    void *sock;
} thread_sock;

static void close_thread_sock(void *p) {
    thread_sock *t = p;
    if (t && t->sock) zmq_close(t->sock);
    free(t);
}

/* The calling thread's DEALER to the router (made on first use). */
static void *router_sock(td_gateway *g) {
    thread_sock *t = pthread_getspecific(g->sock_key);
    if (t && t->sock) return t->sock;
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) return NULL;
        pthread_setspecific(g->sock_key, t);
    }
    t->sock = zmq_socket(g->ctx, ZMQ_DEALER);
    if (!t->sock) return NULL;
    int zero = 0;
    zmq_setsockopt(t->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (g->curve && td_keys_client_apply(t->sock, &g->keys_curve) != TD_OK) {
        TD_LOG_ERROR("gateway: %s", td_error_message());
        zmq_close(t->sock);
        t->sock = NULL;
        return NULL;
    }
    if (zmq_connect(t->sock, g->o.router) != 0) {
        TD_LOG_ERROR("gateway: cannot connect to the router at %s: %s", g->o.router,
                     zmq_strerror(errno));
        zmq_close(t->sock);
        t->sock = NULL;
    }
    return t->sock;
}

/* After a failure mid-conversation the socket may hold stale answers: start afresh. */
static void drop_router_sock(td_gateway *g) {
    thread_sock *t = pthread_getspecific(g->sock_key);
    if (t && t->sock) {
        zmq_close(t->sock);
        t->sock = NULL;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* request parsing */

typedef enum { K_COMPLETION, K_CHAT, K_OGENERATE, K_OCHAT } kind;

typedef struct {
    kind k;
    char *model;
    char *prompt;
    int nmsg;
    char **roles, **contents;
    int stream, include_usage;
    int has_temp, has_topk, has_topp, has_seed;
    double temperature, top_p;
    int top_k;
    uint64_t seed;
    int max_tokens; /* 0 = to the end of the context (TD_MAX_TOKENS_CONTEXT) */
    int has_max_tokens;
    int ignore_eos; /* vLLM's extension: do not stop at <|endoftext|> */
    int nstop;
    char *stop[16];
} gen_req;

static void gen_req_free(gen_req *q) {
    free(q->model);
    free(q->prompt);
    for (int i = 0; i < q->nmsg; i++) {
        free(q->roles[i]);
        free(q->contents[i]);
    }
    free(q->roles);
    free(q->contents);
    for (int i = 0; i < q->nstop; i++)
        free(q->stop[i]);
    memset(q, 0, sizeof *q);
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(msg, msg_len, __VA_ARGS__);                                                       \
        goto bad;                                                                                  \
    } while (0)

static int is_int(const cJSON *x) {
    return cJSON_IsNumber(x) && isfinite(x->valuedouble) && floor(x->valuedouble) == x->valuedouble;
}

/* Sampling options, from the body (OpenAI) or its "options" object (Ollama). */
static int parse_sampling(const cJSON *o, gen_req *q, int ollama, char *msg, size_t msg_len) {
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(o, "temperature")) && !cJSON_IsNull(x)) {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 10)
            FAIL("'temperature' must be a number from 0 to 10");
        q->has_temp = 1;
        q->temperature = x->valuedouble;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(o, "top_p")) && !cJSON_IsNull(x)) {
        if (!cJSON_IsNumber(x) || x->valuedouble <= 0 || x->valuedouble > 1)
            FAIL("'top_p' must be a number in (0, 1]");
        q->has_topp = 1;
        q->top_p = x->valuedouble;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(o, "top_k")) && !cJSON_IsNull(x)) {
        if (!is_int(x) || x->valuedouble < 0 || x->valuedouble > 1e6)
            FAIL("'top_k' must be an integer from 0 (all) to 1000000");
        q->has_topk = 1;
        q->top_k = (int)x->valuedouble;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(o, "seed")) && !cJSON_IsNull(x)) {
        if (!is_int(x) || x->valuedouble < 0 || x->valuedouble > 9007199254740991.0)
            FAIL("'seed' must be a non-negative integer");
        q->has_seed = 1;
        q->seed = (uint64_t)x->valuedouble;
    }
    const char *mt_key = ollama ? "num_predict" : "max_tokens";
    x = cJSON_GetObjectItemCaseSensitive(o, mt_key);
    if (!ollama && (!x || cJSON_IsNull(x)))
        x = cJSON_GetObjectItemCaseSensitive(o, "max_completion_tokens");
    if (x && !cJSON_IsNull(x)) {
        if (!is_int(x)) FAIL("'%s' must be an integer", mt_key);
        double v = x->valuedouble;
        if (ollama && (v == -1 || v == -2))
            v = TD_MAX_TOKENS_CONTEXT; /* Ollama: until the context is full */
        else if (v < 1 || v > 1e6)
            FAIL("'%s' must be from 1 to 1000000 (got %.0f)", mt_key, v);
        q->max_tokens = (int)v;
        q->has_max_tokens = 1;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(o, "stop")) && !cJSON_IsNull(x)) {
        if (cJSON_IsString(x)) {
            if (!x->valuestring[0]) FAIL("'stop' must not be an empty string");
            q->stop[q->nstop++] = strdup(x->valuestring);
        } else if (cJSON_IsArray(x)) {
            const cJSON *s;
            cJSON_ArrayForEach(s, x) {
                if (!cJSON_IsString(s) || !s->valuestring[0])
                    FAIL("'stop' must be a string or a list of non-empty strings");
                if (q->nstop == 16) FAIL("'stop' holds more than 16 strings");
                q->stop[q->nstop++] = strdup(s->valuestring);
            }
        } else {
            FAIL("'stop' must be a string or a list of strings");
        }
    }
    return 0;
bad:
    return 400;
}

/* Parses a generation request body; 0 or an HTTP status with msg set. */
static int parse_request(kind k, const char *body, size_t len, gen_req *q, char *msg,
                         size_t msg_len) {
    memset(q, 0, sizeof *q);
    q->k = k;
    int ollama = k == K_OGENERATE || k == K_OCHAT, chat = k == K_CHAT || k == K_OCHAT;
    cJSON *j = NULL;
    size_t bad_at;
    if (len == 0) FAIL("the request body is empty; expected a JSON object");
    if (!td_utf8_valid((const unsigned char *)body, len, &bad_at))
        FAIL("the request body is not valid UTF-8 (byte %zu)", bad_at);
    const char *end = NULL;
    j = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!j) FAIL("malformed JSON near byte %zu", end ? (size_t)(end - body) : (size_t)0);
    if (!cJSON_IsObject(j)) FAIL("the request body must be a JSON object");
    for (const char *p = end; p && p < body + len; p++) /* one object, then white space */
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != 0)
            FAIL("unexpected data after the JSON object at byte %zu", (size_t)(p - body));
    /* asked for and not computed: refused, never silently ignored */
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "logprobs");
    if (x && !cJSON_IsNull(x) && !cJSON_IsFalse(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0))
        FAIL("'logprobs' is not supported by this server");
    x = cJSON_GetObjectItemCaseSensitive(j, "top_logprobs");
    if (x && !cJSON_IsNull(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0))
        FAIL("'top_logprobs' is not supported by this server");
    x = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!x) FAIL("missing field 'model'");
    if (!cJSON_IsString(x) || !x->valuestring[0]) FAIL("'model' must be a non-empty string");
    q->model = strdup(x->valuestring);
    if (chat) {
        x = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!x) FAIL("missing field 'messages'");
        if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) == 0)
            FAIL("'messages' must be a non-empty list of {role, content} objects");
        int n = cJSON_GetArraySize(x);
        q->roles = calloc((size_t)n, sizeof *q->roles);
        q->contents = calloc((size_t)n, sizeof *q->contents);
        const cJSON *m;
        cJSON_ArrayForEach(m, x) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsObject(m) || !cJSON_IsString(r) ||
                (!cJSON_IsString(c) && !cJSON_IsArray(c)))
                FAIL("messages[%d] must be an object with string 'role' and 'content'", q->nmsg);
            char *text = NULL;
            if (cJSON_IsString(c)) {
                text = strdup(c->valuestring);
            } else { /* OpenAI's content parts: the text parts, joined */
                size_t len = 1;
                const cJSON *part;
                cJSON_ArrayForEach(part, c) {
                    const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
                    if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") ||
                        !cJSON_IsString(t))
                        FAIL("messages[%d].content: only parts of type 'text' are supported",
                             q->nmsg);
                    len += strlen(t->valuestring);
                }
                text = calloc(1, len);
                cJSON_ArrayForEach(part, c)
                    strcat(text, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
            }
            const char *role = r->valuestring;
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
                strcmp(role, "developer")) {
                free(text);
                FAIL("messages[%d].role: \"%.40s\" is not one of system, developer, user, "
                     "assistant",
                     q->nmsg, role);
            }
            q->roles[q->nmsg] = strdup(strcmp(role, "developer") ? role : "system");
            q->contents[q->nmsg++] = text;
        }
    } else {
        x = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (!x) FAIL("missing field 'prompt'");
        if (!cJSON_IsString(x)) FAIL("'prompt' must be a string");
        q->prompt = strdup(x->valuestring);
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "stream");
    q->stream = ollama; /* Ollama streams unless told not to */
    if (x && !cJSON_IsNull(x)) {
        if (!cJSON_IsBool(x)) FAIL("'stream' must be true or false");
        q->stream = cJSON_IsTrue(x);
    }
    if (!ollama) {
        x = cJSON_GetObjectItemCaseSensitive(j, "n");
        if (x && !cJSON_IsNull(x) && (!is_int(x) || x->valuedouble != 1))
            FAIL("only 'n': 1 is supported");
        x = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
        if (x && cJSON_IsObject(x))
            q->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "include_usage"));
        x = cJSON_GetObjectItemCaseSensitive(j, "ignore_eos");
        if (x && !cJSON_IsNull(x)) {
            if (!cJSON_IsBool(x)) FAIL("'ignore_eos' must be true or false");
            q->ignore_eos = cJSON_IsTrue(x);
        }
        if (parse_sampling(j, q, 0, msg, msg_len)) goto bad;
    } else {
        x = cJSON_GetObjectItemCaseSensitive(j, "options");
        if (x && !cJSON_IsNull(x)) {
            if (!cJSON_IsObject(x)) FAIL("'options' must be an object");
            if (parse_sampling(x, q, 1, msg, msg_len)) goto bad;
        }
    }
    cJSON_Delete(j);
    return 0;
bad:
    cJSON_Delete(j);
    gen_req_free(q);
    return 400;
}

int td_gateway_check_request(const char *route, const char *body, size_t len, char *msg,
                             size_t msg_len) {
    kind k = !strcmp(route, "/v1/chat/completions") ? K_CHAT
             : !strcmp(route, "/api/generate")      ? K_OGENERATE
             : !strcmp(route, "/api/chat")          ? K_OCHAT
                                                    : K_COMPLETION;
    gen_req q;
    int st = parse_request(k, body, len, &q, msg, msg_len);
    if (!st) gen_req_free(&q);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* talking to the router */

typedef enum { W_CHUNK, W_TIMEOUT, W_GONE, W_IO, W_LOST } wait_result;

/* Has the HTTP client hung up? */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Waits for the next chunk of request `id` (others are stale and skipped). */
/* Waits for the next chunk of request id. *heard: when the router last spoke about it (a
 * chunk, or the heartbeat it sends every heartbeat_ms for each request it holds); 0 until
 * it first does. Once it has, silence for three heartbeats means the router is gone
 * (W_LOST); before, the request may sit in the socket's queue while the router restarts,
 * so only the request timeout applies. */
static wait_result next_chunk(td_gateway *g, void *sock, uint64_t id, int fd, uint64_t *heard,
                              td_env **out) {
    uint64_t start = td_wire_now_ns(), limit = (uint64_t)(g->o.timeout_s * 1e9);
    uint64_t lost = 3ull * (uint64_t)g->o.router_heartbeat_ms * 1000000ull;
    static _Thread_local uint64_t last_check;
    *out = NULL;
    for (;;) {
        uint64_t now = td_wire_now_ns();
        if (now - last_check > 100000000ull) { /* the client, every 100 ms, busy or not */
            last_check = now;
            if (client_gone(fd)) return W_GONE;
        }
        if (now - start > limit) return W_TIMEOUT;
        if (*heard && now - *heard > lost) return W_LOST;
        td_env *env = NULL;
        if (td_wire_recv(sock, NULL, NULL, 100, &env) != TD_OK) return W_IO;
        if (!env) continue;
        if (env->body_case == TANDEM__ENVELOPE__BODY_HEARTBEAT &&
            (!env->heartbeat->has_request_id || env->heartbeat->request_id == id)) {
            *heard = td_wire_now_ns();
        } else if (env->body_case == TANDEM__ENVELOPE__BODY_CHUNK && env->chunk->id == id) {
            *heard = td_wire_now_ns();
            *out = env;
            return W_CHUNK;
        }
        td_wire_free(env); /* a heartbeat, or a stale answer to an earlier request */
    }
}

static const char *wait_message(wait_result w) {
    return w == W_TIMEOUT ? "no answer from the router in time"
           : w == W_LOST  ? "lost the router: no word from it for three heartbeats (it died "
                            "or is stuck); the request may be retried"
                          : "lost the connection to the router";
}

static void send_cancel(void *sock, uint64_t id) {
    Tandem__Cancel c = TANDEM__CANCEL__INIT;
    c.id = id;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_CANCEL;
    e.cancel = &c;
    if (td_wire_send(sock, NULL, 0, &e) != TD_OK)
        TD_LOG_WARN("gateway: cancel not sent: %s", td_error_message());
}

static td_status send_request(void *sock, uint64_t id, const gen_req *q) {
    Tandem__GenerateRequest r = TANDEM__GENERATE_REQUEST__INIT;
    Tandem__Sampling s = TANDEM__SAMPLING__INIT;
    r.id = id;
    r.model = q->model;
    r.prompt = q->prompt;
    Tandem__ChatMessage *msgs = calloc((size_t)q->nmsg + 1, sizeof *msgs);
    Tandem__ChatMessage **mp = calloc((size_t)q->nmsg + 1, sizeof *mp);
    for (int i = 0; i < q->nmsg; i++) {
        tandem__chat_message__init(&msgs[i]);
        msgs[i].role = q->roles[i];
        msgs[i].content = q->contents[i];
        mp[i] = &msgs[i];
    }
    r.n_messages = (size_t)q->nmsg;
    r.messages = mp;
    s.has_temperature = q->has_temp;
    s.temperature = (float)q->temperature;
    s.has_top_k = q->has_topk;
    s.top_k = q->top_k;
    s.has_top_p = q->has_topp;
    s.top_p = (float)q->top_p;
    s.has_seed = q->has_seed;
    s.seed = q->seed;
    s.has_max_tokens = q->has_max_tokens;
    s.max_tokens = q->max_tokens;
    s.has_ignore_eot = q->ignore_eos;
    s.ignore_eot = q->ignore_eos;
    td_request_defaults(&s, q->k >= K_OGENERATE ? TD_API_OLLAMA : TD_API_OPENAI,
                        q->k == K_CHAT || q->k == K_OCHAT);
    s.n_stop = (size_t)q->nstop;
    s.stop = (char **)q->stop;
    r.sampling = &s;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_REQUEST;
    e.request = &r;
    td_status st = td_wire_send(sock, NULL, 0, &e);
    free(msgs);
    free(mp);
    return st;
}

/* The router's status (NULL when it does not answer within 2 s). */
static Tandem__StatusReply *router_status(td_gateway *g) {
    void *sock = router_sock(g);
    if (!sock) return NULL;
    Tandem__StatusRequest q = TANDEM__STATUS_REQUEST__INIT;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_STATUS_REQUEST;
    e.status_request = &q;
    if (td_wire_send(sock, NULL, 0, &e) != TD_OK) return NULL;
    for (int i = 0; i < 20; i++) {
        td_env *r = NULL;
        if (td_wire_recv(sock, NULL, NULL, 100, &r) != TD_OK) break;
        if (!r) continue;
        if (r->body_case == TANDEM__ENVELOPE__BODY_STATUS) {
            Tandem__StatusReply *st = r->status;
            r->status = NULL; /* detach from the envelope */
            r->body_case = TANDEM__ENVELOPE__BODY__NOT_SET;
            td_wire_free(r);
            return st;
        }
        td_wire_free(r); /* a stale chunk of an earlier request */
    }
    drop_router_sock(g);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* responses */

typedef struct {
    int route;
    char *body;
    size_t len, cap;
    int too_big, done, body_done;
    int early_status;      /* an error known from the headers (404, 405, 401) */
    const char *early_msg; /* its message (a literal) */
} conn;

static enum MHD_Result respond(td_gateway *g, struct MHD_Connection *c, int route, int status,
                               const char *ctype, char *body) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    pthread_mutex_lock(&g->m.mu);
    for (int i = 0; i < NCODES; i++)
        if (codes[i] == status) g->m.requests[route][i]++;
    pthread_mutex_unlock(&g->m.mu);
    return ret;
}

static enum MHD_Result respond_json(td_gateway *g, struct MHD_Connection *c, int route, int status,
                                    cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return respond(g, c, route, status, "application/json", s);
}

static const char *error_type(int status) {
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 503:
        return "service_unavailable";
    default:
        return "server_error";
    }
}

static int is_ollama(int route) {
    return route >= R_GENERATE && route <= R_VERSION;
}

static cJSON *error_json(int route, int status, const char *msg) {
    cJSON *j = cJSON_CreateObject();
    if (is_ollama(route)) {
        cJSON_AddStringToObject(j, "error", msg);
        return j;
    }
    cJSON *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", error_type(status));
    cJSON_AddNumberToObject(e, "code", status);
    return j;
}

static enum MHD_Result respond_error(td_gateway *g, struct MHD_Connection *c, int route, int status,
                                     const char *msg) {
    return respond_json(g, c, route, status, error_json(route, status, msg));
}

static void rfc3339_now(char *out, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%09ldZ", ts.tv_nsec);
}

static void random_id(td_gateway *g, const char *prefix, char *out, size_t n) {
    uint64_t x = __atomic_add_fetch(&g->next_id, 1, __ATOMIC_RELAXED);
    uint64_t t = td_wire_now_ns() ^ (x * 0x9E3779B97F4A7C15ull);
    snprintf(out, n, "%s-%016llx%04llx", prefix, (unsigned long long)t,
             (unsigned long long)(x & 0xffff));
}

/* One generation in flight: what the response needs, whether streamed or not. */
typedef struct {
    td_gateway *g;
    gen_req q;
    void *sock;
    uint64_t id;
    uint64_t heard; /* when the router last spoke about this request (next_chunk) */
    int fd, route;
    char obj_id[64];
    long created;
    uint64_t t0, t_first, t_last;
    char *text;
    size_t text_len, text_cap;
    uint32_t prompt_tokens, completion_tokens;
    uint64_t replica_ns, prompt_eval_ns;
    char finish[16];
    int finished, sent_role, ended;
    char *out; /* pending bytes of the stream */
    size_t out_len, out_pos;
} gen;

/* Appends s, with every byte that is not part of valid UTF-8 (a character cut by the token
 * limit, or bytes the model produced) replaced by U+FFFD, so the JSON we send is UTF-8. */
static td_status gen_append_text(gen *x, const char *s) {
    size_t n = strlen(s);
    TD_TRY(TD_GROW(x->text, x->text_cap, x->text_len + 3 * n + 1));
    x->text_len += td_utf8_repair(s, n, x->text + x->text_len);
    return TD_OK;
}

static void gen_record(gen *x) {
    td_gateway *g = x->g;
    uint64_t now = td_wire_now_ns();
    pthread_mutex_lock(&g->m.mu);
    g->m.prompt_tokens += x->prompt_tokens;
    g->m.generated_tokens += x->completion_tokens;
    if (x->t_first) hist_add(&g->m.ttft, (double)(x->t_first - x->t0) / 1e9);
    if (x->completion_tokens > 1 && x->t_first)
        hist_add(&g->m.tpot, (double)(now - x->t_first) / 1e9 / (x->completion_tokens - 1));
    double total = (double)(now - x->t0) / 1e9, rep = (double)x->replica_ns / 1e9;
    if (x->replica_ns && total >= rep) hist_add(&g->m.overhead, total - rep);
    pthread_mutex_unlock(&g->m.mu);
}

/* Folds one chunk into x. Returns 0, or an HTTP status with msg for an error chunk (500 when
 * the gateway runs out of memory keeping the text). */
static int gen_take(gen *x, const Tandem__GenerateChunk *c, char *msg, size_t msg_len) {
    if (c->error) {
        snprintf(msg, msg_len, "%s", c->error);
        return c->has_error_code && c->error_code ? (int)c->error_code : 500;
    }
    uint64_t now = td_wire_now_ns();
    if (c->text && c->text[0]) {
        if (!x->t_first) x->t_first = now;
        if (gen_append_text(x, c->text) != TD_OK) {
            /* the answer cannot be kept: stop the replica's work too, as callers take an error
             * return for the end of the request and cancel nothing */
            TD_LOG_ERROR("gateway: %s: %s", x->obj_id, td_error_message());
            if (x->sock) send_cancel(x->sock, x->id);
            snprintf(msg, msg_len, "gateway: %s", td_error_message());
            return 500;
        }
    }
    if (c->has_prompt_tokens) x->prompt_tokens = c->prompt_tokens;
    if (c->has_replica_ns) x->replica_ns = c->replica_ns;
    if (c->has_done && c->done) {
        x->finished = 1;
        x->t_last = now;
        if (c->has_completion_tokens) x->completion_tokens = c->completion_tokens;
        if (c->has_prompt_eval_ns) x->prompt_eval_ns = c->prompt_eval_ns;
        snprintf(x->finish, sizeof x->finish, "%s", c->finish_reason ? c->finish_reason : "stop");
    }
    return 0;
}

static void add_tandem_timing(gen *x, cJSON *j) {
    cJSON *t = cJSON_AddObjectToObject(j, "tandem");
    cJSON_AddNumberToObject(t, "replica_us", (double)(x->replica_ns / 1000));
    cJSON_AddNumberToObject(t, "gateway_us", (double)((x->t_last - x->t0) / 1000));
}

static cJSON *usage_json(const gen *x) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", x->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", x->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", x->prompt_tokens + x->completion_tokens);
    return u;
}

/* OpenAI object for the whole answer or one streamed piece (delta = text of the piece). */
static cJSON *openai_json(gen *x, const char *delta, int final_piece, int whole) {
    int chat = x->q.k == K_CHAT;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", x->obj_id);
    cJSON_AddStringToObject(j, "object",
                            chat ? (whole ? "chat.completion" : "chat.completion.chunk")
                                 : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)x->created);
    cJSON_AddStringToObject(j, "model", x->q.model);
    cJSON *ch = cJSON_AddArrayToObject(j, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(c, whole ? "message" : "delta");
        if (whole || !x->sent_role) {
            cJSON_AddStringToObject(m, "role", "assistant");
            x->sent_role = 1;
        }
        const char *all = x->text ? x->text : "";
        if (whole || delta) cJSON_AddStringToObject(m, "content", whole ? all : delta);
    } else {
        cJSON_AddStringToObject(c, "text", whole ? (x->text ? x->text : "") : (delta ? delta : ""));
        cJSON_AddNullToObject(c, "logprobs");
    }
    if (final_piece || whole)
        cJSON_AddStringToObject(c, "finish_reason", x->finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    if (whole) cJSON_AddItemToObject(j, "usage", usage_json(x));
    if (final_piece || whole) add_tandem_timing(x, j);
    return j;
}

/* Ollama object: a streamed piece, or (final) the last line / the whole answer. */
static cJSON *ollama_json(gen *x, const char *piece, int final) {
    int chat = x->q.k == K_OCHAT;
    char ts[64];
    rfc3339_now(ts, sizeof ts);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", x->q.model);
    cJSON_AddStringToObject(j, "created_at", ts);
    const char *content = piece ? piece : "";
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(j, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", content);
    } else {
        cJSON_AddStringToObject(j, "response", content);
    }
    cJSON_AddBoolToObject(j, "done", final);
    if (final) {
        uint64_t total = x->t_last - x->t0, pe = x->prompt_eval_ns;
        uint64_t ev = x->replica_ns > pe ? x->replica_ns - pe : 1;
        cJSON_AddStringToObject(j, "done_reason", x->finish);
        cJSON_AddNumberToObject(j, "total_duration", (double)(total ? total : 1));
        cJSON_AddNumberToObject(j, "load_duration", 0);
        cJSON_AddNumberToObject(j, "prompt_eval_count", x->prompt_tokens);
        cJSON_AddNumberToObject(j, "prompt_eval_duration", (double)(pe ? pe : 1));
        cJSON_AddNumberToObject(j, "eval_count", x->completion_tokens);
        cJSON_AddNumberToObject(j, "eval_duration", (double)ev);
    }
    return j;
}

static void out_add(gen *x, const char *prefix, cJSON *j, const char *suffix) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    if (j) cJSON_Delete(j);
    size_t need = strlen(prefix) + (s ? strlen(s) : 0) + strlen(suffix);
    char *o = malloc(x->out_len - x->out_pos + need + 1);
    size_t k = x->out_len - x->out_pos;
    memcpy(o, x->out + x->out_pos, k);
    k += (size_t)sprintf(o + k, "%s%s%s", prefix, s ? s : "", suffix);
    free(x->out);
    free(s);
    x->out = o;
    x->out_len = k;
    x->out_pos = 0;
}

static void stream_error(gen *x, int status, const char *msg) {
    if (x->q.k == K_OGENERATE || x->q.k == K_OCHAT) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "error", msg);
        out_add(x, "", j, "\n");
    } else {
        out_add(x, "data: ", error_json(R_COMPLETIONS, status, msg), "\n\n");
    }
}

/* Gives up on the router conversation: cancel (best effort), then a fresh socket next time. */
static void abandon(gen *x) {
    if (x->sock && !x->ended && !x->finished) send_cancel(x->sock, x->id);
    drop_router_sock(x->g);
    x->sock = NULL;
    x->ended = 1;
}

static void gen_close(gen *x) {
    if (!x->finished && x->sock && !x->ended) send_cancel(x->sock, x->id);
    gen_req_free(&x->q);
    free(x->text);
    free(x->out);
    free(x);
}

/* Stream reader: pending bytes first; else the next chunk, formatted. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    gen *x = cls;
    for (;;) {
        if (x->out_pos < x->out_len) {
            size_t n = x->out_len - x->out_pos < max ? x->out_len - x->out_pos : max;
            memcpy(buf, x->out + x->out_pos, n);
            x->out_pos += n;
            return (ssize_t)n;
        }
        if (x->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        td_env *env = NULL;
        wait_result w = next_chunk(x->g, x->sock, x->id, x->fd, &x->heard, &env);
        if (w == W_GONE) { /* the client hung up: cancel (gen_close) and stop */
            TD_LOG_INFO("gateway: client of %s went away; cancelling", x->obj_id);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        int ollama = x->q.k == K_OGENERATE || x->q.k == K_OCHAT;
        if (w != W_CHUNK) {
            stream_error(x, 503, wait_message(w));
            abandon(x);
            continue;
        }
        char msg[512];
        size_t before = x->text_len;
        int st = gen_take(x, env->chunk, msg, sizeof msg);
        td_wire_free(env);
        if (st) {
            stream_error(x, st, msg);
            x->ended = 1;
            x->finished = 1; /* the request is over on the far side */
            continue;
        }
        const char *piece = x->text_len > before ? x->text + before : NULL;
        if (ollama) {
            if (piece) out_add(x, "", ollama_json(x, piece, 0), "\n");
            if (x->finished) out_add(x, "", ollama_json(x, NULL, 1), "\n");
        } else {
            if (piece || (x->q.k == K_CHAT && !x->sent_role && !x->finished))
                out_add(x, "data: ", openai_json(x, piece, 0, 0), "\n\n");
            if (x->finished) {
                out_add(x, "data: ", openai_json(x, NULL, 1, 0), "\n\n");
                if (x->q.include_usage) {
                    cJSON *u = openai_json(x, NULL, 0, 0);
                    cJSON_DeleteItemFromObject(u, "choices");
                    cJSON_AddArrayToObject(u, "choices");
                    cJSON_AddItemToObject(u, "usage", usage_json(x));
                    out_add(x, "data: ", u, "\n\n");
                }
                out_add(x, "data: [DONE]", NULL, "\n\n");
            }
        }
        if (x->finished) {
            x->ended = 1;
            gen_record(x);
        }
    }
}

static void stream_free(void *cls) {
    gen_close(cls);
}

/* Takes the next chunk of x's request into x (before any response is queued). Returns 0;
 * or, with the request over and x freed, -1 when the client hung up, else the HTTP status
 * of the error with msg set. *accepted (when not NULL): the chunk was the replica's. */
static int gen_step(gen *x, char *msg, size_t msg_len, int *accepted) {
    td_env *env = NULL;
    wait_result w = next_chunk(x->g, x->sock, x->id, x->fd, &x->heard, &env);
    if (w != W_CHUNK) {
        if (w != W_GONE) abandon(x);
        snprintf(msg, msg_len, "%s", wait_message(w));
        gen_close(x);
        return w == W_GONE ? -1 : 503;
    }
    if (accepted) *accepted = env->chunk->has_accepted && env->chunk->accepted;
    int st = gen_take(x, env->chunk, msg, msg_len);
    td_wire_free(env);
    if (st) {
        x->finished = 1; /* the request is over on the far side: no cancel */
        gen_close(x);
    }
    return st;
}

static enum MHD_Result handle_generate(td_gateway *g, struct MHD_Connection *c, int route,
                                       const char *body, size_t len) {
    kind k = route == R_COMPLETIONS ? K_COMPLETION
             : route == R_CHAT      ? K_CHAT
             : route == R_GENERATE  ? K_OGENERATE
                                    : K_OCHAT;
    char msg[512];
    gen *x = calloc(1, sizeof *x);
    x->g = g;
    x->route = route;
    x->t0 = td_wire_now_ns();
    x->created = (long)time(NULL);
    int st = parse_request(k, body, len, &x->q, msg, sizeof msg);
    if (st) {
        free(x);
        return respond_error(g, c, route, st, msg);
    }
    random_id(g, k == K_CHAT ? "chatcmpl" : "cmpl", x->obj_id, sizeof x->obj_id);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    x->fd = ci ? ci->connect_fd : -1;
    x->sock = router_sock(g);
    x->id = __atomic_add_fetch(&g->next_id, 1, __ATOMIC_RELAXED);
    if (!x->sock || send_request(x->sock, x->id, &x->q) != TD_OK) {
        x->finished = 1; /* nothing to cancel */
        abandon(x);
        gen_close(x);
        return respond_error(g, c, route, 503, "the router cannot be reached");
    }
    /* until the replica accepts: errors still get their own status code */
    for (;;) {
        int accepted = 0;
        st = gen_step(x, msg, sizeof msg, &accepted);
        if (st) return st < 0 ? MHD_NO : respond_error(g, c, route, st, msg);
        if (accepted || x->text_len || x->finished) break;
    }
    if (x->q.stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                   stream_reader, x, stream_free);
        int ollama = k == K_OGENERATE || k == K_OCHAT;
        MHD_add_response_header(r, "Content-Type",
                                ollama ? "application/x-ndjson" : "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        pthread_mutex_lock(&g->m.mu);
        g->m.requests[route][0]++;
        pthread_mutex_unlock(&g->m.mu);
        return ret;
    }
    while (!x->finished) {
        st = gen_step(x, msg, sizeof msg, NULL);
        if (st) return st < 0 ? MHD_NO : respond_error(g, c, route, st, msg);
    }
    gen_record(x);
    cJSON *j =
        k == K_COMPLETION || k == K_CHAT ? openai_json(x, NULL, 0, 1) : ollama_json(x, x->text, 1);
    gen_close(x);
    return respond_json(g, c, route, 200, j);
}

/* ---------------------------------------------------------------------------------------- */
/* model listings, health, metrics */

static cJSON *model_details(const Tandem__ModelStatus *m) {
    cJSON *d = m->details ? cJSON_Parse(m->details) : NULL;
    return d ? d : cJSON_CreateObject();
}

static cJSON *ollama_model_entry(const Tandem__ModelStatus *m, int ps) {
    cJSON *d = model_details(m), *e = cJSON_CreateObject();
    char ts[64];
    rfc3339_now(ts, sizeof ts);
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(d, "weight_bytes");
    double size = cJSON_IsNumber(bytes) ? bytes->valuedouble : 0;
    cJSON_AddStringToObject(e, "name", m->name);
    cJSON_AddStringToObject(e, "model", m->name);
    cJSON_AddStringToObject(e, "modified_at", ts);
    cJSON_AddNumberToObject(e, "size", size);
    cJSON_AddStringToObject(e, "digest", "");
    cJSON *det = cJSON_AddObjectToObject(e, "details");
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(d, "adapter");
    /* a LoRA adapter served on a base: Ollama names the base parent_model */
    x = cJSON_GetObjectItemCaseSensitive(x, "base");
    cJSON_AddStringToObject(det, "parent_model", cJSON_IsString(x) ? x->valuestring : "");
    cJSON_AddStringToObject(det, "format", "safetensors");
    x = cJSON_GetObjectItemCaseSensitive(d, "architecture");
    cJSON_AddStringToObject(det, "family", cJSON_IsString(x) ? x->valuestring : "");
    x = cJSON_GetObjectItemCaseSensitive(d, "parameter_size");
    cJSON_AddStringToObject(det, "parameter_size", cJSON_IsString(x) ? x->valuestring : "");
    x = cJSON_GetObjectItemCaseSensitive(d, "quantization");
    cJSON_AddStringToObject(det, "quantization_level", cJSON_IsString(x) ? x->valuestring : "");
    if (ps) {
        cJSON_AddStringToObject(e, "expires_at", "2999-01-01T00:00:00Z");
        cJSON_AddNumberToObject(e, "size_vram", 0);
    }
    cJSON_Delete(d);
    return e;
}

static enum MHD_Result handle_listing(td_gateway *g, struct MHD_Connection *c, int route,
                                      const char *body, size_t len) {
    Tandem__StatusReply *st = router_status(g);
    if (!st) return respond_error(g, c, route, 503, "the router does not answer");
    cJSON *j = cJSON_CreateObject();
    int status = 200;
    if (route == R_MODELS) {
        cJSON_AddStringToObject(j, "object", "list");
        cJSON *a = cJSON_AddArrayToObject(j, "data");
        for (size_t i = 0; i < st->n_models; i++) {
            if (!st->models[i]->replicas_up) continue;
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "id", st->models[i]->name);
            cJSON_AddStringToObject(m, "object", "model");
            cJSON_AddNumberToObject(m, "created", (double)time(NULL));
            cJSON_AddStringToObject(m, "owned_by", "tandem");
            cJSON_AddItemToArray(a, m);
        }
    } else if (route == R_TAGS || route == R_PS) {
        cJSON *a = cJSON_AddArrayToObject(j, "models");
        for (size_t i = 0; i < st->n_models; i++)
            if (st->models[i]->replicas_up)
                cJSON_AddItemToArray(a, ollama_model_entry(st->models[i], route == R_PS));
    } else { /* /api/show */
        cJSON *b = cJSON_ParseWithLength(body, len);
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(b, "model");
        if (!x) x = cJSON_GetObjectItemCaseSensitive(b, "name");
        const Tandem__ModelStatus *m = NULL;
        for (size_t i = 0; cJSON_IsString(x) && i < st->n_models; i++)
            if (!strcmp(st->models[i]->name, x->valuestring) && st->models[i]->replicas_up)
                m = st->models[i];
        if (!b || !cJSON_IsString(x)) {
            cJSON_Delete(j);
            j = error_json(route, 400, "expected a JSON object with a string 'model'");
            status = 400;
        } else if (!m) {
            char msg[300];
            snprintf(msg, sizeof msg, "model '%.200s' not found", x->valuestring);
            cJSON_Delete(j);
            j = error_json(route, 404, msg);
            status = 404;
        } else {
            cJSON *e = ollama_model_entry(m, 0);
            cJSON_AddItemToObject(j, "details", cJSON_DetachItemFromObject(e, "details"));
            cJSON_Delete(e);
            cJSON_AddStringToObject(j, "modelfile", "");
            cJSON_AddStringToObject(j, "parameters", "");
            cJSON_AddStringToObject(j, "template",
                                    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
                                    "<|im_end|>\n{{ end }}<|im_start|>assistant\n");
            cJSON_AddItemToObject(j, "model_info", model_details(m));
            cJSON *cap = cJSON_AddArrayToObject(j, "capabilities");
            cJSON_AddItemToArray(cap, cJSON_CreateString("completion"));
        }
        cJSON_Delete(b);
    }
    tandem__status_reply__free_unpacked(st, NULL);
    return respond_json(g, c, route, status, j);
}

static void metric_hist(FILE *f, const char *name, const char *help, const histogram *h) {
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < NBUCKET; i++) {
        cum += h->n[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], (unsigned long long)cum);
    }
    cum += h->n[NBUCKET];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", name,
            (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

/* A label value in Prometheus' text format: backslash, double quote and newline escaped
 * (names come from replicas: one odd name must not make the whole page unreadable). */
static void label(FILE *f, const char *key, const char *v) {
    fprintf(f, "%s=\"", key);
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
    fputc('"', f);
}

static enum MHD_Result handle_ops(td_gateway *g, struct MHD_Connection *c, int route) {
    Tandem__StatusReply *st = router_status(g);
    int up = 0;
    for (size_t i = 0; st && i < st->n_models; i++)
        up += (int)st->models[i]->replicas_up;
    if (route == R_HEALTH) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "status", !st ? "router unreachable" : up ? "ok" : "no replica");
        cJSON_AddNumberToObject(j, "replicas", up);
        if (st) tandem__status_reply__free_unpacked(st, NULL);
        return respond_json(g, c, route, st && up ? 200 : 503, j);
    }
    char *buf = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&buf, &blen);
    fprintf(f, "# HELP tandem_requests_total HTTP requests by route and status code.\n"
               "# TYPE tandem_requests_total counter\n");
    pthread_mutex_lock(&g->m.mu);
    metrics m = g->m;
    pthread_mutex_unlock(&g->m.mu);
    for (int r = 0; r < R_COUNT; r++)
        for (int i = 0; i < NCODES; i++)
            if (m.requests[r][i])
                fprintf(f, "tandem_requests_total{route=\"%s\",code=\"%d\"} %llu\n", route_name[r],
                        codes[i], (unsigned long long)m.requests[r][i]);
    fprintf(f,
            "# HELP tandem_prompt_tokens_total Prompt tokens of completed requests.\n"
            "# TYPE tandem_prompt_tokens_total counter\ntandem_prompt_tokens_total %llu\n",
            (unsigned long long)m.prompt_tokens);
    fprintf(f,
            "# HELP tandem_generated_tokens_total Tokens generated.\n"
            "# TYPE tandem_generated_tokens_total counter\n"
            "tandem_generated_tokens_total %llu\n",
            (unsigned long long)m.generated_tokens);
    fprintf(f,
            "# HELP tandem_router_up 1 when the router answers.\n# TYPE tandem_router_up gauge\n"
            "tandem_router_up %d\n",
            st != NULL);
    static const struct {
        const char *name, *help;
    } gauges[3] = {{"tandem_replicas_up", "Live replicas per model."},
                   {"tandem_queue_length", "Requests waiting for a replica, per model."},
                   {"tandem_in_flight", "Requests running on replicas, per model."}};
    for (int k = 0; k < 3; k++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", gauges[k].name, gauges[k].help,
                gauges[k].name);
        for (size_t i = 0; st && i < st->n_models; i++) {
            const Tandem__ModelStatus *ms = st->models[i];
            fprintf(f, "%s{", gauges[k].name);
            label(f, "model", ms->name);
            fprintf(f, "} %u\n",
                    k == 0   ? ms->replicas_up
                    : k == 1 ? ms->queue_length
                             : ms->in_flight);
        }
    }
    /* per replica, once (a replica serving a base and its adapters is listed under each;
     * the first listing is its base) */
    static const struct {
        const char *name, *help;
    } counters[3] = {
        {"tandem_replica_requests_total", "Requests completed per replica (all its models)."},
        {"tandem_engine_steps_total", "Engine steps (batched forwards) per replica."},
        {"tandem_engine_mixed_steps_total",
         "Engine steps whose batch held requests of different models of the replica (its base "
         "and LoRA adapters)."}};
    for (int c = 0; c < 3; c++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s counter\n", counters[c].name, counters[c].help,
                counters[c].name);
        for (size_t i = 0; st && i < st->n_models; i++) {
            const Tandem__ModelStatus *ms = st->models[i];
            for (size_t k = 0; k < ms->n_replica_ids; k++) {
                int seen = 0;
                for (size_t i2 = 0; i2 < i && !seen; i2++)
                    for (size_t k2 = 0; k2 < st->models[i2]->n_replica_ids && !seen; k2++)
                        seen = !strcmp(st->models[i2]->replica_ids[k2], ms->replica_ids[k]);
                const uint64_t *v = c == 0 ? ms->served : c == 1 ? ms->steps : ms->mixed_steps;
                size_t nv = c == 0 ? ms->n_served : c == 1 ? ms->n_steps : ms->n_mixed_steps;
                if (seen || k >= nv) continue;
                fprintf(f, "%s{", counters[c].name);
                label(f, "model", ms->name);
                fputc(',', f);
                label(f, "replica", ms->replica_ids[k]);
                fprintf(f, "} %llu\n", (unsigned long long)v[k]);
            }
        }
    }
    metric_hist(f, "tandem_ttft_seconds", "Time to first token, at the gateway.", &m.ttft);
    metric_hist(f, "tandem_time_per_output_token_seconds", "Time per output token after the first.",
                &m.tpot);
    metric_hist(f, "tandem_gateway_overhead_seconds",
                "Request time outside the replica (HTTP, gateway, router, ZeroMQ).", &m.overhead);
    fclose(f);
    if (st) tandem__status_reply__free_unpacked(st, NULL);
    return respond(g, c, route, 200, "text/plain; version=0.0.4", buf);
}

/* ---------------------------------------------------------------------------------------- */
/* dispatch */

static int route_of(const char *method, const char *url, int *method_ok) {
    static const struct {
        const char *url, *method;
        int route;
    } t[] = {{"/v1/completions", "POST", R_COMPLETIONS},
             {"/v1/chat/completions", "POST", R_CHAT},
             {"/v1/models", "GET", R_MODELS},
             {"/api/generate", "POST", R_GENERATE},
             {"/api/chat", "POST", R_OCHAT},
             {"/api/tags", "GET", R_TAGS},
             {"/api/ps", "GET", R_PS},
             {"/api/show", "POST", R_SHOW},
             {"/api/version", "GET", R_VERSION},
             {"/health", "GET", R_HEALTH},
             {"/metrics", "GET", R_METRICS}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(url, t[i].url)) {
            *method_ok = !strcmp(method, t[i].method) ||
                         (!strcmp(method, "HEAD") && !strcmp(t[i].method, "GET"));
            return t[i].route;
        }
    *method_ok = 1;
    return R_UNKNOWN;
}

/* 1 when a and b are equal; the time taken does not depend on where they differ */
static int same_secret(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++)
        d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

/* "Authorization: Bearer KEY": the scheme in any case (RFC 7235), spaces around KEY */
static int authorized(td_gateway *g, struct MHD_Connection *c) {
    if (g->nkeys == 0) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h) return 0;
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer", 6) || (h[6] != ' ' && h[6] != '\t')) return 0;
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    char key[512];
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    if (n >= sizeof key) return 0;
    memcpy(key, h, n);
    key[n] = 0;
    int ok = 0;
    for (int i = 0; i < g->nkeys; i++)
        ok |= same_secret(key, g->keys[i]);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    td_gateway *g = cls;
    conn *k = *con_cls;
    if (!k) { /* first call: headers only */
        k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        int ok;
        k->route = route_of(method, url, &ok);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long clen = cl ? strtoull(cl, NULL, 10) : 0;
        if (k->route == R_UNKNOWN)
            k->early_status = 404, k->early_msg = "no such route";
        else if (!ok)
            k->early_status = 405, k->early_msg = "method not allowed on this route";
        else if (k->route != R_HEALTH && !(k->route == R_METRICS && g->o.public_metrics) &&
                 !authorized(g, c))
            k->early_status = 401,
            k->early_msg = "missing or wrong API key (Authorization: Bearer KEY)";
        else if (cl && clen > g->o.max_body)
            k->too_big = 1;
        /* An answer known from the headers waits until the body is read and dropped, so
         * that a client that sends its whole body before reading (most do) gets it rather
         * than a broken connection; a body too large to read through is not waited for. */
        int body = (cl && clen > 0) ||
                   MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
        if ((k->early_status || k->too_big) && (!body || (cl && clen > k_drain_max))) {
            k->done = 1;
            char msg[160];
            if (k->early_status)
                return respond_error(g, c, k->route, k->early_status, k->early_msg);
            snprintf(msg, sizeof msg, "request body of %s bytes exceeds the limit of %zu bytes", cl,
                     g->o.max_body);
            return respond_error(g, c, k->route, 413, msg);
        }
        return MHD_YES;
    }
    if (*upload_size == 0 && !k->body_done) {
        /* the request is complete: its generation may take longer than the header
         * timeout, which now no longer applies */
        k->body_done = 1;
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                                  (unsigned)(g->o.timeout_s * 2 + 60));
    }
    if (k->early_status && *upload_size) { /* dropped; answered once the body is read */
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->early_status && !k->done) {
        k->done = 1;
        return respond_error(g, c, k->route, k->early_status, k->early_msg);
    }
    if (k->done) { /* an answer is queued already: swallow any body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!k->too_big && k->len + *upload_size <= g->o.max_body) {
            size_t need = k->len + *upload_size + 1;
            if (need > k->cap) { /* doubled, but never past the limit */
                size_t want = need * 2 < g->o.max_body + 1 ? need * 2 : g->o.max_body + 1;
                if (TD_GROW_EXACT(k->body, k->cap, want) != TD_OK) {
                    TD_LOG_WARN("gateway: %s; dropping the connection", td_error_message());
                    return MHD_NO;
                }
            }
            memcpy(k->body + k->len, upload, *upload_size);
            k->len += *upload_size;
        } else {
            k->too_big = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    k->done = 1;
    if (k->too_big) {
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)1);
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", g->o.max_body);
        return respond_error(g, c, k->route, 413, msg);
    }
    switch (k->route) {
    case R_COMPLETIONS:
    case R_CHAT:
    case R_GENERATE:
    case R_OCHAT:
        return handle_generate(g, c, k->route, k->body ? k->body : "", k->len);
    case R_MODELS:
    case R_TAGS:
    case R_PS:
    case R_SHOW:
        return handle_listing(g, c, k->route, k->body ? k->body : "", k->len);
    case R_VERSION: {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "version", TD_GATEWAY_VERSION);
        return respond_json(g, c, k->route, 200, j);
    }
    default:
        return handle_ops(g, c, k->route);
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    conn *k = *con_cls;
    if (k) {
        free(k->body);
        free(k);
    }
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n')
        buf[--n] = 0;
    TD_LOG_DEBUG("gateway (libmicrohttpd): %s", buf);
}

/* ---------------------------------------------------------------------------------------- */

td_status td_gateway_new(const td_gateway_opts *o, td_gateway **out) {
    *out = NULL;
    char host[256];
    const char *colon = strrchr(o->listen, ':');
    if (!colon || (size_t)(colon - o->listen) >= sizeof host)
        return td_error_set(TD_ERR_INVALID, "--listen '%s': expected HOST:PORT", o->listen);
    memcpy(host, o->listen, (size_t)(colon - o->listen));
    host[colon - o->listen] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (*end || port < 0 || port > 65535 ||
        inet_pton(AF_INET, !strcmp(host, "localhost") ? "127.0.0.1" : host, &sa.sin_addr) != 1)
        return td_error_set(TD_ERR_INVALID,
                            "--listen '%s': expected an IPv4 address and a "
                            "port, e.g. 127.0.0.1:8080",
                            o->listen);
    td_gateway *g = calloc(1, sizeof *g);
    if (!g) return td_error_set(TD_ERR_NOMEM, "out of memory");
    g->o = *o;
    if (!g->o.max_body) g->o.max_body = 1u << 20;
    if (g->o.timeout_s <= 0) g->o.timeout_s = 120;
    if (g->o.header_timeout_s <= 0) g->o.header_timeout_s = 10;
    if (g->o.router_heartbeat_ms <= 0) g->o.router_heartbeat_ms = 1000;
    if (g->o.insecure)
        td_keys_warn_insecure("gateway");
    else if (strncmp(g->o.router, "inproc://", 9)) {
        td_status ks = td_keys_client_load(&g->keys_curve);
        if (ks != TD_OK) {
            free(g);
            return ks;
        }
        g->curve = 1;
    }
    if (g->o.header_timeout_s < 1) g->o.header_timeout_s = 1;
    if (g->o.max_connections == 0) g->o.max_connections = 4096;
    /* a descriptor per connection: raise the soft limit (often 1024) toward the hard one */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t want = (rlim_t)g->o.max_connections + 256;
        if (rl.rlim_cur < want) {
            rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)g->o.max_connections + 64)
            TD_LOG_WARN("gateway: the open-file limit is %llu, below --max-connections %u: "
                        "connections beyond it are refused (raise it with ulimit -n)",
                        (unsigned long long)rl.rlim_cur, g->o.max_connections);
    }
    for (int i = 0; o->api_keys && o->api_keys[i]; i++)
        g->nkeys++;
    g->keys = calloc((size_t)g->nkeys + 1, sizeof *g->keys);
    for (int i = 0; i < g->nkeys; i++)
        g->keys[i] = strdup(o->api_keys[i]);
    pthread_mutex_init(&g->m.mu, NULL);
    pthread_key_create(&g->sock_key, close_thread_sock);
    g->ctx = o->zctx;
    if (!g->ctx) {
        g->ctx = zmq_ctx_new();
        g->own_ctx = 1;
    }
    g->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                MHD_USE_POLL | MHD_USE_ERROR_LOG,
                            (uint16_t)port, NULL, NULL, on_request, g, MHD_OPTION_SOCK_ADDR, &sa,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)g->o.header_timeout_s,
                            MHD_OPTION_CONNECTION_LIMIT, g->o.max_connections,
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)(1u << 20),
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, g, MHD_OPTION_END);
    if (!g->d) {
        int e = errno;
        td_gateway_free(&g);
        return td_error_set(TD_ERR_IO, "gateway: cannot listen on %s: %s", o->listen,
                            e ? strerror(e) : "libmicrohttpd refused");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(g->d, MHD_DAEMON_INFO_BIND_PORT);
    g->port = di ? di->port : (int)port;
    TD_LOG_INFO("gateway: listening on %s:%d, router %s%s", host, g->port, o->router,
                g->nkeys ? ", API keys required" : "");
    if (!g->nkeys && (ntohl(sa.sin_addr.s_addr) >> 24) != 127)
        TD_LOG_WARN("gateway: %s is not a loopback address and no API key is set: anyone who "
                    "can reach it can use the models (--api-key KEY)",
                    host);
    *out = g;
    return TD_OK;
}

int td_gateway_port(const td_gateway *g) {
    return g->port;
}

void td_gateway_free(td_gateway **gp) {
    if (!gp || !*gp) return;
    td_gateway *g = *gp;
    if (g->d) MHD_stop_daemon(g->d);
    if (g->own_ctx) zmq_ctx_term(g->ctx);
    for (int i = 0; i < g->nkeys; i++)
        free(g->keys[i]);
    free(g->keys);
    pthread_key_delete(g->sock_key);
    pthread_mutex_destroy(&g->m.mu);
    free(g);
    *gp = NULL;
}
