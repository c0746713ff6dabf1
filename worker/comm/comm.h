/* The communicator: collectives over the ranks of one job, behind one interface with a
 * backend per kind of buffer — MPI for host memory (mpi.c), NCCL for device memory
 * (nccl.c, bootstrapped over MPI). Like a ggml backend, a td_comm is a table of function
 * pointers plus the backend's context; callers never see MPI or NCCL types.
 *
 * Every collective works on float32 or bytes and sums where it reduces. Non-blocking
 * calls return a request to wait on; a request must be waited on exactly once. All
 * functions return TD_OK or a status with a message naming the operation and the rank. */
#ifndef TD_COMM_H
#define TD_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum { TD_COMM_F32, TD_COMM_BYTE, TD_COMM_F64, TD_COMM_I64 } td_comm_dtype;

typedef struct td_comm td_comm;
typedef struct td_comm_req td_comm_req;

typedef struct {
    const char *name; /* "mpi", "nccl" */
    /* in-place sum over all ranks (float and integer types; not TD_COMM_BYTE) */
    td_status (*allreduce)(td_comm *c, void *buf, size_t count, td_comm_dtype dt);
    td_status (*iallreduce)(td_comm *c, void *buf, size_t count, td_comm_dtype dt,
                            td_comm_req **req);
    /* buf holds count * size elements; rank r receives the sum of block r in
     * buf + r * count (in place) */
    td_status (*reduce_scatter)(td_comm *c, void *buf, size_t count, td_comm_dtype dt);
    /* buf holds count * size elements; rank r's block r (buf + r * count) goes to all */
    td_status (*allgather)(td_comm *c, void *buf, size_t count, td_comm_dtype dt);
    td_status (*bcast)(td_comm *c, void *buf, size_t count, td_comm_dtype dt, int root);
    td_status (*barrier)(td_comm *c);
    /* waits for a request and frees it */
    td_status (*wait)(td_comm *c, td_comm_req *req);
    /* lets queued non-blocking work advance (MPI's progress engine); cheap */
    void (*progress)(td_comm *c);
    void (*free)(td_comm *c);
    /* bytes: rank r's n bytes of send land at recv + sum(counts[0..r)) on root (counts:
     * every rank's n, known to all; recv used on root only) */
    td_status (*gatherv)(td_comm *c, const void *send, size_t n, void *recv, const size_t *counts,
                         int root);
} td_comm_ops;

struct td_comm {
    const td_comm_ops *ops;
    void *ctx;
    int rank, size;
    int local_rank, local_size; /* within the node (for choosing a GPU) */
    int threads_ok;             /* another thread may call collectives (one at a time) */
    /* serving groups (MPI backend): all-reduces, and broadcasts from this rank, fail after
     * timeout_s seconds (0: wait forever) saying a rank is stuck; with idle_wait, a rank
     * waiting in a collective sleeps between tests instead of spinning on a core */
    double timeout_s;
    int idle_wait;
};

/* MPI backend over MPI_COMM_WORLD; MPI must be initialised (td_comm_mpi_init). */
td_status td_comm_mpi_new(td_comm **out);
/* Initialises MPI when the process was launched by mpirun/srun (or when force), asking
 * for MPI_THREAD_MULTIPLE; returns 1 when MPI is running. */
int td_comm_mpi_init(int *argc, char ***argv, int force);
void td_comm_mpi_finalize(void);
/* Ends every rank of the job with exit code rc (after this rank printed its error). */
void td_comm_mpi_abort(int rc);
/* Splits parent into groups by color, ordered by key (MPI_Comm_split); *out owned by the
 * caller. A one-rank parent gives a one-rank group. */
td_status td_comm_split(td_comm *parent, int color, int key, td_comm **out);
/* A one-rank communicator for single-process runs (every collective is a no-op). */
td_status td_comm_self_new(td_comm **out);

/* A communicator for device buffers (NCCL): bootstraps over `host` (ncclGetUniqueId on
 * rank 0, broadcast), selects GPU local_rank. Fails saying so in a build without NCCL. */
td_status td_comm_device_new(td_comm *host, td_comm **out);

void td_comm_free(td_comm **c);

static inline size_t td_comm_dtype_size(td_comm_dtype dt) {
    return dt == TD_COMM_BYTE ? 1 : (dt == TD_COMM_F32 ? 4 : 8);
}

/* The collectives. Code outside worker/comm/ calls these, never the table directly. */
static inline td_status td_comm_allreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    return c->ops->allreduce(c, buf, count, dt);
}
static inline td_status td_comm_iallreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt,
                                           td_comm_req **req) {
    return c->ops->iallreduce(c, buf, count, dt, req);
}
static inline td_status td_comm_reduce_scatter(td_comm *c, void *buf, size_t count,
                                               td_comm_dtype dt) {
    return c->ops->reduce_scatter(c, buf, count, dt);
}
static inline td_status td_comm_allgather(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    return c->ops->allgather(c, buf, count, dt);
}
static inline td_status td_comm_bcast(td_comm *c, void *buf, size_t count, td_comm_dtype dt,
                                      int root) {
    return c->ops->bcast(c, buf, count, dt, root);
}
static inline td_status td_comm_gatherv(td_comm *c, const void *send, size_t n, void *recv,
                                        const size_t *counts, int root) {
    return c->ops->gatherv(c, send, n, recv, counts, root);
}
static inline td_status td_comm_barrier(td_comm *c) {
    return c->ops->barrier(c);
}
static inline td_status td_comm_wait(td_comm *c, td_comm_req *req) {
    return c->ops->wait(c, req);
}
static inline void td_comm_progress(td_comm *c) {
    c->ops->progress(c);
}

#endif
