/* `tandem serve --model DIR [--tp T] --prompts-file F`, alone or under mpirun. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/json.h"
#include "common/log.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/checkpoint.h"
#include <cjson/cJSON.h>

static void help(FILE *f) {
    fprintf(f,
            "usage: tandem serve --model DIR (--http HOST:PORT | --router EP |\n"
            "                                 --prompts-file F | --dry-run) [options]\n"
            "       mpirun -np N tandem serve --model DIR --tp T ...  (N/T replicas)\n"
            "\n"
            "Serves a checkpoint with the inference engine (paged KV cache, continuous\n"
            "batching). Ranks form groups of T for tensor parallelism; each group is one\n"
            "replica. Requests come over HTTP (--http: router and gateway in this process,\n"
            "OpenAI and Ollama APIs), from a separate `tandem router` (--router), or from a\n"
            "prompts file (one per line, \\n for a newline; results as JSON lines: index,\n"
            "replica, finish, tokens, prompt, completion). See docs/serve.md and\n"
            "docs/gateway.md. Ctrl-C (SIGINT/SIGTERM) stops an online server.\n"
            "\n"
            "  --model DIR           checkpoint directory\n"
            "  --http HOST:PORT      serve HTTP here (port 0: any free port, printed)\n"
            "  --router EP           register the replicas with this router back end\n"
            "                        (e.g. tcp://127.0.0.1:5556)\n"
            "  --name NAME           model name clients use (default: the checkpoint's\n"
            "                        directory, or its parent's for step_* directories)\n"
            "  --adapter NAME=DIR    also serve the LoRA adapter in DIR (tandem finetune's, or\n"
            "                        PEFT's) as model NAME, on the same base weights and slots:\n"
            "                        requests of the base and of every adapter share each\n"
            "                        engine step (repeatable; online serving, CPU)\n"
            "  --api-key KEY         with --http: require Authorization: Bearer KEY on every\n"
            "                        route but /health (repeatable; also TANDEM_API_KEY)\n"
            "  --public-metrics      with --http: /metrics without a key\n"
            "  --insecure            the control plane in plain text (no CURVE keys): with\n"
            "                        --router, for a router run with --insecure\n"
            "  --no-verify           load the checkpoint without checking its files against\n"
            "                        its SHA256SUMS\n"
            "  --tp-timeout S        online, with --tp > 1: a collective of the group that takes\n"
            "                        longer than S seconds (a member stuck or dead) fails the\n"
            "                        replica's requests and ends the job (default 3)\n"
            "  --drain S             online: on SIGINT/SIGTERM each replica takes no new\n"
            "                        requests and finishes its running ones for up to S\n"
            "                        seconds; what is left then ends with an error (default\n"
            "                        10; 0: at once)\n"
            "  --heartbeat-ms N      replica <-> router heartbeats (default 1000; a replica\n"
            "                        silent for three is lost); with --router, the router's\n"
            "                        --heartbeat-ms\n"
            "  --tp T                tensor-parallel degree (divides the ranks; default 1)\n"
            "  --prompts-file F      prompts, one per line\n"
            "  --max-tokens N        tokens to generate per prompt (default 64; generate:\n"
            "                        --max-new-tokens, default 200)\n"
            "  --temperature T       0 = greedy (default 0; generate: 0.8)\n"
            "  --top-k K, --top-p P  sampling filters\n"
            "  --seed N              sampling seed (prompt i uses N + i)\n"
            "  --stop STR            stop string (repeatable)\n"
            "  --max-seqs N          sequences decoded together (default 16)\n"
            "  --kv-mb N             KV cache per rank in MiB (default: max-seqs full contexts)\n"
            "  --int8                int8 weight-only quantization: every matrix, lm_head\n"
            "                        too, one scale per output channel, rounded by GPTQ on\n"
            "                        calibration text (about 1/4 of fp32's bytes; see\n"
            "                        docs/serve.md)\n"
            "  --int8-rtn            with --int8: round to nearest instead (no calibration)\n"
            "  --lm-head-int16       with --int8: lm_head in int16 (rounded to nearest)\n"
            "  --calib-file F        GPTQ calibration text (UTF-8; default: sequences the\n"
            "                        model samples itself)\n"
            "  --calib-seqs N        calibration sequences (default 32)\n"
            "  --calib-len N         tokens per calibration sequence (default: context,\n"
            "                        at most 128)\n"
            "  --calib-mb N          memory for GPTQ statistics (default 4096); layers that do\n"
            "                        not fit at once take more passes (--dry-run shows them)\n"
            "  --bf16                bf16 weights (half the bytes of fp32; fp32 accumulation)\n"
            "  --device D            cpu (default), cuda (this rank's GPU, an error without\n"
            "                        one), auto (a GPU when usable); GPU: --tp 1 only\n"
            "  --int8-int32          int8 weights and activations, products accumulated in\n"
            "                        int32 (AVX-512 VNNI; faster, less exact)\n"
            "  --dry-run             print the memory plan and exit\n"
            "  -h, --help            this text\n");
}

int td_cmd_serve(int argc, char **argv) {
    return td_serve_main(argc, argv, "serve", NULL, NULL);
}

/* s as a whole decimal integer in [lo, hi] (a value past int, or with trailing text, is
 * refused rather than wrapped) */
