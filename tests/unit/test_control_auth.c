/* The control plane admits only allowed keys (proto/keys.h): a router (in a thread of
 * this test, on loopback TCP, keys in a fresh directory) and rogue ZeroMQ clients —
 *   - one in plain text and one with a CURVE key pair of its own (not in allowed/) try to
 *     register as a replica of model "demo" on the back socket, and to send a request on the
 *     front socket: the model never appears in the router's status, no request reaches them
 *     and no answer comes back;
 *   - a client with this host's allowed key does the same: it registers, and a request from
 *     an allowed front client reaches it as a replica would receive it;
 *   - with --insecure (opts.insecure) the plain client registers, and the log warns.
 * Each step prints what happened. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/fsutil.h"
#include "coordinator/router.h"
#include "proto/keys.h"
#include "proto/wire.h"
#include "tests/test.h"

typedef struct {
    td_router *r;
    volatile int stop;
} rt;

static void *run(void *p) {
    rt *x = p;
    td_router_run(x->r, &x->stop);
    return NULL;
}

/* kind: 0 plain, 1 CURVE with a key pair not allowed, 2 this host's allowed key */
static void *client(void *ctx, const char *ep, int kind) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (kind == 1) {
        td_client_keys k;
        REQUIRE(td_keys_client_load(&k) == TD_OK, "%s", td_error_message());
        REQUIRE(zmq_curve_keypair(k.pub, k.sec) == 0, "keypair"); /* a stranger's pair */
        td_keys_client_apply(s, &k);
    } else if (kind == 2) {
        REQUIRE(td_keys_client(s) == TD_OK, "%s", td_error_message());
    }
    zmq_connect(s, ep);
    return s;
}

static void send_register(void *s, const char *id) {
    Tandem__Register g = TANDEM__REGISTER__INIT;
    g.model = "demo";
    g.replica_id = (char *)id;
    g.slots = 4;
    g.context_length = 64;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_REGISTER;
    e.register_ = &g;
    td_wire_send(s, NULL, 0, &e);
}

static void send_request(void *s, uint64_t id) {
    Tandem__GenerateRequest q = TANDEM__GENERATE_REQUEST__INIT;
    q.id = id;
    q.model = "demo";
    q.prompt = "hello";
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_REQUEST;
    e.request = &q;
    td_wire_send(s, NULL, 0, &e);
}

/* Replicas of "demo" up, asked over an allowed front connection (-1: no answer). */
static int demo_replicas(void *front_ok) {
    Tandem__StatusRequest sr = TANDEM__STATUS_REQUEST__INIT;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_STATUS_REQUEST;
    e.status_request = &sr;
    td_wire_send(front_ok, NULL, 0, &e);
    for (int t = 0; t < 20; t++) {
        td_env *env = NULL;
        td_wire_recv(front_ok, NULL, NULL, 100, &env);
        if (!env) continue;
        int n = -1;
        if (env->body_case == TANDEM__ENVELOPE__BODY_STATUS) {
            n = 0;
            for (size_t i = 0; i < env->status->n_models; i++)
                if (!strcmp(env->status->models[i]->name, "demo"))
                    n = (int)env->status->models[i]->replicas_up;
            td_wire_free(env);
            return n;
        }
        td_wire_free(env);
    }
    return -1;
}

/* The first message of kind `body` within ms milliseconds (NULL: none). */
static td_env *wait_for(void *s, int body, int ms) {
    for (int t = 0; t < ms / 50; t++) {
        td_env *env = NULL;
        td_wire_recv(s, NULL, NULL, 50, &env);
        if (env && (int)env->body_case == body) return env;
        if (env) td_wire_free(env);
    }
    return NULL;
}

