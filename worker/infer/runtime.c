/* The serving runtime (see runtime.h). */
#include "worker/infer/runtime.h"

#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "worker/backend/backend.h"
#include "worker/infer/calib.h"
#include "worker/infer/engine.h"
#include "worker/infer/infer_model.h"
#include "worker/infer/kv_cache.h"
#include "worker/infer/replica.h"
#include "worker/model/checkpoint.h"

void td_serve_opts_default(td_serve_opts *o) {
    memset(o, 0, sizeof *o);
    o->tp = 1;
    o->max_tokens = 64;
    o->top_p = 1.0f;
    o->seed = 1;
    o->max_seqs = 16;
    o->heartbeat_ms = 1000;
    o->drain_s = 10;
}

/* Splits the prompts file into lines, unescaping \n and \\. */
static td_status read_prompts(const char *path, char ***out, int *n) {
    char *text;
    size_t len;
    TD_TRY(td_fs_read_file(path, &text, &len));
    const char *nul = memchr(text, 0, len);
    if (nul) {
        size_t line = 1;
        for (const char *c = text; c < nul; c++)
            line += *c == '\n';
        free(text);
        return td_error_set(TD_ERR_INVALID,
                            "%s: line %zu holds a NUL byte: a prompts file is UTF-8 text, one "
                            "prompt per line",
                            path, line);
    }
    size_t cap = 0, k = 0;
    char **p = NULL;
    td_status st = TD_OK;
    for (char *line = text; st == TD_OK && line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[ll - 1] = 0; /* CRLF files */
        if (*line) {
            st = TD_GROW(p, cap, k + 1);
            char *d = st == TD_OK ? malloc(strlen(line) + 1) : NULL, *s = line;
            if (st == TD_OK && !d)
                st = td_error_set(TD_ERR_NOMEM, "out of memory reading %s", path);
            if (st != TD_OK) break;
            p[k++] = d;
            while (*s) {
                if (s[0] == '\\' && s[1] == 'n') {
                    *d++ = '\n';
                    s += 2;
                } else if (s[0] == '\\' && s[1] == '\\') {
                    *d++ = '\\';
                    s += 2;
                } else {
                    *d++ = *s++;
                }
            }
            *d = 0;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (st == TD_OK && k == 0)
        st = td_error_set(TD_ERR_INVALID, "%s holds no prompt (one per line)", path);
    if (st != TD_OK) {
        for (size_t i = 0; i < k; i++)
            free(p[i]);
        free(p);
        return st;
    }
    *out = p;
    *n = (int)k;
    return TD_OK;
}

/* Writes s[0..n) as a JSON string; bytes that are not valid UTF-8 (a character cut by the
 * length limit, or bytes the model produced) become U+FFFD so every line stays valid. */
static void json_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t k =
                utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
            if (k <= 0) {
                fputs("\\ufffd", f);
                i++;
            } else {
                fwrite(s + i, 1, (size_t)k, f);
                i += (size_t)k;
            }
            continue;
        }
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
        i++;
    }
    fputc('"', f);
}

