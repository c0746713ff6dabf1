/* `tandem prep --chat`: conversations tokenized once with a base's tokenizer, for fine-tuning
 * (worker/train/sft_data.h). Under mpirun the ranks tokenize every size-th line of each file
 * and rank 0 writes the examples in file order: the same bytes as one process. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "data/bpe.h"
#include "data/chat.h"
#include "worker/comm/comm.h"
#include "worker/train/sft_data.h"

/* This rank's examples as bytes: per example line (i64), n (i64), ids, mask. */
static td_status pack(const td_sft_set *s, char **out, size_t *len) {
    size_t n = 0;
    for (int i = 0; i < s->n; i++)
        n += 16 + (size_t)s->ex[i].n * 5;
    char *b = malloc(n ? n : 1), *p = b;
    if (!b) return td_error_set(TD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < s->n; i++) {
        int64_t hdr[2] = {s->ex[i].line, s->ex[i].n};
        memcpy(p, hdr, 16);
        memcpy(p + 16, s->ex[i].ids, (size_t)s->ex[i].n * 4);
        memcpy(p + 16 + (size_t)s->ex[i].n * 4, s->ex[i].mask, (size_t)s->ex[i].n);
        p += 16 + (size_t)s->ex[i].n * 5;
    }
    *out = b;
    *len = n;
    return TD_OK;
}

typedef struct {
    const char *at;
    int64_t line, n;
} rec;

static int cmp_rec(const void *a, const void *b) {
    int64_t x = ((const rec *)a)->line, y = ((const rec *)b)->line;
    return (x > y) - (x < y);
}

/* Every rank's part of one file, on rank 0 in line order (*all; other ranks get an empty
 * set). */
static td_status gather(td_comm *w, const td_sft_set *part, td_sft_set *all) {
    memset(all, 0, sizeof *all);
    char *mine = NULL, *buf = NULL;
    size_t len = 0, total = 0, *counts = NULL;
    int64_t *lens = NULL;
    rec *rs = NULL;
    td_status s = pack(part, &mine, &len);
    if (s == TD_OK) {
        lens = calloc((size_t)w->size, sizeof *lens);
        counts = calloc((size_t)w->size, sizeof *counts);
        if (!lens || !counts) s = td_error_set(TD_ERR_NOMEM, "out of memory");
    }
    if (s == TD_OK) {
        lens[w->rank] = (int64_t)len;
        s = td_comm_allgather(w, lens, 1, TD_COMM_I64);
    }
    for (int r = 0; s == TD_OK && r < w->size; r++)
        total += counts[r] = (size_t)lens[r];
    if (s == TD_OK && w->rank == 0 && !(buf = malloc(total ? total : 1)))
        s = td_error_set(TD_ERR_NOMEM, "out of memory gathering examples");
    if (s == TD_OK) s = td_comm_gatherv(w, mine, len, buf, counts, 0);
    size_t nr = 0;
    if (s == TD_OK && w->rank == 0) {
        rs = malloc(sizeof *rs * (total / 16 + 1));
        if (!rs) s = td_error_set(TD_ERR_NOMEM, "out of memory gathering examples");
        for (const char *p = buf; s == TD_OK && p < buf + total;) {
            int64_t hdr[2];
            memcpy(hdr, p, 16);
            rs[nr++] = (rec){p + 16, hdr[0], hdr[1]};
            p += 16 + (size_t)hdr[1] * 5;
        }
        if (s == TD_OK) qsort(rs, nr, sizeof *rs, cmp_rec);
        int32_t *ids = NULL;
        size_t cap = 0;
        for (size_t i = 0; s == TD_OK && i < nr; i++) {
            if ((size_t)rs[i].n > cap) {
                free(ids);
                cap = (size_t)rs[i].n;
                ids = malloc(cap * 4);
                if (!ids) s = td_error_set(TD_ERR_NOMEM, "out of memory");
            }
            if (s != TD_OK) break;
            memcpy(ids, rs[i].at, (size_t)rs[i].n * 4); /* aligned copy of the ids */
            s = td_sft_set_add(all, ids, (const uint8_t *)rs[i].at + rs[i].n * 4, (int)rs[i].n,
                               (long)rs[i].line, INT_MAX, TD_SFT_DROP);
        }
        free(ids);
    }
    free(rs);
    free(buf);
    free(lens);
    free(counts);
    free(mine);
    return s;
}

