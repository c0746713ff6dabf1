/* The prep pipeline (see prep.h). Every rank runs the same code; with one rank the
 * gathers and broadcasts are copies, so the single-process run and the MPI run take the
 * same path and produce the same bytes. */
#include "data/prep.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/json.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "data/bpe.h"
#include "data/dedup.h"
#include "data/shard.h"
#include "worker/comm/comm.h"

void td_prep_opts_default(td_prep_opts *o) {
    memset(o, 0, sizeof *o);
    o->text_field = "text";
    o->vocab_size = 8192;
    o->val_fraction = 0.01;
    o->shard_tokens = 100000000;
    o->rules = td_clean_rules_default();
    o->exact_dedup = 1;
    o->near_threshold = 0.8;
}

/* ---------------------------------------------------------------------------------------- */
/* counters, summed over ranks */

enum {
    ST_FILES,
    ST_FILES_BINARY,
    ST_FILES_LINKED,
    ST_BAD_JSON,
    ST_DOCS_IN,
    ST_BYTES_IN,
    ST_CLEAN0, /* + td_clean_reason (index 0 = kept after cleaning) */
    ST_FIX_ESC = ST_CLEAN0 + TD_CLEAN_NREASONS,
    ST_FIX_OVERSTRIKE,
    ST_FIX_CONTROL,
    ST_DOCS_FIXED,
    ST_DUP_EXACT,
    ST_DUP_NEAR,
    ST_DOCS_OUT,
    ST_BYTES_OUT,
    ST_TOKENS_TRAIN,
    ST_TOKENS_VAL,
    ST_DOCS_VAL,
    ST_COUNT
};

/* ---------------------------------------------------------------------------------------- */
/* byte buffers for gathers */

typedef struct {
    unsigned char *p;
    size_t n, cap, pos;
} bbuf;