static int int_in(const char *s, long lo, long hi, int *out) {
    long v;
    if (!td_cli_long(s, lo, hi, &v)) return 0;
    *out = (int)v;
    return 1;
}

/* A model name clients can type and every listing can carry: 1 to 128 of letters, digits and
 * . _ - : / + @ (Ollama's names fit: "llama3.1:8b", "team/support-bot"). */
static int name_ok(const char *n) {
    size_t len = strlen(n);
    if (len < 1 || len > 128) return 0;
    for (const char *c = n; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("._-:/+@", *c)) return 0;
    return 1;
}

static void free_specs(char **specs, const char **names, const char **dirs) {
    for (int i = 0; specs && specs[i]; i++)
        free(specs[i]);
    free(specs);
    free(names);
    free(dirs);
}

/* An adapter directory for --adapter: a LoRA checkpoint whose files check out, made on this
 * base -- where its lineage names the weights it was trained on, their sha256 must be the
 * base's (tensor shapes are checked when it loads). */
static td_status check_adapter(const char *model_dir, const char *name, const char *dir,
                               int no_verify) {
    char p[4200];
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return td_error_set(TD_ERR_NOTFOUND, "--adapter %s=%s: no such directory", name, dir);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    if (access(p, F_OK) != 0)
        return td_error_set(TD_ERR_NOTFOUND,
                            "--adapter %s=%s: no adapter_config.json there: is it a LoRA "
                            "checkpoint (finetune method \"lora\", or a PEFT save)?",
                            name, dir);
    TD_TRY(td_checkpoint_check(dir, no_verify));
    if (no_verify || !model_dir) return TD_OK;
    cJSON *lin = td_checkpoint_lineage(dir);
    int n = cJSON_GetArraySize(lin);
    const cJSON *parent = n >= 2 ? cJSON_GetArrayItem(lin, n - 2) : NULL;
    const char *want =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(parent, "weights_sha256"));
    const char *from = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(parent, "path"));
    char have[65] = "";
    td_status s = TD_OK;
    if (want && *want && td_checkpoint_file_sha256(model_dir, "model.safetensors", have) == TD_OK &&
        strcmp(want, have))
        s = td_error_set(TD_ERR_INVALID,
                         "--adapter %s=%s: the adapter was trained on other weights (%s, "
                         "model.safetensors sha256 %.16s...) than --model %s (sha256 %.16s...): "
                         "it was made for another base; serve it on that one (--no-verify skips "
                         "this check)",
                         name, dir, from ? from : "its parent", want, model_dir, have);
    if (s == TD_OK) td_error_clear(); /* a base without SHA256SUMS: nothing to compare */
    cJSON_Delete(lin);
    return s;
}

/* Shared by serve and train --serve: parses serve options from argv (unknown options are
 * errors), sets up MPI when launched by mpirun, and serves `given` (or --model). */
