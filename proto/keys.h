/* CURVE keys for the control plane: the router's ZeroMQ sockets are CURVE servers, and only
 * clients (replica leaders, gateways) whose public key is allowed may connect, checked by a
 * ZAP handler in the router's process.
 *
 * The key directory ($TANDEM_KEYS, else $HOME/.config/tandem/keys; mode 0700) holds, as Z85
 * text (40 characters):
 *   router.public, router.secret   the router's pair (the secret file mode 0600)
 *   client.public, client.secret   this host's client pair, used by its replicas and gateways
 *   allowed/NAME.public            public keys the router accepts (this host's client key is
 *                                  put there when the pairs are made)
 * The pairs are made on first use, under a lock, by whichever tandem process comes first.
 * A second host: copy the router host's router.public into its key directory, and its
 * client.public into the router host's allowed/. Connections over inproc (the router inside
 * `serve --http`) do not use CURVE; they never leave the process. */
#ifndef TD_KEYS_H
#define TD_KEYS_H

#include <stddef.h>

#include "common/status.h"

/* The key directory, created (0700) if missing. */
td_status td_keys_dir(char *out, size_t n);

/* Makes socket `sock` a CURVE server with the router's secret key (made if missing). */
td_status td_keys_server(void *sock);

/* Makes socket `sock` a CURVE client of the router: this host's pair, the router's public
 * key (router.public in the key directory). */
td_status td_keys_client(void *sock);
/* The same in two steps, for a process that opens many client sockets: read once... */
typedef struct {
    char pub[41], sec[41], server[41];
} td_client_keys;
td_status td_keys_client_load(td_client_keys *k);
/* ...and set on each socket before it connects. */
td_status td_keys_client_apply(void *sock, const td_client_keys *k);

typedef struct td_zap td_zap;
/* Starts the ZAP handler for ZeroMQ context ctx (a thread answering inproc://zeromq.zap.01):
 * a CURVE client is accepted when its public key is a file of allowed/ (read at each
 * connection, so a key added there works without a restart). */
td_status td_zap_start(void *ctx, td_zap **out);
void td_zap_stop(td_zap **z);

/* Says once, as a warning, that `what` runs without CURVE (--insecure). */
void td_keys_warn_insecure(const char *what);

#endif
