/* JSON helpers over cJSON that report bad input with the file and key path, e.g.
 * "job.json: model.hidden_size: expected an integer, got a string". */
#ifndef TD_JSON_H
#define TD_JSON_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "common/status.h"

/* Parses the file at `path`; on success *out is owned by the caller (cJSON_Delete). */
td_status td_json_load_file(const char *path, cJSON **out);

/* Look up `key` in object `obj` (which is at `where`, a label used in messages). A missing
 * key leaves *out unchanged when `required` is 0 and is an error otherwise. */
td_status td_json_get_int(const cJSON *obj, const char *where, const char *key, int required,
                          int64_t *out);
td_status td_json_get_double(const cJSON *obj, const char *where, const char *key, int required,
                             double *out);
td_status td_json_get_bool(const cJSON *obj, const char *where, const char *key, int required,
                           int *out);
/* *out points into `obj`; copy it if it must outlive the document. */
td_status td_json_get_string(const cJSON *obj, const char *where, const char *key, int required,
                             const char **out);

/* Every key of object `obj` (at `where`) must be in `allowed` (NULL-terminated): an unknown
 * one is TD_ERR_INVALID naming it, with the nearest allowed key ("did you mean") when one is
 * within two edits, or else a key of `elsewhere` (NULL-terminated "block.key" strings, may be
 * NULL) that matches it, so that a key put in the wrong block is pointed to its place. */
td_status td_json_check_keys(const cJSON *obj, const char *where, const char *const *allowed,
                             const char *const *elsewhere);

/* The edit (Levenshtein) distance between two short strings (at most 63 bytes are read). */
int td_edit_distance(const char *a, const char *b);

/* Writes `json` (pretty-printed) to `path` atomically: a temp file, fsync, rename. */
td_status td_json_save_file(const char *path, const cJSON *json);

#endif
