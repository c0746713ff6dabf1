/* Byte-level BPE (see bpe.h). */
#include "data/bpe.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/log.h"
#include "data/pretok.h"

const char *const td_bpe_default_specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                               "<|pad|>", NULL};

struct td_bpe {
    int vocab_size;
    char **tok; /* bytes of each id (specials: their content) */
    uint32_t *tok_len;
    int byte_to_id[256];
    td_map64 merges; /* pair key -> (rank << 32) | merged id */
    int n_merges;
    int32_t *ma, *mb; /* merges in rank order */
    size_t ma_cap, mb_cap;
    int n_special;
    char **special;
    int *special_id;
    size_t special_cap, special_id_cap;
    int ignore_merges;
    td_strmap vocab; /* token bytes -> id + 1 (only needed with ignore_merges) */
    /* encode cache: piece bytes -> (offset << 24 | count) into pool */
    td_strmap cache;
    int32_t *pool;
    size_t pool_len, pool_cap;
};

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

/* ---------------------------------------------------------------------------------------- */
/* GPT-2's byte <-> printable code point map */

static int g_b2u[256], g_u2b[324];

static void init_byte_map(void) {
    static int ready;
    if (ready) return;
    int n = 0;
    for (int b = 0; b < 324; b++)
        g_u2b[b] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        g_b2u[b] = keep ? b : 256 + n++;
        g_u2b[g_b2u[b]] = b;
    }
    ready = 1;
}

/* Appends the mapped UTF-8 form of bytes to buf (needs 2 * n + 1). Returns the length. */
static size_t map_bytes(const char *bytes, size_t n, char *buf) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int cp = g_b2u[(unsigned char)bytes[i]];
        if (cp < 0x80) {
            buf[k++] = (char)cp;
        } else {
            buf[k++] = (char)(0xC0 | (cp >> 6));
            buf[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    buf[k] = 0;
    return k;
}

/* Inverse of map_bytes; returns -1 when a code point is outside the map. */
static long unmap_string(const char *s, char *out) {
    const unsigned char *p = (const unsigned char *)s;
    long k = 0;
    while (*p) {
        int cp;
        if (p[0] < 0x80) {
            cp = p[0];
            p++;
        } else if ((p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
            cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
            p += 2;
        } else {
            return -1;
        }
        if (cp >= 324 || g_u2b[cp] < 0) return -1;
        out[k++] = (char)g_u2b[cp];
    }
    return k;
}

/* ---------------------------------------------------------------------------------------- */

static td_bpe *bpe_alloc(int vocab_size) {
    init_byte_map();
    td_bpe *t = calloc(1, sizeof *t);
    t->vocab_size = vocab_size;
    t->tok = calloc((size_t)vocab_size, sizeof *t->tok);
    t->tok_len = calloc((size_t)vocab_size, sizeof *t->tok_len);
    td_map64_init(&t->merges);
    td_strmap_init(&t->cache);
    td_strmap_init(&t->vocab);
    for (int b = 0; b < 256; b++)
        t->byte_to_id[b] = -1;
    return t;
}

void td_bpe_free(td_bpe **tp) {
    if (!tp || !*tp) return;
    td_bpe *t = *tp;
    for (int i = 0; i < t->vocab_size; i++)
        free(t->tok[i]);
    free(t->tok);
    free(t->tok_len);
    td_map64_deinit(&t->merges);
    free(t->ma);
    free(t->mb);
    for (int i = 0; i < t->n_special; i++)
        free(t->special[i]);
    free(t->special);
    free(t->special_id);
    td_strmap_deinit(&t->vocab);
    td_strmap_deinit(&t->cache);
    free(t->pool);
    free(t);
    *tp = NULL;
}

static void set_tok(td_bpe *t, int id, const char *b, size_t n) {
    free(t->tok[id]);
    t->tok[id] = malloc(n + 1);
    memcpy(t->tok[id], b, n);
    t->tok[id][n] = 0;
    t->tok_len[id] = (uint32_t)n;
}

static td_status add_special(td_bpe *t, const char *content, int id) {
    TD_TRY(TD_GROW(t->special, t->special_cap, (size_t)t->n_special + 1));
    TD_TRY(TD_GROW(t->special_id, t->special_id_cap, (size_t)t->n_special + 1));
    t->special[t->n_special] = strdup(content);
    t->special_id[t->n_special] = id;
    t->n_special++;
    set_tok(t, id, content, strlen(content));
    return TD_OK;
}

static td_status add_merge(td_bpe *t, int32_t a, int32_t b, int32_t id) {
    TD_TRY(TD_GROW(t->ma, t->ma_cap, (size_t)t->n_merges + 1));
    TD_TRY(TD_GROW(t->mb, t->mb_cap, (size_t)t->n_merges + 1));
    t->ma[t->n_merges] = a;
    t->mb[t->n_merges] = b;
    uint64_t *slot = td_map64_get(&t->merges, pair_key(a, b), 1);
    *slot = ((uint64_t)t->n_merges << 32) | (uint32_t)id;
    t->n_merges++;
    return TD_OK;
}

int td_bpe_vocab_size(const td_bpe *t) {
    return t->vocab_size;
}

int td_bpe_special_id(const td_bpe *t, const char *content) {
    for (int i = 0; i < t->n_special; i++)
        if (!strcmp(t->special[i], content)) return t->special_id[i];
    return -1;
}

td_status td_bpe_new_bytes(const char *const *specials, td_bpe **out) {
    if (!specials) specials = td_bpe_default_specials;
    int ns = 0;
    while (specials[ns])
        ns++;
    td_bpe *t = bpe_alloc(256 + ns);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        set_tok(t, b, &c, 1);
        t->byte_to_id[b] = b;
    }
    for (int i = 0; i < ns; i++) {
        if (!specials[i][0]) {
            td_bpe_free(&t);
            return td_error_set(TD_ERR_INVALID, "special tokens must not be empty");
        }
        td_status s = add_special(t, specials[i], 256 + i);
        if (s != TD_OK) {
            td_bpe_free(&t);
            return s;
        }
    }
    *out = t;
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* encoding */

/* Merges the symbols of one piece in place; returns the new count. */
static int bpe_merge_word(const td_bpe *t, int32_t *s, int n) {
    while (n > 1) {
        uint64_t best = UINT64_MAX;
        for (int i = 0; i + 1 < n; i++) {
            uint64_t *v = td_map64_get((td_map64 *)&t->merges, pair_key(s[i], s[i + 1]), 0);
            if (v && *v < best) best = *v;
        }
        if (best == UINT64_MAX) break;
        int32_t a = t->ma[best >> 32], b = t->mb[best >> 32], id = (int32_t)(best & 0xffffffffu);
        int k = 0;
        for (int i = 0; i < n;) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                s[k++] = id;
                i += 2;
            } else {
                s[k++] = s[i++];
            }
        }
        n = k;
    }
    return n;
}

