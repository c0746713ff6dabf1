/* Byte-level BPE against Hugging Face `tokenizers`, plus round-trip properties.
 *
 * 1. Reference: tests/reference/fixtures/tokenizer/tokenizer.json (trained by tandem on the
 *    Debian fortune files, vocab 2048) is loaded with td_bpe_load, and each text of cases.json
 *    (made by make_tokenizer_fixture.py with tokenizers.Tokenizer.encode(text,
 *    add_special_tokens=False)) must encode to exactly the same ids: no tolerance. A mismatch
 *    prints the text and both id lists.
 * 2. decode(encode(x)) == x, byte for byte, for 2000 random valid UTF-8 strings (ASCII,
 *    contractions, Latin-1, CJK, emoji with ZWJ/flags/variation selectors, every Unicode
 *    White_Space character, combining marks, special tokens whole and cut) and for 2000
 *    random byte strings (any bytes, NUL and invalid UTF-8 included). Fixed seeds.
 * 3. td_bpe_to_json of the loaded fixture reproduces the file byte for byte, and the JSON
 *    re-loads to a tokenizer with identical encodings of every case and random string.
 * 4. td_bpe_train on a small in-memory corpus: the requested vocabulary size is reached, the
 *    default specials sit at ids 256..259, two trainings (one fed the documents in reverse
 *    order) give identical JSON, a vocabulary below bytes + specials is refused, and the
 *    trained tokenizer compresses its own corpus and round-trips it.
 * Runs from the repository root (ctest's working directory). */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/rng.h"
#include "data/bpe.h"
#include "tests/test.h"

#define FIXTURE_DIR "tests/reference/fixtures/tokenizer/"

