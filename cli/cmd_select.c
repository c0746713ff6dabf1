/* `tandem select --data DIR --model CKPT --keep-fraction F --out DIR`: data selection. Every
 * document of a prepared corpus's train split (the tokens between <|endoftext|> markers) is
 * scored by a model's loss per token; near-duplicate clusters (MinHash over the decoded
 * text) keep one member; documents are then taken in the order of the chosen rule until
 * the kept tokens reach the fraction. The result is a prepared corpus like prep's: a train
 * shard of the kept documents in their original order, the validation shards and tokenizer
 * unchanged, and a manifest.json whose "selection" block records how it was chosen, with a
 * line per document in selection.jsonl. Written to a temporary directory and renamed. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/grow.h"
#include "common/json.h"
#include "common/progress.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "data/bpe.h"
#include "data/dedup.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "worker/model/checkpoint.h"
#include "worker/model/model.h"

static void help(FILE *f) {
    fprintf(f, "usage: tandem select --data DIR --keep-fraction F --out DIR [--model CKPT] "
               "[options]\n"
               "\n"
               "Writes a smaller prepared corpus: documents of DIR's train split chosen by a\n"
               "model's loss per token, one per near-duplicate cluster, up to F of the tokens.\n"
               "Validation shards and the tokenizer are kept as they are; manifest.json records\n"
               "how the documents were chosen, selection.jsonl each document's score. See\n"
               "docs/distill.md.\n"
               "\n"
               "  --data DIR            a directory tandem prep wrote (shards, tokenizer.json)\n"
               "  --out DIR             the new corpus (must not exist)\n"
               "  --keep-fraction F     share of the train tokens to keep, in (0, 1]\n"
               "  --model CKPT          the scoring model (same tokenizer); not for --by random\n"
               "  --by RULE             middle (default): losses nearest the median first;\n"
               "                        low: lowest loss first; high: highest first;\n"
               "                        random: a seeded random order (no model, no dedup)\n"
               "  --near-threshold J    MinHash Jaccard at which documents are one cluster\n"
               "                        (default 0.7; 0 turns clustering off)\n"
               "  --seed S              for --by random (default 1)\n"
               "  --no-verify           load the model without checking its SHA256SUMS\n"
               "  --quiet               no progress or summary\n"
               "  -h, --help            this text\n");
}

typedef struct {
    size_t shard, begin, len; /* tokens [begin, begin + len) of shard, the <|endoftext|> too */
    double loss;              /* mean loss per predicted token (NAN: not scored) */
    int dup;                  /* 1: a near-duplicate of an earlier document */
    int kept;
    double key; /* sort key */
} doc_t;