typedef struct {
    td_bpe *t;
    int32_t **ids;
    size_t *cap, n;
    int32_t *tmp;
    size_t tmp_cap;
} enc_ctx;

/* td_bpe_encode returns a count, not a status: out of memory here ends the process. */
static void reserve(int32_t **ids, size_t *cap, size_t need) {
    TD_GROW_OR_DIE(*ids, *cap, need);
}

static void encode_piece(const char *p, size_t n, void *vctx) {
    enc_ctx *c = vctx;
    td_bpe *t = c->t;
    uint64_t *hit = td_strmap_get(&t->cache, p, n, 0);
    if (hit) {
        size_t off = *hit >> 24, cnt = *hit & 0xffffff;
        reserve(c->ids, c->cap, c->n + cnt);
        memcpy(*c->ids + c->n, t->pool + off, cnt * sizeof(int32_t));
        c->n += cnt;
        return;
    }
    reserve(&c->tmp, &c->tmp_cap, n);
    int cnt;
    uint64_t *whole = t->ignore_merges ? td_strmap_get(&t->vocab, p, n, 0) : NULL;
    if (whole) {
        c->tmp[0] = (int32_t)(*whole - 1);
        cnt = 1;
    } else {
        for (size_t i = 0; i < n; i++)
            c->tmp[i] = t->byte_to_id[(unsigned char)p[i]];
        cnt = bpe_merge_word(t, c->tmp, (int)n);
    }
    reserve(c->ids, c->cap, c->n + (size_t)cnt);
    memcpy(*c->ids + c->n, c->tmp, (size_t)cnt * sizeof(int32_t));
    c->n += (size_t)cnt;
    /* cache pieces up to 256 bytes while the pool stays under 64 M ids; the cache only saves
     * time, so a pool that cannot grow just leaves this piece uncached */
    if (n <= 256 && t->pool_len + (size_t)cnt < (64u << 20) &&
        TD_GROW(t->pool, t->pool_cap, t->pool_len + (size_t)cnt) == TD_OK) {
        memcpy(t->pool + t->pool_len, c->tmp, (size_t)cnt * sizeof(int32_t));
        *td_strmap_get(&t->cache, p, n, 1) = ((uint64_t)t->pool_len << 24) | (uint64_t)cnt;
        t->pool_len += (size_t)cnt;
    }
}

