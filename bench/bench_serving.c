/* Serving load benchmark, in the manner of vLLM's benchmarks/benchmark_serving.py: it sends
 * --num-prompts streaming completions (POST /v1/completions, "stream": true, usage included)
 * to a tandem gateway over plain HTTP/1.1 (one TCP connection per request, Connection: close)
 * and measures, per request, from the moment its connection is opened:
 *   - TTFT: time to the first Server-Sent Event whose choices[0].text is non-empty;
 *   - E2E latency: time to `data: [DONE]`;
 *   - output tokens: usage.completion_tokens of the usage chunk, or else the number of events
 *     with non-empty text;
 *   - TPOT: (latency - TTFT) / (tokens - 1), for requests with more than one token;
 *   - overhead: latency - replica_us / 1e6, the time spent outside the replica (HTTP, gateway,
 *     router, ZeroMQ hops), from the "tandem": {"replica_us", "gateway_us"} field the gateway
 *     puts on the chunk with finish_reason; gateway_us is reported as well.
 * Arrivals: all at once (--rate inf, the default) or a Poisson process of --rate requests per
 * second (exponential inter-arrival times from a seeded generator, the first at t = 0). At
 * most --concurrency requests are in flight: that many worker threads take the requests in
 * arrival order, so an arrival waits for a free slot. Prompts are the lines of --prompts-file
 * (empty lines skipped) or a built-in list, cycled; request i carries "seed": i.
 * Duration runs from the first arrival to the end of the last request; throughputs count the
 * successful requests and their tokens. Percentiles are nearest-rank over sorted samples.
 * A request fails on a non-200 status (the first failure's body, up to 200 bytes, goes to
 * stderr), an "error" event, a stream that ends without [DONE], or a socket error or a
 * 120 s silence (SO_RCVTIMEO/SO_SNDTIMEO).
 * --json prints one line, {"bench": "serving", ...}, with the same numbers ("rate": null for
 * inf; the *_ms objects hold mean, p50, p99, null without samples).
 * Exit status: 0 every request succeeded, 1 some failed (the table is still printed), 2 usage
 * error or the benchmark could not start (bad URL, unknown host, unreadable prompts file).
 *
 * usage: bench_serving --url http://HOST:PORT --model NAME [--num-prompts N] [--rate R|inf]
 *          [--seed S] [--concurrency C] [--max-tokens M] [--prompts-file F] [--temperature T]
 *          [--json]
 *
 * Why one file of this length: a benchmark that a user copies or reads alone is easier to
 * trust in one piece (the HTTP client, the load generator, the statistics and the report),
 * and nothing else links it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 120
#define ERR_BODY_MAX 200
#define HEADERS_MAX (64 * 1024)
#define CHUNK_LINE_MAX 1024
#define RECV_SIZE (16 * 1024)

static const char *const builtin_prompts[] = {
    "The quick brown fox",
    "Once upon a time, in a small village by the sea,",
    "The most important thing to remember about cooking pasta is",
    "In the year 2050, cities will",
    "A good night's sleep helps you",
    "The history of the printing press begins",
    "My favourite way to spend a rainy afternoon is",
    "Water boils at a lower temperature in the mountains because",
    "The old lighthouse keeper looked out at the storm and",
    "To learn a new language quickly, you should",
    "The first thing the astronauts saw on the moon was",
    "Trees lose their leaves in autumn because",
    "The secret to a happy life is",
    "When the train finally arrived at the station,",
    "Bees are important to farmers because",
    "The library was quiet except for",
};

/* ------------------------------------------------------------------------------------- */
/* Small helpers                                                                          */

static double now_s(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("bench_serving: clock_gettime");
        abort();
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleep until the CLOCK_MONOTONIC time t (seconds). */
static void sleep_until(double t) {
    if (t <= now_s()) return;
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    int rc;
    while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) == EINTR) {
    }
    if (rc != 0) fprintf(stderr, "bench_serving: clock_nanosleep: %s\n", strerror(rc));
}

static void close_fd(int fd) {
    if (close(fd) != 0 && errno != EINTR) perror("bench_serving: close");
}

typedef struct {
    char *p;
    size_t len, cap;
} bytes;

/* Appends n bytes and keeps p NUL-terminated; -1 when out of memory. */
static int bytes_append(bytes *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Drops the first n bytes. */
static void bytes_consume(bytes *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p) b->p[b->len] = '\0';
}