static int by_key(const void *a, const void *b) {
    const doc_t *x = *(doc_t *const *)a, *y = *(doc_t *const *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x < y ? -1 : x > y; /* ties: corpus order */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The shards of a split in name order. */
static td_status list_shards(const char *dir, const char *split, char ***names, int *n) {
    DIR *d = opendir(dir);
    if (!d) return td_error_set(TD_ERR_NOTFOUND, "--data %s: %s", dir, strerror(errno));
    struct dirent *e;
    *n = 0;
    *names = NULL;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".bin") || !strstr(e->d_name, split)) continue;
        char **g = realloc(*names, (size_t)(*n + 1) * sizeof **names);
        if (!g) break;
        *names = g;
        (*names)[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    for (int i = 1; i < *n; i++) /* insertion sort: few shards */
        for (int k = i; k > 0 && strcmp((*names)[k - 1], (*names)[k]) > 0; k--) {
            char *t = (*names)[k];
            (*names)[k] = (*names)[k - 1];
            (*names)[k - 1] = t;
        }
    return TD_OK;
}

/* Mean loss per predicted token of one document, in windows of the model's context. */
static td_status score_doc(td_model *m, const td_shard *sh, const doc_t *d, int ctx, int32_t *tok,
                           int32_t *tgt, double *out) {
    double sum = 0;
    long cnt = 0;
    for (size_t at = 0; at + 1 < d->len; at += (size_t)ctx) {
        size_t T = d->len - 1 - at < (size_t)ctx ? d->len - 1 - at : (size_t)ctx;
        for (size_t i = 0; i < T; i++) {
            tok[i] = td_shard_token(sh, d->begin + at + i);
            tgt[i] = td_shard_token(sh, d->begin + at + i + 1);
        }
        double l = 0;
        TD_TRY(td_model_forward(m, tok, tgt, 1, (int)T, &l));
        sum += l * (double)T;
        cnt += (long)T;
    }
    *out = cnt ? sum / (double)cnt : NAN;
    return TD_OK;
}

static td_status copy_file(const char *from, const char *to) {
    char *buf = NULL;
    size_t len = 0;
    TD_TRY(td_fs_read_file(from, &buf, &len));
    td_status s = td_fs_write_file_atomic(to, buf, len);
    free(buf);
    return s;
}

int td_cmd_select(int argc, char **argv) {
    enum { O_NEAR = 256, O_NOVERIFY };
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"out", required_argument, 0, 'o'},
                                         {"keep-fraction", required_argument, 0, 'f'},
                                         {"model", required_argument, 0, 'm'},
                                         {"by", required_argument, 0, 'b'},
                                         {"near-threshold", required_argument, 0, O_NEAR},
                                         {"seed", required_argument, 0, 's'},
                                         {"no-verify", no_argument, 0, O_NOVERIFY},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *data = NULL, *out = NULL, *model_dir = NULL, *by = "middle";
    double frac = -1, near = 0.7;
    long seed = 1;
    int c, quiet = 0, no_verify = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'm':
            model_dir = optarg;
            break;
        case 'b':
            by = optarg;
            break;
        case 'f':
            if (!td_cli_double(optarg, 0, 1, &frac) || frac == 0) {
                fprintf(stderr,
                        "tandem select: --keep-fraction needs a share in (0, 1], got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case O_NEAR:
            if (!td_cli_double(optarg, 0, 1, &near)) {
                fprintf(stderr,
                        "tandem select: --near-threshold needs a Jaccard in [0, 1], got "
                        "'%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 's':
            if (!td_cli_long(optarg, 0, LONG_MAX, &seed)) {
                fprintf(stderr, "tandem select: --seed needs a number >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        case O_NOVERIFY:
            no_verify = 1;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            help(stdout);
            return 0;
        default:
            help(stderr);
            return 2;
        }
    }
    int rule = !strcmp(by, "middle")   ? 0
               : !strcmp(by, "low")    ? 1
               : !strcmp(by, "high")   ? 2
               : !strcmp(by, "random") ? 3
                                       : -1;
    if (rule < 0) {
        fprintf(stderr, "tandem select: --by \"%s\" is not one of middle, low, high, random\n", by);
        return 2;
    }
    if (!data || !out || frac < 0 || optind != argc || (rule != 3 && !model_dir)) {
        fprintf(stderr, "tandem select: need --data, --out, --keep-fraction%s\n",
                rule != 3 ? " and --model (or --by random)" : "");
        help(stderr);
        return 2;
    }
    if (rule == 3 && model_dir) {
        fprintf(stderr, "tandem select: --by random uses no model; leave out --model\n");
        return 2;
    }
    if (td_fs_exists(out)) {
        fprintf(stderr, "tandem select: --out %s already exists; choose a new directory\n", out);
        return 2;
    }
    {
        char parent[4096];
        td_fs_dirname(out, parent, sizeof parent);
        if (!out[0] || !td_fs_is_dir(parent)) {
            fprintf(stderr, "tandem select: --out %s: the directory %s does not exist\n", out,
                    parent);
            return 2;
        }
    }
    double t0 = td_time_now();
    char **names = NULL, **vnames = NULL, p[4200], q[4200], tmp[4200];
    int ns = 0, nv = 0;
    td_shard *sh = NULL;
    doc_t *docs = NULL, **order = NULL;
    size_t nd = 0, dcap = 0, total = 0;
    td_model *m = NULL;
    td_bpe *tok = NULL;
    td_doc_sig *sigs = NULL;
    int32_t *tb = NULL, *tg = NULL, *kept_ids = NULL;
    char *text = NULL, *tok_json = NULL;
    size_t tcap = 0, tj_len = 0;
    uint8_t *verdict = NULL;
    cJSON *man = NULL;
    FILE *sel = NULL;
    tmp[0] = '\0';
    /* the corpus as prep left it: every shard's size and sha256 against manifest.json (the
     * scoring reads every token anyway), so a damaged corpus is not passed on re-hashed */
    td_manifest_report mr;
    td_status s = td_manifest_check(data, 1, &mr);
    if (s == TD_OK) s = list_shards(data, "train", &names, &ns);
    if (s == TD_OK) s = list_shards(data, "val", &vnames, &nv);
    if (s == TD_OK && ns == 0)
        s = td_error_set(TD_ERR_NOTFOUND, "--data %s: no train shards (*train*.bin)", data);
    snprintf(p, sizeof p, "%s/tokenizer.json", data);
    if (s == TD_OK) s = td_fs_read_file(p, &tok_json, &tj_len);
    if (s == TD_OK) s = td_bpe_from_json(tok_json, tj_len, p, &tok);
    int eot = tok ? td_bpe_special_id(tok, "<|endoftext|>") : -1;
    if (s == TD_OK && eot < 0)
        s = td_error_set(TD_ERR_FORMAT, "%s: the tokenizer has no <|endoftext|> token", p);
    if (s == TD_OK && !(sh = calloc((size_t)ns, sizeof *sh)))
        s = td_error_set(TD_ERR_NOMEM, "out of memory");
    /* the documents: runs of tokens ending with <|endoftext|> (a last one without it too) */
    int token_bytes = 2;
    for (int i = 0; s == TD_OK && i < ns; i++) {
        snprintf(p, sizeof p, "%s/%s", data, names[i]);
        s = td_shard_open(p, &sh[i]);
        if (s != TD_OK) break;
        if (sh[i].token_bytes == 4) token_bytes = 4;
        int nvocab = td_bpe_vocab_size(tok);
        for (size_t k = 0; k < sh[i].count; k++)
            if (td_shard_token(&sh[i], k) >= nvocab) {
                s = td_error_set(TD_ERR_FORMAT,
                                 "%s: token %zu is id %d, outside the tokenizer's %d ids: the "
                                 "shard is damaged or from another tokenizer; make the data "
                                 "again with tandem prep",
                                 p, k, td_shard_token(&sh[i], k), nvocab);
                break;
            }
        if (s != TD_OK) break;
        size_t b = 0;
        for (size_t k = 0; k < sh[i].count && s == TD_OK; k++) {
            if (td_shard_token(&sh[i], k) != eot && k + 1 < sh[i].count) continue;
            if (nd == dcap) {
                dcap = dcap ? 2 * dcap : 1024;
                doc_t *g = realloc(docs, dcap * sizeof *docs);
                if (!g) {
                    s = td_error_set(TD_ERR_NOMEM, "out of memory");
                    break;
                }
                docs = g;
            }
            docs[nd++] = (doc_t){.shard = (size_t)i, .begin = b, .len = k + 1 - b, .loss = NAN};
            total += k + 1 - b;
            b = k + 1;
        }
    }
    if (s == TD_OK && nd == 0) s = td_error_set(TD_ERR_FORMAT, "--data %s: no documents", data);
    if (s == TD_OK && rule != 3) { /* the model: checked, the same tokenizer */
        s = td_checkpoint_check(model_dir, no_verify);
        char *mj = NULL;
        size_t ml = 0;
        snprintf(q, sizeof q, "%s/tokenizer.json", model_dir);
        if (s == TD_OK) s = td_fs_read_file(q, &mj, &ml);
        if (s == TD_OK && (ml != tj_len || memcmp(mj, tok_json, ml)))
            s = td_error_set(TD_ERR_INVALID,
                             "--model %s has another tokenizer than --data %s: scores need the "
                             "model that reads these token ids",
                             model_dir, data);
        free(mj);
        if (s == TD_OK) s = td_checkpoint_load_model(model_dir, &m);
    }
    int ctx = m ? td_model_config_of(m)->max_position_embeddings : 0;
    if (s == TD_OK && m) {
        s = td_model_plan(m, 1, ctx, 0);
        tb = malloc((size_t)ctx * sizeof *tb);
        tg = malloc((size_t)ctx * sizeof *tg);
        sigs = malloc(nd * sizeof *sigs);
        verdict = calloc(nd, 1);
        if (s == TD_OK && (!tb || !tg || !sigs || !verdict))
            s = td_error_set(TD_ERR_NOMEM, "out of memory");
        int32_t *ids = NULL;
        size_t icap = 0;
        for (size_t i = 0; s == TD_OK && i < nd; i++) {
            doc_t *d = &docs[i];
            s = score_doc(m, &sh[d->shard], d, ctx, tb, tg, &d->loss);
            if (s == TD_OK && near > 0) { /* its text's MinHash signature */
                s = TD_GROW(ids, icap, d->len);
                if (s != TD_OK) break;
                for (size_t k = 0; k < d->len; k++)
                    ids[k] = td_shard_token(&sh[d->shard], d->begin + k);
                size_t tl = td_bpe_decode(tok, ids, d->len, &text, &tcap);
                td_dedup_signature(text, tl, &sigs[i]);
            }
            if (!quiet && td_progress_is_tty() && (i % 64 == 0 || i + 1 == nd)) {
                char line[160];
                snprintf(line, sizeof line, "select: scoring %zu/%zu documents (%.0f docs/s)",
                         i + 1, nd, (double)(i + 1) / (td_time_now() - t0 + 1e-9));
                td_progress_line(line);
            }
        }
        free(ids);
        if (!quiet) td_progress_done();
        if (s == TD_OK && near > 0) td_dedup_decide(sigs, nd, 1, near, verdict);
    }
    /* the order in which documents are taken */
    double median = NAN, mean_all = NAN;
    size_t ndup = 0;
    if (s == TD_OK && !(order = malloc(nd * sizeof *order)))
        s = td_error_set(TD_ERR_NOMEM, "out of memory");
    if (s == TD_OK && m) {
        double *ls = malloc(nd * sizeof *ls), sum = 0;
        if (!ls) s = td_error_set(TD_ERR_NOMEM, "out of memory");
        size_t nl = 0;
        for (size_t i = 0; ls && i < nd; i++)
            if (!isnan(docs[i].loss)) {
                ls[nl++] = docs[i].loss;
                sum += docs[i].loss;
            }
        if (ls && nl) {
            qsort(ls, nl, sizeof *ls, cmp_double);
            median = nl % 2 ? ls[nl / 2] : 0.5 * (ls[nl / 2 - 1] + ls[nl / 2]);
            mean_all = sum / (double)nl;
        }
        free(ls);
    }
    td_rng rng;
    td_rng_seed(&rng, (uint64_t)seed);
    size_t no = 0;
    for (size_t i = 0; s == TD_OK && i < nd; i++) {
        doc_t *d = &docs[i];
        d->dup = verdict && verdict[i] != TD_DEDUP_KEEP;
        ndup += d->dup;
        if (d->dup) continue;
        if (rule == 3)
            d->key = td_rng_uniform_f64(&rng);
        else if (isnan(d->loss)) /* a one-token document: nothing to score, taken last */
            d->key = INFINITY;
        else
            d->key = rule == 0 ? fabs(d->loss - median) : rule == 1 ? d->loss : -d->loss;
        order[no++] = d;
    }
    if (s == TD_OK) qsort(order, no, sizeof *order, by_key);
    size_t want = (size_t)ceil(frac * (double)total), got = 0, nkept = 0;
    double kept_loss = 0;
    size_t kept_scored = 0;
    for (size_t i = 0; s == TD_OK && i < no && got < want; i++) {
        order[i]->kept = 1;
        got += order[i]->len;
        nkept++;
        if (!isnan(order[i]->loss)) {
            kept_loss += order[i]->loss;
            kept_scored++;
        }
    }
    /* the new corpus, in a temporary directory renamed at the end */
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", out, (int)getpid());
    if (s == TD_OK) s = td_fs_mkdirs(tmp);
    if (s == TD_OK && !(kept_ids = malloc((got ? got : 1) * sizeof *kept_ids)))
        s = td_error_set(TD_ERR_NOMEM, "out of memory");
    size_t at = 0;
    for (size_t i = 0; s == TD_OK && i < nd; i++) /* kept documents in corpus order */
        for (size_t k = 0; docs[i].kept && k < docs[i].len; k++)
            kept_ids[at++] = td_shard_token(&sh[docs[i].shard], docs[i].begin + k);
    man = cJSON_CreateObject();
    cJSON_AddNumberToObject(man, "format", 1);
    cJSON *tj = cJSON_AddObjectToObject(man, "tokenizer");
    char sha[65];
    td_sha256_hex(tok_json ? tok_json : "", tj_len, sha);
    cJSON_AddStringToObject(tj, "file", "tokenizer.json");
    cJSON_AddStringToObject(tj, "sha256", sha);
    cJSON_AddNumberToObject(tj, "vocab_size", tok ? td_bpe_vocab_size(tok) : 0);
    cJSON_AddStringToObject(tj, "source", "copied");
    cJSON *shl = cJSON_AddArrayToObject(man, "shards");
    long val_tokens = 0;
    for (int i = -1; s == TD_OK && i < nv; i++) { /* the train shard, then val's as they are */
        const char *file = i < 0 ? "train_000000.bin" : vnames[i];
        snprintf(q, sizeof q, "%s/%s", tmp, file);
        if (i < 0) {
            s = td_shard_write(q, kept_ids, at, token_bytes);
        } else {
            snprintf(p, sizeof p, "%s/%s", data, file);
            s = copy_file(p, q);
        }
        td_shard x;
        if (s == TD_OK) s = td_shard_open(q, &x);
        if (s != TD_OK) break;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "file", file);
        cJSON_AddStringToObject(e, "split", i < 0 ? "train" : "val");
        cJSON_AddNumberToObject(e, "tokens", (double)x.count);
        cJSON_AddNumberToObject(e, "token_bytes", x.token_bytes);
        if (i >= 0) val_tokens += (long)x.count;
        td_shard_close(&x);
        s = td_sha256_file(q, sha);
        cJSON_AddStringToObject(e, "sha256", sha);
        cJSON_AddItemToArray(shl, e);
    }
    snprintf(q, sizeof q, "%s/tokenizer.json", tmp);
    if (s == TD_OK) s = td_fs_write_file_atomic(q, tok_json, tj_len);
    cJSON *se = cJSON_AddObjectToObject(man, "selection");
    char *abs_data = realpath(data, NULL),
         *abs_model = model_dir ? realpath(model_dir, NULL) : NULL;
    cJSON_AddStringToObject(se, "source", abs_data ? abs_data : data);
    free(abs_data);
    snprintf(p, sizeof p, "%s/manifest.json", data);
    if (s == TD_OK && td_fs_exists(p) && td_sha256_file(p, sha) == TD_OK)
        cJSON_AddStringToObject(se, "source_manifest_sha256", sha);
    if (model_dir) {
        cJSON_AddStringToObject(se, "model", abs_model ? abs_model : model_dir);
        snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
        if (s == TD_OK && td_sha256_file(p, sha) == TD_OK)
            cJSON_AddStringToObject(se, "model_weights_sha256", sha);
    }
    free(abs_model);
    cJSON_AddStringToObject(se, "by", by);
    cJSON_AddNumberToObject(se, "keep_fraction", frac);
    cJSON_AddNumberToObject(se, "near_threshold", rule == 3 ? 0 : near);
    if (rule == 3) cJSON_AddNumberToObject(se, "seed", (double)seed);
    cJSON_AddNumberToObject(se, "documents_in", (double)nd);
    cJSON_AddNumberToObject(se, "documents_near_duplicate", (double)ndup);
    cJSON_AddNumberToObject(se, "documents_kept", (double)nkept);
    cJSON_AddNumberToObject(se, "tokens_in", (double)total);
    cJSON_AddNumberToObject(se, "tokens_kept", (double)got);
    if (m) {
        cJSON_AddNumberToObject(se, "loss_mean_all", mean_all);
        cJSON_AddNumberToObject(se, "loss_median_all", median);
        cJSON_AddNumberToObject(se, "loss_mean_kept",
                                kept_scored ? kept_loss / (double)kept_scored : NAN);
    }
    cJSON *st = cJSON_AddObjectToObject(man, "stats");
    cJSON_AddNumberToObject(st, "tokens_train", (double)got);
    cJSON_AddNumberToObject(st, "tokens_val", (double)val_tokens);
    snprintf(q, sizeof q, "%s/manifest.json", tmp);
    if (s == TD_OK) s = td_json_save_file(q, man);
    snprintf(q, sizeof q, "%s/selection.jsonl", tmp);
    if (s == TD_OK && !(sel = fopen(q, "w")))
        s = td_error_set(TD_ERR_IO, "cannot write %s: %s", q, strerror(errno));
    for (size_t i = 0; s == TD_OK && i < nd; i++) {
        fprintf(sel, "{\"doc\": %zu, \"tokens\": %zu, ", i, docs[i].len);
        if (isnan(docs[i].loss))
            fprintf(sel, "\"loss\": null");
        else
            fprintf(sel, "\"loss\": %.6f", docs[i].loss);
        fprintf(sel, ", \"near_duplicate\": %s, \"kept\": %s}\n", docs[i].dup ? "true" : "false",
                docs[i].kept ? "true" : "false");
    }
    if (sel && fclose(sel) != 0 && s == TD_OK) s = td_error_set(TD_ERR_IO, "cannot write %s", q);
    if (s == TD_OK && rename(tmp, out) != 0)
        s = td_error_set(TD_ERR_IO, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
    if (s == TD_OK && !quiet)
        printf("select: %zu documents (%zu tokens) in, %zu near-duplicates, kept %zu documents, "
               "%zu tokens (%.1f%%) by %s%s in %.1f s -> %s\n",
               nd, total, ndup, nkept, got, total ? 100.0 * (double)got / (double)total : 0.0, by,
               m ? " loss" : "", td_time_now() - t0, out);
    if (s == TD_OK && !quiet && m)
        printf("select: loss per token: all documents mean %.4f (median %.4f), kept mean %.4f\n",
               mean_all, median, kept_scored ? kept_loss / (double)kept_scored : NAN);
    if (s != TD_OK && tmp[0]) { /* nothing half-written stays (and the error is kept) */
        char why[2048];
        snprintf(why, sizeof why, "%s", td_error_message());
        td_fs_remove_tree(tmp);
        td_error_set(s, "%s", why);
    }
    for (int i = 0; i < ns; i++) {
        if (sh) td_shard_close(&sh[i]);
        free(names[i]);
    }
    for (int i = 0; i < nv; i++)
        free(vnames[i]);
    free(names);
    free(vnames);
    free(sh);
    free(docs);
    free(order);
    free(sigs);
    free(verdict);
    free(tb);
    free(tg);
    free(kept_ids);
    free(text);
    free(tok_json);
    cJSON_Delete(man);
    td_model_free(&m);
    td_bpe_free(&tok);
    if (s != TD_OK) return td_cli_fail("select", s);
    return 0;
}
