/* libFuzzer target for the serving front door's parsers.
 * First byte < 0x80: the rest is an HTTP request body for one of the four generation
 * routes (low two bits choose it), fed to td_gateway_check_request (UTF-8 check, JSON
 * parse, field validation). First byte >= 0x80: the rest is a ZeroMQ frame, fed to
 * td_wire_decode (protobuf-c Envelope); what decodes is packed again, and when that
 * decodes too (protobuf-c keeps unknown fields, even ones with the invalid field number 0,
 * whose re-encoding need not decode), its encoding must have the same size. Build and run
 * with scripts/fuzz.sh (TARGETS=gateway). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/gateway.h"
#include "proto/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *routes[4] = {"/v1/completions", "/v1/chat/completions", "/api/generate",
                                    "/api/chat"};
    if (size < 1) return 0;
    if (data[0] < 0x80) {
        char msg[512];
        int st = td_gateway_check_request(routes[data[0] & 3], (const char *)data + 1, size - 1,
                                          msg, sizeof msg);
        if (st != 0 && st != 400) abort(); /* parsing answers 0 or 400, nothing else */
        if (st == 400 && !memchr(msg, 0, sizeof msg)) abort();
        return 0;
    }
    td_env *e = td_wire_decode(data + 1, size - 1);
    if (!e) return 0;
    size_t n = tandem__envelope__get_packed_size(e);
    uint8_t *buf = malloc(n ? n : 1);
    tandem__envelope__pack(e, buf);
    td_env *again = td_wire_decode(buf, n);
    if (again && tandem__envelope__get_packed_size(again) != n) abort();
    td_wire_free(again);
    td_wire_free(e);
    free(buf);
    return 0;
}
