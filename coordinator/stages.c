/* Job files and pipelines (see stages.h). */
#include "coordinator/stages.h"

#include <dirent.h>
#include <libgen.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/json.h"

static const char *const k_sections[] = {"pipeline", "prep",  "serve", "finetune",
                                         "distill",  "bench", NULL};

const char *td_stage_kind(const cJSON *doc) {
    if (!cJSON_IsObject(doc)) return NULL;
    for (int i = 0; k_sections[i]; i++)
        if (cJSON_GetObjectItemCaseSensitive(doc, k_sections[i])) return k_sections[i];
    return cJSON_GetObjectItemCaseSensitive(doc, "model") ? "train" : NULL;
}

int td_stage_runs(const char *kind) {
    return !strcmp(kind, "prep") || !strcmp(kind, "train") || !strcmp(kind, "finetune") ||
           !strcmp(kind, "serve");
}

td_status td_stage_check_input(const char *kind, const char *key, const char *from) {
    static const struct {
        const char *kind, *key, *from, *what;
    } k_inputs[] = {
        {"prep", "prep.tokenizer", "train finetune", "a checkpoint's tokenizer"},
        {"train", "data.train", "prep", "prep's output"},
        {"train", "data.val", "prep", "prep's output"},
        {"finetune", "data.train", "prep", "prep's output"},
        {"finetune", "data.val", "prep", "prep's output"},
        {"finetune", "finetune.base", "train finetune", "a checkpoint"},
        {"serve", "serve.model", "train finetune", "a checkpoint"},
        {"serve", "serve.adapters.", "finetune", "an adapter"},
    };
    char known[400] = "";
    size_t len = 0;
    for (size_t i = 0; i < sizeof k_inputs / sizeof *k_inputs; i++) {
        if (strcmp(k_inputs[i].kind, kind)) continue;
        size_t kl = strlen(k_inputs[i].key);
        int prefix = k_inputs[i].key[kl - 1] == '.';
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s%s", len ? ", " : "",
                                k_inputs[i].key, prefix ? "NAME" : "");
        if (prefix ? strncmp(key, k_inputs[i].key, kl) || !key[kl] || strchr(key + kl, '.')
                   : strcmp(key, k_inputs[i].key))
            continue;
        char fk[32];
        snprintf(fk, sizeof fk, " %s ", from);
        char list[40];
        snprintf(list, sizeof list, " %s ", k_inputs[i].from);
        if (!strstr(list, fk))
            return td_error_set(
                TD_ERR_INVALID,
                "%s takes %s (from a %s stage), not a %s stage's "
                "output",
                key, k_inputs[i].what,
                strchr(k_inputs[i].from, ' ') ? "train or finetune" : k_inputs[i].from, from);
        return TD_OK;
    }
    return td_error_set(TD_ERR_INVALID, "%s is not an input of a %s stage (%s)", key, kind,
                        known[0] ? known : "it takes none");
}

/* ---------------------------------------------------------------------------------------- */
/* the options a prep or serve section may set: key (the option with '-' for '_'), type */

typedef enum { OPT_STR, OPT_NUM, OPT_BOOL, OPT_STRS, OPT_POSITIONAL, OPT_ADAPTERS } opt_type;
typedef struct {
    const char *key;
    opt_type type;
    int required;
} opt;

static const opt k_prep[] = {{"inputs", OPT_POSITIONAL, 1},
                             {"out", OPT_STR, 1},
                             {"delimiter", OPT_STR, 0},
                             {"format", OPT_STR, 0},
                             {"text_field", OPT_STR, 0},
                             {"min_chars", OPT_NUM, 0},
                             {"max_chars", OPT_NUM, 0},
                             {"min_letter_ratio", OPT_NUM, 0},
                             {"max_symbol_ratio", OPT_NUM, 0},
                             {"max_dup_line_frac", OPT_NUM, 0},
                             {"max_top_ngram_frac", OPT_NUM, 0},
                             {"no_fix_controls", OPT_BOOL, 0},
                             {"no_nfc", OPT_BOOL, 0},
                             {"no_exact_dedup", OPT_BOOL, 0},
                             {"near_threshold", OPT_NUM, 0},
                             {"tokenizer", OPT_STR, 0},
                             {"vocab_size", OPT_NUM, 0},
                             {"special", OPT_STRS, 0},
                             {"val_fraction", OPT_NUM, 0},
                             {"shard_tokens", OPT_NUM, 0},
                             {"chat", OPT_BOOL, 0},
                             {"chat_val", OPT_STR, 0},
                             {NULL, 0, 0}};