static void bytes_free(bytes *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* splitmix64: the arrival-time generator (seeded, reproducible) */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------------------- */
/* Target, requests and results                                                           */

typedef struct {
    char *host;        /* for getaddrinfo, without IPv6 brackets */
    char *port;        /* "80" when absent */
    char *host_header; /* HOST[:PORT] as written in the URL */
    char *path;        /* base path of the URL + "/v1/completions" */
    struct addrinfo *addrs;
} target;

typedef struct {
    double start;    /* seconds after t0, when the connection was opened */
    double ttft;     /* seconds; < 0 when no text arrived */
    double latency;  /* seconds, to [DONE] (or to the failure) */
    long tokens;     /* output tokens */
    int ok;          /* 1 = succeeded */
    int http_status; /* 0 when no status line arrived */
    int has_tandem;  /* replica_us / gateway_us present */
    double replica_us, gateway_us;
    char err[160];               /* why it failed */
    char body[ERR_BODY_MAX + 1]; /* first bytes of a non-200 body */
} req_result;

typedef struct {
    const target *tgt;
    const char *model;
    const char *const *prompts;
    size_t n_prompts;
    int max_tokens;
    double temperature;
    int n_requests;
    const double *arrival; /* seconds after t0, nondecreasing */
    double t0;
    req_result *results; /* results[i] written only by the thread that ran request i */
    pthread_mutex_t mu;
    int next;          /* next request to take; guarded by mu */
    int error_printed; /* the first failure was reported; guarded by mu */
} bench_ctx;

/* Parses http://HOST[:PORT][/BASE]; 0 on success. */
static int parse_url(const char *url, target *t) {
    memset(t, 0, sizeof *t);
    if (strncasecmp(url, "http://", 7) != 0) return -1;
    const char *h = url + 7;
    const char *slash = strchr(h, '/');
    size_t hostport_len = slash ? (size_t)(slash - h) : strlen(h);
    if (hostport_len == 0) return -1;
    t->host_header = strndup(h, hostport_len);
    if (!t->host_header) return -1;
    const char *hp = t->host_header, *colon;
    if (hp[0] == '[') { /* [IPv6]:port */
        const char *close = strchr(hp, ']');
        if (!close || close == hp + 1) return -1;
        t->host = strndup(hp + 1, (size_t)(close - hp - 1));
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] != '\0' && close[1] != ':') return -1;
    } else {
        colon = strchr(hp, ':');
        t->host = strndup(hp, colon ? (size_t)(colon - hp) : strlen(hp));
        if (t->host && t->host[0] == '\0') return -1;
    }
    if (colon) {
        const char *p = colon + 1;
        if (!*p || strspn(p, "0123456789") != strlen(p) || atol(p) < 1 || atol(p) > 65535)
            return -1;
        t->port = strdup(p);
    } else {
        t->port = strdup("80");
    }
    /* base path without trailing slashes, then the route */
    size_t base_len = slash ? strlen(slash) : 0;
    while (base_len > 0 && slash[base_len - 1] == '/')
        base_len--;
    const char *route = "/v1/completions";
    t->path = malloc(base_len + strlen(route) + 1);
    if (!t->host || !t->port || !t->path) return -1;
    if (base_len) memcpy(t->path, slash, base_len);
    strcpy(t->path + base_len, route);
    return 0;
}

static void target_free(target *t) {
    free(t->host);
    free(t->port);
    free(t->host_header);
    free(t->path);
    if (t->addrs) freeaddrinfo(t->addrs);
    memset(t, 0, sizeof *t);
}

/* The whole HTTP request for request i, or NULL when out of memory. */
static char *build_request(const bench_ctx *c, int i, size_t *len) {
    cJSON *o = cJSON_CreateObject(), *so = cJSON_CreateObject();
    char *body = NULL, *req = NULL;
    if (!o || !so) goto out;
    if (!cJSON_AddStringToObject(o, "model", c->model) ||
        !cJSON_AddStringToObject(o, "prompt", c->prompts[(size_t)i % c->n_prompts]) ||
        !cJSON_AddNumberToObject(o, "max_tokens", c->max_tokens) ||
        !cJSON_AddNumberToObject(o, "temperature", c->temperature) ||
        !cJSON_AddNumberToObject(o, "seed", i) || !cJSON_AddTrueToObject(o, "stream") ||
        !cJSON_AddTrueToObject(so, "include_usage"))
        goto out;
    cJSON_AddItemToObject(o, "stream_options", so);
    so = NULL; /* owned by o now */
    body = cJSON_PrintUnformatted(o);
    if (!body) goto out;
    size_t blen = strlen(body);
    const char *fmt = "POST %s HTTP/1.1\r\n"
                      "Host: %s\r\n"
                      "User-Agent: tandem-bench_serving\r\n"
                      "Accept: text/event-stream\r\n"
                      "Content-Type: application/json\r\n"
                      "Content-Length: %zu\r\n"
                      "Connection: close\r\n"
                      "\r\n";
    int hlen = snprintf(NULL, 0, fmt, c->tgt->path, c->tgt->host_header, blen);
    if (hlen < 0) goto out;
    req = malloc((size_t)hlen + blen + 1);
    if (!req) goto out;
    if (snprintf(req, (size_t)hlen + 1, fmt, c->tgt->path, c->tgt->host_header, blen) != hlen) {
        free(req);
        req = NULL;
        goto out;
    }
    memcpy(req + hlen, body, blen + 1);
    *len = (size_t)hlen + blen;
out:
    cJSON_free(body);
    cJSON_Delete(so);
    cJSON_Delete(o);
    return req;
}

