/* Conversations as token ids (see chat.h). */
#include "data/chat.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/rng.h"

static td_status push_id(int32_t **ids, size_t *cap, size_t *k, int32_t id) {
    TD_TRY(TD_GROW(*ids, *cap, *k + 1));
    (*ids)[(*k)++] = id;
    return TD_OK;
}

td_status td_chatml_encode(td_bpe *tok, const char *const *roles, const char *const *contents,
                           int n, int32_t **ids, size_t *cap, size_t *n_ids) {
    int start = td_bpe_special_id(tok, "<|im_start|>"), end = td_bpe_special_id(tok, "<|im_end|>");
    if (start < 0 || end < 0)
        return td_error_set(TD_ERR_FORMAT, "the tokenizer has no <|im_start|>/<|im_end|> tokens");
    size_t k = 0;
    for (int i = 0; i <= n; i++) { /* the n messages, then the assistant's turn */
        const char *role = i < n ? roles[i] : "assistant";
        const char *content = i < n ? contents[i] : "";
        size_t len = strlen(role) + strlen(content) + 2;
        char *seg = malloc(len);
        if (!seg) return td_error_set(TD_ERR_NOMEM, "out of memory");
        snprintf(seg, len, "%s\n%s", role, content);
        td_status s = push_id(ids, cap, &k, start);
        /* role and content as ordinary text: "<|im_end|>" typed by a user stays bytes */
        if (s == TD_OK) k = td_bpe_encode_append(tok, seg, strlen(seg), 0, ids, cap, k);
        free(seg);
        if (s == TD_OK && i < n) s = push_id(ids, cap, &k, end);
        if (s == TD_OK && i < n) k = td_bpe_encode_append(tok, "\n", 1, 0, ids, cap, k);
        TD_TRY(s);
    }
    *n_ids = k;
    return TD_OK;
}

char *td_chatml_prompt(const char *const *roles, const char *const *contents, int n) {
    size_t len = 32;
    for (int i = 0; i < n; i++)
        len += strlen(roles[i]) + strlen(contents[i]) + 32;
    char *p = malloc(len), *w = p;
    if (!p) return NULL;
    for (int i = 0; i < n; i++)
        w += sprintf(w, "<|im_start|>%s\n%s<|im_end|>\n", roles[i], contents[i]);
    strcpy(w, "<|im_start|>assistant\n");
    return p;
}

/* ---------------------------------------------------------------------------------------- */
/* supervised examples */

typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap, mcap;
} builder;

static td_status put(builder *b, int32_t id, int counted) {
    TD_TRY(TD_GROW(b->ids, b->cap, b->n + 1));
    TD_TRY(TD_GROW(b->mask, b->mcap, b->n + 1));
    b->ids[b->n] = id;
    b->mask[b->n++] = (uint8_t)counted;
    return TD_OK;
}

/* Appends the ids of prefix + text: those of the prefix alone uncounted, the rest counted
 * when `counted` (the answer continues exactly the prompt serving will send). */