static const opt k_serve[] = {{"model", OPT_STR, 1},
                              {"name", OPT_STR, 0},
                              {"adapters", OPT_ADAPTERS, 0},
                              {"tp", OPT_NUM, 0},
                              {"max_seqs", OPT_NUM, 0},
                              {"kv_mb", OPT_NUM, 0},
                              {"int8", OPT_BOOL, 0},
                              {"int8_rtn", OPT_BOOL, 0},
                              {"lm_head_int16", OPT_BOOL, 0},
                              {"bf16", OPT_BOOL, 0},
                              {"no_verify", OPT_BOOL, 0},
                              {"heartbeat_ms", OPT_NUM, 0},
                              {"tp_timeout", OPT_NUM, 0},
                              {"device", OPT_STR, 0},
                              {"calib_seqs", OPT_NUM, 0},
                              {"calib_len", OPT_NUM, 0},
                              {NULL, 0, 0}};

static const opt *table_of(const char *kind) {
    return !strcmp(kind, "prep") ? k_prep : !strcmp(kind, "serve") ? k_serve : NULL;
}

static const char *type_name(opt_type t) {
    switch (t) {
    case OPT_STR:
        return "a string";
    case OPT_NUM:
        return "a number";
    case OPT_BOOL:
        return "true or false";
    case OPT_STRS:
    case OPT_POSITIONAL:
        return "a list of strings";
    case OPT_ADAPTERS:
        return "an object of adapter names and directories";
    }
    return "?";
}

static int is_strings(const cJSON *v, int min) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < min) return 0;
    for (const cJSON *e = v->child; e; e = e->next)
        if (!cJSON_IsString(e) || !e->valuestring[0]) return 0;
    return 1;
}

static int type_fits(opt_type t, const cJSON *v) {
    switch (t) {
    case OPT_STR:
        return cJSON_IsString(v) && v->valuestring[0];
    case OPT_NUM:
        return cJSON_IsNumber(v) && isfinite(v->valuedouble);
    case OPT_BOOL:
        return cJSON_IsBool(v);
    case OPT_STRS:
        return is_strings(v, 0);
    case OPT_POSITIONAL:
        return is_strings(v, 1);
    case OPT_ADAPTERS:
        if (!cJSON_IsObject(v)) return 0;
        for (const cJSON *e = v->child; e; e = e->next)
            if (!cJSON_IsString(e) || !e->valuestring[0] || !e->string[0] || strchr(e->string, '='))
                return 0;
        return 1;
    }
    return 0;
}

td_status td_stage_check(const char *kind, const cJSON *doc, const char *where) {
    int sections = cJSON_GetObjectItemCaseSensitive(doc, "model") ? 1 : 0;
    for (int i = 0; k_sections[i]; i++)
        sections += cJSON_GetObjectItemCaseSensitive(doc, k_sections[i]) != NULL;
    if (!strcmp(kind, "finetune") && cJSON_GetObjectItemCaseSensitive(doc, "model")) sections--;
    if (sections > 1)
        return td_error_set(TD_ERR_INVALID,
                            "%s: more than one command section (pipeline, prep, serve, finetune, "
                            "distill, bench, model): a job file describes one job",
                            where);
    const opt *t = table_of(kind);
    if (!t) return TD_OK;
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, kind);
    if (!cJSON_IsObject(sec))
        return td_error_set(TD_ERR_INVALID, "%s: \"%s\" must be an object", where, kind);
    for (const cJSON *e = sec->child; e; e = e->next) {
        const opt *o = t;
        while (o->key && strcmp(o->key, e->string))
            o++;
        if (!o->key) {
            char known[600] = "";
            size_t len = 0;
            for (o = t; o->key && len + 40 < sizeof known; o++)
                len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", o == t ? "" : ", ",
                                        o->key);
            return td_error_set(TD_ERR_INVALID, "%s: %s.%s is not an option of tandem %s (%s)",
                                where, kind, e->string, kind, known);
        }
        if (!type_fits(o->type, e))
            return td_error_set(TD_ERR_INVALID, "%s: %s.%s must be %s", where, kind, e->string,
                                type_name(o->type));
    }
    for (const opt *o = t; o->key; o++)
        if (o->required && !cJSON_GetObjectItemCaseSensitive(sec, o->key))
            return td_error_set(TD_ERR_INVALID, "%s: %s.%s is required", where, kind, o->key);
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* command lines */

