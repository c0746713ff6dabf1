/* Tensor-parallel inference logits against the whole model (run under mpirun -np 4):
 * for TP = 1, 2, 4 the ranks form 4/TP groups, each rank takes its Megatron slice of the
 * fixture model, and the group runs a 15-token prompt through the paged-KV forward in
 * chunks; its logits must match the unsliced model's within 1e-4 relative (max |diff| /
 * max |ref|). Then the same with int8 weights rounded to nearest on the whole model's grid
 * (td_infer_int8_grid_rtn, as `serve --int8 --int8-rtn` does): every TP degree's int8
 * logits must match the whole int8 model's within 1e-4 too (slices that chose their own
 * scales for the row-parallel matrices would not). Then with two LoRA adapters on the whole
 * model (random A and B, different targets: gpt2's c_attn spans the q, k and v blocks each
 * slice cuts apart) and the prompt run on the second: the slices cut the adapters with
 * their matrices, and every TP degree's logits match the whole model's with that adapter
 * within 1e-4. Fixtures: llama_tied (4 heads, 4 KV
 * heads) and gpt2 (biases, learned positions, tied embeddings). */
#include <math.h>
#include <string.h>

#include "common/rng.h"
#include "tests/test.h"
#include "worker/comm/comm.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/model/checkpoint.h"
#include "worker/model/lora.h"

static double run(td_infer_model *m, td_kv_cache *kv, const int32_t *prompt, int n, float *logits,
                  int adapter) {
    int32_t blocks[4] = {3, 0, 2, 1};
    for (int pos = 0; pos < n; pos += 6) {
        int k = n - pos < 6 ? n - pos : 6;
        td_infer_seg sg = {prompt + pos, k, pos, blocks, adapter};
        REQUIRE(td_infer_forward(m, kv, &sg, 1, logits) == TD_OK, "%s", td_error_message());
    }
    return 0;
}

int main(int argc, char **argv) {
    td_comm_mpi_init(&argc, &argv, 1);
    td_comm *world;
    REQUIRE(td_comm_mpi_new(&world) == TD_OK, "comm");
    REQUIRE(world->size == 4, "run with mpirun -np 4");
    static const char *kind[3] = {"fp32", "int8", "fp32 + adapter"};
    const char *fx[2] = {"tests/reference/fixtures/llama_tied", "tests/reference/fixtures/gpt2"};
    for (int f = 0; f < 2; f++) {
        td_model *fw;
        REQUIRE(td_checkpoint_load_model(fx[f], &fw) == TD_OK, "%s", td_error_message());
        td_infer_model *full;
        REQUIRE(td_infer_model_new(fw, &full) == TD_OK, "%s", td_error_message());
        int V = td_model_config_of(fw)->vocab_size;
        int32_t prompt[15];
        td_rng r;
        td_rng_seed(&r, 17);
        for (int i = 0; i < 15; i++)
            prompt[i] = (int32_t)td_rng_below(&r, (uint64_t)V);
        float *ref = malloc(sizeof(float) * (size_t)V), *got = malloc(sizeof(float) * (size_t)V);
        for (int q = 0; q < 3; q++) {
            td_kv_cache *kv;
            td_infer_model *whole = full;
            int adapter = q == 2 ? 2 : 0;
            for (int k = 0; q == 2 && k < 2; k++) { /* adapters on the whole (fp32) model */
                const td_model_config *cfg = td_model_config_of(fw);
                int llama = cfg->arch == TD_ARCH_LLAMA;
                td_lora_config lc = {.r = 3, .alpha = 6, .n_targets = 3};
                const char *t[2][3] = {{"q_proj", "o_proj", "gate_proj"},
                                       {"v_proj", "up_proj", "down_proj"}};
                const char *g[2][3] = {{"c_attn", "c_proj", "c_fc"}, {"c_attn", "c_fc", "c_proj"}};
                for (int i = 0; i < 3; i++)
                    snprintf(lc.targets[i], sizeof lc.targets[i], "%s", llama ? t[k][i] : g[k][i]);
                if (!llama) lc.n_targets = k ? 2 : 3;
                td_lora *lo;
                REQUIRE(td_lora_new(cfg, &lc, "test", 3 + (uint64_t)k, &lo) == TD_OK, "%s",
                        td_error_message());
                td_rng ar;
                td_rng_seed(&ar, 40 + (uint64_t)k); /* the same on every rank */
                for (size_t i = 0; i < td_lora_num_params(lo); i++)
                    td_lora_params(lo)[i] = (2 * td_rng_uniform(&ar) - 1) * 0.3f;
                int idx;
                REQUIRE(td_infer_add_adapter(full, lo, &idx) == TD_OK, "%s", td_error_message());
                td_lora_free(&lo);
            }
            if (q ==
                1) { /* int8 on the whole model's grid; the reference is the whole int8 model */
                REQUIRE(td_infer_int8_grid_rtn(full, 1) == TD_OK, "%s", td_error_message());
                REQUIRE(td_infer_tp_slice(full, 0, 1, &whole) == TD_OK &&
                            td_infer_quantize_int8(whole, 1) == TD_OK,
                        "%s", td_error_message());
            }
            REQUIRE(td_kv_cache_new(whole, 8, 4, &kv) == TD_OK &&
                        td_infer_plan(whole, 8, 1) == TD_OK,
                    "kv");
            run(whole, kv, prompt, 15, ref, adapter);
            td_kv_cache_free(&kv);
            if (q == 1) td_infer_model_free(&whole);
            for (int T = 1; T <= 4; T *= 2) {
                td_comm *tp;
                REQUIRE(td_comm_split(world, world->rank / T, world->rank, &tp) == TD_OK, "split");
                td_infer_model *m;
                REQUIRE(td_infer_tp_slice(full, tp->rank, T, &m) == TD_OK, "%s",
                        td_error_message());
                if (q == 1)
                    REQUIRE(td_infer_quantize_int8(m, 1) == TD_OK, "%s", td_error_message());
                REQUIRE(td_infer_set_tp_comm(m, tp) == TD_OK, "%s", td_error_message());
                REQUIRE(td_kv_cache_new(m, 8, 4, &kv) == TD_OK && td_infer_plan(m, 8, 1) == TD_OK,
                        "kv");
                run(m, kv, prompt, 15, got, adapter);
                double md = 0, mr = 0;
                for (int j = 0; j < V; j++) {
                    md = fmax(md, fabs((double)got[j] - ref[j]));
                    mr = fmax(mr, fabs((double)ref[j]));
                }
                double rel = md / mr;
                if (world->rank == 0)
                    printf("%-11s %s TP=%d: logits vs whole model, max rel diff %.2e (rank 0)\n",
                           strrchr(fx[f], '/') + 1, kind[q], T, rel);
                CHECK(rel <= 1e-4, "%s %s TP=%d rank %d: rel diff %.3e", fx[f], kind[q], T,
                      world->rank, rel);
                td_kv_cache_free(&kv);
                td_infer_model_free(&m);
                td_comm_free(&tp);
            }
        }
        free(ref);
        free(got);
        td_infer_model_free(&full);
    }
    int rc = world->rank == 0 ? test_done("test_tp_logits") : (g_test_failures ? 1 : 0);
    td_comm_free(&world);
    td_comm_mpi_finalize();
    return rc;
}
