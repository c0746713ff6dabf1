/* Exact and MinHash/LSH near deduplication (see dedup.h). */
#include "data/dedup.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/grow.h"
#include "common/hashmap.h"

/* Normalised form for hashing: white-space runs -> one space, trimmed, ASCII lower-case.
 * Returns the length written to out (out holds len + 1 bytes). */
static size_t normalise(const char *s, size_t len, char *out) {
    size_t k = 0;
    int pending_space = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            pending_space = k > 0;
            continue;
        }
        if (pending_space) out[k++] = ' ';
        pending_space = 0;
        out[k++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    out[k] = 0;
    return k;
}

/* Multipliers and offsets of the K hash functions h_i(x) = (a_i x + b_i) >> 32. */
static uint64_t g_a[TD_MINHASH_K], g_b[TD_MINHASH_K];

static void init_perm(void) {
    static int ready;
    if (ready) return;
    uint64_t x = 0x5eed5eed12345678ULL;
    for (int i = 0; i < TD_MINHASH_K; i++) {
        g_a[i] = td_hash_u64(x += 0x9e3779b97f4a7c15ULL) | 1;
        g_b[i] = td_hash_u64(x += 0x9e3779b97f4a7c15ULL);
    }
    ready = 1;
}

void td_dedup_signature(const char *text, size_t len, td_doc_sig *sig) {
    init_perm();
    char *norm = malloc(len + 1);
    size_t n = normalise(text, len, norm);
    sig->exact[0] = td_hash_bytes(norm, n, 1);
    sig->exact[1] = td_hash_bytes(norm, n, 2);
    for (int i = 0; i < TD_MINHASH_K; i++)
        sig->minhash[i] = UINT32_MAX;
    /* character 5-grams: start offsets of characters */
    size_t *starts = malloc((n + 1) * sizeof *starts), nc = 0;
    for (size_t i = 0; i < n;) {
        starts[nc++] = i;
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)norm + i, (utf8proc_ssize_t)(n - i), &cp);
        i += k > 0 ? (size_t)k : 1;
    }
    starts[nc] = n;
    size_t shingles = nc >= 5 ? nc - 4 : (nc ? 1 : 0);
    for (size_t s = 0; s < shingles; s++) {
        size_t a = starts[s], b = starts[nc >= 5 ? s + 5 : nc];
        uint64_t h = td_hash_bytes(norm + a, b - a, 3);
        for (int i = 0; i < TD_MINHASH_K; i++) {
            uint32_t v = (uint32_t)((g_a[i] * h + g_b[i]) >> 32);
            if (v < sig->minhash[i]) sig->minhash[i] = v;
        }
    }
    free(starts);
    free(norm);
}

double td_dedup_jaccard(const td_doc_sig *a, const td_doc_sig *b) {
    int eq = 0;
    for (int i = 0; i < TD_MINHASH_K; i++)
        eq += a->minhash[i] == b->minhash[i];
    return (double)eq / TD_MINHASH_K;
}

void td_dedup_decide(const td_doc_sig *sigs, size_t n, int exact, double near_threshold,
                     uint8_t *verdict) {
    td_map64 exact_seen, band_head;
    td_map64_init(&exact_seen);
    td_map64_init(&band_head);
    /* bucket chains: next[j] links kept documents sharing a band bucket */
    size_t cap = 0, used = 0;
    struct link {
        uint32_t doc;
        int64_t next;
    } *links = NULL;
    for (size_t d = 0; d < n; d++) {
        const td_doc_sig *s = &sigs[d];
        verdict[d] = TD_DEDUP_KEEP;
        if (exact) { /* keyed by one 64-bit half, confirmed by the other */
            uint64_t key = s->exact[0] | 1, check = s->exact[1] | 1;
            uint64_t *v = td_map64_get(&exact_seen, key, 1);
            if (*v == check) {
                verdict[d] = TD_DEDUP_EXACT;
                continue;
            }
            if (*v == 0) *v = check; /* a 64-bit collision (other text) is left alone */
        }
        if (near_threshold <= 0) continue;
        uint64_t keys[TD_LSH_BANDS];
        int dup = 0;
        for (int b = 0; b < TD_LSH_BANDS && !dup; b++) {
            keys[b] =
                (td_hash_bytes(&s->minhash[b * TD_LSH_ROWS], TD_LSH_ROWS * 4, (uint64_t)b) | 1);
            uint64_t *h = td_map64_get(&band_head, keys[b], 0);
            for (int64_t l = h ? (int64_t)*h - 1 : -1; l >= 0 && !dup; l = links[l].next)
                dup = td_dedup_jaccard(s, &sigs[links[l].doc]) >= near_threshold;
        }
        if (dup) {
            verdict[d] = TD_DEDUP_NEAR;
            continue;
        }
        for (int b = 0; b < TD_LSH_BANDS; b++) {
            /* td_dedup_decide returns no status: out of memory here ends the process */
            TD_GROW_OR_DIE(links, cap, used + 1);
            uint64_t *h = td_map64_get(&band_head, keys[b], 1);
            links[used] = (struct link){(uint32_t)d, (int64_t)*h - 1};
            *h = ++used;
        }
    }
    free(links);
    td_map64_deinit(&exact_seen);
    td_map64_deinit(&band_head);
}
