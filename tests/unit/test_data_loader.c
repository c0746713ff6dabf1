/* Shards and the loader: uint16 and uint32 shards round-trip; batches are windows of the
 * token stream with targets shifted by one; the order is a permutation per epoch that the
 * seed fixes (same seed, same batches; other seed, other order); set_pos resumes the
 * exact sequence; every window is visited once per epoch. */
#include <string.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "data/loader.h"
#include "data/shard.h"
#include "tests/test.h"

enum { NTOK = 1000, B = 3, T = 10 };

int main(void) {
    char dir[128], p[256];
    snprintf(dir, sizeof dir, "/tmp/td_test_loader.%d", (int)getpid());
    REQUIRE(td_fs_mkdirs(dir) == TD_OK, "mkdir");
    static int32_t toks[NTOK];
    for (int i = 0; i < NTOK; i++)
        toks[i] = i % 600 + (i >= 500 ? 70000 : 0);

    /* uint32 round trip (ids > 65535), and uint16 refuses them */
    snprintf(p, sizeof p, "%s/big_train.bin", dir);
    CHECK(td_shard_write(p, toks, NTOK, 4) == TD_OK, "%s", td_error_message());
    td_shard sh;
    REQUIRE(td_shard_open(p, &sh) == TD_OK, "%s", td_error_message());
    CHECK(sh.token_bytes == 4 && sh.count == NTOK, "u32 header");
    int same = 1;
    for (int i = 0; i < NTOK; i++)
        same &= td_shard_token(&sh, (size_t)i) == toks[i];
    CHECK(same, "u32 tokens round-trip");
    td_shard_close(&sh);
    CHECK(td_shard_write(p, toks, NTOK, 2) == TD_ERR_INVALID, "u16 must refuse id 70000");
    td_error_clear();

    /* loader over two uint16 shards */
    for (int i = 0; i < NTOK; i++)
        toks[i] = i % 997;
    snprintf(p, sizeof p, "%s/a_train.bin", dir);
    REQUIRE(td_shard_write(p, toks, 500, 2) == TD_OK, "write");
    snprintf(p, sizeof p, "%s/b_train.bin", dir);
    REQUIRE(td_shard_write(p, toks + 500, 500, 2) == TD_OK, "write");
    snprintf(p, sizeof p, "%s/big_train.bin", dir);
    unlink(p);
    td_loader *l1, *l2, *l3;
    REQUIRE(td_loader_open(dir, "train", B, T, 7, 1, &l1) == TD_OK, "%s", td_error_message());
    REQUIRE(td_loader_open(dir, "train", B, T, 7, 1, &l2) == TD_OK, "%s", td_error_message());
    REQUIRE(td_loader_open(dir, "train", B, T, 8, 1, &l3) == TD_OK, "%s", td_error_message());
    size_t nwin = td_loader_num_windows(l1);
    CHECK(nwin == 2 * ((500 - 1) / T), "windows: %zu", nwin);
    int32_t x1[B * T], y1[B * T], x2[B * T], y2[B * T], x3[B * T], y3[B * T];
    int same_seed = 1, diff_seed = 0, shifted = 1;
    for (int it = 0; it < 40; it++) { /* > one epoch (98 windows / 3 per batch) */
        td_loader_next(l1, x1, y1);
        td_loader_next(l2, x2, y2);
        td_loader_next(l3, x3, y3);
        same_seed &= !memcmp(x1, x2, sizeof x1) && !memcmp(y1, y2, sizeof y1);
        diff_seed |= memcmp(x1, x3, sizeof x1) != 0;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t + 1 < T; t++)
                shifted &= y1[b * T + t] == x1[b * T + t + 1];
            /* windows are contiguous runs of the stream */
            for (int t = 0; t + 1 < T; t++)
                shifted &= x1[b * T + t + 1] == (x1[b * T + t] + 1) % 997;
        }
    }
    CHECK(same_seed, "same seed gives the same batches");
    CHECK(diff_seed, "another seed gives another order");
    CHECK(shifted, "targets are the tokens shifted by one, windows contiguous");

    /* resume: save the position, draw, restore, draw again */
    int64_t e, c;
    td_loader_get_pos(l1, &e, &c);
    CHECK(e == 1, "40 batches of 3 cross into epoch 1 (epoch %lld)", (long long)e);
    td_loader_next(l1, x1, y1);
    td_loader_set_pos(l2, e, c);
    td_loader_next(l2, x2, y2);
    CHECK(!memcmp(x1, x2, sizeof x1), "set_pos resumes the exact sequence");

    /* one epoch visits each window once: count first tokens */
    td_loader_set_pos(l1, 0, 0);
    static int seen[1000];
    int windows = (int)nwin / B * B, dup = 0;
    for (int it = 0; it < windows / B; it++) {
        td_loader_next(l1, x1, y1);
        /* first tokens of all windows are distinct values (0, 10, ..., 980) */
        for (int b = 0; b < B; b++)
            dup |= seen[x1[b * T]]++ > 0;
    }
    CHECK(!dup, "no window repeats within an epoch");
    td_loader_free(&l1);
    td_loader_free(&l2);
    td_loader_free(&l3);
    td_fs_remove_tree(dir);
    return test_done("test_data_loader");
}
