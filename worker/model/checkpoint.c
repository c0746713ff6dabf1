/* Checkpoint directories (see checkpoint.h). */
#include "worker/model/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/log.h"
#include "common/sha256.h"
#include "worker/model/lora.h"
#include "worker/model/safetensors.h"

static td_status write_tensors(const td_model *m, const float *base, const char *suffix,
                               const char *path) {
    int nt;
    const td_param_tensor *t = td_model_tensors(m, &nt);
    td_st_writer *w = td_st_writer_new();
    if (!w) return td_error_set(TD_ERR_NOMEM, "out of memory");
    td_status s = td_st_writer_meta(w, "format", "pt");
    char name[200];
    for (int i = 0; i < nt && s == TD_OK; i++) {
        snprintf(name, sizeof name, "%s%s", t[i].name, suffix);
        s = td_st_writer_add(w, name, TD_DT_F32, t[i].ndim, t[i].shape, base + t[i].offset,
                             t[i].transposed);
    }
    if (s == TD_OK) s = td_st_writer_save(w, path);
    td_st_writer_free(&w);
    return s;
}

static int is_step_dir(const char *name, long *step) {
    char *end;
    if (strncmp(name, "step_", 5) != 0) return 0;
    long v = strtol(name + 5, &end, 10);
    if (*end || end == name + 5) return 0;
    *step = v;
    return 1;
}

/* Removes all but the newest `keep` step directories up to `current` (never `current`
 * itself), and temporary directories left by interrupted saves. */
static void prune(const char *root, int keep, long current) {
    DIR *d = opendir(root);
    if (!d) return;
    long steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s;
        if (is_step_dir(e->d_name, &s) && s <= current && n < 4096) steps[n++] = s;
        if (!strncmp(e->d_name, ".tmp-step_", 10)) {
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", root, e->d_name);
            td_fs_remove_tree(p);
        }
    }
    closedir(d);
    if (keep <= 0) return;
    /* sort descending */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
            long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    for (int i = keep; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/step_%08ld", root, steps[i]);
        if (td_fs_remove_tree(p) != TD_OK) TD_LOG_WARN("could not remove old checkpoint %s", p);
    }
}

const char td_chatml_template[] =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* The files SHA256SUMS covers, in the order written; those absent are skipped. */
static const char *const k_sum_files[] = {
    "config.json",           "adapter_config.json",   "adapter_model.safetensors",
    "model.safetensors",     "optimizer.safetensors", "tokenizer.json",
    "tokenizer_config.json", "trainer_state.json",    NULL};

/* SHA256SUMS in `sha256sum` format ("<64 hex>  <name>"), so `sha256sum -c` checks it too. */
static td_status write_sums(const char *dir) {
    char text[2048] = "", p[4200], hex[65];
    size_t len = 0;
    for (int i = 0; k_sum_files[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, k_sum_files[i]);
        if (!td_fs_exists(p)) continue;
        TD_TRY(td_sha256_file(p, hex));
        len += (size_t)snprintf(text + len, sizeof text - len, "%s  %s\n", hex, k_sum_files[i]);
    }
    snprintf(p, sizeof p, "%s/SHA256SUMS", dir);
    return td_fs_write_file_atomic(p, text, len);
}

td_status td_checkpoint_verify(const char *dir, int *verified) {
    char p[4200], want[65], got[65], name[256];
    if (verified) *verified = 0;
    snprintf(p, sizeof p, "%s/SHA256SUMS", dir);
    if (!td_fs_exists(p)) return TD_OK; /* written before checksums, or by another tool */
    char *text;
    TD_TRY(td_fs_read_file(p, &text, NULL));
    td_status s = TD_OK;
    int n = 0;
    for (char *line = text; s == TD_OK && line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!*line) {
            line = next;
            continue;
        }
        if (sscanf(line, "%64[0-9a-f]  %255[^/\n]", want, name) != 2 || strlen(want) != 64) {
            s = td_error_set(TD_ERR_FORMAT, "%s: line \"%.80s\" is not \"<sha256>  <file>\"", p,
                             line);
            break;
        }
        snprintf(p, sizeof p, "%s/%s", dir, name);
        if (!td_fs_exists(p)) {
            s = td_error_set(TD_ERR_FORMAT,
                             "checkpoint %s: %s is listed in SHA256SUMS but missing: the "
                             "checkpoint is incomplete",
                             dir, name);
            break;
        }
        s = td_sha256_file(p, got);
        if (s == TD_OK && strcmp(want, got))
            s = td_error_set(TD_ERR_FORMAT,
                             "checkpoint %s: %s does not match its sha256 in SHA256SUMS (the "
                             "file changed or was corrupted after it was written); restore it "
                             "from a copy, or pass --no-verify to load it as it is",
                             dir, name);
        n++;
        line = next;
    }
    free(text);
    if (s == TD_OK && verified) *verified = n;
    return s;
}