/* Connects to the first address that answers, with the I/O timeouts set; -1 on failure. */
static int connect_target(const target *t, char *err, size_t errlen) {
    int last_errno = 0;
    for (const struct addrinfo *ai = t->addrs; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        struct timeval tv = {.tv_sec = IO_TIMEOUT_S, .tv_usec = 0};
        int one = 1;
        /* on Linux SO_SNDTIMEO bounds connect() as well */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
            last_errno = errno;
            close_fd(fd);
            continue;
        }
        int rc;
        while ((rc = connect(fd, ai->ai_addr, ai->ai_addrlen)) != 0 && errno == EINTR) {
        }
        if (rc == 0) return fd;
        last_errno = errno;
        close_fd(fd);
    }
    snprintf(err, errlen, "connect %s: %s", t->host_header,
             last_errno == EINPROGRESS || last_errno == EAGAIN ? "timed out"
                                                               : strerror(last_errno));
    return -1;
}

static int send_all(int fd, const char *p, size_t n, char *err, size_t errlen) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            snprintf(err, errlen, "send: %s",
                     errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* One request: HTTP response (raw, Content-Length or chunked body) -> SSE events          */

typedef enum { BODY_RAW, BODY_LENGTH, BODY_CHUNKED } body_mode;
typedef enum { CH_SIZE, CH_DATA, CH_DATA_END } chunk_state;

typedef struct {
    req_result *res;
    double t_start; /* absolute */
    bytes raw;      /* received bytes not yet consumed */
    int headers_done;
    body_mode mode;
    unsigned long long left; /* BODY_LENGTH: bytes to come; BODY_CHUNKED: of this chunk */
    chunk_state cst;
    int body_done;
    /* SSE */
    bytes line; /* partial line */
    bytes data; /* data lines of the event being read */
    int has_data;
    int finished; /* [DONE] or an error event */
    int done_seen;
    int error_event;
    long text_events;
    long usage_tokens; /* < 0 when no usage chunk */
    double t_end;
} request_run;

static void set_err(request_run *r, const char *msg) {
    if (!r->res->err[0]) snprintf(r->res->err, sizeof r->res->err, "%s", msg);
}

/* One complete SSE event's data. */
static void handle_event(request_run *r, const char *data, double now) {
    if (r->finished) return;
    if (!strcmp(data, "[DONE]")) {
        r->done_seen = 1;
        r->finished = 1;
        r->t_end = now;
        return;
    }
    cJSON *ev = cJSON_Parse(data);
    if (!ev) {
        set_err(r, "an SSE event is not valid JSON");
        r->error_event = 1;
        r->finished = 1;
        r->t_end = now;
        return;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(ev, "error");
    if (e) {
        const cJSON *m = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message") : e;
        char msg[140];
        snprintf(msg, sizeof msg, "error event: %s",
                 cJSON_IsString(m) ? m->valuestring : "(no message)");
        set_err(r, msg);
        r->error_event = 1;
        r->finished = 1;
        r->t_end = now;
        cJSON_Delete(ev);
        return;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(ev, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (cJSON_IsObject(c0)) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (!text) { /* chat chunks: choices[0].delta.content */
            const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
            text =
                cJSON_IsObject(delta) ? cJSON_GetObjectItemCaseSensitive(delta, "content") : NULL;
        }
        if (cJSON_IsString(text) && text->valuestring[0]) {
            if (r->text_events == 0) r->res->ttft = now - r->t_start;
            r->text_events++;
        }
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(ev, "usage");
    const cJSON *ct =
        cJSON_IsObject(usage) ? cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens") : NULL;
    if (cJSON_IsNumber(ct) && ct->valuedouble >= 0) r->usage_tokens = (long)ct->valuedouble;
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(ev, "tandem");
    if (cJSON_IsObject(td)) {
        const cJSON *rep = cJSON_GetObjectItemCaseSensitive(td, "replica_us");
        const cJSON *gw = cJSON_GetObjectItemCaseSensitive(td, "gateway_us");
        if (cJSON_IsNumber(rep) && cJSON_IsNumber(gw)) {
            r->res->has_tandem = 1;
            r->res->replica_us = rep->valuedouble;
            r->res->gateway_us = gw->valuedouble;
        }
    }
    cJSON_Delete(ev);
}

static int dispatch_event(request_run *r, double now) {
    if (r->has_data) handle_event(r, r->data.p ? r->data.p : "", now);
    r->has_data = 0;
    r->data.len = 0;
    return 0;
}

/* One SSE line (without its line end). */
static int sse_line(request_run *r, char *s, size_t n, double now) {
    if (n > 0 && s[n - 1] == '\r') s[--n] = '\0';
    if (n == 0) return dispatch_event(r, now);
    if (n >= 5 && !memcmp(s, "data:", 5)) {
        const char *v = s + 5;
        if (*v == ' ') v++;
        if (r->has_data && bytes_append(&r->data, "\n", 1) != 0) return -1;
        if (bytes_append(&r->data, v, n - (size_t)(v - s)) != 0) return -1;
        r->has_data = 1;
    }
    /* comments (":"), event:, id:, retry: are ignored */
    return 0;
}

/* Decoded body bytes: the SSE stream on 200, the error body's first bytes otherwise. */
static int body_bytes(request_run *r, const char *p, size_t n, double now) {
    if (r->res->http_status != 200) {
        size_t have = strlen(r->res->body),
               take = n < ERR_BODY_MAX - have ? n : ERR_BODY_MAX - have;
        memcpy(r->res->body + have, p, take);
        r->res->body[have + take] = '\0';
        return 0;
    }
    while (n > 0 && !r->finished) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (bytes_append(&r->line, p, take) != 0) return -1;
        if (!nl) break;
        if (sse_line(r, r->line.p, r->line.len, now) != 0) return -1;
        r->line.len = 0;
        p += take + 1;
        n -= take + 1;
    }
    return 0;
}

/* The status line and headers, once all of them arrived; 1 parsed, 0 need more, -1 error. */
static int parse_headers(request_run *r) {
    char *end = memmem(r->raw.p, r->raw.len, "\r\n\r\n", 4);
    if (!end) {
        if (r->raw.len > HEADERS_MAX) {
            set_err(r, "response headers too long");
            return -1;
        }
        return 0;
    }
    *end = '\0';
    int major, minor, status;
    if (sscanf(r->raw.p, "HTTP/%d.%d %d", &major, &minor, &status) != 3 || status < 100 ||
        status > 999) {
        set_err(r, "malformed HTTP status line");
        return -1;
    }
    r->res->http_status = status;
    r->mode = BODY_RAW;
    for (char *line = strstr(r->raw.p, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        char *eol = strstr(line, "\r\n");
        if (eol) *eol = '\0';
        if (!strncasecmp(line, "Transfer-Encoding:", 18) && strcasestr(line + 18, "chunked")) {
            r->mode = BODY_CHUNKED;
            r->cst = CH_SIZE;
        } else if (!strncasecmp(line, "Content-Length:", 15) && r->mode != BODY_CHUNKED) {
            char *e;
            errno = 0;
            unsigned long long v = strtoull(line + 15, &e, 10);
            if (errno || e == line + 15) {
                set_err(r, "malformed Content-Length");
                return -1;
            }
            r->mode = BODY_LENGTH;
            r->left = v;
        }
        if (!eol) break;
        *eol = '\r';
    }
    bytes_consume(&r->raw, (size_t)(end - r->raw.p) + 4);
    r->headers_done = 1;
    if (r->mode == BODY_LENGTH && r->left == 0) r->body_done = 1;
    return 1;
}

/* Consumes what it can of r->raw; -1 on a protocol or memory error. */
static int process_raw(request_run *r, double now, int eof) {
    if (!r->headers_done) {
        int h = parse_headers(r);
        if (h < 0) return -1;
        if (h == 0) {
            if (eof) set_err(r, "connection closed before the response headers");
            return eof ? -1 : 0;
        }
    }
    size_t pos = 0;
    int rc = 0;
    while (!r->body_done && !r->finished && pos < r->raw.len) {
        const char *p = r->raw.p + pos;
        size_t avail = r->raw.len - pos;
        if (r->mode == BODY_RAW) {
            rc = body_bytes(r, p, avail, now);
            pos += avail;
        } else if (r->mode == BODY_LENGTH) {
            size_t take = avail < r->left ? avail : (size_t)r->left;
            rc = body_bytes(r, p, take, now);
            pos += take;
            r->left -= take;
            if (r->left == 0) r->body_done = 1;
        } else if (r->cst == CH_SIZE) {
            const char *nl = memchr(p, '\n', avail);
            if (!nl) {
                if (avail > CHUNK_LINE_MAX) {
                    set_err(r, "chunk size line too long");
                    rc = -1;
                }
                break;
            }
            char *e;
            errno = 0;
            unsigned long long size = strtoull(p, &e, 16);
            if (errno || e == p || (*e != '\r' && *e != ';' && *e != '\n' && *e != ' ')) {
                set_err(r, "malformed chunk size");
                rc = -1;
                break;
            }
            pos += (size_t)(nl - p) + 1;
            if (size == 0) {
                r->body_done = 1; /* trailers, if any, are not read */
            } else {
                r->left = size;
                r->cst = CH_DATA;
            }
        } else if (r->cst == CH_DATA) {
            size_t take = avail < r->left ? avail : (size_t)r->left;
            rc = body_bytes(r, p, take, now);
            pos += take;
            r->left -= take;
            if (r->left == 0) r->cst = CH_DATA_END;
        } else { /* CH_DATA_END: the CRLF after a chunk's data */
            if (p[0] == '\n') {
                pos += 1;
            } else if (avail < 2) {
                break;
            } else if (p[0] == '\r' && p[1] == '\n') {
                pos += 2;
            } else {
                set_err(r, "malformed chunked encoding");
                rc = -1;
                break;
            }
            r->cst = CH_SIZE;
        }
        if (rc != 0) break;
    }
    bytes_consume(&r->raw, pos);
    if (rc == 0 && eof && !r->body_done && !r->finished) {
        if (r->mode == BODY_RAW) {
            r->body_done = 1;
        } else {
            set_err(r, "connection closed in the middle of the body");
            rc = -1;
        }
    }
    /* a last event without its blank line, at the end of the body */
    if (rc == 0 && r->body_done && !r->finished && r->res->http_status == 200) {
        if (r->line.len && sse_line(r, r->line.p, r->line.len, now) != 0) rc = -1;
        r->line.len = 0;
        if (rc == 0) dispatch_event(r, now);
    }
    return rc;
}

/* Runs request i from connect to [DONE]; fills c->results[i]. */
static void run_request(bench_ctx *c, int i) {
    req_result *res = &c->results[i];
    memset(res, 0, sizeof *res);
    res->ttft = -1;
    request_run r;
    memset(&r, 0, sizeof r);
    r.res = res;
    r.usage_tokens = -1;
    size_t req_len = 0;
    char *req = build_request(c, i, &req_len);
    r.t_start = now_s();
    res->start = r.t_start - c->t0;
    int fd = -1, failed = 0;
    if (!req) {
        set_err(&r, "out of memory");
        failed = 1;
    } else if ((fd = connect_target(c->tgt, res->err, sizeof res->err)) < 0 ||
               send_all(fd, req, req_len, res->err, sizeof res->err) != 0) {
        failed = 1;
    }
    while (!failed && !r.finished && !r.body_done) {
        if (r.raw.cap - r.raw.len < RECV_SIZE + 1) {
            size_t cap = r.raw.cap ? r.raw.cap : RECV_SIZE;
            while (cap - r.raw.len < RECV_SIZE + 1)
                cap *= 2;
            char *p = realloc(r.raw.p, cap);
            if (!p) {
                set_err(&r, "out of memory");
                failed = 1;
                break;
            }
            r.raw.p = p;
            r.raw.cap = cap;
        }
        ssize_t n = recv(fd, r.raw.p + r.raw.len, r.raw.cap - r.raw.len - 1, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            set_err(&r, errno == EAGAIN || errno == EWOULDBLOCK
                            ? "no data from the server for 120 s"
                            : strerror(errno));
            failed = 1;
            break;
        }
        double now = now_s();
        r.raw.len += (size_t)n;
        r.raw.p[r.raw.len] = '\0';
        if (process_raw(&r, now, n == 0) != 0) failed = 1;
        if (n == 0) break;
    }
    if (fd >= 0) close_fd(fd);
    if (!r.done_seen) r.t_end = now_s();
    res->latency = r.t_end - r.t_start;
    res->tokens = r.usage_tokens >= 0 ? r.usage_tokens : r.text_events;
    if (!failed && res->http_status != 200) {
        char msg[64];
        snprintf(msg, sizeof msg, "HTTP %d", res->http_status);
        set_err(&r, msg);
    } else if (!failed && !r.error_event && !r.done_seen) {
        set_err(&r, "the stream ended without data: [DONE]");
    }
    res->ok = !failed && res->http_status == 200 && r.done_seen && !r.error_event;
    free(req);
    bytes_free(&r.raw);
    bytes_free(&r.line);
    bytes_free(&r.data);
}

static void report_first_failure(bench_ctx *c, int i) {
    const req_result *res = &c->results[i];
    int rc = pthread_mutex_lock(&c->mu);
    if (rc != 0) {
        fprintf(stderr, "bench_serving: pthread_mutex_lock: %s\n", strerror(rc));
        return;
    }
    if (!c->error_printed) {
        c->error_printed = 1;
        fprintf(stderr, "bench_serving: request %d failed: %s", i, res->err);
        if (res->http_status && res->http_status != 200) fprintf(stderr, "; body: %s", res->body);
        fprintf(stderr, "\n");
    }
    rc = pthread_mutex_unlock(&c->mu);
    if (rc != 0) fprintf(stderr, "bench_serving: pthread_mutex_unlock: %s\n", strerror(rc));
}

/* A slot: takes requests in arrival order until none is left. */
static void *worker(void *arg) {
    bench_ctx *c = arg;
    for (;;) {
        int rc = pthread_mutex_lock(&c->mu);
        if (rc != 0) {
            fprintf(stderr, "bench_serving: pthread_mutex_lock: %s\n", strerror(rc));
            abort();
        }
        int i = c->next < c->n_requests ? c->next++ : -1;
        rc = pthread_mutex_unlock(&c->mu);
        if (rc != 0) {
            fprintf(stderr, "bench_serving: pthread_mutex_unlock: %s\n", strerror(rc));
            abort();
        }
        if (i < 0) return NULL;
        sleep_until(c->t0 + c->arrival[i]);
        run_request(c, i);
        if (!c->results[i].ok) report_first_failure(c, i);
    }
}

/* ------------------------------------------------------------------------------------- */
/* Statistics and output                                                                  */

typedef struct {
    int n;
    double mean, p50, p99; /* milliseconds */
} stat3;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the ceil(p/100 * n)-th smallest. */
static double percentile(const double *sorted, int n, double p) {
    int rank = (int)ceil(p / 100.0 * n);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return sorted[rank - 1];
}

/* Sorts v (seconds) and summarizes it in milliseconds. */
static stat3 summarize(double *v, int n) {
    stat3 s = {n, 0, 0, 0};
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / n * 1e3;
    s.p50 = percentile(v, n, 50) * 1e3;
    s.p99 = percentile(v, n, 99) * 1e3;
    return s;
}

static void print_row(const char *label, stat3 s) {
    if (s.n == 0)
        printf("%-27s%8s %8s %8s\n", label, "-", "-", "-");
    else
        printf("%-27s%8.2f %8.2f %8.2f\n", label, s.mean, s.p50, s.p99);
}

static double round3(double x) {
    return round(x * 1e3) / 1e3;
}

static int add_stat(cJSON *o, const char *name, stat3 s) {
    cJSON *so = cJSON_AddObjectToObject(o, name);
    if (!so) return -1;
    if (s.n == 0) {
        return cJSON_AddNullToObject(so, "mean") && cJSON_AddNullToObject(so, "p50") &&
                       cJSON_AddNullToObject(so, "p99")
                   ? 0
                   : -1;
    }
    return cJSON_AddNumberToObject(so, "mean", round3(s.mean)) &&
                   cJSON_AddNumberToObject(so, "p50", round3(s.p50)) &&
                   cJSON_AddNumberToObject(so, "p99", round3(s.p99))
               ? 0
               : -1;
}

/* ------------------------------------------------------------------------------------- */
/* Options                                                                                */

static void usage(FILE *f) {
    fprintf(f, "usage: bench_serving --url http://HOST:PORT --model NAME [options]\n"
               "  --num-prompts N    requests to send (default 64)\n"
               "  --rate R           Poisson arrivals, R requests/s; inf = all at once (default)\n"
               "  --seed S           seed of the arrival times (default 1)\n"
               "  --concurrency C    most requests in flight (default 16)\n"
               "  --max-tokens M     max_tokens of each request (default 32)\n"
               "  --prompts-file F   one prompt a line (default: built-in prompts), cycled\n"
               "  --temperature T    temperature (default 0)\n"
               "  --json             one JSON object instead of the table\n"
               "  -h, --help         this text\n");
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || e == s || *e || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno || e == s || *e) return -1;
    *out = v;
    return 0;
}

typedef struct {
    const char *url, *model, *prompts_file;
    long num_prompts, concurrency, max_tokens;
    double rate, temperature;
    unsigned long long seed;
    int json;
} options;

/* 0 to run, 1 help shown, -1 usage error (already reported). */
static int parse_options(int argc, char **argv, options *o) {
    *o = (options){.num_prompts = 64,
                   .concurrency = 16,
                   .max_tokens = 32,
                   .rate = INFINITY,
                   .temperature = 0.0,
                   .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        static const char *const with_value[] = {"--url",        "--model",        "--num-prompts",
                                                 "--rate",       "--seed",         "--concurrency",
                                                 "--max-tokens", "--prompts-file", "--temperature"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++)
            if (!strcmp(a, with_value[k])) known = 1;
        if (!known) {
            fprintf(stderr, "bench_serving: unknown option '%s'\n", a);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_serving: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--url")) {
            o->url = v;
        } else if (!strcmp(a, "--model")) {
            o->model = v;
            bad = !*v;
        } else if (!strcmp(a, "--prompts-file")) {
            o->prompts_file = v;
        } else if (!strcmp(a, "--num-prompts")) {
            bad = parse_long(v, 1, 10000000, &o->num_prompts);
        } else if (!strcmp(a, "--concurrency")) {
            bad = parse_long(v, 1, 4096, &o->concurrency);
        } else if (!strcmp(a, "--max-tokens")) {
            bad = parse_long(v, 1, 1000000, &o->max_tokens);
        } else if (!strcmp(a, "--rate")) {
            if (!strcasecmp(v, "inf"))
                o->rate = INFINITY;
            else
                bad = parse_double(v, &o->rate) || !(o->rate > 0);
        } else if (!strcmp(a, "--temperature")) {
            bad = parse_double(v, &o->temperature) || !(o->temperature >= 0) ||
                  !isfinite(o->temperature);
        } else if (!strcmp(a, "--seed")) {
            char *e;
            errno = 0;
            o->seed = strtoull(v, &e, 10);
            bad = errno || e == v || *e || v[0] == '-';
        }
        if (bad) {
            fprintf(stderr, "bench_serving: bad value '%s' for %s\n", v, a);
            return -1;
        }
    }
    if (!o->url || !o->model) {
        fprintf(stderr, "bench_serving: --url and --model are required\n");
        return -1;
    }
    return 0;
}

/* Non-empty lines of path (line ends stripped); the count, or -1 on error. */
static long load_prompts(const char *path, char ***out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_serving: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **v = NULL, *line = NULL;
    size_t cap = 0, vcap = 0;
    long n = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0) continue;
        if ((size_t)n == vcap) {
            vcap = vcap ? vcap * 2 : 64;
            char **nv = realloc(v, vcap * sizeof *v);
            if (!nv) goto fail;
            v = nv;
        }
        if (!(v[n] = strdup(line))) goto fail;
        n++;
    }
    if (ferror(f)) {
        fprintf(stderr, "bench_serving: %s: read error\n", path);
        goto fail_quiet;
    }
    free(line);
    if (fclose(f) != 0) perror("bench_serving: fclose");
    if (n == 0) fprintf(stderr, "bench_serving: %s: no prompts\n", path);
    *out = v;
    return n;
fail:
    fprintf(stderr, "bench_serving: out of memory\n");
fail_quiet:
    for (long k = 0; k < n; k++)
        free(v[k]);
    free(v);
    free(line);
    if (fclose(f) != 0) perror("bench_serving: fclose");
    return -1;
}

/* ------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    options o;
    int pr = parse_options(argc, argv, &o);
    if (pr != 0) {
        if (pr < 0) usage(stderr);
        return pr > 0 ? 0 : 2;
    }
    target tgt;
    if (parse_url(o.url, &tgt) != 0) {
        fprintf(stderr, "bench_serving: bad --url '%s' (want http://HOST:PORT)\n", o.url);
        target_free(&tgt);
        usage(stderr);
        return 2;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(tgt.host, tgt.port, &hints, &tgt.addrs);
    if (gai != 0) {
        fprintf(stderr, "bench_serving: %s: %s\n", tgt.host_header, gai_strerror(gai));
        target_free(&tgt);
        return 2;
    }

    const char *const *prompts = builtin_prompts;
    long n_prompts = (long)(sizeof builtin_prompts / sizeof *builtin_prompts);
    char **file_prompts = NULL;
    if (o.prompts_file) {
        n_prompts = load_prompts(o.prompts_file, &file_prompts);
        if (n_prompts <= 0) {
            target_free(&tgt);
            return 2;
        }
        prompts = (const char *const *)file_prompts;
    }

    int n = (int)o.num_prompts;
    double *arrival = malloc(sizeof *arrival * (size_t)n);
    req_result *results = calloc((size_t)n, sizeof *results);
    int n_threads = o.concurrency < n ? (int)o.concurrency : n;
    pthread_t *threads = malloc(sizeof *threads * (size_t)n_threads);
    if (!arrival || !results || !threads) {
        fprintf(stderr, "bench_serving: out of memory\n");
        return 2;
    }
    uint64_t rng = o.seed;
    double t = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && isfinite(o.rate)) {
            double u = (double)(splitmix64(&rng) >> 11) * 0x1.0p-53; /* [0, 1) */
            t += -log1p(-u) / o.rate;
        }
        arrival[i] = t;
    }

    char rate_str[32];
    if (isfinite(o.rate))
        snprintf(rate_str, sizeof rate_str, "%g", o.rate);
    else
        snprintf(rate_str, sizeof rate_str, "inf");
    if (!o.json) {
        printf("bench_serving: %d requests, rate %s, concurrency %ld, max_tokens %ld -> %s "
               "(model %s)\n",
               n, rate_str, o.concurrency, o.max_tokens, o.url, o.model);
        fflush(stdout);
    }

    bench_ctx c = {.tgt = &tgt,
                   .model = o.model,
                   .prompts = prompts,
                   .n_prompts = (size_t)n_prompts,
                   .max_tokens = (int)o.max_tokens,
                   .temperature = o.temperature,
                   .n_requests = n,
                   .arrival = arrival,
                   .results = results,
                   .next = 0,
                   .error_printed = 0};
    int rc = pthread_mutex_init(&c.mu, NULL);
    if (rc != 0) {
        fprintf(stderr, "bench_serving: pthread_mutex_init: %s\n", strerror(rc));
        return 2;
    }
    c.t0 = now_s();
    int started = 0;
    for (; started < n_threads; started++) {
        rc = pthread_create(&threads[started], NULL, worker, &c);
        if (rc != 0) {
            fprintf(stderr, "bench_serving: pthread_create: %s\n", strerror(rc));
            break; /* the threads already started serve every request */
        }
    }
    if (started == 0) return 2;
    for (int k = 0; k < started; k++) {
        rc = pthread_join(threads[k], NULL);
        if (rc != 0) {
            fprintf(stderr, "bench_serving: pthread_join: %s\n", strerror(rc));
            abort();
        }
    }
    double duration = now_s() - c.t0;
    rc = pthread_mutex_destroy(&c.mu);
    if (rc != 0) fprintf(stderr, "bench_serving: pthread_mutex_destroy: %s\n", strerror(rc));

    /* samples, successful requests only */
    double *v_ttft = malloc(sizeof(double) * (size_t)n),
           *v_tpot = malloc(sizeof(double) * (size_t)n),
           *v_e2e = malloc(sizeof(double) * (size_t)n), *v_ovh = malloc(sizeof(double) * (size_t)n),
           *v_gw = malloc(sizeof(double) * (size_t)n);
    if (!v_ttft || !v_tpot || !v_e2e || !v_ovh || !v_gw) {
        fprintf(stderr, "bench_serving: out of memory\n");
        return 2;
    }
    int n_ok = 0, n_ttft = 0, n_tpot = 0, n_ovh = 0;
    long long tokens = 0;
    for (int i = 0; i < n; i++) {
        const req_result *r = &results[i];
        if (!r->ok) continue;
        v_e2e[n_ok++] = r->latency;
        tokens += r->tokens;
        if (r->ttft >= 0) {
            v_ttft[n_ttft++] = r->ttft;
            if (r->tokens > 1) v_tpot[n_tpot++] = (r->latency - r->ttft) / (double)(r->tokens - 1);
        }
        if (r->has_tandem) {
            v_ovh[n_ovh] = r->latency - r->replica_us / 1e6;
            v_gw[n_ovh++] = r->gateway_us / 1e6;
        }
    }
    int n_failed = n - n_ok;
    double req_tput = duration > 0 ? n_ok / duration : 0;
    double tok_tput = duration > 0 ? (double)tokens / duration : 0;
    stat3 s_ttft = summarize(v_ttft, n_ttft), s_tpot = summarize(v_tpot, n_tpot),
          s_e2e = summarize(v_e2e, n_ok), s_ovh = summarize(v_ovh, n_ovh),
          s_gw = summarize(v_gw, n_ovh);

    int out_rc = 0;
    if (!o.json) {
        printf("successful requests        %d   failed %d\n", n_ok, n_failed);
        printf("duration                   %.2f s\n", duration);
        printf("total output tokens        %lld\n", tokens);
        printf("request throughput         %.1f req/s\n", req_tput);
        printf("output token throughput    %.1f tok/s\n", tok_tput);
        printf("                           %8s %8s %8s   (ms)\n", "mean", "p50", "p99");
        print_row("TTFT", s_ttft);
        print_row("TPOT", s_tpot);
        print_row("E2E latency", s_e2e);
        print_row("overhead (outside replica)", s_ovh);
        print_row("gateway time (gateway_us)", s_gw);
    } else {
        cJSON *j = cJSON_CreateObject();
        int ok = j && cJSON_AddStringToObject(j, "bench", "serving") &&
                 cJSON_AddStringToObject(j, "url", o.url) &&
                 cJSON_AddStringToObject(j, "model", o.model) &&
                 cJSON_AddNumberToObject(j, "num_prompts", n) &&
                 (isfinite(o.rate) ? cJSON_AddNumberToObject(j, "rate", o.rate) != NULL
                                   : cJSON_AddNullToObject(j, "rate") != NULL) &&
                 cJSON_AddNumberToObject(j, "seed", (double)o.seed) &&
                 cJSON_AddNumberToObject(j, "concurrency", (double)o.concurrency) &&
                 cJSON_AddNumberToObject(j, "max_tokens", (double)o.max_tokens) &&
                 cJSON_AddNumberToObject(j, "temperature", o.temperature) &&
                 cJSON_AddNumberToObject(j, "successful", n_ok) &&
                 cJSON_AddNumberToObject(j, "failed", n_failed) &&
                 cJSON_AddNumberToObject(j, "duration_s", round3(duration)) &&
                 cJSON_AddNumberToObject(j, "total_output_tokens", (double)tokens) &&
                 cJSON_AddNumberToObject(j, "request_throughput", round3(req_tput)) &&
                 cJSON_AddNumberToObject(j, "output_token_throughput", round3(tok_tput)) &&
                 add_stat(j, "ttft_ms", s_ttft) == 0 && add_stat(j, "tpot_ms", s_tpot) == 0 &&
                 add_stat(j, "e2e_latency_ms", s_e2e) == 0 &&
                 add_stat(j, "overhead_ms", s_ovh) == 0 && add_stat(j, "gateway_ms", s_gw) == 0;
        char *txt = ok ? cJSON_PrintUnformatted(j) : NULL;
        if (txt) {
            printf("%s\n", txt);
        } else {
            fprintf(stderr, "bench_serving: out of memory\n");
            out_rc = 2;
        }
        cJSON_free(txt);
        cJSON_Delete(j);
    }
    if (fflush(stdout) != 0) {
        perror("bench_serving: stdout");
        out_rc = 2;
    }

    free(v_ttft);
    free(v_tpot);
    free(v_e2e);
    free(v_ovh);
    free(v_gw);
    free(threads);
    free(results);
    free(arrival);
    if (file_prompts) {
        for (long k = 0; k < n_prompts; k++)
            free(file_prompts[k]);
        free(file_prompts);
    }
    target_free(&tgt);
    if (out_rc) return out_rc;
    return n_failed ? 1 : 0;
}