static td_status put_text(builder *b, td_bpe *tok, const char *prefix, const char *text,
                          int counted, int32_t **scratch, size_t *scap) {
    size_t lp = strlen(prefix), lt = strlen(text);
    char *all = malloc(lp + lt + 1);
    if (!all) return td_error_set(TD_ERR_NOMEM, "out of memory");
    memcpy(all, prefix, lp);
    memcpy(all + lp, text, lt + 1);
    size_t np = td_bpe_encode(tok, prefix, lp, scratch, scap);
    size_t shared = np;
    int32_t *pre = malloc((np ? np : 1) * sizeof *pre);
    if (!pre) {
        free(all);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    memcpy(pre, *scratch, np * sizeof *pre);
    size_t na = td_bpe_encode_append(tok, all, lp + lt, 0, scratch, scap, 0);
    free(all);
    /* the prefix's ids, where encoding the whole keeps them (a merge across the boundary
     * moves the boundary back to where the two encodings part) */
    size_t i = 0;
    while (i < np && i < na && pre[i] == (*scratch)[i])
        i++;
    shared = i;
    free(pre);
    for (size_t k = 0; k < na; k++)
        TD_TRY(put(b, (*scratch)[k], counted && k >= shared));
    return TD_OK;
}

static const char *str_field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* One JSON line into b; errors name path:line. */
static td_status encode_line(const char *path, long line, const cJSON *o, td_bpe *tok, builder *b,
                             int32_t **scratch, size_t *scap) {
    int start = td_bpe_special_id(tok, "<|im_start|>"), end = td_bpe_special_id(tok, "<|im_end|>");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (!cJSON_IsObject(o))
        return td_error_set(TD_ERR_FORMAT, "%s:%ld: expected a JSON object", path, line);
    if (msgs) {
        if (!cJSON_IsArray(msgs))
            return td_error_set(TD_ERR_FORMAT, "%s:%ld: \"messages\" must be an array", path, line);
        if (start < 0 || end < 0)
            return td_error_set(TD_ERR_FORMAT,
                                "%s: the tokenizer has no <|im_start|>/<|im_end|> tokens, so "
                                "it cannot encode conversations",
                                path);
        int n = cJSON_GetArraySize(msgs), assistant = 0;
        for (int i = 0; i < n; i++) {
            const cJSON *m = cJSON_GetArrayItem(msgs, i);
            const char *role = str_field(m, "role"), *content = str_field(m, "content");
            if (!role || !content)
                return td_error_set(TD_ERR_FORMAT,
                                    "%s:%ld: message %d needs string \"role\" and \"content\"",
                                    path, line, i + 1);
            int is_a = !strcmp(role, "assistant");
            if (!is_a && strcmp(role, "user") && strcmp(role, "system"))
                return td_error_set(TD_ERR_FORMAT,
                                    "%s:%ld: message %d has role \"%s\"; the roles are system, "
                                    "user and assistant",
                                    path, line, i + 1, role);
            assistant += is_a;
            TD_TRY(put(b, start, 0));
            if (is_a) {
                TD_TRY(put_text(b, tok, "assistant\n", content, 1, scratch, scap));
            } else {
                size_t len = strlen(role) + strlen(content) + 2;
                char *seg = malloc(len);
                if (!seg) return td_error_set(TD_ERR_NOMEM, "out of memory");
                snprintf(seg, len, "%s\n%s", role, content);
                td_status s = put_text(b, tok, "", seg, 0, scratch, scap);
                free(seg);
                TD_TRY(s);
            }
            TD_TRY(put(b, end, is_a));
            if (i + 1 < n) TD_TRY(put_text(b, tok, "", "\n", 0, scratch, scap));
        }
        if (!assistant)
            return td_error_set(TD_ERR_FORMAT,
                                "%s:%ld: the conversation has no assistant turn, so there is "
                                "nothing to learn from it",
                                path, line);
        return TD_OK;
    }
    const char *prompt = str_field(o, "prompt"), *completion = str_field(o, "completion");
    if (!prompt || !completion)
        return td_error_set(TD_ERR_FORMAT,
                            "%s:%ld: expected {\"messages\": [...]} or {\"prompt\": ..., "
                            "\"completion\": ...} with strings",
                            path, line);
    int eot = td_bpe_special_id(tok, "<|endoftext|>");
    if (eot < 0) return td_error_set(TD_ERR_FORMAT, "%s: the tokenizer has no <|endoftext|>", path);
    TD_TRY(put_text(b, tok, prompt, completion, 1, scratch, scap));
    return put(b, eot, 1);
}

td_status td_sft_set_add(td_sft_set *out, const int32_t *ids, const uint8_t *mask, int n, long line,
                         int max_tokens, td_sft_overlong policy) {
    if (n > max_tokens) {
        if (policy == TD_SFT_DROP) {
            out->dropped_long++;
            return TD_OK;
        }
        n = max_tokens;
        out->truncated++;
    }
    long counted = 0;
    for (int k = 1; k < n; k++)
        counted += mask[k];
    if (counted == 0) { /* truncation cut every answer token */
        out->dropped_long++;
        out->truncated--;
        return TD_OK;
    }
    TD_TRY(TD_GROW(out->ex, out->cap, (size_t)out->n + 1));
    td_sft_example *e = &out->ex[out->n];
    e->ids = malloc((size_t)n * sizeof *e->ids);
    e->mask = malloc((size_t)n);
    if (!e->ids || !e->mask) {
        free(e->ids);
        free(e->mask);
        return td_error_set(TD_ERR_NOMEM, "out of memory for %d examples", out->n + 1);
    }
    memcpy(e->ids, ids, (size_t)n * sizeof *e->ids);
    memcpy(e->mask, mask, (size_t)n);
    e->n = n;
    e->line = line;
    out->n++;
    out->tokens += n;
    out->counted += counted;
    if (n > out->max_tokens) out->max_tokens = n;
    for (int k = 0; k < n; k++)
        if (e->ids[k] > out->max_id) out->max_id = e->ids[k];
    return TD_OK;
}

td_status td_sft_load_jsonl(const char *path, td_bpe *tok, int max_tokens, td_sft_overlong policy,
                            td_sft_set *out) {
    return td_sft_load_jsonl_part(path, tok, max_tokens, policy, 0, 1, out);
}

td_status td_sft_load_jsonl_part(const char *path, td_bpe *tok, int max_tokens,
                                 td_sft_overlong policy, int part, int nparts, td_sft_set *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (!f) return td_error_set(TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    long line = 0;
    int32_t *scratch = NULL;
    size_t scap = 0;
    builder b = {0};
    td_status s = TD_OK;
    while (s == TD_OK && (len = getline(&buf, &bcap, f)) >= 0) {
        line++;
        if ((line - 1) % nparts != part) continue; /* another part's line */
        size_t i = 0;
        while (i < (size_t)len && strchr(" \t\r\n", buf[i]))
            i++;
        if (i == (size_t)len) continue;
        if (memchr(buf, 0, (size_t)len)) {
            s = td_error_set(TD_ERR_FORMAT, "%s:%ld: the line holds a NUL byte", path, line);
            break;
        }
        const char *endp = NULL;
        cJSON *o = cJSON_ParseWithLengthOpts(buf, (size_t)len, &endp, 0);
        if (!o) {
            s = td_error_set(TD_ERR_FORMAT, "%s:%ld: not valid JSON (near column %ld)", path, line,
                             endp ? (long)(endp - buf) + 1 : 1L);
            break;
        }
        b.n = 0;
        s = encode_line(path, line, o, tok, &b, &scratch, &scap);
        cJSON_Delete(o);
        if (s != TD_OK) break;
        s = td_sft_set_add(out, b.ids, b.mask, (int)b.n, line, max_tokens, policy);
        if (s == TD_ERR_NOMEM) s = td_error_set(s, "out of memory reading %s", path);
    }
    if (s == TD_OK && ferror(f)) s = td_error_set(TD_ERR_IO, "error reading %s", path);
    fclose(f);
    free(buf);
    free(scratch);
    free(b.ids);
    free(b.mask);
    if (s != TD_OK) td_sft_set_free(out);
    return s;
}

void td_sft_set_free(td_sft_set *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->ex[i].ids);
        free(s->ex[i].mask);
    }
    free(s->ex);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------------------------------- */
/* batches */

struct td_sft_loader {
    const td_sft_set *set;
    int gb, begin, end, shuffle;
    uint64_t seed;
    int *order;
    int64_t epoch, cursor;
    long last_real;
};

static void make_order(td_sft_loader *l) {
    int n = l->set->n;
    for (int i = 0; i < n; i++)
        l->order[i] = i;
    if (!l->shuffle) return;
    td_rng r;
    td_rng_seed(&r, l->seed * 0x9e3779b97f4a7c15ull + (uint64_t)l->epoch);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)td_rng_below(&r, (uint64_t)i + 1), t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

td_status td_sft_loader_new(const td_sft_set *set, int global_batch, int begin, int end,
                            uint64_t seed, int shuffle, td_sft_loader **out) {
    if (set->n < global_batch)
        return td_error_set(TD_ERR_INVALID,
                            "%d examples cannot fill one batch of %d: lower train.batch_size or "
                            "add examples",
                            set->n, global_batch);
    td_sft_loader *l = calloc(1, sizeof *l);
    if (!l || !(l->order = malloc((size_t)set->n * sizeof(int)))) {
        free(l);
        return td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    l->set = set;
    l->gb = global_batch;
    l->begin = begin;
    l->end = end;
    l->seed = seed;
    l->shuffle = shuffle;
    make_order(l);
    *out = l;
    return TD_OK;
}

void td_sft_loader_free(td_sft_loader **l) {
    if (!*l) return;
    free((*l)->order);
    free(*l);
    *l = NULL;
}

static void advance(td_sft_loader *l) {
    l->cursor += l->gb;
    if (l->cursor + l->gb > l->set->n) { /* the remainder waits for the next epoch */
        l->epoch++;
        l->cursor = 0;
        make_order(l);
    }
}

void td_sft_loader_next(td_sft_loader *l, int32_t *tokens, int32_t *targets, int *T) {
    int t = 1;
    for (int r = l->begin; r < l->end; r++) {
        const td_sft_example *e = &l->set->ex[l->order[l->cursor + r]];
        if (e->n - 1 > t) t = e->n - 1;
    }
    for (int r = l->begin; r < l->end; r++) {
        const td_sft_example *e = &l->set->ex[l->order[l->cursor + r]];
        int32_t *tk = tokens + (size_t)(r - l->begin) * t,
                *tg = targets + (size_t)(r - l->begin) * t;
        for (int i = 0; i < t; i++) {
            int live = i + 1 < e->n;
            tk[i] = i < e->n ? e->ids[i] : 0;
            tg[i] = live && e->mask[i + 1] ? e->ids[i + 1] : -1;
        }
    }
    l->last_real = 0;
    for (int r = l->begin; r < l->end; r++)
        l->last_real += l->set->ex[l->order[l->cursor + r]].n - 1;
    *T = t;
    advance(l);
}

long td_sft_loader_last_real(const td_sft_loader *l) {
    return l->last_real;
}

long td_sft_loader_peek_counted(const td_sft_loader *l, int k) {
    td_sft_loader c = *l; /* a copy that owns a private order when an epoch turns */
    int *order = NULL;
    long sum = 0;
    for (int b = 0; b < k; b++) {
        for (int r = 0; r < c.gb; r++) {
            const td_sft_example *e = &c.set->ex[c.order[c.cursor + r]];
            for (int i = 1; i < e->n; i++)
                sum += e->mask[i];
        }
        if (c.cursor + 2 * c.gb > c.set->n) { /* the next batch is in the next epoch */
            if (!order && !(order = malloc((size_t)c.set->n * sizeof(int)))) break;
            c.order = order;
            c.epoch++;
            c.cursor = 0;
            make_order(&c);
        } else {
            c.cursor += c.gb;
        }
    }
    free(order);
    return sum;
}

void td_sft_loader_get_pos(const td_sft_loader *l, int64_t *epoch, int64_t *cursor) {
    *epoch = l->epoch;
    *cursor = l->cursor;
}

void td_sft_loader_set_pos(td_sft_loader *l, int64_t epoch, int64_t cursor) {
    l->epoch = epoch;
    l->cursor = cursor >= 0 && cursor + l->gb <= l->set->n ? cursor : 0;
    make_order(l);
}

void td_sft_loader_reset(td_sft_loader *l) {
    td_sft_loader_set_pos(l, 0, 0);
}

long td_sft_loader_batches(const td_sft_loader *l) {
    return l->set->n / l->gb;
}
