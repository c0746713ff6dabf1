/* The prep pipeline on a corpus with planted problems; the manifest's counts must equal
 * what was planted:
 *   200 distinct base documents (random words from a 3000-word vocabulary, ~100 words each)
 *   30 exact duplicates of base documents (10 verbatim, 10 with white space changed,
 *      10 upper-cased: exact dedup compares white-space-collapsed, ASCII-lower-cased text)
 *   30 near duplicates (2 of ~100 words replaced: shingle Jaccard ~0.93, far above the 0.8
 *      threshold; the chance that LSH misses one is (1 - 0.93^8)^16 < 1e-6)
 *   20 similar-but-distinct documents (half the words replaced: Jaccard ~0.3, far below)
 *   junk: 10 too short, 10 symbol-heavy, 10 without letters, 10 with repeated lines,
 *      10 with a repeated word 3-gram, 10 with invalid UTF-8
 *   a JSON Lines file (10 documents + 1 malformed line + 1 without the field), a gzip file
 *   (10 documents), a binary file (skipped), and a link to a file already read (skipped).
 * Near-duplicate detection is probabilistic; the margins above make a wrong count a
 * failure of the implementation, not of chance (see data/dedup.h for the error model). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/rng.h"
#include "data/prep.h"
#include "tests/test.h"

enum { NBASE = 200, NWORDS = 100, VOCAB = 3000 };

static char g_vocab[VOCAB][12];
static int g_doc[NBASE][NWORDS];
static td_rng g_rng;

static void make_vocab(void) {
    for (int i = 0; i < VOCAB; i++) {
        int len = 3 + (int)td_rng_below(&g_rng, 7);
        for (int k = 0; k < len; k++)
            g_vocab[i][k] = (char)('a' + td_rng_below(&g_rng, 26));
        g_vocab[i][len] = 0;
    }
}

/* Writes document words w[0..n) as text with a line break every 12 words. */
static void put_doc(FILE *f, const int *w, int n, int upper, int extra_space) {
    for (int i = 0; i < n; i++) {
        const char *s = g_vocab[w[i]];
        for (const char *p = s; *p; p++)
            fputc(upper ? *p - 32 : *p, f);
        fputs(i + 1 == n ? "\n" : (i % 12 == 11 ? "\n" : (extra_space ? "   " : " ")), f);
    }
}

static FILE *open_out(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    REQUIRE(f, "create %s", p);
    return f;
}

static long stat_of(const cJSON *m, const char *key) {
    const cJSON *s = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "stats"), key);
    return cJSON_IsNumber(s) ? (long)s->valuedouble : -1;
}