void td_argv_free(td_argv *a) {
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = 0;
    a->cap = 0;
}

static td_status push(td_argv *a, const char *s) {
    TD_TRY(TD_GROW(a->v, a->cap, (size_t)a->n + 2));
    if (!(a->v[a->n] = strdup(s))) return td_error_set(TD_ERR_NOMEM, "out of memory");
    a->v[++a->n] = NULL;
    return TD_OK;
}

static td_status push_flag(td_argv *a, const char *key) {
    char f[80] = "--";
    snprintf(f + 2, sizeof f - 2, "%s", key);
    for (char *p = f + 2; *p; p++)
        if (*p == '_') *p = '-';
    return push(a, f);
}

static td_status push_num(td_argv *a, double v) {
    char b[40];
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(b, sizeof b, "%.0f", v);
    else if (snprintf(b, sizeof b, "%.15g", v) > 0 && strtod(b, NULL) != v)
        snprintf(b, sizeof b, "%.17g", v); /* the shortest text that reads back the same */
    return push(a, b);
}

static td_status options(td_argv *a, const char *kind, const cJSON *doc) {
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, kind);
    const cJSON *positional = NULL;
    for (const opt *o = table_of(kind); o->key; o++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sec, o->key);
        if (!v) continue;
        switch (o->type) {
        case OPT_STR:
            TD_TRY(push_flag(a, o->key));
            TD_TRY(push(a, v->valuestring));
            break;
        case OPT_NUM:
            TD_TRY(push_flag(a, o->key));
            TD_TRY(push_num(a, v->valuedouble));
            break;
        case OPT_BOOL:
            if (cJSON_IsTrue(v)) TD_TRY(push_flag(a, o->key));
            break;
        case OPT_STRS:
            for (const cJSON *e = v->child; e; e = e->next) {
                TD_TRY(push_flag(a, o->key));
                TD_TRY(push(a, e->valuestring));
            }
            break;
        case OPT_POSITIONAL:
            positional = v;
            break;
        case OPT_ADAPTERS:
            for (const cJSON *e = v->child; e; e = e->next) {
                char b[2200];
                snprintf(b, sizeof b, "%s=%s", e->string, e->valuestring);
                TD_TRY(push(a, "--adapter"));
                TD_TRY(push(a, b));
            }
            break;
        }
    }
    if (positional) {
        TD_TRY(push(a, "--")); /* a path that starts with '-' stays a path */
        for (const cJSON *e = positional->child; e; e = e->next)
            TD_TRY(push(a, e->valuestring));
    }
    return TD_OK;
}

td_status td_stage_argv(const char *kind, const char *file, const cJSON *doc,
                        const td_stage_env *env, td_argv *out) {
    *out = (td_argv){0};
    td_status s = push(out, kind);
    if (s == TD_OK && (!strcmp(kind, "train") || !strcmp(kind, "finetune"))) {
        s = push(out, file);
        if (s == TD_OK && env->resume) s = push(out, "--resume");
    } else if (s == TD_OK && (!strcmp(kind, "prep") || !strcmp(kind, "serve"))) {
        s = td_stage_check(kind, doc, file);
        if (s == TD_OK && !strcmp(kind, "serve")) {
            char names[512];
            td_stage_serve_names(doc, names, sizeof names);
            char *comma = strchr(names, ',');
            if (comma) *comma = 0;
            s = push(out, "--name");
            if (s == TD_OK) s = push(out, names);
            if (s == TD_OK) s = push(out, "--router");
            if (s == TD_OK) s = push(out, env->router_back ? env->router_back : "");
            if (s == TD_OK && env->insecure) s = push(out, "--insecure");
            /* the name is the coordinator's (the same rule as serve's own default) */
            cJSON *copy = cJSON_Duplicate(doc, 1);
            if (!copy) s = td_error_set(TD_ERR_NOMEM, "out of memory");
            if (s == TD_OK) {
                cJSON_DeleteItemFromObjectCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(copy, "serve"), "name");
                s = options(out, kind, copy);
            }
            cJSON_Delete(copy);
        } else if (s == TD_OK) {
            s = options(out, kind, doc);
        }
    } else if (s == TD_OK) {
        s = td_error_set(TD_ERR_INVALID, "%s: the coordinator does not run %s jobs yet", file,
                         kind);
    }
    if (s != TD_OK) td_argv_free(out);
    return s;
}

