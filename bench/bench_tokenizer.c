/* Tokenizer-throughput benchmark: tandem's BPE encoder against Hugging Face `tokenizers`,
 * measured in the same run on the same documents, one thread each.
 *
 * The corpus (default: every regular file in /usr/share/games/fortunes except *.dat, in
 * name order; the *.u8 names are symlinks and are skipped) is concatenated, with a "%" line
 * after each file, and split into documents at lines that are exactly "%". Each of 3 runs
 * loads the tokenizer afresh (so the per-tokenizer piece cache starts empty; loading is not
 * timed) and encodes every document with td_bpe_encode; the table shows the median MB/s
 * (10^6 bytes of UTF-8 input per second), the token count and bytes per token. Then
 * `.venv/bin/python bench/tokenizers_speed.py` encodes the same documents with `tokenizers`
 * (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), both with encode() per document and
 * with encode_batch(), median of 3 fresh loads each, and checks its ids equal tandem's, id
 * for id. Exits 1 when the ids differ or the Python side cannot run.
 *
 * usage: bench_tokenizer [--tokenizer FILE] [--runs N] [--no-hf] [--json] [CORPUS_FILE...]
 *   default tokenizer: tests/reference/fixtures/tokenizer/tokenizer.json (vocab 2048) */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/timeutil.h"
#include "data/bpe.h"

#ifndef TD_SOURCE_DIR
#define TD_SOURCE_DIR "."
#endif
#define FORTUNE_DIR "/usr/share/games/fortunes"

typedef struct {
    size_t off, len;
} doc;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Regular files of the fortune directory, except *.dat, sorted; returns the count, or -1 when
 * out of memory (message printed). */
static int default_corpus(char ***out) {
    DIR *d = opendir(FORTUNE_DIR);
    if (!d) return 0;
    char **names = NULL;
    int n = 0;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || (l > 4 && !strcmp(e->d_name + l - 4, ".dat"))) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", FORTUNE_DIR, e->d_name);
        struct stat st;
        if (lstat(path, &st) || !S_ISREG(st.st_mode)) continue; /* *.u8 are symlinks */
        if (TD_GROW(names, cap, (size_t)n + 1) != TD_OK) {
            fprintf(stderr, "%s\n", td_error_message());
            closedir(d);
            for (int i = 0; i < n; i++)
                free(names[i]);
            free(names);
            return -1;
        }
        names[n++] = strdup(path);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    *out = names;
    return n;
}

/* Documents of text: the spans between lines that are exactly "%"; *count of them. */
static td_status split_documents(const char *text, size_t len, doc **out, size_t *count) {
    size_t n = 0, cap = 0, start = 0, i = 0;
    doc *d = NULL;
    for (;;) {
        int sep = i < len && (i == 0 || text[i - 1] == '\n') && text[i] == '%' &&
                  (i + 1 == len || text[i + 1] == '\n');
        if (i == len || sep) {
            if (i > start) {
                td_status s = TD_GROW(d, cap, n + 1);
                if (s != TD_OK) {
                    free(d);
                    return s;
                }
                d[n++] = (doc){start, i - start};
            }
            if (i == len) break;
            i = i + 1 < len ? i + 2 : len;
            start = i;
            continue;
        }
        i++;
    }
    *out = d;
    *count = n;
    return TD_OK;
}

