/* `tandem prep`: text files to token shards with the byte-level tokenizer.
 *
 * This is the first slice of the data pipeline: documents are whole files, or the entries
 * of fortune-format files (--format fortune: entries separated by lines holding "%");
 * each document becomes its bytes followed by <|endoftext|> (256). Every 20th document
 * (5 %) goes to the validation split. Output: OUT/train_000000.bin, OUT/val_000000.bin
 * (llm.c layout, uint16), OUT/tokenizer.json and OUT/manifest.json. Cleaning, dedup and
 * the trained BPE tokenizer come with the full pipeline. */
#include <dirent.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/json.h"
#include "data/bytetok.h"
#include "data/shard.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: tandem prep --out DIR [--format text|fortune] [--val-every N] INPUT...\n"
            "\n"
            "Tokenizes text files (or every regular file of an INPUT directory, skipping *.dat)\n"
            "with the byte-level tokenizer into llm.c-format shards (with --format fortune,\n"
            "also skipping the *.u8 links of fortune directories). See docs/prep.md.\n"
            "\n"
            "  --out DIR        output directory (created)\n"
            "  --format F       text: a file is one document (default);\n"
            "                   fortune: entries separated by lines holding only \"%%\"\n"
            "  --val-every N    every Nth document goes to the validation split (default 20)\n"
            "  -h, --help       this text\n");
}

typedef struct {
    int32_t *v;
    size_t n, cap;
} tokbuf;

static void push(tokbuf *b, const int32_t *ids, size_t n) {
    if (b->n + n > b->cap) {
        while (b->n + n > b->cap)
            b->cap = b->cap ? 2 * b->cap : 1 << 16;
        b->v = realloc(b->v, sizeof *b->v * b->cap);
    }
    memcpy(b->v + b->n, ids, sizeof *ids * n);
    b->n += n;
}

typedef struct {
    tokbuf train, val;
    long docs, every, files;
    int fortune;
} prep_state;

static void add_doc(prep_state *st, const char *text, size_t len) {
    if (len == 0) return;
    int32_t *ids = malloc(sizeof *ids * (len + 1));
    td_bytetok_encode(text, len, ids);
    ids[len] = TD_BYTETOK_EOT;
    tokbuf *dst = (st->docs % st->every == st->every - 1) ? &st->val : &st->train;
    push(dst, ids, len + 1);
    free(ids);
    st->docs++;
}

static td_status add_file(prep_state *st, const char *path) {
    char *text;
    size_t len;
    TD_TRY(td_fs_read_file(path, &text, &len));
    st->files++;
    if (!st->fortune) {
        add_doc(st, text, len);
    } else {
        size_t start = 0, i = 0;
        while (i <= len) {
            size_t eol = i;
            while (eol < len && text[eol] != '\n')
                eol++;
            int sep = eol - i == 1 && text[i] == '%';
            if (sep || eol >= len) {
                size_t end = sep ? i : len;
                add_doc(st, text + start, end - start);
                start = eol + 1;
            }
            i = eol + 1;
        }
    }
    free(text);
    return TD_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static td_status add_input(prep_state *st, const char *path) {
    if (!td_fs_is_dir(path)) {
        if (!td_fs_exists(path))
            return td_error_set(TD_ERR_NOTFOUND, "input %s does not exist", path);
        return add_file(st, path);
    }
    DIR *d = opendir(path);
    if (!d) return td_error_set(TD_ERR_IO, "cannot open directory %s", path);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || (l > 4 && !strcmp(e->d_name + l - 4, ".dat"))) continue;
        /* fortune directories hold FILE.u8 links to FILE for UTF-8 locales */
        if (st->fortune && l > 3 && !strcmp(e->d_name + l - 3, ".u8")) continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (td_fs_is_dir(p)) continue;
        names = realloc(names, sizeof *names * (n + 1));
        names[n++] = strdup(p);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    td_status s = TD_OK;
    for (size_t i = 0; i < n; i++) {
        if (s == TD_OK) s = add_file(st, names[i]);
        free(names[i]);
    }
    free(names);
    return s;
}

int td_cmd_prep(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"format", required_argument, 0, 'f'},
                                         {"val-every", required_argument, 0, 'v'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = NULL;
    prep_state st = {.every = 20};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'f':
            if (!strcmp(optarg, "fortune"))
                st.fortune = 1;
            else if (strcmp(optarg, "text")) {
                fprintf(stderr, "tandem prep: --format must be text or fortune\n");
                return 2;
            }
            break;
        case 'v':
            st.every = strtol(optarg, NULL, 10);
            if (st.every < 2) {
                fprintf(stderr, "tandem prep: --val-every must be at least 2\n");
                return 2;
            }
            break;
        case 'h':
            help(stdout);
            return 0;
        default:
            help(stderr);
            return 2;
        }
    }
    if (!out || optind >= argc) {
        fprintf(stderr, "tandem prep: need --out DIR and at least one INPUT\n");
        help(stderr);
        return 2;
    }
    td_status s = TD_OK;
    for (int i = optind; i < argc && s == TD_OK; i++)
        s = add_input(&st, argv[i]);
    if (s == TD_OK && (st.train.n == 0 || st.val.n == 0))
        s = td_error_set(TD_ERR_INVALID,
                         "the inputs hold %ld documents: too few for both a train and a "
                         "validation split (--val-every %ld)",
                         st.docs, st.every);
    char p[4200];
    if (s == TD_OK) s = td_fs_mkdirs(out);
    if (s == TD_OK) {
        snprintf(p, sizeof p, "%s/train_000000.bin", out);
        s = td_shard_write(p, st.train.v, st.train.n, 2);
    }
    if (s == TD_OK) {
        snprintf(p, sizeof p, "%s/val_000000.bin", out);
        s = td_shard_write(p, st.val.v, st.val.n, 2);
    }
    if (s == TD_OK) {
        char *tj = td_bytetok_hf_json();
        snprintf(p, sizeof p, "%s/tokenizer.json", out);
        s = td_fs_write_file_atomic(p, tj, strlen(tj));
        free(tj);
    }
    if (s == TD_OK) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "tokenizer", "bytes");
        cJSON_AddNumberToObject(m, "vocab_size", TD_BYTETOK_VOCAB);
        cJSON_AddNumberToObject(m, "documents", (double)st.docs);
        cJSON_AddNumberToObject(m, "files", (double)st.files);
        cJSON *sh = cJSON_AddArrayToObject(m, "shards");
        const char *names[2] = {"train_000000.bin", "val_000000.bin"};
        size_t counts[2] = {st.train.n, st.val.n};
        for (int i = 0; i < 2; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "file", names[i]);
            cJSON_AddStringToObject(o, "split", i ? "val" : "train");
            cJSON_AddNumberToObject(o, "tokens", (double)counts[i]);
            cJSON_AddItemToArray(sh, o);
        }
        snprintf(p, sizeof p, "%s/manifest.json", out);
        s = td_json_save_file(p, m);
        cJSON_Delete(m);
    }
    free(st.train.v);
    free(st.val.v);
    if (s != TD_OK) return td_cli_fail("prep", s);
    printf("prep: %ld files, %ld documents -> %zu train + %zu val tokens in %s\n", st.files,
           st.docs, st.train.n, st.val.n, out);
    return 0;
}
