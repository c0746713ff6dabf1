/* NCCL backend of td_comm for device buffers (see comm.h). Bootstrapped over the host
 * communicator: rank 0 makes the unique id, the host backend broadcasts it, each rank binds
 * GPU local_rank and joins. Collectives run on one CUDA stream; blocking calls synchronise
 * it, non-blocking calls record an event that wait() synchronises. Compiled and linked on
 * every machine with the CUDA toolkit; it runs only where a GPU is present. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "worker/comm/comm.h"

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
    float *scratch; /* one float on this rank's GPU, for barrier() */
} nccl_ctx;

struct td_comm_req {
    cudaEvent_t ev;
};

#define NCCL_CHECK(c, call)                                                                        \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess)                                                                     \
            return td_error_set(TD_ERR_RUNTIME, "rank %d: %s failed at %s:%d: %s", (c)->rank,      \
                                #call, __FILE__, __LINE__, ncclGetErrorString(r_));                \
    } while (0)
#define CUDA_CHECK(c, call)                                                                        \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return td_error_set(TD_ERR_RUNTIME, "rank %d: %s failed at %s:%d: %s", (c)->rank,      \
                                #call, __FILE__, __LINE__, cudaGetErrorString(e_));                \
    } while (0)

static ncclDataType_t nccl_type(td_comm_dtype dt) {
    switch (dt) {
    case TD_COMM_F32:
        return ncclFloat32;
    case TD_COMM_F64:
        return ncclFloat64;
    case TD_COMM_I64:
        return ncclInt64;
    default:
        return ncclUint8;
    }
}

static nccl_ctx *X(td_comm *c) {
    return (nccl_ctx *)c->ctx;
}

static td_status n_allreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    NCCL_CHECK(c, ncclAllReduce(buf, buf, count, nccl_type(dt), ncclSum, X(c)->comm, X(c)->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(X(c)->stream));
    return TD_OK;
}