td_status td_checkpoint_check(const char *dir, int skip) {
    if (skip) {
        TD_LOG_WARN("checkpoint %s: checksums not verified (--no-verify)", dir);
        return TD_OK;
    }
    int n = 0;
    TD_TRY(td_checkpoint_verify(dir, &n));
    if (n)
        TD_LOG_INFO("checkpoint %s: %d files match SHA256SUMS", dir, n);
    else
        TD_LOG_WARN("checkpoint %s has no SHA256SUMS (written before checksums, or by another "
                    "tool): its files are not verified",
                    dir);
    return TD_OK;
}

/* The adapter's AdamW moments: "<adapter tensor>.exp_avg", ".exp_avg_sq". */
static td_status write_lora_moments(const td_checkpoint_save_args *a, const char *dir) {
    int nt;
    const td_lora_tensor *t = td_lora_tensors(a->lora, &nt);
    td_st_writer *w = td_st_writer_new();
    if (!w) return td_error_set(TD_ERR_NOMEM, "out of memory");
    char name[200], p[4200];
    td_status s = TD_OK;
    for (int i = 0; i < nt && s == TD_OK; i++) {
        snprintf(name, sizeof name, "%s.exp_avg", t[i].name);
        s = td_st_writer_add(w, name, TD_DT_F32, 2, t[i].shape, a->adam_m + t[i].offset, 0);
        snprintf(name, sizeof name, "%s.exp_avg_sq", t[i].name);
        if (s == TD_OK)
            s = td_st_writer_add(w, name, TD_DT_F32, 2, t[i].shape, a->adam_v + t[i].offset, 0);
    }
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    if (s == TD_OK) s = td_st_writer_save(w, p);
    td_st_writer_free(&w);
    return s;
}

