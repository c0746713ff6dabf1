/* MPI backend of td_comm (see comm.h), and the one-rank "self" backend. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "worker/comm/comm.h"

struct td_comm_req {
    MPI_Request r;
};

/* the MPI communicator of a td_comm (MPI_COMM_WORLD or a split) */
#define MCOMM(c) (*(MPI_Comm *)(c)->ctx)

static MPI_Datatype mpi_type(td_comm_dtype dt) {
    switch (dt) {
    case TD_COMM_F32:
        return MPI_FLOAT;
    case TD_COMM_F64:
        return MPI_DOUBLE;
    case TD_COMM_I64:
        return MPI_INT64_T;
    default:
        return MPI_BYTE;
    }
}

static td_status check(int rc, const char *op, const td_comm *c) {
    if (rc == MPI_SUCCESS) return TD_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return td_error_set(TD_ERR_RUNTIME, "rank %d: %s failed: %s", c->rank, op, msg);
}

/* MPI counts are int: large buffers go in chunks of at most 1 Gi elements. */
#define CHUNK ((size_t)1 << 30)

/* Completes a non-blocking collective for a communicator with c->timeout_s or c->idle_wait
 * set (a serving group): spins on MPI_Test for 200 us (a decode step's all-reduce is done
 * by then), then tests with sleeps growing to 1 ms, so that a rank waiting for work uses
 * no core; gives up after `timeout` seconds (0: never) with an error naming the operation. */
static td_status wait_polled(td_comm *c, MPI_Request *r, double timeout, const char *op) {
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sleep_ns = 0;
    for (uint64_t it = 0;; it++) {
        int done = 0;
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return check(rc, op, c);
        if (done) return TD_OK;
        if ((it & 63) != 0) continue;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double dt = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9;
        if (timeout > 0 && dt > timeout)
            return td_error_set(TD_ERR_RUNTIME,
                                "rank %d: %s did not complete in %.0f s: a rank of this "
                                "tensor-parallel group is stuck or dead",
                                c->rank, op, timeout);
        if (dt > 200e-6 && c->idle_wait) {
            sleep_ns = sleep_ns ? (sleep_ns * 2 > 1000000 ? 1000000 : sleep_ns * 2) : 50000;
            struct timespec ts = {0, sleep_ns};
            nanosleep(&ts, NULL);
        }
    }
}

/* A serving group's communicator: collectives are waited for with wait_polled. */
static int polled(const td_comm *c) {
    return c->timeout_s > 0 || c->idle_wait;
}

static td_status m_allreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    if (dt == TD_COMM_BYTE)
        return td_error_set(TD_ERR_INVALID, "rank %d: all-reduce of bytes is not defined", c->rank);
    MPI_Op op = MPI_SUM;
    for (size_t off = 0; off < count; off += CHUNK) {
        size_t n = count - off < CHUNK ? count - off : CHUNK;
        char *p = (char *)buf + off * td_comm_dtype_size(dt);
        if (polled(c)) {
            MPI_Request r;
            TD_TRY(check(MPI_Iallreduce(MPI_IN_PLACE, p, (int)n, mpi_type(dt), op, MCOMM(c), &r),
                         "MPI_Iallreduce", c));
            TD_TRY(wait_polled(c, &r, c->timeout_s, "the all-reduce"));
            continue;
        }
        TD_TRY(check(MPI_Allreduce(MPI_IN_PLACE, p, (int)n, mpi_type(dt), op, MCOMM(c)),
                     "MPI_Allreduce", c));
    }
    return TD_OK;
}

static td_status m_iallreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt,
                              td_comm_req **req) {
    if (count > CHUNK)
        return td_error_set(TD_ERR_INVALID,
                            "rank %d: non-blocking all-reduce of %zu elements "
                            "exceeds one MPI call",
                            c->rank, count);
    td_comm_req *r = malloc(sizeof *r);
    if (!r) return td_error_set(TD_ERR_NOMEM, "out of memory");
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(dt), MPI_SUM, MCOMM(c), &r->r);
    if (rc != MPI_SUCCESS) {
        free(r);
        return check(rc, "MPI_Iallreduce", c);
    }
    *req = r;
    return TD_OK;
}

