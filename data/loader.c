/* Deterministic shard loader (see loader.h). */
#include "data/loader.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/log.h"
#include "common/rng.h"

struct td_loader {
    td_shard *shards;
    int nshards;
    int B, T, shuffle;
    uint64_t seed;
    /* window w covers tokens [win_start[w], win_start[w] + T] of shard win_shard[w] */
    uint32_t *win_shard;
    uint64_t *win_start;
    size_t nwin, ntokens;
    size_t *order; /* permutation of windows for the current epoch */
    int64_t epoch, cursor;
    int32_t max_token;
    int global_batch, slice_begin; /* data parallelism; global_batch = B when alone */
    uint64_t *last;                /* window ids of the last batch (B) */
};

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void make_order(td_loader *l) {
    for (size_t i = 0; i < l->nwin; i++)
        l->order[i] = i;
    if (!l->shuffle) return;
    td_rng r;
    td_rng_seed(&r, l->seed * 1000003ULL + (uint64_t)l->epoch);
    for (size_t i = l->nwin - 1; i > 0; i--) {
        size_t j = (size_t)td_rng_below(&r, i + 1);
        size_t t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

td_status td_loader_open(const char *source, const char *split, int B, int T, uint64_t seed,
                         int shuffle, td_loader **out) {
    *out = NULL;
    char **names = NULL;
    int n = 0;
    if (td_fs_is_dir(source)) {
        DIR *d = opendir(source);
        if (!d) return td_error_set(TD_ERR_IO, "cannot open data directory %s", source);
        struct dirent *e;
        size_t cap = 0;
        while ((e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (len < 4 || strcmp(e->d_name + len - 4, ".bin")) continue;
            if (split && !strstr(e->d_name, split)) continue;
            td_status s = TD_GROW(names, cap, (size_t)n + 1);
            if (s != TD_OK) {
                closedir(d);
                for (int i = 0; i < n; i++)
                    free(names[i]);
                free(names);
                return td_error_wrap(s, "listing %s: ", source);
            }
            names[n] = malloc(strlen(source) + len + 2);
            sprintf(names[n], "%s/%s", source, e->d_name);
            n++;
        }
        closedir(d);
        qsort(names, (size_t)n, sizeof *names, cmp_str);
        if (n == 0)
            return td_error_set(TD_ERR_NOTFOUND,
                                "no %s shards (*%s*.bin) in %s; run `tandem prep` to make them",
                                split ? split : "", split ? split : "", source);
    } else if (td_fs_exists(source)) {
        names = malloc(sizeof *names);
        names[0] = strdup(source);
        n = 1;
    } else {
        return td_error_set(TD_ERR_NOTFOUND, "data source %s does not exist", source);
    }
    td_loader *l = calloc(1, sizeof *l);
    l->B = B;
    l->T = T;
    l->global_batch = B;
    l->last = calloc((size_t)B, sizeof *l->last);
    l->seed = seed;
    l->shuffle = shuffle;
    l->shards = calloc((size_t)n, sizeof *l->shards);
    td_status s = TD_OK;
    for (int i = 0; i < n && s == TD_OK; i++) {
        s = td_shard_open(names[i], &l->shards[i]);
        if (s == TD_OK) l->nshards++;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (s != TD_OK) {
        td_loader_free(&l);
        return s;
    }
    for (int i = 0; i < l->nshards; i++) {
        l->ntokens += l->shards[i].count;
        if (l->shards[i].count > (size_t)T) l->nwin += (l->shards[i].count - 1) / (size_t)T;
    }
    if (l->nwin < (size_t)B) {
        size_t nt = l->ntokens, nw = l->nwin;
        td_loader_free(&l);
        return td_error_set(TD_ERR_INVALID,
                            "%s: %zu tokens make only %zu windows of %d+1 tokens, fewer than "
                            "one batch of %d; use more data or a smaller seq_len/batch_size",
                            source, nt, nw, T, B);
    }
    l->win_shard = malloc(sizeof *l->win_shard * l->nwin);
    l->win_start = malloc(sizeof *l->win_start * l->nwin);
    l->order = malloc(sizeof *l->order * l->nwin);
    if (!l->win_shard || !l->win_start || !l->order) {
        td_loader_free(&l);
        return td_error_set(TD_ERR_NOMEM, "out of memory indexing %s", source);
    }
    size_t w = 0;
    for (int i = 0; i < l->nshards; i++) {
        const td_shard *sh = &l->shards[i];
        for (size_t k = 0; sh->count > (size_t)T && k < (sh->count - 1) / (size_t)T; k++) {
            l->win_shard[w] = (uint32_t)i;
            l->win_start[w] = k * (size_t)T;
            w++;
        }
        for (size_t k = 0; k < sh->count; k++) {
            int32_t t = td_shard_token(sh, k);
            if (t > l->max_token) l->max_token = t;
        }
    }
    make_order(l);
    *out = l;
    return TD_OK;
}

void td_loader_free(td_loader **lp) {
    if (!lp || !*lp) return;
    td_loader *l = *lp;
    for (int i = 0; i < l->nshards; i++)
        td_shard_close(&l->shards[i]);
    free(l->shards);
    free(l->win_shard);
    free(l->win_start);
    free(l->order);
    free(l->last);
    free(l);
    *lp = NULL;
}

void td_loader_next(td_loader *l, int32_t *tokens, int32_t *targets) {
    int T = l->T;
    for (int g = 0; g < l->global_batch; g++) {
        if ((size_t)l->cursor >= l->nwin) {
            l->epoch++;
            l->cursor = 0;
            make_order(l);
        }
        size_t w = l->order[l->cursor++];
        int b = g - l->slice_begin;
        if (b < 0 || b >= l->B) continue; /* another rank's share of the global batch */
        l->last[b] = w;
        const td_shard *sh = &l->shards[l->win_shard[w]];
        size_t s0 = l->win_start[w];
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = td_shard_token(sh, s0 + (size_t)t);
            targets[b * T + t] = td_shard_token(sh, s0 + (size_t)t + 1);
        }
    }
}

void td_loader_set_slice(td_loader *l, int global_batch, int begin, int end) {
    TD_ASSERT(end - begin == l->B && begin >= 0 && end <= global_batch);
    l->global_batch = global_batch;
    l->slice_begin = begin;
}

const uint64_t *td_loader_last_windows(const td_loader *l) {
    return l->last;
}

int td_loader_num_shards(const td_loader *l) {
    return l->nshards;
}

const td_shard *td_loader_shard(const td_loader *l, int i) {
    return &l->shards[i];
}

int32_t td_loader_max_token(const td_loader *l) {
    return l->max_token;
}
size_t td_loader_num_windows(const td_loader *l) {
    return l->nwin;
}
size_t td_loader_num_tokens(const td_loader *l) {
    return l->ntokens;
}
void td_loader_get_pos(const td_loader *l, int64_t *epoch, int64_t *cursor) {
    *epoch = l->epoch;
    *cursor = l->cursor;
}
void td_loader_set_pos(td_loader *l, int64_t epoch, int64_t cursor) {
    l->epoch = epoch;
    l->cursor = cursor < 0 ? 0 : cursor;
    make_order(l);
}
void td_loader_reset(td_loader *l) {
    td_loader_set_pos(l, 0, 0);
}