/* Finds the next special token at or after `from`: returns its start (or len) and index. */
static size_t find_special(const td_bpe *t, const char *text, size_t len, size_t from, int *which) {
    for (size_t i = from; i < len; i++) {
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_special; k++) {
            size_t sl = t->tok_len[t->special_id[k]];
            if (text[i] == t->special[k][0] && sl <= len - i && sl > best_len &&
                !memcmp(text + i, t->special[k], sl)) {
                best = k;
                best_len = sl;
            }
        }
        if (best >= 0) {
            *which = best;
            return i;
        }
    }
    return len;
}

size_t td_bpe_encode_append(td_bpe *t, const char *text, size_t len, int specials, int32_t **ids,
                            size_t *cap, size_t n) {
    enc_ctx c = {t, ids, cap, n, NULL, 0};
    size_t i = 0;
    while (i <= len) {
        int which = -1;
        size_t s = t->n_special && specials ? find_special(t, text, len, i, &which) : len;
        if (s > i) td_pretok_split(text + i, s - i, encode_piece, &c);
        if (s >= len) break;
        reserve(ids, cap, c.n + 1);
        (*ids)[c.n++] = t->special_id[which];
        i = s + t->tok_len[t->special_id[which]];
    }
    free(c.tmp);
    return c.n;
}

size_t td_bpe_encode(td_bpe *t, const char *text, size_t len, int32_t **ids, size_t *cap) {
    return td_bpe_encode_append(t, text, len, 1, ids, cap, 0);
}

size_t td_bpe_decode(const td_bpe *t, const int32_t *ids, size_t n, char **out, size_t *cap) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->tok[ids[i]]) continue;
        size_t l = t->tok_len[ids[i]];
        /* a count is returned, not a status: out of memory here ends the process */
        TD_GROW_OR_DIE(*out, *cap, k + l + 1);
        memcpy(*out + k, t->tok[ids[i]], l);
        k += l;
    }
    TD_GROW_OR_DIE(*out, *cap, k + 1); /* the terminator, when nothing was decoded */
    (*out)[k] = 0;
    return k;
}

/* ---------------------------------------------------------------------------------------- */
/* counting and training */

void td_bpe_counts_init(td_bpe_counts *c) {
    td_strmap_init(&c->words);
}
void td_bpe_counts_deinit(td_bpe_counts *c) {
    td_strmap_deinit(&c->words);
}
void td_bpe_counts_add(td_bpe_counts *c, const char *word, size_t len, uint64_t count) {
    *td_strmap_get(&c->words, word, len, 1) += count;
}

static void count_piece(const char *p, size_t n, void *ctx) {
    td_bpe_counts_add(ctx, p, n, 1);
}

void td_bpe_counts_add_text(td_bpe_counts *c, const td_bpe *sp, const char *text, size_t len) {
    size_t i = 0;
    while (i < len) {
        int which = -1;
        size_t s = sp && sp->n_special ? find_special(sp, text, len, i, &which) : len;
        if (s > i) td_pretok_split(text + i, s - i, count_piece, c);
        if (s >= len) break;
        i = s + sp->tok_len[sp->special_id[which]];
    }
}

typedef struct {
    int32_t *sym;
    int n;
    uint64_t count;
    int stamp;
} tword;

typedef struct {
    uint64_t count, key;
} hent;

/* max-heap on (count, then smaller pair key) */
static int hless(const hent *a, const hent *b) {
    return a->count < b->count || (a->count == b->count && a->key > b->key);
}

