/* The request router: a ZeroMQ ROUTER socket in front (gateways and other clients, one
 * DEALER each) and one at the back (replica leaders, one DEALER each), in the spirit of the
 * zguide's Majordomo pattern. Replicas register their model and capacity and exchange
 * heartbeats with the router; requests go to the least-loaded live replica of their model
 * or wait in that model's bounded queue; answers are relayed back to the client that asked.
 * A replica silent for three heartbeats is lost: its requests fail with an error at once.
 * A client that goes away (a send to it fails) has its request cancelled on the replica.
 * One thread runs the loop (td_router_run); nothing else touches the router's sockets. */
#ifndef TD_ROUTER_H
#define TD_ROUTER_H

#include "common/status.h"

/* Both sockets are CURVE servers unless opts.insecure: only clients whose public key is in
 * the key directory's allowed/ connect over TCP (proto/keys.h). */
typedef struct {
    const char *front, *back; /* endpoints to bind, e.g. tcp://127.0.0.1:5555, inproc://x */
    int queue_max;            /* requests waiting per model (default 256) */
    double queue_timeout_s;   /* longest wait in a queue (default 30) */
    int heartbeat_ms;         /* default 1000; a peer is dead after 3 missed */
    void *zctx;               /* ZeroMQ context to use (NULL: the router makes its own) */
    const char *back_local;   /* optional second back endpoint (e.g. inproc:// for a
                               * replica in the same process), or NULL */
    int insecure;             /* plain text: no CURVE, no allowed keys (a warning says so) */
    int zap_running;          /* zctx has a ZAP handler already (td_zap_start, the caller's:
                               * one per context), which checks this router's clients too */
} td_router_opts;

typedef struct td_router td_router;

/* Binds both sockets. *out is owned by the caller (td_router_free). */
td_status td_router_new(const td_router_opts *o, td_router **out);
/* Endpoints actually bound (a tcp port of 0 or * resolved). */
const char *td_router_front_endpoint(const td_router *r);
const char *td_router_back_endpoint(const td_router *r);
/* Runs until *stop becomes non-zero (checked at least every 100 ms). */
td_status td_router_run(td_router *r, volatile int *stop);
void td_router_free(td_router **r);

#endif