/* ---------------------------------------------------------------------------------------- */

td_status td_stage_set(cJSON *doc, const char *key, const char *value) {
    char k[256];
    snprintf(k, sizeof k, "%s", key);
    cJSON *at = doc;
    char *part = k;
    for (char *dot; (dot = strchr(part, '.')); part = dot + 1) {
        *dot = 0;
        cJSON *next = cJSON_GetObjectItemCaseSensitive(at, part);
        if (!next) next = cJSON_AddObjectToObject(at, part);
        if (!cJSON_IsObject(next))
            return td_error_set(TD_ERR_INVALID, "input %s: %s is not an object", key, part);
        at = next;
    }
    if (!*part) return td_error_set(TD_ERR_INVALID, "input %s: an empty key", key);
    cJSON *v = cJSON_CreateString(value);
    if (!v) return td_error_set(TD_ERR_NOMEM, "out of memory");
    if (cJSON_GetObjectItemCaseSensitive(at, part))
        cJSON_ReplaceItemInObjectCaseSensitive(at, part, v);
    else
        cJSON_AddItemToObject(at, part, v);
    return TD_OK;
}

/* p resolved against dir (unless absolute) into out; an error when it does not fit. */
static td_status join(const char *dir, const char *p, char *out, size_t n) {
    int len = p[0] == '/' ? snprintf(out, n, "%s", p) : snprintf(out, n, "%s/%s", dir, p);
    if (len < 0 || (size_t)len >= n)
        return td_error_set(TD_ERR_INVALID, "%s/%s: a path longer than %zu bytes", dir, p, n - 1);
    return TD_OK;
}

td_status td_stage_output(const char *kind, const cJSON *doc, const char *dir, char *out,
                          size_t n) {
    if (!strcmp(kind, "prep")) {
        const char *o = cJSON_GetStringValue(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "prep"), "out"));
        if (!o) return td_error_set(TD_ERR_INVALID, "the prep stage names no prep.out");
        return join(dir, o, out, n);
    }
    if (strcmp(kind, "train") && strcmp(kind, "finetune"))
        return td_error_set(TD_ERR_INVALID, "a %s stage hands nothing on to another stage", kind);
    const char *ck = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(doc, "checkpoint"), "dir"));
    char root[2048];
    TD_TRY(join(dir, ck ? ck : "runs/default", root, sizeof root));
    DIR *dp = opendir(root);
    char best[256] = "";
    for (struct dirent *e; dp && (e = readdir(dp));)
        if (!strncmp(e->d_name, "step_", 5) && strcmp(e->d_name, best) > 0 &&
            strspn(e->d_name + 5, "0123456789") == strlen(e->d_name + 5))
            snprintf(best, sizeof best, "%s", e->d_name);
    if (dp) closedir(dp);
    if (!best[0]) return td_error_set(TD_ERR_NOTFOUND, "%s holds no checkpoint (step_*)", root);
    return join(root, best, out, n);
}

void td_stage_serve_names(const cJSON *doc, char *out, size_t n) {
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, "serve");
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sec, "name"));
    char buf[1024] = "";
    if (!name) { /* the model directory's name, its parent's for a step_* directory */
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sec, "model"));
        snprintf(buf, sizeof buf, "%s", m ? m : "model");
        size_t len = strlen(buf);
        while (len > 1 && buf[len - 1] == '/')
            buf[--len] = 0;
        char *base = strrchr(buf, '/');
        if (base && !strncmp(base + 1, "step_", 5) && base > buf) {
            *base = 0;
            base = strrchr(buf, '/');
        } else if (!base && !strncmp(buf, "step_", 5)) {
            snprintf(buf, sizeof buf, "model");
        }
        name = base ? base + 1 : buf;
    }
    size_t len = (size_t)snprintf(out, n, "%s", name);
    const cJSON *ad = cJSON_GetObjectItemCaseSensitive(sec, "adapters");
    for (const cJSON *e = cJSON_IsObject(ad) ? ad->child : NULL; e && len < n; e = e->next)
        len += (size_t)snprintf(out + len, n - len, ",%s", e->string);
}

