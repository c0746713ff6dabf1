/* Bad input gives a clear error and a bad-input status (exit code 2), never a crash:
 * job files (missing, invalid JSON, unknown architecture, heads not dividing the width),
 * shards (truncated, wrong magic), checkpoints (missing tensor, mis-shaped tensor,
 * truncated safetensors). Each case checks the status and a phrase of the message. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "data/loader.h"
#include "data/shard.h"
#include "tests/test.h"
#include "worker/model/checkpoint.h"
#include "worker/model/safetensors.h"
#include "worker/train/jobfile.h"

static char g_dir[256];

static const char *path(const char *name) {
    static char p[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

static void write_text(const char *name, const char *text) {
    REQUIRE(td_fs_write_file_atomic(path(name), text, strlen(text)) == TD_OK, "write %s", name);
}

static void expect(td_status s, td_status want_status, const char *phrase, const char *what) {
    const char *msg = td_error_message();
    printf("  %-28s -> exit %d: %s\n", what, td_status_exit_code(s), msg);
    CHECK(s == want_status, "%s: status %s, want %s", what, td_status_to_string(s),
          td_status_to_string(want_status));
    CHECK(td_status_exit_code(s) == 2, "%s: exit code %d, want 2", what, td_status_exit_code(s));
    CHECK(strstr(msg, phrase) != NULL, "%s: message lacks \"%s\": %s", what, phrase, msg);
    td_error_clear();
}

#define MODEL_OK                                                                                   \
    "\"arch\": \"llama\", \"hidden_size\": 32, \"num_hidden_layers\": 1, "                         \
    "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 64, "          \
    "\"vocab_size\": 300, \"max_position_embeddings\": 16"

static void test_job_files(void) {
    td_job j;
    expect(td_job_load(path("nope.json"), &j), TD_ERR_NOTFOUND, "nope.json", "missing job file");
    write_text("bad.json", "{\"model\": {\"arch\": \"llama\",\n \"hidden_size\": 32,, }");
    expect(td_job_load(path("bad.json"), &j), TD_ERR_INVALID, "invalid JSON near line 2",
           "invalid JSON");
    write_text("arch.json", "{\"model\": {\"arch\": \"mamba\", \"hidden_size\": 32}, "
                            "\"data\": {\"train\": \"x\", \"seq_len\": 8}}");
    expect(td_job_load(path("arch.json"), &j), TD_ERR_INVALID, "unknown architecture \"mamba\"",
           "unknown architecture");
    write_text("heads.json",
               "{\"model\": {\"arch\": \"llama\", \"hidden_size\": 30, \"num_hidden_layers\": 1, "
               "\"num_attention_heads\": 4, \"intermediate_size\": 64, \"vocab_size\": 300, "
               "\"max_position_embeddings\": 16}, \"data\": {\"train\": \"x\", \"seq_len\": 8}}");
    expect(td_job_load(path("heads.json"), &j), TD_ERR_INVALID,
           "num_attention_heads (4) must divide hidden_size (30)", "heads not dividing width");
    write_text("kv.json",
               "{\"model\": {\"arch\": \"llama\", \"hidden_size\": 32, \"num_hidden_layers\": 1, "
               "\"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"intermediate_size\": "
               "64, \"vocab_size\": 300, \"max_position_embeddings\": 16}, \"data\": "
               "{\"train\": \"x\", \"seq_len\": 8}}");
    expect(td_job_load(path("kv.json"), &j), TD_ERR_INVALID, "num_key_value_heads",
           "kv heads not dividing heads");
    write_text("type.json", "{\"model\": {" MODEL_OK "}, \"data\": {\"train\": \"x\", "
                            "\"seq_len\": \"eight\"}}");
    expect(td_job_load(path("type.json"), &j), TD_ERR_INVALID, "data.seq_len: expected an integer",
           "wrong value type");
    write_text("seq.json", "{\"model\": {" MODEL_OK "}, \"data\": {\"train\": \"x\", "
                           "\"seq_len\": 64}}");
    expect(td_job_load(path("seq.json"), &j), TD_ERR_INVALID, "exceeds model.max_position",
           "seq_len too long");
    write_text("good.json", "{\"model\": {" MODEL_OK "}, \"data\": {\"train\": \"x\", "
                            "\"seq_len\": 8}}");
    td_status s = td_job_load(path("good.json"), &j);
    CHECK(s == TD_OK, "valid job rejected: %s", td_error_message());
    if (s == TD_OK) td_job_deinit(&j);
}

static void test_shards(void) {
    int32_t toks[100];
    for (int i = 0; i < 100; i++)
        toks[i] = i;
    REQUIRE(td_shard_write(path("ok_train.bin"), toks, 100, 2) == TD_OK, "write shard");
    td_shard sh;
    CHECK(td_shard_open(path("ok_train.bin"), &sh) == TD_OK && sh.count == 100 &&
              td_shard_token(&sh, 42) == 42,
          "valid shard: %s", td_error_message());
    td_shard_close(&sh);
    /* truncated: drop the last 10 bytes */
    char *data;
    size_t len;
    REQUIRE(td_fs_read_file(path("ok_train.bin"), &data, &len) == TD_OK, "read");
    REQUIRE(td_fs_write_file_atomic(path("trunc.bin"), data, len - 10) == TD_OK, "write");
    expect(td_shard_open(path("trunc.bin"), &sh), TD_ERR_FORMAT, "truncated", "truncated shard");
    REQUIRE(td_fs_write_file_atomic(path("tiny.bin"), data, 100) == TD_OK, "write");
    expect(td_shard_open(path("tiny.bin"), &sh), TD_ERR_FORMAT, "shorter than the 1024-byte header",
           "shard shorter than header");
    int32_t bad = 20240521;
    memcpy(data, &bad, 4);
    REQUIRE(td_fs_write_file_atomic(path("magic.bin"), data, len) == TD_OK, "write");
    expect(td_shard_open(path("magic.bin"), &sh), TD_ERR_FORMAT, "bad magic", "wrong-magic shard");
    free(data);
    td_loader *l;
    expect(td_loader_open(path("magic.bin"), "train", 2, 8, 1, 1, &l), TD_ERR_FORMAT, "magic.bin",
           "loader on bad shard");
    expect(td_loader_open(path("ok_train.bin"), "train", 64, 8, 1, 1, &l), TD_ERR_INVALID,
           "fewer than one batch", "too little data");
}