static void print_text(const char *s, size_t n) {
    fputc('"', stderr);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == '"')
            fprintf(stderr, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputc('"', stderr);
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* ---------------------------------------------------------------------------------------- */
/* random strings */

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static const uint32_t k_spaces[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x20,   0x20,
                                    0x85,   0xA0,   0x1680, 0x2000, 0x2003, 0x2009, 0x200A, 0x2028,
                                    0x2029, 0x202F, 0x205F, 0x3000, 0x200B, 0xFEFF, 0x180E};
static const char *const k_pieces[] = {"<|endoftext|>",
                                       "<|im_start|>",
                                       "<|im_end|>",
                                       "<|pad|>",
                                       "<|endoftext",
                                       "|>",
                                       "<|",
                                       "'s",
                                       "'t",
                                       "'re",
                                       "'ve",
                                       "'m",
                                       "'ll",
                                       "'d",
                                       "'",
                                       "\r\n",
                                       "  ",
                                       "\t\t",
                                       "\xE2\x80\x8D",
                                       "\xEF\xB8\x8F",
                                       "\xF0\x9F\x87\xBA\xF0\x9F\x87\xB8",
                                       "don't",
                                       "I'm",
                                       " the",
                                       "\xE4\xB8\xAD"};

/* A random valid UTF-8 string of up to max - 8 bytes into buf; returns its length. */
static size_t random_utf8(td_rng *r, char *buf, size_t max) {
    size_t n = 0, target = td_rng_below(r, max - 8);
    while (n < target) {
        uint32_t cp;
        switch (td_rng_below(r, 12)) {
        case 0:
        case 1:
            cp = 0x20 + (uint32_t)td_rng_below(r, 0x5F);
            break; /* printable ASCII */
        case 2:
            cp = 'a' + (uint32_t)td_rng_below(r, 26);
            break;
        case 3:
            cp = 0xA0 + (uint32_t)td_rng_below(r, 0x60);
            break; /* Latin-1 */
        case 4:
            cp = 0x4E00 + (uint32_t)td_rng_below(r, 0x5200);
            break; /* CJK */
        case 5:
            cp = 0x1F300 + (uint32_t)td_rng_below(r, 0x800);
            break; /* emoji blocks */
        case 6:
            cp = k_spaces[td_rng_below(r, sizeof k_spaces / sizeof *k_spaces)];
            break;
        case 7:
            cp = 0x300 + (uint32_t)td_rng_below(r, 0x70);
            break; /* combining marks */
        case 8:
            cp = '0' + (uint32_t)td_rng_below(r, 10);
            break;
        case 9: /* any scalar value outside the surrogates */
            do
                cp = 1 + (uint32_t)td_rng_below(r, 0x10FFFF);
            while (cp >= 0xD800 && cp <= 0xDFFF);
            break;
        default: {
            const char *p = k_pieces[td_rng_below(r, sizeof k_pieces / sizeof *k_pieces)];
            size_t l = strlen(p);
            if (n + l > max - 1) return n;
            memcpy(buf + n, p, l);
            n += l;
            continue;
        }
        }
        n += put_utf8(buf + n, cp);
    }
    return n;
}

static size_t random_bytes(td_rng *r, char *buf, size_t max) {
    size_t n = td_rng_below(r, max);
    for (size_t i = 0; i < n; i++) {
        /* bias toward interesting bytes: ASCII space/quote/letters, UTF-8 lead and
         * continuation bytes, and the bytes of special tokens */
        uint64_t k = td_rng_below(r, 8);
        if (k == 0)
            buf[i] = " '\n<|>s"[td_rng_below(r, 7)];
        else if (k == 1)
            buf[i] = (char)(0x80 + td_rng_below(r, 0x40));
        else if (k == 2)
            buf[i] = (char)(0xC0 + td_rng_below(r, 0x40));
        else
            buf[i] = (char)td_rng_below(r, 256);
    }
    return n;
}

/* decode(encode(x)) == x; on failure prints x. */
static int round_trips(td_bpe *t, const char *x, size_t n, int32_t **ids, size_t *cap, char **out,
                       size_t *ocap) {
    size_t k = td_bpe_encode(t, x, n, ids, cap);
    size_t m = td_bpe_decode(t, *ids, k, out, ocap);
    int ok = m == n && !memcmp(*out, x, n);
    if (!ok) {
        fprintf(stderr, "round trip failed for ");
        print_text(x, n);
        fprintf(stderr, "\n");
        print_ids("ids", *ids, k);
    }
    return ok;
}

/* Same encodings from two tokenizers. */
static int same_encoding(td_bpe *a, td_bpe *b, const char *x, size_t n) {
    int32_t *ia = NULL, *ib = NULL;
    size_t ca = 0, cb = 0;
    size_t na = td_bpe_encode(a, x, n, &ia, &ca), nb = td_bpe_encode(b, x, n, &ib, &cb);
    int ok = na == nb && (na == 0 || !memcmp(ia, ib, na * sizeof *ia));
    if (!ok) {
        fprintf(stderr, "JSON round trip changes the encoding of ");
        print_text(x, n);
        fprintf(stderr, "\n");
        print_ids("before", ia, na);
        print_ids("after", ib, nb);
    }
    free(ia);
    free(ib);
    return ok;
}

/* ---------------------------------------------------------------------------------------- */

static void test_reference(td_bpe *t, const cJSON *cases) {
    int n = 0, matched = 0;
    int32_t *ids = NULL;
    size_t cap = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "ids");
        REQUIRE(cJSON_IsString(text) && cJSON_IsArray(want), "malformed case %d", n);
        size_t len = strlen(text->valuestring);
        size_t k = td_bpe_encode(t, text->valuestring, len, &ids, &cap);
        int nw = cJSON_GetArraySize(want), ok = (size_t)nw == k;
        for (int i = 0; ok && i < nw; i++)
            ok = ids[i] == (int32_t)cJSON_GetArrayItem(want, i)->valuedouble;
        n++;
        if (ok) {
            matched++;
            continue;
        }
        fprintf(stderr, "MISMATCH case %d: ", n - 1);
        print_text(text->valuestring, len);
        fprintf(stderr, "\n");
        print_ids("tandem    ", ids, k);
        int32_t *w = malloc(sizeof *w * (size_t)(nw ? nw : 1));
        for (int i = 0; i < nw; i++)
            w[i] = (int32_t)cJSON_GetArrayItem(want, i)->valuedouble;
        print_ids("tokenizers", w, (size_t)nw);
        free(w);
    }
    free(ids);
    printf("reference: %d/%d cases encode exactly as tokenizers does\n", matched, n);
    CHECK(n >= 60, "only %d cases in the fixture", n);
    CHECK(matched == n, "%d of %d cases differ from tokenizers", n - matched, n);
}

