/* libFuzzer target for the coordinator's control-message decoder (td_control_decode): any
 * bytes a client can send to the control socket. It must either refuse them with a message
 * (a NUL-terminated sentence) or return an envelope whose body is a coordinator request with
 * its fields in range; what it accepts, packed again, must be accepted again. Build and run
 * with scripts/fuzz.sh (TARGETS=control). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char msg[256];
    memset(msg, 'x', sizeof msg);
    td_env *e = td_control_decode(data, size, msg, sizeof msg);
    if (!e) {
        if (!memchr(msg, 0, sizeof msg) || !msg[0]) abort(); /* a refusal says why */
        return 0;
    }
    if (size > TD_CONTROL_MAX_BYTES) abort();
    switch (e->body_case) {
    case TANDEM__ENVELOPE__BODY_JOB_SUBMIT:
        if (!e->job_submit->kind || !e->job_submit->file || !e->job_submit->dir ||
            strlen(e->job_submit->file) >= 1024 || e->job_submit->ranks < 1)
            abort();
        break;
    case TANDEM__ENVELOPE__BODY_HOST_DRAIN:
        if (!e->host_drain->host || !e->host_drain->host[0]) abort();
        break;
    case TANDEM__ENVELOPE__BODY_JOB_CANCEL:
    case TANDEM__ENVELOPE__BODY_JOB_LIST:
        break;
    default:
        abort(); /* only coordinator requests get through */
    }
    size_t n = tandem__envelope__get_packed_size(e);
    uint8_t *buf = malloc(n ? n : 1);
    tandem__envelope__pack(e, buf);
    td_env *again = td_control_decode(buf, n, msg, sizeof msg);
    /* unknown fields are kept and packed again, and one with the invalid field number 0
     * need not decode a second time (see fuzz_gateway.c); a request without them must */
    if (!again && e->job_submit && !e->job_submit->base.n_unknown_fields &&
        !e->base.n_unknown_fields && e->body_case == TANDEM__ENVELOPE__BODY_JOB_SUBMIT)
        abort();
    td_wire_free(again);
    td_wire_free(e);
    free(buf);
    return 0;
}