int td_serve_main(int argc, char **argv, const char *cmd, td_model *given, const char *tok_json) {
    enum {
        O_MODEL = 1,
        O_TP,
        O_PROMPTS,
        O_MAX,
        O_TEMP,
        O_TOPK,
        O_TOPP,
        O_SEED,
        O_STOP,
        O_SEQS,
        O_KV,
        O_DRY,
        O_HELP,
        O_INT8,
        O_INT8I,
        O_INT8H,
        O_HTTP,
        O_ROUTER,
        O_NAME,
        O_KEY,
        O_BF16,
        O_DEV,
        O_RTN,
        O_CFILE,
        O_CSEQS,
        O_CLEN,
        O_CMB,
        O_OLDHEAD,
        O_HB,
        O_NOVERIFY,
        O_PUBMET,
        O_TPTIMEOUT,
        O_DRAIN,
        O_INSECURE,
        O_ADAPTER
    };
    static const struct option opts[] = {{"model", required_argument, 0, O_MODEL},
                                         {"tp", required_argument, 0, O_TP},
                                         {"prompts-file", required_argument, 0, O_PROMPTS},
                                         {"max-tokens", required_argument, 0, O_MAX},
                                         {"max-new-tokens", required_argument, 0, O_MAX},
                                         {"temperature", required_argument, 0, O_TEMP},
                                         {"top-k", required_argument, 0, O_TOPK},
                                         {"top-p", required_argument, 0, O_TOPP},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"stop", required_argument, 0, O_STOP},
                                         {"max-seqs", required_argument, 0, O_SEQS},
                                         {"kv-mb", required_argument, 0, O_KV},
                                         {"dry-run", no_argument, 0, O_DRY},
                                         {"help", no_argument, 0, O_HELP},
                                         {"int8", no_argument, 0, O_INT8},
                                         {"int8-int32", no_argument, 0, O_INT8I},
                                         {"lm-head-int16", no_argument, 0, O_INT8H},
                                         {"http", required_argument, 0, O_HTTP},
                                         {"int8-rtn", no_argument, 0, O_RTN},
                                         {"calib-file", required_argument, 0, O_CFILE},
                                         {"calib-seqs", required_argument, 0, O_CSEQS},
                                         {"calib-len", required_argument, 0, O_CLEN},
                                         {"calib-mb", required_argument, 0, O_CMB},
                                         {"int8-lm-head", no_argument, 0, O_OLDHEAD},
                                         {"router", required_argument, 0, O_ROUTER},
                                         {"name", required_argument, 0, O_NAME},
                                         {"api-key", required_argument, 0, O_KEY},
                                         {"bf16", no_argument, 0, O_BF16},
                                         {"device", required_argument, 0, O_DEV},
                                         {"heartbeat-ms", required_argument, 0, O_HB},
                                         {"no-verify", no_argument, 0, O_NOVERIFY},
                                         {"public-metrics", no_argument, 0, O_PUBMET},
                                         {"tp-timeout", required_argument, 0, O_TPTIMEOUT},
                                         {"drain", required_argument, 0, O_DRAIN},
                                         {"insecure", no_argument, 0, O_INSECURE},
                                         {"adapter", required_argument, 0, O_ADAPTER},
                                         {0, 0, 0, 0}};
    td_serve_opts o;
    td_serve_opts_default(&o);
    if (!strcmp(cmd, "generate")) { /* generate's own defaults (docs/generate.md) */
        o.max_tokens = 200;
        o.temperature = 0.8f;
    }
    const char *model_dir = NULL;
    int no_verify = 0;
    const char **stops = calloc((size_t)argc + 1, sizeof *stops);
    const char **keys = calloc((size_t)argc + 1, sizeof *keys);
    const char **anames = calloc((size_t)argc + 1, sizeof *anames);
    const char **adirs = calloc((size_t)argc + 1, sizeof *adirs);
    char **aspecs = calloc((size_t)argc + 1, sizeof *aspecs);
    int nk = 0, na = 0;
    int ns = 0, c, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1 && !bad) {
        char *end = NULL;
        switch (c) {
        case O_MODEL:
            model_dir = optarg;
            break;
        case O_TP:
            bad = !int_in(optarg, 1, 1 << 16, &o.tp);
            break;
        case O_PROMPTS:
            o.prompts_file = optarg;
            break;
        case O_MAX:
            bad = !int_in(optarg, 1, INT_MAX, &o.max_tokens);
            break;
        case O_TEMP:
            o.temperature = strtof(optarg, &end);
            bad = o.temperature < 0;
            break;
        case O_TOPK:
            bad = !int_in(optarg, 0, INT_MAX, &o.top_k);
            break;
        case O_TOPP:
            o.top_p = strtof(optarg, &end);
            bad = o.top_p <= 0 || o.top_p > 1;
            break;
        case O_SEED:
            o.seed = strtoull(optarg, &end, 10);
            break;
        case O_STOP:
            stops[ns++] = optarg;
            bad = !optarg[0];
            break;
        case O_SEQS:
            bad = !int_in(optarg, 1, 1 << 20, &o.max_seqs);
            break;
        case O_KV:
            o.kv_mb = strtod(optarg, &end);
            bad = o.kv_mb < 0;
            break;
        case O_DRY:
            o.dry_run = 1;
            break;
        case O_INT8:
            o.int8 = 1;
            break;
        case O_INT8I:
            o.int8_int32 = 1;
            break;
        case O_INT8H:
            o.lm_head_int16 = 1;
            break;
        case O_RTN:
            o.int8_rtn = 1;
            break;
        case O_OLDHEAD:
            fprintf(stderr,
                    "tandem %s: --int8-lm-head is gone: with --int8 lm_head is int8 by "
                    "default now (--lm-head-int16 keeps it in int16)\n",
                    cmd);
            bad = 1;
            break;
        case O_CFILE:
            o.calib_file = optarg;
            break;
        case O_CSEQS:
            bad = !int_in(optarg, 1, 1 << 20, &o.calib_seqs);
            break;
        case O_CLEN:
            bad = !int_in(optarg, 2, 1 << 24, &o.calib_len);
            break;
        case O_CMB:
            o.calib_mb = strtod(optarg, &end);
            bad = !(o.calib_mb > 0);
            break;
        case O_BF16:
            o.bf16 = 1;
            break;
        case O_DEV:
            o.device = optarg;
            bad = strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto");
            break;
        case O_HTTP:
            o.http = optarg;
            break;
        case O_ROUTER:
            o.router = optarg;
            break;
        case O_NOVERIFY:
            no_verify = 1;
            break;
        case O_PUBMET:
            o.public_metrics = 1;
            break;
        case O_INSECURE:
            o.insecure = 1;
            break;
        case O_TPTIMEOUT:
            o.tp_timeout_s = strtod(optarg, &end);
            bad = *end || o.tp_timeout_s < 0.1 || o.tp_timeout_s > 3600;
            break;
        case O_DRAIN:
            o.drain_s = strtod(optarg, &end);
            bad = *end || end == optarg || !(o.drain_s >= 0 && o.drain_s <= 3600);
            break;
        case O_HB:
            bad = !int_in(optarg, 10, 600000, &o.heartbeat_ms);
            break;
        case O_NAME:
            o.name = optarg;
            bad = !optarg[0];
            break;
        case O_KEY:
            keys[nk++] = optarg;
            bad = !optarg[0];
            break;
        case O_ADAPTER: { /* NAME=DIR */
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1]) {
                fprintf(stderr,
                        "tandem %s: --adapter takes NAME=DIR (the model name clients ask "
                        "for, and the adapter's directory)\n",
                        cmd);
                bad = 1;
                break;
            }
            aspecs[na] = strdup(optarg);
            aspecs[na][eq - optarg] = 0;
            anames[na] = aspecs[na];
            adirs[na] = aspecs[na] + (eq - optarg) + 1;
            na++;
            break;
        }
        case O_HELP:
            help(stdout);
            free(stops);
            free(keys);
            free_specs(aspecs, anames, adirs);
            td_model_free(&given);
            return 0;
        default:
            bad = 1;
        }
        if (end && *end) bad = 1;
        if (bad)
            fprintf(stderr, "tandem %s: bad value for an option: '%s'\n", cmd,
                    optarg ? optarg : "");
    }
    int modes = !!o.prompts_file + !!o.http + !!o.router;
    if (!bad && ((!model_dir && !given) || (modes == 0 && !o.dry_run) || optind != argc)) {
        fprintf(stderr,
                "tandem %s: need --model%s and one of --http, --router, --prompts-file "
                "(or --dry-run)\n",
                cmd, given ? " (or a trained model)" : "");
        bad = 1;
    }
    if (!bad && modes > 1) {
        fprintf(stderr, "tandem %s: --http, --router and --prompts-file exclude each other\n", cmd);
        bad = 1;
    }
    if (!bad && o.bf16 && (o.int8 || o.int8_int32)) {
        fprintf(stderr, "tandem %s: --bf16 and --int8 exclude each other\n", cmd);
        bad = 1;
    }
    if (!bad && !o.int8 && !o.int8_int32 &&
        (o.int8_rtn || o.lm_head_int16 || o.calib_file || o.calib_seqs || o.calib_len ||
         o.calib_mb)) {
        fprintf(stderr,
                "tandem %s: --int8-rtn, --lm-head-int16 and --calib-* go with --int8 "
                "or --int8-int32\n",
                cmd);
        bad = 1;
    }
    if (!bad && o.device && !strcmp(o.device, "cuda") &&
        (o.int8 || o.int8_int32 || o.bf16 || o.tp > 1)) { /* say it before any calibration */
        fprintf(stderr,
                "tandem %s: serving on a GPU takes --tp 1 and no --int8/--bf16 (products "
                "are bf16 there) for now\n",
                cmd);
        bad = 1;
    }
    if (!bad && o.int8_rtn && (o.calib_file || o.calib_seqs || o.calib_len || o.calib_mb)) {
        fprintf(stderr, "tandem %s: --int8-rtn rounds to nearest: it takes no --calib-*\n", cmd);
        bad = 1;
    }
    if (!bad && !nk && o.http && getenv("TANDEM_API_KEY") && getenv("TANDEM_API_KEY")[0])
        keys[nk++] = getenv("TANDEM_API_KEY");
    if (!bad && nk && !o.http) {
        fprintf(stderr, "tandem %s: --api-key goes with --http (or give it to tandem gateway)\n",
                cmd);
        bad = 1;
    }
    if (!bad && na && o.prompts_file) {
        fprintf(stderr,
                "tandem %s: --adapter serves online (--http or --router) or shows the "
                "memory plan (--dry-run); a prompts file goes to the base\n",
                cmd);
        bad = 1;
    }
    if (!bad && na && o.device && !strcmp(o.device, "cuda")) {
        fprintf(stderr, "tandem %s: adapters are served on the CPU for now (not --device cuda)\n",
                cmd);
        bad = 1;
    }
    if (bad) {
        help(stderr);
        free(stops);
        free(keys);
        free_specs(aspecs, anames, adirs);
        td_model_free(&given);
        td_comm_mpi_finalize(); /* when train --serve started MPI */
        return 2;
    }
    o.stop = ns ? stops : NULL;
    o.api_keys = nk ? keys : NULL;
    char name[256];
    if (!o.name) { /* the checkpoint's directory name, or its parent's for step_* */
        snprintf(name, sizeof name, "%s", "tandem");
        if (model_dir) {
            char buf[4096];
            snprintf(buf, sizeof buf, "%s", model_dir);
            size_t l = strlen(buf);
            while (l > 1 && buf[l - 1] == '/')
                buf[--l] = 0;
            char *b = strrchr(buf, '/');
            const char *base = b ? b + 1 : buf;
            if (!strncmp(base, "step_", 5) && b) {
                *b = 0;
                char *pb = strrchr(buf, '/');
                base = pb ? pb + 1 : buf;
            }
            if (*base && strcmp(base, ".")) snprintf(name, sizeof name, "%s", base);
        }
        o.name = name;
    }
    int rc = 0;
    if (!name_ok(o.name)) {
        fprintf(stderr,
                "tandem %s: model name '%.200s': use 1 to 128 letters, digits and . _ - : / + @ "
                "(--name, or the checkpoint directory's name)\n",
                cmd, o.name);
        rc = 2;
    }
    for (int i = 0; i < na && !rc; i++) /* names clients can type and listings carry */
        if (!name_ok(anames[i])) {
            fprintf(stderr,
                    "tandem %s: --adapter '%.200s=%.200s': the name must be 1 to 128 letters, "
                    "digits and . _ - : / + @\n",
                    cmd, anames[i], adirs[i]);
            rc = 2;
        }
    for (int i = 0; i < na && !rc; i++) { /* names unique; each an adapter of this base */
        for (int j = 0; j <= i && !rc; j++)
            if (!strcmp(anames[i], j < i ? anames[j] : o.name)) {
                fprintf(stderr,
                        "tandem %s: --adapter %s=%s: the name %s is taken (by %s); each model "
                        "name must be unique\n",
                        cmd, anames[i], adirs[i], anames[i],
                        j < i ? "another --adapter" : "the base model, --name");
                rc = 2;
            }
        td_status sc = rc ? TD_OK : check_adapter(model_dir, anames[i], adirs[i], no_verify);
        if (sc != TD_OK) rc = td_cli_fail(cmd, sc);
    }
    if (rc) {
        free(stops);
        free(keys);
        free_specs(aspecs, anames, adirs);
        td_model_free(&given);
        td_comm_mpi_finalize();
        return rc;
    }
    o.adapter_names = anames;
    o.adapter_dirs = adirs;
    o.n_adapters = na;
    int mpi = td_comm_mpi_init(&argc, &argv, 0);
    td_comm *world = NULL;
    td_status s = mpi ? td_comm_mpi_new(&world) : td_comm_self_new(&world);
    if (s == TD_OK && mpi) {
        td_log_set_rank(world->rank);
        if (!getenv("OMP_NUM_THREADS") && world->local_size > 1) {
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            omp_set_num_threads(cpus / world->local_size > 0 ? (int)(cpus / world->local_size) : 1);
        }
    }
    if (s == TD_OK) td_cli_log_kernels(world, 0);
    td_model *m = given;
    td_bpe *tok = NULL;
    if (s == TD_OK && !m) s = td_checkpoint_check(model_dir, no_verify);
    if (s == TD_OK && !m) s = td_checkpoint_load_model(model_dir, &m);
    if (s == TD_OK) {
        if (tok_json) {
            s = td_bpe_from_json(tok_json, strlen(tok_json), "tokenizer", &tok);
        } else {
            char p[4200];
            snprintf(p, sizeof p, "%s/tokenizer.json", model_dir);
            s = td_bpe_load(p, &tok);
        }
    }
    /* chat: the checkpoint's template must be the ChatML one tandem writes and formats */
    char why[4400];
    if (s == TD_OK && td_bpe_special_id(tok, "<|im_start|>") < 0) {
        o.no_chat = "this model's tokenizer has no <|im_start|> token, so it has no chat template";
    } else if (s == TD_OK && model_dir) {
        char p[4200];
        snprintf(p, sizeof p, "%s/tokenizer_config.json", model_dir);
        cJSON *tc = NULL;
        if (access(p, F_OK) == 0 && td_json_load_file(p, &tc) == TD_OK) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
            if (cJSON_IsString(t) && strcmp(t->valuestring, td_chatml_template)) {
                snprintf(why, sizeof why,
                         "the chat template in %s is not ChatML, the one "
                         "tandem implements; use the completion routes",
                         p);
                o.no_chat = why;
            }
            cJSON_Delete(tc);
        }
        td_error_clear();
    }
    if (s == TD_OK) {
        s = td_cli_serve(m, tok, world, &o);
        m = NULL; /* taken */
    }
    rc = s == TD_OK ? 0 : td_cli_fail(cmd, s);
    td_bpe_free(&tok);
    td_model_free(&m);
    td_comm_free(&world);
    free(stops);
    free(keys);
    free_specs(aspecs, anames, adirs);
    if (mpi) {
        if (rc) td_comm_mpi_abort(rc);
        td_comm_mpi_finalize();
    }
    return rc;
}