int main(int argc, char **argv) {
    const char *tok_path = TD_SOURCE_DIR "/tests/reference/fixtures/tokenizer/tokenizer.json";
    int json = 0, runs = 3, hf = 1;
    char **files = NULL;
    int nfiles = 0;
    size_t files_cap = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
            tok_path = argv[++i];
        } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--no-hf")) {
            hf = 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr,
                    "usage: %s [--tokenizer FILE] [--runs N] [--no-hf] [--json] "
                    "[CORPUS_FILE...]\n",
                    argv[0]);
            return 2;
        } else {
            if (TD_GROW(files, files_cap, (size_t)nfiles + 1) != TD_OK) {
                fprintf(stderr, "%s\n", td_error_message());
                return 1;
            }
            files[nfiles++] = strdup(argv[i]);
        }
    }
    if (runs < 1) runs = 1;
    if (!nfiles && (nfiles = default_corpus(&files)) < 0) return 1;
    if (!nfiles) {
        fprintf(stderr,
                "no corpus: %s has no fortune files (apt-get install fortunes "
                "fortunes-zh) and none were named\n",
                FORTUNE_DIR);
        return 2;
    }
    char python[1200], script[1200];
    snprintf(python, sizeof python, "%s/.venv/bin/python", TD_SOURCE_DIR);
    snprintf(script, sizeof script, "%s/bench/tokenizers_speed.py", TD_SOURCE_DIR);
    if (hf && access(python, X_OK)) {
        fprintf(stderr,
                "%s not found: the comparison with Hugging Face tokenizers needs the project's "
                "Python environment (see tests/reference/README.md), or pass --no-hf\n",
                python);
        return 1;
    }

    /* corpus: the files, each followed by a "%" line */
    char *corpus = NULL;
    size_t clen = 0, corpus_cap = 0;
    for (int f = 0; f < nfiles; f++) {
        char *text;
        size_t len;
        if (td_fs_read_file(files[f], &text, &len) != TD_OK) {
            fprintf(stderr, "%s\n", td_error_message());
            return 1;
        }
        if (TD_GROW(corpus, corpus_cap, clen + len + 3) != TD_OK) {
            fprintf(stderr, "%s\n", td_error_message());
            return 1;
        }
        memcpy(corpus + clen, text, len);
        clen += len;
        if (len && text[len - 1] != '\n') corpus[clen++] = '\n';
        corpus[clen++] = '%';
        corpus[clen++] = '\n';
        free(text);
    }
    doc *docs = NULL;
    size_t ndocs = 0, nbytes = 0;
    if (split_documents(corpus, clen, &docs, &ndocs) != TD_OK) {
        fprintf(stderr, "%s\n", td_error_message());
        return 1;
    }
    for (size_t i = 0; i < ndocs; i++)
        nbytes += docs[i].len;

    /* tandem */
    double *mbps = calloc((size_t)runs, sizeof *mbps), load_s = 0;
    int32_t *ids = NULL, *all = NULL;
    size_t cap = 0, ntok = 0, all_cap = 0;
    int vocab = 0;
    for (int r = 0; r < runs; r++) {
        td_bpe *t = NULL;
        double t0 = td_time_now();
        if (td_bpe_load(tok_path, &t) != TD_OK) {
            fprintf(stderr, "%s\n", td_error_message());
            return 1;
        }
        load_s += td_time_now() - t0;
        vocab = td_bpe_vocab_size(t);
        int last = r == runs - 1;
        ntok = 0;
        t0 = td_time_now();
        for (size_t i = 0; i < ndocs; i++) {
            size_t k = td_bpe_encode(t, corpus + docs[i].off, docs[i].len, &ids, &cap);
            if (last) { /* keep the ids of the last run for the comparison */
                if (TD_GROW(all, all_cap, ntok + k) != TD_OK) {
                    fprintf(stderr, "%s\n", td_error_message());
                    return 1;
                }
                memcpy(all + ntok, ids, k * sizeof *ids);
            }
            ntok += k;
        }
        mbps[r] = (double)nbytes / 1e6 / (td_time_now() - t0);
        td_bpe_free(&t);
    }
    double *sorted = malloc((size_t)runs * sizeof *sorted);
    memcpy(sorted, mbps, (size_t)runs * sizeof *sorted);
    qsort(sorted, (size_t)runs, sizeof *sorted, cmp_d);
    double ours = sorted[runs / 2];

    /* tokenizers */
    cJSON *res = NULL;
    int status = 0;
    if (hf) {
        char cpath[] = "/tmp/td_bench_tok_corpus.XXXXXX", ipath[] = "/tmp/td_bench_tok_ids.XXXXXX";
        int cfd = mkstemp(cpath), ifd = mkstemp(ipath);
        if (cfd < 0 || ifd < 0) {
            fprintf(stderr, "cannot create temp files in /tmp: %s\n", strerror(errno));
            return 1;
        }
        FILE *cf = fdopen(cfd, "wb"), *idf = fdopen(ifd, "wb");
        int wok =
            fwrite(corpus, 1, clen, cf) == clen && fwrite(all, sizeof *all, ntok, idf) == ntok;
        wok &= !fclose(cf) & !fclose(idf);
        if (!wok) {
            fprintf(stderr, "writing temp files failed\n");
            return 1;
        }
        setenv("RAYON_NUM_THREADS", "1", 1);
        setenv("TOKENIZERS_PARALLELISM", "false", 1);
        char cmd[6000];
        snprintf(cmd, sizeof cmd, "'%s' '%s' --tokenizer '%s' --corpus '%s' --ids '%s' --runs %d",
                 python, script, tok_path, cpath, ipath, runs);
        if (!json) fprintf(stderr, "running %s\n", cmd);
        FILE *p = popen(cmd, "r");
        char line[1 << 16] = {0}, buf[1 << 16];
        while (p && fgets(buf, sizeof buf, p))
            if (buf[0] == '{') memcpy(line, buf, sizeof line);
        int rc = p ? pclose(p) : -1;
        unlink(cpath);
        unlink(ipath);
        res = cJSON_Parse(line);
        if (rc != 0 || !res) {
            fprintf(stderr, "%s failed (exit status %d); see its message above\n", script, rc);
            return 1;
        }
    }
    double hf_doc = 0, hf_batch = 0, hf_tokens = 0;
    int ids_match = 1;
    if (res) {
        hf_doc = cJSON_GetObjectItem(res, "encode_mbps")->valuedouble;
        hf_batch = cJSON_GetObjectItem(res, "encode_batch_mbps")->valuedouble;
        hf_tokens = cJSON_GetObjectItem(res, "tokens")->valuedouble;
        ids_match = cJSON_IsTrue(cJSON_GetObjectItem(res, "ids_match")) &&
                    (size_t)hf_tokens == ntok &&
                    cJSON_GetObjectItem(res, "documents")->valuedouble == (double)ndocs;
        if (!ids_match) status = 1;
    }

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tokenizer", tok_path);
        cJSON_AddNumberToObject(o, "vocab_size", vocab);
        cJSON_AddNumberToObject(o, "files", nfiles);
        cJSON_AddNumberToObject(o, "documents", (double)ndocs);
        cJSON_AddNumberToObject(o, "bytes", (double)nbytes);
        cJSON_AddNumberToObject(o, "tokens", (double)ntok);
        cJSON_AddNumberToObject(o, "bytes_per_token", (double)nbytes / (double)ntok);
        cJSON_AddNumberToObject(o, "tandem_mbps", ours);
        cJSON_AddItemToObject(o, "tandem_runs", cJSON_CreateDoubleArray(mbps, runs));
        cJSON_AddNumberToObject(o, "tandem_load_s", load_s / runs);
        if (res) {
            cJSON_AddItemToObject(o, "tokenizers", cJSON_Duplicate(res, 1));
            cJSON_AddNumberToObject(o, "ratio_vs_encode", ours / hf_doc);
            cJSON_AddNumberToObject(o, "ratio_vs_encode_batch", ours / hf_batch);
            cJSON_AddBoolToObject(o, "ids_match", ids_match);
        }
        char *s = cJSON_Print(o);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    } else {
        printf("tokenizer  %s (vocab %d)\n", tok_path, vocab);
        printf("corpus     %d files, %zu documents, %.2f MB, one thread, median of %d runs "
               "(fresh tokenizer each)\n",
               nfiles, ndocs, (double)nbytes / 1e6, runs);
        printf("\n%-34s %9s %11s %12s %8s\n", "encoder", "MB/s", "tokens", "bytes/token", "ratio");
        printf("%-34s %9.2f %11zu %12.3f %8s\n", "tandem td_bpe_encode per document", ours, ntok,
               (double)nbytes / (double)ntok, "1.00");
        if (res) {
            const char *ver = cJSON_GetObjectItem(res, "tokenizers")->valuestring;
            char l1[64], l2[64];
            snprintf(l1, sizeof l1, "tokenizers %s encode per doc", ver);
            snprintf(l2, sizeof l2, "tokenizers %s encode_batch", ver);
            printf("%-34s %9.2f %11.0f %12.3f %8.2f\n", l1, hf_doc, hf_tokens,
                   (double)nbytes / hf_tokens, ours / hf_doc);
            printf("%-34s %9.2f %11.0f %12.3f %8.2f\n", l2, hf_batch,
                   cJSON_GetObjectItem(res, "tokens_batch")->valuedouble,
                   (double)nbytes / hf_tokens, ours / hf_batch);
            printf("\nratio = tandem MB/s / that row's MB/s. tandem load %.1f ms (untimed).\n",
                   1e3 * load_s / runs);
            printf("token ids: tandem %zu, tokenizers %.0f: %s\n", ntok, hf_tokens,
                   ids_match ? "identical, id for id" : "DIFFERENT");
        }
    }
    if (!ids_match) {
        char *s = cJSON_PrintUnformatted(cJSON_GetObjectItem(res, "first_mismatch"));
        fprintf(stderr, "tandem and tokenizers disagree (ids_match false); first mismatch: %s\n",
                s ? s : "(none reported; counts differ)");
        free(s);
    }
    cJSON_Delete(res);
    for (int f = 0; f < nfiles; f++)
        free(files[f]);
    free(files);
    free(corpus);
    free(docs);
    free(ids);
    free(all);
    free(mbps);
    free(sorted);
    return status;
}