typedef struct {
    hent *v;
    size_t n, cap;
} heap;

static td_status hpush(heap *h, uint64_t count, uint64_t key) {
    TD_TRY(TD_GROW(h->v, h->cap, h->n + 1));
    size_t i = h->n++;
    h->v[i] = (hent){count, key};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&h->v[p], &h->v[i])) break;
        hent t = h->v[p];
        h->v[p] = h->v[i];
        h->v[i] = t;
        i = p;
    }
    return TD_OK;
}

static hent hpop(heap *h) {
    hent top = h->v[0];
    h->v[0] = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && hless(&h->v[m], &h->v[l])) m = l;
        if (r < h->n && hless(&h->v[m], &h->v[r])) m = r;
        if (m == i) break;
        hent t = h->v[m];
        h->v[m] = h->v[i];
        h->v[i] = t;
        i = m;
    }
    return top;
}

/* occurrence lists: pair -> chain of word indices (may hold stale or repeated entries) */
typedef struct {
    int32_t word, next;
} occ;

typedef struct {
    td_map64 counts; /* pair -> count */
    td_map64 head;   /* pair -> 1 + index of the newest occ */
    occ *o;
    size_t no, co;
    heap h;
} pairs;

static td_status pair_add(pairs *P, int32_t a, int32_t b, int64_t delta, int32_t word) {
    uint64_t k = pair_key(a, b);
    uint64_t *c = td_map64_get(&P->counts, k, 1);
    *c = (uint64_t)((int64_t)*c + delta);
    if (delta > 0) {
        TD_TRY(TD_GROW(P->o, P->co, P->no + 1));
        uint64_t *hd = td_map64_get(&P->head, k, 1);
        P->o[P->no] = (occ){word, (int32_t)*hd - 1};
        *hd = ++P->no;
    }
    return TD_OK;
}