int main(void) {
    char root[128], in[160], out[160];
    snprintf(root, sizeof root, "/tmp/td_test_planted.%d", (int)getpid());
    snprintf(in, sizeof in, "%s/in", root);
    snprintf(out, sizeof out, "%s/out", root);
    REQUIRE(td_fs_mkdirs(in) == TD_OK, "mkdir");
    td_rng_seed(&g_rng, 2024);
    make_vocab();
    for (int d = 0; d < NBASE; d++)
        for (int i = 0; i < NWORDS; i++)
            g_doc[d][i] = (int)td_rng_below(&g_rng, VOCAB);

    FILE *f = open_out(in, "a_base.txt");
    for (int d = 0; d < NBASE; d++) {
        put_doc(f, g_doc[d], NWORDS, 0, 0);
        fputs("%\n", f);
    }
    fclose(f);
    f = open_out(in, "b_exact.txt");
    for (int k = 0; k < 30; k++) {
        put_doc(f, g_doc[k], NWORDS, k >= 20, k >= 10 && k < 20);
        fputs("%\n", f);
    }
    fclose(f);
    f = open_out(in, "c_near.txt");
    for (int k = 0; k < 30; k++) {
        int w[NWORDS];
        memcpy(w, g_doc[50 + k], sizeof w);
        w[20] = (w[20] + 1) % VOCAB;
        w[70] = (w[70] + 7) % VOCAB;
        put_doc(f, w, NWORDS, 0, 0);
        fputs("%\n", f);
    }
    fclose(f);
    f = open_out(in, "d_similar.txt");
    for (int k = 0; k < 20; k++) {
        int w[NWORDS];
        memcpy(w, g_doc[100 + k], sizeof w);
        for (int i = 0; i < NWORDS; i += 2)
            w[i] = (int)td_rng_below(&g_rng, VOCAB);
        put_doc(f, w, NWORDS, 0, 0);
        fputs("%\n", f);
    }
    fclose(f);
    f = open_out(in, "e_junk.txt");
    for (int k = 0; k < 10; k++)
        fprintf(f, "hi %d\n%%\n", k); /* too short */
    for (int k = 0; k < 10; k++) {    /* words glued by symbols: letters ~0.7, symbols ~0.3 */
        for (int i = 0; i < 30; i++)
            fprintf(f, "%s |= ", g_vocab[200 + k * 30 + i]);
        fprintf(f, "\n%%\n");
    }
    for (int k = 0; k < 10; k++) /* no letters */
        fprintf(f, "%d 3.14159 2.71828 1.41421 %d 1.73205 0.57721 %d\n%%\n", k, k * 7, k * 13);
    for (int k = 0; k < 10; k++) { /* repeated lines */
        for (int r = 0; r < 6; r++)
            fprintf(f, "buy cheap %s now\n", g_vocab[k]);
        fprintf(f, "%%\n");
    }
    for (int k = 0; k < 10; k++) { /* one word 3-gram over and over, on one line */
        for (int r = 0; r < 15; r++)
            fprintf(f, "click here %s ", g_vocab[100 + k]);
        fprintf(f, "\n%%\n");
    }
    for (int k = 0; k < 10; k++) { /* invalid UTF-8 */
        put_doc(f, g_doc[150 + k], 20, 0, 0);
        fprintf(f, "bad \xff\xfe bytes %d\n%%\n", k);
    }
    fclose(f);
    f = open_out(in, "f_docs.jsonl");
    for (int k = 0; k < 10; k++) {
        int w[NWORDS];
        for (int i = 0; i < NWORDS; i++)
            w[i] = (int)td_rng_below(&g_rng, VOCAB);
        fputs("{\"id\": 1, \"text\": \"", f);
        for (int i = 0; i < NWORDS; i++)
            fprintf(f, "%s%s", g_vocab[w[i]], i + 1 < NWORDS ? " " : "");
        fputs("\"}\n", f);
    }
    fputs("{\"text\": \"broken\n", f); /* malformed */
    fputs("{\"content\": \"no text field here at all\"}\n", f);
    fclose(f);
    char gzp[512];
    snprintf(gzp, sizeof gzp, "%s/g_docs.txt.gz", in);
    gzFile g = gzopen(gzp, "wb");
    for (int k = 0; k < 10; k++) {
        for (int i = 0; i < NWORDS; i++)
            gzprintf(g, "%s ", g_vocab[td_rng_below(&g_rng, VOCAB)]);
        gzprintf(g, "\n%%\n");
    }
    gzclose(g);
    f = open_out(in, "h_binary.bin");
    for (int i = 0; i < 1000; i++)
        fputc(i % 7 == 0 ? 0 : 'a' + i % 26, f);
    fclose(f);
    char lp[512], tp[512];
    snprintf(lp, sizeof lp, "%s/i_link.txt", in);
    snprintf(tp, sizeof tp, "%s/a_base.txt", in);
    REQUIRE(symlink(tp, lp) == 0, "symlink");

    td_prep_opts o;
    td_prep_opts_default(&o);
    const char *inputs[1] = {in};
    o.inputs = inputs;
    o.n_inputs = 1;
    o.out_dir = out;
    o.delimiter = "%";
    o.vocab_size = 512;
    o.val_fraction = 0.1;
    o.quiet = 1;
    td_comm *self = NULL;
    td_status s = td_comm_self_new(&self);
    if (s == TD_OK) s = td_prep_run(&o, self);
    td_comm_free(&self);
    REQUIRE(s == TD_OK, "prep failed: %s", td_error_message());
    char mp[512];
    snprintf(mp, sizeof mp, "%s/manifest.json", out);
    cJSON *m;
    REQUIRE(td_json_load_file(mp, &m) == TD_OK, "%s", td_error_message());
    struct {
        const char *key;
        long want;
    } expect[] = {{"files", 8}, /* 7 text/jsonl/gz files + the binary one; the link not read */
                  {"files_binary_skipped", 1},
                  {"files_linked_skipped", 1},
                  {"bad_json_lines", 2},
                  {"documents_in", NBASE + 30 + 30 + 20 + 60 + 10 + 10},
                  {"dropped_exact_duplicate", 30},
                  {"dropped_near_duplicate", 30},
                  {"dropped_too_short", 10},
                  {"dropped_too_many_symbols", 10},
                  {"dropped_few_letters", 10},
                  {"dropped_repeated_lines", 10},
                  {"dropped_repeated_ngrams", 10},
                  {"dropped_invalid_utf8", 10},
                  {"documents_out", NBASE + 20 + 10 + 10}};
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        long got = stat_of(m, expect[i].key);
        printf("  %-28s planted %4ld  reported %4ld\n", expect[i].key, expect[i].want, got);
        CHECK(got == expect[i].want, "%s: reported %ld, planted %ld", expect[i].key, got,
              expect[i].want);
    }
    long tr = stat_of(m, "tokens_train"), va = stat_of(m, "tokens_val");
    CHECK(tr > 0 && va > 0, "both splits have tokens (%ld train, %ld val)", tr, va);
    cJSON_Delete(m);
    td_fs_remove_tree(root);
    return test_done("test_prep_planted");
}
