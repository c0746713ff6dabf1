/* The coordinator's control socket under bad input: a daemon (td_daemon_run, in a child
 * process, plain text on an ipc endpoint in a fresh state directory) gets a frame that is not
 * an Envelope, an oversized one, a request of another protocol, a two-frame message, empty
 * frames and a submit with out-of-range fields; each gets a ControlReply with an error that
 * says what was wrong, and afterwards a list request is still answered. The decoder itself
 * (td_control_decode) is checked on the same cases without a socket. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "coordinator/control.h"
#include "coordinator/daemon.h"
#include "tests/test.h"

static size_t pack(const td_env *e, uint8_t **out) {
    size_t n = tandem__envelope__get_packed_size(e);
    *out = malloc(n ? n : 1);
    tandem__envelope__pack(e, *out);
    return n;
}

/* Sends frames (n of them) and returns the reply's error ("" for none, NULL for no reply). */
static char *ask(void *sock, const void *const *data, const size_t *len, int n) {
    for (int i = 0; i < n; i++)
        zmq_send(sock, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0);
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    zmq_msg_recv(&m, sock, 0);
    td_env *e = td_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    char *err = NULL;
    if (e && e->body_case == TANDEM__ENVELOPE__BODY_CONTROL_REPLY)
        err = strdup(e->control_reply->error ? e->control_reply->error : "");
    td_wire_free(e);
    return err;
}

static char *ask1(void *sock, const void *data, size_t len) {
    return ask(sock, &data, &len, 1);
}

static void expect_error(char *err, const char *part, const char *what) {
    CHECK(err && strstr(err, part), "%s: reply %s%s%s, expected an error with \"%s\"", what,
          err ? "\"" : "", err ? err : "(none)", err ? "\"" : "", part);
    if (err) printf("%-26s -> error: %s\n", what, err);
    free(err);
}

int main(void) {
    char state[] = "/tmp/td-control-XXXXXX";
    REQUIRE(mkdtemp(state), "mkdtemp");
    char ep[200], back[200];
    snprintf(ep, sizeof ep, "ipc://%s/control", state);
    snprintf(back, sizeof back, "ipc://%s/replicas", state);

    /* the decoder alone */
    char msg[200];
    uint8_t junk[] = {0xff, 0xfe, 0x01, 0x02, 0x03};
    CHECK(!td_control_decode(junk, sizeof junk, msg, sizeof msg) && strstr(msg, "Envelope"),
          "junk: %s", msg);
    uint8_t *big = calloc(1, 1u << 20);
    CHECK(!td_control_decode(big, 1u << 20, msg, sizeof msg) && strstr(msg, "at most"),
          "oversized: %s", msg);
    Tandem__JobSubmit sub = TANDEM__JOB_SUBMIT__INIT;
    sub.kind = "train", sub.file = "/x.json", sub.dir = "/", sub.ranks = 0;
    td_env e = TANDEM__ENVELOPE__INIT;
    e.body_case = TANDEM__ENVELOPE__BODY_JOB_SUBMIT, e.job_submit = &sub;
    uint8_t *zero_ranks;
    size_t zero_ranks_n = pack(&e, &zero_ranks);
    CHECK(!td_control_decode(zero_ranks, zero_ranks_n, msg, sizeof msg) && strstr(msg, "ranks"),
          "ranks 0: %s", msg);
    sub.ranks = 2;
    uint8_t *good;
    size_t good_n = pack(&e, &good);
    td_env *ok = td_control_decode(good, good_n, msg, sizeof msg);
    CHECK(ok && ok->job_submit->ranks == 2, "a valid submit decodes");
    td_wire_free(ok);

    pid_t child = fork();
    REQUIRE(child >= 0, "fork");
    if (child == 0) {
        td_daemon_opts o = {.state_dir = state,
                            .control = ep,
                            .slots = 2,
                            .tandem = "/bin/false",
                            .replicas = back,
                            .insecure = 1,
                            .cancel_grace_s = 1};
        if (td_daemon_run(&o) == TD_OK) _exit(0);
        fprintf(stderr, "the daemon: %s\n", td_error_message());
        _exit(1);
    }
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    REQUIRE(zmq_connect(sock, ep) == 0, "connect %s", ep);

    Tandem__JobList jl = TANDEM__JOB_LIST__INIT;
    td_env le = TANDEM__ENVELOPE__INIT;
    le.body_case = TANDEM__ENVELOPE__BODY_JOB_LIST, le.job_list = &jl;
    uint8_t *list;
    size_t list_n = pack(&le, &list);
    char *err = NULL;
    for (int i = 0; i < 50 && !err; i++) { /* the daemon binds after its fork */
        int st;
        REQUIRE(waitpid(child, &st, WNOHANG) == 0, "the daemon exited (status %d)", st);
        err = ask1(sock, list, list_n);
    }
    CHECK(err && !*err, "the first list request is answered without an error");
    free(err);

    expect_error(ask1(sock, junk, sizeof junk), "Envelope", "5 bytes of junk");
    expect_error(ask1(sock, big, 1u << 20), "at most", "a 1 MiB message");
    expect_error(ask1(sock, "", 0), "not a coordinator request", "an empty frame");
    Tandem__StatusRequest sr = TANDEM__STATUS_REQUEST__INIT;
    td_env se = TANDEM__ENVELOPE__INIT;
    se.body_case = TANDEM__ENVELOPE__BODY_STATUS_REQUEST, se.status_request = &sr;
    uint8_t *status;
    size_t status_n = pack(&se, &status);
    expect_error(ask1(sock, status, status_n), "not a coordinator request",
                 "a router status request");
    const void *two[] = {list, list};
    size_t two_n[] = {list_n, list_n};
    expect_error(ask(sock, two, two_n, 2), "one frame", "two frames");
    expect_error(ask1(sock, zero_ranks, zero_ranks_n), "ranks", "a submit with 0 ranks");
    sub.ranks = 1, sub.has_limit_s = 1, sub.limit_s = -5;
    uint8_t *neg;
    size_t neg_n = pack(&e, &neg);
    expect_error(ask1(sock, neg, neg_n), "limit_s", "a submit with limit_s -5");
    /* a valid submit of a file that is not there: refused by the daemon, not the decoder */
    expect_error(ask1(sock, good, good_n), "not a job file", "a submit of a missing file");

    err = ask1(sock, list, list_n);
    CHECK(err && !*err, "after all that, a list request is still answered");
    printf("%-26s -> %s\n", "a list request", err && !*err ? "answered" : "NOT answered");
    free(err);

    kill(child, SIGTERM);
    int st = 0;
    waitpid(child, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the daemon stops cleanly on SIGTERM (%d)", st);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    free(big), free(zero_ranks), free(good), free(list), free(status), free(neg);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", state);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", state);
    return test_done("test_control_socket");
}