td_status td_bpe_train(const td_bpe_counts *counts, const td_bpe_train_opts *opts, td_bpe **out) {
    *out = NULL;
    const char *const *specials = opts->specials ? opts->specials : td_bpe_default_specials;
    int ns = 0;
    while (specials[ns])
        ns++;
    int base = 256 + ns;
    if (opts->vocab_size < base)
        return td_error_set(TD_ERR_INVALID,
                            "vocabulary size %d is below the %d byte and special tokens",
                            opts->vocab_size, base);
    int min_freq = opts->min_frequency > 0 ? opts->min_frequency : 2;
    const td_strmap *W = &counts->words;
    size_t nw = W->count;
    tword *words = calloc(nw ? nw : 1, sizeof *words);
    size_t k = 0;
    for (size_t i = 0; i < W->cap; i++) {
        const td_strmap_slot *s = &W->slots[i];
        if (s->len == UINT32_MAX) continue;
        const unsigned char *p = (const unsigned char *)td_strmap_key(W, s);
        words[k].sym = malloc(sizeof(int32_t) * (s->len ? s->len : 1));
        for (uint32_t j = 0; j < s->len; j++)
            words[k].sym[j] = p[j];
        words[k].n = (int)s->len;
        words[k].count = s->val;
        words[k].stamp = -1;
        k++;
    }
    pairs P = {0};
    td_map64_init(&P.counts);
    td_map64_init(&P.head);
    td_status st = TD_OK;
    for (size_t w = 0; w < nw && st == TD_OK; w++)
        for (int j = 0; j + 1 < words[w].n && st == TD_OK; j++)
            st = pair_add(&P, words[w].sym[j], words[w].sym[j + 1], (int64_t)words[w].count,
                          (int32_t)w);
    for (size_t i = 0; i < P.counts.cap && st == TD_OK; i++)
        if (P.counts.keys[i]) st = hpush(&P.h, P.counts.vals[i], P.counts.keys[i]);

    td_bpe *t = NULL;
    int next_id = base, target = opts->vocab_size;
    int32_t *buf = NULL;
    size_t bufcap = 0, tok_cap = (size_t)base, tok_len_cap = (size_t)base;
    if (st == TD_OK) st = td_bpe_new_bytes(specials, &t);
    /* grow the token table as merges arrive */
    if (st == TD_OK) st = TD_GROW_EXACT(t->tok, tok_cap, (size_t)target);
    if (st == TD_OK) st = TD_GROW_EXACT(t->tok_len, tok_len_cap, (size_t)target);
    if (st != TD_OK) goto done;
    for (int i = base; i < target; i++) {
        t->tok[i] = NULL;
        t->tok_len[i] = 0;
    }
    while (st == TD_OK && next_id < target && P.h.n > 0) {
        hent top = hpop(&P.h);
        uint64_t *cur = td_map64_get(&P.counts, top.key, 0);
        uint64_t now = cur ? *cur : 0;
        if (now != top.count) { /* stale entry: requeue with the current count */
            if (now > 0) st = hpush(&P.h, now, top.key);
            continue;
        }
        if ((int64_t)now < min_freq) break;
        int32_t a = (int32_t)((top.key - 1) >> 32), b = (int32_t)((top.key - 1) & 0xffffffffu);
        int32_t id = next_id++;
        size_t la = t->tok_len[a], lb = t->tok_len[b];
        char *nb = malloc(la + lb + 1);
        memcpy(nb, t->tok[a], la);
        memcpy(nb + la, t->tok[b], lb);
        set_tok(t, id, nb, la + lb);
        free(nb);
        st = add_merge(t, a, b, id);
        if (st != TD_OK) break;
        /* apply in every word that had the pair */
        uint64_t *hd = td_map64_get(&P.head, top.key, 0);
        for (int32_t o = hd ? (int32_t)*hd - 1 : -1; o >= 0 && st == TD_OK; o = P.o[o].next) {
            tword *w = &words[P.o[o].word];
            if (w->stamp == id) continue;
            w->stamp = id;
            int has = 0;
            for (int j = 0; j + 1 < w->n && !has; j++)
                has = w->sym[j] == a && w->sym[j + 1] == b;
            if (!has) continue;
            st = TD_GROW(buf, bufcap, (size_t)w->n);
            if (st != TD_OK) break;
            int m = 0;
            for (int j = 0; j < w->n;) {
                if (j + 1 < w->n && w->sym[j] == a && w->sym[j + 1] == b) {
                    buf[m++] = id;
                    j += 2;
                } else {
                    buf[m++] = w->sym[j++];
                }
            }
            int64_t c = (int64_t)w->count;
            int32_t wi = P.o[o].word;
            for (int j = 0; j + 1 < w->n && st == TD_OK; j++)
                st = pair_add(&P, w->sym[j], w->sym[j + 1], -c, wi);
            for (int j = 0; j + 1 < m && st == TD_OK; j++) {
                st = pair_add(&P, buf[j], buf[j + 1], c, wi);
                if (st == TD_OK && (buf[j] == id || buf[j + 1] == id)) {
                    uint64_t *cc = td_map64_get(&P.counts, pair_key(buf[j], buf[j + 1]), 0);
                    st = hpush(&P.h, *cc, pair_key(buf[j], buf[j + 1]));
                }
            }
            if (st != TD_OK) break;
            memcpy(w->sym, buf, (size_t)m * sizeof *buf);
            w->n = m;
        }
        if (st != TD_OK) break;
        /* the merged pair no longer occurs anywhere */
        *td_map64_get(&P.counts, top.key, 1) = 0;
    }
done:
    free(buf);
    for (size_t w = 0; w < nw; w++)
        free(words[w].sym);
    free(words);
    td_map64_deinit(&P.counts);
    td_map64_deinit(&P.head);
    free(P.o);
    free(P.h.v);
    /* ids up to next_id hold tokens (td_bpe_free frees that many), also on failure */
    if (t) t->vocab_size = next_id;
    if (st != TD_OK) {
        td_bpe_free(&t);
        return st;
    }
    *out = t;
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* tokenizer.json */

char *td_bpe_to_json(const td_bpe *t) {
    init_byte_map();
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    for (int i = 0; i < t->n_special; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", t->special_id[i]);
        cJSON_AddStringToObject(a, "content", t->special[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(j, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(j, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0);
    cJSON_AddBoolToObject(pre, "trim_offsets", 1);
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    cJSON_AddNullToObject(j, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(j, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", 1);
    cJSON_AddBoolToObject(dec, "trim_offsets", 1);
    cJSON_AddBoolToObject(dec, "use_regex", 1);
    cJSON *model = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", t->ignore_merges);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    size_t maxlen = 0;
    for (int i = 0; i < t->vocab_size; i++)
        if (t->tok_len[i] > maxlen) maxlen = t->tok_len[i];
    char *m1 = malloc(2 * maxlen + 2), *m2 = malloc(2 * maxlen + 2), *pair = malloc(4 * maxlen + 4);
    for (int i = 0; i < t->vocab_size; i++) {
        if (!t->tok[i]) continue;
        if (td_bpe_special_id(t, t->tok[i]) == i) {
            /* specials also go in the model vocab, under their plain content (as the
             * tokenizers BpeTrainer writes them): tokenizers ignores added_tokens[].id and
             * gives an added token missing from model.vocab the id len(vocab) + k */
            cJSON_AddNumberToObject(vocab, t->tok[i], i);
            continue;
        }
        map_bytes(t->tok[i], t->tok_len[i], m1);
        cJSON_AddNumberToObject(vocab, m1, i);
    }
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (int i = 0; i < t->n_merges; i++) {
        map_bytes(t->tok[t->ma[i]], t->tok_len[t->ma[i]], m1);
        map_bytes(t->tok[t->mb[i]], t->tok_len[t->mb[i]], m2);
        snprintf(pair, 4 * maxlen + 4, "%s %s", m1, m2);
        cJSON_AddItemToArray(merges, cJSON_CreateString(pair));
    }
    free(m1);
    free(m2);
    free(pair);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

/* Whether content names an entry of added_tokens. */
static int is_added(const cJSON *added, const char *content) {
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (cJSON_IsString(c) && !strcmp(c->valuestring, content)) return 1;
    }
    return 0;
}

/* A token id from the file: a whole number in [0, 2^24], else -1 (checked before the cast,
 * which is undefined for values outside int). */
static int json_id(const cJSON *v) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= (double)(1 << 24)) || d != (double)(int)d) return -1;
    return (int)d;
}

td_status td_bpe_from_json(const char *json, size_t len, const char *where, td_bpe **out) {
    *out = NULL;
    init_byte_map();
    cJSON *j = cJSON_ParseWithLength(json, len);
    if (!j) return td_error_set(TD_ERR_FORMAT, "%s: not valid JSON", where);
    td_status s = TD_OK;
    td_bpe *t = NULL;
    char *buf = NULL;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "normalizer");
    const cJSON *pretype = cJSON_GetObjectItemCaseSensitive(pre, "type");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pre, "use_regex");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(pre, "add_prefix_space");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vocab) ||
        !cJSON_IsArray(merges)) {
        s = td_error_set(TD_ERR_FORMAT, "%s: model must be BPE with vocab and merges", where);
        goto done;
    }
    if (!cJSON_IsString(pretype) || strcmp(pretype->valuestring, "ByteLevel") ||
        cJSON_IsFalse(regex) || cJSON_IsTrue(prefix)) {
        s = td_error_set(TD_ERR_FORMAT,
                         "%s: only the ByteLevel pre-tokenizer with use_regex=true and "
                         "add_prefix_space=false is supported",
                         where);
        goto done;
    }
    if (norm && !cJSON_IsNull(norm)) {
        s = td_error_set(TD_ERR_FORMAT, "%s: normalizers are not supported", where);
        goto done;
    }
    int maxid = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int id = json_id(it);
        if (id < 0) {
            s = td_error_set(TD_ERR_FORMAT, "%s: vocab entry \"%s\" has no valid id", where,
                             it->string);
            goto done;
        }
        if (id > maxid) maxid = id;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    cJSON_ArrayForEach(it, added) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        int id = json_id(cJSON_GetObjectItemCaseSensitive(it, "id"));
        if (id < 0 || !cJSON_IsString(content) || !content->valuestring[0]) {
            s = td_error_set(TD_ERR_FORMAT, "%s: malformed added token", where);
            goto done;
        }
        if (id > maxid) maxid = id;
    }
    if (maxid < 0 || maxid > (1 << 24)) {
        s = td_error_set(TD_ERR_FORMAT, "%s: empty or oversized vocabulary", where);
        goto done;
    }
    t = bpe_alloc(maxid + 1);
    const cJSON *im = cJSON_GetObjectItemCaseSensitive(model, "ignore_merges");
    t->ignore_merges = cJSON_IsTrue(im);
    size_t bl = 0;
    cJSON_ArrayForEach(it, vocab) bl = strlen(it->string) > bl ? strlen(it->string) : bl;
    buf = malloc(bl + 1);
    cJSON_ArrayForEach(it, vocab) {
        int id = json_id(it);
        long n = unmap_string(it->string, buf);
        if (is_added(added, it->string)) continue; /* set from added_tokens below */
        if (n <= 0 || id < 0) {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: vocab entry \"%s\" is not in the byte-level alphabet", where,
                             it->string);
            goto done;
        }
        set_tok(t, id, buf, (size_t)n);
        *td_strmap_get(&t->vocab, buf, (size_t)n, 1) = (uint64_t)id + 1;
        if (n == 1) t->byte_to_id[(unsigned char)buf[0]] = id;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_to_id[b] < 0) {
            s = td_error_set(TD_ERR_FORMAT, "%s: the vocabulary lacks a token for byte 0x%02x",
                             where, b);
            goto done;
        }
    cJSON_ArrayForEach(it, merges) {
        char l[1024], r[1024];
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || (size_t)(sp - it->valuestring) >= sizeof l || strlen(sp + 1) >= sizeof r) {
                s = td_error_set(TD_ERR_FORMAT, "%s: malformed merge \"%s\"", where,
                                 it->valuestring);
                goto done;
            }
            snprintf(l, sizeof l, "%.*s", (int)(sp - it->valuestring), it->valuestring);
            snprintf(r, sizeof r, "%s", sp + 1);
        } else if (cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            snprintf(l, sizeof l, "%s", cJSON_GetArrayItem(it, 0)->valuestring);
            snprintf(r, sizeof r, "%s", cJSON_GetArrayItem(it, 1)->valuestring);
        } else {
            s = td_error_set(TD_ERR_FORMAT, "%s: malformed merge entry", where);
            goto done;
        }
        char lb[1024], rb[1024], cat[2048];
        long nl = unmap_string(l, lb), nr = unmap_string(r, rb);
        if (nl <= 0 || nr <= 0) {
            s = td_error_set(TD_ERR_FORMAT, "%s: merge \"%s %s\" is outside the alphabet", where, l,
                             r);
            goto done;
        }
        memcpy(cat, lb, (size_t)nl);
        memcpy(cat + nl, rb, (size_t)nr);
        uint64_t *ia = td_strmap_get(&t->vocab, lb, (size_t)nl, 0);
        uint64_t *ib = td_strmap_get(&t->vocab, rb, (size_t)nr, 0);
        uint64_t *ic = td_strmap_get(&t->vocab, cat, (size_t)(nl + nr), 0);
        if (!ia || !ib || !ic) {
            s = td_error_set(TD_ERR_FORMAT, "%s: merge \"%s %s\" names tokens not in vocab", where,
                             l, r);
            goto done;
        }
        s = add_merge(t, (int32_t)(*ia - 1), (int32_t)(*ib - 1), (int32_t)(*ic - 1));
        if (s != TD_OK) goto done;
    }
    cJSON_ArrayForEach(it, added) { /* ids and contents checked above */
        int id = json_id(cJSON_GetObjectItemCaseSensitive(it, "id"));
        const char *content = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        /* one id, one content: encoding matches special[k] but skips tok_len[id] bytes */
        for (int k = 0; k < t->n_special; k++)
            if (t->special_id[k] == id && strcmp(t->special[k], content)) {
                s = td_error_set(TD_ERR_FORMAT, "%s: added tokens \"%s\" and \"%s\" share id %d",
                                 where, t->special[k], content, id);
                goto done;
            }
        s = add_special(t, content, id);
        if (s != TD_OK) goto done;
    }
done:
    free(buf);
    cJSON_Delete(j);
    if (s != TD_OK) {
        td_bpe_free(&t);
        return s;
    }
    *out = t;
    return TD_OK;
}

td_status td_bpe_load(const char *path, td_bpe **out) {
    char *text;
    size_t len;
    TD_TRY(td_fs_read_file(path, &text, &len));
    td_status s = td_bpe_from_json(text, len, path, out);
    free(text);
    return s;
}
