/* JSON helpers with located error messages (see json.h). */
#include "common/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/grow.h"

td_status td_json_load_file(const char *path, cJSON **out) {
    char *text = NULL;
    size_t len = 0;
    TD_TRY(td_fs_read_file(path, &text, &len));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!j) {
        size_t off = end ? (size_t)(end - text) : 0;
        int line = 1;
        for (size_t i = 0; i < off && i < len; i++)
            line += text[i] == '\n';
        free(text);
        return td_error_set(TD_ERR_INVALID, "%s: invalid JSON near line %d (byte %zu)", path, line,
                            off);
    }
    free(text);
    *out = j;
    return TD_OK;
}

static td_status lookup(const cJSON *obj, const char *where, const char *key, int required,
                        const cJSON **item) {
    *item = NULL;
    if (!cJSON_IsObject(obj))
        return td_error_set(TD_ERR_INVALID, "%s: expected a JSON object", where);
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return td_error_set(TD_ERR_INVALID, "%s: missing required key \"%s\"", where, key);
        return TD_OK;
    }
    *item = it;
    return TD_OK;
}

td_status td_json_get_int(const cJSON *obj, const char *where, const char *key, int required,
                          int64_t *out) {
    const cJSON *it;
    TD_TRY(lookup(obj, where, key, required, &it));
    if (!it) return TD_OK;
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || v != floor(v) || fabs(v) > 9e15)
        return td_error_set(TD_ERR_INVALID, "%s.%s: expected an integer", where, key);
    *out = (int64_t)v;
    return TD_OK;
}

td_status td_json_get_double(const cJSON *obj, const char *where, const char *key, int required,
                             double *out) {
    const cJSON *it;
    TD_TRY(lookup(obj, where, key, required, &it));
    if (!it) return TD_OK;
    if (!cJSON_IsNumber(it))
        return td_error_set(TD_ERR_INVALID, "%s.%s: expected a number", where, key);
    *out = it->valuedouble;
    return TD_OK;
}

td_status td_json_get_bool(const cJSON *obj, const char *where, const char *key, int required,
                           int *out) {
    const cJSON *it;
    TD_TRY(lookup(obj, where, key, required, &it));
    if (!it) return TD_OK;
    if (!cJSON_IsBool(it))
        return td_error_set(TD_ERR_INVALID, "%s.%s: expected true or false", where, key);
    *out = cJSON_IsTrue(it);
    return TD_OK;
}

td_status td_json_get_string(const cJSON *obj, const char *where, const char *key, int required,
                             const char **out) {
    const cJSON *it;
    TD_TRY(lookup(obj, where, key, required, &it));
    if (!it) return TD_OK;
    if (!cJSON_IsString(it))
        return td_error_set(TD_ERR_INVALID, "%s.%s: expected a string", where, key);
    *out = it->valuestring;
    return TD_OK;
}

int td_edit_distance(const char *a, const char *b) {
    int la = (int)strnlen(a, 63), lb = (int)strnlen(b, 63);
    int d[64][64];
    for (int i = 0; i <= la; i++)
        d[i][0] = i;
    for (int j = 0; j <= lb; j++)
        d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            /* a swap of two neighbours ("stpes") counts as one edit */
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < d[i][j])
                d[i][j] = d[i - 2][j - 2] + 1;
        }
    return d[la][lb];
}

td_status td_json_check_keys(const cJSON *obj, const char *where, const char *const *allowed,
                             const char *const *elsewhere) {
    if (!cJSON_IsObject(obj)) return TD_OK; /* the type is checked where the block is read */
    for (const cJSON *it = obj->child; it; it = it->next) {
        const char *k = it->string ? it->string : "";
        int known = 0, best = 3;
        const char *near = NULL;
        for (int i = 0; allowed[i] && !known; i++) {
            if (!strcmp(k, allowed[i])) known = 1;
            int d = td_edit_distance(k, allowed[i]);
            if (d < best) best = d, near = allowed[i];
        }
        if (known) continue;
        if (near)
            return td_error_set(TD_ERR_INVALID, "%s: unknown key \"%s\": did you mean \"%s\"?",
                                where, k, near);
        for (int i = 0; elsewhere && elsewhere[i]; i++) {
            const char *dot = strrchr(elsewhere[i], '.');
            if (dot && td_edit_distance(k, dot + 1) <= 1)
                return td_error_set(TD_ERR_INVALID,
                                    "%s: unknown key \"%s\": did you mean \"%s\" (in another "
                                    "block)?",
                                    where, k, elsewhere[i]);
        }
        char list[512] = "";
        size_t len = 0;
        for (int i = 0; allowed[i] && len < sizeof list - 40; i++)
            len +=
                (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", allowed[i]);
        return td_error_set(TD_ERR_INVALID, "%s: unknown key \"%s\" (known here: %s)", where, k,
                            list);
    }
    return TD_OK;
}

td_status td_json_save_file(const char *path, const cJSON *json) {
    char *text = cJSON_Print(json);
    if (!text) return td_error_set(TD_ERR_NOMEM, "out of memory printing JSON for %s", path);
    size_t n = strlen(text), cap = n + 1;
    td_status s = TD_GROW_EXACT(text, cap, n + 2); /* room for the final newline */
    if (s != TD_OK) {
        free(text);
        return td_error_wrap(s, "writing %s: ", path);
    }
    text[n] = '\n';
    text[n + 1] = 0;
    s = td_fs_write_file_atomic(path, text, n + 1);
    free(text);
    return s;
}
