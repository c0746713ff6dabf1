/* CURVE keys and the ZAP handler (see keys.h). */
#include "proto/keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/fsutil.h"
#include "common/log.h"

td_status td_keys_dir(char *out, size_t n) {
    const char *env = getenv("TANDEM_KEYS");
    if (env && env[0]) {
        snprintf(out, n, "%s", env);
    } else {
        const char *home = getenv("HOME");
        if (!home || !home[0])
            return td_error_set(TD_ERR_INVALID, "no HOME and no TANDEM_KEYS: nowhere to keep the "
                                                "control plane's keys");
        snprintf(out, n, "%s/.config/tandem/keys", home);
    }
    TD_TRY(td_fs_mkdirs(out));
    chmod(out, 0700);
    return TD_OK;
}

/* Reads a 40-character Z85 key from dir/name into key (41 bytes). */
static td_status read_key(const char *dir, const char *name, char key[41]) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "r");
    if (!f)
        return td_error_set(TD_ERR_NOTFOUND, "cannot read the key %s: %s (keys: docs/router.md)", p,
                            strerror(errno));
    size_t k = fread(key, 1, 40, f);
    fclose(f);
    key[k] = 0;
    if (k != 40) return td_error_set(TD_ERR_FORMAT, "%s: not a 40-character Z85 key", p);
    return TD_OK;
}

static td_status write_key(const char *dir, const char *name, const char *key, int secret) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, secret ? 0600 : 0644);
    if (fd < 0) return td_error_set(TD_ERR_IO, "cannot write %s: %s", p, strerror(errno));
    ssize_t w = write(fd, key, 40);
    w += write(fd, "\n", 1);
    close(fd);
    if (w != 41) return td_error_set(TD_ERR_IO, "short write to %s", p);
    return TD_OK;
}

/* Makes both pairs (and allowed/) once; processes that start together wait on the lock. */
static td_status ensure_keys(char *dir, size_t n) {
    TD_TRY(td_keys_dir(dir, n));
    char p[4200];
    snprintf(p, sizeof p, "%s/.lock", dir);
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    if (fd < 0) return td_error_set(TD_ERR_IO, "cannot open %s: %s", p, strerror(errno));
    flock(fd, LOCK_EX);
    td_status s = TD_OK;
    const char *who[2] = {"router", "client"};
    for (int i = 0; i < 2 && s == TD_OK; i++) {
        snprintf(p, sizeof p, "%s/%s.secret", dir, who[i]);
        if (td_fs_exists(p)) continue;
        char pub[41], sec[41];
        if (zmq_curve_keypair(pub, sec) != 0) {
            s = td_error_set(TD_ERR_RUNTIME, "zmq_curve_keypair: %s (libzmq without CURVE?)",
                             zmq_strerror(errno));
            break;
        }
        char name[64];
        snprintf(name, sizeof name, "%s.secret", who[i]);
        s = write_key(dir, name, sec, 1);
        snprintf(name, sizeof name, "%s.public", who[i]);
        if (s == TD_OK) s = write_key(dir, name, pub, 0);
        if (s == TD_OK && i == 1) { /* this host's clients may connect to this host's router */
            char allowed[4200], host[200] = "localhost", file[300];
            snprintf(allowed, sizeof allowed, "%s/allowed", dir);
            s = td_fs_mkdirs(allowed);
            gethostname(host, sizeof host - 1);
            snprintf(file, sizeof file, "%s.public", host);
            if (s == TD_OK) s = write_key(allowed, file, pub, 0);
        }
        if (s == TD_OK) TD_LOG_INFO("keys: made the %s key pair in %s", who[i], dir);
    }
    flock(fd, LOCK_UN);
    close(fd);
    return s;
}

td_status td_keys_server(void *sock) {
    char dir[4096], sec[41];
    TD_TRY(ensure_keys(dir, sizeof dir));
    TD_TRY(read_key(dir, "router.secret", sec));
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "tandem", 6) != 0)
        return td_error_set(TD_ERR_RUNTIME, "CURVE server setup: %s", zmq_strerror(errno));
    return TD_OK;
}

td_status td_keys_client_load(td_client_keys *k) {
    char dir[4096];
    TD_TRY(ensure_keys(dir, sizeof dir));
    TD_TRY(read_key(dir, "client.public", k->pub));
    TD_TRY(read_key(dir, "client.secret", k->sec));
    return read_key(dir, "router.public", k->server);
}

td_status td_keys_client_apply(void *sock, const td_client_keys *k) {
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, k->server, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, k->pub, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->sec, 40) != 0)
        return td_error_set(TD_ERR_RUNTIME, "CURVE client setup: %s", zmq_strerror(errno));
    return TD_OK;
}