static void start(rt *x, void *ctx, int insecure, char *front, char *back, pthread_t *th) {
    td_router_opts o = {.front = "tcp://127.0.0.1:*",
                        .back = "tcp://127.0.0.1:*",
                        .heartbeat_ms = 200,
                        .zctx = ctx,
                        .insecure = insecure};
    REQUIRE(td_router_new(&o, &x->r) == TD_OK, "router: %s", td_error_message());
    snprintf(front, 256, "%s", td_router_front_endpoint(x->r));
    snprintf(back, 256, "%s", td_router_back_endpoint(x->r));
    x->stop = 0;
    pthread_create(th, NULL, run, x);
}

int main(void) {
    char dir[] = "/tmp/td_test_keys.XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    setenv("TANDEM_KEYS", dir, 1);
    void *ctx = zmq_ctx_new();
    rt x;
    pthread_t th;
    char front[256], back[256];
    start(&x, ctx, 0, front, back, &th);
    void *front_ok = client(ctx, front, 2);
    CHECK(demo_replicas(front_ok) == 0, "the allowed front client is answered: no demo yet");

    static const char *names[] = {"plain text", "CURVE with a key not allowed"};
    for (int kind = 0; kind < 2; kind++) {
        void *rogue = client(ctx, back, kind);
        send_register(rogue, "rogue:1");
        usleep(500000);
        int up = demo_replicas(front_ok);
        CHECK(up == 0, "%s: registered as a replica (%d up)", names[kind], up);
        send_request(front_ok, 7); /* no demo replica: 404 to the allowed client */
        td_env *got = wait_for(rogue, TANDEM__ENVELOPE__BODY_REQUEST, 500);
        CHECK(got == NULL, "%s: received a user's request", names[kind]);
        if (got) td_wire_free(got);
        void *rogue_front = client(ctx, front, kind);
        send_request(rogue_front, 9);
        got = wait_for(rogue_front, TANDEM__ENVELOPE__BODY_CHUNK, 1000);
        CHECK(got == NULL, "%s: a request from it was answered", names[kind]);
        printf("%s: registration refused (demo replicas up: %d), no request received, its own "
               "request unanswered\n",
               names[kind], up);
        if (got) td_wire_free(got);
        zmq_close(rogue);
        zmq_close(rogue_front);
    }

    void *rep = client(ctx, back, 2);
    send_register(rep, "allowed:1");
    usleep(300000);
    int up = demo_replicas(front_ok);
    CHECK(up == 1, "the allowed replica registered (%d up)", up);
    send_request(front_ok, 11);
    td_env *got = wait_for(rep, TANDEM__ENVELOPE__BODY_REQUEST, 2000);
    CHECK(got != NULL && !strcmp(got->request->prompt, "hello"),
          "the allowed replica received the request");
    printf("allowed key: registered (demo replicas up: %d), request %s\n", up,
           got ? "received" : "NOT received");
    if (got) td_wire_free(got);
    zmq_close(rep);
    zmq_close(front_ok);
    x.stop = 1;
    pthread_join(th, NULL);
    td_router_free(&x.r);

    /* --insecure: anyone registers; the log says so */
    char logp[300];
    snprintf(logp, sizeof logp, "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2);
    REQUIRE(freopen(logp, "w", stderr), "stderr to a file");
    start(&x, ctx, 1, front, back, &th);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    void *plain_front = client(ctx, front, 0);
    void *plain = client(ctx, back, 0);
    send_register(plain, "plain:1");
    usleep(300000);
    up = demo_replicas(plain_front);
    CHECK(up == 1, "--insecure: the plain client registered (%d up)", up);
    char *log = NULL;
    td_fs_read_file(logp, &log, NULL);
    CHECK(log && strstr(log, "--insecure: the control plane runs in plain text"),
          "--insecure warns: %s", log ? log : "(nothing)");
    printf("--insecure: plain client registered (demo replicas up: %d); the log: %s", up,
           log ? log : "(nothing)\n");
    free(log);
    zmq_close(plain);
    zmq_close(plain_front);
    x.stop = 1;
    pthread_join(th, NULL);
    td_router_free(&x.r);
    zmq_ctx_term(ctx);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_done("test_control_auth");
}