/* Rewrites DIR/model.safetensors, dropping tensor `drop` or replacing `reshape` by a
 * tensor of the wrong shape. */
static void rewrite_model(const char *src_dir, const char *dst_dir, const char *drop,
                          const char *reshape) {
    char p[600], q[600];
    REQUIRE(td_fs_mkdirs(dst_dir) == TD_OK, "mkdir");
    snprintf(p, sizeof p, "%s/config.json", src_dir);
    snprintf(q, sizeof q, "%s/config.json", dst_dir);
    char *cfg;
    size_t n;
    REQUIRE(td_fs_read_file(p, &cfg, &n) == TD_OK, "read config");
    REQUIRE(td_fs_write_file_atomic(q, cfg, n) == TD_OK, "write config");
    free(cfg);
    snprintf(p, sizeof p, "%s/model.safetensors", src_dir);
    td_st_file *f;
    REQUIRE(td_st_open(p, &f) == TD_OK, "%s", td_error_message());
    td_st_writer *w = td_st_writer_new();
    td_st_writer_meta(w, "format", "pt");
    static float zeros[4096];
    for (int i = 0; i < td_st_count(f); i++) {
        const td_st_entry *e = td_st_entry_at(f, i);
        if (drop && !strcmp(e->name, drop)) continue;
        if (reshape && !strcmp(e->name, reshape)) {
            int64_t shape[2] = {e->shape[0], e->shape[1] + 1};
            td_st_writer_add(w, e->name, TD_DT_F32, 2, shape, zeros, 0);
            continue;
        }
        td_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, td_st_data(f, e), 0);
    }
    snprintf(q, sizeof q, "%s/model.safetensors", dst_dir);
    REQUIRE(td_st_writer_save(w, q) == TD_OK, "%s", td_error_message());
    td_st_writer_free(&w);
    td_st_close(&f);
}

static void test_checkpoints(void) {
    const char *fx = "tests/reference/fixtures/llama";
    td_model *m;
    td_status s = td_checkpoint_load_model(fx, &m);
    CHECK(s == TD_OK, "valid checkpoint rejected: %s", td_error_message());
    td_model_free(&m);
    expect(td_checkpoint_load_model(path("no_such_ckpt"), &m), TD_ERR_NOTFOUND, "no such directory",
           "missing checkpoint dir");
    rewrite_model(fx, path("ck_missing"), "model.layers.1.mlp.up_proj.weight", NULL);
    expect(td_checkpoint_load_model(path("ck_missing"), &m), TD_ERR_FORMAT,
           "missing tensor 'model.layers.1.mlp.up_proj.weight'", "checkpoint missing tensor");
    CHECK(m == NULL, "no model is returned on failure");
    rewrite_model(fx, path("ck_shape"), NULL, "model.layers.0.self_attn.k_proj.weight");
    expect(td_checkpoint_load_model(path("ck_shape"), &m), TD_ERR_FORMAT,
           "'model.layers.0.self_attn.k_proj.weight' has shape [16, 33], but config.json implies "
           "[16, 32]",
           "checkpoint mis-shaped tensor");
    /* truncated model.safetensors */
    char p[600], *data;
    size_t len;
    snprintf(p, sizeof p, "%s/model.safetensors", fx);
    REQUIRE(td_fs_read_file(p, &data, &len) == TD_OK, "read");
    rewrite_model(fx, path("ck_trunc"), NULL, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", path("ck_trunc"));
    REQUIRE(td_fs_write_file_atomic(p, data, len / 2) == TD_OK, "write");
    free(data);
    expect(td_checkpoint_load_model(path("ck_trunc"), &m), TD_ERR_FORMAT, "truncated",
           "truncated safetensors");
}

/* td_fs_dirname: where an output path's directory must exist (synthesize, select --out) */
static void test_dirname(void) {
    const char *cases[][2] = {{"out.jsonl", "."}, {"/x", "/"},     {"a/b/c", "a/b"},
                              {"/a/b", "/a"},     {"dir/", "dir"}, {"", "."}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char d[64];
        td_fs_dirname(cases[i][0], d, sizeof d);
        CHECK(!strcmp(d, cases[i][1]), "dirname(\"%s\") = \"%s\", want \"%s\"", cases[i][0], d,
              cases[i][1]);
    }
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/td_test_bad_input.%d", (int)getpid());
    REQUIRE(td_fs_mkdirs(g_dir) == TD_OK, "mkdir %s", g_dir);
    test_job_files();
    test_shards();
    test_checkpoints();
    test_dirname();
    td_fs_remove_tree(g_dir);
    return test_done("test_bad_input");
}