static td_status bb_put(bbuf *b, const void *d, size_t n) {
    TD_TRY(TD_GROW(b->p, b->cap, b->n + n));
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
    return TD_OK;
}
static td_status bb_u64(bbuf *b, uint64_t v) {
    return bb_put(b, &v, 8);
}
static uint64_t bb_get_u64(bbuf *b) {
    uint64_t v;
    memcpy(&v, b->p + b->pos, 8);
    b->pos += 8;
    return v;
}
static const void *bb_get(bbuf *b, size_t n) {
    const void *p = b->p + b->pos;
    b->pos += n;
    return p;
}
static void bb_free(bbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static td_status agree(td_comm *c, td_status s);

/* Concatenates every rank's `local` on rank 0 (rank order). */
static td_status gather(td_comm *c, bbuf *local, bbuf *all) {
    if (c->size == 1) return bb_put(all, local->p, local->n);
    size_t *ns = calloc((size_t)c->size, sizeof *ns);
    if (!ns) return td_error_set(TD_ERR_NOMEM, "prep: out of memory");
    ns[c->rank] = local->n;
    td_status s = td_comm_allgather(c, ns, sizeof *ns, TD_COMM_BYTE);
    if (s != TD_OK) { /* the communicator itself failed: no later collective would work */
        free(ns);
        return s;
    }
    size_t total = 0;
    for (int r = 0; r < c->size; r++)
        total += ns[r];
    /* every rank knows the sizes, so every rank takes the same branch */
    if (s == TD_OK && total > INT32_MAX)
        s = td_error_set(TD_ERR_RUNTIME,
                         "prep: the ranks' data for rank 0 exceed 2 GiB (one gather); split "
                         "the corpus into several prep runs");
    if (s == TD_OK && c->rank == 0) {
        /* exact: the buffer is sized once, and total + 1 keeps it allocated when total is 0 */
        s = TD_GROW_EXACT(all->p, all->cap, total + 1);
        if (s != TD_OK)
            td_error_wrap(s, "prep: gathering %zu bytes: ", total);
        else
            all->n = total;
    }
    /* rank 0's allocation decides for everyone: no rank enters the gather alone */
    s = agree(c, s);
    if (s == TD_OK) s = td_comm_gatherv(c, local->p, local->n, all->p, ns, 0);
    free(ns);
    return s;
}

/* Broadcasts rank 0's buffer to every rank. */
static td_status bcast(td_comm *c, bbuf *b) {
    if (c->size == 1) return TD_OK;
    int64_t n = (int64_t)b->n;
    TD_TRY(td_comm_bcast(c, &n, 1, TD_COMM_I64, 0));
    td_status s = TD_OK;
    if (c->rank != 0) {
        b->n = 0;
        s = TD_GROW_EXACT(b->p, b->cap, (size_t)n + 1);
        if (s != TD_OK)
            td_error_wrap(s, "prep: ");
        else
            b->n = (size_t)n;
    }
    /* every rank's allocation decides: no rank enters the broadcast alone */
    TD_TRY(agree(c, s));
    return td_comm_bcast(c, b->p, (size_t)n, TD_COMM_BYTE, 0);
}

static td_status sum_stats(td_comm *c, int64_t *st) {
    return td_comm_allreduce(c, st, ST_COUNT, TD_COMM_I64);
}

/* Every rank must agree on success; returns the first failing rank's status (its message is
 * printed by that rank). */
static td_status agree(td_comm *c, td_status s) {
    if (c->size == 1) return s;
    /* allocation-free: how many ranks failed with each status (codes 0 .. -15) */
    int64_t count[16] = {0};
    count[s < 0 && s > -16 ? -s : s < 0 ? 15 : 0] = 1;
    td_status sc = td_comm_allreduce(c, count, 16, TD_COMM_I64);
    if (sc != TD_OK) return s != TD_OK ? s : sc;
    int64_t worst = 0;
    for (int k = 15; k > 0 && !worst; k--)
        if (count[k]) worst = -k;
    if (worst != TD_OK && s == TD_OK)
        return td_error_set((td_status)worst, "prep: another rank failed (see its message)");
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* inputs */

typedef struct {
    char **path;
    int n;
    dev_t *dev;
    ino_t *ino;
    size_t path_cap, dev_cap, ino_cap;
    dev_t *ddev; /* directories walked */
    ino_t *dino;
    int ndirs;
    size_t ddev_cap, dino_cap;
} file_list;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static td_status fl_add(file_list *fl, const char *p, const struct stat *st, int64_t *stats) {
    for (int i = 0; i < fl->n; i++)
        if (fl->dev[i] == st->st_dev && fl->ino[i] == st->st_ino) {
            stats[ST_FILES_LINKED]++; /* same file reached again (a link): read once */
            return TD_OK;
        }
    TD_TRY(TD_GROW(fl->path, fl->path_cap, (size_t)fl->n + 1));
    TD_TRY(TD_GROW(fl->dev, fl->dev_cap, (size_t)fl->n + 1));
    TD_TRY(TD_GROW(fl->ino, fl->ino_cap, (size_t)fl->n + 1));
    fl->path[fl->n] = strdup(p);
    fl->dev[fl->n] = st->st_dev;
    fl->ino[fl->n] = st->st_ino;
    fl->n++;
    return TD_OK;
}

static td_status walk(file_list *fl, const char *path, int64_t *stats) {
    struct stat st;
    if (stat(path, &st) != 0)
        return td_error_set(errno == ENOENT ? TD_ERR_NOTFOUND : TD_ERR_IO, "input %s: %s", path,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (!S_ISREG(st.st_mode))
            return td_error_set(TD_ERR_INVALID, "input %s is not a regular file", path);
        return fl_add(fl, path, &st, stats);
    }
    /* a directory reached again (a link, possibly a cycle) is walked once */
    for (int i = 0; i < fl->ndirs; i++)
        if (fl->ddev[i] == st.st_dev && fl->dino[i] == st.st_ino) return TD_OK;
    TD_TRY(TD_GROW(fl->ddev, fl->ddev_cap, (size_t)fl->ndirs + 1));
    TD_TRY(TD_GROW(fl->dino, fl->dino_cap, (size_t)fl->ndirs + 1));
    fl->ddev[fl->ndirs] = st.st_dev;
    fl->dino[fl->ndirs++] = st.st_ino;
    DIR *d = opendir(path);
    if (!d) return td_error_set(TD_ERR_IO, "cannot read directory %s: %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    td_status s = TD_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        s = TD_GROW(names, cap, n + 1);
        if (s != TD_OK) {
            td_error_wrap(s, "listing %s: ", path);
            break;
        }
        names[n] = malloc(strlen(path) + strlen(e->d_name) + 2);
        sprintf(names[n], "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    if (s == TD_OK) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (s == TD_OK) s = walk(fl, names[i], stats);
        free(names[i]);
    }
    free(names);
    return s;
}

/* Reads a whole (possibly gzip-compressed) file. */
static td_status read_file(const char *path, char **out, size_t *len) {
    gzFile g = gzopen(path, "rb");
    if (!g)
        return td_error_set(TD_ERR_IO, "cannot open %s: %s", path,
                            errno ? strerror(errno) : "out of memory");
    gzbuffer(g, 1 << 17);
    size_t cap = 0, n = 0;
    char *buf = NULL;
    for (;;) {
        td_status s = TD_GROW(buf, cap, n + (1 << 16)); /* room for one more read */
        if (s != TD_OK) {
            gzclose(g);
            free(buf);
            return td_error_wrap(s, "reading %s: ", path);
        }
        int k = gzread(g, buf + n, 1 << 16);
        if (k < 0) {
            int err;
            const char *msg = gzerror(g, &err);
            td_status s =
                td_error_set(err == Z_ERRNO ? TD_ERR_IO : TD_ERR_FORMAT, "cannot read %s: %s", path,
                             err == Z_ERRNO ? strerror(errno) : msg);
            gzclose(g);
            free(buf);
            return s;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    int err;
    const char *msg = gzerror(g, &err);
    if (err != Z_OK && err != Z_STREAM_END) {
        td_status s =
            td_error_set(TD_ERR_FORMAT, "cannot read %s: %s (truncated gzip file?)", path, msg);
        gzclose(g);
        free(buf);
        return s;
    }
    if (gzclose(g) != Z_OK) {
        free(buf);
        return td_error_set(TD_ERR_FORMAT, "cannot read %s: corrupt or truncated gzip stream",
                            path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return TD_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* ---------------------------------------------------------------------------------------- */
/* documents of this rank */

typedef struct {
    uint64_t key; /* file index << 32 | document index */
    char *text;   /* cleaned text (NULL once dropped) */
    size_t len;
    td_doc_sig sig;
} doc;

typedef struct {
    doc *d;
    size_t n, cap;
} doc_list;

typedef struct {
    const td_prep_opts *o;
    doc_list *docs;
    int64_t *st;
    uint64_t file_idx;
    uint32_t doc_idx;
} reader;

static td_status take_doc(reader *r, const char *text, size_t len) {
    uint64_t key = (r->file_idx << 32) | r->doc_idx++;
    r->st[ST_DOCS_IN]++;
    r->st[ST_BYTES_IN] += (int64_t)len;
    td_clean_out co;
    td_clean_reason why = td_clean_doc(&r->o->rules, text, len, &co);
    r->st[ST_CLEAN0 + why]++;
    r->st[ST_FIX_ESC] += co.fixed_escapes;
    r->st[ST_FIX_OVERSTRIKE] += co.fixed_overstrikes;
    r->st[ST_FIX_CONTROL] += co.fixed_controls;
    if (co.fixed_escapes || co.fixed_overstrikes || co.fixed_controls) r->st[ST_DOCS_FIXED]++;
    if (why != TD_CLEAN_KEEP) return TD_OK;
    doc_list *L = r->docs;
    td_status s = TD_GROW(L->d, L->cap, L->n + 1);
    if (s != TD_OK) {
        free(co.text);
        return s;
    }
    doc *d = &L->d[L->n++];
    d->key = key;
    d->text = co.text;
    d->len = co.len;
    td_dedup_signature(co.text, co.len, &d->sig);
    return TD_OK;
}

static td_status read_docs(reader *r, const char *path) {
    char *buf = NULL;
    size_t len = 0;
    TD_TRY(read_file(path, &buf, &len));
    r->st[ST_FILES]++;
    if (memchr(buf, 0, len)) { /* binary file: documented skip */
        r->st[ST_FILES_BINARY]++;
        free(buf);
        return TD_OK;
    }
    int jsonl = ends_with(path, ".jsonl") || ends_with(path, ".jsonl.gz");
    const char *delim = r->o->delimiter;
    size_t dl = delim ? strlen(delim) : 0;
    td_status s = TD_OK;
    if (!jsonl && !delim) {
        if (len > 0) s = take_doc(r, buf, len); /* an empty file holds no document */
        free(buf);
        return s;
    }
    size_t start = 0, i = 0;
    while (i <= len && s == TD_OK) {
        size_t e = i;
        while (e < len && buf[e] != '\n')
            e++;
        if (jsonl) {
            size_t b = i;
            while (b < e && (buf[b] == ' ' || buf[b] == '\t' || buf[b] == '\r'))
                b++;
            if (b < e) {
                cJSON *j = cJSON_ParseWithLength(buf + i, e - i);
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, r->o->text_field);
                if (cJSON_IsString(f))
                    s = take_doc(r, f->valuestring, strlen(f->valuestring));
                else
                    r->st[ST_BAD_JSON]++; /* documented skip: malformed line or no text field */
                cJSON_Delete(j);
            }
        } else {
            size_t ll = e - i;
            if (ll > 0 && buf[i + ll - 1] == '\r') ll--;
            int sep = ll == dl && !memcmp(buf + i, delim, dl);
            if (sep || e >= len) {
                size_t end = sep ? i : len;
                if (end > start) s = take_doc(r, buf + start, end - start);
                start = e + 1;
            }
        }
        i = e + 1;
    }
    free(buf);
    return s;
}

static int cmp_key(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* ---------------------------------------------------------------------------------------- */
/* output */

typedef struct {
    char name[64];
    const char *split;
    size_t tokens;
    char sha[65];
} shard_info;

typedef struct {
    const td_prep_opts *o;
    int token_bytes;
    int32_t *buf[2];
    size_t n[2], cap[2];
    int next_idx[2];
    shard_info *shards;
    int nshards;
    size_t shards_cap;
} writer;

static td_status flush_shard(writer *w, int split) {
    if (w->n[split] == 0) return TD_OK;
    const char *nm = split ? "val" : "train";
    shard_info *si;
    TD_TRY(TD_GROW(w->shards, w->shards_cap, (size_t)w->nshards + 1));
    si = &w->shards[w->nshards++];
    snprintf(si->name, sizeof si->name, "%s_%06d.bin", nm, w->next_idx[split]++);
    si->split = nm;
    si->tokens = w->n[split];
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", w->o->out_dir, si->name);
    TD_TRY(td_shard_write(p, w->buf[split], w->n[split], w->token_bytes));
    TD_TRY(td_sha256_file(p, si->sha));
    w->n[split] = 0;
    return TD_OK;
}

static td_status write_tokens(writer *w, int split, const int32_t *t, size_t n) {
    while (n > 0) {
        size_t room = (size_t)w->o->shard_tokens - w->n[split];
        size_t k = n < room ? n : room;
        TD_TRY(TD_GROW(w->buf[split], w->cap[split], w->n[split] + k));
        memcpy(w->buf[split] + w->n[split], t, k * sizeof(int32_t));
        w->n[split] += k;
        t += k;
        n -= k;
        if (w->n[split] == (size_t)w->o->shard_tokens) TD_TRY(flush_shard(w, split));
    }
    return TD_OK;
}

static void print_report(const td_prep_opts *o, const int64_t *st, double secs, int vocab,
                         int nshards) {
    printf("\nprep summary (%s)\n", o->out_dir);
    printf("  %-34s %12s\n", "files read", "");
    printf("  %-34s %12lld\n", "  files", (long long)st[ST_FILES]);
    printf("  %-34s %12lld\n", "  skipped: binary (NUL bytes)", (long long)st[ST_FILES_BINARY]);
    printf("  %-34s %12lld\n", "  skipped: same file via a link", (long long)st[ST_FILES_LINKED]);
    printf("  %-34s %12lld\n", "  skipped: bad JSON lines", (long long)st[ST_BAD_JSON]);
    printf("  %-34s %12s %14s\n", "documents", "count", "bytes");
    printf("  %-34s %12lld %14lld\n", "  in", (long long)st[ST_DOCS_IN],
           (long long)st[ST_BYTES_IN]);
    printf("  %-34s %12lld   (escapes %lld, overstrikes %lld, controls %lld)\n", "  fixed (kept)",
           (long long)st[ST_DOCS_FIXED], (long long)st[ST_FIX_ESC],
           (long long)st[ST_FIX_OVERSTRIKE], (long long)st[ST_FIX_CONTROL]);
    for (int r = 1; r < TD_CLEAN_NREASONS; r++) {
        char label[64];
        snprintf(label, sizeof label, "  dropped: %s", td_clean_reason_name((td_clean_reason)r));
        printf("  %-34s %12lld\n", label, (long long)st[ST_CLEAN0 + r]);
    }
    printf("  %-34s %12lld\n", "  dropped: exact duplicate", (long long)st[ST_DUP_EXACT]);
    printf("  %-34s %12lld\n", "  dropped: near duplicate", (long long)st[ST_DUP_NEAR]);
    printf("  %-34s %12lld %14lld\n", "  out", (long long)st[ST_DOCS_OUT],
           (long long)st[ST_BYTES_OUT]);
    long long tok = (long long)(st[ST_TOKENS_TRAIN] + st[ST_TOKENS_VAL]);
    printf("  %-34s %12lld train + %lld val (%lld val documents)\n", "tokens",
           (long long)st[ST_TOKENS_TRAIN], (long long)st[ST_TOKENS_VAL],
           (long long)st[ST_DOCS_VAL]);
    printf("  %-34s %12.2f\n", "bytes per token", tok ? (double)st[ST_BYTES_OUT] / (double)tok : 0);
    printf("  %-34s %12d   shards %d\n", "vocabulary", vocab, nshards);
    printf("  %-34s %12.1f s\n", "time", secs);
}

/* ---------------------------------------------------------------------------------------- */

td_status td_prep_run(const td_prep_opts *o, td_comm *comm) {
    int rank = comm->rank, size = comm->size;
    double t0 = td_time_now();
    int64_t st[ST_COUNT] = {0};
    file_list fl = {0};
    doc_list docs = {0};
    td_bpe *tok = NULL;
    bbuf local = {0}, all = {0};
    writer w = {0};
    char *tok_json = NULL;
    td_status s = TD_OK;

    /* 0. output directory: created and writable, checked before any work */
    if (rank == 0) {
        s = td_fs_mkdirs(o->out_dir);
        if (s == TD_OK) {
            char p[4200];
            snprintf(p, sizeof p, "%s/.write-test", o->out_dir);
            s = td_fs_write_file_atomic(p, "x", 1);
            if (s == TD_OK)
                unlink(p);
            else
                s = td_error_set(TD_ERR_IO, "output directory %s is not writable: %s", o->out_dir,
                                 strerror(errno));
        }
        /* shards of an earlier run would be read with this run's by `tandem train` */
        DIR *d = s == TD_OK ? opendir(o->out_dir) : NULL;
        struct dirent *de;
        int removed = 0;
        while (d && (de = readdir(d))) {
            unsigned idx;
            char split[8], tail[4];
            if (sscanf(de->d_name, "%5[a-z]_%6u.bi%1[n]%c", split, &idx, tail, tail + 1) == 3 &&
                (!strcmp(split, "train") || !strcmp(split, "val"))) {
                char p[4200];
                snprintf(p, sizeof p, "%s/%s", o->out_dir, de->d_name);
                if (unlink(p) == 0) removed++;
            }
        }
        if (d) closedir(d);
        if (removed && !o->quiet)
            TD_LOG_WARN("prep: removed %d shards of an earlier run from %s", removed, o->out_dir);
    }
    s = agree(comm, s);
    if (s != TD_OK) goto out;

    /* 1-3. list, read, clean, sign */
    for (int i = 0; i < o->n_inputs && s == TD_OK; i++)
        s = walk(&fl, o->inputs[i], st);
    s = agree(comm, s);
    if (s != TD_OK) goto out;
    if (rank != 0) st[ST_FILES_LINKED] = 0; /* every rank walks; count once */
    reader rd = {o, &docs, st, 0, 0};
    for (int i = rank; i < fl.n && s == TD_OK; i += size) {
        rd.file_idx = (uint64_t)i;
        rd.doc_idx = 0;
        s = read_docs(&rd, fl.path[i]);
        if (rank == 0 && td_progress_is_tty() && !o->quiet) {
            char line[256];
            snprintf(line, sizeof line, "prep: reading %d/%d files, %lld documents", i + 1, fl.n,
                     (long long)st[ST_DOCS_IN]);
            td_progress_line(line);
        }
    }
    if (rank == 0) td_progress_done();
    s = agree(comm, s);
    if (s != TD_OK) goto out;

    /* 4. dedup on rank 0, in global key order */
    for (size_t i = 0; i < docs.n && s == TD_OK; i++) {
        s = bb_u64(&local, docs.d[i].key);
        if (s == TD_OK) s = bb_put(&local, &docs.d[i].sig, sizeof(td_doc_sig));
    }
    s = agree(comm, s); /* before a collective, every rank learns of any failure */
    if (s == TD_OK) s = gather(comm, &local, &all);
    bb_free(&local);
    bbuf verdicts = {0};
    if (s != TD_OK) goto out;
    if (rank == 0) {
        size_t n = all.n / (8 + sizeof(td_doc_sig));
        struct rec {
            uint64_t key;
            td_doc_sig sig;
        } *recs = malloc(sizeof *recs * (n ? n : 1));
        for (size_t i = 0; i < n; i++) {
            recs[i].key = bb_get_u64(&all);
            memcpy(&recs[i].sig, bb_get(&all, sizeof(td_doc_sig)), sizeof(td_doc_sig));
        }
        qsort(recs, n, sizeof *recs, cmp_key);
        td_doc_sig *sigs = malloc(sizeof *sigs * (n ? n : 1));
        uint8_t *v = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++)
            sigs[i] = recs[i].sig;
        td_dedup_decide(sigs, n, o->exact_dedup, o->near_threshold, v);
        for (size_t i = 0; i < n && s == TD_OK; i++) {
            s = bb_u64(&verdicts, recs[i].key);
            if (s == TD_OK) s = bb_put(&verdicts, &v[i], 1);
        }
        free(recs);
        free(sigs);
        free(v);
    }
    bb_free(&all);
    s = agree(comm, s);
    if (s == TD_OK) s = bcast(comm, &verdicts);
    if (s != TD_OK) {
        bb_free(&verdicts);
        goto out;
    }
    {
        /* apply: verdict records are sorted by key; this rank's docs are sorted too */
        size_t nv = verdicts.n / 9, j = 0;
        for (size_t i = 0; i < docs.n; i++) {
            uint64_t key;
            while (j < nv) {
                memcpy(&key, verdicts.p + 9 * j, 8);
                if (key >= docs.d[i].key) break;
                j++;
            }
            TD_ASSERT(j < nv);
            uint8_t v = verdicts.p[9 * j + 8];
            if (v != TD_DEDUP_KEEP) {
                st[v == TD_DEDUP_EXACT ? ST_DUP_EXACT : ST_DUP_NEAR]++;
                free(docs.d[i].text);
                docs.d[i].text = NULL;
            }
        }
    }
    bb_free(&verdicts);

    /* 5. tokenizer */
    if (o->tokenizer) {
        s = td_bpe_load(o->tokenizer, &tok);
    } else {
        td_bpe *sp = NULL;
        /* out of memory can fail it on one rank alone: every rank must leave together */
        s = agree(comm, td_bpe_new_bytes(o->specials, &sp));
        if (s != TD_OK) {
            td_bpe_free(&sp);
            goto out;
        }
        td_bpe_counts c;
        td_bpe_counts_init(&c);
        for (size_t i = 0; i < docs.n; i++)
            if (docs.d[i].text) td_bpe_counts_add_text(&c, sp, docs.d[i].text, docs.d[i].len);
        td_bpe_free(&sp);
        for (size_t i = 0; i < c.words.cap && s == TD_OK; i++) {
            const td_strmap_slot *sl = &c.words.slots[i];
            if (sl->len == UINT32_MAX) continue;
            s = bb_u64(&local, sl->len);
            if (s == TD_OK) s = bb_put(&local, td_strmap_key(&c.words, sl), sl->len);
            if (s == TD_OK) s = bb_u64(&local, sl->val);
        }
        td_bpe_counts_deinit(&c);
        s = agree(comm, s);
        if (s == TD_OK) s = gather(comm, &local, &all);
        bb_free(&local);
        if (s != TD_OK) goto out;
        bbuf tj = {0};
        if (rank == 0) {
            td_bpe_counts sum;
            td_bpe_counts_init(&sum);
            while (all.pos < all.n) {
                size_t l = bb_get_u64(&all);
                const char *wd = bb_get(&all, l);
                td_bpe_counts_add(&sum, wd, l, bb_get_u64(&all));
            }
            td_bpe_train_opts to = {o->vocab_size, 2, o->specials};
            td_bpe *t = NULL;
            s = td_bpe_train(&sum, &to, &t);
            td_bpe_counts_deinit(&sum);
            if (s == TD_OK) {
                char *j = td_bpe_to_json(t);
                s = bb_put(&tj, j, strlen(j));
                free(j);
                td_bpe_free(&t);
            }
        }
        bb_free(&all);
        s = agree(comm, s);
        if (s != TD_OK) {
            bb_free(&tj);
            goto out;
        }
        s = bcast(comm, &tj);
        if (s == TD_OK) s = td_bpe_from_json((const char *)tj.p, tj.n, "trained tokenizer", &tok);
        bb_free(&tj);
    }
    s = agree(comm, s);
    if (s != TD_OK) goto out;
    int eot = td_bpe_special_id(tok, "<|endoftext|>");
    if (eot < 0) {
        s = td_error_set(TD_ERR_INVALID, "%s: the tokenizer has no <|endoftext|> token",
                         o->tokenizer ? o->tokenizer : "tokenizer");
        goto out;
    }

    /* 6. encode this rank's documents; rank 0 writes them in key order */
    int32_t *ids = NULL;
    size_t idcap = 0;
    for (size_t i = 0; i < docs.n && s == TD_OK; i++) {
        doc *d = &docs.d[i];
        if (!d->text) continue;
        size_t n = td_bpe_encode(tok, d->text, d->len, &ids, &idcap);
        s = TD_GROW(ids, idcap, n + 1);
        if (s != TD_OK) break;
        ids[n++] = eot;
        uint64_t val = (d->sig.exact[0] % 1000000) < (uint64_t)(o->val_fraction * 1000000.0);
        s = bb_u64(&local, d->key);
        if (s == TD_OK) s = bb_u64(&local, val);
        if (s == TD_OK) s = bb_u64(&local, d->len);
        if (s == TD_OK) s = bb_u64(&local, n);
        if (s == TD_OK) s = bb_put(&local, ids, n * sizeof *ids);
        free(d->text);
        d->text = NULL;
        if (rank == 0 && !o->quiet && td_progress_is_tty() && (i % 2048 == 0 || i + 1 == docs.n)) {
            char line[128];
            snprintf(line, sizeof line, "prep: encoding %zu/%zu documents", i + 1, docs.n);
            td_progress_line(line);
        }
    }
    if (rank == 0) td_progress_done();
    free(ids);
    s = agree(comm, s);
    if (s == TD_OK) s = gather(comm, &local, &all);
    bb_free(&local);
    if (s != TD_OK) goto out;
    s = sum_stats(comm, st);
    if (s != TD_OK) goto out;
    if (rank == 0) {
        /* index the records, sort by key, write */
        size_t nrec = 0, capr = 0;
        struct rr {
            uint64_t key;
            size_t off;
        } *recs = NULL;
        while (s == TD_OK && all.pos < all.n) {
            s = TD_GROW(recs, capr, nrec + 1);
            if (s != TD_OK) break;
            recs[nrec].key = bb_get_u64(&all);
            recs[nrec].off = all.pos;
            nrec++;
            all.pos += 16;
            size_t n = bb_get_u64(&all);
            all.pos += n * sizeof(int32_t);
        }
        if (nrec) qsort(recs, nrec, sizeof *recs, cmp_key); /* recs is NULL without records */
        w.o = o;
        w.token_bytes = td_bpe_vocab_size(tok) <= 65536 ? 2 : 4;
        for (size_t i = 0; i < nrec && s == TD_OK; i++) {
            all.pos = recs[i].off;
            int val = (int)bb_get_u64(&all);
            size_t bytes = bb_get_u64(&all), n = bb_get_u64(&all);
            const int32_t *t = bb_get(&all, n * sizeof(int32_t));
            st[ST_DOCS_OUT]++;
            st[ST_BYTES_OUT] += (int64_t)bytes;
            st[val ? ST_TOKENS_VAL : ST_TOKENS_TRAIN] += (int64_t)n;
            st[ST_DOCS_VAL] += val;
            s = write_tokens(&w, val, t, n);
        }
        free(recs);
        if (s == TD_OK) s = flush_shard(&w, 0);
        if (s == TD_OK) s = flush_shard(&w, 1);
        if (s == TD_OK && st[ST_DOCS_OUT] == 0)
            s = td_error_set(TD_ERR_INVALID,
                             "the corpus is empty after cleaning and dedup (%lld documents in, "
                             "%lld files): nothing to write",
                             (long long)st[ST_DOCS_IN], (long long)st[ST_FILES]);
        if (s == TD_OK && st[ST_TOKENS_VAL] == 0)
            TD_LOG_WARN("prep: no document landed in the validation split (val_fraction %g)",
                        o->val_fraction);
        char p[4200], tsha[65] = "";
        if (s == TD_OK) {
            tok_json = td_bpe_to_json(tok);
            snprintf(p, sizeof p, "%s/tokenizer.json", o->out_dir);
            s = td_fs_write_file_atomic(p, tok_json, strlen(tok_json));
            if (s == TD_OK) s = td_sha256_file(p, tsha);
        }
        if (s == TD_OK) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddNumberToObject(m, "format", 1);
            cJSON *tj = cJSON_AddObjectToObject(m, "tokenizer");
            cJSON_AddStringToObject(tj, "file", "tokenizer.json");
            cJSON_AddStringToObject(tj, "sha256", tsha);
            cJSON_AddNumberToObject(tj, "vocab_size", td_bpe_vocab_size(tok));
            cJSON_AddStringToObject(tj, "source", o->tokenizer ? o->tokenizer : "trained");
            cJSON *sh = cJSON_AddArrayToObject(m, "shards");
            for (int i = 0; i < w.nshards; i++) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "file", w.shards[i].name);
                cJSON_AddStringToObject(e, "split", w.shards[i].split);
                cJSON_AddNumberToObject(e, "tokens", (double)w.shards[i].tokens);
                cJSON_AddNumberToObject(e, "token_bytes", w.token_bytes);
                cJSON_AddStringToObject(e, "sha256", w.shards[i].sha);
                cJSON_AddItemToArray(sh, e);
            }
            cJSON *ru = cJSON_AddObjectToObject(m, "rules");
            const td_clean_rules *r = &o->rules;
            cJSON_AddNumberToObject(ru, "min_chars", (double)r->min_chars);
            cJSON_AddNumberToObject(ru, "max_chars", (double)r->max_chars);
            cJSON_AddNumberToObject(ru, "min_letter_ratio", r->min_letter_ratio);
            cJSON_AddNumberToObject(ru, "max_symbol_ratio", r->max_symbol_ratio);
            cJSON_AddNumberToObject(ru, "max_dup_line_frac", r->max_dup_line_frac);
            cJSON_AddNumberToObject(ru, "max_top_ngram_frac", r->max_top_ngram_frac);
            cJSON_AddBoolToObject(ru, "fix_controls", r->fix_controls);
            cJSON_AddBoolToObject(ru, "nfc", r->nfc);
            cJSON_AddBoolToObject(ru, "exact_dedup", o->exact_dedup);
            cJSON_AddNumberToObject(ru, "near_dedup_threshold", o->near_threshold);
            cJSON_AddStringToObject(ru, "delimiter", o->delimiter ? o->delimiter : "");
            cJSON_AddStringToObject(ru, "text_field", o->text_field);
            cJSON_AddNumberToObject(ru, "val_fraction", o->val_fraction);
            cJSON_AddNumberToObject(ru, "shard_tokens", (double)o->shard_tokens);
            cJSON *sj = cJSON_AddObjectToObject(m, "stats");
            static const char *names[ST_COUNT] = {[ST_FILES] = "files",
                                                  [ST_FILES_BINARY] = "files_binary_skipped",
                                                  [ST_FILES_LINKED] = "files_linked_skipped",
                                                  [ST_BAD_JSON] = "bad_json_lines",
                                                  [ST_DOCS_IN] = "documents_in",
                                                  [ST_BYTES_IN] = "bytes_in",
                                                  [ST_FIX_ESC] = "fixed_escape_sequences",
                                                  [ST_FIX_OVERSTRIKE] = "fixed_overstrikes",
                                                  [ST_FIX_CONTROL] = "fixed_control_chars",
                                                  [ST_DOCS_FIXED] = "documents_fixed",
                                                  [ST_DUP_EXACT] = "dropped_exact_duplicate",
                                                  [ST_DUP_NEAR] = "dropped_near_duplicate",
                                                  [ST_DOCS_OUT] = "documents_out",
                                                  [ST_BYTES_OUT] = "bytes_out",
                                                  [ST_TOKENS_TRAIN] = "tokens_train",
                                                  [ST_TOKENS_VAL] = "tokens_val",
                                                  [ST_DOCS_VAL] = "documents_val"};
            for (int k = 0; k < ST_COUNT; k++) {
                char nm[64];
                if (k >= ST_CLEAN0 && k < ST_CLEAN0 + TD_CLEAN_NREASONS) {
                    if (k == ST_CLEAN0) continue;
                    snprintf(nm, sizeof nm, "dropped_%s",
                             td_clean_reason_name((td_clean_reason)(k - ST_CLEAN0)));
                } else {
                    snprintf(nm, sizeof nm, "%s", names[k]);
                }
                cJSON_AddNumberToObject(sj, nm, (double)st[k]);
            }
            cJSON *in = cJSON_AddArrayToObject(m, "inputs");
            for (int i = 0; i < o->n_inputs; i++)
                cJSON_AddItemToArray(in, cJSON_CreateString(o->inputs[i]));
            /* the only fields that differ between runs of the same inputs */
            cJSON *run = cJSON_AddObjectToObject(m, "run");
            cJSON_AddNumberToObject(run, "ranks", size);
            cJSON_AddNumberToObject(run, "seconds", td_time_now() - t0);
            snprintf(p, sizeof p, "%s/manifest.json", o->out_dir);
            s = td_json_save_file(p, m);
            cJSON_Delete(m);
        }
        if (s == TD_OK && !o->quiet)
            print_report(o, st, td_time_now() - t0, td_bpe_vocab_size(tok), w.nshards);
    }
    bb_free(&all);
    s = agree(comm, s);
out:
    for (int i = 0; i < fl.n; i++)
        free(fl.path[i]);
    free(fl.path);
    free(fl.dev);
    free(fl.ino);
    free(fl.ddev);
    free(fl.dino);
    for (size_t i = 0; i < docs.n; i++)
        free(docs.d[i].text);
    free(docs.d);
    free(w.buf[0]);
    free(w.buf[1]);
    free(w.shards);
    free(tok_json);
    bb_free(&local);
    bb_free(&all);
    td_bpe_free(&tok);
    return s;
}
