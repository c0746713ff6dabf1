/* Tensor-parallel inference logits against the whole model (run under mpirun -np 4):
 * for TP = 1, 2, 4 the ranks form 4/TP groups, each rank takes its Megatron slice of the
 * fixture model, and the group runs a 15-token prompt through the paged-KV forward in
 * chunks; its logits must match the unsliced model's within 1e-4 relative (max |diff| /
 * max |ref|). Fixtures: llama_tied (4 heads, 4 KV heads) and gpt2 (biases, learned
 * positions, tied embeddings). */
#include <math.h>
#include <string.h>

#include "common/rng.h"
#include "tests/test.h"
#include "worker/comm/comm.h"
#include "worker/model/checkpoint.h"

static double run(td_model *m, td_kv_cache *kv, const int32_t *prompt, int n, float *logits) {
    int32_t blocks[4] = {3, 0, 2, 1};
    for (int pos = 0; pos < n; pos += 6) {
        int k = n - pos < 6 ? n - pos : 6;
        td_infer_seg sg = {prompt + pos, k, pos, blocks};
        REQUIRE(td_model_forward_infer(m, kv, &sg, 1, logits) == TD_OK, "%s", td_error_message());
    }
    return 0;
}

int main(int argc, char **argv) {
    td_comm_mpi_init(&argc, &argv, 1);
    td_comm *world;
    REQUIRE(td_comm_mpi_new(&world) == TD_OK, "comm");
    REQUIRE(world->size == 4, "run with mpirun -np 4");
    const char *fx[2] = {"tests/reference/fixtures/llama_tied", "tests/reference/fixtures/gpt2"};
    for (int f = 0; f < 2; f++) {
        td_model *full;
        REQUIRE(td_checkpoint_load_model(fx[f], &full) == TD_OK, "%s", td_error_message());
        int V = td_model_config_of(full)->vocab_size;
        int32_t prompt[15];
        td_rng r;
        td_rng_seed(&r, 17);
        for (int i = 0; i < 15; i++) prompt[i] = (int32_t)td_rng_below(&r, (uint64_t)V);
        float *ref = malloc(sizeof(float) * (size_t)V), *got = malloc(sizeof(float) * (size_t)V);
        td_kv_cache *kv;
        REQUIRE(td_kv_cache_new(full, 8, 4, &kv) == TD_OK && td_model_plan_infer(full, 8, 1) == TD_OK,
                "kv");
        run(full, kv, prompt, 15, ref);
        td_kv_cache_free(&kv);
        for (int T = 1; T <= 4; T *= 2) {
            td_comm *tp;
            REQUIRE(td_comm_split(world, world->rank / T, world->rank, &tp) == TD_OK, "split");
            td_model *m;
            REQUIRE(td_model_tp_slice(full, tp->rank, T, &m) == TD_OK, "%s", td_error_message());
            td_model_set_tp_comm(m, tp);
            REQUIRE(td_kv_cache_new(m, 8, 4, &kv) == TD_OK && td_model_plan_infer(m, 8, 1) == TD_OK,
                    "kv");
            run(m, kv, prompt, 15, got);
            double md = 0, mr = 0;
            for (int j = 0; j < V; j++) {
                md = fmax(md, fabs((double)got[j] - ref[j]));
                mr = fmax(mr, fabs((double)ref[j]));
            }
            double rel = md / mr, worst = rel;
            world->ops->allreduce(world, &worst, 1, TD_COMM_F64); /* sum: <= 4 x the worst */
            if (world->rank == 0)
                printf("%-11s TP=%d: logits vs whole model, max rel diff %.2e (rank 0)\n",
                       strrchr(fx[f], '/') + 1, T, rel);
            CHECK(rel <= 1e-4, "%s TP=%d rank %d: rel diff %.3e", fx[f], T, world->rank, rel);
            td_kv_cache_free(&kv);
            td_model_free(&m);
            td_comm_free(&tp);
        }
        free(ref);
        free(got);
        td_model_free(&full);
    }
    int rc = world->rank == 0 ? test_done("test_tp_logits") : (g_test_failures ? 1 : 0);
    td_comm_free(&world);
    td_comm_mpi_finalize();
    return rc;
}