/* ---------------------------------------------------------------------------------------- */
/* pipelines */

static int stage_index(const td_pipeline *p, int before, const char *name) {
    for (int i = 0; i < before; i++)
        if (!strcmp(p->stage[i].name, name)) return i;
    return -1;
}

static td_status add_after(td_stage_spec *s, int i) {
    for (int k = 0; k < s->n_after; k++)
        if (s->after[k] == i) return TD_OK;
    s->after[s->n_after++] = i;
    return TD_OK;
}

static td_status load_stage(const cJSON *st, const char *base, const char *file, int slots,
                            td_pipeline *p, int i) {
    td_stage_spec *s = &p->stage[i];
    char where[1200];
    snprintf(where, sizeof where, "%s: stage %d", file, i + 1);
    static const char *const keys[] = {"name",    "job",    "ranks", "priority", "max_restarts",
                                       "limit_s", "inputs", "after", NULL};
    TD_TRY(td_json_check_keys(st, where, keys, NULL));
    const char *name = NULL, *job = NULL;
    TD_TRY(td_json_get_string(st, where, "name", 1, &name));
    TD_TRY(td_json_get_string(st, where, "job", 1, &job));
    if (!name[0] || strlen(name) >= sizeof s->name ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789-_") != strlen(name))
        return td_error_set(TD_ERR_INVALID, "%s: name \"%s\": letters, digits, - and _ (1-63)",
                            where, name);
    snprintf(where, sizeof where, "%s: stage %s", file, name);
    if (stage_index(p, i, name) >= 0)
        return td_error_set(TD_ERR_INVALID, "%s: a stage of this name comes earlier", where);
    snprintf(s->name, sizeof s->name, "%s", name);
    TD_TRY(join(base, job, s->job, sizeof s->job));
    cJSON *doc = NULL;
    TD_TRY(td_json_load_file(s->job, &doc));
    const char *kind = td_stage_kind(doc);
    td_status r = TD_OK;
    if (!kind || !strcmp(kind, "pipeline"))
        r = td_error_set(TD_ERR_INVALID,
                         "%s: %s is not a job file (prep, train, finetune or serve)", where,
                         s->job);
    if (r == TD_OK && !td_stage_runs(kind))
        r = td_error_set(TD_ERR_INVALID, "%s: the coordinator does not run %s jobs yet", where,
                         kind);
    if (r == TD_OK) {
        snprintf(s->kind, sizeof s->kind, "%s", kind);
        r = td_stage_check(kind, doc, s->job);
    }
    cJSON_Delete(doc);
    TD_TRY(r);
    int64_t ranks = 1, prio = 0, restarts = 0;
    TD_TRY(td_json_get_int(st, where, "ranks", 0, &ranks));
    TD_TRY(td_json_get_int(st, where, "priority", 0, &prio));
    TD_TRY(td_json_get_int(st, where, "max_restarts", 0, &restarts));
    TD_TRY(td_json_get_double(st, where, "limit_s", 0, &s->limit_s));
    if (ranks < 1)
        return td_error_set(TD_ERR_INVALID, "%s: ranks %lld: at least 1", where, (long long)ranks);
    if (ranks > slots)
        return td_error_set(TD_ERR_INVALID, "%s: ranks %lld; the pool has %d slots", where,
                            (long long)ranks, slots);
    if (restarts < 0 || restarts > 1000 || prio < -1000000 || prio > 1000000 || !(s->limit_s >= 0))
        return td_error_set(TD_ERR_INVALID,
                            "%s: priority -1000000..1000000, max_restarts 0..1000, limit_s >= 0",
                            where);
    s->ranks = (int)ranks, s->priority = (int)prio, s->max_restarts = (int)restarts;
    const cJSON *after = cJSON_GetObjectItemCaseSensitive(st, "after");
    if (after && !is_strings(after, 0))
        return td_error_set(TD_ERR_INVALID, "%s: after must be a list of stage names", where);
    for (const cJSON *e = after ? after->child : NULL; e; e = e->next) {
        int k = stage_index(p, i, e->valuestring);
        if (k < 0)
            return td_error_set(TD_ERR_INVALID, "%s: after \"%s\": no earlier stage of that name",
                                where, e->valuestring);
        if (!strcmp(p->stage[k].kind, "serve"))
            return td_error_set(TD_ERR_INVALID,
                                "%s: after \"%s\": a serve stage does not end, nothing can "
                                "follow it",
                                where, e->valuestring);
        add_after(s, k);
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(st, "inputs");
    if (in && !cJSON_IsObject(in))
        return td_error_set(TD_ERR_INVALID,
                            "%s: inputs must be an object {\"dotted.key\": \"stage\"}", where);
    for (const cJSON *e = in ? in->child : NULL; e; e = e->next) {
        int k = cJSON_IsString(e) ? stage_index(p, i, e->valuestring) : -1;
        if (k < 0)
            return td_error_set(TD_ERR_INVALID, "%s: inputs.%s: not the name of an earlier stage",
                                where, e->string);
        if (strcmp(p->stage[k].kind, "prep") && strcmp(p->stage[k].kind, "train") &&
            strcmp(p->stage[k].kind, "finetune"))
            return td_error_set(TD_ERR_INVALID,
                                "%s: inputs.%s: stage %s (%s) hands nothing on (prep hands its "
                                "output directory, train and finetune their last checkpoint)",
                                where, e->string, e->valuestring, p->stage[k].kind);
        if (td_stage_check_input(s->kind, e->string, p->stage[k].kind) != TD_OK) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", td_error_message());
            return td_error_set(TD_ERR_INVALID, "%s: inputs: %s", where, msg);
        }
        if (s->n_inputs >= TD_STAGE_MAX_INPUTS || strlen(e->string) >= sizeof s->input_key[0] ||
            !e->string[0])
            return td_error_set(TD_ERR_INVALID, "%s: inputs: at most %d keys of under 128 bytes",
                                where, TD_STAGE_MAX_INPUTS);
        snprintf(s->input_key[s->n_inputs], sizeof s->input_key[0], "%s", e->string);
        s->input_from[s->n_inputs++] = k;
        add_after(s, k);
    }
    return TD_OK;
}

td_status td_pipeline_load(const char *file, int slots, td_pipeline *out) {
    memset(out, 0, sizeof *out);
    cJSON *doc = NULL;
    TD_TRY(td_json_load_file(file, &doc));
    char dirbuf[1024], base[1024];
    snprintf(dirbuf, sizeof dirbuf, "%s", file);
    snprintf(base, sizeof base, "%s", dirname(dirbuf));
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(doc, "pipeline");
    static const char *const keys[] = {"name", "stages", NULL};
    td_status s = cJSON_IsObject(pl)
                      ? td_json_check_keys(pl, file, keys, NULL)
                      : td_error_set(TD_ERR_INVALID, "%s: \"pipeline\" must be an object", file);
    const char *name = NULL;
    if (s == TD_OK) s = td_json_get_string(pl, file, "name", 1, &name);
    if (s == TD_OK && (!name[0] || strlen(name) >= sizeof out->name ||
                       strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                    "0123456789-_.") != strlen(name)))
        s = td_error_set(TD_ERR_INVALID,
                         "%s: pipeline.name \"%s\": letters, digits, '-', '_' and '.' (1-63)", file,
                         name);
    if (s == TD_OK) snprintf(out->name, sizeof out->name, "%s", name);
    const cJSON *st = s == TD_OK ? cJSON_GetObjectItemCaseSensitive(pl, "stages") : NULL;
    if (s == TD_OK && (!cJSON_IsArray(st) || cJSON_GetArraySize(st) < 1 ||
                       cJSON_GetArraySize(st) > TD_PIPELINE_MAX_STAGES))
        s = td_error_set(TD_ERR_INVALID, "%s: pipeline.stages: a list of 1 to %d stages", file,
                         TD_PIPELINE_MAX_STAGES);
    for (const cJSON *e = s == TD_OK ? st->child : NULL; e && s == TD_OK; e = e->next) {
        if (!cJSON_IsObject(e)) {
            s = td_error_set(TD_ERR_INVALID, "%s: stage %d is not an object", file, out->n + 1);
            break;
        }
        s = load_stage(e, base, file, slots, out, out->n);
        if (s == TD_OK) out->n++;
    }
    cJSON_Delete(doc);
    return s;
}