td_status td_prep_chat(td_comm *w, const char *tokenizer, const char *out_dir,
                       const char *const *names, const char *const *files, int n, int quiet) {
    char tpath[4200];
    snprintf(tpath, sizeof tpath, td_fs_is_dir(tokenizer) ? "%s/tokenizer.json" : "%s", tokenizer);
    char *json = NULL;
    size_t jlen = 0;
    td_status s = td_fs_read_file(tpath, &json, &jlen);
    td_bpe *tok = NULL;
    if (s == TD_OK) s = td_bpe_from_json(json, jlen, tpath, &tok);
    char sha[65] = "";
    if (s == TD_OK) td_sha256_hex(json, jlen, sha);
    free(json);
    for (int k = 0; k < n && s == TD_OK; k++)
        if (!td_fs_exists(files[k]) || td_fs_is_dir(files[k]))
            s = td_error_set(TD_ERR_NOTFOUND,
                             "%s: no such file (a JSON Lines file of "
                             "conversations)",
                             files[k]);
    if (s == TD_OK && td_fs_exists(out_dir) && !td_fs_is_dir(out_dir))
        s = td_error_set(TD_ERR_INVALID, "--out %s exists and is not a directory", out_dir);
    td_sft_set sets[2] = {{0}};
    const td_sft_set *sp[2] = {&sets[0], &sets[1]};
    double t0 = td_time_now();
    for (int k = 0; k < n && s == TD_OK; k++) {
        td_sft_set part;
        /* every size-th line; the others' errors are theirs to report */
        td_status sl =
            td_sft_load_jsonl_part(files[k], tok, INT_MAX, TD_SFT_DROP, w->rank, w->size, &part);
        int64_t failed = sl != TD_OK;
        s = td_comm_allreduce(w, &failed, 1, TD_COMM_I64);
        if (s == TD_OK && sl != TD_OK)
            s = sl;
        else if (s == TD_OK && failed)
            s = td_error_set(TD_ERR_RUNTIME, "another rank failed (see its message)");
        if (s == TD_OK) s = gather(w, &part, &sets[k]);
        td_sft_set_free(&part);
    }
    /* written only once every file read well */
    if (s == TD_OK && w->rank == 0) s = td_fs_mkdirs(out_dir);
    for (int k = 0; k < n && s == TD_OK && w->rank == 0; k++)
        s = td_sft_prepared_write(&sets[k], out_dir, names[k]);
    if (s == TD_OK && w->rank == 0) s = td_sft_prepared_manifest(out_dir, sha, names, files, sp, n);
    if (s == TD_OK && w->rank == 0 && !quiet) {
        for (int k = 0; k < n; k++)
            printf("prep --chat: %-5s %s: %d examples, %ld tokens (%ld trained on, %.0f%%), "
                   "longest %d\n",
                   names[k], files[k], sets[k].n, sets[k].tokens, sets[k].counted,
                   sets[k].tokens ? 100.0 * sets[k].counted / sets[k].tokens : 0.0,
                   sets[k].max_tokens);
        printf("prep --chat: %s/chat.json, tokenizer %s (sha256 %.16s...), %d rank%s, %.2f s\n",
               out_dir, tpath, sha, w->size, w->size == 1 ? "" : "s", td_time_now() - t0);
    }
    for (int k = 0; k < 2; k++)
        td_sft_set_free(&sets[k]);
    td_bpe_free(&tok);
    return s;
}