static td_status m_reduce_scatter(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    if (count > CHUNK)
        return td_error_set(TD_ERR_INVALID, "rank %d: reduce-scatter block too large", c->rank);
    size_t es = td_comm_dtype_size(dt);
    /* MPI_Reduce_scatter_block writes the result to the start of recvbuf; in place it is
     * block 0, so move it to this rank's block afterwards */
    TD_TRY(check(
        MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)count, mpi_type(dt), MPI_SUM, MCOMM(c)),
        "MPI_Reduce_scatter_block", c));
    if (c->rank != 0) memmove((char *)buf + (size_t)c->rank * count * es, buf, count * es);
    return TD_OK;
}

static td_status m_allgather(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    if (count > CHUNK)
        return td_error_set(TD_ERR_INVALID, "rank %d: all-gather block too large", c->rank);
    return check(
        MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)count, mpi_type(dt), MCOMM(c)),
        "MPI_Allgather", c);
}

static td_status m_bcast(td_comm *c, void *buf, size_t count, td_comm_dtype dt, int root) {
    for (size_t off = 0; off < count; off += CHUNK) {
        size_t n = count - off < CHUNK ? count - off : CHUNK;
        char *p = (char *)buf + off * td_comm_dtype_size(dt);
        if (polled(c)) { /* the root's wait is bounded; a receiver may wait idle for work */
            MPI_Request r;
            TD_TRY(check(MPI_Ibcast(p, (int)n, mpi_type(dt), root, MCOMM(c), &r), "MPI_Ibcast", c));
            TD_TRY(wait_polled(c, &r, c->rank == root ? c->timeout_s : 0, "the broadcast"));
            continue;
        }
        TD_TRY(check(MPI_Bcast(p, (int)n, mpi_type(dt), root, MCOMM(c)), "MPI_Bcast", c));
    }
    return TD_OK;
}

static td_status m_barrier(td_comm *c) {
    return check(MPI_Barrier(MCOMM(c)), "MPI_Barrier", c);
}

static td_status m_wait(td_comm *c, td_comm_req *r) {
    int rc = MPI_Wait(&r->r, MPI_STATUS_IGNORE);
    free(r);
    return check(rc, "MPI_Wait", c);
}

static void m_progress(td_comm *c) {
    int flag;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MCOMM(c), &flag, MPI_STATUS_IGNORE);
}

static void m_free(td_comm *c) {
    MPI_Comm *mc = c->ctx;
    if (mc && *mc != MPI_COMM_WORLD) MPI_Comm_free(mc);
    free(mc);
}

static void s_free(td_comm *c) {
    (void)c;
}

static td_status m_gatherv(td_comm *c, const void *send, size_t n, void *recv, const size_t *counts,
                           int root) {
    /* every rank checks the same sizes, so every rank takes the same branch; only the root
     * needs the int counts and displacements */
    size_t total = 0;
    for (int r = 0; r < c->size; r++)
        total += counts[r];
    if (total > INT32_MAX)
        return td_error_set(TD_ERR_INVALID,
                            "rank %d: a gather of %zu bytes exceeds one MPI call "
                            "(2 GiB)",
                            c->rank, total);
    int *cnt = NULL, *disp = NULL;
    if (c->rank == root) {
        cnt = calloc((size_t)c->size, sizeof *cnt);
        disp = calloc((size_t)c->size, sizeof *disp);
        if (!cnt || !disp) { /* the others are about to wait on us: end the job */
            TD_LOG_ERROR("rank %d: out of memory starting a gather", c->rank);
            td_comm_mpi_abort(1);
        }
        for (int r = 0, at = 0; r < c->size; r++) {
            cnt[r] = (int)counts[r];
            disp[r] = at;
            at += cnt[r];
        }
    }
    td_status s =
        check(MPI_Gatherv(send, (int)n, MPI_BYTE, recv, cnt, disp, MPI_BYTE, root, MCOMM(c)),
              "MPI_Gatherv", c);
    free(cnt);
    free(disp);
    return s;
}