static td_status n_iallreduce(td_comm *c, void *buf, size_t count, td_comm_dtype dt,
                              td_comm_req **req) {
    NCCL_CHECK(c, ncclAllReduce(buf, buf, count, nccl_type(dt), ncclSum, X(c)->comm, X(c)->stream));
    td_comm_req *r = malloc(sizeof *r);
    if (!r) return td_error_set(TD_ERR_NOMEM, "out of memory");
    cudaError_t e = cudaEventCreateWithFlags(&r->ev, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(r->ev, X(c)->stream);
    if (e != cudaSuccess) {
        free(r);
        return td_error_set(TD_ERR_RUNTIME, "rank %d: CUDA event: %s", c->rank,
                            cudaGetErrorString(e));
    }
    *req = r;
    return TD_OK;
}

static td_status n_reduce_scatter(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    char *b = buf;
    size_t es = td_comm_dtype_size(dt);
    NCCL_CHECK(c, ncclReduceScatter(b, b + (size_t)c->rank * count * es, count, nccl_type(dt),
                                    ncclSum, X(c)->comm, X(c)->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(X(c)->stream));
    return TD_OK;
}

static td_status n_allgather(td_comm *c, void *buf, size_t count, td_comm_dtype dt) {
    char *b = buf;
    size_t es = td_comm_dtype_size(dt);
    NCCL_CHECK(c, ncclAllGather(b + (size_t)c->rank * count * es, b, count, nccl_type(dt),
                                X(c)->comm, X(c)->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(X(c)->stream));
    return TD_OK;
}

static td_status n_bcast(td_comm *c, void *buf, size_t count, td_comm_dtype dt, int root) {
    NCCL_CHECK(c, ncclBroadcast(buf, buf, count, nccl_type(dt), root, X(c)->comm, X(c)->stream));
    CUDA_CHECK(c, cudaStreamSynchronize(X(c)->stream));
    return TD_OK;
}

static td_status n_barrier(td_comm *c) {
    return n_allreduce(c, X(c)->scratch, 1, TD_COMM_F32);
}

static td_status n_wait(td_comm *c, td_comm_req *r) {
    if (!r) return TD_OK;
    cudaError_t e = cudaEventSynchronize(r->ev);
    cudaEventDestroy(r->ev);
    free(r);
    if (e != cudaSuccess)
        return td_error_set(TD_ERR_RUNTIME, "rank %d: cudaEventSynchronize: %s", c->rank,
                            cudaGetErrorString(e));
    return TD_OK;
}

static void n_progress(td_comm *c) {
    (void)c;
}

static void n_free(td_comm *c) {
    nccl_ctx *x = X(c);
    if (!x) return;
    ncclCommDestroy(x->comm);
    cudaStreamDestroy(x->stream);
    cudaFree(x->scratch);
    free(x);
}

static td_status n_gatherv(td_comm *c, const void *send, size_t n, void *recv, const size_t *counts,
                           int root) {
    (void)send, (void)n, (void)recv, (void)counts, (void)root;
    return td_error_set(TD_ERR_INVALID, "rank %d: gathers of bytes go over the host communicator",
                        c->rank);
}

static const td_comm_ops g_nccl_ops = {"nccl",      n_allreduce, n_iallreduce, n_reduce_scatter,
                                       n_allgather, n_bcast,     n_barrier,    n_wait,
                                       n_progress,  n_free,      n_gatherv};

td_status td_comm_device_new(td_comm *host, td_comm **out) {
    *out = NULL;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0)
        return td_error_set(TD_ERR_RUNTIME, "rank %d: no CUDA device for the NCCL backend",
                            host->rank);
    td_comm *c = calloc(1, sizeof *c);
    nccl_ctx *x = calloc(1, sizeof *x);
    if (!c || !x) {
        free(c);
        free(x);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    *c = (td_comm){.ops = &g_nccl_ops,
                   .ctx = x,
                   .rank = host->rank,
                   .size = host->size,
                   .local_rank = host->local_rank,
                   .local_size = host->local_size,
                   .threads_ok = 1};
    int dev = host->local_rank % ndev;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    td_status s = TD_OK;
    if (cudaSetDevice(dev) != cudaSuccess)
        s = td_error_set(TD_ERR_RUNTIME, "rank %d: cannot select GPU %d", host->rank, dev);
    if (s == TD_OK && cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking) != cudaSuccess)
        s = td_error_set(TD_ERR_RUNTIME, "rank %d: cudaStreamCreate failed", host->rank);
    if (s == TD_OK && cudaMalloc((void **)&x->scratch, sizeof(float)) != cudaSuccess)
        s = td_error_set(TD_ERR_RUNTIME, "rank %d: cudaMalloc failed", host->rank);
    if (s == TD_OK && host->rank == 0 && ncclGetUniqueId(&id) != ncclSuccess)
        s = td_error_set(TD_ERR_RUNTIME, "rank 0: ncclGetUniqueId failed");
    /* every rank joins the broadcast and the vote, so a failure on one cannot strand the
     * others inside ncclCommInitRank */
    td_status sb = td_comm_bcast(host, &id, sizeof id, TD_COMM_BYTE, 0);
    if (s == TD_OK) s = sb;
    int64_t failed = s != TD_OK;
    if (td_comm_allreduce(host, &failed, 1, TD_COMM_I64) != TD_OK) failed = 1;
    if (s == TD_OK && failed)
        s = td_error_set(TD_ERR_RUNTIME, "rank %d: another rank could not set up NCCL", host->rank);
    if (s == TD_OK) {
        ncclResult_t r = ncclCommInitRank(&x->comm, host->size, id, host->rank);
        if (r != ncclSuccess)
            s = td_error_set(TD_ERR_RUNTIME, "rank %d: ncclCommInitRank: %s", host->rank,
                             ncclGetErrorString(r));
    }
    if (s != TD_OK) {
        if (x->stream) cudaStreamDestroy(x->stream);
        if (x->scratch) cudaFree(x->scratch);
        free(x);
        free(c);
        return s;
    }
    *out = c;
    return TD_OK;
}