static void test_round_trips(td_bpe *t, td_bpe *reloaded, const cJSON *cases) {
    td_rng r;
    td_rng_seed(&r, 1234);
    char buf[1024];
    int32_t *ids = NULL;
    size_t cap = 0, ocap = 0;
    char *out = NULL;
    int ok_utf8 = 0, ok_bytes = 0, same = 0, nsame = 0;
    for (int i = 0; i < 2000; i++) {
        size_t n = random_utf8(&r, buf, sizeof buf);
        ok_utf8 += round_trips(t, buf, n, &ids, &cap, &out, &ocap);
        same += same_encoding(t, reloaded, buf, n);
        nsame++;
    }
    for (int i = 0; i < 2000; i++) {
        size_t n = random_bytes(&r, buf, 512);
        ok_bytes += round_trips(t, buf, n, &ids, &cap, &out, &ocap);
        same += same_encoding(t, reloaded, buf, n);
        nsame++;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *s = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        same += same_encoding(t, reloaded, s, strlen(s));
        nsame++;
    }
    printf("round trip: %d/2000 random UTF-8 strings, %d/2000 random byte strings\n", ok_utf8,
           ok_bytes);
    printf("JSON round trip: %d/%d strings encode identically after td_bpe_to_json + reload\n",
           same, nsame);
    CHECK(ok_utf8 == 2000, "%d UTF-8 strings did not round-trip", 2000 - ok_utf8);
    CHECK(ok_bytes == 2000, "%d byte strings did not round-trip", 2000 - ok_bytes);
    CHECK(same == nsame, "%d strings encode differently after the JSON round trip", nsame - same);
    free(ids);
    free(out);
}

static const char *const k_corpus[] = {
    "the cat sat on the mat. the cat's hat is on the mat!",
    "I'm here, you're there, they'll come; don't worry, we've seen it.",
    "\xE5\xBA\x8A\xE5\x89\x8D\xE6\x98\x8E\xE6\x9C\x88\xE5\x85\x89\xEF\xBC\x8C "
    "\xE5\xBA\x8A\xE5\x89\x8D\xE6\x98\x8E\xE6\x9C\x88",
    "int main(void) {\n\treturn 0;\n}\n<|endoftext|>int x = 1;\n",
    "  spaces   and\ttabs\r\n\r\nand lines   ",
    "numbers 12345 67890 12345 and more numbers 2024 2025 2026",
    "the the the the then there these those thesis theses",
};
enum { NDOC = sizeof k_corpus / sizeof *k_corpus };

static char *train_json(int reverse, int vocab, int *got_vocab, td_bpe **keep) {
    td_bpe *sp = NULL;
    REQUIRE(td_bpe_new_bytes(NULL, &sp) == TD_OK, "%s", td_error_message());
    td_bpe_counts c;
    td_bpe_counts_init(&c);
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < NDOC; i++) {
            const char *d = k_corpus[reverse ? NDOC - 1 - i : i];
            td_bpe_counts_add_text(&c, sp, d, strlen(d));
        }
    td_bpe_train_opts o = {.vocab_size = vocab, .min_frequency = 2};
    td_bpe *t = NULL;
    REQUIRE(td_bpe_train(&c, &o, &t) == TD_OK, "%s", td_error_message());
    *got_vocab = td_bpe_vocab_size(t);
    char *j = td_bpe_to_json(t);
    if (keep)
        *keep = t;
    else
        td_bpe_free(&t);
    td_bpe_counts_deinit(&c);
    td_bpe_free(&sp);
    return j;
}