static const td_comm_ops g_mpi_ops = {"mpi",       m_allreduce, m_iallreduce, m_reduce_scatter,
                                      m_allgather, m_bcast,     m_barrier,    m_wait,
                                      m_progress,  m_free,      m_gatherv};

int td_comm_mpi_init(int *argc, char ***argv, int force) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return 1;
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    if (!launched && !force) return 0;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return 1;
}

void td_comm_mpi_finalize(void) {
    int inited = 0, fin = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&fin);
    if (inited && !fin) MPI_Finalize();
}

void td_comm_mpi_abort(int rc) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, rc);
}

static td_status mpi_wrap(MPI_Comm comm, td_comm **out) {
    td_comm *c = calloc(1, sizeof *c);
    MPI_Comm *mc = malloc(sizeof *mc);
    if (!c || !mc) {
        free(c);
        free(mc);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    *mc = comm;
    c->ops = &g_mpi_ops;
    c->ctx = mc;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->size);
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    c->threads_ok = level >= MPI_THREAD_SERIALIZED;
    MPI_Comm local;
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &c->local_rank);
    MPI_Comm_size(local, &c->local_size);
    MPI_Comm_free(&local);
    *out = c;
    return TD_OK;
}

td_status td_comm_mpi_new(td_comm **out) {
    return mpi_wrap(MPI_COMM_WORLD, out);
}

td_status td_comm_split(td_comm *parent, int color, int key, td_comm **out) {
    if (parent->ops != &g_mpi_ops) { /* one rank: its own group */
        return td_comm_self_new(out);
    }
    MPI_Comm sub;
    int rc = MPI_Comm_split(MCOMM(parent), color, key, &sub);
    if (rc != MPI_SUCCESS) return check(rc, "MPI_Comm_split", parent);
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    return mpi_wrap(sub, out);
}

/* ---------------------------------------------------------------------------------------- */
/* one rank */

static td_status s_noop(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    (void)c, (void)buf, (void)count, (void)dt;
    return TD_OK;
}
static td_status s_inoop(td_comm *c, void *buf, size_t count, td_comm_dtype dt, td_comm_req **req) {
    (void)c, (void)buf, (void)count, (void)dt;
    *req = NULL;
    return TD_OK;
}
static td_status s_bcast(td_comm *c, void *buf, size_t count, td_comm_dtype dt, int root) {
    (void)c, (void)buf, (void)count, (void)dt, (void)root;
    return TD_OK;
}
static td_status s_barrier(td_comm *c) {
    (void)c;
    return TD_OK;
}
static td_status s_wait(td_comm *c, td_comm_req *r) {
    (void)c, (void)r;
    return TD_OK;
}
static void s_progress(td_comm *c) {
    (void)c;
}

static td_status s_gatherv(td_comm *c, const void *send, size_t n, void *recv, const size_t *counts,
                           int root) {
    (void)c, (void)counts, (void)root;
    if (n && recv != send) memmove(recv, send, n);
    return TD_OK;
}

static const td_comm_ops g_self_ops = {"self",    s_noop, s_inoop,    s_noop, s_noop,   s_bcast,
                                       s_barrier, s_wait, s_progress, s_free, s_gatherv};

td_status td_comm_self_new(td_comm **out) {
    td_comm *c = calloc(1, sizeof *c);
    if (!c) return td_error_set(TD_ERR_NOMEM, "out of memory");
    c->ops = &g_self_ops;
    c->size = c->local_size = 1;
    c->threads_ok = 1;
    *out = c;
    return TD_OK;
}

#ifndef TD_HAVE_NCCL
td_status td_comm_device_new(td_comm *host, td_comm **out) {
    *out = NULL;
    return td_error_set(TD_ERR_RUNTIME,
                        "rank %d: data-parallel training on GPUs needs NCCL, which this build "
                        "lacks",
                        host->rank);
}
#endif

void td_comm_free(td_comm **c) {
    if (!c || !*c) return;
    (*c)->ops->free(*c);
    free(*c);
    *c = NULL;
}
