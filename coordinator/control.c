/* The control messages' decoder (see control.h). */
#include "coordinator/control.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* 1 when s is set and shorter than max bytes. */
static int fits(const char *s, size_t max) {
    return s && memchr(s, 0, max) != NULL;
}

static td_env *refuse(td_env *env, char *msg, size_t n, const char *text) {
    snprintf(msg, n, "%s", text);
    td_wire_free(env);
    return NULL;
}

td_env *td_control_decode(const uint8_t *data, size_t len, char *msg, size_t msg_len) {
    if (len > TD_CONTROL_MAX_BYTES) {
        snprintf(msg, msg_len, "the message is %zu bytes; a control request is at most %u", len,
                 TD_CONTROL_MAX_BYTES);
        return NULL;
    }
    td_env *env = td_wire_decode(data, len);
    if (!env)
        return refuse(NULL, msg, msg_len,
                      "not a control request: the bytes are not a tandem Envelope "
                      "(proto/tandem.proto)");
    switch (env->body_case) {
    case TANDEM__ENVELOPE__BODY_JOB_SUBMIT: {
        const Tandem__JobSubmit *m = env->job_submit;
        if (!fits(m->kind, 16) || !fits(m->file, 1024) || !fits(m->dir, 1024))
            return refuse(env, msg, msg_len,
                          "submit: kind (under 16 bytes), file and dir (under 1024 bytes "
                          "each) are required");
        if (m->ranks < 1 || m->ranks > 4096)
            return refuse(env, msg, msg_len, "submit: ranks must be 1..4096");
        if (m->has_priority && (m->priority < -1000000 || m->priority > 1000000))
            return refuse(env, msg, msg_len, "submit: priority must be -1000000..1000000");
        if (m->has_limit_s && !(isfinite(m->limit_s) && m->limit_s >= 0 && m->limit_s < 1e9))
            return refuse(env, msg, msg_len, "submit: limit_s must be 0..1e9 seconds");
        if (m->has_max_restarts && m->max_restarts > 1000)
            return refuse(env, msg, msg_len, "submit: max_restarts must be 0..1000");
        return env;
    }
    case TANDEM__ENVELOPE__BODY_JOB_CANCEL:
        if (env->job_cancel->id < 1 || env->job_cancel->id > (1ull << 40))
            return refuse(env, msg, msg_len, "cancel: no such job id");
        return env;
    case TANDEM__ENVELOPE__BODY_JOB_LIST:
        return env;
    case TANDEM__ENVELOPE__BODY_HOST_DRAIN:
        if (!fits(env->host_drain->host, 256) || !env->host_drain->host[0])
            return refuse(env, msg, msg_len, "drain: a host name (under 256 bytes) is required");
        return env;
    default:
        return refuse(
            env, msg, msg_len,
            "not a coordinator request (submit, cancel, list or drain): this socket is the "
            "coordinator's control socket");
    }
}
