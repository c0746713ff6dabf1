/* safetensors: write/read round trip of F32 (plain and transposed), I32 and metadata;
 * F16 and BF16 read as float32 with their exact values; header padding to 8 bytes; a
 * tensor whose byte range disagrees with its shape is refused. */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "tests/test.h"
#include "worker/model/safetensors.h"

int main(void) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/td_test_st.%d.safetensors", (int)getpid());
    float a[6] = {1, 2, 3, 4, 5, 6}; /* internal (3, 2); HF shape (2, 3) when transposed */
    int32_t ids[3] = {7, -1, 65536};
    uint16_t h[3] = {0x3c00, 0xc000, 0x0001};  /* fp16: 1, -2, 2^-24 */
    uint16_t bf[3] = {0x3f80, 0x4049, 0xbf00}; /* bf16: 1, 3.140625, -0.5 */
    td_st_writer *w = td_st_writer_new();
    int64_t s23[2] = {2, 3}, s3[1] = {3};
    CHECK(td_st_writer_add(w, "plain", TD_DT_F32, 2, s23, a, 0) == TD_OK, "add");
    CHECK(td_st_writer_add(w, "trans", TD_DT_F32, 2, s23, a, 1) == TD_OK, "add");
    CHECK(td_st_writer_add(w, "ids", TD_DT_I32, 1, s3, ids, 0) == TD_OK, "add");
    CHECK(td_st_writer_add(w, "half", TD_DT_F16, 1, s3, h, 0) == TD_OK, "add");
    CHECK(td_st_writer_add(w, "bf", TD_DT_BF16, 1, s3, bf, 0) == TD_OK, "add");
    td_st_writer_meta(w, "format", "pt");
    REQUIRE(td_st_writer_save(w, path) == TD_OK, "%s", td_error_message());
    td_st_writer_free(&w);

    td_st_file *f;
    REQUIRE(td_st_open(path, &f) == TD_OK, "%s", td_error_message());
    CHECK(td_st_count(f) == 5, "5 tensors, got %d", td_st_count(f));
    CHECK(td_st_metadata(f, "format") && !strcmp(td_st_metadata(f, "format"), "pt"), "meta");
    float out[6];
    td_st_read_f32(f, td_st_find(f, "plain"), out, 0);
    CHECK(!memcmp(out, a, sizeof a), "plain round trip");
    /* "trans" holds the (2,3) transpose of a (3,2): row 0 = a[0], a[2], a[4] */
    const float *tr = td_st_data(f, td_st_find(f, "trans"));
    CHECK(tr[0] == 1 && tr[1] == 3 && tr[2] == 5 && tr[3] == 2 && tr[4] == 4 && tr[5] == 6,
          "transposed layout on disk: %g %g %g %g %g %g", tr[0], tr[1], tr[2], tr[3], tr[4], tr[5]);
    td_st_read_f32(f, td_st_find(f, "trans"), out, 1);
    CHECK(!memcmp(out, a, sizeof a), "transposed read restores the internal layout");
    CHECK(!memcmp(td_st_data(f, td_st_find(f, "ids")), ids, sizeof ids), "I32 round trip");
    td_st_read_f32(f, td_st_find(f, "half"), out, 0);
    CHECK(out[0] == 1.0f && out[1] == -2.0f && out[2] == ldexpf(1, -24), "fp16: %g %g %g", out[0],
          out[1], out[2]);
    td_st_read_f32(f, td_st_find(f, "bf"), out, 0);
    CHECK(out[0] == 1.0f && out[1] == 3.140625f && out[2] == -0.5f, "bf16: %g %g %g", out[0],
          out[1], out[2]);
    CHECK(td_st_read_f32(f, td_st_find(f, "ids"), out, 0) == TD_ERR_FORMAT,
          "int tensors are not read as floats");
    td_error_clear();
    td_st_close(&f);

    /* header length is a multiple of 8 */
    char *raw;
    size_t len;
    REQUIRE(td_fs_read_file(path, &raw, &len) == TD_OK, "read");
    uint64_t hl;
    memcpy(&hl, raw, 8);
    CHECK(hl % 8 == 0, "header length %llu padded to 8", (unsigned long long)hl);
    /* corrupt the shape of "plain" in place: [2, 3] -> [2, 4] */
    char *sp = strstr(raw + 8, "\"plain\"");
    REQUIRE(sp, "header has plain");
    char *shape = strstr(sp, "[2,3]");
    REQUIRE(shape, "shape text [2,3] in %.*s", 60, sp);
    shape[3] = '4';
    REQUIRE(td_fs_write_file_atomic(path, raw, len) == TD_OK, "write");
    free(raw);
    td_status s = td_st_open(path, &f);
    CHECK(s == TD_ERR_FORMAT && strstr(td_error_message(), "'plain' holds 24 bytes"),
          "shape/bytes mismatch refused: %s", td_error_message());
    unlink(path);
    return test_done("test_safetensors");
}