static void test_train(void) {
    int v1, v2;
    td_bpe *t = NULL;
    char *j1 = train_json(0, 300, &v1, &t);
    char *j2 = train_json(1, 300, &v2, NULL);
    CHECK(v1 == 300, "vocab %d, want 300", v1);
    CHECK(v1 == v2 && !strcmp(j1, j2), "training is not deterministic (document order)");
    CHECK(td_bpe_special_id(t, "<|endoftext|>") == 256, "endoftext at %d",
          td_bpe_special_id(t, "<|endoftext|>"));
    CHECK(td_bpe_special_id(t, "<|im_start|>") == 257, "im_start");
    CHECK(td_bpe_special_id(t, "<|im_end|>") == 258, "im_end");
    CHECK(td_bpe_special_id(t, "<|pad|>") == 259, "pad");
    /* the corpus compresses and round-trips; a special in text is one id */
    int32_t *ids = NULL;
    size_t cap = 0, ocap = 0, bytes = 0, toks = 0;
    char *out = NULL;
    for (int i = 0; i < NDOC; i++) {
        size_t n = strlen(k_corpus[i]);
        CHECK(round_trips(t, k_corpus[i], n, &ids, &cap, &out, &ocap), "corpus doc %d", i);
        toks += td_bpe_encode(t, k_corpus[i], n, &ids, &cap);
        bytes += n;
    }
    CHECK(toks * 3 < bytes * 2, "trained tokenizer barely compresses: %zu tokens for %zu bytes",
          toks, bytes);
    size_t k = td_bpe_encode(t, "a<|endoftext|>b", 15, &ids, &cap);
    CHECK(k == 3 && ids[1] == 256, "special in text: %zu ids", k);
    /* tokenizer.json re-loads and writes back the same text */
    td_bpe *back = NULL;
    CHECK(td_bpe_from_json(j1, strlen(j1), "trained", &back) == TD_OK, "%s", td_error_message());
    if (back) {
        char *j3 = td_bpe_to_json(back);
        CHECK(!strcmp(j1, j3), "trained tokenizer.json changes through a reload");
        for (int i = 0; i < NDOC; i++)
            CHECK(same_encoding(t, back, k_corpus[i], strlen(k_corpus[i])), "doc %d", i);
        free(j3);
        td_bpe_free(&back);
    }
    /* a small corpus runs out of pairs seen twice: training stops below the target */
    int v3;
    char *j4 = train_json(0, 100000, &v3, NULL);
    CHECK(v3 > 300 && v3 < 100000, "min_frequency stop: vocab %d", v3);
    /* too small a vocabulary is refused */
    td_bpe_counts c;
    td_bpe_counts_init(&c);
    td_bpe_counts_add(&c, "ab", 2, 5);
    td_bpe_train_opts o = {.vocab_size = 259};
    td_bpe *bad = NULL;
    CHECK(td_bpe_train(&c, &o, &bad) == TD_ERR_INVALID && !bad, "vocab 259 must be refused");
    td_error_clear();
    td_bpe_counts_deinit(&c);
    printf("train: vocab %d reached, specials at 256..259, deterministic; %zu bytes -> %zu "
           "tokens; min_frequency stop at %d\n",
           v1, bytes, toks, v3);
    free(ids);
    free(out);
    free(j1);
    free(j2);
    free(j4);
    td_bpe_free(&t);
}

int main(void) {
    td_bpe *t = NULL;
    REQUIRE(td_bpe_load(FIXTURE_DIR "tokenizer.json", &t) == TD_OK, "%s (run from the repo root)",
            td_error_message());
    CHECK(td_bpe_vocab_size(t) == 2048, "fixture vocab %d", td_bpe_vocab_size(t));
    char *text;
    size_t len;
    REQUIRE(td_fs_read_file(FIXTURE_DIR "cases.json", &text, &len) == TD_OK, "%s",
            td_error_message());
    cJSON *cases = cJSON_ParseWithLength(text, len);
    REQUIRE(cJSON_IsArray(cases), "cases.json is not a JSON array");
    free(text);

    test_reference(t, cases);

    /* JSON round trip of the fixture */
    char *file;
    REQUIRE(td_fs_read_file(FIXTURE_DIR "tokenizer.json", &file, &len) == TD_OK, "read");
    char *j = td_bpe_to_json(t);
    CHECK(strlen(j) == len && !memcmp(j, file, len),
          "td_bpe_to_json of the loaded fixture differs from the file (%zu vs %zu bytes)",
          strlen(j), len);
    /* tokenizers ignores added_tokens[].id and numbers an added token that model.vocab
     * lacks after the vocab (2044.. here), so the specials must be listed there too */
    cJSON *pj = cJSON_Parse(j);
    const cJSON *pv =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(pj, "model"), "vocab");
    const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"};
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(pv, specials[i]);
        CHECK(cJSON_IsNumber(e) && e->valuedouble == 256 + i,
              "td_bpe_to_json must list %s in model.vocab with id %d, or tokenizers renumbers it",
              specials[i], 256 + i);
    }
    cJSON_Delete(pj);
    td_bpe *reloaded = NULL;
    REQUIRE(td_bpe_from_json(j, strlen(j), "to_json", &reloaded) == TD_OK, "%s",
            td_error_message());
    free(j);
    free(file);

    test_round_trips(t, reloaded, cases);
    test_train();

    cJSON_Delete(cases);
    td_bpe_free(&t);
    td_bpe_free(&reloaded);
    return test_done("test_tokenizer");
}
