/* libFuzzer target for the tokenizer (data/bpe.c, data/pretok.c). Built and run by
 * scripts/fuzz.sh. For every input:
 *   - the fixture tokenizer (tests/reference/fixtures/tokenizer/tokenizer.json, relative to
 *     the repository root, or $TD_FUZZ_TOKENIZER) encodes the bytes; decoding the ids must
 *     give the bytes back exactly, and a second encode (served from the encode cache) must
 *     give the same ids;
 *   - td_pretok_split's pieces must be non-empty, in order, and concatenate to the input;
 *   - when the first byte is 0, the rest is parsed as a tokenizer.json by td_bpe_from_json
 *     (errors are fine); a tokenizer that loads encodes and decodes a fixed string.
 * A violated property aborts with __builtin_trap() after printing what went wrong. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "data/bpe.h"
#include "data/pretok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static td_bpe *g_tok;

static td_bpe *fixture(void) {
    if (g_tok) return g_tok;
    const char *path = getenv("TD_FUZZ_TOKENIZER");
    if (!path || !*path) path = "tests/reference/fixtures/tokenizer/tokenizer.json";
    if (td_bpe_load(path, &g_tok) != TD_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, td_error_message());
        abort();
    }
    return g_tok;
}

static void dump(const char *what, const uint8_t *p, size_t n) {
    fprintf(stderr, "%s (%zu bytes):", what, n);
    for (size_t i = 0; i < n && i < 256; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, n > 256 ? " ...\n" : "\n");
}

/* --- pre-tokenizer ------------------------------------------------------------------------- */

typedef struct {
    const char *base;
    size_t len, at;
    int bad;
} split_ctx;

static void on_piece(const char *p, size_t n, void *vctx) {
    split_ctx *c = vctx;
    if (c->bad) return;
    if (n == 0) {
        fprintf(stderr, "fuzz_tokenizer: empty pre-token at offset %zu\n", c->at);
        c->bad = 1;
    } else if (p != c->base + c->at) {
        fprintf(stderr, "fuzz_tokenizer: pre-token at offset %td, expected %zu\n", p - c->base,
                c->at);
        c->bad = 1;
    } else if (n > c->len - c->at) {
        fprintf(stderr, "fuzz_tokenizer: pre-token at %zu of %zu bytes runs past the end (%zu)\n",
                c->at, n, c->len);
        c->bad = 1;
    } else {
        c->at += n;
    }
}

static void check_pretok(const uint8_t *data, size_t size) {
    split_ctx c = {(const char *)data, size, 0, 0};
    td_pretok_split((const char *)data, size, on_piece, &c);
    if (!c.bad && c.at != size) {
        fprintf(stderr, "fuzz_tokenizer: pre-tokens cover %zu of %zu bytes\n", c.at, size);
        c.bad = 1;
    }
    if (c.bad) {
        dump("input", data, size);
        __builtin_trap();
    }
}

/* --- round trip through the fixture tokenizer ------------------------------------------------ */

static void check_roundtrip(const uint8_t *data, size_t size) {
    td_bpe *t = fixture();
    int32_t *ids = NULL, *ids2 = NULL;
    size_t cap = 0, cap2 = 0, dcap = 0;
    char *dec = NULL;
    size_t n = td_bpe_encode(t, (const char *)data, size, &ids, &cap);
    size_t dn = td_bpe_decode(t, ids, n, &dec, &dcap);
    if (dn != size || memcmp(dec, data, size) != 0) {
        fprintf(stderr, "fuzz_tokenizer: decode(encode(x)) != x\n");
        dump("input", data, size);
        dump("decoded", (const uint8_t *)dec, dn);
        fprintf(stderr, "ids (%zu):", n);
        for (size_t i = 0; i < n && i < 128; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
        __builtin_trap();
    }
    /* the same text again: every piece now comes from the encode cache */
    size_t n2 = td_bpe_encode(t, (const char *)data, size, &ids2, &cap2);
    if (n2 != n || (n && memcmp(ids, ids2, n * sizeof *ids) != 0)) {
        fprintf(stderr, "fuzz_tokenizer: encoding the same text twice gave different ids\n");
        dump("input", data, size);
        __builtin_trap();
    }
    free(ids);
    free(ids2);
    free(dec);
}

/* --- arbitrary tokenizer.json ---------------------------------------------------------------- */

static void check_from_json(const uint8_t *data, size_t size) {
    td_bpe *t = NULL;
    if (td_bpe_from_json((const char *)data, size, "fuzz", &t) != TD_OK) {
        if (t) {
            fprintf(stderr, "fuzz_tokenizer: td_bpe_from_json failed but set *out\n");
            __builtin_trap();
        }
        return;
    }
    static const char text[] =
        "Hello, world! It's 2024 <|endoftext|> \xe4\xbd\xa0\xe5\xa5\xbd \xff";
    int32_t *ids = NULL;
    size_t cap = 0, dcap = 0;
    char *dec = NULL;
    size_t n = td_bpe_encode(t, text, sizeof text - 1, &ids, &cap);
    int vs = td_bpe_vocab_size(t);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vs) {
            fprintf(stderr, "fuzz_tokenizer: loaded tokenizer produced id %d (vocab %d)\n", ids[i],
                    vs);
            __builtin_trap();
        }
    /* no equality check: an arbitrary file may map ids to other bytes than its merges say */
    (void)td_bpe_decode(t, ids, n, &dec, &dcap);
    free(ids);
    free(dec);
    td_bpe_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_pretok(data, size);
    check_roundtrip(data, size);
    if (size >= 1 && data[0] == 0) check_from_json(data + 1, size - 1);
    return 0;
}
