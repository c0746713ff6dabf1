/* Communication benchmark (run under mpirun, 2+ ranks):
 *   1. all-reduce bus bandwidth of tandem's path (td_comm MPI backend) against a bare
 *      MPI_Allreduce of the same bytes, measured alternately in the same run;
 *   2. for a training step of GPT-2 L4/H4/C256 (vocab 50257, B=4 per rank, T=64), the share
 *      of gradient communication hidden behind backward by the bucketed, overlapped sync:
 *      hidden = 1 - (time waited after backward) / (time in all-reduce calls); and the step
 *      time against the same step with one all-reduce after backward.
 * Bus bandwidth = 2 (n - 1) / n * bytes / time (the NCCL-tests convention).
 * usage: mpirun -np 2 bench_comm [--iters N] [--bucket-mb N] [--json] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/timeutil.h"
#include "worker/comm/comm.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/model.h"
#include "worker/train/dp.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

int main(int argc, char **argv) {
    td_blas_core_check(argv); /* before MPI starts: may re-execute (blas_core.h) */
    int iters = 7, json = 0;
    double bucket_mb = 25;
    td_comm_mpi_init(&argc, &argv, 1);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bucket-mb") && i + 1 < argc)
            bucket_mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
    }
    td_comm *c;
    if (td_comm_mpi_new(&c) != TD_OK) return 1;
    int n = c->size, rank = c->rank;
    if (n < 2) {
        if (rank == 0) fprintf(stderr, "bench_comm: run under mpirun with 2 or more ranks\n");
        td_comm_mpi_finalize();
        return 2;
    }
    if (iters < 1 || iters > 100) iters = 7;
    double busf = 2.0 * (n - 1) / n;
    if (rank == 0) {
        char kernels[512];
        fprintf(json ? stderr : stdout, "kernels: %s\n",
                td_cpu_kernels_describe(kernels, sizeof kernels));
    }
    if (rank == 0 && !json)
        printf("all-reduce, %d ranks, float32 sum, median of %d\n\n%12s %14s %14s %8s\n", n, iters,
               "bytes", "tandem GB/s", "MPI GB/s", "ratio");
    size_t sizes[] = {1u << 20, 4u << 20, 16u << 20, 64u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t cnt = sizes[k] / 4;
        float *buf = malloc(sizes[k]);
        for (size_t i = 0; i < cnt; i++)
            buf[i] = (float)(i % 7);
        double ours[100], bare[100];
        for (int it = -1; it < iters; it++) { /* alternate, first round is warm-up */
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = td_time_now();
            td_comm_allreduce(c, buf, cnt, TD_COMM_F32);
            double t1 = td_time_now();
            MPI_Barrier(MPI_COMM_WORLD);
            double t2 = td_time_now();
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            double t3 = td_time_now();
            if (it >= 0) {
                ours[it] = t1 - t0;
                bare[it] = t3 - t2;
            }
        }
        double a = busf * (double)sizes[k] / median(ours, iters) / 1e9;
        double b = busf * (double)sizes[k] / median(bare, iters) / 1e9;
        if (rank == 0) {
            if (json)
                printf("{\"bench\": \"allreduce\", \"bytes\": %zu, \"ranks\": %d, "
                       "\"tandem_busbw_gbs\": %.3f, \"mpi_busbw_gbs\": %.3f, \"ratio\": %.3f}\n",
                       sizes[k], n, a, b, a / b);
            else
                printf("%12zu %14.3f %14.3f %7.2fx\n", sizes[k], a, b, a / b);
        }
        free(buf);
    }

    /* training step: overlapped buckets vs one all-reduce after backward */
    td_model_config cfg = {.arch = TD_ARCH_GPT2,
                           .hidden_size = 256,
                           .intermediate_size = 1024,
                           .num_hidden_layers = 4,
                           .num_attention_heads = 4,
                           .num_key_value_heads = 4,
                           .vocab_size = 50257,
                           .max_position_embeddings = 1024,
                           .norm_eps = 1e-5,
                           .tie_word_embeddings = 1};
    enum { B = 4, T = 64 };
    td_model *m;
    if (td_model_new(&cfg, &m) != TD_OK || td_model_plan(m, B, T, 1) != TD_OK) return 1;
    td_model_init_random(m, 1);
    td_grad_sync *gs;
    td_grad_sync_new(c, m, (size_t)(bucket_mb * 1048576), (size_t)B * T, &gs);
    int32_t x[B * T], y[B * T];
    td_rng r;
    td_rng_seed(&r, 11 + (uint64_t)rank);
    for (int i = 0; i < B * T; i++) {
        x[i] = (int32_t)td_rng_below(&r, 50257);
        y[i] = (int32_t)td_rng_below(&r, 50257);
    }
    size_t np = td_model_num_params(m);
    /* the trainer's path alone: the gradient buffer through the bucketed communication
     * thread, with no backward to overlap, against one bare MPI_Allreduce of it */
    {
        double ours[100], bare[100];
        for (int it = -1; it < iters; it++) {
            double w, cm;
            size_t bytes;
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = td_time_now();
            td_grad_sync_arm(gs);
            td_model_set_embed_rows_mode(m, 0);
            td_grad_sync_finish(gs, &w, &cm, &bytes);
            double t1 = td_time_now();
            MPI_Barrier(MPI_COMM_WORLD);
            double t2 = td_time_now();
            MPI_Allreduce(MPI_IN_PLACE, td_model_grads(m), (int)np, MPI_FLOAT, MPI_SUM,
                          MPI_COMM_WORLD);
            double t3 = td_time_now();
            if (it >= 0) {
                ours[it] = t1 - t0;
                bare[it] = t3 - t2;
            }
        }
        double a = busf * (double)(np * 4) / median(ours, iters) / 1e9;
        double b = busf * (double)(np * 4) / median(bare, iters) / 1e9;
        if (rank == 0) {
            if (json)
                printf("{\"bench\": \"grad_sync\", \"bytes\": %zu, \"buckets\": %d, "
                       "\"tandem_busbw_gbs\": %.3f, \"mpi_busbw_gbs\": %.3f, \"ratio\": %.3f}\n",
                       np * 4, td_grad_sync_num_buckets(gs), a, b, a / b);
            else
                printf("%12zu %14.3f %14.3f %7.2fx   (trainer path: %d buckets on the "
                       "communication thread, gpt2-L4 gradients)\n",
                       np * 4, a, b, a / b, td_grad_sync_num_buckets(gs));
        }
    }
    double st_ov[100], st_plain[100], waits[100], comms[100], plain_comm[100];
    for (int it = -1; it < iters; it++) {
        double loss;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = td_time_now();
        td_model_zero_grad(m);
        td_model_forward(m, x, y, B, T, &loss);
        td_grad_sync_arm(gs);
        td_model_backward(m, 1.0);
        double w, cm;
        size_t bytes;
        td_grad_sync_finish(gs, &w, &cm, &bytes);
        double t1 = td_time_now();
        MPI_Barrier(MPI_COMM_WORLD);
        double t2 = td_time_now();
        td_model_zero_grad(m);
        td_model_forward(m, x, y, B, T, &loss);
        td_model_backward(m, 1.0);
        double t3 = td_time_now();
        td_comm_allreduce(c, td_model_grads(m), np, TD_COMM_F32);
        double t4 = td_time_now();
        if (it >= 0) {
            st_ov[it] = t1 - t0;
            st_plain[it] = t4 - t2;
            waits[it] = w;
            comms[it] = cm;
            plain_comm[it] = (t4 - t3) * 1e3;
        }
    }
    double wsum = 0, csum = 0;
    for (int i = 0; i < iters; i++) {
        wsum += waits[i];
        csum += comms[i];
    }
    double hidden = csum > 0 ? 1.0 - wsum / csum : 0;
    double so = median(st_ov, iters) * 1e3, sp = median(st_plain, iters) * 1e3;
    double pc = median(plain_comm, iters);
    if (rank == 0) {
        if (json)
            printf("{\"bench\": \"train_step\", \"model\": \"gpt2-L4-C256\", \"ranks\": %d, "
                   "\"grad_bytes\": %zu, \"buckets\": %d, \"step_ms_overlapped\": %.1f, "
                   "\"step_ms_after_backward\": %.1f, \"comm_ms\": %.1f, \"exposed_ms\": %.1f, "
                   "\"hidden\": %.3f}\n",
                   n, np * 4, td_grad_sync_num_buckets(gs), so, sp, csum / iters, wsum / iters,
                   hidden);
        else
            printf("\ntraining step, gpt2-L4-C256 (%.1f MB of gradients, %d buckets of <= %.0f "
                   "MiB), B=%d T=%d per rank:\n"
                   "  one all-reduce after backward: step %.1f ms, of which all-reduce %.1f ms\n"
                   "  overlapped buckets:            step %.1f ms; all-reduce %.1f ms, waited "
                   "after backward %.1f ms -> %.0f %% hidden\n",
                   np * 4 / 1e6, td_grad_sync_num_buckets(gs), bucket_mb, B, T, sp, pc, so,
                   csum / iters, wsum / iters, 100 * hidden);
    }
    td_grad_sync_free(&gs);
    td_model_free(&m);
    td_comm_free(&c);
    td_comm_mpi_finalize();
    return 0;
}
