/* Data directory check against manifest.json (see manifest.h). */
#include "data/manifest.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fsutil.h"
#include "common/json.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "data/shard.h"

static td_status check_hash(const char *dir, const char *file, const char *want, const char *what) {
    char p[4200], got[65];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    TD_TRY(td_sha256_file(p, got));
    if (strcmp(got, want))
        return td_error_set(TD_ERR_FORMAT,
                            "%s: %s does not match its sha256 in %s/manifest.json (the file "
                            "changed after `tandem prep` wrote it): make the data again, or "
                            "restore the file",
                            p, what, dir);
    return TD_OK;
}

td_status td_manifest_check(const char *dir, int hashes, td_manifest_report *rep) {
    memset(rep, 0, sizeof *rep);
    char p[4200];
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    if (!td_fs_is_dir(dir) || !td_fs_exists(p)) return TD_OK;
    rep->has_manifest = 1;
    cJSON *m;
    TD_TRY(td_json_load_file(p, &m));
    td_status s = TD_OK;
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(m, "shards");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(m, "tokenizer");
    if (!cJSON_IsArray(shards)) s = td_error_set(TD_ERR_INVALID, "%s: no \"shards\" list", p);
    /* the tokenizer the shards were made with: a swapped one would decode other text */
    const char *tfile = NULL, *tsha = NULL;
    if (s == TD_OK && tok) {
        s = td_json_get_string(tok, p, "file", 0, &tfile);
        if (s == TD_OK) s = td_json_get_string(tok, p, "sha256", 0, &tsha);
        if (s == TD_OK && tfile && tsha) {
            snprintf(p, sizeof p, "%s/%s", dir, tfile);
            if (td_fs_exists(p)) s = check_hash(dir, tfile, tsha, "the tokenizer");
        }
    }
    const cJSON *e;
    const cJSON *list = s == TD_OK ? shards : (const cJSON *)NULL;
    cJSON_ArrayForEach(e, list) {
        const char *file = NULL, *sha = NULL;
        int64_t tokens = -1, tb = 2;
        snprintf(p, sizeof p, "%s/manifest.json: shards[%d]", dir, rep->shards);
        s = td_json_get_string(e, p, "file", 1, &file);
        if (s == TD_OK) s = td_json_get_int(e, p, "tokens", 1, &tokens);
        if (s == TD_OK) s = td_json_get_int(e, p, "token_bytes", 0, &tb);
        if (s == TD_OK) s = td_json_get_string(e, p, "sha256", 0, &sha);
        if (s != TD_OK) break;
        if (strchr(file, '/')) {
            s = td_error_set(TD_ERR_INVALID, "%s: file \"%s\" is not a name in %s", p, file, dir);
            break;
        }
        snprintf(p, sizeof p, "%s/%s", dir, file);
        struct stat st;
        if (stat(p, &st) != 0) {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s is listed in %s/manifest.json but missing: the data directory "
                             "is incomplete",
                             p, dir);
            break;
        }
        double want = TD_SHARD_HEADER_INTS * 4.0 + (double)tokens * (double)tb;
        if ((double)st.st_size != want) {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s: %lld bytes, but manifest.json lists %lld tokens of %d bytes "
                             "(%.0f bytes with the header): truncated or replaced",
                             p, (long long)st.st_size, (long long)tokens, (int)tb, want);
            break;
        }
        rep->shards++;
        rep->bytes += (double)st.st_size;
        if (hashes && sha) {
            double t0 = td_time_now();
            s = check_hash(dir, file, sha, "the shard");
            rep->hash_s += td_time_now() - t0;
            if (s != TD_OK) break;
            rep->hashed++;
        }
    }
    /* a .bin the manifest does not list would be read as training data */
    DIR *d = s == TD_OK ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".bin")) continue;
        int listed = 0;
        cJSON_ArrayForEach(e, shards) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(e, "file");
            if (cJSON_IsString(f) && !strcmp(f->valuestring, de->d_name)) listed = 1;
        }
        if (!listed) {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s/%s is not listed in %s/manifest.json: move it out, or make the "
                             "data again with `tandem prep`",
                             dir, de->d_name, dir);
            break;
        }
    }
    if (d) closedir(d);
    cJSON_Delete(m);
    return s;
}