td_status td_checkpoint_file_sha256(const char *dir, const char *file, char hex[65]) {
    char p[4200], *text = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/SHA256SUMS", dir);
    if (td_fs_exists(p) && td_fs_read_file(p, &text, &len) == TD_OK) {
        for (char *line = text; line && *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            if (strlen(line) > 66 && !strcmp(line + 66, file)) {
                memcpy(hex, line, 64);
                hex[64] = 0;
                free(text);
                return TD_OK;
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    free(text);
    td_error_clear();
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return td_sha256_file(p, hex);
}

cJSON *td_checkpoint_lineage(const char *dir) {
    char p[4200], abs[4096], hex[65];
    cJSON *st = NULL;
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    if (!td_fs_exists(p) || td_json_load_file(p, &st) != TD_OK) st = cJSON_CreateObject();
    td_error_clear();
    const cJSON *lin = cJSON_GetObjectItemCaseSensitive(st, "lineage"), *v;
    const cJSON *anc = cJSON_GetObjectItemCaseSensitive(lin, "ancestors");
    cJSON *list = cJSON_IsArray(anc) ? cJSON_Duplicate(anc, 1) : cJSON_CreateArray();
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "path", realpath(dir, abs) ? abs : dir);
    if ((v = cJSON_GetObjectItemCaseSensitive(st, "step")) && cJSON_IsNumber(v))
        cJSON_AddNumberToObject(e, "step", v->valuedouble);
    static const char *const keys[] = {"produced_by", "method", NULL};
    for (int i = 0; keys[i]; i++)
        if ((v = cJSON_GetObjectItemCaseSensitive(lin, keys[i])) && cJSON_IsString(v))
            cJSON_AddStringToObject(e, keys[i], v->valuestring);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    const char *weights = td_fs_exists(p) ? "adapter_model.safetensors" : "model.safetensors";
    if (td_checkpoint_file_sha256(dir, weights, hex) == TD_OK)
        cJSON_AddStringToObject(e, "weights_sha256", hex);
    td_error_clear();
    if ((v = cJSON_GetObjectItemCaseSensitive(lin, "data")) && cJSON_IsObject(v))
        cJSON_AddItemToObject(e, "data", cJSON_Duplicate(v, 1));
    cJSON_AddItemToArray(list, e);
    cJSON_Delete(st);
    return list;
}

td_status td_checkpoint_save(const td_checkpoint_save_args *a, char *out_dir, size_t out_len) {
    char tmp[4096], fin[4096], p[4200];
    if (a->dir) {
        if (td_fs_exists(a->dir))
            return td_error_set(TD_ERR_INVALID, "%s already exists: choose a new directory",
                                a->dir);
        snprintf(tmp, sizeof tmp, "%s.tmp-%d", a->dir, (int)getpid());
        snprintf(fin, sizeof fin, "%s", a->dir);
    } else {
        TD_TRY(td_fs_mkdirs(a->root));
        snprintf(tmp, sizeof tmp, "%s/.tmp-step_%08ld-%d", a->root, a->step, (int)getpid());
        snprintf(fin, sizeof fin, "%s/step_%08ld", a->root, a->step);
    }
    TD_TRY(td_fs_remove_tree(tmp));
    TD_TRY(td_fs_mkdirs(tmp));
    td_status s;
    if (a->lora) {
        s = td_lora_save(a->lora, tmp, a->base);
        if (s == TD_OK && a->adam_m && a->adam_v) s = write_lora_moments(a, tmp);
        if (s != TD_OK) goto fail;
    } else {
        cJSON *cfg = td_model_config_to_hf_json(td_model_config_of(a->model));
        snprintf(p, sizeof p, "%s/config.json", tmp);
        s = td_json_save_file(p, cfg);
        cJSON_Delete(cfg);
        if (s != TD_OK) goto fail;
        snprintf(p, sizeof p, "%s/model.safetensors", tmp);
        s = write_tensors(a->model, td_model_params((td_model *)a->model), "", p);
        if (s != TD_OK) goto fail;
    }
    if (!a->lora && a->adam_m && a->adam_v) {
        /* both moments in one file: "<name>.exp_avg" then "<name>.exp_avg_sq" */
        int nt;
        const td_param_tensor *t = td_model_tensors(a->model, &nt);
        td_st_writer *w = td_st_writer_new();
        char name[200];
        s = TD_OK;
        for (int i = 0; i < nt && s == TD_OK; i++) {
            snprintf(name, sizeof name, "%s.exp_avg", t[i].name);
            s = td_st_writer_add(w, name, TD_DT_F32, t[i].ndim, t[i].shape, a->adam_m + t[i].offset,
                                 t[i].transposed);
            snprintf(name, sizeof name, "%s.exp_avg_sq", t[i].name);
            if (s == TD_OK)
                s = td_st_writer_add(w, name, TD_DT_F32, t[i].ndim, t[i].shape,
                                     a->adam_v + t[i].offset, t[i].transposed);
        }
        snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
        if (s == TD_OK) s = td_st_writer_save(w, p);
        td_st_writer_free(&w);
        if (s != TD_OK) goto fail;
    }
    if (a->tokenizer_json) {
        snprintf(p, sizeof p, "%s/tokenizer.json", tmp);
        s = td_fs_write_file_atomic(p, a->tokenizer_json, strlen(a->tokenizer_json));
        if (s != TD_OK) goto fail;
        cJSON *tc = cJSON_CreateObject();
        cJSON_AddStringToObject(tc, "tokenizer_class", "PreTrainedTokenizerFast");
        cJSON_AddStringToObject(tc, "eos_token", "<|endoftext|>");
        cJSON_AddNumberToObject(tc, "model_max_length",
                                td_model_config_of(a->model)->max_position_embeddings);
        cJSON_AddBoolToObject(tc, "clean_up_tokenization_spaces", 0);
        cJSON_AddStringToObject(tc, "chat_template", td_chatml_template);
        snprintf(p, sizeof p, "%s/tokenizer_config.json", tmp);
        s = td_json_save_file(p, tc);
        cJSON_Delete(tc);
        if (s != TD_OK) goto fail;
    }
    if (a->trainer_state) {
        snprintf(p, sizeof p, "%s/trainer_state.json", tmp);
        s = td_json_save_file(p, a->trainer_state);
        if (s != TD_OK) goto fail;
    }
    s = write_sums(tmp);
    if (s != TD_OK) goto fail;
    td_fs_sync_dir(tmp);
    s = td_fs_remove_tree(fin);
    if (s != TD_OK) goto fail;
    if (rename(tmp, fin) != 0) {
        s = td_error_set(TD_ERR_IO, "cannot rename %s to %s: %s", tmp, fin, strerror(errno));
        goto fail;
    }
    if (!a->dir) {
        td_fs_sync_dir(a->root);
        prune(a->root, a->keep, a->step);
    }
    if (out_dir) snprintf(out_dir, out_len, "%s", fin);
    return TD_OK;
fail:
    td_fs_remove_tree(tmp);
    return td_error_wrap(s, "saving checkpoint %s: ", fin);
}

static int ignorable_extra(const td_model *m, const char *name) {
    /* Tensors other writers add that carry no parameters of ours: GPT-2's attention-mask
     * buffers, and an explicit lm_head copy for tied models. */
    size_t n = strlen(name);
    if (n > 9 && !strcmp(name + n - 9, ".attn.bias")) return 1;
    if (strstr(name, ".attn.masked_bias")) return 1;
    if (!strcmp(name, "lm_head.weight") && td_model_config_of(m)->tie_word_embeddings) return 1;
    return 0;
}

td_status td_checkpoint_read_tensors(const td_model *m, const char *path, int nsets,
                                     const char *const *suffixes, float *const *bases) {
    td_st_file *f;
    TD_TRY(td_st_open(path, &f));
    int nt;
    const td_param_tensor *t = td_model_tensors(m, &nt);
    td_status s = TD_OK;
    char name[200];
    int found = 0;
    for (int k = 0; k < nt * nsets && s == TD_OK; k++) {
        int i = k % nt;
        const char *suffix = suffixes[k / nt];
        float *base = bases[k / nt];
        snprintf(name, sizeof name, "%s%s", t[i].name, suffix);
        const td_st_entry *e = td_st_find(f, name);
        if (!e) {
            s = td_error_set(TD_ERR_FORMAT, "%s: missing tensor '%s'", path, name);
            break;
        }
        int shape_ok = e->ndim == t[i].ndim && e->shape[0] == t[i].shape[0] &&
                       (t[i].ndim == 1 || e->shape[1] == t[i].shape[1]);
        if (!shape_ok) {
            char got[128] = "[", want[64];
            for (int d = 0; d < e->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                         (long long)e->shape[d]);
            strcat(got, "]");
            if (t[i].ndim == 1)
                snprintf(want, sizeof want, "[%lld]", (long long)t[i].shape[0]);
            else
                snprintf(want, sizeof want, "[%lld, %lld]", (long long)t[i].shape[0],
                         (long long)t[i].shape[1]);
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: tensor '%s' has shape %s, but config.json implies %s", path, name,
                             got, want);
            break;
        }
        s = td_st_read_f32(f, e, base + t[i].offset, t[i].transposed);
        found++;
    }
    if (s == TD_OK && found != td_st_count(f)) {
        for (int k = 0; k < td_st_count(f); k++) {
            const char *en = td_st_entry_at(f, k)->name;
            int known = 0;
            for (int i = 0; i < nt * nsets && !known; i++) {
                snprintf(name, sizeof name, "%s%s", t[i % nt].name, suffixes[i / nt]);
                known = !strcmp(name, en);
            }
            if (!known && !ignorable_extra(m, en)) {
                s = td_error_set(TD_ERR_FORMAT,
                                 "%s: unexpected tensor '%s' (not part of a %s model with this "
                                 "config.json)",
                                 path, en, td_arch_name(td_model_config_of(m)->arch));
                break;
            }
        }
    }
    td_st_close(&f);
    return s;
}

td_status td_checkpoint_load_model(const char *dir, td_model **out) {
    *out = NULL;
    char p[4200];
    if (!td_fs_is_dir(dir))
        return td_error_set(TD_ERR_NOTFOUND, "checkpoint %s: no such directory", dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    char ap[4200];
    snprintf(ap, sizeof ap, "%s/adapter_config.json", dir);
    if (!td_fs_exists(p) && td_fs_exists(ap))
        return td_error_set(TD_ERR_INVALID,
                            "%s is a LoRA adapter, not a model: give its base checkpoint (with "
                            "--adapter %s where the command takes one), or fold it in with "
                            "tandem merge",
                            dir, dir);
    cJSON *j;
    TD_TRY(td_json_load_file(p, &j));
    td_model_config cfg;
    td_status s = td_model_config_from_json(j, p, &cfg);
    cJSON_Delete(j);
    TD_TRY(s);
    td_model *m;
    TD_TRY(td_model_new(&cfg, &m));
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    const char *suffix = "";
    float *base = td_model_params(m);
    s = td_checkpoint_read_tensors(m, p, 1, &suffix, &base);
    if (s != TD_OK) {
        td_model_free(&m);
        return s;
    }
    *out = m;
    return TD_OK;
}

td_status td_checkpoint_latest(const char *root, char *out, size_t out_len) {
    DIR *d = opendir(root);
    if (!d)
        return td_error_set(TD_ERR_NOTFOUND, "no checkpoints: cannot open %s: %s", root,
                            strerror(errno));
    long best = -1;
    char name[256] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        long s;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s/trainer_state.json", root, e->d_name);
        if (is_step_dir(e->d_name, &s) && s > best && td_fs_exists(p)) {
            best = s;
            snprintf(name, sizeof name, "%s", e->d_name);
        }
    }
    closedir(d);
    if (best < 0) return td_error_set(TD_ERR_NOTFOUND, "no complete checkpoint under %s", root);
    snprintf(out, out_len, "%s/%s", root, name);
    return TD_OK;
}