static void memory_plan(const td_model *full, const td_infer_model *im, const td_serve_opts *o,
                        int world, size_t kv_blocks, int block_tokens) {
    const td_model *slice = td_infer_model_weights(im);
    size_t np = td_model_num_params(slice), npf = td_model_num_params(full);
    size_t kvt = td_kv_bytes_per_token(slice), f32, i8, rf, ri, i16h, ri16h;
    td_infer_weight_bytes(slice, 1, &f32, &i8, &rf, &ri);
    td_infer_weight_bytes(slice, 0, &f32, &i16h, &rf, &ri16h);
    int q = o->int8 || o->int8_int32;
    printf("memory plan per rank (tp %d, %d replica%s), serving %s%s%s:\n", o->tp, world / o->tp,
           world / o->tp > 1 ? "s" : "",
           o->bf16 ? "bf16"
           : !q    ? "fp32"
                   : "int8",
           !q            ? ""
           : o->int8_rtn ? " rounded to nearest"
                         : " (GPTQ)",
           q && o->lm_head_int16 ? ", lm_head int16" : "");
    printf("  parameters        %12zu of %zu (embeddings, norms, lm_head replicated)\n", np, npf);
    printf("  weights fp32      %12.2f MiB\n", f32 / 1048576.0);
    printf("  weights bf16      %12.2f MiB (all parameters at 2 bytes)\n", np * 2.0 / 1048576);
    printf("  weights int8      %12.2f MiB (%.2f of fp32: every matrix int8, lm_head too, + "
           "fp32 scales and norms; --int8)\n",
           i8 / 1048576.0, (double)i8 / (double)f32);
    printf("  weights int8/i16  %12.2f MiB (%.2f of fp32: lm_head int16; --int8 "
           "--lm-head-int16)\n",
           i16h / 1048576.0, (double)i16h / (double)f32);
    printf("  read per token    %12.2f MiB fp32, %.2f MiB bf16, %.2f MiB int8, %.2f MiB int8/i16 "
           "(batch 1)\n",
           rf / 1048576.0, td_infer_read_bytes_bf16(slice) / 1048576.0, ri / 1048576.0,
           ri16h / 1048576.0);
    if (q && !o->int8_rtn) {
        int L = td_model_config_of(full)->num_hidden_layers;
        size_t layer = td_infer_calib_bytes(full, TD_CALIB_LAYERS) / (size_t)L;
        int per = td_calib_layers_per_pass(full, (size_t)(o->calib_mb * 1048576.0));
        printf("  GPTQ at load      %12.2f MiB statistics (%.2f MiB a layer; %s), + %.2f MiB "
               "working memory for the largest matrix (rank 0)\n",
               (double)(per > 0 ? layer * (size_t)per : layer) / 1048576.0, layer / 1048576.0,
               per < 1    ? "over --calib-mb: refused"
               : per >= L ? "all layers in one pass"
                          : "several passes, by --calib-mb",
               td_infer_calib_work_bytes(full, o->lm_head_int16) / 1048576.0);
    }
    if (o->n_adapters) {
        size_t ab = 0;
        for (int k = 1; k <= o->n_adapters; k++)
            ab += td_infer_adapter_bytes(im, k);
        printf("  adapters          %12.2f MiB = %d LoRA adapter%s on the one base (fp32, %.4f of "
               "the base's fp32 weights):",
               ab / 1048576.0, o->n_adapters, o->n_adapters == 1 ? "" : "s",
               (double)ab / (double)f32);
        for (int k = 1; k <= o->n_adapters; k++)
            printf("%s %s %.3f MiB", k > 1 ? "," : "", o->adapter_names[k - 1],
                   td_infer_adapter_bytes(im, k) / 1048576.0);
        printf("\n");
    }
    printf("  KV cache / token  %12zu bytes (fp32 K and V, all layers, this rank's heads)\n", kvt);
    printf("  KV cache          %12.2f MiB = %zu blocks of %d tokens = %zu tokens\n",
           (double)kvt * kv_blocks * block_tokens / 1048576, kv_blocks, block_tokens,
           kv_blocks * (size_t)block_tokens);
}

static int cmp_line(const void *a, const void *b) {
    long x = strtol(strchr(*(char *const *)a, ':') + 1, NULL, 10);
    long y = strtol(strchr(*(char *const *)b, ':') + 1, NULL, 10);
    return (x > y) - (x < y);
}

/* Every rank's blob to rank 0 (all-gather of lengths, then of blobs padded to the longest);
 * rank 0 prints the JSON lines sorted by their "index". */