td_status td_keys_client(void *sock) {
    td_client_keys k;
    TD_TRY(td_keys_client_load(&k));
    return td_keys_client_apply(sock, &k);
}

/* ---------------------------------------------------------------------------------------- */
/* ZAP (ZeroMQ RFC 27): requests on inproc://zeromq.zap.01, one REP socket per context */

struct td_zap {
    void *sock;
    pthread_t th;
    atomic_int stop;
    char dir[4096];
};

/* Is the Z85 key one of allowed/'s files? */
static int allowed(const char *dir, const char *key) {
    char p[4200], k[41];
    snprintf(p, sizeof p, "%s/allowed", dir);
    DIR *d = opendir(p);
    if (!d) return 0;
    struct dirent *e;
    int ok = 0;
    while (!ok && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 8 || strcmp(e->d_name + len - 7, ".public")) continue;
        if (read_key(p, e->d_name, k) == TD_OK && !strcmp(k, key)) ok = 1;
        td_error_clear();
    }
    closedir(d);
    return ok;
}

static void *zap_thread(void *arg) {
    td_zap *z = arg;
    while (!z->stop) {
        zmq_pollitem_t it = {z->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0) continue;
        /* version, request id, domain, address, identity, mechanism, credentials... */
        zmq_msg_t f[8];
        int nf = 0, more = 1;
        while (more && nf < 8) {
            zmq_msg_init(&f[nf]);
            if (zmq_msg_recv(&f[nf], z->sock, 0) < 0) break;
            more = zmq_msg_more(&f[nf]);
            nf++;
        }
        while (more) { /* more frames than expected: drain them */
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, z->sock, 0) < 0) break;
            more = zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        const char *status = "400", *text = "not allowed";
        char addr[64] = "?";
        if (nf >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
            zmq_msg_size(&f[6]) == 32) {
            char key[41];
            zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
            size_t al =
                zmq_msg_size(&f[3]) < sizeof addr - 1 ? zmq_msg_size(&f[3]) : sizeof addr - 1;
            memcpy(addr, zmq_msg_data(&f[3]), al);
            addr[al] = 0;
            if (allowed(z->dir, key)) {
                status = "200";
                text = "OK";
            } else {
                TD_LOG_WARN("router: refused a connection from %s: its key %.8s... is not in "
                            "%s/allowed/ (docs/router.md: adding a host)",
                            addr, key, z->dir);
            }
        }
        /* reply: version, request id, status code, status text, user id, metadata */
        zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
        if (nf >= 2)
            zmq_send(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
        else
            zmq_send(z->sock, "", 0, ZMQ_SNDMORE);
        zmq_send(z->sock, status, 3, ZMQ_SNDMORE);
        zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(z->sock, "", 0, ZMQ_SNDMORE);
        zmq_send(z->sock, "", 0, 0);
        for (int i = 0; i < nf; i++)
            zmq_msg_close(&f[i]);
    }
    return NULL;
}

td_status td_zap_start(void *ctx, td_zap **out) {
    *out = NULL;
    td_zap *z = calloc(1, sizeof *z);
    if (!z) return td_error_set(TD_ERR_NOMEM, "out of memory");
    td_status s = ensure_keys(z->dir, sizeof z->dir);
    if (s == TD_OK) {
        z->sock = zmq_socket(ctx, ZMQ_REP);
        int zero = 0;
        if (z->sock) zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero);
        if (!z->sock || zmq_bind(z->sock, "inproc://zeromq.zap.01") != 0)
            s = td_error_set(TD_ERR_IO, "ZAP handler: %s", zmq_strerror(errno));
    }
    if (s == TD_OK && pthread_create(&z->th, NULL, zap_thread, z) != 0)
        s = td_error_set(TD_ERR_RUNTIME, "cannot start the ZAP thread");
    if (s != TD_OK) {
        if (z->sock) zmq_close(z->sock);
        free(z);
        return s;
    }
    *out = z;
    return TD_OK;
}

void td_zap_stop(td_zap **zp) {
    td_zap *z = zp ? *zp : NULL;
    if (!z) return;
    z->stop = 1;
    pthread_join(z->th, NULL);
    zmq_close(z->sock);
    free(z);
    *zp = NULL;
}

void td_keys_warn_insecure(const char *what) {
    static atomic_int said;
    if (atomic_exchange(&said, 1)) return;
    TD_LOG_WARN("%s: --insecure: the control plane runs in plain text without keys; any process "
                "that can reach its ports can register as a replica or send requests",
                what);
}
