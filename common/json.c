/* JSON helpers with located error messages (see json.h). */
#include "common/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"

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

td_status td_json_save_file(const char *path, const cJSON *json) {
    char *text = cJSON_Print(json);
    if (!text) return td_error_set(TD_ERR_NOMEM, "out of memory printing JSON for %s", path);
    size_t n = strlen(text);
    text = realloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = 0;
    td_status s = td_fs_write_file_atomic(path, text, n + 1);
    free(text);
    return s;
}
