/* Envelope framing over ZeroMQ (see wire.h). */
#include "proto/wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/log.h"

uint64_t td_wire_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

td_status td_wire_send(void *sock, const void *ident, size_t ident_len, const td_env *env) {
    size_t n = tandem__envelope__get_packed_size(env);
    uint8_t stackbuf[4096], *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
    if (!buf) return td_error_set(TD_ERR_NOMEM, "out of memory for a %zu-byte message", n);
    tandem__envelope__pack(env, buf);
    td_status s = TD_OK;
    if (ident && zmq_send(sock, ident, ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = errno;
        s = td_error_set(e == EHOSTUNREACH ? TD_ERR_NOTFOUND : TD_ERR_IO, "zmq_send (identity): %s",
                         zmq_strerror(e));
    } else if (zmq_send(sock, buf, n, ident ? ZMQ_DONTWAIT : 0) < 0) {
        int e = errno;
        s = td_error_set(e == EHOSTUNREACH ? TD_ERR_NOTFOUND : TD_ERR_IO, "zmq_send: %s",
                         zmq_strerror(e));
    }
    if (buf != stackbuf) free(buf);
    return s;
}

Tandem__GenerateChunk td_wire_error_chunk(uint64_t id, uint32_t code, const char *msg) {
    Tandem__GenerateChunk c = TANDEM__GENERATE_CHUNK__INIT;
    c.id = id;
    c.error = (char *)msg;
    c.has_error_code = 1;
    c.error_code = code;
    c.has_done = 1;
    c.done = 1;
    return c;
}

td_env *td_wire_decode(const uint8_t *data, size_t len) {
    if (len > TD_WIRE_MAX_FRAME) return NULL;
    return tandem__envelope__unpack(NULL, len, data);
}

void td_wire_free(td_env *env) {
    if (env) tandem__envelope__free_unpacked(env, NULL);
}

td_status td_wire_recv(void *sock, uint8_t *ident, size_t *ident_len, int timeout_ms,
                       td_env **env) {
    *env = NULL;
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    int r = zmq_poll(&it, 1, timeout_ms);
    if (r < 0) {
        if (errno == EINTR) return TD_OK;
        return td_error_set(TD_ERR_IO, "zmq_poll: %s", zmq_strerror(errno));
    }
    if (r == 0) return TD_OK;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return td_error_set(TD_ERR_IO, "zmq_msg_recv: %s", zmq_strerror(errno));
    }
    if (ident) { /* identity frame, then the payload */
        size_t n = zmq_msg_size(&m);
        if (n > 255) n = 255;
        memcpy(ident, zmq_msg_data(&m), n);
        *ident_len = n;
        if (!zmq_msg_more(&m)) { /* a peer that sent an empty message */
            zmq_msg_close(&m);
            return TD_OK;
        }
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return td_error_set(TD_ERR_IO, "zmq_msg_recv: %s", zmq_strerror(errno));
        }
    }
    int more = zmq_msg_more(&m);
    *env = td_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m));
    if (!*env)
        TD_LOG_WARN("dropped a %zu-byte message that is not a tandem Envelope", zmq_msg_size(&m));
    zmq_msg_close(&m);
    while (more) { /* extra frames are not part of the protocol: drain them */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0)
            more = 0;
        else
            more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return TD_OK;
}
