/* Prepared chat data (see sft_data.h). */
#include "worker/train/sft_data.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/sha256.h"
#include "worker/model/safetensors.h"

#define FORMAT "tandem-chat-v1"

td_status td_sft_prepared_write(const td_sft_set *set, const char *dir, const char *name) {
    size_t T = (size_t)set->tokens, N = (size_t)set->n;
    int32_t *ids = malloc(sizeof *ids * (T ? T : 1));
    uint8_t *mask = malloc(T ? T : 1);
    int64_t *off = malloc(sizeof *off * (N + 1)), *lines = malloc(sizeof *lines * (N ? N : 1));
    td_status s = ids && mask && off && lines
                      ? TD_OK
                      : td_error_set(TD_ERR_NOMEM, "out of memory writing %s/%s", dir, name);
    size_t at = 0;
    for (size_t i = 0; s == TD_OK && i < N; i++) {
        const td_sft_example *e = &set->ex[i];
        off[i] = (int64_t)at;
        lines[i] = e->line;
        memcpy(ids + at, e->ids, sizeof *ids * (size_t)e->n);
        memcpy(mask + at, e->mask, (size_t)e->n);
        at += (size_t)e->n;
    }
    if (s == TD_OK) {
        off[N] = (int64_t)at;
        td_st_writer *w = td_st_writer_new();
        int64_t st[1] = {(int64_t)T}, so[1] = {(int64_t)N + 1}, sl[1] = {(int64_t)N};
        s = w ? TD_OK : td_error_set(TD_ERR_NOMEM, "out of memory");
        /* the widest first: every tensor's bytes start aligned to its type */
        if (s == TD_OK) s = td_st_writer_add(w, "offsets", TD_DT_I64, 1, so, off, 0);
        if (s == TD_OK) s = td_st_writer_add(w, "lines", TD_DT_I64, 1, sl, lines, 0);
        if (s == TD_OK) s = td_st_writer_add(w, "ids", TD_DT_I32, 1, st, ids, 0);
        if (s == TD_OK) s = td_st_writer_add(w, "mask", TD_DT_U8, 1, st, mask, 0);
        if (s == TD_OK) s = td_st_writer_meta(w, "format", FORMAT);
        char path[4200];
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
        if (s == TD_OK) s = td_st_writer_save(w, path);
        td_st_writer_free(&w);
    }
    free(ids);
    free(mask);
    free(off);
    free(lines);
    return s;
}

td_status td_sft_prepared_manifest(const char *dir, const char *tokenizer_sha256,
                                   const char *const *names, const char *const *sources,
                                   const td_sft_set *const *sets, int n) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "format", FORMAT);
    cJSON_AddStringToObject(m, "tokenizer_sha256", tokenizer_sha256);
    cJSON *sp = cJSON_AddObjectToObject(m, "splits");
    td_status s = TD_OK;
    for (int i = 0; s == TD_OK && i < n; i++) {
        char file[300], sha[65];
        snprintf(file, sizeof file, "%s.safetensors", names[i]);
        s = td_sha256_file(sources[i], sha);
        cJSON *e = cJSON_AddObjectToObject(sp, names[i]);
        cJSON_AddStringToObject(e, "file", file);
        cJSON_AddStringToObject(e, "source", sources[i]);
        cJSON_AddStringToObject(e, "source_sha256", sha);
        cJSON_AddNumberToObject(e, "examples", sets[i]->n);
        cJSON_AddNumberToObject(e, "tokens", (double)sets[i]->tokens);
        cJSON_AddNumberToObject(e, "counted", (double)sets[i]->counted);
        cJSON_AddNumberToObject(e, "longest", sets[i]->max_tokens);
    }
    char *text = s == TD_OK ? cJSON_Print(m) : NULL;
    cJSON_Delete(m);
    if (s != TD_OK) return s;
    if (!text) return td_error_set(TD_ERR_NOMEM, "out of memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/chat.json", dir);
    size_t len = strlen(text);
    text[len] = '\n'; /* cJSON_Print's buffer ends in the NUL this overwrites */
    s = td_fs_write_file_atomic(path, text, len + 1);
    free(text);
    return s;
}

int td_sft_is_prepared(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/chat.json", dir);
    return td_fs_is_dir(dir) && td_fs_exists(p);
}

td_status td_sft_prepared_load(const char *dir, const char *name, const char *tokenizer_sha256,
                               int max_tokens, td_sft_overlong policy, td_sft_set *out) {
    memset(out, 0, sizeof *out);
    char p[4200];
    snprintf(p, sizeof p, "%s/chat.json", dir);
    cJSON *m = NULL;
    TD_TRY(td_json_load_file(p, &m));
    const char *fmt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "format"));
    const char *tsha =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "tokenizer_sha256"));
    const cJSON *split =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "splits"), name);
    const char *file = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(split, "file"));
    td_status s = TD_OK;
    if (!fmt || strcmp(fmt, FORMAT))
        s = td_error_set(TD_ERR_FORMAT, "%s: format is not \"%s\" (made by another version?)", p,
                         FORMAT);
    else if (!tsha || strcmp(tsha, tokenizer_sha256))
        s = td_error_set(TD_ERR_INVALID,
                         "%s was tokenized with another tokenizer (tokenizer.json sha256 %.16s..., "
                         "the base's is %.16s...): prepare it again with tandem prep --chat "
                         "--tokenizer BASE",
                         dir, tsha ? tsha : "(none)", tokenizer_sha256);
    else if (!file)
        s = td_error_set(TD_ERR_NOTFOUND, "%s has no split \"%s\"", dir, name);
    char path[4500];
    snprintf(path, sizeof path, "%s/%s", dir, file ? file : "");
    cJSON_Delete(m);
    TD_TRY(s);
    td_st_file *f = NULL;
    TD_TRY(td_st_open(path, &f));
    const td_st_entry *ei = td_st_find(f, "ids"), *em = td_st_find(f, "mask");
    const td_st_entry *eo = td_st_find(f, "offsets"), *el = td_st_find(f, "lines");
    if (!ei || !em || !eo || !el || ei->dtype != TD_DT_I32 || em->dtype != TD_DT_U8 ||
        eo->dtype != TD_DT_I64 || el->dtype != TD_DT_I64 || em->numel != ei->numel ||
        eo->numel != el->numel + 1)
        s = td_error_set(TD_ERR_FORMAT,
                         "%s: expected ids (I32), mask (U8, as many), offsets (I64, examples + "
                         "1) and lines (I64)",
                         path);
    const int32_t *ids = s == TD_OK ? td_st_data(f, ei) : NULL;
    const uint8_t *mask = s == TD_OK ? td_st_data(f, em) : NULL;
    const int64_t *off = s == TD_OK ? td_st_data(f, eo) : NULL;
    const int64_t *lines = s == TD_OK ? td_st_data(f, el) : NULL;
    for (size_t i = 0; s == TD_OK && i < el->numel; i++) {
        int64_t a = off[i], b = off[i + 1];
        if (a < 0 || b <= a || (size_t)b > ei->numel || b - a > (1 << 30)) {
            s = td_error_set(TD_ERR_FORMAT, "%s: example %zu has offsets [%lld, %lld)", path, i,
                             (long long)a, (long long)b);
            break;
        }
        s = td_sft_set_add(out, ids + a, mask + a, (int)(b - a), (long)lines[i], max_tokens,
                           policy);
    }
    td_st_close(&f);
    if (s != TD_OK) td_sft_set_free(out);
    return s;
}
