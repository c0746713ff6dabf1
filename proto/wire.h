/* The serving control plane's wire: one ZeroMQ frame = one protobuf-c Envelope
 * (proto/tandem.proto), preceded on ROUTER sockets by the peer's identity frame.
 * Every send is checked; a failure sets the error message and returns a status. */
#ifndef TD_WIRE_H
#define TD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "tandem.pb-c.h"

typedef Tandem__Envelope td_env;

/* Largest frame accepted (a request with a long prompt fits easily). */
#define TD_WIRE_MAX_FRAME (16u << 20)

/* Sends env on sock; with ident (a ROUTER socket) the identity frame goes first.
 * Returns TD_ERR_NOTFOUND when the peer is gone (EHOSTUNREACH with ZMQ_ROUTER_MANDATORY),
 * TD_ERR_IO for any other failure. */
td_status td_wire_send(void *sock, const void *ident, size_t ident_len, const td_env *env);

/* Receives one message without blocking longer than timeout_ms (-1: forever). With
 * ident (a ROUTER socket) the identity frame is stored there (*ident_len bytes, at most
 * 255). *env is NULL when nothing came; otherwise free it with td_wire_free. A frame that
 * does not decode is dropped with a warning (*env NULL, TD_OK). */
td_status td_wire_recv(void *sock, uint8_t *ident, size_t *ident_len, int timeout_ms, td_env **env);

/* Decodes a payload (NULL when it is not an Envelope, or too large). */
td_env *td_wire_decode(const uint8_t *data, size_t len);
void td_wire_free(td_env *env);

/* The last answer to request id: an error with the HTTP status code (msg is borrowed). */
Tandem__GenerateChunk td_wire_error_chunk(uint64_t id, uint32_t code, const char *msg);

/* Monotonic time in nanoseconds. */
uint64_t td_wire_now_ns(void);

#endif