static td_status print_gathered(td_comm *w, const char *blob, size_t len) {
    /* a failure here returns an error, and the CLI then ends every rank of the job */
    int64_t *lens = calloc((size_t)w->size, sizeof *lens);
    if (!lens) return td_error_set(TD_ERR_NOMEM, "out of memory gathering the results");
    lens[w->rank] = (int64_t)len;
    td_status sl = td_comm_allgather(w, lens, 1, TD_COMM_I64);
    if (sl != TD_OK) {
        free(lens);
        return sl;
    }
    int64_t mx = 1;
    for (int r = 0; r < w->size; r++)
        mx = lens[r] > mx ? lens[r] : mx;
    char *all = calloc((size_t)mx * (size_t)w->size + 1, 1);
    if (!all) {
        free(lens);
        return td_error_set(TD_ERR_NOMEM, "out of memory gathering the results");
    }
    if (len) memcpy(all + (size_t)mx * (size_t)w->rank, blob, len);
    td_status s = td_comm_allgather(w, all, (size_t)mx, TD_COMM_BYTE);
    if (s == TD_OK && w->rank == 0) {
        size_t nl = 0, cap = 0;
        char **lines = NULL;
        for (int r = 0; s == TD_OK && r < w->size; r++) {
            char *p = all + (size_t)mx * (size_t)r, *end = p + lens[r];
            while (p < end) {
                char *e = memchr(p, '\n', (size_t)(end - p));
                if (!e) break;
                *e = 0;
                s = TD_GROW(lines, cap, nl + 1);
                if (s != TD_OK) break;
                lines[nl++] = p;
                p = e + 1;
            }
        }
        if (nl) qsort(lines, nl, sizeof *lines, cmp_line);
        for (size_t i = 0; s == TD_OK && i < nl; i++)
            puts(lines[i]);
        fflush(stdout);
        free(lines);
    }
    free(all);
    free(lens);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* online serving: replicas registered with a router (ours in-process with --http) */

/* Bytes of a model's weights in the form served, as the memory plan counts them. */
static size_t served_weight_bytes(const td_model *m, const td_serve_opts *o) {
    size_t f32, i8, rf, ri;
    td_infer_weight_bytes(m, !o->lm_head_int16, &f32, &i8, &rf, &ri);
    if (o->int8 || o->int8_int32) return i8;
    return o->bf16 ? td_model_num_params(m) * 2 : f32;
}

static char *replica_details(const td_model *full, const td_serve_opts *o, int T) {
    const td_model_config *c = td_model_config_of(full);
    int q = o->int8 || o->int8_int32;
    double np = (double)td_model_num_params(full);
    char size[32];
    if (np >= 1e9)
        snprintf(size, sizeof size, "%.1fB", np / 1e9);
    else if (np >= 1e6)
        snprintf(size, sizeof size, "%.1fM", np / 1e6);
    else
        snprintf(size, sizeof size, "%.0fK", np / 1e3);
    char *d = malloc(512);
    snprintf(d, 512,
             "{\"architecture\": \"%s\", \"parameters\": %.0f, \"parameter_size\": \"%s\", "
             "\"quantization\": \"%s\", \"context_length\": %d, \"hidden_size\": %d, "
             "\"num_hidden_layers\": %d, \"vocab_size\": %d, \"tensor_parallel\": %d, "
             "\"weight_bytes\": %zu}",
             td_arch_name(c->arch), np, size,
             o->bf16            ? "BF16"
             : !q               ? "F32"
             : o->lm_head_int16 ? "Q8 (lm_head Q16)"
                                : "Q8",
             c->max_position_embeddings, c->hidden_size, c->num_hidden_layers, c->vocab_size, T,
             served_weight_bytes(full, o));
    return d;
}

/* An adapter's details: the base's, with "adapter": {base, path, sha256 (of its weights
 * file: replicas that serve a name must serve the same adapter), r, alpha, bytes}. */
static char *adapter_details(const char *base_details, const td_serve_opts *o,
                             const td_infer_model *full, int k, const td_lora_config *lc,
                             const char *sha) {
    cJSON *d = cJSON_Parse(base_details);
    cJSON *a = d ? cJSON_AddObjectToObject(d, "adapter") : NULL;
    if (a) {
        cJSON_AddStringToObject(a, "base", o->name);
        cJSON_AddStringToObject(a, "path", o->adapter_dirs[k - 1]);
        cJSON_AddStringToObject(a, "sha256", sha);
        cJSON_AddNumberToObject(a, "r", lc->r);
        cJSON_AddNumberToObject(a, "alpha", lc->alpha);
        cJSON_AddNumberToObject(a, "bytes", (double)td_infer_adapter_bytes(full, k));
    }
    char *out = a ? cJSON_PrintUnformatted(d) : NULL;
    cJSON_Delete(d);
    return out;
}

static td_status serve_online(const td_model *full, td_engine *e, td_bpe *tok, td_comm *world,
                              td_comm *tp, int group, const td_serve_opts *o, char *const *adetails,
                              char *const *asha) {
    volatile int never = 0, *stop = &never;
    if (o->control && o->control->catch_stop) stop = o->control->catch_stop(o->control->ctx);
    char back[256] = {0}, local[256] = {0};
    void *zctx = NULL;
    int started = 0;
    int64_t ok = 1;
    if (o->http && world->local_size != world->size)
        return td_error_set(TD_ERR_INVALID,
                            "--http runs the router on rank 0's host, but the "
                            "job spans several hosts; start `tandem router` and `tandem gateway` "
                            "and give the replicas --router tcp://ROUTER_HOST:PORT");
    if (o->http && world->rank == 0) {
        td_status s = o->control ? o->control->start(o->control->ctx, stop, back, sizeof back,
                                                     local, sizeof local, &zctx)
                                 : td_error_set(TD_ERR_INVALID, "--http without a control plane");
        if (s != TD_OK) TD_LOG_ERROR("%s", td_error_message());
        started = s == TD_OK;
        ok = started;
    } else if (o->router) {
        snprintf(back, sizeof back, "%s", o->router);
    }
    td_status s = td_comm_bcast(world, &ok, 1, TD_COMM_I64, 0);
    if (s == TD_OK) s = td_comm_bcast(world, back, sizeof back, TD_COMM_BYTE, 0);
    if (s == TD_OK && !ok)
        s = td_error_set(TD_ERR_RUNTIME, "rank 0 could not start the router "
                                         "and gateway (see its message)");
    if (s == TD_OK) {
        if (tp->rank == 0) {
            char host[128] = "localhost", id[256];
            gethostname(host, sizeof host - 1);
            snprintf(id, sizeof id, "%s:%d:%d", host, (int)getpid(), group);
            char *details = replica_details(full, o, tp->size);
            const td_model_config *c = td_model_config_of(full);
            td_replica_opts ro = {.router = back,
                                  .model_name = o->name,
                                  .replica_id = id,
                                  .details = details,
                                  .adapters = o->adapter_names,
                                  .adapter_details = (const char *const *)adetails,
                                  .adapter_sha256 = (const char *const *)asha,
                                  .n_adapters = o->n_adapters,
                                  .slots = o->max_seqs,
                                  .context_length = c->max_position_embeddings,
                                  .heartbeat_ms = o->heartbeat_ms,
                                  .no_chat = o->no_chat,
                                  .insecure = o->insecure,
                                  .drain_s = o->drain_s};
            if (zctx) { /* the router is in this process: skip the TCP hop */
                ro.router = local;
                ro.zctx = zctx;
            }
            if (tp->size > 1) { /* a stuck member fails the replica instead of hanging it */
                tp->timeout_s = o->tp_timeout_s > 0 ? o->tp_timeout_s : 3;
                tp->idle_wait = 1;
            }
            s = td_replica_run(e, tok, &ro, stop);
            free(details);
            if (s != TD_OK && tp->size > 1) { /* members may sit inside a collective */
                fprintf(stderr, "tandem serve: error: %s; ending the job\n", td_error_message());
                td_comm_mpi_abort(1);
            }
            td_status st = td_engine_stop_members(e);
            if (s == TD_OK) s = st;
        } else {
            tp->idle_wait = 1; /* waiting for the leader's next step uses no core */
            tp->timeout_s = o->tp_timeout_s > 0 ? o->tp_timeout_s : 3;
            s = td_engine_member_loop(e);
        }
    }
    *stop = 1;
    if (started) o->control->stop(o->control->ctx);
    return s;
}

/* GPTQ for --int8: rank 0 calibrates the whole model, every other rank receives the
 * replaced weights and the grid (so all slices are cut from the same int8 values). */
static td_status calibrate(td_infer_model *fim, td_bpe *tok, td_comm *world,
                           const td_serve_opts *o) {
    td_model *full = td_infer_model_weights(fim);
    td_status s = TD_OK;
    double failed = 0;
    if (world->rank == 0) {
        td_calib_opts co;
        td_calib_opts_default(&co);
        co.seqs = o->calib_seqs;
        co.len = o->calib_len;
        co.skip_head = o->lm_head_int16;
        co.max_bytes = (size_t)(o->calib_mb * 1048576.0);
        co.start = td_calib_start_token(tok); /* sampled sequences start as documents do */
        int32_t *ids = NULL;
        if (o->calib_file) {
            s = td_calib_read_text(tok, o->calib_file, &ids, &co.ntokens);
            co.tokens = ids;
        } else if (co.start < 0) {
            s = td_error_set(TD_ERR_INVALID,
                             "int8 calibration samples sequences starting at "
                             "a document-start token (<|endoftext|>, <|begin_of_text|>, <s>, "
                             "...), and this tokenizer has none: give --calib-file F (or "
                             "--int8-rtn)");
        }
        if (s == TD_OK) s = td_int8_calibrate(fim, &co);
        if (s != TD_OK && o->calib_file) {
            char why[512];
            snprintf(why, sizeof why, "%s", td_error_message());
            s = td_error_set(s, "int8 calibration with %s: %s", o->calib_file, why);
        }
        free(ids);
        failed = s != TD_OK;
    }
    if (world->size == 1) return s;
    TD_TRY(td_comm_bcast(world, &failed, 1, TD_COMM_F64, 0));
    if (failed)
        return world->rank == 0 ? s
                                : td_error_set(TD_ERR_RUNTIME, "int8 calibration failed on "
                                                               "rank 0 (see its message)");
    float *grid = td_infer_int8_grid(fim, 1);
    if (!grid) return td_error_set(TD_ERR_NOMEM, "out of memory for the int8 grid");
    TD_TRY(td_comm_bcast(world, td_model_params(full), td_model_num_params(full), TD_COMM_F32, 0));
    return td_comm_bcast(world, grid, td_infer_int8_grid_len(full), TD_COMM_F32, 0);
}

td_status td_serve(td_model *full_w, td_bpe *tok, td_comm *world, const td_serve_opts *o) {
    char *blob = NULL;
    size_t blob_len = 0;
    int T = o->tp > 0 ? o->tp : 1;
    td_infer_model *full = NULL, *im = NULL;
    if (world->size % T != 0) {
        td_model_free(&full_w);
        return td_error_set(TD_ERR_INVALID, "--tp %d must divide the %d ranks", T, world->size);
    }
    td_status s = td_infer_model_new(full_w, &full);
    if (s != TD_OK) {
        td_model_free(&full_w);
        return s;
    }
    /* adapters: each rank loads them onto the whole model; slicing cuts them */
    char **adetails = o->n_adapters ? calloc((size_t)o->n_adapters, sizeof *adetails) : NULL;
    char **asha = o->n_adapters ? calloc((size_t)o->n_adapters, sizeof *asha) : NULL;
    char *bdet = o->n_adapters ? replica_details(full_w, o, T) : NULL;
    if (o->n_adapters && (!adetails || !asha || !bdet))
        s = td_error_set(TD_ERR_NOMEM, "out of memory for adapters");
    for (int k = 0; s == TD_OK && k < o->n_adapters; k++) {
        td_lora *lo = NULL;
        int idx = 0;
        s = td_lora_load(o->adapter_dirs[k], td_model_config_of(full_w), &lo);
        if (s == TD_OK) s = td_infer_add_adapter(full, lo, &idx);
        if (s == TD_OK) {
            asha[k] = calloc(65, 1);
            if (asha[k] && td_checkpoint_file_sha256(o->adapter_dirs[k],
                                                     "adapter_model.safetensors", asha[k]) != TD_OK)
                td_error_clear(); /* it loaded: an unreadable file cannot be */
            if (asha[k])
                adetails[k] = adapter_details(bdet, o, full, idx, td_lora_config_of(lo), asha[k]);
            if (!adetails[k]) s = td_error_set(TD_ERR_NOMEM, "out of memory for adapters");
        }
        if (s != TD_OK) {
            char why[600];
            snprintf(why, sizeof why, "%s", td_error_message());
            s = td_error_set(s, "--adapter %s=%s: %s", o->adapter_names[k], o->adapter_dirs[k],
                             why);
        }
        td_lora_free(&lo);
    }
    free(bdet);
    int group = world->rank / T, R = world->size / T;
    td_comm *tp = NULL;
    td_backend *be = NULL;
    td_engine *e = NULL;
    if (s == TD_OK) s = td_comm_split(world, group, world->rank, &tp);
    int q = o->int8 || o->int8_int32;
    if (s == TD_OK && q && !o->int8_rtn && !o->dry_run)
        s = calibrate(full, tok, world, o);
    else if (s == TD_OK && q && !o->dry_run) /* one scale per row of the whole */
        s = td_infer_int8_grid_rtn(full, !o->lm_head_int16);
    if (s == TD_OK) s = td_infer_tp_slice(full, tp->rank, T, &im);
    td_model *m = im ? td_infer_model_weights(im) : NULL;
    if (s == TD_OK && o->bf16) s = td_infer_quantize_bf16(im);
    if (s == TD_OK && q) s = td_infer_quantize_int8(im, !o->lm_head_int16);
    /* serving memory: the whole model is no longer needed once sliced, nor the fp32 copies
     * of quantized matrices (the plan's figures are then what stays resident) */
    if (s == TD_OK && !o->dry_run) s = td_model_release_all(td_infer_model_weights(full));
    if (s == TD_OK && !o->dry_run && (q || o->bf16)) s = td_infer_release_quantized(im);
#ifdef __GLIBC__
    malloc_trim(0); /* and the heap the load and calibration freed */
#endif
    if (s == TD_OK && o->int8_int32) td_infer_set_int8_vnni(im, 1);
    td_engine_opts eo = {
        .max_seqs = o->max_seqs, .kv_bytes = (size_t)(o->kv_mb * 1048576.0), .tp = tp};
    /* device: the replica's steps on a GPU (the weights on the device, a KV cache there) */
    int want_gpu = o->device && strcmp(o->device, "cpu");
    char why[256] = "", err[200] = "";
    int ngpu = want_gpu ? td_backend_devices("cuda", err, sizeof err) : 0;
    if (want_gpu && ngpu == 0) snprintf(why, sizeof why, "no usable GPU: %s", err);
    int gpu_ok = T == 1 && !q && !o->bf16 && !o->n_adapters;
    if (want_gpu && ngpu > 0 && !gpu_ok && strcmp(o->device, "cuda")) { /* auto: stay on CPU */
        snprintf(why, sizeof why,
                 "the GPU path takes --tp 1 and no --int8/--bf16/--adapter for now");
        ngpu = 0;
    }
    if (s == TD_OK && want_gpu && ngpu > 0) {
        if (!gpu_ok)
            s = td_error_set(TD_ERR_INVALID, "serving on a GPU takes --tp 1 and no "
                                             "--int8/--bf16/--adapter (products are bf16 there) "
                                             "for now");
        if (s == TD_OK) s = td_backend_new("cuda", world->local_rank, &be);
        if (s == TD_OK) s = td_model_to_backend(m, be);
        if (s == TD_OK && world->rank == 0)
            TD_LOG_INFO("serve: replica steps on %s", be->ops->describe(be));
    } else if (s == TD_OK && want_gpu && !strcmp(o->device, "cuda")) {
        s = td_error_set(TD_ERR_INVALID, "--device cuda: %s", why);
    } else if (s == TD_OK && want_gpu && world->rank == 0) {
        TD_LOG_INFO("device auto: serving on the CPU (%s)", why);
    }
    if (s == TD_OK) s = td_engine_new(im, tok, &eo, &e);
    if (s == TD_OK && !o->dry_run && world->rank == 0)
        TD_LOG_INFO("serve: rank 0 holds %.1f MiB resident after loading (%s weights of this "
                    "rank: %.1f MiB)",
                    td_rss_bytes() / 1048576.0,
                    o->bf16                    ? "bf16"
                    : o->int8 || o->int8_int32 ? "int8"
                                               : "fp32",
                    served_weight_bytes(m, o) / 1048576.0);
    if (s == TD_OK && o->dry_run) {
        if (world->rank == 0)
            memory_plan(td_infer_model_weights(full), im, o, world->size, td_engine_total_blocks(e),
                        16);
        goto out;
    }
    if (s != TD_OK) goto out;
    if (o->router || o->http) {
        s = serve_online(td_infer_model_weights(full), e, tok, world, tp, group, o, adetails, asha);
        goto out;
    }
    if (tp->rank != 0) { /* a member of a group: follow the leader */
        s = td_engine_member_loop(e);
        goto gather;
    }
    {
        char **prompts = NULL;
        int np = 0;
        s = read_prompts(o->prompts_file, &prompts, &np);
        int *ids = calloc((size_t)np, sizeof *ids);
        char **errs = calloc((size_t)np, sizeof *errs);
        int32_t *pt = NULL;
        size_t pcap = 0;
        for (int i = 0; i < np && s == TD_OK; i++) {
            ids[i] = -1;
            if (i % R != group) continue; /* another replica's prompt */
            size_t n = td_bpe_encode(tok, prompts[i], strlen(prompts[i]), &pt, &pcap);
            Tandem__Sampling rq = TANDEM__SAMPLING__INIT;
            rq.has_temperature = rq.has_top_k = rq.has_top_p = rq.has_seed = 1;
            rq.temperature = o->temperature;
            rq.top_k = o->top_k;
            rq.top_p = o->top_p;
            rq.seed = o->seed + (uint64_t)i;
            rq.has_max_tokens = 1;
            rq.max_tokens = o->max_tokens;
            td_sampling sp = td_sampling_of(&rq, TD_API_OPENAI, 0, o->stop, rq.seed);
            td_status rs = td_engine_submit(e, pt, (int)n, &sp, &ids[i]);
            if (rs != TD_OK) { /* this request is refused; the others go on */
                errs[i] = strdup(td_error_message());
                td_error_clear();
                ids[i] = -2;
            }
        }
        free(pt);
        int active = 1;
        double t0 = td_time_now();
        long steps = 0;
        while (s == TD_OK && active) {
            s = td_engine_step(e, &active);
            steps++;
        }
        if (s != TD_OK && tp->size > 1) { /* members may sit inside the step's collectives */
            fprintf(stderr, "tandem serve: error: %s\n", td_error_message());
            td_comm_mpi_abort(1);
        }
        double dt = td_time_now() - t0;
        td_status st = td_engine_stop_members(e);
        if (s == TD_OK) s = st;
        /* this replica's results as JSON lines, gathered by rank 0 below */
        FILE *f = open_memstream(&blob, &blob_len);
        long gen = 0;
        for (int i = 0; s == TD_OK && f && i < np; i++) {
            if (ids[i] == -2) {
                fprintf(f, "{\"index\": %d, \"replica\": %d, \"error\": ", i, group);
                json_str(f, errs[i], strlen(errs[i]));
                fprintf(f, "}\n");
                continue;
            }
            if (ids[i] < 0) continue;
            int n;
            size_t tl;
            const int32_t *t = td_engine_tokens(e, ids[i], &n);
            const char *text = td_engine_text(e, ids[i], &tl);
            static const char *why[] = {"none", "eot", "length", "stop"};
            fprintf(f, "{\"index\": %d, \"replica\": %d, \"finish\": \"%s\", \"tokens\": [", i,
                    group, why[td_engine_finish_reason(e, ids[i])]);
            for (int k = 0; k < n; k++)
                fprintf(f, "%s%d", k ? ", " : "", t[k]);
            fprintf(f, "], \"prompt\": ");
            json_str(f, prompts[i], strlen(prompts[i]));
            fprintf(f, ", \"completion\": ");
            json_str(f, text, tl);
            fprintf(f, "}\n");
            gen += n;
        }
        if (f) fclose(f);
        if (s == TD_OK)
            fprintf(stderr, "serve: replica %d: %ld tokens in %.2f s (%.1f tokens/s), %ld steps\n",
                    group, gen, dt, dt > 0 ? gen / dt : 0.0, steps);
        for (int i = 0; i < np; i++) {
            free(prompts[i]);
            free(errs[i]);
        }
        free(prompts);
        free(errs);
        free(ids);
    }
gather : {
    /* all ranks agree on success, then rank 0 prints every replica's lines in order */
    int64_t failed = s == TD_OK ? 0 : 1;
    td_status sa = td_comm_allreduce(world, &failed, 1, TD_COMM_I64);
    if (s == TD_OK && sa != TD_OK) s = sa;
    if (s == TD_OK && failed)
        s = td_error_set(TD_ERR_RUNTIME, "serve: another rank failed (see its message)");
    if (s == TD_OK) s = print_gathered(world, blob, blob_len);
}
out:
    for (int k = 0; adetails && k < o->n_adapters; k++)
        free(adetails[k]);
    for (int k = 0; asha && k < o->n_adapters; k++)
        free(asha[k]);
    free(adetails);
    free(asha);
    free(blob);
    td_engine_free(&e);
    td_infer_model_free(&im);
    td_infer_model_free(&full);
    td_backend_free(&be);
    td_comm_free(&tp);
    return s;
}
