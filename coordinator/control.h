/* The coordinator's control messages (docs/coordinator.md, "Control socket"): each request is
 * one ZeroMQ frame holding one protobuf-c Envelope (proto/tandem.proto) whose body is a
 * JobSubmit, JobCancel, JobList or HostDrain; the answer is a ControlReply, with `error` set
 * when the request was refused. Everything a client sends passes through td_control_decode before
 * the daemon looks at it: it is the one place that bounds and checks the bytes (the fuzz
 * target tests/fuzz/fuzz_control.c drives it). */
#ifndef TD_CONTROL_H
#define TD_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h"

/* The largest control request: a job file's path, its directory and a few numbers need far
 * less. Larger ones are refused with an error reply (up to TD_WIRE_MAX_FRAME, beyond which
 * ZeroMQ drops the connection without reading them). */
#define TD_CONTROL_MAX_BYTES (64u << 10)

/* Decodes and checks one request. Returns the envelope (free it with td_wire_free), or NULL
 * with msg (a sentence naming what is wrong) filled. */
td_env *td_control_decode(const uint8_t *data, size_t len, char *msg, size_t msg_len);

#endif
